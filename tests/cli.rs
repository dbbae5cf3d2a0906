//! The operator commands, run as the real binary against a real Consul agent
//! (and, where a command waits for the daemon, a real `svc-handler run`).

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::daemon::DaemonProc;
use support::{http_get, invalid, prefix, shared};
use svc_handler::consul::QueryOptions;

const BIN: &str = env!("CARGO_BIN_EXE_svc-handler");

/// What one run of the binary gave.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn from(out: Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.stdout))
    }
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// A command of the binary with no Consul setting from the test's own environment.
fn bare(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("CONSUL_") || k.starts_with("SVC_HANDLER_") || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    cmd
}

fn run_bare(args: &[&str]) -> Run {
    Run::from(bare(args).output().expect("run svc-handler"))
}

/// One test's world: its own KV prefix on the shared agent and a tag that
/// makes its service names unique (names are global in Consul).
struct World {
    prefix: String,
    tag: String,
    dir: tempfile::TempDir,
}

fn world(test: &str) -> World {
    let prefix = prefix(test);
    let tag = prefix.rsplit('/').next().unwrap().to_string();
    World {
        prefix,
        tag,
        dir: tempfile::tempdir().unwrap(),
    }
}

impl World {
    fn name(&self, base: &str) -> String {
        format!("{base}-{}", self.tag)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = bare(args);
        cmd.args(["--prefix", &self.prefix, "--http-addr", &shared().url()]);
        cmd
    }

    fn run(&self, args: &[&str]) -> Run {
        Run::from(self.command(args).output().expect("run svc-handler"))
    }

    fn run_stdin(&self, args: &[&str], input: &[u8]) -> Run {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn svc-handler");
        child.stdin.take().unwrap().write_all(input).unwrap();
        Run::from(child.wait_with_output().unwrap())
    }

    fn file(&self, name: &str, body: &Value) -> String {
        self.raw_file(name, &serde_json::to_vec_pretty(body).unwrap())
    }

