//! The tunnel's vocabulary, all of it: how an agent introduces itself in
//! the WebSocket upgrade, how the gateway asks for a stream and how the
//! agent answers, and how datagrams ride a stream. Framing is h2's (over
//! the WebSocket byte stream); nothing here frames bytes of its own but the
//! datagrams, which need a boundary a byte stream does not keep.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, StatusCode};

/// The protocol version this build speaks; a gateway refuses others with
/// 426 and says which it speaks.
pub const VERSION: &str = "1";

/// Where agents upgrade, unless the gateway's configuration says otherwise.
pub const DEFAULT_PATH: &str = "/ferryman/tunnel";

/// Upgrade request fields, besides `Authorization: Bearer <token>`.
pub const AGENT: &str = "ferryman-agent";
pub const GROUP: &str = "ferryman-group";
pub const SESSION: &str = "ferryman-session";
pub const PROTOCOL: &str = "ferryman-version";

/// Stream request fields: the request is a CONNECT to the destination.
pub const NETWORK: &str = "ferryman-network";
/// Answer fields: the address the agent dialled, or why it did not.
pub const PEER: &str = "ferryman-peer";
pub const REFUSAL: &str = "ferryman-refusal";
pub const REASON: &str = "ferryman-reason";

/// An agent id: what the gateway lists and replaces sessions by.
pub fn valid_agent_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// One run of an agent process. A later session of the same agent replaces
/// an earlier one, never the reverse: ordered by start time, then by a
/// random number for two started in the same millisecond.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Session {
    pub started_ms: u64,
    pub nonce: u64,
}

impl fmt::Display for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{:016x}", self.started_ms, self.nonce)
    }
}

impl std::str::FromStr for Session {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        let (started, nonce) = s.split_once('-').ok_or(())?;
        Ok(Self {
            started_ms: started.parse().map_err(|_| ())?,
            nonce: u64::from_str_radix(nonce, 16).map_err(|_| ())?,
        })
    }
}

/// What a stream carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    /// One TCP connection to the destination.
    Tcp,
    /// Datagrams, each with its own destination ([`Datagram`] frames).
    Udp,
}

impl Network {
    pub fn as_str(self) -> &'static str {
        match self {
            Network::Tcp => "tcp",
            Network::Udp => "udp",
        }
    }

    pub fn from_headers(headers: &HeaderMap) -> Option<Self> {
        match headers.get(NETWORK).map(HeaderValue::as_bytes) {
            None | Some(b"tcp") => Some(Network::Tcp),
            Some(b"udp") => Some(Network::Udp),
            Some(_) => None,
        }
    }
}

/// Why an agent did not open a stream. Each maps to what the user's
/// protocol says: an HTTP status for the proxy, a reply code for SOCKS5.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The agent's allow/deny list refuses the destination.
    Denied,
    /// The name does not resolve where the agent is.
    Unresolved,
    /// The destination refused the connection.
    Refused,
    /// No route to the destination's network or host.
    Unreachable,
    /// The connection attempt ran out of time.
    Timeout,
    /// The request itself was malformed, or anything else.
    Failed,
}

