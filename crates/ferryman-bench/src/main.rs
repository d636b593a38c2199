//! A load client for bench/: HTTP or HTTPS over keep-alive connections,
//! direct, through an HTTP proxy with CONNECT or through SOCKS5 (which no
//! packaged load tool does). Prints one line of `key=value` figures.

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
use tokio_rustls::TlsConnector;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Parser)]
struct Cli {
    /// The server, as host:port with an IP.
    #[arg(long)]
    target: SocketAddr,
    /// Speak HTTPS, trusting this CA (PEM: the server's, or the proxy's
    /// when intercepting); plain HTTP without it.
    #[arg(long)]
    ca: Option<std::path::PathBuf>,
    /// Go through this HTTP proxy with CONNECT...
    #[arg(long, conflicts_with = "socks5")]
    proxy: Option<SocketAddr>,
    /// ...or through this SOCKS5 proxy (no authentication).
    #[arg(long)]
    socks5: Option<SocketAddr>,
    #[command(subcommand)]
    mode: Mode,
}

/// How connections reach the target.
#[derive(Clone, Copy)]
enum Via {
    Direct,
    Connect(SocketAddr),
    Socks5(SocketAddr),
}

trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static {}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> Stream for T {}

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
    /// Opens this many connections, one request on each, and keeps them
    /// open for `seconds` (memory per connection, elsewhere).
    Hold {
        #[arg(long, default_value_t = 10_000)]
        count: usize,
        #[arg(long, default_value = "/1k")]
        path: String,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let cli = Cli::parse();
    let tls = cli.ca.as_deref().map(connector).transpose()?;
    let ip = cli.target.ip().to_string();
    let via = match (cli.proxy, cli.socks5) {
        (Some(proxy), _) => Via::Connect(proxy),
        (None, Some(socks)) => Via::Socks5(socks),
        (None, None) => Via::Direct,
    };
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
                let target = cli.target;
                tasks.push(tokio::spawn(async move {
                    let stream = open(target, via, tls.as_ref(), &ip).await?;
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
                let stream = open(cli.target, via, tls.as_ref(), &name).await?;
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
        Mode::Hold {
            count,
            path,
            seconds,
        } => {
            let mut held = Vec::with_capacity(count);
            for _ in 0..count {
                let stream = open(cli.target, via, tls.as_ref(), &ip).await?;
                let (mut sender, conn) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
                let conn = tokio::spawn(conn);
                let req = http::Request::get(&path)
                    .header(http::header::HOST, &ip)
                    .body(Empty::<bytes::Bytes>::new())?;
                sender
                    .send_request(req)
                    .await?
                    .into_body()
                    .collect()
                    .await?;
                held.push((sender, conn));
            }
            println!("held={count}");
            tokio::time::sleep(Duration::from_secs(seconds)).await;
            drop(held);
        }
        Mode::Bulk { path } => {
            let stream = open(cli.target, via, tls.as_ref(), &ip).await?;
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

/// A connection to `target` as `via` says, in TLS when `tls` is given.
async fn open(
    target: SocketAddr,
    via: Via,
    tls: Option<&TlsConnector>,
    server_name: &str,
) -> Result<Box<dyn Stream>, BoxError> {
    let hop = match via {
        Via::Direct => target,
        Via::Connect(proxy) | Via::Socks5(proxy) => proxy,
    };
    let mut tcp = TcpStream::connect(hop).await?;
    tcp.set_nodelay(true)?;
    match via {
        Via::Direct => {}
        Via::Connect(_) => {
            let ask = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
            tcp.write_all(ask.as_bytes()).await?;
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
        Via::Socks5(_) => socks5(&mut tcp, target).await?,
    }
    match tls {
        Some(tls) => {
            let name = ServerName::try_from(server_name.to_string())?;
            Ok(Box::new(tls.connect(name, tcp).await?))
        }
        None => Ok(Box::new(tcp)),
    }
}

/// RFC 1928 without authentication: CONNECT to `target`.
async fn socks5(tcp: &mut TcpStream, target: SocketAddr) -> Result<(), BoxError> {
    tcp.write_all(&[5, 1, 0]).await?;
    let mut method = [0u8; 2];
    tcp.read_exact(&mut method).await?;
    if method != [5, 0] {
        return Err("the SOCKS5 proxy wants authentication".into());
    }
    let mut ask = vec![5, 1, 0];
    match target {
        SocketAddr::V4(a) => {
            ask.push(1);
            ask.extend_from_slice(&a.ip().octets());
        }
        SocketAddr::V6(a) => {
            ask.push(4);
            ask.extend_from_slice(&a.ip().octets());
        }
    }
    ask.extend_from_slice(&target.port().to_be_bytes());
    tcp.write_all(&ask).await?;
    let mut reply = [0u8; 4];
    tcp.read_exact(&mut reply).await?;
    if reply[1] != 0 {
        return Err(format!("SOCKS5 CONNECT refused with code {}", reply[1]).into());
    }
    let mut rest = vec![0u8; if reply[3] == 4 { 16 + 2 } else { 4 + 2 }];
    tcp.read_exact(&mut rest).await?;
    Ok(())
}

async fn requests(
    stream: Box<dyn Stream>,
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

async fn download(stream: Box<dyn Stream>, host: &str, path: &str) -> Result<u64, BoxError> {
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
