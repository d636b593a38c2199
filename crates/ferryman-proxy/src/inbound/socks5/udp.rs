//! UDP ASSOCIATE: a relay socket for the client, and each datagram's
//! destination decided by the policy (once per destination): sent from a
//! socket of this machine's for a direct outbound, or framed on a stream
//! through the tunnel's agents; ways out that cannot carry datagrams drop
//! them. Only the client's address may use the relay, answers come back
//! only from where datagrams went, and the association ends with its TCP
//! connection or after `socks5.udp_idle_timeout` without a datagram.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use fast_socks5::util::target_addr::TargetAddr;
use fast_socks5::ReplyError;
use ferryman_tunnel::wire::{self, Datagram, Network, Peer};
use ferryman_tunnel::{Gateway, Via};
use tokio::io::{AsyncReadExt, AsyncWriteExt, WriteHalf};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::debug;

use super::{Asked, Commanded};
use crate::inbound::routing::decide;
use crate::outbound::Datagrams;
use crate::session::{Kind, SessionGuard};

const MAX_DATAGRAM: usize = 65_535;
/// Destinations one association remembers the way to.
const MAX_ROUTES: usize = 1024;

/// Where datagrams to one destination go.
#[derive(Clone)]
enum Route {
    Direct(SocketAddr),
    /// On the agents' stream of this outbound.
    Agents(Arc<str>),
    Dropped,
}

/// One association's state.
struct Relay {
    relay: UdpSocket,
    /// The client's address, once known: its IP from the TCP connection,
    /// its port as it said, or from its first datagram.
    client: SocketAddr,
    client_port_known: bool,
    v4: Option<UdpSocket>,
    v6: Option<UdpSocket>,
    sent_to: HashSet<SocketAddr>,
    routes: HashMap<(String, u16), Route>,
    /// Streams through agents, by outbound name.
    streams: HashMap<Arc<str>, WriteHalf<ferryman_tunnel::AgentStream>>,
    from_agents: mpsc::Sender<Datagram>,
    session: Arc<SessionGuard>,
}

pub(super) async fn associate(asked: Asked, proto: Commanded, target: TargetAddr) {
    let local = asked.local;
    let relay = match UdpSocket::bind(SocketAddr::new(local.ip(), 0)).await {
        Ok(relay) => relay,
        Err(e) => {
            debug!(error = %e, "cannot open a UDP relay");
            let _ = proto.reply_error(&ReplyError::GeneralFailure).await;
            return;
        }
    };
    let Ok(relay_addr) = relay.local_addr() else {
        return;
    };
    let Ok(mut control) = proto.reply_success(relay_addr).await else {
        return;
    };
    let announced = match target {
        TargetAddr::Ip(addr) if addr.port() != 0 => Some(addr.port()),
        _ => None,
    };
    let shared = &asked.worker.shared;
    let session = shared.sessions.child(
        &asked.connection,
        Kind::Udp,
        format!("udp {relay_addr}"),
        None,
    );
    let (from_agents, mut to_client) = mpsc::channel(256);
    let mut state = Relay {
        relay,
        client: SocketAddr::new(asked.origin.client, announced.unwrap_or(0)),
        client_port_known: announced.is_some(),
        v4: None,
        v6: None,
        sent_to: HashSet::new(),
        routes: HashMap::new(),
        streams: HashMap::new(),
        from_agents,
        session,
    };
    let idle_for = asked.settings.socks5.udp_idle_timeout;
    let idle = tokio::time::sleep(idle_for);
    tokio::pin!(idle);
    let mut from_client = vec![0u8; MAX_DATAGRAM];
    let (mut buf4, mut buf6) = (vec![0u8; MAX_DATAGRAM], vec![0u8; MAX_DATAGRAM]);
    let mut ignored = [0u8; 512];
    let stopping = shared.stopping.clone();
    let closed = state.session.cancelled().clone();
    loop {
        tokio::select! {
            read = control.read(&mut ignored) => match read {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            },
            got = state.relay.recv_from(&mut from_client) => {
                if let Ok((n, from)) = got {
                    let datagram = Bytes::copy_from_slice(&from_client[..n]);
                    state.client_sent(datagram, from, &asked).await;
                }
            }
            got = receive(state.v4.as_ref(), &mut buf4) => {
                if let Some((n, from)) = got {
                    state.answer_came(from, Bytes::copy_from_slice(&buf4[..n])).await;
                }
            }
            got = receive(state.v6.as_ref(), &mut buf6) => {
                if let Some((n, from)) = got {
                    state.answer_came(from, Bytes::copy_from_slice(&buf6[..n])).await;
                }
            }
            Some(datagram) = to_client.recv() => state.relay_back(datagram.peer, datagram.payload).await,
            () = &mut idle => break,
            () = stopping.cancelled() => break,
            () = closed.cancelled() => break,
        }
        idle.as_mut().reset(Instant::now() + idle_for);
    }
    for (_, mut stream) in state.streams.drain() {
        let _ = stream.shutdown().await;
    }
}

/// A datagram from `socket`, when there is one; without a socket, never.
async fn receive(socket: Option<&UdpSocket>, buf: &mut [u8]) -> Option<(usize, SocketAddr)> {
    match socket {
        Some(socket) => socket.recv_from(buf).await.ok(),
        None => std::future::pending().await,
    }
}

/// RFC 1928 §7: reserved (2), fragment (1), the destination, the data.
fn parse(mut datagram: Bytes) -> Option<(Peer, Bytes)> {
    if datagram.len() < 4 || datagram[0] != 0 || datagram[1] != 0 {
        return None;
    }
    // Fragments are optional; like most servers, ferryman takes none.
    if datagram[2] != 0 {
        return None;
    }
    datagram.advance(3);
    let peer = wire::read_peer(&mut datagram).ok()?;
    Some((peer, datagram))
}

