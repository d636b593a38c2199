//! Through the agents of a group (or one agent) connected to this gateway:
//! the destination is resolved and dialled on the agent's side, and the
//! stream is handed out once the agent reached it. What the agent answers
//! becomes the error the client sees: 403 for a denial, 502 for a refused
//! or unreachable destination, 504 for a timeout.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use ferryman_http::upstream::{Conn, Connect, Connecting};
use ferryman_http::UpstreamError;
use ferryman_tunnel::wire::{Network, Refusal};
use ferryman_tunnel::{AgentStream, Gateway, OpenError, Via};
use tokio::time::Instant;

pub(crate) struct Agents {
    name: Arc<str>,
    via: Via,
    gateway: Arc<Gateway>,
    key: u64,
}

impl Agents {
    pub(crate) fn new(name: &str, via: Via, gateway: Arc<Gateway>) -> Self {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        ("agents", name, &via).hash(&mut hasher);
        Self {
            name: name.into(),
            via,
            gateway,
            key: hasher.finish(),
        }
    }

    fn error(&self, e: OpenError, host: &str, port: u16) -> UpstreamError {
        let target = ferryman_tunnel::wire::authority(host, port);
        let io = |kind: std::io::ErrorKind, reason: String| std::io::Error::new(kind, reason);
        match e {
            OpenError::Refused {
                agent,
                refusal,
                reason,
            } => {
                let reason = format!("{reason} (agent {agent})");
                match refusal {
                    Refusal::Denied => UpstreamError::Denied {
                        outbound: self.name.to_string(),
                        reason,
                    },
                    Refusal::Unresolved => UpstreamError::Resolve {
                        host: host.to_string(),
                        source: io(std::io::ErrorKind::NotFound, reason),
                    },
                    Refusal::Refused => UpstreamError::Connect {
                        addr: target,
                        source: io(std::io::ErrorKind::ConnectionRefused, reason),
                    },
                    Refusal::Unreachable => UpstreamError::Connect {
                        addr: target,
                        source: io(std::io::ErrorKind::HostUnreachable, reason),
                    },
                    Refusal::Timeout => {
                        UpstreamError::ConnectTimeout(format!("{target}: {reason}"))
                    }
                    Refusal::Failed => UpstreamError::Outbound {
                        outbound: self.name.to_string(),
                        reason,
                    },
                }
            }
            OpenError::Timeout { agent } => {
                UpstreamError::ConnectTimeout(format!("{target} through agent {agent}"))
            }
            e @ (OpenError::NoAgent(_) | OpenError::Carrier { .. }) => UpstreamError::Outbound {
                outbound: self.name.to_string(),
                reason: e.to_string(),
            },
        }
    }
}

impl Connect for Agents {
    fn name(&self) -> &str {
        &self.name
    }

    fn pool_key(&self) -> u64 {
        self.key
    }

    fn connect<'a>(&'a self, host: &'a str, port: u16, deadline: Instant) -> Connecting<'a> {
        Box::pin(async move {
            match self
                .gateway
                .open(&self.via, host, port, Network::Tcp, deadline)
                .await
            {
                Ok(stream) => Ok(Conn::Other(Box::new(stream))),
                Err(e) => Err(self.error(e, host, port)),
            }
        })
    }

    fn carried_by(&self, conn: &Conn) -> Option<Arc<str>> {
        conn.downcast_ref::<AgentStream>()
            .map(|s| Arc::from(s.agent()))
    }
}
