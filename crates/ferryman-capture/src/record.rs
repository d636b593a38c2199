//! The record of one exchange, as stored in `exchange.json` and indexed.

use http::HeaderMap;
use object_store::path::Path;
use serde::{Deserialize, Serialize};

/// A time-ordered exchange id (UUIDv7): its first 48 bits are the start
/// time in Unix milliseconds, so ids sort by time and name their own day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ExchangeId(uuid::Uuid);

impl ExchangeId {
    pub fn new() -> Self {
        Self(uuid::Uuid::now_v7())
    }

    pub fn parse(text: &str) -> Option<Self> {
        let id = uuid::Uuid::parse_str(text).ok()?;
        (id.get_version_num() == 7).then_some(Self(id))
    }

    pub fn unix_ms(&self) -> i64 {
        let (secs, nanos) = self.0.get_timestamp().map_or((0, 0), |ts| ts.to_unix());
        secs as i64 * 1000 + i64::from(nanos / 1_000_000)
    }

    /// `exchanges/YYYY/MM/DD/<id>/`, the folder of everything about it.
    pub fn folder(&self) -> String {
        let day = time::OffsetDateTime::from_unix_timestamp(self.unix_ms() / 1000)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        format!(
            "exchanges/{:04}/{:02}/{:02}/{}",
            day.year(),
            u8::from(day.month()),
            day.day(),
            self.0
        )
    }

    pub fn body_key(&self, part: Part) -> Path {
        Path::from(format!("{}/{}.body", self.folder(), part.name()))
    }

    pub fn record_key(&self) -> Path {
        Path::from(format!("{}/exchange.json", self.folder()))
    }
}

impl Default for ExchangeId {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Display for ExchangeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Which half of an exchange a body belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Request,
    Response,
}

impl Part {
    pub fn name(self) -> &'static str {
        match self {
            Part::Request => "request",
            Part::Response => "response",
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ExchangeRecord {
    pub id: String,
    /// The exchange's entry in the connection table, and its parent's (the
    /// client connection or the intercepted tunnel).
    pub session_id: u64,
    pub parent_id: Option<u64>,
    /// Unix milliseconds.
    pub started_ms: i64,
    pub timings: Timings,
    pub client: String,
    /// The way out the policy chose: `direct`, an upstream proxy, a group...
    pub outbound: String,
    /// The rule that chose it (`default` when none did).
    #[serde(default)]
    pub rule: Option<String>,
    pub request: RequestRecord,
    pub response: Option<ResponseRecord>,
    pub tls: Option<TlsFacts>,
    /// Bytes of the exchange: bodies for HTTP, the whole stream for a tunnel.
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub error: Option<String>,
}

impl ExchangeRecord {
    /// About the memory the record holds, to count it against the capture
    /// queue's budget while it waits for the store.
    pub(crate) fn weight(&self) -> usize {
        let fields = |pairs: &[(String, String)]| {
            pairs
                .iter()
                .map(|(name, value)| name.len() + value.len() + 2 * size_of::<String>())
                .sum::<usize>()
        };
        let response = self.response.as_ref().map_or(0, |r| {
            size_of::<ResponseRecord>() + fields(&r.headers) + fields(&r.trailers)
        });
        size_of::<Self>()
            + self.request.url.len()
            + fields(&self.request.headers)
            + response
            + self.client.len()
            + self.error.as_ref().map_or(0, String::len)
    }
}

/// Milliseconds after the start.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Timings {
    pub request_sent_ms: Option<f64>,
    pub first_byte_ms: Option<f64>,
    pub end_ms: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RequestRecord {
    pub method: String,
    pub url: String,
    pub version: String,
    pub headers: Vec<(String, String)>,
    pub body: BodyRecord,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ResponseRecord {
    pub status: u16,
    pub version: String,
    pub headers: Vec<(String, String)>,
    pub trailers: Vec<(String, String)>,
    pub body: BodyRecord,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TlsFacts {
    pub sni: Option<String>,
    pub alpn: Option<String>,
    pub intercepted: bool,
}

/// What became of one body.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct BodyRecord {
    /// Bytes that crossed the proxy.
    pub size: u64,
    /// Bytes kept in the store.
    pub captured: u64,
    /// The stored object, when there is one.
    pub key: Option<String>,
    pub capture: CaptureStatus,
    /// Why the capture is not complete.
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CaptureStatus {
    /// No body, or capture is off.
    #[default]
    None,
    Stored,
    /// Kept up to the cap.
    Truncated,
    /// Not kept by policy (content type).
    Skipped,
    /// Abandoned: the store was too slow, failed, or the body broke off.
    Failed,
}

/// Headers as recorded; the client's credentials for ferryman itself are
/// not kept (they are ferryman's secret, not part of the traffic).
pub fn header_pairs(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(name, value)| {
            let value = if name == http::header::PROXY_AUTHORIZATION {
                "<redacted>".into()
            } else {
                String::from_utf8_lossy(value.as_bytes()).into_owned()
            };
            (name.as_str().to_owned(), value)
        })
        .collect()
}

pub fn version_name(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}
