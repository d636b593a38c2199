//! The `ferryman` binary as a user runs it.

use ferryman_testkit::backend::Backend;
use ferryman_testkit::raw::Raw;
use ferryman_testkit::{eventually, within};
use tokio::process::Command;

mod common;

use common::{message, output, start, terminate, BIN, LIMIT};

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

    let err = refused(&good, "upstream.idle_timeout=forever").await;
    assert!(
        err.contains("upstream.idle_timeout = \"forever\"") && err.contains("not a duration"),
        "{err}"
    );

    let not_a_ca = dir.path().join("not-a-ca.pem");
    std::fs::write(&not_a_ca, "hello\n").unwrap();
    let setting = format!("tls.upstream_ca_files=[\"{}\"]", not_a_ca.display());
    let err = refused(&good, &setting).await;
    assert!(
        err.contains("tls.upstream_ca_files")
            && err.contains("not-a-ca.pem: holds no PEM certificate"),
        "{err}"
    );

    let err = refused(&good, "capture.nice=20").await;
    assert!(
        err.contains("capture.nice") && err.contains("must be 0 to 19"),
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

/// `check-config` of `file` with one `--set`, refused (exit 2): what it said.
async fn refused(file: &std::path::Path, setting: &str) -> String {
    let (code, _, err) = output(&["check-config", file.to_str().unwrap(), "--set", setting]).await;
    assert_eq!(code, Some(2), "{setting} was accepted");
    err
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_logs_json_access_lines_and_drains_on_sigterm() {
    let (backend, release) = Backend::held("slow answer").await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let common::Running {
        mut child,
        mut logs,
        proxy: addr,
        ..
    } = start(&data, &[]).await;
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
    let common::Running {
        mut child,
        proxy: addr,
        ..
    } = start(&data, &[]).await;
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

/// Capture drops what its store cannot take rather than slow the traffic;
/// the log says so, at once, with how many.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_losses_are_told_in_the_log() {
    use ferryman_testkit::s3::{self, Mode, S3Server};
    let store = S3Server::start().await;
    store.set_mode(Mode::Fail);
    let backend = Backend::start(|_| async {
        http::Response::new(ferryman_testkit::backend::full("answer"))
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("capture.store.endpoint={}", store.endpoint());
    let bucket = format!("capture.store.bucket={}", s3::BUCKET);
    let key = format!("capture.store.access_key_id={}", s3::ACCESS_KEY);
    let secret = format!("capture.store.secret_access_key={}", s3::SECRET_KEY);
    let mut args = vec![];
    for setting in [
        "capture.store.kind=s3",
        "capture.store.region=us-east-1",
        "capture.store.path_style=true",
        "capture.store.allow_http=true",
        &endpoint,
        &bucket,
        &key,
        &secret,
    ] {
        args.extend(["--set", setting]);
    }
    let common::Running {
        mut child,
        mut logs,
        proxy,
        ..
    } = start(dir.path(), &args).await;
    let reply = common::fetch(proxy, "GET", &backend.url("/x"), &[], None).await;
    assert_eq!(reply.status, 200, "the traffic does not notice");
    let warning = logs
        .until("the loss told", |r| message(r).starts_with("capture lost"))
        .await;
    assert_eq!(warning["level"], "WARN");
    assert!(warning["fields"]["records"].as_u64().unwrap() >= 1);
    assert!(warning["fields"]["bodies"].as_u64().unwrap() >= 1);
    terminate(&mut child).await;
}

/// The nice value of each of `pid`'s threads, by thread name.
fn thread_nice(pid: u32) -> Vec<(String, i64)> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let (Ok(name), Ok(stat)) = (
            std::fs::read_to_string(task.join("comm")),
            std::fs::read_to_string(task.join("stat")),
        ) else {
            continue; // a thread that just ended
        };
        // After the parenthesised name: state is field 3, nice field 19.
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 1..]
            .split_whitespace()
            .collect();
        threads.push((name.trim().to_owned(), fields[16].parse().unwrap()));
    }
    threads
}

#[tokio::test]
async fn capture_threads_yield_the_cpu_to_the_traffic() {
    // The threads that write each exchange's files and index row; the one
    // streaming large bodies keeps the traffic's priority, or a fast upload
    // would outrun its capture.
    let capture_threads = ["ferryman-store", "ferryman-index"];
    let traffic_threads = ["ferryman-0", "ferryman-1", "ferryman-captur"];
    for (nice, steps) in [(None, 10), (Some("capture.nice=0"), 0)] {
        let dir = tempfile::tempdir().unwrap();
        let mut args = vec!["--set", "workers=2"];
        args.extend(nice.iter().flat_map(|setting| ["--set", *setting]));
        let running = start(&dir.path().join("data"), &args).await;
        let pid = running.child.id().unwrap();
        // Relative to the main thread's: the tests may themselves run under nice.
        let traffic = thread_nice(pid)
            .into_iter()
            .find(|(name, _)| name == "ferryman")
            .map(|(_, nice)| nice)
            .unwrap();
        let expected = (traffic + steps).min(19);
        // Each capture thread lowers its own priority as it starts; the
        // workers start after the listener logs that it listens.
        let settled = || {
            let threads = thread_nice(pid);
            let at = |names: &[&str], nice: i64| {
                names
                    .iter()
                    .all(|name| threads.contains(&(name.to_string(), nice)))
            };
            at(&capture_threads, expected) && at(&traffic_threads, traffic)
        };
        eventually(
            LIMIT,
            "capture threads below the traffic's priority",
            settled,
        )
        .await;
    }
}

#[tokio::test]
async fn route_explains_a_decision_and_check_config_reads_the_rule_lists() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("corp.txt"), "+.corp.test\n10.20.0.0/16\n").unwrap();
    let config = dir.path().join("ferryman.toml");
    std::fs::write(
        &config,
        r#"
        [intercept]
        mode = "listed"
        hosts = ["*.myapp.test"]

        [[outbounds]]
        name = "partner"
        kind = "http"
        url = "http://me:hunter2@127.0.0.1:3128"

        [[rules]]
        name = "office"
        domain_list = ["corp.txt"]
        outbound = "partner"

        [[rules]]
        user = ["guest"]
        outbound = "reject"
        "#,
    )
    .unwrap();
    let file = config.to_str().unwrap();
    let (code, out, err) = output(&["-c", file, "route", "https://a.corp.test/x"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        out,
        "target:    GET a.corp.test:443/x\noutbound:  partner (http)\nrule:      office\nintercept: no (rule default)\n"
    );
    let (_, out, _) = output(&["-c", file, "route", "api.myapp.test:443", "--user", "guest"]).await;
    assert!(
        out.contains("outbound:  reject (reject)\nrule:      rules[1]\n"),
        "{out}"
    );
    assert!(
        out.contains("intercept: yes (rule intercept.hosts[0])"),
        "{out}"
    );
    let (_, out, _) = output(&["-c", file, "route", "10.20.1.1:22", "--user", "alice"]).await;
    assert!(
        out.contains("CONNECT 10.20.1.1:22") && out.contains("rule:      office"),
        "{out}"
    );
    let (code, _, err) = output(&["-c", file, "route", "gopher://x.test/"]).await;
    assert_eq!(code, Some(2));
    assert!(err.contains("gopher:// URLs are not proxied"), "{err}");

    std::fs::write(dir.path().join("corp.txt"), "+.corp.test\n\nnot/a name\n").unwrap();
    let (code, _, err) = output(&["check-config", file]).await;
    assert_eq!(code, Some(2));
    assert!(
        err.contains("rules[0].domain_list[0] = \"corp.txt\": ")
            && err.contains("corp.txt:3: \"not/a name\" is not a domain name"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");
}
