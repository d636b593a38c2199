//! `ferryman agent`: its settings from the file (`-c`) and the flags over
//! them, the way to the gateway and how its certificate is checked, then
//! the agent until a signal stops it.

use std::path::Path;
use std::process::ExitCode;

use ferryman_tunnel::{Agent, AgentConfig};
use tokio_util::sync::CancellationToken;

use crate::cli::{AgentArgs, LogFormat};

/// The file's settings, the flags over them.
fn settings(file: Option<&Path>, args: &AgentArgs) -> Result<AgentConfig, String> {
    let mut config = match file {
        None => AgentConfig::default(),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let table: toml::Table = text
                .parse()
                .map_err(|e| format!("{}: {e}", path.display()))?;
            serde_path_to_error::deserialize(toml::Value::Table(table))
                .map_err(|e| format!("{}: {}: {}", path.display(), e.path(), e.inner()))?
        }
    };
    let set = |slot: &mut String, flag: &Option<String>| {
        if let Some(value) = flag {
            slot.clone_from(value);
        }
    };
    set(&mut config.gateway, &args.gateway);
    set(&mut config.token, &args.token);
    set(&mut config.group, &args.group);
    if args.id.is_some() {
        config.id.clone_from(&args.id);
    }
    config.allow.extend(args.allow.iter().cloned());
    config.deny.extend(args.deny.iter().cloned());
    if args.gateway_ca.is_some() {
        config.gateway_ca.clone_from(&args.gateway_ca);
    }
    if args.gateway_fingerprint.is_some() {
        config
            .gateway_fingerprint
            .clone_from(&args.gateway_fingerprint);
    }
    if args.via.is_some() {
        config.via.clone_from(&args.via);
    }
    if let Some(carriers) = args.carriers {
        config.carriers = carriers;
    }
    Ok(config)
}

pub fn run(file: Option<&Path>, args: &AgentArgs, log_format: Option<LogFormat>) -> ExitCode {
    let prepared = settings(file, args).and_then(|config| {
        let tls = ferryman_tls::gateway_client_config(
            config.gateway_ca.as_deref(),
            config.gateway_fingerprint.as_deref(),
        )
        .map_err(|e| e.to_string())?;
        let egress = ferryman_proxy::outbound::egress(config.via.as_deref(), &tls)?;
        Agent::new(config, egress, tls)
    });
    let agent = match prepared {
        Ok(agent) => agent,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let _flush_on_exit = crate::logging::init(
        log_format.unwrap_or(LogFormat::Text),
        &ferryman_admin::LogFeed::default(),
    );
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cannot start the agent's runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let stop = CancellationToken::new();
    let stopping = stop.clone();
    runtime.spawn(crate::on_signals(stopping, || {
        tracing::info!("an agent has nothing to reload");
    }));
    runtime.block_on(agent.run(stop));
    tracing::info!("agent stopped");
    ExitCode::SUCCESS
}
