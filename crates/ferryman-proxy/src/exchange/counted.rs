//! Counts the bytes crossing a client socket into the session that owns it,
//! or, for a relay over an upgraded connection, into its session and taps.

use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use ferryman_capture::BodyTap;

use super::deadline::Activity;
use crate::session::SessionGuard;

/// Told about the bytes read from and written to a client.
pub(crate) trait Meter {
    fn read(&self, bytes: &[u8]);
    fn wrote(&self, bytes: &[u8]);
}

/// A client socket: its bytes are the session's, counted up the chain.
impl Meter for Arc<SessionGuard> {
    fn read(&self, bytes: &[u8]) {
        self.socket_bytes(bytes.len() as u64, 0);
    }

    fn wrote(&self, bytes: &[u8]) {
        self.socket_bytes(0, bytes.len() as u64);
    }
}

/// A tunnel's client socket: counted for the session, and each byte
/// keeps the tunnel from being idle.
pub(crate) struct TunnelMeter {
    pub(crate) session: Arc<SessionGuard>,
    pub(crate) activity: Activity,
}

impl Meter for TunnelMeter {
    fn read(&self, bytes: &[u8]) {
        self.activity.touch();
        self.session.read(bytes);
    }

    fn wrote(&self, bytes: &[u8]) {
        self.activity.touch();
        self.session.wrote(bytes);
    }
}

/// A WebSocket (or any upgraded) relay: the socket already counts for the
/// connection, so these bytes are the session's own, and its frames are
/// kept as the exchange's request and response bodies.
pub(crate) struct UpgradeMeter {
    pub(crate) session: Arc<SessionGuard>,
    pub(crate) taps: Option<[BodyTap; 2]>,
    pub(crate) activity: Activity,
}

impl Meter for UpgradeMeter {
    fn read(&self, bytes: &[u8]) {
        self.activity.touch();
        self.session.adopt_bytes(bytes.len() as u64, 0);
        if let Some([up, _]) = &self.taps {
            up.data_slice(bytes);
        }
    }

    fn wrote(&self, bytes: &[u8]) {
        self.activity.touch();
        self.session.adopt_bytes(0, bytes.len() as u64);
        if let Some([_, down]) = &self.taps {
            down.data_slice(bytes);
        }
    }
}

pub(crate) struct Counted<T, M = Arc<SessionGuard>> {
    inner: T,
    meter: M,
}

impl<T, M> Counted<T, M> {
    pub(crate) fn new(inner: T, meter: M) -> Self {
        Self { inner, meter }
    }

    pub(crate) fn into_inner(self) -> T {
        self.inner
    }

    pub(crate) fn meter(&self) -> &M {
        &self.meter
    }
}

impl<T: AsyncRead + Unpin, M: Meter + Unpin> AsyncRead for Counted<T, M> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        self.meter.read(&buf.filled()[before..]);
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin, M: Meter + Unpin> AsyncWrite for Counted<T, M> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let written = ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
        self.meter.wrote(&buf[..written]);
        Poll::Ready(Ok(written))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let written = ready!(Pin::new(&mut self.inner).poll_write_vectored(cx, bufs))?;
        let mut left = written;
        for buf in bufs {
            let n = left.min(buf.len());
            self.meter.wrote(&buf[..n]);
            left -= n;
            if left == 0 {
                break;
            }
        }
        Poll::Ready(Ok(written))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
