//! Byte tunnels: the two sides of a CONNECT, relaying bytes between them
//! (socket to socket in the kernel where both are plain sockets), and
//! connections that switched protocols (101).

use std::sync::Arc;
use std::time::Duration;

use ferryman_http::body;
use ferryman_http::upstream::Conn;
use ferryman_http::{ProxyBody, Target, UpstreamError};
use ferryman_tunnel::AgentStream;
use http::header::{HeaderValue, CONNECTION};
use http::Response;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::debug;

use super::counted::{Counted, TunnelMeter, UpgradeMeter};
use super::deadline::{Activity, SendDeadline};
use super::guard::FramingGuard;
use super::witness::Witness;
use crate::context::{Shared, Worker};
use crate::session::{Kind, SessionGuard};

/// Per-direction copy buffer: large enough for bulk transfers to run at
/// memory speed, small enough not to matter per tunnel.
const TUNNEL_BUFFER: usize = 64 * 1024;

/// The IO type hyper serves client connections on; a tunnel unwraps it to
/// copy straight between sockets.
pub(crate) type ClientIo = TokioIo<FramingGuard<SendDeadline<Counted<TcpStream>>>>;

/// The upstream side of a tunnel to `target`, with who carries it noted
/// in the session; on failure, why (recorded).
pub(crate) async fn open(
    worker: &Worker,
    target: &Target,
    witness: &Witness,
) -> Result<Conn, UpstreamError> {
    let (host, port) = (target.authority.host(), target.port());
    match worker.upstream.connect(&target.connector, host, port).await {
        Ok(stream) => {
            if let Some(carrier) = target.connector.carried_by(&stream) {
                witness.session().set_carrier(carrier);
            }
            Ok(stream)
        }
        Err(e) => {
            debug!(error = %e, %host, port, "tunnel failed");
            witness.fail(&e);
            Err(e)
        }
    }
}

/// The answer to a CONNECT whose tunnel is open.
pub(crate) fn established() -> Response<ProxyBody> {
    let mut response = Response::new(body::empty());
    response
        .extensions_mut()
        .insert(hyper::ext::ReasonPhrase::from_static(
            b"Connection established",
        ));
    response
}

/// A refused CONNECT ends the connection: bytes the client may already have
/// sent for the tunnel must never be read as HTTP.
pub(crate) fn refuse(mut response: Response<ProxyBody>) -> Response<ProxyBody> {
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    response
}

/// After a 101 has gone out, joins the client and the upstream connection,
/// until both are done or nothing moves for `idle`.
pub(crate) fn splice_upgrade(
    shared: &Shared,
    on_client: OnUpgrade,
    on_upstream: OnUpgrade,
    witness: Arc<Witness>,
    idle: Duration,
) {
    witness.set_kind(Kind::Websocket);
    spawn_until_stopped(shared, witness.clone(), async move {
        match tokio::try_join!(on_client, on_upstream) {
            Ok((client, upstream)) => {
                let activity = Activity::new();
                let meter = UpgradeMeter {
                    session: witness.session().clone(),
                    taps: witness.stream_taps(),
                    activity: activity.clone(),
                };
                let mut client = Counted::new(TokioIo::new(client), meter);
                let mut upstream = TokioIo::new(upstream);
                let copied = activity
                    .bounded(idle, pump(&mut client, &mut upstream))
                    .await;
                if let Some(taps) = &client.meter().taps {
                    taps.iter().for_each(|tap| tap.end(copied.is_ok()));
                }
                record(copied, &witness);
            }
            Err(e) => debug!(error = %e, "upgrade did not complete"),
        }
    });
}

/// Runs a tunnel as a tracked task that ends, marked aborted, when the
/// shutdown grace period is over or its session is closed.
pub(crate) fn spawn_until_stopped(
    shared: &Shared,
    witness: Arc<Witness>,
    tunnel: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let stop = shared.hard_stop.clone();
    shared.tasks.spawn(async move {
        let closed = witness.session().cancelled().clone();
        tokio::select! {
            () = tunnel => {}
            () = stop.cancelled() => witness.abort(),
            () = closed.cancelled() => witness.abort(),
        }
    });
}