    fn raw_file(&self, name: &str, bytes: &[u8]) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path.display().to_string()
    }

    fn base_key(&self, name: &str) -> String {
        format!("{}/desired/default/default/{name}/base.json", self.prefix)
    }

    /// `svc-handler run` on this world's prefix, killed when dropped.
    fn daemon(&self) -> DaemonProc {
        let instance = format!("cli-test-{}", self.tag);
        DaemonProc::start(&shared().url(), &self.prefix, &instance, &[], &[])
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// The config entry, or `None` when Consul answers 404.
fn entry(kind: &str, name: &str) -> Option<Value> {
    match http_get(shared().http, &format!("/v1/config/{kind}/{name}")) {
        Some((200, body)) => Some(serde_json::from_str(&body).unwrap()),
        Some((404, _)) => None,
        other => panic!("GET config {kind}/{name}: {other:?}"),
    }
}

fn kv_value(key: &str) -> Option<Vec<u8>> {
    block_on(async {
        shared()
            .client()
            .kv_get(key, &QueryOptions::consistent())
            .await
            .unwrap()
            .0
            .map(|p| p.value)
    })
}

fn kv_put(key: &str, value: &[u8]) {
    block_on(async { shared().client().kv_put(key, value).await.unwrap() })
}

fn web_spec(gateway: &str) -> Value {
    json!({
        "defaults": { "Protocol": "http" },
        "resolver": {
            "ConnectTimeout": "5s",
            "DefaultSubset": "v1",
            "Subsets": { "v1": { "Filter": "Service.Meta.version == v1" } }
        },
        "router": { "Routes": [ {
            "Match": { "HTTP": { "PathPrefix": "/v1" } },
            "Destination": { "ServiceSubset": "v1" }
        } ] },
        "terminating_gateway": { "Gateway": gateway, "SNI": "api.example.com" }
    })
}

#[test]
fn apply_wait_status_diff_delete() {
    let w = world("life");
    let name = w.name("web");
    let gw = w.name("egress");
    let _daemon = w.daemon();

    let file = w.file("web.json", &web_spec(&gw));
    let r = w.run(&["apply", &name, "-f", &file, "-o", "json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let applied = r.json();
    let generation = applied["generation"].as_u64().unwrap();
    assert!(generation > 0);
    assert_eq!(applied["changed"], true);
    assert_eq!(applied["key"], w.base_key(&name));
    // Stored normalized.
    let stored = kv_value(&w.base_key(&name)).unwrap();
    let spec = svc_handler::spec::parse(&stored).unwrap();
    assert_eq!(stored, svc_handler::spec::to_canonical_json(&spec));

    let r = w.run(&["wait", &name, "--timeout", "30s"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout
            .contains(&format!("applied at generation {generation}")),
        "{r:?}"
    );
    assert_eq!(
        entry("service-defaults", &name).unwrap()["Protocol"],
        "http"
    );

    let r = w.run(&["status"]);
    assert_eq!(r.code, 0, "{r:?}");
    let header = r.stdout.lines().next().unwrap();
    for col in [
        "NAME",
        "PARTITION",
        "NAMESPACE",
        "STATUS",
        "GENERATION",
        "OBSERVED",
        "AGE",
        "MESSAGE",
    ] {
        assert!(header.contains(col), "{header}");
    }
    let row = r.stdout.lines().find(|l| l.starts_with(&name)).unwrap();
    assert!(row.contains(" applied "), "{row}");
    assert!(
        !r.stdout.contains('\x1b'),
        "no colour when not on a terminal"
    );

    let r = w.run(&["status", "-o", "json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let all = r.json();
    let me = all
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name.as_str())
        .unwrap();
    assert_eq!(me["status"], "applied");
    assert_eq!(me["generation"], generation);
    assert_eq!(me["observed_generation"], generation);
    assert_eq!(me["partition"], "default");

    let r = w.run(&["status", &name]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("Status:       applied"), "{r:?}");
    assert!(r
        .stdout
        .contains(&format!("service-router/default/default/{name}")));
    let r = w.run(&["status", &format!("default/{name}"), "-o", "json"]);
    assert_eq!(r.json()["observed"]["status"], "applied");

    let r = w.run(&["diff", &name]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.stdout, "", "{r:?}");

    // Edited: a longer timeout, no router, another SNI.
    let mut edited = web_spec(&gw);
    edited["resolver"]["ConnectTimeout"] = json!("7s");
    edited.as_object_mut().unwrap().remove("router");
    edited["terminating_gateway"]["SNI"] = json!("new.example.com");
    let edited_file = w.file("web-edited.json", &edited);
    let r = w.run(&["diff", "-f", &edited_file, &name]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stdout
            .contains(&format!("--- service-resolver/{name} (Consul)")),
        "{r:?}"
    );
    assert!(
        r.stdout.contains("+  \"ConnectTimeout\": 7000000000"),
        "{r:?}"
    );
    assert!(
        r.stdout
            .contains(&format!("+++ service-router/{name} (deleted)")),
        "{r:?}"
    );
    assert!(
        r.stdout.contains("+      \"SNI\": \"new.example.com\""),
        "{r:?}"
    );
    assert!(!r.stdout.contains("service-defaults"), "unchanged: {r:?}");
    let r = w.run(&["diff", "-f", &edited_file, &name, "-o", "json"]);
    assert_eq!(r.code, 1, "{r:?}");
    let d = r.json();
    assert_eq!(d["changed"], true);
    let actions: Vec<(String, String)> = d["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_string(),
                e["action"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        actions,
        // In the order a reconcile makes them: a router leaving goes first,
        // then a splitter leaving (there is none).
        [
            ("service-router".to_string(), "delete".to_string()),
            ("service-splitter".into(), "none".into()),
            ("service-defaults".into(), "none".into()),
            ("service-resolver".into(), "update".into()),
            ("terminating-gateway".into(), "link".into()),
        ]
    );

    let r = w.run(&["apply", &name, "-f", &edited_file]);
    assert_eq!(r.code, 0, "{r:?}");
    let r = w.run(&["wait", &name, "--timeout", "30s", "-o", "json"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["result"], "applied");
    assert!(entry("service-router", &name).is_none());
    let r = w.run(&["diff", &name]);
    assert_eq!((r.code, r.stdout.as_str()), (0, ""), "{r:?}");

    // What deleting would remove, said first; --dry-run deletes nothing.
    let r = w.run(&["delete", &name, "--dry-run"]);
    assert_eq!(r.code, 0, "{r:?}");
    let link = format!("terminating-gateway/{gw}#{name}");
    for what in [
        format!("service-defaults/{name}"),
        format!("service-resolver/{name}"),
        link.clone(),
    ] {
        assert!(r.stdout.contains(&what), "{what}: {r:?}");
    }
    assert!(r.stdout.contains("would remove"), "{r:?}");
    assert!(
        kv_value(&w.base_key(&name)).is_some(),
        "--dry-run deleted base.json"
    );
    let r = w.run(&["delete", &name, "--dry-run", "-o", "json"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["removes"].as_array().unwrap().len(), 3, "{r:?}");
    assert!(entry("service-defaults", &name).is_some());

    let r = w.run(&["delete", &name, "--wait", "--timeout", "30s"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains(&link), "delete names what goes: {r:?}");
    assert!(entry("service-defaults", &name).is_none());
    assert!(entry("service-resolver", &name).is_none());
    let linked = entry("terminating-gateway", &gw).is_some_and(|g| {
        g["Services"]
            .as_array()
            .is_some_and(|s| s.iter().any(|l| l["Name"] == name.as_str()))
    });
    assert!(!linked, "the link is gone");
    assert!(kv_value(&format!(
        "{}/observed/default/default/{name}/observed.json",
        w.prefix
    ))
    .is_none());

    let r = w.run(&["status", &name]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("no such service"), "{r:?}");
    let r = w.run(&["delete", &name]);
    assert_eq!(r.code, 0, "deleting twice is fine: {r:?}");
}

#[test]
fn apply_refuses_a_stale_edit_unless_forced() {
    let w = world("cas");
    let name = w.name("api");
    let key = w.base_key(&name);
    let first = w.file("a.json", &json!({"defaults": {"Protocol": "grpc"}}));
    let r = w.run(&["apply", &name, "-f", &first, "-o", "json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let read = r.json()["generation"].as_u64().unwrap();

    // Someone else edits base.json after we read it.
    kv_put(&key, br#"{"defaults":{"Protocol":"http"}}"#);
    let mine = w.file("b.json", &json!({"defaults": {"Protocol": "tcp"}}));
    let r = w.run(&[
        "apply",
        &name,
        "-f",
        &mine,
        "--expect-generation",
        &read.to_string(),
    ]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("changed by someone else"), "{r:?}");
    assert!(r.stderr.contains(&key), "{r:?}");
    assert!(r.stderr.contains("--force"), "{r:?}");
    assert_eq!(
        kv_value(&key).unwrap(),
        br#"{"defaults":{"Protocol":"http"}}"#,
        "nothing written"
    );
    // 0: only when absent.
    let r = w.run(&["apply", &name, "-f", &mine, "--expect-generation", "0"]);
    assert_eq!(r.code, 1, "{r:?}");

    let r = w.run(&["apply", &name, "-f", &mine, "--force", "-o", "json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let forced = r.json()["generation"].as_u64().unwrap();
    assert!(forced > read);
    assert_eq!(
        kv_value(&key).unwrap(),
        br#"{"defaults":{"Protocol":"tcp"}}"#
    );

    // The same document again: nothing written, same generation.
    let r = w.run(&["apply", &name, "-f", &mine, "-o", "json"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["changed"], false);
    assert_eq!(r.json()["generation"], forced);

    // From standard input, with the generation just read.
    let r = w.run_stdin(
        &[
            "apply",
            &name,
            "-f",
            "-",
            "--expect-generation",
            &forced.to_string(),
        ],
        br#"{"resolver": {"ConnectTimeout": "1s"}}"#,
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("base.json written, generation"), "{r:?}");

    // An invalid file is refused before anything is written, naming the file.
    let before = kv_value(&key);
    let bad = w.raw_file("bad.json", b"{\n  \"defaults\": {\"Kind\": \"x\"}\n}");
    let r = w.run(&["apply", &name, "-f", &bad]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains(&format!("{bad}: $.defaults.Kind")),
        "{r:?}"
    );
    assert_eq!(kv_value(&key), before);

    let r = w.run(&["apply", "bad name", "-f", &mine]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("invalid service name"), "{r:?}");
}

#[test]
fn wait_times_out_then_reports_an_invalid_base_json() {
    let w = world("wait");
    let name = w.name("svc");
    let file = w.file("ok.json", &json!({"defaults": {"Protocol": "http"}}));
    assert_eq!(w.run(&["apply", &name, "-f", &file]).code, 0);

    // No daemon: nothing answers.
    let started = Instant::now();
    let r = w.run(&["wait", &name, "--timeout", "1s"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(r.stderr.contains("timed out after 1s"), "{r:?}");
    assert!(r.stderr.contains("no observed.json yet"), "{r:?}");
    // What Consul shows of daemons: other tests' may hold sessions here.
    assert!(r.stderr.contains("session"), "{r:?}");
    let r = w.run(&["wait", &name, "--timeout", "300ms", "-o", "json"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert_eq!(r.json()["result"], "timeout");
    let r = w.run(&["status", "-o", "json"]);
    assert_eq!(r.json()[0]["status"], "pending", "{r:?}");

    // base.json written by hand, bypassing apply's validation.
    kv_put(
        &w.base_key(&name),
        br#"{"defaults": {"Protocol": "http"}, "adopt": "yes"}"#,
    );
    let mut daemon = w.daemon();
    let r = w.run(&["wait", &name, "--timeout", "30s"]);
    assert_eq!(r.code, 1, "{r:?}\n{}", daemon.log_text());
    assert!(r.stderr.contains("invalid at generation"), "{r:?}");
    assert!(
        r.stderr
            .contains("$.adopt: expected true, false or \"replace\""),
        "{r:?}"
    );
    let r = w.run(&["status"]);
    let row = r.stdout.lines().find(|l| l.starts_with(&name)).unwrap();
    assert!(row.contains(" invalid "), "{row}");
    assert!(row.contains("$.adopt"), "{row}");

    let r = w.run(&["wait", &w.name("nothing"), "--timeout", "1s"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("does not exist"), "{r:?}");
    daemon.stop(Duration::from_secs(5));
}

#[test]
fn validate_exit_codes_and_places() {
    let w = world("validate");
    let good = w.file("good.json", &json!({"defaults": {"Protocol": "http"}}));
    let bad = w.raw_file("bad.json", b"{\n  \"adopt\": true\n  \"defaults\": {}\n}");
    let wrong = w.raw_file("wrong.json", br#"{"resolver": {"Subsets": {"v1": "x"}}}"#);

    let r = run_bare(&["validate", &good]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains(&format!("{good}: valid")), "{r:?}");

    let r = run_bare(&["validate", &good, &bad, &wrong]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr
            .contains(&format!("{bad}: line 3, column 3: expected ',' or '}}'")),
        "{r:?}"
    );
    assert!(
        r.stderr.contains(&format!(
            "{wrong}: $.resolver.Subsets.v1: expected an object, found a string"
        )),
        "{r:?}"
    );

    let r = run_bare(&["validate", "-o", "json", &good, &bad]);
    assert_eq!(r.code, 1, "{r:?}");
    let v = r.json();
    assert_eq!(v[0]["valid"], true);
    assert_eq!(v[1]["valid"], false);
    assert_eq!(v[1]["error"]["line"], 3);
    assert_eq!(v[1]["error"]["column"], 3);

    let mut child = bare(&["validate", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(br#"{"defaults": [] }"#)
        .unwrap();
    let r = Run::from(child.wait_with_output().unwrap());
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr
            .contains("<stdin>: $.defaults: expected an object or null"),
        "{r:?}"
    );

    let r = run_bare(&["validate", "/nonexistent/base.json"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("/nonexistent/base.json: cannot read"),
        "{r:?}"
    );

    let r = run_bare(&["validate"]);
    assert_eq!(r.code, 2, "usage error: {r:?}");
}

#[test]
fn validate_reports_every_error_for_a_target_version() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("web.json");
    std::fs::write(
        &file,
        r#"{"defaults": {"MeshGateway": {"mode": "local"}, "Protocl": "http"},
            "resolver": {"LoadBalancer": {"Policy": "random"}}}"#,
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let r = run_bare(&["validate", "--consul-version", "1.8.7", f]);
    assert_eq!(r.code, 1, "{r:?}");
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(
        lines,
        [
            format!("{f}: $.defaults.MeshGateway.mode: write \"Mode\" (Consul stores it so)"),
            format!("{f}: $.defaults.Protocl: unknown field \"Protocl\" (did you mean \"Protocol\"?); the fields here are Protocol, MeshGateway, Expose, ExternalSNI"),
            format!("{f}: $.resolver.LoadBalancer: needs Consul 1.9.0 or newer; the target is 1.8.7"),
        ],
        "{r:?}"
    );
    let r = run_bare(&["validate", "-o", "json", "--consul-version", "v1.8.7", f]);
    assert_eq!(r.code, 1, "{r:?}");
    let v = r.json();
    assert_eq!(v[0]["errors"].as_array().unwrap().len(), 3, "{v}");
    assert_eq!(v[0]["error"], v[0]["errors"][0]);
    assert_eq!(v[0]["errors"][2]["path"], "$.resolver.LoadBalancer");
    // The default target is the newest: only the spellings are wrong.
    let r = run_bare(&["validate", "-o", "json", f]);
    assert_eq!(v[0]["valid"], false);
    assert_eq!(r.json()[0]["errors"].as_array().unwrap().len(), 2, "{r:?}");
    let r = run_bare(&["validate", "--consul-version", "one.eight", f]);
    assert_eq!(r.code, 2, "usage error: {r:?}");
    assert!(r.stderr.contains("invalid Consul version"), "{r:?}");
}

#[test]
fn schema_completions_and_offline_errors() {
    // The version with the commit and the build date, both ways.
    for args in [&["--version"][..], &["-V"], &["version"]] {
        let r = run_bare(args);
        assert_eq!(r.code, 0, "{r:?}");
        assert!(r.stdout.starts_with("svc-handler 0."), "{r:?}");
        assert!(
            r.stdout.contains("(commit ") && r.stdout.contains(", built 20"),
            "{r:?}"
        );
    }
    let v = run_bare(&["version", "-o", "json"]).json();
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));

    let r = run_bare(&["schema"]);
    assert_eq!(r.code, 0, "{r:?}");
    let printed = r.json();
    let shipped: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("schema/base.schema.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(printed, shipped);

    for shell in ["bash", "zsh", "fish"] {
        let r = run_bare(&["completions", shell]);
        assert_eq!(r.code, 0, "{r:?}");
        assert!(r.stdout.contains("svc-handler"), "{shell}: {r:?}");
    }
    let r = run_bare(&["completions", "bash"]);
    for sub in ["validate", "apply", "wait", "status", "diff", "delete"] {
        assert!(r.stdout.contains(sub), "{sub}");
    }

    // No Consul there: a clear error, and the token never shows.
    let r = run_bare(&[
        "status",
        "--http-addr",
        "127.0.0.1:1",
        "--token",
        "secret-token-123",
    ]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("cannot reach Consul"), "{r:?}");
    assert!(!r.stderr.contains("secret-token-123") && !r.stdout.contains("secret-token-123"));
    let r = run_bare(&["diff", "web", "--http-addr", "127.0.0.1:1"]);
    assert_eq!(r.code, 2, "diff's trouble is 2: {r:?}");
}

/// Runs `args` with standard output a pipe whose reader is already gone
/// (as in `svc-handler ... | head -1` once head has exited): every write
/// fails with EPIPE, deterministically.
fn run_into_closed_pipe(cmd: &mut Command) -> Run {
    use std::os::fd::{FromRawFd, OwnedFd};
    let mut fds = [0; 2];
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    unsafe { libc::close(fds[0]) };
    let write_end = unsafe { OwnedFd::from_raw_fd(fds[1]) };
    let out = cmd
        .stdout(Stdio::from(write_end))
        .stderr(Stdio::piped())
        .output()
        .expect("run svc-handler");
    Run::from(out)
}

#[test]
fn a_reader_that_goes_away_ends_a_command_quietly() {
    let w = world("pipe");
    let id = w.name("piped");
    kv_put(&w.base_key(&id), br#"{"defaults": {"Protocol": "http"}}"#);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("web.json");
    std::fs::write(&file, br#"{"defaults": {"Protocol": "http"}}"#).unwrap();
    let file = file.to_str().unwrap();
    let offline: [&[&str]; 4] = [
        &["completions", "bash"],
        &["completions", "zsh"],
        &["schema"],
        &["validate", file],
    ];
    for args in offline {
        let r = run_into_closed_pipe(&mut bare(args));
        assert_eq!(r.code, 141, "{args:?}: {r:?}");
        assert_eq!(r.stderr, "", "{args:?}: {r:?}");
    }
    for args in [
        vec!["status", "-o", "json"],
        vec!["status"],
        vec!["diff", id.as_str()],
    ] {
        let r = run_into_closed_pipe(&mut w.command(&args));
        assert_eq!(r.code, 141, "{args:?}: {r:?}");
        assert!(!r.stderr.contains("panicked"), "{args:?}: {r:?}");
    }
}

#[test]
fn wait_names_an_unreachable_consul_not_a_missing_daemon() {
    let r = run_bare(&[
        "wait",
        "web",
        "--http-addr",
        "127.0.0.1:1",
        "--timeout",
        "2s",
    ]);
    assert_eq!(r.code, 2, "a timeout: {r:?}");
    assert!(r.stderr.contains("Consul did not answer"), "{r:?}");
    assert!(r.stderr.contains("cannot reach Consul at"), "{r:?}");
    assert!(
        !r.stderr.contains("svc-handler run"),
        "blames the daemon: {r:?}"
    );
    assert!(
        !r.stderr.contains("generation 0"),
        "a made-up generation: {r:?}"
    );
}

/// `delete --wait` tells the real cause: a deletion Consul refuses (another
/// service's router still routes to this one) is in observed.json and in
/// the message, not "is the daemon running?"; a folder key such as Consul's
/// UI writes (`.../ui/`) is not waited for.
#[test]
fn delete_wait_tells_why_the_clean_up_does_not_finish() {
    let w = world("delwhy");
    let _d = w.daemon();
    let (admin, front, ui) = (w.name("admin"), w.name("front"), w.name("ui"));
    let http = json!({"defaults": {"Protocol": "http"}});
    let routes = json!({"defaults": {"Protocol": "http"}, "router": {"Routes": [
        {"Match": {"HTTP": {"PathPrefix": "/admin"}}, "Destination": {"Service": admin}}]}});
    for (name, body) in [(&admin, &http), (&front, &routes), (&ui, &http)] {
        let file = w.file(&format!("{name}.json"), body);
        let r = w.run(&["apply", name, "-f", &file]);
        assert_eq!(r.code, 0, "{r:?}");
        let r = w.run(&["wait", name, "--timeout", "30s"]);
        assert_eq!(r.code, 0, "{r:?}");
    }

    // Consul refuses to delete admin's defaults while front routes to it.
    let r = w.run(&["delete", &admin, "--wait", "--timeout", "5s"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("the daemon could not finish"), "{r:?}");
    assert!(r.stderr.contains("in step delete"), "{r:?}");
    assert!(!r.stderr.contains("running?"), "{r:?}");
    let r = w.run(&["status", &admin, "-o", "json"]);
    let message = r.json()["observed"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(message.contains("base.json is gone, but"), "{r:?}");

    // A folder key (the UI's) stays, and is not waited for.
    kv_put(&format!("{}/desired/default/default/{ui}/", w.prefix), b"");
    let r = w.run(&["delete", &ui, "--wait", "--timeout", "30s"]);
    assert_eq!(r.code, 0, "{r:?}");
}

/// Entries made by hand (and a link in a gateway), imported: base.json
/// written from them with adopt, the daemon takes them over without
/// changing a field; a second import does not overwrite; --dry-run writes
/// nothing.
#[test]
fn import_writes_base_json_from_what_is_there() {
    let w = world("import");
    let legacy = w.name("legacy");
    let gw = w.name("egress");
    let put = |v: Value| block_on(async { shared().client().config_put(&v).await.unwrap() });
    put(json!({"Kind": "service-defaults", "Name": legacy, "Protocol": "http"}));
    put(
        json!({"Kind": "service-resolver", "Name": legacy, "ConnectTimeout": "15s",
        "DefaultSubset": "v1", "Subsets": {"v1": {"Filter": "Service.Meta.version == v1"}}}),
    );
    put(json!({"Kind": "terminating-gateway", "Name": gw,
        "Services": [{"Name": legacy, "SNI": "legacy.example.com"}]}));

    let other = w.name("other");
    put(json!({"Kind": "service-defaults", "Name": other, "Protocol": "grpc"}));
    let r = w.run(&["import", &other, "--dry-run"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("\"grpc\""), "{r:?}");
    assert!(kv_value(&w.base_key(&other)).is_none(), "--dry-run wrote");

    let r = w.run(&["import", &legacy]);
    assert_eq!(r.code, 0, "{r:?}");
    let doc: Value = serde_json::from_slice(&kv_value(&w.base_key(&legacy)).unwrap()).unwrap();
    assert_eq!(doc["adopt"], true, "{doc}");
    assert_eq!(doc["resolver"]["DefaultSubset"], "v1", "{doc}");
    assert_eq!(doc["terminating_gateway"]["Gateway"], gw.as_str(), "{doc}");
    assert_eq!(
        doc["terminating_gateway"]["SNI"], "legacy.example.com",
        "{doc}"
    );
    let before = entry("service-resolver", &legacy).unwrap();

    let _d = w.daemon();
    let r = w.run(&["wait", &legacy, "--timeout", "30s"]);
    assert_eq!(r.code, 0, "{r:?}");
    let after = entry("service-resolver", &legacy).unwrap();
    assert_eq!(after["Meta"]["managed-by"], "svc-handler", "{after}");
    for field in ["ConnectTimeout", "DefaultSubset", "Subsets"] {
        assert_eq!(after[field], before[field], "{field} changed");
    }

    let r = w.run(&["import", &legacy]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stdout.contains("is already svc-handler's") || r.stdout.contains("exists"),
        "{r:?}"
    );
}

#[test]
fn status_and_diff_of_nothing() {
    let w = world("empty");
    let r = w.run(&["status", "-o", "json"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json(), json!([]));
    let r = w.run(&["status"]);
    assert_eq!((r.code, r.stdout.as_str()), (0, ""), "{r:?}");
    assert!(r.stderr.contains("no services"), "{r:?}");
    let name = w.name("ghost");
    let r = w.run(&["diff", &name]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("does not exist"), "{r:?}");
    // A file against nothing in Consul: every entry is created.
    let file = w.file("g.json", &json!({"defaults": {"Protocol": "http"}}));
    let r = w.run(&["diff", "-f", &file, &name]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stdout
            .contains(&format!("--- service-defaults/{name} (absent)")),
        "{r:?}"
    );
    assert!(
        r.stdout
            .contains(&format!("+++ service-resolver/{name} (desired)")),
        "{r:?}"
    );
    assert!(!r.stdout.contains("service-router"), "{r:?}");
}

// ---------------------------------------------------------------------------------------
// The JSON Schema against the examples and the README.

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The fenced code blocks of `markdown` whose info string is `json base.json`.
fn base_json_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        let trimmed = line.trim_start();
        match &mut current {
            None => {
                if let Some(info) = trimmed.strip_prefix("```") {
                    if info.split_whitespace().collect::<Vec<_>>() == ["json", "base.json"] {
                        current = Some(String::new());
                    }
                }
            }
            Some(text) => {
                if trimmed.starts_with("```") {
                    blocks.push(std::mem::take(text));
                    current = None;
                } else {
                    text.push_str(line);
                    text.push('\n');
                }
            }
        }
    }
    blocks
}

fn validator() -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(svc_handler::commands::BASE_SCHEMA).unwrap();
    jsonschema::validator_for(&schema).expect("the schema compiles")
}

#[test]
fn readme_blocks_are_found() {
    let md = "text\n```json base.json\n{\"adopt\": true}\n```\n```json\n{}\n```\n  ```json  base.json\n{}\n  ```\n";
    assert_eq!(base_json_blocks(md), ["{\"adopt\": true}\n", "{}\n"]);
}

#[test]
fn schema_accepts_the_examples_and_the_readme() {
    let v = validator();
    let mut docs: Vec<(String, String)> = Vec::new();
    let mut examples: Vec<PathBuf> = std::fs::read_dir(root().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    examples.sort();
    assert!(examples.len() >= 2, "{examples:?}");
    for p in examples {
        docs.push((
            p.display().to_string(),
            std::fs::read_to_string(&p).unwrap(),
        ));
    }
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    for (i, block) in base_json_blocks(&readme).into_iter().enumerate() {
        docs.push((format!("README.md block {}", i + 1), block));
    }
    for (what, text) in &docs {
        svc_handler::spec::parse(text.as_bytes())
            .unwrap_or_else(|e| panic!("{what}: svc-handler refuses it: {e}"));
        let doc: Value = serde_json::from_str(text).unwrap();
        let errors: Vec<String> = v.iter_errors(&doc).map(|e| e.to_string()).collect();
        assert!(
            errors.is_empty(),
            "{what}: the schema refuses it: {errors:?}"
        );
    }
}

#[test]
fn schema_agrees_with_validate() {
    let v = validator();
    let valid = [
        json!({}),
        json!({"adopt": true, "router": null, "defaults": null}),
        json!({"defaults": {"Protocol": ""}}),
        json!({"defaults": {"Protocol": "grpc", "MeshGateway": {"Mode": "local"}}}),
        json!({"resolver": {"ConnectTimeout": "1m30s", "Redirect": {"Service": "a", "Namespace": "x"}}}),
        json!({"resolver": {"ConnectTimeout": "0", "Failover": {"*": {"Datacenters": ["dc2"]}}}}),
        json!({"router": {"Routes": [{"Match": {"HTTP": {"Methods": ["GET", "POST"]}},
            "Destination": {"Service": "a", "Namespace": "x", "RequestTimeout": "500ms"}}]}}),
        json!({"terminating_gateway": {"Gateway": "egress", "SNI": "", "CAFile": null}}),
        json!({
          "defaults": { "Protocol": "http" },
          "resolver": { "ConnectTimeout": "5s", "DefaultSubset": "v1",
                        "Subsets": { "v1": { "Filter": "Service.Meta.version == v1" } } },
          "router":   { "Routes": [ { "Match": { "HTTP": { "PathPrefix": "/admin" } },
                                      "Destination": { "Service": "admin" } } ] },
          "terminating_gateway": { "Gateway": "egress", "SNI": "api.example.com" },
          "adopt": false
        }),
    ];
    for doc in &valid {
        let text = doc.to_string();
        assert!(svc_handler::spec::parse(text.as_bytes()).is_ok(), "{text}");
        let errors: Vec<String> = v.iter_errors(doc).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{text}: {errors:?}");
    }
    // The shared table: the parser refuses each; the schema too, where a
    // schema can see the problem.
    for case in invalid::bodies() {
        assert!(
            svc_handler::spec::parse(&case.body).is_err(),
            "svc-handler accepts {}",
            case.name
        );
        if case.schema {
            let doc: Value = serde_json::from_slice(&case.body)
                .unwrap_or_else(|e| panic!("{}: not JSON: {e}", case.name));
            assert!(!v.is_valid(&doc), "the schema accepts {}", case.name);
        }
    }
    // The schema is for the newest Consul: fields newer than an older target
    // pass it; only `validate --consul-version` refuses them.
    for case in invalid::gated() {
        let doc: Value = serde_json::from_str(case.body).unwrap();
        let newest = svc_handler::spec::parse(case.body.as_bytes());
        assert_eq!(v.is_valid(&doc), newest.is_ok(), "{}", case.name);
    }
}

/// `svc-handler plan`: one line per service from the reconcile's own plan,
/// every kind of line, `-o json`, and exit codes like `terraform plan
/// -detailed-exitcode` (0 nothing would change, 2 changes, 1 an error).
#[test]
fn plan_shows_every_service_and_exits_like_terraform() {
    let w = world("plan");
    let http = w.file("http.json", &json!({"defaults": {"Protocol": "http"}}));
    let [a, b, c, d, e] = ["a", "b", "c", "d", "e"].map(|n| w.name(n));
    {
        let daemon = w.daemon();
        daemon.wait_ready_blocking(Duration::from_secs(30));
        for name in [&a, &e] {
            assert_eq!(w.run(&["apply", name, "-f", &http]).code, 0);
            assert_eq!(w.run(&["wait", name, "--timeout", "30s"]).code, 0);
        }
    }
    // No daemon from here: what it would do is only planned.
    let r = w.run(&["plan", &a]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains(&format!("default/default/{a}: in sync")),
        "{r:?}"
    );

    assert_eq!(w.run(&["apply", &b, "-f", &http]).code, 0);
    kv_put(&w.base_key(&c), br#"{"adopt": "yes"}"#);
    let foreign = json!({"Kind": "service-defaults", "Name": d, "Protocol": "http"});
    block_on(async { shared().client().config_put(&foreign).await.unwrap() });
    assert_eq!(w.run(&["apply", &d, "-f", &http]).code, 0);
    // The same document again: a new generation Consul already matches.
    kv_put(&w.base_key(&a), br#"{"defaults": {"Protocol": "http"}} "#);
    assert_eq!(w.run(&["pause", &e, "--reason", "drill"]).code, 0);

    let r = w.run(&["plan", "-o", "json"]);
    assert_eq!(r.code, 1, "invalid and blocked are errors: {r:?}");
    let lines = r.json();
    let state = |name: &str| -> Value {
        let l = lines
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["name"] == name)
            .cloned();
        l.unwrap_or_else(|| panic!("{name} missing: {lines}"))
    };
    assert_eq!(state(&a)["state"], "pending", "{lines}");
    assert_eq!(state(&b)["state"], "changes", "{lines}");
    let writes = state(&b)["writes"].clone();
    assert!(
        writes
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["kind"] == "service-defaults" && w["action"] == "create"),
        "{writes}"
    );
    assert_eq!(state(&c)["state"], "invalid", "{lines}");
    assert!(
        state(&c)["message"].as_str().unwrap().contains("adopt"),
        "{lines}"
    );
    assert_eq!(state(&d)["state"], "blocked", "{lines}");
    assert_eq!(state(&e)["state"], "paused", "{lines}");
    assert!(
        state(&e)["message"].as_str().unwrap().contains("drill"),
        "{lines}"
    );

    // Text, one line each, and the exit codes without the errors.
    let r = w.run(&["plan", &a, &b]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stdout
            .contains(&format!("{b}: would change service-defaults/{b} (create)")),
        "{r:?}"
    );
    assert!(
        r.stdout.contains("2 services: 1 would change, 1 pending"),
        "{r:?}"
    );
    let r = w.run(&["plan", &format!("{}*", &a[..2])]);
    assert_eq!(
        r.code, 0,
        "a pending service changes nothing in Consul: {r:?}"
    );
    block_on(async {
        shared()
            .client()
            .config_delete("service-defaults", &d)
            .await
            .unwrap()
    });
}

/// `apply -f DIR`: every `*.json`, named by its file; one invalid file and
/// nothing is written; then `--wait` until the daemon applied them all.
#[test]
fn apply_a_folder_checks_every_file_first_then_waits_for_all() {
    let w = world("applydir");
    let dir = tempfile::tempdir().unwrap();
    let [a, b] = ["a", "b"].map(|n| w.name(n));
    let write = |name: &str, body: &[u8]| std::fs::write(dir.path().join(name), body).unwrap();
    write(
        &format!("{a}.json"),
        br#"{"defaults": {"Protocol": "http"}}"#,
    );
    write(
        &format!("{b}.json"),
        br#"{"defaults": {"Protocol": "grpc"}}"#,
    );
    write("bad.json", br#"{"adopt": "yes"}"#);
    write("notes.txt", b"not a base.json");
    let folder = dir.path().display().to_string();

    let r = w.run(&["apply", "-f", &folder]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("bad.json") && r.stderr.contains("nothing was written"),
        "{r:?}"
    );
    assert!(
        kv_value(&w.base_key(&a)).is_none(),
        "written despite an invalid file"
    );

    std::fs::remove_file(dir.path().join("bad.json")).unwrap();
    let daemon = w.daemon();
    daemon.wait_ready_blocking(Duration::from_secs(30));
    let r = w.run(&["apply", "-f", &folder, "--wait", "--timeout", "60s"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains(&format!("{a}: base.json written")),
        "{r:?}"
    );
    assert!(r.stderr.contains("2 of 2 applied"), "{r:?}");
    assert_eq!(entry("service-defaults", &b).unwrap()["Protocol"], "grpc");
    // A SERVICE with a folder is refused.
    assert_eq!(w.run(&["apply", &a, "-f", &folder]).code, 1);

    // `wait` on several services: all applied (a report each with -o json);
    // one without a base.json is named, and the others still waited for.
    let r = w.run(&["wait", &a, &b, "-o", "json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let reports = r.json();
    let results: Vec<(&str, &str)> = reports
        .as_array()
        .unwrap()
        .iter()
        .map(|x| (x["name"].as_str().unwrap(), x["result"].as_str().unwrap()))
        .collect();
    assert_eq!(results, [(a.as_str(), "applied"), (b.as_str(), "applied")]);
    let missing = w.name("never");
    let r = w.run(&["wait", &missing, &a, "--timeout", "20s"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("1 of 2 applied"), "{r:?}");
    assert!(
        r.stderr
            .contains(&format!("{missing}/base.json does not exist")),
        "{r:?}"
    );
}
