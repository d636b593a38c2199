//! Capture: every exchange becomes a record with its bodies in the store,
//! hash-equal to what crossed the wire, and a slow or broken store never
//! slows or breaks the traffic.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{curl, LIMIT};
use ferryman_capture::{
    Capture, CaptureConfig, CaptureStatus, ExchangeId, Filter, Part, StoreKind,
};
use ferryman_proxy::{Observers, RunningProxy, Sessions};
use ferryman_testkit::backend::{full, Backend, TestBody};
use ferryman_testkit::s3::{self, Mode, S3Server};
use ferryman_testkit::{pattern, within};
use http::Response;
use http_body_util::BodyExt;

/// `/size/N` answers N bytes of the test pattern; anything else echoes the body.
async fn sizes_and_echo(req: http::Request<hyper::body::Incoming>) -> Response<TestBody> {
    if let Some(n) = req.uri().path().strip_prefix("/size/") {
        let mut response = Response::new(full(pattern(n.parse().unwrap_or(0))));
        response.headers_mut().insert(
            "content-type",
            http::HeaderValue::from_static("application/octet-stream"),
        );
        return response;
    }
    let body = req.into_body().collect().await.map(|b| b.to_bytes());
    Response::new(full(body.unwrap_or_default()))
}

fn s3_config(server: &S3Server) -> CaptureConfig {
    let mut config = CaptureConfig::default();
    config.store.kind = StoreKind::S3;
    config.store.endpoint = Some(server.endpoint());
    config.store.bucket = Some(s3::BUCKET.into());
    config.store.region = Some("us-east-1".into());
    config.store.path_style = true;
    config.store.allow_http = true;
    config.store.access_key_id = Some(s3::ACCESS_KEY.into());
    config.store.secret_access_key = Some(ferryman_capture::Secret::new(s3::SECRET_KEY));
    config
}

fn capturing_proxy(config: CaptureConfig, data_dir: &Path) -> (RunningProxy, Capture) {
    let capture = Capture::start(config, data_dir).expect("capture starts");
    let proxy = common::proxy_observed(Observers {
        sessions: Sessions::new(Duration::from_secs(5), 100),
        capture: Some(capture.clone()),
    });
    (proxy, capture)
}

async fn through(proxy: &RunningProxy, args: &[&str]) -> Vec<u8> {
    let proxy_url = format!("http://{}", proxy.local_addr());
    let mut all = vec!["-x", proxy_url.as_str(), "-f"];
    all.extend_from_slice(args);
    let (ok, body, err) = curl(&all).await;
    assert!(ok, "curl {args:?}: {err}");
    body
}

async fn stored(capture: &Capture, id: &str, part: Part) -> Vec<u8> {
    let id = ExchangeId::parse(id).expect("a UUIDv7 id");
    capture
        .body(id, part)
        .await
        .expect("readable store")
        .map_or_else(Vec::new, |b| b.to_vec())
}

