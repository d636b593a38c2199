//! Rejects request-smuggling framing before hyper parses it.
//!
//! hyper accepts a request carrying both `Content-Length` and
//! `Transfer-Encoding` (it drops the length, as RFC 9112 §6.3 allows a
//! server to). A proxy must not forward such a request at all, so this
//! wrapper follows the framing of every request on the connection and, on a
//! head with both fields, corrupts that head with a NUL byte: hyper then
//! answers 400 and closes, and nothing reaches the upstream.
//!
//! It fails closed: framing it cannot follow (a head httparse refuses, a
//! chunk size it cannot read) is corrupted the same way at the first byte
//! it cannot follow, so it never stops watching a connection that goes on.
//! It stops only where the connection cannot go on as HTTP: after a CONNECT
//! or an upgrade request (a refusal of those closes the connection), and
//! after a head too large for hyper, which answers 431 and closes.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The smallest head hyper refuses with 400: a NUL is invalid everywhere in
/// a head, and the blank line completes whatever came before it.
const POISON: &[u8] = b"\0\r\n\r\n";

pub(crate) struct FramingGuard<T> {
    inner: T,
    scanner: Scanner,
}

/// Bytes a head may exceed hyper's limit by before the scanner leaves it
/// to hyper: past it, hyper has certainly refused it.
const HEAD_SLACK: usize = 4096;

impl<T> FramingGuard<T> {
    /// `max_head` and `max_headers` are hyper's limits for the connection.
    pub(crate) fn new(inner: T, max_head: usize, max_headers: usize) -> Self {
        Self {
            inner,
            scanner: Scanner::new(max_head + HEAD_SLACK, max_headers),
        }
    }

