//! Traffic accounting and the connection table: every figure equals the
//! bytes the test itself put on, or took off, the wire.

mod common;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use common::{intercepting_proxy_observed, request_over, tls_trusting_ferryman, LIMIT};
use ferryman_proxy::session::SessionSnapshot;
use ferryman_proxy::{InterceptConfig, Observers, Sessions};
use ferryman_testkit::backend::{full, Backend};
use ferryman_testkit::tls::TestCa;
use ferryman_testkit::{eventually, pattern, within};
use http::Response;
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// A TCP stream that counts what the test writes and reads.
struct Metered {
    inner: TcpStream,
    up: Arc<AtomicU64>,
    down: Arc<AtomicU64>,
}

impl Metered {
    async fn connect(addr: SocketAddr) -> Self {
        Self {
            inner: TcpStream::connect(addr)
                .await
                .expect("connect to the proxy"),
            up: Arc::default(),
            down: Arc::default(),
        }
    }

    fn counts(&self) -> (Arc<AtomicU64>, Arc<AtomicU64>) {
        (self.up.clone(), self.down.clone())
    }

    /// Sends CONNECT and reads exactly the response head, byte by byte.
    async fn connect_to(&mut self, target: &str) {
        let head = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
        self.write_all(head.as_bytes()).await.unwrap();
        let mut seen = Vec::new();
        while !seen.ends_with(b"\r\n\r\n") {
            seen.push(self.read_u8().await.expect("CONNECT response"));
        }
        assert!(
            seen.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&seen)
        );
    }
}

impl AsyncRead for Metered {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        self.down.fetch_add(n, Ordering::Relaxed);
        polled
    }
}

impl AsyncWrite for Metered {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            self.up.fetch_add(n as u64, Ordering::Relaxed);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// `/size/N` answers N bytes; anything else echoes the request body.
async fn sizes_and_echo(
    req: http::Request<hyper::body::Incoming>,
) -> Response<ferryman_testkit::backend::TestBody> {
    if let Some(n) = req.uri().path().strip_prefix("/size/") {
        return Response::new(full(pattern(n.parse().unwrap_or(0))));
    }
    let body = req.into_body().collect().await.map(|b| b.to_bytes());
    Response::new(full(body.unwrap_or_default()))
}

/// Echoes every byte on 127.0.0.2, a host of its own for per-host figures.
async fn echo_on_127_0_0_2() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.2:0")
        .await
        .expect("bind 127.0.0.2");
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = socket.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
        }
    });
    addr
}

