//! The `ferryman` binary as a user runs it.

use std::process::Stdio;
use std::time::Duration;

use ferryman_testkit::backend::Backend;
use ferryman_testkit::raw::Raw;
use ferryman_testkit::{eventually, within};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;

const LIMIT: Duration = Duration::from_secs(20);
const BIN: &str = env!("CARGO_BIN_EXE_ferryman");

async fn output(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(BIN).args(args).output().await.unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn help_and_version() {
    let (code, out, _) = output(&["--help"]).await;
    assert_eq!(code, Some(0));
    for word in [
        "run",
        "check-config",
        "--config",
        "--set",
        "--proxy-listen",
        "--data-dir",
        "--log-format",
    ] {
        assert!(out.contains(word), "--help mentions {word}:\n{out}");
    }
    let (code, out, _) = output(&["--version"]).await;
    assert_eq!(code, Some(0));
    assert_eq!(
        out.trim(),
        format!("ferryman {}", env!("CARGO_PKG_VERSION"))
    );
}

#[tokio::test]
async fn check_config_accepts_good_files_and_names_what_is_wrong_in_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "[proxy]\nlisten = \"127.0.0.1:3128\"\n[upstream]\nconnect_timeout = \"2s\"\n",
    )
    .unwrap();
    let (code, out, err) = output(&["check-config", good.to_str().unwrap()]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("ok"));

    let (code, _, err) = output(&[
        "check-config",
        good.to_str().unwrap(),
        "--set",
        "upstream.idle_timeout=forever",
    ])
    .await;
    assert_eq!(code, Some(2));
    assert!(
        err.contains("upstream.idle_timeout = \"forever\"") && err.contains("not a duration"),
        "{err}"
    );

    let not_a_ca = dir.path().join("not-a-ca.pem");
    std::fs::write(&not_a_ca, "hello\n").unwrap();
    let setting = format!("tls.upstream_ca_files=[\"{}\"]", not_a_ca.display());
    let (code, _, err) = output(&["check-config", good.to_str().unwrap(), "--set", &setting]).await;
    assert_eq!(code, Some(2));
    assert!(
        err.contains("tls.upstream_ca_files")
            && err.contains("not-a-ca.pem: holds no PEM certificate"),
        "{err}"
    );

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[proxy]\nlisten = \"127.0.0.1:3128\"\nlisten_port = 1\n",
    )
    .unwrap();
    let (code, _, err) = output(&["check-config", bad.to_str().unwrap()]).await;
    assert_eq!(code, Some(2));
    assert!(err.contains("listen_port"), "{err}");
}

#[tokio::test]
async fn an_open_proxy_is_refused_before_anything_listens() {
    let (code, _, err) = output(&["--proxy-listen", "0.0.0.0:0"]).await;
    assert_eq!(code, Some(2));
    assert!(
        err.contains("proxy.listen") && err.contains("allow_open_proxy"),
        "{err}"
    );
}

/// Stderr lines of a running ferryman, parsed as JSON log records.
struct Logs(mpsc::UnboundedReceiver<serde_json::Value>);

impl Logs {
    async fn until(
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

fn message(record: &serde_json::Value) -> &str {
    record["fields"]["message"].as_str().unwrap_or("")
}

/// Runs ferryman on `data` with JSON logs; returns it, its logs and its proxy address.
async fn start(data: &std::path::Path) -> (tokio::process::Child, Logs, std::net::SocketAddr) {
    let mut child = Command::new(BIN)
        .args([
            "run",
            "--proxy-listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--data-dir",
        ])
        .arg(data)
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let record =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            let _ = tx.send(record);
        }
    });
    let mut logs = Logs(rx);
    let listening = logs
        .until("listening", |r| message(r) == "forward proxy listening")
        .await;
    let addr = listening["fields"]["listen"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    (child, logs, addr)
}

