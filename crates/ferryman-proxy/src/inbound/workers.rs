//! Worker threads and the client connections they serve. Every worker
//! accepts, but a connection goes to the least busy one: workers share one
//! listening socket, and the first one awake would otherwise take a whole
//! burst of connections and leave the other cores idle.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::runtime::Handle;

use crate::context::Worker;

/// A worker thread: its runtime, its view of the pipeline (with its own
/// upstream pool), and how many client connections it serves.
pub(crate) struct WorkerThread {
    pub(crate) runtime: Handle,
    pub(crate) worker: Arc<Worker>,
    connections: AtomicUsize,
    gauge: metrics::Gauge,
}

impl WorkerThread {
    pub(crate) fn new(n: usize, runtime: Handle, worker: Arc<Worker>) -> Arc<Self> {
        Arc::new(Self {
            runtime,
            worker,
            connections: AtomicUsize::new(0),
            gauge: metrics::gauge!("ferryman_worker_connections", "worker" => n.to_string()),
        })
    }

    fn load(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }
}

/// A client connection, counted against its worker while it lives.
pub(crate) struct Assigned(Arc<WorkerThread>);

impl Assigned {
    /// Counts a new connection against the least busy of `workers`; `me`
    /// (the one that accepted it) wins a tie, so a lone worker never hands off.
    pub(crate) fn least_loaded(workers: &[Arc<WorkerThread>], me: usize) -> Self {
        let mut chosen = &workers[me];
        for worker in workers {
            if worker.load() < chosen.load() {
                chosen = worker;
            }
        }
        chosen.connections.fetch_add(1, Ordering::Relaxed);
        chosen.gauge.increment(1.0);
        Self(chosen.clone())
    }

    pub(crate) fn worker(&self) -> &Arc<WorkerThread> {
        &self.0
    }
}

impl Drop for Assigned {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
        self.0.gauge.decrement(1.0);
    }
}
