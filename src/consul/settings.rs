//! Connection settings for the Consul client, read from the same environment
//! variables as the `consul` CLI.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use super::ConsulError;

/// The default agent address, as the `consul` CLI uses it.
pub const DEFAULT_ADDR: &str = "127.0.0.1:8500";

/// A value that must never be printed: `Debug` and `Display` show `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// How to reach Consul. Build it with [`Settings::from_env`], then override
/// fields from flags.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `CONSUL_HTTP_ADDR`: `host:port`, or a URL with `http://` or `https://`.
    pub address: String,
    /// `CONSUL_HTTP_TOKEN`.
    pub token: Option<Secret>,
    /// `CONSUL_HTTP_TOKEN_FILE`: when set and not empty, its content wins over
    /// `token` (as in the `consul` CLI). Re-read by [`super::Client::reload_token`].
    pub token_file: Option<PathBuf>,
    /// `CONSUL_HTTP_SSL`: use https when the address has no scheme.
    pub ssl: bool,
    /// `CONSUL_HTTP_SSL_VERIFY`: verify the server certificate (default true).
    pub ssl_verify: bool,
    /// `CONSUL_CACERT`: a PEM file of CA certificates.
    pub ca_file: Option<PathBuf>,
    /// `CONSUL_CAPATH`: a folder of PEM CA certificates.
    pub ca_path: Option<PathBuf>,
    /// `CONSUL_CLIENT_CERT`: the client certificate (PEM).
    pub client_cert: Option<PathBuf>,
    /// `CONSUL_CLIENT_KEY`: the client certificate's key (PEM).
    pub client_key: Option<PathBuf>,
    /// `CONSUL_TLS_SERVER_NAME`: the name to verify the server certificate
    /// against (and to send as SNI) instead of the address's host.
    pub tls_server_name: Option<String>,
    /// `CONSUL_PARTITION` (Enterprise): default `default`.
    pub partition: String,
    /// `CONSUL_NAMESPACE` (Enterprise): default `default`.
    pub namespace: String,
    /// Deadline of a request that does not block.
    pub request_timeout: Duration,
    /// Deadline for establishing a connection.
    pub connect_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            address: DEFAULT_ADDR.to_string(),
            token: None,
            token_file: None,
            ssl: false,
            ssl_verify: true,
            ca_file: None,
            ca_path: None,
            client_cert: None,
            client_key: None,
            tls_server_name: None,
            partition: "default".to_string(),
            namespace: "default".to_string(),
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

impl Settings {
    /// Settings from the process environment.
    pub fn from_env() -> Result<Self, ConsulError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Settings from any variable lookup (tests pass a map). Empty values count
    /// as unset, as in the `consul` CLI.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConsulError> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let mut s = Settings::default();
        if let Some(v) = get("CONSUL_HTTP_ADDR") {
            s.address = v.trim().to_string();
        }
        s.token = get("CONSUL_HTTP_TOKEN").map(|t| Secret::new(t.trim()));
        s.token_file = get("CONSUL_HTTP_TOKEN_FILE").map(PathBuf::from);
        if let Some(v) = get("CONSUL_HTTP_SSL") {
            s.ssl = parse_bool("CONSUL_HTTP_SSL", &v)?;
        }
        if let Some(v) = get("CONSUL_HTTP_SSL_VERIFY") {
            s.ssl_verify = parse_bool("CONSUL_HTTP_SSL_VERIFY", &v)?;
        }
        s.ca_file = get("CONSUL_CACERT").map(PathBuf::from);
        s.ca_path = get("CONSUL_CAPATH").map(PathBuf::from);
        s.client_cert = get("CONSUL_CLIENT_CERT").map(PathBuf::from);
        s.client_key = get("CONSUL_CLIENT_KEY").map(PathBuf::from);
        s.tls_server_name = get("CONSUL_TLS_SERVER_NAME");
        if let Some(v) = get("CONSUL_PARTITION") {
            s.partition = v;
        }
        if let Some(v) = get("CONSUL_NAMESPACE") {
            s.namespace = v;
        }
        Ok(s)
    }

    /// The base URL: scheme from the address when it has one, else https when
    /// `ssl` is set, else http.
    pub fn base_url(&self) -> Result<reqwest::Url, ConsulError> {
        let addr = self.address.trim();
        if addr.is_empty() {
            return Err(ConsulError::Config("CONSUL_HTTP_ADDR is empty".into()));
        }
        if addr.starts_with("unix://") {
            return Err(ConsulError::Config(format!(
                "CONSUL_HTTP_ADDR {addr:?}: unix sockets are not supported; use host:port"
            )));
        }
        let with_scheme = if addr.starts_with("http://") || addr.starts_with("https://") {
            addr.to_string()
        } else if addr.contains("://") {
            return Err(ConsulError::Config(format!(
                "CONSUL_HTTP_ADDR {addr:?}: scheme must be http or https"
            )));
        } else if self.ssl {
            format!("https://{addr}")
        } else {
            format!("http://{addr}")
        };
        let url = reqwest::Url::parse(&with_scheme).map_err(|e| {
            ConsulError::Config(format!("CONSUL_HTTP_ADDR {addr:?} is not an address: {e}"))
        })?;
        if url.host_str().is_none() {
            return Err(ConsulError::Config(format!(
                "CONSUL_HTTP_ADDR {addr:?} has no host"
            )));
        }
        if url.path() != "/" || url.query().is_some() {
            return Err(ConsulError::Config(format!(
                "CONSUL_HTTP_ADDR {addr:?} must not have a path or query"
            )));
        }
        Ok(url)
    }
}

