//! Opening TCP connections: name resolution, Happy Eyeballs (RFC 8305)
//! over the addresses found, an optional source address or interface, and
//! the loop guard that refuses ferryman's own listeners. Every connector
//! that dials (direct, the hop to an upstream proxy) and the tunnel's agent
//! dial here.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::UpstreamError;
use arc_swap::ArcSwap;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{timeout_at, Instant};

/// RFC 8305's "Connection Attempt Delay": the next address is tried when
/// the previous attempt has neither failed nor succeeded by then.
const ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// This process's listening addresses: connecting to one is a loop. Shared
/// by every connector, and replaced when a listener moves.
#[derive(Clone, Default)]
pub struct OwnAddrs(Arc<ArcSwap<Vec<SocketAddr>>>);

impl OwnAddrs {
    /// A listener closed.
    pub fn remove(&self, addr: SocketAddr) {
        self.0.rcu(|addrs| {
            addrs
                .iter()
                .copied()
                .filter(|a| *a != addr)
                .collect::<Vec<_>>()
        });
    }

    pub fn add(&self, addr: SocketAddr) {
        self.0.rcu(|addrs| {
            let mut addrs = Vec::clone(addrs);
            addrs.push(addr);
            addrs
        });
    }

    /// Whether `target` reaches one of ferryman's own listeners: the same
    /// address, a wildcard listener's loopback, or an IPv4 address written
    /// as IPv6 (`::ffff:127.0.0.1`).
    pub fn contains(&self, target: &SocketAddr) -> bool {
        let ip = target.ip().to_canonical();
        self.0.load().iter().any(|listener| {
            let own = listener.ip().to_canonical();
            listener.port() == target.port()
                && (own == ip || ip.is_unspecified() || (own.is_unspecified() && ip.is_loopback()))
        })
    }
}

/// Where a connection leaves from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Source {
    /// The local address to bind (port chosen by the system).
    pub bind: Option<IpAddr>,
    /// The network interface to send through (SO_BINDTODEVICE).
    pub interface: Option<String>,
}

/// Resolves `host` (unless it is an address literal) and connects to the
/// first address that answers, racing IPv6 and IPv4 when both exist.
pub async fn dial(
    host: &str,
    port: u16,
    deadline: Instant,
    source: &Source,
    own: &OwnAddrs,
) -> Result<TcpStream, UpstreamError> {
    let addrs = resolve(host, port, deadline).await?;
    dial_addrs(host, port, addrs, deadline, source, own).await
}

/// The addresses of `host`, IPv6 and IPv4 interleaved as RFC 8305 says.
pub async fn resolve(
    host: &str,
    port: u16,
    deadline: Instant,
) -> Result<Vec<SocketAddr>, UpstreamError> {
    let name = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let found: Vec<SocketAddr> = timeout_at(deadline, tokio::net::lookup_host((name, port)))
        .await
        .map_err(|_| UpstreamError::ConnectTimeout(format!("{host}:{port}")))?
        .map_err(|source| UpstreamError::Resolve {
            host: name.to_string(),
            source,
        })?
        .collect();
    Ok(interleave(found))
}

/// The first address's family first, then alternating (RFC 8305 §4).
fn interleave(addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
    let first_v6 = addrs.first().is_some_and(SocketAddr::is_ipv6);
    let (mut lead, mut other): (Vec<_>, Vec<_>) =
        addrs.into_iter().partition(|a| a.is_ipv6() == first_v6);
    let mut out = Vec::with_capacity(lead.len() + other.len());
    lead.reverse();
    other.reverse();
    loop {
        match (lead.pop(), other.pop()) {
            (None, None) => return out,
            (a, b) => out.extend(a.into_iter().chain(b)),
        }
    }
}

type Attempt = Pin<Box<dyn Future<Output = (SocketAddr, std::io::Result<TcpStream>)> + Send>>;

