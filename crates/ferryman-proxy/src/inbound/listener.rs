//! The proxy's listeners: every worker thread accepts on every inbound's
//! socket, hands each connection to the least busy worker and to the
//! inbound it came in on, and shuts down gracefully.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::sync::Mutex;

use arc_swap::ArcSwap;
use ferryman_capture::Capture;
use ferryman_http::headers::Via;
use ferryman_http::{UpstreamClient, UpstreamConfig, UpstreamSettings};
use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::http_proxy::ProxyRoute;
use super::sockets::{self, Listening, Serves, Sockets, Wanted};
use super::workers::{Assigned, WorkerThread};
use super::{service, socks5};
use crate::context::{Settings, Shared, Worker};
use crate::exchange::connection::{self, Protocol};
use crate::exchange::counted::Counted;
use crate::exchange::witness::RequestCounters;
use crate::exchange::Interception;
use crate::outbound::Env;
use crate::policy::Policy;
use crate::session::{Kind, Sessions};
use crate::ProxyConfig;
use ferryman_http::dial::OwnAddrs;
use ferryman_http::limit::{Limit, Permit};

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
    control: Control,
}

/// A serving proxy; dropping it does not stop it, [`RunningProxy::shutdown`] does.
pub struct RunningProxy {
    local_addr: SocketAddr,
    sessions: Sessions,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

/// Changes a proxy's configuration while it runs.
#[derive(Clone)]
pub struct Control {
    shared: Arc<Shared>,
    upstream: Arc<UpstreamSettings>,
    /// The listening sockets; every worker accepts on duplicates of them.
    /// Replaced when a reload moves one, emptied at shutdown.
    sockets: Arc<watch::Sender<Sockets>>,
    /// One reload at a time.
    applying: Arc<Mutex<()>>,
    /// The worker threads' runtimes, once serving.
    runtimes: Arc<std::sync::OnceLock<Vec<Handle>>>,
}

impl ForwardProxy {
    /// `upstream_tls` says how to check servers reached over https.
    /// With `interception`, CONNECT tunnels are intercepted as the policy
    /// says; the policy is the standard one (everything direct, every
    /// tunnel intercepted) until [`Control::apply`] sets another.
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
        let wanted = [Wanted {
            serves: Serves::HttpProxy,
            key: "proxy.listen".into(),
            addr: config.listen,
        }];
        let sockets = sockets::rebind(&[], &wanted).map_err(std::io::Error::other)?;
        let own = OwnAddrs::default();
        sockets.iter().for_each(|s| own.add(s.addr));
        let policy = Policy::standard(&Env {
            own: own.clone(),
            ..Env::detached(upstream_tls.clone())
        });
        let shared = Arc::new(Shared {
            settings: ArcSwap::from_pointee(Settings::new(config.clone(), policy)),
            via: via(),
            tasks: TaskTracker::new(),
            hard_stop: CancellationToken::new(),
            connections: Limit::new(config.connection_limit()),
            interception: interception.map(Arc::new),
            stopping: CancellationToken::new(),
            sessions: observers.sessions,
            capture: observers.capture,
            requests: RequestCounters::new(),
            own,
            tls: ArcSwap::new(upstream_tls.clone()),
            gateway: Default::default(),
        });
        let places = Some(shared.connections.clone());
        Ok(Self {
            control: Control {
                shared,
                upstream: UpstreamSettings::new(upstream, upstream_tls, places),
                sockets: Arc::new(watch::Sender::new(sockets)),
                applying: Arc::default(),
                runtimes: Arc::default(),
            },
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.control.local_addr()
    }

    /// Changes the configuration while the proxy runs.
    pub fn control(&self) -> Control {
        self.control.clone()
    }

    pub fn sessions(&self) -> &Sessions {
        &self.control.shared.sessions
    }

    /// Serves on the current runtime until `shutdown` is cancelled, then
    /// stops accepting, lets in-flight exchanges and tunnels finish for up to
    /// `grace`, and returns.
    pub async fn run(self, shutdown: CancellationToken, grace: Duration) -> std::io::Result<()> {
        info!(listen = %self.local_addr(), workers = 1, "forward proxy listening");
        let workers = [self.worker(0, Handle::current())];
        self.control
            .serve_here(0, workers.into(), shutdown, grace)
            .await
    }

    /// Worker `n`, running on `runtime`; call it inside that runtime, where
    /// the upstream pool starts its reaper.
    fn worker(&self, n: usize, runtime: Handle) -> Arc<WorkerThread> {
        let worker = Arc::new(Worker {
            upstream: UpstreamClient::new(self.control.upstream.clone()),
            shared: self.control.shared.clone(),
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
        info!(listen = %self.local_addr(), workers, "forward proxy listening");
        let runtimes = (0..workers.max(1))
            .map(|_| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        let handles = runtimes.iter().map(|r| r.handle().clone()).collect();
        let _ = self.control.runtimes.set(handles);
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
            let control = self.control.clone();
            let shutdown = shutdown.clone();
            let pool = pool.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("ferryman-{n}"))
                    .spawn(move || {
                        runtime.block_on(control.serve_here(n, pool, shutdown, grace))
                    })?,
            );
        }
        drop(self);
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
}

impl Control {
    /// What connectors compiled for this proxy need: its own addresses
    /// (the loop guard) and its upstream TLS checks.
    pub fn env(&self) -> Env {
        Env {
            own: self.shared.own.clone(),
            tls: self.shared.tls.load_full(),
            gateway: self.shared.gateway.get().cloned(),
            agent_groups: Vec::new(),
        }
    }

    /// Makes this proxy the tunnel's gateway: agents' carriers and published
    /// services are served once the settings ask for their listeners, and
    /// agent groups can be outbounds. Set once, before settings that use it.
    pub fn serve_tunnel(&self, gateway: Arc<ferryman_tunnel::Gateway>) {
        let _ = self.shared.gateway.set(gateway);
    }

    /// The settings in force.
    pub fn settings(&self) -> Arc<Settings> {
        self.shared.settings.load_full()
    }

    /// The HTTP proxy's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.address_of(Serves::HttpProxy)
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// The address of the `inbound` listener (`socks5`, `tunnel`, a
    /// `published service`: the first), if there is one.
    pub fn listener(&self, inbound: &str) -> Option<SocketAddr> {
        let sockets = self.sockets.borrow();
        sockets
            .iter()
            .find(|s| s.serves.to_string() == inbound)
            .map(|s| s.addr)
    }

    fn address_of(&self, serves: Serves) -> Option<SocketAddr> {
        let sockets = self.sockets.borrow();
        sockets.iter().find(|s| s.serves == serves).map(|s| s.addr)
    }

    /// Tasks alive on the worker threads: connections, tunnels, upstream
    /// connections and their helpers. What it comes back to once traffic
    /// stops shows whether anything leaks.
    pub fn alive_tasks(&self) -> usize {
        self.runtimes.get().map_or(0, |all| {
            all.iter().map(|h| h.metrics().num_alive_tasks()).sum()
        })
    }

    /// Another address of this process (the admin listener's): requests to
    /// it are refused as loops, like those to the proxy itself.
    pub fn also_own(&self, addr: SocketAddr) {
        self.shared.own.add(addr);
    }

    /// Puts `settings` in force for the connections accepted from now on;
    /// those already open keep theirs. A listening address that changed is
    /// bound first, and the old socket closes once the new one accepts; if
    /// one cannot be bound, nothing changes and the error says why.
    pub fn apply(&self, settings: Settings) -> Result<(), String> {
        let _one_at_a_time = self.applying.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.sockets.borrow().clone();
        let next = sockets::rebind(&current, &settings.sockets())?;
        let kept = |l: &Arc<Listening>, among: &Sockets| among.iter().any(|o| Arc::ptr_eq(o, l));
        for closed in current.iter().filter(|l| !kept(l, &next)) {
            self.shared.own.remove(closed.addr);
        }
        for opened in next.iter().filter(|l| !kept(l, &current)) {
            self.shared.own.add(opened.addr);
            let was = current
                .iter()
                .find(|l| l.serves == opened.serves && !kept(l, &next))
                .map(|l| l.addr.to_string());
            info!(inbound = %opened.serves, listen = %opened.addr, was, "listening");
        }
        if next.len() != current.len() || next.iter().any(|l| !kept(l, &current)) {
            self.sockets.send_replace(next);
        }
        self.shared
            .connections
            .resize(settings.proxy.connection_limit());
        self.shared.settings.store(Arc::new(settings));
        Ok(())
    }

    /// New upstream settings for the exchanges that start from now on;
    /// with new `tls`, pooled connections checked under the old ones are
    /// not reused and proxies reached over TLS are checked the new way.
    pub fn set_upstream(&self, config: UpstreamConfig, tls: Option<Arc<rustls::ClientConfig>>) {
        if let Some(tls) = &tls {
            self.shared.tls.store(tls.clone());
        }
        self.upstream.set(config, tls);
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
        let mut moves = self.sockets.subscribe();
        let mut sockets = sockets::duplicates(&moves.borrow_and_update())?;
        let mut turn = 0;
        let tasks = &self.shared.tasks;
        let mut saturated = false;
        loop {
            // At the connection limit, stop accepting: new clients wait in
            // the kernel's queue instead of exhausting file descriptors.
            let permit = match self.shared.connections.try_acquire() {
                Some(permit) => {
                    saturated = false;
                    permit
                }
                None => {
                    if !saturated {
                        saturated = true;
                        let limit = self.shared.connections.limit();
                        warn!(limit, "connection limit reached; new clients wait");
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        permit = self.shared.connections.acquire() => match permit {
                            Some(permit) => permit,
                            None => break,
                        },
                    }
                }
            };
            let (listening, accepted) = tokio::select! {
                _ = shutdown.cancelled() => break,
                moved = moves.changed() => {
                    // A socket moved: accept on the new ones from now on.
                    if moved.is_ok() {
                        sockets = sockets::duplicates(&moves.borrow_and_update())?;
                    }
                    continue;
                }
                accepted = sockets::accept(&sockets, &mut turn) => accepted,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let came = (peer, listening.serves, listening.wanted);
                    let assigned = Assigned::least_loaded(&workers, me);
                    if Arc::ptr_eq(assigned.worker(), &workers[me]) {
                        tasks.spawn(serve_assigned(
                            Accepted::Here(stream),
                            came,
                            assigned,
                            permit,
                        ));
                    } else {
                        match stream.into_std() {
                            Ok(stream) => {
                                let runtime = assigned.worker().runtime.clone();
                                let serving = serve_assigned(
                                    Accepted::HandedOver(stream),
                                    came,
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
        // Stop listening at once: a client that connects during the grace
        // period is refused, not left waiting in a queue nobody reads.
        drop(sockets);
        self.sockets.send_replace(Arc::from([]));
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

/// Serves a connection from `peer` that came in for `serves` at the
/// listening address configured as `at`.
async fn serve_assigned(
    accepted: Accepted,
    (peer, serves, at): (SocketAddr, Serves, SocketAddr),
    assigned: Assigned,
    permit: Permit,
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
    // The place is the connection's, and the tunnel's it may turn into.
    let place = Arc::new(permit);
    let worker = assigned.worker().worker.clone();
    match serves {
        Serves::HttpProxy => serve(stream, peer, worker, place).await,
        Serves::Socks5 => socks5::serve(stream, peer, worker, place).await,
        Serves::Service => service::serve(stream, peer, at, worker, place).await,
        Serves::Carriers => {
            if let Some(gateway) = worker.shared.gateway.get() {
                let stopping = worker.shared.stopping.clone();
                gateway.serve_carrier(stream, peer, stopping).await;
            }
            drop(place);
        }
    }
    drop(assigned);
}

async fn serve(stream: TcpStream, peer: SocketAddr, worker: Arc<Worker>, place: Arc<Permit>) {
    let _ = stream.set_nodelay(true);
    let Ok(local) = stream.local_addr() else {
        return;
    };
    let settings = worker.shared.settings.load_full();
    let connection = worker
        .shared
        .sessions
        .connection(Kind::Http, peer, String::new());
    let stream = Counted::new(stream, connection.clone());
    let limits = settings.proxy.clone();
    let route = ProxyRoute {
        worker: worker.clone(),
        connection: connection.clone(),
        settings,
        local,
        place,
    };
    connection::serve(
        stream,
        Protocol::Http1,
        &limits,
        worker,
        connection,
        None,
        route,
    )
    .await;
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
