//! The listener: accepts connections, serves HTTP/1 on them, and shuts down
//! gracefully.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ferryman_capture::{Capture, TlsFacts};
use ferryman_http::headers::Via;
use ferryman_http::{Target, UpstreamClient, UpstreamConfig, UpstreamError};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::activity::RequestCounters;
use crate::auth::ProxyAuth;
use crate::counted::Counted;
use crate::guard::FramingGuard;
use crate::handler::{Common, Handler, Shared};
use crate::session::{SessionGuard, Sessions};
use crate::workers::{Assigned, Worker};
use crate::Interception;
use crate::ProxyConfig;

/// Where a proxy reports what it carries.
#[derive(Clone)]
pub struct Observers {
    /// The connection table, shared by every inbound.
    pub sessions: Sessions,
    /// Exchange records and bodies; None when capture is off.
    pub capture: Option<Capture>,
}

/// A bound forward-proxy listener, not yet serving.
pub struct ForwardProxy {
    listener: std::net::TcpListener,
    common: Arc<Common>,
    config: Arc<ProxyConfig>,
    upstream: UpstreamConfig,
    upstream_tls: Arc<rustls::ClientConfig>,
}

/// A serving proxy; dropping it does not stop it, [`RunningProxy::shutdown`] does.
pub struct RunningProxy {
    local_addr: SocketAddr,
    sessions: Sessions,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl ForwardProxy {
    /// `upstream_tls` says how to check servers reached over https.
    /// With `interception`, CONNECT tunnels are intercepted as its rules say.
    /// Bind once the metrics recorder is installed: the proxy registers
    /// the series it records here, and those of each worker's upstream
    /// client when it starts serving.
    pub fn bind(
        config: ProxyConfig,
        upstream: UpstreamConfig,
        upstream_tls: Arc<rustls::ClientConfig>,
        interception: Option<Interception>,
        observers: Observers,
    ) -> std::io::Result<Self> {
        let listener = std::net::TcpListener::bind(config.listen)?;
        listener.set_nonblocking(true)?;
        let listen = listener.local_addr()?;
        let common = Arc::new(Common {
            auth: ProxyAuth::new(&config.auth),
            via: via(),
            x_forwarded_for: config.x_forwarded_for,
            listen,
            tasks: TaskTracker::new(),
            hard_stop: CancellationToken::new(),
            connections: Arc::new(Semaphore::new(config.connection_limit())),
            interception: interception.map(Arc::new),
            config: Arc::new(config.clone()),
            stopping: CancellationToken::new(),
            sessions: observers.sessions,
            capture: observers.capture,
            requests: RequestCounters::new(),
        });
        Ok(Self {
            listener,
            common,
            config: Arc::new(config),
            upstream,
            upstream_tls,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.common.listen
    }

    /// Interception, to change its rules while running.
    pub fn interception(&self) -> Option<Arc<Interception>> {
        self.common.interception.clone()
    }

    pub fn sessions(&self) -> &Sessions {
        &self.common.sessions
    }

    /// Serves on the current runtime until `shutdown` is cancelled, then
    /// stops accepting, lets in-flight exchanges and tunnels finish for up to
    /// `grace`, and returns.
    pub async fn run(self, shutdown: CancellationToken, grace: Duration) -> std::io::Result<()> {
        info!(listen = %self.common.listen, workers = 1, "forward proxy listening");
        let workers = [self.worker(0, Handle::current())];
        self.serve_here(0, workers.into(), shutdown, grace).await
    }

    /// Worker `n`, running on `runtime`; call it inside that runtime, where
    /// the upstream pool starts its reaper.
    fn worker(&self, n: usize, runtime: Handle) -> Arc<Worker> {
        let shared = Arc::new(Shared {
            upstream: UpstreamClient::new(
                self.upstream.clone(),
                vec![self.common.listen],
                self.upstream_tls.clone(),
            ),
            common: self.common.clone(),
        });
        Worker::new(n, runtime, shared)
    }

    /// Serves with `workers` threads, each running its own single-threaded
    /// runtime, accept loop and upstream pool (no work stealing, so an
    /// exchange stays on one core). Blocks until shut down and drained.
    pub fn run_threaded(
        self,
        workers: usize,
        shutdown: CancellationToken,
        grace: Duration,
    ) -> std::io::Result<()> {
        info!(listen = %self.common.listen, workers, "forward proxy listening");
        let runtimes = (0..workers.max(1))
            .map(|_| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        let pool: Arc<[Arc<Worker>]> = runtimes
            .iter()
            .enumerate()
            .map(|(n, runtime)| {
                let _inside = runtime.enter();
                self.worker(n, runtime.handle().clone())
            })
            .collect();
        let mut threads = Vec::with_capacity(runtimes.len());
        for (n, runtime) in runtimes.into_iter().enumerate() {
            let worker = ForwardProxy {
                listener: self.listener.try_clone()?,
                common: self.common.clone(),
                config: self.config.clone(),
                upstream: self.upstream.clone(),
                upstream_tls: self.upstream_tls.clone(),
            };
            let shutdown = shutdown.clone();
            let pool = pool.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("ferryman-{n}"))
                    .spawn(move || runtime.block_on(worker.serve_here(n, pool, shutdown, grace)))?,
            );
        }
        for thread in threads {
            match thread.join() {
                Ok(result) => result?,
                Err(_) => warn!("a worker thread panicked"),
            }
        }
        Ok(())
    }

    pub fn start(self, grace: Duration) -> RunningProxy {
        let local_addr = self.local_addr();
        let sessions = self.sessions().clone();
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = self.run(token, grace).await {
                warn!(error = %e, "forward proxy failed");
            }
        });
        RunningProxy {
            local_addr,
            sessions,
            shutdown,
            task,
        }
    }