impl Relay {
    async fn client_sent(&mut self, datagram: Bytes, from: SocketAddr, asked: &Asked) {
        if from.ip().to_canonical() != self.client.ip().to_canonical() {
            return;
        }
        if !self.client_port_known {
            self.client = from;
            self.client_port_known = true;
        } else if from.port() != self.client.port() {
            return;
        }
        let Some((peer, payload)) = parse(datagram) else {
            return;
        };
        let (host, port) = match &peer {
            Peer::Addr(addr) => (addr.ip().to_string(), addr.port()),
            Peer::Name(name, port) => (name.clone(), *port),
        };
        let route = match self.routes.get(&(host.clone(), port)) {
            Some(route) => route.clone(),
            None => {
                let route = self.route(&host, port, asked).await;
                if self.routes.len() >= MAX_ROUTES {
                    self.routes.clear();
                }
                self.routes.insert((host, port), route.clone());
                route
            }
        };
        let sent = payload.len() as u64;
        match route {
            Route::Direct(to) => {
                let Some(socket) = self.outward(to).await else {
                    return;
                };
                if socket.send_to(&payload, to).await.is_ok() {
                    self.sent_to.insert(to);
                    self.session.socket_bytes(sent, 0);
                }
            }
            Route::Agents(outbound) => {
                let Some(stream) = self.streams.get_mut(&outbound) else {
                    return;
                };
                let mut frame = BytesMut::new();
                let datagram = Datagram { peer, payload };
                if datagram.encode(&mut frame).is_ok() && stream.write_all(&frame).await.is_ok() {
                    self.session.socket_bytes(sent, 0);
                } else {
                    self.streams.remove(&outbound);
                }
            }
            Route::Dropped => {}
        }
    }

    /// The way to `host:port` the policy chooses for this association.
    async fn route(&mut self, host: &str, port: u16, asked: &Asked) -> Route {
        let facts = asked.origin.facts(host, port, None, None);
        let verdict = decide(&asked.settings, &asked.worker, facts).await;
        let outbound = verdict.outbound;
        self.session.set_route(&outbound.name, verdict.rule);
        match &outbound.datagrams {
            Some(Datagrams::Direct) => {
                let deadline = Instant::now() + asked.worker.upstream.config().connect_timeout;
                let found = ferryman_http::dial::resolve(host, port, deadline).await;
                let own = &asked.worker.shared.own;
                match found.ok().and_then(|addrs| addrs.into_iter().next()) {
                    Some(addr) if !own.contains(&addr) => Route::Direct(addr),
                    _ => Route::Dropped,
                }
            }
            Some(Datagrams::Agents(gateway, via)) => {
                let name = outbound.name.clone();
                if !self.streams.contains_key(&name) {
                    match self.open_agents(gateway, via, asked).await {
                        Some(stream) => {
                            self.streams.insert(name.clone(), stream);
                        }
                        None => return Route::Dropped,
                    }
                }
                Route::Agents(name)
            }
            None => {
                debug!(outbound = %outbound.name, %host, port, "this outbound cannot carry UDP; datagrams dropped");
                Route::Dropped
            }
        }
    }

    /// A UDP stream through `via`, its answers read into the channel.
    async fn open_agents(
        &self,
        gateway: &Arc<Gateway>,
        via: &Via,
        asked: &Asked,
    ) -> Option<WriteHalf<ferryman_tunnel::AgentStream>> {
        let deadline = Instant::now() + asked.worker.upstream.config().connect_timeout;
        let stream = match gateway
            .open(via, "0.0.0.0", 0, Network::Udp, deadline)
            .await
        {
            Ok(stream) => stream,
            Err(e) => {
                debug!(error = %e, "no UDP stream through the agents");
                return None;
            }
        };
        self.session.set_carrier(Arc::from(stream.agent()));
        let (mut reader, writer) = tokio::io::split(stream);
        let answers = self.from_agents.clone();
        tokio::spawn(async move {
            let mut buf = BytesMut::with_capacity(MAX_DATAGRAM);
            while matches!(reader.read_buf(&mut buf).await, Ok(n) if n > 0) {
                while let Ok(Some(datagram)) = Datagram::decode(&mut buf) {
                    // A full channel drops, as UDP would.
                    if answers.try_send(datagram).is_err() && answers.is_closed() {
                        return;
                    }
                }
            }
        });
        Some(writer)
    }

    /// This association's socket for sending to `to`'s family.
    async fn outward(&mut self, to: SocketAddr) -> Option<&UdpSocket> {
        let slot = if to.is_ipv4() {
            &mut self.v4
        } else {
            &mut self.v6
        };
        if slot.is_none() {
            let any = if to.is_ipv4() {
                SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
            } else {
                SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))
            };
            *slot = Some(UdpSocket::bind(any).await.ok()?);
        }
        slot.as_ref()
    }

    /// An answer to a socket of this machine's: relayed only from where
    /// this association sent.
    async fn answer_came(&mut self, from: SocketAddr, payload: Bytes) {
        if self.sent_to.contains(&from) {
            self.relay_back(Peer::Addr(from), payload).await;
        }
    }

    /// Relays an answer from `peer` to the client.
    async fn relay_back(&mut self, peer: Peer, payload: Bytes) {
        if !self.client_port_known {
            return;
        }
        let mut out = BytesMut::with_capacity(payload.len() + 22);
        out.put_slice(&[0, 0, 0]);
        if wire::write_peer(&peer, &mut out).is_err() {
            return;
        }
        out.put_slice(&payload);
        if self.relay.send_to(&out, self.client).await.is_ok() {
            self.session.socket_bytes(0, payload.len() as u64);
        }
    }
}
