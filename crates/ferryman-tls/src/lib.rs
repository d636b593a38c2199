//! TLS for interception: ferryman's own certificate authority and the leaf
//! certificates it mints for the hosts it intercepts.

mod ca;

pub use ca::{CaError, CertificateAuthority};
pub use rustls::sign::CertifiedKey;
