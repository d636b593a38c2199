//! Where traffic goes: what is known about a connection or a request
//! ([`Facts`]) in, a [`Verdict`] out: the way out (which may refuse or
//! answer itself), whether to look inside, and the rules that said so.
//! The policy is data: rules compiled once into an index ([`table`]), kept
//! whole in an `ArcSwap` by the caller, so a reload is a pointer swap and a
//! session keeps the policy it started with. It decides and never carries.

mod config;
mod intercept;
mod patterns;
mod table;

use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::path::Path;
use std::sync::Arc;

use ferryman_http::config::Invalid;
use ipnet::IpNet;
use serde::Serialize;

pub use config::{PortSpec, RuleConfig};
pub use intercept::{InterceptConfig, InterceptMode};

use crate::outbound::{Env, Outbound, OutboundConfig, Outbounds};
use patterns::{Dest, ListKind};
use table::{RuleId, Table};

/// What is known when a decision is made. A tunnel has no method or path
/// (its method is CONNECT); `addrs` are the destination's addresses when
/// the caller resolved them because the policy asked ([`Policy::wants_addresses`]).
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub inbound: &'a str,
    pub client: IpAddr,
    pub user: Option<&'a str>,
    /// A name or an address literal (IPv6 with or without brackets).
    pub host: &'a str,
    pub port: u16,
    pub method: Option<&'a str>,
    pub path: Option<&'a str>,
    pub addrs: &'a [IpAddr],
}

/// What the policy decided, and why.
#[derive(Clone, Copy)]
pub struct Verdict<'p> {
    pub outbound: &'p Arc<Outbound>,
    /// The rule that chose the way out (`default` when none did).
    pub rule: &'p Arc<str>,
    pub intercept: bool,
    /// The rule that decided interception.
    pub intercept_rule: &'p Arc<str>,
}

/// A decision as the API and `ferryman route` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Explanation {
    /// What was asked about: `host:port`, and the method and path of a URL.
    pub host: String,
    pub port: u16,
    pub method: String,
    pub path: Option<String>,
    pub outbound: String,
    /// `direct`, `http`, `socks5`, `reject`, `answer` or `group`.
    pub outbound_kind: String,
    pub rule: String,
    pub intercept: bool,
    pub intercept_rule: String,
}

/// A question for [`Policy::explain`]: a URL (`https://host/path`) or a
/// tunnel's `host:port`, with who asks.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub target: String,
    pub inbound: Option<String>,
    pub client: Option<IpAddr>,
    pub user: Option<String>,
    pub method: Option<String>,
}

/// The configuration the policy is compiled from.
pub struct PolicySpec<'a> {
    pub outbounds: &'a [OutboundConfig],
    pub rules: &'a [RuleConfig],
    pub intercept: &'a InterceptConfig,
    /// Where relative rule-list paths start: the config file's directory.
    pub base: &'a Path,
}

/// A compiled rule: its destination matchers live in the table; the rest
/// is checked here, for the rules the table found.
struct Rule {
    name: Arc<str>,
    outbound: Option<usize>,
    intercept: Option<bool>,
    has_destination: bool,
    resolve: bool,
    invert: bool,
    ports: Vec<RangeInclusive<u16>>,
    clients: Vec<IpNet>,
    inbounds: Vec<Box<str>>,
    users: Vec<Box<str>>,
    methods: Vec<Box<str>>,
    paths: Vec<Box<str>>,
}

impl Rule {
    fn others_match(&self, facts: &Facts) -> bool {
        (self.ports.is_empty() || self.ports.iter().any(|r| r.contains(&facts.port)))
            && (self.clients.is_empty() || {
                let client = facts.client.to_canonical();
                self.clients.iter().any(|net| net.contains(&client))
            })
            && (self.inbounds.is_empty() || self.inbounds.iter().any(|i| **i == *facts.inbound))
            && (self.users.is_empty()
                || facts
                    .user
                    .is_some_and(|user| self.users.iter().any(|u| **u == *user)))
            && (self.methods.is_empty()
                || self
                    .methods
                    .iter()
                    .any(|m| m.eq_ignore_ascii_case(facts.method.unwrap_or("CONNECT"))))
            && (self.paths.is_empty()
                || facts
                    .path
                    .is_some_and(|path| self.paths.iter().any(|p| path.starts_with(&**p))))
    }
}

