//! The command line: arguments of every subcommand, and the Consul
//! connection built from the `consul` CLI's environment variables with flags
//! on top.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::consul::{ConsulError, Secret, Settings};

/// `-V` and `svc-handler version`: the version, the commit and the build
/// date (from build.rs).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("SVC_HANDLER_COMMIT"),
    ", built ",
    env!("SVC_HANDLER_BUILD_DATE"),
    ")"
);

#[derive(Debug, Parser)]
#[command(
    name = "svc-handler",
    version = VERSION,
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
    /// Consul Enterprise partition (CONSUL_PARTITION): the client's scope, and
    /// the partition of a SERVICE argument that names none.
    #[arg(long, global = true)]
    pub partition: Option<String>,
    /// Consul Enterprise namespace (CONSUL_NAMESPACE): the client's scope, and
    /// the namespace of a SERVICE argument that names none.
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

/// A duration within `min..=max` (and `0` too when `zero_ok`): values
/// outside would break the daemon (a hot loop, a request that can never
/// finish, a wait Consul silently shortens), so they are refused with the
/// bound, not clamped.
fn parse_bounded(s: &str, min: Duration, max: Duration, zero_ok: bool) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if (zero_ok && d.is_zero()) || (min..=max).contains(&d) {
        return Ok(d);
    }
    let (lo, hi) = (
        humantime::format_duration(min),
        humantime::format_duration(max),
    );
    let zero = if zero_ok { ", or 0 to turn it off" } else { "" };
    Err(format!("{s:?} is out of bounds: {lo} to {hi}{zero}"))
}

fn parse_session_ttl(s: &str) -> Result<Duration, String> {
    parse_bounded(s, crate::lock::MIN_TTL, crate::lock::MAX_TTL, false)
}

fn parse_lock_delay(s: &str) -> Result<Duration, String> {
    // Consul's own bound for a session's lock-delay.
    parse_bounded(s, Duration::ZERO, Duration::from_secs(60), false)
}

fn parse_resync_interval(s: &str) -> Result<Duration, String> {
    parse_bounded(
        s,
        Duration::from_secs(1),
        Duration::from_secs(7 * 86_400),
        true,
    )
}

fn parse_watch_wait(s: &str) -> Result<Duration, String> {
    parse_bounded(
        s,
        Duration::from_secs(1),
        crate::consul::MAX_BLOCKING_WAIT,
        false,
    )
}

fn parse_consul_timeout(s: &str) -> Result<Duration, String> {
    parse_bounded(
        s,
        Duration::from_millis(100),
        Duration::from_secs(300),
        false,
    )
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the reconciler: watch the desired prefix and apply every change.
    Run(RunArgs),
    /// Check base.json files offline (exit 0: all valid, 1: any invalid).
    Validate(ValidateArgs),
    /// Print the JSON Schema (draft 2020-12) of base.json.
    Schema,
    /// Validate a base.json and write it to Consul KV, refusing to overwrite a concurrent edit.
    Apply(ApplyArgs),
    /// Wait until the daemon has applied the current base.json (exit 0 applied, 1 failed, 2 timeout).
    Wait(WaitArgs),
    /// Show every service's outcome, or the details of one.
    Status(StatusArgs),
    /// Show what a reconcile would change in Consul (exit 0 no change, 1 changes, 2 error).
    Diff(DiffArgs),
    /// One line per service: in sync, would change which entries, blocked, invalid, pending or paused (exit 0 in sync, 2 changes, 1 error).
    Plan(PlanArgs),
    /// Delete a service's base.json; the daemon then removes what it owns.
    Delete(DeleteArgs),
    /// Write base.json from the entries already in Consul (with "adopt": true), where there is none.
    Import(ImportArgs),
    /// Show a service's last outcomes, newest first (observed.json keeps 20).
    History(HistoryArgs),
    /// Hold a service: the daemon writes none of its entries (no apply, no drift correction, no deletion) until resume.
    Pause(PauseArgs),
    /// Let the daemon handle a paused service again, at its latest base.json.
    Resume(ResumeArgs),
    /// Print a shell completion script.
    Completions(CompletionsArgs),
    /// Print the version, the commit and the build date.
    Version(OutputArgs),
    /// Write the man pages (svc-handler.1 and one per command) to a folder,
    /// for packagers (scripts/package).
    #[command(hide = true)]
    Man(ManArgs),
}

