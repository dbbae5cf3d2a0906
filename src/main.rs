//! The `svc-handler` command line: parse, build the pieces, hand over.

use std::future::Future;
use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches};
use svc_handler::cli::{Cli, Command, LogFormat, RunArgs};
use svc_handler::consul::{Client, Settings};
use svc_handler::daemon::{default_holder, Daemon, DaemonConfig, Faults};
use svc_handler::keys::Layout;
use svc_handler::lock::SessionConfig;
use tokio::signal::unix::{signal, SignalKind};
use tracing_subscriber::EnvFilter;

/// `level`: the filter when RUST_LOG is not set.
fn init_logging(cli: &Cli, level: &str) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.is_empty())
        .map(EnvFilter::new)
        .unwrap_or_else(|| EnvFilter::new(level));
    // Colour only on a terminal: a log file or the journal gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
    }
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    // The operator commands talk to people: only warnings, unless asked.
    let level = match (&cli.command, matches.value_source("log_level")) {
        (Command::Run(_), _) => cli.log_level.clone(),
        (_, Some(ValueSource::DefaultValue) | None) => "warn".to_string(),
        _ => cli.log_level.clone(),
    };
    init_logging(&cli, &level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("svc-handler: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        match &cli.command {
            Command::Run(args) => run(&cli, args).await,
            _ => Ok(match svc_handler::commands::dispatch(&cli).await {
                Ok(code) => ExitCode::from(code),
                Err(failure) => {
                    if !failure.message.is_empty() {
                        eprintln!("svc-handler: {}", failure.message);
                    }
                    ExitCode::from(failure.code)
                }
            }),
        }
    });
    match result {
        Ok(code) => code,
        Err(msg) => {
            tracing::error!("{msg}");
            eprintln!("svc-handler: {msg}");
            ExitCode::from(1)
        }
    }
}

async fn run(cli: &Cli, args: &RunArgs) -> Result<ExitCode, String> {
    let (settings, cfg) = daemon_config(cli, args)?;
    let holder = cfg.holder.clone();
    let daemon = Daemon::new(settings, cfg).map_err(|e| e.to_string())?;
    if args.once {
        return run_once(&daemon).await;
    }

    let listener = tokio::net::TcpListener::bind(args.metrics_listen)
        .await
        .map_err(|e| format!("--metrics-listen {}: {e}", args.metrics_listen))?;
    tracing::info!(
        metrics = %args.metrics_listen,
        consul = daemon.client().address(),
        instance = %holder,
        "svc-handler starting"
    );
    let shutdown = shutdown_signal(daemon.client().clone())?;
    daemon
        .run(Some(listener), shutdown)
        .await
        .map_err(|e| e.to_string())?;
    Ok(ExitCode::SUCCESS)
}

/// The Consul settings and the daemon's configuration from the flags (and
/// the fault-injection variables, read here once).
fn daemon_config(cli: &Cli, args: &RunArgs) -> Result<(Settings, DaemonConfig), String> {
    let mut settings = cli.consul.settings().map_err(|e| e.to_string())?;
    settings.request_timeout = args.consul_timeout;
    let layout = Layout::new(&cli.prefix).map_err(|e| format!("--prefix: {e}"))?;
    let holder = args.instance.clone().unwrap_or_else(default_holder);
    let mut cfg = DaemonConfig::new(layout, holder.clone());
    cfg.workers = args.workers as usize;
    cfg.session = SessionConfig {
        name: format!("svc-handler {holder}"),
        ttl: args.session_ttl,
        lock_delay: args.lock_delay,
    };
    cfg.resync_interval = Some(args.resync_interval).filter(|d| !d.is_zero());
    cfg.watch_wait = args.watch_wait;
    cfg.prune = args.prune();
    cfg.drift_budget = args.drift_budget * 1024;
    cfg.shutdown_timeout = args.shutdown_timeout;
    cfg.faults = Faults::from_env();
    Ok((settings, cfg))
}

/// `run --once`: exits 1 when any service ends in error or a key is invalid.
async fn run_once(daemon: &Daemon) -> Result<ExitCode, String> {
    let summary = daemon.run_once().await?;
    tracing::info!(
        applied = summary.applied,
        unchanged = summary.unchanged,
        deleted = summary.deleted,
        failed = summary.failed,
        held_elsewhere = summary.held_elsewhere,
        invalid_keys = summary.invalid_keys,
        "run --once done"
    );
    svc_handler::outln!(
        "applied {}, unchanged {}, deleted {}, failed {}, held elsewhere {}, invalid keys {}",
        summary.applied,
        summary.unchanged,
        summary.deleted,
        summary.failed,
        summary.held_elsewhere,
        summary.invalid_keys
    );
    Ok(if summary.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Completes on SIGTERM or SIGINT (a second one exits at once, code 130);
/// SIGHUP re-reads the token file.
fn shutdown_signal(client: Client) -> Result<impl Future<Output = ()> + Send, String> {
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let mut hup = signal(SignalKind::hangup()).map_err(|e| e.to_string())?;
    Ok(async move {
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => match client.reload_token() {
                    Ok(()) => tracing::info!("SIGHUP: token file re-read"),
                    Err(e) => tracing::error!(error = %e, "SIGHUP: could not re-read the token file; keeping the old token"),
                },
            }
        }
        tracing::info!("signal received: stopping (a second signal exits at once)");
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
            eprintln!("svc-handler: second signal: exiting now");
            std::process::exit(130);
        });
    })
}
