//! A body tap: sees each chunk of a body as it is forwarded and hands a
//! copy (a reference count, not a memcpy) to an uploader task on the
//! capture thread. It never waits: past the cap it stops keeping, and when
//! the shared queue is full or the store fails it gives up on that body.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http::HeaderMap;
use object_store::buffered::BufWriter;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use crate::record::{CaptureStatus, Part};
use crate::recorder::Exchange;

/// Bodies up to this size are stored with one put; larger ones as a
/// multipart upload of parts this big (S3's minimum part size).
const PART_SIZE: usize = 5 << 20;
/// Parts of one body being uploaded at once.
const PARTS_IN_FLIGHT: usize = 2;

enum Msg {
    Data(Bytes),
    /// The body is over: its full size, and whether it ended properly.
    End {
        size: u64,
        complete: bool,
    },
}

/// Why a capture was given up, shared by the tap and its uploader.
#[derive(Default)]
struct Abandon {
    reason: OnceLock<String>,
}

impl Abandon {
    fn set(&self, reason: impl Into<String>) {
        let _ = self.reason.set(reason.into());
    }

    fn reason(&self) -> Option<&str> {
        self.reason.get().map(String::as_str)
    }
}

pub struct BodyTap {
    exchange: Arc<Exchange>,
    part: Part,
    /// Bytes to keep; None when the body is not kept at all.
    cap: Option<u64>,
    size: AtomicU64,
    abandon: Arc<Abandon>,
    uploader: OnceLock<UnboundedSender<Msg>>,
    ended: AtomicBool,
}

impl BodyTap {
    pub(crate) fn new(exchange: Arc<Exchange>, part: Part, cap: Option<u64>) -> Self {
        Self {
            exchange,
            part,
            cap,
            size: AtomicU64::new(0),
            abandon: Arc::default(),
            uploader: OnceLock::new(),
            ended: AtomicBool::new(false),
        }
    }

    pub fn data(&self, bytes: &Bytes) {
        if let Some(keep) = self.admit(bytes.len()) {
            self.send(if keep < bytes.len() {
                bytes.slice(..keep)
            } else {
                bytes.clone()
            });
        }
    }

    /// Bytes seen as a slice (a relay's buffer): copied only as far as kept.
    pub fn data_slice(&self, bytes: &[u8]) {
        if let Some(keep) = self.admit(bytes.len()) {
            self.send(Bytes::copy_from_slice(&bytes[..keep]));
        }
    }

    /// Counts `n` bytes; returns how many of them to keep, having reserved
    /// them in the queue budget.
    fn admit(&self, n: usize) -> Option<usize> {
        let before = self.size.fetch_add(n as u64, Ordering::Relaxed);
        let cap = self.cap?;
        if before >= cap || n == 0 || self.abandon.reason().is_some() {
            return None;
        }
        let keep = (n as u64).min(cap - before) as usize;
        let inner = &self.exchange.inner;
        let queued = inner.queued.fetch_add(keep, Ordering::AcqRel) + keep;
        if queued > inner.config.max_queued_bytes {
            inner.queued.fetch_sub(keep, Ordering::AcqRel);
            self.abandon
                .set("capture queue full: the store is too slow");
            return None;
        }
        Some(keep)
    }

    fn send(&self, chunk: Bytes) {
        let n = chunk.len();
        let uploader = self.uploader.get_or_init(|| self.spawn_uploader());
        if uploader.send(Msg::Data(chunk)).is_err() {
            self.exchange.inner.queued.fetch_sub(n, Ordering::AcqRel);
        }
    }

    pub fn trailers(&self, trailers: &HeaderMap) {
        if self.part == Part::Response {
            self.exchange.trailers(trailers);
        }
    }

