//! Real servers and clients on 127.0.0.1 for ferryman's integration tests.

pub mod backend;
pub mod raw;
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
