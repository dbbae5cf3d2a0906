//! base.json: parse and validate one service's desired state, and print it in a canonical
//! form. Every error names where it is: a JSON path (`$.resolver.Subsets.v1`) and, for
//! syntax errors, the line and column.

use crate::kind::Kind;
use std::cell::RefCell;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::fields::{self, Body, Field, Ty};
use crate::keys;

pub use crate::fields::Version;

/// The largest base.json accepted, in bytes.
pub const MAX_BASE_JSON_BYTES: usize = 512 * 1024;

/// The deepest nesting of arrays and objects accepted; the document's object is level 1.
pub const MAX_DEPTH: usize = 64;

/// The top-level keys of base.json, in the order they are printed.
pub const TOP_LEVEL_KEYS: [&str; 6] = [
    "defaults",
    "resolver",
    "splitter",
    "router",
    "terminating_gateway",
    "adopt",
];

/// The fields of `terminating_gateway`.
pub const TGW_FIELDS: [&str; 5] = ["Gateway", "CAFile", "CertFile", "KeyFile", "SNI"];

/// The protocols a ServiceDefaults accepts (Consul 1.8), as Consul stores them.
pub const PROTOCOLS: [&str; 4] = ["tcp", "http", "http2", "grpc"];

/// Why a base.json is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.render())]
pub struct SpecError {
    /// Where, as a JSON path: `$` for the whole document, `$.router.Routes[0]`, …
    pub path: String,
    /// What is wrong.
    pub message: String,
    /// 1-based line, for errors found while reading the text (syntax, duplicate keys,
    /// nesting, encoding).
    pub line: Option<usize>,
    /// 1-based column (in bytes), together with `line`.
    pub column: Option<usize>,
}

impl SpecError {
    fn at(path: &str, message: impl Into<String>) -> SpecError {
        SpecError {
            path: path.to_string(),
            message: message.into(),
            line: None,
            column: None,
        }
    }

    fn render(&self) -> String {
        match (self.line, self.column, self.path.as_str()) {
            (Some(l), Some(c), "$") => format!("line {l}, column {c}: {}", self.message),
            (Some(l), Some(c), path) => {
                format!("{path}: {} (line {l}, column {c})", self.message)
            }
            (_, _, path) => format!("{path}: {}", self.message),
        }
    }
}

/// The terminating-gateway link of one service: which gateway, and the TLS settings of
/// this service's entry in that gateway's `Services`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TgwLinkSpec {
    #[serde(rename = "Gateway")]
    pub gateway: String,
    #[serde(rename = "CAFile", default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    #[serde(rename = "CertFile", default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<String>,
    #[serde(rename = "KeyFile", default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
    #[serde(rename = "SNI", default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
}

/// One valid base.json. Absent, `null` and (for link fields) `""` all read as `None`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Spec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub defaults: Option<Map<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolver: Option<Map<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub splitter: Option<Map<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub router: Option<Map<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub terminating_gateway: Option<TgwLinkSpec>,
    #[serde(skip_serializing_if = "Adopt::is_no")]
    pub adopt: Adopt,
}

/// base.json's `adopt`: may svc-handler take over an entry that exists
/// without its ownership mark?
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Adopt {
    /// `false` or absent: never.
    #[default]
    No,
    /// `true`: yes, unless that would drop fields base.json does not set
    /// (then `conflict`, naming them).
    Keep,
    /// `"replace"`: yes, even dropping such fields.
    Replace,
}

impl Adopt {
    /// Any taking over at all.
    pub fn is_on(self) -> bool {
        self != Adopt::No
    }

    fn is_no(&self) -> bool {
        *self == Adopt::No
    }
}

impl Serialize for Adopt {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Adopt::No => s.serialize_bool(false),
            Adopt::Keep => s.serialize_bool(true),
            Adopt::Replace => s.serialize_str("replace"),
        }
    }
}

impl Spec {
    /// The body base.json gives for one of the service's own entries.
    pub fn body(&self, kind: Kind) -> Option<&Map<String, Value>> {
        match kind {
            Kind::ServiceDefaults => self.defaults.as_ref(),
            Kind::ServiceResolver => self.resolver.as_ref(),
            Kind::ServiceSplitter => self.splitter.as_ref(),
            Kind::ServiceRouter => self.router.as_ref(),
            Kind::TerminatingGateway => None,
        }
    }
}

/// How to check a base.json.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParseOptions {
    /// The Consul version the entries are for: newer fields are refused.
    pub consul_version: Version,
}

impl Default for ParseOptions {
    /// The newest Consul version the field table knows.
    fn default() -> ParseOptions {
        ParseOptions {
            consul_version: fields::NEWEST,
        }
    }
}

/// Parses and validates a base.json for the newest Consul version the field table knows.
pub fn parse(bytes: &[u8]) -> Result<Spec, SpecError> {
    parse_with(bytes, &ParseOptions::default())
}

/// Parses and validates a base.json; the error is the first problem found.
pub fn parse_with(bytes: &[u8], options: &ParseOptions) -> Result<Spec, SpecError> {
    let doc = read_document(bytes)?;
    let mut errors = Vec::new();
    check_document(&doc, options.consul_version, &mut errors);
    match errors.into_iter().next() {
        Some(first) => Err(first),
        None => Ok(build(&doc)),
    }
}

/// Every problem of a base.json (none: it is valid). A problem in the text itself (size,
/// encoding, syntax, duplicate keys, nesting) stops the reading: it is then the only one.
pub fn check_all(bytes: &[u8], options: &ParseOptions) -> Vec<SpecError> {
    match read_document(bytes) {
        Err(e) => vec![e],
        Ok(doc) => {
            let mut errors = Vec::new();
            check_document(&doc, options.consul_version, &mut errors);
            errors
        }
    }
}

/// The spec as compact JSON with a stable key order; parsing it gives the same spec back.
pub fn to_canonical_json(spec: &Spec) -> Vec<u8> {
    serde_json::to_vec(spec).expect("a Spec has only string keys and finite numbers")
}

// ---------------------------------------------------------------------------------------
// Reading the text: size, encoding, syntax, duplicate keys, depth.

