//! The reverse tunnel as people run it: a gateway and its agents as
//! separate ferryman processes on loopback, curl and raw clients through
//! the gateway's HTTP proxy and SOCKS5, origins behind the agents.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::{fetch, logs_of, message, start, start_env, Logs, Running, BIN, LIMIT};
use ferryman_testkit::backend::{channel_body, full, websocket_echo, Backend};
use ferryman_testkit::socks::{udp_echo, Dest, Udp};
use ferryman_testkit::tls::TestCa;
use ferryman_testkit::{pattern, websocket_roundtrip, websocket_through, within};
use http_body_util::BodyExt;
use tokio::process::{Child, Command};

const TOKEN: &str = "office-token-0123456789";
const LAB_TOKEN: &str = "lab-token-0123456789ab";
const ADMIN: &str = "admin-token-0123456789abcdef";
const BIG: usize = 100 << 20;

fn sha256(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The origin behind the agents: /hello, /big (100 MiB), /sha (the
/// SHA-256 of what was posted), /slow (a download that takes a minute),
/// /ws (WebSocket echo).
async fn origin(tls: Option<&TestCa>) -> Backend {
    let handler = |req: http::Request<hyper::body::Incoming>| async move {
        match req.uri().path() {
            "/big" => http::Response::new(full(pattern(BIG))),
            "/sha" => {
                let body = req.into_body().collect().await.unwrap().to_bytes();
                http::Response::new(full(sha256(&body)))
            }
            "/slow" => {
                let (tx, body) = channel_body();
                tokio::spawn(async move {
                    for _ in 0..600 {
                        if tx
                            .send(Ok(bytes::Bytes::from(vec![1u8; 16 << 10])))
                            .await
                            .is_err()
                        {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                });
                http::Response::new(body)
            }
            "/ws" => websocket_echo(req).await,
            path => http::Response::new(full(format!("hello {path}"))),
        }
    };
    match tls {
        Some(ca) => Backend::start_tls(ca.server_config(&[b"http/1.1"]), handler).await,
        None => Backend::start(handler).await,
    }
}

struct Gateway {
    running: Running,
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Gateway {
    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn ca(&self) -> PathBuf {
        self.data().join("ca").join("ferryman-ca.pem")
    }

    fn tunnel(&self) -> SocketAddr {
        self.running.listener("tunnel")
    }

    fn proxy_url(&self) -> String {
        format!("http://{}", self.running.proxy)
    }

    fn socks_url(&self) -> String {
        format!("socks5h://{}", self.running.listener("socks5"))
    }

    async fn api(&self, method: &str, path: &str) -> common::Reply {
        let bearer = format!("Bearer {ADMIN}");
        fetch(
            self.running.admin,
            method,
            path,
            &[("authorization", &bearer)],
            None,
        )
        .await
    }

    /// Waits until exactly these agents are connected, each with its
    /// number of carriers.
    async fn agents(&self, wanted: &[(&str, u64)]) {
        let mut wanted: Vec<(String, u64)> =
            wanted.iter().map(|(id, n)| (id.to_string(), *n)).collect();
        wanted.sort();
        within(LIMIT, &format!("agents {wanted:?} connected"), async {
            loop {
                let listed = self.api("GET", "/api/agents").await.json();
                let mut connected: Vec<(String, u64)> = listed["agents"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| {
                        let id = a["id"].as_str().unwrap().to_string();
                        (id, a["carriers"].as_u64().unwrap())
                    })
                    .collect();
                connected.sort();
                if connected == wanted {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
    }
}

/// jemalloc giving freed memory back at once, so that resident memory
/// says what is still in use.
const GIVE_BACK: (&str, &str) = ("_RJEM_MALLOC_CONF", "dirty_decay_ms:0,muzzy_decay_ms:0");

/// A gateway with a tunnel listener at `tunnel` (port 0: any), SOCKS5,
/// the office and lab tokens, short heartbeats, and `extra` configuration.
async fn gateway_at(tunnel: &str, extra: &str) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, gateway_toml(tunnel, extra, true)).unwrap();
    let args = ["-c", config.to_str().unwrap()];
    let running = start_env(BIN, &[], &dir.path().join("data"), &args, &[GIVE_BACK]).await;
    Gateway {
        running,
        dir,
        config,
    }
}

fn gateway_toml(tunnel: &str, extra: &str, with_lab: bool) -> String {
    let lab = if with_lab {
        format!("[[tunnel.agents]]\ntoken = \"{LAB_TOKEN}\"\ngroups = [\"lab\"]\n")
    } else {
        String::new()
    };
    format!(
        r#"
[admin]
token = "{ADMIN}"
[socks5]
listen = "127.0.0.1:0"
[tunnel]
listen = "{tunnel}"
[tunnel.carrier]
heartbeat_interval = "300ms"
heartbeat_timeout = "1s"
[[tunnel.agents]]
token = "{TOKEN}"
groups = ["office"]
{lab}
{extra}
"#
    )
}

async fn gateway(extra: &str) -> Gateway {
    gateway_at("127.0.0.1:0", extra).await
}

/// Everything to 127.0.0.1 goes through the office agents.
const THROUGH_OFFICE: &str = r#"
[[rules]]
ip_cidr = ["127.0.0.1/32"]
outbound = "office"
"#;

struct Agent {
    child: Child,
    logs: Logs,
}

/// An agent process joining `group` with `token`, allowed to reach
/// 127.0.0.1, keeping `carriers` carriers.
async fn agent_with(
    gateway: &Gateway,
    id: &str,
    (token, group): (&str, &str),
    carriers: u64,
) -> Agent {
    let file = gateway.dir.path().join(format!("agent-{id}.toml"));
    std::fs::write(
        &file,
        format!(
            r#"
gateway = "wss://{}"
token = "{token}"
group = "{group}"
id = "{id}"
allow = ["127.0.0.1"]
gateway_ca = "{}"
carriers = {carriers}
[carrier]
heartbeat_interval = "300ms"
heartbeat_timeout = "1s"
"#,
            gateway.tunnel(),
            gateway.ca().display()
        ),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .env(GIVE_BACK.0, GIVE_BACK.1)
        .args([
            "agent",
            "-c",
            file.to_str().unwrap(),
            "--log-format",
            "json",
        ])
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let logs = logs_of(&mut child);
    Agent { child, logs }
}

async fn agent(gateway: &Gateway, id: &str) -> Agent {
    let agent = agent_with(gateway, id, (TOKEN, "office"), 2).await;
    gateway.agents(&[(id, 2)]).await;
    agent
}

async fn curl(args: &[&str]) -> (bool, Vec<u8>, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "120"])
        .args(args)
        .output()
        .await
        .expect("curl is installed");
    (
        out.status.success(),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn curl_ok(args: &[&str]) -> Vec<u8> {
    let (ok, body, err) = curl(args).await;
    assert!(ok, "curl {args:?}: {err}");
    body
}

#[tokio::test]
async fn curl_reaches_origins_behind_an_agent_every_way() {
    let ca = TestCa::new();
    let plain = origin(None).await;
    let secure = origin(Some(&ca)).await;
    let trust = format!(
        "[tls]\nupstream_ca_files = [\"{}\"]\n{THROUGH_OFFICE}",
        ca.pem_path().display()
    );
    let gw = gateway(&trust).await;
    let _agent = agent(&gw, "a1").await;
    let (proxy, socks) = (gw.proxy_url(), gw.socks_url());
    let ferryman_ca = gw.ca().display().to_string();
    let hello = plain.url("/hello");
    let secure_hello = format!("https://127.0.0.1:{}/secure", secure.addr.port());
    // Plain HTTP, a CONNECT tunnel, HTTPS intercepted: by the HTTP proxy.
    assert_eq!(curl_ok(&["-x", &proxy, &hello]).await, b"hello /hello");
    assert_eq!(
        curl_ok(&["-p", "-x", &proxy, &hello]).await,
        b"hello /hello"
    );
    let body = curl_ok(&["-x", &proxy, "--cacert", &ferryman_ca, &secure_hello]).await;
    assert_eq!(body, b"hello /secure");
    // And by SOCKS5, the name resolved where the agent is.
    assert_eq!(curl_ok(&["-x", &socks, &hello]).await, b"hello /hello");
    let socks_secure = format!("https://127.0.0.1:{}/socks-secure", secure.addr.port());
    let body = curl_ok(&["-x", &socks, "--cacert", &ferryman_ca, &socks_secure]).await;
    assert_eq!(body, b"hello /socks-secure");
    // A WebSocket, and the connection table naming the agent meanwhile.
    let mut ws = websocket_through(gw.running.proxy, &plain).await;
    websocket_roundtrip(&mut ws, &["one", "two"]).await;
    let table = gw.api("GET", "/api/connections").await.json();
    let carried: Vec<&serde_json::Value> = table["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["kind"] == "websocket" || s["agent"] == "a1")
        .collect();
    assert!(
        carried
            .iter()
            .any(|s| s["agent"] == "a1" && s["outbound"] == "office"),
        "{table:#}"
    );
    drop(ws);
    // 100 MiB down and up, hash-equal.
    let file = gw.dir.path().join("big");
    let out = file.to_str().unwrap();
    curl_ok(&["-x", &proxy, "-o", out, &plain.url("/big")]).await;
    assert_eq!(
        sha256(&std::fs::read(&file).unwrap()),
        sha256(&pattern(BIG))
    );
    let posted = curl_ok(&[
        "-x",
        &proxy,
        "--data-binary",
        &format!("@{out}"),
        "-H",
        "content-type: application/octet-stream",
        &plain.url("/sha"),
    ])
    .await;
    assert_eq!(String::from_utf8(posted).unwrap(), sha256(&pattern(BIG)));
    // The intercepted exchanges through the agent are captured: in the HAR.
    within(LIMIT, "the intercepted exchanges indexed", async {
        loop {
            let listed = gw.api("GET", "/api/exchanges?host=127.0.0.1").await.json();
            let urls = listed.to_string();
            if urls.contains(&secure_hello) && urls.contains(&socks_secure) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let har = Command::new(BIN)
        .args([
            "har",
            "--data-dir",
            gw.data().to_str().unwrap(),
            "--host",
            "127.0.0.1",
        ])
        .output()
        .await
        .unwrap();
    let har: serde_json::Value = serde_json::from_slice(&har.stdout).unwrap();
    let urls: Vec<&str> = har["log"]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["request"]["url"].as_str().unwrap())
        .collect();
    assert!(urls.contains(&secure_hello.as_str()), "{urls:?}");
    assert!(urls.contains(&socks_secure.as_str()), "{urls:?}");
}

#[tokio::test]
async fn a_published_service_reaches_a_port_behind_the_agent() {
    let plain = origin(None).await;
    let port = ferryman_testkit::peers::free_port();
    let service = format!(
        "[[tunnel.services]]\nlisten = \"127.0.0.1:{port}\"\ngroup = \"office\"\ntarget = \"127.0.0.1:{}\"\n",
        plain.addr.port()
    );
    let gw = gateway(&service).await;
    let _agent = agent(&gw, "a1").await;
    let url = format!("http://127.0.0.1:{port}/published");
    assert_eq!(curl_ok(&[&url]).await, b"hello /published");
    // A target nobody listens on: the client sees its connection reset.
    let closed = ferryman_testkit::peers::free_port();
    drop(gw);
    let service = format!(
        "[[tunnel.services]]\nlisten = \"127.0.0.1:{port}\"\ngroup = \"office\"\ntarget = \"127.0.0.1:{closed}\"\n"
    );
    let gw = gateway(&service).await;
    let _agent = agent(&gw, "a1").await;
    let (ok, _, err) = curl(&[&url]).await;
    assert!(!ok);
    assert!(
        err.contains("reset") || err.contains("Empty reply"),
        "{err}"
    );
}

/// Which agent carries the one tunnel open through the gateway, once
/// bytes flow down it.
async fn carrying_agent(gw: &Gateway) -> String {
    within(LIMIT, "the download under way", async {
        loop {
            let table = gw.api("GET", "/api/connections").await.json();
            let agent = table["sessions"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|s| s["state"] == "open" && s["bytes_down"].as_u64() > Some(0))
                .find_map(|s| s["agent"].as_str().map(String::from));
            if let Some(agent) = agent {
                return agent;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

#[tokio::test]
async fn a_killed_or_frozen_agent_resets_its_streams_and_another_takes_new_ones() {
    let plain = origin(None).await;
    // Tunnels carried as bytes, on the stream their CONNECT opened.
    let opaque = format!("{THROUGH_OFFICE}intercept = false\n");
    let gw = gateway(&opaque).await;
    let mut agents = Vec::new();
    for id in ["a1", "a2", "a3"] {
        agents.push((id, agent_with(&gw, id, (TOKEN, "office"), 1).await));
    }
    gw.agents(&[("a1", 1), ("a2", 1), ("a3", 1)]).await;
    // kill -9: the agent's sockets close with it. SIGSTOP: they stay open
    // and say nothing, as when a network path dies; only the heartbeat
    // can tell.
    for signal in ["-KILL", "-STOP"] {
        // A download that would take a minute, in a CONNECT tunnel.
        let download = Command::new("curl")
            .args([
                "-sS",
                "-p",
                "-o",
                "/dev/null",
                "-x",
                &gw.proxy_url(),
                &plain.url("/slow"),
            ])
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let carrier = carrying_agent(&gw).await;
        let victim = agents.iter().position(|(id, _)| *id == carrier).unwrap();
        let (_, mut stopped) = agents.remove(victim);
        let pid = stopped.child.id().unwrap().to_string();
        assert!(Command::new("kill")
            .args([signal, &pid])
            .status()
            .await
            .unwrap()
            .success());
        // The user sees the download fail, not hang for a minute.
        let failed = within(LIMIT, "the download fails", download.wait_with_output())
            .await
            .unwrap();
        assert!(!failed.status.success());
        let said = String::from_utf8_lossy(&failed.stderr);
        // A reset, not an end that could pass for the download's.
        assert!(
            said.contains("Connection reset by peer"),
            "{signal}: {said}"
        );
        let _ = stopped.child.kill().await;
        let left: Vec<(&str, u64)> = agents.iter().map(|(id, _)| (*id, 1)).collect();
        gw.agents(&left).await;
    }
    // New streams go to the one left, and none fails.
    for i in 0..10 {
        let url = plain.url(&format!("/after-{i}"));
        let body = curl_ok(&["-p", "-x", &gw.proxy_url(), &url]).await;
        assert_eq!(body, format!("hello /after-{i}").as_bytes());
    }
}

#[tokio::test]
async fn agents_come_back_by_themselves_after_the_gateway_restarts() {
    let plain = origin(None).await;
    let tunnel = format!("127.0.0.1:{}", ferryman_testkit::peers::free_port());
    let gw = gateway_at(&tunnel, THROUGH_OFFICE).await;
    let mut agent = agent(&gw, "a1").await;
    assert_eq!(
        curl_ok(&["-x", &gw.proxy_url(), &plain.url("/before")]).await,
        b"hello /before"
    );
    // The same gateway again (same data, same CA), after a hard stop.
    let Gateway {
        mut running,
        dir,
        config,
    } = gw;
    running.child.kill().await.unwrap();
    let _ = running.child.wait().await;
    agent
        .logs
        .until("the carriers see the gateway go", |r| {
            message(r) == "carrier closed"
        })
        .await;
    let running = start(&dir.path().join("data"), &["-c", config.to_str().unwrap()]).await;
    let gw = Gateway {
        running,
        dir,
        config,
    };
    gw.agents(&[("a1", 2)]).await;
    assert_eq!(
        curl_ok(&["-x", &gw.proxy_url(), &plain.url("/after")]).await,
        b"hello /after"
    );
}

#[tokio::test]
async fn a_revoked_token_disconnects_its_agent_and_keeps_it_out() {
    let gw = gateway("").await;
    let _office = agent(&gw, "o1").await;
    let mut lab = agent_with(&gw, "l1", (LAB_TOKEN, "lab"), 1).await;
    gw.agents(&[("l1", 1), ("o1", 2)]).await;
    // The lab token goes from the file; a reload puts that in force.
    std::fs::write(&gw.config, gateway_toml("127.0.0.1:0", "", false)).unwrap();
    let reloaded = gw.api("POST", "/api/config/reload").await;
    assert_eq!(reloaded.status, 200, "{}", reloaded.text());
    let refused = lab
        .logs
        .until("the agent is refused", |r| {
            r["fields"]["error"]
                .as_str()
                .is_some_and(|e| e.contains("401") && e.contains("unknown agent token"))
        })
        .await;
    assert_eq!(message(&refused), "cannot connect a carrier");
    gw.agents(&[("o1", 2)]).await;
}

/// Resident memory of `pid`, KiB; its open descriptors.
fn rss_and_fds(pid: u32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    (rss, fds)
}

/// Lets this test process hold a few thousand sockets.
fn raise_open_files() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the struct they are given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max.min(65_536);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

#[tokio::test]
async fn a_thousand_streams_through_one_agent_leave_nothing_behind() {
    raise_open_files();
    // An origin that echoes each connection.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    // Closed sessions leave the connection table at once, and nothing is
    // captured: what stays is then only what leaks.
    let opaque = format!(
        "[sessions]\nlinger = \"1ms\"\nhistory = 1\n[capture]\nenabled = false\n\
         {THROUGH_OFFICE}intercept = false\n"
    );
    let gw = gateway(&opaque).await;
    let agent = agent(&gw, "a1").await;
    let agent_pid = agent.child.id().unwrap();
    let tasks = || async {
        let status = gw.api("GET", "/api/status").await.json();
        status["config"]["tasks"].as_u64().unwrap()
    };
    let measure = || async {
        let gateway = rss_and_fds(gw.running.pid());
        let agent = rss_and_fds(agent_pid);
        (gateway, agent, tasks().await)
    };
    let before = measure().await;
    let mut settled_rss = Vec::new();
    for round in 0..2 {
        let mut tunnels = Vec::new();
        for i in 0..1000 {
            let mut raw = ferryman_testkit::raw::Raw::connect(gw.running.proxy).await;
            raw.send(format!("CONNECT {echo} HTTP/1.1\r\nHost: {echo}\r\n\r\n").as_bytes())
                .await;
            assert_eq!(raw.read_head().await.unwrap().status, 200, "tunnel {i}");
            tunnels.push(raw);
        }
        for (i, raw) in tunnels.iter_mut().enumerate() {
            let ping = format!("ping {i:04}");
            raw.send(ping.as_bytes()).await;
            assert_eq!(raw.read_exact(ping.len()).await, ping.as_bytes());
        }
        let during = measure().await;
        let listed = gw.api("GET", "/api/agents").await.json();
        assert_eq!(listed["agents"][0]["open_streams"], 1000);
        assert!(
            during.0 .1 >= before.0 .1 + 990,
            "the gateway holds a socket per client"
        );
        assert!(during.2 >= before.2 + 1000, "a task per tunnel");
        drop(tunnels);
        let settled = within(
            LIMIT,
            "descriptors and tasks back to their baseline",
            async {
                loop {
                    let now = measure().await;
                    let listed = gw.api("GET", "/api/agents").await.json();
                    let idle = listed["agents"][0]["open_streams"] == 0;
                    let fds = now.0 .1 <= before.0 .1 && now.1 .1 <= before.1 .1;
                    if idle && fds && now.2 <= before.2 {
                        return now;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        )
        .await;
        // Memory: what the streams took is given back, but for tables that
        // grew and stay grown (h2's, tokio's): half the growth, or 8 MiB.
        for (who, before, during, after) in [
            ("gateway", before.0 .0, during.0 .0, settled.0 .0),
            ("agent", before.1 .0, during.1 .0, settled.1 .0),
        ] {
            let slack = (during.saturating_sub(before) / 2).max(8 << 10);
            assert!(
                after.saturating_sub(before) <= slack,
                "round {round}: {who} RSS {before} -> {during} -> {after} KiB"
            );
        }
        settled_rss.push((settled.0 .0, settled.1 .0));
    }
    // A second thousand leaves no more behind than the first.
    let (first, second) = (settled_rss[0], settled_rss[1]);
    assert!(
        second.0 <= first.0 + 2048,
        "gateway RSS {first:?} -> {second:?} KiB"
    );
    assert!(
        second.1 <= first.1 + 2048,
        "agent RSS {first:?} -> {second:?} KiB"
    );
}

#[tokio::test]
async fn udp_through_socks5_and_the_agent_comes_back_from_where_it_went() {
    let echo = udp_echo().await;
    let gw = gateway(THROUGH_OFFICE).await;
    let _agent = agent(&gw, "a1").await;
    let udp = Udp::associate(gw.running.listener("socks5"), None).await;
    for i in 0..3 {
        let payload = format!("datagram {i} through the agent");
        udp.send(Dest::Addr(echo), payload.as_bytes()).await;
        let (from, back) = within(LIMIT, "the echo", udp.recv()).await;
        assert_eq!(from, echo);
        assert_eq!(back, payload.as_bytes());
    }
    // The association's session names the agent that carried it.
    let table = gw.api("GET", "/api/connections").await.json();
    let udp_session = table["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["kind"] == "udp")
        .cloned()
        .unwrap();
    assert_eq!(udp_session["agent"], "a1");
    assert_eq!(udp_session["outbound"], "office");
}

#[tokio::test]
async fn the_proxy_user_can_choose_the_agents_as_anyproxy_did() {
    let plain = origin(None).await;
    let by_user = r#"
[proxy]
auth = ["office:pw", "me:pw"]
[[rules]]
user = ["office"]
outbound = "office"
[[rules]]
intercept = false
"#;
    let gw = gateway(by_user).await;
    let _agent = agent(&gw, "a1").await;
    let proxy = |user: &str| format!("http://{user}:pw@{}", gw.running.proxy);
    for user in ["office", "me"] {
        let url = plain.url(&format!("/{user}"));
        assert_eq!(
            curl_ok(&["-p", "-x", &proxy(user), &url]).await,
            format!("hello /{user}").as_bytes()
        );
    }
    let table = gw.api("GET", "/api/connections").await.json();
    let tunnels: Vec<(String, String)> = table["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["kind"] == "tunnel")
        .map(|s| {
            let outbound = s["outbound"].as_str().unwrap_or("").to_string();
            (outbound, s["agent"].as_str().unwrap_or("-").to_string())
        })
        .collect();
    assert!(
        tunnels.contains(&("office".into(), "a1".into())),
        "{tunnels:?}"
    );
    assert!(
        tunnels.contains(&("direct".into(), "-".into())),
        "{tunnels:?}"
    );
}
