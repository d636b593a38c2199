//! The crypto ferryman's TLS uses, built once for every connection.

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls::{CipherSuite, ProtocolVersion, SupportedCipherSuite};

/// ring's suites with AES-128-GCM first within each protocol version.
///
/// Interception encrypts and decrypts every byte twice on ferryman's cores,
/// and AES-128 takes 10 rounds where AES-256 takes 14: on this project's
/// machine it was a third faster on bulk data. It is also first in
/// Chromium's and Firefox's own lists, and the suite every TLS 1.3 peer
/// must implement. As a client ferryman offers this order (servers mostly
/// follow the client's); as a server it applies it where
/// [`server_picks_suite`] says so.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            let mut provider = rustls::crypto::ring::default_provider();
            provider
                .cipher_suites
                .sort_by_key(|suite| (!is_tls13(suite), !is_aes_128_gcm(suite)));
            Arc::new(provider)
        })
        .clone()
}

/// Whether ferryman, as a TLS server, picks the suite from its own order
/// rather than following the client's. Only on a CPU with AES instructions
/// (without them ChaCha20 is the faster one), and not for a client whose
/// first choice (among what ferryman supports; GREASE values are skipped)
/// is ChaCha20: it most likely has no AES hardware itself. Go's TLS server
/// decides the same way. Any other client gets AES-128-GCM, the cheapest
/// for both ends.
pub fn server_picks_suite(offered: &[CipherSuite]) -> bool {
    picks_suite(offered, aes_hardware())
}

fn picks_suite(offered: &[CipherSuite], aes_hardware: bool) -> bool {
    let supported = provider();
    let first = offered.iter().find(|offered| {
        supported
            .cipher_suites
            .iter()
            .any(|ours| ours.suite() == **offered)
    });
    aes_hardware
        && !matches!(
            first,
            Some(
                CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
                    | CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
                    | CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
            )
        )
}

/// AES and carry-less multiplication (for GCM) in hardware.
fn aes_hardware() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
            && std::arch::is_aarch64_feature_detected!("pmull")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

fn is_tls13(suite: &SupportedCipherSuite) -> bool {
    suite.version().version == ProtocolVersion::TLSv1_3
}

fn is_aes_128_gcm(suite: &SupportedCipherSuite) -> bool {
    matches!(
        suite.suite(),
        CipherSuite::TLS13_AES_128_GCM_SHA256
            | CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            | CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_that_lead_with_chacha20_keep_their_order() {
        let grease = CipherSuite::Unknown(0x0a0a);
        let chacha = CipherSuite::TLS13_CHACHA20_POLY1305_SHA256;
        let aes_256 = CipherSuite::TLS13_AES_256_GCM_SHA384;
        assert!(!picks_suite(&[grease, chacha, aes_256], true));
        assert!(!picks_suite(
            &[CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256],
            true
        ));
        assert!(picks_suite(&[grease, aes_256, chacha], true));
        assert!(picks_suite(&[aes_256], true));
        assert!(picks_suite(&[], true));
    }

    #[test]
    fn without_aes_instructions_every_client_keeps_its_order() {
        let aes_256 = CipherSuite::TLS13_AES_256_GCM_SHA384;
        assert!(!picks_suite(&[aes_256], false));
        assert!(!picks_suite(&[], false));
    }

    #[test]
    fn aes_128_gcm_leads_each_version_and_no_suite_is_lost() {
        let suites: Vec<CipherSuite> = provider().cipher_suites.iter().map(|s| s.suite()).collect();
        let ring = rustls::crypto::ring::default_provider().cipher_suites;
        assert_eq!(suites.len(), ring.len());
        assert!(ring.iter().all(|s| suites.contains(&s.suite())));
        assert_eq!(suites[0], CipherSuite::TLS13_AES_128_GCM_SHA256);
        let first_tls12 = provider()
            .cipher_suites
            .iter()
            .position(|s| !is_tls13(s))
            .unwrap();
        assert!(provider().cipher_suites[..first_tls12].iter().all(is_tls13));
        assert_eq!(
            suites[first_tls12],
            CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        );
    }
}

/// A server config presenting `leaf`, with `alpn` and, when `picks_suite`,
/// the suite chosen from ferryman's order (see [`server_picks_suite`]).
pub fn server_config(
    leaf: Arc<CertifiedKey>,
    alpn: Vec<Vec<u8>>,
    picks_suite: bool,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Leaf(leaf)));
    config.alpn_protocols = alpn;
    config.ignore_client_order = picks_suite;
    Ok(Arc::new(config))
}

/// The one certificate a connection is served with.
#[derive(Debug)]
struct Leaf(Arc<CertifiedKey>);

impl ResolvesServerCert for Leaf {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}
