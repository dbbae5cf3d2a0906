//! The operator commands (`validate`, `schema`, `apply`, `wait`, `status`,
//! `diff`, `delete`, `completions`): what `svc-handler` does besides `run`.
//!
//! Each command returns its exit code, or a [`Failure`] whose message `main`
//! prints to standard error. Messages name the file, key or field concerned
//! and never carry the ACL token (no [`ConsulError`] does).

pub mod apply;
pub mod apply_dir;
pub mod delete;
pub mod diff;
pub mod history;
pub mod import;
pub mod output;
pub mod pause;
pub mod plan;
pub mod status;
pub mod validate;
pub mod wait;

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use crate::cli::{Cli, Command};
use crate::consul::{Client, ConsulError, KvPair, QueryMeta, QueryOptions, Settings};
use crate::keys::{KeyError, Layout, ServiceId};

/// The JSON Schema of base.json (draft 2020-12), as `svc-handler schema` prints it:
/// [`crate::fields::schema`] pretty-printed, as a unit test checks (regenerate with
/// `SVC_HANDLER_WRITE_SCHEMA=1 cargo test --lib schema_file`).
pub const BASE_SCHEMA: &str = include_str!("../../schema/base.schema.json");

/// Exit code of success.
pub const EXIT_OK: u8 = 0;
/// Exit code of a failure: an invalid file, a refused write, a failed
/// reconcile (`wait`), changes found (`diff`), Consul unreachable...
pub const EXIT_FAILED: u8 = 1;
/// Exit code of a timeout (`wait`, `delete --wait`) and of an error in `diff`.
pub const EXIT_TIMEOUT: u8 = 2;

/// A command that could not do what it was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The process exit code.
    pub code: u8,
    /// What went wrong, for standard error (without the `svc-handler: ` prefix).
    /// Empty when the command already printed everything it had to say.
    pub message: String,
}

impl Failure {
    pub fn new(code: u8, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }

    /// Exit code 1 with `message`.
    pub fn failed(message: impl Into<String>) -> Failure {
        Failure::new(EXIT_FAILED, message)
    }
}

impl From<ConsulError> for Failure {
    fn from(e: ConsulError) -> Failure {
        Failure::failed(e.to_string())
    }
}

/// What a command returns: its exit code, or why it failed.
pub type Exit = Result<u8, Failure>;

/// Runs any command but `run` (which `main` runs itself).
pub async fn dispatch(cli: &Cli) -> Exit {
    match &cli.command {
        Command::Run(_) => Err(Failure::failed("`run` is not a command of this module")),
        Command::Validate(args) => validate::run(args),
        Command::Schema => {
            output::emit(BASE_SCHEMA);
            Ok(EXIT_OK)
        }
        Command::Version(args) => {
            if args.json() {
                output::print_json(&serde_json::json!({
                    "version": env!("CARGO_PKG_VERSION"),
                    "commit": env!("SVC_HANDLER_COMMIT"),
                    "build_date": env!("SVC_HANDLER_BUILD_DATE"),
                }));
            } else {
                crate::outln!("svc-handler {}", crate::cli::VERSION);
            }
            Ok(EXIT_OK)
        }
        Command::Completions(args) => {
            completions(args.shell);
            Ok(EXIT_OK)
        }
        Command::Man(args) => man_pages(&args.dir),
        Command::Apply(args) => apply::run(&Ctx::new(cli)?, args).await,
        Command::Wait(args) => wait::run(&Ctx::new(cli)?, args).await,
        Command::Status(args) => status::run(&Ctx::new(cli)?, args).await,
        Command::Diff(args) => {
            let ctx = Ctx::new(cli).map_err(|f| Failure::new(EXIT_TIMEOUT, f.message))?;
            diff::run(&ctx, args).await
        }
        Command::Delete(args) => delete::run(&Ctx::new(cli)?, args).await,
        Command::Import(args) => import::run(&Ctx::new(cli)?, args).await,
        Command::Plan(args) => plan::run(&Ctx::new(cli)?, args).await,
        Command::History(args) => history::run(&Ctx::new(cli)?, args).await,
        Command::Pause(args) => pause::pause(&Ctx::new(cli)?, args).await,
        Command::Resume(args) => pause::resume(&Ctx::new(cli)?, args).await,
    }
}

