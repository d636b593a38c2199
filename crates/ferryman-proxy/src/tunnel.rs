//! Byte tunnels: CONNECT, and connections that switched protocols (101).

use std::sync::Arc;

use ferryman_http::body;
use ferryman_http::ProxyBody;
use http::header::{HeaderValue, CONNECTION};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::debug;

use crate::access::AccessLog;
use crate::guard::FramingGuard;
use crate::handler::{Common, Shared};
use crate::local;

/// Per-direction copy buffer: large enough for bulk transfers to run at
/// memory speed, small enough not to matter per tunnel.
const TUNNEL_BUFFER: usize = 64 * 1024;

/// The IO type hyper serves client connections on; a tunnel unwraps it to
/// copy straight between sockets.
pub(crate) type ClientIo = TokioIo<FramingGuard<TcpStream>>;

/// Answers CONNECT only once the upstream TCP connection is up, then splices.
pub(crate) async fn connect(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    log: &Arc<AccessLog>,
) -> Response<ProxyBody> {
    let Some((host, port)) = req
        .uri()
        .authority()
        .and_then(|a| Some((a.host().to_string(), a.port_u16()?)))
    else {
        return refuse(local::text(
            StatusCode::BAD_REQUEST,
            "CONNECT needs a host:port target",
        ));
    };
    let upstream = match shared.upstream.connect(&host, port).await {
        Ok(stream) => stream,
        Err(e) => {
            debug!(error = %e, %host, port, "CONNECT failed");
            return refuse(local::text(e.status(), e));
        }
    };
    let on_client = hyper::upgrade::on(req);
    let log = log.clone();
    spawn_until_stopped(&shared.common, log.clone(), async move {
        match on_client.await {
            Ok(client) => relay_to_socket(client, upstream, &log).await,
            Err(e) => debug!(error = %e, "client left before the tunnel opened"),
        }
    });
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
fn refuse(mut response: Response<ProxyBody>) -> Response<ProxyBody> {
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    response
}

/// After a 101 has gone out, joins the client and the upstream connection.
pub(crate) fn splice_upgrade(
    shared: &Arc<Shared>,
    on_client: OnUpgrade,
    on_upstream: OnUpgrade,
    log: Arc<AccessLog>,
) {
    spawn_until_stopped(&shared.common, log.clone(), async move {
        match tokio::try_join!(on_client, on_upstream) {
            Ok((client, upstream)) => {
                let copied = pump(&mut TokioIo::new(client), &mut TokioIo::new(upstream)).await;
                record(copied, &log);
            }
            Err(e) => debug!(error = %e, "upgrade did not complete"),
        }
    });
}

/// Runs a tunnel as a tracked task that ends, marked aborted, when the
/// shutdown grace period is over.
fn spawn_until_stopped(
    common: &Common,
    log: Arc<AccessLog>,
    tunnel: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let stop = common.hard_stop.clone();
    common.tasks.spawn(async move {
        tokio::select! {
            () = tunnel => {}
            () = stop.cancelled() => log.abort(),
        }
    });
}

/// A CONNECT tunnel: when the client connection is a plain socket, bytes
/// move socket to socket inside the kernel (Linux), else through a copy loop.
async fn relay_to_socket(client: Upgraded, mut upstream: TcpStream, log: &AccessLog) {
    let result = match client.downcast::<ClientIo>() {
        Ok(parts) => {
            let socket = parts.io.into_inner().into_inner();
            // Bytes the client sent right behind its request head belong to the tunnel.
            let early = parts.read_buf.len() as u64;
            match upstream.write_all(&parts.read_buf).await {
                Ok(()) => relay_sockets(socket, upstream)
                    .await
                    .map(|(up, down)| (up + early, down)),
                Err(e) => Err(e),
            }
        }
        Err(client) => pump(&mut TokioIo::new(client), &mut upstream).await,
    };
    record(result, log);
}

#[cfg(target_os = "linux")]
async fn relay_sockets(client: TcpStream, upstream: TcpStream) -> std::io::Result<(u64, u64)> {
    crate::splice::relay(&client, &upstream).await
}

#[cfg(not(target_os = "linux"))]
async fn relay_sockets(
    mut client: TcpStream,
    mut upstream: TcpStream,
) -> std::io::Result<(u64, u64)> {
    pump(&mut client, &mut upstream).await
}

fn record(result: std::io::Result<(u64, u64)>, log: &AccessLog) {
    match result {
        Ok((up, down)) => log.tunnelled(up, down),
        Err(e) => {
            log.abort();
            debug!(error = %e, "tunnel ended");
        }
    }
}

/// Copies both ways with half-close until both directions are done.
async fn pump<C, U>(client: &mut C, upstream: &mut U) -> std::io::Result<(u64, u64)>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    tokio::io::copy_bidirectional_with_sizes(client, upstream, TUNNEL_BUFFER, TUNNEL_BUFFER).await
}
