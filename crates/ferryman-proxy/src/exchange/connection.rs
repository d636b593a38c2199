//! Serves HTTP on one connection until the client is done: every request
//! becomes an exchange with its witness, and a [`Route`] says what to do
//! with it. The connection ends gracefully at shutdown and at once when its
//! session is closed.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use ferryman_capture::TlsFacts;
use ferryman_http::body::{Direction, Observed};
use ferryman_http::headers::wants_upgrade;
use ferryman_http::ProxyBody;
use http::header::{HeaderValue, CONNECTION};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::closable::Closable;
use super::deadline::SendDeadline;
use super::guard::FramingGuard;
use super::local;
use super::witness::{Entry, Witness};
use crate::context::Worker;
use crate::session::SessionGuard;
use crate::ProxyConfig;

/// The HTTP version a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    Http1,
    /// Only inside intercepted TLS, after ALPN chose it.
    Http2,
}

/// What to do with each request of a connection.
pub(crate) trait Route: Send + Sync + 'static {
    /// How this connection's exchanges came in.
    const ENTRY: Entry;

    /// What the exchange is about, for its session row and log: the full
    /// URL (or `host:port` for a CONNECT), and the host its bytes count for.
    fn target<'a>(&'a self, req: &'a Request<Incoming>) -> (String, Option<&'a str>);

    /// The answer to `req`, whose exchange `witness` observes.
    fn route(
        &self,
        req: Request<Incoming>,
        witness: &Arc<Witness>,
    ) -> impl Future<Output = Response<ProxyBody>> + Send;
}

/// Serves `io` (whose session is `parent`) until the client is done, with
/// `config`'s limits; `tls` is what the handshake said when `io` is
/// intercepted TLS.
pub(crate) async fn serve<IO, R>(
    io: IO,
    protocol: Protocol,
    config: &ProxyConfig,
    worker: Arc<Worker>,
    parent: Arc<SessionGuard>,
    tls: Option<TlsFacts>,
    route: R,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    R: Route,
{
    let stops = Stops {
        stopping: worker.shared.stopping.clone(),
        hard_stop: worker.shared.hard_stop.clone(),
        closed: parent.cancelled().clone(),
    };
    let client = parent.client();
    // Only HTTP/2 needs to know when a connection is idle.
    let busy = (protocol == Protocol::Http2).then(Busy::new);
    let exchanges = Arc::new(Exchanges {
        worker,
        parent,
        tls: tls.map(Arc::new),
        route,
        busy: busy.clone(),
    });
    let service = service_fn(move |req| {
        let exchanges = exchanges.clone();
        async move { Ok::<_, Infallible>(exchanges.handle(req).await) }
    });
    let io = SendDeadline::new(io, config.send_timeout);
    let result = match protocol {
        Protocol::Http1 => {
            let io = TokioIo::new(FramingGuard::new(
                io,
                config.max_header_bytes,
                config.max_headers,
            ));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(config.client_idle_timeout)
                .max_headers(config.max_headers)
                .max_header_size(config.max_header_bytes)
                .serve_connection(io, service)
                .with_upgrades();
            tokio::pin!(conn);
            stops.drain(conn, |c| c.graceful_shutdown()).await
        }
        Protocol::Http2 => {
            let pings = Some(config.h2_keepalive_interval).filter(|i| !i.is_zero());
            let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(pings)
                .keep_alive_timeout(config.h2_keepalive_interval)
                .max_header_list_size(u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX))
                .serve_connection(TokioIo::new(io), service);
            tokio::pin!(conn);
            // HTTP/1's idle deadline is hyper's head timeout; HTTP/2 has
            // none: a connection with no stream open is asked to go away.
            let idle = async {
                match busy {
                    Some(busy) => busy.idle_for(config.client_idle_timeout).await,
                    None => std::future::pending().await,
                }
            };
            stops
                .drain_or_idle(conn, idle, |c| c.graceful_shutdown())
                .await
        }
    };
    if let Err(e) = result {
        if e.is_parse() || e.is_parse_too_large() {
            info!(target: "ferryman::access", kind = "rejected", %client, error = %e);
        } else {
            // The client went away, timed out or reset: expected, not an error.
            debug!(%client, error = %e, "client connection ended");
        }
    }
}

/// The exchanges of one connection.
struct Exchanges<R> {
    worker: Arc<Worker>,
    /// What requests arrive on: a client connection or an intercepted tunnel.
    parent: Arc<SessionGuard>,
    /// Inside intercepted TLS, what the handshake said.
    tls: Option<Arc<TlsFacts>>,
    route: R,
    /// Exchanges open on the connection, for HTTP/2.
    busy: Option<Busy>,
}

