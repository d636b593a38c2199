//! Byte tunnels: CONNECT, and connections that switched protocols (101).

use std::sync::Arc;

use ferryman_http::body;
use ferryman_http::upstream::Conn;
use ferryman_http::{ProxyBody, Target};
use http::header::{HeaderValue, CONNECTION};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::debug;

use super::counted::{Counted, UpgradeMeter};
use super::guard::FramingGuard;
use super::witness::Witness;
use super::{carry, intercept, local, Contents};
use crate::context::{Shared, Worker};
use crate::session::{Kind, SessionGuard};

/// Per-direction copy buffer: large enough for bulk transfers to run at
/// memory speed, small enough not to matter per tunnel.
const TUNNEL_BUFFER: usize = 64 * 1024;

/// The IO type hyper serves client connections on; a tunnel unwraps it to
/// copy straight between sockets.
pub(crate) type ClientIo = TokioIo<FramingGuard<Counted<TcpStream>>>;

/// Answers CONNECT only once the upstream TCP connection is up, then splices.
pub(crate) async fn connect(
    worker: &Arc<Worker>,
    req: Request<Incoming>,
    witness: &Arc<Witness>,
) -> Response<ProxyBody> {
    let Some((authority, host, port)) = req
        .uri()
        .authority()
        .and_then(|a| Some((a.clone(), a.host().to_string(), a.port_u16()?)))
    else {
        return refuse(local::text(
            StatusCode::BAD_REQUEST,
            "CONNECT needs a host:port target",
        ));
    };
    let connector = &worker.shared.direct;
    let upstream = match worker.upstream.connect(connector, &host, port).await {
        Ok(stream) => stream,
        Err(e) => {
            debug!(error = %e, %host, port, "CONNECT failed");
            witness.fail(&e);
            return refuse(local::text(e.status(), e));
        }
    };
    let on_client = hyper::upgrade::on(req);
    let witness = witness.clone();
    witness.set_kind(Kind::Tunnel);
    let tunnel_worker = worker.clone();
    spawn_until_stopped(&worker.shared, witness.clone(), async move {
        match on_client.await {
            Ok(upgraded) => {
                let target = Target::http(authority, tunnel_worker.shared.direct.clone());
                tunnel(tunnel_worker, upgraded, upstream, target, witness).await
            }
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
    shared: &Shared,
    on_client: OnUpgrade,
    on_upstream: OnUpgrade,
    witness: Arc<Witness>,
) {
    witness.set_kind(Kind::Websocket);
    spawn_until_stopped(shared, witness.clone(), async move {
        match tokio::try_join!(on_client, on_upstream) {
            Ok((client, upstream)) => {
                let meter = UpgradeMeter {
                    session: witness.session().clone(),
                    taps: witness.stream_taps(),
                };
                let mut client = Counted::new(TokioIo::new(client), meter);
                let copied = pump(&mut client, &mut TokioIo::new(upstream)).await;
                if let Some(taps) = &client.meter().taps {
                    taps.iter().for_each(|tap| tap.end(copied.is_ok()));
                }
                record(copied.map(|_| ()), &witness);
            }
            Err(e) => debug!(error = %e, "upgrade did not complete"),
        }
    });
}

/// Runs a tunnel as a tracked task that ends, marked aborted, when the
/// shutdown grace period is over or its session is closed.
fn spawn_until_stopped(
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

/// A CONNECT tunnel: intercepted when the rules say so, else relayed; when
/// the client connection is a plain socket, bytes move socket to socket
/// inside the kernel (Linux), else through a copy loop.
async fn tunnel(
    worker: Arc<Worker>,
    upgraded: Upgraded,
    mut upstream: Conn,
    target: Target,
    witness: Arc<Witness>,
) {
    let session = witness.session().clone();
    match upgraded.downcast::<ClientIo>() {
        Ok(parts) => {
            let socket = parts.io.into_inner().into_inner().into_inner();
            // Bytes the client sent right behind its request head belong to
            // the tunnel; the connection counted them when they were read.
            let early = parts.read_buf;
            session.adopt_bytes(early.len() as u64, 0);
            let contents = match &worker.shared.interception {
                Some(interception) if interception.intercepts(target.authority.host()) => {
                    let tunnel = (socket, early, upstream, target);
                    intercept::detect(&worker, interception, tunnel, &witness).await
                }
                _ => Contents::Bytes {
                    client: socket,
                    early,
                    upstream,
                },
            };
            carry(worker, contents, &witness).await
        }
        Err(upgraded) => {
            // Not a plain socket (a tunnel inside a tunnel): its bytes are
            // counted where that socket is.
            let meter = UpgradeMeter {
                session,
                taps: None,
            };
            let mut client = Counted::new(TokioIo::new(upgraded), meter);
            record(pump(&mut client, &mut upstream).await.map(|_| ()), &witness)
        }
    }
}

/// Relays `early` (bytes already read from the client and counted) and
/// then everything else, counting it.
pub(crate) async fn relay_bytes(
    socket: TcpStream,
    mut upstream: Conn,
    early: &[u8],
    session: &Arc<SessionGuard>,
) -> std::io::Result<()> {
    upstream.write_all(early).await?;
    match upstream {
        #[cfg(target_os = "linux")]
        Conn::Tcp(upstream) => super::splice::relay(&socket, &upstream, session).await,
        mut upstream => {
            let mut client = Counted::new(socket, session.clone());
            pump(&mut client, &mut upstream).await.map(|_| ())
        }
    }
}

/// How a plain tunnel ended.
pub(crate) fn record(result: std::io::Result<()>, witness: &Witness) {
    if let Err(e) = result {
        witness.abort();
        debug!(error = %e, "tunnel ended");
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

/// A stream that first yields bytes already read from it.
pub(crate) struct Prefixed<T> {
    prefix: bytes::Bytes,
    inner: T,
}

impl<T> Prefixed<T> {
    pub(crate) fn new(prefix: bytes::Bytes, inner: T) -> Self {
        Self { prefix, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.prefix.is_empty() {
            return std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let n = self.prefix.len().min(buf.remaining());
        let head = self.prefix.split_to(n);
        buf.put_slice(&head);
        std::task::Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
