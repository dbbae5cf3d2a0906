//! Security: an ACL-enabled Consul (default deny) with the README's
//! least-privilege policy; a token missing a permission; the token never
//! printed; Consul serving HTTPS only.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::daemon::DaemonProc;
use support::{consul_bin, eventually, prefix, Agent};
use svc_handler::consul::{Client, QueryOptions, Secret, Settings};
use svc_handler::keys::{Layout, ServiceId};
use svc_handler::records::{Observed, Status};

const ROOT: &str = "9a1f0c3e-root-token-for-tests";

/// The policy the README gives, for the default prefix `svc-handler`.
const POLICY: &str = r#"
key_prefix "svc-handler/" { policy = "write" }
session_prefix "" { policy = "write" }
service_prefix "" { policy = "write" }
operator = "write"
agent_prefix "" { policy = "read" }
"#;

const NO_SERVICE_WRITE: &str = r#"
key_prefix "svc-handler/" { policy = "write" }
session_prefix "" { policy = "write" }
service_prefix "" { policy = "read" }
"#;

fn consul(agent: &Agent, token: &str, args: &[&str]) -> String {
    let out = Command::new(consul_bin())
        .args(args)
        .env("CONSUL_HTTP_ADDR", agent.url())
        .env("CONSUL_HTTP_TOKEN", token)
        .output()
        .unwrap();
    assert!(out.status.success(), "consul {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

fn token_with(agent: &Agent, dir: &Path, name: &str, rules: &str) -> String {
    let file = dir.join(format!("{name}.hcl"));
    std::fs::write(&file, rules).unwrap();
    let rules_arg = format!("@{}", file.display());
    consul(
        agent,
        ROOT,
        &[
            "acl", "policy", "create", "-name", name, "-rules", &rules_arg,
        ],
    );
    new_token(agent, name).0
}

/// A new token of an existing policy: (secret, accessor).
fn new_token(agent: &Agent, policy: &str) -> (String, String) {
    let out = consul(
        agent,
        ROOT,
        &[
            "acl",
            "token",
            "create",
            "-policy-name",
            policy,
            "-format",
            "json",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    (
        v["SecretID"].as_str().unwrap().to_string(),
        v["AccessorID"].as_str().unwrap().to_string(),
    )
}

/// A dev agent with ACLs on, default deny, and the root token [`ROOT`].
fn acl_agent() -> Agent {
    Agent::dev_with(|_| {
        vec![
            "-hcl".into(),
            format!(
                r#"acl {{ enabled = true default_policy = "deny" tokens {{ master = "{ROOT}" }} }}"#
            ),
        ]
    })
}

fn root_client(agent: &Agent) -> Client {
    Client::new(Settings {
        token: Some(Secret::new(ROOT)),
        ..agent.settings()
    })
    .unwrap()
}

async fn observed(c: &Client, layout: &Layout, id: &ServiceId) -> Option<Observed> {
    c.kv_get(&layout.observed_key(id), &QueryOptions::default())
        .await
        .unwrap()
        .0
        .map(|p| serde_json::from_slice(&p.value).unwrap())
}

#[tokio::test]
async fn least_privilege_policy_works_and_a_missing_permission_is_reported() {
    let agent = acl_agent();
    let dir = tempfile::tempdir().unwrap();
    let good = token_with(&agent, dir.path(), "svc-handler", POLICY);
    let weak = token_with(&agent, dir.path(), "no-service-write", NO_SERVICE_WRITE);
    let root = root_client(&agent);
    let layout = Layout::new("svc-handler").unwrap();
    let tag = prefix("acl").rsplit('/').next().unwrap().to_string();

    // The README's policy: a full spec applies.
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{good}\n")).unwrap();
    let tf = token_file.display().to_string();
    let d = DaemonProc::start(
        &agent.url(),
        "svc-handler",
        "acl-good",
        &[],
        &[("CONSUL_HTTP_TOKEN_FILE", tf.as_str())],
    );
    d.wait_ready(Duration::from_secs(30)).await;
    let id = ServiceId::new("default", "default", &format!("web-{tag}")).unwrap();
    let spec = format!(
        r#"{{"defaults": {{"Protocol": "http"}}, "router": {{"Routes": [{{"Match": {{"HTTP": {{"PathPrefix": "/a"}}}}}}]}},
            "terminating_gateway": {{"Gateway": "egress-{tag}"}}}}"#
    );
    root.kv_put(&layout.base_key(&id), spec.as_bytes())
        .await
        .unwrap();
    let ok = eventually(Duration::from_secs(30), || async {
        matches!(observed(&root, &layout, &id).await, Some(o) if o.status == Status::Applied)
    })
    .await;
    assert!(ok, "not applied with the README policy:\n{}", d.log_text());
    let metrics = d.metrics_text().await.unwrap();
    let log = d.log_text();
    drop(d);
    for text in [&metrics, &log] {
        assert!(!text.contains(&good), "the token leaked");
        assert!(!text.contains(ROOT));
    }

    // A token without service:write: a clear permission error, nothing else.
    let d = DaemonProc::start(
        &agent.url(),
        "svc-handler",
        "acl-weak",
        &[],
        &[("CONSUL_HTTP_TOKEN", weak.as_str())],
    );
    d.wait_ready(Duration::from_secs(30)).await;
    let denied = ServiceId::new("default", "default", &format!("denied-{tag}")).unwrap();
    root.kv_put(
        &layout.base_key(&denied),
        br#"{"defaults": {"Protocol": "http"}}"#,
    )
    .await
    .unwrap();
    let failed = eventually(Duration::from_secs(30), || async {
        matches!(observed(&root, &layout, &denied).await, Some(o) if o.status == Status::Error)
    })
    .await;
    assert!(failed, "{}", d.log_text());
    let o = observed(&root, &layout, &denied).await.unwrap();
    assert_eq!(o.step.map(|s| s.as_str()), Some("defaults"));
    let msg = o.message.unwrap();
    assert!(
        msg.contains("403") && msg.contains("Permission denied"),
        "{msg}"
    );
    assert!(root
        .config_get("service-defaults", &denied.name, &QueryOptions::default())
        .await
        .unwrap()
        .0
        .is_none());
    let log = d.log_text();
    assert!(
        log.contains("Permission denied"),
        "the log says why:\n{log}"
    );
    let metrics = d.metrics_text().await.unwrap();
    for text in [&metrics, &log, &msg] {
        assert!(!text.contains(&weak), "the token leaked");
    }
}

#[tokio::test]
async fn https_only_consul_with_a_ca_and_no_fallback() {
    let certs = tempfile::tempdir().unwrap();
    for args in [
        &["tls", "ca", "create"][..],
        &[
            "tls",
            "cert",
            "create",
            "-server",
            "-dc",
            "dc1",
            "-additional-ipaddress",
            "127.0.0.2",
        ],
    ] {
        let st = Command::new(consul_bin())
            .args(args)
            .current_dir(certs.path())
            .output()
            .unwrap();
        assert!(st.status.success(), "{st:?}");
    }
    let d = certs.path().to_path_buf();
    let https_port = std::sync::Mutex::new(0u16);
    let agent = Agent::dev_with(|port| {
        *https_port.lock().unwrap() = port;
        let f = |n: &str| d.join(n).display().to_string();
        vec![
            "-hcl".into(),
            format!("ports {{ https = {port} }}"),
            // Plain HTTP stays on 127.0.0.1 for the test's own readiness
            // probe; 127.0.0.2 serves HTTPS only.
            "-hcl".into(),
            r#"addresses { http = "127.0.0.1" https = "127.0.0.2" }"#.into(),
            "-hcl".into(),
            format!("ca_file = \"{}\"", f("consul-agent-ca.pem")),
            "-hcl".into(),
            format!("cert_file = \"{}\"", f("dc1-server-consul-0.pem")),
            "-hcl".into(),
            format!("key_file = \"{}\"", f("dc1-server-consul-0-key.pem")),
        ]
    });
    let port = *https_port.lock().unwrap();
    let https = format!("https://127.0.0.2:{port}");
    let p = prefix("tls-only");
    let layout = Layout::new(&p).unwrap();
    let id = ServiceId::new(
        "default",
        "default",
        &format!("tls-{}", p.rsplit('/').next().unwrap()),
    )
    .unwrap();
    agent
        .client()
        .kv_put(
            &layout.base_key(&id),
            br#"{"defaults": {"Protocol": "http"}}"#,
        )
        .await
        .unwrap();

    let ca = certs
        .path()
        .join("consul-agent-ca.pem")
        .display()
        .to_string();
    let good = DaemonProc::start(
        &https,
        &p,
        "tls-good",
        &[],
        &[("CONSUL_CACERT", ca.as_str())],
    );
    good.wait_ready(Duration::from_secs(30)).await;
    let client = agent.client();
    let ok = eventually(Duration::from_secs(30), || async {
        matches!(observed(&client, &layout, &id).await, Some(o) if o.status == Status::Applied)
    })
    .await;
    assert!(ok, "{}", good.log_text());
    drop(good);

    // An unknown CA: refused, with a message that says so.
    let bad = DaemonProc::start(&https, &p, "tls-bad", &[], &[]);
    let logged = eventually(Duration::from_secs(30), || async {
        // Refused before anything is watched: the access check cannot reach it.
        bad.log_text().contains("cannot reach Consul")
    })
    .await;
    let log = bad.log_text();
    assert!(logged, "{log}");
    assert!(
        log.to_lowercase().contains("certificate") || log.contains("UnknownIssuer"),
        "the log should name the certificate problem:\n{log}"
    );
    assert_ne!(bad.readyz().await, Some(200));

    // No fallback: plain HTTP to the HTTPS-only address does not work either.
    let plain = DaemonProc::start(
        &format!("http://127.0.0.2:{port}"),
        &p,
        "tls-plain",
        &[],
        &[("CONSUL_CACERT", ca.as_str())],
    );
    let logged = eventually(Duration::from_secs(30), || async {
        let log = plain.log_text();
        log.contains("cannot check the token's access") || log.contains("watch failed")
    })
    .await;
    assert!(logged, "{}", plain.log_text());
    assert_ne!(plain.readyz().await, Some(200));
}

/// A token that cannot read the prefix (here an empty token file, as the
/// install steps create, on a default-deny agent: Consul filters the
/// listing and answers 404, as if there were nothing): the daemon is not
/// ready and says which permission is missing, instead of reporting
/// "nothing to reconcile"; `status` warns that services may be hidden. With a
/// good token and SIGHUP it starts.
#[tokio::test]
async fn a_token_that_cannot_read_the_prefix_is_never_ready() {
    let agent = acl_agent();
    let dir = tempfile::tempdir().unwrap();
    let good = token_with(&agent, dir.path(), "svc-handler", POLICY);
    let root = root_client(&agent);
    let layout = Layout::new("svc-handler").unwrap();
    let tag = prefix("denied").rsplit('/').next().unwrap().to_string();
    let id = ServiceId::new("default", "default", &format!("hidden-{tag}")).unwrap();
    root.kv_put(
        &layout.base_key(&id),
        br#"{"defaults": {"Protocol": "http"}}"#,
    )
    .await
    .unwrap();

    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "").unwrap();
    let tf = token_file.display().to_string();
    let d = DaemonProc::start(
        &agent.url(),
        "svc-handler",
        "denied",
        &[],
        &[("CONSUL_HTTP_TOKEN_FILE", tf.as_str())],
    );
    let said = eventually(Duration::from_secs(30), || async {
        d.log_text().contains("lacks a permission")
    })
    .await;
    assert!(said, "{}", d.log_text());
    let log = d.log_text();
    assert!(
        log.contains(r#"key_prefix \"svc-handler/\""#)
            || log.contains(r#"key_prefix "svc-handler/""#),
        "{log}"
    );
    assert!(
        !log.contains("nothing to reconcile") && !log.contains("first full sync done"),
        "{log}"
    );
    let readyz = reqwest::get(format!("http://{}/readyz", d.metrics_addr()))
        .await
        .unwrap();
    assert_eq!(readyz.status().as_u16(), 503);
    let body = readyz.text().await.unwrap();
    assert!(
        body.contains("cannot write keys under svc-handler/"),
        "{body}"
    );
    assert!(
        observed(&root, &layout, &id).await.is_none(),
        "something was done"
    );

    let status = Command::new(env!("CARGO_BIN_EXE_svc-handler"))
        .args(["status", "--http-addr", &agent.url()])
        .env_remove("CONSUL_HTTP_TOKEN")
        .env_remove("CONSUL_HTTP_TOKEN_FILE")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&status.stderr);
    assert!(stderr.contains("no services"), "{stderr}");
    assert!(
        stderr.contains("ACLs are on and no token was given"),
        "{stderr}"
    );

    // `run --once` refuses the same way, and does nothing.
    let once = Command::new(env!("CARGO_BIN_EXE_svc-handler"))
        .args(["run", "--once", "--http-addr", &agent.url()])
        .env("CONSUL_HTTP_TOKEN_FILE", &tf)
        .env_remove("CONSUL_HTTP_TOKEN")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&once.stderr);
    assert_eq!(once.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot write keys under svc-handler/"),
        "{stderr}"
    );
    assert!(
        observed(&root, &layout, &id).await.is_none(),
        "run --once did something"
    );

    // An operator's `wait` (with a token that can read) tells why nothing
    // comes: no daemon holds a session, or its token cannot create one.
    let wait = Command::new(env!("CARGO_BIN_EXE_svc-handler"))
        .args([
            "wait",
            &id.name,
            "--timeout",
            "1s",
            "--http-addr",
            &agent.url(),
        ])
        .env("CONSUL_HTTP_TOKEN", ROOT)
        .env_remove("CONSUL_HTTP_TOKEN_FILE")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&wait.stderr);
    assert_eq!(wait.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("no svc-handler daemon holds a session")
            && stderr.contains("its token cannot create sessions"),
        "{stderr}"
    );
    assert!(!stderr.contains(ROOT), "the token leaked: {stderr}");

    std::fs::write(&token_file, format!("{good}\n")).unwrap();
    d.signal(libc::SIGHUP);
    d.wait_ready(Duration::from_secs(30)).await;
    let applied = eventually(Duration::from_secs(30), || async {
        matches!(observed(&root, &layout, &id).await, Some(o) if o.status == Status::Applied)
    })
    .await;
    assert!(applied, "{}", d.log_text());
    assert!(
        d.log_text().contains("access suffices now"),
        "{}",
        d.log_text()
    );
}

