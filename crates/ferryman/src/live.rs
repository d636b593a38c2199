//! The configuration in force, and putting a new one in force while
//! ferryman runs: after a change of the file, a SIGHUP, `POST
//! /api/config/reload` or a `PATCH /api/config`. A new configuration is
//! checked whole (rules, lists and listeners included) before anything
//! changes; a bad one is refused with its keys and reasons and the running
//! one stays. What cannot change without a restart is said, not applied.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::json;
use toml::Table;

use crate::config::{apply_override, Config, ConfigError};

/// Keys whose change needs a restart: what ferryman opened or spawned
/// once at start (the data directory, the CA, capture's store and
/// threads, the admin listener, the worker threads, logging).
const FIXED: [&str; 10] = [
    "data_dir",
    "workers",
    "tls.ca_cert",
    "tls.ca_key",
    "tls.leaf_cache_size",
    "capture",
    "sessions",
    "admin",
    "log",
    "shutdown_grace",
];

/// Where the configuration comes from, each source over the one before.
struct Source {
    file: Option<PathBuf>,
    /// `--set` and the flags that stand for it.
    command_line: Vec<String>,
}

struct State {
    /// Settings changed through the API since start; they outlast reloads.
    api: Vec<String>,
    table: Table,
    config: Config,
    hash: String,
    since: SystemTime,
    last: Option<Outcome>,
}

/// How a reload went.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub at_ms: u64,
    /// What asked for it: `file`, `signal`, `api`.
    pub trigger: &'static str,
    pub ok: bool,
    /// Why the configuration was refused.
    pub error: Option<String>,
    /// Keys that changed but need a restart to take effect.
    pub restart_needed: Vec<String>,
    /// The hash of the configuration in force after it.
    pub hash: String,
}

pub struct Live {
    source: Source,
    state: Mutex<State>,
    proxy: ferryman_proxy::Control,
    /// The tunnel's gateway, and the CA that issues its certificate.
    gateway: Arc<ferryman_tunnel::Gateway>,
    ca: Arc<ferryman_tls::CertificateAuthority>,
    reloads_ok: metrics::Counter,
    reloads_failed: metrics::Counter,
}

impl Live {
    /// The configuration `config` (from `table`) is in force in `proxy`
    /// and `gateway`.
    pub fn new(
        file: Option<PathBuf>,
        command_line: Vec<String>,
        (table, config): (Table, Config),
        proxy: ferryman_proxy::Control,
        (gateway, ca): (
            Arc<ferryman_tunnel::Gateway>,
            Arc<ferryman_tls::CertificateAuthority>,
        ),
    ) -> Arc<Self> {
        Arc::new(Self {
            source: Source { file, command_line },
            state: Mutex::new(State {
                api: Vec::new(),
                hash: hash(&config),
                table,
                config,
                since: SystemTime::now(),
                last: None,
            }),
            proxy,
            gateway,
            ca,
            reloads_ok: metrics::counter!("ferryman_config_reloads_total", "result" => "ok"),
            reloads_failed: metrics::counter!("ferryman_config_reloads_total", "result" => "failed"),
        })
    }

