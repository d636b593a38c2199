//! A SOCKS5 client for what curl cannot do: read reply codes as they are,
//! and UDP ASSOCIATE (RFC 1928 §7).

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// A destination as SOCKS5 writes it.
pub enum Dest<'a> {
    Addr(SocketAddr),
    Name(&'a str, u16),
}

fn write_dest(dest: &Dest<'_>, out: &mut Vec<u8>) {
    match dest {
        Dest::Addr(SocketAddr::V4(a)) => {
            out.push(1);
            out.extend_from_slice(&a.ip().octets());
            out.extend_from_slice(&a.port().to_be_bytes());
        }
        Dest::Addr(SocketAddr::V6(a)) => {
            out.push(4);
            out.extend_from_slice(&a.ip().octets());
            out.extend_from_slice(&a.port().to_be_bytes());
        }
        Dest::Name(name, port) => {
            out.push(3);
            out.push(name.len() as u8);
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&port.to_be_bytes());
        }
    }
}

/// Reads an address as SOCKS5 writes it, off `bytes`; returns it and the rest.
fn read_addr(bytes: &[u8]) -> (SocketAddr, &[u8]) {
    match bytes[0] {
        1 => {
            let ip: [u8; 4] = bytes[1..5].try_into().expect("IPv4");
            let port = u16::from_be_bytes([bytes[5], bytes[6]]);
            (SocketAddr::from((ip, port)), &bytes[7..])
        }
        4 => {
            let ip: [u8; 16] = bytes[1..17].try_into().expect("IPv6");
            let port = u16::from_be_bytes([bytes[17], bytes[18]]);
            (SocketAddr::from((ip, port)), &bytes[19..])
        }
        other => panic!("unexpected address type {other}"),
    }
}

/// Greets `proxy` (with `credentials` when given) and sends `command`
/// (1 CONNECT, 3 UDP ASSOCIATE) for `dest`. Returns the connection, the
/// reply code and the bound address; the authentication status instead
/// (as `Err`) when the credentials are refused.
pub async fn request(
    proxy: SocketAddr,
    credentials: Option<(&str, &str)>,
    command: u8,
    dest: Dest<'_>,
) -> Result<(TcpStream, u8, SocketAddr), u8> {
    let mut s = TcpStream::connect(proxy)
        .await
        .expect("connect to the proxy");
    let method = if credentials.is_some() { 2 } else { 0 };
    s.write_all(&[5, 1, method]).await.expect("greeting");
    let mut chosen = [0u8; 2];
    s.read_exact(&mut chosen).await.expect("method");
    if chosen[1] == 0xff {
        return Err(0xff);
    }
    if let Some((user, password)) = credentials {
        let mut auth = vec![1, user.len() as u8];
        auth.extend_from_slice(user.as_bytes());
        auth.push(password.len() as u8);
        auth.extend_from_slice(password.as_bytes());
        s.write_all(&auth).await.expect("credentials");
        let mut status = [0u8; 2];
        s.read_exact(&mut status).await.expect("auth status");
        if status[1] != 0 {
            return Err(status[1]);
        }
    }
    let mut ask = vec![5, command, 0];
    write_dest(&dest, &mut ask);
    s.write_all(&ask).await.expect("request");
    let mut head = [0u8; 4];
    s.read_exact(&mut head).await.expect("reply");
    let len = match head[3] {
        1 => 4 + 2,
        4 => 16 + 2,
        other => panic!("reply address type {other}"),
    };
    let mut rest = vec![0u8; len];
    s.read_exact(&mut rest).await.expect("reply address");
    let mut addr = vec![head[3]];
    addr.extend_from_slice(&rest);
    let (bound, _) = read_addr(&addr);
    Ok((s, head[1], bound))
}

/// A UDP association: its TCP connection (the association lives as long)
/// and a socket of the client's.
pub struct Udp {
    pub control: TcpStream,
    pub relay: SocketAddr,
    pub socket: UdpSocket,
}

impl Udp {
    pub async fn associate(proxy: SocketAddr, credentials: Option<(&str, &str)>) -> Udp {
        let socket = UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("client UDP socket");
        let from = socket.local_addr().expect("client UDP address");
        let (control, code, relay) = request(proxy, credentials, 3, Dest::Addr(from))
            .await
            .expect("accepted");
        assert_eq!(code, 0, "UDP ASSOCIATE refused");
        Udp {
            control,
            relay,
            socket,
        }
    }

    pub async fn send(&self, to: Dest<'_>, payload: &[u8]) {
        let mut datagram = vec![0, 0, 0];
        write_dest(&to, &mut datagram);
        datagram.extend_from_slice(payload);
        self.socket
            .send_to(&datagram, self.relay)
            .await
            .expect("send to the relay");
    }

    /// The next datagram from the relay: its source and payload.
    pub async fn recv(&self) -> (SocketAddr, Vec<u8>) {
        let mut buf = vec![0u8; 65_536];
        let (n, from) = self.socket.recv_from(&mut buf).await.expect("recv");
        assert_eq!(from, self.relay, "only the relay answers");
        assert_eq!(&buf[..3], &[0, 0, 0]);
        let (source, payload) = read_addr(&buf[3..n]);
        (source, payload.to_vec())
    }
}

/// A UDP echo server on 127.0.0.1; returns its address.
pub async fn udp_echo() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind UDP echo");
    let addr = socket.local_addr().expect("UDP echo address");
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let _ = socket.send_to(&buf[..n], from).await;
        }
    });
    addr
}
