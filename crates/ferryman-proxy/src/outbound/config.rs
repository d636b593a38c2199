//! The `[[outbounds]]` entries: named ways out. `direct` and `reject` exist
//! without being written; an entry of the same name replaces them.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ferryman_http::config::Invalid;
use serde::{Deserialize, Serialize};

/// What an outbound does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OutboundKind {
    /// Straight to the destination, optionally from a source address
    /// (`bind`) or through a network interface (`interface`).
    Direct,
    /// An upstream HTTP proxy: `url = "http://[user:password@]host:port"`,
    /// or `https://` to speak TLS to it. Tunnels and https URLs go through
    /// CONNECT; plain http URLs are sent to it in absolute form unless
    /// `absolute_form = false`.
    Http,
    /// An upstream SOCKS5 proxy: `socks5h://[user:password@]host:port`
    /// sends names to the proxy to resolve, `socks5://` resolves them here.
    Socks5,
    /// Refused: HTTP requests get `status` (403) with `message` and the
    /// rule's name; tunnels are refused.
    Reject,
    /// Answered by ferryman itself with `status` (200), `headers` and
    /// `body`: HTTP requests only (a tunnel is refused; a request inside
    /// an intercepted one is decided again and can be answered).
    Answer,
    /// `members`, tried in order: the next one when a connection through
    /// the previous one cannot be made (Clash's `fallback`).
    Group,
    /// Through the tunnel's agents: any agent of `group` (the least busy,
    /// the next if one cannot carry the stream), or the one `agent`. Each
    /// group agents may join is also an outbound of its own name.
    Agents,
}

/// One `[[outbounds]]` entry; which keys apply depends on `kind`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundConfig {
    pub name: String,
    pub kind: OutboundKind,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "without_password"
    )]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub absolute_form: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
}

impl OutboundConfig {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The URL schemes an outbound of this kind takes.
    pub(crate) fn schemes(&self) -> &'static [&'static str] {
        match self.kind {
            OutboundKind::Http => &["http", "https"],
            OutboundKind::Socks5 => &["socks5", "socks5h"],
            _ => &[],
        }
    }

    /// What can be checked without the other entries; `key` is
    /// `outbounds[i]`.
    pub(crate) fn validate(&self, key: &str, errors: &mut Vec<Invalid>) {
        use OutboundKind::*;
        let name = &self.name;
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            errors.push(Invalid::new(
                format!("{key}.name"),
                "must be letters, digits, '-', '_' or '.'",
            ));
        }
        let kind = self.kind;
        let given: [(&str, bool, &[OutboundKind]); 11] = [
            ("url", self.url.is_some(), &[Http, Socks5]),
            ("absolute_form", self.absolute_form.is_some(), &[Http]),
            ("bind", self.bind.is_some(), &[Direct]),
            ("interface", self.interface.is_some(), &[Direct]),
            ("status", self.status.is_some(), &[Reject, Answer]),
            ("message", self.message.is_some(), &[Reject]),
            ("headers", !self.headers.is_empty(), &[Answer]),
            ("body", self.body.is_some(), &[Answer]),
            ("members", !self.members.is_empty(), &[Group]),
            ("group", self.group.is_some(), &[Agents]),
            ("agent", self.agent.is_some(), &[Agents]),
        ];
        for (field, present, kinds) in given {
            if present && !kinds.contains(&kind) {
                errors.push(Invalid::new(
                    format!("{key}.{field}"),
                    format!("does not apply to kind {}", kind_name(kind)),
                ));
            }
        }
        match kind {
            Http | Socks5 => match &self.url {
                Some(url) => {
                    if let Err(e) = ProxyUrl::parse(url, self.schemes()) {
                        errors.push(Invalid::new(format!("{key}.url"), e));
                    }
                }
                None => errors.push(Invalid::new(
                    format!("{key}.url"),
                    format!("kind {} needs the proxy's url", kind_name(kind)),
                )),
            },
            Group if self.members.is_empty() => errors.push(Invalid::new(
                format!("{key}.members"),
                "a group needs at least one member",
            )),
            Agents if self.group.is_some() == self.agent.is_some() => errors.push(Invalid::new(
                format!("{key}.group"),
                "kind agents needs either group or agent",
            )),
            _ => {}
        }
        if let Some(status) = self.status {
            if !(200..=599).contains(&status) {
                errors.push(Invalid::new(
                    format!("{key}.status"),
                    "must be a final status, 200 to 599",
                ));
            }
        }
        for (name, value) in &self.headers {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err()
                || http::HeaderValue::from_str(value).is_err()
            {
                errors.push(Invalid::new(
                    format!("{key}.headers.{name}"),
                    "is not a valid header field",
                ));
            }
        }
    }
}

