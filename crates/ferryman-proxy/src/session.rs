//! Sessions and traffic accounting. A session is a client connection, a
//! tunnel, an intercepted tunnel or an exchange; each has an id, a parent,
//! byte counters and a lifetime. Bytes are counted once, where they cross a
//! socket, and added up the parent chain into the client's and the global
//! figures; an exchange counts its bodies, summed into its parent's
//! `children` figures.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// What a session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A client's connection to the proxy.
    Http,
    /// One request and its response.
    Exchange,
    /// A CONNECT tunnel carried as opaque bytes.
    Tunnel,
    InterceptedTls,
    InterceptedHttp,
    Websocket,
    /// A client's connection to the SOCKS5 listener.
    Socks5,
    /// A SOCKS5 UDP association.
    Udp,
    /// A connection to a service published through the tunnel.
    Service,
}

impl Kind {
    const ALL: [Kind; 9] = [
        Kind::Http,
        Kind::Exchange,
        Kind::Tunnel,
        Kind::InterceptedTls,
        Kind::InterceptedHttp,
        Kind::Websocket,
        Kind::Socks5,
        Kind::Udp,
        Kind::Service,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Http => "http",
            Kind::Exchange => "exchange",
            Kind::Tunnel => "tunnel",
            Kind::InterceptedTls => "intercepted-tls",
            Kind::InterceptedHttp => "intercepted-http",
            Kind::Websocket => "websocket",
            Kind::Socks5 => "socks5",
            Kind::Udp => "udp",
            Kind::Service => "service",
        }
    }

    fn from_raw(raw: u8) -> Kind {
        Kind::ALL
            .get(usize::from(raw))
            .copied()
            .unwrap_or(Kind::Http)
    }
}

/// Up (client to server) and down byte counters.
#[derive(Debug, Default)]
pub struct Counters {
    up: AtomicU64,
    down: AtomicU64,
}

impl Counters {
    fn add(&self, up: u64, down: u64) {
        if up > 0 {
            self.up.fetch_add(up, Ordering::Relaxed);
        }
        if down > 0 {
            self.down.fetch_add(down, Ordering::Relaxed);
        }
    }

    pub fn up(&self) -> u64 {
        self.up.load(Ordering::Relaxed)
    }

    pub fn down(&self) -> u64 {
        self.down.load(Ordering::Relaxed)
    }
}

/// Totals and rates for the whole proxy.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct TrafficSnapshot {
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// Bytes per second over the time since the previous sample (at least
    /// `RATE_WINDOW`; callers in between get the last rates).
    pub rate_up: f64,
    pub rate_down: f64,
}

/// Bytes by client IP or by target host.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct KeyedBytes {
    pub key: String,
    pub bytes_up: u64,
    pub bytes_down: u64,
}

/// The shortest window a rate is measured over. Under a second, so a
/// once-a-second reader (the dashboard's traffic topic) whose timer fires a
/// hair early still gets a fresh sample every time.
const RATE_WINDOW: Duration = Duration::from_millis(900);

/// Clients and hosts tracked at once; the least used are forgotten first.
const TRACKED_KEYS: u64 = 10_000;

struct Traffic {
    global: Arc<Counters>,
    clients: moka::sync::Cache<IpAddr, Arc<Counters>>,
    hosts: moka::sync::Cache<String, Arc<Counters>>,
    /// The previous sample for rates: when, up, down, and the rates then.
    sample: Mutex<(Instant, u64, u64, f64, f64)>,
}

