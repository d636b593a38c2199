//! ferryman's proxy pipeline, in the order traffic crosses it:
//! inbound (listeners and their protocols) → [`policy`] (where it goes) →
//! exchange (HTTP semantics, tunnels, interception, the witness) →
//! [`outbound`] (how it leaves). The context holds what the stages share
//! and [`session`] the connection table they all report to. Data flows one way;
//! no module imports from a stage before it.

pub mod config;
mod context;
mod exchange;
mod inbound;
pub mod outbound;
pub mod policy;
pub mod session;

pub use config::{ProxyConfig, Socks5Config};
pub use context::Settings;
pub use exchange::Interception;
pub use inbound::listener::{Control, ForwardProxy, Observers, RunningProxy};
pub use outbound::{Env, OutboundConfig};
pub use policy::{
    Explanation, Facts, InterceptConfig, InterceptMode, Policy, PolicySpec, Query, RuleConfig,
};
pub use session::{KeyedBytes, SessionSnapshot, Sessions, TrafficSnapshot};
