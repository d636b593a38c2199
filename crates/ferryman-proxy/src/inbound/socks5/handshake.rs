//! The SOCKS5 greeting up to the command: the method negotiation and the
//! command are fast-socks5's; the username/password exchange (RFC 1929)
//! is read here, through the crate's extension point, so credentials never
//! pass through its debug logging.

use std::sync::Arc;

use fast_socks5::server::{
    AuthMethod, AuthMethodSuccessState, NoAuthentication, Socks5ServerProtocol,
};
use fast_socks5::util::target_addr::TargetAddr;
use fast_socks5::Socks5Command;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::Commanded;
use crate::inbound::auth::ProxyAuth;

#[derive(Debug, thiserror::Error)]
pub(crate) enum Failed {
    #[error(transparent)]
    Protocol(#[from] fast_socks5::server::SocksServerError),
    #[error("reading credentials: {0}")]
    Io(#[from] std::io::Error),
    #[error("wrong username or password for user {0:?}")]
    Credentials(String),
    #[error("credentials in version {0} (RFC 1929 is version 1)")]
    Version(u8),
}

/// The client's command and destination, and who it is when the proxy
/// has users.
pub(crate) async fn greet(
    stream: TcpStream,
    auth: Option<&ProxyAuth>,
) -> Result<(Commanded, Socks5Command, TargetAddr, Option<Arc<str>>), Failed> {
    let opened = Socks5ServerProtocol::start(stream);
    let (authenticated, user) = match auth {
        None => {
            let chosen = opened.negotiate_auth(&[NoAuthentication]).await?;
            (chosen.finish_auth(), None)
        }
        Some(auth) => {
            let PasswordStarted(mut stream) = opened.negotiate_auth(&[Password]).await?;
            let user = credentials(&mut stream, auth).await?;
            (Authenticated(stream).finish_auth(), Some(user))
        }
    };
    let (commanded, command, target) = authenticated.read_command().await?;
    Ok((commanded, command, target, user))
}

/// RFC 1929: version 1, the user and the password each preceded by its
/// length; answered 0 (accepted) or 1 (refused, and the connection ends).
async fn credentials(stream: &mut TcpStream, auth: &ProxyAuth) -> Result<Arc<str>, Failed> {
    let version = stream.read_u8().await?;
    if version != 1 {
        return Err(Failed::Version(version));
    }
    let user = field(stream).await?;
    let password = field(stream).await?;
    let mut pair = user.clone();
    pair.push(b':');
    pair.extend_from_slice(&password);
    let accepted = auth.accepts(&pair);
    stream.write_all(&[1, if accepted { 0 } else { 1 }]).await?;
    let user = String::from_utf8_lossy(&user).into_owned();
    if !accepted {
        return Err(Failed::Credentials(user));
    }
    Ok(Arc::from(user))
}

async fn field(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let len = stream.read_u8().await?;
    let mut bytes = vec![0u8; usize::from(len)];
    stream.read_exact(&mut bytes).await?;
    Ok(bytes)
}

/// Username/password as a method the crate negotiates.
#[derive(Clone, Copy)]
struct Password;

struct PasswordStarted(TcpStream);

struct Authenticated(TcpStream);

impl AuthMethod<TcpStream> for Password {
    type StartingState = PasswordStarted;

    fn method_id(self) -> u8 {
        2
    }

    fn new(self, inner: TcpStream) -> PasswordStarted {
        PasswordStarted(inner)
    }
}

impl AuthMethodSuccessState<TcpStream> for Authenticated {
    fn into_inner(self) -> TcpStream {
        self.0
    }
}