fn read_document(bytes: &[u8]) -> Result<Value, SpecError> {
    if bytes.len() > MAX_BASE_JSON_BYTES {
        return Err(SpecError::at(
            "$",
            format!(
                "document is {} bytes, larger than the limit of {MAX_BASE_JSON_BYTES} bytes (512 KiB)",
                bytes.len()
            ),
        ));
    }
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let offset = e.valid_up_to();
            let (line, column) = line_column(&bytes[..offset]);
            return Err(SpecError {
                path: "$".into(),
                message: format!("not valid UTF-8 at byte offset {offset}"),
                line: Some(line),
                column: Some(column),
            });
        }
    };
    // Editors on some systems write a byte-order mark; it is not part of the JSON.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim_matches([' ', '\t', '\n', '\r']).is_empty() {
        return Err(SpecError::at("$", "empty document"));
    }

    let fault = RefCell::new(None);
    let mut de = serde_json::Deserializer::from_str(text);
    let root = PathNode {
        parent: None,
        seg: Seg::Root,
    };
    let seed = ValueSeed {
        path: &root,
        depth: 1,
        fault: &fault,
    };
    let result = seed.deserialize(&mut de).and_then(|v| de.end().map(|()| v));
    result.map_err(|e| {
        let (line, column) = (Some(e.line()), Some(e.column()));
        if let Some(Fault { path, message }) = fault.take() {
            return SpecError {
                path,
                message,
                line,
                column,
            };
        }
        let full = e.to_string();
        let suffix = format!(" at line {} column {}", e.line(), e.column());
        let message = full.strip_suffix(&suffix).unwrap_or(&full);
        let message = if message.starts_with("recursion limit exceeded") {
            format!("nesting deeper than {MAX_DEPTH} levels")
        } else {
            message.replace('`', "'")
        };
        SpecError {
            path: "$".into(),
            message,
            line,
            column,
        }
    })
}

/// 1-based line and column of the end of `before`.
fn line_column(before: &[u8]) -> (usize, usize) {
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let column = before.len()
        - before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |p| p + 1)
        + 1;
    (line, column)
}

/// A found problem, kept aside while serde unwinds with a plain message.
struct Fault {
    path: String,
    message: String,
}

#[derive(Clone, Copy)]
enum Seg<'a> {
    Root,
    Key(&'a str),
    Index(usize),
}

/// One step of the path from the document to the value being read.
struct PathNode<'a> {
    parent: Option<&'a PathNode<'a>>,
    seg: Seg<'a>,
}

impl PathNode<'_> {
    fn render(&self) -> String {
        let mut segs = Vec::new();
        let mut node = Some(self);
        while let Some(n) = node {
            segs.push(n.seg);
            node = n.parent;
        }
        let mut out = String::from("$");
        for seg in segs.iter().rev() {
            match seg {
                Seg::Root => {}
                Seg::Key(k) => push_key(&mut out, k),
                Seg::Index(i) => out.push_str(&format!("[{i}]")),
            }
        }
        out
    }
}

/// Appends `.key`, or `["key"]` when the key is not a plain name.
pub(crate) fn push_key(path: &mut String, key: &str) {
    let plain = key
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if plain {
        path.push('.');
        path.push_str(key);
    } else {
        let quoted = serde_json::to_string(key).unwrap_or_else(|_| format!("{key:?}"));
        path.push('[');
        path.push_str(&quoted);
        path.push(']');
    }
}

fn child_path(path: &str, key: &str) -> String {
    let mut p = path.to_string();
    push_key(&mut p, key);
    p
}

/// Reads any JSON value into a [`Value`], refusing duplicate keys and deep nesting.
struct ValueSeed<'p, 'f> {
    path: &'p PathNode<'p>,
    depth: usize,
    fault: &'f RefCell<Option<Fault>>,
}

impl ValueSeed<'_, '_> {
    fn fail<E: de::Error>(&self, message: String) -> E {
        *self.fault.borrow_mut() = Some(Fault {
            path: self.path.render(),
            message: message.clone(),
        });
        E::custom(message)
    }

