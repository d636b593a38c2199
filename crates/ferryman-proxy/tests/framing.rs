//! Ambiguous framing and oversized heads are refused before anything is
//! forwarded.

mod common;

use common::{proxy, LIMIT};
use ferryman_testkit::backend::{full, Backend};
use ferryman_testkit::raw::Raw;
use ferryman_testkit::within;
use http::Response;

async fn counting_backend() -> Backend {
    Backend::start(|_| async { Response::new(full("reached")) }).await
}

async fn status_of(proxy: std::net::SocketAddr, request: &[u8]) -> u16 {
    let mut raw = Raw::connect(proxy).await;
    raw.send(request).await;
    within(LIMIT, "an answer", raw.read_head())
        .await
        .expect("a response head")
        .status
}

#[tokio::test]
async fn ambiguous_framing_gets_400_and_is_never_forwarded() {
    let backend = counting_backend().await;
    let proxy = proxy().await;
    let url = backend.url("/");
    let cases = [
        format!("POST {url} HTTP/1.1\r\nHost: b\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        format!("POST {url} HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n"),
        format!("POST {url} HTTP/1.1\r\nHost: b\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
        format!("POST {url} HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"),
        format!("POST {url} HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n"),
        format!("POST {url} HTTP/1.1\r\nHost: b\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n"),
        format!("POST {url} HTTP/1.1\r\nHost: b\r\nTransfer-Encoding:\x0bchunked\r\n\r\n0\r\n\r\n"),
        format!("POST {url} HTTP/1.0\r\nHost: b\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    ];
    for case in &cases {
        assert_eq!(
            status_of(proxy.local_addr(), case.as_bytes()).await,
            400,
            "{case:?}"
        );
    }
    assert_eq!(backend.connections(), 0, "nothing was forwarded");
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_smuggled_request_behind_a_valid_one_is_refused() {
    let backend = counting_backend().await;
    let proxy = proxy().await;
    let url = backend.url("/");
    let mut raw = Raw::connect(proxy.local_addr()).await;
    raw.send(
        format!(
            "POST {url} HTTP/1.1\r\nHost: b\r\nContent-Length: 4\r\n\r\nabcd\
             POST {url} HTTP/1.1\r\nHost: b\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    let (first, _) = within(LIMIT, "first answer", raw.read_response(false)).await;
    assert_eq!(first.status, 200);
    let second = within(LIMIT, "second answer", raw.read_head())
        .await
        .unwrap();
    assert_eq!(second.status, 400);
    assert_eq!(backend.requests(), 1);
    proxy.shutdown().await;
}

#[tokio::test]
async fn oversized_heads_get_431() {
    let backend = counting_backend().await;
    let proxy = proxy().await;
    let url = backend.url("/");
    let big = format!(
        "GET {url} HTTP/1.1\r\nHost: b\r\nX-Big: {}\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    assert_eq!(status_of(proxy.local_addr(), big.as_bytes()).await, 431);
    let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let many = format!("GET {url} HTTP/1.1\r\nHost: b\r\n{many}\r\n");
    assert_eq!(status_of(proxy.local_addr(), many.as_bytes()).await, 431);
    assert_eq!(backend.connections(), 0);
    proxy.shutdown().await;
}