/// How a command prints what it found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// For people.
    #[default]
    Text,
    /// For machines: JSON on standard output.
    Json,
}

#[derive(Debug, Args, Clone, Copy, Default)]
pub struct OutputArgs {
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

impl OutputArgs {
    pub fn json(&self) -> bool {
        self.output == OutputFormat::Json
    }
}

/// How a SERVICE argument reads.
const SERVICE_HELP: &str = "The service: NAME, NAMESPACE/NAME or PARTITION/NAMESPACE/NAME \
(partition and namespace default to --partition/--namespace, else CONSUL_PARTITION/CONSUL_NAMESPACE, else default)";

#[derive(Debug, Args, Clone)]
pub struct ValidateArgs {
    /// base.json files to check; `-` reads standard input.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// The Consul version the entries are for (`1.8.7`, `v1.15.2+ent`): fields it does
    /// not know are refused. Default: the newest version svc-handler knows.
    #[arg(long, value_name = "VERSION")]
    pub consul_version: Option<crate::spec::Version>,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args, Clone)]
pub struct ApplyArgs {
    /// The service (NAME, NAMESPACE/NAME or PARTITION/NAMESPACE/NAME); give
    /// none with a folder: each file's name (without `.json`) names its service.
    #[arg(value_name = "SERVICE")]
    pub service: Option<String>,
    /// The base.json to write; `-` reads standard input. A folder: every
    /// `*.json` in it, all checked before any is written.
    #[arg(short = 'f', long = "file", value_name = "FILE|DIR")]
    pub file: PathBuf,
    /// Then wait until the daemon has applied each (exit 1 on a failure, 2 on timeout).
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up after this long (for all of them together).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Write only if base.json is still at this generation (its ModifyIndex, as
    /// `status` shows it; 0: only if it does not exist yet). Default: the
    /// generation read just before writing.
    #[arg(long, value_name = "N")]
    pub expect_generation: Option<u64>,
    /// Write whatever base.json holds now (no check-and-set), even an equal document.
    #[arg(long, conflicts_with = "expect_generation")]
    pub force: bool,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args, Clone)]
pub struct WaitArgs {
    /// The services to wait for (NAME, NAMESPACE/NAME or
    /// PARTITION/NAMESPACE/NAME); with more than one, a progress line on a
    /// terminal, and all must be applied within --timeout.
    #[arg(value_name = "SERVICE", required = true, num_args = 1..)]
    pub services: Vec<String>,
    /// Give up (exit 2) after this long.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Exit 1 at the first `error`, even one the daemon will retry (by
    /// default `wait` waits on while the daemon retries, and exits 1 only on
    /// a final outcome: invalid, conflict, an error it will not retry).
    #[arg(long)]
    pub fail_fast: bool,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args, Clone)]
pub struct StatusArgs {
    /// One service to show in detail (NAME, NAMESPACE/NAME or
    /// PARTITION/NAMESPACE/NAME); without it, a table of every service.
    #[arg(value_name = "SERVICE")]
    pub service: Option<String>,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args, Clone)]
pub struct DiffArgs {
    #[arg(value_name = "SERVICE", help = SERVICE_HELP)]
    pub service: String,
    /// Compare this base.json instead of the one in Consul KV; `-` reads standard input.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args, Clone)]
pub struct ImportArgs {
    /// The services to import: NAME, NAMESPACE/NAME or PARTITION/NAMESPACE/NAME.
    #[arg(
        value_name = "SERVICE",
        required_unless_present = "all",
        conflicts_with = "all"
    )]
    pub services: Vec<String>,
    /// Every service with a service-defaults, service-resolver,
    /// service-splitter or service-router that carries no ownership mark, in
    /// the client's scope.
    #[arg(long)]
    pub all: bool,
    /// Print the documents; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args, Clone)]
