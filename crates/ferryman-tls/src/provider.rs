//! The crypto ferryman's TLS uses, built once for every connection.

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;
use rustls::{CipherSuite, ProtocolVersion, SupportedCipherSuite};

/// ring's suites with AES-128-GCM first within each protocol version.
///
/// Interception encrypts and decrypts every byte twice on ferryman's cores,
/// and AES-128 takes 10 rounds where AES-256 takes 14: on this project's
/// machine it was a third faster on bulk data. It is also first in
/// Chromium's and Firefox's own lists. The order only matters where
/// ferryman is the client (servers mostly follow the client's order); as
/// a server ferryman keeps rustls's default of following the client, so a
/// client that prefers ChaCha20 (no AES hardware) still gets it.
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
