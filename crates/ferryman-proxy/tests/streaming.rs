//! Bodies stream both ways as they arrive; truncation stays visible; a client
//! that leaves cancels the upstream work and leaks nothing.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{proxy, LIMIT};
use ferryman_testkit::backend::{channel_body, event_stream, full, Backend, RawBackend};
use ferryman_testkit::raw::Raw;
use ferryman_testkit::{eventually, open_fds, within};
use http::Response;
use http_body_util::BodyExt;
use tokio::sync::mpsc;

#[tokio::test]
async fn request_body_reaches_the_upstream_chunk_by_chunk() {
    let (tx, mut arrived) = mpsc::unbounded_channel::<Bytes>();
    let backend = Backend::start(move |req| {
        let tx = tx.clone();
        async move {
            let mut body = req.into_body();
            while let Some(Ok(frame)) = body.frame().await {
                if let Ok(data) = frame.into_data() {
                    let _ = tx.send(data);
                }
            }
            Response::new(full("done"))
        }
    })
    .await;
    let proxy = proxy().await;
    let mut raw = Raw::connect(proxy.local_addr()).await;
    raw.send(
        format!(
            "POST {} HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: chunked\r\n\r\n",
            backend.url("/")
        )
        .as_bytes(),
    )
    .await;
    // Each chunk must reach the upstream before the next one is even written.
    for piece in ["first", "second", "third"] {
        raw.send(format!("{:x}\r\n{piece}\r\n", piece.len()).as_bytes())
            .await;
        let got = within(LIMIT, "chunk at the upstream", arrived.recv())
            .await
            .unwrap();
        assert_eq!(got, piece.as_bytes());
    }
    raw.send(b"0\r\n\r\n").await;
    let (head, body) = raw.read_response(false).await;
    assert_eq!(head.status, 200);
    assert_eq!(body.unwrap(), b"done");
    proxy.shutdown().await;
}

#[tokio::test]
async fn server_sent_events_arrive_one_by_one() {
    let (handler, mut feed_rx) = event_stream();
    let backend = Backend::start(handler).await;
    let proxy = proxy().await;
    let mut raw = Raw::connect(proxy.local_addr()).await;
    raw.send(format!("GET {} HTTP/1.1\r\nHost: b\r\n\r\n", backend.url("/events")).as_bytes())
        .await;
    let events = feed_rx.recv().await.unwrap();
    let head = raw.read_head().await.unwrap();
    assert_eq!(head.header("content-type"), Some("text/event-stream"));
    for n in 1..=3 {
        let event = format!("data: event {n}\n\n");
        events.send(Ok(Bytes::from(event.clone()))).await.unwrap();
        // The next event is only produced once this one reached the client.
        let chunk = within(LIMIT, "the event at the client", raw.read_chunk())
            .await
            .unwrap();
        assert_eq!(chunk, event.as_bytes());
    }
    drop(events);
    assert_eq!(raw.read_chunk().await, None, "clean end of stream");
    proxy.shutdown().await;
}

