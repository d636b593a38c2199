//! The upstream client: connection reuse, the per-host cap, idle expiry,
//! the one safe retry, and errors mapped to 502/504.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{curl, proxy, proxy_with, LIMIT};
use ferryman_testkit::backend::{full, Backend, RawBackend};
use ferryman_testkit::raw::Raw;
use ferryman_testkit::{eventually, within};
use http::Response;

async fn get(proxy: std::net::SocketAddr, method: &str, url: &str) -> (u16, Vec<u8>) {
    let mut raw = Raw::connect(proxy).await;
    let body = if method == "POST" {
        "Content-Length: 4\r\n\r\nbody"
    } else {
        "\r\n"
    };
    raw.send(format!("{method} {url} HTTP/1.1\r\nHost: b\r\n{body}").as_bytes())
        .await;
    let (head, body) = within(LIMIT, "an answer", raw.read_response(false)).await;
    (head.status, body.unwrap_or_else(|partial| partial))
}

#[tokio::test]
async fn sequential_requests_from_different_clients_share_one_upstream_connection() {
    let backend = Backend::start(|_| async { Response::new(full("ok")) }).await;
    let proxy = proxy().await;
    let proxy_url = format!("http://{}", proxy.local_addr());
    for _ in 0..3 {
        let (ok, body, _) = curl(&["-x", &proxy_url, &backend.url("/")]).await;
        assert!(ok);
        assert_eq!(body, b"ok");
    }
    assert_eq!(backend.connections(), 1);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_host_cap_bounds_open_connections() {
    let (backend, release) = Backend::held("ok").await;
    let proxy = proxy_with(|_, u| u.max_connections_per_host = 2).await;
    let requests: Vec<_> = (0..5)
        .map(|_| {
            let url = backend.url("/");
            let addr = proxy.local_addr();
            tokio::spawn(async move { get(addr, "GET", &url).await })
        })
        .collect();
    eventually(LIMIT, "two requests held at the backend", || {
        backend.requests() == 2
    })
    .await;
    // The other three wait for a connection to come back to the pool.
    release.add_permits(5);
    for r in requests {
        assert_eq!(r.await.unwrap().0, 200);
    }
    assert_eq!(backend.connections(), 2, "never more than the cap");
    proxy.shutdown().await;
}

#[tokio::test]
async fn idle_upstream_connections_are_closed_after_the_idle_timeout() {
    let backend = Backend::start(|_| async { Response::new(full("ok")) }).await;
    let proxy = proxy_with(|_, u| u.idle_timeout = Duration::from_millis(200)).await;
    assert_eq!(
        get(proxy.local_addr(), "GET", &backend.url("/")).await.0,
        200
    );
    assert_eq!(backend.connections(), 1);
    within(
        LIMIT,
        "the idle connection closed",
        backend.wait_open(|n| n == 0),
    )
    .await;
    proxy.shutdown().await;
}

/// Answers the first request on each connection, then reads the second one
/// and hangs up without a word: the keep-alive race of every real server.
async fn hang_up_on_second_request(posts: Arc<AtomicUsize>) -> RawBackend {
    RawBackend::start(move |mut conn, _| {
        let posts = posts.clone();
        async move {
            let mut served = 0;
            while let Some(head) = conn.read_request_head().await {
                if head.method == "POST" {
                    posts.fetch_add(1, Ordering::SeqCst);
                }
                conn.read_exact(head.content_length()).await;
                if served == 1 {
                    return;
                }
                served += 1;
                conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
            }
        }
    })
    .await
}

#[tokio::test]
async fn an_idempotent_request_is_retried_once_on_a_fresh_connection() {
    let posts = Arc::new(AtomicUsize::new(0));
    let backend = hang_up_on_second_request(posts).await;
    let proxy = proxy().await;
    let url = backend.url("/");
    assert_eq!(
        get(proxy.local_addr(), "GET", &url).await,
        (200, b"ok".to_vec())
    );
    assert_eq!(
        get(proxy.local_addr(), "GET", &url).await,
        (200, b"ok".to_vec())
    );
    assert_eq!(backend.connections(), 2, "the retry used a new connection");
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_sent_post_is_never_retried() {
    let posts = Arc::new(AtomicUsize::new(0));
    let backend = hang_up_on_second_request(posts.clone()).await;
    let proxy = proxy().await;
    let url = backend.url("/");
    assert_eq!(get(proxy.local_addr(), "GET", &url).await.0, 200);
    let (status, body) = get(proxy.local_addr(), "POST", &url).await;
    assert_eq!(status, 502);
    assert!(String::from_utf8(body).unwrap().contains("closed"));
    assert_eq!(
        posts.load(Ordering::SeqCst),
        1,
        "the POST went out exactly once"
    );
    assert_eq!(backend.connections(), 1);
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_dead_pooled_connection_is_not_handed_out() {
    // Answers one request per connection, then closes it without saying so.
    let backend = RawBackend::start(|mut conn, _| async move {
        if conn.read_request_head().await.is_some() {
            conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .await;
        }
    })
    .await;
    let proxy = proxy().await;
    for _ in 0..3 {
        assert_eq!(
            get(proxy.local_addr(), "GET", &backend.url("/")).await,
            (200, b"ok".to_vec())
        );
    }
    assert_eq!(backend.connections(), 3);
    proxy.shutdown().await;
}

#[tokio::test]
async fn unreachable_and_silent_upstreams_map_to_502_and_504() {
    let silent = Backend::start(|_| async {
        std::future::pending::<()>().await;
        Response::new(full(""))
    })
    .await;
    let proxy = proxy_with(|_, u| u.response_header_timeout = Duration::from_millis(300)).await;

    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (status, body) = get(
        proxy.local_addr(),
        "GET",
        &format!("http://127.0.0.1:{closed_port}/"),
    )
    .await;
    assert_eq!(status, 502);
    let reason = String::from_utf8(body).unwrap();
    assert!(
        reason.contains("cannot connect") && reason.ends_with('\n'),
        "{reason}"
    );
    assert_eq!(reason.lines().count(), 1);

    let (status, body) = get(proxy.local_addr(), "GET", &silent.url("/")).await;
    assert_eq!(status, 504);
    assert!(String::from_utf8(body)
        .unwrap()
        .contains("no response head"));
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_connect_that_never_completes_times_out_with_504() {
    // A listener whose accept queue is full: further SYNs go unanswered.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        let attempt = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr),
        )
        .await;
        match attempt {
            Ok(Ok(stream)) => fillers.push(stream),
            _ => break,
        }
    }
    let proxy = proxy_with(|_, u| u.connect_timeout = Duration::from_millis(300)).await;
    let (status, body) = get(proxy.local_addr(), "GET", &format!("http://{addr}/")).await;
    assert_eq!(status, 504, "{}", String::from_utf8_lossy(&body));
    drop(listener);
    proxy.shutdown().await;
}
