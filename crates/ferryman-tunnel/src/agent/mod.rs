//! The agent: inside a private network, it dials out to its gateway and
//! keeps carriers there (two by default), reconnecting for ever with full
//! jitter, and serves the streams the gateway opens by dialling what its
//! allow/deny list lets it. How it reaches the gateway (directly or
//! through an HTTP proxy) and how the gateway's certificate is checked are
//! given to it.

pub mod acl;
mod serve;
mod udp;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ferryman_http::dial::OwnAddrs;
use ferryman_http::upstream::Connector;
use ferryman_http::UpstreamError;
use rustls::pki_types::ServerName;
use serde::{Deserialize, Serialize};
use tokio::time::{timeout_at, Instant};
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::carrier::{heartbeat, CarrierConfig};
use crate::wire::{self, Session};
use crate::ws::{handshake, Role, WsIo};
use acl::Acl;

/// An agent's settings: flags of `ferryman agent`, or its file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// `wss://host:port[/path]`.
    pub gateway: String,
    #[serde(skip_serializing)]
    pub token: String,
    pub group: String,
    /// What the gateway lists this agent as; the host name by default.
    pub id: Option<String>,
    pub allow: Vec<String>,
    pub deny: Vec<String>,
    /// The gateway's CA (PEM), e.g. what `ferryman ca path` prints there.
    pub gateway_ca: Option<PathBuf>,
    /// Or the SHA-256 of the gateway's certificate or of its CA.
    pub gateway_fingerprint: Option<String>,
    /// An HTTP proxy to reach the gateway through (CONNECT).
    pub via: Option<String>,
    /// Carriers kept open at once.
    pub carriers: usize,
    /// Dialling a destination, resolution included.
    #[serde(with = "ferryman_http::config::humantime_serde")]
    pub connect_timeout: Duration,
    /// A UDP stream with no datagram either way for this long ends.
    #[serde(with = "ferryman_http::config::humantime_serde")]
    pub udp_idle_timeout: Duration,
    pub carrier: CarrierConfig,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            gateway: String::new(),
            token: String::new(),
            group: String::new(),
            id: None,
            allow: Vec::new(),
            deny: Vec::new(),
            gateway_ca: None,
            gateway_fingerprint: None,
            via: None,
            carriers: 2,
            connect_timeout: Duration::from_secs(10),
            udp_idle_timeout: Duration::from_secs(60),
            carrier: CarrierConfig::default(),
        }
    }
}

/// Where the gateway is.
#[derive(Debug, Clone)]
pub struct GatewayUrl {
    pub host: String,
    pub port: u16,
    pub path: String,
    url: String,
}

impl GatewayUrl {
    pub fn parse(text: &str) -> Result<GatewayUrl, String> {
        let bad = |why: &str| format!("--gateway {text:?}: {why}");
        let uri: http::Uri = text.parse().map_err(|_| bad("not a URL"))?;
        if uri.scheme_str() != Some("wss") {
            return Err(bad("must be wss://host:port (the carrier is always TLS)"));
        }
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = authority.port_u16().unwrap_or(443);
        let path = match uri.path() {
            "" | "/" => wire::DEFAULT_PATH.to_string(),
            path => path.to_string(),
        };
        let url = format!("wss://{}{path}", wire::authority(&host, port));
        Ok(GatewayUrl {
            host,
            port,
            path,
            url,
        })
    }
}

impl AgentConfig {
    /// Everything wrong with the settings, each naming its flag.
    pub fn check(&self) -> Result<(GatewayUrl, Acl, String), String> {
        let url = GatewayUrl::parse(&self.gateway)?;
        if self.token.is_empty() {
            return Err("--token is required".into());
        }
        if !wire::valid_agent_id(&self.group) {
            return Err(format!(
                "--group {:?}: a group is 1-64 letters, digits, '.', '-' or '_'",
                self.group
            ));
        }
        let id = match &self.id {
            Some(id) => id.clone(),
            None => host_name(),
        };
        if !wire::valid_agent_id(&id) {
            return Err(format!(
                "--id {id:?}: an agent id is 1-64 letters, digits, '.', '-' or '_'"
            ));
        }
        if self.carriers == 0 || self.carriers > 16 {
            return Err("--carriers: between 1 and 16".into());
        }
        self.carrier.validate("carrier.")?;
        let acl = Acl::parse(&self.allow, &self.deny)?;
        Ok((url, acl, id))
    }
}

