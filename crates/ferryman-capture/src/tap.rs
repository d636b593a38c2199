//! A body tap: sees each chunk of a body as it is forwarded and hands a
//! copy (a reference count, not a memcpy) to an uploader task on the
//! capture thread. It never waits: past the cap it stops keeping, and when
//! the shared queue is full or the store fails it gives up on that body.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use http::HeaderMap;
use object_store::buffered::BufWriter;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use crate::record::{CaptureStatus, Part};
use crate::recorder::Exchange;

/// Bodies that end before this many kept bytes are written with their
/// record, in one task; larger ones stream to an uploader of their own.
const SMALL_BODY: usize = 256 << 10;
/// The uploader stores bodies up to this size with one put; larger ones as
/// a multipart upload of parts this big (S3's minimum part size).
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

/// Whether a chunk shares its allocation with bytes ferryman does not keep.
#[derive(Clone, Copy)]
enum Shared {
    Yes,
    No,
}

/// Where kept bytes go: held while the body is small, streamed once it is not.
enum Flow {
    Holding(Vec<Bytes>, usize),
    Streaming(UnboundedSender<Msg>),
}

/// A small body, complete or not, written out with its exchange's record.
pub(crate) struct HeldBody {
    pub(crate) part: Part,
    pub(crate) chunks: Vec<Bytes>,
    pub(crate) kept: usize,
    pub(crate) size: u64,
    pub(crate) complete: bool,
}

pub struct BodyTap {
    exchange: Arc<Exchange>,
    part: Part,
    /// Bytes to keep; None when the body is not kept at all.
    cap: Option<u64>,
    size: AtomicU64,
    abandon: Arc<Abandon>,
    flow: Mutex<Flow>,
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
            flow: Mutex::new(Flow::Holding(Vec::new(), 0)),
            ended: AtomicBool::new(false),
        }
    }

    pub fn data(&self, bytes: &Bytes) {
        if let Some(keep) = self.admit(bytes.len()) {
            self.send(bytes.slice(..keep), Shared::Yes);
        }
    }

    /// Bytes seen as a slice (a relay's buffer): copied only as far as kept.
    pub fn data_slice(&self, bytes: &[u8]) {
        if let Some(keep) = self.admit(bytes.len()) {
            self.send(Bytes::copy_from_slice(&bytes[..keep]), Shared::No);
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

    fn flow(&self) -> std::sync::MutexGuard<'_, Flow> {
        self.flow
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn send(&self, chunk: Bytes, shared: Shared) {
        let mut flow = self.flow();
        match &mut *flow {
            Flow::Holding(chunks, kept) => {
                *kept += chunk.len();
                // A chunk of hyper's read buffer keeps all of that buffer
                // alive: a small body waiting for the writer gets its own
                // copy, or the queue's memory is several times its budget.
                chunks.push(match shared {
                    Shared::Yes => Bytes::copy_from_slice(&chunk),
                    Shared::No => chunk,
                });
                if *kept >= SMALL_BODY {
                    let held = std::mem::take(chunks);
                    let uploader = self.spawn_uploader();
                    held.into_iter().for_each(|c| self.forward(&uploader, c));
                    *flow = Flow::Streaming(uploader);
                }
            }
            Flow::Streaming(uploader) => self.forward(uploader, chunk),
        }
    }

    fn forward(&self, uploader: &UnboundedSender<Msg>, chunk: Bytes) {
        let n = chunk.len();
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
        let mut flow = self.flow();
        match &mut *flow {
            // The uploader records the outcome once the store has answered.
            Flow::Streaming(uploader) => {
                let _ = uploader.send(Msg::End { size, complete });
            }
            Flow::Holding(chunks, kept) if *kept > 0 => {
                if let Some(reason) = self.abandon.reason() {
                    // Kept bytes are released; nothing will be written.
                    self.exchange
                        .inner
                        .queued
                        .fetch_sub(*kept, Ordering::AcqRel);
                    self.exchange.record_failure(self.part, reason);
                } else {
                    self.exchange.hold(HeldBody {
                        part: self.part,
                        chunks: std::mem::take(chunks),
                        kept: *kept,
                        size,
                        complete,
                    });
                }
            }
            Flow::Holding(..) => {
                let reason = self.abandon.reason().map(str::to_owned);
                let status = match (&reason, self.cap) {
                    (Some(_), _) => CaptureStatus::Failed,
                    (None, _) if size == 0 => CaptureStatus::None,
                    (None, None) => CaptureStatus::Skipped,
                    // Every byte went past the cap (a cap of 0).
                    (None, Some(_)) => CaptureStatus::Truncated,
                };
                match reason {
                    Some(reason) => self.exchange.record_failure(self.part, &reason),
                    None => self
                        .exchange
                        .with_body(self.part, |body| body.capture = status),
                }
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
    let (status, reason) = match abandon.reason() {
        Some(reason) => (CaptureStatus::Failed, Some(reason.to_owned())),
        None => outcome(captured, ended),
    };
    exchange.settle(part, &key, captured, status, reason);
}

/// What became of a body whose writing did not fail: `ended` is its full
/// size and whether it ended properly, None if it never said.
pub(crate) fn outcome(
    captured: u64,
    ended: Option<(u64, bool)>,
) -> (CaptureStatus, Option<String>) {
    match ended {
        Some((size, true)) if captured == size => (CaptureStatus::Stored, None),
        Some((_, true)) => (
            CaptureStatus::Truncated,
            Some(format!("kept the first {captured} bytes")),
        ),
        _ => (
            CaptureStatus::Truncated,
            Some("the body broke off".to_owned()),
        ),
    }
}
