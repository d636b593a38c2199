//! Plain HTTP forwarding: real clients, header semantics, keep-alive,
//! pipelining, local answers.

mod common;

use common::{curl, proxy, proxy_with, proxy_with_upstream_tls};
use ferryman_testkit::backend::{empty, full, Backend};
use ferryman_testkit::raw::Raw;
use ferryman_testkit::tls::TestCa;
use http::{HeaderMap, Response, StatusCode};
use tokio::sync::mpsc;

/// A backend that reports each request's headers and answers with its path.
async fn recording_backend() -> (Backend, mpsc::UnboundedReceiver<HeaderMap>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let backend = Backend::start(move |req| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(req.headers().clone());
            Response::new(full(req.uri().path().to_string()))
        }
    })
    .await;
    (backend, rx)
}

#[tokio::test]
async fn curl_gets_through_the_proxy() {
    let (backend, _) = recording_backend().await;
    let proxy = proxy().await;
    let proxy_url = format!("http://{}", proxy.local_addr());
    let (ok, body, err) = curl(&["-x", &proxy_url, &backend.url("/hello")]).await;
    assert!(ok, "{err}");
    assert_eq!(body, b"/hello");
    proxy.shutdown().await;
}

#[tokio::test]
async fn hop_by_hop_fields_are_removed_both_ways_and_end_to_end_ones_kept() {
    let (tx, mut seen) = mpsc::unbounded_channel();
    let backend = Backend::start(move |req| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(req.headers().clone());
            Response::builder()
                .header("connection", "x-bar")
                .header("x-bar", "secret")
                .header("keep-alive", "timeout=5")
                .header("set-cookie", "a=1")
                .header("set-cookie", "b=2")
                .header("content-encoding", "gzip")
                .body(full(&b"\x1f\x8b not really gzip"[..]))
                .unwrap()
        }
    })
    .await;
    let proxy = proxy().await;
    let mut raw = Raw::connect(proxy.local_addr()).await;
    raw.send(
        format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: keep-alive, X-Foo\r\nX-Foo: 1\r\n\
             Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: gzip, deflate\r\n\
             Accept-Encoding: gzip, br\r\nX-Keep: yes\r\n\r\n",
            backend.url("/h"),
            backend.addr
        )
        .as_bytes(),
    )
    .await;
    let (head, body) = raw.read_response(false).await;
    assert_eq!(head.status, 200);
    assert_eq!(body.unwrap(), b"\x1f\x8b not really gzip");

    let up = seen.recv().await.unwrap();
    for gone in [
        "x-foo",
        "keep-alive",
        "proxy-connection",
        "te",
        "connection",
    ] {
        assert!(
            !up.contains_key(gone),
            "{gone} reached the upstream: {up:?}"
        );
    }
    assert_eq!(up["accept-encoding"], "gzip, br");
    assert_eq!(up["x-keep"], "yes");
    assert_eq!(up["host"], backend.addr.to_string());
    assert!(up["via"].to_str().unwrap().starts_with("1.1 ferryman-"));

    assert_eq!(head.header("x-bar"), None);
    assert_eq!(head.header("keep-alive"), None);
    assert_eq!(head.all("set-cookie"), ["a=1", "b=2"]);
    assert_eq!(head.header("content-encoding"), Some("gzip"));
    assert!(head.header("via").unwrap().contains("ferryman-"));
    proxy.shutdown().await;
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_with_bodyless_responses_framed() {
    let backend = Backend::start(|req| async move {
        let status = match req.uri().path() {
            "/204" => StatusCode::NO_CONTENT,
            "/304" => StatusCode::NOT_MODIFIED,
            _ => StatusCode::OK,
        };
        let mut response = Response::new(full(req.uri().path().to_string()));
        if status != StatusCode::OK {
            response = Response::new(empty());
        }
        *response.status_mut() = status;
        response
    })
    .await;
    let proxy = proxy().await;
    let mut raw = Raw::connect(proxy.local_addr()).await;
    let mut batch = String::new();
    for (method, path) in [
        ("GET", "/1"),
        ("HEAD", "/head"),
        ("GET", "/204"),
        ("GET", "/304"),
        ("GET", "/5"),
    ] {
        batch += &format!("{method} {} HTTP/1.1\r\nHost: b\r\n\r\n", backend.url(path));
    }
    raw.send(batch.as_bytes()).await;
    let (h, b) = raw.read_response(false).await;
    assert_eq!((h.status, b.unwrap()), (200, b"/1".to_vec()));
    let (h, _) = raw.read_response(true).await;
    assert_eq!(h.status, 200);
    assert_eq!(
        h.header("content-length"),
        Some("5"),
        "HEAD keeps the length of the GET"
    );
    let (h, _) = raw.read_response(false).await;
    assert_eq!(h.status, 204);
    let (h, _) = raw.read_response(false).await;
    assert_eq!(h.status, 304);
    let (h, b) = raw.read_response(false).await;
    assert_eq!((h.status, b.unwrap()), (200, b"/5".to_vec()));
    assert_eq!(
        backend.connections(),
        1,
        "one pooled upstream connection served all five"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn http10_clients_get_close_delimited_or_keep_alive_answers() {
    let (backend, _) = recording_backend().await;
    let proxy = proxy().await;

    let mut raw = Raw::connect(proxy.local_addr()).await;
    raw.send(format!("GET {} HTTP/1.0\r\n\r\n", backend.url("/ten")).as_bytes())
        .await;
    let (head, body) = raw.read_response(false).await;
    assert_eq!(head.status, 200);
    assert_eq!(body.unwrap(), b"/ten");
    assert!(
        raw.closed().await,
        "HTTP/1.0 without keep-alive ends the connection"
    );

    let mut raw = Raw::connect(proxy.local_addr()).await;
    for path in ["/a", "/b"] {
        raw.send(
            format!(
                "GET {} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
                backend.url(path)
            )
            .as_bytes(),
        )
        .await;
        let (head, body) = raw.read_response(false).await;
        assert_eq!(head.status, 200);
        assert_eq!(body.unwrap(), path.as_bytes());
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn origin_form_requests_get_a_local_page_not_a_loop() {
    let proxy = proxy().await;
    let (ok, body, _) = curl(&[&format!("http://{}/", proxy.local_addr())]).await;
    assert!(ok);
    let page = String::from_utf8(body).unwrap();
    assert!(
        page.contains("ferryman") && page.contains("curl -x"),
        "{page}"
    );
    let (_, body, _) = curl(&[
        "-w",
        "%{http_code}",
        &format!("http://{}/x", proxy.local_addr()),
    ])
    .await;
    assert!(String::from_utf8(body).unwrap().ends_with("404"));
    proxy.shutdown().await;
}

#[tokio::test]
async fn requests_addressed_to_the_proxy_itself_get_508() {
    let (backend, mut seen) = recording_backend().await;
    let proxy = proxy().await;
    let proxy_url = format!("http://{}", proxy.local_addr());

    let (_, body, _) = curl(&[
        "-x",
        &proxy_url,
        "-w",
        "%{http_code}",
        &format!("{proxy_url}/x"),
    ])
    .await;
    assert!(String::from_utf8(body).unwrap().ends_with("508"));

    // A request that already carries this proxy's Via entry came back to it.
    let (ok, _, _) = curl(&["-x", &proxy_url, &backend.url("/")]).await;
    assert!(ok);
    let via = seen.recv().await.unwrap()["via"]
        .to_str()
        .unwrap()
        .to_string();
    let (_, body, _) = curl(&[
        "-x",
        &proxy_url,
        "-H",
        &format!("Via: {via}"),
        "-w",
        "%{http_code}",
        &backend.url("/"),
    ])
    .await;
    assert!(String::from_utf8(body).unwrap().ends_with("508"));
    assert_eq!(
        backend.requests(),
        1,
        "the looping request was not forwarded"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn proxy_authentication() {
    let (backend, mut seen) = recording_backend().await;
    let proxy = proxy_with(|p, _| p.auth = vec!["alice:s3cret".into()]).await;
    let proxy_url = format!("http://{}", proxy.local_addr());

    let mut raw = Raw::connect(proxy.local_addr()).await;
    raw.send(format!("GET {} HTTP/1.1\r\nHost: b\r\n\r\n", backend.url("/")).as_bytes())
        .await;
    let (head, _) = raw.read_response(false).await;
    assert_eq!(head.status, 407);
    assert_eq!(
        head.header("proxy-authenticate"),
        Some("Basic realm=\"ferryman\"")
    );

    raw.send(format!("CONNECT {} HTTP/1.1\r\nHost: b\r\n\r\n", backend.addr).as_bytes())
        .await;
    let (head, _) = raw.read_response(false).await;
    assert_eq!(head.status, 407);

    let (_, body, _) = curl(&[
        "-x",
        &proxy_url,
        "-U",
        "alice:wrong",
        "-w",
        "%{http_code}",
        &backend.url("/"),
    ])
    .await;
    assert!(String::from_utf8(body).unwrap().ends_with("407"));

    let (ok, body, err) =
        curl(&["-x", &proxy_url, "-U", "alice:s3cret", &backend.url("/in")]).await;
    assert!(ok, "{err}");
    assert_eq!(body, b"/in");
    assert!(!seen
        .recv()
        .await
        .unwrap()
        .contains_key("proxy-authorization"));
    assert_eq!(backend.requests(), 1);
    proxy.shutdown().await;
}

#[tokio::test]
async fn credentials_in_the_url_never_reach_the_host_header() {
    let (backend, mut seen) = recording_backend().await;
    let proxy = proxy().await;
    let mut raw = Raw::connect(proxy.local_addr()).await;
    let url = format!("http://user:secret@{}/private", backend.addr);
    raw.send(format!("GET {url} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await;
    let (head, body) = raw.read_response(false).await;
    assert_eq!((head.status, body.unwrap()), (200, b"/private".to_vec()));
    let up = seen.recv().await.unwrap();
    assert_eq!(up["host"], backend.addr.to_string());
    assert!(!format!("{up:?}").contains("secret"));
    proxy.shutdown().await;
}

#[tokio::test]
async fn x_forwarded_for_when_configured() {
    let (backend, mut seen) = recording_backend().await;
    let proxy = proxy_with(|p, _| p.x_forwarded_for = true).await;
    let (ok, _, _) = curl(&[
        "-x",
        &format!("http://{}", proxy.local_addr()),
        &backend.url("/"),
    ])
    .await;
    assert!(ok);
    assert_eq!(seen.recv().await.unwrap()["x-forwarded-for"], "127.0.0.1");
    proxy.shutdown().await;
}

async fn tls_backend(ca: &TestCa) -> Backend {
    Backend::start_tls(ca.server_config(&[b"http/1.1"]), |req| async move {
        Response::new(full(format!("secure {}", req.uri().path())))
    })
    .await
}

async fn get_absolute(proxy: std::net::SocketAddr, url: &str) -> (u16, String) {
    let mut raw = Raw::connect(proxy).await;
    raw.send(format!("GET {url} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await;
    let (head, body) = raw.read_response(false).await;
    (head.status, String::from_utf8(body.unwrap()).unwrap())
}

#[tokio::test]
async fn https_urls_reach_a_trusted_upstream_over_pooled_tls() {
    let ca = TestCa::new();
    let backend = tls_backend(&ca).await;
    let proxy = proxy_with_upstream_tls(&[ca.pem_path()], false).await;
    let url = format!("https://127.0.0.1:{}/a", backend.addr.port());
    for _ in 0..2 {
        assert_eq!(
            get_absolute(proxy.local_addr(), &url).await,
            (200, "secure /a".into())
        );
    }
    assert_eq!(backend.connections(), 1, "the TLS connection was reused");
    proxy.shutdown().await;
}

#[tokio::test]
async fn an_untrusted_upstream_certificate_gets_502_with_the_reason() {
    let ca = TestCa::new();
    let backend = tls_backend(&ca).await;
    let proxy = proxy_with_upstream_tls(&[], false).await;
    let url = format!("https://127.0.0.1:{}/a", backend.addr.port());
    let (status, reason) = get_absolute(proxy.local_addr(), &url).await;
    assert_eq!(status, 502);
    assert!(
        reason.contains("TLS with 127.0.0.1 failed") && reason.contains("UnknownIssuer"),
        "{reason}"
    );
    proxy.shutdown().await;

    let insecure = proxy_with_upstream_tls(&[], true).await;
    assert_eq!(
        get_absolute(insecure.local_addr(), &url).await,
        (200, "secure /a".into())
    );
    insecure.shutdown().await;
}

#[tokio::test]
async fn other_schemes_are_refused_with_a_reason() {
    let proxy = proxy().await;
    let (status, reason) = get_absolute(proxy.local_addr(), "ftp://127.0.0.1:1/").await;
    assert_eq!(status, 400);
    assert!(reason.contains("http:// and https://"), "{reason}");
    proxy.shutdown().await;
}

/// Servers may answer before reading the request body, in more than one
/// write, and close (an HTTP/1.0 server, a 413, one that knows nothing of
/// 100-continue): the answer still reaches the client whole, also when the
/// body was held for a 100 that never came.
#[tokio::test]
async fn an_answer_given_before_the_body_was_read_is_relayed_whole() {
    let backend = ferryman_testkit::backend::RawBackend::start(|mut raw, _| async move {
        raw.read_request_head().await;
        raw.send(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n")
            .await;
        tokio::task::yield_now().await;
        raw.send(b"ok").await;
    })
    .await;
    let proxy = proxy().await;
    let url = backend.url("/early");
    let framings = [
        "Content-Length: 0\r\n\r\n",
        "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "Content-Length: 5\r\n\r\nhello",
        "Transfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n",
    ];
    for framing in framings.iter().flat_map(|f| std::iter::repeat_n(f, 10)) {
        let mut raw = Raw::connect(proxy.local_addr()).await;
        raw.send(format!("PUT {url} HTTP/1.1\r\nHost: x\r\n{framing}").as_bytes())
            .await;
        let (head, body) = raw.read_response(false).await;
        assert_eq!(head.status, 200, "{framing:?}");
        assert_eq!(body.as_deref(), Ok(&b"ok"[..]), "{framing:?}");
    }
    proxy.shutdown().await;
}
