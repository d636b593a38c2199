//! The configuration: a TOML file, then `--set key.path=value` overrides,
//! checked as a whole before anything starts.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferryman_admin::AdminConfig;
use ferryman_capture::CaptureConfig;
use ferryman_http::config::{humantime_serde, Invalid};
use ferryman_http::UpstreamConfig;
use ferryman_proxy::{InterceptConfig, OutboundConfig, ProxyConfig, RuleConfig, Socks5Config};
use ferryman_tunnel::TunnelConfig;
use serde::{Deserialize, Serialize};
use toml::{Table, Value};

use crate::cli::LogFormat;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where ferryman keeps its state; created if missing.
    pub data_dir: PathBuf,
    /// Worker threads, each with its own event loop; 0 means one per core.
    pub workers: usize,
    /// On SIGINT/SIGTERM, how long in-flight exchanges and tunnels may take to finish.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    pub proxy: ProxyConfig,
    pub socks5: Socks5Config,
    pub upstream: UpstreamConfig,
    pub tls: TlsConfig,
    pub intercept: InterceptConfig,
    /// Named ways out besides `direct` and `reject`.
    pub outbounds: Vec<OutboundConfig>,
    /// Ordered rules: the first that matches decides.
    pub rules: Vec<RuleConfig>,
    pub capture: CaptureConfig,
    pub sessions: SessionsConfig,
    pub admin: AdminConfig,
    pub log: LogConfig,
    /// The reverse tunnel's gateway: agents, published services.
    pub tunnel: TunnelConfig,
}

/// The connection table.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionsConfig {
    /// How long a closed session stays listed as closed.
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    /// Closed sessions kept in the history after that.
    pub history: usize,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        Self {
            linger: Duration::from_secs(5),
            history: 1000,
        }
    }
}

/// The certificate authority used for interception.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// A CA certificate (PEM) to use instead of ferryman's own; needs `ca_key`.
    pub ca_cert: Option<PathBuf>,
    /// The private key (PEM) of `ca_cert`.
    pub ca_key: Option<PathBuf>,
    /// Minted leaf certificates kept in memory.
    pub leaf_cache_size: u64,
    /// PEM files of CAs to trust for upstream servers, besides the webpki
    /// roots and the system's store.
    pub upstream_ca_files: Vec<PathBuf>,
    /// Accept any upstream certificate (like curl -k).
    pub upstream_insecure: bool,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            ca_cert: None,
            ca_key: None,
            leaf_cache_size: 10_000,
            upstream_ca_files: Vec::new(),
            upstream_insecure: false,
        }
    }
}

impl TlsConfig {
    fn validate(&self, errors: &mut Vec<Invalid>) {
        match (&self.ca_cert, &self.ca_key) {
            (Some(_), None) => errors.push(Invalid::new("tls.ca_cert", "needs tls.ca_key as well")),
            (None, Some(_)) => errors.push(Invalid::new("tls.ca_key", "needs tls.ca_cert as well")),
            _ => {}
        }
        if self.leaf_cache_size == 0 {
            errors.push(Invalid::new("tls.leaf_cache_size", "must be at least 1"));
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("ferryman-data"),
            workers: 0,
            shutdown_grace: Duration::from_secs(10),
            proxy: ProxyConfig::default(),
            socks5: Socks5Config::default(),
            upstream: UpstreamConfig::default(),
            tls: TlsConfig::default(),
            intercept: InterceptConfig::default(),
            outbounds: Vec::new(),
            rules: Vec::new(),
            capture: CaptureConfig::default(),
            sessions: SessionsConfig::default(),
            admin: AdminConfig::default(),
            log: LogConfig::default(),
            tunnel: TunnelConfig::default(),
        }
    }
}

/// Why the configuration was refused; says which key, its value and why.
#[derive(Debug)]
pub struct ConfigError(Vec<String>);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, line) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "config error: {line}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

fn refuse(line: impl Into<String>) -> ConfigError {
    ConfigError(vec![line.into()])
}

