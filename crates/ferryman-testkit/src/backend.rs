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
use hyper_util::rt::TokioIo;
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

/// What reached the backend.
#[derive(Default)]
pub struct Seen {
    pub connections: AtomicUsize,
    pub requests: AtomicUsize,
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
                while let Ok((stream, _)) = listener.accept().await {
                    seen.connections.fetch_add(1, Ordering::SeqCst);
                    open_tx.send_modify(|n| *n += 1);
                    let handler = handler.clone();
                    let seen = seen.clone();
                    let open_tx = open_tx.clone();
                    tokio::spawn(async move {
                        let service = service_fn(move |req| {
                            seen.requests.fetch_add(1, Ordering::SeqCst);
                            let handler = handler.clone();
                            async move { Ok::<_, Infallible>(handler(req).await) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .with_upgrades()
                            .await;
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

    pub fn connections(&self) -> usize {
        self.seen.connections.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> usize {
        self.seen.requests.load(Ordering::SeqCst)
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