    pub(crate) fn into_inner(self) -> T {
        self.inner
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for FramingGuard<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if matches!(self.scanner.state, State::Rejected) {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let this = &mut *self;
        std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if let Verdict::Reject { at } = this.scanner.feed(&buf.filled()[before..]) {
            // Requests ahead of the bad head in this read still get served.
            buf.set_filled(before + at);
            let room = buf.remaining().min(POISON.len());
            buf.put_slice(&POISON[..room]);
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for FramingGuard<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Pass,
    /// The head starting `at` bytes into this read (0 if it started in an
    /// earlier read) must not be parsed.
    Reject {
        at: usize,
    },
}

#[derive(Debug)]
enum State {
    /// Collecting a request head; holds a partial head across reads.
    Head(Vec<u8>),
    /// This many bytes of a Content-Length body are still to come.
    Fixed(u64),
    Chunked(Chunk),
    /// After a CONNECT or an upgrade request: the connection turns into a
    /// tunnel, or its refusal closes it.
    Tunnel,
    /// A head longer than hyper takes: hyper answers 431 and closes.
    Oversized,
    Rejected,
}

/// Where in chunked framing the scanner is, state for state as hyper's
/// decoder reads it (CRLF strictly, no bare LF), so the two never disagree
/// about where a body ends.
#[derive(Debug, Clone, Copy)]
enum Chunk {
    /// Before a chunk size's first digit.
    Start,
    /// In the size's digits.
    Size(u64),
    /// Spaces or tabs after the size.
    SizeSpace(u64),
    /// A chunk extension, up to the CR.
    Extension(u64),
    /// The LF that ends the size line.
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    /// After the last chunk: a trailer line or the final CRLF.
    EndCr,
    Trailer,
    TrailerLf,
    EndLf,
}

struct Scanner {
    state: State,
    max_head: usize,
    max_headers: usize,
}

impl Scanner {
    fn new(max_head: usize, max_headers: usize) -> Self {
        Self {
            state: State::Head(Vec::new()),
            max_head,
            max_headers,
        }
    }

    fn feed(&mut self, read: &[u8]) -> Verdict {
        let mut data = read;
        while !data.is_empty() {
            data = match &mut self.state {
                State::Tunnel | State::Oversized | State::Rejected => return Verdict::Pass,
                State::Fixed(left) => {
                    let take = (*left).min(data.len() as u64) as usize;
                    *left -= take as u64;
                    if *left == 0 {
                        self.state = State::Head(Vec::new());
                    }
                    &data[take..]
                }
                State::Chunked(chunk) => match step_chunked(chunk, data) {
                    Ok((rest, done)) => {
                        if done {
                            self.state = State::Head(Vec::new());
                        }
                        rest
                    }
                    Err(bad) => {
                        // Corrupted at the byte it cannot follow: hyper,
                        // decoding the same body, fails there too.
                        self.state = State::Rejected;
                        return Verdict::Reject {
                            at: read.len() - data.len() + bad,
                        };
                    }
                },
                State::Head(partial) => {
                    let (head, from_partial) = if partial.is_empty() {
                        (data, 0)
                    } else {
                        let had = partial.len();
                        partial.extend_from_slice(data);
                        (&partial[..], had)
                    };
                    match inspect_head(head, self.max_headers) {
                        Head::Partial => {
                            if from_partial == 0 {
                                partial.extend_from_slice(data);
                            }
                            if partial.len() > self.max_head {
                                self.state = State::Oversized;
                            }
                            return Verdict::Pass;
                        }
                        Head::TooLarge => {
                            self.state = State::Oversized;
                            return Verdict::Pass;
                        }
                        Head::Ambiguous | Head::Unfollowable => {
                            let at = if from_partial == 0 {
                                read.len() - data.len()
                            } else {
                                0
                            };
                            self.state = State::Rejected;
                            return Verdict::Reject { at };
                        }
                        Head::Complete { len, next } => {
                            let consumed = len - from_partial;
                            self.state = next;
                            &data[consumed..]
                        }
                    }
                }
            };
        }
        Verdict::Pass
    }
}

enum Head {
    Partial,
    Ambiguous,
    Unfollowable,
    TooLarge,
    Complete { len: usize, next: State },
}

/// Heads with up to this many fields are parsed without a heap allocation.
const STACK_HEADERS: usize = 128;

/// Reads a head with room for `max_headers` fields: on the stack for the
/// usual few, on the heap only for a head that has more.
fn inspect_head(bytes: &[u8], max_headers: usize) -> Head {
    let mut on_stack = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; STACK_HEADERS];
    let room = max_headers.min(STACK_HEADERS);
    match inspect_with(bytes, &mut on_stack[..room]) {
        Head::TooLarge if max_headers > STACK_HEADERS => {
            let mut on_heap = Vec::new();
            on_heap.resize_with(max_headers, MaybeUninit::uninit);
            inspect_with(bytes, &mut on_heap)
        }
        head => head,
    }
}

fn inspect_with<'h>(bytes: &'h [u8], headers: &mut [MaybeUninit<httparse::Header<'h>>]) -> Head {
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(bytes, headers) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Head::Partial,
        // More fields than hyper takes: hyper answers 431 and closes.
        Err(httparse::Error::TooManyHeaders) => return Head::TooLarge,
        Err(_) => return Head::Unfollowable,
    };
    let mut chunked = None;
    let mut length: Option<u64> = None;
    let mut upgrade = false;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            let last = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.rsplit(',').next())
                .map(str::trim);
            chunked = Some(last.is_some_and(|t| t.eq_ignore_ascii_case("chunked")));
        } else if h.name.eq_ignore_ascii_case("content-length") {
            let Some(n) = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
            else {
                return Head::Unfollowable;
            };
            if length.is_some_and(|prev| prev != n) {
                return Head::Unfollowable;
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("upgrade") {
            upgrade = true;
        }
    }
    let next = match (chunked, length) {
        (Some(_), Some(_)) => return Head::Ambiguous,
        (Some(false), None) => return Head::Unfollowable,
        // What follows may be a tunnel's bytes: hyper takes the connection
        // over, or closes it once the request is refused.
        _ if upgrade || req.method == Some("CONNECT") => State::Tunnel,
        (Some(true), None) => State::Chunked(Chunk::Start),
        (None, Some(n)) if n > 0 => State::Fixed(n),
        _ => State::Head(Vec::new()),
    };
    Head::Complete { len, next }
}

