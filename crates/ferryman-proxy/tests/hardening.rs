//! What a hostile or unlucky client cannot do: take a host's every upstream
//! connection, open tunnels past the connection limit, get a response with
//! two framings, reach a port that does not exist, slip a request past the
//! framing guard, or loop back into the proxy through an IPv4-mapped
//! address.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{proxy_with, tunnel, LIMIT};
use ferryman_testkit::backend::{full, Backend, RawBackend};
use ferryman_testkit::raw::Raw;
use ferryman_testkit::{eventually, within};
use http::Response;
use http_body_util::BodyExt;

/// A connection to `proxy` from the loopback address `from`.
async fn connect_from(from: [u8; 4], proxy: SocketAddr) -> Raw {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((from, 0))).unwrap();
    Raw::from(socket.connect(proxy).await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_with_stalled_uploads_cannot_starve_a_third() {
    let backend = Backend::start(|req| async move {
        let got = req.into_body().collect().await.map(|b| b.to_bytes().len());
        Response::new(full(format!("{got:?}")))
    })
    .await;
    let proxy = proxy_with(|p, u| {
        p.request_body_timeout = Duration::from_secs(60);
        // Two clients at their share leave a place for a third.
        u.max_connections_per_host = 5;
        u.max_connections_per_client = 2;
    })
    .await;
    let url = backend.url("/upload");
    let mut stalled = Vec::new();
    for from in [[127, 0, 0, 2], [127, 0, 0, 3]] {
        for _ in 0..3 {
            let mut raw = connect_from(from, proxy.local_addr()).await;
            raw.send(
                format!("POST {url} HTTP/1.1\r\nHost: b\r\nContent-Length: 100\r\n\r\nhalf")
                    .as_bytes(),
            )
            .await;
            stalled.push(raw);
        }
    }
    // Each of the two gets its share, two upstream connections, no more.
    eventually(LIMIT, "four uploads at the origin", || {
        backend.connections() == 4
    })
    .await;
    let mut third = connect_from([127, 0, 0, 4], proxy.local_addr()).await;
    third
        .send(format!("POST {url} HTTP/1.1\r\nHost: b\r\nContent-Length: 2\r\n\r\nok").as_bytes())
        .await;
    let (head, body) = within(
        LIMIT,
        "the third client's answer",
        third.read_response(false),
    )
    .await;
    assert_eq!((head.status, body.unwrap()), (200, b"Ok(2)".to_vec()));
    assert_eq!(
        backend.connections(),
        5,
        "the third got a connection of its own"
    );
    drop(stalled);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_count_against_the_connection_limit() {
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = upstream.local_addr().unwrap();
    let proxy = proxy_with(|p, _| p.max_connections = 3).await;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(tunnel(proxy.local_addr(), target).await);
        upstream.accept().await.unwrap();
    }
    let mut fourth = Raw::connect(proxy.local_addr()).await;
    fourth
        .send(format!("CONNECT {target} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await;
    // Nothing can signal that a CONNECT is *not* being served; a bounded
    // wait is the only way to see it stay queued.
    let early = tokio::time::timeout(Duration::from_millis(300), fourth.read_head()).await;
    assert!(early.is_err(), "a fourth tunnel opened past the limit of 3");
    drop(open.pop());
    let head = within(LIMIT, "the fourth tunnel", fourth.read_head()).await;
    assert_eq!(head.unwrap().status, 200);
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_response_framed_both_ways_is_refused_and_its_connection_not_reused() {
    let backend = RawBackend::start(|mut raw, _| async move {
        while raw.read_request_head().await.is_some() {
            raw.send(
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n\
                  5\r\nhello\r\n0\r\n\r\n",
            )
            .await;
        }
    })
    .await;
    let proxy = common::proxy().await;
    for _ in 0..2 {
        let mut raw = Raw::connect(proxy.local_addr()).await;
        raw.send(format!("GET {} HTTP/1.1\r\nHost: b\r\n\r\n", backend.url("/")).as_bytes())
            .await;
        let (head, body) = raw.read_response(false).await;
        assert_eq!(head.status, 502);
        let body = String::from_utf8_lossy(&body.unwrap()).to_string();
        assert!(
            body.contains("both Transfer-Encoding and Content-Length"),
            "{body}"
        );
    }
    assert_eq!(backend.connections(), 2, "the connection was not reused");
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_port_that_is_not_a_port_is_a_bad_request() {
    let proxy = common::proxy().await;
    for target in [
        "http://127.0.0.1:65616/",
        "http://127.0.0.1:0/",
        "http://h:8x/",
    ] {
        let mut raw = Raw::connect(proxy.local_addr()).await;
        raw.send(format!("GET {target} HTTP/1.1\r\nHost: b\r\n\r\n").as_bytes())
            .await;
        let (head, body) = raw.read_response(false).await;
        let body = String::from_utf8_lossy(&body.unwrap_or_else(|b| b)).to_string();
        assert_eq!(head.status, 400, "{target}: {body}");
        assert!(body.contains("is not a port number"), "{body}");
    }
    let mut raw = Raw::connect(proxy.local_addr()).await;
    raw.send(b"CONNECT 127.0.0.1:65616 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    assert_eq!(raw.read_head().await.unwrap().status, 400);
    proxy.shutdown().await;
}

/// A request smuggled by Content-Length and Transfer-Encoding together.
const SMUGGLED: &str = "POST / HTTP/1.1\r\nHost: b\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";

#[tokio::test]
async fn the_framing_guard_keeps_watching_after_what_used_to_switch_it_off() {
    let backend = Backend::start(|_| async { Response::new(full("ok")) }).await;
    let proxy = proxy_with(|p, _| p.auth = vec!["me:pw".into()]).await;
    let url = backend.url("/");
    let credentials = "Proxy-Authorization: Basic bWU6cHc=\r\n";

    // A CONNECT refused with 407, a smuggled request right behind it.
    let mut raw = Raw::connect(proxy.local_addr()).await;
    raw.send(
        format!(
            "CONNECT {} HTTP/1.1\r\nHost: x\r\n\r\n{SMUGGLED}",
            backend.addr
        )
        .as_bytes(),
    )
    .await;
    let head = raw.read_head().await.unwrap();
    assert_eq!(head.status, 407);
    assert_eq!(head.header("connection"), Some("close"));
    // A CONNECT refused as a loop (this proxy's own Via), the same.
    let mut raw = Raw::connect(proxy.local_addr()).await;
    raw.send(
        format!(
            "CONNECT {} HTTP/1.1\r\nHost: x\r\n{credentials}\r\n{SMUGGLED}",
            proxy.local_addr()
        )
        .as_bytes(),
    )
    .await;
    let (head, _) = raw.read_response(false).await;
    assert_eq!(head.status, 508);
    assert!(raw.closed().await, "nothing read after a refused CONNECT");

    // A chunk size written with 17 digits (leading zeros), then the smuggler.
    let mut raw = Raw::connect(proxy.local_addr()).await;
    let smuggled = SMUGGLED
        .replace("POST / ", &format!("POST {url} "))
        .replace("Host: b\r\n", &format!("Host: b\r\n{credentials}"));
    raw.send(
        format!(
            "POST {url} HTTP/1.1\r\nHost: b\r\n{credentials}Transfer-Encoding: chunked\r\n\r\n\
             00000000000000002\r\nhi\r\n0\r\n\r\n{smuggled}"
        )
        .as_bytes(),
    )
    .await;
    let (first, _) = raw.read_response(false).await;
    assert_eq!(first.status, 200);
    let second = raw.read_head().await.unwrap();
    assert_eq!(second.status, 400);
    assert_eq!(
        backend.requests(),
        1,
        "the smuggled request never reached the origin"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn the_proxy_is_found_behind_an_ipv4_mapped_address() {
    let proxy = common::proxy().await;
    let port = proxy.local_addr().port();
    let mut raw = Raw::connect(proxy.local_addr()).await;
    raw.send(
        format!("GET http://[::ffff:127.0.0.1]:{port}/ HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
    )
    .await;
    let (head, body) = raw.read_response(false).await;
    let body = String::from_utf8_lossy(&body.unwrap()).to_string();
    assert_eq!(head.status, 508, "{body}");
    let mut raw = Raw::connect(proxy.local_addr()).await;
    raw.send(format!("CONNECT [::ffff:127.0.0.1]:{port} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await;
    assert_eq!(raw.read_head().await.unwrap().status, 508);
    proxy.shutdown().await;
}
