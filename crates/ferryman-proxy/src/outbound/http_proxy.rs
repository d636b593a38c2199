//! Through an upstream HTTP proxy: a CONNECT tunnel per destination, and
//! for plain `http://` requests (unless configured otherwise) absolute-form
//! requests over connections to the proxy that serve every host.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use base64::Engine;
use ferryman_http::prefixed::Prefixed;
use ferryman_http::upstream::{Conn, Connect, Connecting, ForwardingProxy};
use ferryman_http::UpstreamError;
use http::HeaderValue;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{timeout_at, Instant};
use tokio_rustls::TlsConnector;

use super::config::ProxyUrl;
use ferryman_http::dial::{dial, OwnAddrs, Source};

/// The most of a CONNECT answer's head that is read.
const MAX_ANSWER_HEAD: usize = 16 * 1024;

pub(crate) struct HttpProxy {
    name: Arc<str>,
    url: ProxyUrl,
    /// `Basic ...`, when the URL has credentials.
    authorization: Option<HeaderValue>,
    /// Set for an `https://` proxy.
    tls: Option<TlsConnector>,
    absolute_form: bool,
    own: OwnAddrs,
    key: u64,
}

impl HttpProxy {
    pub(crate) fn new(
        name: &str,
        url: ProxyUrl,
        absolute_form: bool,
        tls: &Arc<rustls::ClientConfig>,
        own: OwnAddrs,
    ) -> Self {
        let authorization = url.credentials.as_ref().and_then(|(user, password)| {
            let token =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            HeaderValue::from_str(&format!("Basic {token}")).ok()
        });
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (
            "http",
            name,
            &url.scheme,
            &url.authority,
            &url.credentials,
            absolute_form,
        )
            .hash(&mut hasher);
        let tls = (url.scheme == "https").then(|| {
            let mut config = rustls::ClientConfig::clone(tls);
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            TlsConnector::from(Arc::new(config))
        });
        Self {
            name: name.into(),
            url,
            authorization,
            tls,
            absolute_form,
            own,
            key: hasher.finish(),
        }
    }

    fn failed(&self, reason: impl std::fmt::Display) -> UpstreamError {
        UpstreamError::Outbound {
            outbound: self.name.to_string(),
            reason: format!("the proxy at {}: {reason}", self.url.authority),
        }
    }

    /// A connection to the proxy itself, in TLS for an `https://` one.
    async fn to_proxy(&self, deadline: Instant) -> Result<Conn, UpstreamError> {
        let url = &self.url;
        let tcp = dial(&url.host, url.port, deadline, &Source::default(), &self.own)
            .await
            .map_err(|e| match e {
                UpstreamError::ConnectTimeout(_) => UpstreamError::ConnectTimeout(format!(
                    "the proxy at {} (outbound {})",
                    url.authority, self.name
                )),
                e => self.failed(e),
            })?;
        let Some(tls) = &self.tls else {
            return Ok(Conn::Tcp(tcp));
        };
        let name = url.host.trim_start_matches('[').trim_end_matches(']');
        let server_name = ServerName::try_from(name.to_string()).map_err(|e| self.failed(e))?;
        match timeout_at(deadline, tls.connect(server_name, tcp)).await {
            Ok(Ok(stream)) => Ok(Conn::Other(Box::new(stream))),
            Ok(Err(e)) => Err(self.failed(format_args!("TLS failed: {e}"))),
            Err(_) => Err(UpstreamError::ConnectTimeout(format!(
                "TLS with the proxy at {}",
                url.authority
            ))),
        }
    }

    /// Asks the proxy for a tunnel to `host:port`.
    async fn tunnel(
        &self,
        host: &str,
        port: u16,
        deadline: Instant,
    ) -> Result<Conn, UpstreamError> {
        let mut conn = self.to_proxy(deadline).await?;
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let target = if bare.contains(':') {
            format!("[{bare}]:{port}")
        } else {
            format!("{bare}:{port}")
        };
        let mut head = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
        if let Some(authorization) = self.authorization.as_ref().and_then(|a| a.to_str().ok()) {
            head.push_str("Proxy-Authorization: ");
            head.push_str(authorization);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        let timed_out = || UpstreamError::ConnectTimeout(format!("{target} through {}", self.name));
        timeout_at(deadline, conn.write_all(head.as_bytes()))
            .await
            .map_err(|_| timed_out())?
            .map_err(|e| self.failed(e))?;
        let (status, reason, rest) = timeout_at(deadline, read_answer(&mut conn))
            .await
            .map_err(|_| timed_out())?
            .map_err(|e| self.failed(e))?;
        if !(200..300).contains(&status) {
            return Err(self.failed(format_args!("CONNECT {target} answered {status} {reason}")));
        }
        if rest.is_empty() {
            return Ok(conn);
        }
        // The destination spoke first and the proxy relayed it at once.
        Ok(Conn::Other(Box::new(Prefixed::new(rest.into(), conn))))
    }
}

/// Reads an answer's head; returns its status, reason and the bytes after it.
async fn read_answer(conn: &mut Conn) -> Result<(u16, String, Vec<u8>), String> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        let mut chunk = [0u8; 2048];
        let n = conn.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed the connection without answering CONNECT".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut answer = httparse::Response::new(&mut headers);
        match answer.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let status = answer.code.unwrap_or(0);
                let reason = answer.reason.unwrap_or("").to_string();
                return Ok((status, reason, buf.split_off(len)));
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_ANSWER_HEAD => {}
            Ok(httparse::Status::Partial) => {
                return Err("answered CONNECT with a head too large".into())
            }
            Err(e) => {
                return Err(format!(
                    "answered CONNECT with something else than HTTP ({e})"
                ))
            }
        }
    }
}

impl Connect for HttpProxy {
    fn name(&self) -> &str {
        &self.name
    }

    fn pool_key(&self) -> u64 {
        self.key
    }

    fn connect<'a>(&'a self, host: &'a str, port: u16, deadline: Instant) -> Connecting<'a> {
        Box::pin(self.tunnel(host, port, deadline))
    }

    fn forwards_plain_http(&self) -> Option<&dyn ForwardingProxy> {
        self.absolute_form.then_some(self as &dyn ForwardingProxy)
    }
}

impl ForwardingProxy for HttpProxy {
    fn connect_to_proxy(&self, deadline: Instant) -> Connecting<'_> {
        Box::pin(self.to_proxy(deadline))
    }

    fn authorization(&self) -> Option<&HeaderValue> {
        self.authorization.as_ref()
    }
}
