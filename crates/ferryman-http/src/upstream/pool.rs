//! Keep-alive pool of upstream connections, keyed by destination, with an
//! idle timeout and a cap on open connections per host. HTTP/1 connections
//! serve one exchange at a time; an HTTP/2 connection is shared by all.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use http::uri::Authority;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2, TrySendError};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::{timeout_at, Instant};

use super::limits::Limits;
use super::sent::SentBody;
use super::Target;
use crate::limit::{Limit, Permit};

/// One connection's request side.
pub(crate) enum Sender {
    Http1(http1::SendRequest<SentBody>),
    Http2(http2::SendRequest<SentBody>),
}

impl Sender {
    pub(crate) async fn ready(&mut self) -> hyper::Result<()> {
        match self {
            Sender::Http1(s) => s.ready().await,
            Sender::Http2(s) => s.ready().await,
        }
    }

    pub(crate) fn is_http2(&self) -> bool {
        matches!(self, Sender::Http2(_))
    }

    /// Sends `req`, or hands it back if not a byte of it was written.
    pub(crate) async fn try_send(
        &mut self,
        req: Request<SentBody>,
    ) -> Result<Response<Incoming>, TrySendError<Request<SentBody>>> {
        match self {
            Sender::Http1(s) => s.try_send_request(req).await,
            Sender::Http2(s) => s.try_send_request(req).await,
        }
    }
}

/// The destination a pooled connection is good for, and the way out that
/// reached it. `Authority` compares case-insensitively and clones without
/// allocating.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PoolKey {
    authority: Authority,
    port: u16,
    https: bool,
    server_name: Option<Arc<str>>,
    outbound: u64,
    tls_generation: u64,
}

impl Hash for PoolKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // One write of the lowercased name: Authority's own Hash feeds the
        // hasher a byte at a time, which made SipHash a visible cost per request.
        let mut lower = [0u8; 64];
        for chunk in self.authority.as_str().as_bytes().chunks(lower.len()) {
            let lower = &mut lower[..chunk.len()];
            lower.copy_from_slice(chunk);
            lower.make_ascii_lowercase();
            state.write(lower);
        }
        state.write_u16(self.port);
        state.write_u8(u8::from(self.https));
        if let Some(name) = &self.server_name {
            state.write(name.as_bytes());
        }
        state.write_u64(self.outbound);
        state.write_u64(self.tls_generation);
    }
}

impl PoolKey {
    /// `tls_generation` tells connections checked under other TLS
    /// settings apart; an `upgrade` never goes to a forwarding proxy.
    pub(crate) fn new(target: &Target, tls_generation: u64, upgrade: bool) -> Self {
        let outbound = target.connector.pool_key();
        if target.forwarding_proxy(upgrade).is_some() {
            // Connections to a forwarding proxy serve every host.
            return Self {
                authority: Authority::from_static("forwarding-proxy"),
                port: 0,
                https: false,
                server_name: None,
                outbound,
                tls_generation,
            };
        }
        Self {
            authority: target.authority.clone(),
            port: target.port,
            https: target.https,
            server_name: target.server_name.clone(),
            outbound,
            tls_generation,
        }
    }
}

struct Idle<S> {
    sender: S,
    since: Instant,
    /// Its place among the sockets the process may hold.
    _place: Option<Permit>,
}

struct Host {
    idle: Vec<Idle<http1::SendRequest<SentBody>>>,
    /// The open HTTP/2 connection, if any, and when it was last handed out.
    shared: Option<Idle<http2::SendRequest<SentBody>>>,
    /// One permit per open connection, shared by every worker; the
    /// connection's driver task holds it.
    slots: Arc<Semaphore>,
    /// Connections this worker has open to the host.
    open: usize,
    /// Signalled when a connection goes idle or closes, for waiters at the cap.
    freed: Arc<Notify>,
}

impl Host {
    /// The shared HTTP/2 connection, unless it closed or sat unused too long.
    fn live_http2(
        &mut self,
        idle_timeout: Duration,
    ) -> Option<&mut Idle<http2::SendRequest<SentBody>>> {
        let now = Instant::now();
        self.shared
            .take_if(|h2| now.duration_since(h2.since) >= idle_timeout || h2.sender.is_closed());
        self.shared.as_mut()
    }

    fn take_idle(&mut self, idle_timeout: Duration) -> Option<Sender> {
        let now = Instant::now();
        if let Some(h2) = self.live_http2(idle_timeout) {
            h2.since = now;
            return Some(Sender::Http2(h2.sender.clone()));
        }
        // Most recently used first: it is the least likely to have been closed.
        while let Some(idle) = self.idle.pop() {
            if now.duration_since(idle.since) < idle_timeout && !idle.sender.is_closed() {
                return Some(Sender::Http1(idle.sender));
            }
        }
        None
    }