/// One row of the connection table.
pub struct Session {
    id: u64,
    parent: Option<Arc<Session>>,
    kind: AtomicU8,
    client: SocketAddr,
    /// `client` as text, written once per client connection: every
    /// exchange's log line and table row shows it, and formatting an
    /// address costs more than the rest of the line.
    client_text: Arc<str>,
    target: String,
    started: SystemTime,
    start: Instant,
    closed: OnceLock<SystemTime>,
    /// The way out the policy chose and the rule that chose it.
    route: OnceLock<(Arc<str>, Arc<str>)>,
    /// Who carries it beyond the way out: the agent of a group.
    carrier: OnceLock<Arc<str>>,
    bytes: Counters,
    /// For a tunnel: the bodies of the exchanges inside it.
    children: Counters,
    client_bytes: Arc<Counters>,
    /// Where this session's bytes count per host, if they do.
    host_bytes: Option<Arc<Counters>>,
    global_bytes: Arc<Counters>,
    /// Weak: the table lists sessions, so a strong link would be a cycle.
    table: Weak<TableInner>,
    cancel: CancellationToken,
}

/// A session as the table shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SessionSnapshot {
    pub id: u64,
    pub parent_id: Option<u64>,
    pub kind: &'static str,
    pub client: String,
    pub target: String,
    /// The way out the policy chose (`direct`, an upstream proxy, a
    /// group...); none for a client connection.
    pub outbound: Option<Arc<str>>,
    /// The rule that chose it (`default` when none did).
    pub rule: Option<Arc<str>>,
    /// The tunnel's agent that carries it, when it goes through one.
    pub agent: Option<Arc<str>>,
    pub started_ms: u64,
    pub state: &'static str,
    pub closed_ms: Option<u64>,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub children_up: u64,
    pub children_down: u64,
}

/// The connection table: live sessions, recently closed ones, and a
/// bounded history.
#[derive(Clone)]
pub struct Sessions {
    inner: Arc<TableInner>,
}

struct TableInner {
    next_id: AtomicU64,
    traffic: Traffic,
    open: Mutex<HashMap<u64, Arc<Session>>>,
    /// Closed, still shown as closed, oldest first.
    lingering: Mutex<VecDeque<Arc<Session>>>,
    history: Mutex<VecDeque<SessionSnapshot>>,
    linger: Duration,
    history_len: usize,
}