pub struct DeleteArgs {
    #[arg(value_name = "SERVICE", help = SERVICE_HELP)]
    pub service: String,
    /// Wait until the daemon has removed observed.json and its records (and,
    /// when it prunes, the service's entries).
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up (exit 2) after this long.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Only say what the daemon would remove; delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args, Clone)]
pub struct PlanArgs {
    /// The services to plan (NAME, NAMESPACE/NAME or PARTITION/NAMESPACE/NAME;
    /// a NAME ending in `*` matches the names that begin with what comes
    /// before). Default: every service with a base.json or an observed.json.
    #[arg(value_name = "SERVICE")]
    pub services: Vec<String>,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args, Clone)]
pub struct HistoryArgs {
    #[arg(value_name = "SERVICE", help = SERVICE_HELP)]
    pub service: String,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args, Clone)]
pub struct PauseArgs {
    #[arg(value_name = "SERVICE", help = SERVICE_HELP)]
    pub service: String,
    /// Why (shown by `status` and `wait`, and in observed.json).
    #[arg(long)]
    pub reason: Option<String>,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args, Clone)]
pub struct ResumeArgs {
    #[arg(value_name = "SERVICE", help = SERVICE_HELP)]
    pub service: String,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args, Clone)]
pub struct ManArgs {
    /// The folder to write the pages to (created when missing).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
}

