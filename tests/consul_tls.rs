//! The client over TLS against a real Consul agent that serves HTTPS and
//! requires client certificates: CA file and folder, client certificate,
//! server name, and verification turned off only when asked.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use support::{consul_bin, Agent};
use svc_handler::consul::{Client, ConsulError, QueryOptions, Settings};

struct Tls {
    agent: Agent,
    https_port: u16,
    dir: tempfile::TempDir,
}

impl Tls {
    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// Certificates made by `consul tls`, and an agent serving HTTPS with them.
fn tls() -> &'static Tls {
    static TLS: OnceLock<&'static Tls> = OnceLock::new();
    TLS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        for args in [
            &["tls", "ca", "create"][..],
            &["tls", "cert", "create", "-server", "-dc", "dc1"],
            &["tls", "cert", "create", "-client", "-dc", "dc1"],
        ] {
            let st = Command::new(consul_bin())
                .args(args)
                .current_dir(dir.path())
                .output()
                .unwrap();
            assert!(st.status.success(), "consul {args:?}: {st:?}");
        }
        let ca_dir = dir.path().join("cas");
        std::fs::create_dir(&ca_dir).unwrap();
        std::fs::copy(
            dir.path().join("consul-agent-ca.pem"),
            ca_dir.join("ca.pem"),
        )
        .unwrap();
        let d = dir.path().to_path_buf();
        let port_cell = std::sync::Mutex::new(0u16);
        let (tx, rx) = std::sync::mpsc::channel();
        // The agent's owner thread lives as long as the process.
        std::thread::spawn(move || {
            let agent = Agent::dev_with(|port| {
                *port_cell.lock().unwrap() = port;
                let f = |n: &str| d.join(n).display().to_string();
                vec![
                    "-hcl".into(),
                    format!("ports {{ https = {port} }}"),
                    "-hcl".into(),
                    format!("ca_file = \"{}\"", f("consul-agent-ca.pem")),
                    "-hcl".into(),
                    format!("cert_file = \"{}\"", f("dc1-server-consul-0.pem")),
                    "-hcl".into(),
                    format!("key_file = \"{}\"", f("dc1-server-consul-0-key.pem")),
                    "-hcl".into(),
                    "verify_incoming_https = true".into(),
                ]
            });
            let https_port = *port_cell.lock().unwrap();
            tx.send(Box::leak(Box::new(Tls {
                agent,
                https_port,
                dir,
            })) as &'static Tls)
                .unwrap();
            loop {
                std::thread::park();
            }
        });
        rx.recv().unwrap()
    })
}

fn base(t: &Tls) -> Settings {
    Settings {
        address: format!("https://127.0.0.1:{}", t.https_port),
        ca_file: Some(t.file("consul-agent-ca.pem")),
        client_cert: Some(t.file("dc1-client-consul-0.pem")),
        client_key: Some(t.file("dc1-client-consul-0-key.pem")),
        ..Settings::default()
    }
}

async fn roundtrip(c: &Client, key: &str) -> Result<Vec<u8>, ConsulError> {
    c.kv_put(key, b"over tls").await?;
    let (v, _) = c.kv_get(key, &QueryOptions::consistent()).await?;
    Ok(v.map(|p| p.value).unwrap_or_default())
}

#[tokio::test]
async fn ca_file_and_client_certificate() {
    let t = tls();
    let c = Client::new(base(t)).unwrap();
    assert_eq!(roundtrip(&c, "tls/ca-file").await.unwrap(), b"over tls");
    // The plain HTTP port of the same agent still works, for contrast.
    assert!(t.agent.client().leader().await.is_ok());
}

#[tokio::test]
async fn ca_path_and_ssl_flag_without_scheme() {
    let t = tls();
    let c = Client::new(Settings {
        address: format!("127.0.0.1:{}", t.https_port),
        ssl: true,
        ca_file: None,
        ca_path: Some(t.file("cas")),
        ..base(t)
    })
    .unwrap();
    assert_eq!(roundtrip(&c, "tls/ca-path").await.unwrap(), b"over tls");
}

#[tokio::test]
async fn missing_client_certificate_is_refused() {
    let t = tls();
    let c = Client::new(Settings {
        client_cert: None,
        client_key: None,
        ..base(t)
    })
    .unwrap();
    let e = roundtrip(&c, "tls/no-cert").await.unwrap_err();
    assert!(matches!(e, ConsulError::Transport { .. }), "{e}");
}

#[tokio::test]
async fn unknown_ca_is_refused_unless_verify_is_off() {
    let t = tls();
    let c = Client::new(Settings {
        ca_file: None,
        ..base(t)
    })
    .unwrap();
    let e = roundtrip(&c, "tls/unknown-ca").await.unwrap_err();
    assert!(matches!(e, ConsulError::Transport { .. }), "{e}");

    let c = Client::new(Settings {
        ca_file: None,
        ssl_verify: false,
        ..base(t)
    })
    .unwrap();
    assert_eq!(roundtrip(&c, "tls/no-verify").await.unwrap(), b"over tls");
}

#[tokio::test]
async fn server_name_is_what_gets_verified() {
    let t = tls();
    let good = Client::new(Settings {
        tls_server_name: Some("server.dc1.consul".into()),
        ..base(t)
    })
    .unwrap();
    assert_eq!(roundtrip(&good, "tls/sni").await.unwrap(), b"over tls");
    assert!(good.address().contains("127.0.0.1"), "{}", good.address());

    let bad = Client::new(Settings {
        tls_server_name: Some("other.example".into()),
        ..base(t)
    })
    .unwrap();
    let e = roundtrip(&bad, "tls/bad-sni").await.unwrap_err();
    assert!(matches!(e, ConsulError::Transport { .. }), "{e}");
}

#[test]
fn unreadable_tls_files_name_the_variable() {
    let missing = Path::new("/nonexistent/ca.pem").to_path_buf();
    let e = Client::new(Settings {
        address: "https://127.0.0.1:1".into(),
        ca_file: Some(missing),
        ..Settings::default()
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("CONSUL_CACERT"), "{e}");
    let e = Client::new(Settings {
        address: "https://127.0.0.1:1".into(),
        client_cert: Some("/nonexistent/c.pem".into()),
        ..Settings::default()
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("CONSUL_CLIENT_KEY"), "{e}");
}
