//! Dashboard subscribers for bench/admin.sh: connects to the admin
//! listener's live stream, subscribes to every topic, and either reads
//! everything or stops reading at once (with a small receive window).
//! Prints `frames=... bytes=... closed_by_server=...` after `seconds`.
//!   subscribers ADMIN_ADDR TOKEN READING STALLED SECONDS

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const SUBSCRIBE: &str =
    r#"{"subscribe":["traffic","connections","logs","exchanges"],"level":"info"}"#;

#[derive(Default)]
struct Counts {
    frames: AtomicU64,
    bytes: AtomicU64,
    closed: AtomicU64,
}

type Socket = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn subscribe(admin: &str, token: &str, stalled: bool) -> Result<Socket, String> {
    let socket = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
    if stalled {
        socket
            .set_recv_buffer_size(4096)
            .map_err(|e| e.to_string())?;
    }
    let addr = admin.parse().map_err(|e| format!("{admin}: {e}"))?;
    let stream = socket.connect(addr).await.map_err(|e| e.to_string())?;
    let mut request = format!("ws://{admin}/api/live")
        .into_client_request()
        .map_err(|e| e.to_string())?;
    let bearer = format!("Bearer {token}").parse().map_err(|_| "bad token")?;
    request.headers_mut().insert("authorization", bearer);
    let (mut ws, _) = tokio_tungstenite::client_async(request, stream)
        .await
        .map_err(|e| e.to_string())?;
    ws.send(Message::text(SUBSCRIBE))
        .await
        .map_err(|e| e.to_string())?;
    Ok(ws)
}

async fn read_all(mut ws: Socket, counts: Arc<Counts>) {
    while let Some(Ok(message)) = ws.next().await {
        counts.frames.fetch_add(1, Ordering::Relaxed);
        counts
            .bytes
            .fetch_add(message.len() as u64, Ordering::Relaxed);
    }
    counts.closed.fetch_add(1, Ordering::Relaxed);
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    let [_, admin, token, reading, stalled, seconds] = args.as_slice() else {
        return Err("usage: subscribers ADMIN_ADDR TOKEN READING STALLED SECONDS".into());
    };
    let number = |s: &str| s.parse::<u64>().map_err(|e| format!("{s}: {e}"));
    let counts = Arc::new(Counts::default());
    for _ in 0..number(reading)? {
        let ws = subscribe(admin, token, false).await?;
        tokio::spawn(read_all(ws, counts.clone()));
    }
    let mut held = Vec::new();
    for _ in 0..number(stalled)? {
        held.push(subscribe(admin, token, true).await?);
    }
    println!("subscribed");
    tokio::time::sleep(Duration::from_secs(number(seconds)?)).await;
    println!(
        "frames={} bytes={} closed_by_server={}",
        counts.frames.load(Ordering::Relaxed),
        counts.bytes.load(Ordering::Relaxed),
        counts.closed.load(Ordering::Relaxed)
    );
    drop(held);
    Ok(())
}
