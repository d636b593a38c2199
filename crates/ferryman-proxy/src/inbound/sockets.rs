//! The listening sockets of every inbound: bound from the settings, rebound
//! when a reload moves one (the new socket is up before the old one goes),
//! and each worker thread's duplicates of them to accept on. What a socket
//! serves is its [`Serves`]; serving it is the inbound module's.

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;

use tokio::net::{TcpListener, TcpStream};

/// What connections to a listening socket are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Serves {
    /// The HTTP proxy (`proxy.listen`).
    HttpProxy,
    /// SOCKS5 (`socks5.listen`).
    Socks5,
    /// Agents' carriers (`tunnel.listen`).
    Carriers,
    /// A published service (`tunnel.services[].listen`; which one, its
    /// address says).
    Service,
}

impl std::fmt::Display for Serves {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Serves::HttpProxy => "http proxy",
            Serves::Socks5 => "socks5",
            Serves::Carriers => "tunnel",
            Serves::Service => "published service",
        })
    }
}

/// One listening socket an inbound asked for.
pub(crate) struct Wanted {
    pub(crate) serves: Serves,
    /// The configuration key it comes from, for errors.
    pub(crate) key: String,
    pub(crate) addr: SocketAddr,
}

/// A bound listening socket.
pub(crate) struct Listening {
    pub(crate) serves: Serves,
    /// The address asked for (port 0 stays 0) and the one bound.
    pub(crate) wanted: SocketAddr,
    pub(crate) addr: SocketAddr,
    socket: std::net::TcpListener,
}

/// Every socket in force; replaced whole when one moves.
pub(crate) type Sockets = Arc<[Arc<Listening>]>;

impl Listening {
    fn bind(wanted: &Wanted) -> Result<Self, String> {
        let bound = std::net::TcpListener::bind(wanted.addr).and_then(|socket| {
            socket.set_nonblocking(true)?;
            let addr = socket.local_addr()?;
            Ok((socket, addr))
        });
        match bound {
            Ok((socket, addr)) => Ok(Self {
                serves: wanted.serves,
                wanted: wanted.addr,
                addr,
                socket,
            }),
            Err(e) => Err(format!(
                "{}: cannot listen on {}: {e}",
                wanted.key, wanted.addr
            )),
        }
    }
}

/// The sockets `wanted` lists: those of `current` that serve the same and
/// were asked for at the same address are kept (with their connections'
/// queue), the others bound anew. Nothing is bound unless all can be.
pub(crate) fn rebind(current: &[Arc<Listening>], wanted: &[Wanted]) -> Result<Sockets, String> {
    wanted
        .iter()
        .map(|w| {
            let kept = current
                .iter()
                .find(|l| l.serves == w.serves && l.wanted == w.addr);
            match kept {
                Some(kept) => Ok(kept.clone()),
                None => Listening::bind(w).map(Arc::new),
            }
        })
        .collect()
}

/// A worker thread's duplicate of a listening socket.
pub(crate) struct Accepting {
    pub(crate) listening: Arc<Listening>,
    socket: TcpListener,
}

/// This worker's duplicates of `sockets`.
pub(crate) fn duplicates(sockets: &[Arc<Listening>]) -> std::io::Result<Vec<Accepting>> {
    sockets
        .iter()
        .map(|listening| {
            Ok(Accepting {
                listening: listening.clone(),
                socket: TcpListener::from_std(listening.socket.try_clone()?)?,
            })
        })
        .collect()
}

/// A connection accepted on one of `sockets`, and which; the socket that
/// gets the first look turns, so a busy one cannot starve the others.
/// Without sockets (shut down), never.
pub(crate) async fn accept(
    sockets: &[Accepting],
    turn: &mut usize,
) -> (Arc<Listening>, std::io::Result<(TcpStream, SocketAddr)>) {
    std::future::poll_fn(|cx| {
        let n = sockets.len();
        for i in 0..n {
            let one = &sockets[(*turn + i) % n];
            if let Poll::Ready(accepted) = one.socket.poll_accept(cx) {
                *turn = (*turn + i + 1) % n;
                return Poll::Ready((one.listening.clone(), accepted));
            }
        }
        Poll::Pending
    })
    .await
}
