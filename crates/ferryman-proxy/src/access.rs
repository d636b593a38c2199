//! One access-log line per exchange or tunnel, written when the last body
//! (or the tunnel) is done with it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicU8, Ordering};
use std::time::Instant;

use bytes::Bytes;
use ferryman_http::body::{BodyObserver, Direction};
use http::{Method, Uri};

/// What a logged session was.
#[derive(Debug, Clone, Copy)]
#[repr(u8)]
pub(crate) enum Kind {
    Http,
    Tunnel,
    InterceptedTls,
    InterceptedHttp,
}

impl Kind {
    fn name(raw: u8) -> &'static str {
        match raw {
            1 => "tunnel",
            2 => "intercepted-tls",
            3 => "intercepted-http",
            _ => "http",
        }
    }
}

pub(crate) struct AccessLog {
    kind: AtomicU8,
    client: SocketAddr,
    method: Method,
    /// For CONNECT, the authority form: `host:port`.
    target: Uri,
    start: Instant,
    status: AtomicU16,
    up: AtomicU64,
    down: AtomicU64,
    aborted: AtomicBool,
}

impl AccessLog {
    pub(crate) fn new(client: SocketAddr, method: Method, target: Uri) -> Self {
        Self {
            kind: AtomicU8::new(Kind::Http as u8),
            client,
            method,
            target,
            start: Instant::now(),
            status: AtomicU16::new(0),
            up: AtomicU64::new(0),
            down: AtomicU64::new(0),
            aborted: AtomicBool::new(false),
        }
    }

    pub(crate) fn set_status(&self, status: http::StatusCode) {
        self.status.store(status.as_u16(), Ordering::Relaxed);
    }

    pub(crate) fn set_kind(&self, kind: Kind) {
        self.kind.store(kind as u8, Ordering::Relaxed);
    }

    /// Bytes carried by a plain tunnel.
    pub(crate) fn tunnelled(&self, up: u64, down: u64) {
        self.set_kind(Kind::Tunnel);
        self.up.fetch_add(up, Ordering::Relaxed);
        self.down.fetch_add(down, Ordering::Relaxed);
    }

    pub(crate) fn abort(&self) {
        self.aborted.store(true, Ordering::Relaxed);
    }
}

impl BodyObserver for AccessLog {
    fn on_data(&self, direction: Direction, bytes: &Bytes) {
        let counter = match direction {
            Direction::Up => &self.up,
            Direction::Down => &self.down,
        };
        counter.fetch_add(bytes.len() as u64, Ordering::Relaxed);
    }

    fn on_end(&self, _: Direction, complete: bool) {
        if !complete {
            self.abort();
        }
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        tracing::info!(
            target: "ferryman::access",
            kind = Kind::name(*self.kind.get_mut()),
            client = %self.client,
            method = %self.method,
            target = %self.target,
            status = *self.status.get_mut(),
            bytes_up = *self.up.get_mut(),
            bytes_down = *self.down.get_mut(),
            duration_ms = self.start.elapsed().as_micros() as f64 / 1000.0,
            aborted = *self.aborted.get_mut(),
        );
    }
}
