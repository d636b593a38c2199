//! A WebSocket (RFC 6455) as a byte stream, for h2 to run over. WebSocket
//! is only the carrier's envelope, so that it passes HTTP proxies and load
//! balancers; message boundaries mean nothing here. Frames are read as a
//! stream (a payload is never gathered whole, so no size limit is needed)
//! and written straight from what h2 hands over: a message-oriented
//! WebSocket library would copy every byte twice more, which is a fifth of
//! what an agent spends on a bulk transfer.
//!
//! The upgrade handshake is in [`handshake`]; this module takes over once
//! it is done, with whatever bytes were read past its end.

pub mod handshake;

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Which end: a client masks what it sends, a server expects masked frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
}

/// Bytes asked of the transport at once.
const READ_CHUNK: usize = 256 * 1024;
/// The most one frame carries: h2 writes a frame head and its payload at
/// once, at most a few hundred KiB.
const MAX_FRAME: usize = 1 << 20;
/// Buffered frames past this are written out before more are taken.
const WRITE_HIGH_WATER: usize = 512 * 1024;

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// The payload of the data frame being read.
#[derive(Debug, Default)]
struct Payload {
    left: u64,
    mask: Option<[u8; 4]>,
    /// Where in the mask the next byte is.
    offset: usize,
}

pub struct WsIo<S> {
    io: S,
    role: Role,
    /// Bytes from the transport not yet taken apart.
    read: BytesMut,
    payload: Payload,
    /// The peer closed (a close frame, or the transport ended).
    closed: bool,
    /// Whole frames waiting to go out, and how much of them went.
    write: Vec<u8>,
    written: usize,
    /// A close frame was queued.
    closing: bool,
    masks: MaskSource,
}

fn invalid(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("WebSocket: {why}"))
}

impl<S> WsIo<S> {
    /// A WebSocket over `io` after its handshake; `read_ahead` is what was
    /// read past the handshake's end.
    pub fn new(io: S, role: Role, read_ahead: &[u8]) -> Self {
        let mut read = BytesMut::with_capacity(READ_CHUNK.max(read_ahead.len()));
        read.extend_from_slice(read_ahead);
        Self {
            io,
            role,
            read,
            payload: Payload::default(),
            closed: false,
            write: Vec::new(),
            written: 0,
            closing: false,
            masks: MaskSource::new(),
        }
    }

