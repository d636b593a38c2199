//! The `[admin]` section.

use std::net::SocketAddr;

use ferryman_capture::Secret;
use ferryman_http::config::{humantime_serde, Invalid};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Serve the admin API, the dashboard and /metrics.
    pub enabled: bool,
    pub listen: SocketAddr,
    /// The token API clients send as `Authorization: Bearer` and the
    /// dashboard asks for once. Unset: one is generated into
    /// `<data_dir>/admin-token` on first start.
    pub token: Option<Secret>,
    /// How long a client may take to send a request head; a half-sent one
    /// is dropped after it.
    #[serde(with = "humantime_serde")]
    pub header_timeout: std::time::Duration,
    /// A dashboard session unused this long is logged out (a week at most
    /// in any case).
    #[serde(with = "humantime_serde")]
    pub session_timeout: std::time::Duration,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            token: None,
            header_timeout: std::time::Duration::from_secs(10),
            session_timeout: std::time::Duration::from_secs(12 * 3600),
        }
    }
}

/// A token shorter than this is too easy to guess over the network.
const MIN_TOKEN_LEN: usize = 16;

impl AdminConfig {
    pub fn validate(&self, errors: &mut Vec<Invalid>) {
        if !self.enabled {
            return;
        }
        if !self.listen.ip().is_loopback() && self.token.is_none() {
            errors.push(Invalid::new(
                "admin.listen",
                format!(
                    "{} is reachable beyond this machine and admin.token is not set; \
                     set admin.token to a secret of at least {MIN_TOKEN_LEN} characters",
                    self.listen
                ),
            ));
        }
        if self.header_timeout.is_zero() {
            errors.push(Invalid::new(
                "admin.header_timeout",
                "must be greater than zero",
            ));
        }
        if let Some(token) = &self.token {
            if token.expose().len() < MIN_TOKEN_LEN {
                errors.push(Invalid::new(
                    "admin.token",
                    format!("must be at least {MIN_TOKEN_LEN} characters"),
                ));
            }
        }
    }
}
