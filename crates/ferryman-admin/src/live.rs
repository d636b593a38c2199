//! The live stream: one WebSocket endpoint, topics to subscribe to. Every
//! batch is serialised once and offered to each subscriber's bounded queue;
//! a subscriber whose queue is full, or whose socket takes longer than the
//! write deadline, is dropped. Nobody is ever waited for.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::ws::{Message, Utf8Bytes, WebSocket};
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::logs::{LogLine, Severity};
use crate::summary::Summary;
use crate::Shared;

/// Frames waiting for one subscriber; past this it is too slow and dropped.
const QUEUE: usize = 64;
/// Bytes waiting for one subscriber, likewise: at thousands of exchanges a
/// second one batch can weigh a megabyte, so frames alone bound nothing.
const QUEUED_BYTES: usize = 16 << 20;
/// The longest one frame may take to write before the subscriber is dropped.
const WRITE_DEADLINE: Duration = Duration::from_secs(2);
const TRAFFIC_EVERY: Duration = Duration::from_secs(1);
const CONNECTIONS_EVERY: Duration = Duration::from_millis(500);
/// Logs and exchanges are gathered this long into one batch.
const BATCH_EVERY: Duration = Duration::from_millis(250);
/// Hosts and clients sent with each traffic frame.
const TOP: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Topic {
    Traffic = 1,
    Connections = 2,
    Logs = 4,
    Exchanges = 8,
    /// Tunnel agents: the whole list, when it changes.
    Agents = 16,
}

impl Topic {
    const ALL: [Topic; 5] = [
        Topic::Traffic,
        Topic::Connections,
        Topic::Logs,
        Topic::Exchanges,
        Topic::Agents,
    ];

    fn name(self) -> &'static str {
        match self {
            Topic::Traffic => "traffic",
            Topic::Connections => "connections",
            Topic::Logs => "logs",
            Topic::Exchanges => "exchanges",
            Topic::Agents => "agents",
        }
    }

    fn parse(name: &str) -> Option<Topic> {
        Topic::ALL.into_iter().find(|t| t.name() == name)
    }
}

pub(crate) struct Subscriber {
    topics: AtomicU8,
    level: AtomicU8,
    queue: mpsc::Sender<Utf8Bytes>,
    /// Bytes in `queue`, and in the frame being written.
    queued: AtomicUsize,
    gone: AtomicBool,
    dropped: CancellationToken,
}

/// The subscriber is too far behind.
struct Behind;

impl Subscriber {
    /// Drops the subscriber, counting and logging it once whatever the
    /// reason, and the number of places that notice.
    fn drop_for(&self, reason: &'static str) {
        if !self.gone.swap(true, Ordering::AcqRel) {
            self.dropped.cancel();
            metrics::counter!("ferryman_admin_subscribers_dropped_total").increment(1);
            tracing::info!(reason, "a live-view subscriber was dropped");
        }
    }

    /// Queues a frame unless the subscriber is already too far behind.
    fn offer(&self, frame: Utf8Bytes) -> Result<(), Behind> {
        let len = frame.len();
        if self.queued.fetch_add(len, Ordering::AcqRel) + len > QUEUED_BYTES {
            self.queued.fetch_sub(len, Ordering::AcqRel);
            return Err(Behind);
        }
        self.queue.try_send(frame).map_err(|_| {
            self.queued.fetch_sub(len, Ordering::AcqRel);
            Behind
        })
    }

    fn wants(&self, topic: Topic) -> bool {
        self.topics.load(Ordering::Relaxed) & topic as u8 != 0
    }

    fn level(&self) -> Severity {
        Severity::ALL[usize::from(self.level.load(Ordering::Relaxed)).min(4)]
    }
}

#[derive(Default)]
pub(crate) struct Hub {
    subscribers: Mutex<HashMap<u64, Arc<Subscriber>>>,
    next_id: AtomicU64,
    logs: Watch<Arc<LogLine>>,
    exchanges: Watch<Arc<ferryman_capture::ExchangeRecord>>,
}

/// A channel watched only while someone subscribes to its topic: an idle
/// watcher would make every log line and record do work for nobody. It is
/// opened when a subscription is acknowledged, so nothing sent after the
/// acknowledgement is missed.
pub(crate) struct Watch<T>(Mutex<Option<broadcast::Receiver<T>>>);

impl<T> Default for Watch<T> {
    fn default() -> Self {
        Self(Mutex::new(None))
    }
}

