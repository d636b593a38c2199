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

/// `scheme://host[:port]/path` or `host:port`: host, port, method, path.
fn parse_target(target: &str) -> Result<(String, u16, String, Option<String>), String> {
    let uri: http::Uri = target
        .parse()
        .map_err(|_| format!("{target:?} is neither a URL nor host:port"))?;
    let authority = uri.authority().ok_or_else(|| {
        format!("{target:?} names no host (write https://host/path or host:port)")
    })?;
    let explicit = ferryman_http::upstream::port_of(authority)?;
    let host = authority.host().to_string();
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
