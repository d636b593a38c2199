//! The configuration changes while traffic flows: after an edit of the
//! file, a SIGHUP or an API call, new connections follow the new rules while
//! what is open keeps going; a broken file changes nothing and says why.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use ferryman_testkit::backend::{channel_body, full, Backend, BoxError};
use ferryman_testkit::raw::Raw;
use ferryman_testkit::within;
use http::Response;
use tokio::sync::mpsc;

mod common;

use common::{fetch, message, start, Logs, Reply, LIMIT};

const TOKEN: &str = "reload-test-token-0123456789";

/// Replaces `path`'s content the way editors do: write aside, rename over.
fn replace_file(path: &Path, text: &str) {
    let aside = path.with_extension("tmp");
    std::fs::write(&aside, text).unwrap();
    std::fs::rename(&aside, path).unwrap();
}

async fn api(admin: std::net::SocketAddr, method: &str, path: &str) -> Reply {
    let bearer = format!("Bearer {TOKEN}");
    fetch(admin, method, path, &[("authorization", &bearer)], None).await
}

/// The next reload's outcome line.
async fn reloaded(logs: &mut Logs) -> serde_json::Value {
    logs.until("a reload", |r| {
        let m = message(r);
        m.starts_with("configuration reloaded") || m.starts_with("configuration refused")
    })
    .await
}

