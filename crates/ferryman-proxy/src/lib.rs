//! The forward proxy inbound: HTTP/1 absolute-form requests, CONNECT tunnels
//! and protocol upgrades, with the HTTP semantics of `ferryman-http`.

mod access;
mod auth;
pub mod config;
mod guard;
mod handler;
mod intercept;
mod local;
mod server;
#[cfg(target_os = "linux")]
mod splice;
mod tunnel;

pub use config::ProxyConfig;
pub use intercept::{InterceptConfig, InterceptMode, Interception};
pub use server::{ForwardProxy, RunningProxy};