/// Closed sessions shown as closed at once, at most; older ones move to
/// the history early.
const MAX_LINGERING: usize = 10_000;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Sessions {
    /// Closed sessions stay listed as closed for `linger`, then move to a
    /// history of `history_len` entries.
    pub fn new(linger: Duration, history_len: usize) -> Self {
        Self {
            inner: Arc::new(TableInner {
                next_id: AtomicU64::new(1),
                traffic: Traffic {
                    global: Arc::default(),
                    clients: moka::sync::Cache::new(TRACKED_KEYS),
                    hosts: moka::sync::Cache::new(TRACKED_KEYS),
                    sample: Mutex::new((Instant::now(), 0, 0, 0.0, 0.0)),
                },
                open: Mutex::new(HashMap::new()),
                lingering: Mutex::new(VecDeque::new()),
                history: Mutex::new(VecDeque::new()),
                linger,
                history_len,
            }),
        }
    }

    /// A new client connection.
    /// A client's connection to a listener: `kind` says which, `target`
    /// where it goes when the listener alone says so (a published service).
    pub(crate) fn connection(
        &self,
        kind: Kind,
        client: SocketAddr,
        target: String,
    ) -> Arc<SessionGuard> {
        Arc::new(self.open(None, kind, client, target, None))
    }

    /// A new session inside `parent`, which stays open as long as it does;
    /// `host` is the target host its bytes count for, unless the parent
    /// already counts them.
    pub(crate) fn child(
        &self,
        parent: &Arc<SessionGuard>,
        kind: Kind,
        target: String,
        host: Option<&str>,
    ) -> Arc<SessionGuard> {
        let host = host.filter(|_| parent.host_bytes.is_none());
        let mut guard = self.open(
            Some(parent.session.clone()),
            kind,
            parent.client,
            target,
            host,
        );
        guard.parent = Some(parent.clone());
        Arc::new(guard)
    }

    fn open(
        &self,
        parent: Option<Arc<Session>>,
        kind: Kind,
        client: SocketAddr,
        target: String,
        host: Option<&str>,
    ) -> SessionGuard {
        let inner = &self.inner;
        let traffic = &inner.traffic;
        let (client_bytes, client_text) = match &parent {
            Some(parent) => (parent.client_bytes.clone(), parent.client_text.clone()),
            None => (
                traffic.clients.get_with(client.ip(), Arc::default),
                client.to_string().into(),
            ),
        };
        let host_bytes = host.map(|h| traffic.hosts.get_with(h.to_ascii_lowercase(), Arc::default));
        let cancel = match &parent {
            Some(parent) => parent.cancel.child_token(),
            None => CancellationToken::new(),
        };
        let session = Arc::new(Session {
            id: inner.next_id.fetch_add(1, Ordering::Relaxed),
            parent,
            kind: AtomicU8::new(kind as u8),
            client,
            client_text,
            target,
            started: SystemTime::now(),
            start: Instant::now(),
            closed: OnceLock::new(),
            route: OnceLock::new(),
            carrier: OnceLock::new(),
            bytes: Counters::default(),
            children: Counters::default(),
            client_bytes,
            host_bytes,
            global_bytes: traffic.global.clone(),
            table: Arc::downgrade(inner),
            cancel,
        });
        lock(&inner.open).insert(session.id, session.clone());
        SessionGuard {
            session,
            parent: None,
        }
    }

    /// Open sessions and those closed within the linger time, by id.
    pub fn list(&self) -> Vec<SessionSnapshot> {
        self.inner.expire();
        let mut all: Vec<SessionSnapshot> = lock(&self.inner.open)
            .values()
            .map(|s| s.snapshot())
            .collect();
        all.extend(lock(&self.inner.lingering).iter().map(|s| s.snapshot()));
        all.sort_by_key(|s| s.id);
        all
    }

    /// Open sessions counted by kind; every kind is listed, zero or not.
    pub fn active_by_kind(&self) -> Vec<(&'static str, usize)> {
        let mut counts = [0usize; Kind::ALL.len()];
        for session in lock(&self.inner.open).values() {
            counts[session.kind() as usize] += 1;
        }
        Kind::ALL
            .iter()
            .zip(counts)
            .map(|(kind, n)| (kind.name(), n))
            .collect()
    }

    /// Sessions closed longer ago than the linger time, oldest first.
    pub fn history(&self) -> Vec<SessionSnapshot> {
        self.inner.expire();
        lock(&self.inner.history).iter().cloned().collect()
    }

    /// Closes a session, its children first; false if it is not open.
    pub fn close(&self, id: u64) -> bool {
        let Some(session) = lock(&self.inner.open).get(&id).cloned() else {
            return false;
        };
        session.close_tree();
        true
    }

    /// Closes every client connection from `ip`; returns how many.
    pub fn close_client(&self, ip: IpAddr) -> usize {
        self.close_roots(|s| s.client.ip() == ip)
    }

    /// Closes every client connection; returns how many.
    pub fn close_all(&self) -> usize {
        self.close_roots(|_| true)
    }

    fn close_roots(&self, which: impl Fn(&Session) -> bool) -> usize {
        // A connection closed a moment ago may still be in the table while
        // its task winds down: it is not closed twice, nor counted.
        let roots: Vec<Arc<Session>> = lock(&self.inner.open)
            .values()
            .filter(|s| s.parent.is_none() && !s.cancel.is_cancelled() && which(s))
            .cloned()
            .collect();
        roots.iter().for_each(|s| s.close_tree());
        roots.len()
    }

    pub fn traffic(&self) -> TrafficSnapshot {
        let traffic = &self.inner.traffic;
        let (up, down) = (traffic.global.up(), traffic.global.down());
        let mut sample = lock(&traffic.sample);
        let elapsed = sample.0.elapsed();
        if elapsed >= RATE_WINDOW {
            let secs = elapsed.as_secs_f64();
            *sample = (
                Instant::now(),
                up,
                down,
                (up - sample.1) as f64 / secs,
                (down - sample.2) as f64 / secs,
            );
        }
        TrafficSnapshot {
            bytes_up: up,
            bytes_down: down,
            rate_up: sample.3,
            rate_down: sample.4,
        }
    }

    /// Bytes per client IP, most first.
    pub fn clients(&self) -> Vec<KeyedBytes> {
        keyed(
            self.inner
                .traffic
                .clients
                .iter()
                .map(|(k, v)| (k.to_string(), v)),
        )
    }

    /// Bytes per target host, most first.
    pub fn hosts(&self) -> Vec<KeyedBytes> {
        keyed(
            self.inner
                .traffic
                .hosts
                .iter()
                .map(|(k, v)| ((*k).clone(), v)),
        )
    }
}