#[derive(Debug, Args, Clone)]
pub struct CompletionsArgs {
    /// The shell to complete in.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
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
    #[arg(long, env = "SVC_HANDLER_WORKERS", default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub workers: u16,
    /// TTL of the instance's Consul session (10s to 24h); renewed every TTL/2.
    #[arg(long, env = "SVC_HANDLER_SESSION_TTL", default_value = "15s", value_parser = parse_session_ttl)]
    pub session_ttl: Duration,
    /// How long a lock lost by a crashed holder stays blocked.
    #[arg(long, env = "SVC_HANDLER_LOCK_DELAY", default_value = "1s", value_parser = parse_lock_delay)]
    pub lock_delay: Duration,
    /// A full re-check of every service, this often (0 turns it off).
    #[arg(long, env = "SVC_HANDLER_RESYNC_INTERVAL", default_value = "10m", value_parser = parse_resync_interval)]
    pub resync_interval: Duration,
    /// Blocking-query wait of the watches (at most 10m).
    #[arg(long, env = "SVC_HANDLER_WATCH_WAIT", default_value = "5m", value_parser = parse_watch_wait)]
    pub watch_wait: Duration,
    /// KiB per second the drift listings may read together (0: no drift
    /// probe; the periodic resync alone finds drift).
    #[arg(long, env = "SVC_HANDLER_DRIFT_BUDGET", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(0..=1048576))]
    pub drift_budget: u64,
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
    /// Deadline of one Consul request that does not block (a blocking read
    /// gets its wait on top).
    #[arg(long, env = "SVC_HANDLER_CONSUL_TIMEOUT", default_value = "10s", value_parser = parse_consul_timeout)]
    pub consul_timeout: Duration,
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
        let Command::Run(run) = cli.command else {
            panic!("not run")
        };
        assert_eq!(run.metrics_listen.to_string(), "127.0.0.1:9732");
        assert_eq!(run.workers, 64);
        assert_eq!(run.session_ttl, Duration::from_secs(15));
        assert_eq!(run.resync_interval, Duration::from_secs(600));
        assert!(run.prune());
        assert!(!run.once);
        let cli = Cli::try_parse_from(["svc-handler", "run", "--no-prune", "--once"]).unwrap();
        let Command::Run(run) = cli.command else {
            panic!("not run")
        };
        assert!(!run.prune());
        assert!(run.once);
    }

    #[test]
    fn flags_that_would_break_the_daemon_are_refused_with_their_bound() {
        let refused = |flag: &str, value: &str, bound: &str| {
            let e = Cli::try_parse_from(["svc-handler", "run", flag, value]).unwrap_err();
            assert_eq!(
                e.kind(),
                clap::error::ErrorKind::ValueValidation,
                "{flag} {value}"
            );
            let text = e.to_string();
            assert!(
                text.contains(flag) && text.contains(bound),
                "{flag} {value}: {text}"
            );
        };
        refused(
            "--resync-interval",
            "1ms",
            "1s to 7days, or 0 to turn it off",
        );
        refused("--resync-interval", "999ms", "1s to 7days");
        refused("--consul-timeout", "0s", "100ms to 5m");
        refused("--watch-wait", "11m", "1s to 10m");
        refused("--watch-wait", "20m", "1s to 10m");
        refused("--session-ttl", "24h 1s", "10s to 1day");
        refused("--session-ttl", "5s", "10s to 1day");
        refused("--lock-delay", "61s", "0s to 1m");
        for ok in [
            ["--resync-interval", "0"],
            ["--resync-interval", "1s"],
            ["--watch-wait", "10m"],
            ["--consul-timeout", "100ms"],
            ["--session-ttl", "24h"],
            ["--lock-delay", "0s"],
        ] {
            let args = ["svc-handler", "run", ok[0], ok[1]];
            assert!(Cli::try_parse_from(args).is_ok(), "{ok:?}");
        }
    }

    #[test]
    fn operator_commands_parse() {
        let cli = Cli::try_parse_from([
            "svc-handler",
            "apply",
            "team/web",
            "-f",
            "web.json",
            "--expect-generation",
            "7",
            "-o",
            "json",
            "--namespace",
            "team",
        ])
        .unwrap();
        let Command::Apply(a) = cli.command else {
            panic!("not apply")
        };
        assert_eq!(a.service.as_deref(), Some("team/web"));
        assert_eq!(a.file, PathBuf::from("web.json"));
        assert_eq!(a.expect_generation, Some(7));
        assert!(!a.force && a.output.json());
        assert_eq!(cli.consul.namespace.as_deref(), Some("team"));

        let e = Cli::try_parse_from([
            "svc-handler",
            "apply",
            "web",
            "-f",
            "x",
            "--force",
            "--expect-generation",
            "1",
        ])
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("--force") && e.contains("--expect-generation"),
            "{e}"
        );
        assert!(Cli::try_parse_from(["svc-handler", "apply", "web"]).is_err());

        let cli = Cli::try_parse_from(["svc-handler", "wait", "web"]).unwrap();
        let Command::Wait(w) = cli.command else {
            panic!("not wait")
        };
        assert_eq!(w.timeout, Duration::from_secs(60));
        assert!(!w.output.json());

        let cli =
            Cli::try_parse_from(["svc-handler", "delete", "web", "--wait", "--timeout", "5s"])
                .unwrap();
        let Command::Delete(d) = cli.command else {
            panic!("not delete")
        };
        assert!(d.wait);
        assert_eq!(d.timeout, Duration::from_secs(5));

        let cli = Cli::try_parse_from(["svc-handler", "status"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Status(StatusArgs { service: None, .. })
        ));
        let cli = Cli::try_parse_from(["svc-handler", "diff", "-f", "-", "web"]).unwrap();
        let Command::Diff(d) = cli.command else {
            panic!("not diff")
        };
        assert_eq!(d.file, Some(PathBuf::from("-")));
        assert!(Cli::try_parse_from(["svc-handler", "validate"]).is_err());
        assert!(Cli::try_parse_from(["svc-handler", "completions", "tcsh"]).is_err());
        assert!(Cli::try_parse_from(["svc-handler", "status", "-o", "yaml"]).is_err());
    }

    #[test]
    fn bad_durations_are_named() {
        let e = Cli::try_parse_from(["svc-handler", "run", "--session-ttl", "soon"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--session-ttl") && e.contains("soon"), "{e}");
    }
}