/// Connects to the first of `addrs` that answers: an attempt starts every
/// `ATTEMPT_DELAY`, or as soon as the one before fails, and the first to
/// succeed wins; the others are dropped.
pub async fn dial_addrs(
    host: &str,
    port: u16,
    addrs: Vec<SocketAddr>,
    deadline: Instant,
    source: &Source,
    own: &OwnAddrs,
) -> Result<TcpStream, UpstreamError> {
    if let Some(looped) = addrs.iter().find(|a| own.contains(a)) {
        return Err(UpstreamError::Loop(looped.to_string()));
    }
    let mut left = addrs
        .into_iter()
        .filter(|a| source.bind.is_none_or(|ip| ip.is_ipv6() == a.is_ipv6()))
        .rev()
        .collect::<Vec<_>>();
    let name = host.trim_start_matches('[').trim_end_matches(']');
    let mut last = UpstreamError::NoAddress(name.to_string());
    let mut attempts = FuturesUnordered::<Attempt>::new();
    let next_attempt = tokio::time::sleep(ATTEMPT_DELAY);
    tokio::pin!(next_attempt);
    let start = |addr: SocketAddr| -> Attempt {
        let source = source.clone();
        Box::pin(async move { (addr, connect(addr, &source).await) })
    };
    match left.pop() {
        Some(addr) => attempts.push(start(addr)),
        None => return Err(last),
    }
    loop {
        tokio::select! {
            Some((addr, attempt)) = attempts.next() => match attempt {
                Ok(stream) => {
                    // Latency matters more than packet count for proxied exchanges.
                    let _ = stream.set_nodelay(true);
                    return Ok(stream);
                }
                Err(source) => {
                    last = UpstreamError::Connect { addr: addr.to_string(), source };
                    match left.pop() {
                        Some(addr) => {
                            attempts.push(start(addr));
                            next_attempt.as_mut().reset(Instant::now() + ATTEMPT_DELAY);
                        }
                        None if attempts.is_empty() => return Err(last),
                        None => {}
                    }
                }
            },
            () = &mut next_attempt, if !left.is_empty() => {
                if let Some(addr) = left.pop() {
                    attempts.push(start(addr));
                }
                next_attempt.as_mut().reset(Instant::now() + ATTEMPT_DELAY);
            }
            () = tokio::time::sleep_until(deadline) => {
                return Err(UpstreamError::ConnectTimeout(format!("{host}:{port}")));
            }
        }
    }
}

