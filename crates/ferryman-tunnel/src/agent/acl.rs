//! What an agent may dial. Names are checked as asked, and then every
//! address they resolve to, so a name cannot lead to an address the list
//! refuses (DNS rebinding): the agent dials only addresses that passed.
//!
//! Entries: an address or CIDR (`10.20.0.0/16`, `::1`), an exact name
//! (`git.corp.internal`), `*.corp.internal` (names under it) or
//! `.corp.internal` (it and names under it). `--deny` wins over `--allow`;
//! with any `--allow`, only what it lists. Whatever the lists say, the
//! agent's own loopback, link-local and cloud metadata addresses are
//! refused unless an address or CIDR inside them is allowed explicitly.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

/// Ranges refused unless allowed by an entry inside them.
const PROTECTED: &[(&str, &str)] = &[
    ("127.0.0.0/8", "the agent's loopback"),
    ("::1/128", "the agent's loopback"),
    ("0.0.0.0/8", "this host"),
    ("::/128", "this host"),
    ("169.254.0.0/16", "link-local (cloud metadata)"),
    ("fe80::/10", "link-local"),
    ("fd00:ec2::254/128", "cloud metadata"),
    ("100.100.100.200/32", "cloud metadata"),
];

#[derive(Debug, Clone)]
enum Entry {
    Net(IpNet),
    Name(String),
    /// Names under it, and it too when `apex`.
    Under {
        suffix: String,
        apex: bool,
    },
}

impl Entry {
    fn parse(text: &str) -> Result<Entry, String> {
        let text = text.trim();
        if let Ok(net) = text.parse::<IpNet>() {
            return Ok(Entry::Net(net.trunc()));
        }
        if let Ok(ip) = text
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            return Ok(Entry::Net(IpNet::from(ip.to_canonical())));
        }
        let (name, under, apex) = if let Some(rest) = text.strip_prefix("*.") {
            (rest, true, false)
        } else if let Some(rest) = text.strip_prefix('.') {
            (rest, true, true)
        } else {
            (text, false, false)
        };
        let valid = !name.is_empty()
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if !valid {
            return Err(format!(
                "{text:?} is neither an address, a CIDR nor a name (name, *.name or .name)"
            ));
        }
        let name = name.to_ascii_lowercase();
        Ok(if under {
            Entry::Under { suffix: name, apex }
        } else {
            Entry::Name(name)
        })
    }

    fn matches_name(&self, host: &str) -> bool {
        match self {
            Entry::Net(_) => false,
            Entry::Name(name) => host == name,
            Entry::Under { suffix, apex } => {
                (*apex && host == suffix)
                    || host
                        .strip_suffix(suffix.as_str())
                        .is_some_and(|head| head.ends_with('.'))
            }
        }
    }

    fn net(&self) -> Option<&IpNet> {
        match self {
            Entry::Net(net) => Some(net),
            _ => None,
        }
    }
}

impl std::fmt::Display for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Entry::Net(net) => net.fmt(f),
            Entry::Name(name) => f.write_str(name),
            Entry::Under {
                suffix,
                apex: false,
            } => write!(f, "*.{suffix}"),
            Entry::Under { suffix, apex: true } => write!(f, ".{suffix}"),
        }
    }
}

/// An agent's allow and deny lists.
#[derive(Debug, Clone, Default)]
pub struct Acl {
    allow: Vec<Entry>,
    deny: Vec<Entry>,
}

impl Acl {
    /// The lists as given on the command line or in the agent's file; an
    /// entry that is none of the forms is an error naming it.
    pub fn parse(allow: &[String], deny: &[String]) -> Result<Acl, String> {
        let parse = |list: &[String], flag: &str| {
            list.iter()
                .map(|e| Entry::parse(e).map_err(|why| format!("--{flag}: {why}")))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Acl {
            allow: parse(allow, "allow")?,
            deny: parse(deny, "deny")?,
        })
    }

    /// Whether `host` (a name or an address literal) can be allowed at all,
    /// before resolving it: a denied name is refused without a lookup.
    pub fn check_name(&self, host: &str) -> Result<(), String> {
        if is_address(host) {
            return Ok(());
        }
        let host = host.to_ascii_lowercase();
        match self.deny.iter().find(|e| e.matches_name(&host)) {
            Some(entry) => Err(format!("{host} is denied by --deny {entry}")),
            None => Ok(()),
        }
    }

    /// The addresses `host` resolved to that may be dialled; when none may,
    /// why the first was refused.
    pub fn check(&self, host: &str, addrs: &[SocketAddr]) -> Result<Vec<SocketAddr>, String> {
        self.check_name(host)?;
        let host = host.to_ascii_lowercase();
        let name_allowed = !is_address(&host) && self.allow.iter().any(|e| e.matches_name(&host));
        let mut first_refusal = None;
        let allowed: Vec<SocketAddr> = addrs
            .iter()
            .filter_map(|addr| match self.check_address(addr.ip(), name_allowed) {
                Ok(()) => Some(SocketAddr::new(addr.ip().to_canonical(), addr.port())),
                Err(why) => {
                    first_refusal.get_or_insert(why);
                    None
                }
            })
            .collect();
        if allowed.is_empty() {
            return Err(first_refusal.unwrap_or_else(|| format!("{host} has no address")));
        }
        Ok(allowed)
    }