fn find(all: &[SessionSnapshot], what: impl Fn(&SessionSnapshot) -> bool) -> &SessionSnapshot {
    all.iter().find(|s| what(s)).expect("a session")
}

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_equal_the_bytes_on_the_wire() {
    let ca = TestCa::new();
    let plain = Backend::start(sizes_and_echo).await;
    let secure = Backend::start_tls(ca.server_config(&[b"http/1.1"]), sizes_and_echo).await;
    let echo = echo_on_127_0_0_2().await;
    let sessions = Sessions::new(Duration::from_secs(60), 100);
    let observers = Observers {
        sessions: sessions.clone(),
        capture: None,
    };
    let (proxy, dir) = intercepting_proxy_observed(
        &[ca.pem_path()],
        false,
        InterceptConfig::default(),
        observers,
    )
    .await;
    let proxy_addr = proxy.local_addr();

    // A: plain HTTP, a known-length GET then a chunked POST, one connection.
    let mut a = Metered::connect(proxy_addr).await;
    let (a_up, a_down) = a.counts();
    let url = plain.url("");
    let request = format!(
        "GET {url}/size/1000 HTTP/1.1\r\nHost: x\r\n\r\n\
         POST {url}/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
         5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    );
    a.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    within(LIMIT, "A's responses", a.read_to_end(&mut answer))
        .await
        .unwrap();
    assert!(
        answer.ends_with(b"hello world"),
        "{}",
        String::from_utf8_lossy(&answer)
    );

    // B: a CONNECT tunnel carrying opaque bytes both ways.
    let mut b = Metered::connect(proxy_addr).await;
    let (b_up, b_down) = b.counts();
    b.connect_to(&echo.to_string()).await;
    let data = pattern(10_000);
    b.write_all(&data).await.unwrap();
    let mut back = vec![0; data.len()];
    within(LIMIT, "the echo", b.read_exact(&mut back))
        .await
        .unwrap();
    assert_eq!(back, data);
    b.shutdown().await.unwrap();
    let mut rest = Vec::new();
    within(LIMIT, "the tunnel's end", b.read_to_end(&mut rest))
        .await
        .unwrap();

    // C: intercepted TLS, one exchange inside.
    let mut c = Metered::connect(proxy_addr).await;
    let (c_up, c_down) = c.counts();
    c.connect_to(&secure.addr.to_string()).await;
    let (c_head_up, c_head_down) = (load(&c_up), load(&c_down));
    let mut tls = tls_trusting_ferryman(&dir, "127.0.0.1", c).await;
    let request = b"GET /size/3000 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    let answer = request_over(&mut tls, request).await;
    assert!(answer.ends_with(&pattern(3000)));
    drop(tls);

    // Every connection is done once all three show as closed.
    let mut all = Vec::new();
    eventually(LIMIT, "every session closed", || {
        all = sessions.list();
        all.len() == 8 && all.iter().all(|s| s.state == "closed")
    })
    .await;
    let roots: Vec<&SessionSnapshot> = all.iter().filter(|s| s.parent_id.is_none()).collect();
    assert_eq!(roots.len(), 3, "{all:#?}");
    let (a_wire, b_wire, c_wire) = (
        (load(&a_up), load(&a_down)),
        (load(&b_up), load(&b_down)),
        (load(&c_up), load(&c_down)),
    );
    for (root, wire) in roots.iter().zip([a_wire, b_wire, c_wire]) {
        assert_eq!(
            (root.kind, root.bytes_up, root.bytes_down),
            ("http", wire.0, wire.1)
        );
    }

    let child_of = |parent: u64| move |s: &SessionSnapshot| s.parent_id == Some(parent);
    let get = find(&all, |s| {
        s.parent_id == Some(roots[0].id) && s.target.ends_with("/size/1000")
    });
    assert_eq!(
        (get.kind, get.bytes_up, get.bytes_down),
        ("exchange", 0, 1000)
    );
    let post = find(&all, |s| {
        s.parent_id == Some(roots[0].id) && s.target.ends_with("/echo")
    });
    assert_eq!((post.bytes_up, post.bytes_down), (11, 11));
    assert_eq!((roots[0].children_up, roots[0].children_down), (11, 1011));

    let tunnel = find(&all, child_of(roots[1].id));
    assert_eq!(
        (roots[1].outbound.as_deref(), tunnel.outbound.as_deref()),
        (None, Some("direct"))
    );
    assert_eq!(tunnel.target, echo.to_string());
    assert_eq!(
        (tunnel.kind, tunnel.bytes_up, tunnel.bytes_down),
        ("tunnel", 10_000, 10_000)
    );

    let intercepted = find(&all, child_of(roots[2].id));
    assert_eq!(intercepted.kind, "intercepted-tls");
    assert_eq!(
        (intercepted.bytes_up, intercepted.bytes_down),
        (c_wire.0 - c_head_up, c_wire.1 - c_head_down),
        "the TLS bytes after the CONNECT head"
    );
    assert_eq!(
        (intercepted.children_up, intercepted.children_down),
        (0, 3000)
    );
    let inside = find(&all, child_of(intercepted.id));
    assert_eq!(
        (inside.kind, inside.bytes_up, inside.bytes_down),
        ("exchange", 0, 3000)
    );

    let total = (
        a_wire.0 + b_wire.0 + c_wire.0,
        a_wire.1 + b_wire.1 + c_wire.1,
    );
    let traffic = sessions.traffic();
    assert_eq!((traffic.bytes_up, traffic.bytes_down), total);
    let clients = sessions.clients();
    assert_eq!(clients.len(), 1);
    assert_eq!(
        (
            clients[0].key.as_str(),
            clients[0].bytes_up,
            clients[0].bytes_down
        ),
        ("127.0.0.1", total.0, total.1)
    );

    // Per host: a tunnel's bytes at the socket, a plain exchange's bodies.
    let hosts = sessions.hosts();
    let host = |name: &str| {
        let h = hosts.iter().find(|h| h.key == name).expect("host figures");
        (h.bytes_up, h.bytes_down)
    };
    assert_eq!(host("127.0.0.2"), (10_000, 10_000));
    assert_eq!(
        host("127.0.0.1"),
        (11 + intercepted.bytes_up, 1011 + intercepted.bytes_down)
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn short_connections_stay_visible_for_the_linger_time_then_move_to_history() {
    let backend = Backend::start(sizes_and_echo).await;
    let linger = Duration::from_millis(400);
    let sessions = Sessions::new(linger, 2);
    let proxy = common::proxy_observed(Observers {
        sessions: sessions.clone(),
        capture: None,
    });
    let (ok, body, err) = common::curl(&[
        "-x",
        &format!("http://{}", proxy.local_addr()),
        &backend.url("/size/10"),
    ])
    .await;
    assert!(ok, "{err}");
    assert_eq!(body, pattern(10));
    // curl has exited: its connection is closed, and still listed.
    eventually(LIMIT, "the connection listed as closed", || {
        let all = sessions.list();
        all.len() == 2
            && all
                .iter()
                .all(|s| s.state == "closed" && s.closed_ms.is_some())
    })
    .await;
    tokio::time::sleep(linger * 2).await;
    assert!(sessions.list().is_empty());
    let history = sessions.history();
    assert_eq!(history.len(), 2, "the exchange and its connection");
    assert_eq!(history[0].kind, "exchange");
    assert_eq!(history[1].kind, "http");
    proxy.shutdown().await;
}

#[tokio::test]
async fn closing_a_connection_closes_its_tunnel_first() {
    let echo = echo_on_127_0_0_2().await;
    let sessions = Sessions::new(Duration::from_secs(60), 10);
    let proxy = common::proxy_observed(Observers {
        sessions: sessions.clone(),
        capture: None,
    });
    let mut client = Metered::connect(proxy.local_addr()).await;
    client.connect_to(&echo.to_string()).await;
    let mut open = Vec::new();
    eventually(LIMIT, "the tunnel open", || {
        open = sessions.list();
        open.iter().any(|s| s.kind == "tunnel")
    })
    .await;
    let root = find(&open, |s| s.parent_id.is_none()).id;
    assert!(sessions.close(root));
    let mut rest = Vec::new();
    within(
        LIMIT,
        "the client sees the close",
        client.read_to_end(&mut rest),
    )
    .await
    .unwrap();
    eventually(LIMIT, "both closed", || {
        sessions.list().iter().all(|s| s.state == "closed")
    })
    .await;
    assert!(!sessions.close(root), "already closed");
    proxy.shutdown().await;
}

#[tokio::test]
async fn closing_an_exchange_ends_its_endless_response() {
    let held = Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = held.clone();
    let backend = Backend::start(move |_| {
        let (sender, body) = ferryman_testkit::backend::channel_body();
        keep.lock().unwrap().push(sender);
        async move { Response::new(body) }
    })
    .await;
    let sessions = Sessions::new(Duration::from_secs(60), 10);
    let proxy = common::proxy_observed(Observers {
        sessions: sessions.clone(),
        capture: None,
    });
    let mut client = Metered::connect(proxy.local_addr()).await;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: x\r\n\r\n",
        backend.url("/endless")
    );
    client.write_all(request.as_bytes()).await.unwrap();
    let mut head = [0u8; 12];
    client.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    let mut open = Vec::new();
    eventually(LIMIT, "the exchange listed", || {
        open = sessions.list();
        open.iter().any(|s| s.kind == "exchange")
    })
    .await;
    let exchange = find(&open, |s| s.kind == "exchange").id;
    assert!(sessions.close(exchange));
    let mut rest = Vec::new();
    within(LIMIT, "the response cut off", client.read_to_end(&mut rest))
        .await
        .unwrap();
    assert_eq!(held.lock().unwrap().len(), 1);
    proxy.shutdown().await;
}
