//! The witness of one exchange or tunnel: its session in the table, its
//! capture record, its access-log line and its request counter, written when
//! the last body (or the tunnel) is done with it.

use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use ferryman_capture::{BodyTap, Part, Recorder};
use ferryman_http::body::{BodyObserver, Direction, Gate};
use ferryman_http::limit::Permit;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, Method, Response};

use super::connection::BusyGuard;
use crate::context::Shared;
use crate::session::{Kind, SessionGuard};

pub(crate) struct Witness {
    session: Arc<SessionGuard>,
    entry: Entry,
    requests: Arc<RequestCounters>,
    method: Method,
    status: AtomicU16,
    aborted: AtomicBool,
    recorder: Option<Recorder>,
    /// Request and response body taps, once the bodies exist.
    taps: [OnceLock<BodyTap>; 2],
    /// A request body held for `100 Continue` that the upstream answered
    /// without: released to fail once the answer is relayed.
    gate: OnceLock<Gate>,
    /// Keeps the exchange counted as open on its connection.
    busy: OnceLock<BusyGuard>,
    /// The client connection's place under the connection limit, held by a
    /// tunnel or upgrade for as long as it lasts.
    place: OnceLock<Arc<Permit>>,
}

impl Witness {
    /// An exchange inside `parent` (a client connection or a tunnel);
    /// `target` is the full URL, or `host:port` for a CONNECT.
    pub(crate) fn new(
        shared: &Shared,
        parent: &Arc<SessionGuard>,
        entry: Entry,
        method: Method,
        (target, host): (String, Option<&str>),
    ) -> Self {
        let session = shared.sessions.child(parent, Kind::Exchange, target, host);
        let recorder = shared.capture.as_ref().map(|capture| {
            capture.begin(
                session.id(),
                session.parent_id(),
                session.client_text().to_string(),
            )
        });
        Self {
            session,
            entry,
            requests: shared.requests.clone(),
            method,
            status: AtomicU16::new(0),
            aborted: AtomicBool::new(false),
            recorder,
            taps: [OnceLock::new(), OnceLock::new()],
            gate: OnceLock::new(),
            busy: OnceLock::new(),
            place: OnceLock::new(),
        }
    }

    pub(crate) fn session(&self) -> &Arc<SessionGuard> {
        &self.session
    }

    /// The way out the policy chose, and the rule that chose it.
    pub(crate) fn routed(&self, outbound: &Arc<str>, rule: &Arc<str>) {
        self.session.set_route(outbound, rule);
        if let Some(recorder) = &self.recorder {
            recorder.route(outbound, rule);
        }
    }

    pub(crate) fn set_kind(&self, kind: Kind) {
        self.session.set_kind(kind);
    }

    /// Counts the exchange as open on its connection while it lives.
    pub(crate) fn hold(&self, busy: BusyGuard) {
        let _ = self.busy.set(busy);
    }

    /// Keeps the client connection's place while the exchange lives.
    pub(crate) fn hold_place(&self, place: &Arc<Permit>) {
        let _ = self.place.set(place.clone());
    }

    pub(crate) fn hold_gate(&self, gate: Gate) {
        let _ = self.gate.set(gate);
    }

    pub(crate) fn abort(&self) {
        self.aborted.store(true, Ordering::Relaxed);
    }

    /// Why the exchange failed, for its record.
    pub(crate) fn fail(&self, error: impl std::fmt::Display) {
        if let Some(recorder) = &self.recorder {
            recorder.error(error);
        }
    }

    pub(crate) fn tls(&self, facts: &ferryman_capture::TlsFacts) {
        if let Some(recorder) = &self.recorder {
            recorder.tls(facts.clone());
        }
    }

    /// The request head, as the client sent it.
    pub(crate) fn request(&self, version: http::Version, headers: &HeaderMap) {
        if let Some(recorder) = &self.recorder {
            let url = self.session.target();
            recorder.request(self.method.as_str(), url, version, headers);
            // A CONNECT has no body; what follows it is the tunnel.
            if self.method != Method::CONNECT {
                self.tap(Part::Request, headers);
            }
        }
    }

    /// How a tunnel opened for an inbound that speaks no HTTP (SOCKS5, a
    /// published service) went, as the status an HTTP CONNECT would get.
    pub(crate) fn answered(&self, status: http::StatusCode) {
        let mut response = Response::new(());
        *response.status_mut() = status;
        self.respond(&response);
    }

