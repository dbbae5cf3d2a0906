//! An async client for the Consul HTTP API (KV, sessions, config entries, txn),
//! on reqwest with rustls. It knows nothing of svc-handler.
//!
//! One [`Client`] holds one connection pool; clones share it. Each client has
//! a [`Scope`] (partition and namespace) that is sent as `partition`/`ns`
//! query parameters only when not `default`, since Consul OSS answers 400 to
//! `ns=default`. [`Client::scoped`] gives a clone with another scope.

mod agent;
mod config_entry;
mod error;
mod kv;
mod session;
mod settings;
mod shared;
mod txn;

pub use agent::{AclToken, TokenSelf};
pub use config_entry::ConfigEntry;
pub use error::{one_line, ConsulError, ErrorClass};
pub use kv::KvPair;
pub use session::{SessionBehavior, SessionInfo, SessionRequest};
pub use settings::{Secret, Settings, DEFAULT_ADDR};
pub use shared::SharedEntry;
pub use txn::{TxnError, TxnKvOp, TxnKvResult, TxnOutcome};

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode, Url};

/// Consul's default blocking wait, used when a blocking read gives no `wait`.
pub const DEFAULT_BLOCKING_WAIT: Duration = Duration::from_secs(300);
/// Consul's maximum blocking wait.
pub const MAX_BLOCKING_WAIT: Duration = Duration::from_secs(600);

/// Told about every request the client makes (for metrics). `code` is the
/// HTTP status as text, or `transport` / `timeout` when there was none.
pub trait RequestObserver: Send + Sync {
    fn observe(&self, op: &'static str, code: &str, elapsed: Duration);

    /// The size of an answer's body: as read (decoded), and as received
    /// (gzip-compressed when Consul compressed it).
    fn observe_bytes(&self, _op: &'static str, _body: u64, _wire: u64) {}
}

/// The partition and namespace requests are made in.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Scope {
    pub partition: String,
    pub namespace: String,
}

impl Default for Scope {
    fn default() -> Self {
        Scope {
            partition: "default".into(),
            namespace: "default".into(),
        }
    }
}

impl Scope {
    pub fn new(partition: impl Into<String>, namespace: impl Into<String>) -> Self {
        Scope {
            partition: partition.into(),
            namespace: namespace.into(),
        }
    }

    fn append_to(&self, url: &mut Url) {
        if !self.partition.is_empty() && self.partition != "default" {
            url.query_pairs_mut()
                .append_pair("partition", &self.partition);
        }
        if !self.namespace.is_empty() && self.namespace != "default" {
            url.query_pairs_mut().append_pair("ns", &self.namespace);
        }
    }
}

/// Which servers may answer a read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Consistency {
    /// The leader answers, without an extra round of checks (Consul's default).
    #[default]
    Default,
    /// The leader answers after confirming it still leads (`?consistent`).
    Consistent,
    /// Any server answers, possibly behind the leader (`?stale`).
    Stale,
}

/// Options of a read: consistency and, for a blocking read, the index to wait
/// past and how long to wait.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueryOptions {
    pub consistency: Consistency,
    /// Block until the state's index is past this one (0 or `None`: do not block).
    pub index: Option<u64>,
    /// How long to block at most (Consul's default 5 min, at most 10 min).
    pub wait: Option<Duration>,
    /// Whether to ask for a compressed answer; `None`: by the operation
    /// (listings and terminating gateways are, see `compressed`). A caller
    /// that knows a listing is small asks for it plain: compressing costs
    /// Consul about 0.1 ms of CPU an answer, more than a listing of a few
    /// folders costs it to make.
    pub compress: Option<bool>,
}

impl QueryOptions {
    /// A consistent, non-blocking read.
    pub fn consistent() -> Self {
        QueryOptions {
            consistency: Consistency::Consistent,
            ..Default::default()
        }
    }

    /// This read, its answer asked for plain (not compressed): for a caller
    /// that knows the answer is small.
    pub fn plain(self) -> Self {
        QueryOptions {
            compress: Some(false),
            ..self
        }
    }

    /// A blocking read past `index`, waiting at most `wait`.
    pub fn blocking(index: u64, wait: Duration) -> Self {
        QueryOptions {
            index: Some(index),
            wait: Some(wait),
            ..Default::default()
        }
    }

