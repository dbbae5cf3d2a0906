//! `svc-handler validate FILE...`: checks base.json files offline, reporting every
//! problem of each (for `--consul-version`, by default the newest Consul it knows).

use serde::Serialize;

use super::{display_path, read_input, Exit, EXIT_FAILED, EXIT_OK};
use crate::cli::ValidateArgs;
use crate::keys::{ServiceId, DEFAULT};
use crate::preflight::{self, Violation};
use crate::spec::{self, ParseOptions, SpecError};

/// The verdict on one file, as `--output json` prints it.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct FileResult {
    pub file: String,
    pub valid: bool,
    /// Why not, when not valid: the first of `errors` (kept for compatibility).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<FileError>,
    /// Every problem found, in order (empty when valid).
    pub errors: Vec<FileError>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FileError {
    /// The whole message, naming the file: `web.json: $.defaults.Protocol: ...`.
    pub message: String,
    /// The JSON path (`$` for the document; absent when the file could not be read).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
}

/// Checks one file's bytes (already read) named `file`.
pub fn check(file: &str, bytes: &[u8], options: &ParseOptions) -> FileResult {
    let mut errors: Vec<FileError> = spec::check_all(bytes, options)
        .iter()
        .map(|e| spec_error(file, e))
        .collect();
    if errors.is_empty() {
        if let Ok(spec) = spec::parse_with(bytes, options) {
            let id = service_of(file);
            errors.extend(
                preflight::check_offline(&spec, &id)
                    .iter()
                    .map(|v| preflight_error(file, v)),
            );
        }
    }
    FileResult {
        file: file.to_string(),
        valid: errors.is_empty(),
        error: errors.first().cloned(),
        errors,
    }
}

/// The service a file is for, as far as the offline rules care (a route to
/// the service itself): the file's name without `.json`, when it is a valid
/// service name.
fn service_of(file: &str) -> ServiceId {
    let stem = std::path::Path::new(file)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("service");
    ServiceId::new(DEFAULT, DEFAULT, stem)
        .or_else(|_| ServiceId::new(DEFAULT, DEFAULT, "service"))
        .expect("a valid name")
}

/// One of Consul's cross-entry rules the file breaks (preflight, offline).
fn preflight_error(file: &str, v: &Violation) -> FileError {
    FileError {
        message: format!("{file}: {v}"),
        path: Some(v.path.clone()),
        line: None,
        column: None,
    }
}

fn spec_error(file: &str, e: &SpecError) -> FileError {
    FileError {
        message: format!("{file}: {e}"),
        path: Some(e.path.clone()),
        line: e.line,
        column: e.column,
    }
}

pub fn run(args: &ValidateArgs) -> Exit {
    let options = ParseOptions {
        consul_version: args
            .consul_version
            .unwrap_or(ParseOptions::default().consul_version),
    };
    let mut results = Vec::new();
    for path in &args.files {
        let file = display_path(path);
        let result = match read_input(path) {
            Ok(bytes) => check(&file, &bytes, &options),
            Err(message) => {
                let error = FileError {
                    message,
                    path: None,
                    line: None,
                    column: None,
                };
                FileResult {
                    file,
                    valid: false,
                    error: Some(error.clone()),
                    errors: vec![error],
                }
            }
        };
        if !args.output.json() {
            if result.valid {
                crate::outln!("{}: valid", result.file);
            }
            for e in &result.errors {
                eprintln!("{}", e.message);
            }
        }
        results.push(result);
    }
    if args.output.json() {
        super::output::print_json(&results);
    }
    Ok(if results.iter().all(|r| r.valid) {
        EXIT_OK
    } else {
        EXIT_FAILED
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consul_cross_entry_rules_are_checked_offline() {
        let body = br#"{"defaults": {"Protocol": "tcp"}, "router": {"Routes": [{"Match": {"HTTP": {"PathPrefix": "/a"}}}]}}"#;
        let r = check("web.json", body, &ParseOptions::default());
        assert!(!r.valid);
        let m = &r.errors[0].message;
        assert!(m.starts_with("web.json: $.router"), "{m}");
        assert!(m.contains("does not permit advanced routing"), "{m}");
        let ok = br#"{"defaults": {"Protocol": "http"}, "router": {"Routes": [{"Match": {"HTTP": {"PathPrefix": "/a"}}}]}}"#;
        assert!(check("web.json", ok, &ParseOptions::default()).valid);
    }

    #[test]
    fn errors_name_the_file_and_the_place() {
        let o = ParseOptions::default();
        let ok = check("web.json", br#"{"defaults": {"Protocol": "http"}}"#, &o);
        assert!(ok.valid && ok.error.is_none());
        let bad = check(
            "web.json",
            b"{\n  \"adopt\": true\n  \"defaults\": {}\n}",
            &o,
        );
        let e = bad.error.unwrap();
        assert_eq!(e.message, "web.json: line 3, column 3: expected ',' or '}'");
        assert_eq!((e.line, e.column), (Some(3), Some(3)));
        let bad = check("x.json", br#"{"defaults": {"Protocol": "udp"}}"#, &o);
        let e = bad.error.unwrap();
        assert!(
            e.message
                .starts_with("x.json: $.defaults.Protocol: expected one of"),
            "{}",
            e.message
        );
        assert_eq!(e.path.as_deref(), Some("$.defaults.Protocol"));
    }

    #[test]
    fn every_error_is_reported_for_the_target_version() {
        let o = ParseOptions {
            consul_version: "1.8.7".parse().unwrap(),
        };
        let bytes = br#"{"defaults": {"protocol": "http", "Mode": "direct"}, "resolver": {"LoadBalancer": {}}}"#;
        let r = check("web.json", bytes, &o);
        assert!(!r.valid);
        let messages: Vec<&str> = r.errors.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(
            messages,
            [
                "web.json: $.defaults.Mode: needs Consul 1.10.0 or newer; the target is 1.8.7",
                "web.json: $.defaults.protocol: write \"Protocol\" (Consul stores it so)",
                "web.json: $.resolver.LoadBalancer: needs Consul 1.9.0 or newer; the target is 1.8.7",
            ]
        );
        assert_eq!(r.error.as_ref(), r.errors.first());
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["errors"].as_array().unwrap().len(), 3);
        assert_eq!(json["error"], json["errors"][0]);
        let newest = check("web.json", bytes, &ParseOptions::default());
        assert_eq!(newest.errors.len(), 1, "{:?}", newest.errors);
    }
}
