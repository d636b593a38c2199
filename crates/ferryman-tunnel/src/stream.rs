//! One h2 stream as a byte stream, on either end of a carrier. Writes wait
//! for the peer's window (so a reader that stalls holds back only its own
//! stream), shutting down the write side ends the stream one way
//! (END_STREAM: half-close, the other way still flows), and a stream
//! dropped before both ways ended is reset, which the other end reads as a
//! reset connection.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use h2::{Reason, RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// The most asked of the peer's window at once; a write of more is split.
const MAX_WRITE: usize = 256 * 1024;

pub struct H2Stream {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// Data received and not yet read; its window is given back as it is.
    reading: Bytes,
    /// The write side ended (END_STREAM sent).
    finished: bool,
}

impl H2Stream {
    pub fn new(send: SendStream<Bytes>, recv: RecvStream) -> Self {
        Self {
            send,
            recv,
            reading: Bytes::new(),
            finished: false,
        }
    }

    /// Relays the stream with a TCP connection (see [`relay_tcp`]); what
    /// was already read from it goes to the socket first.
    pub(crate) async fn relay_tcp(
        self,
        mut tcp: TcpStream,
        count: &(dyn Fn(u64, u64) + Sync),
    ) -> io::Result<()> {
        if !self.reading.is_empty() {
            tcp.write_all(&self.reading).await?;
            count(0, self.reading.len() as u64);
        }
        relay_tcp(self.send, self.recv, tcp, count).await
    }
}

/// What the other end reads when a stream or its carrier fails.
fn io_error(e: h2::Error) -> io::Error {
    if e.is_io() {
        return e
            .into_io()
            .unwrap_or_else(|| io::Error::from(io::ErrorKind::ConnectionReset));
    }
    let kind = match e.reason() {
        Some(Reason::NO_ERROR | Reason::CANCEL) => io::ErrorKind::ConnectionReset,
        Some(Reason::REFUSED_STREAM) => io::ErrorKind::ConnectionRefused,
        _ => io::ErrorKind::ConnectionAborted,
    };
    io::Error::new(kind, e)
}

impl AsyncRead for H2Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.reading.is_empty() {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => this.reading = data,
                Some(Err(e)) => return Poll::Ready(Err(io_error(e))),
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = this.reading.len().min(buf.remaining());
        buf.put_slice(&this.reading[..n]);
        this.reading.advance(n);
        // The peer may send as much again as was read.
        let _ = this.recv.flow_control().release_capacity(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let this = &mut *self;
        this.send.reserve_capacity(buf.len().min(MAX_WRITE));
        loop {
            match ready!(this.send.poll_capacity(cx)) {
                Some(Ok(0)) => continue,
                Some(Ok(granted)) => {
                    let n = granted.min(buf.len());
                    this.send
                        .send_data(Bytes::copy_from_slice(&buf[..n]), false)
                        .map_err(io_error)?;
                    return Poll::Ready(Ok(n));
                }
                Some(Err(e)) => return Poll::Ready(Err(io_error(e))),
                None => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "the stream was closed",
                    )))
                }
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // h2 sends what it was given as soon as its connection task runs.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.finished {
            self.finished = true;
            self.send.send_data(Bytes::new(), true).map_err(io_error)?;
        }
        Poll::Ready(Ok(()))
    }
}

/// Relays a stream and a TCP connection both ways, with half-close, until
/// both directions end. Bytes read from the socket go to h2 as they are
/// and h2's frames go to the socket as they come: nothing passes through
/// a buffer of its own. `count` hears of bytes from the socket (first)
/// and to it. On failure the stream is reset and the socket closed with a
/// reset, so neither end takes it for an end.
pub(crate) async fn relay_tcp(
    mut send: SendStream<Bytes>,
    mut recv: RecvStream,
    tcp: TcpStream,
    count: &(dyn Fn(u64, u64) + Sync),
) -> io::Result<()> {
    let (mut from_socket, mut to_socket) = tcp.into_split();
    let up = async {
        let mut buf = BytesMut::new();
        loop {
            buf.reserve(MAX_WRITE);
            if from_socket.read_buf(&mut buf).await? == 0 {
                return send.send_data(Bytes::new(), true).map_err(io_error);
            }
            let mut data = buf.split().freeze();
            count(data.len() as u64, 0);
            while !data.is_empty() {
                send.reserve_capacity(data.len());
                let granted = std::future::poll_fn(|cx| send.poll_capacity(cx))
                    .await
                    .ok_or_else(|| {
                        io::Error::new(io::ErrorKind::BrokenPipe, "the stream was closed")
                    })?
                    .map_err(io_error)?;
                let n = granted.min(data.len());
                send.send_data(data.split_to(n), false).map_err(io_error)?;
            }
        }
    };
    let down = async {
        while let Some(data) = recv.data().await {
            let data = data.map_err(io_error)?;
            to_socket.write_all(&data).await?;
            count(0, data.len() as u64);
            let _ = recv.flow_control().release_capacity(data.len());
        }
        to_socket.shutdown().await
    };
    let relayed = tokio::try_join!(up, down).map(|_| ());
    if relayed.is_err() {
        send.send_reset(Reason::CANCEL);
        if let Ok(tcp) = from_socket.reunite(to_socket) {
            let _ = socket2::SockRef::from(&tcp).set_linger(Some(std::time::Duration::ZERO));
        }
    }
    relayed
}
