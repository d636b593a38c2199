//! What the stages of the pipeline share: [`Shared`] is the one part every
//! worker thread sees, [`Worker`] is one thread's view of it with that
//! thread's own upstream pool, and [`Settings`] the configuration in force,
//! which a session takes whole when it starts and keeps. Nothing here
//! decides or forwards anything.

use std::sync::Arc;

use arc_swap::ArcSwap;
use ferryman_capture::Capture;
use ferryman_http::headers::Via;
use ferryman_http::UpstreamClient;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Socks5Config;
use crate::exchange::witness::RequestCounters;
use crate::exchange::Interception;
use crate::inbound::auth::ProxyAuth;
use crate::inbound::sockets::{Serves, Wanted};
use crate::policy::Policy;
use crate::session::Sessions;
use crate::ProxyConfig;
use ferryman_http::dial::OwnAddrs;
use ferryman_http::limit::Limit;
use ferryman_tunnel::ServiceConfig;
use std::net::SocketAddr;

/// The configuration the sessions starting now get; replaced whole by a
/// reload, never changed in place.
pub struct Settings {
    pub(crate) proxy: ProxyConfig,
    pub(crate) auth: Option<ProxyAuth>,
    pub(crate) policy: Policy,
    pub(crate) socks5: Socks5Config,
    /// Where agents' carriers come in, when this is the tunnel's gateway.
    pub(crate) carriers: Option<SocketAddr>,
    /// Ports that reach services behind agents.
    pub(crate) services: Vec<ServiceConfig>,
}

impl Settings {
    pub fn new(proxy: ProxyConfig, policy: Policy) -> Self {
        Self {
            auth: ProxyAuth::new(&proxy.auth),
            proxy,
            policy,
            socks5: Socks5Config::default(),
            carriers: None,
            services: Vec::new(),
        }
    }

    /// With a SOCKS5 listener, as `socks5` says.
    pub fn with_socks5(self, socks5: Socks5Config) -> Self {
        Self { socks5, ..self }
    }

    /// With the tunnel's listeners: agents' carriers at `carriers`, and
    /// `services`.
    pub fn with_tunnel(self, carriers: Option<SocketAddr>, services: Vec<ServiceConfig>) -> Self {
        Self {
            carriers,
            services,
            ..self
        }
    }

    /// The published service listening at `addr`.
    pub(crate) fn service(&self, addr: SocketAddr) -> Option<&ServiceConfig> {
        self.services.iter().find(|s| s.listen == addr)
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The listening sockets these settings ask for.
    pub(crate) fn sockets(&self) -> Vec<Wanted> {
        let want = |serves, key: String, addr| Wanted { serves, key, addr };
        let mut wanted = vec![want(
            Serves::HttpProxy,
            "proxy.listen".into(),
            self.proxy.listen,
        )];
        if let Some(addr) = self.socks5.listen {
            wanted.push(want(Serves::Socks5, "socks5.listen".into(), addr));
        }
        if let Some(addr) = self.carriers {
            wanted.push(want(Serves::Carriers, "tunnel.listen".into(), addr));
        }
        for (i, service) in self.services.iter().enumerate() {
            let key = format!("tunnel.services[{i}].listen");
            wanted.push(want(Serves::Service, key, service.listen));
        }
        wanted
    }
}

/// What every connection of every worker thread shares.
pub(crate) struct Shared {
    pub(crate) settings: ArcSwap<Settings>,
    /// This process's entry in `Via`; seeing it come back means a loop.
    pub(crate) via: Via,
    /// Connections and tunnels, which outlive the request that opened them.
    pub(crate) tasks: TaskTracker,
    /// Cancelled when the shutdown grace period is over.
    pub(crate) hard_stop: CancellationToken,
    /// One place per client connection being served (and the tunnel it
    /// turns into), and per upstream connection kept idle.
    pub(crate) connections: Arc<Limit>,
    pub(crate) interception: Option<Arc<Interception>>,
    /// Cancelled when shutdown starts: connections finish what they are
    /// doing and close.
    pub(crate) stopping: CancellationToken,
    pub(crate) sessions: Sessions,
    pub(crate) capture: Option<Capture>,
    pub(crate) requests: Arc<RequestCounters>,
    /// Every listening address of this process: connecting to one is a loop.
    pub(crate) own: OwnAddrs,
    /// How upstream TLS is checked, for the proxies reached over TLS.
    pub(crate) tls: ArcSwap<rustls::ClientConfig>,
    /// The tunnel's gateway, when this ferryman is one.
    pub(crate) gateway: std::sync::OnceLock<Arc<ferryman_tunnel::Gateway>>,
}

/// One worker thread's view: the shared part plus the thread's own
/// upstream pool, so an exchange never wakes a task on another thread.
pub(crate) struct Worker {
    pub(crate) shared: Arc<Shared>,
    pub(crate) upstream: UpstreamClient,
}
