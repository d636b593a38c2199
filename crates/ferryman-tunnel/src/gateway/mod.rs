//! The gateway's side of the tunnel: it takes agents' carriers (TLS, a
//! WebSocket upgrade that says who the agent is, then h2 with the gateway
//! as the client), keeps them in the [`Registry`], and opens streams
//! through them for whoever asks (the proxy's outbounds, published
//! services). Listening and accounting for the connections are the
//! proxy's; this module serves one accepted connection at a time.

mod accept;
mod open;
mod registry;

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use ferryman_tls::CertificateAuthority;

pub use open::{AgentStream, OpenError};
pub use registry::{AgentSnapshot, Registry};

use crate::carrier::CarrierConfig;
use crate::config::TunnelConfig;

/// The gateway's TLS: certificates ferryman's CA issues for the name each
/// agent asks for, or a configured certificate.
enum Identity {
    Minted(Arc<CertificateAuthority>),
    Configured(Arc<rustls::ServerConfig>),
}

/// What may change on reload: who may connect, how carriers behave.
struct Rules {
    path: String,
    carrier: CarrierConfig,
    /// SHA-256 of each token, with the groups it lets agents join.
    tokens: Vec<([u8; 32], Vec<String>)>,
}

/// A gateway: the registry of agents and what carriers are held to.
pub struct Gateway {
    registry: Arc<Registry>,
    /// Connections to the tunnel listener that did not become carriers.
    refused: std::sync::atomic::AtomicU64,
    identity: ArcSwap<Identity>,
    rules: ArcSwap<Rules>,
}

fn digest(token: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

fn rules(config: &TunnelConfig) -> Rules {
    Rules {
        path: config.path().to_string(),
        carrier: config.carrier.clone(),
        tokens: config
            .agents
            .iter()
            .map(|a| (digest(&a.token), a.groups.clone()))
            .collect(),
    }
}

impl Gateway {
    /// A gateway whose certificate `ca` issues, unless `config` names one.
    pub fn new(config: &TunnelConfig, ca: Arc<CertificateAuthority>) -> Result<Self, String> {
        let Prepared { identity, rules } = Self::prepare(config, ca)?;
        Ok(Self {
            registry: Arc::default(),
            refused: Default::default(),
            identity: ArcSwap::from_pointee(identity),
            rules: ArcSwap::from_pointee(rules),
        })
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// How many connections were refused as carriers (bad token, stale
    /// session, failed handshake).
    pub fn carriers_refused(&self) -> u64 {
        self.refused.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Reads what a new configuration needs (its certificate files), so
    /// that a bad one is refused before anything changes.
    pub fn prepare(
        config: &TunnelConfig,
        ca: Arc<CertificateAuthority>,
    ) -> Result<Prepared, String> {
        Ok(Prepared {
            identity: identity(config, ca)?,
            rules: rules(config),
        })
    }

    /// Puts a prepared configuration in force for the carriers that connect
    /// from now on; connected agents whose token is gone, or no longer lets
    /// them into their group, are disconnected.
    pub fn apply(&self, prepared: Prepared) {
        let Prepared { identity, rules } = prepared;
        self.registry.close_unless(|agent| {
            rules.tokens.iter().any(|(token, groups)| {
                *token == agent.token && groups.iter().any(|g| **g == *agent.group)
            })
        });
        self.identity.store(Arc::new(identity));
        self.rules.store(Arc::new(rules));
    }
}

/// A gateway configuration read and checked, not yet in force.
pub struct Prepared {
    identity: Identity,
    rules: Rules,
}

fn identity(config: &TunnelConfig, ca: Arc<CertificateAuthority>) -> Result<Identity, String> {
    match (&config.cert, &config.key) {
        (Some(cert), Some(key)) => configured(cert, key).map(Identity::Configured),
        _ => Ok(Identity::Minted(ca)),
    }
}

fn configured(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("tunnel.cert: {}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("tunnel.key: {}: {e}", key.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(ferryman_tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("tunnel.cert: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
