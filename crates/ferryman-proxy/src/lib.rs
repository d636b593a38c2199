//! The forward proxy inbound: HTTP/1 absolute-form requests, CONNECT tunnels
//! and protocol upgrades, with the HTTP semantics of `ferryman-http`.

mod activity;
mod auth;
mod closable;
pub mod config;
mod counted;
mod guard;
mod handler;
mod intercept;
mod local;
mod server;
pub mod session;
#[cfg(target_os = "linux")]
mod splice;
mod tunnel;
mod workers;

pub use config::ProxyConfig;
pub use intercept::{InterceptConfig, InterceptMode, Interception};
pub use server::{ForwardProxy, Observers, RunningProxy};
pub use session::{KeyedBytes, SessionSnapshot, Sessions, TrafficSnapshot};
