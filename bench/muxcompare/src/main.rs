//! h2 against yamux over one loopback TCP connection, each end on its own
//! thread (as the gateway and the agent are separate processes): one
//! stream moving 2 GiB, and 32 streams echoing 1 KiB messages for 3 s.
//! Prints MiB/s and round trips/s, three interleaved rounds.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::compat::{Compat, TokioAsyncReadCompatExt};

const TOTAL: usize = 2 << 30;
const CHUNK: usize = 64 * 1024;
const STREAMS: usize = 32;
const ECHO_FOR: Duration = Duration::from_secs(3);

#[derive(Clone, Copy, PartialEq)]
enum Mux {
    H2,
    Yamux,
}

fn main() {
    for round in 1..=3 {
        for mux in [Mux::H2, Mux::Yamux] {
            let name = if mux == Mux::H2 { "h2" } else { "yamux" };
            let (bytes, took) = pair(mux, bulk_sender, bulk_receiver);
            let mib = bytes as f64 / took.as_secs_f64() / 1048576.0;
            let (trips, took) = pair(mux, echo_server, echo_client);
            let rate = trips as f64 / took.as_secs_f64();
            println!("round {round} {name:5}: bulk {mib:6.0} MiB/s, 1 KiB echo {rate:6.0} round trips/s");
        }
    }
}

/// Runs `far` on a thread of its own and `near` here, over one connection.
fn pair<F, N>(mux: Mux, far: fn(Mux, TcpStream) -> F, near: fn(Mux, TcpStream) -> N) -> (usize, Duration)
where
    F: std::future::Future<Output = ()> + 'static,
    N: std::future::Future<Output = usize>,
{
    let runtime = || tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let here = runtime();
    let listener = here.block_on(TcpListener::bind("127.0.0.1:0")).expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        runtime().block_on(async move {
            let s = TcpStream::connect(addr).await.expect("connect");
            s.set_nodelay(true).expect("nodelay");
            far(mux, s).await
        })
    });
    here.block_on(async move {
        let (s, _) = listener.accept().await.expect("accept");
        s.set_nodelay(true).expect("nodelay");
        let started = Instant::now();
        let n = near(mux, s).await;
        (n, started.elapsed())
    })
}

fn yamux_config() -> yamux::Config {
    let mut config = yamux::Config::default();
    // Its best showing: 16 KiB frames (the default) move half as fast.
    config.set_split_send_size(256 * 1024);
    config
}

/// The side that accepts streams (the agent).
async fn accepted_yamux(s: TcpStream) -> (yamux::Connection<Compat<TcpStream>>, yamux::Stream) {
    let mut conn = yamux::Connection::new(s.compat(), yamux_config(), yamux::Mode::Server);
    let stream = std::future::poll_fn(|cx| conn.poll_next_inbound(cx)).await.expect("stream").expect("stream");
    (conn, stream)
}

/// The side that opens streams (the gateway): yamux 0.14 has no handle, so
/// one task drives the connection and opens streams on request.
fn opener(s: TcpStream) -> mpsc::Sender<oneshot::Sender<yamux::Stream>> {
    let (tx, mut rx) = mpsc::channel::<oneshot::Sender<yamux::Stream>>(64);
    let mut conn = yamux::Connection::new(s.compat(), yamux_config(), yamux::Mode::Client);
    tokio::spawn(async move {
        let mut waiting = Vec::new();
        std::future::poll_fn(|cx| {
            while let Poll::Ready(Some(t)) = rx.poll_recv(cx) {
                waiting.push(t);
            }
            while let Some(t) = waiting.pop() {
                match conn.poll_new_outbound(cx) {
                    Poll::Ready(Ok(s)) => drop(t.send(s)),
                    _ => {
                        waiting.push(t);
                        break;
                    }
                }
            }
            loop {
                match conn.poll_next_inbound(cx) {
                    Poll::Ready(Some(_)) => continue,
                    Poll::Ready(None) => return Poll::Ready(()),
                    Poll::Pending => return Poll::Pending,
                }
            }
        })
        .await
    });
    tx
}

async fn open(opener: &mpsc::Sender<oneshot::Sender<yamux::Stream>>) -> yamux::Stream {
    let (tx, rx) = oneshot::channel();
    opener.send(tx).await.expect("opener");
    rx.await.expect("stream")
}

fn h2_server() -> h2::server::Builder {
    let mut b = h2::server::Builder::new();
    b.initial_window_size(2 << 20).initial_connection_window_size(32 << 20).max_frame_size(1 << 20);
    b
}

fn h2_client() -> h2::client::Builder {
    let mut b = h2::client::Builder::new();
    b.initial_window_size(2 << 20).initial_connection_window_size(32 << 20).max_frame_size(1 << 20);
    b
}

