#![allow(dead_code)] // each test binary uses its own subset

use std::net::SocketAddr;
use std::time::Duration;

use ferryman_http::UpstreamConfig;
use ferryman_proxy::{
    ForwardProxy, InterceptConfig, Observers, ProxyConfig, RunningProxy, Sessions,
};
use ferryman_testkit::raw::Raw;
use ferryman_testkit::within;

pub async fn proxy() -> RunningProxy {
    proxy_with(|_, _| {}).await
}

pub async fn proxy_with(tweak: impl FnOnce(&mut ProxyConfig, &mut UpstreamConfig)) -> RunningProxy {
    proxy_with_grace(Duration::from_secs(5), tweak).await
}

/// A proxy that checks upstream TLS against `ca_files` (besides the usual
/// roots), or not at all when `insecure`.
pub async fn proxy_with_upstream_tls(
    ca_files: &[std::path::PathBuf],
    insecure: bool,
) -> RunningProxy {
    let tls = ferryman_tls::client_config(ca_files, insecure).expect("upstream TLS config");
    start(Duration::from_secs(5), tls, |_, _| {})
}

pub async fn proxy_with_grace(
    grace: Duration,
    tweak: impl FnOnce(&mut ProxyConfig, &mut UpstreamConfig),
) -> RunningProxy {
    let tls = ferryman_tls::client_config(&[], false).expect("upstream TLS config");
    start(grace, tls, tweak)
}

/// A proxy intercepting CONNECT tunnels with a CA of its own (in the
/// returned directory, `ferryman-ca.pem`), trusting `ca_files` upstream.
pub async fn intercepting_proxy(
    ca_files: &[std::path::PathBuf],
    insecure: bool,
    rules: ferryman_proxy::InterceptConfig,
) -> (RunningProxy, tempfile::TempDir) {
    intercepting_proxy_observed(ca_files, insecure, rules, observers()).await
}

/// A plain proxy reporting to `observers`.
pub fn proxy_observed(observers: Observers) -> RunningProxy {
    let tls = ferryman_tls::client_config(&[], false).expect("upstream TLS config");
    ForwardProxy::bind(
        local_proxy_config(),
        UpstreamConfig::default(),
        tls,
        None,
        observers,
    )
    .expect("bind proxy")
    .start(Duration::from_secs(5))
}

/// The connection table alone, with the default linger time.
pub fn observers() -> Observers {
    Observers {
        sessions: Sessions::new(Duration::from_secs(5), 1000),
        capture: None,
    }
}

/// [`intercepting_proxy`] intercepting everything, trusting no extra CA,
/// with `tweak`ed settings.
pub async fn intercepting_proxy_with(
    tweak: impl FnOnce(&mut ProxyConfig),
) -> (RunningProxy, tempfile::TempDir) {
    intercepting_proxy_trusting_with(&[], tweak).await
}

/// [`intercepting_proxy`] intercepting everything, trusting `ca_files`
/// upstream, with `tweak`ed settings.
pub async fn intercepting_proxy_trusting_with(
    ca_files: &[std::path::PathBuf],
    tweak: impl FnOnce(&mut ProxyConfig),
) -> (RunningProxy, tempfile::TempDir) {
    let mut config = local_proxy_config();
    tweak(&mut config);
    intercepting(
        ca_files,
        false,
        InterceptConfig::default(),
        observers(),
        config,
    )
}

/// [`intercepting_proxy`], reporting to `observers`.
pub async fn intercepting_proxy_observed(
    ca_files: &[std::path::PathBuf],
    insecure: bool,
    rules: ferryman_proxy::InterceptConfig,
    observers: Observers,
) -> (RunningProxy, tempfile::TempDir) {
    intercepting(ca_files, insecure, rules, observers, local_proxy_config())
}

fn intercepting(
    ca_files: &[std::path::PathBuf],
    insecure: bool,
    rules: InterceptConfig,
    observers: Observers,
    config: ProxyConfig,
) -> (RunningProxy, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = ferryman_tls::CertificateAuthority::open(dir.path(), None, 100).expect("CA");
    let interception = ferryman_proxy::Interception::new(std::sync::Arc::new(ca));
    let tls = ferryman_tls::client_config(ca_files, insecure).expect("upstream TLS config");
    let proxy = ForwardProxy::bind(
        config.clone(),
        UpstreamConfig::default(),
        tls,
        Some(interception),
        observers,
    )
    .expect("bind proxy");
    let spec = ferryman_proxy::PolicySpec {
        outbounds: &[],
        rules: &[],
        intercept: &rules,
        base: std::path::Path::new("."),
    };
    let control = proxy.control();
    let policy = ferryman_proxy::Policy::compile(spec, &control.env()).expect("valid rules");
    control
        .apply(ferryman_proxy::Settings::new(config, policy))
        .expect("rules applied");
    (proxy.start(Duration::from_secs(5)), dir)
}

fn local_proxy_config() -> ProxyConfig {
    ProxyConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        ..ProxyConfig::default()
    }
}

fn start(
    grace: Duration,
    tls: std::sync::Arc<rustls::ClientConfig>,
    tweak: impl FnOnce(&mut ProxyConfig, &mut UpstreamConfig),
) -> RunningProxy {
    let mut proxy = local_proxy_config();
    let mut upstream = UpstreamConfig::default();
    tweak(&mut proxy, &mut upstream);
    ForwardProxy::bind(proxy, upstream, tls, None, observers())
        .expect("bind proxy")
        .start(grace)
}

