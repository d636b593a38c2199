//! What happens between the decision and the way out: serving HTTP on a
//! connection ([`connection`]), forwarding one exchange ([`forward`]), byte
//! tunnels ([`tunnel`]), finding out what a tunnel carries ([`intercept`]),
//! and the witness that records each exchange ([`witness`]).
//!
//! [`carry`] is the one point where a tunnel's contents are dispatched:
//! HTTP found inside is served here, every request going to the tunnel's
//! target; anything else is relayed. Detection returns what it found and
//! never serves it itself. Accepting connections, authenticating and
//! deciding where traffic goes are the inbounds' and the policy's business.

pub(crate) mod closable;
pub(crate) mod connection;
pub(crate) mod counted;
pub(crate) mod forward;
pub(crate) mod guard;
pub(crate) mod intercept;
pub(crate) mod local;
#[cfg(target_os = "linux")]
mod splice;
pub(crate) mod tunnel;
pub(crate) mod witness;

use std::sync::{Arc, Mutex};

use ferryman_capture::TlsFacts;
use ferryman_http::upstream::Conn;
use ferryman_http::{ProxyBody, Target, UpstreamError};
use http::{Request, Response};
use hyper::body::Incoming;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

pub use intercept::{InterceptConfig, InterceptMode, Interception};

use self::connection::{Protocol, Route};
use self::counted::Counted;
use self::tunnel::Prefixed;
use self::witness::Witness;
use crate::context::Worker;

/// What a tunnel turned out to carry.
pub(crate) enum Contents {
    /// HTTP, to serve here.
    Http(Inside),
    /// Opaque bytes, relayed untouched after `early`, bytes already read
    /// from the client (and counted).
    Bytes {
        client: TcpStream,
        early: bytes::Bytes,
        upstream: Conn,
    },
    /// Nothing more to carry: the client left or refused the handshake.
    Ended,
}

/// HTTP found inside a tunnel: the connection to serve it on, and where
/// every request goes.
pub(crate) struct Inside {
    pub(crate) io: InsideIo,
    pub(crate) protocol: Protocol,
    pub(crate) target: Target,
    /// What the TLS handshake said, when ferryman terminated it.
    pub(crate) tls: Option<TlsFacts>,
    /// Why the upstream connection opened for the tunnel failed: its first
    /// request is answered with that instead of failing a second time.
    pub(crate) upstream_failed: Option<UpstreamError>,
}

/// The client's side of a tunnel carrying HTTP.
pub(crate) enum InsideIo {
    Plain(Prefixed<Counted<TcpStream>>),
    Tls(Box<TlsStream<Counted<TcpStream>>>),
}

/// Carries what a tunnel turned out to contain until it ends.
pub(crate) async fn carry(worker: Arc<Worker>, contents: Contents, witness: &Witness) {
    match contents {
        Contents::Http(inside) => {
            let session = witness.session().clone();
            let route = InsideRoute {
                worker: worker.clone(),
                target: inside.target,
                upstream_failed: Mutex::new(inside.upstream_failed),
            };
            let (protocol, tls) = (inside.protocol, inside.tls);
            match inside.io {
                InsideIo::Plain(io) => {
                    connection::serve(io, protocol, worker, session, tls, route).await
                }
                InsideIo::Tls(io) => {
                    connection::serve(*io, protocol, worker, session, tls, route).await
                }
            }
        }
        Contents::Bytes {
            client,
            early,
            upstream,
        } => {
            let relayed = tunnel::relay_bytes(client, upstream, &early, witness.session()).await;
            tunnel::record(relayed, witness);
        }
        Contents::Ended => {}
    }
}

/// Requests inside a tunnel: authenticated at CONNECT, each goes to the
/// tunnel's target.
struct InsideRoute {
    worker: Arc<Worker>,
    target: Target,
    upstream_failed: Mutex<Option<UpstreamError>>,
}

impl Route for InsideRoute {
    fn target<'a>(&'a self, req: &'a Request<Incoming>) -> (String, Option<&'a str>) {
        (
            forward::absolute(&self.target, req.uri()),
            Some(self.target.authority.host()),
        )
    }

    async fn route(&self, req: Request<Incoming>, witness: &Arc<Witness>) -> Response<ProxyBody> {
        let failed = self
            .upstream_failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(e) = failed {
            witness.fail(&e);
            return local::text(e.status(), e);
        }
        let client = witness.session().client().ip();
        forward::exchange(&self.worker, client, req, self.target.clone(), witness).await
    }
}
