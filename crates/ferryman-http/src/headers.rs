//! Hop-by-hop and forwarding headers (RFC 9110 §7.6).

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Version};

/// Fields that describe one hop and never cross the proxy, besides those the
/// `Connection` header lists (RFC 9110 §7.6.1). `Trailer` is not among them:
/// it is end to end, announcing the trailer fields that follow, and an
/// HTTP/1 hop that does not see it must drop those trailers.
static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRANSFER_ENCODING,
];

/// Removes hop-by-hop fields. With `upgrade` set, the `Upgrade` field and a
/// `Connection: upgrade` survive so the next hop sees the upgrade request
/// (or the 101 answer).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // Most messages carry few of these: one pass over the names present,
    // then remove only those, instead of a hashed removal per known name.
    let mut doomed: Vec<HeaderName> = Vec::new();
    let mut has_connection = false;
    let accepts_trailers = headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("trailers"));
    for name in headers.keys() {
        if *name == header::CONNECTION {
            has_connection = true;
        }
        let hop = HOP_BY_HOP.contains(name) || (*name == header::UPGRADE && !upgrade);
        if hop {
            doomed.push(name.clone());
        }
    }
    if has_connection {
        let listed = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
            .filter(|name| !(upgrade && *name == header::UPGRADE));
        doomed.extend(listed);
    }
    for name in doomed {
        headers.remove(name);
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    // "TE: trailers" only says the sender takes trailers; ferryman relays
    // them, so the next hop may be told the same (gRPC needs it).
    if accepts_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// A message framed both by `Transfer-Encoding` and `Content-Length`: RFC
/// 9112 §6.3 lets the encoding win, but a proxy that relays the length next
/// to a re-framed body lies to the next hop about where the message ends,
/// so such a response is refused (as nginx does).
pub fn ambiguous_framing(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING) && headers.contains_key(header::CONTENT_LENGTH)
}

/// True when the message asks to switch protocols (`Connection: upgrade` plus
/// an `Upgrade` field).
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

/// This hop's `Via` entries, built once: `1.1 <pseudonym>` and friends.
#[derive(Debug, Clone)]
pub struct Via {
    pseudonym: String,
    http10: HeaderValue,
    http11: HeaderValue,
    http2: HeaderValue,
}

impl Via {
    /// `pseudonym` names this hop, e.g. `ferryman-1a2b3c4d`; characters not
    /// allowed in a token are dropped.
    pub fn new(pseudonym: &str) -> Self {
        let pseudonym: String = pseudonym
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || "-._~".contains(*c))
            .collect();
        let entry = |proto: &'static str| {
            HeaderValue::from_str(&format!("{proto} {pseudonym}"))
                .unwrap_or_else(|_| HeaderValue::from_static(proto))
        };
        Self {
            http10: entry("1.0"),
            http11: entry("1.1"),
            http2: entry("2"),
            pseudonym,
        }
    }

    /// Appends this hop, named after the version the message arrived in.
    pub fn append(&self, headers: &mut HeaderMap, version: Version) {
        let value = match version {
            Version::HTTP_10 => &self.http10,
            Version::HTTP_2 | Version::HTTP_3 => &self.http2,
            _ => &self.http11,
        };
        headers.append(header::VIA, value.clone());
    }

    /// True when a `Via` entry names this hop: the message already went
    /// through this very process.
    pub fn seen_in(&self, headers: &HeaderMap) -> bool {
        headers
            .get_all(header::VIA)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|entry| entry.split_whitespace().nth(1))
            .any(|by| by == self.pseudonym)
    }
}

/// Appends the client address to `X-Forwarded-For`.
pub fn append_forwarded_for(headers: &mut HeaderMap, client: std::net::IpAddr) {
    let name = HeaderName::from_static("x-forwarded-for");
    let joined = match headers.get(&name).and_then(|v| v.to_str().ok()) {
        Some(previous) => format!("{previous}, {client}"),
        None => client.to_string(),
    };
    if let Ok(value) = HeaderValue::from_str(&joined) {
        headers.insert(name, value);
    }
}

/// Methods whose repetition has the same effect as one request (RFC 9110 §9.2.2).
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn strips_listed_and_standard_hop_by_hop_fields() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "gzip"),
            ("upgrade", "websocket"),
            ("accept-encoding", "gzip"),
            ("set-cookie", "a=1"),
            ("set-cookie", "b=2"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let mut names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["accept-encoding", "set-cookie"]);
        assert_eq!(h.get_all("set-cookie").iter().count(), 2);
    }

    #[test]
    fn connection_options_that_name_no_field_remove_nothing_else() {
        let mut h = map(&[
            (
                "connection",
                "close, keep-alive, x-absent, not a name, , Upgrade",
            ),
            ("content-length", "3"),
            ("close", "reserved, but listed"),
            ("upgrade", "h2c"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["content-length"]);
    }

    #[test]
    fn te_trailers_survives_alone() {
        let mut h = map(&[("connection", "TE"), ("te", "gzip, Trailers")]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.get_all("te").iter().collect::<Vec<_>>(), ["trailers"]);
        assert!(!h.contains_key("connection"));
    }

    #[test]
    fn keeps_upgrade_when_upgrading() {
        let mut h = map(&[
            ("connection", "Upgrade, x-a"),
            ("upgrade", "websocket"),
            ("x-a", "1"),
        ]);
        assert!(wants_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
        assert!(!h.contains_key("x-a"));
    }

    #[test]
    fn via_round_trip() {
        let via = Via::new("ferryman-ab12");
        let mut h = map(&[("via", "1.1 squid, 1.1 ferryman-ab123")]);
        assert!(!via.seen_in(&h));
        via.append(&mut h, Version::HTTP_10);
        assert!(via.seen_in(&h));
        assert_eq!(
            h.get_all("via").iter().next_back().unwrap(),
            "1.0 ferryman-ab12"
        );
    }

    #[test]
    fn forwarded_for_appends() {
        let mut h = map(&[("x-forwarded-for", "127.0.0.2")]);
        append_forwarded_for(&mut h, "127.0.0.1".parse().unwrap());
        assert_eq!(h["x-forwarded-for"], "127.0.0.2, 127.0.0.1");
    }
}