/// The rules and ways out in force.
pub struct Policy {
    rules: Vec<Rule>,
    table: Table,
    /// Rules the table never returns but that may match: those without
    /// destination matchers, and inverted ones. Ascending.
    always: Vec<RuleId>,
    outbounds: Outbounds,
    default_outbound: Arc<Outbound>,
    default_intercept: bool,
    default_rule: Arc<str>,
    /// Some rule matches networks against resolved addresses.
    resolves: bool,
    auto_passthrough: bool,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("rules", &self.rules.len())
            .field("default_outbound", &self.default_outbound.name)
            .field("default_intercept", &self.default_intercept)
            .finish()
    }
}

impl Policy {
    /// Compiles `spec`, reading rule lists; every problem found is
    /// reported, each with its key.
    pub fn compile(spec: PolicySpec, env: &Env) -> Result<Self, Vec<Invalid>> {
        let mut errors = Vec::new();
        let outbounds = Outbounds::build(spec.outbounds, env, &mut errors);
        let mut rules = Vec::new();
        let mut table = Table::default();
        for pattern in spec.intercept.rules(&mut errors) {
            let id = rules.len() as RuleId;
            table.insert(pattern.dest, id);
            rules.push(Rule {
                name: pattern.name.into(),
                intercept: Some(pattern.intercept),
                has_destination: true,
                ..Rule::empty()
            });
        }
        let mut decides_all: [Option<usize>; 2] = [None, None];
        for (i, config) in spec.rules.iter().enumerate() {
            let key = format!("rules[{i}]");
            let id = rules.len() as RuleId;
            let rule = compile_rule(
                &key,
                config,
                id,
                spec.base,
                &outbounds,
                &mut table,
                &mut errors,
            );
            for (slot, decides) in [config.outbound.is_some(), config.intercept.is_some()]
                .into_iter()
                .enumerate()
            {
                if !decides {
                    continue;
                }
                match decides_all[slot] {
                    Some(earlier) => errors.push(Invalid::new(
                        format!("{key}.{}", ["outbound", "intercept"][slot]),
                        format!("is never used: rules[{earlier}] matches everything first"),
                    )),
                    None if config.matches_all() => decides_all[slot] = Some(i),
                    None => {}
                }
            }
            rules.push(rule);
        }
        let always = rules
            .iter()
            .enumerate()
            .filter(|(_, r)| !r.has_destination || r.invert)
            .map(|(i, _)| i as RuleId)
            .collect();
        let resolves = rules.iter().any(|r| r.resolve);
        let default_outbound = match outbounds.get("direct") {
            Some(direct) => direct.clone(),
            None => outbounds.at(0).clone(),
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Self {
            rules,
            table,
            always,
            outbounds,
            default_outbound,
            default_intercept: spec.intercept.default_intercept(),
            default_rule: "default".into(),
            resolves,
            auto_passthrough: spec.intercept.auto_passthrough,
        })
    }

    /// Every tunnel intercepted, everything direct: the policy of a
    /// configuration that says nothing.
    pub fn standard(env: &Env) -> Self {
        let spec = PolicySpec {
            outbounds: &[],
            rules: &[],
            intercept: &InterceptConfig::default(),
            base: Path::new("."),
        };
        match Self::compile(spec, env) {
            Ok(policy) => policy,
            // Nothing to get wrong in an empty configuration.
            Err(errors) => unreachable!("the standard policy compiles: {errors:?}"),
        }
    }