impl OutboundKind {
    pub fn name(self) -> &'static str {
        kind_name(self)
    }
}

fn kind_name(kind: OutboundKind) -> &'static str {
    match kind {
        OutboundKind::Direct => "direct",
        OutboundKind::Http => "http",
        OutboundKind::Socks5 => "socks5",
        OutboundKind::Reject => "reject",
        OutboundKind::Answer => "answer",
        OutboundKind::Group => "group",
        OutboundKind::Agents => "agents",
    }
}

/// `scheme://[user:password@]host:port`, the password percent-decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProxyUrl {
    pub(crate) scheme: String,
    /// `host:port`, an IPv6 host in brackets.
    pub(crate) authority: String,
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) credentials: Option<(String, String)>,
}

impl ProxyUrl {
    pub(crate) fn parse(url: &str, schemes: &[&str]) -> Result<Self, String> {
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(format!("must be {}://host:port", schemes[0]));
        };
        let scheme = scheme.to_ascii_lowercase();
        if !schemes.contains(&scheme.as_str()) {
            return Err(format!(
                "the scheme must be {}, not {scheme:?}",
                schemes.join(" or ")
            ));
        }
        let rest = rest.trim_end_matches('/');
        let (userinfo, authority) = match rest.rsplit_once('@') {
            Some((userinfo, authority)) => (Some(userinfo), authority),
            None => (None, rest),
        };
        if authority.contains('/') {
            return Err("must not have a path".into());
        }
        let parsed: http::uri::Authority = authority
            .parse()
            .map_err(|_| format!("{authority:?} is not host:port"))?;
        let Some(port) = parsed.port_u16() else {
            return Err("needs a port (host:port)".into());
        };
        let credentials = userinfo
            .map(|userinfo| {
                let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
                Ok::<_, String>((percent_decode(user)?, percent_decode(password)?))
            })
            .transpose()?;
        Ok(Self {
            scheme,
            authority: parsed.as_str().to_string(),
            host: parsed.host().to_string(),
            port,
            credentials,
        })
    }
}

fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("bad %-escape in the credentials")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "the credentials are not UTF-8".to_string())
}

/// A proxy URL as the API shows it: the password replaced.
pub(crate) fn redact_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((userinfo, authority)) => {
                let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
                format!(
                    "{scheme}://{user}:{}@{authority}",
                    ferryman_capture::REDACTED
                )
            }
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

fn without_password<S: serde::Serializer>(url: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match url {
        Some(url) => s.serialize_str(&redact_url(url)),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_urls() {
        let url = ProxyUrl::parse("http://al%40ice:p%3Ass@127.0.0.1:3128/", &["http"]).unwrap();
        assert_eq!(url.authority, "127.0.0.1:3128");
        assert_eq!(url.port, 3128);
        assert_eq!(
            url.credentials,
            Some(("al@ice".to_string(), "p:ss".to_string()))
        );
        let v6 = ProxyUrl::parse("socks5h://[::1]:1080", &["socks5", "socks5h"]).unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("[::1]", 1080));
        assert!(ProxyUrl::parse("http://127.0.0.1", &["http"])
            .unwrap_err()
            .contains("port"));
        assert!(ProxyUrl::parse("ftp://h:1", &["http"])
            .unwrap_err()
            .contains("scheme"));
        assert!(ProxyUrl::parse("http://h:1/x", &["http"])
            .unwrap_err()
            .contains("path"));
        assert!(ProxyUrl::parse("127.0.0.1:3128", &["http"]).is_err());
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("http://me:secret@h:1"),
            "http://me:<redacted>@h:1"
        );
        assert_eq!(redact_url("http://h:1"), "http://h:1");
    }
}