    /// Appends one frame to the write buffer.
    fn frame(&mut self, opcode: u8, parts: &[&[u8]]) {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let mask = (self.role == Role::Client).then(|| self.masks.next());
        let out = &mut self.write;
        out.push(0x80 | opcode);
        let mask_bit = if mask.is_some() { 0x80 } else { 0 };
        match len {
            0..=125 => out.push(mask_bit | len as u8),
            126..=0xffff => {
                out.push(mask_bit | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                out.push(mask_bit | 127);
                out.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        if let Some(mask) = mask {
            out.extend_from_slice(&mask);
        }
        let start = out.len();
        for part in parts {
            out.extend_from_slice(part);
        }
        if let Some(mask) = mask {
            apply_mask(&mut out[start..], mask, 0);
        }
    }

    /// Takes the next frame head off `self.read`, if it is all there.
    /// Control frames are handled whole here; returns true when a data
    /// frame's payload is next.
    fn next_frame(&mut self) -> io::Result<Option<bool>> {
        let buf = &self.read[..];
        if buf.len() < 2 {
            return Ok(None);
        }
        let (first, second) = (buf[0], buf[1]);
        if first & 0x70 != 0 {
            return Err(invalid("reserved bits set (no extension was agreed)"));
        }
        let opcode = first & 0x0f;
        let masked = second & 0x80 != 0;
        match (self.role, masked) {
            (Role::Server, false) => return Err(invalid("an unmasked frame from a client")),
            (Role::Client, true) => return Err(invalid("a masked frame from a server")),
            _ => {}
        }
        let (len, mut at) = match second & 0x7f {
            126 if buf.len() >= 4 => (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
            127 if buf.len() >= 10 => {
                let mut eight = [0u8; 8];
                eight.copy_from_slice(&buf[2..10]);
                (u64::from_be_bytes(eight), 10)
            }
            126 | 127 => return Ok(None),
            short => (u64::from(short), 2),
        };
        let mask = if masked {
            if buf.len() < at + 4 {
                return Ok(None);
            }
            let mut key = [0u8; 4];
            key.copy_from_slice(&buf[at..at + 4]);
            at += 4;
            Some(key)
        } else {
            None
        };
        match opcode {
            OP_BINARY | OP_CONTINUATION => {
                self.read.advance(at);
                self.payload = Payload {
                    left: len,
                    mask,
                    offset: 0,
                };
                Ok(Some(true))
            }
            OP_TEXT => Err(invalid("a text frame on the carrier")),
            OP_CLOSE | OP_PING | OP_PONG => {
                if first & 0x80 == 0 || len > 125 {
                    return Err(invalid("a fragmented or oversized control frame"));
                }
                let len = len as usize;
                if buf.len() < at + len {
                    return Ok(None);
                }
                let mut body = self.read.split_to(at + len);
                body.advance(at);
                if let Some(mask) = mask {
                    apply_mask(&mut body, mask, 0);
                }
                match opcode {
                    OP_CLOSE => {
                        self.closed = true;
                        if !self.closing {
                            // Answer with the same status, as RFC 6455 §5.5.1 asks.
                            let status = body.get(..2).unwrap_or(&[0x03, 0xe8]).to_vec();
                            self.frame(OP_CLOSE, &[&status]);
                            self.closing = true;
                        }
                    }
                    OP_PING => self.frame(OP_PONG, &[&body]),
                    _ => {}
                }
                Ok(Some(false))
            }
            other => Err(invalid(&format!("unknown opcode {other}"))),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsIo<S> {
    /// Reads payload bytes from the transport into `buf`, no more than the
    /// frame holds, and unmasks them there.
    fn poll_payload(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let limit = usize::try_from(self.payload.left).unwrap_or(usize::MAX);
        let mut limited = buf.take(limit);
        ready!(Pin::new(&mut self.io).poll_read(cx, &mut limited))?;
        let n = limited.filled().len();
        if n == 0 {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the carrier ended inside a WebSocket frame",
            )));
        }
        let start = buf.filled().len();
        // SAFETY: the read above initialised these `n` bytes, which are
        // the first of `buf`'s unfilled part (`take` lends that part).
        unsafe { buf.assume_init(n) };
        buf.advance(n);
        if let Some(mask) = self.payload.mask {
            let filled = &mut buf.filled_mut()[start..];
            self.payload.offset = apply_mask(filled, mask, self.payload.offset);
        }
        self.payload.left -= n as u64;
        Poll::Ready(Ok(()))
    }

    /// Writes buffered frames out, as far as the transport takes them.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.write.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.write[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.write.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.payload.left > 0 && !this.read.is_empty() {
                let n =
                    (this.payload.left.min(this.read.len() as u64) as usize).min(buf.remaining());
                let mut chunk = this.read.split_to(n);
                if let Some(mask) = this.payload.mask {
                    this.payload.offset = apply_mask(&mut chunk, mask, this.payload.offset);
                }
                buf.put_slice(&chunk);
                this.payload.left -= n as u64;
                return Poll::Ready(Ok(()));
            }
            if this.payload.left == 0 {
                if this.closed {
                    return Poll::Ready(Ok(()));
                }
                if this.next_frame()?.is_some() {
                    // A pong or a close to answer goes out now if it can;
                    // a peer already gone is no error of the reading's.
                    if !this.write.is_empty() {
                        let _ = this.poll_drain(cx);
                    }
                    continue;
                }
            }
            if this.payload.left > 0 && buf.remaining() > 0 {
                // Inside a payload with nothing buffered: read it straight
                // into the caller's buffer (the bulk of the bytes), not
                // through ours.
                return this.poll_payload(cx, buf);
            }
            if this.read.capacity() - this.read.len() < READ_CHUNK / 4 {
                this.read.reserve(READ_CHUNK);
            }
            let n = ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut this.io),
                cx,
                &mut this.read
            ))?;
            if n == 0 {
                if this.payload.left > 0 || !this.read.is_empty() {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the carrier ended inside a WebSocket frame",
                    )));
                }
                this.closed = true;
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.closing {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the carrier is closing",
            )));
        }
        if this.write.len() - this.written >= WRITE_HIGH_WATER {
            ready!(this.poll_drain(cx))?;
        }
        // h2 writes a frame's head and its payload together: one frame.
        let mut parts: Vec<&[u8]> = Vec::with_capacity(bufs.len());
        let mut total = 0;
        for buf in bufs {
            let take = buf.len().min(MAX_FRAME - total);
            if take > 0 {
                parts.push(&buf[..take]);
                total += take;
            }
            if total == MAX_FRAME {
                break;
            }
        }
        if total == 0 {
            return Poll::Ready(Ok(0));
        }
        this.frame(OP_BINARY, &parts);
        Poll::Ready(Ok(total))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.closing {
            self.closing = true;
            // 1000: normal closure.
            self.frame(OP_CLOSE, &[&[0x03, 0xe8]]);
        }
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// XORs `data` with `mask`, starting `offset` bytes into it; returns the
/// offset after. Eight bytes at a time: this runs over every byte a client
/// sends or a server receives.
fn apply_mask(data: &mut [u8], mask: [u8; 4], offset: usize) -> usize {
    let mut rotated = [0u8; 4];
    for (i, byte) in rotated.iter_mut().enumerate() {
        *byte = mask[(offset + i) % 4];
    }
    let word = u32::from_ne_bytes(rotated);
    let wide = u64::from(word) | (u64::from(word) << 32);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut eight = [0u8; 8];
        eight.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(eight) ^ wide).to_ne_bytes());
    }
    let rest = chunks.into_remainder();
    for (i, byte) in rest.iter_mut().enumerate() {
        *byte ^= rotated[i % 4];
    }
    (offset + data.len()) % 4
}

