//! What a destination can be matched against, and how rule lists people
//! already keep (mihomo's `domain`, `ipcidr` and classical rule-provider
//! files) are read into it.

use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;

/// One destination matcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Dest {
    /// Exactly this name.
    Exact(String),
    /// This name and every name under it (`DOMAIN-SUFFIX`, `+.name`).
    Suffix(String),
    /// Names under this one, not itself (`.name` in a mihomo list).
    Below(String),
    /// Names exactly one label under this one (`*.name` in a mihomo list).
    OneBelow(String),
    /// Names containing this text (`DOMAIN-KEYWORD`).
    Keyword(String),
    /// A glob over the whole name: `*` any run of characters, `?` one.
    Glob(String),
    /// A glob label by label: `*` one whole label (mihomo's `*.*.name`).
    Labels(Vec<String>),
    /// Addresses in this network (on address literals, or on resolved
    /// addresses where the rule says so).
    Cidr(IpNet),
}

/// A name as rules compare it: lowercase, without a trailing dot.
pub(crate) fn normal(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn is_name(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

fn name(text: &str, what: &str) -> Result<String, String> {
    let name = normal(text);
    if is_name(&name) {
        Ok(name)
    } else {
        Err(format!("{text:?} is not {what}"))
    }
}

pub(crate) fn exact(text: &str) -> Result<Dest, String> {
    name(text, "a domain name").map(Dest::Exact)
}

pub(crate) fn suffix(text: &str) -> Result<Dest, String> {
    name(text.trim_start_matches('.'), "a domain suffix").map(Dest::Suffix)
}

pub(crate) fn keyword(text: &str) -> Result<Dest, String> {
    name(text, "a keyword (letters, digits, '-', '_', '.')").map(Dest::Keyword)
}

pub(crate) fn glob(text: &str) -> Result<Dest, String> {
    let lower = normal(text);
    let plain = lower.replace(['*', '?'], "a");
    if is_name(&plain) {
        Ok(Dest::Glob(lower))
    } else {
        Err(format!(
            "{text:?} is not a wildcard name (letters, digits, '-', '.', '*', '?')"
        ))
    }
}

pub(crate) fn cidr(text: &str) -> Result<Dest, String> {
    let text = text.trim();
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map(|net| Dest::Cidr(canonical(net).trunc()))
        .map_err(|_| format!("{text:?} is not an address or a network (10.0.0.0/8, fd00::/8)"))
}

/// IPv4 networks written as IPv6 (`::ffff:10.0.0.0/104`) are IPv4 ones.
fn canonical(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => IpNet::new(IpAddr::V4(v4), v6.prefix_len() - 96).unwrap_or(net),
            None => net,
        },
        net => net,
    }
}

/// A mihomo domain-list entry: `name` exactly, `+.name` it and below,
/// `.name` below only, `*.name` one label below, other `*` one label each.
pub(crate) fn mihomo_domain(text: &str) -> Result<Dest, String> {
    if let Some(rest) = text.strip_prefix("+.") {
        return suffix(rest);
    }
    if let Some(rest) = text.strip_prefix('.') {
        return name(rest, "a domain").map(Dest::Below);
    }
    if let Some(rest) = text.strip_prefix("*.") {
        if !rest.contains('*') {
            return name(rest, "a domain").map(Dest::OneBelow);
        }
    }
    if text.contains('*') {
        let labels: Vec<String> = normal(text).split('.').map(str::to_string).collect();
        let valid = labels.iter().all(|l| l == "*" || is_name(l));
        return if valid {
            Ok(Dest::Labels(labels))
        } else {
            Err(format!("{text:?}: '*' must stand for a whole label"))
        };
    }
    exact(text)
}

/// Which list format plain lines of a file are in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ListKind {
    Domain,
    Cidr,
}

/// Reads a rule list: one entry per line (`#` starts a comment), plain
/// entries in `kind`'s format (a domain list takes addresses and networks
/// too), or classical `TYPE,value` lines
/// (`DOMAIN`, `DOMAIN-SUFFIX`, `DOMAIN-KEYWORD`, `DOMAIN-WILDCARD`,
/// `IP-CIDR`, `IP-CIDR6`); mihomo's YAML form (`payload:` then `- 'entry'`)
/// too. A bad line is reported with the file and its line number.
pub(crate) fn read_list(path: &Path, kind: ListKind) -> Result<Vec<Dest>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut entries = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() || line == "payload:" {
            continue;
        }
        let line = line
            .strip_prefix("- ")
            .map_or(line, |l| l.trim().trim_matches(|c| c == '\'' || c == '"'));
        let parsed = match line.split_once(',') {
            Some((kind, rest)) => classical(kind.trim(), rest),
            None => match kind {
                // An address or a network is never a name: take it as one.
                ListKind::Domain => cidr(line).or_else(|_| mihomo_domain(line)),
                ListKind::Cidr => cidr(line),
            },
        };
        entries.push(parsed.map_err(|e| format!("{}:{}: {e}", path.display(), n + 1))?);
    }
    Ok(entries)
}

