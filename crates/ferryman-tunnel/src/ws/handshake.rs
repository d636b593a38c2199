//! The WebSocket upgrade (RFC 6455 §4) on both ends: the agent asks with
//! the headers that say who it is, the gateway answers 101 or refuses with
//! a status and the reason in the body, which the agent logs. Each returns
//! what it read past the head, the first bytes of the carrier.

use std::io;

use base64::Engine;
use http::{HeaderMap, HeaderName, HeaderValue, Request};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest head either end reads.
const MAX_HEAD: usize = 16 * 1024;
/// The most of a refusal's body an agent reads.
const MAX_REASON: usize = 4 * 1024;

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`.
fn accept_key(key: &[u8]) -> String {
    let mut context = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    context.update(key);
    context.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(context.finish())
}

#[derive(Debug, thiserror::Error)]
pub enum Failed {
    #[error("the gateway refused: {status} {reason}")]
    Refused { status: u16, reason: String },
    #[error("{0}")]
    Protocol(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Reads a head (up to the blank line); returns it and what came after.
async fn read_head<S: AsyncRead + Unpin>(io: &mut S) -> Result<(Vec<u8>, Vec<u8>), Failed> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Ok((buf, rest));
        }
        if buf.len() >= MAX_HEAD {
            return Err(Failed::Protocol("the head is too large".into()));
        }
        let mut chunk = [0u8; 2048];
        let n = io.read(&mut chunk).await?;
        if n == 0 {
            return Err(Failed::Protocol(
                "the connection closed during the upgrade".into(),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The agent's side: asks `host` (as the URL names it) to upgrade at
/// `path`, with `headers`. Returns what the gateway sent past its 101.
pub async fn client<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    host: &str,
    path: &str,
    headers: &HeaderMap,
) -> Result<Vec<u8>, Failed> {
    let mut nonce = [0u8; 16];
    {
        use ring::rand::SecureRandom;
        ring::rand::SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| Failed::Protocol("no randomness for the WebSocket key".into()))?;
    }
    let key = base64::engine::general_purpose::STANDARD.encode(nonce);
    let mut head = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
    )
    .into_bytes();
    for (name, value) in headers {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    io.write_all(&head).await?;
    io.flush().await?;
    let (answer, mut rest) = read_head(io).await?;
    let mut fields = [httparse::EMPTY_HEADER; 32];
    let mut parsed = httparse::Response::new(&mut fields);
    parsed
        .parse(&answer)
        .map_err(|e| Failed::Protocol(format!("not an HTTP answer: {e}")))?;
    let status = parsed.code.unwrap_or(0);
    let field = |name: &str| {
        parsed
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
    };
    if status != 101 {
        let length = field("content-length")
            .and_then(|l| l.parse::<usize>().ok())
            .unwrap_or(0)
            .min(MAX_REASON);
        while rest.len() < length {
            let mut chunk = [0u8; 1024];
            match io.read(&mut chunk).await? {
                0 => break,
                n => rest.extend_from_slice(&chunk[..n]),
            }
        }
        rest.truncate(length);
        let reason = String::from_utf8_lossy(&rest).trim().to_string();
        return Err(Failed::Refused { status, reason });
    }
    if field("sec-websocket-accept").as_deref() != Some(accept_key(key.as_bytes()).as_str()) {
        return Err(Failed::Protocol(
            "the 101 did not accept this upgrade's key".into(),
        ));
    }
    Ok(rest)
}

/// The gateway's side: reads the upgrade, lets `check` decide on it, and
/// answers 101 or the refusal `check` gives. Returns what `check` made of
/// the request and what the agent sent past its head.
pub async fn server<S, T>(
    io: &mut S,
    check: impl FnOnce(&Request<()>) -> Result<T, (u16, String)>,
) -> Result<(T, Vec<u8>), Failed>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (head, rest) = read_head(io).await?;
    let mut fields = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Request::new(&mut fields);
    let request = match parsed.parse(&head) {
        Ok(httparse::Status::Complete(_)) => {
            let mut request = Request::builder()
                .method(parsed.method.unwrap_or("GET"))
                .uri(parsed.path.unwrap_or("/"));
            for field in parsed.headers.iter() {
                if let (Ok(name), Ok(value)) = (
                    HeaderName::from_bytes(field.name.as_bytes()),
                    HeaderValue::from_bytes(field.value),
                ) {
                    request = request.header(name, value);
                }
            }
            request.body(()).ok()
        }
        _ => None,
    };
    let Some(request) = request else {
        refuse(io, 400, "not an HTTP request").await?;
        return Err(Failed::Protocol("not an HTTP request".into()));
    };
    let field = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let upgrade = field("upgrade").is_some_and(|u| u.eq_ignore_ascii_case("websocket"));
    let Some(key) = field("sec-websocket-key").filter(|_| upgrade) else {
        let why = "this is a ferryman tunnel gateway: agents connect with `ferryman agent`";
        refuse(io, 426, why).await?;
        return Err(Failed::Protocol("not a WebSocket upgrade".into()));
    };
    if field("sec-websocket-version") != Some("13") {
        refuse(io, 426, "WebSocket version 13 only").await?;
        return Err(Failed::Protocol("another WebSocket version".into()));
    }
    let accept = accept_key(key.as_bytes());
    match check(&request) {
        Ok(checked) => {
            let answer = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Accept: {accept}\r\n\r\n"
            );
            io.write_all(answer.as_bytes()).await?;
            io.flush().await?;
            Ok((checked, rest))
        }
        Err((status, why)) => {
            refuse(io, status, &why).await?;
            Err(Failed::Refused {
                status,
                reason: why,
            })
        }
    }
}

async fn refuse<S: AsyncWrite + Unpin>(io: &mut S, status: u16, why: &str) -> io::Result<()> {
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Refused");
    let answer = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{why}",
        why.len()
    );
    io.write_all(answer.as_bytes()).await?;
    io.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accept_key_of_rfc_6455s_example() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[tokio::test]
    async fn an_upgrade_is_accepted_or_refused_with_its_reason() {
        for accept in [true, false] {
            let (mut a, mut b) = tokio::io::duplex(4096);
            let gateway = tokio::spawn(async move {
                let outcome = server(&mut b, |request| {
                    assert_eq!(request.uri().path(), "/ferryman/tunnel");
                    assert_eq!(request.headers()["ferryman-agent"], "a1");
                    if accept {
                        Ok("checked")
                    } else {
                        Err((403, "not this group".to_string()))
                    }
                })
                .await;
                if accept {
                    b.write_all(b"first bytes").await.unwrap();
                }
                outcome.map(|(checked, _)| checked).ok()
            });
            let mut headers = HeaderMap::new();
            headers.insert("ferryman-agent", HeaderValue::from_static("a1"));
            let asked = client(&mut a, "127.0.0.1:8443", "/ferryman/tunnel", &headers).await;
            match (accept, asked) {
                (true, Ok(_)) => {}
                (false, Err(Failed::Refused { status, reason })) => {
                    assert_eq!((status, reason.as_str()), (403, "not this group"));
                }
                (_, other) => panic!("unexpected: {other:?}"),
            }
            assert_eq!(gateway.await.unwrap(), accept.then_some("checked"));
        }
    }
}