    /// Whether the decision for `facts` depends on the addresses its name
    /// resolves to: resolve them and decide with them.
    pub fn wants_addresses(&self, facts: &Facts) -> bool {
        self.resolves && facts.addrs.is_empty() && host_ip(facts.host).is_none()
    }

    /// Whether a client that refuses ferryman's certificate makes its host
    /// pass through from then on.
    pub fn auto_passthrough(&self) -> bool {
        self.auto_passthrough
    }

    /// A configured way out, by name.
    pub fn outbound(&self, name: &str) -> Option<&Arc<Outbound>> {
        self.outbounds.get(name)
    }

    /// Decides `query` without carrying anything, resolving the name here
    /// (blocking) when a rule matches resolved addresses.
    pub fn explain(&self, query: &Query) -> Result<Explanation, String> {
        let (host, port, method, path) = parse_target(&query.target)?;
        let method = query.method.clone().unwrap_or(method);
        let facts = Facts {
            inbound: query.inbound.as_deref().unwrap_or("http"),
            client: query.client.unwrap_or(IpAddr::from([127, 0, 0, 1])),
            user: query.user.as_deref(),
            host: &host,
            port,
            method: Some(&method),
            path: path.as_deref(),
            addrs: &[],
        };
        let addrs: Vec<IpAddr> = if self.wants_addresses(&facts) {
            use std::net::ToSocketAddrs;
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            (bare, port)
                .to_socket_addrs()
                .map(|found| found.map(|a| a.ip()).collect())
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        let verdict = self.decide(&Facts {
            addrs: &addrs,
            ..facts
        });
        Ok(Explanation {
            outbound: verdict.outbound.name.to_string(),
            outbound_kind: verdict.outbound.kind.to_string(),
            rule: verdict.rule.to_string(),
            intercept: verdict.intercept,
            intercept_rule: verdict.intercept_rule.to_string(),
            host,
            port,
            method,
            path,
        })
    }

    pub fn decide(&self, facts: &Facts) -> Verdict<'_> {
        if self.rules.is_empty() {
            return self.default_verdict();
        }
        let mut hits = Vec::new();
        let host = facts.host.trim_start_matches('[').trim_end_matches(']');
        match host_ip(host) {
            Some(ip) => self.table.address_hits(ip, &mut hits),
            None => {
                let lower;
                let name = if host.bytes().any(|b| b.is_ascii_uppercase()) || host.ends_with('.') {
                    lower = patterns::normal(host);
                    &lower
                } else {
                    host
                };
                self.table.name_hits(name, &mut hits);
                if self.resolves {
                    let before = hits.len();
                    for ip in facts.addrs {
                        self.table.address_hits(*ip, &mut hits);
                    }
                    // A resolved address counts only for the rules that ask.
                    let mut i = before;
                    while i < hits.len() {
                        if self.rules[hits[i] as usize].resolve {
                            i += 1;
                        } else {
                            hits.swap_remove(i);
                        }
                    }
                }
            }
        }
        hits.sort_unstable();
        hits.dedup();
        let mut outbound: Option<(usize, RuleId)> = None;
        let mut intercept: Option<(bool, RuleId)> = None;
        let (mut a, mut b) = (0, 0);
        // Both lists ascend: walk them together, in rule order.
        while outbound.is_none() || intercept.is_none() {
            let id = match (hits.get(a), self.always.get(b)) {
                (Some(&x), Some(&y)) if x == y => {
                    a += 1;
                    b += 1;
                    x
                }
                (Some(&x), Some(&y)) if x < y => {
                    a += 1;
                    x
                }
                (Some(&x), None) => {
                    a += 1;
                    x
                }
                (_, Some(&y)) => {
                    b += 1;
                    y
                }
                (None, None) => break,
            };
            let rule = &self.rules[id as usize];
            let destination = !rule.has_destination || hits.binary_search(&id).is_ok();
            if (destination && rule.others_match(facts)) == rule.invert {
                continue;
            }
            if let (None, Some(way)) = (outbound, rule.outbound) {
                outbound = Some((way, id));
            }
            if let (None, Some(look)) = (intercept, rule.intercept) {
                intercept = Some((look, id));
            }
        }
        let (outbound, rule) = match outbound {
            Some((way, id)) => (self.outbounds.at(way), &self.rules[id as usize].name),
            None => (&self.default_outbound, &self.default_rule),
        };
        let (intercept, intercept_rule) = match intercept {
            Some((look, id)) => (look, &self.rules[id as usize].name),
            None => (self.default_intercept, &self.default_rule),
        };
        Verdict {
            outbound,
            rule,
            intercept,
            intercept_rule,
        }
    }
}