/// Masking keys: RFC 6455 wants them unpredictable. A ChaCha-strength
/// generator is more than needed per frame; keys come from the system's
/// randomness, 64 at a time.
struct MaskSource {
    keys: [u8; 256],
    used: usize,
}

impl MaskSource {
    fn new() -> Self {
        Self {
            keys: [0; 256],
            used: 256,
        }
    }

    fn next(&mut self) -> [u8; 4] {
        if self.used == self.keys.len() {
            use ring::rand::SecureRandom;
            // Should the system refuse, the last keys are used again:
            // masking keeps frames valid whatever the key.
            let _ = ring::rand::SystemRandom::new().fill(&mut self.keys);
            self.used = 0;
        }
        let mut key = [0u8; 4];
        key.copy_from_slice(&self.keys[self.used..self.used + 4]);
        self.used += 4;
        key
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn masking_is_its_own_inverse_from_any_offset() {
        let original: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut data = original.clone();
        // In pieces, as frames arrive: the offset carries over.
        let mut offset = 0;
        for piece in data.chunks_mut(13) {
            offset = apply_mask(piece, mask, offset);
        }
        for (i, (masked, plain)) in data.iter().zip(&original).enumerate() {
            assert_eq!(*masked, plain ^ mask[i % 4]);
        }
        apply_mask(&mut data, mask, 0);
        assert_eq!(data, original);
    }

    #[tokio::test]
    async fn bytes_cross_both_ways_and_a_close_ends_them() {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let mut client = WsIo::new(a, Role::Client, &[]);
        let mut server = WsIo::new(b, Role::Server, &[]);
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let sent = big.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.flush().await.unwrap();
            let mut back = vec![0u8; 5];
            client.read_exact(&mut back).await.unwrap();
            assert_eq!(&back, b"hello");
            client.shutdown().await.unwrap();
        });
        let mut got = vec![0u8; big.len()];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(got, big);
        server.write_all(b"hello").await.unwrap();
        server.flush().await.unwrap();
        // The client's close ends the server's reading.
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn a_ping_is_answered_and_protocol_errors_end_the_reading() {
        let (raw, b) = tokio::io::duplex(4096);
        let mut server = WsIo::new(b, Role::Server, &[]);
        let (mut raw_read, mut raw_write) = tokio::io::split(raw);
        // A masked ping "hi", then a masked binary "data".
        let mask = [1, 2, 3, 4];
        let mut ping = vec![0x89, 0x82, 1, 2, 3, 4, b'h', b'i'];
        apply_mask(&mut ping[6..], mask, 0);
        let mut data = vec![0x82, 0x84, 1, 2, 3, 4, b'd', b'a', b't', b'a'];
        apply_mask(&mut data[6..], mask, 0);
        raw_write.write_all(&ping).await.unwrap();
        raw_write.write_all(&data).await.unwrap();
        let mut got = [0u8; 4];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"data");
        let mut pong = [0u8; 4];
        raw_read.read_exact(&mut pong).await.unwrap();
        assert_eq!(pong, [0x8a, 0x02, b'h', b'i']);
        // A server must not accept an unmasked frame.
        raw_write.write_all(&[0x82, 0x01, b'x']).await.unwrap();
        let err = server.read(&mut got).await.unwrap_err();
        assert!(err.to_string().contains("unmasked"), "{err}");
    }
}

