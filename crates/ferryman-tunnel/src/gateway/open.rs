//! Opening a stream through an agent: the least busy agent of the group
//! (or the one named) is asked to reach the destination, and the stream is
//! handed out only once it answers that it did. An agent whose carrier
//! fails to carry the request is skipped for the next; an agent's answer
//! about the destination (denied, refused, unreachable) is final.

use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Method, Request, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{timeout_at, Instant};
use tracing::debug;

use super::registry::{Carrier, StreamGuard};
use super::Gateway;
use crate::config::Via;
use crate::stream::H2Stream;
use crate::wire::{self, Network, Refusal};

/// Why no stream could be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("no agent of {0} is connected")]
    NoAgent(Via),
    /// The agent answered: it did not reach the destination.
    #[error("agent {agent}: {reason}")]
    Refused {
        agent: String,
        refusal: Refusal,
        reason: String,
    },
    #[error("agent {agent} did not answer in time")]
    Timeout { agent: String },
    /// Every agent tried failed to carry the request.
    #[error("no agent of {via} could carry the stream: {last}")]
    Carrier { via: Via, last: String },
}

impl OpenError {
    /// Label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            OpenError::NoAgent(_) => "no_agent",
            OpenError::Refused { refusal, .. } => refusal.as_str(),
            OpenError::Timeout { .. } => "timeout",
            OpenError::Carrier { .. } => "carrier",
        }
    }
}

/// A stream to a destination through an agent.
pub struct AgentStream {
    io: H2Stream,
    guard: StreamGuard,
    /// The address the agent dialled, as it said.
    peer: Option<String>,
    bytes_in: metrics::Counter,
    bytes_out: metrics::Counter,
}

impl AgentStream {
    /// The agent carrying the stream.
    pub fn agent(&self) -> &str {
        &self.guard.0.agent.id
    }

    pub fn group(&self) -> &str {
        &self.guard.0.agent.group
    }

    pub fn peer(&self) -> Option<&str> {
        self.peer.as_deref()
    }

    /// Relays the stream with a TCP connection both ways until both end,
    /// without copying through a buffer of its own (a tunnel's fast path);
    /// `count` hears of bytes from the socket (first) and to it.
    pub async fn relay_tcp(
        self,
        tcp: tokio::net::TcpStream,
        count: &(dyn Fn(u64, u64) + Sync),
    ) -> io::Result<()> {
        let carrier = &self.guard.0;
        let (bytes_in, bytes_out) = (&self.bytes_in, &self.bytes_out);
        let counted = |up: u64, down: u64| {
            count(up, down);
            if up > 0 {
                carrier.bytes_out.fetch_add(up, Ordering::Relaxed);
                bytes_out.increment(up);
            }
            if down > 0 {
                carrier.bytes_in.fetch_add(down, Ordering::Relaxed);
                bytes_in.increment(down);
            }
        };
        self.io.relay_tcp(tcp, &counted).await
    }
}

impl Gateway {
    /// A stream to `host:port` through `via`, open (the agent reached the
    /// destination) before `deadline`.
    pub async fn open(
        &self,
        via: &Via,
        host: &str,
        port: u16,
        network: Network,
        deadline: Instant,
    ) -> Result<AgentStream, OpenError> {
        let candidates = self.registry.candidates(via);
        if candidates.is_empty() {
            count(via, "no_agent");
            return Err(OpenError::NoAgent(via.clone()));
        }
        let authority = wire::authority(host, port);
        let mut last = String::new();
        for carrier in candidates {
            match ask(&carrier, &authority, network, deadline).await {
                Ok(stream) => {
                    count(via, "opened");
                    return Ok(stream);
                }
                Err(Asked::Carrier(why)) => {
                    debug!(agent = %carrier.agent.id, error = %why, "agent could not carry a stream; trying the next");
                    last = format!("agent {}: {why}", carrier.agent.id);
                }
                Err(Asked::Final(e)) => {
                    count(via, e.reason());
                    return Err(e);
                }
            }
        }
        count(via, "carrier");
        Err(OpenError::Carrier {
            via: via.clone(),
            last,
        })
    }
}

fn count(via: &Via, result: &'static str) {
    let label = match via {
        Via::Group(group) => group.clone(),
        Via::Agent(agent) => format!("agent:{agent}"),
    };
    metrics::counter!("ferryman_tunnel_streams_total", "via" => label, "result" => result)
        .increment(1);
}

enum Asked {
    /// The carrier failed; another agent may do.
    Carrier(String),
    Final(OpenError),
}

async fn ask(
    carrier: &Arc<Carrier>,
    authority: &str,
    network: Network,
    deadline: Instant,
) -> Result<AgentStream, Asked> {
    let guard = carrier.stream();
    let agent = || carrier.agent.id.to_string();
    let timed_out = || Asked::Final(OpenError::Timeout { agent: agent() });
    let mut sender = timeout_at(deadline, carrier.sender.clone().ready())
        .await
        .map_err(|_| timed_out())?
        .map_err(|e| Asked::Carrier(e.to_string()))?;
    let request = Request::builder()
        .method(Method::CONNECT)
        .uri(authority)
        .header(wire::NETWORK, network.as_str())
        .body(())
        .map_err(|e| {
            Asked::Final(OpenError::Refused {
                agent: agent(),
                refusal: Refusal::Failed,
                reason: e.to_string(),
            })
        })?;
    let (answer, send) = sender
        .send_request(request, false)
        .map_err(|e| Asked::Carrier(e.to_string()))?;
    let answer = timeout_at(deadline, answer)
        .await
        .map_err(|_| timed_out())?
        .map_err(|e| Asked::Carrier(e.to_string()))?;
    let field = |name: &str| {
        answer
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    if answer.status() != StatusCode::OK {
        let refusal = answer
            .headers()
            .get(wire::REFUSAL)
            .map_or(Refusal::Failed, |v| Refusal::parse(v.as_bytes()));
        let reason = field(wire::REASON).unwrap_or_else(|| answer.status().to_string());
        return Err(Asked::Final(OpenError::Refused {
            agent: agent(),
            refusal,
            reason,
        }));
    }
    let peer = field(wire::PEER);
    let group = carrier.agent.group.to_string();
    Ok(AgentStream {
        io: H2Stream::new(send, answer.into_body()),
        guard,
        peer,
        bytes_in: metrics::counter!("ferryman_tunnel_bytes_total", "group" => group.clone(), "direction" => "in"),
        bytes_out: metrics::counter!("ferryman_tunnel_bytes_total", "group" => group, "direction" => "out"),
    })
}

impl AsyncRead for AgentStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            self.guard.0.bytes_in.fetch_add(n, Ordering::Relaxed);
            self.bytes_in.increment(n);
        }
        polled
    }
}

impl AsyncWrite for AgentStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            self.guard
                .0
                .bytes_out
                .fetch_add(n as u64, Ordering::Relaxed);
            self.bytes_out.increment(n as u64);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
