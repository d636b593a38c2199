use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How ferryman talks to the servers it forwards to.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// DNS resolution plus TCP connect, and waiting for a free slot when the
    /// per-host cap is reached.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// From the moment the request is fully sent until the response head arrives.
    #[serde(with = "humantime_serde")]
    pub response_header_timeout: Duration,
    /// An idle pooled connection older than this is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Connections (busy and idle) one upstream host may have open at once,
    /// over every worker thread.
    pub max_connections_per_host: usize,
    /// Exchanges one client address may have in flight to one host at once
    /// (0: no cap), so that one client cannot take a host's whole share;
    /// more wait, then get 503. Raise it (or 0) where many clients share an
    /// address.
    pub max_connections_per_client: usize,
    /// Idle connections kept per upstream host.
    pub max_idle_per_host: usize,
    /// With `Expect: 100-continue`, how long to hold the client's body waiting
    /// for the upstream's `100 Continue` before sending it anyway (curl waits 1 s).
    #[serde(with = "humantime_serde")]
    pub expect_continue_timeout: Duration,
    /// Response head size limit, in bytes.
    pub max_response_header_bytes: usize,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            response_header_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(90),
            max_connections_per_host: 256,
            max_connections_per_client: 64,
            max_idle_per_host: 64,
            expect_continue_timeout: Duration::from_secs(1),
            max_response_header_bytes: 64 * 1024,
        }
    }
}

impl UpstreamConfig {
    /// Checks what serde cannot: each error names the key and the reason.
    pub fn validate(&self, errors: &mut Vec<Invalid>) {
        for (key, value) in [
            ("upstream.connect_timeout", self.connect_timeout),
            (
                "upstream.response_header_timeout",
                self.response_header_timeout,
            ),
            ("upstream.idle_timeout", self.idle_timeout),
        ] {
            if value.is_zero() {
                errors.push(Invalid::new(key, "must be greater than zero"));
            }
        }
        if self.max_connections_per_host == 0 {
            errors.push(Invalid::new(
                "upstream.max_connections_per_host",
                "must be at least 1",
            ));
        }
        if self.max_response_header_bytes < 8192 {
            errors.push(Invalid::new(
                "upstream.max_response_header_bytes",
                "must be at least 8192",
            ));
        }
    }
}

/// A config value that parsed but makes no sense.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// Dotted path of the key, e.g. `upstream.connect_timeout`.
    pub key: String,
    pub reason: String,
}

impl Invalid {
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// Durations in config files are human strings: "10s", "500ms", "2m".
pub mod humantime_serde {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*value))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "{text:?} is not a duration ({e}); write e.g. \"10s\" or \"500ms\""
            ))
        })
    }
}