/// Go's `strconv.ParseBool`, which the `consul` CLI uses for its variables.
fn parse_bool(name: &str, v: &str) -> Result<bool, ConsulError> {
    match v.trim() {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        other => Err(ConsulError::Config(format!(
            "{name}={other:?} is not a boolean (use true or false)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn from(vars: &[(&str, &str)]) -> Result<Settings, ConsulError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_match_the_consul_cli() {
        let s = from(&[]).unwrap();
        assert_eq!(s.base_url().unwrap().as_str(), "http://127.0.0.1:8500/");
        assert!(s.ssl_verify);
        assert_eq!(s.partition, "default");
        assert_eq!(s.namespace, "default");
    }

    #[test]
    fn address_with_and_without_scheme() {
        let s = from(&[
            ("CONSUL_HTTP_ADDR", "consul.example:8501"),
            ("CONSUL_HTTP_SSL", "true"),
        ])
        .unwrap();
        assert_eq!(
            s.base_url().unwrap().as_str(),
            "https://consul.example:8501/"
        );
        let s = from(&[("CONSUL_HTTP_ADDR", "https://10.0.0.1:8501")]).unwrap();
        assert_eq!(s.base_url().unwrap().as_str(), "https://10.0.0.1:8501/");
        let s = from(&[
            ("CONSUL_HTTP_ADDR", "http://h:1/"),
            ("CONSUL_HTTP_SSL", "1"),
        ])
        .unwrap();
        assert_eq!(s.base_url().unwrap().scheme(), "http");
    }

    #[test]
    fn bad_addresses_name_the_variable() {
        for bad in [
            "unix:///tmp/consul.sock",
            "ftp://h:1",
            "http://h:1/v1",
            "http://",
        ] {
            let s = from(&[("CONSUL_HTTP_ADDR", bad)]).unwrap();
            let e = s.base_url().unwrap_err().to_string();
            assert!(e.contains("CONSUL_HTTP_ADDR"), "{bad}: {e}");
        }
    }

    #[test]
    fn booleans_follow_go() {
        assert!(
            !from(&[("CONSUL_HTTP_SSL_VERIFY", "false")])
                .unwrap()
                .ssl_verify
        );
        assert!(!from(&[("CONSUL_HTTP_SSL_VERIFY", "0")]).unwrap().ssl_verify);
        let e = from(&[("CONSUL_HTTP_SSL_VERIFY", "nope")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("CONSUL_HTTP_SSL_VERIFY"), "{e}");
    }

    #[test]
    fn token_never_printed() {
        let s = from(&[("CONSUL_HTTP_TOKEN", "s3cr3t-token")]).unwrap();
        assert_eq!(s.token.as_ref().unwrap().expose(), "s3cr3t-token");
        let dbg = format!("{s:?}");
        assert!(!dbg.contains("s3cr3t"), "{dbg}");
        assert!(dbg.contains("<redacted>"));
    }

    #[test]
    fn tls_and_scope_variables() {
        let s = from(&[
            ("CONSUL_CACERT", "/etc/ca.pem"),
            ("CONSUL_CAPATH", "/etc/cas"),
            ("CONSUL_CLIENT_CERT", "/etc/c.pem"),
            ("CONSUL_CLIENT_KEY", "/etc/k.pem"),
            ("CONSUL_TLS_SERVER_NAME", "server.dc1.consul"),
            ("CONSUL_PARTITION", "p1"),
            ("CONSUL_NAMESPACE", "team"),
            ("CONSUL_HTTP_TOKEN_FILE", "/etc/token"),
        ])
        .unwrap();
        assert_eq!(s.ca_file.unwrap().to_str(), Some("/etc/ca.pem"));
        assert_eq!(s.ca_path.unwrap().to_str(), Some("/etc/cas"));
        assert_eq!(s.client_cert.unwrap().to_str(), Some("/etc/c.pem"));
        assert_eq!(s.client_key.unwrap().to_str(), Some("/etc/k.pem"));
        assert_eq!(s.tls_server_name.as_deref(), Some("server.dc1.consul"));
        assert_eq!(s.partition, "p1");
        assert_eq!(s.namespace, "team");
        assert_eq!(s.token_file.unwrap().to_str(), Some("/etc/token"));
    }
}
