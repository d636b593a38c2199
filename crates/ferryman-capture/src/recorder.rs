//! The record of one exchange while it happens; written out when the
//! exchange and the uploads of its bodies are all done with it.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, StatusCode, Version};

use crate::record::{
    header_pairs, version_name, BodyRecord, CaptureStatus, ExchangeId, ExchangeRecord, Part,
    ResponseRecord, TlsFacts,
};
use crate::tap::{BodyTap, HeldBody};
use crate::Inner;

/// A handle on one exchange's record; clones share it.
#[derive(Clone)]
pub struct Recorder(pub(crate) Arc<Exchange>);

pub(crate) struct Exchange {
    pub(crate) inner: Arc<Inner>,
    pub(crate) id: ExchangeId,
    start: Instant,
    record: Mutex<ExchangeRecord>,
    /// Small bodies, written with the record.
    held: Mutex<Vec<HeldBody>>,
}

impl Recorder {
    pub(crate) fn new(
        inner: Arc<Inner>,
        session_id: u64,
        parent_id: Option<u64>,
        client: String,
    ) -> Self {
        let id = ExchangeId::new();
        let started_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let record = ExchangeRecord {
            id: id.to_string(),
            session_id,
            parent_id,
            started_ms,
            client,
            outbound: "direct".into(),
            ..ExchangeRecord::default()
        };
        Self(Arc::new(Exchange {
            inner,
            id,
            start: Instant::now(),
            record: Mutex::new(record),
            held: Mutex::new(Vec::new()),
        }))
    }

    pub fn id(&self) -> ExchangeId {
        self.0.id
    }

    pub fn request(&self, method: &str, url: &str, version: Version, headers: &HeaderMap) {
        let mut record = self.0.record();
        record.request.method = method.to_owned();
        record.request.url = url.to_owned();
        record.request.version = version_name(version).to_owned();
        record.request.headers = header_pairs(headers);
    }

    /// The response head arrived: its first byte, as far as timing goes.
    pub fn response(&self, status: StatusCode, version: Version, headers: &HeaderMap) {
        let elapsed = self.0.elapsed_ms();
        let mut record = self.0.record();
        record.timings.first_byte_ms = Some(elapsed);
        record.response = Some(ResponseRecord {
            status: status.as_u16(),
            version: version_name(version).to_owned(),
            headers: header_pairs(headers),
            trailers: Vec::new(),
            body: BodyRecord::default(),
        });
    }

    /// A tap for one body; `content_type` decides, with the config, whether
    /// and how much of it is kept.
    pub fn tap(&self, part: Part, content_type: Option<&str>) -> BodyTap {
        let cap = self.0.inner.config.body_cap(content_type);
        BodyTap::new(self.0.clone(), part, cap)
    }

    /// A tap for bytes that may never end (the frames of a WebSocket).
    pub fn stream_tap(&self, part: Part) -> BodyTap {
        let config = &self.0.inner.config;
        let cap = config.max_stream_bytes.min(config.max_body_bytes);
        BodyTap::new(self.0.clone(), part, Some(cap))
    }

    pub fn tls(&self, facts: TlsFacts) {
        self.0.record().tls = Some(facts);
    }

    /// The way out the policy chose, and the rule that chose it.
    pub fn route(&self, outbound: &str, rule: &str) {
        let mut record = self.0.record();
        record.outbound = outbound.to_owned();
        record.rule = Some(rule.to_owned());
    }

    /// Why the exchange failed; the first reason given is kept.
    pub fn error(&self, error: impl std::fmt::Display) {
        let mut record = self.0.record();
        if record.error.is_none() {
            record.error = Some(error.to_string());
        }
    }

    /// Bytes a tunnel carried, for exchanges that are tunnels.
    pub fn bytes(&self, up: u64, down: u64) {
        let mut record = self.0.record();
        record.bytes_up += up;
        record.bytes_down += down;
    }
}

impl Exchange {
    pub(crate) fn record(&self) -> MutexGuard<'_, ExchangeRecord> {
        // A panic while holding the lock leaves a record still worth writing.
        self.record
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn elapsed_ms(&self) -> f64 {
        self.start.elapsed().as_micros() as f64 / 1000.0
    }

    /// The body record of `part`, created for a response only once its head is known.
    pub(crate) fn with_body(&self, part: Part, update: impl FnOnce(&mut BodyRecord)) {
        let mut record = self.record();
        let body = match part {
            Part::Request => &mut record.request.body,
            Part::Response => match record.response.as_mut() {
                Some(response) => &mut response.body,
                None => return,
            },
        };
        update(body);
    }

    pub(crate) fn body_ended(&self, part: Part, size: u64) {
        let elapsed = self.elapsed_ms();
        let mut record = self.record();
        match part {
            Part::Request => {
                record.timings.request_sent_ms = Some(elapsed);
                record.request.body.size = size;
                record.bytes_up += size;
            }
            Part::Response => {
                record.timings.end_ms = Some(elapsed);
                record.bytes_down += size;
                if let Some(response) = record.response.as_mut() {
                    response.body.size = size;
                }
            }
        }
    }
}

impl Exchange {
    pub(crate) fn hold(&self, body: HeldBody) {
        self.held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(body);
    }

    /// Records what became of a body once its writing is over.
    pub(crate) fn settle(
        &self,
        part: Part,
        key: &object_store::path::Path,
        captured: u64,
        status: CaptureStatus,
        reason: Option<String>,
    ) {
        let inner = &self.inner;
        self.with_body(part, |body| {
            inner.settle(body, key, captured, status, reason)
        });
    }

    pub(crate) fn record_failure(&self, part: Part, reason: &str) {
        let key = self.id.body_key(part);
        self.settle(
            part,
            &key,
            0,
            CaptureStatus::Failed,
            Some(reason.to_owned()),
        );
    }

    pub(crate) fn trailers(&self, trailers: &HeaderMap) {
        if let Some(response) = self.record().response.as_mut() {
            response.trailers = header_pairs(trailers);
        }
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        let elapsed = self.elapsed_ms();
        let mut record = std::mem::take(self.record.get_mut().unwrap_or_else(|p| p.into_inner()));
        record.timings.end_ms.get_or_insert(elapsed);
        let held = std::mem::take(self.held.get_mut().unwrap_or_else(|p| p.into_inner()));
        self.inner.finish(record, self.id, held);
    }
}