    /// The wait that will be sent, when the read blocks.
    fn effective_wait(&self) -> Option<Duration> {
        match self.index {
            Some(i) if i > 0 => Some(
                self.wait
                    .unwrap_or(DEFAULT_BLOCKING_WAIT)
                    .min(MAX_BLOCKING_WAIT),
            ),
            _ => None,
        }
    }

    fn append_to(&self, url: &mut Url) {
        match self.consistency {
            Consistency::Default => {}
            Consistency::Consistent => {
                url.query_pairs_mut().append_key_only("consistent");
            }
            Consistency::Stale => {
                url.query_pairs_mut().append_key_only("stale");
            }
        }
        if let (Some(index), Some(wait)) = (self.index, self.effective_wait()) {
            url.query_pairs_mut()
                .append_pair("index", &index.to_string())
                .append_pair("wait", &format!("{}ms", wait.as_millis()));
        }
    }
}

/// What Consul says about the state a read saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueryMeta {
    /// `X-Consul-Index`: an opaque id of the state; 0 when absent.
    pub index: u64,
    /// `X-Consul-KnownLeader`.
    pub known_leader: bool,
    /// `X-Consul-LastContact`: how long since the answering server heard from
    /// the leader (0 on the leader).
    pub last_contact: Duration,
    /// Size of the answer's body in bytes, decoded (the JSON read: what a
    /// watch costs to parse, and what its pacing counts).
    pub body_bytes: u64,
    /// Size of the answer's body as received: gzip-compressed when Consul
    /// compressed it (listings ask it to), else `body_bytes`.
    pub wire_bytes: u64,
}

impl QueryMeta {
    fn from_headers(h: &HeaderMap) -> Self {
        let text = |name: &str| h.get(name).and_then(|v| v.to_str().ok());
        QueryMeta {
            index: text("x-consul-index")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            known_leader: text("x-consul-knownleader") == Some("true"),
            last_contact: Duration::from_millis(
                text("x-consul-lastcontact")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
            ),
            body_bytes: 0,
            wire_bytes: 0,
        }
    }
}

/// Whether to ask Consul to compress the answer to `op` at `url`: the reads
/// whose answers grow with the world (listings, where a list of folder
/// names shrinks about twentyfold, and a terminating gateway, which holds
/// a link per service), and not the answers of a few hundred bytes (a
/// record, observed.json, a service's own config entry, writes, sessions,
/// the agent's own endpoints), where decoding costs more CPU than the
/// bytes saved (a resync of 5,000 services measured 4.1 CPU seconds with
/// those compressed, 2.3 without).
fn compressed(op: &str, url: &Url) -> bool {
    match op {
        "kv.list" | "kv.keys" | "config.list" => true,
        "config.get" => url
            .path_segments()
            .and_then(|mut s| s.nth(2))
            .is_some_and(|kind| kind == "terminating-gateway"),
        _ => false,
    }
}

/// Decodes a gzip-compressed answer.
fn gunzip(compressed: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::with_capacity(compressed.len() * 8);
    flate2::read::GzDecoder::new(compressed).read_to_end(&mut out)?;
    Ok(out)
}

/// An HTTP answer, read whole.
pub(crate) struct Answer {
    pub status: StatusCode,
    pub meta: QueryMeta,
    pub body: Vec<u8>,
}

impl Answer {
    fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Success or the error naming `op`.
    pub fn ok(self, op: &'static str) -> Result<Answer, ConsulError> {
        if self.status.is_success() {
            Ok(self)
        } else {
            Err(ConsulError::status_from_body(
                op,
                self.status.as_u16(),
                &self.body_text(),
            ))
        }
    }

    pub fn json<T: serde::de::DeserializeOwned>(&self, op: &'static str) -> Result<T, ConsulError> {
        serde_json::from_slice(&self.body).map_err(|e| ConsulError::Decode {
            op,
            detail: format!("{e}; body: {}", error::clip(&self.body_text())),
        })
    }

    /// A `true`/`false` body, as answered by KV and config-entry writes.
    pub fn bool(&self, op: &'static str) -> Result<bool, ConsulError> {
        self.json(op)
    }
}

