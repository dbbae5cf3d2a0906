//! A TCP proxy on loopback that can pass traffic, hang up on every
//! connection, or swallow requests without answering: failing and slow
//! Consul answers for the fault tests.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Pass = 0,
    /// Accept, then close at once: transport errors.
    Reset = 1,
    /// Accept and never answer: timeouts.
    Blackhole = 2,
}

pub struct Proxy {
    pub addr: SocketAddr,
    mode: Arc<AtomicU8>,
    connections: Arc<AtomicU64>,
    /// Bumped at every mode change: open connections are cut then, so a
    /// client's pooled connections see the new mode too.
    epoch: tokio::sync::watch::Sender<u64>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mode = Arc::new(AtomicU8::new(Mode::Pass as u8));
        let connections = Arc::new(AtomicU64::new(0));
        let (m, c) = (Arc::clone(&mode), Arc::clone(&connections));
        let (epoch, epoch_rx) = tokio::sync::watch::channel(0u64);
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                let mode = m.load(Ordering::SeqCst);
                let mut changed = epoch_rx.clone();
                changed.borrow_and_update();
                tokio::spawn(async move {
                    let work = async {
                        match mode {
                            1 => drop(inbound),
                            2 => {
                                // Hold the connection open, answer nothing.
                                let mut buf = [0u8; 4096];
                                use tokio::io::AsyncReadExt;
                                while let Ok(n) = inbound.read(&mut buf).await {
                                    if n == 0 {
                                        break;
                                    }
                                }
                            }
                            _ => {
                                if let Ok(mut out) = TcpStream::connect(upstream).await {
                                    let _ = copy_bidirectional(&mut inbound, &mut out).await;
                                }
                            }
                        }
                    };
                    tokio::select! {
                        _ = work => {}
                        _ = changed.changed() => {}
                    }
                });
            }
        });
        Proxy {
            addr,
            mode,
            connections,
            epoch,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
        self.epoch.send_modify(|e| *e += 1);
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }
}