impl Config {
    /// ferryman's certificate authority: the configured one, or its own in
    /// the data directory, created on first use.
    pub fn open_ca(&self) -> Result<ferryman_tls::CertificateAuthority, String> {
        let configured = self.tls.ca_cert.as_deref().zip(self.tls.ca_key.as_deref());
        ferryman_tls::CertificateAuthority::open(
            &self.data_dir.join("ca"),
            configured,
            self.tls.leaf_cache_size,
        )
        .map_err(|e| format!("certificate authority: {e}"))
    }

    /// Starts capture as configured; None when it is off.
    pub fn start_capture(&self) -> Result<Option<ferryman_capture::Capture>, String> {
        if !self.capture.enabled {
            return Ok(None);
        }
        ferryman_capture::Capture::start(self.capture.clone(), &self.data_dir).map(Some)
    }

    /// How upstream servers are checked over TLS; reads the CA files.
    pub fn upstream_tls(&self) -> Result<std::sync::Arc<rustls::ClientConfig>, String> {
        ferryman_tls::client_config(&self.tls.upstream_ca_files, self.tls.upstream_insecure)
            .map_err(|e| format!("config error: tls.upstream_ca_files: {e}"))
    }

    pub fn load(file: Option<&Path>, overrides: &[String]) -> Result<Self, ConfigError> {
        Self::from_table(Self::table(file, overrides)?)
    }

    /// The rules and ways out, compiled against `env`; rule-list files
    /// are read relative to `base` (the config file's directory).
    /// `table` is what the config came from, to show the values refused.
    pub fn policy(
        &self,
        table: &Table,
        base: &Path,
        env: &ferryman_proxy::Env,
    ) -> Result<ferryman_proxy::Policy, ConfigError> {
        let spec = ferryman_proxy::PolicySpec {
            outbounds: &self.outbounds,
            rules: &self.rules,
            intercept: &self.intercept,
            base,
        };
        let groups = self.tunnel.groups().into_iter().map(String::from).collect();
        let env = env.clone().with_agent_groups(groups);
        ferryman_proxy::Policy::compile(spec, &env).map_err(|invalid| refusal(table, invalid))
    }

    /// What the proxy's listeners and connections follow, with `policy`.
    pub fn settings(&self, policy: ferryman_proxy::Policy) -> ferryman_proxy::Settings {
        ferryman_proxy::Settings::new(self.proxy.clone(), policy)
            .with_socks5(self.socks5.clone())
            .with_tunnel(self.tunnel.listen, self.tunnel.services.clone())
    }

    /// The file's table with the overrides applied, not yet checked.
    pub fn table(file: Option<&Path>, overrides: &[String]) -> Result<Table, ConfigError> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| refuse(format!("cannot read {}: {e}", path.display())))?;
                text.parse::<Table>()
                    .map_err(|e| refuse(format!("{}: {e}", path.display())))?
            }
            None => Table::new(),
        };
        for setting in overrides {
            apply_override(&mut table, setting)?;
        }
        Ok(table)
    }

    pub fn from_table(table: Table) -> Result<Self, ConfigError> {
        let config: Config = serde_path_to_error::deserialize(Value::Table(table.clone()))
            .map_err(|e| {
                let key = e.path().to_string();
                let shown = shown(&table, &key).unwrap_or_default();
                let reason = scrub(&table, &key, e.inner().to_string());
                refuse(format!("{key}{shown}: {reason}"))
            })?;
        config.validate(&table)?;
        Ok(config)
    }

    fn validate(&self, table: &Table) -> Result<(), ConfigError> {
        let mut invalid: Vec<Invalid> = Vec::new();
        self.proxy.validate(&mut invalid);
        self.socks5.validate(&self.proxy, &mut invalid);
        self.tunnel.validate(&mut invalid);
        self.upstream.validate(&mut invalid);
        self.tls.validate(&mut invalid);
        self.capture.validate(&mut invalid);
        self.admin.validate(&mut invalid);
        if invalid.is_empty() {
            return Ok(());
        }
        Err(refusal(table, invalid))
    }
}