fn keyed(entries: impl Iterator<Item = (String, Arc<Counters>)>) -> Vec<KeyedBytes> {
    let mut all: Vec<KeyedBytes> = entries
        .map(|(key, c)| KeyedBytes {
            key,
            bytes_up: c.up(),
            bytes_down: c.down(),
        })
        .collect();
    all.sort_by_key(|k| std::cmp::Reverse(k.bytes_up + k.bytes_down));
    all
}

impl TableInner {
    /// Moves sessions closed longer than the linger time into the history.
    fn expire(&self) {
        let now = SystemTime::now();
        let mut lingering = lock(&self.lingering);
        let mut moved = Vec::new();
        while let Some(oldest) = lingering.front() {
            let closed = oldest.closed.get().copied().unwrap_or(now);
            let expired = now.duration_since(closed).unwrap_or_default() >= self.linger;
            if !expired && lingering.len() <= MAX_LINGERING {
                break;
            }
            if let Some(session) = lingering.pop_front() {
                moved.push(session.snapshot());
            }
        }
        drop(lingering);
        if moved.is_empty() {
            return;
        }
        let mut history = lock(&self.history);
        history.extend(moved);
        while history.len() > self.history_len {
            history.pop_front();
        }
    }
}

impl Session {
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn parent_id(&self) -> Option<u64> {
        self.parent.as_ref().map(|p| p.id)
    }

    pub(crate) fn kind(&self) -> Kind {
        Kind::from_raw(self.kind.load(Ordering::Relaxed))
    }

    pub(crate) fn set_kind(&self, kind: Kind) {
        self.kind.store(kind as u8, Ordering::Relaxed);
    }

    pub(crate) fn set_route(&self, outbound: &Arc<str>, rule: &Arc<str>) {
        let _ = self.route.set((outbound.clone(), rule.clone()));
    }

    pub(crate) fn set_carrier(&self, carrier: Arc<str>) {
        let _ = self.carrier.set(carrier);
    }

    /// What the session is about: a URL for an exchange, `host:port` for a tunnel.
    pub(crate) fn target(&self) -> &str {
        &self.target
    }

    pub(crate) fn client(&self) -> SocketAddr {
        self.client
    }

    pub(crate) fn client_text(&self) -> &str {
        &self.client_text
    }

    /// Cancelled when the session is closed from outside (or its parent is).
    pub(crate) fn cancelled(&self) -> &CancellationToken {
        &self.cancel
    }

    pub(crate) fn elapsed_ms(&self) -> f64 {
        self.start.elapsed().as_micros() as f64 / 1000.0
    }

    pub(crate) fn bytes(&self) -> (u64, u64) {
        (self.bytes.up(), self.bytes.down())
    }

    /// Bytes that crossed the client socket while this session owned it.
    pub(crate) fn socket_bytes(&self, up: u64, down: u64) {
        let mut host_counted = false;
        let mut next = Some(self);
        while let Some(session) = next {
            session.bytes.add(up, down);
            if let (false, Some(host)) = (host_counted, &session.host_bytes) {
                host.add(up, down);
                host_counted = true;
            }
            next = session.parent.as_deref();
        }
        self.client_bytes.add(up, down);
        self.global_bytes.add(up, down);
    }

