//! `svc-handler validate FILE...`: checks base.json files offline.

use serde::Serialize;

use super::{display_path, read_input, Exit, EXIT_FAILED, EXIT_OK};
use crate::cli::ValidateArgs;
use crate::spec::{self, SpecError};

/// The verdict on one file, as `--output json` prints it.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct FileResult {
    pub file: String,
    pub valid: bool,
    /// Why not, when not valid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<FileError>,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
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
pub fn check(file: &str, bytes: &[u8]) -> FileResult {
    match spec::parse(bytes) {
        Ok(_) => FileResult {
            file: file.to_string(),
            valid: true,
            error: None,
        },
        Err(e) => FileResult {
            file: file.to_string(),
            valid: false,
            error: Some(spec_error(file, &e)),
        },
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
    let mut results = Vec::new();
    for path in &args.files {
        let file = display_path(path);
        let result = match read_input(path) {
            Ok(bytes) => check(&file, &bytes),
            Err(message) => FileResult {
                file,
                valid: false,
                error: Some(FileError {
                    message,
                    path: None,
                    line: None,
                    column: None,
                }),
            },
        };
        if !args.output.json() {
            match &result.error {
                None => println!("{}: valid", result.file),
                Some(e) => eprintln!("{}", e.message),
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
    fn errors_name_the_file_and_the_place() {
        let ok = check("web.json", br#"{"defaults": {"Protocol": "http"}}"#);
        assert!(ok.valid && ok.error.is_none());
        let bad = check("web.json", b"{\n  \"adopt\": true\n  \"defaults\": {}\n}");
        let e = bad.error.unwrap();
        assert_eq!(e.message, "web.json: line 3, column 3: expected ',' or '}'");
        assert_eq!((e.line, e.column), (Some(3), Some(3)));
        let bad = check("x.json", br#"{"defaults": {"Protocol": "udp"}}"#);
        let e = bad.error.unwrap();
        assert!(
            e.message
                .starts_with("x.json: $.defaults.Protocol: expected one of"),
            "{}",
            e.message
        );
        assert_eq!(e.path.as_deref(), Some("$.defaults.Protocol"));
    }
}
