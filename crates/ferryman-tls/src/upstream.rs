//! How ferryman checks the servers it connects to over TLS: the webpki
//! roots, the system's store, and any CA files the configuration adds; or,
//! when told to be insecure, nothing at all (like curl -k).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::TlsError;

/// A client config speaking HTTP/1.1 to upstream servers.
pub fn client_config(
    extra_ca_files: &[PathBuf],
    insecure: bool,
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = crate::provider();
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let native = rustls_native_certs::load_native_certs();
    let (added, _) = roots.add_parsable_certificates(native.certs);
    tracing::debug!(
        added,
        errors = native.errors.len(),
        "system CA certificates"
    );
    for path in extra_ca_files {
        for cert in read_certificates(path)? {
            roots.add(cert).map_err(|e| TlsError::Invalid {
                path: path.clone(),
                reason: format!("not a usable CA certificate: {e}"),
            })?;
        }
    }
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?;
    let mut config = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
            .with_no_client_auth()
    } else {
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

pub(crate) fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let invalid = |reason: String| TlsError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(invalid("holds no PEM certificate".into()));
    }
    Ok(certs)
}

/// `upstream_insecure`: any certificate is accepted, but the handshake is
/// still checked to be signed by the key in it.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
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
            &self.0.signature_verification_algorithms,
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
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_ca_files_must_hold_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "nothing here\n").unwrap();
        let err = client_config(&[empty], false).err().unwrap();
        assert!(
            err.to_string()
                .contains("empty.pem: holds no PEM certificate"),
            "{err}"
        );
        let missing = dir.path().join("missing.pem");
        let err = client_config(&[missing], false).err().unwrap();
        assert!(err.to_string().contains("missing.pem"), "{err}");
        assert!(client_config(&[], false).is_ok());
        assert!(client_config(&[], true).is_ok());
    }

    /// An origin that follows the client's order (rustls's and nginx's
    /// default) is asked for AES-128-GCM, in TLS 1.3 and in TLS 1.2.
    #[test]
    fn origins_following_the_client_get_aes_128_gcm() {
        let dir = tempfile::tempdir().unwrap();
        let ca = crate::CertificateAuthority::open(dir.path(), None, 10).unwrap();
        let client = client_config(&[ca.cert_path().to_path_buf()], false).unwrap();
        for (version, expected) in [
            (
                &rustls::version::TLS13,
                rustls::CipherSuite::TLS13_AES_128_GCM_SHA256,
            ),
            (
                &rustls::version::TLS12,
                rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            ),
        ] {
            let server = rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_protocol_versions(&[version])
            .unwrap()
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Origin(ca.leaf("origin.test").unwrap())));
            let mut server = rustls::ServerConnection::new(Arc::new(server)).unwrap();
            let name = ServerName::try_from("origin.test").unwrap();
            let mut client = rustls::ClientConnection::new(client.clone(), name).unwrap();
            while client.is_handshaking() || server.is_handshaking() {
                let mut bytes = Vec::new();
                client.write_tls(&mut bytes).unwrap();
                server.read_tls(&mut bytes.as_slice()).unwrap();
                server.process_new_packets().unwrap();
                bytes.clear();
                server.write_tls(&mut bytes).unwrap();
                client.read_tls(&mut bytes.as_slice()).unwrap();
                client.process_new_packets().unwrap();
            }
            assert_eq!(client.negotiated_cipher_suite().unwrap().suite(), expected);
        }
    }

    #[derive(Debug)]
    struct Origin(Arc<rustls::sign::CertifiedKey>);

    impl rustls::server::ResolvesServerCert for Origin {
        fn resolve(
            &self,
            _: rustls::server::ClientHello<'_>,
        ) -> Option<Arc<rustls::sign::CertifiedKey>> {
            Some(self.0.clone())
        }
    }
}
