//! The `[admin]` section.

use std::net::SocketAddr;

use ferryman_capture::Secret;
use ferryman_http::config::Invalid;
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
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            token: None,
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