impl<T: Clone> Watch<T> {
    fn lock(&self) -> MutexGuard<'_, Option<broadcast::Receiver<T>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn open(&self, watch: impl FnOnce() -> broadcast::Receiver<T>) {
        self.lock().get_or_insert_with(watch);
    }

    fn close(&self) {
        *self.lock() = None;
    }

    /// Moves what arrived into `into`; returns how many went by unseen.
    fn drain(&self, into: &mut Vec<T>) -> u64 {
        let mut missed = 0;
        if let Some(watch) = self.lock().as_mut() {
            loop {
                match watch.try_recv() {
                    Ok(item) => into.push(item),
                    Err(broadcast::error::TryRecvError::Lagged(n)) => missed += n,
                    Err(_) => break,
                }
            }
        }
        missed
    }
}

#[derive(Serialize)]
struct Envelope<'a, T: Serialize> {
    topic: &'a str,
    data: T,
}

fn frame<T: Serialize>(topic: &str, data: T) -> Option<Utf8Bytes> {
    serde_json::to_string(&Envelope { topic, data })
        .ok()
        .map(Utf8Bytes::from)
}

impl Hub {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Arc<Subscriber>>> {
        self.subscribers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn join(&self) -> (u64, Arc<Subscriber>, mpsc::Receiver<Utf8Bytes>) {
        let (queue, frames) = mpsc::channel(QUEUE);
        let subscriber = Arc::new(Subscriber {
            topics: AtomicU8::new(0),
            level: AtomicU8::new(Severity::Info as u8),
            queue,
            queued: AtomicUsize::new(0),
            gone: AtomicBool::new(false),
            dropped: CancellationToken::new(),
        });
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, subscriber.clone());
        (id, subscriber, frames)
    }

    fn leave(&self, id: u64) {
        self.lock().remove(&id);
    }

    pub(crate) fn count(&self) -> usize {
        self.lock().len()
    }

    fn any(&self, topic: Topic) -> bool {
        self.lock().values().any(|s| s.wants(topic))
    }

    /// Offers each subscriber of `topic` its frame (None: nothing for it).
    fn publish(&self, topic: Topic, mut frame_for: impl FnMut(&Subscriber) -> Option<Utf8Bytes>) {
        let mut subscribers = self.lock();
        subscribers.retain(|_, subscriber| {
            if !subscriber.wants(topic) {
                return true;
            }
            let Some(frame) = frame_for(subscriber) else {
                return true;
            };
            if subscriber.dropped.is_cancelled() {
                return false;
            }
            match subscriber.offer(frame) {
                Ok(()) => true,
                Err(Behind) => {
                    subscriber.drop_for("its queue is full");
                    false
                }
            }
        });
    }
}

/// What a client sends: `{"subscribe": ["traffic", "logs"], "level": "warn"}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    #[serde(default)]
    subscribe: Vec<String>,
    #[serde(default)]
    unsubscribe: Vec<String>,
    level: Option<String>,
}

#[derive(Serialize)]
struct Subscribed {
    topics: Vec<&'static str>,
    level: &'static str,
}

/// Applies a subscription request; the answer goes to this subscriber only,
/// followed by the whole connection table for a new `connections` subscriber.
fn configure(shared: &Shared, subscriber: &Subscriber, text: &str) -> Vec<Utf8Bytes> {
    let mut answers = Vec::new();
    let answer = subscription(shared, subscriber, text, &mut answers);
    answers.insert(0, answer);
    answers.into_iter().flatten().collect()
}

