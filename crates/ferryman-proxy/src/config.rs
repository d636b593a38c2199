//! The `[proxy]` section: the HTTP proxy's listener, who may use it, and
//! the limits and deadlines every client connection is held to; and the
//! `[socks5]` section, which takes the same users.

use std::net::SocketAddr;
use std::time::Duration;

use ferryman_http::config::{humantime_serde, Invalid};
use serde::{Deserialize, Serialize};

/// The forward proxy listener.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    pub listen: SocketAddr,
    /// Accepted `user:password` pairs for Basic proxy authentication; empty
    /// means no authentication.
    #[serde(serialize_with = "without_passwords")]
    pub auth: Vec<String>,
    /// Listening beyond loopback without `auth` is refused unless this is set.
    pub allow_open_proxy: bool,
    /// Request line plus headers, in bytes; larger requests get 431.
    pub max_header_bytes: usize,
    /// Header fields per request; more get 431.
    pub max_headers: usize,
    /// A client connection with no request in progress is closed after this
    /// (also bounds how long a request head may take to arrive); an HTTP/2
    /// connection with no stream open too.
    #[serde(with = "humantime_serde")]
    pub client_idle_timeout: Duration,
    /// A request body that sends nothing for this long is cut off (408)...
    #[serde(with = "humantime_serde")]
    pub request_body_timeout: Duration,
    /// ...and so is one that averages fewer bytes per second than this
    /// after its first `request_body_timeout` (0: no floor).
    pub request_body_min_rate: u64,
    /// A client that takes no byte of a response for this long is dropped.
    #[serde(with = "humantime_serde")]
    pub send_timeout: Duration,
    /// An intercepted TLS handshake, from the ClientHello on, must finish
    /// within this.
    #[serde(with = "humantime_serde")]
    pub tls_handshake_timeout: Duration,
    /// A CONNECT tunnel or upgraded connection (WebSocket) in which no byte
    /// moves either way for this long is closed.
    #[serde(with = "humantime_serde")]
    pub tunnel_idle_timeout: Duration,
    /// HTTP/2 connections are pinged this often, and closed when a ping is
    /// not answered within it ("0s": no pings).
    #[serde(with = "humantime_serde")]
    pub h2_keepalive_interval: Duration,
    /// Append the client address to `X-Forwarded-For`.
    pub x_forwarded_for: bool,
    /// Client connections served at once; more wait in the kernel's accept
    /// queue. 0: half the open-file limit, as each may need an upstream socket.
    pub max_connections: usize,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            auth: Vec::new(),
            allow_open_proxy: false,
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            client_idle_timeout: Duration::from_secs(60),
            request_body_timeout: Duration::from_secs(60),
            request_body_min_rate: 1024,
            send_timeout: Duration::from_secs(60),
            tls_handshake_timeout: Duration::from_secs(15),
            tunnel_idle_timeout: Duration::from_secs(600),
            h2_keepalive_interval: Duration::from_secs(30),
            x_forwarded_for: false,
            max_connections: 0,
        }
    }
}

/// `user:<redacted>`: who may use the proxy is shown, never how.
fn without_passwords<S: serde::Serializer>(pairs: &[String], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(pairs.iter().map(|pair| {
        let user = pair.split_once(':').map_or(pair.as_str(), |(user, _)| user);
        format!("{user}:{}", ferryman_capture::REDACTED)
    }))
}

impl ProxyConfig {
    /// How fast a request body must move.
    pub(crate) fn body_pace(&self) -> ferryman_http::pace::Pace {
        ferryman_http::pace::Pace {
            idle: self.request_body_timeout,
            min_rate: self.request_body_min_rate,
        }
    }

    /// `max_connections`, with 0 resolved against the open-file limit.
    pub fn connection_limit(&self) -> usize {
        if self.max_connections > 0 {
            return self.max_connections;
        }
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit fills the struct it is given.
        let known = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
        let files = if known { limit.rlim_cur as usize } else { 1024 };
        // Room for the listener, logs and the like, then one upstream per client.
        (files.saturating_sub(64) / 2).max(1)
    }

    pub fn validate(&self, errors: &mut Vec<Invalid>) {
        if !self.listen.ip().is_loopback() && self.auth.is_empty() && !self.allow_open_proxy {
            errors.push(Invalid::new(
                "proxy.listen",
                format!(
                    "{} is reachable beyond this machine and proxy.auth is empty: anyone could use \
                     this proxy; set proxy.auth, or proxy.allow_open_proxy = true if that is intended",
                    self.listen
                ),
            ));
        }
        for (i, pair) in self.auth.iter().enumerate() {
            if !pair.contains(':') || pair.starts_with(':') {
                errors.push(Invalid::new(
                    format!("proxy.auth[{i}]"),
                    "must be \"user:password\"",
                ));
            }
        }
        if self.max_header_bytes < 1024 {
            errors.push(Invalid::new(
                "proxy.max_header_bytes",
                "must be at least 1024",
            ));
        }
        if self.max_headers == 0 {
            errors.push(Invalid::new("proxy.max_headers", "must be at least 1"));
        }
        for (key, value) in [
            ("proxy.client_idle_timeout", self.client_idle_timeout),
            ("proxy.request_body_timeout", self.request_body_timeout),
            ("proxy.send_timeout", self.send_timeout),
            ("proxy.tls_handshake_timeout", self.tls_handshake_timeout),
            ("proxy.tunnel_idle_timeout", self.tunnel_idle_timeout),
        ] {
            if value.is_zero() {
                errors.push(Invalid::new(key, "must be greater than zero"));
            }
        }
    }
}

/// The `[socks5]` section: a SOCKS5 listener taking the same users as the
/// HTTP proxy (`proxy.auth`) and following the same rules.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Socks5Config {
    /// Where SOCKS5 clients connect; unset, there is no SOCKS5 listener.
    pub listen: Option<SocketAddr>,
    /// A UDP association with no datagram either way for this long ends.
    #[serde(with = "humantime_serde")]
    pub udp_idle_timeout: Duration,
}

impl Default for Socks5Config {
    fn default() -> Self {
        Self {
            listen: None,
            udp_idle_timeout: Duration::from_secs(60),
        }
    }
}

impl Socks5Config {
    pub fn validate(&self, proxy: &ProxyConfig, errors: &mut Vec<Invalid>) {
        if let Some(listen) = self.listen {
            if !listen.ip().is_loopback() && proxy.auth.is_empty() && !proxy.allow_open_proxy {
                errors.push(Invalid::new(
                    "socks5.listen",
                    format!(
                        "{listen} is reachable beyond this machine and proxy.auth is empty: anyone \
                         could use this proxy; set proxy.auth, or proxy.allow_open_proxy = true if that is intended"
                    ),
                ));
            }
            if listen == proxy.listen && listen.port() != 0 {
                errors.push(Invalid::new("socks5.listen", "is proxy.listen already"));
            }
        }
        if self.udp_idle_timeout.is_zero() {
            errors.push(Invalid::new(
                "socks5.udp_idle_timeout",
                "must be greater than zero",
            ));
        }
    }
}
