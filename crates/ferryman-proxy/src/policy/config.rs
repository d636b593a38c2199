//! The `[[rules]]` entries, as written.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// One rule. Destination matchers (the `domain*`, `ip_cidr` and list keys)
/// match when any of them does; every other key given must match too. A
/// rule with no matcher at all matches everything (Clash's `MATCH`).
/// `outbound` and `intercept` each decide once: the first matching rule
/// that sets `outbound` chooses the way out, the first that sets
/// `intercept` whether to look inside.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuleConfig {
    /// Shown in the dashboard and logs instead of `rules[i]`.
    pub name: Option<String>,
    /// Exact names.
    pub domain: Vec<String>,
    /// A name and everything under it (`corp.test` matches `a.corp.test`).
    pub domain_suffix: Vec<String>,
    /// Names containing the text.
    pub domain_keyword: Vec<String>,
    /// `*` any characters (dots too), `?` one character.
    pub domain_wildcard: Vec<String>,
    /// Networks or addresses, matched against address literals.
    pub ip_cidr: Vec<String>,
    /// Also match `ip_cidr` (and address lists) against the addresses a
    /// name resolves to here (Clash's default; costs a lookup).
    pub resolve: bool,
    /// Files in mihomo's `domain` format (or classical lines).
    pub domain_list: Vec<PathBuf>,
    /// Files in mihomo's `ipcidr` format (or classical lines).
    pub ip_list: Vec<PathBuf>,
    /// Destination ports: `443` or `"8000-8999"`.
    pub port: Vec<PortSpec>,
    /// Client networks or addresses.
    pub client: Vec<String>,
    /// Inbound names: `http` (the HTTP proxy), `socks5`, ...
    pub inbound: Vec<String>,
    /// Authenticated users (the proxy's Basic or SOCKS5 username).
    pub user: Vec<String>,
    /// HTTP methods (a tunnel's is CONNECT).
    pub method: Vec<String>,
    /// URL path prefixes; only HTTP requests have one (intercepted ones
    /// too, decided again inside the tunnel).
    pub path: Vec<String>,
    /// Match when the rest does not.
    pub invert: bool,
    /// The way out, by name.
    pub outbound: Option<String>,
    /// Whether to look inside a matching tunnel.
    pub intercept: Option<bool>,
}

/// A port or an inclusive range.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum PortSpec {
    /// Wider than a port, so that 70000 is refused with a reason, not as
    /// "did not match any variant".
    One(i64),
    Range(String),
}

impl PortSpec {
    pub(crate) fn range(&self) -> Result<std::ops::RangeInclusive<u16>, String> {
        match self {
            PortSpec::One(port) => match u16::try_from(*port) {
                Ok(port) => Ok(port..=port),
                Err(_) => Err(format!("{port} is not a port (0-65535)")),
            },
            PortSpec::Range(text) => {
                let parse = |s: &str| {
                    s.trim().parse::<u16>().map_err(|_| {
                        format!("{text:?} is not a port or a range like \"8000-8999\"")
                    })
                };
                let (low, high) = match text.split_once('-') {
                    Some((low, high)) => (parse(low)?, parse(high)?),
                    None => {
                        let port = parse(text)?;
                        (port, port)
                    }
                };
                if low > high {
                    return Err(format!("{text:?} runs backwards"));
                }
                Ok(low..=high)
            }
        }
    }
}

impl RuleConfig {
    pub(crate) fn has_destination(&self) -> bool {
        !(self.domain.is_empty()
            && self.domain_suffix.is_empty()
            && self.domain_keyword.is_empty()
            && self.domain_wildcard.is_empty()
            && self.ip_cidr.is_empty()
            && self.domain_list.is_empty()
            && self.ip_list.is_empty())
    }

    /// Matches every session whatever it is.
    pub(crate) fn matches_all(&self) -> bool {
        !self.has_destination()
            && self.port.is_empty()
            && self.client.is_empty()
            && self.inbound.is_empty()
            && self.user.is_empty()
            && self.method.is_empty()
            && self.path.is_empty()
            && !self.invert
    }
}
