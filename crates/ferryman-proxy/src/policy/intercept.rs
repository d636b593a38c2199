//! The `[intercept]` section: the short way to say which tunnels ferryman
//! looks inside. It is compiled into rules of the one rule table, ahead of
//! the `[[rules]]`: passthrough patterns first (never intercepted), then
//! the listed hosts; the mode sets what applies when no rule says.

use ferryman_http::config::Invalid;
use serde::{Deserialize, Serialize};

use super::patterns::{normal, Dest};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InterceptMode {
    /// Every host (mitmproxy's default).
    All,
    /// No host: every CONNECT is a plain tunnel.
    None,
    /// Only the hosts listed in `hosts`.
    Listed,
}

/// The `[intercept]` section. Patterns: `example.com` (exactly that host),
/// `.example.com` (it and every subdomain), `*.example.com` (subdomains only).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct InterceptConfig {
    pub mode: InterceptMode,
    /// With `mode = "listed"`, the hosts to intercept.
    pub hosts: Vec<String>,
    /// Hosts never intercepted, whatever the mode.
    pub passthrough: Vec<String>,
    /// A host whose client rejects ferryman's certificate (pinning) is
    /// passed through from then on.
    pub auto_passthrough: bool,
}

impl Default for InterceptConfig {
    fn default() -> Self {
        Self {
            mode: InterceptMode::All,
            hosts: Vec::new(),
            passthrough: Vec::new(),
            auto_passthrough: false,
        }
    }
}

/// One pattern of the section, as a rule: its name, what it matches and
/// whether it intercepts.
pub(crate) struct PatternRule {
    pub(crate) name: String,
    pub(crate) dest: Dest,
    pub(crate) intercept: bool,
}

impl InterceptConfig {
    /// Whether a tunnel no rule decides about is intercepted.
    pub(crate) fn default_intercept(&self) -> bool {
        self.mode == InterceptMode::All
    }

    /// The section's patterns as rules, passthrough first; errors name the
    /// pattern's key.
    pub(crate) fn rules(&self, errors: &mut Vec<Invalid>) -> Vec<PatternRule> {
        if self.mode == InterceptMode::Listed && self.hosts.is_empty() {
            errors.push(Invalid::new(
                "intercept.hosts",
                "mode = \"listed\" needs at least one host pattern",
            ));
        }
        let listed = if self.mode == InterceptMode::Listed {
            &self.hosts[..]
        } else {
            &[]
        };
        let mut rules = Vec::new();
        for (key, patterns, intercept) in [
            ("intercept.passthrough", &self.passthrough[..], false),
            ("intercept.hosts", listed, true),
        ] {
            for (i, pattern) in patterns.iter().enumerate() {
                let name = format!("{key}[{i}]");
                match dest(pattern) {
                    Some(dest) => rules.push(PatternRule {
                        name,
                        dest,
                        intercept,
                    }),
                    None => errors.push(Invalid::new(
                        name,
                        "must be a host name, \".suffix\" or \"*.suffix\"",
                    )),
                }
            }
        }
        rules
    }
}

fn dest(pattern: &str) -> Option<Dest> {
    let pattern = normal(pattern);
    let (bare, make): (&str, fn(String) -> Dest) = if let Some(s) = pattern.strip_prefix("*.") {
        (s, Dest::Below)
    } else if let Some(s) = pattern.strip_prefix('.') {
        (s, Dest::Suffix)
    } else {
        (&pattern, Dest::Exact)
    };
    let valid = !bare.is_empty()
        && bare
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    valid.then(|| make(bare.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_and_their_kinds() {
        assert_eq!(dest("A.test"), Some(Dest::Exact("a.test".into())));
        assert_eq!(dest(".a.test"), Some(Dest::Suffix("a.test".into())));
        assert_eq!(dest("*.a.test"), Some(Dest::Below("a.test".into())));
        assert_eq!(dest("*"), None);
        assert_eq!(dest("http://x"), None);
    }

    #[test]
    fn bad_patterns_are_named() {
        let mut errors = Vec::new();
        InterceptConfig {
            mode: InterceptMode::Listed,
            hosts: vec!["a.test".into(), "*".into()],
            passthrough: vec!["http://x".into()],
            auto_passthrough: false,
        }
        .rules(&mut errors);
        let keys: Vec<_> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["intercept.passthrough[0]", "intercept.hosts[1]"]);
    }
}