async fn terminate(child: &mut tokio::process::Child) {
    let pid = child.id().unwrap().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap()
        .success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_logs_json_access_lines_and_drains_on_sigterm() {
    let (backend, release) = Backend::held("slow answer").await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (mut child, mut logs, addr) = start(&data).await;
    assert!(data.is_dir(), "data dir created");

    let mut raw = Raw::connect(addr).await;
    raw.send(format!("GET {} HTTP/1.1\r\nHost: b\r\n\r\n", backend.url("/slow")).as_bytes())
        .await;
    eventually(LIMIT, "request at the backend", || backend.requests() == 1).await;

    terminate(&mut child).await;
    logs.until("shutting down", |r| message(r) == "shutting down")
        .await;

    release.add_permits(1);
    let (head, body) = within(LIMIT, "in-flight answer", raw.read_response(false)).await;
    assert_eq!(head.status, 200);
    assert_eq!(body.unwrap(), b"slow answer");
    drop(raw);

    let access = logs
        .until("access line", |r| r["target"] == "ferryman::access")
        .await;
    let fields = &access["fields"];
    assert_eq!(fields["method"], "GET");
    assert_eq!(fields["status"], 200);
    assert_eq!(fields["target"], backend.url("/slow"));
    assert_eq!(fields["bytes_down"], 11);
    assert_eq!(fields["aborted"], false);
    assert!(fields["duration_ms"].as_f64().unwrap() > 0.0);

    let status = within(LIMIT, "exit", child.wait()).await.unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn har_and_body_read_what_a_run_captured() {
    use std::io::Write;
    let text = "compressed on the wire, plain to read ".repeat(50);
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gzip.write_all(text.as_bytes()).unwrap();
    let gzipped = bytes::Bytes::from(gzip.finish().unwrap());
    let served = gzipped.clone();
    let backend = Backend::start(move |_| {
        let body = served.clone();
        async move {
            let mut response = http::Response::new(ferryman_testkit::backend::full(body));
            response
                .headers_mut()
                .insert("content-encoding", http::HeaderValue::from_static("gzip"));
            response
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_arg = data.to_str().unwrap();
    let (mut child, _logs, addr) = start(&data).await;
    let curl = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-x",
            &format!("http://{addr}"),
            &backend.url("/gz"),
        ])
        .status()
        .await
        .unwrap();
    assert!(curl.success());
    terminate(&mut child).await;
    let status = within(LIMIT, "exit", child.wait()).await.unwrap();
    assert_eq!(status.code(), Some(0));

    let (code, out, err) = output(&["--data-dir", data_arg, "har", "--host", "127.0.0.1"]).await;
    assert_eq!(code, Some(0), "{err}");
    let har: serde_json::Value = serde_json::from_str(&out).unwrap();
    let entries = har["log"]["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{out}");
    assert_eq!(entries[0]["request"]["url"], backend.url("/gz"));
    assert_eq!(entries[0]["response"]["content"]["text"], text.as_str());
    let id = entries[0]["_id"].as_str().unwrap();
    let (_, out, _) = output(&["--data-dir", data_arg, "har", "--until", "1h"]).await;
    let har: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(har["log"]["entries"].as_array().unwrap().is_empty());

    let raw = Command::new(BIN)
        .args(["--data-dir", data_arg, "body", id, "response"])
        .output()
        .await
        .unwrap();
    assert_eq!(raw.stdout, gzipped);
    let (code, decoded, err) =
        output(&["--data-dir", data_arg, "body", id, "response", "--decode"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(decoded, text);
    let (code, _, err) = output(&["--data-dir", data_arg, "body", "not-an-id", "request"]).await;
    assert_eq!(code, Some(2));
    assert!(err.contains("not an exchange id"), "{err}");
}

#[tokio::test]
async fn the_ca_is_created_once_and_exported_as_pem_or_der() {
    use base64::Engine;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let (code, out, err) = output(&["ca", "path", "--data-dir", data]).await;
    assert_eq!(code, Some(0), "{err}");
    let path = std::path::PathBuf::from(out.trim());
    let on_disk = std::fs::read_to_string(&path).unwrap();

    let (code, pem, _) = output(&["ca", "export", "--data-dir", data]).await;
    assert_eq!(code, Some(0));
    assert_eq!(pem, on_disk, "the same CA, not a new one");

    let der_path = dir.path().join("ca.der");
    let (code, _, err) = output(&[
        "ca",
        "export",
        "--format",
        "der",
        "-o",
        der_path.to_str().unwrap(),
        "--data-dir",
        data,
    ])
    .await;
    assert_eq!(code, Some(0), "{err}");
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap();
    assert_eq!(std::fs::read(&der_path).unwrap(), decoded);

    let (code, _, err) = output(&[
        "ca",
        "path",
        "--data-dir",
        data,
        "--set",
        "tls.ca_key=/nonexistent.key",
    ])
    .await;
    assert_eq!(code, Some(2));
    assert!(
        err.contains("tls.ca_key") && err.contains("tls.ca_cert"),
        "{err}"
    );
}
