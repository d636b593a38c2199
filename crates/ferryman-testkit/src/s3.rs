//! An S3 server in the test process (s3s over a directory), with a switch
//! to make it fail or hang, for capture's store path.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Empty};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use s3s::service::S3ServiceBuilder;
use tokio::net::TcpListener;

pub const ACCESS_KEY: &str = "ferryman-test";
pub const SECRET_KEY: &str = "ferryman-test-secret";
pub const BUCKET: &str = "captures";

/// How the server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    Serve,
    /// Every request gets a 500.
    Fail,
    /// Requests are read and never answered.
    Hang,
}

pub struct S3Server {
    pub addr: SocketAddr,
    pub root: tempfile::TempDir,
    mode: Arc<AtomicU8>,
}

type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

impl S3Server {
    /// Serves bucket [`BUCKET`] on 127.0.0.1, credentials [`ACCESS_KEY`] / [`SECRET_KEY`].
    pub async fn start() -> S3Server {
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(root.path().join(BUCKET)).expect("bucket directory");
        let fs = s3s_fs::FileSystem::new(root.path()).expect("s3s-fs");
        let mut builder = S3ServiceBuilder::new(fs);
        builder.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let s3 = builder.build().into_shared();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let mode = Arc::new(AtomicU8::new(Mode::Serve as u8));
        let switch = mode.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let s3 = s3.clone();
                let mode = switch.clone();
                let service = service_fn(move |req| {
                    let s3 = s3.clone();
                    let mode = mode.load(Ordering::Relaxed);
                    async move { Ok::<_, Infallible>(answer(s3, mode, req).await) }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        S3Server { addr, root, mode }
    }

    pub fn set_mode(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::Relaxed);
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Objects stored under `prefix` (a path inside the bucket).
    pub fn objects(&self, prefix: &str) -> usize {
        fn count(dir: &std::path::Path) -> usize {
            std::fs::read_dir(dir).map_or(0, |entries| {
                entries
                    .flatten()
                    .map(|e| {
                        let path = e.path();
                        if path.is_dir() {
                            count(&path)
                        } else {
                            usize::from(!path.to_string_lossy().contains(".upload"))
                        }
                    })
                    .sum()
            })
        }
        count(&self.root.path().join(BUCKET).join(prefix))
    }
}

async fn answer(
    s3: s3s::service::SharedS3Service,
    mode: u8,
    req: hyper::Request<hyper::body::Incoming>,
) -> Response<Body> {
    if mode == Mode::Hang as u8 {
        std::future::pending::<()>().await;
    }
    if mode == Mode::Fail as u8 {
        let mut response = Response::new(Empty::new().map_err(|e| match e {}).boxed());
        *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        return response;
    }
    match hyper::service::Service::call(&s3, req).await {
        Ok(response) => response.map(|b| b.map_err(Into::into).boxed()),
        Err(e) => {
            let mut response = Response::new(Empty::new().map_err(|e| match e {}).boxed());
            *response.status_mut() = e.status_code().unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            response
        }
    }
}
