//! Rules choose the way out: through real upstream proxies (tinyproxy for
//! HTTP, microsocks for SOCKS5, with and without credentials), refused, or
//! answered here; a dead upstream says why, and a group falls over to its
//! next member. Each upstream proxy connects out from a loopback address
//! of its own, so the origin sees which way every request came.

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::{curl, observers, LIMIT};
use ferryman_proxy::{
    ForwardProxy, InterceptConfig, Policy, PolicySpec, ProxyConfig, RunningProxy,
};
use ferryman_testkit::backend::{full, websocket_echo, Backend, ClientAddr};
use ferryman_testkit::peers::{self, Peer};
use ferryman_testkit::tls::TestCa;
use ferryman_testkit::{websocket_roundtrip, websocket_through};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

const TINYPROXY_OUT: [u8; 4] = [127, 0, 0, 6];
const MICROSOCKS_OUT: [u8; 4] = [127, 0, 0, 5];

/// Answers with the address the request's connection came from; a
/// WebSocket upgrade is echoed only when it comes from `only_from`.
async fn where_from(
    req: Request<Incoming>,
    only_from: Option<IpAddr>,
) -> Response<ferryman_testkit::backend::TestBody> {
    let peer = req.extensions().get::<ClientAddr>().map(|a| a.0.ip());
    if req.headers().contains_key("upgrade") {
        if only_from.is_some() && peer != only_from {
            let mut refused = Response::new(full(format!("not from {peer:?}")));
            *refused.status_mut() = StatusCode::FORBIDDEN;
            return refused;
        }
        return websocket_echo(req).await;
    }
    Response::new(full(format!(
        "from {}",
        peer.map_or("?".into(), |p| p.to_string())
    )))
}

/// The `[[outbounds]]` and `[[rules]]` of a TOML text.
#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct Spec {
    outbounds: Vec<ferryman_proxy::OutboundConfig>,
    rules: Vec<ferryman_proxy::RuleConfig>,
}

/// A proxy with the rules of `spec`, intercepting with a CA of its own
/// (in the returned directory) and trusting `upstream_ca` upstream.
async fn proxy_with(spec: &str, upstream_ca: &TestCa) -> (RunningProxy, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = ferryman_tls::CertificateAuthority::open(dir.path(), None, 100).expect("CA");
    let tls = ferryman_tls::client_config(&[upstream_ca.pem_path()], false).expect("TLS");
    let config = ProxyConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..ProxyConfig::default()
    };
    let proxy = ForwardProxy::bind(
        config.clone(),
        Default::default(),
        tls,
        Some(ferryman_proxy::Interception::new(std::sync::Arc::new(ca))),
        observers(),
    )
    .expect("bind");
    let spec: Spec = toml::from_str(spec).expect("TOML");
    let control = proxy.control();
    let policy = Policy::compile(
        PolicySpec {
            outbounds: &spec.outbounds,
            rules: &spec.rules,
            intercept: &InterceptConfig::default(),
            base: std::path::Path::new("."),
        },
        &control.env(),
    )
    .expect("valid rules");
    control
        .apply(ferryman_proxy::Settings::new(config, policy))
        .expect("applied");
    (proxy.start(Duration::from_secs(5)), dir)
}

