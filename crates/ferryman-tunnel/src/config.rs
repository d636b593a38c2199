//! The gateway's `[tunnel]` section: where agents connect, who may, and
//! the services published through them.

use std::net::SocketAddr;
use std::path::PathBuf;

use ferryman_http::config::Invalid;
use serde::{Deserialize, Serialize};

use crate::carrier::CarrierConfig;
use crate::wire;

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TunnelConfig {
    /// Where agents connect (TLS, then a WebSocket upgrade); unset, this
    /// ferryman is no gateway.
    pub listen: Option<SocketAddr>,
    /// The upgrade's path.
    pub path: String,
    /// Names agents reach the gateway by, besides the listening address,
    /// for the certificate ferryman's CA issues it.
    pub names: Vec<String>,
    /// A certificate chain and key of the gateway's own instead (PEM).
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Windows and heartbeat of the carriers (`[tunnel.carrier]`).
    pub carrier: CarrierConfig,
    /// Who may connect, and to which groups.
    pub agents: Vec<AgentToken>,
    /// Ports of the gateway that reach services behind agents.
    pub services: Vec<ServiceConfig>,
}

/// A token agents present, and the groups it lets them join.
#[derive(Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentToken {
    #[serde(serialize_with = "redacted")]
    pub token: String,
    pub groups: Vec<String>,
}

impl std::fmt::Debug for AgentToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentToken")
            .field("token", &"<redacted>")
            .field("groups", &self.groups)
            .finish()
    }
}

fn redacted<S: serde::Serializer>(_: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str("<redacted>")
}

/// A TCP port on the gateway that reaches `target` from an agent's side.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    pub listen: SocketAddr,
    /// Any agent of this group...
    #[serde(default)]
    pub group: Option<String>,
    /// ...or this agent.
    #[serde(default)]
    pub agent: Option<String>,
    /// `host:port`, resolved and dialled by the agent.
    pub target: String,
}

/// Which agents a stream may go through.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Via {
    Group(String),
    Agent(String),
}

impl std::fmt::Display for Via {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Via::Group(group) => write!(f, "group {group}"),
            Via::Agent(agent) => write!(f, "agent {agent}"),
        }
    }
}

impl ServiceConfig {
    pub fn via(&self) -> Via {
        match (&self.group, &self.agent) {
            (_, Some(agent)) => Via::Agent(agent.clone()),
            (Some(group), None) => Via::Group(group.clone()),
            (None, None) => Via::Group(String::new()),
        }
    }

    /// The target's host and port.
    pub fn destination(&self) -> Option<(&str, u16)> {
        let (host, port) = self.target.rsplit_once(':')?;
        let port = port.parse().ok().filter(|p| *p != 0)?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        (!host.is_empty()).then_some((host, port))
    }
}

impl TunnelConfig {
    /// Every group some token lets agents join.
    pub fn groups(&self) -> Vec<&str> {
        let mut groups: Vec<&str> = self
            .agents
            .iter()
            .flat_map(|a| a.groups.iter().map(String::as_str))
            .collect();
        groups.sort_unstable();
        groups.dedup();
        groups
    }

    pub fn path(&self) -> &str {
        if self.path.is_empty() {
            wire::DEFAULT_PATH
        } else {
            &self.path
        }
    }