/// Every problem found, each with its key and the value refused.
fn refusal(table: &Table, invalid: Vec<Invalid>) -> ConfigError {
    ConfigError(
        invalid
            .into_iter()
            .map(|i| {
                let shown = shown(table, &i.key).unwrap_or_else(|| " (default)".to_string());
                format!("{}{shown}: {}", i.key, i.reason)
            })
            .collect(),
    )
}

/// `a.b.c=value`: the value is read as TOML (numbers, booleans, arrays,
/// quoted strings) and otherwise taken as a plain string.
pub fn apply_override(table: &mut Table, setting: &str) -> Result<(), ConfigError> {
    let Some((key, raw)) = setting.split_once('=') else {
        return Err(refuse(format!(
            "--set {setting}: expected KEY=VALUE, e.g. --set proxy.listen=127.0.0.1:3128"
        )));
    };
    let key = key.trim();
    let value = format!("v = {raw}")
        .parse::<Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| Value::String(raw.to_string()));
    let mut parts: Vec<&str> = key.split('.').collect();
    let Some(last) = parts.pop().filter(|k| !k.is_empty()) else {
        return Err(refuse(format!("--set {setting}: empty key")));
    };
    let mut node = table;
    for (depth, part) in parts.iter().enumerate() {
        let entry = node
            .entry(part.to_string())
            .or_insert_with(|| Value::Table(Table::new()));
        node = match entry {
            Value::Table(t) => t,
            _ => {
                return Err(refuse(format!(
                    "--set {setting}: {} is not a section",
                    parts[..=depth].join(".")
                )))
            }
        };
    }
    node.insert(last.to_string(), value);
    Ok(())
}

/// ` = value` for messages; a secret's value is never shown: tokens and
/// keys not at all, proxy credentials (`proxy.auth`, an outbound's URL)
/// with the password replaced.
fn shown(table: &Table, key: &str) -> Option<String> {
    let value = lookup(table, key)?;
    let secret = key.ends_with("token") || key.ends_with("secret_access_key");
    if secret {
        return Some(format!(" = \"{}\"", ferryman_capture::REDACTED));
    }
    let redacted = redact_credentials(key, value);
    let shown = redacted.as_ref().unwrap_or(value).to_string();
    // A URL with credentials under any key (a misspelt `url`) hides them too.
    Some(format!(" = {}", hide_url_passwords(&shown)))
}

/// `text` with the password of every `scheme://user:password@` in it
/// replaced.
fn hide_url_passwords(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (before, after) = rest.split_at(at + 3);
        out.push_str(before);
        let authority_end = after
            .find(|c: char| c == '/' || c == '"' || c.is_whitespace())
            .unwrap_or(after.len());
        let authority = &after[..authority_end];
        match authority.rsplit_once('@') {
            Some((userinfo, host)) if userinfo.contains(':') => {
                out.push_str(&hide_password(userinfo));
                out.push('@');
                out.push_str(host);
            }
            _ => out.push_str(authority),
        }
        rest = &after[authority_end..];
    }
    out.push_str(rest);
    out
}

/// `value` with passwords replaced, where `key` holds credentials.
fn redact_credentials(key: &str, value: &Value) -> Option<Value> {
    let hide: fn(&str) -> String = if key.starts_with("proxy.auth") {
        hide_password
    } else if key.starts_with("outbounds") && key.ends_with(".url") {
        |url| match url.split_once("://") {
            Some((scheme, rest)) => match rest.rsplit_once('@') {
                Some((userinfo, host)) => format!("{scheme}://{}@{host}", hide_password(userinfo)),
                None => url.to_string(),
            },
            None => url.to_string(),
        }
    } else {
        return None;
    };
    Some(match value {
        Value::String(text) => Value::String(hide(text)),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|item| match item {
                    Value::String(text) => Value::String(hide(text)),
                    other => other.clone(),
                })
                .collect(),
        ),
        other => other.clone(),
    })
}

