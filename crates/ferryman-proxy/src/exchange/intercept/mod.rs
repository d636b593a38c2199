//! Interception inside CONNECT tunnels: TLS is terminated with a leaf from
//! ferryman's CA and plain HTTP is recognised as is, so every request
//! inside can become an exchange of its own. Anything else, a server that
//! speaks first, a client that wants another protocol, a host the rules
//! exclude or a client that refuses the certificate, is opaque bytes.
//! Detection returns what it found; serving it is the caller's business.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use ferryman_capture::TlsFacts;
use ferryman_http::upstream::Conn;
use ferryman_http::{Target, UpstreamError};
use ferryman_tls::CertificateAuthority;
use rustls::server::{Accepted, Acceptor};
use rustls::AlertDescription;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_rustls::StartHandshake;
use tracing::debug;

use super::connection::Protocol;
use super::counted::Counted;
use super::witness::Witness;
use super::{Contents, Inside, InsideIo};
use crate::context::Worker;
use crate::session::{Kind, Session};
use ferryman_http::prefixed::Prefixed;

/// Reads the ClientHello, keeping (and counting) every byte read in
/// `bytes`; None when the client closes, sends something rustls cannot
/// parse, or too much.
async fn read_client_hello(
    socket: &mut TcpStream,
    bytes: &mut Vec<u8>,
    session: &Session,
) -> Option<Accepted> {
    let mut acceptor = Acceptor::default();
    let mut fed = 0;
    loop {
        while fed < bytes.len() {
            match acceptor.read_tls(&mut &bytes[fed..]) {
                Ok(0) | Err(_) => break,
                Ok(n) => fed += n,
            }
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => return Some(accepted),
            Ok(None) if bytes.len() < MAX_CLIENT_HELLO => {
                let mut chunk = [0u8; 4096];
                match socket.read(&mut chunk).await {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => {
                        session.socket_bytes(n as u64, 0);
                        bytes.extend_from_slice(&chunk[..n]);
                    }
                }
            }
            _ => return None,
        }
    }
}

const H2: &[u8] = b"h2";
const HTTP1: &[u8] = b"http/1.1";
/// The protocols served inside intercepted TLS, most preferred first.
const SPOKEN: [&[u8]; 2] = [H2, HTTP1];

/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;
/// A ClientHello larger than this is not waited for; the tunnel stays plain.
const MAX_CLIENT_HELLO: usize = 64 * 1024;

/// What interception needs besides the rules (which are the policy's):
/// the CA that signs, and the hosts learnt to pass through because their
/// clients refused ferryman's certificate. Both outlive any reload.
pub struct Interception {
    ca: Arc<CertificateAuthority>,
    learnt: Mutex<HashSet<String>>,
}

impl Interception {
    pub fn new(ca: Arc<CertificateAuthority>) -> Self {
        Self {
            ca,
            learnt: Mutex::default(),
        }
    }

    /// Whether a client once refused ferryman's certificate for `host`.
    pub(crate) fn learnt_passthrough(&self, host: &str) -> bool {
        let learnt = self.learnt.lock().unwrap_or_else(|e| e.into_inner());
        !learnt.is_empty() && learnt.contains(&host.trim_end_matches('.').to_ascii_lowercase())
    }

    /// A client refused ferryman's certificate for `host`: pass it through
    /// from now on.
    fn learn_passthrough(&self, host: &str) {
        let mut learnt = self.learnt.lock().unwrap_or_else(|e| e.into_inner());
        if learnt.insert(host.trim_end_matches('.').to_ascii_lowercase()) {
            tracing::info!(%host, "a client rejected ferryman's certificate (pinning?); passing this host through from now on");
        }
    }
}

/// How a tunnel's policy answers "look inside?" for a name learnt from the
/// client's TLS handshake, and whether a refused certificate teaches it.
pub(crate) struct LookInside<'a> {
    pub(crate) intercepts: &'a (dyn Fn(&str) -> bool + Send + Sync),
    pub(crate) auto_passthrough: bool,
    /// How long a client may take to send its ClientHello.
    pub(crate) hello_wait: std::time::Duration,
    /// How long the handshake may take after it.
    pub(crate) handshake_wait: std::time::Duration,
}

/// A tunnel's ends: the client socket, bytes already read from it, the
/// upstream connection, and the CONNECT target (as plain HTTP).
pub(crate) type Tunnel = (TcpStream, bytes::Bytes, Conn, Target);