impl Policy {
    fn default_verdict(&self) -> Verdict<'_> {
        Verdict {
            outbound: &self.default_outbound,
            rule: &self.default_rule,
            intercept: self.default_intercept,
            intercept_rule: &self.default_rule,
        }
    }
}

/// `scheme://host[:port]/path` or `host:port`: host, port, method, path.
fn parse_target(target: &str) -> Result<(String, u16, String, Option<String>), String> {
    let uri: http::Uri = target
        .parse()
        .map_err(|_| format!("{target:?} is neither a URL nor host:port"))?;
    let authority = uri.authority().ok_or_else(|| {
        format!("{target:?} names no host (write https://host/path or host:port)")
    })?;
    let (host, explicit) = ferryman_http::upstream::split_authority(authority)?;
    let host = host.to_string();
    match uri.scheme_str() {
        None => {
            let port = explicit.ok_or_else(|| format!("{target:?}: a tunnel needs host:port"))?;
            Ok((host, port, "CONNECT".into(), None))
        }
        Some(scheme) => {
            let default = match scheme {
                "http" | "ws" => 80,
                "https" | "wss" => 443,
                other => return Err(format!("{other}:// URLs are not proxied (http, https)")),
            };
            let path = uri.path().to_string();
            Ok((host, explicit.unwrap_or(default), "GET".into(), Some(path)))
        }
    }
}

/// The address a host literal names, IPv4-mapped ones as IPv4.
fn host_ip(host: &str) -> Option<IpAddr> {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .ok()
        .map(|ip| ip.to_canonical())
}

impl Rule {
    fn empty() -> Self {
        Self {
            name: "".into(),
            outbound: None,
            intercept: None,
            has_destination: false,
            resolve: false,
            invert: false,
            ports: Vec::new(),
            clients: Vec::new(),
            inbounds: Vec::new(),
            users: Vec::new(),
            methods: Vec::new(),
            paths: Vec::new(),
        }
    }
}

