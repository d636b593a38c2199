//! CONNECT tunnels and protocol upgrades: bytes flow only once the far side
//! is there, in both directions, with half-close.

mod common;

use common::{curl, proxy, LIMIT};
use ferryman_testkit::backend::{full, websocket_echo, Backend, RawBackend};
use ferryman_testkit::raw::Raw;
use ferryman_testkit::tls::TestCa;
use ferryman_testkit::within;
use http::Response;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_reaches_an_https_backend_through_connect() {
    let ca = TestCa::new();
    let backend = Backend::start_tls(ca.server_config(&[b"http/1.1"]), |req| async move {
        Response::new(full(format!("secure {}", req.uri().path())))
    })
    .await;
    let proxy = proxy().await;
    let (ok, body, err) = curl(&[
        "-x",
        &format!("http://{}", proxy.local_addr()),
        "--cacert",
        ca.pem_path().to_str().unwrap(),
        &format!("https://127.0.0.1:{}/tls", backend.addr.port()),
    ])
    .await;
    assert!(ok, "{err}");
    assert_eq!(body, b"secure /tls");
    proxy.shutdown().await;
}

/// Reads until the client half-closes, then answers with what it got.
async fn echo_after_eof() -> RawBackend {
    RawBackend::start(|conn, _| async move {
        let mut stream = conn.stream;
        let mut got = Vec::new();
        if stream.read_to_end(&mut got).await.is_ok() {
            let _ = stream
                .write_all(format!("got {}", String::from_utf8_lossy(&got)).as_bytes())
                .await;
        }
    })
    .await
}

#[tokio::test]
async fn a_client_half_close_reaches_the_upstream_and_the_answer_still_flows() {
    let backend = echo_after_eof().await;
    let proxy = proxy().await;
    let mut raw = Raw::connect(proxy.local_addr()).await;
    raw.send(format!("CONNECT {} HTTP/1.1\r\nHost: x\r\n\r\n", backend.addr).as_bytes())
        .await;
    let head = raw.read_head().await.unwrap();
    assert_eq!(head.status, 200);
    raw.send(b"hello").await;
    raw.stream.shutdown().await.unwrap();
    let answer = within(LIMIT, "answer after half-close", raw.read_to_end()).await;
    assert_eq!(answer, b"got hello");
    proxy.shutdown().await;
}

#[tokio::test]
async fn bytes_sent_right_behind_connect_are_not_lost() {
    let backend = echo_after_eof().await;
    let proxy = proxy().await;
    let mut raw = Raw::connect(proxy.local_addr()).await;
    // Like a client that sends its TLS hello without waiting for the 200.
    raw.send(format!("CONNECT {} HTTP/1.1\r\nHost: x\r\n\r\nearly", backend.addr).as_bytes())
        .await;
    raw.stream.shutdown().await.unwrap();
    let head = raw.read_head().await.unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(
        within(LIMIT, "answer", raw.read_to_end()).await,
        b"got early"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn connect_to_a_closed_port_gets_502_and_the_connection_ends() {
    let proxy = proxy().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut raw = Raw::connect(proxy.local_addr()).await;
    raw.send(format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await;
    let (head, body) = raw.read_response(false).await;
    assert_eq!(head.status, 502);
    assert!(String::from_utf8(body.unwrap())
        .unwrap()
        .contains("cannot connect"));
    assert!(raw.closed().await);
    proxy.shutdown().await;
}

#[tokio::test]
async fn websocket_echo_through_the_proxy() {
    let backend = Backend::start(websocket_echo).await;
    let proxy = proxy().await;
    let mut ws = ferryman_testkit::websocket_through(proxy.local_addr(), &backend).await;
    ferryman_testkit::websocket_roundtrip(&mut ws, &["one", "two", "three"]).await;
    ws.close(None).await.unwrap();
    drop(ws);
    proxy.shutdown().await;
}

#[tokio::test]
async fn no_byte_is_tunnelled_when_the_upstream_refuses_the_upgrade() {
    let (tx, mut received) = mpsc::unbounded_channel::<Vec<u8>>();
    let backend = RawBackend::start(move |mut conn, _| {
        let tx = tx.clone();
        async move {
            if conn.read_request_head().await.is_some() {
                conn.send(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno")
                    .await;
                let _ = tx.send(conn.read_to_end().await);
            }
        }
    })
    .await;
    let proxy = proxy().await;
    let mut raw = Raw::connect(proxy.local_addr()).await;
    raw.send(
        format!(
            "GET {} HTTP/1.1\r\nHost: b\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nSECRET-TUNNEL-BYTES",
            backend.url("/ws"),
        )
        .as_bytes(),
    )
    .await;
    let head = raw.read_head().await.unwrap();
    assert_eq!(head.status, 403);
    let after = within(LIMIT, "upstream connection closed", received.recv())
        .await
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&after).contains("SECRET"),
        "bytes leaked: {after:?}"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_carries_20_mib_each_way_intact() {
    const SIZE: usize = 20 * 1024 * 1024;
    // Echoes everything back, then closes when the client half-closes.
    let backend = RawBackend::start(|conn, _| async move {
        let (mut read, mut write) = conn.stream.into_split();
        let _ = tokio::io::copy(&mut read, &mut write).await;
        let _ = write.shutdown().await;
    })
    .await;
    let proxy = proxy().await;
    let mut raw = Raw::connect(proxy.local_addr()).await;
    raw.send(format!("CONNECT {} HTTP/1.1\r\nHost: x\r\n\r\n", backend.addr).as_bytes())
        .await;
    assert_eq!(raw.read_head().await.unwrap().status, 200);
    let (mut read, mut write) = raw.stream.into_split();
    let payload = ferryman_testkit::pattern(SIZE);
    let sent = payload.clone();
    let writer = tokio::spawn(async move {
        write.write_all(&sent).await.unwrap();
        write.shutdown().await.unwrap();
    });
    let mut echoed = Vec::with_capacity(SIZE);
    within(LIMIT, "the echo", read.read_to_end(&mut echoed))
        .await
        .unwrap();
    writer.await.unwrap();
    assert_eq!(echoed.len(), SIZE);
    assert!(echoed == payload, "bytes changed in the tunnel");
    proxy.shutdown().await;
}
