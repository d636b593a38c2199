//! The forward proxy's listener: binds, accepts on every worker thread,
//! hands each client connection to the least busy worker, and shuts down
//! gracefully.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ferryman_capture::Capture;
use ferryman_http::headers::Via;
use ferryman_http::upstream::Connector;
use ferryman_http::{UpstreamClient, UpstreamConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::auth::ProxyAuth;
use super::http_proxy::ProxyRoute;
use super::workers::{Assigned, WorkerThread};
use crate::context::{Shared, Worker};
use crate::exchange::connection::{self, Protocol};
use crate::exchange::counted::Counted;
use crate::exchange::witness::RequestCounters;
use crate::exchange::Interception;
use crate::outbound::dial::{OwnAddrs, Source};
use crate::outbound::direct::Direct;
use crate::session::Sessions;
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
    shared: Arc<Shared>,
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
        let own = OwnAddrs::default();
        own.add(listen);
        let direct: Connector = Arc::new(Direct::new("direct", Source::default(), own.clone()));
        let shared = Arc::new(Shared {
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
            own,
            direct,
        });
        Ok(Self {
            listener,
            shared,
            config: Arc::new(config),
            upstream,
            upstream_tls,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.shared.listen
    }

    /// Another address of this process (the admin listener's): requests to
    /// it are refused as loops, like those to the proxy itself.
    pub fn also_own(&self, addr: SocketAddr) {
        self.shared.own.add(addr);
    }

    /// Interception, to change its rules while running.
    pub fn interception(&self) -> Option<Arc<Interception>> {
        self.shared.interception.clone()
    }

    pub fn sessions(&self) -> &Sessions {
        &self.shared.sessions
    }

    /// Serves on the current runtime until `shutdown` is cancelled, then
    /// stops accepting, lets in-flight exchanges and tunnels finish for up to
    /// `grace`, and returns.
    pub async fn run(self, shutdown: CancellationToken, grace: Duration) -> std::io::Result<()> {
        info!(listen = %self.shared.listen, workers = 1, "forward proxy listening");
        let workers = [self.worker(0, Handle::current())];
        self.serve_here(0, workers.into(), shutdown, grace).await
    }

    /// Worker `n`, running on `runtime`; call it inside that runtime, where
    /// the upstream pool starts its reaper.
    fn worker(&self, n: usize, runtime: Handle) -> Arc<WorkerThread> {
        let worker = Arc::new(Worker {
            upstream: UpstreamClient::new(self.upstream.clone(), self.upstream_tls.clone()),
            shared: self.shared.clone(),
        });
        WorkerThread::new(n, runtime, worker)
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
        info!(listen = %self.shared.listen, workers, "forward proxy listening");
        let runtimes = (0..workers.max(1))
            .map(|_| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        let pool: Arc<[Arc<WorkerThread>]> = runtimes
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
                shared: self.shared.clone(),
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
        workers: Arc<[Arc<WorkerThread>]>,
        shutdown: CancellationToken,
        grace: Duration,
    ) -> std::io::Result<()> {
        let listener = TcpListener::from_std(self.listener)?;
        let tasks = &self.shared.tasks;
        let mut saturated = false;
        loop {
            // At the connection limit, stop accepting: new clients wait in
            // the kernel's queue instead of exhausting file descriptors.
            let permit = match self.shared.connections.clone().try_acquire_owned() {
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
                        permit = self.shared.connections.clone().acquire_owned() => match permit {
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
        self.shared.stopping.cancel();
        // Every worker thread gets here; the one that closes the tracker says so.
        if tasks.close() {
            info!(in_flight = tasks.len(), "shutting down");
        }
        if tokio::time::timeout(grace, tasks.wait()).await.is_err() {
            if !self.shared.hard_stop.is_cancelled() {
                warn!(
                    left = tasks.len(),
                    "grace period over, closing what is left"
                );
            }
            self.shared.hard_stop.cancel();
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
    serve(stream, peer, assigned.worker().worker.clone()).await;
    drop((permit, assigned));
}

async fn serve(stream: TcpStream, peer: SocketAddr, worker: Arc<Worker>) {
    let _ = stream.set_nodelay(true);
    let connection = worker.shared.sessions.connection(peer);
    let stream = Counted::new(stream, connection.clone());
    let route = ProxyRoute {
        worker: worker.clone(),
        connection: connection.clone(),
    };
    connection::serve(stream, Protocol::Http1, worker, connection, None, route).await;
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
