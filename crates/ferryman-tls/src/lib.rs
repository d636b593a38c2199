//! TLS for ferryman: its own certificate authority and the leaf certificates
//! it mints, and how it checks the servers it connects to (an agent its
//! gateway among them).

mod ca;
mod pinned;
mod provider;
mod upstream;

use std::path::PathBuf;

pub use ca::CertificateAuthority;
pub use pinned::{fingerprint, gateway_client_config};
pub use provider::{provider, server_config, server_picks_suite};
pub use rustls::sign::CertifiedKey;
pub use upstream::client_config;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
    #[error("cannot create a certificate authority: {0}")]
    Create(String),
    #[error("cannot mint a certificate for {host}: {reason}")]
    Mint { host: String, reason: String },
    #[error("cannot set up TLS: {0}")]
    Setup(String),
}
