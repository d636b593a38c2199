//! `Expect: 100-continue` end to end: the client's body is held until the
//! upstream asks for it, and never read when the upstream answers first.

mod common;

use common::{curl, proxy, LIMIT};
use ferryman_testkit::backend::{full, Backend, RawBackend};
use ferryman_testkit::raw::Raw;
use ferryman_testkit::{pattern, within};
use http::{Response, StatusCode};
use http_body_util::BodyExt;

const SIZE: usize = 20 * 1024 * 1024;

/// Answers with the length and a checksum of what it received.
async fn digest_backend() -> Backend {
    Backend::start(|req| async move {
        let body = req.into_body().collect().await.map(|b| b.to_bytes());
        match body {
            Ok(bytes) => Response::new(full(format!("{}:{}", bytes.len(), checksum(&bytes)))),
            Err(e) => Response::new(full(format!("error: {e}"))),
        }
    })
    .await
}

fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_20_mib_upload_waits_for_the_relayed_100() {
    let backend = digest_backend().await;
    let proxy = proxy().await;
    let payload = pattern(SIZE);
    let mut raw = Raw::connect(proxy.local_addr()).await;
    raw.send(
        format!(
            "POST {} HTTP/1.1\r\nHost: b\r\nContent-Length: {SIZE}\r\nExpect: 100-continue\r\n\r\n",
            backend.url("/upload")
        )
        .as_bytes(),
    )
    .await;
    let interim = within(LIMIT, "the 100 from upstream", raw.read_head())
        .await
        .unwrap();
    assert_eq!(interim.status, 100);
    raw.send(&payload).await;
    let (head, body) = within(LIMIT, "final response", raw.read_response(false)).await;
    assert_eq!(head.status, 200);
    assert_eq!(
        String::from_utf8(body.unwrap()).unwrap(),
        format!("{SIZE}:{}", checksum(&payload))
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_upload_with_expect_continue() {
    let backend = digest_backend().await;
    let proxy = proxy().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("upload.bin");
    let payload = pattern(SIZE);
    std::fs::write(&file, &payload).unwrap();
    let (ok, body, err) = curl(&[
        "-v",
        "-x",
        &format!("http://{}", proxy.local_addr()),
        "-H",
        "Expect: 100-continue",
        "--data-binary",
        &format!("@{}", file.display()),
        &backend.url("/upload"),
    ])
    .await;
    assert!(ok, "{err}");
    assert!(
        err.contains("HTTP/1.1 100 Continue"),
        "curl saw the 100:\n{err}"
    );
    assert_eq!(
        String::from_utf8(body).unwrap(),
        format!("{SIZE}:{}", checksum(&payload))
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_final_answer_reaches_the_client_without_the_body_being_read() {
    let backend = Backend::start(|req| async move {
        // Decide from the head alone, without touching the body.
        let status = match req.uri().path() {
            "/417" => StatusCode::EXPECTATION_FAILED,
            "/401" => StatusCode::UNAUTHORIZED,
            _ => StatusCode::PAYLOAD_TOO_LARGE,
        };
        let mut response = Response::new(full("no"));
        *response.status_mut() = status;
        response
    })
    .await;
    let proxy = proxy().await;
    for status in [417u16, 401, 413] {
        let mut raw = Raw::connect(proxy.local_addr()).await;
        raw.send(
            format!(
                "PUT {} HTTP/1.1\r\nHost: b\r\nContent-Length: 1000000\r\nExpect: 100-continue\r\n\r\n",
                backend.url(&format!("/{status}"))
            )
            .as_bytes(),
        )
        .await;
        // No 100 first: the proxy never read (so never asked for) the body.
        let (head, body) = within(LIMIT, "the final answer", raw.read_response(false)).await;
        assert_eq!(head.status, status);
        assert_eq!(body.as_deref(), Ok(&b"no"[..]), "the answer's body, whole");
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn without_an_upstream_100_the_body_is_sent_after_the_wait() {
    // An upstream that reads the head, never says 100, and reads the body.
    let backend = RawBackend::start(|mut conn, _| async move {
        let Some(head) = conn.read_request_head().await else {
            return;
        };
        let body = conn.read_exact(head.content_length()).await;
        let answer = format!("got {} bytes", body.len());
        conn.send(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{answer}",
                answer.len()
            )
            .as_bytes(),
        )
        .await;
    })
    .await;
    let proxy = proxy().await;
    let mut raw = Raw::connect(proxy.local_addr()).await;
    raw.send(
        format!(
            "POST {} HTTP/1.1\r\nHost: b\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
            backend.url("/")
        )
        .as_bytes(),
    )
    .await;
    let interim = within(LIMIT, "the 100 after the wait", raw.read_head())
        .await
        .unwrap();
    assert_eq!(interim.status, 100);
    raw.send(b"hello").await;
    let (head, body) = within(LIMIT, "final response", raw.read_response(false)).await;
    assert_eq!(head.status, 200);
    assert_eq!(body.unwrap(), b"got 5 bytes");
    proxy.shutdown().await;
}
