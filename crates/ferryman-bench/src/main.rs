//! A load client for bench/: HTTPS over keep-alive connections, either
//! direct or through an HTTP proxy with CONNECT (which no packaged load
//! tool does). Prints one line of `key=value` figures.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Parser)]
struct Cli {
    /// The HTTPS server, as host:port with an IP.
    #[arg(long)]
    target: SocketAddr,
    /// PEM file of the CA to trust (the server's, or the proxy's when intercepting).
    #[arg(long)]
    ca: std::path::PathBuf,
    /// Go through this HTTP proxy with CONNECT.
    #[arg(long)]
    proxy: Option<SocketAddr>,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Requests per second over keep-alive connections, with latency percentiles.
    Rps {
        #[arg(long, default_value = "/1k")]
        path: String,
        #[arg(long, default_value_t = 32)]
        connections: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// CONNECT + TLS handshakes, one at a time, each with a server name not
    /// seen before (so an intercepting proxy mints a certificate every time).
    Handshakes {
        #[arg(long, default_value_t = 300)]
        count: usize,
    },
    /// One download, read to the end: throughput.
    Bulk {
        #[arg(long, default_value = "/1g")]
        path: String,
    },
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let cli = Cli::parse();
    let tls = connector(&cli.ca)?;
    let ip = cli.target.ip().to_string();
    match cli.mode {
        Mode::Rps {
            path,
            connections,
            seconds,
        } => {
            let until = Instant::now() + Duration::from_secs(seconds);
            let mut tasks = Vec::new();
            for _ in 0..connections {
                let (tls, path, ip) = (tls.clone(), path.clone(), ip.clone());
                let (target, proxy) = (cli.target, cli.proxy);
                tasks.push(tokio::spawn(async move {
                    let stream = open(target, proxy, &tls, &ip).await?;
                    requests(stream, &ip, &path, until).await
                }));
            }
            let mut latencies = Vec::new();
            for task in tasks {
                latencies.extend(task.await??);
            }
            latencies.sort_unstable();
            let rps = latencies.len() as f64 / seconds as f64;
            println!(
                "requests={} rps={rps:.0} p50_ms={:.3} p99_ms={:.3}",
                latencies.len(),
                percentile(&latencies, 0.50),
                percentile(&latencies, 0.99)
            );
        }
        Mode::Handshakes { count } => {
            let mut times = Vec::with_capacity(count);
            let run = std::process::id();
            for n in 0..count {
                let name = format!("h{n}-{run}.bench.test");
                let start = Instant::now();
                let stream = open(cli.target, cli.proxy, &tls, &name).await?;
                times.push(start.elapsed());
                drop(stream);
            }
            times.sort_unstable();
            println!(
                "handshakes={count} p50_ms={:.3} p99_ms={:.3}",
                percentile(&times, 0.50),
                percentile(&times, 0.99)
            );
        }
        Mode::Bulk { path } => {
            let stream = open(cli.target, cli.proxy, &tls, &ip).await?;
            let start = Instant::now();
            let bytes = download(stream, &ip, &path).await?;
            let secs = start.elapsed().as_secs_f64();
            println!(
                "bytes={bytes} mib_per_s={:.0}",
                bytes as f64 / secs / (1 << 20) as f64
            );
        }
    }
    Ok(())
}

fn connector(ca: &std::path::Path) -> Result<TlsConnector, BoxError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

/// A TLS connection to `target`, through `proxy` with CONNECT if given.
async fn open(
    target: SocketAddr,
    proxy: Option<SocketAddr>,
    tls: &TlsConnector,
    server_name: &str,
) -> Result<TlsStream<TcpStream>, BoxError> {
    let mut tcp = TcpStream::connect(proxy.unwrap_or(target)).await?;
    tcp.set_nodelay(true)?;
    if proxy.is_some() {
        tcp.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
            .await?;
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            tcp.read_exact(&mut byte).await?;
            head.push(byte[0]);
        }
        if !head.starts_with(b"HTTP/1.1 200") {
            return Err(format!("CONNECT refused: {}", String::from_utf8_lossy(&head)).into());
        }
    }
    let name = ServerName::try_from(server_name.to_string())?;
    Ok(tls.connect(name, tcp).await?)
}

async fn requests(
    stream: TlsStream<TcpStream>,
    host: &str,
    path: &str,
    until: Instant,
) -> Result<Vec<Duration>, BoxError> {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut latencies = Vec::new();
    while Instant::now() < until {
        let req = http::Request::get(path)
            .header(http::header::HOST, host)
            .body(Empty::<bytes::Bytes>::new())?;
        let start = Instant::now();
        sender.ready().await?;
        let response = sender.send_request(req).await?;
        response.into_body().collect().await?;
        latencies.push(start.elapsed());
    }
    Ok(latencies)
}

async fn download(stream: TlsStream<TcpStream>, host: &str, path: &str) -> Result<u64, BoxError> {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header(http::header::HOST, host)
        .body(Empty::<bytes::Bytes>::new())?;
    let mut body = sender.send_request(req).await?.into_body();
    let mut bytes = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            bytes += data.len() as u64;
        }
    }
    Ok(bytes)
}

fn percentile(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[index].as_secs_f64() * 1000.0
}
