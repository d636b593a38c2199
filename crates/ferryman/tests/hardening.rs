//! The binary under hostile or unlucky conditions: a decompression bomb in
//! a captured body, a half-sent admin request at shutdown, captures that
//! must stay private, the admin listener asked for through the proxy, a
//! client arriving during the grace period, captures a hung store never
//! takes, and someone guessing the admin token.

use std::time::{Duration, Instant};

use ferryman_testkit::backend::{full, Backend};
use ferryman_testkit::raw::Raw;
use ferryman_testkit::within;
mod common;

use common::{fetch, message, output, start, terminate, LIMIT};

const TOKEN: &str = "hardening-test-token-0123";

fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

/// Peak resident memory of `pid`, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decompression_bomb_decodes_to_the_cap_and_says_so() {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    for _ in 0..512 {
        gz.write_all(&[0u8; 1 << 20]).unwrap();
    }
    let bomb = bytes::Bytes::from(gz.finish().unwrap());
    assert!(
        bomb.len() < 1 << 20,
        "512 MiB of zeros in {} bytes",
        bomb.len()
    );
    let origin = Backend::start(move |_| {
        let bomb = bomb.clone();
        async move {
            let mut response = http::Response::new(full(bomb));
            response
                .headers_mut()
                .insert("content-encoding", http::HeaderValue::from_static("gzip"));
            response
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let token = format!("admin.token={TOKEN}");
    let mut running = start(&data, &["--set", &token]).await;
    let pid = running.child.id().unwrap();
    let reply = fetch(running.proxy, "GET", &origin.url("/bomb"), &[], None).await;
    assert_eq!(reply.status, 200);
    let record = running
        .logs
        .until("the exchange's access line", |r| {
            r["target"] == "ferryman::access"
        })
        .await;
    let session = record["fields"]["session"].as_u64().unwrap();
    let id = within(LIMIT, "the record in the index", async {
        loop {
            let found = fetch(
                running.admin,
                "GET",
                "/api/exchanges",
                &[("authorization", &bearer())],
                None,
            )
            .await;
            if let Some(id) = found.json()["exchanges"]
                .as_array()
                .and_then(|all| all.iter().find(|x| x["session_id"] == session))
                .and_then(|x| x["id"].as_str())
            {
                return id.to_string();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let before = peak_rss_kib(pid);
    let path = format!("/api/exchanges/{id}/response/body?decode=true");
    let decoded = fetch(
        running.admin,
        "GET",
        &path,
        &[("authorization", &bearer())],
        None,
    )
    .await;
    assert_eq!(decoded.status, 200);
    assert_eq!(decoded.body.len(), 16 << 20, "the view's cap");
    let said = decoded.header("x-ferryman-decoding");
    assert!(
        said.contains("decoding stopped after 16777216 bytes"),
        "{said}"
    );
    let grown = peak_rss_kib(pid).saturating_sub(before);
    assert!(
        grown < 128 << 10,
        "peak RSS grew {grown} KiB decoding a bomb"
    );

    terminate(&mut running.child).await;
    running.child.wait().await.unwrap();
    let out = dir.path().join("decoded");
    let (code, _, err) = output(&[
        "--data-dir",
        data.to_str().unwrap(),
        "body",
        &id,
        "response",
        "--decode",
        "--max-decoded",
        "1000000",
        "-o",
        out.to_str().unwrap(),
    ])
    .await;
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("decoding stopped after 1000000 bytes"),
        "{err}"
    );
    assert_eq!(std::fs::metadata(&out).unwrap().len(), 1_000_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_half_sent_admin_request_exits_within_the_grace_and_a_second_signal_at_once()
{
    let dir = tempfile::tempdir().unwrap();
    let mut running = start(dir.path(), &["--set", "shutdown_grace=2s"]).await;
    let mut half = Raw::connect(running.admin).await;
    half.send(b"GET /api/status HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await;
    let started = Instant::now();
    terminate(&mut running.child).await;
    let status = within(LIMIT, "the exit", running.child.wait())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // A download held open, then two signals: the second does not wait.
    let (origin, _release) = Backend::held("never").await;
    let mut running = start(dir.path(), &["--set", "shutdown_grace=60s"]).await;
    let mut held = Raw::connect(running.proxy).await;
    held.send(format!("GET {} HTTP/1.1\r\nHost: b\r\n\r\n", origin.url("/")).as_bytes())
        .await;
    ferryman_testkit::eventually(LIMIT, "the request at the origin", || {
        origin.requests() == 1
    })
    .await;
    terminate(&mut running.child).await;
    running
        .logs
        .until("shutting down", |r| message(r) == "shutting down")
        .await;
    let started = Instant::now();
    terminate(&mut running.child).await;
    let status = within(LIMIT, "the exit", running.child.wait())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(1));
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captures_and_everything_else_in_the_data_dir_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let origin = Backend::start(|_| async { http::Response::new(full("secret cookie")) }).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // A data dir made readable by someone else beforehand.
    std::fs::create_dir_all(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut running = start(&data, &[]).await;
    let reply = fetch(running.proxy, "GET", &origin.url("/x"), &[], None).await;
    assert_eq!(reply.status, 200);
    terminate(&mut running.child).await;
    running.child.wait().await.unwrap();
    let mut seen = 0;
    let mut stack = vec![data.clone()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::metadata(&path).unwrap();
        let mode = meta.permissions().mode() & 0o777;
        if meta.is_dir() {
            assert_eq!(mode, 0o700, "{}", path.display());
            stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else {
            assert_eq!(mode, 0o600, "{}", path.display());
            seen += 1;
        }
    }
    assert!(
        seen >= 5,
        "the CA, the token, the index and the capture: {seen} files"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_is_not_reachable_through_the_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(dir.path(), &[]).await;
    let url = format!("http://{}/api/status", running.admin);
    let reply = fetch(running.proxy, "GET", &url, &[], None).await;
    assert_eq!(reply.status, 508, "{}", reply.text());
    let mut raw = Raw::connect(running.proxy).await;
    raw.send(format!("CONNECT {} HTTP/1.1\r\nHost: x\r\n\r\n", running.admin).as_bytes())
        .await;
    assert_eq!(raw.read_head().await.unwrap().status, 508);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_the_grace_period_new_clients_are_refused_not_left_waiting() {
    let (origin, release) = Backend::held("finished").await;
    let dir = tempfile::tempdir().unwrap();
    let mut running = start(dir.path(), &["--set", "shutdown_grace=30s"]).await;
    let mut held = Raw::connect(running.proxy).await;
    held.send(format!("GET {} HTTP/1.1\r\nHost: b\r\n\r\n", origin.url("/")).as_bytes())
        .await;
    ferryman_testkit::eventually(LIMIT, "the request at the origin", || {
        origin.requests() == 1
    })
    .await;
    terminate(&mut running.child).await;
    running
        .logs
        .until("shutting down", |r| message(r) == "shutting down")
        .await;
    let refused = tokio::net::TcpStream::connect(running.proxy).await;
    assert!(
        refused.is_err(),
        "a connection was accepted during the grace period"
    );
    release.add_permits(1);
    let (head, body) = held.read_response(false).await;
    assert_eq!((head.status, body.unwrap()), (200, b"finished".to_vec()));
    let status = within(LIMIT, "the exit", running.child.wait())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_a_hung_store_never_took_are_counted_as_lost_at_exit() {
    use ferryman_testkit::s3::{self, Mode, S3Server};
    let store = S3Server::start().await;
    store.set_mode(Mode::Hang);
    let origin = Backend::start(|_| async { http::Response::new(full("answer")) }).await;
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("capture.store.endpoint={}", store.endpoint());
    let bucket = format!("capture.store.bucket={}", s3::BUCKET);
    let key = format!("capture.store.access_key_id={}", s3::ACCESS_KEY);
    let secret = format!("capture.store.secret_access_key={}", s3::SECRET_KEY);
    let mut args = vec!["--set", "shutdown_grace=1s"];
    for setting in [
        "capture.store.kind=s3",
        "capture.store.region=us-east-1",
        "capture.store.path_style=true",
        "capture.store.allow_http=true",
        "capture.store_timeout=60s",
        &endpoint,
        &bucket,
        &key,
        &secret,
    ] {
        args.extend(["--set", setting]);
    }
    let mut running = start(dir.path(), &args).await;
    for n in 0..5 {
        let reply = fetch(
            running.proxy,
            "GET",
            &origin.url(&format!("/{n}")),
            &[],
            None,
        )
        .await;
        assert_eq!(reply.status, 200, "the traffic does not notice");
    }
    terminate(&mut running.child).await;
    let summary = running
        .logs
        .until("the capture summary", |r| message(r) == "capture")
        .await;
    assert!(
        summary["fields"]["records_lost"].as_u64().unwrap() >= 5,
        "{summary}"
    );
    assert_eq!(summary["fields"]["records_stored"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessing_the_admin_token_is_slowed_and_sessions_expire() {
    let dir = tempfile::tempdir().unwrap();
    let token = format!("admin.token={TOKEN}");
    let running = start(
        dir.path(),
        &["--set", &token, "--set", "admin.session_timeout=1s"],
    )
    .await;
    let login = |token: &str| {
        let body = serde_json::json!({ "token": token }).to_string();
        async move { fetch(running.admin, "POST", "/api/login", &[], Some(&body)).await }
    };
    for _ in 0..5 {
        assert_eq!(login("wrong-wrong-wrong-1").await.status, 401);
    }
    let throttled = login("wrong-wrong-wrong-1").await;
    assert_eq!(throttled.status, 429);
    assert!(throttled.header("retry-after").parse::<u64>().unwrap() >= 1);
    // Even the right token waits its turn from this address.
    assert_eq!(login(TOKEN).await.status, 429);
    let session = within(LIMIT, "a try earned back", async {
        loop {
            let answer = login(TOKEN).await;
            if answer.status == 204 {
                return answer
                    .header("set-cookie")
                    .split(';')
                    .next()
                    .unwrap()
                    .to_string();
            }
            assert_eq!(answer.status, 429);
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
    .await;
    let status = |cookie: String| async move {
        fetch(
            running.admin,
            "GET",
            "/api/status",
            &[("cookie", &cookie)],
            None,
        )
        .await
        .status
    };
    assert_eq!(status(session.clone()).await, 200);
    // Unused past the session timeout: logged out.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(status(session).await, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_256_open_files_tunnels_wait_their_turn_and_the_admin_still_answers() {
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = upstream.local_addr().unwrap();
    // Each tunnel's far end stays open until the client's side ends.
    let held = tokio::spawn(async move {
        while let Ok((mut socket, _)) = upstream.accept().await {
            tokio::spawn(async move {
                let mut sink = Vec::new();
                let _ = tokio::io::AsyncReadExt::read_to_end(&mut socket, &mut sink).await;
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let token = format!("admin.token={TOKEN}");
    let running = common::start_with(
        "prlimit",
        &["--nofile=256:256", common::BIN],
        dir.path(),
        &["--set", &token],
    )
    .await;
    let pid = running.child.id().unwrap();
    let mut tunnels = Vec::new();
    let mut waiting = Vec::new();
    for _ in 0..120 {
        let mut raw = Raw::connect(running.proxy).await;
        raw.send(format!("CONNECT {target} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await;
        match tokio::time::timeout(Duration::from_millis(200), raw.read_head()).await {
            Ok(Some(head)) => {
                assert_eq!(head.status, 200);
                tunnels.push(raw);
            }
            Ok(None) => panic!("a tunnel closed without an answer"),
            Err(_) => waiting.push(raw),
        }
    }
    // (256 - 64 reserved) / 2 descriptors per tunnel.
    assert_eq!(tunnels.len(), 96, "{} waiting", waiting.len());
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    assert!(fds < 256, "{fds} descriptors open");
    let status = fetch(
        running.admin,
        "GET",
        "/api/status",
        &[("authorization", &bearer())],
        None,
    )
    .await;
    assert_eq!(status.status, 200, "the admin answers at the limit");
    // A tunnel that ends lets a waiting one through.
    drop(tunnels.pop());
    let mut next = waiting.remove(0);
    let head = within(LIMIT, "a waiting tunnel", next.read_head()).await;
    assert_eq!(head.unwrap().status, 200);
    held.abort();
}
