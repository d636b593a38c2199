//! Through an upstream SOCKS5 proxy (RFC 1928, with RFC 1929 username and
//! password): `socks5h://` hands the name to the proxy to resolve,
//! `socks5://` resolves it here and hands over an address. The stream that
//! comes back is the proxy's TCP socket, so tunnels still splice.

use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;

use ferryman_http::upstream::{Conn, Connect, Connecting};
use ferryman_http::UpstreamError;
use tokio::time::{timeout_at, Instant};
use tokio_socks::tcp::Socks5Stream;
use tokio_socks::TargetAddr;

use super::config::ProxyUrl;
use ferryman_http::dial::{dial, resolve, OwnAddrs, Source};

pub(crate) struct Socks5Proxy {
    name: Arc<str>,
    url: ProxyUrl,
    /// The proxy resolves names (`socks5h://`).
    remote_dns: bool,
    own: OwnAddrs,
    key: u64,
}

impl Socks5Proxy {
    pub(crate) fn new(name: &str, url: ProxyUrl, own: OwnAddrs) -> Self {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (
            "socks5",
            name,
            &url.scheme,
            &url.authority,
            &url.credentials,
        )
            .hash(&mut hasher);
        Self {
            name: name.into(),
            remote_dns: url.scheme == "socks5h",
            url,
            own,
            key: hasher.finish(),
        }
    }

    fn failed(&self, reason: impl std::fmt::Display) -> UpstreamError {
        UpstreamError::Outbound {
            outbound: self.name.to_string(),
            reason: format!("the SOCKS5 proxy at {}: {reason}", self.url.authority),
        }
    }

    async fn tunnel(
        &self,
        host: &str,
        port: u16,
        deadline: Instant,
    ) -> Result<Conn, UpstreamError> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let target = match bare.parse() {
            Ok(ip) => TargetAddr::Ip(SocketAddr::new(ip, port)),
            Err(_) if self.remote_dns => TargetAddr::Domain(bare.into(), port),
            Err(_) => {
                let addrs = resolve(host, port, deadline).await?;
                let first = addrs
                    .first()
                    .copied()
                    .ok_or_else(|| UpstreamError::NoAddress(bare.to_string()))?;
                TargetAddr::Ip(first)
            }
        };
        if let TargetAddr::Ip(addr) = &target {
            if self.own.contains(addr) {
                return Err(UpstreamError::Loop(addr.to_string()));
            }
        }
        let url = &self.url;
        let socket = dial(&url.host, url.port, deadline, &Source::default(), &self.own)
            .await
            .map_err(|e| match e {
                UpstreamError::ConnectTimeout(_) => UpstreamError::ConnectTimeout(format!(
                    "the SOCKS5 proxy at {} (outbound {})",
                    url.authority, self.name
                )),
                e => self.failed(e),
            })?;
        let handshake = async {
            match &url.credentials {
                Some((user, password)) => {
                    Socks5Stream::connect_with_password_and_socket(socket, target, user, password)
                        .await
                }
                None => Socks5Stream::connect_with_socket(socket, target).await,
            }
        };
        match timeout_at(deadline, handshake).await {
            Ok(Ok(stream)) => Ok(Conn::Tcp(stream.into_inner())),
            Ok(Err(e)) => Err(self.failed(format_args!("{bare}:{port}: {e}"))),
            Err(_) => Err(UpstreamError::ConnectTimeout(format!(
                "{bare}:{port} through {}",
                self.name
            ))),
        }
    }
}

impl Connect for Socks5Proxy {
    fn name(&self) -> &str {
        &self.name
    }

    fn pool_key(&self) -> u64 {
        self.key
    }

    fn connect<'a>(&'a self, host: &'a str, port: u16, deadline: Instant) -> Connecting<'a> {
        Box::pin(self.tunnel(host, port, deadline))
    }
}
