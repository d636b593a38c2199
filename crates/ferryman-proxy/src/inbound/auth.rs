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

    pub(crate) fn allows(&self, headers: &HeaderMap) -> bool {
        let Some(credentials) = headers
            .get(PROXY_AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
            .and_then(|(_, b64)| {
                base64::engine::general_purpose::STANDARD
                    .decode(b64.trim())
                    .ok()
            })
        else {
            return false;
        };
        // Check every entry so the time taken says nothing about which matched.
        self.accepted.iter().fold(false, |found, pair| {
            found | constant_time_eq(pair, &credentials)
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
        assert!(auth.allows(&with("Basic YWxpY2U6czNjcmV0")));
        assert!(auth.allows(&with("basic YWxpY2U6czNjcmV0")));
        // "alice:wrong"
        assert!(!auth.allows(&with("Basic YWxpY2U6d3Jvbmc=")));
        assert!(!auth.allows(&with("Bearer YWxpY2U6czNjcmV0")));
        assert!(!auth.allows(&with("Basic !!!")));
        assert!(!auth.allows(&HeaderMap::new()));
        assert!(ProxyAuth::new(&[]).is_none());
    }
}