/// Finds out what the tunnel to `target` carries: HTTP to serve here
/// (in TLS ferryman terminates, or plain), or bytes to relay untouched.
pub(crate) async fn detect(
    worker: &Worker,
    interception: &Interception,
    look: LookInside<'_>,
    (socket, early, mut upstream, target): Tunnel,
    witness: &Witness,
) -> Contents {
    let session = witness.session().clone();
    // Whoever speaks first decides: a server banner (SMTP, SSH...) means a
    // plain tunnel, at once, without waiting on the client.
    let mut first = [0u8; 8];
    let seen = if early.is_empty() {
        tokio::select! {
            readable = socket.readable() => match readable {
                Ok(()) => socket.peek(&mut first).await.unwrap_or(0),
                Err(_) => 0,
            },
            banner = server_speaks(&mut upstream) => {
                upstream = banner;
                0
            }
        }
    } else {
        let n = early.len().min(first.len());
        first[..n].copy_from_slice(&early[..n]);
        n
    };
    let first = &first[..seen];
    if first.first() == Some(&TLS_HANDSHAKE) {
        let tunnel = (socket, early, upstream, target);
        tls(worker, interception, look, tunnel, witness).await
    } else if looks_like_http(first) {
        // Plain HTTP inside the tunnel: served here, sent to the target.
        witness.set_kind(Kind::InterceptedHttp);
        drop(upstream);
        let io = Prefixed::new(early, Counted::new(socket, session));
        Contents::Http(Inside {
            io: InsideIo::Plain(io),
            protocol: Protocol::Http1,
            target,
            tls: None,
            upstream_failed: None,
        })
    } else {
        Contents::Bytes {
            client: socket,
            early,
            upstream,
        }
    }
}

/// Resolves when the server sends before the client: once bytes (or its
/// end) wait on a plain socket, which keeps them in the kernel; a stream
/// that cannot be peeked at is read, and what it said is put back in front
/// of it.
async fn server_speaks(upstream: &mut Conn) -> Conn {
    let stream = match upstream {
        Conn::Tcp(tcp) => {
            // Readiness left over from the hop's own handshake (an upstream
            // proxy's answer) is not the server speaking: peek to be sure.
            loop {
                if tcp.readable().await.is_err() {
                    break;
                }
                let mut byte = [std::mem::MaybeUninit::<u8>::uninit()];
                let peeked = tcp.try_io(tokio::io::Interest::READABLE, || {
                    socket2::SockRef::from(&*tcp).peek(&mut byte)
                });
                match peeked {
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    _ => break,
                }
            }
            return std::mem::replace(upstream, Conn::Other(Box::new(tokio::io::empty())));
        }
        Conn::Other(stream) => stream,
    };
    let mut banner = vec![0u8; 4096];
    let n = stream.read(&mut banner).await.unwrap_or(0);
    banner.truncate(n);
    let taken = std::mem::replace(upstream, Conn::Other(Box::new(tokio::io::empty())));
    Conn::Other(Box::new(Prefixed::new(banner.into(), taken)))
}

/// An HTTP request starts with a method token, uppercase letters, then a
/// space. Other text protocols whose clients speak first ("SSH-2.0-...")
/// must not be mistaken for it.
fn looks_like_http(first: &[u8]) -> bool {
    let method = first.iter().take_while(|b| b.is_ascii_uppercase()).count();
    match first.get(method) {
        Some(b' ') => method >= 3,
        // All letters so far: a method cut short by the read.
        None => method > 0,
        Some(_) => false,
    }
}

