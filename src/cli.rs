//! The command line: arguments of every subcommand, and the Consul
//! connection built from the `consul` CLI's environment variables with flags
//! on top.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::consul::{ConsulError, Secret, Settings};

#[derive(Debug, Parser)]
#[command(
    name = "svc-handler",
    version,
    about = "Reconciles Consul config entries from desired state kept in Consul KV",
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    pub consul: ConsulArgs,

    /// KV prefix of svc-handler's keys.
    #[arg(
        long,
        global = true,
        env = "SVC_HANDLER_PREFIX",
        default_value = "svc-handler"
    )]
    pub prefix: String,

    /// Log level filter (tracing's syntax); RUST_LOG wins when set.
    #[arg(
        long,
        global = true,
        env = "SVC_HANDLER_LOG_LEVEL",
        default_value = "info"
    )]
    pub log_level: String,

    /// Log format: text for people, json (one object per line) for journald and Loki.
    #[arg(long, global = true, env = "SVC_HANDLER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Consul connection flags. Each overrides the `consul` CLI's environment
/// variable of the same meaning.
#[derive(Debug, Args, Default)]
pub struct ConsulArgs {
    /// Consul address (CONSUL_HTTP_ADDR): host:port or http(s)://host:port.
    #[arg(long = "http-addr", global = true)]
    pub http_addr: Option<String>,
    /// ACL token (CONSUL_HTTP_TOKEN). Prefer --token-file: a flag shows in `ps`.
    #[arg(long, global = true, hide = true)]
    pub token: Option<String>,
    /// File holding the ACL token (CONSUL_HTTP_TOKEN_FILE); re-read on SIGHUP.
    #[arg(long = "token-file", global = true)]
    pub token_file: Option<PathBuf>,
    /// CA certificate file (CONSUL_CACERT).
    #[arg(long = "ca-file", global = true)]
    pub ca_file: Option<PathBuf>,
    /// Folder of CA certificates (CONSUL_CAPATH).
    #[arg(long = "ca-path", global = true)]
    pub ca_path: Option<PathBuf>,
    /// Client certificate (CONSUL_CLIENT_CERT).
    #[arg(long = "client-cert", global = true)]
    pub client_cert: Option<PathBuf>,
    /// Client key (CONSUL_CLIENT_KEY).
    #[arg(long = "client-key", global = true)]
    pub client_key: Option<PathBuf>,
    /// Server name to verify (CONSUL_TLS_SERVER_NAME).
    #[arg(long = "tls-server-name", global = true)]
    pub tls_server_name: Option<String>,
    /// Consul Enterprise partition (CONSUL_PARTITION).
    #[arg(long, global = true)]
    pub partition: Option<String>,
    /// Consul Enterprise namespace (CONSUL_NAMESPACE).
    #[arg(long, global = true)]
    pub namespace: Option<String>,
}

impl ConsulArgs {
    /// Settings from the environment, with the flags given on top.
    pub fn settings(&self) -> Result<Settings, ConsulError> {
        let mut s = Settings::from_env()?;
        if let Some(v) = &self.http_addr {
            s.address = v.clone();
        }
        if let Some(v) = &self.token {
            s.token = Some(Secret::new(v.clone()));
        }
        if let Some(v) = &self.token_file {
            s.token_file = Some(v.clone());
        }
        if let Some(v) = &self.ca_file {
            s.ca_file = Some(v.clone());
        }
        if let Some(v) = &self.ca_path {
            s.ca_path = Some(v.clone());
        }
        if let Some(v) = &self.client_cert {
            s.client_cert = Some(v.clone());
        }
        if let Some(v) = &self.client_key {
            s.client_key = Some(v.clone());
        }
        if let Some(v) = &self.tls_server_name {
            s.tls_server_name = Some(v.clone());
        }
        if let Some(v) = &self.partition {
            s.partition = v.clone();
        }
        if let Some(v) = &self.namespace {
            s.namespace = v.clone();
        }
        Ok(s)
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?} is not a duration (try 15s, 10m): {e}"))
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the reconciler: watch the desired prefix and apply every change.
    Run(RunArgs),
}

#[derive(Debug, Args, Clone)]
pub struct RunArgs {
    /// Where /metrics, /healthz and /readyz are served.
    #[arg(
        long,
        env = "SVC_HANDLER_METRICS_LISTEN",
        default_value = "127.0.0.1:9732"
    )]
    pub metrics_listen: SocketAddr,
    /// Services reconciled at once.
    #[arg(long, env = "SVC_HANDLER_WORKERS", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub workers: u16,
    /// TTL of the instance's Consul session (10s to 24h); renewed every TTL/2.
    #[arg(long, env = "SVC_HANDLER_SESSION_TTL", default_value = "15s", value_parser = parse_duration)]
    pub session_ttl: Duration,
    /// How long a lock lost by a crashed holder stays blocked.
    #[arg(long, env = "SVC_HANDLER_LOCK_DELAY", default_value = "1s", value_parser = parse_duration)]
    pub lock_delay: Duration,
    /// A full re-check of every service, this often (0 turns it off).
    #[arg(long, env = "SVC_HANDLER_RESYNC_INTERVAL", default_value = "10m", value_parser = parse_duration)]
    pub resync_interval: Duration,
    /// Blocking-query wait of the watches (at most 10m).
    #[arg(long, env = "SVC_HANDLER_WATCH_WAIT", default_value = "5m", value_parser = parse_duration)]
    pub watch_wait: Duration,
    /// When base.json is deleted, delete the entries svc-handler owns (default).
    #[arg(long, overrides_with = "no_prune", default_value_t = true)]
    pub prune: bool,
    /// When base.json is deleted, keep the entries; remove only svc-handler's records.
    #[arg(long = "no-prune", overrides_with = "prune")]
    pub no_prune: bool,
    /// How long in-flight reconciles may take to finish on SIGTERM.
    #[arg(long, env = "SVC_HANDLER_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
    /// Reconcile everything present, then exit (non-zero when any service
    /// ends in error, invalid or conflict).
    #[arg(long)]
    pub once: bool,
    /// This instance's name in locks and observed.json (default: host name and pid).
    #[arg(long, env = "SVC_HANDLER_INSTANCE")]
    pub instance: Option<String>,
}

impl RunArgs {
    pub fn prune(&self) -> bool {
        !self.no_prune
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_defaults_match_the_contract() {
        let cli = Cli::try_parse_from(["svc-handler", "run"]).unwrap();
        let Command::Run(run) = cli.command;
        assert_eq!(run.metrics_listen.to_string(), "127.0.0.1:9732");
        assert_eq!(run.workers, 4);
        assert_eq!(run.session_ttl, Duration::from_secs(15));
        assert_eq!(run.resync_interval, Duration::from_secs(600));
        assert!(run.prune());
        assert!(!run.once);
        let cli = Cli::try_parse_from(["svc-handler", "run", "--no-prune", "--once"]).unwrap();
        let Command::Run(run) = cli.command;
        assert!(!run.prune());
        assert!(run.once);
    }

    #[test]
    fn bad_durations_are_named() {
        let e = Cli::try_parse_from(["svc-handler", "run", "--session-ttl", "soon"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--session-ttl") && e.contains("soon"), "{e}");
    }
}
