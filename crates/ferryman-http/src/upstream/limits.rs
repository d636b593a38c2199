//! Caps on upstream connections that hold across every worker thread:
//! connections open to one host, and exchanges one client has in flight to
//! one host (so a client cannot take a host's whole share, say with uploads
//! it never finishes). Each worker keeps its own idle connections; only
//! these counts are shared.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{timeout_at, Instant};

use super::pool::PoolKey;

pub(crate) struct Limits {
    per_host: AtomicUsize,
    /// 0: no cap per client.
    per_client: AtomicUsize,
    hosts: Mutex<HashMap<PoolKey, Arc<Semaphore>>>,
    clients: Mutex<HashMap<(IpAddr, PoolKey), Arc<Semaphore>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Limits {
    pub(crate) fn new(per_host: usize, per_client: usize) -> Arc<Self> {
        Arc::new(Self {
            per_host: AtomicUsize::new(per_host),
            per_client: AtomicUsize::new(per_client),
            hosts: Mutex::default(),
            clients: Mutex::default(),
        })
    }

    /// The slots of `key`'s host, shared by every worker's pool.
    pub(crate) fn host(&self, key: &PoolKey) -> Arc<Semaphore> {
        let mut hosts = lock(&self.hosts);
        if let Some(slots) = hosts.get(key) {
            return slots.clone();
        }
        let slots = Arc::new(Semaphore::new(self.per_host.load(Ordering::Relaxed)));
        hosts.insert(key.clone(), slots.clone());
        slots
    }

    /// A place for one exchange of `client` to `key`'s host, waiting until
    /// `deadline` while the client has its share in flight; None then.
    /// Without a cap per client, always a place.
    pub(crate) async fn client(
        &self,
        client: Option<IpAddr>,
        key: &PoolKey,
        deadline: Instant,
    ) -> Option<Option<OwnedSemaphorePermit>> {
        let per_client = self.per_client.load(Ordering::Relaxed);
        let Some(client) = client.filter(|_| per_client > 0) else {
            return Some(None);
        };
        let places = {
            let mut clients = lock(&self.clients);
            clients
                .entry((client, key.clone()))
                .or_insert_with(|| Arc::new(Semaphore::new(per_client)))
                .clone()
        };
        if let Ok(place) = places.clone().try_acquire_owned() {
            return Some(Some(place));
        }
        let place = timeout_at(deadline, places.acquire_owned()).await.ok()?;
        place.ok().map(Some)
    }

    /// Forgets hosts and clients nothing holds any more.
    pub(crate) fn sweep(&self) {
        let per_host = self.per_host.load(Ordering::Relaxed);
        lock(&self.hosts)
            .retain(|_, s| Arc::strong_count(s) > 1 || s.available_permits() < per_host);
        lock(&self.clients).retain(|_, s| Arc::strong_count(s) > 1);
    }

    /// New caps, for hosts and clients known already too: a raised cap
    /// frees places at once, a lowered one takes back those free now (the
    /// rest come back as connections close, once the map forgets them).
    pub(crate) fn resize(&self, per_host: usize, per_client: usize) {
        let resize = |semaphore: &Semaphore, before: usize, after: usize| {
            if after > before {
                semaphore.add_permits(after - before);
            } else {
                semaphore.forget_permits(before - after);
            }
        };
        let before = self.per_host.swap(per_host, Ordering::Relaxed);
        for slots in lock(&self.hosts).values() {
            resize(slots, before, per_host);
        }
        let before = self.per_client.swap(per_client, Ordering::Relaxed);
        let mut clients = lock(&self.clients);
        if per_client == 0 {
            clients.clear();
        }
        for places in clients.values() {
            resize(places, before, per_client);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use crate::upstream::test_target;

    #[tokio::test]
    async fn a_client_waits_once_it_has_its_share_and_others_do_not() {
        let limits = Limits::new(8, 2);
        let key = PoolKey::new(&test_target("host"), 0, false);
        let soon = || Instant::now() + Duration::from_millis(30);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let first = limits.client(Some(a), &key, soon()).await.unwrap();
        let _second = limits.client(Some(a), &key, soon()).await.unwrap();
        assert!(
            limits.client(Some(a), &key, soon()).await.is_none(),
            "a third waits, then gives up"
        );
        assert!(limits
            .client(Some(b), &key, soon())
            .await
            .unwrap()
            .is_some());
        drop(first);
        assert!(limits.client(Some(a), &key, soon()).await.is_some());
        assert!(
            limits.client(None, &key, soon()).await.unwrap().is_none(),
            "no client, no cap"
        );
        let hosts = limits.host(&key);
        assert!(
            Arc::ptr_eq(&hosts, &limits.host(&key)),
            "one host, one set of slots"
        );
        drop(hosts);
        limits.sweep();
        assert!(lock(&limits.hosts).is_empty());
    }
}
