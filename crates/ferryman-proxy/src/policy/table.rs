//! The destination index: which rules a name or an address matches,
//! found without looking at each rule. Names are looked up label by label
//! in one hash map (`a.b.test`, then `b.test`, then `test`), networks in a
//! prefix trie; only keywords and globs are scanned, and those lists are
//! short in practice. A lookup costs a few hash probes whatever the number
//! of rules.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use prefix_trie::PrefixMap;

use super::patterns::{glob_matches, labels_match, Dest};

/// Rules by position in the table; u32 keeps the index lists small.
pub(crate) type RuleId = u32;

#[derive(Default)]
struct NameHits {
    exact: Vec<RuleId>,
    /// This name and below.
    suffix: Vec<RuleId>,
    /// Strictly below.
    below: Vec<RuleId>,
    /// Exactly one label below.
    one_below: Vec<RuleId>,
}

#[derive(Default)]
pub(crate) struct Table {
    names: HashMap<Box<str>, NameHits>,
    keywords: Vec<(Box<str>, RuleId)>,
    globs: Vec<(Box<str>, RuleId)>,
    label_globs: Vec<(Vec<String>, RuleId)>,
    v4: PrefixMap<Ipv4Net, Vec<RuleId>>,
    v6: PrefixMap<Ipv6Net, Vec<RuleId>>,
}

impl Table {
    pub(crate) fn insert(&mut self, dest: Dest, rule: RuleId) {
        let mut name = |name: String, field: fn(&mut NameHits) -> &mut Vec<RuleId>| {
            let hits = self.names.entry(name.into_boxed_str()).or_default();
            add(field(hits), rule);
        };
        match dest {
            Dest::Exact(n) => name(n, |h| &mut h.exact),
            Dest::Suffix(n) => name(n, |h| &mut h.suffix),
            Dest::Below(n) => name(n, |h| &mut h.below),
            Dest::OneBelow(n) => name(n, |h| &mut h.one_below),
            Dest::Keyword(k) => self.keywords.push((k.into_boxed_str(), rule)),
            Dest::Glob(g) => self.globs.push((g.into_boxed_str(), rule)),
            Dest::Labels(l) => self.label_globs.push((l, rule)),
            Dest::Cidr(IpNet::V4(net)) => add(self.v4.entry(net).or_default(), rule),
            Dest::Cidr(IpNet::V6(net)) => add(self.v6.entry(net).or_default(), rule),
        }
    }

    /// Adds to `hits` every rule whose destination matchers match `name`
    /// (normalised: lowercase, no trailing dot).
    pub(crate) fn name_hits(&self, name: &str, hits: &mut Vec<RuleId>) {
        if let Some(found) = self.names.get(name) {
            hits.extend(&found.exact);
            hits.extend(&found.suffix);
        }
        let mut rest = name;
        let mut depth = 0;
        while let Some((_, parent)) = rest.split_once('.') {
            depth += 1;
            if let Some(found) = self.names.get(parent) {
                hits.extend(&found.suffix);
                hits.extend(&found.below);
                if depth == 1 {
                    hits.extend(&found.one_below);
                }
            }
            rest = parent;
        }
        for (keyword, rule) in &self.keywords {
            if name.contains(&**keyword) {
                hits.push(*rule);
            }
        }
        for (glob, rule) in &self.globs {
            if glob_matches(glob.as_bytes(), name.as_bytes()) {
                hits.push(*rule);
            }
        }
        for (labels, rule) in &self.label_globs {
            if labels_match(labels, name) {
                hits.push(*rule);
            }
        }
    }

    /// Adds to `hits` every rule with a network containing `ip`.
    pub(crate) fn address_hits(&self, ip: IpAddr, hits: &mut Vec<RuleId>) {
        match ip.to_canonical() {
            IpAddr::V4(v4) => {
                for rules in self.v4.cover_values(&Ipv4Net::from(v4)) {
                    hits.extend(rules);
                }
            }
            IpAddr::V6(v6) => {
                for rules in self.v6.cover_values(&Ipv6Net::from(v6)) {
                    hits.extend(rules);
                }
            }
        }
    }
}

fn add(rules: &mut Vec<RuleId>, rule: RuleId) {
    if rules.last() != Some(&rule) {
        rules.push(rule);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hits_of(table: &Table, name: &str) -> Vec<RuleId> {
        let mut hits = Vec::new();
        table.name_hits(name, &mut hits);
        hits.sort_unstable();
        hits
    }

    #[test]
    fn names_by_kind() {
        let mut table = Table::default();
        table.insert(Dest::Exact("a.corp.test".into()), 0);
        table.insert(Dest::Suffix("corp.test".into()), 1);
        table.insert(Dest::Below("corp.test".into()), 2);
        table.insert(Dest::OneBelow("corp.test".into()), 3);
        table.insert(Dest::Keyword("orp".into()), 4);
        table.insert(Dest::Glob("*.c?rp.test".into()), 5);
        table.insert(
            Dest::Labels(vec!["*".into(), "*".into(), "corp".into(), "test".into()]),
            6,
        );
        assert_eq!(hits_of(&table, "corp.test"), [1, 4]);
        assert_eq!(hits_of(&table, "a.corp.test"), [0, 1, 2, 3, 4, 5]);
        assert_eq!(hits_of(&table, "b.a.corp.test"), [1, 2, 4, 5, 6]);
        assert_eq!(hits_of(&table, "xcorp.test"), [4]);
        assert_eq!(hits_of(&table, "other.test"), Vec::<RuleId>::new());
    }

    #[test]
    fn networks_cover_addresses() {
        let mut table = Table::default();
        table.insert(Dest::Cidr("10.0.0.0/8".parse().unwrap()), 0);
        table.insert(Dest::Cidr("10.20.0.0/16".parse().unwrap()), 1);
        table.insert(Dest::Cidr("fd00::/8".parse().unwrap()), 2);
        let hits = |ip: &str| {
            let mut hits = Vec::new();
            table.address_hits(ip.parse().unwrap(), &mut hits);
            hits.sort_unstable();
            hits
        };
        assert_eq!(hits("10.20.1.1"), [0, 1]);
        assert_eq!(hits("10.21.1.1"), [0]);
        assert_eq!(hits("::ffff:10.20.0.1"), [0, 1]);
        assert_eq!(hits("fd12::1"), [2]);
        assert_eq!(hits("192.168.1.1"), Vec::<RuleId>::new());
    }
}
