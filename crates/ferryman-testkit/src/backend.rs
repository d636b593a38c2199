//! An origin server built on hyper, with a handler per test and counters for
//! what reached it.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type TestBody = UnsyncBoxBody<Bytes, BoxError>;

pub fn full(bytes: impl Into<Bytes>) -> TestBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty() -> TestBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A body fed by the test through a channel, frame by frame; an `Err` item
/// aborts the body, dropping the sender ends it.
pub fn channel_body() -> (tokio::sync::mpsc::Sender<Result<Bytes, BoxError>>, TestBody) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    (tx, ChannelBody(rx).boxed_unsync())
}

struct ChannelBody(tokio::sync::mpsc::Receiver<Result<Bytes, BoxError>>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        self.0
            .poll_recv(cx)
            .map(|item| item.map(|r| r.map(http_body::Frame::data)))
    }
}

/// The event senders of an [`event_stream`] backend, one per request.
pub type EventFeeds =
    tokio::sync::mpsc::UnboundedReceiver<tokio::sync::mpsc::Sender<Result<Bytes, BoxError>>>;

/// A handler answering every request with a `text/event-stream` the test
/// writes to, through the sender it receives from the returned feeds.
pub fn event_stream() -> (
    impl Fn(Request<Incoming>) -> std::future::Ready<Response<TestBody>> + Send + Sync + 'static,
    EventFeeds,
) {
    let (feed_tx, feeds) = tokio::sync::mpsc::unbounded_channel();
    let handler = move |_| {
        let (events, body) = channel_body();
        let _ = feed_tx.send(events);
        let response = Response::builder()
            .header("content-type", "text/event-stream")
            .body(body)
            .unwrap_or_else(|_| Response::new(empty()));
        std::future::ready(response)
    };
    (handler, feeds)
}

/// Where a request's connection came from, in the request's extensions.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

/// What reached the backend.
#[derive(Default)]
pub struct Seen {
    pub connections: AtomicUsize,
    pub requests: AtomicUsize,
    pub tls_handshakes: AtomicUsize,
}

pub struct Backend {
    pub addr: SocketAddr,
    pub seen: Arc<Seen>,
    open: watch::Receiver<usize>,
    task: JoinHandle<()>,
}

impl Backend {
    /// Serves HTTP/1.1 (with upgrades) on 127.0.0.1, one handler call per request.
    pub async fn start<F, Fut>(handler: F) -> Backend
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<TestBody>> + Send + 'static,
    {
        Self::start_with(None, handler).await
    }

    /// The same over TLS with the given server config; HTTP/2 when ALPN
    /// chooses it.
    pub async fn start_tls<F, Fut>(tls: Arc<rustls::ServerConfig>, handler: F) -> Backend
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<TestBody>> + Send + 'static,
    {
        Self::start_with(Some(tokio_rustls::TlsAcceptor::from(tls)), handler).await
    }

    async fn start_with<F, Fut>(tls: Option<tokio_rustls::TlsAcceptor>, handler: F) -> Backend
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<TestBody>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let addr = listener.local_addr().expect("backend addr");
        let seen = Arc::new(Seen::default());
        let (open_tx, open) = watch::channel(0usize);
        let open_tx = Arc::new(open_tx);
        let handler = Arc::new(handler);
        let task = {
            let seen = seen.clone();
            tokio::spawn(async move {
                while let Ok((stream, peer)) = listener.accept().await {
                    seen.connections.fetch_add(1, Ordering::SeqCst);
                    open_tx.send_modify(|n| *n += 1);
                    let handler = handler.clone();
                    let seen = seen.clone();
                    let open_tx = open_tx.clone();
                    let tls = tls.clone();
                    tokio::spawn(async move {
                        let counted = seen.clone();
                        let service = service_fn(move |mut req: Request<Incoming>| {
                            req.extensions_mut().insert(ClientAddr(peer));
                            counted.requests.fetch_add(1, Ordering::SeqCst);
                            let handler = handler.clone();
                            async move { Ok::<_, Infallible>(handler(req).await) }
                        });
                        let http = hyper::server::conn::http1::Builder::new();
                        match tls {
                            None => {
                                let _ = http
                                    .serve_connection(TokioIo::new(stream), service)
                                    .with_upgrades()
                                    .await;
                            }
                            Some(acceptor) => {
                                let Ok(stream) = acceptor.accept(stream).await else {
                                    open_tx.send_modify(|n| *n -= 1);
                                    return;
                                };
                                seen.tls_handshakes.fetch_add(1, Ordering::SeqCst);
                                if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                                    let _ = hyper::server::conn::http2::Builder::new(
                                        TokioExecutor::new(),
                                    )
                                    .serve_connection(TokioIo::new(stream), service)
                                    .await;
                                } else {
                                    let _ = http
                                        .serve_connection(TokioIo::new(stream), service)
                                        .with_upgrades()
                                        .await;
                                }
                            }
                        }
                        open_tx.send_modify(|n| *n -= 1);
                    });
                }
            })
        };
        Backend {
            addr,
            seen,
            open,
            task,
        }
    }

    /// A backend that holds every request until the test adds a permit to
    /// the returned semaphore, then answers `body`.
    pub async fn held(body: &'static str) -> (Backend, Arc<tokio::sync::Semaphore>) {
        let release = Arc::new(tokio::sync::Semaphore::new(0));
        let gate = release.clone();
        let backend = Backend::start(move |_| {
            let gate = gate.clone();
            async move {
                if let Ok(permit) = gate.acquire().await {
                    permit.forget();
                }
                Response::new(full(body))
            }
        })
        .await;
        (backend, release)
    }

    pub fn connections(&self) -> usize {
        self.seen.connections.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> usize {
        self.seen.requests.load(Ordering::SeqCst)
    }

    /// TLS handshakes completed, for a TLS backend.
    pub fn tls_handshakes(&self) -> usize {
        self.seen.tls_handshakes.load(Ordering::SeqCst)
    }

    pub fn open_connections(&self) -> usize {
        *self.open.borrow()
    }

    /// Resolves once the number of open connections satisfies `pred`.
    pub async fn wait_open(&self, pred: impl Fn(usize) -> bool) {
        let mut open = self.open.clone();
        let _ = open.wait_for(|n| pred(*n)).await;
    }

    /// `http://127.0.0.1:port{path}`
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A server that hands each accepted TCP connection, numbered from 0, to
/// the test: for upstreams that misbehave in ways hyper would not.
pub struct RawBackend {
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl RawBackend {
    pub async fn start<F, Fut>(per_connection: F) -> RawBackend
    where
        F: Fn(crate::raw::Raw, usize) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind raw backend");
        let addr = listener.local_addr().expect("raw backend addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let task = {
            let accepted = accepted.clone();
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let n = accepted.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(per_connection(crate::raw::Raw::from(stream), n));
                }
            })
        };
        RawBackend {
            addr,
            accepted,
            task,
        }
    }

    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A WebSocket echo server as a backend handler: answers the upgrade, then
/// echoes text messages.
pub async fn websocket_echo(mut req: Request<Incoming>) -> Response<TestBody> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
    use tokio_tungstenite::tungstenite::protocol::Role;

    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return Response::new(full("not a websocket request"));
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            None,
        )
        .await;
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_text() && ws.send(msg).await.is_err() {
                break;
            }
        }
    });
    Response::builder()
        .status(http::StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-accept", derive_accept_key(key.as_bytes()))
        .body(empty())
        .unwrap_or_else(|_| Response::new(empty()))
}
