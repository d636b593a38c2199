//! Published services (`[[tunnel.services]]`): a port of the gateway whose
//! connections reach a service behind the tunnel's agents, dialled on the
//! agent's side. A connection is carried as a tunnel, recorded and listed
//! like one, and reset when no agent can reach the service.

use std::net::SocketAddr;
use std::sync::Arc;

use ferryman_http::limit::Permit;
use ferryman_http::upstream::Conn;
use ferryman_tunnel::wire::Network;
use http::{HeaderMap, Method, StatusCode, Version};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::debug;

use crate::context::Worker;
use crate::exchange::tunnel;
use crate::exchange::witness::{Entry, Witness};
use crate::session::Kind;

/// What the connection table and records call the rule that sent it.
const RULE: &str = "tunnel.services";

/// Serves one connection to the service published at `at`.
pub(crate) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    at: SocketAddr,
    worker: Arc<Worker>,
    place: Arc<Permit>,
) {
    let settings = worker.shared.settings.load_full();
    let shared = &worker.shared;
    let (Some(service), Some(gateway)) = (settings.service(at), shared.gateway.get()) else {
        return;
    };
    let Some((host, port)) = service.destination() else {
        return;
    };
    let _ = stream.set_nodelay(true);
    let connection = shared
        .sessions
        .connection(Kind::Service, peer, service.target.clone());
    let witness = Arc::new(Witness::new(
        shared,
        &connection,
        Entry::Forward,
        Method::CONNECT,
        (service.target.clone(), Some(host)),
    ));
    witness.hold_place(&place);
    witness.request(Version::HTTP_11, &HeaderMap::new());
    let via = service.via();
    let outbound: Arc<str> = match (&service.group, &service.agent) {
        (_, Some(agent)) => format!("agent {agent}").into(),
        (Some(group), None) => group.as_str().into(),
        (None, None) => "agents".into(),
    };
    witness.routed(&outbound, &Arc::from(RULE));
    let deadline = Instant::now() + worker.upstream.config().connect_timeout;
    match gateway.open(&via, host, port, Network::Tcp, deadline).await {
        Ok(through) => {
            witness.session().set_carrier(Arc::from(through.agent()));
            witness.answered(StatusCode::OK);
            witness.set_kind(Kind::Tunnel);
            let idle = settings.proxy.tunnel_idle_timeout;
            let carried = witness.clone();
            tunnel::spawn_until_stopped(shared, witness, async move {
                let upstream = Conn::Other(Box::new(through));
                let relayed =
                    tunnel::relay_bytes(stream, upstream, &[], carried.session(), idle).await;
                tunnel::record(relayed, &carried);
            });
        }
        Err(e) => {
            debug!(%peer, service = %service.target, error = %e, "published service not reached");
            witness.fail(&e);
            witness.answered(StatusCode::BAD_GATEWAY);
            // The client learns it failed: a reset, not an empty answer.
            tunnel::reset(&stream);
        }
    }
}