/// `reason` without the credentials the value at `key` holds: serde's
/// messages quote the value they could not take.
fn scrub(table: &Table, key: &str, reason: String) -> String {
    let mut reason = hide_url_passwords(&reason);
    let Some(value) = lookup(table, key) else {
        return reason;
    };
    let Some(redacted) = redact_credentials(key, value) else {
        return reason;
    };
    let strings = |v: &Value| -> Vec<String> {
        match v {
            Value::String(s) => vec![s.clone()],
            Value::Array(items) => items
                .iter()
                .filter_map(|i| i.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        }
    };
    for (secret, shown) in strings(value).into_iter().zip(strings(&redacted)) {
        reason = reason.replace(&secret, &shown);
    }
    reason
}

/// `user:password` as `user:<redacted>`.
fn hide_password(pair: &str) -> String {
    match pair.split_once(':') {
        Some((user, _)) => format!("{user}:{}", ferryman_capture::REDACTED),
        None => pair.to_string(),
    }
}

/// The value at a dotted key, where a part may index an array
/// (`rules[2].outbound`).
fn lookup<'a>(table: &'a Table, key: &str) -> Option<&'a Value> {
    let mut value: Option<&Value> = None;
    for part in key.split('.') {
        let within = match value {
            None => table,
            Some(Value::Table(t)) => t,
            Some(_) => return None,
        };
        value = Some(
            match part.strip_suffix(']').and_then(|p| p.split_once('[')) {
                None => within.get(part)?,
                Some((name, index)) => within
                    .get(name)?
                    .as_array()?
                    .get(index.parse::<usize>().ok()?)?,
            },
        );
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, sets: &[&str]) -> Result<Config, String> {
        // A directory per call: tests run in parallel.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ferryman.toml");
        std::fs::write(&path, text).unwrap();
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        Config::load(Some(&path), &sets).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_loopback() {
        let c = Config::load(None, &[]).unwrap();
        assert_eq!(c.proxy.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.data_dir, PathBuf::from("ferryman-data"));
    }

    #[test]
    fn set_overrides_file_and_parses_types() {
        let c = load(
            "[upstream]\nconnect_timeout = \"3s\"\n",
            &[
                "upstream.connect_timeout=250ms",
                "proxy.x_forwarded_for=true",
                "proxy.auth=[\"a:b\"]",
            ],
        )
        .unwrap();
        assert_eq!(c.upstream.connect_timeout, Duration::from_millis(250));
        assert!(c.proxy.x_forwarded_for);
        assert_eq!(c.proxy.auth, ["a:b"]);
    }

    #[test]
    fn unknown_key_is_refused_by_name() {
        let e = load("[proxy]\nlisten_addr = \"127.0.0.1:1\"\n", &[]).unwrap_err();
        assert!(e.contains("listen_addr"), "{e}");
    }

    #[test]
    fn bad_value_names_key_value_and_reason() {
        let e = load("", &["upstream.connect_timeout=soon"]).unwrap_err();
        assert!(e.contains("upstream.connect_timeout"), "{e}");
        assert!(e.contains("\"soon\""), "{e}");
        assert!(e.contains("not a duration"), "{e}");
        let e = load("[proxy]\nlisten = \"nowhere\"\n", &[]).unwrap_err();
        assert!(e.contains("proxy.listen = \"nowhere\""), "{e}");
    }

    #[test]
    fn semantic_errors_are_all_reported() {
        let e = load(
            "[proxy]\nlisten = \"0.0.0.0:8080\"\n[upstream]\nconnect_timeout = \"0s\"\n",
            &[],
        )
        .unwrap_err();
        assert!(e.contains("proxy.listen = \"0.0.0.0:8080\""), "{e}");
        assert!(e.contains("allow_open_proxy"), "{e}");
        assert!(
            e.contains("upstream.connect_timeout = \"0s\": must be greater than zero"),
            "{e}"
        );
        assert!(load(
            "[proxy]\nlisten = \"0.0.0.0:8080\"\nallow_open_proxy = true\n",
            &[]
        )
        .is_ok());
    }

    #[test]
    fn a_ca_certificate_needs_its_key() {
        let e = load("[tls]\nca_cert = \"ca.pem\"\n", &[]).unwrap_err();
        assert!(
            e.contains("tls.ca_cert = \"ca.pem\": needs tls.ca_key"),
            "{e}"
        );
    }

    #[test]
    fn an_s3_store_needs_a_bucket_and_https_unless_allowed() {
        let e = load(
            "[capture.store]\nkind = \"s3\"\nendpoint = \"http://127.0.0.1:9000\"\n",
            &[],
        )
        .unwrap_err();
        assert!(
            e.contains("capture.store.bucket (default): is needed"),
            "{e}"
        );
        assert!(
            e.contains("capture.store.endpoint = \"http://127.0.0.1:9000\": \"http://127.0.0.1:9000\" is plain http"),
            "{e}"
        );
        let e = load("", &["capture.store.kind=ftp"]).unwrap_err();
        assert!(e.contains("capture.store.kind = \"ftp\""), "{e}");
    }

    #[test]
    fn secrets_do_not_show_in_debug_output() {
        let c = load(
            "[capture.store]\naccess_key_id = \"AKID\"\nsecret_access_key = \"hunter2\"\n",
            &[],
        )
        .unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn admin_beyond_loopback_needs_a_token_and_errors_never_show_it() {
        let e = load("", &["admin.listen=0.0.0.0:8081"]).unwrap_err();
        assert!(
            e.contains("admin.listen = \"0.0.0.0:8081\"") && e.contains("admin.token"),
            "{e}"
        );
        let e = load("", &["admin.listen=0.0.0.0:8081", "admin.token=short"]).unwrap_err();
        assert!(
            e.contains("admin.token = \"<redacted>\": must be at least 16"),
            "{e}"
        );
        assert!(!e.contains("short"), "{e}");
        assert!(load(
            "",
            &["admin.listen=0.0.0.0:8081", "admin.token=0123456789abcdef"]
        )
        .is_ok());
    }

    #[test]
    fn errors_show_values_in_arrays_of_tables_and_hide_passwords() {
        let e = load(
            "[proxy]\nlisten = \"0.0.0.0:9\"\nauth = [\"al:pw1\", \"bo\"]\n",
            &[],
        )
        .unwrap_err();
        assert!(e.contains("proxy.auth[1] = \"bo\": must be"), "{e}");
        assert!(!e.contains("pw1"), "{e}");
        let e = load("", &["proxy.auth=al:pw1"]).unwrap_err();
        assert!(e.contains("proxy.auth = \"al:<redacted>\""), "{e}");
        assert!(!e.contains("pw1"), "{e}");
        let config = load(
            "[[outbounds]]\nname = \"up\"\nkind = \"http\"\nurl = \"ftp://me:hunter2@h:1\"\n",
            &[],
        )
        .unwrap();
        let table = Config::table(
            None,
            &["outbounds=[{name=\"up\",kind=\"http\",url=\"ftp://me:hunter2@h:1\"}]".into()],
        )
        .unwrap();
        let env = ferryman_proxy::Env::detached(config.upstream_tls().unwrap());
        let e = config
            .policy(&table, Path::new("."), &env)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("outbounds[0].url = \"ftp://me:<redacted>@h:1\""),
            "{e}"
        );
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn url_passwords_are_hidden_anywhere() {
        assert_eq!(
            hide_url_passwords(r#"{ uri = "http://me:pw@h:1/x", other = "socks5h://a:b@c:2" }"#),
            r#"{ uri = "http://me:<redacted>@h:1/x", other = "socks5h://a:<redacted>@c:2" }"#
        );
        assert_eq!(hide_url_passwords("http://h:1/@x:y"), "http://h:1/@x:y");
        let e = load(
            "[[outbounds]]\nname = \"up\"\nkind = \"http\"\nuri = \"http://me:hunter2@h:1\"\n",
            &[],
        )
        .unwrap_err();
        assert!(
            !e.contains("hunter2") && e.contains("me:<redacted>@h:1"),
            "{e}"
        );
    }

    #[test]
    fn set_into_a_value_is_refused() {
        let e = load("data_dir = \"x\"\n", &["data_dir.sub=1"]).unwrap_err();
        assert!(e.contains("data_dir is not a section"), "{e}");
        assert!(load("", &["novalue"]).unwrap_err().contains("KEY=VALUE"));
    }
}

/// Random configurations: refused with a key and a reason, never a panic.
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            any::<i64>().prop_map(Value::Integer),
            any::<bool>().prop_map(Value::Boolean),
            "[ -~]{0,24}".prop_map(Value::String),
            prop::sample::select(vec![
                "127.0.0.1:0",
                "10s",
                "0s",
                "listed",
                "all",
                "s3",
                "http://me:pw@127.0.0.1:1",
                "socks5h://127.0.0.1:1",
                "direct",
                "reject",
                "group",
                "10.0.0.0/8",
                "8000-8999",
            ])
            .prop_map(|s| Value::String(s.to_string())),
        ];
        leaf.prop_recursive(2, 8, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec((key(), inner), 0..4)
                    .prop_map(|pairs| Value::Table(pairs.into_iter().collect())),
            ]
        })
    }

    fn key() -> impl Strategy<Value = String> {
        prop::sample::select(vec![
            "listen",
            "auth",
            "mode",
            "hosts",
            "passthrough",
            "kind",
            "url",
            "name",
            "members",
            "outbound",
            "intercept",
            "domain",
            "domain_suffix",
            "ip_cidr",
            "port",
            "client",
            "user",
            "method",
            "path",
            "invert",
            "resolve",
            "status",
            "body",
            "headers",
            "bind",
            "timeout",
            "connect_timeout",
            "max_connections",
            "max_headers",
            "token",
            "enabled",
            "dir",
            "request_body_timeout",
            "send_timeout",
            "domain_list",
        ])
        .prop_map(str::to_string)
    }

    fn config() -> impl Strategy<Value = Table> {
        let section = prop::sample::select(vec![
            "proxy",
            "upstream",
            "intercept",
            "tls",
            "capture",
            "admin",
            "sessions",
            "log",
        ]);
        (
            prop::collection::vec(
                (section, prop::collection::vec((key(), value()), 0..4)),
                0..4,
            ),
            prop::collection::vec(prop::collection::vec((key(), value()), 0..5), 0..3),
            prop::collection::vec(prop::collection::vec((key(), value()), 0..5), 0..3),
        )
            .prop_map(|(sections, outbounds, rules)| {
                let mut table = Table::new();
                for (name, pairs) in sections {
                    table.insert(name.to_string(), Value::Table(pairs.into_iter().collect()));
                }
                let array = |entries: Vec<Vec<(String, Value)>>| {
                    Value::Array(
                        entries
                            .into_iter()
                            .map(|e| Value::Table(e.into_iter().collect()))
                            .collect(),
                    )
                };
                table.insert("outbounds".into(), array(outbounds));
                table.insert("rules".into(), array(rules));
                table
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(ferryman_testkit::fuzz_cases(512)))]

        #[test]
        fn any_configuration_is_taken_or_refused_with_keys(table in config()) {
            let refused = match Config::from_table(table.clone()) {
                Ok(config) => {
                    let env = ferryman_proxy::Env::detached(ferryman_tls::client_config(&[], false).unwrap());
                    match config.policy(&table, Path::new("/nonexistent"), &env) {
                        Ok(_) => return Ok(()),
                        Err(e) => e.to_string(),
                    }
                }
                Err(e) => e.to_string(),
            };
            for line in refused.lines().filter(|l| l.starts_with("config error")) {
                let key = line.trim_start_matches("config error: ").split([' ', ':']).next().unwrap_or("");
                prop_assert!(!key.is_empty(), "no key in {:?}", line);
            }
            prop_assert!(refused.starts_with("config error: "), "{}", refused);
            prop_assert!(!refused.contains(":pw@"), "a password shown: {}", refused);
        }

        #[test]
        fn any_text_is_parsed_or_refused(text in "[ -~\\n]{0,200}") {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("ferryman.toml");
            std::fs::write(&path, &text).unwrap();
            if let Err(e) = Config::load(Some(&path), &[]) {
                prop_assert!(e.to_string().starts_with("config error: "), "{}", e);
            }
        }
    }
}