/// tungstenite as the oracle: what this module writes, tungstenite reads
/// back as the same bytes, and what tungstenite writes (pings among the
/// data), this module does; with random sizes.
#[cfg(test)]
mod fuzz {
    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use proptest::prelude::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::protocol::Role as TungRole;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::WebSocketStream;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(ferryman_testkit::fuzz_cases(64)))]

        #[test]
        fn tungstenite_reads_what_we_write(sizes in proptest::collection::vec(0usize..70_000, 1..12)) {
            runtime().block_on(async {
                let (a, b) = tokio::io::duplex(1 << 16);
                let mut ours = WsIo::new(a, Role::Client, &[]);
                let sent: Vec<u8> = (0..sizes.iter().sum::<usize>()).map(|i| (i * 31 % 253) as u8).collect();
                let chunks = sizes.clone();
                let all = sent.clone();
                let writer = tokio::spawn(async move {
                    let mut at = 0;
                    for size in chunks {
                        ours.write_all(&all[at..at + size]).await.unwrap();
                        at += size;
                    }
                    ours.shutdown().await.unwrap();
                });
                let mut theirs = WebSocketStream::from_raw_socket(b, TungRole::Server, None).await;
                let mut got = Vec::new();
                while let Some(message) = theirs.next().await {
                    match message.unwrap() {
                        Message::Binary(data) => got.extend_from_slice(&data),
                        Message::Close(_) => break,
                        other => panic!("unexpected {other:?}"),
                    }
                }
                writer.await.unwrap();
                assert_eq!(got, sent);
            });
        }

        #[test]
        fn we_read_what_tungstenite_writes(sizes in proptest::collection::vec(0usize..70_000, 1..12)) {
            runtime().block_on(async {
                let (a, b) = tokio::io::duplex(1 << 16);
                let mut theirs = WebSocketStream::from_raw_socket(a, TungRole::Client, None).await;
                let sent: Vec<u8> = (0..sizes.iter().sum::<usize>()).map(|i| (i * 17 % 241) as u8).collect();
                let chunks = sizes.clone();
                let all = sent.clone();
                let writer = tokio::spawn(async move {
                    let mut at = 0;
                    for (i, size) in chunks.into_iter().enumerate() {
                        if i % 3 == 1 {
                            theirs.send(Message::Ping(vec![i as u8; 3].into())).await.unwrap();
                        }
                        let part = bytes::Bytes::copy_from_slice(&all[at..at + size]);
                        theirs.send(Message::Binary(part)).await.unwrap();
                        at += size;
                    }
                    theirs.close(None).await.unwrap();
                    // Drain until the close is answered.
                    while let Some(Ok(_)) = theirs.next().await {}
                });
                let mut ours = WsIo::new(b, Role::Server, &[]);
                let mut got = Vec::new();
                ours.read_to_end(&mut got).await.unwrap();
                ours.flush().await.unwrap();
                drop(ours);
                writer.await.unwrap();
                assert_eq!(got, sent);
            });
        }
    }
}
