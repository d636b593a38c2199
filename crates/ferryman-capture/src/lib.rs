//! Capture: every exchange becomes a record, its bodies are teed to an
//! object store while they stream, and an embedded index makes them
//! searchable. Nothing here is ever waited for by the traffic: taps queue
//! into a bounded budget and give up, saying why, when the store lags.

pub mod config;
pub mod decode;
pub mod har;
mod index;
mod losses;
mod priority;
mod record;
mod recorder;
mod store;
mod tap;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use object_store::ObjectStore;
use tokio::runtime::Handle;
use tokio::sync::Notify;

pub use config::{CaptureConfig, Secret, StoreKind, REDACTED};
pub use index::Filter;
pub use record::{
    BodyRecord, CaptureStatus, ExchangeId, ExchangeRecord, Part, RequestRecord, ResponseRecord,
    Timings, TlsFacts,
};
pub use recorder::Recorder;
pub use tap::BodyTap;
use tap::HeldBody;

/// Records a watcher may fall behind by before it misses some.
const WATCH_QUEUE: usize = 4096;

/// Capture counters, for metrics and tests.
#[derive(Debug, Default)]
pub struct CaptureStats {
    /// Bodies stored whole or up to their cap.
    pub bodies_stored: AtomicU64,
    /// Bodies whose capture was abandoned (store slow, failing, or full queue).
    pub bodies_failed: AtomicU64,
    /// Records written to the store.
    pub records_stored: AtomicU64,
    /// Records the store or the index could not take.
    pub records_failed: AtomicU64,
}

