#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod agent;
mod cli;
mod config;
mod export;
mod live;
mod log_fields;
mod log_time;
mod logging;
mod watch;

use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;

use crate::cli::{CaCommand, CertFormat, Cli, Command};
use crate::config::Config;

fn main() -> ExitCode {
    // Everything ferryman writes (captures, the index, keys, exports) is
    // this user's alone: captures hold decrypted cookies and credentials.
    // SAFETY: umask only sets the process's file-creation mask.
    unsafe { libc::umask(0o077) };
    let cli = Cli::parse();
    match cli.command {
        Some(Command::CheckConfig { ref file }) => {
            let checked = Config::table(Some(file), &cli.overrides.settings())
                .and_then(|table| Ok((Config::from_table(table.clone())?, table)))
                .map_err(|e| e.to_string())
                .and_then(|(config, table)| check_policy(&config, &table, Some(file)).map(|_| ()));
            match checked {
                Ok(()) => {
                    println!("{}: ok", file.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::from(2)
                }
            }
        }
        Some(Command::Har {
            ref since,
            ref until,
            ref host,
            max_inline,
            ref output,
        }) => offline(&cli, |config| {
            let request = export::HarRequest {
                since: since.as_deref(),
                until: until.as_deref(),
                host: host.as_deref(),
                max_inline,
                output: output.as_deref(),
            };
            export::har(config, request)
        }),
        Some(Command::Body {
            ref id,
            part,
            decode,
            max_decoded,
            ref output,
        }) => offline(&cli, |config| {
            let decode = decode.then_some(max_decoded);
            export::body(config, id, part, decode, output.as_deref())
        }),
        Some(Command::Ca(ref command)) => offline(&cli, |config| ca(config, command)),
        Some(Command::Agent(ref args)) => {
            agent::run(cli.config.as_deref(), args, cli.overrides.log_format)
        }
        Some(Command::Route {
            ref target,
            ref user,
            client,
            ref inbound,
            ref method,
        }) => {
            let query = ferryman_proxy::Query {
                target: target.clone(),
                inbound: inbound.clone(),
                client,
                user: user.clone(),
                method: method.clone(),
            };
            let explained = Config::table(cli.config.as_deref(), &cli.overrides.settings())
                .and_then(|table| Ok((Config::from_table(table.clone())?, table)))
                .map_err(|e| e.to_string())
                .and_then(|(config, table)| check_policy(&config, &table, cli.config.as_deref()))
                .and_then(|policy| policy.explain(&query));
            match explained {
                Ok(explained) => {
                    println!("{}", route_text(&explained));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::from(2)
                }
            }
        }
        Some(Command::Run) | None => {
            let loaded = Config::table(cli.config.as_deref(), &cli.overrides.settings())
                .and_then(|table| Ok((Config::from_table(table.clone())?, table)));
            let (config, table) = match loaded {
                Ok(loaded) => loaded,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            if let Err(e) = check_policy(&config, &table, cli.config.as_deref()) {
                eprintln!("{e}");
                return ExitCode::from(2);
            }
            let logs = ferryman_admin::LogFeed::default();
            let _flush_on_exit = logging::init(config.log.format, &logs);
            let source = (cli.config.clone(), cli.overrides.settings());
            match run(config, table, source, logs) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// A command that reads ferryman's state and exits: errors go to stderr, exit code 2.
fn offline(cli: &Cli, command: impl FnOnce(&Config) -> Result<(), String>) -> ExitCode {
    let result = Config::load(cli.config.as_deref(), &cli.overrides.settings())
        .map_err(|e| e.to_string())
        .and_then(|config| command(&config));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
    }
}

/// The configuration's rules compiled as they would be at start, without
/// a running proxy: every error of the rules, the outbounds and the lists.
fn check_policy(
    config: &Config,
    table: &toml::Table,
    file: Option<&std::path::Path>,
) -> Result<ferryman_proxy::Policy, String> {
    let tls = config.upstream_tls()?;
    let env = ferryman_proxy::Env::detached(tls);
    config
        .policy(table, &live::base_dir(file), &env)
        .map_err(|e| e.to_string())
}

/// `ferryman route`'s answer, one fact per line.
fn route_text(explained: &ferryman_proxy::Explanation) -> String {
    let target = match &explained.path {
        Some(path) => format!(
            "{} {}:{}{path}",
            explained.method, explained.host, explained.port
        ),
        None => format!("CONNECT {}:{}", explained.host, explained.port),
    };
    format!(
        "target:    {target}\noutbound:  {} ({})\nrule:      {}\nintercept: {} (rule {})",
        explained.outbound,
        explained.outbound_kind,
        explained.rule,
        if explained.intercept { "yes" } else { "no" },
        explained.intercept_rule,
    )
}

fn ca(config: &Config, command: &CaCommand) -> Result<(), String> {
    let ca = config.open_ca()?;
    match command {
        CaCommand::Fingerprint => {
            println!("{}", ca.fingerprint());
            Ok(())
        }
        CaCommand::Path => {
            let path = ca.cert_path();
            let shown = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
            println!("{}", shown.display());
            Ok(())
        }
        CaCommand::Export { format, output } => {
            let bytes = match format {
                CertFormat::Pem => ca.cert_pem().as_bytes(),
                CertFormat::Der => ca.cert_der(),
            };
            match output {
                Some(path) => std::fs::write(path, bytes)
                    .map_err(|e| format!("cannot write {}: {e}", path.display())),
                None => std::io::Write::write_all(&mut std::io::stdout(), bytes)
                    .map_err(|e| format!("cannot write to stdout: {e}")),
            }
        }
    }
}

fn run(
    config: Config,
    table: toml::Table,
    (file, command_line): (Option<std::path::PathBuf>, Vec<String>),
    logs: ferryman_admin::LogFeed,
) -> Result<(), String> {
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| format!("cannot create data_dir {}: {e}", config.data_dir.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        let private = std::fs::Permissions::from_mode(0o700);
        std::fs::set_permissions(&config.data_dir, private).map_err(|e| {
            format!(
                "cannot make data_dir {} private: {e}",
                config.data_dir.display()
            )
        })?;
    }
    let ca = std::sync::Arc::new(config.open_ca()?);
    tracing::info!(cert = %ca.cert_path().display(), "certificate authority");
    raise_open_file_limit();
    let upstream_tls = config.upstream_tls()?;
    let metrics = if config.admin.enabled {
        Some(ferryman_admin::Metrics::install()?)
    } else {
        None
    };
    let interception = ferryman_proxy::Interception::new(ca.clone());
    let capture = config.start_capture()?;
    let observers = ferryman_proxy::Observers {
        sessions: ferryman_proxy::Sessions::new(config.sessions.linger, config.sessions.history),
        capture: capture.clone(),
    };
    let proxy = ferryman_proxy::ForwardProxy::bind(
        config.proxy.clone(),
        config.upstream.clone(),
        upstream_tls,
        Some(interception),
        observers,
    )
    .map_err(|e| {
        format!(
            "cannot listen on {} (proxy.listen): {e}",
            config.proxy.listen
        )
    })?;
    let control = proxy.control();
    // Always a gateway, if only an idle one: a reload can open its listener.
    let gateway = std::sync::Arc::new(ferryman_tunnel::Gateway::new(&config.tunnel, ca.clone())?);
    control.serve_tunnel(gateway.clone());
    let policy = config
        .policy(&table, &live::base_dir(file.as_deref()), &control.env())
        .map_err(|e| e.to_string())?;
    control.apply(config.settings(policy))?;
    if let Some(listen) = config.tunnel.listen {
        tracing::info!(
            %listen,
            fingerprint = %ca.fingerprint(),
            "tunnel gateway: agents connect with ferryman agent --gateway wss://{listen} --gateway-fingerprint <fingerprint> --token <token> --group <group>"
        );
    }
    let live = live::Live::new(
        file.clone(),
        command_line,
        (table, config.clone()),
        control.clone(),
        (gateway.clone(), ca.clone()),
    );
    let shutdown = CancellationToken::new();
    let admin = if config.admin.enabled {
        let parts = ferryman_admin::Parts {
            sessions: proxy.sessions().clone(),
            capture: capture.clone(),
            ca,
            settings: live.clone(),
            logs,
            metrics,
            proxy_listen: proxy.local_addr(),
            agents: Some(gateway.registry().clone()),
        };
        let admin = ferryman_admin::Admin::bind(&config.admin, &config.data_dir, parts)?;
        control.also_own(admin.local_addr());
        Some(admin.spawn(shutdown.clone(), config.shutdown_grace)?)
    } else {
        None
    };
    let signals = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the signal handler: {e}"))?;
    let token = shutdown.clone();
    let reloads = live.clone();
    std::thread::Builder::new()
        .name("ferryman-signals".into())
        .spawn(move || {
            let reload = move || {
                reloads.reload("signal");
            };
            signals.block_on(on_signals(token, reload))
        })
        .map_err(|e| format!("cannot start the signal handler: {e}"))?;
    let _watching = match &file {
        Some(file) => Some(watch::config_file(file, live.clone())?),
        None => None,
    };
    let workers = match config.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    proxy
        .run_threaded(workers, shutdown, config.shutdown_grace)
        .map_err(|e| format!("forward proxy failed: {e}"))?;
    if let Some(admin) = admin {
        if admin.join().is_err() {
            tracing::warn!("the admin thread panicked");
        }
    }
    if let Some(capture) = capture {
        let settled = capture.settle_blocking(config.shutdown_grace);
        let lost = capture.pending();
        if !settled {
            tracing::warn!(
                records_lost = lost,
                "captures were still waiting for the store at exit; they are lost"
            );
        }
        let stats = capture.stats();
        let count = |n: &std::sync::atomic::AtomicU64| n.load(std::sync::atomic::Ordering::Relaxed);
        tracing::info!(
            records_stored = count(&stats.records_stored),
            records_failed = count(&stats.records_failed),
            records_lost = lost,
            bodies_stored = count(&stats.bodies_stored),
            bodies_failed = count(&stats.bodies_failed),
            "capture"
        );
    }
    tracing::info!("stopped");
    Ok(())
}

/// Every client connection costs a descriptor, and usually an upstream one:
/// use all the system allows (the soft limit is often a stingy 1024).
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the struct they are given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            let soft = limit.rlim_cur;
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                tracing::debug!(
                    from = soft,
                    to = limit.rlim_max,
                    "raised the open-file limit"
                );
            }
        }
    }
}

/// SIGINT or SIGTERM: stop accepting and drain; a second one: exit at
/// once. SIGHUP: reload the configuration.
/// SIGTERM and SIGINT stop gracefully, a second one at once; SIGHUP calls
/// `hangup` (a reload), off the signal thread.
async fn on_signals<F>(shutdown: CancellationToken, hangup: F)
where
    F: Fn() + Clone + Send + 'static,
{
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::warn!("cannot install signal handlers; stop ferryman with SIGKILL");
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
            _ = hup.recv() => {
                let _ = tokio::task::spawn_blocking(hangup.clone()).await;
                continue;
            }
        }
        if shutdown.is_cancelled() {
            tracing::warn!("second stop signal: exiting now");
            std::process::exit(1);
        }
        shutdown.cancel();
    }
}
