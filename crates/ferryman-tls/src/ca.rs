//! The certificate authority: one per install, never shared.
//!
//! Created on first use in the data directory (ECDSA P-256, named
//! "ferryman CA" plus a suffix derived from its own key, key file mode
//! 0600), or loaded from a configured certificate and key. Leaves are
//! minted per host from one process-wide key pair, so a new host costs one
//! signature, not a key generation, and are kept in a bounded cache.

use std::fs;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::sign::{CertifiedKey, SigningKey};
use time::{Duration, OffsetDateTime};

use crate::TlsError;

const CERT_FILE: &str = "ferryman-ca.pem";
const KEY_FILE: &str = "ferryman-ca.key";
/// The longest leaf lifetime clients accept (CA/Browser Forum), backdate included.
const LEAF_DAYS: i64 = 397;
const CA_YEARS: i64 = 10;

pub struct CertificateAuthority {
    cert_path: PathBuf,
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    leaf_key: KeyPair,
    leaf_signer: Arc<dyn SigningKey>,
    leaves: moka::sync::Cache<String, Arc<CertifiedKey>>,
}

impl CertificateAuthority {
    /// The CA at `cert`/`key` when both are given, else the one in `dir`,
    /// created there on first use. Keeps up to `leaf_cache` minted leaves.
    pub fn open(
        dir: &Path,
        configured: Option<(&Path, &Path)>,
        leaf_cache: u64,
    ) -> Result<Self, TlsError> {
        let (cert_path, key_path) = match configured {
            Some((cert, key)) => (cert.to_path_buf(), key.to_path_buf()),
            None => {
                let paths = (dir.join(CERT_FILE), dir.join(KEY_FILE));
                if !paths.0.exists() && !paths.1.exists() {
                    create(dir, &paths.0, &paths.1)?;
                }
                paths
            }
        };
        let cert_pem = read(&cert_path)?;
        let key = KeyPair::from_pem(&read(&key_path)?).map_err(|e| TlsError::Invalid {
            path: key_path.clone(),
            reason: format!("not a PEM private key: {e}"),
        })?;
        let invalid_cert = |reason: String| TlsError::Invalid {
            path: cert_path.clone(),
            reason,
        };
        let cert_der = rustls::pki_types::pem::PemObject::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| invalid_cert(format!("not a PEM certificate: {e}")))?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)
            .map_err(|e| invalid_cert(format!("cannot sign with it: {e}")))?;
        let leaf_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| TlsError::Create(e.to_string()))?;
        let leaf_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let leaf_signer = rustls::crypto::ring::sign::any_supported_type(&leaf_der)
            .map_err(|e| TlsError::Create(e.to_string()))?;
        Ok(Self {
            cert_path,
            cert_pem,
            cert_der,
            issuer,
            leaf_key,
            leaf_signer,
            leaves: moka::sync::Cache::new(leaf_cache),
        })
    }

    /// Where the CA certificate is, for users to trust it.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The CA certificate's SHA-256 fingerprint, which agents can pin.
    pub fn fingerprint(&self) -> String {
        crate::fingerprint(self.cert_der())
    }

    /// A certificate for `host` (a DNS name or an IP address) with the CA
    /// in its chain, minted on first use and cached.
    pub fn leaf(&self, host: &str) -> Result<Arc<CertifiedKey>, TlsError> {
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        if let Some(leaf) = self.leaves.get(&host) {
            metrics::counter!("ferryman_leaf_cache_total", "result" => "hit").increment(1);
            return Ok(leaf);
        }
        metrics::counter!("ferryman_leaf_cache_total", "result" => "miss").increment(1);
        self.leaves
            .try_get_with(host.clone(), || self.mint(&host))
            .map_err(|e| TlsError::Mint {
                host,
                reason: e.to_string(),
            })
    }

    fn mint(&self, host: &str) -> Result<Arc<CertifiedKey>, String> {
        let mut params = CertificateParams::default();
        let san = match ServerName::try_from(host) {
            Ok(ServerName::IpAddress(ip)) => SanType::IpAddress(IpAddr::from(ip)),
            Ok(ServerName::DnsName(_)) => {
                SanType::DnsName(host.to_string().try_into().map_err(|e| format!("{e}"))?)
            }
            _ => return Err("not a DNS name or an IP address".into()),
        };
        params.subject_alt_names = vec![san];
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, host);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        // Backdated a day for clients whose clocks run behind.
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::days(1);
        params.not_after = now + Duration::days(LEAF_DAYS - 1);
        let cert = params
            .signed_by(&self.leaf_key, &self.issuer)
            .map_err(|e| e.to_string())?;
        Ok(Arc::new(CertifiedKey::new(
            vec![cert.der().clone(), self.cert_der.clone()],
            self.leaf_signer.clone(),
        )))
    }
}

fn read(path: &Path) -> Result<String, TlsError> {
    fs::read_to_string(path).map_err(|source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Generates a CA into `dir`. The files are written under temporary names
/// and renamed, key first, so a crash never leaves a certificate without
/// its key.
fn create(dir: &Path, cert_path: &Path, key_path: &Path) -> Result<(), TlsError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TlsError::Io { path, source }
    };
    fs::create_dir_all(dir).map_err(io(dir))?;
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|e| TlsError::Create(e.to_string()))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("ferryman CA {}", suffix(&key)));
    params
        .distinguished_name
        .push(DnType::OrganizationName, "ferryman");
    // Path length 0: it signs leaves, never another CA.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::days(1);
    params.not_after = now + Duration::days(365 * CA_YEARS);
    let cert = params
        .self_signed(&key)
        .map_err(|e| TlsError::Create(e.to_string()))?;

    let key_tmp = key_path.with_extension("key.tmp");
    write_private(&key_tmp, key.serialize_pem().as_bytes()).map_err(io(&key_tmp))?;
    let cert_tmp = cert_path.with_extension("pem.tmp");
    fs::write(&cert_tmp, cert.pem()).map_err(io(&cert_tmp))?;
    fs::rename(&key_tmp, key_path).map_err(io(key_path))?;
    fs::rename(&cert_tmp, cert_path).map_err(io(cert_path))?;
    tracing::info!(cert = %cert_path.display(), "created a new certificate authority");
    Ok(())
}