    pub fn validate(&self, errors: &mut Vec<Invalid>) {
        if !self.path.is_empty() && !self.path.starts_with('/') {
            errors.push(Invalid::new("tunnel.path", "must start with /"));
        }
        if self.cert.is_some() != self.key.is_some() {
            errors.push(Invalid::new(
                "tunnel.cert",
                "tunnel.cert and tunnel.key go together",
            ));
        }
        if let Err(e) = self.carrier.validate("tunnel.carrier.") {
            let (key, reason) = e.split_once(": ").unwrap_or(("tunnel", &e));
            errors.push(Invalid::new(key, reason));
        }
        for (i, agent) in self.agents.iter().enumerate() {
            if agent.token.len() < 16 {
                errors.push(Invalid::new(
                    format!("tunnel.agents[{i}].token"),
                    "must be at least 16 characters",
                ));
            }
            if agent.groups.is_empty() {
                errors.push(Invalid::new(
                    format!("tunnel.agents[{i}].groups"),
                    "must name at least one group",
                ));
            }
            for group in &agent.groups {
                if !wire::valid_agent_id(group) {
                    errors.push(Invalid::new(
                        format!("tunnel.agents[{i}].groups"),
                        format!("{group:?}: a group is 1-64 letters, digits, '.', '-' or '_'"),
                    ));
                }
            }
            if self.agents[..i].iter().any(|a| a.token == agent.token) {
                errors.push(Invalid::new(
                    format!("tunnel.agents[{i}].token"),
                    "is the same as an earlier one",
                ));
            }
        }
        let groups = self.groups();
        for (i, service) in self.services.iter().enumerate() {
            let key = |k: &str| format!("tunnel.services[{i}].{k}");
            if self.listen.is_none() {
                errors.push(Invalid::new(
                    key("listen"),
                    "published services need tunnel.listen, where their agents connect",
                ));
            }
            match (&service.group, &service.agent) {
                (Some(_), Some(_)) | (None, None) => {
                    errors.push(Invalid::new(key("group"), "set either group or agent"))
                }
                (Some(group), None) if !groups.contains(&group.as_str()) => {
                    errors.push(Invalid::new(
                        key("group"),
                        format!("no tunnel.agents token lets agents join {group:?}"),
                    ))
                }
                _ => {}
            }
            if service.destination().is_none() {
                errors.push(Invalid::new(
                    key("target"),
                    format!("{:?} is not host:port", service.target),
                ));
            }
            if self.services[..i]
                .iter()
                .any(|s| s.listen == service.listen)
                || Some(service.listen) == self.listen
            {
                errors.push(Invalid::new(
                    key("listen"),
                    format!("{} is already used", service.listen),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(toml_text: &str) -> Vec<String> {
        let config: TunnelConfig = toml::from_str(toml_text).unwrap();
        let mut errors = Vec::new();
        config.validate(&mut errors);
        errors
            .iter()
            .map(|e| format!("{}: {}", e.key, e.reason))
            .collect()
    }

    #[test]
    fn the_issues_example_is_valid() {
        let example = r#"
            listen = "127.0.0.1:8443"
            [[agents]]
            token = "office-token-0123456789"
            groups = ["office"]
            [[services]]
            listen = "127.0.0.1:9100"
            group = "office"
            target = "127.0.0.1:3000"
        "#;
        assert_eq!(errors(example), Vec::<String>::new());
    }

    #[test]
    fn each_mistake_names_its_key() {
        let bad = r#"
            [[agents]]
            token = "short"
            groups = []
            [[services]]
            listen = "127.0.0.1:9100"
            group = "nobody"
            target = "no-port"
        "#;
        let found = errors(bad);
        for expected in [
            "tunnel.agents[0].token: must be at least 16 characters",
            "tunnel.agents[0].groups: must name at least one group",
            "tunnel.services[0].listen: published services need tunnel.listen",
            "tunnel.services[0].group: no tunnel.agents token lets agents join \"nobody\"",
            "tunnel.services[0].target: \"no-port\" is not host:port",
        ] {
            assert!(
                found.iter().any(|f| f.starts_with(expected)),
                "{expected} not in {found:?}"
            );
        }
    }

    #[test]
    fn tokens_never_show() {
        let config: TunnelConfig = toml::from_str(
            "[[agents]]\ntoken = \"office-token-0123456789\"\ngroups = [\"office\"]",
        )
        .unwrap();
        assert!(!format!("{config:?}").contains("0123456789"));
        assert!(!toml::to_string(&config).unwrap().contains("0123456789"));
    }
}
