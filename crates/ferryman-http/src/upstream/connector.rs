//! The one seam between the upstream client and the ways out: a connector
//! gives a byte stream to a destination by a deadline (Pingora's `Connect`).
//! Direct, an upstream HTTP or SOCKS5 proxy and an agent group are
//! connectors; this module knows none of them. The pool keys connections by
//! the connector too, so two ways out never share a connection.

use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::HeaderValue;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::UpstreamError;

/// A boxed future of a connection attempt.
pub type Connecting<'a> = Pin<Box<dyn Future<Output = Result<Conn, UpstreamError>> + Send + 'a>>;

/// A way out, shared by every exchange that takes it.
pub type Connector = Arc<dyn Connect>;

/// Gives byte streams to destinations.
pub trait Connect: Send + Sync + 'static {
    /// What records and the connection table call this way out.
    fn name(&self) -> &str;

    /// Connections opened by connectors with different keys are never
    /// pooled together; a connector whose settings differ gets another key.
    fn pool_key(&self) -> u64;

    /// A stream to `host:port`, `host` being a name or an address literal
    /// (IPv6 in brackets or not), open before `deadline`.
    fn connect<'a>(&'a self, host: &'a str, port: u16, deadline: Instant) -> Connecting<'a>;

    /// An HTTP proxy that takes plain `http://` requests in absolute form,
    /// so one pool of connections to it serves every host.
    fn forwards_plain_http(&self) -> Option<&dyn ForwardingProxy> {
        None
    }

    /// Who carries `conn` beyond this way out (the agent a group chose), for
    /// the connection table.
    fn carried_by(&self, _conn: &Conn) -> Option<Arc<str>> {
        None
    }
}

/// An HTTP proxy that forwards absolute-form requests itself.
pub trait ForwardingProxy: Send + Sync {
    /// A connection to the proxy itself.
    fn connect_to_proxy(&self, deadline: Instant) -> Connecting<'_>;

    /// The `Proxy-Authorization` every request to it carries.
    fn authorization(&self) -> Option<&HeaderValue>;
}

/// Any byte stream a connector can give.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + std::any::Any {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// A connection to a destination: a plain TCP socket (which tunnels can
/// splice in the kernel) or any other stream (TLS to a proxy, an agent's
/// multiplexed stream).
pub enum Conn {
    Tcp(TcpStream),
    Other(Box<dyn Io>),
}

impl Conn {
    /// The stream a connector gave, if it is a `T`.
    pub fn downcast_ref<T: 'static>(&self) -> Option<&T> {
        match self {
            Conn::Other(io) => (&**io as &dyn std::any::Any).downcast_ref(),
            Conn::Tcp(_) => None,
        }
    }
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Conn::Tcp(tcp) => f.debug_tuple("Tcp").field(tcp).finish(),
            Conn::Other(_) => f.write_str("Other"),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Other(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Other(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Other(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Tcp(s) => s.is_write_vectored(),
            Conn::Other(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_flush(cx),
            Conn::Other(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Other(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