fn classical(kind: &str, rest: &str) -> Result<Dest, String> {
    // `IP-CIDR,10.0.0.0/8,no-resolve`: options after the value are not ours.
    let value = rest.split(',').next().unwrap_or("").trim();
    match kind.to_ascii_uppercase().as_str() {
        "DOMAIN" => exact(value),
        "DOMAIN-SUFFIX" => suffix(value),
        "DOMAIN-KEYWORD" => keyword(value),
        "DOMAIN-WILDCARD" => glob(value),
        "IP-CIDR" | "IP-CIDR6" => cidr(value),
        other => Err(format!(
            "{other} lines are not supported in a list (DOMAIN, DOMAIN-SUFFIX, \
             DOMAIN-KEYWORD, DOMAIN-WILDCARD, IP-CIDR, IP-CIDR6 are)"
        )),
    }
}

/// `*` any run of characters (dots too), `?` exactly one.
pub(crate) fn glob_matches(pattern: &[u8], name: &[u8]) -> bool {
    // Iterative with one backtrack point: linear in practice, no recursion.
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, n));
                p += 1;
            }
            Some(&c) if c == b'?' || c == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    p = sp + 1;
                    n = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// A label-by-label glob: as many labels, each `*` or equal.
pub(crate) fn labels_match(pattern: &[String], name: &str) -> bool {
    let mut labels = name.split('.');
    for want in pattern {
        match labels.next() {
            Some(label) if want == "*" || want == label => {}
            _ => return false,
        }
    }
    labels.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_matches(b"api-*.example.com", b"api-1.example.com"));
        assert!(glob_matches(b"*.example.com", b"a.b.example.com"));
        assert!(!glob_matches(b"*.example.com", b"example.com"));
        assert!(glob_matches(b"a?c", b"abc") && !glob_matches(b"a?c", b"ac"));
        assert!(glob_matches(b"*", b"") && glob_matches(b"**x", b"yyx"));
        assert!(labels_match(
            &["*".into(), "*".into(), "ms".into()],
            "a.b.ms"
        ));
        assert!(!labels_match(&["*".into(), "ms".into()], "a.b.ms"));
    }

    #[test]
    fn mihomo_domain_entries() {
        assert_eq!(
            mihomo_domain("+.Corp.test").unwrap(),
            Dest::Suffix("corp.test".into())
        );
        assert_eq!(
            mihomo_domain(".corp.test").unwrap(),
            Dest::Below("corp.test".into())
        );
        assert_eq!(
            mihomo_domain("*.corp.test").unwrap(),
            Dest::OneBelow("corp.test".into())
        );
        assert_eq!(
            mihomo_domain("*.*.ms.test").unwrap(),
            Dest::Labels(vec!["*".into(), "*".into(), "ms".into(), "test".into()])
        );
        assert_eq!(
            mihomo_domain("a.test.").unwrap(),
            Dest::Exact("a.test".into())
        );
        assert!(mihomo_domain("a b").is_err() && mihomo_domain("a*b.test").is_err());
    }

    #[test]
    fn cidrs() {
        assert_eq!(
            cidr("10.1.2.3/8").unwrap(),
            Dest::Cidr("10.0.0.0/8".parse().unwrap())
        );
        assert_eq!(
            cidr("10.1.2.3").unwrap(),
            Dest::Cidr("10.1.2.3/32".parse().unwrap())
        );
        assert_eq!(
            cidr("::ffff:10.0.0.0/104").unwrap(),
            Dest::Cidr("10.0.0.0/8".parse().unwrap())
        );
        assert!(cidr("10.0.0.0/33").is_err() && cidr("corp").is_err());
    }

    #[test]
    fn lists_with_their_line_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("list.yaml");
        std::fs::write(
            &path,
            "payload:\n  - '+.corp.test'\n  # a comment\n  - 'DOMAIN-KEYWORD,track'\n\n  - 'IP-CIDR,10.0.0.0/8,no-resolve'\n",
        )
        .unwrap();
        let entries = read_list(&path, ListKind::Domain).unwrap();
        assert_eq!(
            entries,
            [
                Dest::Suffix("corp.test".into()),
                Dest::Keyword("track".into()),
                Dest::Cidr("10.0.0.0/8".parse().unwrap())
            ]
        );
        std::fs::write(&path, "10.0.0.0/8\nfd00::/8\n300.1.1.1\n").unwrap();
        let e = read_list(&path, ListKind::Cidr).unwrap_err();
        assert!(
            e.ends_with(
                "list.yaml:3: \"300.1.1.1\" is not an address or a network (10.0.0.0/8, fd00::/8)"
            ),
            "{e}"
        );
        std::fs::write(&path, "GEOIP,CN\n").unwrap();
        let e = read_list(&path, ListKind::Cidr).unwrap_err();
        assert!(
            e.contains("list.yaml:1: GEOIP lines are not supported"),
            "{e}"
        );
        let e = read_list(&dir.path().join("missing"), ListKind::Cidr).unwrap_err();
        assert!(e.starts_with("cannot read "), "{e}");
    }
}
