//! Graceful shutdown: stop accepting, let in-flight work finish, then close
//! what is left when the grace period is over.

mod common;

use std::time::Duration;

use common::{proxy_with_grace, LIMIT};
use ferryman_testkit::backend::Backend;
use ferryman_testkit::raw::Raw;
use ferryman_testkit::{eventually, within};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_flight_exchange_finishes_while_new_connections_are_refused() {
    let (backend, release) = Backend::held("finished").await;
    let proxy = proxy_with_grace(LIMIT, |_, _| {}).await;
    let addr = proxy.local_addr();
    let mut raw = Raw::connect(addr).await;
    raw.send(format!("GET {} HTTP/1.1\r\nHost: b\r\n\r\n", backend.url("/")).as_bytes())
        .await;
    eventually(LIMIT, "request at the backend", || backend.requests() == 1).await;

    let stopping = tokio::spawn(proxy.shutdown());
    let refused = async {
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            tokio::task::yield_now().await;
        }
    };
    within(LIMIT, "the listener closed", refused).await;
    assert!(!stopping.is_finished(), "shutdown waits for the exchange");

    release.add_permits(1);
    let (head, body) = within(LIMIT, "the answer", raw.read_response(false)).await;
    assert_eq!(head.status, 200);
    assert_eq!(body.unwrap(), b"finished");
    within(LIMIT, "shutdown completes", stopping).await.unwrap();
}

#[tokio::test]
async fn a_tunnel_that_outlives_the_grace_period_is_closed() {
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = upstream.local_addr().unwrap();
    let proxy = proxy_with_grace(Duration::from_millis(200), |_, _| {}).await;
    let mut raw = Raw::connect(proxy.local_addr()).await;
    raw.send(format!("CONNECT {target} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await;
    let (_held, _) = upstream.accept().await.unwrap();
    assert_eq!(raw.read_head().await.unwrap().status, 200);

    within(LIMIT, "shutdown after the grace period", proxy.shutdown()).await;
    assert!(within(LIMIT, "tunnel closed", raw.closed()).await);
}