    /// The response head, as the client gets it.
    pub(crate) fn respond<B>(&self, response: &Response<B>) {
        self.status
            .store(response.status().as_u16(), Ordering::Relaxed);
        if let Some(recorder) = &self.recorder {
            recorder.response(response.status(), response.version(), response.headers());
            self.tap(Part::Response, response.headers());
        }
    }

    /// Taps for the two directions of an upgraded connection (WebSocket
    /// frames), kept up to the stream cap as the request and response bodies.
    pub(crate) fn stream_taps(&self) -> Option<[BodyTap; 2]> {
        let recorder = self.recorder.as_ref()?;
        Some([
            recorder.stream_tap(Part::Request),
            recorder.stream_tap(Part::Response),
        ])
    }

    fn tap(&self, part: Part, headers: &HeaderMap) {
        if let Some(recorder) = &self.recorder {
            let content_type = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok());
            let _ = self.taps[part as usize].set(recorder.tap(part, content_type));
        }
    }
}

fn part(direction: Direction) -> Part {
    match direction {
        Direction::Up => Part::Request,
        Direction::Down => Part::Response,
    }
}

impl BodyObserver for Witness {
    fn on_data(&self, direction: Direction, bytes: &Bytes) {
        let n = bytes.len() as u64;
        match direction {
            Direction::Up => self.session.body_bytes(n, 0),
            Direction::Down => self.session.body_bytes(0, n),
        }
        if let Some(tap) = self.taps[part(direction) as usize].get() {
            tap.data(bytes);
        }
    }

    fn on_trailers(&self, direction: Direction, trailers: &HeaderMap) {
        if let Some(tap) = self.taps[part(direction) as usize].get() {
            tap.trailers(trailers);
        }
    }

    fn on_end(&self, direction: Direction, complete: bool) {
        if let Some(tap) = self.taps[part(direction) as usize].get() {
            tap.end(complete);
        }
        if let (Direction::Down, Some(gate)) = (direction, self.gate.get()) {
            gate.finish();
        }
        if !complete {
            self.abort();
        }
    }
}

impl Drop for Witness {
    fn drop(&mut self) {
        if let Some(gate) = self.gate.get() {
            gate.finish();
        }
        let kind = self.session.kind();
        let (up, down) = self.session.bytes();
        let aborted = *self.aborted.get_mut();
        if let Some(recorder) = &self.recorder {
            if !matches!(kind, Kind::Exchange | Kind::Websocket) {
                // Tunnels count bytes at the socket; exchanges (a WebSocket's
                // frames too) count them as bodies through their taps.
                recorder.bytes(up, down);
            }
            if aborted {
                recorder.error("aborted before its end");
            }
        }
        let status = *self.status.get_mut();
        if matches!(kind, Kind::Exchange | Kind::Websocket) {
            self.requests.get(self.entry, status).increment(1);
        }
        tracing::info!(
            target: "ferryman::access",
            kind = kind.name(),
            session = self.session.id(),
            client = %self.session.client_text(),
            method = %self.method,
            target = %self.session.target(),
            status,
            bytes_up = up,
            bytes_down = down,
            duration_ms = self.session.elapsed_ms(),
            aborted,
        );
    }
}

/// How an exchange came in, as `ferryman_requests_total` labels it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Entry {
    /// A request to the proxy in absolute form.
    Forward,
    /// A request found inside a tunnel (intercepted TLS or plain HTTP).
    Intercepted,
}

impl Entry {
    const ALL: [Entry; 2] = [Entry::Forward, Entry::Intercepted];

    fn label(self) -> &'static str {
        match self {
            Entry::Forward => "forward",
            Entry::Intercepted => "intercepted",
        }
    }
}

const STATUS_CLASSES: [&str; 6] = ["none", "1xx", "2xx", "3xx", "4xx", "5xx"];

/// `ferryman_requests_total` by inbound and status class (`none` when no
/// response was sent), every series registered once: finding a counter by
/// its labels cost ~1k instructions of each exchange.
pub(crate) struct RequestCounters([[metrics::Counter; 6]; Entry::ALL.len()]);

impl RequestCounters {
    /// Call it once the metrics recorder is installed.
    pub(crate) fn new() -> Arc<Self> {
        let by_status = |inbound: &'static str| {
            STATUS_CLASSES.map(|status| {
                metrics::counter!("ferryman_requests_total", "inbound" => inbound, "status" => status)
            })
        };
        Arc::new(Self(Entry::ALL.map(|entry| by_status(entry.label()))))
    }

    fn get(&self, entry: Entry, status: u16) -> &metrics::Counter {
        let class = match status / 100 {
            class @ 1..=5 => class as usize,
            _ => 0,
        };
        &self.0[entry as usize][class]
    }
}