    /// Bytes the parent already counted at the socket that belong to this
    /// session too (read ahead of a tunnel's start, or carried by an upgrade).
    pub(crate) fn adopt_bytes(&self, up: u64, down: u64) {
        self.bytes.add(up, down);
        if let Some(host) = &self.host_bytes {
            host.add(up, down);
        }
    }

    /// Body bytes of an exchange.
    pub(crate) fn body_bytes(&self, up: u64, down: u64) {
        self.bytes.add(up, down);
        if let Some(parent) = &self.parent {
            parent.children.add(up, down);
        }
        if let Some(host) = &self.host_bytes {
            host.add(up, down);
        }
    }

    fn close_tree(self: &Arc<Self>) {
        let children: Vec<Arc<Session>> = match self.table.upgrade() {
            Some(table) => lock(&table.open)
                .values()
                .filter(|s| s.parent.as_ref().is_some_and(|p| p.id == self.id))
                .cloned()
                .collect(),
            None => Vec::new(),
        };
        for child in children {
            child.close_tree();
        }
        self.cancel.cancel();
    }

    fn snapshot(&self) -> SessionSnapshot {
        let closed = self.closed.get().copied();
        SessionSnapshot {
            id: self.id,
            parent_id: self.parent_id(),
            kind: self.kind().name(),
            client: self.client_text.to_string(),
            target: self.target.clone(),
            outbound: self.route.get().map(|(outbound, _)| outbound.clone()),
            rule: self.route.get().map(|(_, rule)| rule.clone()),
            agent: self.carrier.get().cloned(),
            started_ms: unix_ms(self.started),
            state: if closed.is_some() { "closed" } else { "open" },
            closed_ms: closed.map(unix_ms),
            bytes_up: self.bytes.up(),
            bytes_down: self.bytes.down(),
            children_up: self.children.up(),
            children_down: self.children.down(),
        }
    }
}

/// Owns a session's place in the table: dropping it marks the session
/// closed, and it stays listed as such for the linger time. A session keeps
/// its parent open (a connection lives on in the tunnel it turned into).
pub(crate) struct SessionGuard {
    session: Arc<Session>,
    parent: Option<Arc<SessionGuard>>,
}

impl std::ops::Deref for SessionGuard {
    type Target = Session;

    fn deref(&self) -> &Session {
        &self.session
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let session = &self.session;
        let _ = session.closed.set(SystemTime::now());
        let Some(table) = session.table.upgrade() else {
            return;
        };
        lock(&table.open).remove(&session.id);
        lock(&table.lingering).push_back(session.clone());
        table.expire();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_bytes_over_the_time_they_took_and_active_counts_follow_kinds() {
        let sessions = Sessions::new(Duration::from_secs(5), 10);
        let start = sessions.traffic();
        assert_eq!((start.rate_up, start.rate_down), (0.0, 0.0));
        let connection = sessions.connection(
            Kind::Http,
            SocketAddr::from(([127, 0, 0, 1], 40000)),
            String::new(),
        );
        connection.socket_bytes(300, 9_000);
        // A rate is measured over a window of its own; callers inside it
        // get the previous rates.
        assert_eq!(sessions.traffic().rate_down, 0.0);
        let waited = Instant::now();
        std::thread::sleep(RATE_WINDOW);
        let sampled = sessions.traffic();
        let most = waited
            .elapsed()
            .as_secs_f64()
            .max(RATE_WINDOW.as_secs_f64());
        assert!(
            sampled.rate_down > 0.0 && sampled.rate_down <= 9_000.0 / RATE_WINDOW.as_secs_f64()
        );
        assert!(sampled.rate_down >= 9_000.0 / (most + 1.0), "{sampled:?}");
        assert_eq!((sampled.bytes_up, sampled.bytes_down), (300, 9_000));
        let active: HashMap<_, _> = sessions.active_by_kind().into_iter().collect();
        assert_eq!((active["http"], active["tunnel"]), (1, 0));
        assert_eq!(active.len(), Kind::ALL.len());
    }
}
