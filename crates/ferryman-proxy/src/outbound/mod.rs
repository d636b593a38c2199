//! How traffic leaves. A way out is a [`Connect`]or that gives a byte
//! stream to a destination by a deadline (direct, an upstream HTTP or SOCKS5
//! proxy, a failover group), or a refusal or a local answer. Dialling
//! (resolution, Happy Eyeballs, the loop guard) is [`ferryman_http::dial`]'s. Which way a
//! session takes is the policy's decision; what is carried over the stream
//! is the exchange's.

mod agents;
pub(crate) mod config;
pub(crate) mod direct;
mod group;
mod http_proxy;
mod socks5;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use ferryman_http::config::Invalid;
use ferryman_http::upstream::Connector;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use config::ProxyUrl;
pub use config::{OutboundConfig, OutboundKind};
use ferryman_http::dial::{OwnAddrs, Source};
use ferryman_tunnel::{Gateway, Via};

/// What connectors need from the process around them: its own listening
/// addresses (the loop guard), how to check a TLS proxy's certificate, and
/// the tunnel's gateway with the groups its agents may join.
#[derive(Clone)]
pub struct Env {
    pub(crate) own: OwnAddrs,
    pub(crate) tls: Arc<rustls::ClientConfig>,
    pub(crate) gateway: Option<Arc<Gateway>>,
    pub(crate) agent_groups: Vec<String>,
}

impl Env {
    /// The same, checking TLS proxies with `tls`.
    pub fn with_tls(self, tls: Arc<rustls::ClientConfig>) -> Self {
        Self { tls, ..self }
    }

    /// The same, with these agent groups (each an outbound of its name).
    pub fn with_agent_groups(self, groups: Vec<String>) -> Self {
        Self {
            agent_groups: groups,
            ..self
        }
    }

    /// For checking a configuration or explaining a decision without
    /// carrying traffic: no listener is known as a loop, and agent groups
    /// are outbounds that carry nothing.
    pub fn detached(tls: Arc<rustls::ClientConfig>) -> Self {
        Self {
            own: OwnAddrs::default(),
            tls,
            gateway: None,
            agent_groups: Vec::new(),
        }
    }
}

/// How a tunnel agent reaches its gateway: straight, or through the HTTP
/// proxy `via` (`http://[user:password@]host:port`, CONNECT; `https://`
/// for TLS to the proxy), checked with `tls` when it is reached over TLS.
pub fn egress(via: Option<&str>, tls: &Arc<rustls::ClientConfig>) -> Result<Connector, String> {
    let own = OwnAddrs::default();
    match via {
        None => Ok(Arc::new(direct::Direct::new(
            "direct",
            Source::default(),
            own,
        ))),
        Some(url) => {
            let url =
                ProxyUrl::parse(url, &["http", "https"]).map_err(|e| format!("--via: {e}"))?;
            Ok(Arc::new(http_proxy::HttpProxy::new(
                "via", url, false, tls, own,
            )))
        }
    }
}

/// A named way out.
pub struct Outbound {
    pub(crate) name: Arc<str>,
    /// The configured kind, for people: `direct`, `http`, `group`...
    pub(crate) kind: &'static str,
    pub(crate) way: Way,
    /// How it carries datagrams (SOCKS5 UDP), if it can.
    pub(crate) datagrams: Option<Datagrams>,
}

/// Ways out that carry UDP.
#[derive(Clone)]
pub(crate) enum Datagrams {
    /// From a socket of this machine's.
    Direct,
    /// On a stream through the tunnel's agents.
    Agents(Arc<Gateway>, Via),
}

impl Outbound {
    pub fn name(&self) -> &str {
        &self.name
    }
}

pub(crate) enum Way {
    Connect(Connector),
    Refuse(Refusal),
    Answer(Answer),
}

/// A request or tunnel refused by rule.
pub(crate) struct Refusal {
    pub(crate) status: StatusCode,
    pub(crate) message: Option<Arc<str>>,
}

/// A response ferryman gives itself.
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

/// The ways out of a configuration, by name and by position.
pub(crate) struct Outbounds {
    list: Vec<Arc<Outbound>>,
    by_name: HashMap<Arc<str>, usize>,
}

