//! A byte-level HTTP/1 client, for what real clients hide: pipelining,
//! interim responses, malformed requests, exact framing.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn owned(headers: &[httparse::Header<'_>]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|h| {
            (
                h.name.to_string(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect()
}

impl From<TcpStream> for Raw {
    fn from(stream: TcpStream) -> Raw {
        Raw {
            stream,
            buf: Vec::new(),
            trailers: Vec::new(),
        }
    }
}

/// A parsed response head.
#[derive(Debug, Clone)]
pub struct Head {
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

pub struct Raw {
    pub stream: TcpStream,
    buf: Vec<u8>,
    /// Trailer lines of the last chunked body read with `read_chunk`.
    pub trailers: Vec<String>,
}

/// A parsed request head, for raw backends.
#[derive(Debug, Clone)]
pub struct RequestHead {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
}

impl RequestHead {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn content_length(&self) -> usize {
        self.header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).await.expect("connect");
        Raw::from(stream)
    }

    /// The next request head (server side), or None if the peer closed first.
    pub async fn read_request_head(&mut self) -> Option<RequestHead> {
        self.parse_next(|buf| {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut headers);
            let httparse::Status::Complete(len) = req.parse(buf).ok()? else {
                return None;
            };
            let head = RequestHead {
                method: req.method.unwrap_or("").to_string(),
                target: req.path.unwrap_or("").to_string(),
                headers: owned(req.headers),
            };
            Some((head, len))
        })
        .await
    }

    /// Parses the next message head out of the buffer, reading as needed.
    async fn parse_next<T>(&mut self, parse: impl Fn(&[u8]) -> Option<(T, usize)>) -> Option<T> {
        loop {
            if let Some((head, len)) = parse(&self.buf) {
                self.buf.drain(..len);
                return Some(head);
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// The next chunk of a chunked body: Some(data), or None after the last
    /// chunk (trailers consumed) or when the connection ends.
    pub async fn read_chunk(&mut self) -> Option<Vec<u8>> {
        let line = self.read_line().await?;
        let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            self.trailers.clear();
            while let Some(line) = self.read_line().await {
                if line.is_empty() {
                    break;
                }
                self.trailers.push(line);
            }
            return None;
        }
        let data = self.read_exact(size + 2).await;
        (data.len() == size + 2).then(|| data[..size].to_vec())
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// Reads more bytes into the buffer; false on EOF or reset.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// The next response head, or None if the connection ended first.
    pub async fn read_head(&mut self) -> Option<Head> {
        self.parse_next(|buf| {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut headers);
            let httparse::Status::Complete(len) = resp.parse(buf).ok()? else {
                return None;
            };
            let head = Head {
                status: resp.code.unwrap_or(0),
                headers: owned(resp.headers),
            };
            Some((head, len))
        })
        .await
    }

    /// Exactly `n` body bytes, or fewer if the connection ends first.
    pub async fn read_exact(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n && self.fill().await {}
        let take = n.min(self.buf.len());
        self.buf.drain(..take).collect()
    }

    /// A chunked body; Err with what arrived if the connection ended before
    /// the last chunk.
    pub async fn read_chunked(&mut self) -> Result<Vec<u8>, Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line = match self.read_line().await {
                Some(line) => line,
                None => return Err(body),
            };
            let size_text = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_text, 16).expect("chunk size");
            if size == 0 {
                // Trailers, then the blank line.
                while let Some(line) = self.read_line().await {
                    if line.is_empty() {
                        return Ok(body);
                    }
                }
                return Err(body);
            }
            let data = self.read_exact(size + 2).await;
            if data.len() < size + 2 {
                body.extend_from_slice(&data[..data.len().min(size)]);
                return Err(body);
            }
            body.extend_from_slice(&data[..size]);
        }
    }

    async fn read_line(&mut self) -> Option<String> {
        loop {
            if let Some(pos) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..pos]).into_owned();
                self.buf.drain(..pos + 2);
                return Some(line);
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// A whole response: head, then the body framed as the head says
    /// (`bodyless` for answers to HEAD). Err(partial body) when truncated.
    pub async fn read_response(&mut self, bodyless: bool) -> (Head, Result<Vec<u8>, Vec<u8>>) {
        let head = self.read_head().await.expect("a response head");
        if bodyless || head.status == 204 || head.status == 304 || head.status < 200 {
            return (head, Ok(Vec::new()));
        }
        if head
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
        {
            let body = self.read_chunked().await;
            return (head, body);
        }
        if let Some(len) = head
            .header("content-length")
            .and_then(|v| v.parse::<usize>().ok())
        {
            let body = self.read_exact(len).await;
            let body = if body.len() == len {
                Ok(body)
            } else {
                Err(body)
            };
            return (head, body);
        }
        (head, Ok(self.read_to_end().await))
    }

    /// Everything until the peer closes.
    pub async fn read_to_end(&mut self) -> Vec<u8> {
        while self.fill().await {}
        std::mem::take(&mut self.buf)
    }

    /// True if the peer closed (EOF or reset) with nothing more to read.
    pub async fn closed(&mut self) -> bool {
        self.buf.is_empty() && !self.fill().await
    }
}
