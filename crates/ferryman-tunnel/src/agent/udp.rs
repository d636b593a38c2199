//! A UDP stream on the agent: each datagram from the gateway names its
//! destination, which is checked like a TCP one (name, then every address)
//! and sent from a socket of this stream's; datagrams coming back from
//! where this stream sent are framed back with their source. The stream
//! ends when nothing moves either way for the idle timeout.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;
use tokio::time::Instant;
use tracing::debug;

use super::Serving;
use crate::stream::H2Stream;
use crate::wire::{Datagram, Peer};

/// The largest datagram taken in either direction.
const MAX_DATAGRAM: usize = 65_535;

/// Checked names one stream remembers.
const MAX_NAMES: usize = 1024;

/// The sockets and answers of one UDP stream.
struct Association {
    v4: Option<UdpSocket>,
    v6: Option<UdpSocket>,
    /// Names already checked, to the address they go to.
    names: HashMap<(String, u16), Option<SocketAddr>>,
    /// Where datagrams went; only their answers come back.
    sent_to: HashSet<SocketAddr>,
}

pub(crate) async fn serve(stream: H2Stream, serving: Arc<Serving>) {
    let (mut from_gateway, mut to_gateway) = tokio::io::split(stream);
    let mut association = Association {
        v4: None,
        v6: None,
        names: HashMap::new(),
        sent_to: HashSet::new(),
    };
    let mut inbound = BytesMut::with_capacity(MAX_DATAGRAM);
    let mut buf4 = vec![0u8; MAX_DATAGRAM];
    let mut buf6 = vec![0u8; MAX_DATAGRAM];
    let idle = tokio::time::sleep(serving.udp_idle_timeout);
    tokio::pin!(idle);
    loop {
        let reply = tokio::select! {
            read = from_gateway.read_buf(&mut inbound) => {
                match read {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                loop {
                    match Datagram::decode(&mut inbound) {
                        Ok(Some(datagram)) => association.send(datagram, &serving).await,
                        Ok(None) => break,
                        Err(e) => {
                            debug!(error = %e, "a bad datagram frame; ending the UDP stream");
                            return;
                        }
                    }
                }
                None
            }
            got = receive(association.v4.as_ref(), &mut buf4) => got.map(|(n, from)| (buf4[..n].to_vec(), from)),
            got = receive(association.v6.as_ref(), &mut buf6) => got.map(|(n, from)| (buf6[..n].to_vec(), from)),
            () = &mut idle => break,
        };
        idle.as_mut()
            .reset(Instant::now() + serving.udp_idle_timeout);
        if let Some((payload, from)) = reply {
            if !association.sent_to.contains(&from) {
                continue;
            }
            let datagram = Datagram {
                peer: Peer::Addr(from),
                payload: Bytes::from(payload),
            };
            let mut frame = BytesMut::new();
            if datagram.encode(&mut frame).is_err() || to_gateway.write_all(&frame).await.is_err() {
                break;
            }
        }
    }
    let _ = to_gateway.shutdown().await;
}

/// A datagram from `socket`, when there is one; without a socket, never.
async fn receive(socket: Option<&UdpSocket>, buf: &mut [u8]) -> Option<(usize, SocketAddr)> {
    match socket {
        Some(socket) => socket.recv_from(buf).await.ok(),
        None => std::future::pending().await,
    }
}

impl Association {
    async fn send(&mut self, datagram: Datagram, serving: &Serving) {
        let Some(to) = self.destination(&datagram.peer, serving).await else {
            return;
        };
        let socket = match (to.is_ipv4(), &self.v4, &self.v6) {
            (true, Some(socket), _) | (false, _, Some(socket)) => socket,
            (v4, _, _) => {
                let any = if v4 {
                    SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
                } else {
                    SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))
                };
                let Ok(socket) = UdpSocket::bind(any).await else {
                    return;
                };
                let slot = if v4 { &mut self.v4 } else { &mut self.v6 };
                slot.insert(socket)
            }
        };
        if socket.send_to(&datagram.payload, to).await.is_ok() {
            self.sent_to.insert(to);
        }
    }

    /// Where a datagram for `peer` goes, if the list allows it anywhere.
    async fn destination(&mut self, peer: &Peer, serving: &Serving) -> Option<SocketAddr> {
        let (host, port, addrs) = match peer {
            Peer::Addr(addr) => (addr.ip().to_string(), addr.port(), vec![*addr]),
            Peer::Name(name, port) => {
                if let Some(known) = self.names.get(&(name.clone(), *port)) {
                    return *known;
                }
                let deadline = Instant::now() + serving.connect_timeout;
                let found = (serving.resolver)(name.clone(), *port, deadline)
                    .await
                    .unwrap_or_default();
                (name.clone(), *port, found)
            }
        };
        let allowed = match serving.acl.check(&host, &addrs) {
            Ok(allowed) => allowed.first().copied(),
            Err(why) => {
                debug!(%host, port, reason = %why, "a datagram refused");
                None
            }
        };
        if let Peer::Name(name, port) = peer {
            // A bound on what a stream can make the agent remember.
            if self.names.len() >= MAX_NAMES {
                self.names.clear();
            }
            self.names.insert((name.clone(), *port), allowed);
        }
        allowed
    }
}
