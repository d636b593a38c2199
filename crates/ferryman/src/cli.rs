use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// ferryman: forward proxy with HTTPS interception, reverse proxy, tunnel and capture.
#[derive(Debug, Parser)]
#[command(version, about, args_conflicts_with_subcommands = false)]
pub struct Cli {
    /// TOML configuration file.
    #[arg(short, long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(flatten)]
    pub overrides: Overrides,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start ferryman (the default when no command is given).
    Run,
    /// Validate a configuration file (with any --set overrides) and exit.
    CheckConfig {
        /// The TOML file to check.
        file: PathBuf,
    },
    /// Where traffic to a URL or host:port would go, and why; sends nothing.
    Route {
        /// A URL (https://host/path) or a tunnel's host:port.
        target: String,
        /// The authenticated user asking.
        #[arg(long, value_name = "USER")]
        user: Option<String>,
        /// The client's address (default 127.0.0.1).
        #[arg(long, value_name = "ADDR")]
        client: Option<std::net::IpAddr>,
        /// The inbound the traffic arrives on (default http).
        #[arg(long, value_name = "NAME")]
        inbound: Option<String>,
        /// The HTTP method (default GET for a URL, CONNECT for host:port).
        #[arg(long, value_name = "METHOD")]
        method: Option<String>,
    },
    /// ferryman's certificate authority, created on first use.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Run as a tunnel agent: dial out to a gateway and carry the streams
    /// it opens into this network. With -c, the file's keys (gateway,
    /// token, group, id, allow, deny, gateway_ca, gateway_fingerprint, via,
    /// carriers, ...) come first and these flags over them.
    Agent(AgentArgs),
    /// Export captured exchanges as HAR 1.2.
    Har {
        /// Exchanges started at or after this: an RFC 3339 time
        /// (2026-11-21T10:00:00Z) or an age (30m, 2h, 7d).
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// Exchanges started before this (same forms as --since).
        #[arg(long, value_name = "TIME")]
        until: Option<String>,
        /// Only exchanges with this host (no port).
        #[arg(long, value_name = "HOST")]
        host: Option<String>,
        /// Bodies up to this many stored bytes are inlined; larger ones are
        /// referenced by their key.
        #[arg(long, value_name = "BYTES", default_value_t = 1 << 20)]
        max_inline: u64,
        /// Write here instead of stdout.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Write a captured body to stdout or a file.
    Body {
        /// The exchange id (as in the records and the HAR `_id`).
        id: String,
        #[arg(value_enum)]
        part: BodyPart,
        /// Undo the Content-Encoding (gzip, deflate, br, zstd).
        #[arg(long)]
        decode: bool,
        /// With --decode, write at most this many decoded bytes (a body can
        /// be a decompression bomb; 1000 times the stored size at most too).
        #[arg(long, value_name = "BYTES", default_value_t = 1 << 30)]
        max_decoded: u64,
        /// Write here instead of stdout.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BodyPart {
    Request,
    Response,
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The gateway: wss://host:port (its tunnel.listen).
    #[arg(long, value_name = "URL")]
    pub gateway: Option<String>,
    /// One of the gateway's tunnel.agents tokens.
    #[arg(
        long,
        env = "FERRYMAN_AGENT_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
    /// The group to join (the token must allow it).
    #[arg(long, value_name = "GROUP")]
    pub group: Option<String>,
    /// What the gateway lists this agent as (default: the host name).
    #[arg(long, value_name = "NAME")]
    pub id: Option<String>,
    /// Destinations this agent may dial: an address, a CIDR, a name,
    /// *.name or .name. Repeat it; without any, everything but this
    /// machine's own, link-local and cloud metadata addresses.
    #[arg(long, value_name = "CIDR|NAME")]
    pub allow: Vec<String>,
    /// Destinations refused whatever --allow says.
    #[arg(long, value_name = "CIDR|NAME")]
    pub deny: Vec<String>,
    /// The gateway's CA certificate (PEM): what `ferryman ca path` prints there.
    #[arg(long, value_name = "FILE")]
    pub gateway_ca: Option<PathBuf>,
    /// Or the SHA-256 fingerprint of the gateway's certificate or CA
    /// (`ferryman ca fingerprint` there).
    #[arg(long, value_name = "SHA256")]
    pub gateway_fingerprint: Option<String>,
    /// Reach the gateway through this HTTP proxy (CONNECT): http://host:port.
    #[arg(long, value_name = "URL")]
    pub via: Option<String>,
    /// Carriers kept open to the gateway (default 2).
    #[arg(long, value_name = "N")]
    pub carriers: Option<usize>,
}

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Print the path of the CA certificate (PEM).
    Path,
    /// Print the CA certificate's SHA-256 fingerprint, which agents can pin
    /// with --gateway-fingerprint.
    Fingerprint,
    /// Write the CA certificate to stdout or a file, for clients to trust.
    Export {
        #[arg(long, value_enum, default_value = "pem")]
        format: CertFormat,
        /// Write here instead of stdout.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CertFormat {
    Pem,
    Der,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Command-line settings; each is a shorthand for one `--set`.
#[derive(Debug, Args)]
pub struct Overrides {
    /// Address of the forward proxy listener (proxy.listen).
    #[arg(long, global = true, value_name = "ADDR")]
    pub proxy_listen: Option<SocketAddr>,

    /// Address of the admin listener: API, dashboard, metrics (admin.listen).
    #[arg(long, global = true, value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,

    /// Address of a SOCKS5 listener (socks5.listen).
    #[arg(long, global = true, value_name = "ADDR")]
    pub socks5_listen: Option<SocketAddr>,

    /// Where the tunnel's agents connect, making this a gateway (tunnel.listen).
    #[arg(long, global = true, value_name = "ADDR")]
    pub tunnel_listen: Option<SocketAddr>,

    /// Where ferryman keeps its state (data_dir).
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Log format (log.format).
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,

    /// Override any config key: --set upstream.connect_timeout=5s
    #[arg(long = "set", global = true, value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

impl Overrides {
    /// All overrides as `key=value` pairs, the explicit flags first so that a
    /// later `--set` of the same key wins.
    pub fn settings(&self) -> Vec<String> {
        let mut all = Vec::new();
        if let Some(addr) = self.proxy_listen {
            all.push(format!("proxy.listen={addr}"));
        }
        if let Some(addr) = self.admin_listen {
            all.push(format!("admin.listen={addr}"));
        }
        if let Some(addr) = self.socks5_listen {
            all.push(format!("socks5.listen={addr}"));
        }
        if let Some(addr) = self.tunnel_listen {
            all.push(format!("tunnel.listen={addr}"));
        }
        if let Some(dir) = &self.data_dir {
            all.push(format!("data_dir={}", dir.display()));
        }
        if let Some(format) = self.log_format {
            let name = match format {
                LogFormat::Text => "text",
                LogFormat::Json => "json",
            };
            all.push(format!("log.format={name}"));
        }
        all.extend(self.set.iter().cloned());
        all
    }
}
