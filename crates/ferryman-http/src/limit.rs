//! A cap on sockets held at once, which a reload may raise or lower while
//! they are open: lowering it takes places back as they are given up,
//! never by closing anything. The proxy holds a place per client connection
//! (and the tunnel it may turn into), the upstream pool one per connection
//! it keeps idle.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub struct Limit {
    semaphore: Arc<Semaphore>,
    limit: AtomicUsize,
    /// Permits to take back as they are returned, after a lowered limit
    /// found them in use.
    owed: Arc<AtomicUsize>,
}

/// One connection's place under the limit, given back when dropped.
pub struct Permit {
    permit: Option<OwnedSemaphorePermit>,
    owed: Arc<AtomicUsize>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let owed = self
            .owed
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        if owed.is_ok() {
            if let Some(permit) = self.permit.take() {
                permit.forget();
            }
        }
    }
}

impl Limit {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            semaphore: Arc::new(Semaphore::new(limit)),
            limit: AtomicUsize::new(limit),
            owed: Arc::default(),
        })
    }

    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Acquire)
    }

    fn permit(&self, permit: OwnedSemaphorePermit) -> Permit {
        Permit {
            permit: Some(permit),
            owed: self.owed.clone(),
        }
    }

    pub fn try_acquire(&self) -> Option<Permit> {
        let permit = self.semaphore.clone().try_acquire_owned().ok()?;
        Some(self.permit(permit))
    }

    /// Waits for a place; None once the limit is closed.
    pub async fn acquire(&self) -> Option<Permit> {
        let permit = self.semaphore.clone().acquire_owned().await.ok()?;
        Some(self.permit(permit))
    }

    pub fn resize(&self, limit: usize) {
        let before = self.limit.swap(limit, Ordering::AcqRel);
        if limit > before {
            let mut more = limit - before;
            // Places still owed from an earlier lowering are cancelled first.
            let _ = self
                .owed
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |owed| {
                    let cancelled = owed.min(more);
                    more -= cancelled;
                    Some(owed - cancelled)
                });
            self.semaphore.add_permits(more);
        } else if limit < before {
            let fewer = before - limit;
            let taken = self.semaphore.forget_permits(fewer);
            self.owed.fetch_add(fewer - taken, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lowered_limit_takes_places_back_as_connections_end() {
        let limit = Limit::new(3);
        let held: Vec<Permit> = (0..3).filter_map(|_| limit.try_acquire()).collect();
        assert_eq!(held.len(), 3);
        limit.resize(1);
        drop(held);
        // Two of the three returned places were taken back.
        let again: Vec<Permit> = (0..3).filter_map(|_| limit.try_acquire()).collect();
        assert_eq!(again.len(), 1);
        limit.resize(2);
        assert!(limit.try_acquire().is_some());
        drop(again);
    }

    #[test]
    fn raising_cancels_what_is_still_owed() {
        let limit = Limit::new(2);
        let held: Vec<Permit> = (0..2).filter_map(|_| limit.try_acquire()).collect();
        limit.resize(0);
        limit.resize(2);
        drop(held);
        let again: Vec<Permit> = (0..3).filter_map(|_| limit.try_acquire()).collect();
        assert_eq!(again.len(), 2);
    }
}