    /// Nothing pooled and no connection open from this worker: its slots
    /// are all in the shared semaphore or held by other workers.
    fn is_unused(&self) -> bool {
        self.idle.is_empty() && self.shared.is_none() && self.open == 0
    }
}

struct Shared {
    hosts: Mutex<HashMap<PoolKey, Host>>,
    /// The caps every worker's pool shares.
    limits: Arc<Limits>,
    /// The sockets the process may hold, where each kept connection takes
    /// a place; None: no cap.
    places: Option<Arc<Limit>>,
    max_idle_per_host: usize,
    idle_timeout: Duration,
}

/// What a checkout yields: a ready idle connection, or the right to open one.
pub(crate) enum Checkout {
    Idle(Sender),
    Open(Slot),
}

/// The right to open one connection to a host; release it when that connection closes.
pub(crate) struct Slot {
    _permit: OwnedSemaphorePermit,
    pool: Weak<Shared>,
    key: PoolKey,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(shared) = self.pool.upgrade() {
            if let Some(host) = lock(&shared).get_mut(&self.key) {
                host.open = host.open.saturating_sub(1);
                host.freed.notify_one();
            }
        }
    }
}

#[derive(Clone)]
pub(crate) struct Pool {
    shared: Arc<Shared>,
}

impl Pool {
    pub(crate) fn new(
        limits: Arc<Limits>,
        places: Option<Arc<Limit>>,
        max_idle_per_host: usize,
        idle_timeout: Duration,
    ) -> Self {
        let shared = Arc::new(Shared {
            hosts: Mutex::new(HashMap::new()),
            limits,
            places,
            max_idle_per_host,
            idle_timeout,
        });
        tokio::spawn(reap(Arc::downgrade(&shared)));
        Self { shared }
    }

    /// An idle connection if one is alive, else a slot to open a new one,
    /// waiting (until `deadline`) while the host is at its cap.
    pub(crate) async fn checkout(
        &self,
        key: &PoolKey,
        allow_idle: bool,
        deadline: Instant,
    ) -> Option<Checkout> {
        loop {
            let freed;
            let (notified, slots) = {
                let mut hosts = self.lock();
                // Looked up before inserting: the key is cloned only for a new host.
                let host = match hosts.get_mut(key) {
                    Some(host) => host,
                    None => {
                        let slots = self.shared.limits.host(key);
                        hosts.entry(key.clone()).or_insert_with(|| Host {
                            idle: Vec::new(),
                            shared: None,
                            slots,
                            open: 0,
                            freed: Arc::new(Notify::new()),
                        })
                    }
                };
                if allow_idle {
                    if let Some(sender) = host.take_idle(self.shared.idle_timeout) {
                        return Some(Checkout::Idle(sender));
                    }
                }
                if let Ok(permit) = host.slots.clone().try_acquire_owned() {
                    host.open += 1;
                    return Some(Checkout::Open(self.slot(permit, key)));
                }
                // Registered before the lock is released, so no wake-up, not
                // even a new HTTP/2 connection waking everyone, is missed.
                freed = host.freed.clone();
                let mut notified = Box::pin(freed.notified());
                notified.as_mut().enable();
                (notified, host.slots.clone())
            };
            // At the cap: a connection of this worker going idle, or a slot
            // freed by any worker, whichever comes first.
            tokio::select! {
                () = notified => continue,
                permit = timeout_at(deadline, slots.acquire_owned()) => {
                    let permit = permit.ok()?.ok()?;
                    if let Some(host) = self.lock().get_mut(key) {
                        host.open += 1;
                    }
                    return Some(Checkout::Open(self.slot(permit, key)));
                }
            }
        }
    }

    fn slot(&self, permit: OwnedSemaphorePermit, key: &PoolKey) -> Slot {
        Slot {
            _permit: permit,
            pool: Arc::downgrade(&self.shared),
            key: key.clone(),
        }
    }

    /// Gives a connection back once hyper says it can take the next request.
    /// An HTTP/2 connection never left: the pool keeps it while it is shared.
    pub(crate) fn give_back(&self, key: PoolKey, sender: Sender) {
        let Sender::Http1(mut sender) = sender else {
            return;
        };
        if sender.is_ready() {
            self.put(key, sender);
            return;
        }
        // hyper marks the connection ready a moment after the body ends, on
        // its own task; this wait lasts no longer than the connection.
        let pool = self.clone();
        tokio::spawn(async move {
            if sender.ready().await.is_ok() {
                pool.put(key, sender);
            }
        });
    }

    /// Whether an HTTP/2 connection to `key` is open and shared.
    pub(crate) fn shares_http2(&self, key: &PoolKey) -> bool {
        let idle_timeout = self.shared.idle_timeout;
        self.lock()
            .get_mut(key)
            .is_some_and(|host| host.live_http2(idle_timeout).is_some())
    }

