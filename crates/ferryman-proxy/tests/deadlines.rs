//! Nothing holds a connection for ever once its head is in: every deadline
//! fires at its configured value (short ones here), and traffic that keeps
//! moving is never cut off by them.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{intercepting_proxy_with, proxy_with, tunnel, LIMIT};
use ferryman_testkit::backend::{channel_body, full, Backend};
use ferryman_testkit::raw::Raw;
use ferryman_testkit::within;
use http::Response;
use http_body_util::BodyExt;

const DEADLINE: Duration = Duration::from_secs(1);
/// How late past its deadline a close may be seen on a busy machine.
const SLACK: Duration = Duration::from_secs(4);

fn fired_on_time(started: Instant, what: &str) {
    let took = started.elapsed();
    assert!(
        took >= DEADLINE && took < DEADLINE + SLACK,
        "{what} after {took:?}, deadline {DEADLINE:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_request_body_gets_408_at_its_deadline() {
    let backend = Backend::start(|req| async move {
        let got = req.into_body().collect().await.map(|b| b.to_bytes().len());
        Response::new(full(format!("{got:?}")))
    })
    .await;
    let proxy = proxy_with(|p, _| {
        p.request_body_timeout = DEADLINE;
        p.request_body_min_rate = 1000;
    })
    .await;
    let mut raw = Raw::connect(proxy.local_addr()).await;
    raw.send(
        format!(
            "POST {} HTTP/1.1\r\nHost: b\r\nContent-Length: 1000\r\n\r\n",
            backend.url("/upload")
        )
        .as_bytes(),
    )
    .await;
    let started = Instant::now();
    // One byte every 100 ms: never idle for a second, far below 1000 bytes/s.
    let head = within(LIMIT, "the 408", async {
        loop {
            let _ = tokio::io::AsyncWriteExt::write_all(&mut raw.stream, b"x").await;
            let wait = tokio::time::timeout(Duration::from_millis(100), raw.read_head());
            if let Ok(head) = wait.await {
                return head.expect("a response head");
            }
        }
    })
    .await;
    fired_on_time(started, "408");
    assert_eq!(head.status, 408);
    let length: usize = head.header("content-length").unwrap().parse().unwrap();
    let body = String::from_utf8_lossy(&raw.read_exact(length).await).to_string();
    assert!(body.contains("request body was too slow"), "{body}");

    // A body that keeps up is never cut.
    let mut raw = Raw::connect(proxy.local_addr()).await;
    raw.send(
        format!(
            "POST {} HTTP/1.1\r\nHost: b\r\nContent-Length: 4000\r\n\r\n",
            backend.url("/upload")
        )
        .as_bytes(),
    )
    .await;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        raw.send(&[b'y'; 200]).await;
    }
    let (head, body) = within(LIMIT, "the answer", raw.read_response(false)).await;
    assert_eq!((head.status, body.unwrap()), (200, b"Ok(4000)".to_vec()));
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_dropped_at_the_send_timeout() {
    let (feeds_tx, mut feeds) = tokio::sync::mpsc::unbounded_channel();
    let backend = Backend::start(move |_| {
        let (tx, body) = channel_body();
        let _ = feeds_tx.send(tx);
        std::future::ready(Response::new(body))
    })
    .await;
    let proxy = proxy_with(|p, _| p.send_timeout = DEADLINE).await;
    let mut raw = Raw::connect(proxy.local_addr()).await;
    // A small receive window, filled fast.
    socket2::SockRef::from(&raw.stream)
        .set_recv_buffer_size(4096)
        .unwrap();
    raw.send(format!("GET {} HTTP/1.1\r\nHost: b\r\n\r\n", backend.url("/big")).as_bytes())
        .await;
    let feed = within(LIMIT, "the request", feeds.recv()).await.unwrap();
    assert_eq!(raw.read_head().await.unwrap().status, 200);
    // The origin keeps sending; the client reads nothing more. Once every
    // buffer on the way is full, the origin's sends block too.
    let chunk = Bytes::from(vec![0u8; 64 * 1024]);
    let filled = Instant::now();
    let pushed = async {
        loop {
            if feed.send(Ok(chunk.clone())).await.is_err() {
                return;
            }
        }
    };
    within(LIMIT + SLACK, "the proxy gives the response up", pushed).await;
    let took = filled.elapsed();
    assert!(took >= DEADLINE, "gave up after {took:?}");
    backend.wait_open(|n| n == 0).await;
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_tunnel_is_closed_at_its_idle_deadline_and_a_busy_one_is_not() {
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = upstream.local_addr().unwrap();
    let proxy = proxy_with(|p, _| p.tunnel_idle_timeout = DEADLINE).await;

    let mut silent = tunnel(proxy.local_addr(), target).await;
    let (_held, _) = upstream.accept().await.unwrap();
    let started = Instant::now();
    assert!(within(LIMIT, "the close", silent.closed()).await);
    fired_on_time(started, "the silent tunnel's close");

    let mut busy = tunnel(proxy.local_addr(), target).await;
    let (mut far, _) = upstream.accept().await.unwrap();
    for _ in 0..6 {
        tokio::time::sleep(DEADLINE / 2).await;
        busy.send(b"ping").await;
        let mut got = [0u8; 4];
        tokio::io::AsyncReadExt::read_exact(&mut far, &mut got)
            .await
            .unwrap();
    }
    // Three deadlines' worth of steady traffic, still open.
    busy.send(b"last").await;
    let mut got = [0u8; 4];
    tokio::io::AsyncReadExt::read_exact(&mut far, &mut got)
        .await
        .unwrap();
    assert_eq!(&got, b"last");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_handshake_that_stalls_after_the_client_hello_is_closed_at_its_deadline() {
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = upstream.local_addr().unwrap();
    let (proxy, _dir) = intercepting_proxy_with(|p| p.tls_handshake_timeout = DEADLINE).await;
    let mut raw = tunnel(proxy.local_addr(), target).await;
    // A real ClientHello, then nothing: the handshake never finishes.
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("stalled.test").unwrap();
    let mut client = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let mut hello = Vec::new();
    client.write_tls(&mut hello).unwrap();
    raw.send(&hello).await;
    let started = Instant::now();
    let answered = within(LIMIT + SLACK, "the close", raw.read_to_end()).await;
    fired_on_time(started, "the stalled handshake's close");
    assert!(
        !answered.is_empty(),
        "ferryman answered the hello before giving up"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_intercepted_http2_connection_is_sent_away() {
    let ca = ferryman_testkit::tls::TestCa::new();
    let backend = Backend::start_tls(ca.server_config(&[b"h2", b"http/1.1"]), |_| async {
        Response::new(full("over h2"))
    })
    .await;
    let (proxy, dir) = common::intercepting_proxy_trusting_with(&[ca.pem_path()], |p| {
        p.client_idle_timeout = DEADLINE;
    })
    .await;
    let raw = tunnel(proxy.local_addr(), backend.addr).await;
    let tls = common::tls_trusting_ferryman_offering(&dir, "localhost", raw.stream, &[b"h2"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    let connection = tokio::spawn(conn);
    let request = http::Request::get(format!("https://localhost:{}/", backend.addr.port()))
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    // The idle clock starts when the exchange ends on ferryman's side,
    // which is after the request leaves here.
    let started = Instant::now();
    let answer = sender.send_request(request).await.unwrap();
    let body = answer.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "over h2");
    within(LIMIT + SLACK, "the connection going away", connection)
        .await
        .unwrap()
        .unwrap();
    fired_on_time(started, "the idle h2 connection's GOAWAY");
    proxy.shutdown().await;
}