/// The client's side of a tunnel, once its connection is handed over.
pub(crate) enum ClientSide {
    /// A plain socket, and the bytes the client sent right behind its
    /// request head (counted for the connection, adopted by the tunnel).
    Socket(TcpStream, bytes::Bytes),
    /// Not a plain socket: a tunnel inside a tunnel.
    Other(Upgraded),
}

impl ClientSide {
    pub(crate) fn of(upgraded: Upgraded, witness: &Witness) -> Self {
        match upgraded.downcast::<ClientIo>() {
            Ok(parts) => {
                let guard = parts.io.into_inner();
                let socket = guard.into_inner().into_inner().into_inner();
                let early = parts.read_buf;
                witness.session().adopt_bytes(early.len() as u64, 0);
                ClientSide::Socket(socket, early)
            }
            Err(upgraded) => ClientSide::Other(upgraded),
        }
    }
}

/// Relays a tunnel whose client side is not a plain socket (its bytes are
/// counted where that socket is), until nothing moves for `idle`.
pub(crate) async fn relay_upgraded(
    upgraded: Upgraded,
    mut upstream: Conn,
    witness: &Witness,
    idle: Duration,
) {
    let activity = Activity::new();
    let meter = UpgradeMeter {
        session: witness.session().clone(),
        taps: None,
        activity: activity.clone(),
    };
    let mut client = Counted::new(TokioIo::new(upgraded), meter);
    let relayed = activity.bounded(idle, pump(&mut client, &mut upstream));
    record(relayed.await, witness)
}

/// Relays `early` (bytes already read from the client and counted) and
/// then everything else, counting it, until both directions are done or
/// nothing moves for `idle`. A tunnel that breaks resets the client's
/// connection: a raw TCP client must not take a broken tunnel for an end.
pub(crate) async fn relay_bytes(
    socket: TcpStream,
    mut upstream: Conn,
    early: &[u8],
    session: &Arc<SessionGuard>,
    idle: Duration,
) -> std::io::Result<()> {
    if let Err(e) = upstream.write_all(early).await {
        reset(&socket);
        return Err(e);
    }
    let activity = Activity::new();
    match upstream {
        #[cfg(target_os = "linux")]
        Conn::Tcp(upstream) => {
            let relay = super::splice::relay(&socket, &upstream, session, &activity);
            let relayed = activity.bounded(idle, relay).await;
            if relayed.is_err() {
                reset(&socket);
            }
            relayed
        }
        Conn::Other(io) if (&*io as &dyn std::any::Any).is::<AgentStream>() => {
            let any: Box<dyn std::any::Any> = io;
            let Ok(through) = any.downcast::<AgentStream>() else {
                return Err(std::io::Error::other("not an agent's stream"));
            };
            // An agent's stream moves h2's frames to the socket as they
            // are: no buffer of the relay's own in between.
            let count = |up: u64, down: u64| {
                activity.touch();
                session.socket_bytes(up, down);
            };
            // It resets the socket itself when the stream breaks.
            activity
                .bounded(idle, through.relay_tcp(socket, &count))
                .await
        }
        mut upstream => {
            let meter = TunnelMeter {
                session: session.clone(),
                activity: activity.clone(),
            };
            let mut client = Counted::new(socket, meter);
            let relayed = activity
                .bounded(idle, pump(&mut client, &mut upstream))
                .await;
            if relayed.is_err() {
                reset(&client.into_inner());
            }
            relayed
        }
    }
}

/// Closing `socket` from now on sends a reset, not an end.
pub(crate) fn reset(socket: &TcpStream) {
    let _ = socket2::SockRef::from(socket).set_linger(Some(Duration::ZERO));
}

/// How a plain tunnel ended.
pub(crate) fn record(result: std::io::Result<()>, witness: &Witness) {
    if let Err(e) = result {
        witness.abort();
        debug!(error = %e, "tunnel ended");
    }
}

/// Copies both ways with half-close until both directions are done.
async fn pump<C, U>(client: &mut C, upstream: &mut U) -> std::io::Result<()>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    tokio::io::copy_bidirectional_with_sizes(client, upstream, TUNNEL_BUFFER, TUNNEL_BUFFER)
        .await
        .map(|_| ())
}
