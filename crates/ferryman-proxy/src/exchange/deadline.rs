//! Deadlines on a client connection once its request head is in (the head
//! itself is hyper's `header_read_timeout`): a write the client leaves
//! pending too long ([`SendDeadline`]), and a tunnel in which nothing moves
//! either way ([`Activity`]). A deadline that passes fails the I/O with
//! `TimedOut`; whoever owns the connection then closes it.

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// A client connection whose writes may not stall: a write the client
/// does not make room for within `limit` fails, so a client that stops
/// reading a download cannot hold the exchange (and its upstream
/// connection) for ever.
pub(crate) struct SendDeadline<T> {
    inner: T,
    limit: Duration,
    /// Set while a write waits for the client.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<T> SendDeadline<T> {
    pub(crate) fn new(inner: T, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            stalled: None,
        }
    }

    pub(crate) fn into_inner(self) -> T {
        self.inner
    }

    /// What a write that returned `polled` means once the deadline is
    /// taken into account.
    fn check<R>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        if polled.is_ready() {
            self.stalled = None;
            return polled;
        }
        let limit = self.limit;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        if timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the client took nothing for {limit:?}"),
            )));
        }
        Poll::Pending
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for SendDeadline<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for SendDeadline<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.check(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.check(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.check(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// When a tunnel last moved a byte, either way.
#[derive(Clone)]
pub(crate) struct Activity {
    start: Instant,
    /// Milliseconds after `start`.
    last: Arc<AtomicU64>,
}

impl Activity {
    pub(crate) fn new() -> Self {
        Self {
            start: Instant::now(),
            last: Arc::default(),
        }
    }

    pub(crate) fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last.store(ms, Ordering::Relaxed);
    }

    /// Resolves once nothing has moved for `limit`.
    pub(crate) async fn idle_for(&self, limit: Duration) {
        loop {
            let last = self.last.load(Ordering::Relaxed);
            tokio::time::sleep_until(self.start + Duration::from_millis(last) + limit).await;
            if self.last.load(Ordering::Relaxed) == last {
                return;
            }
        }
    }

    /// Runs `relay` until it ends, or until nothing has moved for `limit`.
    pub(crate) async fn bounded(
        &self,
        limit: Duration,
        relay: impl Future<Output = io::Result<()>>,
    ) -> io::Result<()> {
        tokio::select! {
            result = relay => result,
            () = self.idle_for(limit) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the tunnel was idle for {limit:?}"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_write_the_peer_never_takes_fails_at_the_deadline() {
        let (client, server) = tokio::io::duplex(16);
        let mut server = SendDeadline::new(server, Duration::from_secs(3));
        let started = Instant::now();
        // The peer never reads: the buffer fills and the write stalls.
        let written = server.write_all(&[0u8; 64]).await;
        assert_eq!(written.unwrap_err().kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(3));
        drop(client);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_but_moving_reader_is_never_cut_off() {
        let (mut client, server) = tokio::io::duplex(16);
        let mut server = SendDeadline::new(server, Duration::from_secs(3));
        let reader = tokio::spawn(async move {
            let mut got = 0;
            let mut chunk = [0u8; 8];
            while got < 256 {
                tokio::time::sleep(Duration::from_secs(2)).await;
                got += client.read(&mut chunk).await.unwrap();
            }
        });
        server.write_all(&[0u8; 256]).await.unwrap();
        reader.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_tunnel_ends_and_a_busy_one_does_not() {
        let activity = Activity::new();
        let started = Instant::now();
        let ended = activity
            .bounded(Duration::from_secs(5), std::future::pending())
            .await;
        assert_eq!(ended.unwrap_err().kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(5));

        let activity = Activity::new();
        let busy = activity.clone();
        let relay = async move {
            for _ in 0..20 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                busy.touch();
            }
            Ok(())
        };
        assert!(activity
            .bounded(Duration::from_secs(5), relay)
            .await
            .is_ok());
    }
}
