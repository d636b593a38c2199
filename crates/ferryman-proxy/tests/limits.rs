//! The connection limit: beyond it, clients wait instead of exhausting the
//! proxy's file descriptors.

mod common;

use std::time::Duration;

use common::{proxy_with, LIMIT};
use ferryman_testkit::backend::{full, Backend};
use ferryman_testkit::raw::Raw;
use ferryman_testkit::within;
use http::Response;

async fn served(addr: std::net::SocketAddr, url: &str) -> Raw {
    let mut raw = Raw::connect(addr).await;
    raw.send(format!("GET {url} HTTP/1.1\r\nHost: b\r\n\r\n").as_bytes())
        .await;
    let (head, _) = within(LIMIT, "an answer", raw.read_response(false)).await;
    assert_eq!(head.status, 200);
    raw
}

#[tokio::test]
async fn beyond_max_connections_a_client_waits_for_a_free_slot() {
    let backend = Backend::start(|_| async { Response::new(full("ok")) }).await;
    let proxy = proxy_with(|p, _| p.max_connections = 2).await;
    let url = backend.url("/");
    let first = served(proxy.local_addr(), &url).await;
    let _second = served(proxy.local_addr(), &url).await;

    let mut third = Raw::connect(proxy.local_addr()).await;
    third
        .send(format!("GET {url} HTTP/1.1\r\nHost: b\r\n\r\n").as_bytes())
        .await;
    // Nothing can signal that a request is *not* being served; a bounded
    // wait is the only way to see it stay queued.
    let early = tokio::time::timeout(Duration::from_millis(300), third.read_head()).await;
    assert!(early.is_err(), "served beyond the limit");

    drop(first);
    let (head, body) = within(
        LIMIT,
        "served once a slot is free",
        third.read_response(false),
    )
    .await;
    assert_eq!((head.status, body.unwrap()), (200, b"ok".to_vec()));
    proxy.shutdown().await;
}

#[tokio::test]
async fn the_default_limit_follows_the_open_file_limit() {
    let config = ferryman_proxy::ProxyConfig::default();
    let limit = config.connection_limit();
    assert!(limit >= 1);
    let fds = std::fs::read_to_string("/proc/self/limits").unwrap();
    let soft: usize = fds
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert_eq!(limit, (soft - 64) / 2);
}