/// A name suffix unique to this CA, so two installs never look alike.
fn suffix(key: &KeyPair) -> String {
    let mut hasher = DefaultHasher::new();
    key.public_key_raw().hash(&mut hasher);
    format!("{:08x}", hasher.finish() as u32)
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verify(ca: &CertificateAuthority, leaf: &CertifiedKey, name: &str) -> Result<(), String> {
        let anchor = webpki::anchor_from_trusted_cert(&ca.cert_der).map_err(|e| e.to_string())?;
        let end = webpki::EndEntityCert::try_from(&leaf.cert[0]).map_err(|e| e.to_string())?;
        let now = rustls::pki_types::UnixTime::now();
        end.verify_for_usage(
            rustls::crypto::ring::default_provider()
                .signature_verification_algorithms
                .all,
            &[anchor],
            &leaf.cert[1..],
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(|e| e.to_string())?;
        let name = rustls::pki_types::ServerName::try_from(name).map_err(|e| e.to_string())?;
        end.verify_is_valid_for_subject_name(&name)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn created_once_with_a_private_key_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::open(dir.path(), None, 10).unwrap();
        assert!(ca.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        let key = dir.path().join(KEY_FILE);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let again = CertificateAuthority::open(dir.path(), None, 10).unwrap();
        assert_eq!(again.cert_der(), ca.cert_der());
    }

    #[test]
    fn no_two_installs_share_a_ca() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let a = CertificateAuthority::open(a.path(), None, 10).unwrap();
        let b = CertificateAuthority::open(b.path(), None, 10).unwrap();
        assert_ne!(a.cert_der(), b.cert_der());
        let name = |ca: &CertificateAuthority| {
            let (_, cert) = x509_parser::parse_x509_certificate(ca.cert_der()).unwrap();
            let cn = cert.subject().iter_common_name().next().unwrap();
            cn.as_str().unwrap().to_string()
        };
        assert_ne!(name(&a), name(&b));
        assert!(name(&a).starts_with("ferryman CA "), "{}", name(&a));
    }

    #[test]
    fn a_half_written_ca_is_refused_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        CertificateAuthority::open(dir.path(), None, 10).unwrap();
        fs::remove_file(dir.path().join(KEY_FILE)).unwrap();
        let err = CertificateAuthority::open(dir.path(), None, 10)
            .err()
            .unwrap();
        assert!(err.to_string().contains(KEY_FILE), "{err}");
    }

    #[test]
    fn leaves_chain_to_the_ca_for_names_and_addresses_and_are_cached() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::open(dir.path(), None, 10).unwrap();
        let leaf = ca.leaf("Example.test").unwrap();
        verify(&ca, &leaf, "example.test").unwrap();
        assert!(verify(&ca, &leaf, "other.test").is_err());
        assert!(
            Arc::ptr_eq(&leaf, &ca.leaf("example.test").unwrap()),
            "cached"
        );
        let ip = ca.leaf("[::1]").unwrap();
        verify(&ca, &ip, "::1").unwrap();
        verify(&ca, &ca.leaf("127.0.0.1").unwrap(), "127.0.0.1").unwrap();
        assert!(ca.leaf("not a host!").is_err());
    }

    #[test]
    fn leaves_live_at_most_397_days_backdated_one() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::open(dir.path(), None, 10).unwrap();
        let leaf = ca.leaf("example.test").unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&leaf.cert[0]).unwrap();
        let validity = cert.validity();
        let lifetime = validity.not_after.timestamp() - validity.not_before.timestamp();
        assert!(lifetime <= LEAF_DAYS * 86_400, "{lifetime} s");
        let now = OffsetDateTime::now_utc().unix_timestamp();
        assert!(validity.not_before.timestamp() < now - 23 * 3600);
    }

    #[test]
    fn a_configured_ca_is_used_instead() {
        let dir = tempfile::tempdir().unwrap();
        let own = tempfile::tempdir().unwrap();
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "corporate CA");
        let cert = params.self_signed(&key).unwrap();
        let (cert_path, key_path) = (own.path().join("ca.pem"), own.path().join("ca.key"));
        fs::write(&cert_path, cert.pem()).unwrap();
        fs::write(&key_path, key.serialize_pem()).unwrap();
        let ca = CertificateAuthority::open(dir.path(), Some((&cert_path, &key_path)), 10).unwrap();
        assert_eq!(ca.cert_der(), cert.der().as_ref());
        assert_eq!(ca.cert_path(), cert_path);
        verify(&ca, &ca.leaf("example.test").unwrap(), "example.test").unwrap();
        assert!(
            !dir.path().join(CERT_FILE).exists(),
            "no CA of its own was made"
        );
        let err = CertificateAuthority::open(dir.path(), Some((&key_path, &cert_path)), 10)
            .err()
            .unwrap();
        assert!(err.to_string().contains("not a PEM private key"), "{err}");
    }
}
