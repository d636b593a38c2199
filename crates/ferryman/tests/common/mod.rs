//! Running the `ferryman` binary as a user does, and reading its logs.
#![allow(dead_code)] // each test file uses its own part

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use ferryman_testkit::within;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;

pub const LIMIT: Duration = Duration::from_secs(20);
pub const BIN: &str = env!("CARGO_BIN_EXE_ferryman");

pub async fn output(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(BIN).args(args).output().await.unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Stderr lines of a running ferryman, parsed as JSON log records.
pub struct Logs(mpsc::UnboundedReceiver<serde_json::Value>);

impl Logs {
    pub async fn until(
        &mut self,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        within(LIMIT, what, async {
            loop {
                let record = self.0.recv().await.expect("ferryman exited early");
                if pred(&record) {
                    return record;
                }
            }
        })
        .await
    }
}

pub fn message(record: &serde_json::Value) -> &str {
    record["fields"]["message"].as_str().unwrap_or("")
}

pub struct Running {
    pub child: tokio::process::Child,
    pub logs: Logs,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    /// Every other listener, by inbound (`socks5`, `tunnel`, ...).
    pub listening: std::collections::HashMap<String, SocketAddr>,
}

impl Running {
    /// The address of the `inbound` listener (`socks5`, `tunnel`).
    pub fn listener(&self, inbound: &str) -> SocketAddr {
        *self
            .listening
            .get(inbound)
            .unwrap_or_else(|| panic!("no {inbound} listener in {:?}", self.listening))
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap()
    }
}

/// Runs ferryman on `data` with JSON logs, both listeners on ephemeral
/// loopback ports, plus `extra` arguments.
pub async fn start(data: &Path, extra: &[&str]) -> Running {
    start_with(BIN, &[], data, extra).await
}

/// [`start`], through `program` with `before` (ferryman's path among them),
/// such as `prlimit --nofile=256:256 BIN`.
pub async fn start_with(program: &str, before: &[&str], data: &Path, extra: &[&str]) -> Running {
    start_env(program, before, data, extra, &[]).await
}

/// [`start_with`], with `envs` in ferryman's environment.
pub async fn start_env(
    program: &str,
    before: &[&str],
    data: &Path,
    extra: &[&str],
    envs: &[(&str, &str)],
) -> Running {
    let mut child = Command::new(program)
        .envs(envs.iter().copied())
        .args(before)
        .args([
            "run",
            "--proxy-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--data-dir",
        ])
        .arg(data)
        .args(extra)
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut logs = logs_of(&mut child);
    let (mut proxy, mut admin) = (None, None);
    let mut others = std::collections::HashMap::new();
    while proxy.is_none() || admin.is_none() {
        let listening = logs
            .until("listening", |r| message(r).ends_with("listening"))
            .await;
        let addr: SocketAddr = listening["fields"]["listen"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        match message(&listening) {
            "forward proxy listening" => proxy = Some(addr),
            "admin listening" => admin = Some(addr),
            _ => {
                if let Some(inbound) = listening["fields"]["inbound"].as_str() {
                    others.insert(inbound.to_string(), addr);
                }
            }
        }
    }
    Running {
        child,
        logs,
        proxy: proxy.unwrap(),
        admin: admin.unwrap(),
        listening: others,
    }
}

/// The JSON log records `child` writes to its (piped) stderr.
pub fn logs_of(child: &mut tokio::process::Child) -> Logs {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let record =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            let _ = tx.send(record);
        }
    });
    Logs(rx)
}

pub async fn terminate(child: &mut tokio::process::Child) {
    let pid = child.id().unwrap().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap()
        .success());
}

/// An HTTP answer, whole.
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: bytes::Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// One HTTP/1.1 request on a fresh connection to `addr`. `target` is a
/// path, or an absolute URL when `addr` is the proxy.
pub async fn fetch(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Reply {
    use http_body_util::{BodyExt, Full};
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut request = http::Request::builder()
        .method(method)
        .uri(target)
        .header("host", addr.to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if body.is_some() {
        request = request.header("content-type", "application/json");
    }
    let request = request
        .body(Full::new(bytes::Bytes::from(body.unwrap_or("").to_owned())))
        .unwrap();
    let response = within(LIMIT, "response", sender.send_request(request))
        .await
        .unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = within(LIMIT, "body", response.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    Reply {
        status,
        headers,
        body,
    }
}
