//! Test support: real Consul agents on free loopback ports.
//!
//! [`shared`] starts one dev agent per test binary (tests share it and each
//! uses its own KV prefix from [`prefix`]); [`Agent::dev`] starts a private
//! one, and [`Cluster::start`] three servers on 127.0.0.1/.2/.3. Agents die
//! with their owner: `Drop` kills them (also when a test panics), and the
//! kernel kills them when the thread that started them ends
//! (`PR_SET_PDEATHSIG`), so no agent outlives the test process.
#![allow(dead_code)]

pub mod daemon;
pub mod invalid;
pub mod proxy;
pub mod rewrite;
pub mod world;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use svc_handler::consul::{Client, Settings};

/// The Consul binary: `$CONSUL_BIN`, else what `scripts/install-consul` settles on.
pub fn consul_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install-consul");
        let out = Command::new("bash")
            .arg(&script)
            .stderr(Stdio::inherit())
            .output()
            .expect("run scripts/install-consul");
        assert!(
            out.status.success(),
            "scripts/install-consul failed; set CONSUL_BIN to a Consul >= 1.8 binary"
        );
        let text = String::from_utf8(out.stdout).expect("utf-8 path");
        PathBuf::from(text.lines().last().expect("a path").trim())
    })
}

/// A unique KV prefix for one test, so tests can share an agent.
pub fn prefix(test: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "test/{test}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Polls `cond` until it is true or `timeout` passes; returns whether it held.
pub async fn eventually<F, Fut>(timeout: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Makes the child of `cmd` die (SIGKILL) when the thread that spawns it
/// ends, however it ends: a test that returns, panics or is killed takes its
/// agents and daemons with it. Spawn from a thread that lives as long as the
/// child should (the test's own thread, or [`shared`]'s owner thread).
pub fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe; nothing else runs in pre_exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A free TCP port on 127.0.0.1 (free when asked; bind it soon).
pub fn free_local_port() -> u16 {
    free_port(Ipv4Addr::LOCALHOST)
}

/// A port below the kernel's ephemeral range (`ip_local_port_range`), free
/// when asked and never handed out twice in this process. A port the kernel
/// picks (`bind :0`) comes from that range, where any outgoing connection
/// (a daemon's long-polls, say) may take it as its local port before the
/// test binds it.
fn free_port(ip: Ipv4Addr) -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let top = low.clamp(12_000, 32_768);
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = fastrand::u16(10_000..top);
        if !given.contains(&port) && TcpListener::bind((ip, port)).is_ok() {
            given.push(port);
            return port;
        }
    }
}

/// Ports of one agent (DNS and gRPC stay off).
struct Ports {
    http: u16,
    serf_lan: u16,
    serf_wan: u16,
    server: u16,
}

impl Ports {
    fn free(ip: Ipv4Addr) -> Ports {
        Ports {
            http: free_port(ip),
            serf_lan: free_port(ip),
            serf_wan: free_port(ip),
            server: free_port(ip),
        }
    }
}

/// The arguments every test agent shares: node name, loopback address,
/// ports, quiet logs; `mode` comes first (`-dev`, or `-server` and friends).
fn agent_args(mode: &[&str], node: &str, ip: Ipv4Addr, ports: &Ports) -> Vec<String> {
    let mut args: Vec<String> = vec!["agent".into()];
    args.extend(mode.iter().map(|a| a.to_string()));
    for (flag, value) in [
        ("-node", node.to_string()),
        ("-client", ip.to_string()),
        ("-bind", ip.to_string()),
        ("-http-port", ports.http.to_string()),
        ("-dns-port", "-1".into()),
        ("-grpc-port", "-1".into()),
        ("-serf-lan-port", ports.serf_lan.to_string()),
        ("-serf-wan-port", ports.serf_wan.to_string()),
        ("-server-port", ports.server.to_string()),
        ("-log-level", "warn".into()),
    ] {
        args.push(flag.into());
        args.push(value);
    }
    args
}