#[tokio::test]
async fn trailers_are_relayed_to_a_client_that_accepts_them() {
    let backend = Backend::start(|req| async move {
        let (frames, body) = channel_body();
        let accepts = req.headers().get("te").is_some_and(|v| v == "trailers");
        tokio::spawn(async move {
            let _ = frames.send(Ok(Bytes::from_static(b"payload"))).await;
            drop(frames);
        });
        let trailers = {
            let mut t = http::HeaderMap::new();
            t.insert("grpc-status", http::HeaderValue::from_static("0"));
            t
        };
        let body = http_body_util::BodyExt::boxed_unsync(
            body.with_trailers(async move { Some(Ok(trailers)) }),
        );
        Response::builder()
            .header("trailer", "grpc-status")
            .header("x-upstream-saw-te-trailers", accepts.to_string())
            .body(body)
            .unwrap()
    })
    .await;
    let proxy = proxy().await;
    let mut raw = Raw::connect(proxy.local_addr()).await;
    raw.send(
        format!(
            "GET {} HTTP/1.1\r\nHost: b\r\nTE: trailers\r\n\r\n",
            backend.url("/t")
        )
        .as_bytes(),
    )
    .await;
    let head = raw.read_head().await.unwrap();
    assert_eq!(head.header("x-upstream-saw-te-trailers"), Some("true"));
    assert_eq!(
        within(LIMIT, "body", raw.read_chunk()).await.unwrap(),
        b"payload"
    );
    assert_eq!(within(LIMIT, "end", raw.read_chunk()).await, None);
    assert_eq!(raw.trailers, ["grpc-status: 0"]);
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_truncated_upstream_response_stays_truncated() {
    let backend = RawBackend::start(|mut conn, _| async move {
        let Some(head) = conn.read_request_head().await else {
            return;
        };
        if head.target == "/length" {
            conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
                .await;
            conn.send(&[b'x'; 500]).await;
        } else {
            conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
                .await;
        }
        // Then die without finishing the body.
    })
    .await;
    let proxy = proxy().await;

    let mut raw = Raw::connect(proxy.local_addr()).await;
    raw.send(format!("GET {} HTTP/1.1\r\nHost: b\r\n\r\n", backend.url("/length")).as_bytes())
        .await;
    let (head, body) = within(LIMIT, "response", raw.read_response(false)).await;
    assert_eq!(head.header("content-length"), Some("1000"));
    let partial = body.expect_err("the client must see a short body");
    assert!(partial.len() <= 500);

    let mut raw = Raw::connect(proxy.local_addr()).await;
    raw.send(
        format!(
            "GET {} HTTP/1.1\r\nHost: b\r\n\r\n",
            backend.url("/chunked")
        )
        .as_bytes(),
    )
    .await;
    let (_, body) = within(LIMIT, "response", raw.read_response(false)).await;
    assert_eq!(
        body.expect_err("no terminating chunk may be invented"),
        b"hello"
    );
    proxy.shutdown().await;
}

/// A backend whose responses go on for as long as someone reads them; each
/// producer reports when its reader went away.
async fn endless_backend() -> (Backend, mpsc::UnboundedReceiver<()>) {
    let (gone_tx, gone_rx) = mpsc::unbounded_channel();
    let backend = Backend::start(move |_| {
        let gone_tx = gone_tx.clone();
        async move {
            let (tx, body) = channel_body();
            tokio::spawn(async move {
                let block = Bytes::from(vec![b'z'; 16 * 1024]);
                while tx.send(Ok(block.clone())).await.is_ok() {}
                let _ = gone_tx.send(());
            });
            Response::new(body)
        }
    })
    .await;
    (backend, gone_rx)
}

async fn start_download_and_abort(proxy: std::net::SocketAddr, url: &str) {
    let mut raw = Raw::connect(proxy).await;
    raw.send(format!("GET {url} HTTP/1.1\r\nHost: b\r\n\r\n").as_bytes())
        .await;
    let head = raw.read_head().await.expect("response head");
    assert_eq!(head.status, 200);
    let got = raw.read_exact(64 * 1024).await;
    assert!(!got.is_empty());
    // Dropping the socket is the abort.
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_cancels_the_upstream_download() {
    let (backend, mut gone) = endless_backend().await;
    let proxy = proxy().await;
    start_download_and_abort(proxy.local_addr(), &backend.url("/big")).await;
    within(LIMIT, "upstream body dropped", gone.recv())
        .await
        .unwrap();
    within(
        LIMIT,
        "upstream connection closed",
        backend.wait_open(|n| n == 0),
    )
    .await;
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_and_sockets_return_to_baseline_after_200_aborted_downloads() {
    let (backend, mut gone) = endless_backend().await;
    let proxy = proxy().await;
    let url = backend.url("/big");
    // Warm up lazily created runtime parts (timers, blocking pool for DNS).
    start_download_and_abort(proxy.local_addr(), &url).await;
    within(LIMIT, "warm-up cleaned up", gone.recv())
        .await
        .unwrap();
    let metrics = tokio::runtime::Handle::current().metrics();
    eventually(LIMIT, "warm-up connection closed", || {
        backend.open_connections() == 0
    })
    .await;
    let tasks = metrics.num_alive_tasks();
    let fds = open_fds();

    // 4 waves of 50 concurrent clients: 200 aborts without needing more
    // than the default 1024 file descriptors (each abort holds four).
    for _wave in 0..4 {
        let clients: Vec<_> = (0..50)
            .map(|_| {
                let url = url.clone();
                let addr = proxy.local_addr();
                tokio::spawn(async move { start_download_and_abort(addr, &url).await })
            })
            .collect();
        for client in clients {
            client.await.unwrap();
        }
    }
    for _ in 0..200 {
        within(LIMIT, "every upstream body dropped", gone.recv())
            .await
            .unwrap();
    }
    eventually(
        Duration::from_secs(20),
        "tasks and sockets back to baseline",
        || metrics.num_alive_tasks() <= tasks && open_fds() <= fds,
    )
    .await;
    assert_eq!(backend.open_connections(), 0);
    proxy.shutdown().await;
}
