//! The SOCKS5 inbound (RFC 1928): the greeting and username/password
//! (RFC 1929, the users of `proxy.auth`), then a CONNECT becomes a tunnel
//! like an HTTP CONNECT's (decided by the same policy, answered only once
//! its upstream side is open, intercepted when it carries TLS and the
//! rules say so) and a UDP ASSOCIATE relays datagrams. BIND is refused.

mod handshake;
mod udp;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use fast_socks5::server::{states, Socks5ServerProtocol};
use fast_socks5::util::target_addr::TargetAddr;
use fast_socks5::{ReplyError, Socks5Command};
use ferryman_http::limit::Permit;
use ferryman_http::upstream::Conn;
use ferryman_http::Target;
use http::{HeaderMap, Method, StatusCode, Version};
use tokio::net::TcpStream;
use tracing::debug;

use super::routing::{decide, Origin};
use super::tunnels::{self, Plan};
use crate::context::{Settings, Worker};
use crate::exchange::tunnel::{self, ClientSide};
use crate::exchange::witness::{Entry, Witness};
use crate::outbound::Way;
use crate::session::{Kind, SessionGuard};

/// What rules call this inbound.
pub(crate) const INBOUND: &str = "socks5";

type Commanded = Socks5ServerProtocol<TcpStream, states::CommandRead>;

/// Serves one client connection to the SOCKS5 listener.
pub(crate) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    worker: Arc<Worker>,
    place: Arc<Permit>,
) {
    let _ = stream.set_nodelay(true);
    let Ok(local) = stream.local_addr() else {
        return;
    };
    let settings = worker.shared.settings.load_full();
    let connection = worker
        .shared
        .sessions
        .connection(Kind::Socks5, peer, String::new());
    let wait = settings.proxy.client_idle_timeout;
    let greeted =
        tokio::time::timeout(wait, handshake::greet(stream, settings.auth.as_ref())).await;
    let (proto, command, target, user) = match greeted {
        Ok(Ok(greeted)) => greeted,
        Ok(Err(e)) => return debug!(%peer, error = %e, "socks5 handshake failed"),
        Err(_) => return debug!(%peer, "socks5 handshake timed out"),
    };
    let origin = Origin {
        inbound: INBOUND,
        client: peer.ip(),
        user,
    };
    let asked = Asked {
        local,
        worker,
        settings,
        origin,
        connection,
        place,
    };
    match command {
        Socks5Command::TCPConnect => asked.connect(proto, target).await,
        Socks5Command::UDPAssociate => udp::associate(asked, proto, target).await,
        Socks5Command::TCPBind => {
            let _ = proto.reply_error(&ReplyError::CommandNotSupported).await;
        }
    }
}

/// A command, and what it was asked with.
struct Asked {
    /// The listener's address the client reached.
    local: SocketAddr,
    worker: Arc<Worker>,
    settings: Arc<Settings>,
    origin: Origin,
    connection: Arc<SessionGuard>,
    place: Arc<Permit>,
}

/// RFC 1928's reply codes, by number.
fn reply(code: u8) -> ReplyError {
    match code {
        2 => ReplyError::ConnectionNotAllowed,
        3 => ReplyError::NetworkUnreachable,
        4 => ReplyError::HostUnreachable,
        5 => ReplyError::ConnectionRefused,
        6 => ReplyError::TtlExpired,
        _ => ReplyError::GeneralFailure,
    }
}

impl Asked {
    /// A CONNECT: decided, its upstream side opened, answered, and carried
    /// as a tunnel.
    async fn connect(self, proto: Commanded, target: TargetAddr) {
        // An address comes without brackets, a name as the client gave it.
        let (host, port) = target.into_string_and_port();
        let authority_text = ferryman_tunnel::wire::authority(&host, port);
        let Ok(authority) = authority_text.parse::<http::uri::Authority>() else {
            let _ = proto
                .reply_error(&ReplyError::AddressTypeNotSupported)
                .await;
            return;
        };
        let shared = &self.worker.shared;
        let witness = Arc::new(Witness::new(
            shared,
            &self.connection,
            Entry::Forward,
            Method::CONNECT,
            (authority_text, Some(&host)),
        ));
        witness.hold_place(&self.place);
        witness.request(Version::HTTP_11, &HeaderMap::new());
        let facts = self.origin.facts(&host, port, Some("CONNECT"), None);
        let verdict = decide(&self.settings, &self.worker, facts).await;
        let outbound = verdict.outbound;
        witness.routed(&outbound.name, verdict.rule);
        let connector = match &outbound.way {
            Way::Connect(connector) => connector.clone(),
            Way::Refuse(_) | Way::Answer(_) => {
                witness.fail(format_args!("refused by rule {}", verdict.rule));
                witness.answered(StatusCode::FORBIDDEN);
                let _ = proto.reply_error(&ReplyError::ConnectionNotAllowed).await;
                return;
            }
        };
        let plan = Plan {
            settings: self.settings.clone(),
            origin: self.origin,
            target: Target::new(authority, Some(port), false, connector),
            intercept: verdict.intercept,
        };
        let upstream = match tunnel::open(&self.worker, &plan.target, &witness).await {
            Ok(upstream) => upstream,
            Err(e) => {
                witness.answered(e.status());
                let _ = proto.reply_error(&reply(e.socks_reply())).await;
                return;
            }
        };
        let bound = match &upstream {
            Conn::Tcp(socket) => socket.local_addr().ok(),
            Conn::Other(_) => None,
        };
        let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
        let Ok(client) = proto.reply_success(bound.unwrap_or(unspecified)).await else {
            return;
        };
        witness.answered(StatusCode::OK);
        witness.set_kind(Kind::Tunnel);
        let worker = self.worker.clone();
        let carried = witness.clone();
        tunnel::spawn_until_stopped(shared, witness, async move {
            let client = ClientSide::Socket(client, Bytes::new());
            tunnels::run(worker, plan, client, upstream, carried).await
        });
    }
}
