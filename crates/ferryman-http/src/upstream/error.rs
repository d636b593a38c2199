use std::io;
use std::time::Duration;

use http::StatusCode;

/// Why an upstream exchange failed; each maps to the status the client sees.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot resolve {host}: {source}")]
    Resolve { host: String, source: io::Error },
    #[error("{0} resolved to no address")]
    NoAddress(String),
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("connecting to {0} timed out")]
    ConnectTimeout(String),
    #[error("this client already has its share of connections to {0} in use")]
    ClientShare(String),
    #[error("TLS with {host} failed: {reason}")]
    Tls { host: String, reason: String },
    #[error("{0} is one of this proxy's own listeners")]
    Loop(String),
    #[error("no response head from upstream within {0:?}")]
    ResponseTimeout(Duration),
    #[error("upstream closed the connection without answering")]
    Closed,
    #[error("bad upstream response: {0}")]
    Protocol(#[source] hyper::Error),
    /// The way out itself failed: an upstream proxy that cannot be reached
    /// or refused, an agent that could not reach the target.
    #[error("outbound {outbound}: {reason}")]
    Outbound { outbound: String, reason: String },
    /// The way out refuses this destination (an agent's allow/deny list).
    #[error("outbound {outbound} refuses it: {reason}")]
    Denied { outbound: String, reason: String },
}

impl UpstreamError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::ConnectTimeout(_) | Self::ResponseTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::ClientShare(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Loop(_) => StatusCode::LOOP_DETECTED,
            Self::Denied { .. } => StatusCode::FORBIDDEN,
            _ => StatusCode::BAD_GATEWAY,
        }
    }

    /// The SOCKS5 reply code that says the same (RFC 1928 §6).
    pub fn socks_reply(&self) -> u8 {
        const GENERAL: u8 = 1;
        const NOT_ALLOWED: u8 = 2;
        const NETWORK_UNREACHABLE: u8 = 3;
        const HOST_UNREACHABLE: u8 = 4;
        const REFUSED: u8 = 5;
        match self {
            Self::Denied { .. } | Self::Loop(_) => NOT_ALLOWED,
            Self::Resolve { .. } | Self::NoAddress(_) | Self::ConnectTimeout(_) => HOST_UNREACHABLE,
            Self::Connect { source, .. } => match source.kind() {
                io::ErrorKind::ConnectionRefused => REFUSED,
                io::ErrorKind::NetworkUnreachable => NETWORK_UNREACHABLE,
                io::ErrorKind::TimedOut | io::ErrorKind::HostUnreachable => HOST_UNREACHABLE,
                _ => GENERAL,
            },
            _ => GENERAL,
        }
    }
}
