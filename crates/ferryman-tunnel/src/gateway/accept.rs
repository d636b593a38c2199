//! One connection to the tunnel listener becoming a carrier: TLS, the
//! WebSocket upgrade (refused, with the reason in the answer, unless the
//! token, group, agent id, session and protocol version pass), h2 with the
//! gateway as the client, then registered and served until it ends.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::server::TlsStream;
use tokio_rustls::{LazyConfigAcceptor, TlsAcceptor};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::registry::{AgentInfo, Carrier};
use super::{digest, Gateway, Identity, Rules};
use crate::carrier::heartbeat;
use crate::wire::{self, Session};
use crate::ws::{handshake, Role, WsIo};

/// TLS, the upgrade and h2's preface must each be done within this.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// Why a carrier was not taken.
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error("TLS: {0}")]
    Tls(String),
    #[error("upgrade: {0}")]
    Upgrade(String),
    #[error("h2: {0}")]
    H2(String),
    #[error("{0}")]
    Registry(String),
}

impl Gateway {
    /// Serves one connection to the tunnel listener as a carrier until it
    /// closes, its heartbeat stops, it is replaced or revoked, or the
    /// gateway stops: on `stopping` it takes no new streams and closes
    /// once the open ones end.
    pub async fn serve_carrier(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        stopping: CancellationToken,
    ) {
        if let Err(e) = self.carry(stream, peer, stopping).await {
            debug!(%peer, error = %e, "carrier refused");
            self.refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            metrics::counter!("ferryman_tunnel_carriers_total", "result" => "refused").increment(1);
        }
    }

    async fn carry(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        stopping: CancellationToken,
    ) -> Result<(), Refused> {
        let local = stream
            .local_addr()
            .map_err(|e| Refused::Tls(e.to_string()))?;
        let tls = timeout(HANDSHAKE, self.tls(stream, local))
            .await
            .map_err(|_| Refused::Tls("timed out".into()))??;
        let rules = self.rules.load_full();
        let mut tls = tls;
        let upgraded = handshake::server(&mut tls, |request| self.check(request, &rules));
        let (agent, read_ahead) = timeout(HANDSHAKE, upgraded)
            .await
            .map_err(|_| Refused::Upgrade("timed out".into()))?
            .map_err(|e| Refused::Upgrade(e.to_string()))?;
        let socket = WsIo::new(tls, Role::Server, &read_ahead);
        let (sender, mut connection) = timeout(HANDSHAKE, rules.carrier.client().handshake(socket))
            .await
            .map_err(|_| Refused::H2("timed out".into()))?
            .map_err(|e| Refused::H2(e.to_string()))?;
        let pings = connection.ping_pong();
        let (carrier, registered) = self
            .registry
            .register(Carrier::new(Arc::new(agent), peer, sender))
            .map_err(Refused::Registry)?;
        let group = carrier.agent.group.clone();
        metrics::counter!("ferryman_tunnel_carriers_total", "result" => "accepted").increment(1);
        info!(agent = %carrier.agent.id, %group, %peer, version = %carrier.agent.version, "agent carrier connected");
        let beating = async {
            match pings {
                Some(pings) => {
                    let rtt = carrier.rtt_us.clone();
                    heartbeat(
                        pings,
                        rules.carrier.clone(),
                        rtt,
                        carrier.closed.clone(),
                        peer.to_string(),
                    )
                    .await
                }
                None => std::future::pending().await,
            }
        };
        let why = tokio::select! {
            ended = &mut connection => match ended {
                Ok(()) => "the agent closed it".to_string(),
                Err(e) => e.to_string(),
            },
            () = carrier.closed.cancelled() => "closed by the gateway".into(),
            () = beating => "heartbeat lost".into(),
            () = retired(&carrier, stopping) => "the gateway is stopping".into(),
        };
        info!(agent = %carrier.agent.id, %group, %peer, reason = %why, "agent carrier closed");
        drop(registered);
        Ok(())
    }

    /// TLS with the configured certificate, or one the CA issues for the
    /// name the agent asked for (the listening address when it named none).
    async fn tls(
        &self,
        stream: TcpStream,
        local: SocketAddr,
    ) -> Result<TlsStream<TcpStream>, Refused> {
        let tls_error = |e: std::io::Error| Refused::Tls(e.to_string());
        match &**self.identity.load() {
            Identity::Configured(config) => TlsAcceptor::from(config.clone())
                .accept(stream)
                .await
                .map_err(tls_error),
            Identity::Minted(ca) => {
                let acceptor = rustls::server::Acceptor::default();
                let start = LazyConfigAcceptor::new(acceptor, stream)
                    .await
                    .map_err(tls_error)?;
                let name = start
                    .client_hello()
                    .server_name()
                    .map_or_else(|| local.ip().to_string(), str::to_string);
                let leaf = ca.leaf(&name).map_err(|e| Refused::Tls(e.to_string()))?;
                let config = ferryman_tls::server_config(leaf, vec![b"http/1.1".to_vec()], false)
                    .map_err(|e| Refused::Tls(e.to_string()))?;
                start.into_stream(config).await.map_err(tls_error)
            }
        }
    }

    /// Who the upgrade request says the agent is, if it may connect; else
    /// the status and the reason it is refused with.
    fn check(&self, request: &Request<()>, rules: &Rules) -> Result<AgentInfo, (u16, String)> {
        let field = |name: &str| {
            request
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
        };
        if request.uri().path() != rules.path {
            return Err((404, format!("agents connect at {}", rules.path)));
        }
        let protocol = field(wire::PROTOCOL).unwrap_or("none");
        if protocol != wire::VERSION {
            return Err((
                426,
                format!(
                    "this gateway speaks tunnel protocol {}, the agent {protocol}: run the same ferryman version on both",
                    wire::VERSION
                ),
            ));
        }
        let token = field("authorization")
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(digest);
        let Some((token, groups)) = token.and_then(|t| rules.tokens.iter().find(|(d, _)| *d == t))
        else {
            return Err((401, "unknown agent token".into()));
        };
        let id = field(wire::AGENT).unwrap_or("");
        if !wire::valid_agent_id(id) {
            return Err((
                400,
                format!("agent id {id:?} must be 1-64 letters, digits, '.', '-' or '_'"),
            ));
        }
        let group = field(wire::GROUP).unwrap_or("");
        if !groups.iter().any(|g| g == group) {
            return Err((
                403,
                format!(
                    "this token may not join group {group:?} (it may join: {})",
                    groups.join(", ")
                ),
            ));
        }
        let Some(session) = field(wire::SESSION).and_then(|s| s.parse::<Session>().ok()) else {
            return Err((400, "no valid ferryman-session".into()));
        };
        self.registry
            .admits(id, session)
            .map_err(|why| (409, why))?;
        Ok(AgentInfo {
            id: id.into(),
            group: group.into(),
            session,
            version: field("user-agent").unwrap_or("").to_string(),
            token: *token,
        })
    }
}

/// Once the gateway stops, or the carrier's stream ids run out, the
/// carrier takes no new streams and ends when its last one does.
async fn retired(carrier: &Carrier, stopping: CancellationToken) {
    loop {
        let idle = carrier.idle.notified();
        tokio::pin!(idle);
        idle.as_mut().enable();
        if stopping.is_cancelled() {
            carrier.retire();
        }
        if carrier.is_retiring() && carrier.open_streams() == 0 {
            return;
        }
        tokio::select! {
            () = idle => {}
            () = stopping.cancelled(), if !carrier.is_retiring() => {}
        }
    }
}