/// This machine's name, as an agent id.
fn host_name() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_default();
    let name: String = name
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if name.is_empty() {
        "agent".into()
    } else {
        name
    }
}

/// Finds the addresses of a name, as [`ferryman_http::dial::resolve`] does.
pub type Resolver = Arc<
    dyn Fn(
            String,
            u16,
            Instant,
        ) -> futures_util::future::BoxFuture<
            'static,
            Result<Vec<std::net::SocketAddr>, UpstreamError>,
        > + Send
        + Sync,
>;

/// What serving a stream needs.
pub(crate) struct Serving {
    pub(crate) acl: Acl,
    pub(crate) resolver: Resolver,
    pub(crate) connect_timeout: Duration,
    pub(crate) udp_idle_timeout: Duration,
    /// An agent has no listeners to loop into.
    pub(crate) own: OwnAddrs,
}

/// A running agent.
pub struct Agent {
    config: AgentConfig,
    url: GatewayUrl,
    id: String,
    session: Session,
    egress: Connector,
    tls: TlsConnector,
    serving: Arc<Serving>,
}

/// The first wait after a failure, and the longest.
const BACKOFF_BASE: Duration = Duration::from_millis(500);
const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// A carrier that lived this long resets the backoff.
const HEALTHY: Duration = Duration::from_secs(30);
/// Connecting a carrier, all of it.
const CONNECT: Duration = Duration::from_secs(15);
/// How long streams may finish once the agent is told to stop.
const GRACE: Duration = Duration::from_secs(10);