fn subscription(
    shared: &Shared,
    subscriber: &Subscriber,
    text: &str,
    then: &mut Vec<Option<Utf8Bytes>>,
) -> Option<Utf8Bytes> {
    let request: Request = match serde_json::from_str(text) {
        Ok(request) => request,
        Err(e) => return frame("error", format!("bad request: {e}")),
    };
    let mut topics = subscriber.topics.load(Ordering::Relaxed);
    let before = topics;
    for (names, add) in [(&request.subscribe, true), (&request.unsubscribe, false)] {
        for name in names {
            let Some(topic) = Topic::parse(name) else {
                return frame("error", format!("unknown topic {name:?}"));
            };
            if add {
                topics |= topic as u8;
            } else {
                topics &= !(topic as u8);
            }
        }
    }
    if let Some(level) = &request.level {
        let Some(level) = Severity::parse(level) else {
            return frame("error", format!("unknown level {level:?}"));
        };
        subscriber.level.store(level as u8, Ordering::Relaxed);
    }
    if topics & Topic::Logs as u8 != 0 {
        shared.hub.logs.open(|| shared.logs.watch());
    }
    if let (true, Some(capture)) = (topics & Topic::Exchanges as u8 != 0, &shared.capture) {
        shared.hub.exchanges.open(|| capture.watch());
    }
    if topics & Topic::Agents as u8 != 0 && before & Topic::Agents as u8 == 0 {
        then.push(frame("agents", agents_now(shared)));
    }
    // A new connections subscriber starts from the whole table.
    if topics & Topic::Connections as u8 != 0 && before & Topic::Connections as u8 == 0 {
        let all = Changes {
            full: true,
            upserted: shared.sessions.list(),
            removed: Vec::new(),
        };
        then.push(frame("connections", all));
    }
    subscriber.topics.store(topics, Ordering::Relaxed);
    let subscribed = Subscribed {
        topics: Topic::ALL
            .into_iter()
            .filter(|t| topics & *t as u8 != 0)
            .map(Topic::name)
            .collect(),
        level: subscriber.level().name(),
    };
    frame("subscribed", subscribed)
}

/// Serves one WebSocket subscriber until it leaves, is dropped, or the
/// admin listener stops.
pub(crate) async fn serve(socket: WebSocket, shared: Arc<Shared>) {
    let (id, subscriber, mut frames) = shared.hub.join();
    let (mut sink, mut incoming) = socket.split();
    loop {
        tokio::select! {
            next = frames.recv() => {
                let Some(next) = next else { break };
                let len = next.len();
                let sent = tokio::time::timeout(WRITE_DEADLINE, sink.send(Message::Text(next))).await;
                subscriber.queued.fetch_sub(len, Ordering::AcqRel);
                match sent {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => break,
                    Err(_) => {
                        subscriber.drop_for("a write took longer than the deadline");
                        break;
                    }
                }
            }
            message = incoming.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    // Answers are small; one that does not fit finds the
                    // subscriber dropped by the next publish anyway.
                    for answer in configure(&shared, &subscriber, &text) {
                        let _ = subscriber.offer(answer);
                    }
                }
                Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
            _ = subscriber.dropped.cancelled() => break,
            _ = shared.shutdown.cancelled() => break,
        }
    }
    shared.hub.leave(id);
}

#[derive(Serialize)]
struct Changes {
    /// True for the first frame: the whole table.
    full: bool,
    upserted: Vec<ferryman_proxy::SessionSnapshot>,
    removed: Vec<u64>,
}

#[derive(Serialize)]
struct TrafficFrame {
    time_ms: u64,
    #[serde(flatten)]
    totals: ferryman_proxy::TrafficSnapshot,
    sessions: HashMap<&'static str, usize>,
    top_hosts: Vec<ferryman_proxy::KeyedBytes>,
    top_clients: Vec<ferryman_proxy::KeyedBytes>,
}

fn top(mut rows: Vec<ferryman_proxy::KeyedBytes>) -> Vec<ferryman_proxy::KeyedBytes> {
    rows.sort_unstable_by_key(|r| std::cmp::Reverse(r.bytes_up + r.bytes_down));
    rows.truncate(TOP);
    rows
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Starts the producers of every topic; they stop with `shared.shutdown`.
pub(crate) fn spawn_producers(shared: &Arc<Shared>) {
    tokio::spawn(traffic(shared.clone()));
    tokio::spawn(connections(shared.clone()));
    tokio::spawn(logs(shared.clone()));
    tokio::spawn(exchanges(shared.clone()));
    tokio::spawn(agents(shared.clone()));
}

async fn every(period: Duration, shared: &Shared, mut tick: impl FnMut()) {
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => tick(),
            _ = shared.shutdown.cancelled() => return,
        }
    }
}

async fn traffic(shared: Arc<Shared>) {
    every(TRAFFIC_EVERY, &shared.clone(), || {
        // Sampled even with no subscriber, so the first rate is over 1 s.
        let totals = shared.sessions.traffic();
        if !shared.hub.any(Topic::Traffic) {
            return;
        }
        let data = TrafficFrame {
            time_ms: now_ms(),
            totals,
            sessions: shared.sessions.active_by_kind().into_iter().collect(),
            top_hosts: top(shared.sessions.hosts()),
            top_clients: top(shared.sessions.clients()),
        };
        if let Some(frame) = frame("traffic", data) {
            shared.hub.publish(Topic::Traffic, |_| Some(frame.clone()));
        }
    })
    .await
}