/// A running capture: cheap to clone, shared by every exchange.
#[derive(Clone)]
pub struct Capture {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) config: CaptureConfig,
    pub(crate) store: Arc<dyn ObjectStore>,
    /// The capture thread's runtime: uploads never run on a proxy worker.
    pub(crate) runtime: Handle,
    /// Body bytes handed to taps and records finished, not yet given to
    /// the store: what capture holds in memory for a lagging store.
    pub(crate) queued: AtomicUsize,
    pub(crate) stats: CaptureStats,
    /// Exchanges begun and not yet indexed, plus a running rebuild.
    pending: AtomicUsize,
    settled: Notify,
    index: index::Index,
    finished: tokio::sync::mpsc::Sender<writer::Finished>,
    /// Records as they enter the index, for whoever watches live.
    pub(crate) indexed: tokio::sync::broadcast::Sender<Arc<ExchangeRecord>>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Capture {
    /// Opens the store and the index (`index.sqlite` in `data_dir`) and
    /// starts the capture thread. A fresh index, or `rebuild_index`, is
    /// filled from the records already in the store.
    pub fn start(config: CaptureConfig, data_dir: &Path) -> Result<Self, String> {
        let store = store::open(&config, data_dir)?;
        let index_path: PathBuf = data_dir.join("index.sqlite");
        let fresh = !index_path.exists();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the capture thread: {e}"))?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("ferryman-capture".into())
            .spawn(move || {
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })
            .map_err(|e| format!("cannot start the capture thread: {e}"))?;
        let rebuild = fresh || config.rebuild_index;
        let (index, worker) = index::Index::open(&index_path)?;
        let (finished, to_write) = tokio::sync::mpsc::channel(writer::QUEUE);
        let inner = Arc::new(Inner {
            config,
            store,
            runtime: handle,
            queued: AtomicUsize::new(0),
            stats: CaptureStats::default(),
            pending: AtomicUsize::new(0),
            settled: Notify::new(),
            index,
            finished,
            indexed: tokio::sync::broadcast::channel(WATCH_QUEUE).0,
            _stop: stop,
        });
        worker.spawn(Arc::downgrade(&inner), inner.config.nice)?;
        writer::spawn(&inner, to_write)?;
        inner.runtime.spawn(losses::watch(Arc::downgrade(&inner)));
        let capture = Self { inner };
        if rebuild {
            capture.inner.begin_pending();
            let inner = capture.inner.clone();
            capture.inner.runtime.spawn(async move {
                inner.rebuild().await;
                inner.end_pending(1);
            });
        }
        Ok(capture)
    }

    pub fn config(&self) -> &CaptureConfig {
        &self.inner.config
    }

    pub fn stats(&self) -> &CaptureStats {
        &self.inner.stats
    }

    /// Exchanges begun and not yet in the index: at exit, those lost.
    pub fn pending(&self) -> usize {
        self.inner.pending.load(Ordering::Acquire)
    }

    /// Bytes of bodies and records waiting for the store.
    pub fn queued_bytes(&self) -> usize {
        self.inner.queued.load(Ordering::Acquire)
    }

    /// Starts the record of one exchange; it is written when the last
    /// reference to it (the exchange and its body taps) is gone.
    pub fn begin(&self, session_id: u64, parent_id: Option<u64>, client: String) -> Recorder {
        self.inner.begin_pending();
        Recorder::new(self.inner.clone(), session_id, parent_id, client)
    }

    /// Every record from now on, once it is in the index. A watcher that
    /// falls more than a few thousand records behind misses some (and is told
    /// so by the channel) instead of holding capture back.
    pub fn watch(&self) -> tokio::sync::broadcast::Receiver<Arc<ExchangeRecord>> {
        self.inner.indexed.subscribe()
    }

    /// Resolves once every exchange begun so far is in the index.
    pub async fn settled(&self) {
        loop {
            let notified = self.inner.settled.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.inner.pending.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Waits, from outside any runtime, up to `grace` for captures in
    /// flight to be written; false if some were not.
    pub fn settle_blocking(&self, grace: Duration) -> bool {
        let (done, wait) = std::sync::mpsc::channel();
        let capture = self.clone();
        self.inner.runtime.spawn(async move {
            capture.settled().await;
            let _ = done.send(());
        });
        wait.recv_timeout(grace).is_ok()
    }

    /// Records matching `filter`, newest first.
    pub fn query(&self, filter: &Filter) -> Result<Vec<ExchangeRecord>, String> {
        self.inner.index.query(filter)
    }

    /// One record by id, from the index.
    pub fn record(&self, id: ExchangeId) -> Result<Option<ExchangeRecord>, String> {
        self.inner.index.get(id)
    }

    /// A stored body, whole.
    pub async fn body(&self, id: ExchangeId, part: Part) -> Result<Option<Bytes>, String> {
        let store = self.inner.store.clone();
        let key = id.body_key(part);
        let read = async move {
            match store.get(&key).await {
                Ok(found) => found.bytes().await.map(Some),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        };
        self.inner
            .runtime
            .spawn(read)
            .await
            .map_err(|e| format!("capture thread: {e}"))?
            .map_err(|e| format!("cannot read the body: {e}"))
    }
}

impl Inner {
    fn begin_pending(&self) {
        self.pending.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn end_pending(&self, n: usize) {
        if self.pending.fetch_sub(n, Ordering::AcqRel) == n {
            self.settled.notify_waiters();
        }
    }

    /// Counts a body's outcome and writes it into its record; a failed
    /// body keeps nothing.
    pub(crate) fn settle(
        &self,
        body: &mut BodyRecord,
        key: &object_store::path::Path,
        captured: u64,
        status: CaptureStatus,
        reason: Option<String>,
    ) {
        let failed = status == CaptureStatus::Failed;
        let counter = if failed {
            &self.stats.bodies_failed
        } else {
            &self.stats.bodies_stored
        };
        counter.fetch_add(1, Ordering::Relaxed);
        body.captured = if failed { 0 } else { captured };
        body.key = (!failed).then(|| key.to_string());
        body.capture = status;
        body.reason = reason;
    }

    /// Hands a finished exchange to the writer; when it is too far behind
    /// (its queue, records and bodies, past `max_queued_bytes`), the record
    /// is dropped and counted.
    pub(crate) fn finish(&self, record: ExchangeRecord, id: ExchangeId, held: Vec<HeldBody>) {
        let kept: usize = held.iter().map(|b| b.kept).sum();
        let weight = record.weight();
        let queued = self.queued.fetch_add(weight, Ordering::AcqRel) + weight;
        let finished = writer::Finished {
            record,
            id,
            held,
            weight,
        };
        if queued > self.config.max_queued_bytes || self.finished.try_send(finished).is_err() {
            self.queued.fetch_sub(kept + weight, Ordering::AcqRel);
            self.stats.records_failed.fetch_add(1, Ordering::Relaxed);
            self.end_pending(1);
        }
    }

    /// Deletes the objects of expired exchanges, in the background.
    pub(crate) fn delete_objects(self: &Arc<Self>, ids: Vec<String>) {
        let inner = self.clone();
        self.begin_pending();
        self.runtime.spawn(async move {
            for id in ids.iter().filter_map(|id| ExchangeId::parse(id)) {
                for key in [
                    id.body_key(Part::Request),
                    id.body_key(Part::Response),
                    id.record_key(),
                ] {
                    let delete = inner.store.delete(&key);
                    let _ = tokio::time::timeout(inner.config.store_timeout, delete).await;
                }
            }
            inner.end_pending(1);
        });
    }

    /// Indexes every `exchange.json` in the store (records already indexed
    /// are kept as they are).
    async fn rebuild(self: &Arc<Self>) {
        use futures_util::StreamExt;
        let prefix = object_store::path::Path::from("exchanges");
        let mut listing = self.store.list(Some(&prefix));
        let mut found = 0u64;
        while let Some(entry) = listing.next().await {
            let meta = match entry {
                Ok(meta) => meta,
                Err(e) => {
                    tracing::warn!(error = %e, "index rebuild: cannot list the store");
                    break;
                }
            };
            if meta.location.filename() != Some("exchange.json") {
                continue;
            }
            let read = async { self.store.get(&meta.location).await?.bytes().await };
            let record = match tokio::time::timeout(self.config.store_timeout, read).await {
                Ok(Ok(json)) => String::from_utf8(json.to_vec()).ok().and_then(|json| {
                    Some((serde_json::from_str::<ExchangeRecord>(&json).ok()?, json))
                }),
                _ => None,
            };
            let Some(record) = record else {
                tracing::warn!(key = %meta.location, "index rebuild: unreadable record");
                continue;
            };
            self.begin_pending();
            found += 1;
            // Waits for room: a rebuild may queue more records than traffic does.
            let writes = self.index.writes();
            let queued = tokio::task::spawn_blocking(move || writes.send(record).is_ok()).await;
            if !matches!(queued, Ok(true)) {
                self.end_pending(1);
                break;
            }
        }
        tracing::info!(records = found, "index rebuilt from the store");
    }
}
