//! Third-party proxies as the tests meet them: Debian's tinyproxy (an HTTP
//! proxy) and microsocks (a SOCKS5 proxy), each a child process on a
//! loopback port, killed when dropped. Each binds its outgoing connections
//! to a loopback address of its own, so an origin can tell by the peer
//! address which way a request came.

use std::net::{IpAddr, SocketAddr};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

/// A running proxy.
pub struct Peer {
    pub addr: SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Peer {
    /// `http://addr` (or with `user:password@`).
    pub fn url(&self, scheme: &str, credentials: Option<(&str, &str)>) -> String {
        match credentials {
            Some((user, password)) => format!("{scheme}://{user}:{password}@{}", self.addr),
            None => format!("{scheme}://{}", self.addr),
        }
    }

    /// Stops the proxy (SIGKILL) and waits for it to be gone.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// microsocks on 127.0.0.1, connecting out from `out`; with `auth`, it
/// requires that username and password.
pub async fn microsocks(auth: Option<(&str, &str)>, out: IpAddr) -> Peer {
    let port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut command = Command::new("microsocks");
    command.args([
        "-i",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-b",
        &out.to_string(),
    ]);
    if let Some((user, password)) = auth {
        command.args(["-u", user, "-P", password]);
    }
    start(
        command,
        port,
        dir,
        "microsocks (apt-get install microsocks)",
    )
    .await
}

/// tinyproxy on 127.0.0.1, connecting out from `out`; with `auth`, it
/// requires that Basic username and password.
pub async fn tinyproxy(auth: Option<(&str, &str)>, out: IpAddr) -> Peer {
    let port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = format!(
        "Port {port}\nListen 127.0.0.1\nBind {out}\nTimeout 60\nMaxClients 200\n\
         Allow 127.0.0.1\nLogLevel Error\n"
    );
    if let Some((user, password)) = auth {
        config.push_str(&format!("BasicAuth {user} {password}\n"));
    }
    let path = dir.path().join("tinyproxy.conf");
    std::fs::write(&path, config).expect("tinyproxy.conf");
    let mut command = Command::new("tinyproxy");
    command.arg("-d").arg("-c").arg(&path);
    start(command, port, dir, "tinyproxy (apt-get install tinyproxy)").await
}

async fn start(mut command: Command, port: u16, dir: tempfile::TempDir, what: &str) -> Peer {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    // Ready once it accepts: nothing else tells.
    crate::within(Duration::from_secs(10), what, async {
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    Peer {
        addr,
        child,
        _dir: dir,
    }
}