/// Runs curl with the given arguments; returns (exit ok, stdout, stderr).
pub async fn curl(args: &[&str]) -> (bool, Vec<u8>, String) {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "60"])
        .args(args)
        .output()
        .await
        .expect("curl is installed (apt-get install curl)");
    (
        out.status.success(),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub const LIMIT: Duration = Duration::from_secs(10);

/// curl through `proxy`, trusting only the CA ferryman keeps in `dir`.
pub async fn curl_trusting_ferryman(
    proxy: &RunningProxy,
    dir: &tempfile::TempDir,
    args: &[&str],
) -> (bool, Vec<u8>, String) {
    let proxy_url = format!("http://{}", proxy.local_addr());
    let ca = dir.path().join("ferryman-ca.pem").display().to_string();
    let mut all = vec!["-x", &proxy_url, "--cacert", &ca];
    all.extend_from_slice(args);
    curl(&all).await
}

/// A raw connection through `proxy`, after a successful CONNECT to `target`.
pub async fn tunnel(proxy: SocketAddr, target: SocketAddr) -> Raw {
    let mut raw = Raw::connect(proxy).await;
    raw.send(format!("CONNECT {target} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await;
    assert_eq!(raw.read_head().await.unwrap().status, 200);
    raw
}

/// TLS over `io` (a tunnel through an intercepting proxy) to `name`,
/// trusting only the CA ferryman keeps in `dir`, speaking HTTP/1.1.
pub async fn tls_trusting_ferryman<IO>(
    dir: &tempfile::TempDir,
    name: &str,
    io: IO,
) -> tokio_rustls::client::TlsStream<IO>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    tls_trusting_ferryman_offering(dir, name, io, &[b"http/1.1"]).await
}

/// [`tls_trusting_ferryman`], offering the `alpn` protocols.
pub async fn tls_trusting_ferryman_offering<IO>(
    dir: &tempfile::TempDir,
    name: &str,
    io: IO,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<IO>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let provider = rustls::crypto::ring::default_provider();
    tls_trusting_ferryman_with(dir, name, io, alpn, provider).await
}

/// [`tls_trusting_ferryman_offering`], with `provider`'s cipher suites in
/// its order.
pub async fn tls_trusting_ferryman_with<IO>(
    dir: &tempfile::TempDir,
    name: &str,
    io: IO,
    alpn: &[&[u8]],
    provider: rustls::crypto::CryptoProvider,
) -> tokio_rustls::client::TlsStream<IO>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(dir.path().join("ferryman-ca.pem")).expect("ferryman's CA");
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
        roots
            .add(cert.expect("a PEM certificate"))
            .expect("a CA certificate");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(provider))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = rustls::pki_types::ServerName::try_from(name.to_string()).expect("a server name");
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, io)
        .await
        .expect("ferryman's leaf, trusted through its CA")
}

/// Writes `request` (which should ask for `Connection: close`) and reads
/// everything that comes back.
pub async fn request_over<IO>(io: &mut IO, request: &[u8]) -> Vec<u8>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    io.write_all(request).await.expect("request written");
    let mut answer = Vec::new();
    within(LIMIT, "the answer", io.read_to_end(&mut answer))
        .await
        .expect("answer read");
    answer
}

/// A proxy that also listens for SOCKS5, intercepting as `rules` (TOML:
/// `[[outbounds]]`, `[[rules]]`) say, trusting `ca_files` upstream, its
/// CA in the returned directory; returns the SOCKS5 listener's address.
pub async fn socks_proxy(
    tweak: impl FnOnce(&mut ProxyConfig),
    rules: &str,
    ca_files: &[std::path::PathBuf],
) -> (RunningProxy, SocketAddr, tempfile::TempDir) {
    #[derive(serde::Deserialize)]
    struct Policy {
        #[serde(default)]
        outbounds: Vec<ferryman_proxy::OutboundConfig>,
        #[serde(default)]
        rules: Vec<ferryman_proxy::RuleConfig>,
    }
    let parsed: Policy = toml::from_str(rules).expect("valid rules");
    let mut config = local_proxy_config();
    tweak(&mut config);
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = ferryman_tls::CertificateAuthority::open(dir.path(), None, 100).expect("CA");
    let interception = ferryman_proxy::Interception::new(std::sync::Arc::new(ca));
    let tls = ferryman_tls::client_config(ca_files, false).expect("upstream TLS config");
    let proxy = ForwardProxy::bind(
        config.clone(),
        UpstreamConfig::default(),
        tls,
        Some(interception),
        observers(),
    )
    .expect("bind proxy");
    let spec = ferryman_proxy::PolicySpec {
        outbounds: &parsed.outbounds,
        rules: &parsed.rules,
        intercept: &InterceptConfig::default(),
        base: std::path::Path::new("."),
    };
    let control = proxy.control();
    let policy = ferryman_proxy::Policy::compile(spec, &control.env()).expect("valid rules");
    let socks5 = ferryman_proxy::Socks5Config {
        listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        ..Default::default()
    };
    control
        .apply(ferryman_proxy::Settings::new(config, policy).with_socks5(socks5))
        .expect("settings applied");
    let socks = control.listener("socks5").expect("a SOCKS5 listener");
    (proxy.start(Duration::from_secs(5)), socks, dir)
}