    /// Accepts as worker `me` of `workers`, each connection served by the
    /// least busy of them.
    async fn serve_here(
        self,
        me: usize,
        workers: Arc<[Arc<Worker>]>,
        shutdown: CancellationToken,
        grace: Duration,
    ) -> std::io::Result<()> {
        let listener = TcpListener::from_std(self.listener)?;
        let tasks = &self.common.tasks;
        let mut saturated = false;
        loop {
            // At the connection limit, stop accepting: new clients wait in
            // the kernel's queue instead of exhausting file descriptors.
            let permit = match self.common.connections.clone().try_acquire_owned() {
                Ok(permit) => {
                    saturated = false;
                    permit
                }
                Err(_) => {
                    if !saturated {
                        saturated = true;
                        let limit = self.config.connection_limit();
                        warn!(limit, "connection limit reached; new clients wait");
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        permit = self.common.connections.clone().acquire_owned() => match permit {
                            Ok(permit) => permit,
                            Err(_) => break,
                        },
                    }
                }
            };
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let assigned = Assigned::least_loaded(&workers, me);
                    if Arc::ptr_eq(assigned.worker(), &workers[me]) {
                        tasks.spawn(serve_assigned(
                            Accepted::Here(stream),
                            peer,
                            assigned,
                            permit,
                        ));
                    } else {
                        match stream.into_std() {
                            Ok(stream) => {
                                let runtime = assigned.worker().runtime.clone();
                                let serving = serve_assigned(
                                    Accepted::HandedOver(stream),
                                    peer,
                                    assigned,
                                    permit,
                                );
                                runtime.spawn(tasks.track_future(serving));
                            }
                            Err(e) => debug!(error = %e, "could not hand a connection over"),
                        }
                    }
                }
                Err(e) => {
                    // Typically out of file descriptors: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        drop(listener);
        self.common.stopping.cancel();
        // Every worker thread gets here; the one that closes the tracker says so.
        if tasks.close() {
            info!(in_flight = tasks.len(), "shutting down");
        }
        if tokio::time::timeout(grace, tasks.wait()).await.is_err() {
            if !self.common.hard_stop.is_cancelled() {
                warn!(
                    left = tasks.len(),
                    "grace period over, closing what is left"
                );
            }
            self.common.hard_stop.cancel();
            tasks.wait().await;
        }
        Ok(())
    }
}

impl RunningProxy {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    /// Stops gracefully and waits until everything is closed.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        if let Err(e) = self.task.await {
            warn!(error = %e, "proxy task failed");
        }
    }
}

/// A client connection and the worker it was accepted on.
enum Accepted {
    Here(TcpStream),
    /// Accepted by another worker, to be registered with this one's runtime.
    HandedOver(std::net::TcpStream),
}

async fn serve_assigned(
    accepted: Accepted,
    peer: SocketAddr,
    assigned: Assigned,
    permit: OwnedSemaphorePermit,
) {
    let stream = match accepted {
        Accepted::Here(stream) => stream,
        Accepted::HandedOver(stream) => match TcpStream::from_std(stream) {
            Ok(stream) => stream,
            Err(e) => {
                debug!(error = %e, "could not take a connection over");
                return;
            }
        },
    };
    serve(stream, peer, assigned.worker().shared.clone()).await;
    drop((permit, assigned));
}

async fn serve(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let connection = shared.common.sessions.connection(peer);
    let stream = Counted::new(stream, connection.clone());
    serve_http(stream, Protocol::Http1, shared, connection, None).await;
}

/// The inside of an intercepted tunnel: where every request goes, what the
/// TLS handshake said, and how the upstream connection opened for it failed.
pub(crate) struct Inside {
    pub(crate) target: Target,
    pub(crate) tls: Option<TlsFacts>,
    pub(crate) upstream_failed: Option<UpstreamError>,
}

/// The HTTP version a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    Http1,
    /// Only inside intercepted TLS, after ALPN chose it.
    Http2,
}

/// Serves `io` until the client is done: a client connection to the proxy
/// (`inside` None), or the inside of an intercepted tunnel, whose every
/// request goes to its target. On shutdown, idle connections close
/// and in-flight exchanges finish; closing `parent` closes the connection.
pub(crate) async fn serve_http<IO>(
    io: IO,
    protocol: Protocol,
    shared: Arc<Shared>,
    parent: Arc<SessionGuard>,
    inside: Option<Inside>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let config = shared.common.config.clone();
    let stops = Stops {
        stopping: shared.common.stopping.clone(),
        hard_stop: shared.common.hard_stop.clone(),
        closed: parent.cancelled().clone(),
    };
    let client = parent.client();
    let (intercepted, tls, upstream_failed) = match inside {
        Some(inside) => (Some(inside.target), inside.tls, inside.upstream_failed),
        None => (None, None, None),
    };
    let handler = Handler {
        shared,
        parent,
        intercepted,
        tls: tls.map(Arc::new),
        upstream_failed: Arc::new(std::sync::Mutex::new(upstream_failed)),
    };
    let service = service_fn(move |req| {
        let handler = handler.clone();
        async move { Ok::<_, Infallible>(handler.handle(req).await) }
    });
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
            let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .max_header_list_size(u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX))
                .serve_connection(TokioIo::new(io), service);
            tokio::pin!(conn);
            stops.drain(conn, |c| c.graceful_shutdown()).await
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
        C: std::future::Future<Output = hyper::Result<()>>,
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
}

/// A `Via` entry unique to this process, so a request that comes back
/// here is recognised as a loop while chained ferrymen are not.
fn via() -> Via {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    let tag = hasher.finish() as u32;
    Via::new(&format!("ferryman-{tag:08x}"))
}