/// One running Consul agent.
pub struct Agent {
    child: Child,
    pub http: SocketAddr,
    pub log: PathBuf,
    args: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Agent {
    /// A dev agent (in-memory server) on free loopback ports, with a leader.
    pub fn dev() -> Agent {
        Agent::dev_with(|_| Vec::new())
    }

    /// A dev agent with extra arguments; `extra` gets a free port it may use
    /// (for an HTTPS listener, say).
    pub fn dev_with(extra: impl Fn(u16) -> Vec<String>) -> Agent {
        let mut last = String::new();
        for _ in 0..3 {
            let ip = Ipv4Addr::LOCALHOST;
            let ports = Ports::free(ip);
            let dir = tempfile::tempdir().expect("temp dir");
            let mut args = agent_args(&["-dev"], &format!("dev-{}", ports.http), ip, &ports);
            args.extend(extra(free_port(ip)));
            match Agent::spawn(&args, SocketAddr::from((ip, ports.http)), dir) {
                Ok(mut agent) => match agent.wait_ready(Duration::from_secs(30)) {
                    Ok(()) => return agent,
                    Err(e) => last = e,
                },
                Err(e) => last = e,
            }
        }
        panic!("could not start a Consul dev agent: {last}");
    }

    fn spawn(args: &[String], http: SocketAddr, dir: tempfile::TempDir) -> Result<Agent, String> {
        let log = dir.path().join("consul.log");
        let child = Agent::command(args, &log)?
            .spawn()
            .map_err(|e| format!("spawn consul: {e}"))?;
        Ok(Agent {
            child,
            http,
            log,
            args: args.to_vec(),
            _dir: dir,
        })
    }

    fn command(args: &[String], log: &Path) -> Result<Command, String> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| e.to_string())?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = Command::new(consul_bin());
        cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
        die_with_parent(&mut cmd);
        Ok(cmd)
    }

    /// A single-server agent that keeps its state in a data folder, so it can
    /// be stopped and started again ([`Agent::stop`], [`Agent::start_again`]).
    pub fn persistent() -> Agent {
        let ip = Ipv4Addr::LOCALHOST;
        let ports = Ports::free(ip);
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("data").display().to_string();
        let mode = [
            "-server",
            "-bootstrap-expect",
            "1",
            "-data-dir",
            data.as_str(),
        ];
        let args = agent_args(&mode, &format!("persistent-{}", ports.http), ip, &ports);
        let http = ports.http;
        let mut agent = Agent::spawn(&args, SocketAddr::from((ip, http)), dir)
            .unwrap_or_else(|e| panic!("start a persistent agent: {e}"));
        agent
            .wait_ready(Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("persistent agent: {e}"));
        agent
    }

    /// Stops the agent gracefully (SIGTERM) and waits for it to exit.
    pub fn stop(&mut self) {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
    }

    /// Starts the stopped agent again without waiting (a cluster whose every
    /// server restarts needs them all up before any has a leader).
    pub fn start_again_no_wait(&mut self) {
        let mut cmd = Agent::command(&self.args, &self.log).expect("command");
        self.child = cmd.spawn().expect("spawn consul again");
    }

    /// Waits until a restarted agent has a leader again.
    pub fn wait_ready_again(&mut self, timeout: Duration) {
        self.wait_ready(timeout)
            .unwrap_or_else(|e| panic!("restarted agent {}: {e}", self.http));
    }

    /// Starts the stopped agent again with the same ports and data folder.
    pub fn start_again(&mut self) {
        let mut cmd = Agent::command(&self.args, &self.log).expect("command");
        self.child = cmd.spawn().expect("spawn consul again");
        self.wait_ready(Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("restarted agent: {e}"));
    }

    /// Waits until the agent knows a leader and serves KV reads.
    fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("consul exited ({status}): {}", self.log_tail()));
            }
            let leader = http_get(self.http, "/v1/status/leader");
            let kv = http_get(self.http, "/v1/kv/svc-handler-test-probe");
            if matches!(leader, Some((200, ref b)) if b.trim().len() > 2)
                && matches!(kv, Some((404 | 403, _)))
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("no leader after {timeout:?}: {}", self.log_tail()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// `http://127.0.0.1:<port>`.
    /// The agent's process id (for its CPU time in /proc).
    #[allow(dead_code)]
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.http)
    }

    /// Client settings for this agent (no token).
    pub fn settings(&self) -> Settings {
        Settings {
            address: self.url(),
            ..Settings::default()
        }
    }

    /// A new client for this agent. Make one per test: a client belongs to
    /// the runtime it first runs in.
    pub fn client(&self) -> Client {
        Client::new(self.settings()).expect("client")
    }

    /// Kills the agent now (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The dev agent shared by every test of this binary. It is started from a
