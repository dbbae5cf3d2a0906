//! A Consul that behaves as a real one would not, in front of a real one: an
//! HTTP proxy that forwards every request to the agent, counts the writes a
//! test cares about, and lets a test make Consul store a field differently
//! from what was written (rewriting the read of one entry) or refuse one
//! entry on validation (a 500 with Consul's words), as a newer or patched
//! Consul may. Runs on its own thread with its own runtime.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

/// What the proxy does differently, and what it saw.
#[derive(Default)]
struct Rules {
    /// `/v1/config/<kind>/<name>` -> (field, value): set in the body of reads.
    stored_differently: HashMap<String, (String, serde_json::Value)>,
    /// Entry names whose writes are refused with this 500 body.
    refused: HashMap<String, String>,
    /// Config-entry writes (PUT /v1/config) by entry name.
    entry_writes: HashMap<String, u64>,
    /// Transactions whose body mentions a key, by key.
    txn_mentions: Vec<String>,
}

/// The proxy; its address is [`Rewriter::url`].
pub struct Rewriter {
    addr: SocketAddr,
    rules: Arc<Mutex<Rules>>,
}

impl Rewriter {
    /// Starts a proxy in front of the agent at `upstream` (`http://host:port`).
    pub fn start(upstream: &str) -> Rewriter {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let rules: Arc<Mutex<Rules>> = Arc::default();
        let (r, upstream) = (
            Arc::clone(&rules),
            upstream.trim_end_matches('/').to_string(),
        );
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(serve(std_listener, upstream, r));
        });
        Rewriter { addr, rules }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Reads of `<kind>/<name>` show `field` as `value`, whatever was written.
    pub fn store_differently(&self, kind: &str, name: &str, field: &str, value: serde_json::Value) {
        let path = format!("/v1/config/{kind}/{name}");
        let rule = (field.to_string(), value);
        self.rules
            .lock()
            .unwrap()
            .stored_differently
            .insert(path, rule);
    }

    /// Writes of the entry named `name` are refused with a 500 saying `body`.
    pub fn refuse(&self, name: &str, body: &str) {
        let mut r = self.rules.lock().unwrap();
        r.refused.insert(name.to_string(), body.to_string());
    }

    /// Config-entry writes of `name` so far (refused ones included).
    pub fn entry_writes(&self, name: &str) -> u64 {
        *self
            .rules
            .lock()
            .unwrap()
            .entry_writes
            .get(name)
            .unwrap_or(&0)
    }

    /// Transactions so far whose body mentions `needle` with a `set`.
    pub fn txn_sets(&self, needle: &str) -> usize {
        let r = self.rules.lock().unwrap();
        r.txn_mentions.iter().filter(|b| sets(b, needle)).count()
    }
}

/// True when the transaction `body` sets the key `needle`.
fn sets(body: &str, needle: &str) -> bool {
    let Ok(serde_json::Value::Array(ops)) = serde_json::from_str(body) else {
        return false;
    };
    ops.iter().any(|op| {
        op["KV"]["Verb"] == "set" && op["KV"]["Key"].as_str().is_some_and(|k| k == needle)
    })
}

async fn serve(listener: std::net::TcpListener, upstream: String, rules: Arc<Mutex<Rules>>) {
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    let client = reqwest::Client::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (client, upstream, rules) = (client.clone(), upstream.clone(), Arc::clone(&rules));
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let (client, upstream, rules) =
                    (client.clone(), upstream.clone(), Arc::clone(&rules));
                async move { Ok::<_, Infallible>(handle(req, &client, &upstream, &rules).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn handle(
    req: Request<Incoming>,
    client: &reqwest::Client,
    upstream: &str,
    rules: &Mutex<Rules>,
) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let path = parts.uri.path().to_string();
    let text = String::from_utf8_lossy(&body).to_string();
    if let Some(refusal) = note_write(&parts.method, &path, &text, rules) {
        return respond(500, Bytes::from(refusal));
    }
    let url = format!(
        "{upstream}{}",
        parts.uri.path_and_query().map_or("", |p| p.as_str())
    );
    let mut out = client.request(parts.method.clone(), url).body(body);
    for (k, v) in &parts.headers {
        // The answer is read and rewritten as JSON: ask Consul for it plain.
        if k != "host" && k != "content-length" && k != "accept-encoding" {
            out = out.header(k, v);
        }
    }
    let Ok(answer) = out.send().await else {
        return respond(502, Bytes::from_static(b"upstream unreachable"));
    };
    let status = answer.status().as_u16();
    let headers = answer.headers().clone();
    let mut bytes = answer.bytes().await.unwrap_or_default();
    let rule = rules.lock().unwrap().stored_differently.get(&path).cloned();
    if let Some((field, value)) = rule.filter(|_| parts.method == hyper::Method::GET) {
        if let Ok(serde_json::Value::Object(mut entry)) = serde_json::from_slice(&bytes) {
            entry.insert(field, value);
            bytes = Bytes::from(serde_json::to_vec(&entry).unwrap());
        }
    }
    let mut resp = respond(status, bytes);
    for (k, v) in &headers {
        if k.as_str().starts_with("x-consul") || k == "content-type" {
            resp.headers_mut().insert(k, v.clone());
        }
    }
    resp
}

/// Counts a write the tests care about; the refusal to answer, if any.
fn note_write(
    method: &hyper::Method,
    path: &str,
    body: &str,
    rules: &Mutex<Rules>,
) -> Option<String> {
    if method != hyper::Method::PUT {
        return None;
    }
    let mut r = rules.lock().unwrap();
    if path == "/v1/txn" {
        r.txn_mentions.push(body.to_string());
        return None;
    }
    if path != "/v1/config" {
        return None;
    }
    let entry: serde_json::Value = serde_json::from_str(body).ok()?;
    let name = entry["Name"].as_str()?.to_string();
    *r.entry_writes.entry(name.clone()).or_default() += 1;
    r.refused.get(&name).cloned()
}

fn respond(status: u16, body: Bytes) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    resp
}
