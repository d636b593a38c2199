//! What happens between the decision and the way out: serving HTTP on a
//! connection ([`connection`]), forwarding one exchange ([`forward`]), byte
//! tunnels ([`tunnel`]), finding out what a tunnel carries ([`intercept`]),
//! and the witness that records each exchange ([`witness`]).
//!
//! Detection returns what it found ([`Contents`]) and never serves it
//! itself: the inbound that opened the tunnel dispatches it, with requests
//! found inside decided again by the policy. Accepting connections,
//! authenticating and deciding where traffic goes are the inbounds' and the
//! policy's business; nothing here calls back up.

pub(crate) mod closable;
pub(crate) mod connection;
pub(crate) mod counted;
pub(crate) mod deadline;
pub(crate) mod forward;
pub(crate) mod guard;
pub(crate) mod intercept;
pub(crate) mod local;
#[cfg(target_os = "linux")]
mod splice;
pub(crate) mod tunnel;
pub(crate) mod witness;

use ferryman_capture::TlsFacts;
use ferryman_http::prefixed::Prefixed;
use ferryman_http::upstream::Conn;
use ferryman_http::{Target, UpstreamError};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

pub use intercept::Interception;

use self::connection::Protocol;
use self::counted::Counted;

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
