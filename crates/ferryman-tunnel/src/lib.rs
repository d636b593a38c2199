//! ferryman's reverse tunnel: agents inside private networks dial out to a
//! gateway (TLS, then a WebSocket upgrade that says who they are) and keep
//! carriers there; the gateway opens streams through them (h2 over the
//! WebSocket byte stream, one stream per user connection, each flow
//! controlled, half-closable and reset with a reason), and the agent dials
//! each stream's destination if its allow/deny list lets it.
//!
//! This crate carries streams; it does not listen (the proxy's listeners
//! hand the gateway its connections), choose which traffic goes through
//! agents (the policy does), or see inside streams (the proxy does).

pub mod agent;
mod carrier;
pub mod config;
pub mod gateway;
mod stream;
pub mod wire;
mod ws;

pub use agent::{Agent, AgentConfig};
pub use carrier::CarrierConfig;
pub use config::{ServiceConfig, TunnelConfig, Via};
pub use gateway::{AgentSnapshot, AgentStream, Gateway, OpenError, Prepared, Registry};
