//! Writes finished exchanges: their small bodies, then their record, then
//! the index row. A local directory is written from a thread of its own,
//! outside any runtime, where object_store's file system calls run inline
//! (no hop to a blocking pool per file); S3 is written from the capture
//! runtime, many requests at once.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use bytes::Bytes;
use futures_util::FutureExt;
use object_store::path::Path;
use object_store::PutPayload;
use tokio::sync::mpsc::Receiver;

use crate::record::{CaptureStatus, ExchangeId, ExchangeRecord, Part};
use crate::tap::{self, HeldBody};
use crate::{Inner, StoreKind};

/// Finished exchanges waiting for the writer; past this they are dropped
/// and counted.
pub(crate) const QUEUE: usize = 16 * 1024;
/// Exchanges being written to S3 at once.
const S3_IN_FLIGHT: usize = 64;

pub(crate) struct Finished {
    pub(crate) record: ExchangeRecord,
    pub(crate) id: ExchangeId,
    pub(crate) held: Vec<HeldBody>,
    /// The record's share of the queue budget, given back once written.
    pub(crate) weight: usize,
}

pub(crate) fn spawn(inner: &Arc<Inner>, mut queue: Receiver<Finished>) -> Result<(), String> {
    let weak = Arc::downgrade(inner);
    if inner.config.store.kind == StoreKind::S3 {
        let slots = Arc::new(tokio::sync::Semaphore::new(S3_IN_FLIGHT));
        inner.runtime.spawn(async move {
            while let Some(finished) = queue.recv().await {
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let Some(inner) = weak.upgrade() else { return };
                tokio::spawn(async move {
                    write(&inner, finished).await;
                    drop(slot);
                });
            }
        });
        return Ok(());
    }
    let nice = inner.config.nice;
    std::thread::Builder::new()
        .name("ferryman-store".into())
        .spawn(move || {
            crate::priority::yield_to_traffic(nice);
            write_locally(weak, queue)
        })
        .map(|_| ())
        .map_err(|e| format!("cannot start the capture writer: {e}"))
}

fn write_locally(weak: Weak<Inner>, mut queue: Receiver<Finished>) {
    while let Some(finished) = queue.blocking_recv() {
        let Some(inner) = weak.upgrade() else { return };
        // Outside a runtime, the local store does its work inside poll.
        if write(&inner, finished).now_or_never().is_none() {
            tracing::warn!("the local capture store did not write synchronously");
        }
    }
}

/// One store write: bounded by the store timeout where a runtime is there
/// to time it (S3); a local write is a plain file system call.
async fn put(inner: &Inner, key: &Path, payload: PutPayload) -> Result<(), String> {
    let put = inner.store.put(key, payload);
    let result = if inner.config.store.kind == StoreKind::S3 {
        let timeout = inner.config.store_timeout;
        match tokio::time::timeout(timeout, put).await {
            Ok(result) => result,
            Err(_) => return Err(format!("store timed out after {timeout:?}")),
        }
    } else {
        put.await
    };
    result.map(|_| ()).map_err(|e| format!("store failed: {e}"))
}

async fn write(inner: &Arc<Inner>, finished: Finished) {
    let Finished {
        mut record,
        id,
        held,
        weight,
    } = finished;
    for body in held {
        let key = id.body_key(body.part);
        let payload: PutPayload = body.chunks.into_iter().collect();
        let stored = put(inner, &key, payload).await;
        inner.queued.fetch_sub(body.kept, Ordering::AcqRel);
        let (status, reason) = match stored {
            Ok(()) => tap::outcome(body.kept as u64, Some((body.size, body.complete))),
            Err(reason) => (CaptureStatus::Failed, Some(reason)),
        };
        let target = match body.part {
            Part::Request => Some(&mut record.request.body),
            Part::Response => record.response.as_mut().map(|r| &mut r.body),
        };
        if let Some(target) = target {
            inner.settle(target, &key, body.kept as u64, status, reason);
        }
    }
    let indexed = write_record(inner, record, &id).await;
    inner.queued.fetch_sub(weight, Ordering::AcqRel);
    if !indexed {
        inner.stats.records_failed.fetch_add(1, Ordering::Relaxed);
        inner.end_pending(1);
    }
}

/// Stores the record and hands it to the index; false if the index cannot
/// take it. A record the store refused is still indexed, and counted.
async fn write_record(inner: &Inner, record: ExchangeRecord, id: &ExchangeId) -> bool {
    let Ok(json) = serde_json::to_string(&record) else {
        return false;
    };
    let stored = put(inner, &id.record_key(), Bytes::from(json.clone()).into()).await;
    let counter = match stored {
        Ok(()) => &inner.stats.records_stored,
        Err(_) => &inner.stats.records_failed,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    inner.index.insert(record, json)
}