    /// Reads every source again and puts the result in force if it is
    /// valid; the outcome is logged and kept for `/api/status`.
    pub fn reload(&self, trigger: &'static str) -> Outcome {
        let mut state = self.lock();
        let table = Config::table(self.source.file.as_deref(), &self.sources(&state.api));
        let outcome = self.attempt(&mut state, table, trigger);
        match &outcome.error {
            None if outcome.restart_needed.is_empty() => {
                tracing::info!(trigger, hash = %outcome.hash, "configuration reloaded")
            }
            None => tracing::warn!(
                trigger,
                hash = %outcome.hash,
                restart_needed = %outcome.restart_needed.join(", "),
                "configuration reloaded; some changes need a restart"
            ),
            Some(error) => tracing::error!(
                trigger,
                "configuration refused, the one in force stays:\n{error}"
            ),
        }
        outcome
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sources(&self, api: &[String]) -> Vec<String> {
        let mut all = self.source.command_line.clone();
        all.extend(api.iter().cloned());
        all
    }

    /// Checks `table` whole, then puts it in force.
    fn attempt(
        &self,
        state: &mut State,
        table: Result<Table, ConfigError>,
        trigger: &'static str,
    ) -> Outcome {
        let applied = table
            .and_then(|table| Ok((Config::from_table(table.clone())?, table)))
            .map_err(|e| e.to_string())
            .and_then(|(config, table)| {
                let restart_needed = self.apply(&state.config, &config, &table)?;
                Ok((config, table, restart_needed))
            });
        let at_ms = unix_ms(SystemTime::now());
        let outcome = match applied {
            Ok((config, table, restart_needed)) => {
                self.reloads_ok.increment(1);
                state.hash = hash(&config);
                state.since = SystemTime::now();
                state.config = config;
                state.table = table;
                Outcome {
                    at_ms,
                    trigger,
                    ok: true,
                    error: None,
                    restart_needed,
                    hash: state.hash.clone(),
                }
            }
            Err(error) => {
                self.reloads_failed.increment(1);
                Outcome {
                    at_ms,
                    trigger,
                    ok: false,
                    error: Some(error),
                    restart_needed: Vec::new(),
                    hash: state.hash.clone(),
                }
            }
        };
        state.last = Some(outcome.clone());
        outcome
    }

    /// Puts `new` in force where it differs from `old`; returns the keys
    /// that changed but need a restart.
    fn apply(&self, old: &Config, new: &Config, table: &Table) -> Result<Vec<String>, String> {
        let tls_changed = old.tls.upstream_ca_files != new.tls.upstream_ca_files
            || old.tls.upstream_insecure != new.tls.upstream_insecure;
        let tls = if tls_changed {
            Some(new.upstream_tls()?)
        } else {
            None
        };
        let env = match &tls {
            Some(tls) => self.proxy.env().with_tls(tls.clone()),
            None => self.proxy.env(),
        };
        let policy = new
            .policy(table, &base_dir(self.source.file.as_deref()), &env)
            .map_err(|e| e.to_string())?;
        let gateway = ferryman_tunnel::Gateway::prepare(&new.tunnel, self.ca.clone())?;
        self.proxy.apply(new.settings(policy))?;
        self.gateway.apply(gateway);
        self.proxy.set_upstream(new.upstream.clone(), tls);
        Ok(changed_fixed_keys(old, new))
    }
}

/// Where rule lists named in the configuration are found.
pub fn base_dir(file: Option<&Path>) -> PathBuf {
    file.and_then(Path::parent)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// The keys among [`FIXED`] whose values differ.
fn changed_fixed_keys(old: &Config, new: &Config) -> Vec<String> {
    let (old, new) = (
        serde_json::to_value(old).unwrap_or_default(),
        serde_json::to_value(new).unwrap_or_default(),
    );
    FIXED
        .iter()
        .filter(|key| {
            let pointer = format!("/{}", key.replace('.', "/"));
            old.pointer(&pointer) != new.pointer(&pointer)
        })
        .map(|key| key.to_string())
        .collect()
}

/// SHA-256 of the configuration as JSON, which names it in the status and
/// the logs: two instances with equal hashes run the same configuration.
fn hash(config: &Config) -> String {
    let json = serde_json::to_vec(config).unwrap_or_default();
    let digest = ring::digest::digest(&ring::digest::SHA256, &json);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn key_of(setting: &str) -> &str {
    setting
        .split_once('=')
        .map_or(setting, |(key, _)| key)
        .trim()
}

impl ferryman_admin::Settings for Live {
    fn effective(&self) -> serde_json::Value {
        let state = self.lock();
        serde_json::to_value(&state.config).unwrap_or_else(|e| json!({ "error": e.to_string() }))
    }

    fn update(&self, settings: &[String]) -> Result<Vec<String>, String> {
        if settings.is_empty() {
            return Err("no settings given: send {\"set\": [\"key=value\", ...]}".into());
        }
        let keys: Vec<String> = settings.iter().map(|s| key_of(s).to_owned()).collect();
        let under =
            |key: &str, section: &str| key == section || key.starts_with(&format!("{section}."));
        let fixed: Vec<&str> = keys
            .iter()
            .map(String::as_str)
            .filter(|key| FIXED.iter().any(|f| under(key, f)))
            .collect();
        if !fixed.is_empty() {
            return Err(format!(
                "{} cannot change while ferryman runs; edit the config file and restart. Nothing was changed.",
                fixed.join(", ")
            ));
        }
        // Moving a listener from the API could leave nobody able to reach
        // it; the file says where ferryman listens.
        let listeners: Vec<&str> = keys
            .iter()
            .map(String::as_str)
            .filter(|key| key.ends_with(".listen"))
            .collect();
        if !listeners.is_empty() {
            return Err(format!(
                "{} cannot change while ferryman runs from the API; edit the config file and reload it (SIGHUP or POST /api/config/reload). Nothing was changed.",
                listeners.join(", ")
            ));
        }
        let mut state = self.lock();
        let mut table = state.table.clone();
        for setting in settings {
            apply_override(&mut table, setting).map_err(|e| e.to_string())?;
        }
        let outcome = self.attempt(&mut state, Ok(table), "api");
        match outcome.error {
            Some(error) => Err(error),
            None => {
                state.api.extend(settings.iter().cloned());
                tracing::info!(keys = %keys.join(","), "configuration changed through the admin API");
                Ok(keys)
            }
        }
    }

    fn reload(&self) -> Result<serde_json::Value, String> {
        let outcome = Live::reload(self, "api");
        match &outcome.error {
            Some(error) => Err(error.clone()),
            None => Ok(serde_json::to_value(outcome).unwrap_or_default()),
        }
    }

    fn status(&self) -> serde_json::Value {
        let state = self.lock();
        json!({
            "hash": state.hash,
            "since_ms": unix_ms(state.since),
            "file": self.source.file.as_ref().map(|f| f.display().to_string()),
            "last_reload": state.last,
            "tasks": self.proxy.alive_tasks(),
        })
    }

    fn route(&self, query: &ferryman_proxy::Query) -> Result<serde_json::Value, String> {
        let settings = self.proxy.settings();
        let explained = settings.policy().explain(query)?;
        serde_json::to_value(explained).map_err(|e| e.to_string())
    }
}