struct Inner {
    http: reqwest::Client,
    /// Where requests go (with `CONSUL_TLS_SERVER_NAME`, its host is that name).
    base: Url,
    /// The address as configured, for messages.
    display: String,
    token: RwLock<Option<Secret>>,
    settings: Settings,
    observer: Option<Arc<dyn RequestObserver>>,
    /// Permits for requests that do not block ([`MAX_SHORT_REQUESTS`]).
    short: tokio::sync::Semaphore,
    /// Reads shared by concurrent callers ([`Client::config_get_shared`]).
    shared: shared::SharedReads,
}

/// At most this many requests without a blocking wait are in flight at once
/// over a client and its clones (queued, not refused, past that): each
/// holds a connection to the agent, and every client on a node shares the
/// agent's `http_max_conns_per_client` (200 by default). Blocking reads are
/// bounded by their callers (the daemon's watches: at most 35).
pub const MAX_SHORT_REQUESTS: usize = 32;

/// The Consul HTTP API client.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    scope: Scope,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("addr", &self.inner.display)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client for `settings`: reads the token file and the TLS files now.
    pub fn new(settings: Settings) -> Result<Self, ConsulError> {
        Self::with_observer(settings, None)
    }

    /// Like [`Client::new`], telling `observer` about every request.
    pub fn with_observer(
        settings: Settings,
        observer: Option<Arc<dyn RequestObserver>>,
    ) -> Result<Self, ConsulError> {
        let mut base = settings.base_url()?;
        let display = without_credentials(&base);
        let mut builder = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("svc-handler/", env!("CARGO_PKG_VERSION")));

        if base.scheme() == "https" {
            builder = builder.use_rustls_tls();
            for pem in ca_pems(&settings)? {
                let certs = reqwest::Certificate::from_pem_bundle(&pem)
                    .map_err(|e| ConsulError::Config(format!("CA certificates: {e}")))?;
                for c in certs {
                    builder = builder.add_root_certificate(c);
                }
            }
            match (&settings.client_cert, &settings.client_key) {
                (Some(cert), Some(key)) => {
                    let mut pem = read_file("CONSUL_CLIENT_CERT", cert)?;
                    pem.push(b'\n');
                    pem.extend(read_file("CONSUL_CLIENT_KEY", key)?);
                    let id = reqwest::Identity::from_pem(&pem).map_err(|e| {
                        ConsulError::Config(format!(
                            "CONSUL_CLIENT_CERT/CONSUL_CLIENT_KEY: not a usable certificate and key: {e}"
                        ))
                    })?;
                    builder = builder.identity(id);
                }
                (None, None) => {}
                _ => {
                    return Err(ConsulError::Config(
                        "CONSUL_CLIENT_CERT and CONSUL_CLIENT_KEY must be set together".into(),
                    ))
                }
            }
            if !settings.ssl_verify {
                builder = builder.danger_accept_invalid_certs(true);
            }
            if let Some(name) = &settings.tls_server_name {
                // Verify (and send SNI for) `name` while connecting to the
                // address's own host: point `name` at the address's sockets.
                let host = base.host_str().unwrap_or_default().to_string();
                let port = base.port_or_known_default().unwrap_or(443);
                let addrs: Vec<std::net::SocketAddr> =
                    std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))
                        .map_err(|e| {
                            ConsulError::Config(format!("cannot resolve Consul host {host:?}: {e}"))
                        })?
                        .collect();
                builder = builder.resolve_to_addrs(name, &addrs);
                base.set_host(Some(name)).map_err(|e| {
                    ConsulError::Config(format!("CONSUL_TLS_SERVER_NAME {name:?}: {e}"))
                })?;
            }
        }

        let http = builder
            .build()
            .map_err(|e| ConsulError::Config(format!("cannot build the HTTP client: {e}")))?;
        let token = load_token(&settings)?;
        let scope = Scope::new(settings.partition.clone(), settings.namespace.clone());
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                base,
                display,
                token: RwLock::new(token),
                settings,
                observer,
                short: tokio::sync::Semaphore::new(MAX_SHORT_REQUESTS),
                shared: shared::SharedReads::default(),
            }),
            scope,
        })
    }

    /// A client sharing this one's connections, in another partition/namespace.
    pub fn scoped(&self, scope: Scope) -> Client {
        Client {
            inner: Arc::clone(&self.inner),
            scope,
        }
    }

    /// This client's partition and namespace.
    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    /// The address requests go to (no token, no credentials).
    pub fn address(&self) -> &str {
        &self.inner.display
    }

    /// Reads `CONSUL_HTTP_TOKEN_FILE` again (after an operator rotated it).
    /// Without a token file, keeps the token it has.
    pub fn reload_token(&self) -> Result<(), ConsulError> {
        if self.inner.settings.token_file.is_none() {
            return Ok(());
        }
        let token = load_token(&self.inner.settings)?;
        *self.inner.token.write().expect("token lock poisoned") = token;
        Ok(())
    }

    /// `GET /v1/status/leader`: the leader's address, empty when there is none.
    pub async fn leader(&self) -> Result<String, ConsulError> {
        const OP: &str = "status.leader";
        let url = self.url(&["v1", "status", "leader"], false);
        let a = self.send(OP, Method::GET, url, None, None).await?.ok(OP)?;
        a.json(OP)
    }

    /// A URL under the base, path segments escaped; `scoped` adds partition/ns.
    pub(crate) fn url(&self, segments: &[&str], scoped: bool) -> Url {
        let mut url = self.inner.base.clone();
        {
            let mut path = url.path_segments_mut().expect("base URL is http(s)");
            path.clear();
            for s in segments {
                path.push(s);
            }
        }
        if scoped {
            self.scope.append_to(&mut url);
        }
        url
    }

    /// A URL for a KV key: the key's own `/` stay path separators, every
    /// other byte that needs it is escaped.
    /// The URL of `key`. A key with a `.` or `..` segment (a transaction can
    /// write one) cannot be addressed: URLs drop such segments, so the
    /// request would reach another key; it is refused instead.
    pub(crate) fn kv_url(&self, op: &'static str, key: &str) -> Result<Url, ConsulError> {
        if crate::keys::has_dot_segment(key) {
            return Err(ConsulError::Unaddressable {
                op,
                key: crate::keys::quote(key),
            });
        }
        let mut url = self.inner.base.clone();
        {
            let mut path = url.path_segments_mut().expect("base URL is http(s)");
            path.clear().push("v1").push("kv");
            path.extend(key.split('/'));
        }
        self.scope.append_to(&mut url);
        Ok(url)
    }

    /// Sends one request and reads the whole answer. `read` adds query options
    /// and sets the deadline of a blocking read to its wait, plus Consul's
    /// jitter (wait/16), plus the normal request timeout.
    pub(crate) async fn send(
        &self,
        op: &'static str,
        method: Method,
        mut url: Url,
        read: Option<&QueryOptions>,
        body: Option<Vec<u8>>,
    ) -> Result<Answer, ConsulError> {
        let mut timeout = self.inner.settings.request_timeout;
        let mut blocking = false;
        if let Some(opts) = read {
            opts.append_to(&mut url);
            if let Some(wait) = opts.effective_wait() {
                timeout += wait + wait / 16;
                blocking = true;
            }
        }
        let gzip = read
            .and_then(|o| o.compress)
            .unwrap_or_else(|| compressed(op, &url));
        // For the trace below: the path and query only (the token travels
        // in a header, never in the URL).
        let target = tracing::enabled!(tracing::Level::TRACE).then(|| match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_string(),
        });
        let mut req = (self.inner.http.request(method, url)).timeout(timeout);
        if gzip {
            req = req.header(reqwest::header::ACCEPT_ENCODING, "gzip");
        }
        let token = self
            .inner
            .token
            .read()
            .expect("token lock poisoned")
            .clone();
        if let Some(token) = token {
            let mut v = HeaderValue::from_str(token.expose()).map_err(|_| {
                ConsulError::Config("the ACL token holds characters not allowed in a header".into())
            })?;
            v.set_sensitive(true);
            req = req.header("X-Consul-Token", v);
        }
        if let Some(body) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        let _permit = match blocking {
            true => None,
            false => Some(
                (self.inner.short.acquire())
                    .await
                    .expect("the semaphore is never closed"),
            ),
        };
        let started = Instant::now();
        let result = async {
            let resp = req.send().await?;
            let status = resp.status();
            let mut meta = QueryMeta::from_headers(resp.headers());
            let gzip = resp
                .headers()
                .get(reqwest::header::CONTENT_ENCODING)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
            let wire = resp.bytes().await?;
            meta.wire_bytes = wire.len() as u64;
            let body = if gzip {
                gunzip(&wire)
            } else {
                Ok(wire.to_vec())
            };
            Ok::<_, reqwest::Error>((status, meta, body))
        }
        .await;
        let result = result.map(|(status, mut meta, body)| {
            let body = body.map_err(|e| ConsulError::Decode {
                op,
                detail: format!("Consul's gzip-compressed answer could not be read: {e}"),
            })?;
            meta.body_bytes = body.len() as u64;
            Ok::<_, ConsulError>(Answer { status, meta, body })
        });
        let elapsed = started.elapsed();
        match result {
            Ok(Err(e)) => {
                self.observe(op, "transport", elapsed);
                Err(e)
            }
            Ok(Ok(answer)) => {
                self.observe(op, answer.status.as_str(), elapsed);
                tracing::trace!(
                    op,
                    target = target.as_deref().unwrap_or_default(),
                    status = answer.status.as_u16(),
                    bytes = answer.meta.body_bytes,
                    wire_bytes = answer.meta.wire_bytes,
                    ms = elapsed.as_secs_f64() * 1000.0,
                    "consul request"
                );
                if let Some(o) = &self.inner.observer {
                    o.observe_bytes(op, answer.meta.body_bytes, answer.meta.wire_bytes);
                }
                Ok(answer)
            }
            Err(e) if e.is_timeout() => {
                self.observe(op, "timeout", elapsed);
                Err(ConsulError::Timeout {
                    op,
                    addr: self.address().to_string(),
                    after: timeout,
                })
            }
            Err(e) => {
                self.observe(op, "transport", elapsed);
                Err(ConsulError::Transport {
                    op,
                    addr: self.address().to_string(),
                    detail: transport_detail(&e),
                })
            }
        }
    }

    fn observe(&self, op: &'static str, code: &str, elapsed: Duration) {
        if let Some(o) = &self.inner.observer {
            o.observe(op, code, elapsed);
        }
    }
}

