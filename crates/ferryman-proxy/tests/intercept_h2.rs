//! HTTP/2 inside interception: the client is offered what the upstream
//! chose (ALPN mirrored), and where the two sides speak different versions
//! each request is translated.

mod common;

use bytes::Bytes;
use common::{curl_trusting_ferryman, intercepting_proxy, tunnel, LIMIT};
use ferryman_proxy::InterceptConfig;
use ferryman_testkit::backend::{channel_body, full, Backend};
use ferryman_testkit::tls::TestCa;
use ferryman_testkit::{pattern, within};
use http::{HeaderMap, HeaderValue, Request, Response, Version};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// A TLS backend offering `alpn` that answers with the version it saw and
/// the path, and counts the bytes of an upload.
async fn versioned_backend(ca: &TestCa, alpn: &[&[u8]]) -> Backend {
    Backend::start_tls(ca.server_config(alpn), |req| async move {
        let version = req.version();
        let path = req.uri().path().to_string();
        let body = req.into_body().collect().await.map(|b| b.to_bytes().len());
        Response::new(full(format!("{version:?} {path} {}", body.unwrap_or(0))))
    })
    .await
}

/// An HTTP/2 client inside an intercepted tunnel to `target`, having offered
/// `alpn`; panics unless h2 was negotiated.
async fn h2_inside(
    proxy: &ferryman_proxy::RunningProxy,
    dir: &tempfile::TempDir,
    target: std::net::SocketAddr,
    alpn: &[&[u8]],
) -> http2::SendRequest<Full<Bytes>> {
    let raw = tunnel(proxy.local_addr(), target).await;
    let tls = common::tls_trusting_ferryman_offering(dir, "127.0.0.1", raw.stream, alpn).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

fn get(target: std::net::SocketAddr, path: &str) -> Request<Full<Bytes>> {
    Request::get(format!("https://127.0.0.1:{}{path}", target.port()))
        .body(Full::default())
        .unwrap()
}

#[tokio::test]
async fn the_client_is_offered_what_the_upstream_chose() {
    let ca = TestCa::new();
    let h2 = versioned_backend(&ca, &[b"h2", b"http/1.1"]).await;
    let h1 = versioned_backend(&ca, &[b"http/1.1"]).await;
    let (proxy, dir) =
        intercepting_proxy(&[ca.pem_path()], false, InterceptConfig::default()).await;
    // (curl's flag, backend, what curl negotiated, what the backend saw)
    let cases = [
        ("--http2", &h2, "/a", "2", "HTTP/2.0 /a 0"),
        ("--http2", &h1, "/b", "1.1", "HTTP/1.1 /b 0"),
        // An HTTP/1.1 client to a host already reached over HTTP/2 shares
        // that connection: its request is translated.
        ("--http1.1", &h2, "/c", "1.1", "HTTP/2.0 /c 0"),
        // So does the next HTTP/2 client, without another handshake upstream.
        ("--http2", &h2, "/d", "2", "HTTP/2.0 /d 0"),
    ];
    for (flag, backend, path, negotiated, seen) in cases {
        let url = format!("https://127.0.0.1:{}{path}", backend.addr.port());
        let (ok, body, err) =
            curl_trusting_ferryman(&proxy, &dir, &[flag, "-w", "\n%{http_version}", &url]).await;
        assert!(ok, "{err}");
        let text = String::from_utf8(body).unwrap();
        assert_eq!(text, format!("{seen}\n{negotiated}"), "{flag} {path}");
    }
    assert_eq!(h2.tls_handshakes(), 1, "one shared HTTP/2 connection");
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_client_speaking_only_http2_is_translated_for_an_http1_upstream() {
    let ca = TestCa::new();
    let backend = versioned_backend(&ca, &[b"http/1.1"]).await;
    let (proxy, dir) =
        intercepting_proxy(&[ca.pem_path()], false, InterceptConfig::default()).await;
    let mut sender = h2_inside(&proxy, &dir, backend.addr, &[b"h2"]).await;
    for path in ["/one", "/two"] {
        let response = sender.send_request(get(backend.addr, path)).await.unwrap();
        assert_eq!(response.version(), Version::HTTP_2);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, format!("HTTP/1.1 {path} 0"));
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn trailers_and_uploads_cross_http2_on_both_sides() {
    let ca = TestCa::new();
    let backend = Backend::start_tls(ca.server_config(&[b"h2"]), |req| async move {
        let version = format!("{:?}", req.version());
        let received = req.into_body().collect().await.map(|b| b.to_bytes().len());
        let (frames, body) = channel_body();
        tokio::spawn(async move {
            let got = format!("got {}", received.unwrap_or(0));
            let _ = frames.send(Ok(Bytes::from(got))).await;
        });
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        Response::builder()
            .header("x-upstream-version", version)
            .body(
                body.with_trailers(async move { Some(Ok(trailers)) })
                    .boxed_unsync(),
            )
            .unwrap()
    })
    .await;
    let (proxy, dir) =
        intercepting_proxy(&[ca.pem_path()], false, InterceptConfig::default()).await;
    let mut sender = h2_inside(&proxy, &dir, backend.addr, &[b"h2", b"http/1.1"]).await;
    let upload = Request::post(format!("https://127.0.0.1:{}/up", backend.addr.port()))
        .body(Full::new(Bytes::from(pattern(20 * 1024 * 1024))))
        .unwrap();
    let response = within(LIMIT, "the upload's answer", sender.send_request(upload))
        .await
        .unwrap();
    assert_eq!(response.headers()["x-upstream-version"], "HTTP/2.0");
    let collected = within(LIMIT, "the body", response.into_body().collect())
        .await
        .unwrap();
    assert_eq!(
        collected.trailers().map(|t| t["grpc-status"].clone()),
        Some(HeaderValue::from_static("0"))
    );
    assert_eq!(collected.to_bytes(), format!("got {}", 20 * 1024 * 1024));
    proxy.shutdown().await;
}
