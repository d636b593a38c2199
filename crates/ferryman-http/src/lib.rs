//! Proxy HTTP semantics shared by every inbound: hop-by-hop handling, body
//! wrappers (100-continue gate, metering), and the pooled upstream client.

pub mod body;
pub mod config;
pub mod headers;
pub mod limit;
pub mod pace;
pub mod prefixed;
pub mod upstream;

pub use body::{BoxError, ProxyBody};
pub use config::UpstreamConfig;
pub use upstream::{Target, UpstreamClient, UpstreamError, UpstreamSettings};
