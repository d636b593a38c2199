//! What the stages of the pipeline share: [`Shared`] is the one part every
//! worker thread sees, [`Worker`] is one thread's view of it with that
//! thread's own upstream pool. Nothing here decides or forwards anything.

use std::net::SocketAddr;
use std::sync::Arc;

use ferryman_capture::Capture;
use ferryman_http::headers::Via;
use ferryman_http::upstream::Connector;
use ferryman_http::UpstreamClient;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::exchange::witness::RequestCounters;
use crate::exchange::Interception;
use crate::inbound::auth::ProxyAuth;
use crate::outbound::dial::OwnAddrs;
use crate::session::Sessions;
use crate::ProxyConfig;

/// What every connection of every worker thread shares.
pub(crate) struct Shared {
    pub(crate) auth: Option<ProxyAuth>,
    /// This process's entry in `Via`; seeing it come back means a loop.
    pub(crate) via: Via,
    pub(crate) x_forwarded_for: bool,
    pub(crate) listen: SocketAddr,
    /// Connections and tunnels, which outlive the request that opened them.
    pub(crate) tasks: TaskTracker,
    /// Cancelled when the shutdown grace period is over.
    pub(crate) hard_stop: CancellationToken,
    /// One permit per client connection being served.
    pub(crate) connections: Arc<Semaphore>,
    pub(crate) interception: Option<Arc<Interception>>,
    pub(crate) config: Arc<ProxyConfig>,
    /// Cancelled when shutdown starts: connections finish what they are
    /// doing and close.
    pub(crate) stopping: CancellationToken,
    pub(crate) sessions: Sessions,
    pub(crate) capture: Option<Capture>,
    pub(crate) requests: Arc<RequestCounters>,
    /// Every listening address of this process: connecting to one is a loop.
    pub(crate) own: OwnAddrs,
    /// The way out when nothing else is said.
    pub(crate) direct: Connector,
}

/// One worker thread's view: the shared part plus the thread's own
/// upstream pool, so an exchange never wakes a task on another thread.
pub(crate) struct Worker {
    pub(crate) shared: Arc<Shared>,
    pub(crate) upstream: UpstreamClient,
}
