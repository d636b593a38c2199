//! Where traffic comes in: listeners, the worker threads that serve their
//! connections, and one module per inbound (today the HTTP proxy). An
//! inbound knows its protocol's framing and authentication; what to do
//! with a request is the policy's, how to carry it the exchange's.

pub(crate) mod auth;
pub(crate) mod http_proxy;
pub(crate) mod listener;
mod routing;
mod service;
pub(crate) mod sockets;
mod socks5;
mod tunnels;
mod workers;
