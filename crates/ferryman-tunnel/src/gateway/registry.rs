//! The agents connected to a gateway, by id, with their carriers. A
//! carrier is in the registry while its [`Registered`] handle lives, and
//! dropping the handle takes out that carrier and nothing else: a stale
//! carrier that dies late can never remove the session that replaced it.
//! A newer session of an agent closes the older one's carriers; an older
//! one is refused.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use bytes::Bytes;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::Via;
use crate::wire::Session;

/// Who an agent is, as it said when its carrier connected.
#[derive(Debug)]
pub struct AgentInfo {
    pub id: Arc<str>,
    pub group: Arc<str>,
    pub session: Session,
    pub version: String,
    /// The SHA-256 of the token it presented.
    pub(crate) token: [u8; 32],
}

/// One carrier: a WebSocket with h2 over it, from one agent.
pub(crate) struct Carrier {
    serial: u64,
    pub(crate) agent: Arc<AgentInfo>,
    pub(crate) remote: SocketAddr,
    pub(crate) since: SystemTime,
    pub(crate) sender: h2::client::SendRequest<Bytes>,
    /// Streams open now, and ever opened.
    open: AtomicUsize,
    opened: AtomicU64,
    /// Notified when the last open stream ends, and when it retires.
    pub(crate) idle: Notify,
    pub(crate) rtt_us: Arc<AtomicU64>,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    /// Cancelled to close the carrier (heartbeat lost, replaced, revoked,
    /// disconnected).
    pub(crate) closed: CancellationToken,
    /// Takes no new streams (its stream ids run out, or shutdown).
    retiring: std::sync::atomic::AtomicBool,
}

/// h2 stream ids run out after 2^30 client streams; a carrier that has
/// opened this many takes no more and closes once the last ends.
const STREAMS_PER_CARRIER: u64 = (1 << 30) - 1024;

impl Carrier {
    pub(crate) fn new(
        agent: Arc<AgentInfo>,
        remote: SocketAddr,
        sender: h2::client::SendRequest<Bytes>,
    ) -> Self {
        Self {
            serial: 0,
            agent,
            remote,
            since: SystemTime::now(),
            sender,
            open: AtomicUsize::new(0),
            opened: AtomicU64::new(0),
            idle: Notify::new(),
            rtt_us: Arc::default(),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            closed: CancellationToken::new(),
            retiring: Default::default(),
        }
    }

