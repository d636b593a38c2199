//! The admin listener as its users meet it: API clients with the token,
//! browsers with a cookie, live subscribers, Prometheus.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{fetch, start, Reply, Running, LIMIT};
use ferryman_testkit::backend::{full, Backend};
use ferryman_testkit::within;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

const TOKEN: &str = "admin-token-for-tests-0123456789";
const STORE_SECRET: &str = "s3-secret-never-shown";
const PROXY_PASSWORD: &str = "proxy-password-never-shown";

#[derive(Clone, Copy)]
struct Api {
    addr: SocketAddr,
}

impl Api {
    async fn call(&self, method: &str, path: &str, body: Option<&str>) -> Reply {
        let bearer = format!("Bearer {TOKEN}");
        let reply = fetch(self.addr, method, path, &[("authorization", &bearer)], body).await;
        for secret in [TOKEN, STORE_SECRET, PROXY_PASSWORD] {
            assert!(
                !reply.text().contains(secret),
                "{method} {path} showed a secret: {}",
                reply.text()
            );
        }
        reply
    }

    async fn get(&self, path: &str) -> Reply {
        self.call("GET", path, None).await
    }

    /// PATCH /api/config with `{"set": settings}`.
    async fn set(&self, settings: &[&str]) -> Reply {
        let body = serde_json::json!({ "set": settings }).to_string();
        self.call("PATCH", "/api/config", Some(&body)).await
    }
}

async fn ferryman(data: &std::path::Path, extra: &[&str]) -> (Running, Api) {
    let token = format!("admin.token={TOKEN}");
    let mut args = vec!["--set", &token];
    args.extend_from_slice(extra);
    let running = start(data, &args).await;
    let api = Api {
        addr: running.admin,
    };
    (running, api)
}

