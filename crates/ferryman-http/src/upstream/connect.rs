use std::net::SocketAddr;

use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};

use super::UpstreamError;

/// Resolves `host` and connects to the first address that answers, refusing
/// addresses that are this process's own listeners.
pub(crate) async fn connect_tcp(
    host: &str,
    port: u16,
    deadline: Instant,
    own: &[SocketAddr],
) -> Result<TcpStream, UpstreamError> {
    let name = host.trim_start_matches('[').trim_end_matches(']');
    let shown = || format!("{host}:{port}");
    let addrs: Vec<SocketAddr> = timeout_at(deadline, tokio::net::lookup_host((name, port)))
        .await
        .map_err(|_| UpstreamError::ConnectTimeout(shown()))?
        .map_err(|source| UpstreamError::Resolve {
            host: name.to_string(),
            source,
        })?
        .collect();
    if let Some(looped) = addrs.iter().find(|a| is_own(a, own)) {
        return Err(UpstreamError::Loop(looped.to_string()));
    }
    let mut last = UpstreamError::NoAddress(name.to_string());
    for addr in addrs {
        match timeout_at(deadline, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                // Latency matters more than packet count for proxied exchanges.
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Ok(Err(source)) => {
                last = UpstreamError::Connect {
                    addr: addr.to_string(),
                    source,
                }
            }
            Err(_) => return Err(UpstreamError::ConnectTimeout(shown())),
        }
    }
    Err(last)
}

fn is_own(target: &SocketAddr, own: &[SocketAddr]) -> bool {
    own.iter().any(|listener| {
        listener.port() == target.port()
            && (listener.ip() == target.ip()
                || target.ip().is_unspecified()
                || (listener.ip().is_unspecified() && target.ip().is_loopback()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_listener_detection() {
        let own: Vec<SocketAddr> = vec!["127.0.0.1:8080".parse().unwrap()];
        assert!(is_own(&"127.0.0.1:8080".parse().unwrap(), &own));
        assert!(is_own(&"0.0.0.0:8080".parse().unwrap(), &own));
        assert!(!is_own(&"127.0.0.1:8081".parse().unwrap(), &own));
        let any: Vec<SocketAddr> = vec!["[::]:9000".parse().unwrap()];
        assert!(is_own(&"[::1]:9000".parse().unwrap(), &any));
        assert!(is_own(&"127.0.0.1:9000".parse().unwrap(), &any));
    }
}
