//! Who may use the proxy: Basic credentials (RFC 7617), the same pairs for
//! every inbound that authenticates.

use base64::Engine;
use http::header::{HeaderMap, PROXY_AUTHORIZATION};

/// Basic proxy credentials (RFC 7617), compared in constant time.
pub(crate) struct ProxyAuth {
    accepted: Vec<Vec<u8>>,
}

impl ProxyAuth {
    pub(crate) fn new(pairs: &[String]) -> Option<Self> {
        (!pairs.is_empty()).then(|| Self {
            accepted: pairs.iter().map(|p| p.as_bytes().to_vec()).collect(),
        })
    }

    /// The user whose Basic `Proxy-Authorization` is accepted, if any.
    pub(crate) fn user(&self, headers: &HeaderMap) -> Option<String> {
        let credentials = headers
            .get(PROXY_AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
            .and_then(|(_, b64)| {
                base64::engine::general_purpose::STANDARD
                    .decode(b64.trim())
                    .ok()
            })?;
        let (user, _) = std::str::from_utf8(&credentials).ok()?.split_once(':')?;
        self.accepts(&credentials).then(|| user.to_string())
    }

    /// Whether `user:password` is one of the accepted pairs.
    pub(crate) fn accepts(&self, credentials: &[u8]) -> bool {
        // Check every entry so the time taken says nothing about which matched.
        self.accepted.iter().fold(false, |found, pair| {
            found | constant_time_eq(pair, credentials)
        })
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn with(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(PROXY_AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn basic_credentials() {
        let auth = ProxyAuth::new(&["alice:s3cret".into()]).unwrap();
        // "alice:s3cret"
        assert_eq!(
            auth.user(&with("Basic YWxpY2U6czNjcmV0")).as_deref(),
            Some("alice")
        );
        assert_eq!(
            auth.user(&with("basic YWxpY2U6czNjcmV0")).as_deref(),
            Some("alice")
        );
        // "alice:wrong"
        assert_eq!(auth.user(&with("Basic YWxpY2U6d3Jvbmc=")), None);
        assert_eq!(auth.user(&with("Bearer YWxpY2U6czNjcmV0")), None);
        assert_eq!(auth.user(&with("Basic !!!")), None);
        assert_eq!(auth.user(&HeaderMap::new()), None);
        assert!(auth.accepts(b"alice:s3cret") && !auth.accepts(b"alice:s3cre"));
        assert!(ProxyAuth::new(&[]).is_none());
    }
}
