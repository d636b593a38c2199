//! What is captured, where it goes, and how long it is kept.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use ferryman_http::config::{humantime_serde, Invalid};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CaptureConfig {
    /// Record exchanges and keep their bodies.
    pub enabled: bool,
    pub store: StoreConfig,
    /// Bytes kept of one body; the rest is counted, not stored (`truncated`).
    pub max_body_bytes: u64,
    /// Bytes kept of bodies that may never end: SSE, `multipart/x-mixed-replace`
    /// and WebSocket frames.
    pub max_stream_bytes: u64,
    /// Content types (prefixes, like `image/`) whose bodies are kept; empty
    /// keeps every type not excluded.
    pub include_types: Vec<String>,
    /// Content types (prefixes) whose bodies are never kept.
    pub exclude_types: Vec<String>,
    /// Body and record bytes waiting for the store, over all exchanges.
    /// When a body would go past it, its capture is abandoned, and past it a
    /// finished record is dropped (and counted), rather than slowing traffic
    /// or growing memory.
    pub max_queued_bytes: usize,
    /// One store operation taking longer than this fails that capture.
    #[serde(with = "humantime_serde")]
    pub store_timeout: Duration,
    pub retention: RetentionConfig,
    /// How many nice steps (0 to 19) below the traffic the threads that
    /// write each exchange's record, small bodies and index row run: above
    /// 0, the traffic gets the CPU first when the machine is saturated, and
    /// capture drops what it cannot keep up with; 0 shares the CPU equally,
    /// keeping more exchanges at the traffic's expense. Large bodies stream
    /// at the traffic's priority.
    pub nice: u8,
    /// Rebuild the index from the records in the store at start, even when
    /// one exists (a fresh index is always rebuilt).
    pub rebuild_index: bool,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            store: StoreConfig::default(),
            max_body_bytes: 64 << 20,
            max_stream_bytes: 1 << 20,
            include_types: Vec::new(),
            exclude_types: Vec::new(),
            max_queued_bytes: 32 << 20,
            store_timeout: Duration::from_secs(30),
            retention: RetentionConfig::default(),
            nice: 10,
            rebuild_index: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Exchanges older than this are deleted with their bodies.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// At most this many exchanges are kept; the oldest go first.
    pub max_count: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_count: 100_000,
        }
    }
}

/// Where bodies and records are written.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// A directory (`dir`, by default `capture` in the data directory).
    #[default]
    Local,
    /// An S3-compatible service (AWS, MinIO...).
    S3,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub kind: StoreKind,
    /// For `local`: relative paths are under the data directory.
    pub dir: Option<PathBuf>,
    /// For `s3`: the service's URL; empty means AWS.
    pub endpoint: Option<String>,
    pub bucket: Option<String>,
    pub region: Option<String>,
    /// `bucket` in the path rather than the host name (what MinIO wants).
    pub path_style: bool,
    /// Allow an `http://` endpoint (a local MinIO).
    pub allow_http: bool,
    /// Without these, the standard `AWS_*` environment variables are used.
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<Secret>,
}

/// A value that never appears in logs or errors.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Shown, serialized, as a placeholder: the API never returns a secret.
impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(REDACTED)
    }
}

/// What a secret looks like wherever it is shown.
pub const REDACTED: &str = "<redacted>";

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

impl CaptureConfig {
    /// Checks what serde cannot: each error names the key and the reason.
    pub fn validate(&self, errors: &mut Vec<Invalid>) {
        if self.store.kind == StoreKind::S3 && self.store.bucket.is_none() {
            errors.push(Invalid::new(
                "capture.store.bucket",
                "is needed with kind = \"s3\"",
            ));
        }
        if let Some(endpoint) = &self.store.endpoint {
            if endpoint.starts_with("http://") && !self.store.allow_http {
                errors.push(Invalid::new(
                    "capture.store.endpoint",
                    format!("{endpoint:?} is plain http; set capture.store.allow_http = true to allow it"),
                ));
            }
        }
        if self.store.access_key_id.is_some() != self.store.secret_access_key.is_some() {
            errors.push(Invalid::new(
                "capture.store.access_key_id",
                "access_key_id and secret_access_key go together",
            ));
        }
        if self.store_timeout.is_zero() {
            errors.push(Invalid::new(
                "capture.store_timeout",
                "must be greater than zero",
            ));
        }
        if self.max_queued_bytes == 0 {
            errors.push(Invalid::new(
                "capture.max_queued_bytes",
                "must be at least 1",
            ));
        }
        if self.nice > 19 {
            errors.push(Invalid::new("capture.nice", "must be 0 to 19"));
        }
        if self.retention.max_count == 0 {
            errors.push(Invalid::new(
                "capture.retention.max_count",
                "must be at least 1",
            ));
        }
    }

    /// Whether bodies of `content_type` are kept, and how much of them.
    pub fn body_cap(&self, content_type: Option<&str>) -> Option<u64> {
        let ty = content_type.unwrap_or("").trim().to_ascii_lowercase();
        let matches = |prefix: &String| ty.starts_with(&prefix.to_ascii_lowercase());
        if self.exclude_types.iter().any(matches) {
            return None;
        }
        if !self.include_types.is_empty() && !self.include_types.iter().any(matches) {
            return None;
        }
        let endless =
            ty.starts_with("text/event-stream") || ty.starts_with("multipart/x-mixed-replace");
        Some(if endless {
            self.max_stream_bytes.min(self.max_body_bytes)
        } else {
            self.max_body_bytes
        })
    }
}

#[cfg(test)]
mod tests {
    use super::CaptureConfig;

    #[test]
    fn content_types_decide_what_is_kept_and_how_much() {
        let config = CaptureConfig {
            exclude_types: vec!["image/".into()],
            ..CaptureConfig::default()
        };
        assert_eq!(config.body_cap(Some("image/png")), None);
        assert_eq!(config.body_cap(Some("Image/PNG")), None);
        assert_eq!(config.body_cap(Some("text/html")), Some(64 << 20));
        assert_eq!(config.body_cap(None), Some(64 << 20));
        assert_eq!(config.body_cap(Some("text/event-stream")), Some(1 << 20));
        assert_eq!(
            config.body_cap(Some("multipart/x-mixed-replace; boundary=x")),
            Some(1 << 20)
        );
        let only_json = CaptureConfig {
            include_types: vec!["application/json".into()],
            ..CaptureConfig::default()
        };
        assert_eq!(
            only_json.body_cap(Some("application/json; charset=utf-8")),
            Some(64 << 20)
        );
        assert_eq!(only_json.body_cap(Some("text/plain")), None);
        assert_eq!(only_json.body_cap(None), None);
    }
}