impl Agent {
    /// An agent reaching its gateway through `egress`, checking it with `tls`.
    pub fn new(
        config: AgentConfig,
        egress: Connector,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<Agent, String> {
        let (url, acl, id) = config.check()?;
        Ok(Agent {
            serving: Arc::new(Serving {
                acl,
                resolver: Arc::new(|host, port, deadline| {
                    Box::pin(
                        async move { ferryman_http::dial::resolve(&host, port, deadline).await },
                    )
                }),
                connect_timeout: config.connect_timeout,
                udp_idle_timeout: config.udp_idle_timeout,
                own: OwnAddrs::default(),
            }),
            url,
            id,
            session: Session {
                started_ms: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64),
                nonce: random_u64(),
            },
            egress,
            tls: TlsConnector::from(tls),
            config,
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Names resolved by `resolver` instead of the system's (an embedding
    /// with a DNS of its own; tests that need a name with given addresses).
    pub fn resolving_with(mut self, resolver: Resolver) -> Self {
        if let Some(serving) = Arc::get_mut(&mut self.serving) {
            serving.resolver = resolver;
        }
        self
    }

    /// Keeps the carriers up until `stop`, then lets open streams finish
    /// for a while.
    pub async fn run(self, stop: CancellationToken) {
        let agent = Arc::new(self);
        info!(id = %agent.id, group = %agent.config.group, gateway = %agent.url.url,
            carriers = agent.config.carriers, "agent starting");
        let slots = TaskTracker::new();
        for slot in 0..agent.config.carriers {
            slots.spawn(agent.clone().keep(slot, stop.clone()));
        }
        slots.close();
        slots.wait().await;
    }

    /// Keeps carrier `slot` connected, with full-jitter backoff between
    /// attempts.
    async fn keep(self: Arc<Self>, slot: usize, stop: CancellationToken) {
        let mut failures: u32 = 0;
        while !stop.is_cancelled() {
            let started = Instant::now();
            match self.connect().await {
                Ok(connection) => {
                    info!(slot, gateway = %self.url.url, "carrier connected");
                    let why = self.serve(connection, &stop).await;
                    info!(slot, reason = %why, "carrier closed");
                    if started.elapsed() >= HEALTHY {
                        failures = 0;
                    }
                }
                Err(e) => {
                    warn!(slot, gateway = %self.url.url, error = %e, "cannot connect a carrier")
                }
            }
            if stop.is_cancelled() {
                return;
            }
            failures = failures.saturating_add(1);
            let ceiling = BACKOFF_BASE
                .saturating_mul(2u32.saturating_pow(failures.min(16)))
                .min(BACKOFF_CAP);
            let wait = ceiling.mul_f64(random_u64() as f64 / u64::MAX as f64);
            debug!(slot, ?wait, "reconnecting");
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = stop.cancelled() => return,
            }
        }
    }

    /// A carrier: the gateway dialled (through `via`), TLS, the upgrade
    /// that says who this agent is, and h2 as the server.
    async fn connect(&self) -> Result<h2::server::Connection<WsIo<Tls>, bytes::Bytes>, String> {
        let deadline = Instant::now() + CONNECT;
        let timed_out = |what: &str| format!("{what} timed out");
        let conn = self
            .egress
            .connect(&self.url.host, self.url.port, deadline)
            .await
            .map_err(|e| e.to_string())?;
        let name = ServerName::try_from(self.url.host.clone())
            .map_err(|e| format!("{}: {e}", self.url.host))?;
        let tls = timeout_at(deadline, self.tls.connect(name, conn))
            .await
            .map_err(|_| timed_out("TLS"))?
            .map_err(|e| format!("TLS: {e}"))?;
        let mut headers = http::HeaderMap::new();
        let text = |s: &str| wire::header_text(s);
        headers.insert(
            http::header::AUTHORIZATION,
            text(&format!("Bearer {}", self.config.token)),
        );
        headers.insert(wire::AGENT, text(&self.id));
        headers.insert(wire::GROUP, text(&self.config.group));
        headers.insert(wire::SESSION, text(&self.session.to_string()));
        headers.insert(wire::PROTOCOL, text(wire::VERSION));
        headers.insert(
            http::header::USER_AGENT,
            text(concat!("ferryman-agent/", env!("CARGO_PKG_VERSION"))),
        );
        let mut tls = tls;
        let host = wire::authority(&self.url.host, self.url.port);
        let upgraded = handshake::client(&mut tls, &host, &self.url.path, &headers);
        let read_ahead = match timeout_at(deadline, upgraded).await {
            Err(_) => return Err(timed_out("the upgrade")),
            Ok(Ok(read_ahead)) => read_ahead,
            Ok(Err(e)) => return Err(e.to_string()),
        };
        let socket = WsIo::new(tls, Role::Client, &read_ahead);
        timeout_at(deadline, self.config.carrier.server().handshake(socket))
            .await
            .map_err(|_| timed_out("h2"))?
            .map_err(|e| format!("h2: {e}"))
    }

    /// Serves the streams the gateway opens until the carrier ends; says why.
    async fn serve(
        &self,
        mut connection: h2::server::Connection<WsIo<Tls>, bytes::Bytes>,
        stop: &CancellationToken,
    ) -> String {
        let dead = CancellationToken::new();
        let pings = connection.ping_pong();
        let beating = async {
            match pings {
                Some(pings) => {
                    let rtt = Arc::default();
                    let config = self.config.carrier.clone();
                    heartbeat(pings, config, rtt, dead.clone(), self.url.url.clone()).await
                }
                None => std::future::pending().await,
            }
        };
        let streams = TaskTracker::new();
        let mut stopping = false;
        let accept = async {
            loop {
                tokio::select! {
                    next = connection.accept() => match next {
                        Some(Ok((request, respond))) => {
                            streams.spawn(serve::stream(request, respond, self.serving.clone()));
                        }
                        Some(Err(e)) => return e.to_string(),
                        None => return "the gateway closed it".to_string(),
                    },
                    () = stop.cancelled(), if !stopping => {
                        // Tell the gateway: it sends new streams elsewhere.
                        stopping = true;
                        connection.graceful_shutdown();
                    }
                }
            }
        };
        let why = tokio::select! {
            why = accept => why,
            () = beating => "heartbeat lost".into(),
            () = dead.cancelled() => "heartbeat lost".into(),
            () = after_stop(stop) => "stopped".into(),
        };
        streams.close();
        why
    }
}

/// The agent's grace after `stop`.
async fn after_stop(stop: &CancellationToken) {
    stop.cancelled().await;
    tokio::time::sleep(GRACE).await;
}

type Tls = tokio_rustls::client::TlsStream<ferryman_http::upstream::Conn>;

fn random_u64() -> u64 {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 8];
    // Without randomness, a fixed value still orders sessions by start time.
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    u64::from_le_bytes(bytes)
}