/// Known-length, unknown-length, empty and 100 MiB bodies: one record each,
/// every kept body equal to what crossed the wire.
async fn every_body_is_kept_whole(mut config: CaptureConfig) {
    config.max_body_bytes = 128 << 20;
    // This test is about what is kept, not about a store that lags.
    config.max_queued_bytes = 512 << 20;
    let data = tempfile::tempdir().unwrap();
    let (proxy, capture) = capturing_proxy(config, data.path());
    let backend = Backend::start(sizes_and_echo).await;
    let files = tempfile::tempdir().unwrap();
    let upload = files.path().join("upload");
    std::fs::write(&upload, pattern(300_000)).unwrap();
    let at = format!("@{}", upload.display());

    let known = through(&proxy, &["--data-binary", &at, &backend.url("/echo")]).await;
    let chunked = through(
        &proxy,
        &[
            "-H",
            "Transfer-Encoding: chunked",
            "--data-binary",
            &at,
            &backend.url("/echo"),
        ],
    )
    .await;
    let empty = through(&proxy, &[&backend.url("/size/0")]).await;
    let big_file = files.path().join("big");
    let big_path = big_file.display().to_string();
    through(
        &proxy,
        &[
            "-o",
            &big_path,
            &backend.url(&format!("/size/{}", 100 << 20)),
        ],
    )
    .await;
    assert_eq!(known, pattern(300_000));
    assert_eq!(chunked, pattern(300_000));
    assert!(empty.is_empty());

    within(LIMIT * 3, "captures written", capture.settled()).await;
    let mut records = capture.query(&Filter::default()).unwrap();
    records.reverse();
    assert_eq!(records.len(), 4, "{records:#?}");
    for record in &records[..2] {
        let request = &record.request.body;
        assert_eq!(
            (request.size, request.capture),
            (300_000, CaptureStatus::Stored),
            "{record:#?}"
        );
        assert_eq!(
            stored(&capture, &record.id, Part::Request).await,
            pattern(300_000)
        );
        assert_eq!(
            stored(&capture, &record.id, Part::Response).await,
            pattern(300_000)
        );
    }
    let chunked_headers = &records[1].request.headers;
    assert!(chunked_headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v == "chunked"));
    let response = records[2].response.as_ref().unwrap();
    assert_eq!(
        (
            response.body.size,
            response.body.capture,
            &response.body.key
        ),
        (0, CaptureStatus::None, &None)
    );
    let response = records[3].response.as_ref().unwrap();
    assert_eq!((response.status, response.body.size), (200, 100 << 20));
    assert_eq!(response.body.capture, CaptureStatus::Stored);
    let big = stored(&capture, &records[3].id, Part::Response).await;
    assert!(big == std::fs::read(&big_file).unwrap() && big == pattern(100 << 20));
    assert_eq!(records[3].bytes_down, 100 << 20);
    for record in &records {
        assert!(record.timings.end_ms >= record.timings.first_byte_ms);
        assert_eq!(record.error, None);
    }
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_body_is_kept_whole_in_a_local_directory() {
    every_body_is_kept_whole(CaptureConfig::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_body_is_kept_whole_in_s3() {
    let server = S3Server::start().await;
    every_body_is_kept_whole(s3_config(&server)).await;
    // 4 records, and 5 bodies: two each for the uploads, one for the download.
    assert_eq!(server.objects("exchanges"), 9);
}

/// A store that does not answer makes records wait, and they count against
/// `max_queued_bytes` like bodies do: past it they are dropped, so memory
/// stays bounded however long the store hangs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_waiting_for_a_hung_store_stay_within_the_queue_budget() {
    const EXCHANGES: usize = 80;
    let server = S3Server::start().await;
    let mut config = s3_config(&server);
    config.store_timeout = Duration::from_secs(5);
    config.max_queued_bytes = 32 << 10;
    let data = tempfile::tempdir().unwrap();
    let (proxy, capture) = capturing_proxy(config, data.path());
    let backend = Backend::start(sizes_and_echo).await;
    server.set_mode(Mode::Hang);
    let url = backend.url("/size/0");
    let urls = vec![url.as_str(); EXCHANGES];
    assert_eq!(through(&proxy, &urls).await, b"");
    assert!(capture.queued_bytes() <= 32 << 10);
    // The records that fit are indexed once their writes time out; the rest
    // were dropped at once.
    within(LIMIT * 3, "hung records given up", capture.settled()).await;
    let indexed = capture.query(&Filter::default()).unwrap().len();
    assert!(indexed > 0 && indexed < EXCHANGES, "{indexed} indexed");
    assert_eq!(capture.queued_bytes(), 0);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_or_hanging_store_never_slows_or_breaks_the_traffic() {
    let server = S3Server::start().await;
    let mut config = s3_config(&server);
    let store_timeout = Duration::from_secs(5);
    config.store_timeout = store_timeout;
    config.max_queued_bytes = 4 << 20;
    let data = tempfile::tempdir().unwrap();
    let (proxy, capture) = capturing_proxy(config, data.path());
    let backend = Backend::start(sizes_and_echo).await;
    let small = backend.url("/size/65536");
    let large = backend.url(&format!("/size/{}", 40 << 20));
    let sink = tempfile::tempdir().unwrap();
    let large_file = sink.path().join("large").display().to_string();

    server.set_mode(Mode::Fail);
    for _ in 0..10 {
        assert_eq!(through(&proxy, &[&small]).await, pattern(65536));
    }
    within(LIMIT * 3, "failed captures recorded", capture.settled()).await;
    let failed = capture.query(&Filter::default()).unwrap();
    assert_eq!(failed.len(), 10);
    for record in &failed {
        let body = &record.response.as_ref().unwrap().body;
        assert_eq!(body.capture, CaptureStatus::Failed, "{record:#?}");
        assert!(
            body.reason
                .as_deref()
                .unwrap_or("")
                .contains("store failed"),
            "{body:?}"
        );
    }

    // A hanging store: if anything on the forwarding path waited for it,
    // an exchange would take the store timeout.
    server.set_mode(Mode::Hang);
    let mut slowest = Duration::ZERO;
    for _ in 0..10 {
        let started = Instant::now();
        assert_eq!(through(&proxy, &[&small]).await, pattern(65536));
        slowest = slowest.max(started.elapsed());
    }
    let started = Instant::now();
    through(&proxy, &["-o", &large_file, &large]).await;
    slowest = slowest.max(started.elapsed());
    assert!(slowest < store_timeout, "an exchange took {slowest:?}");
    assert_eq!(std::fs::read(&large_file).unwrap(), pattern(40 << 20));
    within(LIMIT * 3, "hung captures given up", capture.settled()).await;
    let all = capture.query(&Filter::default()).unwrap();
    assert_eq!(all.len(), 21);
    let large_record = &all[0];
    let reason = large_record
        .response
        .as_ref()
        .unwrap()
        .body
        .reason
        .clone()
        .unwrap_or_default();
    assert!(reason.contains("capture queue full"), "{reason}");
    for record in &all[1..11] {
        let body = &record.response.as_ref().unwrap().body;
        assert_eq!(body.capture, CaptureStatus::Failed);
        assert!(
            body.reason.as_deref().unwrap_or("").contains("timed out"),
            "{body:?}"
        );
    }
    assert!(
        capture
            .stats()
            .bodies_failed
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 21
    );

    server.set_mode(Mode::Serve);
    assert_eq!(through(&proxy, &[&small]).await, pattern(65536));
    within(LIMIT * 3, "the new capture", capture.settled()).await;
    let recovered = &capture
        .query(&Filter {
            limit: Some(1),
            ..Filter::default()
        })
        .unwrap()[0];
    assert_eq!(
        recovered.response.as_ref().unwrap().body.capture,
        CaptureStatus::Stored
    );
    assert_eq!(
        stored(&capture, &recovered.id, Part::Response).await,
        pattern(65536)
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn har_export_parses_and_matches_the_records() {
    let data = tempfile::tempdir().unwrap();
    let (proxy, capture) = capturing_proxy(CaptureConfig::default(), data.path());
    let backend = Backend::start(sizes_and_echo).await;
    through(
        &proxy,
        &[
            "-d",
            "{\"hello\":\"json\"}",
            "-H",
            "content-type: application/json",
            &backend.url("/echo?a=1&b=2"),
        ],
    )
    .await;
    through(&proxy, &[&backend.url("/size/2000")]).await;
    // A tunnel gets a record of its own, with its bytes, but no HAR entry.
    through(&proxy, &["-p", &backend.url("/size/10")]).await;
    within(LIMIT, "captures written", capture.settled()).await;
    let mut records = capture.query(&Filter::default()).unwrap();
    let tunnel = records.remove(0);
    assert_eq!(tunnel.request.method, "CONNECT");
    assert_eq!(tunnel.request.url, backend.addr.to_string());
    assert_eq!(tunnel.response.as_ref().map(|r| r.status), Some(200));
    assert!(tunnel.bytes_up > 0 && tunnel.bytes_down > 10, "{tunnel:#?}");
    assert_eq!(tunnel.timings.request_sent_ms, None);
    let har = capture.har(&Filter::default(), 1 << 20).await.unwrap();
    let text = serde_json::to_string(&har).unwrap();
    let parsed = har::from_reader(text.as_bytes()).expect("HAR the har crate reads");
    let har::Spec::V1_2(log) = parsed.log else {
        panic!("HAR 1.2 expected");
    };
    assert_eq!(log.entries.len(), 2);
    // Oldest first in HAR, newest first from the index.
    for (entry, record) in log.entries.iter().zip(records.iter().rev()) {
        assert_eq!(entry.request.method, record.request.method);
        assert_eq!(entry.request.url, record.request.url);
        assert_eq!(
            entry.response.status,
            i64::from(record.response.as_ref().unwrap().status)
        );
    }
    let post = &log.entries[0];
    assert_eq!(
        post.request
            .post_data
            .as_ref()
            .and_then(|p| p.text.as_deref()),
        Some("{\"hello\":\"json\"}")
    );
    assert_eq!(post.request.query_string.len(), 2);
    assert_eq!(
        post.response.content.text.as_deref(),
        Some("{\"hello\":\"json\"}")
    );
    // Not UTF-8: inline as base64.
    let binary = &log.entries[1].response.content;
    assert_eq!(binary.encoding.as_deref(), Some("base64"));
    assert_eq!(binary.size, 2000);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_and_an_index_rebuilt_from_the_store() {
    let data = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let mut config = CaptureConfig::default();
    config.store.dir = Some(store.path().to_path_buf());
    config.retention.max_count = 3;
    let (proxy, capture) = capturing_proxy(config.clone(), data.path());
    let backend = Backend::start(sizes_and_echo).await;
    for n in 1..=5 {
        through(&proxy, &[&backend.url(&format!("/size/{n}"))]).await;
    }
    within(LIMIT, "captures written", capture.settled()).await;
    let kept = capture.query(&Filter::default()).unwrap();
    let sizes: Vec<u64> = kept
        .iter()
        .map(|r| r.response.as_ref().unwrap().body.size)
        .collect();
    assert_eq!(sizes, [5, 4, 3], "the newest three");
    let records_on_disk = walk(store.path())
        .iter()
        .filter(|p| p.ends_with("exchange.json"))
        .count();
    assert_eq!(
        records_on_disk, 3,
        "the oldest were deleted from the store too"
    );
    proxy.shutdown().await;

    // Another instance with its own index and the same store.
    let other = tempfile::tempdir().unwrap();
    let rebuilt = Capture::start(config, other.path()).unwrap();
    within(LIMIT, "the rebuild", rebuilt.settled()).await;
    let found = rebuilt.query(&Filter::default()).unwrap();
    assert_eq!(found, kept);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchanges_older_than_the_retention_age_go_with_their_objects() {
    let data = tempfile::tempdir().unwrap();
    let mut config = CaptureConfig::default();
    config.retention.max_age = Duration::from_millis(1);
    let (proxy, capture) = capturing_proxy(config, data.path());
    let backend = Backend::start(sizes_and_echo).await;
    for _ in 0..3 {
        through(&proxy, &[&backend.url("/size/100")]).await;
    }
    within(LIMIT, "captures written and expired", capture.settled()).await;
    // Each record is older than 1 ms by the time it is indexed.
    let left = capture.query(&Filter::default()).unwrap();
    assert!(left.is_empty(), "{left:#?}");
    let on_disk = walk(&data.path().join("capture"));
    assert!(
        on_disk
            .iter()
            .all(|p| !p.ends_with("exchange.json") && !p.ends_with(".body")),
        "{on_disk:?}"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_refused_locally_leaves_a_whole_record_and_no_upload() {
    let data = tempfile::tempdir().unwrap();
    let capture = Capture::start(CaptureConfig::default(), data.path()).unwrap();
    let proxy = {
        let tls = ferryman_tls::client_config(&[], false).unwrap();
        let config = ferryman_proxy::ProxyConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            auth: vec!["user:pass".into()],
            ..Default::default()
        };
        let observers = Observers {
            sessions: Sessions::new(Duration::from_secs(5), 10),
            capture: Some(capture.clone()),
        };
        ferryman_proxy::ForwardProxy::bind(config, Default::default(), tls, None, observers)
            .unwrap()
            .start(Duration::from_secs(5))
    };
    let backend = Backend::start(sizes_and_echo).await;
    let proxy_url = format!("http://{}", proxy.local_addr());
    let (_, _, _) = curl(&[
        "-x",
        &proxy_url,
        "--proxy-user",
        "user:wrong",
        "--data-binary",
        "a body never read",
        &backend.url("/echo"),
    ])
    .await;
    within(
        LIMIT,
        "the record written, nothing pending",
        capture.settled(),
    )
    .await;
    let records = capture.query(&Filter::default()).unwrap();
    assert_eq!(records.len(), 1);
    let record = &records[0];
    assert_eq!(record.response.as_ref().unwrap().status, 407);
    let credentials = record
        .request
        .headers
        .iter()
        .find(|(n, _)| n == "proxy-authorization");
    assert_eq!(
        credentials.map(|(_, v)| v.as_str()),
        Some("<redacted>"),
        "proxy credentials are not kept"
    );
    assert_eq!(record.request.body.key, None);
    assert_eq!(backend.requests(), 0);
    let files = walk(&data.path().join("capture"));
    assert!(
        files.iter().all(|f| !f.ends_with("request.body")),
        "{files:?}"
    );
    assert_eq!(
        files
            .iter()
            .filter(|f| f.ends_with("exchange.json"))
            .count(),
        1
    );
    proxy.shutdown().await;
}

fn walk(dir: &Path) -> Vec<String> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path.display().to_string());
        }
    }
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_frames_are_kept_up_to_the_stream_cap() {
    let data = tempfile::tempdir().unwrap();
    let config = CaptureConfig {
        max_stream_bytes: 1024,
        ..CaptureConfig::default()
    };
    let (proxy, capture) = capturing_proxy(config, data.path());
    let backend = Backend::start(ferryman_testkit::backend::websocket_echo).await;
    let mut ws = ferryman_testkit::websocket_through(proxy.local_addr(), &backend).await;
    let first = "the first frame, kept whole";
    let rest: Vec<String> = (0..10).map(|n| format!("{n}").repeat(200)).collect();
    let mut texts = vec![first];
    texts.extend(rest.iter().map(String::as_str));
    ferryman_testkit::websocket_roundtrip(&mut ws, &texts).await;
    ws.close(None).await.unwrap();
    drop(ws);
    within(LIMIT, "the record", capture.settled()).await;
    let records = capture.query(&Filter::default()).unwrap();
    assert_eq!(records.len(), 1);
    let record = &records[0];
    let response = record.response.as_ref().unwrap();
    assert_eq!(response.status, 101);
    // Server frames are unmasked: the text shows in the kept bytes.
    assert_eq!(response.body.capture, CaptureStatus::Truncated);
    assert_eq!(response.body.captured, 1024);
    assert!(response.body.size > 2000);
    let kept = stored(&capture, &record.id, Part::Response).await;
    assert_eq!(kept.len(), 1024);
    assert!(kept.windows(first.len()).any(|w| w == first.as_bytes()));
    // Client frames are masked; only their sizes can be compared.
    assert_eq!(record.request.body.captured, 1024);
    assert!(
        record.request.body.size > response.body.size,
        "masking keys add 4 bytes a frame"
    );
    assert_eq!(record.bytes_down, response.body.size);
    proxy.shutdown().await;
}
