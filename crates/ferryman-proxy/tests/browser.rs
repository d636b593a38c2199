//! A real browser through interception: headless Chromium, trusting only
//! ferryman's CA (in a throwaway NSS database), loads an HTTPS page with its
//! subresources through ferryman; the page's script reports what loaded.

mod common;

use std::process::Stdio;
use std::sync::{Arc, Mutex};

use common::{intercepting_proxy, LIMIT};
use ferryman_proxy::InterceptConfig;
use ferryman_testkit::backend::{full, Backend};
use ferryman_testkit::tls::TestCa;
use ferryman_testkit::within;
use http::Response;
use tokio::process::Command;

const PAGE: &str = r#"<!doctype html><html><head><title>ferryman test</title></head>
<body><p id="out">waiting</p><img id="pixel" src="/pixel.png">
<script src="/app.js"></script></body></html>"#;

const SCRIPT: &str = r#"
const img = document.getElementById('pixel');
const done = () => {
  document.getElementById('out').textContent =
    'script ran; image ' + (img.naturalWidth === 1 ? 'loaded' : 'missing');
};
if (img.complete) { done(); } else { img.onload = done; img.onerror = done; }
"#;

/// A 1x1 PNG.
const PIXEL: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1f, 0x15, 0xc4,
    0x89, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0xf8, 0xcf, 0xc0, 0xf0,
    0x1f, 0x00, 0x05, 0x00, 0x01, 0xff, 0x89, 0x99, 0x3d, 0x1d, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45,
    0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
];

async fn run(program: &str, args: &[&str], home: &std::path::Path) -> (bool, String, String) {
    let out = Command::new(program)
        .args(args)
        .env("HOME", home)
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap_or_else(|e| {
            panic!("{program} is needed (apt-get install chromium libnss3-tools): {e}")
        });
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_loads_an_https_page_and_its_subresources_through_interception() {
    let backend_ca = TestCa::new();
    let seen = Arc::new(Mutex::new(Vec::<(String, bool)>::new()));
    let backend = {
        let seen = seen.clone();
        Backend::start_tls(backend_ca.server_config(&[b"http/1.1"]), move |req| {
            let seen = seen.clone();
            async move {
                let via = req
                    .headers()
                    .get("via")
                    .is_some_and(|v| v.to_str().is_ok_and(|v| v.contains("ferryman")));
                seen.lock()
                    .unwrap()
                    .push((req.uri().path().to_string(), via));
                let (kind, body): (&str, bytes::Bytes) = match req.uri().path() {
                    "/" => ("text/html", PAGE.into()),
                    "/app.js" => ("text/javascript", SCRIPT.into()),
                    "/pixel.png" => ("image/png", bytes::Bytes::from_static(PIXEL)),
                    _ => ("text/plain", "not here".into()),
                };
                Response::builder()
                    .header("content-type", kind)
                    .body(full(body))
                    .unwrap()
            }
        })
        .await
    };
    let (proxy, ca_dir) =
        intercepting_proxy(&[backend_ca.pem_path()], false, InterceptConfig::default()).await;

    let home = tempfile::tempdir().unwrap();
    let nssdb = home.path().join(".pki/nssdb");
    std::fs::create_dir_all(&nssdb).unwrap();
    let db = format!("sql:{}", nssdb.display());
    let ca = ca_dir.path().join("ferryman-ca.pem").display().to_string();
    let (ok, _, err) = run(
        "certutil",
        &["-d", &db, "-N", "--empty-password"],
        home.path(),
    )
    .await;
    assert!(ok, "{err}");
    let (ok, _, err) = run(
        "certutil",
        &["-d", &db, "-A", "-t", "C,,", "-n", "ferryman", "-i", &ca],
        home.path(),
    )
    .await;
    assert!(ok, "{err}");

    let profile = home.path().join("profile");
    let page = format!("https://127.0.0.1:{}/", backend.addr.port());
    // The session check after the run catches any request that would
    // still leave loopback.
    let mut args: Vec<&str> = ferryman_testkit::CHROMIUM_QUIET.to_vec();
    let (profile, proxy_server) = (
        format!("--user-data-dir={}", profile.display()),
        format!("--proxy-server=http://{}", proxy.local_addr()),
    );
    args.extend([
        "--headless",
        &profile,
        &proxy_server,
        // Chromium never proxies loopback unless told to.
        "--proxy-bypass-list=<-loopback>",
        "--virtual-time-budget=5000",
        "--dump-dom",
        &page,
    ]);
    let (_, dom, err) = within(LIMIT * 6, "chromium", run("chromium", &args, home.path())).await;
    assert!(
        dom.contains("script ran; image loaded"),
        "rendered DOM:\n{dom}\nchromium said:\n{err}"
    );
    let seen = seen.lock().unwrap().clone();
    for path in ["/", "/app.js", "/pixel.png"] {
        assert!(
            seen.contains(&(path.to_string(), true)),
            "{path} through ferryman: {seen:?}"
        );
    }
    // The browser's own background traffic must not have left loopback.
    let sessions = proxy.sessions();
    let mut beyond = Vec::new();
    for session in sessions.list().iter().chain(&sessions.history()) {
        let target = &session.target;
        let loopback = target.is_empty()
            || [
                "127.0.0.1",
                "http://127.0.0.1",
                "https://127.0.0.1",
                "localhost",
            ]
            .iter()
            .any(|prefix| target.starts_with(prefix));
        if !loopback {
            beyond.push(target.clone());
        }
    }
    assert!(
        beyond.is_empty(),
        "chromium went beyond loopback: {beyond:#?}"
    );
    proxy.shutdown().await;
}