fn compile_rule(
    key: &str,
    config: &RuleConfig,
    id: RuleId,
    base: &Path,
    outbounds: &Outbounds,
    table: &mut Table,
    errors: &mut Vec<Invalid>,
) -> Rule {
    let mut dests: Vec<(String, Result<Dest, String>)> = Vec::new();
    let mut each = |field: &str, values: &[String], parse: fn(&str) -> Result<Dest, String>| {
        for (j, value) in values.iter().enumerate() {
            dests.push((format!("{key}.{field}[{j}]"), parse(value)));
        }
    };
    each("domain", &config.domain, patterns::exact);
    each("domain_suffix", &config.domain_suffix, patterns::suffix);
    each("domain_keyword", &config.domain_keyword, patterns::keyword);
    each("domain_wildcard", &config.domain_wildcard, patterns::glob);
    each("ip_cidr", &config.ip_cidr, patterns::cidr);
    for (field, files, kind) in [
        ("domain_list", &config.domain_list, ListKind::Domain),
        ("ip_list", &config.ip_list, ListKind::Cidr),
    ] {
        for (j, file) in files.iter().enumerate() {
            let field = format!("{key}.{field}[{j}]");
            match patterns::read_list(&base.join(file), kind) {
                Ok(entries) => dests.extend(entries.into_iter().map(|d| (field.clone(), Ok(d)))),
                Err(e) => dests.push((field, Err(e))),
            }
        }
    }
    for (field, dest) in dests {
        match dest {
            Ok(dest) => table.insert(dest, id),
            Err(reason) => errors.push(Invalid::new(field, reason)),
        }
    }
    let mut listed = |field: &str, values: &[String], check: fn(&str) -> Result<(), String>| {
        values
            .iter()
            .enumerate()
            .filter_map(|(j, value)| match check(value) {
                Ok(()) => Some(value.clone().into_boxed_str()),
                Err(reason) => {
                    errors.push(Invalid::new(format!("{key}.{field}[{j}]"), reason));
                    None
                }
            })
            .collect::<Vec<_>>()
    };
    let inbounds = listed("inbound", &config.inbound, |_| Ok(()));
    let users = listed("user", &config.user, |_| Ok(()));
    let methods = listed("method", &config.method, |m| {
        http::Method::from_bytes(m.as_bytes())
            .map(|_| ())
            .map_err(|_| format!("{m:?} is not an HTTP method"))
    });
    let paths = listed("path", &config.path, |p| {
        if p.starts_with('/') {
            Ok(())
        } else {
            Err(format!("{p:?} must start with '/'"))
        }
    });
    let mut ports = Vec::new();
    for (j, port) in config.port.iter().enumerate() {
        match port.range() {
            Ok(range) => ports.push(range),
            Err(reason) => errors.push(Invalid::new(format!("{key}.port[{j}]"), reason)),
        }
    }
    let mut clients = Vec::new();
    for (j, client) in config.client.iter().enumerate() {
        match patterns::cidr(client) {
            Ok(Dest::Cidr(net)) => clients.push(net),
            Ok(_) | Err(_) => errors.push(Invalid::new(
                format!("{key}.client[{j}]"),
                format!("{client:?} is not an address or a network (192.168.0.0/16)"),
            )),
        }
    }
    let outbound = config.outbound.as_ref().and_then(|name| {
        let found = outbounds.position(name);
        if found.is_none() {
            errors.push(Invalid::new(
                format!("{key}.outbound"),
                format!(
                    "no outbound is named {name:?} (direct, reject and [[outbounds]] names are)"
                ),
            ));
        }
        found
    });
    if config.outbound.is_none() && config.intercept.is_none() {
        errors.push(Invalid::new(
            key,
            "sets neither outbound nor intercept, so it decides nothing",
        ));
    }
    if config.resolve && config.ip_cidr.is_empty() && config.ip_list.is_empty() {
        errors.push(Invalid::new(
            format!("{key}.resolve"),
            "needs ip_cidr or ip_list to match the resolved addresses against",
        ));
    }
    Rule {
        name: config
            .name
            .clone()
            .unwrap_or_else(|| key.to_string())
            .into(),
        outbound,
        intercept: config.intercept,
        has_destination: config.has_destination(),
        resolve: config.resolve,
        invert: config.invert,
        ports,
        clients,
        inbounds,
        users,
        methods,
        paths,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Default)]
    #[serde(default)]
    struct Spec {
        outbounds: Vec<OutboundConfig>,
        rules: Vec<RuleConfig>,
        intercept: Option<InterceptConfig>,
    }

    fn env() -> Env {
        Env::detached(ferryman_tls::client_config(&[], false).unwrap())
    }

    fn compile_in(text: &str, base: &Path) -> Result<Policy, Vec<String>> {
        let spec: Spec = toml::from_str(text).unwrap();
        let intercept = spec.intercept.unwrap_or_default();
        let spec = PolicySpec {
            outbounds: &spec.outbounds,
            rules: &spec.rules,
            intercept: &intercept,
            base,
        };
        Policy::compile(spec, &env()).map_err(|errors| {
            errors
                .iter()
                .map(|e| format!("{}: {}", e.key, e.reason))
                .collect()
        })
    }

    fn compile(text: &str) -> Policy {
        compile_in(text, Path::new(".")).unwrap()
    }

    /// What a session from `client` as `user` going to `host:port` gets.
    struct Case {
        host: &'static str,
        port: u16,
        client: &'static str,
        user: Option<&'static str>,
        inbound: &'static str,
        path: Option<&'static str>,
        outbound: &'static str,
        rule: &'static str,
        intercept: bool,
    }

    fn case(host: &'static str, outbound: &'static str, rule: &'static str) -> Case {
        Case {
            host,
            port: 443,
            client: "127.0.0.1",
            user: None,
            inbound: "http",
            path: None,
            outbound,
            rule,
            intercept: true,
        }
    }

    fn check(policy: &Policy, cases: &[Case]) {
        for c in cases {
            let facts = Facts {
                inbound: c.inbound,
                client: c.client.parse().unwrap(),
                user: c.user,
                host: c.host,
                port: c.port,
                method: c.path.map(|_| "GET"),
                path: c.path,
                addrs: &[],
            };
            let verdict = policy.decide(&facts);
            assert_eq!(
                (&*verdict.outbound.name, &**verdict.rule, verdict.intercept),
                (c.outbound, c.rule, c.intercept),
                "{}:{} from {} user {:?} path {:?}",
                c.host,
                c.port,
                c.client,
                c.user,
                c.path
            );
        }
    }

    const OFFICE: &str = r#"
        [[outbounds]]
        name = "office"
        kind = "socks5"
        url = "socks5h://127.0.0.1:1080"

        [[outbounds]]
        name = "partner"
        kind = "http"
        url = "http://127.0.0.1:3128"

        [[rules]]
        name = "corp"
        domain_suffix = ["corp.internal"]
        ip_cidr = ["10.20.0.0/16"]
        outbound = "office"

        [[rules]]
        domain = ["api.partner.test"]
        outbound = "partner"

        [[rules]]
        domain_keyword = ["tracker"]
        outbound = "reject"

        [[rules]]
        domain_wildcard = ["cdn-*.media.test"]
        port = [80, "8000-8999"]
        outbound = "partner"

        [[rules]]
        client = ["192.168.0.0/16"]
        user = ["guest"]
        outbound = "reject"

        [[rules]]
        inbound = ["socks5"]
        path = ["/never"]
        outbound = "reject"

        [[rules]]
        name = "not-dev"
        domain_suffix = ["myapp.dev"]
        invert = true
        intercept = false
    "#;

    #[test]
    fn each_matcher_and_first_match_wins() {
        let policy = compile(OFFICE);
        let mut cases = vec![
            case("a.corp.internal", "office", "corp"),
            case("CORP.INTERNAL.", "office", "corp"),
            case("xcorp.internal", "direct", "default"),
            case("10.20.3.4", "office", "corp"),
            case("[::ffff:10.20.3.4]", "office", "corp"),
            case("10.21.3.4", "direct", "default"),
            case("api.partner.test", "partner", "rules[1]"),
            case("www.api.partner.test", "direct", "default"),
            case("my-tracker.test", "reject", "rules[2]"),
            case("cdn-7.media.test", "direct", "default"),
        ];
        for c in &mut cases {
            // Everything but myapp.dev is left alone by the inverted rule.
            c.intercept = false;
        }
        let mut ported = case("cdn-7.media.test", "partner", "rules[3]");
        ported.port = 8080;
        ported.intercept = false;
        cases.push(ported);
        let mut guest = case("anything.test", "reject", "rules[4]");
        (guest.client, guest.user, guest.intercept) = ("192.168.1.9", Some("guest"), false);
        cases.push(guest);
        let mut not_guest = case("anything.test", "direct", "default");
        (not_guest.client, not_guest.user, not_guest.intercept) =
            ("192.168.1.9", Some("alice"), false);
        cases.push(not_guest);
        let mut socks_path = case("x.test", "reject", "rules[5]");
        (socks_path.inbound, socks_path.path, socks_path.intercept) =
            ("socks5", Some("/never/x"), false);
        cases.push(socks_path);
        let mut http_path = case("x.test", "direct", "default");
        (http_path.path, http_path.intercept) = (Some("/never/x"), false);
        cases.push(http_path);
        let mut dev = case("app.myapp.dev", "direct", "default");
        dev.intercept = true;
        cases.push(dev);
        check(&policy, &cases);
        let verdict = policy.decide(&Facts {
            inbound: "http",
            client: "127.0.0.1".parse().unwrap(),
            user: None,
            host: "x.test",
            port: 443,
            method: None,
            path: None,
            addrs: &[],
        });
        assert_eq!(&**verdict.intercept_rule, "not-dev");
    }

    #[test]
    fn outbound_and_intercept_are_decided_by_the_first_rule_that_sets_each() {
        let policy = compile(
            r#"
            [intercept]
            mode = "all"
            passthrough = [".bank.test"]

            [[rules]]
            domain_suffix = ["secure.bank.test"]
            intercept = true
            outbound = "reject"

            [[rules]]
            domain_suffix = ["bank.test"]
            outbound = "reject"

            [[rules]]
            outbound = "direct"
            intercept = false
            "#,
        );
        let mut bank = case("www.bank.test", "reject", "rules[1]");
        bank.intercept = false;
        let mut secure = case("secure.bank.test", "reject", "rules[0]");
        // The [intercept] section's patterns come first.
        secure.intercept = false;
        let mut other = case("other.test", "direct", "rules[2]");
        other.intercept = false;
        check(&policy, &[bank, secure, other]);
        let verdict = policy.decide(&Facts {
            inbound: "http",
            client: "127.0.0.1".parse().unwrap(),
            user: None,
            host: "secure.bank.test",
            port: 443,
            method: None,
            path: None,
            addrs: &[],
        });
        assert_eq!(&**verdict.intercept_rule, "intercept.passthrough[0]");
    }

    #[test]
    fn the_intercept_section_keeps_its_meaning() {
        let listed = compile(
            r#"
            [intercept]
            mode = "listed"
            hosts = ["*.api.test", "exact.test"]
            "#,
        );
        let mut sub = case("v1.api.test", "direct", "default");
        sub.intercept = true;
        let mut apex = case("api.test", "direct", "default");
        apex.intercept = false;
        let mut exact = case("exact.test", "direct", "default");
        exact.intercept = true;
        let mut under = case("a.exact.test", "direct", "default");
        under.intercept = false;
        check(&listed, &[sub, apex, exact, under]);
        let none = compile("[intercept]\nmode = \"none\"\n");
        let mut c = case("x.test", "direct", "default");
        c.intercept = false;
        check(&none, &[c]);
    }

    #[test]
    fn resolved_addresses_count_only_for_rules_that_ask() {
        let policy = compile(
            r#"
            [[rules]]
            ip_cidr = ["10.0.0.0/8"]
            outbound = "reject"

            [[rules]]
            ip_cidr = ["10.1.0.0/16"]
            resolve = true
            outbound = "reject"
            "#,
        );
        let facts = |addrs: &'static [IpAddr]| Facts {
            inbound: "http",
            client: "127.0.0.1".parse().unwrap(),
            user: None,
            host: "name.test",
            port: 80,
            method: None,
            path: None,
            addrs,
        };
        assert!(policy.wants_addresses(&facts(&[])));
        let in_both: &'static [IpAddr] = Box::leak(Box::new([IpAddr::from([10, 1, 2, 3])]));
        assert_eq!(&**policy.decide(&facts(in_both)).rule, "rules[1]");
        let in_first: &'static [IpAddr] = Box::leak(Box::new([IpAddr::from([10, 9, 2, 3])]));
        assert_eq!(&**policy.decide(&facts(in_first)).rule, "default");
        let literal = Facts {
            host: "10.9.9.9",
            ..facts(&[])
        };
        assert!(!policy.wants_addresses(&literal));
        assert_eq!(&**policy.decide(&literal).rule, "rules[0]");
    }

    #[test]
    fn rule_lists_are_read_relative_to_the_config() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("corp.txt"),
            "# office names\n+.corp.test\n.inner.test\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("nets.txt"), "10.20.0.0/16\n").unwrap();
        let text = r#"
            [[rules]]
            domain_list = ["corp.txt"]
            ip_list = ["nets.txt"]
            outbound = "reject"
        "#;
        let policy = compile_in(text, dir.path()).unwrap();
        let mut cases = Vec::new();
        for (host, rule) in [
            ("corp.test", "rules[0]"),
            ("a.corp.test", "rules[0]"),
            ("a.inner.test", "rules[0]"),
            ("inner.test", "default"),
            ("10.20.0.1", "rules[0]"),
        ] {
            let outbound = if rule == "default" {
                "direct"
            } else {
                "reject"
            };
            cases.push(case(host, outbound, rule));
        }
        check(&policy, &cases);
        std::fs::write(dir.path().join("corp.txt"), "ok.test\nnot a name\n").unwrap();
        let errors = compile_in(text, dir.path()).unwrap_err();
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("rules[0].domain_list[0]: ")
                    && e.ends_with("corp.txt:2: \"not a name\" is not a domain name")),
            "{errors:?}"
        );
    }

    #[test]
    fn bad_rules_are_reported_with_their_keys() {
        let errors = compile_in(
            r#"
            [[rules]]
            outbound = "nowhere"
            port = ["9-1", 70000]
            client = ["10.0.0.0/40"]
            method = ["GE T"]
            path = ["nope"]
            ip_cidr = ["10.0.0.1/33"]

            [[rules]]
            domain = ["a.test"]

            [[rules]]
            outbound = "direct"

            [[rules]]
            domain = ["b.test"]
            outbound = "reject"

            [[rules]]
            resolve = true
            intercept = true
            "#,
            Path::new("."),
        )
        .unwrap_err();
        for expected in [
            "rules[0].outbound: no outbound is named \"nowhere\"",
            "rules[0].port[0]: \"9-1\" runs backwards",
            "rules[0].port[1]: 70000 is not a port (0-65535)",
            "rules[0].client[0]: \"10.0.0.0/40\" is not an address or a network",
            "rules[0].method[0]: \"GE T\" is not an HTTP method",
            "rules[0].path[0]: \"nope\" must start with '/'",
            "rules[0].ip_cidr[0]: \"10.0.0.1/33\" is not an address or a network",
            "rules[1]: sets neither outbound nor intercept",
            "rules[3].outbound: is never used: rules[2] matches everything first",
            "rules[4].resolve: needs ip_cidr or ip_list",
        ] {
            assert!(
                errors.iter().any(|e| e.starts_with(expected)),
                "{expected} in {errors:#?}"
            );
        }
    }

    #[test]
    fn queries_name_their_target() {
        let policy = compile(OFFICE);
        let asked = |target: &str| {
            policy.explain(&Query {
                target: target.into(),
                ..Query::default()
            })
        };
        let url = asked("http://api.partner.test/v1?q").unwrap();
        assert_eq!(
            (
                url.port,
                url.method.as_str(),
                url.path.as_deref(),
                url.outbound.as_str()
            ),
            (80, "GET", Some("/v1"), "partner")
        );
        assert_eq!(url.outbound_kind, "http");
        let tunnel = asked("10.20.0.5:22").unwrap();
        assert_eq!(
            (tunnel.method.as_str(), tunnel.rule.as_str()),
            ("CONNECT", "corp")
        );
        assert!(asked("ftp://x.test/").unwrap_err().contains("not proxied"));
        assert!(asked("x.test").unwrap_err().contains("host:port"));
        assert!(asked("x.test:99999").unwrap_err().contains("port number"));
    }
}