impl Refusal {
    pub const ALL: [Refusal; 6] = [
        Refusal::Denied,
        Refusal::Unresolved,
        Refusal::Refused,
        Refusal::Unreachable,
        Refusal::Timeout,
        Refusal::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Denied => "denied",
            Refusal::Unresolved => "unresolved",
            Refusal::Refused => "refused",
            Refusal::Unreachable => "unreachable",
            Refusal::Timeout => "timeout",
            Refusal::Failed => "failed",
        }
    }

    pub fn parse(s: &[u8]) -> Refusal {
        Refusal::ALL
            .into_iter()
            .find(|r| r.as_str().as_bytes() == s)
            .unwrap_or(Refusal::Failed)
    }

    /// The status the agent answers with, which is the one the gateway's
    /// HTTP proxy gives its client.
    pub fn status(self) -> StatusCode {
        match self {
            Refusal::Denied => StatusCode::FORBIDDEN,
            Refusal::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Refusal::Failed => StatusCode::BAD_REQUEST,
            _ => StatusCode::BAD_GATEWAY,
        }
    }

    /// A failed dial's reason.
    pub fn of_io(e: &std::io::Error) -> Refusal {
        use std::io::ErrorKind::*;
        match e.kind() {
            ConnectionRefused => Refusal::Refused,
            TimedOut => Refusal::Timeout,
            _ => Refusal::Unreachable,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A header value made of whatever text, kept to what a header may hold.
pub fn header_text(text: &str) -> HeaderValue {
    let clean: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(512)
        .collect();
    HeaderValue::from_str(&clean).unwrap_or(HeaderValue::from_static("?"))
}

/// `host:port` for a request authority, IPv6 literals in brackets.
pub fn authority(host: &str, port: u16) -> String {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.contains(':') {
        format!("[{bare}]:{port}")
    } else {
        format!("{bare}:{port}")
    }
}

/// A datagram's far end: an address, or a name the agent resolves.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Peer {
    Addr(SocketAddr),
    Name(String, u16),
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Addr(addr) => addr.fmt(f),
            Peer::Name(name, port) => write!(f, "{name}:{port}"),
        }
    }
}

/// One datagram on a UDP stream: to its destination (gateway to agent) or
/// from its source (agent to gateway). On the wire: a 2-byte length of
/// what follows, the peer as SOCKS5 writes addresses (type, address, port),
/// then the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    pub peer: Peer,
    pub payload: Bytes,
}

/// Why bytes on a UDP stream are not a datagram.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BadDatagram {
    #[error("unknown address type {0}")]
    AddressType(u8),
    #[error("the frame ends inside its address")]
    Short,
    #[error("the name is not UTF-8")]
    Name,
    #[error("the datagram is larger than 65,535 bytes")]
    TooLarge,
}

impl Datagram {
    /// Appends the datagram's frame to `out`.
    pub fn encode(&self, out: &mut BytesMut) -> Result<(), BadDatagram> {
        let mut address = BytesMut::with_capacity(19);
        write_peer(&self.peer, &mut address)?;
        let length = address.len() + self.payload.len();
        let length = u16::try_from(length).map_err(|_| BadDatagram::TooLarge)?;
        out.reserve(2 + length as usize);
        out.put_u16(length);
        out.put_slice(&address);
        out.put_slice(&self.payload);
        Ok(())
    }

    /// Takes one whole frame off the front of `buf`, if there is one.
    pub fn decode(buf: &mut BytesMut) -> Result<Option<Datagram>, BadDatagram> {
        if buf.len() < 2 {
            return Ok(None);
        }
        let length = u16::from_be_bytes([buf[0], buf[1]]) as usize;
        if buf.len() < 2 + length {
            return Ok(None);
        }
        buf.advance(2);
        let mut frame = buf.split_to(length).freeze();
        let peer = read_peer(&mut frame)?;
        Ok(Some(Datagram {
            peer,
            payload: frame,
        }))
    }
}

/// A peer as SOCKS5 writes addresses: type 1 (IPv4), 3 (name), 4 (IPv6).
pub fn write_peer(peer: &Peer, out: &mut BytesMut) -> Result<(), BadDatagram> {
    match peer {
        Peer::Addr(SocketAddr::V4(a)) => {
            out.put_u8(1);
            out.put_slice(&a.ip().octets());
            out.put_u16(a.port());
        }
        Peer::Addr(SocketAddr::V6(a)) => {
            out.put_u8(4);
            out.put_slice(&a.ip().octets());
            out.put_u16(a.port());
        }
        Peer::Name(name, port) => {
            let len = u8::try_from(name.len()).map_err(|_| BadDatagram::Name)?;
            out.put_u8(3);
            out.put_u8(len);
            out.put_slice(name.as_bytes());
            out.put_u16(*port);
        }
    }
    Ok(())
}

