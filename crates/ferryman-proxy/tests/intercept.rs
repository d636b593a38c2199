//! HTTPS interception: inside CONNECT, TLS is terminated with a leaf from
//! ferryman's CA and each request is an exchange of its own.

mod common;

use common::{curl_trusting_ferryman, intercepting_proxy, tunnel, LIMIT};
use ferryman_proxy::{InterceptConfig, InterceptMode};
use ferryman_testkit::backend::{full, Backend, RawBackend};
use ferryman_testkit::tls::TestCa;
use ferryman_testkit::{pattern, within};
use http::Response;
use http_body_util::BodyExt;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn all() -> InterceptConfig {
    InterceptConfig::default()
}

/// A TLS backend that answers with the path and the Via it saw.
async fn tls_backend(ca: &TestCa) -> Backend {
    Backend::start_tls(ca.server_config(&[b"http/1.1"]), |req| async move {
        if req.uri().path() == "/upload" {
            let body = req.into_body().collect().await.map(|b| b.to_bytes().len());
            return Response::new(full(format!("got {}", body.unwrap_or(0))));
        }
        let via = req
            .headers()
            .get("via")
            .map_or("", |v| v.to_str().unwrap_or(""))
            .to_string();
        Response::new(full(format!("secure {} via={via}", req.uri().path())))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_sees_inside_https_with_only_the_ferryman_ca_trusted() {
    let backend_ca = TestCa::new();
    let backend = tls_backend(&backend_ca).await;
    let (proxy, dir) = intercepting_proxy(&[backend_ca.pem_path()], false, all()).await;
    let url = format!("https://127.0.0.1:{}/inside", backend.addr.port());
    let (ok, body, err) =
        curl_trusting_ferryman(&proxy, &dir, &["--http1.1", "-D", "-", &url]).await;
    assert!(ok, "{err}");
    let text = String::from_utf8(body).unwrap();
    assert!(
        text.contains("secure /inside via=1.1 ferryman-"),
        "the upstream saw ferryman: {text}"
    );
    assert!(
        text.to_ascii_lowercase().contains("\nvia: 1.1 ferryman-"),
        "the client saw ferryman: {text}"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_20_mib_upload_with_expect_continue_inside_interception() {
    let backend_ca = TestCa::new();
    let backend = tls_backend(&backend_ca).await;
    let (proxy, dir) = intercepting_proxy(&[backend_ca.pem_path()], false, all()).await;
    let files = tempfile::tempdir().unwrap();
    let file = files.path().join("upload.bin");
    std::fs::write(&file, pattern(20 * 1024 * 1024)).unwrap();
    // HTTP/1.1: hyper's HTTP/2 server cannot send a 100 (over HTTP/2 the
    // upload is checked in intercept_h2.rs).
    let (ok, body, err) = curl_trusting_ferryman(
        &proxy,
        &dir,
        &[
            "--http1.1",
            "-v",
            "-H",
            "Expect: 100-continue",
            "--data-binary",
            &format!("@{}", file.display()),
            &format!("https://127.0.0.1:{}/upload", backend.addr.port()),
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert!(err.contains("HTTP/1.1 100 Continue"), "{err}");
    assert_eq!(
        String::from_utf8(body).unwrap(),
        format!("got {}", 20 * 1024 * 1024)
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn an_untrusted_upstream_gets_502_with_the_reason_unless_insecure() {
    let backend_ca = TestCa::new();
    let backend = tls_backend(&backend_ca).await;
    let url = format!("https://127.0.0.1:{}/x", backend.addr.port());
    let (proxy, dir) = intercepting_proxy(&[], false, all()).await;
    let (ok, body, err) = curl_trusting_ferryman(&proxy, &dir, &["-w", "%{http_code}", &url]).await;
    assert!(ok, "{err}");
    let text = String::from_utf8(body).unwrap();
    assert!(
        text.contains("UnknownIssuer") && text.ends_with("502"),
        "{text}"
    );
    proxy.shutdown().await;

    let (insecure, dir) = intercepting_proxy(&[], true, all()).await;
    let (ok, body, err) = curl_trusting_ferryman(&insecure, &dir, &[&url]).await;
    assert!(ok, "{err}");
    assert!(String::from_utf8(body).unwrap().starts_with("secure /x"));
    insecure.shutdown().await;
}

/// CONNECT, then a TLS handshake trusting only `roots`; Ok(body of GET /pin).
async fn pinned_get(
    proxy: std::net::SocketAddr,
    target: std::net::SocketAddr,
    roots: &TestCa,
) -> Result<String, String> {
    let raw = tunnel(proxy, target).await;
    let connector = tokio_rustls::TlsConnector::from(roots.client_config());
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = connector
        .connect(name, raw.stream)
        .await
        .map_err(|e| e.to_string())?;
    tls.write_all(b"GET /pin HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer).await;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

#[tokio::test]
async fn a_pinning_client_is_passed_through_from_its_next_connection() {
    let backend_ca = TestCa::new();
    let backend = tls_backend(&backend_ca).await;
    let rules = InterceptConfig {
        auto_passthrough: true,
        ..InterceptConfig::default()
    };
    let (proxy, _dir) = intercepting_proxy(&[backend_ca.pem_path()], false, rules).await;
    let first = pinned_get(proxy.local_addr(), backend.addr, &backend_ca).await;
    assert!(
        first.is_err(),
        "the pinning client refuses ferryman's certificate: {first:?}"
    );
    let second = within(
        LIMIT,
        "second try",
        pinned_get(proxy.local_addr(), backend.addr, &backend_ca),
    )
    .await
    .expect("passed through untouched");
    assert!(
        second.contains("secure /pin via=\r\n") || second.ends_with("secure /pin via="),
        "not intercepted: {second}"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn without_auto_passthrough_a_pinning_client_keeps_failing() {
    let backend_ca = TestCa::new();
    let backend = tls_backend(&backend_ca).await;
    let (proxy, _dir) = intercepting_proxy(&[backend_ca.pem_path()], false, all()).await;
    for _ in 0..2 {
        assert!(pinned_get(proxy.local_addr(), backend.addr, &backend_ca)
            .await
            .is_err());
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_server_that_speaks_first_reaches_the_client_at_once() {
    let backend = RawBackend::start(|mut conn, _| async move {
        conn.send(b"220 banner from the server\r\n").await;
        let echoed = conn.read_exact(4).await;
        conn.send(&echoed).await;
    })
    .await;
    let (proxy, _dir) = intercepting_proxy(&[], false, all()).await;
    let mut raw = tunnel(proxy.local_addr(), backend.addr).await;
    let banner = within(LIMIT, "the banner", raw.read_exact(28)).await;
    assert_eq!(banner, b"220 banner from the server\r\n");
    raw.send(b"EHLO").await;
    assert_eq!(within(LIMIT, "echo", raw.read_exact(4)).await, b"EHLO");
    drop(raw);
    proxy.shutdown().await;
}

#[tokio::test]
async fn plain_http_inside_connect_is_intercepted_too() {
    let backend = Backend::start(|req| async move {
        let via = req
            .headers()
            .get("via")
            .map_or("", |v| v.to_str().unwrap_or(""))
            .to_string();
        Response::new(full(format!("{} via={via}", req.uri().path())))
    })
    .await;
    let (proxy, _dir) = intercepting_proxy(&[], false, all()).await;
    let mut raw = tunnel(proxy.local_addr(), backend.addr).await;
    for path in ["/one", "/two"] {
        raw.send(format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", backend.addr).as_bytes())
            .await;
        let (head, body) = within(LIMIT, "answer", raw.read_response(false)).await;
        assert_eq!(head.status, 200);
        let body = String::from_utf8(body.unwrap()).unwrap();
        assert!(
            body.starts_with(&format!("{path} via=1.1 ferryman-")),
            "{body}"
        );
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn mode_none_leaves_tunnels_alone() {
    let backend_ca = TestCa::new();
    let backend = tls_backend(&backend_ca).await;
    let rules = InterceptConfig {
        mode: InterceptMode::None,
        ..InterceptConfig::default()
    };
    let (proxy, _dir) = intercepting_proxy(&[], false, rules).await;
    let body = pinned_get(proxy.local_addr(), backend.addr, &backend_ca)
        .await
        .expect("end-to-end TLS");
    assert!(body.contains("secure /pin via="), "{body}");
    assert!(!body.contains("ferryman"), "{body}");
    proxy.shutdown().await;
}

#[tokio::test]
async fn websocket_over_intercepted_tls_echoes() {
    use tokio_tungstenite::tungstenite::protocol::Role;

    let backend_ca = TestCa::new();
    let backend = Backend::start_tls(
        backend_ca.server_config(&[b"http/1.1"]),
        ferryman_testkit::backend::websocket_echo,
    )
    .await;
    let (proxy, dir) = intercepting_proxy(&[backend_ca.pem_path()], false, all()).await;
    let mut tls = intercepted_tls(&proxy, &dir, backend.addr).await;
    tls.write_all(
        b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(tls, Role::Client, None).await;
    ferryman_testkit::websocket_roundtrip(&mut ws, &["over", "tls"]).await;
    ws.close(None).await.unwrap();
    drop(ws);
    proxy.shutdown().await;
}

/// CONNECT to `target` through `proxy`, then TLS trusting only ferryman's CA.
async fn intercepted_tls(
    proxy: &ferryman_proxy::RunningProxy,
    dir: &tempfile::TempDir,
    target: std::net::SocketAddr,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let raw = tunnel(proxy.local_addr(), target).await;
    common::tls_trusting_ferryman(dir, "127.0.0.1", raw.stream).await
}

#[tokio::test]
async fn server_sent_events_arrive_one_by_one_inside_interception() {
    let backend_ca = TestCa::new();
    let (handler, mut feed_rx) = ferryman_testkit::backend::event_stream();
    let backend = Backend::start_tls(backend_ca.server_config(&[b"http/1.1"]), handler).await;
    let (proxy, dir) = intercepting_proxy(&[backend_ca.pem_path()], false, all()).await;
    let tls = intercepted_tls(&proxy, &dir, backend.addr).await;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("/events")
        .header("host", "127.0.0.1")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = sender.send_request(req).await.unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body();
    let events = feed_rx.recv().await.unwrap();
    for n in 1..=3 {
        let event = format!("data: event {n}\n\n");
        events
            .send(Ok(bytes::Bytes::from(event.clone())))
            .await
            .unwrap();
        // The next event is only produced once this one reached the client.
        let frame = within(LIMIT, "the event at the client", body.frame())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(frame.into_data().unwrap(), event.as_bytes());
    }
    drop(events);
    drop(body);
    drop(sender);
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_client_speaking_a_text_protocol_first_keeps_a_plain_tunnel() {
    const BANNER: &[u8] = b"SSH-2.0-client\r\n";
    // Waits for the client's banner before saying anything.
    let backend = RawBackend::start(|mut conn, _| async move {
        let banner = conn.read_exact(BANNER.len()).await;
        conn.send(&banner).await;
    })
    .await;
    let (proxy, _dir) = intercepting_proxy(&[], false, all()).await;
    let mut raw = tunnel(proxy.local_addr(), backend.addr).await;
    raw.send(BANNER).await;
    assert_eq!(
        within(LIMIT, "the echo", raw.read_exact(BANNER.len())).await,
        BANNER
    );
    drop(raw);
    proxy.shutdown().await;
}

/// A client that CONNECTs to an address and names the server in SNI gets
/// the upstream checked against that name, as without ferryman; the name
/// in CONNECT alone would fail (the certificate does not cover the address).
#[tokio::test]
async fn upstream_tls_is_checked_against_the_client_sni() {
    let ca = TestCa::new();
    let backend = Backend::start_tls(
        ca.server_config_for("named.test", false, &[b"http/1.1"]),
        |req| async move { Response::new(full(format!("named {}", req.uri().path()))) },
    )
    .await;
    let (proxy, dir) = intercepting_proxy(&[ca.pem_path()], false, all()).await;
    let raw = tunnel(proxy.local_addr(), backend.addr).await;
    let mut tls = common::tls_trusting_ferryman(&dir, "named.test", raw.stream).await;
    let request = b"GET /sni HTTP/1.1\r\nHost: named.test\r\nConnection: close\r\n\r\n";
    let answer = String::from_utf8(common::request_over(&mut tls, request).await).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("named /sni"), "{answer}");
    proxy.shutdown().await;
}

/// A client that leads with AES-256 (rustls's own order) gets AES-128-GCM,
/// cheaper for both ends; one that leads with ChaCha20 (no AES hardware,
/// most likely) gets ChaCha20.
#[tokio::test]
async fn the_client_gets_aes_128_gcm_unless_it_leads_with_chacha20() {
    use rustls::CipherSuite;
    let ca = TestCa::new();
    let backend = tls_backend(&ca).await;
    let (proxy, dir) = intercepting_proxy(&[ca.pem_path()], false, all()).await;
    let mut chacha_first = rustls::crypto::ring::default_provider();
    chacha_first
        .cipher_suites
        .sort_by_key(|s| s.suite() != CipherSuite::TLS13_CHACHA20_POLY1305_SHA256);
    for (provider, expected) in [
        (
            rustls::crypto::ring::default_provider(),
            CipherSuite::TLS13_AES_128_GCM_SHA256,
        ),
        (chacha_first, CipherSuite::TLS13_CHACHA20_POLY1305_SHA256),
    ] {
        let raw = tunnel(proxy.local_addr(), backend.addr).await;
        let mut tls = common::tls_trusting_ferryman_with(
            &dir,
            "127.0.0.1",
            raw.stream,
            &[b"http/1.1"],
            provider,
        )
        .await;
        let suite = tls.get_ref().1.negotiated_cipher_suite().map(|s| s.suite());
        assert_eq!(suite, Some(expected));
        let request = b"GET /suite HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
        let answer = String::from_utf8(common::request_over(&mut tls, request).await).unwrap();
        assert!(answer.contains("secure /suite"), "{answer}");
    }
    proxy.shutdown().await;
}
