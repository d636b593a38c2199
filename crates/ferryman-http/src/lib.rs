//! Proxy HTTP semantics shared by every inbound: hop-by-hop handling, body
//! wrappers (100-continue gate, metering), the pooled upstream client, and
//! dialling TCP (which the tunnel's agent shares).

pub mod body;
pub mod config;
pub mod dial;
pub mod headers;
pub mod limit;
pub mod pace;
pub mod prefixed;
pub mod upstream;

pub use body::{BoxError, ProxyBody};
pub use config::UpstreamConfig;
pub use upstream::{Target, UpstreamClient, UpstreamError, UpstreamSettings};