/// Writes the completion script of `shell` to standard output.
pub fn completions(shell: clap_complete::Shell) {
    let mut cmd = <Cli as clap::CommandFactory>::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, "svc-handler", &mut script);
    output::emit_bytes(&script);
}

/// `svc-handler man DIR`: the man pages generated from the command line's
/// own definitions (clap_mangen), svc-handler.1 and svc-handler-COMMAND.1.
fn man_pages(dir: &std::path::Path) -> Result<u8, Failure> {
    let failed = |e: std::io::Error| Failure::new(EXIT_FAILED, format!("{}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(failed)?;
    let cmd = <Cli as clap::CommandFactory>::command();
    clap_mangen::generate_to(cmd, dir).map_err(failed)?;
    Ok(EXIT_OK)
}

/// What the Consul commands share: a client in the settings' scope (where
/// svc-handler's own keys live, as for the daemon), the key layout, and the
/// partition and namespace a SERVICE argument defaults to.
pub struct Ctx {
    pub client: Client,
    pub layout: Layout,
    pub partition: String,
    pub namespace: String,
}

impl Ctx {
    pub fn new(cli: &Cli) -> Result<Ctx, Failure> {
        let settings = cli
            .consul
            .settings()
            .map_err(|e| Failure::failed(e.to_string()))?;
        let layout =
            Layout::new(&cli.prefix).map_err(|e| Failure::failed(format!("--prefix: {e}")))?;
        Ctx::with(settings, layout)
    }

    pub fn with(settings: Settings, layout: Layout) -> Result<Ctx, Failure> {
        let partition = settings.partition.clone();
        let namespace = settings.namespace.clone();
        let client = Client::new(settings).map_err(|e| Failure::failed(e.to_string()))?;
        Ok(Ctx {
            client,
            layout,
            partition,
            namespace,
        })
    }

    /// The service a SERVICE argument names.
    pub fn service(&self, arg: &str) -> Result<ServiceId, Failure> {
        parse_service(arg, &self.partition, &self.namespace)
            .map_err(|e| Failure::failed(format!("SERVICE {arg:?}: {e}")))
    }

    /// A consistent read of one key.
    pub async fn get(&self, key: &str) -> Result<Option<KvPair>, ConsulError> {
        Ok(self
            .client
            .kv_get(key, &QueryOptions::consistent())
            .await?
            .0)
    }
}

/// `NAME`, `NAMESPACE/NAME` or `PARTITION/NAMESPACE/NAME`, the missing parts
/// taken from `partition` and `namespace`; every part checked.
pub fn parse_service(arg: &str, partition: &str, namespace: &str) -> Result<ServiceId, KeyError> {
    let parts: Vec<&str> = arg.split('/').collect();
    let (p, ns, name) = match parts.as_slice() {
        [name] => (partition, namespace, *name),
        [ns, name] => (partition, *ns, *name),
        [p, ns, name] => (*p, *ns, *name),
        _ => {
            return Err(KeyError::InvalidName {
                what: "service".into(),
                value: format!("{arg:?}"),
                reason: "expected NAME, NAMESPACE/NAME or PARTITION/NAMESPACE/NAME".into(),
            })
        }
    };
    ServiceId::new(p, ns, name)
}

/// How a file argument is named in messages.
pub fn display_path(path: &Path) -> String {
    if path == Path::new("-") {
        "<stdin>".to_string()
    } else {
        path.display().to_string()
    }
}

/// Reads a file argument (`-`: standard input), a message naming it on error.
pub fn read_input(path: &Path) -> Result<Vec<u8>, String> {
    if path == Path::new("-") {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .map_err(|e| format!("<stdin>: cannot read: {e}"))?;
        return Ok(buf);
    }
    std::fs::read(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))
}

/// Reads a base.json file argument and checks it; the message names the file.
pub fn read_spec(path: &Path) -> Result<crate::spec::Spec, Failure> {
    let bytes = read_input(path).map_err(Failure::failed)?;
    crate::spec::parse(&bytes).map_err(|e| Failure::failed(format!("{}: {e}", display_path(path))))
}

/// Sleeps a retry delay, never past `deadline`.
async fn sleep_until_before(delay: Duration, deadline: tokio::time::Instant) {
    let wake = (tokio::time::Instant::now() + delay).min(deadline);
    tokio::time::sleep_until(wake).await;
}

/// Delays between retries of a failed Consul read while waiting.
fn retry_delays() -> impl Iterator<Item = Duration> {
    let mut d = Duration::from_millis(100);
    std::iter::from_fn(move || {
        let out = d;
        d = (d * 2).min(Duration::from_secs(2));
        Some(out)
    })
}

/// One blocking read of `key` past `index`, cut off at `deadline`; `None`
/// when the deadline passed first.
pub async fn get_blocking(
    client: &Client,
    key: &str,
    index: u64,
    deadline: tokio::time::Instant,
) -> Result<Option<(Option<KvPair>, QueryMeta)>, ConsulError> {
    let now = tokio::time::Instant::now();
    if now >= deadline {
        return Ok(None);
    }
    let remaining = deadline - now;
    let opts = QueryOptions::blocking(index, remaining.max(Duration::from_millis(1)));
    match tokio::time::timeout(remaining, client.kv_get(key, &opts)).await {
        Ok(r) => r.map(Some),
        Err(_) => Ok(None),
    }
}

/// One blocking listing of the keys under `prefix` past `index`, cut off at
/// `deadline`; `None` when the deadline passed first.
pub async fn keys_blocking(
    client: &Client,
    prefix: &str,
    index: u64,
    deadline: tokio::time::Instant,
) -> Result<Option<(Vec<String>, QueryMeta)>, ConsulError> {
    let now = tokio::time::Instant::now();
    if now >= deadline {
        return Ok(None);
    }
    let remaining = deadline - now;
    let opts = QueryOptions::blocking(index, remaining.max(Duration::from_millis(1)));
    match tokio::time::timeout(remaining, client.kv_keys(prefix, None, &opts)).await {
        Ok(r) => r.map(Some),
        Err(_) => Ok(None),
    }
}

/// `1m30s`-style text of a duration, to the second (to the millisecond below one second).
pub fn human_duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        return format!("{}ms", d.as_millis());
    }
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_arguments() {
        let id = parse_service("web", "p1", "ns1").unwrap();
        assert_eq!(id.to_string(), "p1/ns1/web");
        let id = parse_service("team/web", "p1", "ns1").unwrap();
        assert_eq!(id.to_string(), "p1/team/web");
        let id = parse_service("a/b/web", "p1", "ns1").unwrap();
        assert_eq!(id.to_string(), "a/b/web");
        let e = parse_service("a/b/c/d", "default", "default").unwrap_err();
        assert!(e.to_string().contains("PARTITION/NAMESPACE/NAME"), "{e}");
        let e = parse_service("we b", "default", "default").unwrap_err();
        assert!(e.to_string().starts_with("invalid service name"), "{e}");
        let e = parse_service("/web", "default", "default").unwrap_err();
        assert!(e.to_string().starts_with("invalid namespace"), "{e}");
    }

    #[test]
    fn the_schema_is_json() {
        let v: serde_json::Value = serde_json::from_str(BASE_SCHEMA).unwrap();
        assert_eq!(v["$schema"], "https://json-schema.org/draft/2020-12/schema");
    }

    #[test]
    fn the_schema_file_is_generated_from_the_field_table() {
        let generated = format!(
            "{}\n",
            serde_json::to_string_pretty(&crate::fields::schema()).unwrap()
        );
        if std::env::var_os("SVC_HANDLER_WRITE_SCHEMA").is_some() {
            let path = concat!(env!("CARGO_MANIFEST_DIR"), "/schema/base.schema.json");
            std::fs::write(path, &generated).unwrap();
            return;
        }
        assert!(
            BASE_SCHEMA == generated,
            "schema/base.schema.json is not what src/fields.rs generates; regenerate it with \
             `SVC_HANDLER_WRITE_SCHEMA=1 cargo test --lib schema_file`"
        );
    }

    #[test]
    fn durations_for_people() {
        assert_eq!(human_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(human_duration(Duration::from_millis(90_500)), "1m 30s");
    }

    #[test]
    fn retry_delays_are_capped() {
        let d: Vec<_> = retry_delays().take(7).collect();
        assert_eq!(d[0], Duration::from_millis(100));
        assert_eq!(d[6], Duration::from_secs(2));
    }
}