/// Reads a peer written by [`write_peer`] off the front of `buf`.
pub fn read_peer(buf: &mut Bytes) -> Result<Peer, BadDatagram> {
    let kind = *buf.first().ok_or(BadDatagram::Short)?;
    let need = match kind {
        1 => 1 + 4 + 2,
        4 => 1 + 16 + 2,
        3 => 1 + 1 + *buf.get(1).ok_or(BadDatagram::Short)? as usize + 2,
        other => return Err(BadDatagram::AddressType(other)),
    };
    if buf.len() < need {
        return Err(BadDatagram::Short);
    }
    buf.advance(1);
    let peer = match kind {
        1 => {
            let mut ip = [0u8; 4];
            buf.copy_to_slice(&mut ip);
            Peer::Addr(SocketAddr::new(IpAddr::from(ip), buf.get_u16()))
        }
        4 => {
            let mut ip = [0u8; 16];
            buf.copy_to_slice(&mut ip);
            Peer::Addr(SocketAddr::new(IpAddr::from(ip), buf.get_u16()))
        }
        _ => {
            let len = buf.get_u8() as usize;
            let name = std::str::from_utf8(&buf[..len])
                .map_err(|_| BadDatagram::Name)?
                .to_string();
            buf.advance(len);
            Peer::Name(name, buf.get_u16())
        }
    };
    Ok(peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_round_trip_with_each_address_type() {
        let peers = [
            Peer::Addr("127.0.0.1:53".parse().unwrap()),
            Peer::Addr("[::1]:5353".parse().unwrap()),
            Peer::Name("dns.corp.internal".into(), 53),
        ];
        let mut wire = BytesMut::new();
        for (i, peer) in peers.iter().enumerate() {
            let datagram = Datagram {
                peer: peer.clone(),
                payload: Bytes::from(vec![i as u8; i * 100]),
            };
            datagram.encode(&mut wire).unwrap();
        }
        // Frames arrive in pieces: nothing is taken before one is whole.
        let mut partial = wire.split_to(3);
        assert_eq!(Datagram::decode(&mut partial), Ok(None));
        partial.unsplit(wire);
        let mut wire = partial;
        for (i, peer) in peers.iter().enumerate() {
            let got = Datagram::decode(&mut wire).unwrap().unwrap();
            assert_eq!(&got.peer, peer);
            assert_eq!(got.payload.len(), i * 100);
        }
        assert!(wire.is_empty());
    }

    #[test]
    fn bad_frames_are_refused_not_misread() {
        let mut unknown = BytesMut::from(&[0, 3, 9, 0, 0][..]);
        assert_eq!(
            Datagram::decode(&mut unknown),
            Err(BadDatagram::AddressType(9))
        );
        let mut short = BytesMut::from(&[0, 3, 1, 127, 0][..]);
        assert_eq!(Datagram::decode(&mut short), Err(BadDatagram::Short));
        let big = Datagram {
            peer: Peer::Addr("127.0.0.1:1".parse().unwrap()),
            payload: Bytes::from(vec![0; 70_000]),
        };
        assert_eq!(big.encode(&mut BytesMut::new()), Err(BadDatagram::TooLarge));
    }

    #[test]
    fn sessions_order_by_start_then_nonce_and_round_trip() {
        let early = Session {
            started_ms: 10,
            nonce: u64::MAX,
        };
        let late = Session {
            started_ms: 11,
            nonce: 0,
        };
        assert!(early < late);
        assert_eq!(late.to_string().parse::<Session>(), Ok(late));
        assert!("11".parse::<Session>().is_err());
    }
}

/// Random bytes on a UDP stream: a frame, a refusal, or a wait for more,
/// never a panic; and any datagram reads back as written.
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(ferryman_testkit::fuzz_cases(512)))]

        #[test]
        fn any_bytes_decode_or_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = Datagram::decode(&mut buf) {}
        }

        #[test]
        fn datagrams_round_trip(
            name in "[a-z0-9.-]{1,60}",
            port in any::<u16>(),
            payload in proptest::collection::vec(any::<u8>(), 0..2000),
        ) {
            let datagram = Datagram { peer: Peer::Name(name, port), payload: Bytes::from(payload) };
            let mut wire = BytesMut::new();
            datagram.encode(&mut wire).unwrap();
            prop_assert_eq!(Datagram::decode(&mut wire).unwrap(), Some(datagram));
            prop_assert!(wire.is_empty());
        }
    }
}
