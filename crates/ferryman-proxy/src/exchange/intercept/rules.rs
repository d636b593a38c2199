//! Which CONNECT targets are intercepted.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use ferryman_http::config::Invalid;
use serde::{Deserialize, Serialize};

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

impl InterceptConfig {
    pub fn validate(&self, errors: &mut Vec<Invalid>) {
        if self.mode == InterceptMode::Listed && self.hosts.is_empty() {
            errors.push(Invalid::new(
                "intercept.hosts",
                "mode = \"listed\" needs at least one host pattern",
            ));
        }
        for (key, patterns) in [
            ("intercept.hosts", &self.hosts),
            ("intercept.passthrough", &self.passthrough),
        ] {
            for (i, pattern) in patterns.iter().enumerate() {
                let name = pattern.trim_start_matches("*.").trim_start_matches('.');
                if name.is_empty() || name.contains(['*', '/', ':', ' ']) {
                    errors.push(Invalid::new(
                        format!("{key}[{i}]"),
                        "must be a host name, \".suffix\" or \"*.suffix\"",
                    ));
                }
            }
        }
    }
}

/// The rules in force, plus the hosts learnt to pass through.
pub(crate) struct Rules {
    config: InterceptConfig,
    /// Shared with the rules that replace these: a CONNECT still holding
    /// the old rules records what it learns where the new ones see it.
    pinned: Arc<Mutex<HashSet<String>>>,
}

impl Rules {
    pub(crate) fn new(mut config: InterceptConfig) -> Self {
        for pattern in config.hosts.iter_mut().chain(config.passthrough.iter_mut()) {
            *pattern = pattern.to_ascii_lowercase();
        }
        Self {
            config,
            pinned: Arc::default(),
        }
    }

    /// Rules for `config` that keep the hosts learnt so far.
    pub(crate) fn replaced(&self, config: InterceptConfig) -> Self {
        Rules {
            pinned: self.pinned.clone(),
            ..Rules::new(config)
        }
    }

    pub(crate) fn intercepts(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if self.lock().contains(&host) {
            return false;
        }
        if self.config.passthrough.iter().any(|p| matches(p, &host)) {
            return false;
        }
        match self.config.mode {
            InterceptMode::All => true,
            InterceptMode::None => false,
            InterceptMode::Listed => self.config.hosts.iter().any(|p| matches(p, &host)),
        }
    }

    /// The client refused our certificate for `host`.
    pub(crate) fn rejected_by_client(&self, host: &str) {
        if !self.config.auto_passthrough {
            return;
        }
        if self.lock().insert(host.to_ascii_lowercase()) {
            tracing::info!(%host, "a client rejected ferryman's certificate (pinning?); passing this host through from now on");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.pinned.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn matches(pattern: &str, host: &str) -> bool {
    if let Some(suffix) = pattern.strip_prefix("*.") {
        host.len() > suffix.len() + 1
            && host.ends_with(suffix)
            && host[..host.len() - suffix.len()].ends_with('.')
    } else if let Some(suffix) = pattern.strip_prefix('.') {
        host == suffix
            || (host.ends_with(suffix) && host[..host.len() - suffix.len()].ends_with('.'))
    } else {
        host == pattern
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(mode: InterceptMode, hosts: &[&str], passthrough: &[&str]) -> Rules {
        Rules::new(InterceptConfig {
            mode,
            hosts: hosts.iter().map(|s| s.to_string()).collect(),
            passthrough: passthrough.iter().map(|s| s.to_string()).collect(),
            auto_passthrough: true,
        })
    }

    #[test]
    fn patterns() {
        assert!(matches("a.test", "a.test"));
        assert!(!matches("a.test", "b.a.test"));
        assert!(matches(".a.test", "a.test") && matches(".a.test", "b.a.test"));
        assert!(!matches(".a.test", "ba.test"));
        assert!(matches("*.a.test", "b.a.test") && matches("*.a.test", "c.b.a.test"));
        assert!(!matches("*.a.test", "a.test") && !matches("*.a.test", "ba.test"));
    }

    #[test]
    fn modes_passthrough_and_pinning() {
        let all = rules(InterceptMode::All, &[], &[".bank.test"]);
        assert!(all.intercepts("Example.TEST."));
        assert!(!all.intercepts("www.bank.test"));
        all.rejected_by_client("pinned.test");
        assert!(!all.intercepts("pinned.test"));
        assert!(!rules(InterceptMode::None, &[], &[]).intercepts("a.test"));
        let listed = rules(InterceptMode::Listed, &["*.api.test"], &[]);
        assert!(listed.intercepts("v1.api.test") && !listed.intercepts("other.test"));
    }

    #[test]
    fn replaced_rules_apply_and_share_what_was_learnt() {
        let old = rules(InterceptMode::All, &[], &[]);
        old.rejected_by_client("pinned.test");
        let new = old.replaced(InterceptConfig {
            mode: InterceptMode::Listed,
            hosts: vec![".Listed.test".into()],
            passthrough: vec![],
            auto_passthrough: true,
        });
        assert!(new.intercepts("a.listed.test") && !new.intercepts("other.test"));
        assert!(!new.intercepts("pinned.test"));
        // A CONNECT that began under the old rules learns after the swap.
        old.rejected_by_client("late.listed.test");
        assert!(!new.intercepts("late.listed.test"));
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
        .validate(&mut errors);
        let keys: Vec<_> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["intercept.hosts[1]", "intercept.passthrough[0]"]);
    }
}