    pub(crate) fn open_streams(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Takes no new streams from now on; whoever waits for the carrier to
    /// go idle is told.
    pub(crate) fn retire(&self) {
        if !self.retiring.swap(true, Ordering::Relaxed) {
            self.idle.notify_waiters();
        }
    }

    pub(crate) fn is_retiring(&self) -> bool {
        self.retiring.load(Ordering::Relaxed)
    }

    fn takes_streams(&self) -> bool {
        !self.closed.is_cancelled() && !self.is_retiring()
    }

    /// Counts a stream as open on this carrier until the guard drops.
    pub(crate) fn stream(self: &Arc<Self>) -> StreamGuard {
        self.open.fetch_add(1, Ordering::Relaxed);
        if self.opened.fetch_add(1, Ordering::Relaxed) >= STREAMS_PER_CARRIER {
            self.retire();
        }
        StreamGuard(self.clone())
    }
}

/// A stream's count on its carrier.
pub(crate) struct StreamGuard(pub(crate) Arc<Carrier>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

struct Entry {
    info: Arc<AgentInfo>,
    since: SystemTime,
    carriers: Vec<Arc<Carrier>>,
}

#[derive(Default)]
struct State {
    agents: HashMap<Arc<str>, Entry>,
    next_serial: u64,
    /// Rotates ties between equally loaded agents.
    turn: usize,
}

/// Every connected agent.
pub struct Registry {
    state: Mutex<State>,
    changes: watch::Sender<u64>,
}

/// A carrier's place in the registry, held by the task serving it.
pub(crate) struct Registered {
    registry: Arc<Registry>,
    agent: Arc<str>,
    serial: u64,
}

/// An agent as the admin lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AgentSnapshot {
    pub id: String,
    pub group: String,
    pub version: String,
    pub session: String,
    /// Where its first carrier comes from.
    pub remote: String,
    /// Unix milliseconds.
    pub connected_since_ms: u64,
    pub carriers: usize,
    pub open_streams: usize,
    pub streams_opened: u64,
    /// The best last heartbeat round trip of its carriers, in microseconds.
    pub rtt_us: Option<u64>,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            state: Mutex::default(),
            changes: watch::Sender::new(0),
        }
    }
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    /// A receiver that sees every change (agents joining, leaving).
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Whether an agent's session may connect now: not if a newer session
    /// of the same agent is connected.
    pub(crate) fn admits(&self, id: &str, session: Session) -> Result<(), String> {
        match self.lock().agents.get(id) {
            Some(entry) if entry.info.session > session => Err(format!(
                "a newer session of agent {id} is connected ({}); this one ({session}) is stale",
                entry.info.session
            )),
            _ => Ok(()),
        }
    }

    /// Adds a carrier: to its agent's session, or replacing an older
    /// session (whose carriers close).
    pub(crate) fn register(
        self: &Arc<Self>,
        mut carrier: Carrier,
    ) -> Result<(Arc<Carrier>, Registered), String> {
        let mut state = self.lock();
        state.next_serial += 1;
        carrier.serial = state.next_serial;
        let carrier = Arc::new(carrier);
        let info = carrier.agent.clone();
        match state.agents.get_mut(&info.id) {
            Some(entry) if entry.info.session == info.session => {
                entry.carriers.push(carrier.clone());
            }
            Some(entry) if entry.info.session > info.session => {
                return Err(format!(
                    "a newer session of agent {} is connected; this one is stale",
                    info.id
                ));
            }
            Some(entry) => {
                info!(agent = %info.id, old = %entry.info.session, new = %info.session,
                    "agent reconnected with a new session; the old one's carriers close");
                for old in &entry.carriers {
                    old.closed.cancel();
                }
                *entry = Entry {
                    info: info.clone(),
                    since: carrier.since,
                    carriers: vec![carrier.clone()],
                };
            }
            None => {
                state.agents.insert(
                    info.id.clone(),
                    Entry {
                        info: info.clone(),
                        since: carrier.since,
                        carriers: vec![carrier.clone()],
                    },
                );
            }
        }
        drop(state);
        self.changed();
        let registered = Registered {
            registry: self.clone(),
            agent: info.id.clone(),
            serial: carrier.serial,
        };
        Ok((carrier, registered))
    }

    /// The carriers a stream to `via` may take, best first: one per agent
    /// (its least busy carrier), agents with fewer open streams first.
    pub(crate) fn candidates(&self, via: &Via) -> Vec<Arc<Carrier>> {
        let mut state = self.lock();
        state.turn = state.turn.wrapping_add(1);
        let turn = state.turn;
        let mut found: Vec<(usize, Arc<Carrier>)> = state
            .agents
            .values()
            .filter(|e| match via {
                Via::Group(group) => *e.info.group == **group,
                Via::Agent(id) => *e.info.id == **id,
            })
            .filter_map(|e| {
                let load = e.carriers.iter().map(|c| c.open_streams()).sum();
                let best = e
                    .carriers
                    .iter()
                    .filter(|c| c.takes_streams())
                    .min_by_key(|c| c.open_streams())?;
                Some((load, best.clone()))
            })
            .collect();
        drop(state);
        if !found.is_empty() {
            let n = found.len();
            found.rotate_left(turn % n);
        }
        found.sort_by_key(|(load, _)| *load);
        found.into_iter().map(|(_, carrier)| carrier).collect()
    }

    /// Closes the carriers of agents `keep` refuses (a token revoked, a
    /// group no longer allowed); returns how many agents that was.
    pub(crate) fn close_unless(&self, keep: impl Fn(&AgentInfo) -> bool) -> usize {
        let state = self.lock();
        let mut closed = 0;
        for entry in state.agents.values().filter(|e| !keep(&e.info)) {
            info!(agent = %entry.info.id, group = %entry.info.group, "agent no longer allowed; disconnecting it");
            entry.carriers.iter().for_each(|c| c.closed.cancel());
            closed += 1;
        }
        closed
    }

    /// Closes an agent's carriers (it will reconnect unless its token is
    /// revoked). False if no such agent is connected.
    pub fn disconnect(&self, id: &str) -> bool {
        match self.lock().agents.get(id) {
            Some(entry) => {
                entry.carriers.iter().for_each(|c| c.closed.cancel());
                true
            }
            None => false,
        }
    }

    /// Connected agents of each group.
    pub fn groups(&self) -> HashMap<String, usize> {
        let mut groups = HashMap::new();
        for entry in self.lock().agents.values() {
            *groups.entry(entry.info.group.to_string()).or_default() += 1;
        }
        groups
    }

    pub fn snapshot(&self) -> Vec<AgentSnapshot> {
        let state = self.lock();
        let mut agents: Vec<AgentSnapshot> = state
            .agents
            .values()
            .map(|e| {
                let sum = |f: fn(&Carrier) -> u64| e.carriers.iter().map(|c| f(c)).sum::<u64>();
                AgentSnapshot {
                    id: e.info.id.to_string(),
                    group: e.info.group.to_string(),
                    version: e.info.version.clone(),
                    session: e.info.session.to_string(),
                    remote: e
                        .carriers
                        .first()
                        .map(|c| c.remote.to_string())
                        .unwrap_or_default(),
                    connected_since_ms: unix_ms(e.since),
                    carriers: e.carriers.len(),
                    open_streams: e.carriers.iter().map(|c| c.open_streams()).sum(),
                    streams_opened: sum(|c| c.opened.load(Ordering::Relaxed)),
                    rtt_us: e
                        .carriers
                        .iter()
                        .map(|c| c.rtt_us.load(Ordering::Relaxed))
                        .filter(|rtt| *rtt > 0)
                        .min(),
                    bytes_in: sum(|c| c.bytes_in.load(Ordering::Relaxed)),
                    bytes_out: sum(|c| c.bytes_out.load(Ordering::Relaxed)),
                }
            })
            .collect();
        agents.sort_by(|a, b| (&a.group, &a.id).cmp(&(&b.group, &b.id)));
        agents
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        let mut state = self.registry.lock();
        if let Some(entry) = state.agents.get_mut(&self.agent) {
            entry.carriers.retain(|c| c.serial != self.serial);
            if entry.carriers.is_empty() {
                state.agents.remove(&self.agent);
            }
        }
        drop(state);
        self.registry.changed();
    }
}
