//! ferryman's proxy pipeline, in the order traffic crosses it:
//! [`inbound`] (listeners and their protocols) → policy (where it goes) →
//! [`exchange`] (HTTP semantics, tunnels, interception, the witness) →
//! [`outbound`] (how it leaves). [`context`] holds what the stages share and
//! [`session`] the connection table they all report to. Data flows one way;
//! no module imports from a stage before it.

pub mod config;
mod context;
mod exchange;
mod inbound;
mod outbound;
pub mod session;

pub use config::ProxyConfig;
pub use exchange::{InterceptConfig, InterceptMode, Interception};
pub use inbound::listener::{ForwardProxy, Observers, RunningProxy};
pub use session::{KeyedBytes, SessionSnapshot, Sessions, TrafficSnapshot};