impl Outbounds {
    /// `direct` and `reject` exist unless an entry of that name replaces
    /// them; errors name the entry (`outbounds[i]...`).
    pub(crate) fn build(configs: &[OutboundConfig], env: &Env, errors: &mut Vec<Invalid>) -> Self {
        let mut built = Self {
            list: Vec::new(),
            by_name: HashMap::new(),
        };
        let mut seen = HashMap::new();
        for (i, config) in configs.iter().enumerate() {
            let key = format!("outbounds[{i}]");
            config.validate(&key, errors);
            if let Some(first) = seen.insert(config.name(), i) {
                errors.push(Invalid::new(
                    format!("{key}.name"),
                    format!(
                        "{:?} is already the name of outbounds[{first}]",
                        config.name()
                    ),
                ));
            }
        }
        for builtin in ["direct", "reject"] {
            if !seen.contains_key(builtin) {
                let (way, datagrams) = match builtin {
                    "direct" => (
                        Way::Connect(Arc::new(direct::Direct::new(
                            builtin,
                            Source::default(),
                            env.own.clone(),
                        ))),
                        Some(Datagrams::Direct),
                    ),
                    _ => (
                        Way::Refuse(Refusal {
                            status: StatusCode::FORBIDDEN,
                            message: None,
                        }),
                        None,
                    ),
                };
                built.add(builtin, builtin, way, datagrams);
            }
        }
        for group in &env.agent_groups {
            if !seen.contains_key(group.as_str()) && built.get(group).is_none() {
                let via = Via::Group(group.clone());
                let (way, datagrams) = agents(group, via, env);
                built.add(group, "agents", way, datagrams);
            }
        }
        let mut groups = Vec::new();
        for (i, config) in configs.iter().enumerate() {
            let no_tunnel = env.gateway.is_none() && env.agent_groups.is_empty();
            if config.kind == OutboundKind::Agents && no_tunnel {
                errors.push(Invalid::new(
                    format!("outbounds[{i}].kind"),
                    "kind agents needs a [tunnel] section with agents: this ferryman is no gateway",
                ));
                continue;
            }
            match way(config, env) {
                Some((way, datagrams)) => {
                    built.add(config.name(), config.kind.name(), way, datagrams)
                }
                None if config.kind == OutboundKind::Group => groups.push(i),
                None => {}
            }
        }
        // Groups name other outbounds, groups included: build each once its
        // members exist; what is left names an unknown outbound or a cycle.
        while !groups.is_empty() {
            let before = groups.len();
            groups.retain(|&i| {
                let (name, members) = (&configs[i].name, &configs[i].members);
                let ready = members
                    .iter()
                    .all(|m| built.by_name.contains_key(m.as_str()));
                if ready {
                    let connectors = built.members(i, members, errors);
                    let group = Arc::new(group::Group::new(name, connectors));
                    built.add(name, "group", Way::Connect(group), None);
                }
                !ready
            });
            if groups.len() == before {
                for &i in &groups {
                    {
                        for (j, member) in configs[i].members.iter().enumerate() {
                            if !built.by_name.contains_key(member.as_str()) {
                                let known = seen.contains_key(member.as_str());
                                errors.push(Invalid::new(
                                    format!("outbounds[{i}].members[{j}]"),
                                    if known {
                                        format!("{member:?} is a group that cannot be built: it leads back here or names an unknown outbound")
                                    } else {
                                        format!("no outbound is named {member:?}")
                                    },
                                ));
                            }
                        }
                    }
                }
                break;
            }
        }
        built
    }

    fn add(&mut self, name: &str, kind: &'static str, way: Way, datagrams: Option<Datagrams>) {
        let name: Arc<str> = name.into();
        self.by_name.insert(name.clone(), self.list.len());
        self.list.push(Arc::new(Outbound {
            name,
            kind,
            way,
            datagrams,
        }));
    }

    /// The connectors of group `i`'s members; a member that refuses or
    /// answers cannot carry anything.
    fn members(&self, i: usize, members: &[String], errors: &mut Vec<Invalid>) -> Vec<Connector> {
        let mut connectors = Vec::new();
        for (j, member) in members.iter().enumerate() {
            let Some(outbound) = self.get(member) else {
                continue;
            };
            match &outbound.way {
                Way::Connect(connector) => connectors.push(connector.clone()),
                _ => errors.push(Invalid::new(
                    format!("outbounds[{i}].members[{j}]"),
                    format!("{member:?} refuses or answers itself; a group's members must lead somewhere"),
                )),
            }
        }
        connectors
    }