/// `url` as it may be printed or stored: without the user name and
/// password a `CONSUL_HTTP_ADDR` such as `http://user:pass@proxy:8500`
/// carries (they still go to Consul, as basic authentication).
fn without_credentials(url: &Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.as_str().trim_end_matches('/').to_string()
}

/// The chain of causes of a transport error, without the URL (which is in
/// the error's `addr`) so nothing but the address is repeated.
fn transport_detail(e: &reqwest::Error) -> String {
    let mut parts = Vec::new();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        parts.push(s.to_string());
        source = s.source();
    }
    if parts.is_empty() {
        parts.push(e.without_url_ref().to_string());
    }
    parts.dedup();
    parts.join(": ")
}

trait WithoutUrl {
    fn without_url_ref(&self) -> String;
}

impl WithoutUrl for reqwest::Error {
    fn without_url_ref(&self) -> String {
        let mut s = self.to_string();
        if let Some(u) = self.url() {
            s = s.replace(u.as_str(), "");
        }
        s
    }
}

fn read_file(what: &str, path: &Path) -> Result<Vec<u8>, ConsulError> {
    std::fs::read(path)
        .map_err(|e| ConsulError::Config(format!("{what}: cannot read {}: {e}", path.display())))
}

fn ca_pems(settings: &Settings) -> Result<Vec<Vec<u8>>, ConsulError> {
    let mut out = Vec::new();
    if let Some(f) = &settings.ca_file {
        out.push(read_file("CONSUL_CACERT", f)?);
    }
    if let Some(dir) = &settings.ca_path {
        let entries = std::fs::read_dir(dir).map_err(|e| {
            ConsulError::Config(format!("CONSUL_CAPATH: cannot read {}: {e}", dir.display()))
        })?;
        let mut paths: Vec<_> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        paths.sort();
        for p in paths {
            out.push(read_file("CONSUL_CAPATH", &p)?);
        }
    }
    Ok(out)
}

