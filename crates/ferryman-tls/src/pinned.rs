//! How an agent checks its gateway: against the gateway's CA file, against
//! a pinned SHA-256 fingerprint (of the gateway's certificate, or of a CA
//! in the chain it sends, which must then have issued it for the name the
//! agent dialled), or else like any server.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::upstream::read_certificates;
use crate::TlsError;

/// A certificate's SHA-256 fingerprint as `openssl x509 -fingerprint
/// -sha256` prints it: upper-case hex pairs joined by colons.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    digest
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A fingerprint written any common way (colons or not, any case).
fn parse_fingerprint(text: &str) -> Option<[u8; 32]> {
    let hex: String = text.chars().filter(|c| *c != ':').collect();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The TLS client an agent dials its gateway with.
pub fn gateway_client_config(
    ca_file: Option<&Path>,
    pinned: Option<&str>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = crate::provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?;
    let mut config = match (ca_file, pinned) {
        (_, Some(pinned)) => {
            let digest = parse_fingerprint(pinned).ok_or_else(|| {
                TlsError::Setup(format!(
                    "--gateway-fingerprint {pinned:?} is not a SHA-256 fingerprint (64 hex digits)"
                ))
            })?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Pinned { digest, provider }))
                .with_no_client_auth()
        }
        (Some(path), None) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certificates(path)? {
                roots.add(cert).map_err(|e| TlsError::Invalid {
                    path: path.to_path_buf(),
                    reason: format!("not a usable CA certificate: {e}"),
                })?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        (None, None) => return crate::client_config(&[], false),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[derive(Debug)]
struct Pinned {
    digest: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl Pinned {
    fn matches(&self, cert: &CertificateDer<'_>) -> bool {
        ring::digest::digest(&ring::digest::SHA256, cert).as_ref() == self.digest
    }
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.matches(end_entity) {
            return Ok(ServerCertVerified::assertion());
        }
        let Some(ca) = intermediates.iter().find(|c| self.matches(c)) else {
            return Err(rustls::Error::General(
                "the gateway's certificate matches no --gateway-fingerprint".into(),
            ));
        };
        let mut roots = RootCertStore::empty();
        roots
            .add(ca.clone().into_owned())
            .map_err(|e| rustls::Error::General(format!("the pinned CA is unusable: {e}")))?;
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        let others: Vec<_> = intermediates
            .iter()
            .filter(|c| !self.matches(c))
            .cloned()
            .collect();
        verifier.verify_server_cert(end_entity, &others, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_read_back_in_any_common_form() {
        let printed = fingerprint(b"certificate");
        assert_eq!(printed.len(), 32 * 3 - 1);
        let bare = printed.replace(':', "").to_lowercase();
        assert_eq!(parse_fingerprint(&printed), parse_fingerprint(&bare));
        assert!(parse_fingerprint(&printed).is_some());
        assert!(parse_fingerprint("AB:CD").is_none());
        assert!(parse_fingerprint(&"zz".repeat(32)).is_none());
        assert!(gateway_client_config(None, Some("AB:CD")).is_err());
    }
}