/// A GET through the proxy on a fresh connection: (status, body).
async fn get(proxy: std::net::SocketAddr, url: &str) -> (u16, String) {
    let mut raw = Raw::connect(proxy).await;
    raw.send(format!("GET {url} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await;
    let (head, body) = raw.read_response(false).await;
    let body = body.unwrap_or_else(|partial| partial);
    (head.status, String::from_utf8_lossy(&body).into_owned())
}

const OPEN: &str = "[intercept]\nmode = \"none\"\n";

fn closed_to(port: u16) -> String {
    format!(
        "[intercept]\nmode = \"none\"\n\n[[rules]]\nname = \"closed\"\nport = [{port}]\noutbound = \"reject\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_rules_apply_to_new_connections_while_open_ones_carry_on() {
    let (feeds_tx, mut feeds) = mpsc::unbounded_channel::<mpsc::Sender<Result<Bytes, BoxError>>>();
    let origin = Backend::start(move |req| {
        let feeds = feeds_tx.clone();
        async move {
            if req.uri().path() == "/download" {
                let (tx, body) = channel_body();
                let _ = feeds.send(tx);
                return Response::new(body);
            }
            Response::new(full("hello"))
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ferryman.toml");
    std::fs::write(&config, OPEN).unwrap();
    let token = format!("admin.token={TOKEN}");
    let mut running = start(
        &dir.path().join("data"),
        &["-c", config.to_str().unwrap(), "--set", &token],
    )
    .await;
    let status = api(running.admin, "GET", "/api/status").await.json();
    let first_hash = status["config"]["hash"].as_str().unwrap().to_string();
    assert!(first_hash.starts_with("sha256:"), "{status}");

    // Open before the change: a tunnel with one exchange done, and a
    // download that has started.
    let mut tunnel = Raw::connect(running.proxy).await;
    let target = origin.addr.to_string();
    tunnel
        .send(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await;
    assert_eq!(tunnel.read_head().await.unwrap().status, 200);
    let hello = format!("GET /hello HTTP/1.1\r\nHost: {target}\r\n\r\n");
    tunnel.send(hello.as_bytes()).await;
    let (head, body) = tunnel.read_response(false).await;
    assert_eq!((head.status, body.unwrap()), (200, b"hello".to_vec()));
    let mut download = Raw::connect(running.proxy).await;
    download
        .send(
            format!(
                "GET {} HTTP/1.1\r\nHost: x\r\n\r\n",
                origin.url("/download")
            )
            .as_bytes(),
        )
        .await;
    let feed = within(LIMIT, "the download reaches the origin", feeds.recv())
        .await
        .unwrap();
    feed.send(Ok(Bytes::from_static(b"part one,")))
        .await
        .unwrap();
    assert_eq!(download.read_head().await.unwrap().status, 200);

    replace_file(&config, &closed_to(origin.addr.port()));
    let outcome = reloaded(&mut running.logs).await;
    assert_eq!(outcome["fields"]["trigger"], "file", "{outcome}");

    // New connections follow the new rule...
    let (status, body) = get(running.proxy, &origin.url("/hello")).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("rule closed"), "{body}");
    let mut refused = Raw::connect(running.proxy).await;
    refused
        .send(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await;
    assert_eq!(refused.read_head().await.unwrap().status, 403);
    // ...while the tunnel and the download opened before it carry on.
    tunnel.send(hello.as_bytes()).await;
    let (head, body) = tunnel.read_response(false).await;
    assert_eq!((head.status, body.unwrap()), (200, b"hello".to_vec()));
    feed.send(Ok(Bytes::from_static(b"part two")))
        .await
        .unwrap();
    drop(feed);
    let rest = within(LIMIT, "the rest of the download", download.read_chunked())
        .await
        .unwrap();
    assert_eq!(rest, b"part one,part two");

    let status = api(running.admin, "GET", "/api/status").await.json();
    let config_status = &status["config"];
    assert_ne!(config_status["hash"], first_hash.as_str());
    assert_eq!(config_status["last_reload"]["ok"], true, "{status}");
    drop(running);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_file_keeps_the_rules_in_force_and_says_why_on_every_trigger() {
    let origin = Backend::start(|_| async { Response::new(full("hello")) }).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ferryman.toml");
    std::fs::write(&config, closed_to(origin.addr.port())).unwrap();
    let token = format!("admin.token={TOKEN}");
    let mut running = start(
        &dir.path().join("data"),
        &["-c", config.to_str().unwrap(), "--set", &token],
    )
    .await;
    let before = api(running.admin, "GET", "/api/status").await.json()["config"]["hash"].clone();
    let route = format!("/api/route?target={}", origin.url("/hello"));
    let explained = api(running.admin, "GET", &route).await.json();
    assert_eq!(
        (&explained["outbound"], &explained["rule"]),
        (&"reject".into(), &"closed".into())
    );
    let route = format!("/api/route?target={}&user=x", "gopher://x.test/");
    assert_eq!(api(running.admin, "GET", &route).await.status, 400);

    let broken = format!(
        "{}\n[[rules]]\ndomain = [\"x.test\"]\noutbound = \"nowhere\"\n",
        closed_to(origin.addr.port())
    );
    replace_file(&config, &broken);
    let outcome = reloaded(&mut running.logs).await;
    assert_eq!(
        message(&outcome).lines().next(),
        Some("configuration refused, the one in force stays:")
    );
    assert!(
        message(&outcome).contains("rules[1].outbound = \"nowhere\": no outbound is named"),
        "{outcome}"
    );
    let status = api(running.admin, "GET", "/api/status").await.json();
    let last = &status["config"]["last_reload"];
    assert_eq!(
        (last["ok"].as_bool(), last["trigger"].as_str()),
        (Some(false), Some("file"))
    );
    assert!(
        last["error"]
            .as_str()
            .unwrap()
            .contains("rules[1].outbound"),
        "{status}"
    );
    assert_eq!(
        status["config"]["hash"], before,
        "the old configuration stays in force"
    );
    let (code, _) = get(running.proxy, &origin.url("/hello")).await;
    assert_eq!(code, 403, "the old rule still holds");

    // The API's reload says the same, as an error.
    let refused = api(running.admin, "POST", "/api/config/reload").await;
    assert_eq!(refused.status, 422);
    assert!(refused.json()["error"]
        .as_str()
        .unwrap()
        .contains("rules[1].outbound"));
    reloaded(&mut running.logs).await;

    // Fixed, through SIGHUP this time (the file watcher may see it too).
    std::fs::write(&config, OPEN).unwrap();
    let pid = running.child.id().unwrap().to_string();
    let hup = tokio::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .await
        .unwrap();
    assert!(hup.success());
    let outcome = within(LIMIT, "the SIGHUP reload", async {
        loop {
            let outcome = reloaded(&mut running.logs).await;
            if outcome["fields"]["trigger"] == "signal" {
                return outcome;
            }
        }
    })
    .await;
    assert_eq!(message(&outcome), "configuration reloaded");
    let (code, body) = get(running.proxy, &origin.url("/hello")).await;
    assert_eq!((code, body.as_str()), (200, "hello"));
    let reloaded_ok = api(running.admin, "POST", "/api/config/reload").await;
    assert_eq!(reloaded_ok.status, 200, "{}", reloaded_ok.text());
    assert_eq!(reloaded_ok.json()["trigger"], "api");
    let metrics = api(running.admin, "GET", "/metrics").await.text();
    let count = |result: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with(&format!(
                    "ferryman_config_reloads_total{{result=\"{result}\"}}"
                ))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert!(count("failed") >= 2 && count("ok") >= 2, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_listener_is_up_before_the_old_one_closes() {
    let origin = Backend::start(|_| async { Response::new(full("hello")) }).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ferryman.toml");
    let free = |_| {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let (first, second) = (free(0), free(1));
    std::fs::write(&config, format!("[proxy]\nlisten = \"{first}\"\n")).unwrap();
    let token = format!("admin.token={TOKEN}");
    // No --proxy-listen: the file says where to listen.
    let mut child = tokio::process::Command::new(common::BIN)
        .args([
            "run",
            "--admin-listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .args(["-c", config.to_str().unwrap(), "--set", &token])
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut logs = common::logs_of(&mut child);
    logs.until("listening", |r| message(r) == "forward proxy listening")
        .await;
    let mut kept = Raw::connect(first).await;
    let hello = format!("GET {} HTTP/1.1\r\nHost: x\r\n\r\n", origin.url("/"));
    kept.send(hello.as_bytes()).await;
    assert_eq!(kept.read_response(false).await.0.status, 200);

    replace_file(&config, &format!("[proxy]\nlisten = \"{second}\"\n"));
    let moved = logs.until("the move", |r| message(r) == "listening").await;
    assert_eq!(moved["fields"]["inbound"], "http proxy");
    assert_eq!(moved["fields"]["listen"], second.to_string());
    assert_eq!(moved["fields"]["was"], first.to_string());
    reloaded(&mut logs).await;
    let (status, body) = get(second, &origin.url("/")).await;
    assert_eq!((status, body.as_str()), (200, "hello"));
    // The old port no longer takes connections; the one kept open works.
    ferryman_testkit::eventually(LIMIT, "the old listener closes", || {
        std::net::TcpStream::connect_timeout(&first, Duration::from_millis(200)).is_err()
    })
    .await;
    kept.send(hello.as_bytes()).await;
    assert_eq!(kept.read_response(false).await.0.status, 200);
}