    /// Makes a new HTTP/2 connection the one every exchange to `key` shares.
    /// Without a place for it among the sockets the process may hold, it
    /// serves the exchange that opened it and closes.
    pub(crate) fn share(&self, key: &PoolKey, sender: http2::SendRequest<SentBody>) {
        let Some(place) = self.place() else {
            return;
        };
        if let Some(host) = self.lock().get_mut(key) {
            host.shared = Some(Idle {
                sender,
                since: Instant::now(),
                _place: place,
            });
            host.freed.notify_waiters();
        }
    }

    /// A place for one more kept connection: Some(None) without a cap,
    /// None at the cap.
    fn place(&self) -> Option<Option<Permit>> {
        match &self.shared.places {
            Some(places) => places.try_acquire().map(Some),
            None => Some(None),
        }
    }

    fn put(&self, key: PoolKey, sender: http1::SendRequest<SentBody>) {
        let mut hosts = self.lock();
        let Some(host) = hosts.get_mut(&key) else {
            return;
        };
        if host.idle.len() >= self.shared.max_idle_per_host {
            return;
        }
        // At the cap on sockets, the connection closes instead.
        if let Some(place) = self.place() {
            host.idle.push(Idle {
                sender,
                since: Instant::now(),
                _place: place,
            });
            host.freed.notify_one();
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<PoolKey, Host>> {
        lock(&self.shared)
    }

    #[cfg(test)]
    fn idle_count(&self, key: &PoolKey) -> usize {
        self.lock().get(key).map_or(0, |h| h.idle.len())
    }
}

fn lock(shared: &Shared) -> MutexGuard<'_, HashMap<PoolKey, Host>> {
    // A panic while holding this lock leaves only plain data behind.
    shared.hosts.lock().unwrap_or_else(|e| e.into_inner())
}

/// Closes expired idle connections and forgets hosts with nothing open; ends
/// when the pool is dropped.
async fn reap(shared: Weak<Shared>) {
    let period = match shared.upgrade() {
        Some(s) => (s.idle_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(5)),
        None => return,
    };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let now = Instant::now();
        let mut hosts = lock(&shared);
        let fresh = |since: Instant| now.duration_since(since) < shared.idle_timeout;
        hosts.retain(|_, host| {
            host.idle
                .retain(|idle| fresh(idle.since) && !idle.sender.is_closed());
            // Dropping the pool's handle closes an HTTP/2 connection once its
            // last exchange ends.
            host.live_http2(shared.idle_timeout);
            !host.is_unused()
        });
        drop(hosts);
        shared.limits.sweep();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::test_target as target;

    #[tokio::test]
    async fn cap_makes_checkout_wait_for_a_freed_slot() {
        let pool = Pool::new(Limits::new(1, 0), None, 4, Duration::from_secs(60));
        let key = PoolKey::new(&target("Example"), 0, false);
        let soon = Instant::now() + Duration::from_millis(50);
        let Some(Checkout::Open(first)) = pool.checkout(&key, true, soon).await else {
            panic!("first checkout opens");
        };
        assert!(pool
            .checkout(&key, true, Instant::now() + Duration::from_millis(20))
            .await
            .is_none());
        let waiter = {
            let pool = pool.clone();
            let key = key.clone();
            tokio::spawn(async move {
                pool.checkout(&key, true, Instant::now() + Duration::from_secs(30))
                    .await
                    .is_some()
            })
        };
        drop(first);
        assert!(waiter.await.unwrap(), "a freed slot wakes the waiter");
        let same = PoolKey::new(&target("example:80"), 0, false);
        assert_eq!(pool.idle_count(&same), 0);
    }

    #[tokio::test]
    async fn the_cap_per_host_holds_across_the_pools_of_every_worker() {
        let limits = Limits::new(1, 0);
        let (one, two) = (
            Pool::new(limits.clone(), None, 4, Duration::from_secs(60)),
            Pool::new(limits, None, 4, Duration::from_secs(60)),
        );
        let key = PoolKey::new(&target("shared"), 0, false);
        let soon = || Instant::now() + Duration::from_millis(30);
        let Some(Checkout::Open(held)) = one.checkout(&key, true, soon()).await else {
            panic!("the first worker opens");
        };
        assert!(
            two.checkout(&key, true, soon()).await.is_none(),
            "the other worker waits"
        );
        let waiter = {
            let key = key.clone();
            tokio::spawn(async move {
                two.checkout(&key, true, Instant::now() + Duration::from_secs(30))
                    .await
                    .is_some()
            })
        };
        drop(held);
        assert!(
            waiter.await.unwrap(),
            "a slot freed by one worker wakes the other"
        );
    }
}