async fn connections(shared: Arc<Shared>) {
    let mut previous: HashMap<u64, ferryman_proxy::SessionSnapshot> = HashMap::new();
    every(CONNECTIONS_EVERY, &shared.clone(), || {
        if !shared.hub.any(Topic::Connections) {
            previous.clear();
            return;
        }
        let current: HashMap<u64, _> = shared
            .sessions
            .list()
            .into_iter()
            .map(|s| (s.id, s))
            .collect();
        let changes = Changes {
            full: false,
            upserted: current
                .values()
                .filter(|s| previous.get(&s.id) != Some(*s))
                .cloned()
                .collect(),
            removed: previous
                .keys()
                .filter(|id| !current.contains_key(id))
                .copied()
                .collect(),
        };
        previous = current;
        if changes.upserted.is_empty() && changes.removed.is_empty() {
            return;
        }
        if let Some(frame) = frame("connections", changes) {
            shared
                .hub
                .publish(Topic::Connections, |_| Some(frame.clone()));
        }
    })
    .await
}

#[derive(Serialize)]
struct Batch<T> {
    items: Vec<T>,
    /// Items that went by while ferryman was too busy to gather them.
    missed: u64,
}

/// Gathers what `watch` received every `BATCH_EVERY` into one batch.
async fn batches<T: Clone>(
    shared: Arc<Shared>,
    topic: Topic,
    watch: impl Fn(&Hub) -> &Watch<T>,
    mut publish: impl FnMut(&Shared, Vec<T>, u64),
) {
    let mut items = Vec::new();
    every(BATCH_EVERY, &shared.clone(), || {
        let watched = watch(&shared.hub);
        if !shared.hub.any(topic) {
            watched.close();
            return;
        }
        let missed = watched.drain(&mut items);
        if !items.is_empty() || missed > 0 {
            publish(&shared, std::mem::take(&mut items), missed);
        }
    })
    .await
}

async fn logs(shared: Arc<Shared>) {
    batches(shared, Topic::Logs, |hub| &hub.logs, publish_logs).await
}

/// One frame per level asked for, each serialised once.
fn publish_logs(shared: &Shared, lines: Vec<Arc<LogLine>>, missed: u64) {
    let mut by_level: [Option<Option<Utf8Bytes>>; 5] = Default::default();
    shared.hub.publish(Topic::Logs, |subscriber| {
        let level = subscriber.level();
        by_level[level as usize]
            .get_or_insert_with(|| {
                let items: Vec<&LogLine> = lines
                    .iter()
                    .map(|l| &**l)
                    .filter(|l| l.severity >= level)
                    .collect();
                if items.is_empty() && missed == 0 {
                    return None;
                }
                frame("logs", Batch { items, missed })
            })
            .clone()
    });
}

async fn exchanges(shared: Arc<Shared>) {
    batches(
        shared,
        Topic::Exchanges,
        |hub| &hub.exchanges,
        |shared, records, missed| {
            let items: Vec<Summary<'_>> = records.iter().map(|r| Summary::of(r)).collect();
            if let Some(frame) = frame("exchanges", Batch { items, missed }) {
                shared
                    .hub
                    .publish(Topic::Exchanges, |_| Some(frame.clone()));
            }
        },
    )
    .await
}

const AGENTS_EVERY: Duration = Duration::from_secs(1);

fn agents_now(shared: &Shared) -> Vec<ferryman_tunnel::AgentSnapshot> {
    shared
        .agents
        .as_ref()
        .map(|registry| registry.snapshot())
        .unwrap_or_default()
}

/// The agents' list every second (their heartbeats and byte counts move),
/// when it differs from the last one sent.
async fn agents(shared: Arc<Shared>) {
    let mut previous = None;
    every(AGENTS_EVERY, &shared.clone(), || {
        if !shared.hub.any(Topic::Agents) {
            previous = None;
            return;
        }
        let Some(frame) = frame("agents", agents_now(&shared)) else {
            return;
        };
        if previous.as_ref() != Some(&frame) {
            previous = Some(frame.clone());
            shared.hub.publish(Topic::Agents, |_| Some(frame.clone()));
        }
    })
    .await
}