#[tokio::test]
async fn sighup_rereads_a_rotated_token_file() {
    let agent = acl_agent();
    let dir = tempfile::tempdir().unwrap();
    token_with(&agent, dir.path(), "svc-handler", POLICY);
    let (first, first_accessor) = new_token(&agent, "svc-handler");
    let (second, _) = new_token(&agent, "svc-handler");
    let root = root_client(&agent);
    let layout = Layout::new("svc-handler").unwrap();
    let tag = prefix("hup").rsplit('/').next().unwrap().to_string();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, &first).unwrap();
    let tf = token_file.display().to_string();
    let d = DaemonProc::start(
        &agent.url(),
        "svc-handler",
        "hup",
        &[],
        &[("CONSUL_HTTP_TOKEN_FILE", tf.as_str())],
    );
    d.wait_ready(Duration::from_secs(30)).await;

    // Rotate: the new token goes into the file, SIGHUP, the old one is revoked.
    std::fs::write(&token_file, format!("{second}\n")).unwrap();
    d.signal(libc::SIGHUP);
    let reloaded = eventually(Duration::from_secs(10), || async {
        d.log_text().contains("token file re-read")
    })
    .await;
    assert!(reloaded, "{}", d.log_text());
    consul(
        &agent,
        ROOT,
        &["acl", "token", "delete", "-id", &first_accessor],
    );

    let id = ServiceId::new("default", "default", &format!("rotated-{tag}")).unwrap();
    root.kv_put(
        &layout.base_key(&id),
        br#"{"defaults": {"Protocol": "http"}}"#,
    )
    .await
    .unwrap();
    let ok = eventually(Duration::from_secs(30), || async {
        matches!(observed(&root, &layout, &id).await, Some(o) if o.status == Status::Applied)
    })
    .await;
    let log = d.log_text();
    assert!(ok, "not applied with the rotated token:\n{log}");
    assert!(
        !log.contains(&first) && !log.contains(&second),
        "a token leaked"
    );
}