    fn check_address(&self, ip: IpAddr, name_allowed: bool) -> Result<(), String> {
        let ip = ip.to_canonical();
        if let Some(entry) = self
            .deny
            .iter()
            .filter_map(Entry::net)
            .find(|n| n.contains(&ip))
        {
            return Err(format!("{ip} is denied by --deny {entry}"));
        }
        if let Some((range, what)) = protected(ip) {
            let explicit = self
                .allow
                .iter()
                .filter_map(Entry::net)
                .any(|n| n.contains(&ip) && range.contains(n));
            if !explicit {
                return Err(format!(
                    "{ip} is {what} ({range}): refused unless allowed explicitly (--allow {ip})"
                ));
            }
            return Ok(());
        }
        let listed = self
            .allow
            .iter()
            .filter_map(Entry::net)
            .any(|n| n.contains(&ip));
        if self.allow.is_empty() || name_allowed || listed {
            Ok(())
        } else {
            Err(format!("{ip} is not in the agent's --allow list"))
        }
    }
}

fn is_address(host: &str) -> bool {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .is_ok()
}

fn protected(ip: IpAddr) -> Option<(IpNet, &'static str)> {
    PROTECTED.iter().find_map(|(range, what)| {
        let range: IpNet = range.parse().ok()?;
        range.contains(&ip).then_some((range, *what))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(allow: &[&str], deny: &[&str]) -> Acl {
        let owned = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Acl::parse(&owned(allow), &owned(deny)).unwrap()
    }

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter()
            .map(|a| SocketAddr::new(a.parse().unwrap(), 80))
            .collect()
    }

    fn ips(result: Result<Vec<SocketAddr>, String>) -> Vec<String> {
        result.unwrap().iter().map(|a| a.ip().to_string()).collect()
    }

    #[test]
    fn by_default_everything_but_the_agents_own_and_metadata_addresses() {
        let open = Acl::default();
        assert_eq!(
            ips(open.check("git.corp", &addrs(&["10.1.2.3"]))),
            ["10.1.2.3"]
        );
        for refused in [
            "127.0.0.1",
            "::1",
            "::ffff:127.0.0.1",
            "169.254.169.254",
            "0.0.0.0",
            "fe80::1",
            "fd00:ec2::254",
            "100.100.100.200",
        ] {
            let why = open.check(refused, &addrs(&[refused])).unwrap_err();
            assert!(
                why.contains("refused unless allowed explicitly"),
                "{refused}: {why}"
            );
        }
    }

    #[test]
    fn a_protected_address_needs_an_entry_inside_its_range() {
        assert_eq!(
            ips(acl(&["127.0.0.1"], &[]).check("127.0.0.1", &addrs(&["127.0.0.1"]))),
            ["127.0.0.1"]
        );
        // Everything, or a name, is not explicit about loopback.
        assert!(acl(&["0.0.0.0/0"], &[])
            .check("x", &addrs(&["127.0.0.1"]))
            .is_err());
        assert!(acl(&["localhost"], &[])
            .check("localhost", &addrs(&["127.0.0.1"]))
            .is_err());
    }

    #[test]
    fn a_name_is_dialled_only_at_the_addresses_that_pass() {
        let list = acl(&["10.0.0.0/8"], &[]);
        let both = addrs(&["192.168.1.1", "10.9.9.9"]);
        assert_eq!(ips(list.check("mixed.corp", &both)), ["10.9.9.9"]);
        let why = list
            .check("out.corp", &addrs(&["192.168.1.1"]))
            .unwrap_err();
        assert!(why.contains("not in the agent's --allow list"), "{why}");
        // A deny among the answers removes just that one.
        let list = acl(&[], &["10.9.0.0/16"]);
        assert_eq!(ips(list.check("mixed.corp", &both)), ["192.168.1.1"]);
    }

    #[test]
    fn names_allow_their_addresses_but_never_protected_ones() {
        let list = acl(&["*.corp.internal"], &[]);
        assert_eq!(
            ips(list.check("git.corp.internal", &addrs(&["10.1.1.1"]))),
            ["10.1.1.1"]
        );
        assert!(list.check("corp.internal", &addrs(&["10.1.1.1"])).is_err());
        assert!(list
            .check("evil.corp.internal", &addrs(&["169.254.169.254"]))
            .is_err());
        let apex = acl(&[".corp.internal"], &[]);
        assert!(apex.check("corp.internal", &addrs(&["10.1.1.1"])).is_ok());
        assert!(apex
            .check("a.b.corp.internal", &addrs(&["10.1.1.1"]))
            .is_ok());
        assert!(apex.check("xcorp.internal", &addrs(&["10.1.1.1"])).is_err());
    }

    #[test]
    fn deny_wins_and_is_checked_before_resolving() {
        let list = acl(&[".corp.internal"], &["secret.corp.internal"]);
        let why = list.check_name("Secret.Corp.Internal").unwrap_err();
        assert!(why.contains("--deny secret.corp.internal"), "{why}");
        assert!(list.check_name("git.corp.internal").is_ok());
    }

    #[test]
    fn bad_entries_are_named() {
        let err = Acl::parse(&["10.0.0.0/33".into()], &[]).unwrap_err();
        assert!(err.starts_with("--allow: \"10.0.0.0/33\""), "{err}");
        assert!(Acl::parse(&[], &["a..b".into()]).is_err());
    }
}
