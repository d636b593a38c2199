//! The dashboard in a real browser: headless Chromium, driven over
//! WebDriver by chromedriver, logs in and watches an exchange arrive.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{fetch, start, LIMIT};
use fantoccini::{Client, ClientBuilder, Locator};
use ferryman_testkit::backend::{full, Backend};
use ferryman_testkit::within;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const TOKEN: &str = "dashboard-test-token-0123456789";

/// chromedriver on an ephemeral loopback port; returns it and its URL.
async fn chromedriver() -> (tokio::process::Child, String) {
    let mut child = Command::new("chromedriver")
        .args(["--port=0", "--allowed-ips=127.0.0.1"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("chromedriver (Debian package chromium-driver)");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let port = within(LIMIT, "chromedriver start", async {
        loop {
            let line = lines
                .next_line()
                .await
                .unwrap()
                .expect("chromedriver exited");
            if let Some(rest) = line.split("started successfully on port ").nth(1) {
                return rest.trim_end_matches('.').to_owned();
            }
        }
    })
    .await;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, format!("http://127.0.0.1:{port}"))
}

async fn browser(driver: &str, profile: &std::path::Path) -> Client {
    let profile = format!("--user-data-dir={}", profile.display());
    let mut args: Vec<&str> = ferryman_testkit::CHROMIUM_QUIET.to_vec();
    args.extend([
        "--headless=new",
        "--window-size=1400,900",
        // Anything but loopback goes to a closed port and fails.
        "--proxy-server=http://127.0.0.1:1",
        &profile,
    ]);
    let capabilities = serde_json::json!({
        "browserName": "chrome",
        "goog:chromeOptions": { "binary": "/usr/bin/chromium", "args": args },
    });
    let serde_json::Value::Object(capabilities) = capabilities else {
        unreachable!()
    };
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(capabilities)
        .connect(driver)
        .await
        .expect("a browser session")
}

async fn click(client: &Client, css: &str) {
    let element = client.find(Locator::Css(css)).await.unwrap();
    element.click().await.unwrap();
}

/// Waits until `script` (a JS expression) is truthy in the page.
async fn until(client: &Client, what: &str, script: &str) {
    within(LIMIT, what, async {
        loop {
            let value = client
                .execute(&format!("return !!({script});"), vec![])
                .await
                .unwrap();
            if value == serde_json::Value::Bool(true) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_logs_in_and_inspects_an_exchange_as_it_arrives() {
    let backend = Backend::start(|_| async {
        let mut response = http::Response::new(full(r#"{"hello":"dashboard","items":[1,2,3]}"#));
        response.headers_mut().insert(
            "content-type",
            http::HeaderValue::from_static("application/json"),
        );
        response
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let token = format!("admin.token={TOKEN}");
    let running = start(&dir.path().join("data"), &["--set", &token]).await;
    let admin = format!("http://{}", running.admin);
    let (_driver, driver_url) = chromedriver().await;
    let client = browser(&driver_url, &dir.path().join("profile")).await;

    client.goto(&format!("{admin}/")).await.unwrap();
    until(&client, "the login page", "location.pathname === '/login'").await;
    let field = client.find(Locator::Css("#login-token")).await.unwrap();
    field.send_keys("not the token").await.unwrap();
    click(&client, "#login-submit").await;
    until(
        &client,
        "a refusal",
        "!document.getElementById('login-error').hidden",
    )
    .await;
    field.clear().await.unwrap();
    field.send_keys(TOKEN).await.unwrap();
    click(&client, "#login-submit").await;
    until(&client, "the dashboard", "location.pathname === '/'").await;
    until(
        &client,
        "the live stream",
        "document.getElementById('link-state').textContent === 'live'",
    )
    .await;
    let cookie_visible = client
        .execute("return document.cookie", vec![])
        .await
        .unwrap();
    assert_eq!(cookie_visible, "", "the session cookie is HttpOnly");

    click(&client, "a[data-page=exchanges]").await;
    until(
        &client,
        "the exchanges page",
        "!document.getElementById('page-exchanges').hidden",
    )
    .await;
    let url = backend.url("/seen-in-the-browser.json");
    let reply = fetch(running.proxy, "GET", &url, &[], None).await;
    assert_eq!(reply.status, 200);
    let row = "[...document.querySelectorAll('#exchange-rows .row')]\
               .find(r => r.textContent.includes('/seen-in-the-browser.json'))";
    until(&client, "the exchange in the list", row).await;
    client
        .execute(&format!("{row}.click()"), vec![])
        .await
        .unwrap();
    until(
        &client,
        "the detail pane",
        "!document.getElementById('detail').hidden",
    )
    .await;
    until(
        &client,
        "the JSON preview",
        "document.querySelector('#body-preview pre.json')",
    )
    .await;
    let preview = client
        .find(Locator::Css("#body-preview pre.json"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        preview.contains("\"hello\": \"dashboard\""),
        "pretty-printed: {preview}"
    );
    let title = client
        .find(Locator::Css("#detail-title"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(title, format!("GET {url}"));
    let headers = client
        .find(Locator::Css("#response-headers"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(headers.contains("application/json"), "{headers}");

    // A burst: the list counts every exchange but keeps only the rows in
    // view in the page.
    let burst: Vec<_> = (0..300)
        .map(|i| {
            let (proxy, url) = (running.proxy, backend.url(&format!("/burst/{i}")));
            tokio::spawn(async move { fetch(proxy, "GET", &url, &[], None).await.status })
        })
        .collect();
    for request in burst {
        assert_eq!(request.await.unwrap(), 200);
    }
    until(
        &client,
        "301 exchanges listed",
        "document.getElementById('exchange-count').textContent === '301 of 301'",
    )
    .await;
    let rows = client
        .execute(
            "return document.querySelectorAll('#exchange-rows .row').length",
            vec![],
        )
        .await
        .unwrap();
    let rows = rows.as_u64().unwrap();
    assert!(
        (10..100).contains(&rows),
        "{rows} rows in the page for 301 exchanges"
    );

    // A fresh page starts from the index, then goes live.
    client
        .goto(&format!("{admin}/?fresh#exchanges"))
        .await
        .unwrap();
    until(
        &client,
        "the list loaded from the index",
        "document.getElementById('exchange-count').textContent === '301 of 301'",
    )
    .await;

    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    std::fs::create_dir_all(&shots).unwrap();
    let png = client.screenshot().await.unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    std::fs::write(shots.join("exchanges.png"), &png).unwrap();

    // The other live pages fill in from the same stream.
    click(&client, "a[data-page=overview]").await;
    until(
        &client,
        "rates",
        "document.getElementById('rate-down').textContent.endsWith('/s')",
    )
    .await;
    until(
        &client,
        "top hosts",
        "document.querySelector('#top-hosts td')?.textContent === '127.0.0.1'",
    )
    .await;
    click(&client, "a[data-page=logs]").await;
    let request = fetch(running.proxy, "GET", &backend.url("/logged"), &[], None).await;
    assert_eq!(request.status, 200);
    until(
        &client,
        "the access log line",
        "document.getElementById('log-lines').textContent.includes('/logged')",
    )
    .await;
    click(&client, "a[data-page=ca]").await;
    until(
        &client,
        "the CA page",
        "document.querySelector('#page-ca a[href=\"/api/ca.pem\"]')",
    )
    .await;
    std::fs::write(shots.join("ca.png"), client.screenshot().await.unwrap()).unwrap();
    client.close().await.unwrap();
}