/// Everything through `upstream` (an outbound of `kind` at `url`):
/// plain HTTP, a CONNECT tunnel, intercepted HTTPS and a WebSocket all
/// reach the origin from `out`, the upstream's own address.
async fn everything_goes_through(kind: &str, url: &str, out: IpAddr) {
    let tls_ca = TestCa::new();
    let plain = Backend::start(move |req| where_from(req, Some(out))).await;
    let secure = Backend::start_tls(tls_ca.server_config(&[b"http/1.1"]), |req| {
        where_from(req, None)
    })
    .await;
    let spec = format!(
        r#"
        [[outbounds]]
        name = "up"
        kind = "{kind}"
        url = "{url}"

        [[rules]]
        domain = ["localhost"]
        intercept = true

        [[rules]]
        outbound = "up"
        intercept = false
        "#
    );
    let (proxy, dir) = proxy_with(&spec, &tls_ca).await;
    let via = format!("http://{}", proxy.local_addr());
    let expected = format!("from {out}");

    let (ok, body, err) = curl(&["-x", &via, &plain.url("/plain")]).await;
    assert!(ok, "{kind} plain HTTP: {err}");
    assert_eq!(
        String::from_utf8_lossy(&body),
        expected,
        "{kind} plain HTTP"
    );

    let (ok, body, err) = curl(&["-p", "-x", &via, &plain.url("/tunnel")]).await;
    assert!(ok, "{kind} CONNECT: {err}");
    assert_eq!(String::from_utf8_lossy(&body), expected, "{kind} CONNECT");

    let ferryman_ca = dir.path().join("ferryman-ca.pem");
    let url = format!("https://localhost:{}/secure", secure.addr.port());
    let ca = ferryman_ca.display().to_string();
    let (ok, body, err) = curl(&["-x", &via, "--cacert", &ca, &url]).await;
    assert!(ok, "{kind} intercepted HTTPS: {err}");
    assert_eq!(
        String::from_utf8_lossy(&body),
        expected,
        "{kind} intercepted HTTPS"
    );

    let mut ws = websocket_through(proxy.local_addr(), &plain).await;
    websocket_roundtrip(&mut ws, &["through", kind]).await;
    drop(ws);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_reaches_the_origin_through_tinyproxy_with_and_without_credentials() {
    let out = IpAddr::from(TINYPROXY_OUT);
    let open = peers::tinyproxy(None, out).await;
    everything_goes_through("http", &open.url("http", None), out).await;
    let guarded = peers::tinyproxy(Some(("me", "s3cret")), out).await;
    let credentials = Some(("me", "s3cret"));
    everything_goes_through("http", &guarded.url("http", credentials), out).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_reaches_the_origin_through_microsocks_with_and_without_credentials() {
    let out = IpAddr::from(MICROSOCKS_OUT);
    let open = peers::microsocks(None, out).await;
    everything_goes_through("socks5", &open.url("socks5h", None), out).await;
    let guarded = peers::microsocks(Some(("me", "s3cret")), out).await;
    let url = guarded.url("socks5", Some(("me", "s3cret")));
    everything_goes_through("socks5", &url, out).await;
}

/// A URL whose port nobody listens on.
fn dead_url(scheme: &str) -> String {
    format!("{scheme}://127.0.0.1:{}", peers::free_port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_or_refusing_upstream_says_why_and_a_group_falls_over_to_its_next_member() {
    let plain = Backend::start(|req| where_from(req, None)).await;
    let out = IpAddr::from(MICROSOCKS_OUT);
    let socks: Peer = peers::microsocks(None, out).await;
    let guarded = peers::tinyproxy(Some(("me", "right")), IpAddr::from(TINYPROXY_OUT)).await;
    let spec = format!(
        r#"
        [[outbounds]]
        name = "dead"
        kind = "http"
        url = "{dead}"

        [[outbounds]]
        name = "wrong-password"
        kind = "http"
        url = "http://me:wrong@{guarded}"

        [[outbounds]]
        name = "socks"
        kind = "socks5"
        url = "socks5://{socks}"

        [[outbounds]]
        name = "failover"
        kind = "group"
        members = ["dead", "socks"]

        [[rules]]
        port = [{dead_port}]
        outbound = "dead"

        [[rules]]
        ip_cidr = ["127.0.0.2"]
        outbound = "wrong-password"

        [[rules]]
        outbound = "failover"
        intercept = false
        "#,
        dead = dead_url("http"),
        guarded = guarded.addr,
        socks = socks.addr,
        dead_port = plain.addr.port(),
    );
    let tls_ca = TestCa::new();
    let (proxy, _dir) = proxy_with(&spec, &tls_ca).await;
    let via = format!("http://{}", proxy.local_addr());

    // The plain backend's port goes to the dead proxy: 502, with the reason.
    let out_fmt = ["-s", "-o", "/dev/stderr", "-w", "%{http_code}"];
    for tunnel in [false, true] {
        let mut args = vec!["-x", via.as_str()];
        if tunnel {
            args.push("-p");
        }
        args.extend(out_fmt);
        let url = plain.url("/x");
        args.push(&url);
        let (_, status, reason) = curl(&args).await;
        let status = String::from_utf8_lossy(&status).to_string();
        if tunnel {
            // curl reports a refused CONNECT as its own error.
            assert!(
                reason.contains("502") || status == "000",
                "{status} {reason}"
            );
        } else {
            assert_eq!(status, "502", "{reason}");
            assert!(
                reason.contains("outbound dead: the proxy at 127.0.0.1:")
                    && reason.contains("refused"),
                "{reason}"
            );
        }
    }
    assert_eq!(plain.requests(), 0);

    // Wrong credentials: the upstream's refusal is the reason given (a
    // plain request gets tinyproxy's own 401 page, which is what it says).
    let tunnelled = format!("127.0.0.2:{}", plain.addr.port() + 1);
    let mut raw = ferryman_testkit::raw::Raw::connect(proxy.local_addr()).await;
    raw.send(format!("CONNECT {tunnelled} HTTP/1.1\r\nHost: {tunnelled}\r\n\r\n").as_bytes())
        .await;
    let (head, body) = raw.read_response(false).await;
    assert_eq!(head.status, 502);
    let body = String::from_utf8_lossy(&body.unwrap_or_else(|b| b)).to_string();
    assert!(
        body.contains("outbound wrong-password") && body.contains("answered 401 Unauthorized"),
        "{body}"
    );

    // Anything else goes to the group, whose first member is dead.
    let second = Backend::start(|req| where_from(req, None)).await;
    let (ok, body, err) = curl(&["-x", &via, &second.url("/y")]).await;
    assert!(ok, "{err}");
    assert_eq!(String::from_utf8_lossy(&body), format!("from {out}"));
    let (ok, body, err) = curl(&["-p", "-x", &via, &second.url("/z")]).await;
    assert!(ok, "{err}");
    assert_eq!(String::from_utf8_lossy(&body), format!("from {out}"));
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_answers_403_and_refuses_tunnels_and_nothing_reaches_the_origin() {
    let origin = Backend::start(|req| where_from(req, None)).await;
    let spec = format!(
        r#"
        [[outbounds]]
        name = "mock"
        kind = "answer"
        status = 418
        headers = {{ content-type = "application/json" }}
        body = '{{"mocked": true}}'

        [[rules]]
        name = "no-trackers"
        path = ["/track"]
        outbound = "reject"

        [[rules]]
        path = ["/mock"]
        outbound = "mock"

        [[rules]]
        name = "closed-port"
        port = [{port}]
        method = ["CONNECT"]
        outbound = "reject"
        "#,
        port = origin.addr.port()
    );
    let (proxy, _dir) = proxy_with(&spec, &TestCa::new()).await;
    let via = format!("http://{}", proxy.local_addr());

    let (_, body, _) = curl(&["-x", &via, "-w", "\n%{http_code}", &origin.url("/track/me")]).await;
    let body = String::from_utf8_lossy(&body);
    assert!(body.ends_with("\n403"), "{body}");
    assert!(body.contains("rule no-trackers, outbound reject"), "{body}");

    let (_, body, _) = curl(&["-x", &via, "-i", &origin.url("/mock/x")]).await;
    let body = String::from_utf8_lossy(&body);
    assert!(body.starts_with("HTTP/1.1 418"), "{body}");
    assert!(body.contains("content-type: application/json"), "{body}");
    assert!(body.ends_with(r#"{"mocked": true}"#), "{body}");

    let mut raw = ferryman_testkit::raw::Raw::connect(proxy.local_addr()).await;
    let target = origin.addr.to_string();
    raw.send(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await;
    let (head, body) = raw.read_response(false).await;
    assert_eq!(head.status, 403);
    let body = String::from_utf8_lossy(&body.unwrap_or_else(|b| b)).to_string();
    assert!(body.contains("rule closed-port"), "{body}");
    assert!(ferryman_testkit::within(LIMIT, "closed", raw.closed()).await);
    assert_eq!(origin.connections(), 0, "nothing reached the origin");
    proxy.shutdown().await;
}
