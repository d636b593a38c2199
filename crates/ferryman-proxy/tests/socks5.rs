//! The SOCKS5 inbound, with curl and a raw client: each address type, the
//! users of `proxy.auth`, reply codes for what cannot be reached, UDP
//! ASSOCIATE, and interception of TLS found inside a SOCKS5 tunnel.

mod common;

use std::net::SocketAddr;

use common::{curl, socks_proxy, LIMIT};
use ferryman_testkit::backend::{full, Backend};
use ferryman_testkit::socks::{request, udp_echo, Dest, Udp};
use ferryman_testkit::tls::TestCa;
use ferryman_testkit::{eventually, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn hello_origin() -> Backend {
    Backend::start(
        |req| async move { http::Response::new(full(format!("hello {}", req.uri().path()))) },
    )
    .await
}

/// An HTTP/1.0 exchange over a SOCKS5 tunnel: the answer's body.
async fn get_over(mut stream: TcpStream, path: &str) -> String {
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = String::new();
    within(LIMIT, "the answer", stream.read_to_string(&mut answer))
        .await
        .unwrap();
    answer.split("\r\n\r\n").nth(1).unwrap_or("").to_string()
}

#[tokio::test]
async fn each_address_type_reaches_its_origin() {
    let origin = hello_origin().await;
    let (_proxy, socks, _dir) = socks_proxy(|_| {}, "", &[]).await;
    let port = origin.addr.port();
    for (dest, path) in [
        (Dest::Addr(origin.addr), "/v4"),
        (Dest::Name("localhost", port), "/name"),
    ] {
        let (stream, code, _) = request(socks, None, 1, dest).await.unwrap();
        assert_eq!(code, 0);
        assert_eq!(get_over(stream, path).await, format!("hello {path}"));
    }
    // IPv6: an origin on ::1 that answers whatever it is asked.
    let v6 = TcpListener::bind("[::1]:0").await.unwrap();
    let v6_addr = v6.local_addr().unwrap();
    tokio::spawn(async move {
        // The tunnel's own connection, and the one ferryman forwards the
        // request it finds inside on.
        while let Ok((mut s, _)) = v6.accept().await {
            tokio::spawn(async move {
                let mut head = [0u8; 1024];
                if matches!(s.read(&mut head).await, Ok(n) if n > 0) {
                    let _ = s.write_all(b"HTTP/1.0 200 OK\r\n\r\nhello over IPv6").await;
                }
            });
        }
    });
    let (stream, code, _) = request(socks, None, 1, Dest::Addr(v6_addr)).await.unwrap();
    assert_eq!(code, 0);
    assert_eq!(get_over(stream, "/v6").await, "hello over IPv6");
    // And curl, the way people use it: the name resolved by the proxy.
    let socks_url = format!("socks5h://{socks}");
    let url = format!("http://localhost:{port}/curl");
    let (ok, body, err) = curl(&["-x", &socks_url, &url]).await;
    assert!(ok, "{err}");
    assert_eq!(body, b"hello /curl");
}

#[tokio::test]
async fn the_proxys_users_are_checked() {
    let origin = hello_origin().await;
    let auth = |config: &mut ferryman_proxy::ProxyConfig| config.auth = vec!["alice:s3cret".into()];
    let (_proxy, socks, _dir) = socks_proxy(auth, "", &[]).await;
    let dest = || Dest::Addr(origin.addr);
    let (stream, code, _) = request(socks, Some(("alice", "s3cret")), 1, dest())
        .await
        .unwrap();
    assert_eq!(code, 0);
    assert_eq!(get_over(stream, "/in").await, "hello /in");
    // RFC 1929: a non-zero status, and nothing more.
    assert_eq!(
        request(socks, Some(("alice", "wrong")), 1, dest())
            .await
            .err(),
        Some(1)
    );
    // No acceptable method: a client offering only "no authentication".
    assert_eq!(request(socks, None, 1, dest()).await.err(), Some(0xff));
    let url = origin.url("/curl");
    let (ok, body, _) = curl(&["-x", &format!("socks5h://alice:s3cret@{socks}"), &url]).await;
    assert!(ok);
    assert_eq!(body, b"hello /curl");
    let (ok, _, err) = curl(&["-x", &format!("socks5h://alice:nope@{socks}"), &url]).await;
    assert!(!ok);
    assert!(err.contains("User was rejected"), "{err}");
    assert_eq!(origin.requests(), 2);
}

#[tokio::test]
async fn what_cannot_be_reached_gets_its_reply_code() {
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed_addr = closed.local_addr().unwrap();
    drop(closed);
    let rules = format!(
        r#"
        [[rules]]
        port = [{}]
        outbound = "reject"
        "#,
        closed_addr.port() + 1
    );
    let (proxy, socks, _dir) = socks_proxy(|_| {}, &rules, &[]).await;
    let code = |dest| async move { request(socks, None, 1, dest).await.unwrap().1 };
    // Connection refused.
    assert_eq!(code(Dest::Addr(closed_addr)).await, 5);
    // Refused by a rule: not allowed.
    let rejected = SocketAddr::from(([127, 0, 0, 1], closed_addr.port() + 1));
    assert_eq!(code(Dest::Addr(rejected)).await, 2);
    // ferryman's own listeners: a loop, not allowed.
    assert_eq!(code(Dest::Addr(proxy.local_addr())).await, 2);
    assert_eq!(code(Dest::Addr(socks)).await, 2);
    // BIND: command not supported.
    let (_, bind, _) = request(socks, None, 2, Dest::Addr(closed_addr))
        .await
        .unwrap();
    assert_eq!(bind, 7);
}

#[tokio::test]
async fn udp_associate_relays_datagrams_until_its_connection_ends() {
    let echo = udp_echo().await;
    let (proxy, socks, _dir) = socks_proxy(|_| {}, "", &[]).await;
    let udp = Udp::associate(socks, None).await;
    for (i, to) in [Dest::Addr(echo), Dest::Name("localhost", echo.port())]
        .into_iter()
        .enumerate()
    {
        let payload = format!("datagram {i}");
        udp.send(to, payload.as_bytes()).await;
        let (from, back) = within(LIMIT, "the echo", udp.recv()).await;
        assert_eq!(from, echo);
        assert_eq!(back, payload.as_bytes());
    }
    let sessions = proxy.sessions().clone();
    let open_udp = || {
        let all = sessions.list();
        all.iter()
            .filter(|s| s.kind == "udp" && s.state == "open")
            .count()
    };
    assert_eq!(open_udp(), 1);
    // The association ends with its TCP connection.
    drop(udp);
    eventually(LIMIT, "the association closed", || open_udp() == 0).await;
}

#[tokio::test]
async fn tls_inside_a_socks5_tunnel_is_intercepted_like_a_connect() {
    let ca = TestCa::new();
    let origin = Backend::start_tls(ca.server_config(&[b"http/1.1"]), |req| async move {
        http::Response::new(full(format!("secret {}", req.uri().path())))
    })
    .await;
    let (proxy, socks, dir) = socks_proxy(|_| {}, "", &[ca.pem_path()]).await;
    let ferryman_ca = dir.path().join("ferryman-ca.pem");
    let url = format!("https://127.0.0.1:{}/inside", origin.addr.port());
    let (ok, body, err) = curl(&[
        "-x",
        &format!("socks5h://{socks}"),
        "--cacert",
        ferryman_ca.to_str().unwrap(),
        &url,
    ])
    .await;
    assert!(ok, "{err}");
    assert_eq!(body, b"secret /inside");
    // ferryman saw the request inside: an exchange under the SOCKS5 session.
    let sessions = proxy.sessions().clone();
    eventually(LIMIT, "the exchange inside is listed", || {
        let all: Vec<_> = sessions
            .list()
            .into_iter()
            .chain(sessions.history())
            .collect();
        let socks_ids: Vec<u64> = all
            .iter()
            .filter(|s| s.kind == "socks5")
            .map(|s| s.id)
            .collect();
        all.iter().any(|s| s.kind == "exchange" && s.target == url) && !socks_ids.is_empty()
    })
    .await;
}