    /// `complete` is false when the body broke off before its end.
    pub fn end(&self, complete: bool) {
        if self.ended.swap(true, Ordering::AcqRel) {
            return;
        }
        let size = self.size.load(Ordering::Relaxed);
        self.exchange.body_ended(self.part, size);
        match self.uploader.get() {
            Some(uploader) => {
                // The uploader records the outcome once the store has answered.
                let _ = uploader.send(Msg::End { size, complete });
            }
            None => {
                let reason = self.abandon.reason().map(str::to_owned);
                let status = match (&reason, self.cap) {
                    (Some(_), _) => CaptureStatus::Failed,
                    (None, _) if size == 0 => CaptureStatus::None,
                    (None, None) => CaptureStatus::Skipped,
                    // Every byte went past the cap (a cap of 0).
                    (None, Some(_)) => CaptureStatus::Truncated,
                };
                if status == CaptureStatus::Failed {
                    self.exchange
                        .inner
                        .stats
                        .bodies_failed
                        .fetch_add(1, Ordering::Relaxed);
                }
                self.exchange.with_body(self.part, |body| {
                    body.capture = status;
                    body.reason = reason;
                });
            }
        }
    }

    fn spawn_uploader(&self) -> UnboundedSender<Msg> {
        let (sender, receiver) = unbounded_channel();
        let upload = upload(
            self.exchange.clone(),
            self.part,
            self.abandon.clone(),
            receiver,
        );
        self.exchange.inner.runtime.spawn(upload);
        sender
    }
}

impl Drop for BodyTap {
    fn drop(&mut self) {
        self.end(false);
    }
}

/// Writes one body to the store as its chunks arrive, then records what
/// became of it.
async fn upload(
    exchange: Arc<Exchange>,
    part: Part,
    abandon: Arc<Abandon>,
    mut chunks: UnboundedReceiver<Msg>,
) {
    let inner = &exchange.inner;
    let timeout = inner.config.store_timeout;
    let key = exchange.id.body_key(part);
    let mut writer = BufWriter::with_capacity(inner.store.clone(), key.clone(), PART_SIZE)
        .with_max_concurrency(PARTS_IN_FLIGHT);
    let mut captured = 0u64;
    let mut ended = None;
    while let Some(msg) = chunks.recv().await {
        match msg {
            Msg::Data(chunk) => {
                let n = chunk.len();
                if abandon.reason().is_none() {
                    match tokio::time::timeout(timeout, writer.put(chunk)).await {
                        Ok(Ok(())) => captured += n as u64,
                        Ok(Err(e)) => abandon.set(format!("store failed: {e}")),
                        Err(_) => abandon.set(format!("store timed out after {timeout:?}")),
                    }
                }
                inner.queued.fetch_sub(n, Ordering::AcqRel);
            }
            Msg::End { size, complete } => {
                ended = Some((size, complete));
                break;
            }
        }
    }
    if abandon.reason().is_some() {
        // Drops what was buffered and any multipart upload begun.
        let _ = tokio::time::timeout(timeout, writer.abort()).await;
    } else {
        match tokio::time::timeout(timeout, writer.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => abandon.set(format!("store failed: {e}")),
            Err(_) => abandon.set(format!("store timed out after {timeout:?}")),
        }
    }
    let (status, reason, key) = match (abandon.reason(), ended) {
        (Some(reason), _) => (CaptureStatus::Failed, Some(reason.to_owned()), None),
        (None, Some((size, true))) if captured == size => (CaptureStatus::Stored, None, Some(key)),
        (None, Some((_, true))) => (
            CaptureStatus::Truncated,
            Some(format!("kept the first {captured} bytes")),
            Some(key),
        ),
        (None, _) => (
            CaptureStatus::Truncated,
            Some("the body broke off".to_owned()),
            Some(key),
        ),
    };
    let counter = if status == CaptureStatus::Failed {
        &inner.stats.bodies_failed
    } else {
        &inner.stats.bodies_stored
    };
    counter.fetch_add(1, Ordering::Relaxed);
    if status == CaptureStatus::Failed {
        captured = 0;
    }
    exchange.with_body(part, |body| {
        body.captured = captured;
        body.key = key.map(|k| k.to_string());
        body.capture = status;
        body.reason = reason;
    });
}