/// Advances through chunked framing. Returns the bytes after the body when it
/// ends (`true`), or, for framing it cannot follow (which hyper refuses
/// too), the offset of the first byte it cannot follow.
fn step_chunked<'a>(chunk: &mut Chunk, data: &'a [u8]) -> Result<(&'a [u8], bool), usize> {
    let whole = data.len();
    let mut data = data;
    while let Some(&byte) = data.first() {
        if let Chunk::Data(left) = chunk {
            let take = (*left).min(data.len() as u64) as usize;
            *left -= take as u64;
            if *left == 0 {
                *chunk = Chunk::DataCr;
            }
            data = &data[take..];
            continue;
        }
        let here = whole - data.len();
        data = &data[1..];
        let digit = (byte as char).to_digit(16).map(u64::from);
        *chunk = match (*chunk, byte) {
            (Chunk::Start, _) => match digit {
                Some(d) => Chunk::Size(d),
                None => return Err(here),
            },
            (Chunk::Size(value), _) if digit.is_some() => {
                let grown = value
                    .checked_mul(16)
                    .zip(digit)
                    .and_then(|(v, d)| v.checked_add(d));
                Chunk::Size(grown.ok_or(here)?)
            }
            (Chunk::Size(value) | Chunk::SizeSpace(value), b' ' | b'\t') => Chunk::SizeSpace(value),
            (Chunk::Size(value) | Chunk::SizeSpace(value), b';') => Chunk::Extension(value),
            (Chunk::Size(value) | Chunk::SizeSpace(value) | Chunk::Extension(value), b'\r') => {
                Chunk::SizeLf(value)
            }
            (Chunk::Extension(_), b'\n') => return Err(here),
            (keep @ Chunk::Extension(_), _) => keep,
            (Chunk::SizeLf(0), b'\n') => Chunk::EndCr,
            (Chunk::SizeLf(value), b'\n') => Chunk::Data(value),
            (Chunk::DataCr, b'\r') => Chunk::DataLf,
            (Chunk::DataLf, b'\n') => Chunk::Start,
            (Chunk::EndCr, b'\r') => Chunk::EndLf,
            (Chunk::Trailer, b'\r') => Chunk::TrailerLf,
            (Chunk::EndCr | Chunk::Trailer, _) => Chunk::Trailer,
            (Chunk::TrailerLf, b'\n') => Chunk::EndCr,
            (Chunk::EndLf, b'\n') => return Ok((data, true)),
            _ => return Err(here),
        };
    }
    Ok((data, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(pieces: &[&[u8]]) -> Vec<Verdict> {
        let mut s = Scanner::new(8192, 100);
        pieces.iter().map(|p| s.feed(p)).collect()
    }

    #[test]
    fn plain_requests_pass() {
        let v = scan(&[b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n"]);
        assert_eq!(v, [Verdict::Pass]);
    }

    #[test]
    fn cl_and_te_rejected_in_either_order() {
        for head in [
            &b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            &b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\ncontent-length: 5\r\n\r\n"[..],
        ] {
            assert_eq!(scan(&[head]), [Verdict::Reject { at: 0 }]);
        }
    }

    #[test]
    fn smuggled_head_after_a_fixed_body_is_found() {
        let first = b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nabcd";
        let second = b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(
            scan(&[first, second]),
            [Verdict::Pass, Verdict::Reject { at: 0 }]
        );
        let both = [&first[..], &second[..]].concat();
        assert_eq!(scan(&[&both]), [Verdict::Reject { at: first.len() }]);
    }

    #[test]
    fn smuggled_head_after_a_chunked_body_is_found_across_split_reads() {
        let stream: &[u8] = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
            5;ext=1\r\nhello\r\n3\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n\
            GET / HTTP/1.1\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n";
        // Byte by byte: every state boundary falls between two reads.
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        let verdicts = scan(&bytes);
        assert_eq!(verdicts.last(), Some(&Verdict::Reject { at: 0 }));
        assert_eq!(verdicts.iter().filter(|v| **v != Verdict::Pass).count(), 1);
    }

    #[test]
    fn body_bytes_that_look_like_a_head_are_not_scanned() {
        let body = b"GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let head = format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", body.len());
        assert_eq!(
            scan(&[head.as_bytes(), body]),
            [Verdict::Pass, Verdict::Pass]
        );
    }

    #[test]
    fn connect_and_upgrade_stop_scanning() {
        for first in [
            &b"CONNECT a:443 HTTP/1.1\r\n\r\n"[..],
            &b"GET /ws HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"[..],
        ] {
            // A tunnel's bytes are anything: a refusal closes the connection.
            let v = scan(&[first, b"\x81\x85 not a head\r\n\r\n"]);
            assert_eq!(v, [Verdict::Pass, Verdict::Pass]);
        }
    }

    #[test]
    fn what_cannot_be_followed_is_refused_where_it_starts() {
        // A head httparse refuses, after a good one.
        let good = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let bad = b"GET / HTTP/1.1\r\nHo st: a\r\n\r\n";
        assert_eq!(
            scan(&[&[&good[..], &bad[..]].concat()]),
            [Verdict::Reject { at: good.len() }]
        );
        // A chunk size that is not hex, at the bad byte.
        let head = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(
            scan(&[head, b"5\r\nhello\r\nz\r\n"]),
            [Verdict::Pass, Verdict::Reject { at: 10 }]
        );
        // More than 16 significant digits overflow a u64...
        assert_eq!(
            scan(&[head, b"10000000000000000\r\n"]),
            [Verdict::Pass, Verdict::Reject { at: 16 }]
        );
        // ...and a bare LF ends nothing, as in hyper.
        assert_eq!(
            scan(&[head, b"5\nhello"]),
            [Verdict::Pass, Verdict::Reject { at: 1 }]
        );
    }

    #[test]
    fn leading_zeros_in_a_chunk_size_keep_the_guard_watching() {
        let head = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let body = b"00000000000000000001\r\nx\r\n0\r\n\r\n";
        let smuggled =
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(
            scan(&[head, body, smuggled]),
            [Verdict::Pass, Verdict::Pass, Verdict::Reject { at: 0 }]
        );
    }

    /// A small deterministic generator, so failures replay exactly.
    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self, below: usize) -> usize {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((self.0 >> 33) as usize) % below.max(1)
        }
    }

    /// A request with a random framing, and body bytes that look like heads.
    fn random_request(rng: &mut Lcg) -> Vec<u8> {
        let body: Vec<u8> =
            b"GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
                .iter()
                .cycle()
                .take(rng.next(300))
                .copied()
                .collect();
        match rng.next(3) {
            0 => b"GET /plain HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
            1 => {
                let mut r = format!(
                    "POST /fixed HTTP/1.1\r\ncontent-length: {}\r\n\r\n",
                    body.len()
                )
                .into_bytes();
                r.extend_from_slice(&body);
                r
            }
            _ => {
                let mut r =
                    b"PUT /chunked HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n".to_vec();
                let mut rest = &body[..];
                while !rest.is_empty() {
                    let n = (1 + rng.next(40)).min(rest.len());
                    let ext = if rng.next(2) == 0 { ";name=\"v\"" } else { "" };
                    r.extend_from_slice(format!("{n:X}{ext}\r\n").as_bytes());
                    r.extend_from_slice(&rest[..n]);
                    r.extend_from_slice(b"\r\n");
                    rest = &rest[n..];
                }
                r.extend_from_slice(b"0\r\n");
                for n in 0..rng.next(3) {
                    r.extend_from_slice(format!("X-Trailer-{n}: 1\r\n").as_bytes());
                }
                r.extend_from_slice(b"\r\n");
                r
            }
        }
    }

    #[test]
    fn random_pipelines_split_anywhere_never_trip_and_a_smuggled_tail_always_does() {
        let smuggled =
            b"POST /x HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        for seed in 0..300 {
            let mut rng = Lcg(seed);
            let mut stream = Vec::new();
            for _ in 0..1 + rng.next(8) {
                stream.extend(random_request(&mut rng));
            }
            let clean_len = stream.len();
            stream.extend_from_slice(smuggled);

            let mut scanner = Scanner::new(8192, 100);
            let mut offset = 0;
            let mut verdict = None;
            while offset < stream.len() {
                let n = (1 + rng.next(64)).min(stream.len() - offset);
                match scanner.feed(&stream[offset..offset + n]) {
                    Verdict::Pass => {}
                    Verdict::Reject { at } => {
                        verdict = Some((offset, at));
                        break;
                    }
                }
                offset += n;
            }
            let (read_start, at) =
                verdict.unwrap_or_else(|| panic!("seed {seed}: smuggled head missed"));
            // Rejected inside the smuggled head, and never before it: either
            // the read that holds its start, or a later read of the same head.
            assert!(
                read_start + at >= clean_len,
                "seed {seed}: false rejection at {}",
                read_start + at
            );
            if read_start <= clean_len {
                assert_eq!(read_start + at, clean_len, "seed {seed}: wrong offset");
            }
        }
    }
}

