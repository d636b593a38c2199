//! Real servers and clients on 127.0.0.1 for ferryman's integration tests.

pub mod backend;
pub mod peers;
pub mod raw;
pub mod s3;
pub mod socks;
pub mod tls;

use std::future::Future;
use std::time::Duration;

/// Waits for `check` to hold, re-checking whenever `changed` fires or, for
/// state nothing signals (kernel socket counts), every few milliseconds.
/// Panics with `what` after `limit`.
pub async fn eventually<F>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> bool,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Runs `fut` with a deadline, panicking with `what` when it passes.
pub async fn within<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {limit:?}: {what}"),
    }
}

/// Deterministic test payload: byte i is a function of i, so truncation or
/// reordering anywhere shows up in a comparison.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i % 251) as u8 ^ (i >> 13) as u8)
        .collect()
}

/// A WebSocket to `backend` through the forward proxy at `proxy`, after
/// checking the proxy relayed the backend's 101 as it was.
pub async fn websocket_through(
    proxy: std::net::SocketAddr,
    backend: &backend::Backend,
) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    let mut raw = raw::Raw::connect(proxy).await;
    raw.send(
        format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            backend.url("/ws"),
            backend.addr
        )
        .as_bytes(),
    )
    .await;
    let head = raw.read_head().await.expect("a response head");
    assert_eq!(head.status, 101);
    assert_eq!(head.header("upgrade"), Some("websocket"));
    assert_eq!(
        head.header("sec-websocket-accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    );
    let role = tokio_tungstenite::tungstenite::protocol::Role::Client;
    tokio_tungstenite::WebSocketStream::from_raw_socket(raw.stream, role, None).await
}

/// Sends each text over `ws` and checks it comes back.
pub async fn websocket_roundtrip<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>, texts: &[&str])
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::{SinkExt, StreamExt};
    for text in texts {
        ws.send(tokio_tungstenite::tungstenite::Message::text(*text))
            .await
            .expect("send");
        let echoed = within(Duration::from_secs(10), "echo", ws.next())
            .await
            .expect("an answer")
            .expect("a message");
        assert_eq!(echoed.into_text().expect("text").as_str(), *text);
    }
}

/// Open file descriptors of this process (sockets included).
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// Headless Chromium that stays on loopback: no first-run, sync, component
/// updates, sign-in or network time. Chromium still calls Google with the
/// usual "disable" flags; the URL flags point those calls at a closed
/// loopback port.
pub const CHROMIUM_QUIET: [&str; 19] = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--disable-component-extensions-with-background-pages",
    "--metrics-recording-only",
    "--enable-automation",
    "--disable-features=NetworkTimeServiceQuerying,OptimizationHints,MediaRouter,Translate",
    "--component-updater=url-source=http://127.0.0.1:1/",
    "--gaia-url=http://127.0.0.1:1/",
    "--google-apis-url=http://127.0.0.1:1/",
    "--lso-url=http://127.0.0.1:1/",
    "--password-store=basic",
];

/// Cases for one property test: `default`, or `FUZZ_CASES` for a longer run
/// (`FUZZ_CASES=20000 cargo test --workspace fuzz`).
pub fn fuzz_cases(default: u32) -> u32 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}