    fn enter<E: de::Error>(&self) -> Result<(), E> {
        if self.depth > MAX_DEPTH {
            Err(self.fail(format!(
                "nesting deeper than {MAX_DEPTH} levels of arrays and objects"
            )))
        } else {
            Ok(())
        }
    }
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_, '_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_, '_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        self.enter()?;
        let mut out = Vec::new();
        loop {
            let node = PathNode {
                parent: Some(self.path),
                seg: Seg::Index(out.len()),
            };
            let seed = ValueSeed {
                path: &node,
                depth: self.depth + 1,
                fault: self.fault,
            };
            match seq.next_element_seed(seed)? {
                Some(v) => out.push(v),
                None => return Ok(Value::Array(out)),
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        self.enter()?;
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(self.fail(format!("duplicate key {}", keys::quote(&key))));
            }
            let node = PathNode {
                parent: Some(self.path),
                seg: Seg::Key(&key),
            };
            let seed = ValueSeed {
                path: &node,
                depth: self.depth + 1,
                fault: self.fault,
            };
            let value = map.next_value_seed(seed)?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

// ---------------------------------------------------------------------------------------
// Checking the document.

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn expected(path: &str, what: &str, found: &Value) -> SpecError {
    SpecError::at(path, format!("expected {what}, found {}", type_name(found)))
}

/// The key among `allowed` that `key` was probably meant to be.
fn did_you_mean(key: &str, allowed: &[&str]) -> String {
    let squash = |s: &str| s.replace(['_', '-'], "").to_ascii_lowercase();
    allowed
        .iter()
        .find(|a| squash(a) == squash(key))
        .map(|a| format!(" (did you mean \"{a}\"?)"))
        .unwrap_or_default()
}

/// Every problem of a document, in document order within each section.
fn check_document(doc: &Value, target: Version, errors: &mut Vec<SpecError>) {
    let Value::Object(top) = doc else {
        errors.push(expected("$", "a JSON object", doc));
        return;
    };
    let mut allowed = TOP_LEVEL_KEYS;
    allowed.sort_unstable();
    for unknown in top.keys().filter(|k| !TOP_LEVEL_KEYS.contains(&k.as_str())) {
        errors.push(SpecError::at(
            "$",
            format!(
                "unknown key {}{}; the allowed keys are {}",
                keys::quote(unknown),
                did_you_mean(unknown, &TOP_LEVEL_KEYS),
                allowed.join(", ")
            ),
        ));
    }
    for (key, body) in BODY_KEYS {
        check_body(top.get(key), &format!("$.{key}"), body, target, errors);
    }
    match top.get("terminating_gateway") {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            let path = "$.terminating_gateway";
            errors.extend(tgw_unknown_keys(map, path));
            if let Err(e) = tgw_link(map, path) {
                errors.push(e);
            }
        }
        Some(v) => errors.push(expected("$.terminating_gateway", "an object or null", v)),
    }
    match top.get("adopt") {
        None | Some(Value::Null) | Some(Value::Bool(_)) => {}
        Some(Value::String(r)) if r == "replace" => {}
        Some(v) => errors.push(expected("$.adopt", "true, false or \"replace\"", v)),
    }
}

/// The top-level keys that hold a config entry body, and which body.
const BODY_KEYS: [(&str, Body); 4] = [
    ("defaults", Body::ServiceDefaults),
    ("resolver", Body::ServiceResolver),
    ("splitter", Body::ServiceSplitter),
    ("router", Body::ServiceRouter),
];

/// The spec of a document [`check_document`] found no problem in.
fn build(doc: &Value) -> Spec {
    let top = doc.as_object();
    let get = |key: &str| top.and_then(|t| t.get(key));
    let body = |key: &str| get(key).and_then(Value::as_object).cloned();
    Spec {
        defaults: body("defaults"),
        resolver: body("resolver"),
        splitter: body("splitter"),
        router: body("router"),
        terminating_gateway: get("terminating_gateway")
            .and_then(Value::as_object)
            .and_then(|m| tgw_link(m, "$.terminating_gateway").ok()),
        adopt: match get("adopt") {
            Some(Value::Bool(true)) => Adopt::Keep,
            Some(Value::String(r)) if r == "replace" => Adopt::Replace,
            _ => Adopt::No,
        },
    }
}

/// Fields of an entry that svc-handler sets (after folding case and `_`).
const SET_BY_SVC_HANDLER: [&str; 5] = ["kind", "name", "partition", "namespace", "meta"];
/// Fields of an entry that Consul sets.
const SET_BY_CONSUL: [&str; 2] = ["createindex", "modifyindex"];

/// A config entry body: an object or null, without the fields others set, every field
/// known to the target Consul and spelled as Consul stores it.
fn check_body(
    v: Option<&Value>,
    path: &str,
    body: Body,
    target: Version,
    errors: &mut Vec<SpecError>,
) {
    let map = match v {
        None | Some(Value::Null) => return,
        Some(Value::Object(m)) => m,
        Some(other) => return errors.push(expected(path, "an object or null", other)),
    };
    for (key, value) in map {
        let folded = fields::fold(key);
        let at = child_path(path, key);
        if SET_BY_SVC_HANDLER.contains(&folded.as_str()) {
            errors.push(SpecError::at(
                &at,
                format!(
                    "{} is set by svc-handler (from the key path and its ownership mark); remove it",
                    keys::quote(key)
                ),
            ));
        } else if SET_BY_CONSUL.contains(&folded.as_str()) {
            errors.push(SpecError::at(
                &at,
                format!("{} is set by Consul; remove it", keys::quote(key)),
            ));
        } else {
            check_key(body.fields(), key, value, &at, target, errors);
        }
    }
}

/// One key of a struct: a field of the table, spelled exactly, known to `target`.
fn check_key(
    fields: &[Field],
    key: &str,
    value: &Value,
    at: &str,
    target: Version,
    errors: &mut Vec<SpecError>,
) {
    let Some(field) = fields::lookup(fields, key) else {
        return errors.push(misnamed(fields, key, at, target));
    };
    if field.since > target {
        return errors.push(SpecError::at(at, too_new(field, target)));
    }
    if !value.is_null() {
        check_value(&field.ty, value, at, target, errors);
    }
}

fn too_new(field: &Field, target: Version) -> String {
    format!(
        "needs Consul {} or newer; the target is {target}",
        field.since
    )
}

/// Why `key` is not a field here: another spelling of one, or unknown.
fn misnamed(fields: &[Field], key: &str, at: &str, target: Version) -> SpecError {
    if let Some(field) = fields::respelled(fields, key) {
        let newer = if field.since > target {
            format!("; it {}", too_new(field, target))
        } else {
            String::new()
        };
        return SpecError::at(
            at,
            format!(
                "write {} (Consul stores it so){newer}",
                keys::quote(field.name)
            ),
        );
    }
    let hint = fields::did_you_mean(fields, key)
        .map(|f| format!(" (did you mean {}?)", keys::quote(f.name)))
        .unwrap_or_default();
    let known: Vec<&str> = fields
        .iter()
        .filter(|f| f.since <= target)
        .map(|f| f.name)
        .collect();
    SpecError::at(
        at,
        format!(
            "unknown field {}{hint}; the fields here are {}",
            keys::quote(key),
            known.join(", ")
        ),
    )
}

/// A value against its type in the table.
fn check_value(ty: &Ty, value: &Value, at: &str, target: Version, errors: &mut Vec<SpecError>) {
    let wrong = |what: &str| expected(at, what, value);
    let problem = match (ty, value) {
        (Ty::Str, Value::String(_))
        | (Ty::Bool, Value::Bool(_))
        | (Ty::Num, Value::Number(_))
        | (Ty::Any, _) => None,
        (Ty::Str, _) => Some(wrong("a string")),
        (Ty::Bool, _) => Some(wrong("true or false")),
        (Ty::Num, _) => Some(wrong("a number")),
        (Ty::Int, Value::Number(n)) if n.as_f64().is_some_and(|f| f.fract() == 0.0) => None,
        (Ty::Int, _) => Some(wrong("a whole number")),
        (Ty::Duration, _) => check_duration(value, at).err(),
        (Ty::Protocol, _) => check_protocol(value, at).err(),
        (Ty::Method, _) => check_method(value, at).err(),
        (Ty::List(item), Value::Array(items)) => {
            for (i, v) in items.iter().enumerate() {
                check_value(item, v, &format!("{at}[{i}]"), target, errors);
            }
            None
        }
        (Ty::List(_), _) => Some(wrong("an array")),
        (Ty::Struct(fields), Value::Object(map)) => {
            for (key, v) in map {
                check_key(fields, key, v, &child_path(at, key), target, errors);
            }
            None
        }
        (Ty::FreeMap(item), Value::Object(map)) => {
            for (key, v) in map {
                check_value(item, v, &child_path(at, key), target, errors);
            }
            None
        }
        (Ty::Struct(_) | Ty::FreeMap(_), _) => Some(wrong("an object")),
    };
    errors.extend(problem);
}

fn check_protocol(v: &Value, at: &str) -> Result<(), SpecError> {
    let Value::String(p) = v else {
        return Err(expected(at, "a string", v));
    };
    if p.is_empty() || PROTOCOLS.contains(&p.as_str()) {
        return Ok(());
    }
    let lower = p.to_ascii_lowercase();
    let hint = if PROTOCOLS.contains(&lower.as_str()) {
        format!(" (Consul stores it in lower case: write \"{lower}\")")
    } else {
        String::new()
    };
    Err(SpecError::at(
        at,
        format!(
            "expected one of {}, found {}{hint}",
            PROTOCOLS.join(", "),
            keys::quote(p)
        ),
    ))
}

fn check_duration(v: &Value, at: &str) -> Result<(), SpecError> {
    match v {
        Value::String(s) if parse_go_duration(s).is_some() => Ok(()),
        Value::String(s) => Err(SpecError::at(
            at,
            format!(
                "expected a duration such as \"5s\", \"500ms\" or \"1m30s\", found {}",
                keys::quote(s)
            ),
        )),
        other => Err(expected(at, "a duration string such as \"5s\"", other)),
    }
}

fn check_method(v: &Value, at: &str) -> Result<(), SpecError> {
    match v {
        Value::String(s) if *s == s.to_ascii_uppercase() => Ok(()),
        Value::String(s) => Err(SpecError::at(
            at,
            format!(
                "HTTP methods are upper case as Consul stores them: write \"{}\" instead of {}",
                s.to_ascii_uppercase(),
                keys::quote(s)
            ),
        )),
        other => Err(expected(at, "a string", other)),
    }
}

/// An error for each key of a terminating-gateway link that is not one of [`TGW_FIELDS`].
fn tgw_unknown_keys(map: &Map<String, Value>, path: &str) -> Vec<SpecError> {
    map.keys()
        .filter(|k| !TGW_FIELDS.contains(&k.as_str()))
        .map(|unknown| {
            SpecError::at(
                path,
                format!(
                    "unknown key {}{}; the allowed keys are {}",
                    keys::quote(unknown),
                    did_you_mean(unknown, &TGW_FIELDS),
                    TGW_FIELDS.join(", ")
                ),
            )
        })
        .collect()
}

/// The link, from its known keys.
fn tgw_link(map: &Map<String, Value>, path: &str) -> Result<TgwLinkSpec, SpecError> {
    let optional = |key: &str| -> Result<Option<String>, SpecError> {
        match map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(expected(&child_path(path, key), "a string", other)),
        }
    };
    let gateway = match map.get("Gateway") {
        None | Some(Value::Null) => {
            return Err(SpecError::at(
                path,
                "missing \"Gateway\", the name of the terminating-gateway config entry",
            ))
        }
        Some(Value::String(g)) => g,
        Some(other) => return Err(expected(&child_path(path, "Gateway"), "a string", other)),
    };
    keys::validate_name("gateway name", gateway)
        .map_err(|e| SpecError::at(&child_path(path, "Gateway"), e.to_string()))?;
    Ok(TgwLinkSpec {
        gateway: gateway.clone(),
        ca_file: optional("CAFile")?,
        cert_file: optional("CertFile")?,
        key_file: optional("KeyFile")?,
        sni: optional("SNI")?,
    })
}