/// A backend answering JSON, gzip-compressed.
async fn json_backend() -> Backend {
    use std::io::Write;
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gzip.write_all(br#"{"hello":"dashboard","n":[1,2,3]}"#)
        .unwrap();
    let gzipped = bytes::Bytes::from(gzip.finish().unwrap());
    Backend::start(move |_| {
        let body = gzipped.clone();
        async move {
            let mut response = http::Response::new(full(body));
            let headers = response.headers_mut();
            headers.insert(
                "content-type",
                http::HeaderValue::from_static("application/json"),
            );
            headers.insert("content-encoding", http::HeaderValue::from_static("gzip"));
            response
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_needs_the_token_or_a_login_cookie_but_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (running, _) = ferryman(&dir.path().join("data"), &[]).await;
    let admin = running.admin;
    let status = |headers: Vec<(&'static str, String)>| async move {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        fetch(admin, "GET", "/api/status", &headers, None).await
    };
    let none = status(vec![]).await;
    assert_eq!(none.status, 401);
    assert_eq!(none.header("www-authenticate"), "Bearer");
    assert_eq!(
        status(vec![("authorization", "Bearer wrong-token".into())])
            .await
            .status,
        401
    );
    let ok = status(vec![("authorization", format!("Bearer {TOKEN}"))]).await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.json()["version"], env!("CARGO_PKG_VERSION"));
    for path in [
        "/metrics",
        "/api/exchanges",
        "/api/config",
        "/app.js",
        "/api/openapi.json",
    ] {
        assert_eq!(
            fetch(admin, "GET", path, &[], None).await.status,
            401,
            "{path}"
        );
    }
    // A browser asking for the dashboard is sent to the login page.
    let page = fetch(admin, "GET", "/", &[], None).await;
    assert_eq!((page.status, page.header("location")), (303, "/login"));
    assert_eq!(fetch(admin, "GET", "/login", &[], None).await.status, 200);

    let wrong = fetch(
        admin,
        "POST",
        "/api/login",
        &[],
        Some(r#"{"token":"nope"}"#),
    )
    .await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.header("set-cookie").is_empty());
    let login = fetch(
        admin,
        "POST",
        "/api/login",
        &[],
        Some(&format!(r#"{{"token":"{TOKEN}"}}"#)),
    )
    .await;
    assert_eq!(login.status, 204);
    let cookie = login.header("set-cookie").to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(
        !cookie.contains(TOKEN),
        "the cookie is a session, not the token"
    );
    let session = cookie.split(';').next().unwrap().to_owned();
    assert_eq!(status(vec![("cookie", session.clone())]).await.status, 200);
    assert_eq!(
        fetch(admin, "GET", "/", &[("cookie", &session)], None)
            .await
            .status,
        200
    );
    let logout = fetch(admin, "POST", "/api/logout", &[("cookie", &session)], None).await;
    assert_eq!(logout.status, 204);
    assert_eq!(status(vec![("cookie", session)]).await.status, 401);

    // The CA is public: devices fetch it before they can log in anywhere.
    let pem = fetch(admin, "GET", "/api/ca.pem", &[], None).await;
    assert_eq!(pem.status, 200);
    let on_disk = std::fs::read_to_string(dir.path().join("data/ca/ferryman-ca.pem")).unwrap();
    assert_eq!(pem.text(), on_disk);
    let der = fetch(admin, "GET", "/api/ca.der", &[], None).await;
    assert_eq!(
        (der.status, der.body[0]),
        (200, 0x30),
        "DER starts with a SEQUENCE"
    );
    let page = fetch(admin, "GET", "/ca", &[], None).await;
    assert!(page.status == 200 && page.text().contains("/api/ca.pem"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_shows_traffic_exchanges_bodies_and_config_without_secrets() {
    let backend = json_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let auth = format!("proxy.auth=[\"alice:{PROXY_PASSWORD}\"]");
    let secret = format!("capture.store.secret_access_key={STORE_SECRET}");
    let (running, api) = ferryman(
        &dir.path().join("data"),
        &[
            "--set",
            &auth,
            "--set",
            "capture.store.access_key_id=AKID",
            "--set",
            &secret,
        ],
    )
    .await;
    let proxy = running.proxy;
    let basic = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("alice:{PROXY_PASSWORD}")
        )
    );
    let through = |path: &'static str| {
        let (url, basic) = (backend.url(path), basic.clone());
        async move { fetch(proxy, "GET", &url, &[("proxy-authorization", &basic)], None).await }
    };
    assert_eq!(through("/one.json").await.status, 200);
    assert_eq!(through("/two.json").await.status, 200);

    let openapi = api.get("/api/openapi.json").await.json();
    let documented = |path: &str| {
        assert!(
            openapi["paths"].get(path).is_some(),
            "{path} is not in openapi.json"
        );
    };

    documented("/api/exchanges");
    let list = eventually_json(&api, "/api/exchanges?host=127.0.0.1", |v| {
        v["exchanges"].as_array().unwrap().len() == 2
    })
    .await;
    let newest = &list["exchanges"][0];
    assert_eq!(newest["url"], backend.url("/two.json"));
    assert_eq!(newest["status"], 200);
    assert_eq!(newest["content_type"], "application/json");
    for (query, expected) in [
        ("text=one.json", 1),
        ("method=GET&status=200", 2),
        ("status=404", 0),
        ("content_type=application/", 2),
        ("content_type=image/", 0),
        ("limit=1", 1),
        ("limit=1&offset=1", 1),
    ] {
        let found = api.get(&format!("/api/exchanges?{query}")).await.json();
        assert_eq!(
            found["exchanges"].as_array().unwrap().len(),
            expected,
            "{query}"
        );
    }
    assert_eq!(api.get("/api/exchanges?colour=red").await.status, 400);

    documented("/api/exchanges/{id}");
    let id = newest["id"].as_str().unwrap();
    let record = api.get(&format!("/api/exchanges/{id}")).await.json();
    assert_eq!(record["request"]["method"], "GET");
    let auth_header = record["request"]["headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h[0] == "proxy-authorization");
    assert!(auth_header.is_none_or(|h| h[1] != basic.as_str()));
    assert_eq!(api.get("/api/exchanges/not-an-id").await.status, 400);
    assert_eq!(
        api.get("/api/exchanges/01a200e9-64e4-73d1-bd63-6704eeaa133d")
            .await
            .status,
        404
    );

    documented("/api/exchanges/{id}/{part}/body");
    let raw = api.get(&format!("/api/exchanges/{id}/response/body")).await;
    assert_eq!(raw.status, 200);
    assert_eq!(
        &raw.body[..2],
        &[0x1f, 0x8b],
        "raw is the gzip as it was sent"
    );
    assert_eq!(raw.header("content-security-policy"), "sandbox");
    let decoded = api
        .get(&format!("/api/exchanges/{id}/response/body?decode=true"))
        .await;
    assert_eq!(decoded.json()["hello"], "dashboard");
    let download = api
        .get(&format!("/api/exchanges/{id}/response/body?download=true"))
        .await;
    assert!(download
        .header("content-disposition")
        .starts_with("attachment"));
    assert_eq!(
        api.get(&format!("/api/exchanges/{id}/request/body"))
            .await
            .status,
        404,
        "no request body was sent"
    );
    assert_eq!(
        api.get(&format!("/api/exchanges/{id}/sideways/body"))
            .await
            .status,
        404
    );

    documented("/api/har");
    let har = api.get("/api/har?text=two.json").await.json();
    let entries = har["log"]["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["request"]["url"], backend.url("/two.json"));

    documented("/api/status");
    let status = api.get("/api/status").await.json();
    assert_eq!(status["capture"]["records_stored"], 2);
    assert_eq!(status["proxy_listen"], proxy.to_string());

    documented("/api/hosts");
    let hosts = api.get("/api/hosts").await.json();
    assert_eq!(hosts[0]["key"], "127.0.0.1", "{hosts}");
    assert!(hosts[0]["bytes_down"].as_u64().unwrap() > 0);
    documented("/api/clients");
    let clients = api.get("/api/clients").await.json();
    assert_eq!(clients[0]["key"], "127.0.0.1");

    documented("/api/config");
    let config = api.get("/api/config").await.json();
    assert_eq!(config["proxy"]["auth"][0], "alice:<redacted>");
    assert_eq!(
        config["capture"]["store"]["secret_access_key"],
        "<redacted>"
    );
    assert_eq!(config["admin"]["token"], "<redacted>");
    assert_eq!(config["intercept"]["mode"], "all");

    // Plain HTTP inside CONNECT is intercepted while mode = all...
    let tunnelled = |path: &'static str| {
        let url = backend.url(path);
        let user = format!("alice:{PROXY_PASSWORD}");
        async move {
            let out = tokio::process::Command::new("curl")
                .args([
                    "-sS",
                    "-o",
                    "/dev/null",
                    "-p",
                    "-U",
                    &user,
                    "-x",
                    &format!("http://{proxy}"),
                    &url,
                ])
                .status()
                .await
                .unwrap();
            assert!(out.success());
        }
    };
    tunnelled("/inside-before").await;
    let refused = api.set(&["proxy.listen=127.0.0.1:1"]).await;
    assert_eq!(refused.status, 422);
    assert!(refused.json()["error"]
        .as_str()
        .unwrap()
        .contains("proxy.listen cannot change while ferryman runs"));
    let invalid = api.set(&["intercept.mode=sometimes"]).await;
    assert_eq!(invalid.status, 422);
    assert!(
        invalid.json()["error"]
            .as_str()
            .unwrap()
            .contains("intercept.mode = \"sometimes\""),
        "{}",
        invalid.text()
    );
    // A key that needs a restart spoils the whole change.
    let mixed = api
        .set(&["intercept.mode=none", "data_dir=elsewhere"])
        .await;
    assert_eq!(mixed.status, 422, "all or nothing");
    assert_eq!(
        api.get("/api/config").await.json()["intercept"]["mode"],
        "all"
    );
    let applied = api.set(&["intercept.mode=none"]).await;
    assert_eq!(applied.status, 200, "{}", applied.text());
    assert_eq!(applied.json()["applied"][0], "intercept.mode");
    assert_eq!(
        api.get("/api/config").await.json()["intercept"]["mode"],
        "none"
    );
    // ...and tunnelled as opaque bytes once the rules say none.
    tunnelled("/inside-after").await;
    let seen = |text: &'static str| {
        let api = &api;
        async move {
            api.get(&format!("/api/exchanges?text={text}")).await.json()["exchanges"]
                .as_array()
                .unwrap()
                .len()
        }
    };
    eventually_json(&api, "/api/exchanges?method=CONNECT", |v| {
        v["exchanges"].as_array().unwrap().len() == 2
    })
    .await;
    assert_eq!(seen("/inside-before").await, 1);
    assert_eq!(seen("/inside-after").await, 0);

    documented("/metrics");
    documented("/api/live");
    documented("/api/login");
    documented("/api/logout");
    documented("/api/ca.pem");
    documented("/api/ca.der");
    documented("/api/connections");
    documented("/api/connections/{id}");
    documented("/api/clients/{ip}/connections");
}

/// Polls `path` until `done` holds for its JSON.
async fn eventually_json(api: &Api, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    within(LIMIT, path, async {
        loop {
            let value = api.get(path).await.json();
            if done(&value) {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// An idle client connection to the proxy: a session to close.
async fn idle_client(proxy: SocketAddr) -> tokio::net::TcpStream {
    tokio::net::TcpStream::connect(proxy).await.unwrap()
}

async fn closed_by_ferryman(stream: &mut tokio::net::TcpStream) {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 16];
    let n = within(LIMIT, "close", stream.read(&mut buf)).await;
    assert!(matches!(n, Ok(0) | Err(_)), "closed, not answered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_listed_and_closed_by_id_by_client_and_all() {
    let dir = tempfile::tempdir().unwrap();
    let (running, api) = ferryman(&dir.path().join("data"), &[]).await;
    let mut first = idle_client(running.proxy).await;
    let mut second = idle_client(running.proxy).await;
    let mut third = idle_client(running.proxy).await;
    let open = |v: &Value| {
        v["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["state"] == "open")
            .count()
    };
    let listed = eventually_json(&api, "/api/connections", |v| open(v) == 3).await;
    let sessions = listed["sessions"].as_array().unwrap();
    assert!(sessions.iter().all(|s| s["kind"] == "http"));
    // Found by its address: with two workers, connections need not get
    // their ids in the order they were made.
    let first_addr = first.local_addr().unwrap().to_string();
    let first_id = sessions
        .iter()
        .find(|s| s["client"] == first_addr.as_str())
        .and_then(|s| s["id"].as_u64())
        .expect("the first client's session is listed");

    let closed = api
        .call("DELETE", &format!("/api/connections/{first_id}"), None)
        .await;
    assert_eq!(closed.json()["closed"], 1);
    closed_by_ferryman(&mut first).await;
    assert_eq!(
        api.call("DELETE", "/api/connections/999999", None)
            .await
            .status,
        404
    );

    assert_eq!(
        api.call("DELETE", "/api/clients/not-an-ip/connections", None)
            .await
            .status,
        400
    );
    let none = api
        .call("DELETE", "/api/clients/127.0.0.2/connections", None)
        .await;
    assert_eq!(none.json()["closed"], 0);
    let by_client = api
        .call("DELETE", "/api/clients/127.0.0.1/connections", None)
        .await;
    assert_eq!(by_client.json()["closed"], 2);
    closed_by_ferryman(&mut second).await;
    closed_by_ferryman(&mut third).await;

    let mut fourth = idle_client(running.proxy).await;
    eventually_json(&api, "/api/connections", |v| open(v) == 1).await;
    let all = api.call("DELETE", "/api/connections", None).await;
    assert_eq!(all.json()["closed"], 1);
    closed_by_ferryman(&mut fourth).await;
    let history = eventually_json(&api, "/api/connections?history=true", |v| open(v) == 0).await;
    assert!(history["history"].is_array());
}

type Socket = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// A subscriber's stream; frames of other topics wait their turn.
struct Live {
    ws: Socket,
    pending: Vec<Value>,
}

impl Live {
    /// The next frame of `topic`, keeping the others for later.
    async fn next(&mut self, topic: &str) -> Value {
        if let Some(i) = self.pending.iter().position(|f| f["topic"] == topic) {
            return self.pending.remove(i);
        }
        let (ws, pending) = (&mut self.ws, &mut self.pending);
        within(LIMIT, topic, async {
            loop {
                let message = ws.next().await.expect("stream open").expect("frame");
                if let Message::Text(text) = message {
                    let frame: Value = serde_json::from_str(&text).unwrap();
                    if frame["topic"] == topic {
                        return frame;
                    }
                    pending.push(frame);
                }
            }
        })
        .await
    }
}

/// A live-stream subscriber; `receive_buffer` small makes it a slow reader.
async fn subscriber(admin: SocketAddr, receive_buffer: Option<u32>, topics: &[&str]) -> Live {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    if let Some(size) = receive_buffer {
        socket.set_recv_buffer_size(size).unwrap();
    }
    let stream = socket.connect(admin).await.unwrap();
    let mut request = format!("ws://{admin}/api/live")
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    let (ws, _) = tokio_tungstenite::client_async(request, stream)
        .await
        .unwrap();
    let mut live = Live {
        ws,
        pending: Vec::new(),
    };
    let subscribe = serde_json::json!({ "subscribe": topics, "level": "info" }).to_string();
    live.ws.send(Message::text(subscribe)).await.unwrap();
    let answer = live.next("subscribed").await;
    assert_eq!(
        answer["data"]["topics"].as_array().unwrap().len(),
        topics.len()
    );
    live
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_topics_arrive_and_a_subscriber_that_stops_reading_is_dropped() {
    let backend = json_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let (running, api) = ferryman(&dir.path().join("data"), &[]).await;
    let all = ["traffic", "connections", "logs", "exchanges"];
    let mut live = subscriber(running.admin, None, &all).await;
    let full = live.next("connections").await;
    assert_eq!(full["data"]["full"], true);

    let unauthorised =
        tokio_tungstenite::connect_async(format!("ws://{}/api/live", running.admin)).await;
    assert!(unauthorised.is_err(), "no token, no stream");
    let mut errors = subscriber(running.admin, None, &[]).await;
    errors
        .ws
        .send(Message::text(r#"{"subscribe":["weather"]}"#))
        .await
        .unwrap();
    let error = errors.next("error").await;
    assert!(error["data"].as_str().unwrap().contains("weather"));

    let reply = fetch(running.proxy, "GET", &backend.url("/live.json"), &[], None).await;
    assert_eq!(reply.status, 200);
    // A traffic frame sent before the exchange may still be queued: the
    // first one that counts it is the one to check.
    let traffic = within(LIMIT, "traffic counting the exchange", async {
        loop {
            let traffic = live.next("traffic").await;
            if traffic["data"]["bytes_down"].as_u64().unwrap() > 0 {
                return traffic;
            }
        }
    })
    .await;
    assert!(traffic["data"]["sessions"].get("tunnel").is_some());
    let exchanges = live.next("exchanges").await;
    assert_eq!(
        exchanges["data"]["items"][0]["url"],
        backend.url("/live.json")
    );
    let logs = live.next("logs").await;
    let lines = logs["data"]["items"].as_array().unwrap();
    assert!(
        lines.iter().any(|l| l["target"] == "ferryman::access"
            && l["fields"].as_str().unwrap().contains("/live.json")),
        "{logs}"
    );
    let changes = live.next("connections").await;
    assert!(changes["data"]["upserted"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["kind"] == "exchange" || s["kind"] == "http"));

    // A subscriber with a tiny window that never reads: its socket fills,
    // the write deadline passes, and it is dropped.
    let stalled = subscriber(running.admin, Some(4096), &all).await;
    eventually_json(&api, "/api/status", |v| v["subscribers"] == 3).await;
    let (proxy, long) = (
        running.proxy,
        backend.url(&format!("/burst/{}", "x".repeat(200))),
    );
    let mut bursts = tokio::spawn(async move {
        while api.get("/api/status").await.json()["subscribers"] != 2 {
            let burst: Vec<_> = (0..100)
                .map(|_| {
                    let url = long.clone();
                    tokio::spawn(async move { fetch(proxy, "GET", &url, &[], None).await.status })
                })
                .collect();
            for request in burst {
                assert_eq!(request.await.unwrap(), 200, "the proxy carries on");
            }
        }
    });
    // The subscriber that reads keeps reading all along.
    within(LIMIT, "the stalled subscriber dropped", async {
        loop {
            tokio::select! {
                done = &mut bursts => break done.unwrap(),
                frame = live.ws.next() => assert!(matches!(frame, Some(Ok(_))), "a reader stays subscribed"),
            }
        }
    })
    .await;
    // The others still get every topic.
    live.next("traffic").await;
    live.next("exchanges").await;
    let metrics = api.get("/metrics").await.text();
    assert!(
        metrics.contains("ferryman_admin_subscribers_dropped_total 1"),
        "{metrics}"
    );
    drop(stalled);
    assert_eq!(
        fetch(running.proxy, "GET", &backend.url("/after"), &[], None)
            .await
            .status,
        200
    );
}

/// `name{labels} value` lines, checked against the text format.
fn samples(text: &str) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(comment) = line.strip_prefix("# ") {
            let mut words = comment.split(' ');
            let kind = words.next().unwrap();
            assert!(kind == "HELP" || kind == "TYPE", "{line}");
            if kind == "TYPE" {
                let _name = words.next().unwrap();
                let ty = words.next().unwrap();
                assert!(
                    ["counter", "gauge", "histogram", "summary"].contains(&ty),
                    "{line}"
                );
            }
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "{line}"
        );
        if name_end < series.len() {
            assert!(series.ends_with('}'), "{line}");
            for label in series[name_end + 1..series.len() - 1].split(',') {
                let (key, quoted) = label.split_once('=').unwrap_or_else(|| panic!("{line}"));
                assert!(
                    !key.is_empty() && quoted.starts_with('"') && quoted.ends_with('"'),
                    "{line}"
                );
            }
        }
        out.push((series.to_owned(), value));
    }
    out
}

fn sample(all: &[(String, f64)], series: &str) -> f64 {
    all.iter()
        .find(|(s, _)| s == series)
        .map_or(0.0, |(_, v)| *v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_as_prometheus_text_and_move_with_traffic() {
    let backend = json_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let (running, api) = ferryman(&dir.path().join("data"), &[]).await;
    let before = samples(&api.get("/metrics").await.text());
    for i in 0..5 {
        let url = backend.url(&format!("/m/{i}"));
        assert_eq!(
            fetch(running.proxy, "GET", &url, &[], None).await.status,
            200
        );
    }
    let missing = fetch(
        running.proxy,
        "GET",
        "http://127.0.0.1:1/refused",
        &[],
        None,
    )
    .await;
    assert_eq!(missing.status, 502);
    // An HTTPS origin ferryman does not trust: curl -k accepts ferryman's
    // leaf (minted once, then cached), ferryman refuses the origin's.
    let ca = ferryman_testkit::tls::TestCa::new();
    let untrusted = Backend::start_tls(ca.server_config(&[b"http/1.1"]), |_| async {
        http::Response::new(full("never seen"))
    })
    .await;
    let proxy_url = format!("http://{}", running.proxy);
    for insecure in [true, true, false] {
        let mut curl = tokio::process::Command::new("curl");
        curl.args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-x",
            &proxy_url,
        ]);
        if insecure {
            curl.arg("-k");
        }
        let out = curl
            .arg(format!("https://127.0.0.1:{}/", untrusted.addr.port()))
            .output()
            .await
            .unwrap();
        let expected = if insecure { "502" } else { "000" };
        assert_eq!(String::from_utf8_lossy(&out.stdout), expected);
    }
    let reply = api.get("/metrics").await;
    assert!(reply
        .header("content-type")
        .starts_with("text/plain; version=0.0.4"));
    let after = samples(&reply.text());
    let moved = |series: &str| sample(&after, series) - sample(&before, series);
    assert_eq!(
        moved(r#"ferryman_requests_total{inbound="forward",status="2xx"}"#),
        5.0
    );
    assert_eq!(
        moved(r#"ferryman_requests_total{inbound="forward",status="5xx"}"#),
        1.0
    );
    assert!(moved(r#"ferryman_bytes_total{direction="down"}"#) > 0.0);
    assert!(moved(r#"ferryman_bytes_total{direction="up"}"#) > 0.0);
    assert!(moved(r#"ferryman_upstream_pool_total{result="miss"}"#) >= 1.0);
    assert!(
        moved(r#"ferryman_upstream_pool_total{result="hit"}"#) >= 1.0,
        "keep-alive upstream"
    );
    assert!(moved("ferryman_upstream_connect_seconds_count") >= 1.0);
    assert_eq!(moved("ferryman_upstream_ttfb_seconds_count"), 5.0);
    assert!(after
        .iter()
        .any(|(s, _)| s.starts_with("ferryman_upstream_ttfb_seconds_bucket{le=")));
    assert!(after
        .iter()
        .any(|(s, _)| s == r#"ferryman_sessions_active{kind="tunnel"}"#));
    assert_eq!(moved(r#"ferryman_leaf_cache_total{result="miss"}"#), 1.0);
    assert_eq!(moved(r#"ferryman_leaf_cache_total{result="hit"}"#), 2.0);
    // curl offers h2, so each CONNECT meets the upstream first (ALPN is
    // mirrored), the one whose client then refuses ferryman's leaf too.
    assert_eq!(
        moved(r#"ferryman_tls_handshake_failures_total{side="upstream"}"#),
        3.0
    );
    assert_eq!(
        moved(r#"ferryman_tls_handshake_failures_total{side="client"}"#),
        1.0
    );
    let captured = within(LIMIT, "records counted", async {
        loop {
            let now = samples(&api.get("/metrics").await.text());
            let stored = sample(&now, r#"ferryman_capture_records_total{result="stored"}"#);
            if stored >= 11.0 {
                return stored;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // 6 plain exchanges, 3 CONNECTs and the 2 exchanges inside the accepted ones.
    assert_eq!(captured, 11.0);
}

/// Connections each worker serves, once `total` are counted.
async fn worker_connections(api: &Api, workers: usize, total: f64) -> Vec<f64> {
    within(LIMIT, "connections counted", async {
        loop {
            let now = samples(&api.get("/metrics").await.text());
            let counts: Vec<f64> = (0..workers)
                .map(|n| {
                    sample(
                        &now,
                        &format!(r#"ferryman_worker_connections{{worker="{n}"}}"#),
                    )
                })
                .collect();
            if counts.iter().sum::<f64>() == total {
                return counts;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_connections_is_spread_over_the_workers() {
    let dir = tempfile::tempdir().unwrap();
    let (running, api) = ferryman(&dir.path().join("data"), &["--set", "workers=2"]).await;
    assert_eq!(worker_connections(&api, 2, 0.0).await, [0.0, 0.0]);
    // All at once: the first worker awake would take the whole burst.
    let clients = futures_util::future::join_all((0..16).map(|_| idle_client(running.proxy))).await;
    let counts = worker_connections(&api, 2, 16.0).await;
    assert!(
        counts.iter().all(|&n| (7.0..=9.0).contains(&n)),
        "{counts:?}"
    );
    drop(clients);
    assert_eq!(worker_connections(&api, 2, 0.0).await, [0.0, 0.0]);
}