async fn connect(addr: SocketAddr, source: &Source) -> std::io::Result<TcpStream> {
    if source.bind.is_none() && source.interface.is_none() {
        return TcpStream::connect(addr).await;
    }
    let socket = if addr.is_ipv6() {
        TcpSocket::new_v6()?
    } else {
        TcpSocket::new_v4()?
    };
    if let Some(ip) = source.bind {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    #[cfg(target_os = "linux")]
    if let Some(interface) = &source.interface {
        socket2::SockRef::from(&socket).bind_device(Some(interface.as_bytes()))?;
    }
    socket.connect(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn own_listener_detection() {
        let own = OwnAddrs::default();
        own.add("127.0.0.1:8080".parse().unwrap());
        own.add("[::]:9000".parse().unwrap());
        assert!(own.contains(&"127.0.0.1:8080".parse().unwrap()));
        assert!(own.contains(&"0.0.0.0:8080".parse().unwrap()));
        assert!(own.contains(&"[::ffff:127.0.0.1]:8080".parse().unwrap()));
        assert!(!own.contains(&"127.0.0.1:8081".parse().unwrap()));
        assert!(!own.contains(&"127.0.0.2:8080".parse().unwrap()));
        assert!(own.contains(&"[::1]:9000".parse().unwrap()));
        assert!(own.contains(&"127.0.0.1:9000".parse().unwrap()));
        assert!(own.contains(&"[::ffff:127.0.0.9]:9000".parse().unwrap()));
    }

    #[test]
    fn families_alternate_starting_with_the_first() {
        let mixed = addrs(&["[::1]:1", "[::2]:1", "[::3]:1", "10.0.0.1:1", "10.0.0.2:1"]);
        assert_eq!(
            interleave(mixed),
            addrs(&["[::1]:1", "10.0.0.1:1", "[::2]:1", "10.0.0.2:1", "[::3]:1"])
        );
        let v4_first = addrs(&["10.0.0.1:1", "[::1]:1"]);
        assert_eq!(interleave(v4_first.clone()), v4_first);
    }

    /// A listener whose accept queue is full: Linux drops further SYNs, so
    /// a connection attempt to it hangs like one to a host that is down.
    fn silent_listener() -> (socket2::Socket, Vec<std::net::TcpStream>, SocketAddr) {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket
            .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .unwrap();
        socket.listen(0).unwrap();
        let addr = socket.local_addr().unwrap().as_socket().unwrap();
        // With a backlog of 0 the queue takes one connection; then SYNs
        // are dropped.
        let queued = vec![std::net::TcpStream::connect(addr).unwrap()];
        (socket, queued, addr)
    }

    #[tokio::test]
    async fn a_silent_first_address_does_not_hold_up_the_next() {
        let (_silent, _queued, silent) = silent_listener();
        let listener = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
        let good = listener.local_addr().unwrap();
        // Trying one address after the other would wait on the silent one
        // past this deadline (its SYN is retried for minutes).
        let deadline = Instant::now() + Duration::from_secs(5);
        let stream = dial_addrs(
            "x",
            good.port(),
            vec![silent, good],
            deadline,
            &Source::default(),
            &OwnAddrs::default(),
        )
        .await
        .unwrap();
        assert_eq!(stream.peer_addr().unwrap(), good);
    }

    #[tokio::test]
    async fn a_refused_address_moves_on_to_the_next_at_once() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let good = listener.local_addr().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let stream = dial_addrs(
            "x",
            good.port(),
            vec![closed, good],
            deadline,
            &Source::default(),
            &OwnAddrs::default(),
        )
        .await
        .unwrap();
        assert_eq!(stream.peer_addr().unwrap(), good);
        let refused = dial_addrs(
            "x",
            1,
            vec![closed],
            deadline,
            &Source::default(),
            &OwnAddrs::default(),
        )
        .await;
        assert!(
            matches!(refused, Err(UpstreamError::Connect { .. })),
            "{refused:?}"
        );
    }

    #[tokio::test]
    async fn a_source_address_is_bound() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let source = Source {
            bind: Some("127.0.0.3".parse().unwrap()),
            interface: None,
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        let stream = dial(
            "127.0.0.1",
            addr.port(),
            deadline,
            &source,
            &OwnAddrs::default(),
        )
        .await
        .unwrap();
        assert_eq!(stream.local_addr().unwrap().ip(), source.bind.unwrap());
    }

    #[tokio::test]
    async fn an_interface_is_bound_or_its_absence_said() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let through = |name: &str| Source {
            bind: None,
            interface: Some(name.to_string()),
        };
        let own = OwnAddrs::default();
        assert!(
            dial("127.0.0.1", addr.port(), deadline, &through("lo"), &own)
                .await
                .is_ok()
        );
        let missing = dial(
            "127.0.0.1",
            addr.port(),
            deadline,
            &through("nonexistent0"),
            &own,
        )
        .await;
        assert!(
            matches!(missing, Err(UpstreamError::Connect { .. })),
            "{missing:?}"
        );
    }

    #[tokio::test]
    async fn own_listeners_are_refused_as_loops() {
        let own = OwnAddrs::default();
        own.add("127.0.0.1:4000".parse().unwrap());
        let deadline = Instant::now() + Duration::from_secs(5);
        let refused = dial(
            "[::ffff:127.0.0.1]",
            4000,
            deadline,
            &Source::default(),
            &own,
        )
        .await;
        assert!(
            matches!(refused, Err(UpstreamError::Loop(_))),
            "{refused:?}"
        );
    }
}