// ---------------------------------------------------------------------------------------
// Go durations.

/// Parses a Go duration (`time.ParseDuration`): `"5s"`, `"500ms"`, `"1m30s"`, `"1.5h"`,
/// `"0"`; units ns, us, µs, ms, s, m, h. Returns nanoseconds. Negative durations and
/// durations that do not fit Go's int64 nanoseconds give `None`.
pub fn parse_go_duration(s: &str) -> Option<u128> {
    const MAX_FRACTION_DIGITS: usize = 20;
    let (negative, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Some(0);
    }
    if rest.is_empty() {
        return None;
    }
    let digits = |r: &str| r.bytes().take_while(u8::is_ascii_digit).count();
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let (int_part, r) = rest.split_at(digits(rest));
        let (frac_part, r) = match r.strip_prefix('.') {
            Some(r) => r.split_at(digits(r)),
            None => ("", r),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return None;
        }
        let unit_len = r
            .find(|c: char| c == '.' || c.is_ascii_digit())
            .unwrap_or(r.len());
        let (unit, r) = r.split_at(unit_len);
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        let int: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().ok()?
        };
        let mut value = int.checked_mul(scale)?;
        if !frac_part.is_empty() {
            let kept = &frac_part[..frac_part.len().min(MAX_FRACTION_DIGITS)];
            let fraction: u128 = kept.parse().ok()?;
            let denominator = 10u128.pow(u32::try_from(kept.len()).ok()?);
            value = value.checked_add(fraction * scale / denominator)?;
        }
        total = total.checked_add(value)?;
        if total > i64::MAX as u128 {
            return None;
        }
        rest = r;
    }
    if negative && total != 0 {
        return None;
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(text: &str) -> SpecError {
        parse(text.as_bytes()).expect_err(text)
    }

    fn ok(text: &str) -> Spec {
        parse(text.as_bytes()).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    const CONTRACT_EXAMPLE: &str = r#"{
  "defaults": { "Protocol": "http" },
  "resolver": { "ConnectTimeout": "5s", "DefaultSubset": "v1",
                "Subsets": { "v1": { "Filter": "Service.Meta.version == v1" } } },
  "splitter": { "Splits": [ { "Weight": 90, "ServiceSubset": "v1" },
                            { "Weight": 10, "ServiceSubset": "v2" } ] },
  "router":   { "Routes": [ { "Match": { "HTTP": { "PathPrefix": "/admin" } },
                              "Destination": { "Service": "admin" } } ] },
  "terminating_gateway": { "Gateway": "egress", "SNI": "api.example.com" },
  "adopt": false
}"#;

    #[test]
    fn contract_example_parses() {
        let spec = ok(CONTRACT_EXAMPLE);
        assert_eq!(spec.defaults.unwrap()["Protocol"], "http");
        let resolver = spec.resolver.unwrap();
        assert_eq!(resolver["ConnectTimeout"], "5s");
        assert_eq!(
            resolver["Subsets"]["v1"]["Filter"],
            "Service.Meta.version == v1"
        );
        assert_eq!(spec.splitter.unwrap()["Splits"][1]["Weight"], 10);
        assert_eq!(
            spec.router.unwrap()["Routes"][0]["Destination"]["Service"],
            "admin"
        );
        assert_eq!(
            spec.terminating_gateway,
            Some(TgwLinkSpec {
                gateway: "egress".into(),
                ca_file: None,
                cert_file: None,
                key_file: None,
                sni: Some("api.example.com".into()),
            })
        );
        assert_eq!(spec.adopt, Adopt::No);
    }

    #[test]
    fn empty_object_and_nulls() {
        let empty = Spec {
            defaults: None,
            resolver: None,
            splitter: None,
            router: None,
            terminating_gateway: None,
            adopt: Adopt::No,
        };
        assert_eq!(ok("{}"), empty);
        assert_eq!(
            ok(
                r#"{"defaults":null,"resolver":null,"splitter":null,"router":null,"terminating_gateway":null,"adopt":null}"#
            ),
            empty
        );
        assert_eq!(ok(r#"{"adopt":true}"#).adopt, Adopt::Keep);
        assert_eq!(ok(r#"{"adopt":"replace"}"#).adopt, Adopt::Replace);
        assert_eq!(ok(r#"{"adopt":false}"#).adopt, Adopt::No);
        assert_eq!(ok(r#"{"defaults":{}}"#).defaults, Some(Map::new()));
    }

    #[test]
    fn byte_order_mark_is_skipped() {
        let mut bytes = "\u{feff}".as_bytes().to_vec();
        bytes.extend_from_slice(br#"{"adopt":true}"#);
        assert_eq!(parse(&bytes).unwrap().adopt, Adopt::Keep);
    }

    #[test]
    fn not_an_object() {
        for (text, found) in [
            ("[]", "an array"),
            ("\"x\"", "a string"),
            ("1", "a number"),
            ("null", "null"),
            ("true", "a boolean"),
        ] {
            let e = err(text);
            assert_eq!(e.path, "$");
            assert_eq!(
                e.to_string(),
                format!("$: expected a JSON object, found {found}")
            );
        }
    }

    #[test]
    fn wrong_types_name_the_path() {
        let e = err(r#"{"resolver":"x"}"#);
        assert_eq!(
            e.to_string(),
            "$.resolver: expected an object or null, found a string"
        );
        let e = err(r#"{"adopt":"yes"}"#);
        assert_eq!(
            e.to_string(),
            "$.adopt: expected true, false or \"replace\", found a string"
        );
        let e = err(r#"{"terminating_gateway":[]}"#);
        assert_eq!(e.path, "$.terminating_gateway");
        let e = err(r#"{"resolver":{"Subsets":{"v1":"x"}}}"#);
        assert_eq!(
            e.to_string(),
            "$.resolver.Subsets.v1: expected an object, found a string"
        );
        let e = err(r#"{"resolver":{"Subsets":[]}}"#);
        assert_eq!(e.path, "$.resolver.Subsets");
        let e = err(r#"{"resolver":{"Failover":{"*":1}}}"#);
        assert_eq!(e.path, "$.resolver.Failover[\"*\"]");
        let e = err(r#"{"resolver":{"Redirect":"x"}}"#);
        assert_eq!(e.path, "$.resolver.Redirect");
        let e = err(r#"{"router":{"Routes":[{},3]}}"#);
        assert_eq!(
            e.to_string(),
            "$.router.Routes[1]: expected an object, found a number"
        );
        let e = err(r#"{"router":{"Routes":{}}}"#);
        assert_eq!(
            e.to_string(),
            "$.router.Routes: expected an array, found an object"
        );
        let e = err(r#"{"defaults":{"Protocol":1}}"#);
        assert_eq!(e.path, "$.defaults.Protocol");
    }

    #[test]
    fn protocol_checked() {
        for p in PROTOCOLS {
            ok(&format!(r#"{{"defaults":{{"Protocol":"{p}"}}}}"#));
        }
        ok(r#"{"defaults":{"Protocol":""}}"#);
        let e = err(r#"{"defaults":{"Protocol":"udp"}}"#);
        assert_eq!(
            e.to_string(),
            "$.defaults.Protocol: expected one of tcp, http, http2, grpc, found \"udp\""
        );
        let e = err(r#"{"defaults":{"Protocol":"HTTP"}}"#);
        assert!(e.message.contains("write \"http\""), "{e}");
    }

    #[test]
    fn durations_checked() {
        for d in ["5s", "500ms", "1m30s", "0", "0s", "1.5s"] {
            ok(&format!(r#"{{"resolver":{{"ConnectTimeout":"{d}"}}}}"#));
        }
        for d in ["5", "", "five", "-1s", "5 s"] {
            let e = err(&format!(r#"{{"resolver":{{"ConnectTimeout":"{d}"}}}}"#));
            assert_eq!(e.path, "$.resolver.ConnectTimeout", "{d}");
            assert!(e.message.contains("expected a duration"), "{e}");
        }
        let e = err(r#"{"resolver":{"ConnectTimeout":5000}}"#);
        assert!(e.to_string().contains("found a number"), "{e}");
        let e = err(r#"{"router":{"Routes":[{"Destination":{"RequestTimeout":"x"}}]}}"#);
        assert_eq!(e.path, "$.router.Routes[0].Destination.RequestTimeout");
    }

    #[test]
    fn methods_upper_case() {
        ok(r#"{"router":{"Routes":[{"Match":{"HTTP":{"Methods":["GET","POST"]}}}]}}"#);
        let e = err(r#"{"router":{"Routes":[{"Match":{"HTTP":{"Methods":["GET","post"]}}}]}}"#);
        assert_eq!(e.path, "$.router.Routes[0].Match.HTTP.Methods[1]");
        assert!(e.message.contains("\"POST\""), "{e}");
    }

    #[test]
    fn forbidden_fields() {
        for body in ["defaults", "resolver", "splitter", "router"] {
            for key in [
                "Kind",
                "Name",
                "Partition",
                "Namespace",
                "Meta",
                "kind",
                "name",
                "meta",
                "partition",
                "namespace",
                "NAME",
            ] {
                let e = err(&format!(r#"{{"{body}":{{"{key}":"x"}}}}"#));
                assert_eq!(e.path, format!("$.{body}.{key}"));
                assert!(e.message.contains("set by svc-handler"), "{e}");
            }
            for key in ["CreateIndex", "ModifyIndex", "create_index", "modify_index"] {
                let e = err(&format!(r#"{{"{body}":{{"{key}":1}}}}"#));
                assert_eq!(e.path, format!("$.{body}.{key}"));
                assert!(e.message.contains("set by Consul"), "{e}");
            }
        }
        // Only at the body's top level: a route destination names its own namespace.
        ok(r#"{"router":{"Routes":[{"Destination":{"Service":"a","Namespace":"x"}}]}}"#);
        ok(r#"{"resolver":{"Redirect":{"Service":"a","Namespace":"x"}}}"#);
    }

    #[test]
    fn snake_case_fields_refused_with_the_camel_name() {
        let e = err(r#"{"resolver":{"connect_timeout":"5s"}}"#);
        assert_eq!(e.path, "$.resolver.connect_timeout");
        assert!(e.message.contains("\"ConnectTimeout\""), "{e}");
        let e = err(r#"{"defaults":{"protocol":"http"}}"#);
        assert!(e.message.contains("\"Protocol\""), "{e}");
    }

    fn err_at(text: &str, version: &str) -> SpecError {
        let options = ParseOptions {
            consul_version: version.parse().unwrap(),
        };
        parse_with(text.as_bytes(), &options).expect_err(text)
    }

    #[test]
    fn spellings_are_refused_at_every_depth() {
        let cases = [
            (
                r#"{"defaults":{"mesh_gateway":{}}}"#,
                "$.defaults.mesh_gateway",
                "MeshGateway",
            ),
            (
                r#"{"defaults":{"MeshGateway":{"mode":"local"}}}"#,
                "$.defaults.MeshGateway.mode",
                "Mode",
            ),
            (
                r#"{"router":{"Routes":[{"Match":{"HTTP":{"path_prefix":"/"}}}]}}"#,
                "$.router.Routes[0].Match.HTTP.path_prefix",
                "PathPrefix",
            ),
            (
                r#"{"router":{"Routes":[{"Match":{"HTTP":{"pathPrefix":"/"}}}]}}"#,
                "$.router.Routes[0].Match.HTTP.pathPrefix",
                "PathPrefix",
            ),
            (
                r#"{"router":{"Routes":[{"match":{}}]}}"#,
                "$.router.Routes[0].match",
                "Match",
            ),
            (
                r#"{"resolver":{"Redirect":{"service_subset":"v1"}}}"#,
                "$.resolver.Redirect.service_subset",
                "ServiceSubset",
            ),
            (
                r#"{"defaults":{"EXTERNALSNI":"x"}}"#,
                "$.defaults.EXTERNALSNI",
                "ExternalSNI",
            ),
        ];
        for (text, path, name) in cases {
            let e = err(text);
            assert_eq!(e.path, path, "{text}");
            assert_eq!(
                e.message,
                format!("write \"{name}\" (Consul stores it so)"),
                "{text}"
            );
        }
        let e = err(r#"{"defaults":{"MeshGateway":{"mode":"local"}}}"#);
        assert_eq!(
            e.to_string(),
            "$.defaults.MeshGateway.mode: write \"Mode\" (Consul stores it so)"
        );
    }

    #[test]
    fn free_map_keys_are_data_but_their_values_are_checked() {
        ok(r#"{"resolver":{"Subsets":{"v1":{"Filter":"x"},"filter":{},"Only_Passing":{}}}}"#);
        ok(r#"{"resolver":{"Failover":{"*":{"Datacenters":["dc2"]}}}}"#);
        ok(
            r#"{"router":{"Routes":[{"Destination":{"RequestHeaders":{"Add":{"x-any_Case":"1"}}}}]}}"#,
        );
        let e = err(r#"{"resolver":{"Subsets":{"v1":{"filter":"x"}}}}"#);
        assert_eq!(e.path, "$.resolver.Subsets.v1.filter");
        assert!(e.message.contains("write \"Filter\""), "{e}");
        let e = err(r#"{"resolver":{"Subsets":{"v1":{"Filtr":"x"}}}}"#);
        assert!(e.message.contains("did you mean \"Filter\"?"), "{e}");
        let e =
            err(r#"{"router":{"Routes":[{"Destination":{"RequestHeaders":{"Add":{"x":1}}}}]}}"#);
        assert_eq!(
            e.to_string(),
            "$.router.Routes[0].Destination.RequestHeaders.Add.x: expected a string, found a number"
        );
    }

    #[test]
    fn unknown_fields_with_a_did_you_mean() {
        let e = err(r#"{"defaults":{"Protocl":"http"}}"#);
        assert_eq!(e.path, "$.defaults.Protocl");
        assert!(
            e.message
                .starts_with("unknown field \"Protocl\" (did you mean \"Protocol\"?); the fields here are Protocol,"),
            "{e}"
        );
        let e = err(r#"{"defaults":{"Bogus":1}}"#);
        assert!(e.message.starts_with("unknown field \"Bogus\"; "), "{e}");
        let e = err(r#"{"router":{"Routes":[{"Destination":{"Servce":"a"}}]}}"#);
        assert_eq!(e.path, "$.router.Routes[0].Destination.Servce");
        assert!(e.message.contains("did you mean \"Service\"?"), "{e}");
    }

    #[test]
    fn fields_newer_than_the_target_are_refused() {
        let e = err_at(
            r#"{"resolver":{"LoadBalancer":{"Policy":"random"}}}"#,
            "1.8.7",
        );
        assert_eq!(
            e.to_string(),
            "$.resolver.LoadBalancer: needs Consul 1.9.0 or newer; the target is 1.8.7"
        );
        assert!(parse_with(
            br#"{"resolver":{"LoadBalancer":{"Policy":"random"}}}"#,
            &ParseOptions {
                consul_version: "v1.9.0".parse().unwrap()
            }
        )
        .is_ok());
        let e = err_at(r#"{"defaults":{"Mode":"transparent"}}"#, "1.9.17");
        assert!(e.message.contains("needs Consul 1.10.0"), "{e}");
        let e = err_at(
            r#"{"resolver":{"Failover":{"*":{"Targets":[{"Peer":"p"}]}}}}"#,
            "1.13.9",
        );
        assert_eq!(e.path, "$.resolver.Failover[\"*\"].Targets");
        let e = err_at(
            r#"{"router":{"Routes":[{"Destination":{"RetryOn":["reset"]}}]}}"#,
            "1.12.0",
        );
        assert_eq!(e.path, "$.router.Routes[0].Destination.RetryOn");
        let e = err_at(r#"{"resolver":{"load_balancer":{}}}"#, "1.8.7");
        assert!(e.message.contains("write \"LoadBalancer\""), "{e}");
        assert!(e.message.contains("needs Consul 1.9.0 or newer"), "{e}");
        // The default target is the newest the table knows.
        ok(r#"{"defaults":{"MutualTLSMode":"strict","Destination":{"Addresses":["a"],"Port":1}}}"#);
        // The fields an unknown-field message lists are those of the target.
        let e = err_at(r#"{"defaults":{"X":1}}"#, "1.8.7");
        assert!(
            e.message
                .ends_with("Protocol, MeshGateway, Expose, ExternalSNI"),
            "{e}"
        );
    }

    #[test]
    fn types_are_checked() {
        for (text, path, found) in [
            (
                r#"{"defaults":{"MeshGateway":"local"}}"#,
                "$.defaults.MeshGateway",
                "expected an object, found a string",
            ),
            (
                r#"{"defaults":{"Expose":{"Checks":"yes"}}}"#,
                "$.defaults.Expose.Checks",
                "expected true or false, found a string",
            ),
            (
                r#"{"defaults":{"Expose":{"Paths":[{"ListenerPort":1.5}]}}}"#,
                "$.defaults.Expose.Paths[0].ListenerPort",
                "expected a whole number, found a number",
            ),
            (
                r#"{"resolver":{"Failover":{"*":{"Datacenters":"dc2"}}}}"#,
                "$.resolver.Failover[\"*\"].Datacenters",
                "expected an array, found a string",
            ),
            (
                r#"{"resolver":{"Failover":{"*":{"Datacenters":[null]}}}}"#,
                "$.resolver.Failover[\"*\"].Datacenters[0]",
                "expected a string, found null",
            ),
            (
                r#"{"resolver":{"LoadBalancer":{"HashPolicies":[{"CookieConfig":{"TTL":"x"}}]}}}"#,
                "$.resolver.LoadBalancer.HashPolicies[0].CookieConfig.TTL",
                "expected a duration",
            ),
        ] {
            let e = err(text);
            assert_eq!(e.path, path, "{text}");
            assert!(e.message.starts_with(found), "{text}: {e}");
        }
        ok(r#"{"defaults":{"MeshGateway":null,"Expose":{"Paths":[{"ListenerPort":21500.0}]}}}"#);
    }

    #[test]
    fn check_all_reports_every_error() {
        let text = r#"{
            "defaults": {"Protocl": "http", "MeshGateway": {"mode": "local"}, "Kind": "x"},
            "resolver": {"ConnectTimeout": 5, "LoadBalancer": {}},
            "router": {"Routes": [{"Match": {"HTTP": {"Methods": ["get"]}}}, 3]},
            "terminating_gateway": {"Gatway": "g"},
            "adopt": "yes",
            "extra": 1
        }"#;
        let options = ParseOptions {
            consul_version: "1.8.7".parse().unwrap(),
        };
        let errors = check_all(text.as_bytes(), &options);
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "$",
                "$.defaults.Kind",
                "$.defaults.MeshGateway.mode",
                "$.defaults.Protocl",
                "$.resolver.ConnectTimeout",
                "$.resolver.LoadBalancer",
                "$.router.Routes[0].Match.HTTP.Methods[0]",
                "$.router.Routes[1]",
                "$.terminating_gateway",
                "$.terminating_gateway",
                "$.adopt",
            ],
            "{errors:#?}"
        );
        // parse_with reports the first of them.
        assert_eq!(
            parse_with(text.as_bytes(), &options).unwrap_err(),
            errors[0]
        );
        assert!(check_all(br#"{"defaults":{}}"#, &options).is_empty());
        // A syntax error stops the reading.
        assert_eq!(check_all(b"{\"adopt\": tru}", &options).len(), 1);
    }

    #[test]
    fn unknown_top_level_key() {
        let e = err(r#"{"defaults":{},"default":{}}"#);
        assert_eq!(e.path, "$");
        assert!(e.message.contains("unknown key \"default\""), "{e}");
        assert!(
            e.message
                .contains("adopt, defaults, resolver, router, splitter, terminating_gateway"),
            "{e}"
        );
        let e = err(r#"{"Defaults":{}}"#);
        assert!(e.message.contains("did you mean \"defaults\""), "{e}");
        let e = err(r#"{"terminatingGateway":{}}"#);
        assert!(
            e.message.contains("did you mean \"terminating_gateway\""),
            "{e}"
        );
    }

    #[test]
    fn tgw_link_rules() {
        let link = ok(r#"{"terminating_gateway":{"Gateway":"egress","CAFile":"/ca.pem","CertFile":"/c.pem","KeyFile":"/k.pem","SNI":""}}"#)
            .terminating_gateway
            .unwrap();
        assert_eq!(link.ca_file.as_deref(), Some("/ca.pem"));
        assert_eq!(link.cert_file.as_deref(), Some("/c.pem"));
        assert_eq!(link.key_file.as_deref(), Some("/k.pem"));
        assert_eq!(link.sni, None);
        let e = err(r#"{"terminating_gateway":{"SNI":"x"}}"#);
        assert_eq!(e.path, "$.terminating_gateway");
        assert!(e.message.contains("missing \"Gateway\""), "{e}");
        let e = err(r#"{"terminating_gateway":{"Gateway":"bad name"}}"#);
        assert_eq!(e.path, "$.terminating_gateway.Gateway");
        assert!(
            e.message.starts_with("invalid gateway name \"bad name\""),
            "{e}"
        );
        let e = err(r#"{"terminating_gateway":{"Gateway":"g","Sni":"x"}}"#);
        assert!(
            e.message
                .contains("unknown key \"Sni\" (did you mean \"SNI\"?)"),
            "{e}"
        );
        assert!(
            e.message
                .contains("Gateway, CAFile, CertFile, KeyFile, SNI"),
            "{e}"
        );
        let e = err(r#"{"terminating_gateway":{"Gateway":"g","SNI":5}}"#);
        assert_eq!(
            e.to_string(),
            "$.terminating_gateway.SNI: expected a string, found a number"
        );
        let e = err(r#"{"terminating_gateway":{"Gateway":7}}"#);
        assert_eq!(e.path, "$.terminating_gateway.Gateway");
    }

    #[test]
    fn duplicate_keys_anywhere() {
        let e = err(r#"{"adopt":true,"adopt":false}"#);
        assert_eq!(e.path, "$");
        assert!(e.message.contains("duplicate key \"adopt\""), "{e}");
        assert!(e.line.is_some());
        let text = "{\"resolver\": {\"Subsets\": {\n  \"v1\": {\"Filter\": \"a\"},\n  \"v1\": {\"Filter\": \"b\"}}}}";
        let e = err(text);
        assert_eq!(e.path, "$.resolver.Subsets");
        assert_eq!(e.line, Some(3));
        assert_eq!(
            e.to_string(),
            format!(
                "$.resolver.Subsets: duplicate key \"v1\" (line 3, column {})",
                e.column.unwrap()
            )
        );
        let e = err(
            r#"{"router":{"Routes":[{"Match":{"HTTP":{"PathPrefix":"/a","PathPrefix":"/b"}}}]}}"#,
        );
        assert_eq!(e.path, "$.router.Routes[0].Match.HTTP");
        assert!(e.message.contains("\"PathPrefix\""));
        let e = err(r#"{"defaults":{"Odd key":{"x":1,"x":2}}}"#);
        assert_eq!(e.path, "$.defaults[\"Odd key\"]");
    }

    #[test]
    fn syntax_errors_have_line_and_column() {
        let cases = [
            "{\n  \"adopt\": true\n  \"defaults\": {}\n}",
            "{\"adopt\": tru}",
            "{\"adopt\": true,}",
            "{\"adopt\": true",
            "{\"adopt\": true} x",
            "{\"adopt\": true}{}",
            "{'adopt': true}",
            "{\"a\": \"\u{1}\"}",
            "{\"a\": \"\\ud800\"}",
            "{\"a\": 1e999}",
            "{\"a\" 1}",
            "{\"a\": [1,]}",
            "{\"a\": 01}",
            "{\"a\": \"\\x\"}",
            "{\"a\": \"unterminated}",
        ];
        for text in cases {
            let e = err(text);
            assert!(e.line.is_some() && e.column.is_some(), "{text}: {e:?}");
            assert_eq!(e.path, "$", "{text}");
            let shown = e.to_string();
            assert!(shown.starts_with("line "), "{shown}");
            assert!(!shown.contains(" at line "), "{shown}");
        }
        let e = err(cases[0]);
        assert_eq!((e.line, e.column), (Some(3), Some(3)));
        assert_eq!(e.to_string(), "line 3, column 3: expected ',' or '}'");
        let e = err(cases[4]);
        assert_eq!(e.message, "trailing characters");
    }

    #[test]
    fn empty_documents() {
        for text in ["", " ", "\n\t\r\n  "] {
            assert_eq!(err(text).to_string(), "$: empty document");
        }
    }

    #[test]
    fn not_utf8() {
        let mut bytes = b"{\n  \"defaults\": {\"Protocol\": \"ht".to_vec();
        let offset = bytes.len();
        bytes.extend_from_slice(b"\xfftp\"}}");
        let e = parse(&bytes).unwrap_err();
        assert!(
            e.message
                .contains(&format!("not valid UTF-8 at byte offset {offset}")),
            "{e}"
        );
        assert_eq!(e.line, Some(2));
        assert_eq!(e.column, Some(offset - 2 + 1));
    }

    /// A valid document of exactly `len` bytes.
    fn sized(len: usize) -> Vec<u8> {
        let head = br#"{"defaults":{"ExternalSNI":""#;
        let tail = br#""}}"#;
        let mut v = head.to_vec();
        v.resize(len - tail.len(), b'x');
        v.extend_from_slice(tail);
        v
    }

    #[test]
    fn size_limit() {
        let at = sized(MAX_BASE_JSON_BYTES);
        assert_eq!(at.len(), MAX_BASE_JSON_BYTES);
        assert!(parse(&at).is_ok());
        let over = sized(MAX_BASE_JSON_BYTES + 1);
        let e = parse(&over).unwrap_err();
        assert!(e.message.contains("524289 bytes"), "{e}");
        assert!(e.message.contains("524288"), "{e}");
    }

    /// `{"defaults":{"EnvoyExtensions":[{"Arguments":{"X":[[…]]}}]}}` with `arrays` nested
    /// arrays (Arguments is free-form): `arrays + 5` levels.
    fn nested(arrays: usize) -> String {
        format!(
            r#"{{"defaults":{{"EnvoyExtensions":[{{"Arguments":{{"X":{}{}}}}}]}}}}"#,
            "[".repeat(arrays),
            "]".repeat(arrays)
        )
    }

    #[test]
    fn depth_limit() {
        assert!(parse(nested(MAX_DEPTH - 5).as_bytes()).is_ok());
        let e = err(&nested(MAX_DEPTH - 4));
        assert!(e.message.contains("deeper than 64 levels"), "{e}");
        assert!(
            e.path
                .starts_with("$.defaults.EnvoyExtensions[0].Arguments.X[0]"),
            "{}",
            e.path
        );
        assert!(e.line.is_some());
    }

    #[test]
    fn very_deep_input_is_an_error_not_a_crash() {
        let cases = [
            ("[".repeat(10_000), "]".repeat(10_000)),
            ("{\"a\":".repeat(10_000), "}".repeat(10_000)),
            (
                format!("{{\"defaults\":{{\"X\":{}", "[".repeat(10_000)),
                "]".repeat(10_000) + "}}",
            ),
        ];
        for (open, close) in cases {
            let e = err(&open);
            assert!(e.message.contains("deeper than 64 levels"), "{e}");
            let e = err(&format!("{open}{close}"));
            assert!(e.message.contains("deeper than 64 levels"), "{e}");
            assert!(e.to_string().len() < 1_000);
        }
    }

    #[test]
    fn canonical_json_is_stable() {
        let texts = [
            CONTRACT_EXAMPLE,
            "{}",
            r#"{"adopt":true,"router":null}"#,
            r#"{ "resolver" : { "Subsets": {"b": {"Filter":"x"}, "a": {}} , "ConnectTimeout" : "5000ms" },
                "defaults": {"Protocol": "grpc", "EnvoyExtensions": [{"Arguments": {"Extra": [1, 2.5, -3, "\u00e9\n", null, true]}}]},
                "terminating_gateway": {"SNI": "", "Gateway": "g", "CAFile": "/x"} }"#,
        ];
        for text in texts {
            let first = ok(text);
            let canon = to_canonical_json(&first);
            let second = parse(&canon).unwrap();
            assert_eq!(first, second, "{text}");
            assert_eq!(to_canonical_json(&second), canon);
            assert!(!canon.contains(&b'\n'));
        }
        let canon = to_canonical_json(&ok(texts[3]));
        let canon = String::from_utf8(canon).unwrap();
        assert!(
            canon.starts_with(r#"{"defaults":{"EnvoyExtensions":"#),
            "{canon}"
        );
        assert!(
            canon.contains(r#""Subsets":{"a":{},"b":{"Filter":"x"}}"#),
            "{canon}"
        );
        assert!(
            canon.contains(r#""terminating_gateway":{"Gateway":"g","CAFile":"/x"}"#),
            "{canon}"
        );
        assert!(!canon.contains("adopt"), "{canon}");
    }

    #[test]
    fn canonical_json_of_a_large_document_still_parses() {
        let at = sized(MAX_BASE_JSON_BYTES);
        let spec = parse(&at).unwrap();
        assert_eq!(parse(&to_canonical_json(&spec)).unwrap(), spec);
    }

    #[test]
    fn tgw_link_spec_serde_names() {
        let link: TgwLinkSpec =
            serde_json::from_value(json!({"Gateway": "g", "SNI": "s"})).unwrap();
        assert_eq!(link.sni.as_deref(), Some("s"));
        assert_eq!(
            serde_json::to_value(&link).unwrap(),
            json!({"Gateway": "g", "SNI": "s"})
        );
        assert!(serde_json::from_value::<TgwLinkSpec>(json!({"Gateway": "g", "X": 1})).is_err());
    }

    #[test]
    fn go_durations() {
        let s = 1_000_000_000u128;
        let cases: [(&str, u128); 16] = [
            ("0", 0),
            ("-0", 0),
            ("+5s", 5 * s),
            ("5s", 5 * s),
            ("500ms", s / 2),
            ("5000ms", 5 * s),
            ("1m30s", 90 * s),
            ("1h", 3600 * s),
            ("1.5h", 5400 * s),
            (".5s", s / 2),
            ("1.s", s),
            ("10ns", 10),
            ("3us", 3_000),
            ("3µs", 3_000),
            ("3μs", 3_000),
            ("1h2m3s4ms5us6ns", 3723 * s + 4_005_006),
        ];
        for (text, nanos) in cases {
            assert_eq!(parse_go_duration(text), Some(nanos), "{text}");
        }
        assert_eq!(parse_go_duration("1.0000000001s"), Some(s));
        assert_eq!(parse_go_duration("2562047h"), Some(2_562_047 * 3600 * s));
        for bad in [
            "",
            "-",
            "+",
            "5",
            "s",
            ".s",
            ".",
            "5x",
            "5 s",
            " 5s",
            "5s ",
            "-5s",
            "1e3s",
            "2562048h",
            "00",
            "5S",
            "99999999999999999999999999999999999999999h",
        ] {
            assert_eq!(parse_go_duration(bad), None, "{bad}");
        }
    }
}