    pub(crate) fn position(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Arc<Outbound>> {
        self.position(name).map(|i| &self.list[i])
    }

    pub(crate) fn at(&self, i: usize) -> &Arc<Outbound> {
        &self.list[i]
    }
}

/// Through agents: a connector when the gateway runs; when only checking
/// a configuration, one that refuses.
fn agents(name: &str, via: Via, env: &Env) -> (Way, Option<Datagrams>) {
    match &env.gateway {
        Some(gateway) => (
            Way::Connect(Arc::new(agents::Agents::new(
                name,
                via.clone(),
                gateway.clone(),
            ))),
            Some(Datagrams::Agents(gateway.clone(), via)),
        ),
        None => (
            Way::Refuse(Refusal {
                status: StatusCode::BAD_GATEWAY,
                message: Some("the tunnel's gateway is not running".into()),
            }),
            None,
        ),
    }
}

/// The way out an entry describes, and how it carries datagrams; None for
/// a group, which needs the others, or an entry `validate` refused.
fn way(config: &OutboundConfig, env: &Env) -> Option<(Way, Option<Datagrams>)> {
    let name = config.name();
    let connector: Connector = match config.kind {
        OutboundKind::Direct => {
            let source = Source {
                bind: config.bind,
                interface: config.interface.clone(),
            };
            let direct = direct::Direct::new(name, source, env.own.clone());
            return Some((Way::Connect(Arc::new(direct)), Some(Datagrams::Direct)));
        }
        OutboundKind::Http => {
            let url = ProxyUrl::parse(config.url.as_deref()?, config.schemes()).ok()?;
            let absolute_form = config.absolute_form.unwrap_or(true);
            let tls = &env.tls;
            Arc::new(http_proxy::HttpProxy::new(
                name,
                url,
                absolute_form,
                tls,
                env.own.clone(),
            ))
        }
        OutboundKind::Socks5 => {
            let url = ProxyUrl::parse(config.url.as_deref()?, config.schemes()).ok()?;
            Arc::new(socks5::Socks5Proxy::new(name, url, env.own.clone()))
        }
        OutboundKind::Reject => {
            let status = config.status.and_then(|s| StatusCode::from_u16(s).ok());
            return Some((
                Way::Refuse(Refusal {
                    status: status.unwrap_or(StatusCode::FORBIDDEN),
                    message: config.message.as_deref().map(Arc::from),
                }),
                None,
            ));
        }
        OutboundKind::Answer => {
            let mut headers = HeaderMap::new();
            for (name, value) in &config.headers {
                if let (Ok(name), Ok(value)) = (
                    HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_str(value),
                ) {
                    headers.append(name, value);
                }
            }
            let status = config.status.and_then(|s| StatusCode::from_u16(s).ok());
            return Some((
                Way::Answer(Answer {
                    status: status.unwrap_or(StatusCode::OK),
                    headers,
                    body: Bytes::from(config.body.clone().unwrap_or_default()),
                }),
                None,
            ));
        }
        OutboundKind::Agents => {
            let via = match (&config.group, &config.agent) {
                (_, Some(agent)) => Via::Agent(agent.clone()),
                (Some(group), None) => Via::Group(group.clone()),
                (None, None) => return None,
            };
            return Some(agents(name, via, env));
        }
        OutboundKind::Group => return None,
    };
    Some((Way::Connect(connector), None))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Env {
        Env::detached(ferryman_tls::client_config(&[], false).unwrap())
    }

    fn parse(toml_text: &str) -> Vec<OutboundConfig> {
        #[derive(serde::Deserialize)]
        struct File {
            outbounds: Vec<OutboundConfig>,
        }
        toml::from_str::<File>(toml_text).unwrap().outbounds
    }

    #[test]
    fn builtins_groups_and_errors() {
        let configs = parse(
            r#"
            [[outbounds]]
            name = "corp"
            kind = "http"
            url = "http://me:pw@127.0.0.1:3128"
            [[outbounds]]
            name = "both"
            kind = "group"
            members = ["nested", "direct"]
            [[outbounds]]
            name = "nested"
            kind = "group"
            members = ["corp"]
            "#,
        );
        let mut errors = Vec::new();
        let built = Outbounds::build(&configs, &env(), &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        for name in ["direct", "reject", "corp", "both", "nested"] {
            assert!(built.get(name).is_some(), "{name}");
        }
        assert!(matches!(built.get("reject").unwrap().way, Way::Refuse(_)));

        let bad = parse(
            r#"
            [[outbounds]]
            name = "loop-a"
            kind = "group"
            members = ["loop-b"]
            [[outbounds]]
            name = "loop-b"
            kind = "group"
            members = ["loop-a", "ghost"]
            [[outbounds]]
            name = "no"
            kind = "group"
            members = ["reject"]
            [[outbounds]]
            name = "no"
            kind = "socks5"
            url = "http://127.0.0.1:1080"
            "#,
        );
        let mut errors = Vec::new();
        Outbounds::build(&bad, &env(), &mut errors);
        let shown: Vec<String> = errors
            .iter()
            .map(|e| format!("{}: {}", e.key, e.reason))
            .collect();
        for expected in [
            "outbounds[3].name: \"no\" is already the name of outbounds[2]",
            "outbounds[3].url: the scheme must be socks5 or socks5h",
            "outbounds[2].members[0]: \"reject\" refuses or answers itself",
            "outbounds[0].members[0]: \"loop-b\" is a group that cannot be built",
            "outbounds[1].members[1]: no outbound is named \"ghost\"",
        ] {
            assert!(
                shown.iter().any(|s| s.starts_with(expected)),
                "{expected} in {shown:#?}"
            );
        }
    }
}