/// Random input, and hyper as the oracle: a stream is served by hyper once
/// bare and once behind the guard, and what hyper makes of it compared.
/// `FUZZ_CASES=20000 cargo test -p ferryman-proxy --lib guard::fuzz` for a
/// longer run.
#[cfg(test)]
mod fuzz {
    use super::*;
    use http_body_util::BodyExt;
    use proptest::prelude::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A request as hyper handed it to the service.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Seen {
        target: String,
        body: Result<usize, ()>,
        /// Framed both by Content-Length and Transfer-Encoding.
        ambiguous: bool,
    }

    /// What hyper serves out of `stream`, written in pieces `cuts` says,
    /// behind the guard or not.
    fn hyper_sees(stream: &[u8], cuts: &[usize], guarded: bool) -> Vec<Seen> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let (mut client, server) = tokio::io::duplex(1 << 20);
            let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
            let service =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let seen = seen_tx.clone();
                    async move {
                        // hyper drops the length of a request framed both ways:
                        // the generator marks those by their target instead.
                        let ambiguous = req.uri().path().starts_with("/smuggled");
                        let target = format!("{} {}", req.method(), req.uri());
                        let body = req
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes().len())
                            .map_err(|_| ());
                        let _ = seen.send(Seen {
                            target,
                            body,
                            ambiguous,
                        });
                        Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
                    }
                });
            let serving = async move {
                // The writer closes its side once done: hyper must still
                // finish the requests it has.
                let mut http = hyper::server::conn::http1::Builder::new();
                http.half_close(true);
                if guarded {
                    let io = FramingGuard::new(server, 8192, 100);
                    let _ = http
                        .serve_connection(hyper_util::rt::TokioIo::new(io), service)
                        .await;
                } else {
                    let _ = http
                        .serve_connection(hyper_util::rt::TokioIo::new(server), service)
                        .await;
                }
            };
            let writing = async move {
                let mut offset = 0;
                let mut cuts = cuts.iter().cycle();
                while offset < stream.len() {
                    let n = (1 + cuts.next().copied().unwrap_or(0) % 97).min(stream.len() - offset);
                    if client.write_all(&stream[offset..offset + n]).await.is_err() {
                        break;
                    }
                    offset += n;
                    tokio::task::yield_now().await;
                }
                let _ = client.shutdown().await;
                let mut answers = Vec::new();
                let _ = client.read_to_end(&mut answers).await;
            };
            let limit = std::time::Duration::from_secs(10);
            let _ = tokio::time::timeout(limit, futures_util::future::join(serving, writing)).await;
            let mut seen = Vec::new();
            while let Ok(one) = seen_rx.try_recv() {
                seen.push(one);
            }
            seen
        })
    }

    fn head() -> impl Strategy<Value = String> {
        (
            prop::sample::select(vec!["GET", "POST", "PUT", "PATCH"]),
            prop::sample::select(vec!["/", "/a?b=c", "http://h:81/x"]),
            prop::collection::vec(("[A-Za-z-]{1,12}", "[ -~]{0,20}"), 0..4),
        )
            .prop_map(|(method, target, fields)| {
                let mut head = format!("{method} {target} HTTP/1.1\r\nHost: h\r\n");
                for (name, value) in fields {
                    let name = name.to_ascii_lowercase();
                    let framing = [
                        "content-length",
                        "transfer-encoding",
                        "upgrade",
                        "connection",
                        "expect",
                    ];
                    if !framing.contains(&name.as_str()) {
                        head.push_str(&format!("{name}: {}\r\n", value.trim()));
                    }
                }
                head
            })
    }

    /// A request with a body framed one of the ways hyper takes, or (4)
    /// framed both ways, the smuggler's way.
    fn request() -> impl Strategy<Value = Vec<u8>> {
        (
            head(),
            prop::collection::vec(any::<u8>(), 0..200),
            0..5u8,
            prop::collection::vec(1..40usize, 1..8),
            0..4usize,
        )
            .prop_map(|(head, body, framing, chunks, zeros)| {
                let mut out = head.into_bytes();
                let chunked = |out: &mut Vec<u8>| {
                    let mut rest = &body[..];
                    let mut sizes = chunks.iter().cycle();
                    while !rest.is_empty() {
                        let n = (*sizes.next().unwrap_or(&1)).min(rest.len());
                        out.extend_from_slice(
                            format!("{}{n:x};e=1\r\n", "0".repeat(zeros)).as_bytes(),
                        );
                        out.extend_from_slice(&rest[..n]);
                        out.extend_from_slice(b"\r\n");
                        rest = &rest[n..];
                    }
                    out.extend_from_slice(b"0\r\nx-t: 1\r\n\r\n");
                };
                match framing {
                    0 | 1 => out.extend_from_slice(b"\r\n"),
                    2 => {
                        out.extend_from_slice(
                            format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes(),
                        );
                        out.extend_from_slice(&body);
                    }
                    3 => {
                        out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
                        chunked(&mut out);
                    }
                    _ => {
                        let line_end = out.iter().position(|&b| b == b' ').map_or(0, |p| p + 1);
                        out.splice(line_end..line_end, b"/smuggled".iter().copied());
                        out.extend_from_slice(
                            b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
                        );
                        chunked(&mut out);
                    }
                }
                out
            })
    }

    #[test]
    fn the_oracle_sees_requests() {
        let stream = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n\
            POST /2 HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n";
        let seen = hyper_sees(stream, &[5, 200], false);
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert_eq!(seen[1].body, Ok(1));
        // Bare, hyper takes a smuggled head (then closes, as RFC 9112 §6.1
        // asks, so what follows is not served); behind the guard, it never
        // sees it.
        let smuggled = [
            &stream[..],
            b"POST /smuggled HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"GET /after HTTP/1.1\r\nHost: h\r\n\r\n",
        ]
        .concat();
        let bare = hyper_sees(&smuggled, &[7], false);
        assert_eq!(bare.len(), 3, "{bare:?}");
        assert!(bare[2].ambiguous);
        assert_eq!(hyper_sees(&smuggled, &[7], true), seen);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(ferryman_testkit::fuzz_cases(128)))]

        #[test]
        fn any_bytes_split_anyhow_never_panic(
            stream in prop::collection::vec(any::<u8>(), 0..2048),
            cuts in prop::collection::vec(any::<usize>(), 1..16),
        ) {
            let mut scanner = Scanner::new(8192, 100);
            let mut offset = 0;
            let mut cuts = cuts.iter().cycle();
            while offset < stream.len() {
                let n = (1 + cuts.next().copied().unwrap_or(0) % 97).min(stream.len() - offset);
                if let Verdict::Reject { at } = scanner.feed(&stream[offset..offset + n]) {
                    prop_assert!(at <= n, "a rejection past its read: {} > {}", at, n);
                    break;
                }
                offset += n;
            }
        }

        /// Behind the guard, hyper serves what it serves bare, in order,
        /// up to the first request framed both ways, and never that one.
        #[test]
        fn hyper_behind_the_guard_serves_the_same_up_to_a_smuggled_head(
            requests in prop::collection::vec(request(), 1..6),
            cuts in prop::collection::vec(any::<usize>(), 1..16),
        ) {
            let stream: Vec<u8> = requests.concat();
            let shown = String::from_utf8_lossy(&stream).to_string();
            let bare = hyper_sees(&stream, &cuts, false);
            let guarded = hyper_sees(&stream, &cuts, true);
            let first_ambiguous = bare.iter().position(|s| s.ambiguous).unwrap_or(bare.len());
            if first_ambiguous == bare.len() {
                prop_assert_eq!(bare.len(), requests.len(), "hyper serves every request: {:?}", shown);
            }
            prop_assert_eq!(&guarded[..], &bare[..first_ambiguous], "{:?}", shown);
        }

        /// With bytes changed anywhere, the guard still only ever cuts:
        /// hyper behind it serves a prefix of what it serves bare.
        #[test]
        fn with_bytes_changed_the_guard_only_ever_cuts(
            requests in prop::collection::vec(request(), 1..5),
            flips in prop::collection::vec((any::<usize>(), any::<u8>()), 1..4),
            cuts in prop::collection::vec(any::<usize>(), 1..16),
        ) {
            let mut stream: Vec<u8> = requests.concat();
            for (at, byte) in flips {
                let at = at % stream.len();
                stream[at] = byte;
            }
            let shown = String::from_utf8_lossy(&stream).to_string();
            let bare = hyper_sees(&stream, &cuts, false);
            let guarded = hyper_sees(&stream, &cuts, true);
            prop_assert!(guarded.len() <= bare.len(), "{:?}", shown);
            let heads = |all: &[Seen]| all.iter().map(|s| s.target.clone()).collect::<Vec<_>>();
            prop_assert_eq!(heads(&guarded), heads(&bare[..guarded.len()]), "{:?}", shown);
            // A body the guard cut short is hyper's last; the others are whole.
            if let Some((_, before)) = guarded.split_last() {
                prop_assert_eq!(before, &bare[..before.len()], "{:?}", shown);
            }
        }
    }
}