/// thread that lives as long as the process, so the kernel kills it when the
/// test process exits, however it exits. Its `http_max_conns_per_client` is
/// raised from Consul's 200 to 1,000: every daemon the tests of a binary run
/// at once talks to it from 127.0.0.1 (one daemon holds up to 35 long-polls
/// and a few more connections, and a stopped daemon's blocking queries stay
/// counted for up to a minute), where in production each node runs one
/// daemon against its own agent. Tests on an agent of their own keep the
/// default.
pub fn shared() -> &'static Agent {
    static AGENT: OnceLock<&'static Agent> = OnceLock::new();
    AGENT.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("consul-agent-owner".into())
            .spawn(move || {
                let agent: &'static Agent = Box::leak(Box::new(Agent::dev_with(|_| {
                    vec![
                        "-hcl".into(),
                        "limits { http_max_conns_per_client = 1000 }".into(),
                    ]
                })));
                tx.send(agent).expect("send agent");
                loop {
                    std::thread::park();
                }
            })
            .expect("spawn owner thread");
        rx.recv().expect("the shared agent started")
    })
}

/// Three Consul servers on 127.0.0.1, 127.0.0.2 and 127.0.0.3 (same ports,
/// one data folder each) forming a real Raft cluster.
pub struct Cluster {
    pub agents: Vec<Agent>,
}

impl Cluster {
    pub fn start() -> Cluster {
        let ips = [
            Ipv4Addr::new(127, 0, 0, 1),
            Ipv4Addr::new(127, 0, 0, 2),
            Ipv4Addr::new(127, 0, 0, 3),
        ];
        // The same ports on each address.
        let ports = Ports::free(ips[0]);
        let mut agents = Vec::new();
        for (i, ip) in ips.iter().enumerate() {
            let dir = tempfile::tempdir().expect("temp dir");
            let data = dir.path().join("data").display().to_string();
            let mode = [
                "-server",
                "-bootstrap-expect",
                "3",
                "-data-dir",
                data.as_str(),
            ];
            let mut args = agent_args(&mode, &format!("server-{i}"), *ip, &ports);
            for other in ips.iter().filter(|o| *o != ip) {
                args.push("-retry-join".into());
                args.push(format!("{other}:{}", ports.serf_lan));
            }
            let http = ports.http;
            let agent = Agent::spawn(&args, SocketAddr::from((*ip, http)), dir)
                .unwrap_or_else(|e| panic!("start server {i}: {e}"));
            agents.push(agent);
        }
        let mut cluster = Cluster { agents };
        for a in &mut cluster.agents {
            a.wait_ready(Duration::from_secs(60))
                .unwrap_or_else(|e| panic!("cluster server {}: {e}", a.http));
        }
        cluster
    }

    /// The index of the agent that is the Raft leader, as the first agent that
    /// answers `/v1/status/leader` sees it.
    pub fn leader(&self) -> Option<usize> {
        for a in &self.agents {
            if let Some((200, body)) = http_get(a.http, "/v1/status/leader") {
                let addr = body.trim().trim_matches('"');
                if let Some(ip) = addr.split(':').next() {
                    return self
                        .agents
                        .iter()
                        .position(|x| x.http.ip().to_string() == ip);
                }
            }
        }
        None
    }
}

/// A minimal HTTP/1.0 GET (no client runtime needed): status and body.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status: u16 = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Some((status, body))
}