async fn bulk_sender(mux: Mux, s: TcpStream) {
    match mux {
        Mux::H2 => {
            let mut conn = h2_server().handshake::<_, Bytes>(s).await.expect("handshake");
            let (_req, mut respond) = conn.accept().await.expect("stream").expect("stream");
            tokio::spawn(async move { while conn.accept().await.is_some() {} });
            let mut send = respond.send_response(http::Response::new(()), false).expect("respond");
            let chunk = Bytes::from(vec![7u8; CHUNK]);
            let mut sent = 0;
            while sent < TOTAL {
                send.reserve_capacity(CHUNK);
                let granted = std::future::poll_fn(|cx| send.poll_capacity(cx)).await.expect("open").expect("capacity");
                let n = granted.min(CHUNK);
                send.send_data(chunk.slice(..n), false).expect("send");
                sent += n;
            }
            send.send_data(Bytes::new(), true).expect("end");
            futures::future::pending::<()>().await
        }
        Mux::Yamux => {
            let (mut conn, mut stream) = accepted_yamux(s).await;
            tokio::spawn(async move { while std::future::poll_fn(|cx| conn.poll_next_inbound(cx)).await.is_some() {} });
            let chunk = vec![7u8; CHUNK];
            for _ in 0..TOTAL / CHUNK {
                stream.write_all(&chunk).await.expect("send");
            }
            stream.close().await.expect("close");
            futures::future::pending::<()>().await
        }
    }
}

async fn bulk_receiver(mux: Mux, s: TcpStream) -> usize {
    let mut n = 0;
    match mux {
        Mux::H2 => {
            let (mut client, conn) = h2_client().handshake::<_, Bytes>(s).await.expect("handshake");
            tokio::spawn(conn);
            let (response, _send) = client.send_request(http::Request::new(()), true).expect("request");
            let mut body = response.await.expect("response").into_body();
            while let Some(data) = body.data().await {
                let data = data.expect("data");
                n += data.len();
                body.flow_control().release_capacity(data.len()).expect("release");
            }
        }
        Mux::Yamux => {
            let opener = opener(s);
            let mut stream = open(&opener).await;
            stream.write_all(b"go").await.expect("announce");
            let mut buf = vec![0u8; CHUNK];
            loop {
                match stream.read(&mut buf).await.expect("read") {
                    0 => break,
                    r => n += r,
                }
            }
        }
    }
    n
}

async fn echo_server(mux: Mux, s: TcpStream) {
    match mux {
        Mux::H2 => {
            let mut conn = h2_server().handshake::<_, Bytes>(s).await.expect("handshake");
            while let Some(Ok((req, mut respond))) = conn.accept().await {
                tokio::spawn(async move {
                    let mut body = req.into_body();
                    let Ok(mut send) = respond.send_response(http::Response::new(()), false) else { return };
                    while let Some(Ok(data)) = body.data().await {
                        let _ = body.flow_control().release_capacity(data.len());
                        if send.send_data(data, false).is_err() {
                            return;
                        }
                    }
                });
            }
        }
        Mux::Yamux => {
            let mut conn = yamux::Connection::new(s.compat(), yamux_config(), yamux::Mode::Server);
            while let Some(Ok(stream)) = std::future::poll_fn(|cx| conn.poll_next_inbound(cx)).await {
                tokio::spawn(async move {
                    let (mut r, mut w) = stream.split();
                    let mut buf = vec![0u8; 16384];
                    while let Ok(n @ 1..) = r.read(&mut buf).await {
                        if w.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        }
    }
}

async fn echo_client(mux: Mux, s: TcpStream) -> usize {
    let count = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + ECHO_FOR;
    let mut tasks = Vec::new();
    match mux {
        Mux::H2 => {
            let (client, conn) = h2_client().handshake::<_, Bytes>(s).await.expect("handshake");
            tokio::spawn(conn);
            for _ in 0..STREAMS {
                let mut client = client.clone().ready().await.expect("ready");
                let count = count.clone();
                tasks.push(tokio::spawn(async move {
                    let (response, mut send) = client.send_request(http::Request::new(()), false).expect("request");
                    let message = Bytes::from(vec![1u8; 1024]);
                    send.send_data(message.clone(), false).expect("send");
                    let mut body = response.await.expect("response").into_body();
                    let mut got = 0;
                    while Instant::now() < deadline {
                        let data = body.data().await.expect("open").expect("data");
                        body.flow_control().release_capacity(data.len()).expect("release");
                        got += data.len();
                        if got >= 1024 {
                            got -= 1024;
                            count.fetch_add(1, Ordering::Relaxed);
                            send.send_data(message.clone(), false).expect("send");
                        }
                    }
                }));
            }
        }
        Mux::Yamux => {
            let opener = opener(s);
            for _ in 0..STREAMS {
                let mut stream = open(&opener).await;
                let count = count.clone();
                tasks.push(tokio::spawn(async move {
                    let message = vec![1u8; 1024];
                    let mut buf = vec![0u8; 1024];
                    while Instant::now() < deadline {
                        stream.write_all(&message).await.expect("send");
                        stream.read_exact(&mut buf).await.expect("read");
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }));
            }
        }
    }
    for task in tasks {
        task.await.expect("task");
    }
    count.load(Ordering::Relaxed)
}