/// The token file's content when set and not empty, else the token.
fn load_token(settings: &Settings) -> Result<Option<Secret>, ConsulError> {
    if let Some(path) = &settings.token_file {
        let raw = std::fs::read_to_string(path).map_err(|e| {
            ConsulError::Config(format!(
                "CONSUL_HTTP_TOKEN_FILE: cannot read {}: {}",
                path.display(),
                e.kind()
            ))
        })?;
        let t = raw.trim();
        if !t.is_empty() {
            return Ok(Some(Secret::new(t)));
        }
    }
    Ok(settings.token.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> Client {
        Client::new(Settings {
            address: "127.0.0.1:8500".into(),
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn only_answers_that_grow_with_the_world_are_asked_compressed() {
        let url = |path: &str| Url::parse(&format!("http://127.0.0.1:8500{path}")).unwrap();
        assert!(compressed("kv.list", &url("/v1/kv/p/desired/")));
        assert!(compressed("kv.keys", &url("/v1/kv/p/desired/")));
        assert!(compressed("config.list", &url("/v1/config/service-router")));
        assert!(compressed(
            "config.get",
            &url("/v1/config/terminating-gateway/gw?ns=a")
        ));
        assert!(!compressed(
            "config.get",
            &url("/v1/config/service-defaults/web")
        ));
        // A service named like the kind is not the kind.
        assert!(!compressed(
            "config.get",
            &url("/v1/config/service-resolver/terminating-gateway")
        ));
        assert!(!compressed(
            "kv.get",
            &url("/v1/kv/p/desired/a/b/web/base.json")
        ));
        assert!(!compressed("txn", &url("/v1/txn")));
    }

    #[tokio::test]
    async fn credentials_in_the_address_are_never_shown() {
        let c = Client::new(Settings {
            address: "http://user:s3cret-pw@127.0.0.1:1".into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.address(), "http://127.0.0.1:1");
        assert!(!format!("{c:?}").contains("s3cret-pw"));
        let e = c.kv_get("k", &QueryOptions::default()).await.unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("cannot reach Consul at http://127.0.0.1:1"),
            "{text}"
        );
        assert!(
            !text.contains("s3cret-pw") && !text.contains("user@"),
            "{text}"
        );
    }

    #[test]
    fn kv_urls_escape_all_but_slashes() {
        let c = client();
        assert_eq!(
            c.kv_url("t", "a b/c?d#e%f/").unwrap().as_str(),
            "http://127.0.0.1:8500/v1/kv/a%20b/c%3Fd%23e%25f/"
        );
    }

    #[test]
    fn keys_with_dot_segments_are_refused_not_redirected() {
        let c = client();
        for key in ["a/./b", "a/../b", "./a", "a/..", "."] {
            let e = c.kv_url("kv.put", key).unwrap_err();
            assert!(e.to_string().contains("cannot address"), "{key}: {e}");
        }
        for key in ["a/.b", "a/b.", "a/...", "a..b/c"] {
            assert!(c.kv_url("kv.put", key).is_ok(), "{key}");
        }
    }

    #[test]
    fn scope_sends_only_non_default() {
        let c = client();
        assert_eq!(c.kv_url("t", "k").unwrap().query(), None);
        let s = c.scoped(Scope::new("p1", "default"));
        assert_eq!(s.kv_url("t", "k").unwrap().query(), Some("partition=p1"));
        let s = c.scoped(Scope::new("default", "team"));
        assert_eq!(s.kv_url("t", "k").unwrap().query(), Some("ns=team"));
    }

    #[test]
    fn blocking_options_cap_wait() {
        let mut url = Url::parse("http://h/").unwrap();
        QueryOptions {
            consistency: Consistency::Stale,
            index: Some(7),
            wait: Some(Duration::from_secs(3600)),
            compress: None,
        }
        .append_to(&mut url);
        assert_eq!(url.query(), Some("stale&index=7&wait=600000ms"));
        let mut url = Url::parse("http://h/").unwrap();
        QueryOptions::blocking(0, Duration::from_secs(5)).append_to(&mut url);
        assert_eq!(url.query(), None, "index 0 never blocks");
    }

    #[test]
    fn debug_hides_the_token() {
        let c = Client::new(Settings {
            token: Some(Secret::new("tok-123")),
            ..Default::default()
        })
        .unwrap();
        assert!(!format!("{c:?}").contains("tok-123"));
    }
}