impl<R: Route> Exchanges<R> {
    async fn handle(&self, req: Request<Incoming>) -> Response<Observed<Closable>> {
        let witness = Arc::new(Witness::new(
            &self.worker.shared,
            &self.parent,
            R::ENTRY,
            req.method().clone(),
            self.route.target(&req),
        ));
        let client_version = req.version();
        let connect = req.method() == Method::CONNECT;
        let asks_tunnel = connect || wants_upgrade(req.headers());
        witness.request(client_version, req.headers());
        if let Some(busy) = &self.busy {
            witness.hold(busy.enter());
        }
        if let Some(tls) = &self.tls {
            witness.tls(tls);
        }
        let closed = witness.session().cancelled().clone();
        // Biased: the route first, so an exchange that is answered at
        // once never registers to hear of its closing.
        let mut response = tokio::select! {
            biased;
            response = self.route.route(req, &witness) => response,
            () = closed.cancelled() => {
                witness.abort();
                local::text(StatusCode::SERVICE_UNAVAILABLE, "closed by the administrator")
            }
        };
        // What the client is answered in: HTTP/2 on an HTTP/2
        // connection, HTTP/1.1 on any other.
        *response.version_mut() = match client_version {
            Version::HTTP_2 => Version::HTTP_2,
            _ => Version::HTTP_11,
        };
        // A refused CONNECT or upgrade ends an HTTP/1 connection: bytes the
        // client sent for the tunnel must never be read as requests (the
        // framing guard stopped following this connection at its head).
        let tunnelled = if connect {
            response.status().is_success()
        } else {
            response.status() == StatusCode::SWITCHING_PROTOCOLS
        };
        if asks_tunnel && !tunnelled && client_version != Version::HTTP_2 {
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        witness.respond(&response);
        response.map(|b| Observed::new(Closable::new(b, closed), witness, Direction::Down))
    }
}

/// How many exchanges a connection has open, and since when none.
#[derive(Clone)]
pub(crate) struct Busy(Arc<BusyState>);

struct BusyState {
    open: std::sync::atomic::AtomicUsize,
    changed: tokio::sync::Notify,
}

/// One exchange open on a connection, until dropped.
pub(crate) struct BusyGuard(Busy);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        let state = &(self.0).0;
        if state.open.fetch_sub(1, std::sync::atomic::Ordering::AcqRel) == 1 {
            state.changed.notify_waiters();
        }
    }
}

impl Busy {
    fn new() -> Self {
        Self(Arc::new(BusyState {
            open: Default::default(),
            changed: tokio::sync::Notify::new(),
        }))
    }

    fn enter(&self) -> BusyGuard {
        if self
            .0
            .open
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel)
            == 0
        {
            self.0.changed.notify_waiters();
        }
        BusyGuard(self.clone())
    }

    /// Resolves once no exchange has been open for `limit`.
    async fn idle_for(self, limit: std::time::Duration) {
        loop {
            let changed = self.0.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.0.open.load(std::sync::atomic::Ordering::Acquire) > 0 {
                changed.await;
                continue;
            }
            tokio::select! {
                () = tokio::time::sleep(limit) => return,
                () = changed => {}
            }
        }
    }
}

/// What ends a connection: shutdown starting, the grace period ending, or
/// its session being closed.
struct Stops {
    stopping: CancellationToken,
    hard_stop: CancellationToken,
    closed: CancellationToken,
}

impl Stops {
    /// Runs a connection to its end; once shutdown starts it is asked to
    /// finish gracefully, and it is dropped when the grace period is over,
    /// or at once when its session is closed.
    async fn drain<C>(
        &self,
        mut conn: std::pin::Pin<&mut C>,
        graceful: impl FnOnce(std::pin::Pin<&mut C>),
    ) -> hyper::Result<()>
    where
        C: Future<Output = hyper::Result<()>>,
    {
        tokio::select! {
            result = conn.as_mut() => return result,
            _ = self.stopping.cancelled() => graceful(conn.as_mut()),
            _ = self.closed.cancelled() => return Ok(()),
        }
        tokio::select! {
            result = conn => result,
            _ = self.hard_stop.cancelled() => Ok(()),
            _ = self.closed.cancelled() => Ok(()),
        }
    }

    /// [`Stops::drain`], also asking the connection to finish gracefully
    /// once `idle` resolves.
    async fn drain_or_idle<C>(
        &self,
        mut conn: std::pin::Pin<&mut C>,
        idle: impl Future<Output = ()>,
        graceful: impl Fn(std::pin::Pin<&mut C>),
    ) -> hyper::Result<()>
    where
        C: Future<Output = hyper::Result<()>>,
    {
        tokio::select! {
            result = conn.as_mut() => return result,
            () = idle => {
                debug!("idle HTTP/2 connection: going away");
                graceful(conn.as_mut())
            }
            _ = self.stopping.cancelled() => graceful(conn.as_mut()),
            _ = self.closed.cancelled() => return Ok(()),
        }
        self.drain(conn, graceful).await
    }
}
