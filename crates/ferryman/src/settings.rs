//! The configuration as the admin API sees it: shown with secrets
//! redacted, and changed while running where a setting allows it.

use std::sync::{Arc, Mutex};

use ferryman_proxy::Interception;
use toml::Table;

use crate::config::{apply_override, Config};

/// Sections that take effect without a restart. The intercept rules are
/// read at every CONNECT; everything else is wired in at start.
const LIVE: [&str; 1] = ["intercept"];

pub struct LiveSettings {
    /// The table the running config came from, and that config.
    state: Mutex<(Table, Config)>,
    interception: Option<Arc<Interception>>,
}

impl LiveSettings {
    pub fn new(table: Table, config: Config, interception: Option<Arc<Interception>>) -> Self {
        Self {
            state: Mutex::new((table, config)),
            interception,
        }
    }
}

fn key_of(setting: &str) -> &str {
    setting
        .split_once('=')
        .map_or(setting, |(key, _)| key)
        .trim()
}

impl ferryman_admin::Settings for LiveSettings {
    fn effective(&self) -> serde_json::Value {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        serde_json::to_value(&state.1)
            .unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }))
    }

    fn update(&self, settings: &[String]) -> Result<Vec<String>, String> {
        if settings.is_empty() {
            return Err("no settings given: send {\"set\": [\"key=value\", ...]}".into());
        }
        let keys: Vec<String> = settings.iter().map(|s| key_of(s).to_owned()).collect();
        let fixed: Vec<&str> = keys
            .iter()
            .map(String::as_str)
            .filter(|key| !LIVE.iter().any(|live| key.split('.').next() == Some(live)))
            .collect();
        if !fixed.is_empty() {
            return Err(format!(
                "{} cannot change while ferryman runs (only {}.* can); edit the config file and restart. Nothing was changed.",
                fixed.join(", "),
                LIVE.join(".*, ")
            ));
        }
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut table = state.0.clone();
        for setting in settings {
            apply_override(&mut table, setting).map_err(|e| e.to_string())?;
        }
        let config = Config::from_table(table.clone()).map_err(|e| e.to_string())?;
        if let Some(interception) = &self.interception {
            interception.set_rules(config.intercept.clone());
        }
        tracing::info!(keys = %keys.join(","), "configuration changed through the admin API");
        *state = (table, config);
        Ok(keys)
    }
}