async fn tls(
    worker: &Worker,
    interception: &Interception,
    look: LookInside<'_>,
    (mut socket, early, upstream, target): Tunnel,
    witness: &Witness,
) -> Contents {
    let session = witness.session().clone();
    // Read the ClientHello ourselves, keeping its bytes, so the tunnel can
    // still be passed through untouched once we know what the client wants.
    let mut hello_bytes = early.to_vec();
    let wait = look.hello_wait;
    let read_hello = read_client_hello(&mut socket, &mut hello_bytes, &session);
    let accepted = match tokio::time::timeout(wait, read_hello).await {
        Ok(Some(accepted)) => accepted,
        // Not TLS we can parse, or too big: a plain tunnel, bytes untouched.
        Ok(None) => {
            return Contents::Bytes {
                client: socket,
                early: hello_bytes.into(),
                upstream,
            };
        }
        // The client stalled mid-hello.
        Err(_) => return Contents::Ended,
    };
    let hello = accepted.client_hello();
    let sni = hello.server_name().map(str::to_string);
    let name = sni
        .clone()
        .unwrap_or_else(|| target.authority.host().to_string());
    let mut facts = TlsFacts {
        sni,
        alpn: None,
        intercepted: false,
    };
    // What ferryman can speak inside, among what the client offered; a
    // client that wants neither HTTP/2 nor HTTP/1.1 keeps its tunnel.
    let spoken: Option<Vec<&'static [u8]>> = hello.alpn().map(|offered| {
        let offered: Vec<&[u8]> = offered.collect();
        SPOKEN.into_iter().filter(|p| offered.contains(p)).collect()
    });
    let understood = spoken.as_ref().is_none_or(|list| !list.is_empty());
    let inside = (look.intercepts)(&name) && !interception.learnt_passthrough(&name);
    if !understood || !inside {
        witness.tls(&facts);
        return Contents::Bytes {
            client: socket,
            early: hello_bytes.into(),
            upstream,
        };
    }
    let leaf = match interception.ca.leaf(&name) {
        Ok(leaf) => leaf,
        Err(e) => {
            debug!(error = %e, "no certificate to intercept with; passing through");
            witness.tls(&facts);
            return Contents::Bytes {
                client: socket,
                early: hello_bytes.into(),
                upstream,
            };
        }
    };
    // Upstream is asked for, and checked against, the name the client asked
    // for, as it would have been without ferryman.
    let server_name = facts
        .sni
        .as_deref()
        .filter(|sni| !sni.eq_ignore_ascii_case(target.authority.host()))
        .map(Arc::from);
    let target = Target {
        server_name,
        offer_http2: spoken.as_ref().is_some_and(|list| list.contains(&H2)),
        https: true,
        ..target
    };
    let picks_suite = ferryman_tls::server_picks_suite(hello.cipher_suites());
    let (alpn, upstream_failed) = mirror_alpn(worker, &target, upstream, spoken).await;
    let config = match ferryman_tls::server_config(leaf, alpn, picks_suite) {
        Ok(config) => config,
        Err(e) => {
            debug!(error = %e, "cannot build the interception TLS config");
            return Contents::Ended;
        }
    };
    // An interception from here on, whether or not the client accepts it.
    witness.set_kind(Kind::InterceptedTls);
    facts.intercepted = true;
    let socket = Counted::new(socket, session.clone());
    let handshake = StartHandshake::from_parts(accepted, socket).into_stream(config);
    let handshake = tokio::time::timeout(look.handshake_wait, handshake)
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "the client did not finish the TLS handshake within {:?}",
                    look.handshake_wait
                ),
            ))
        });
    match handshake {
        Ok(stream) => {
            let alpn = stream.get_ref().1.alpn_protocol();
            let protocol = match alpn {
                Some(b"h2") => Protocol::Http2,
                _ => Protocol::Http1,
            };
            facts.alpn = alpn.map(|p| String::from_utf8_lossy(p).into_owned());
            witness.tls(&facts);
            Contents::Http(Inside {
                io: InsideIo::Tls(Box::new(stream)),
                protocol,
                target,
                tls: Some(facts),
                upstream_failed,
            })
        }
        Err(e) => {
            if look.auto_passthrough && rejected_our_certificate(&e) {
                interception.learn_passthrough(&name);
            }
            witness.tls(&facts);
            metrics::counter!("ferryman_tls_handshake_failures_total", "side" => "client")
                .increment(1);
            witness.fail(format!("client TLS handshake failed: {e}"));
            witness.abort();
            debug!(error = %e, host = %name, "client TLS handshake failed");
            Contents::Ended
        }
    }
}

/// The protocols to offer the client. One that can speak HTTP/2 lets the
/// upstream choose first, over the connection its CONNECT opened (which the
/// pool keeps), and is offered what the upstream chose; otherwise that
/// connection is not needed: requests go through the pool. Also says why
/// that upstream connection failed, for the tunnel's first request.
async fn mirror_alpn(
    worker: &Worker,
    target: &Target,
    upstream: Conn,
    spoken: Option<Vec<&'static [u8]>>,
) -> (Vec<Vec<u8>>, Option<UpstreamError>) {
    let spoken = spoken.unwrap_or_default();
    let offer = |list: &[&[u8]]| list.iter().map(|p| p.to_vec()).collect();
    if !target.offer_http2 {
        return (offer(&spoken), None);
    }
    match worker.upstream.adopt(target, upstream).await {
        Ok(true) => (offer(&[H2]), None),
        Ok(false) if spoken.contains(&HTTP1) => (offer(&[HTTP1]), None),
        // A client that speaks HTTP/2 alone is translated for an HTTP/1.1 upstream.
        Ok(false) => (offer(&[H2]), None),
        Err(e) => {
            debug!(error = %e, "upstream TLS at CONNECT failed");
            (offer(&spoken), Some(e))
        }
    }
}

/// `picks_suite`: choose the cipher suite from ferryman's order instead of
/// the client's (see [`ferryman_tls::server_picks_suite`]).
/// The client's alert says it does not trust the certificate: it pins, or
/// ferryman's CA is not installed there.
fn rejected_our_certificate(error: &std::io::Error) -> bool {
    matches!(
        error
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>()),
        Some(rustls::Error::AlertReceived(
            AlertDescription::UnknownCA
                | AlertDescription::BadCertificate
                | AlertDescription::CertificateUnknown
                | AlertDescription::UnsupportedCertificate
        ))
    )
}

#[cfg(test)]
mod tests {
    use super::looks_like_http;

    #[test]
    fn http_is_a_method_and_a_space() {
        assert!(looks_like_http(b"GET / HT"));
        assert!(looks_like_http(b"OPTIONS "));
        assert!(looks_like_http(b"PO"));
        assert!(!looks_like_http(b"SSH-2.0-"));
        assert!(!looks_like_http(b"GE T"));
        assert!(!looks_like_http(b"*1\r\n$4\r\n"));
        assert!(!looks_like_http(b""));
    }
}
