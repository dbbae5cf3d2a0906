//! The one table of invalid base.json bodies. Each must be refused with a
//! message naming [`Invalid::names`]; the tests that use it: `properties`
//! (the parser alone), `cli` (the parser and the shipped JSON Schema agree),
//! `hostile` (a running daemon writes an `invalid` observed.json for each).

/// One invalid base.json body.
pub struct Invalid {
    /// A short name, also usable in a service name.
    pub name: &'static str,
    pub body: Vec<u8>,
    /// What the error message must name (compared case-insensitively): the
    /// field or key at fault, or the kind of problem.
    pub names: &'static str,
    /// Whether the JSON Schema refuses it too. False when the body is not
    /// JSON a schema can be run on (syntax, UTF-8, nesting deeper than a JSON
    /// reader goes) or the problem is one only the parser sees (duplicate keys).
    pub schema: bool,
}

fn case(name: &'static str, body: impl Into<Vec<u8>>, names: &'static str) -> Invalid {
    Invalid {
        name,
        body: body.into(),
        names,
        schema: true,
    }
}

/// [`case`] for a body only the parser can refuse.
fn parser_only(name: &'static str, body: impl Into<Vec<u8>>, names: &'static str) -> Invalid {
    Invalid {
        schema: false,
        ..case(name, body, names)
    }
}

/// Every invalid body, each named uniquely.
pub fn bodies() -> Vec<Invalid> {
    let mut all = not_json();
    all.extend(wrong_shape());
    all.extend(wrong_fields());
    all.extend(wrong_values());
    all
}

/// Bodies that are not JSON (or not JSON a reader accepts).
fn not_json() -> Vec<Invalid> {
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let deep_obj = format!("{}{}", r#"{"a":"#.repeat(200), "}".repeat(200));
    vec![
        parser_only("truncated", "{\"defaults\": {", "line 1"),
        parser_only("lone-brace", "}", "line 1"),
        parser_only("trailing", "{} x", "line 1"),
        parser_only("comment", "{/* c */}", "line 1"),
        parser_only("single-quotes", "{'adopt': true}", "line 1"),
        parser_only("nan", "{\"adopt\": NaN}", "line 1"),
        parser_only("empty", "", "empty"),
        parser_only("whitespace", "  \n\t ", "empty"),
        parser_only(
            "non-utf8",
            b"{\"defaults\": {\"Protocol\": \"h\xc3\x28\"}}".as_slice(),
            "UTF-8",
        ),
        parser_only("deep-array", deep, "deep"),
        parser_only("deep-object", deep_obj, "deep"),
        parser_only("dup-top", r#"{"adopt": true, "adopt": true}"#, "duplicate"),
        parser_only(
            "dup-nested",
            r#"{"resolver": {"Subsets": {"a": {}, "a": {}}}}"#,
            "duplicate",
        ),
    ]
}

/// JSON of the wrong shape: not an object, or a section that is not one.
fn wrong_shape() -> Vec<Invalid> {
    vec![
        case("null-doc", "null", "object"),
        case("bool-doc", "true", "object"),
        case("number-doc", "123", "object"),
        case("string-doc", "\"web\"", "object"),
        case("array-doc", "[]", "object"),
        case("unknown-top", r#"{"router2": {}}"#, "router2"),
        case("misspelled-top", r#"{"defualts": {}}"#, "defualts"),
        case("snake-top", r#"{"Defaults": {}}"#, "Defaults"),
        case("defaults-string", r#"{"defaults": "http"}"#, "$.defaults"),
        case("defaults-array", r#"{"defaults": []}"#, "$.defaults"),
        case("resolver-number", r#"{"resolver": 5}"#, "$.resolver"),
        case("router-bool", r#"{"router": true}"#, "$.router"),
        case(
            "tgw-string",
            r#"{"terminating_gateway": "egress"}"#,
            "terminating_gateway",
        ),
        case(
            "tgw-array",
            r#"{"terminating_gateway": []}"#,
            "terminating_gateway",
        ),
        case("adopt-string", r#"{"adopt": "true"}"#, "$.adopt"),
        case("adopt-yes", r#"{"adopt": "yes"}"#, "$.adopt"),
        case("adopt-number", r#"{"adopt": 1}"#, "$.adopt"),
    ]
}

/// Fields svc-handler sets itself, Consul's own, and misspelled ones.
fn wrong_fields() -> Vec<Invalid> {
    vec![
        case(
            "kind",
            r#"{"defaults": {"Kind": "service-defaults"}}"#,
            "Kind",
        ),
        case("name", r#"{"resolver": {"Name": "other"}}"#, "Name"),
        case("meta", r#"{"router": {"Meta": {}}}"#, "Meta"),
        case(
            "namespace",
            r#"{"defaults": {"Namespace": "team"}}"#,
            "Namespace",
        ),
        case(
            "namespace-upper",
            r#"{"defaults": {"NAMESPACE": "x"}}"#,
            "NAMESPACE",
        ),
        case(
            "partition",
            r#"{"defaults": {"Partition": "x"}}"#,
            "Partition",
        ),
        case(
            "partition-snake",
            r#"{"resolver": {"partition": "p"}}"#,
            "partition",
        ),
        case(
            "modify-index",
            r#"{"defaults": {"ModifyIndex": 3}}"#,
            "ModifyIndex",
        ),
        case(
            "resolver-modify-index",
            r#"{"resolver": {"ModifyIndex": 1}}"#,
            "ModifyIndex",
        ),
        case(
            "create-index-snake",
            r#"{"resolver": {"Create_Index": 1}}"#,
            "Create_Index",
        ),
        case(
            "snake-field",
            r#"{"resolver": {"connect_timeout": "5s"}}"#,
            "ConnectTimeout",
        ),
        case(
            "protocol-lower",
            r#"{"defaults": {"protocol": "http"}}"#,
            "protocol",
        ),
        case(
            "tgw-extra",
            r#"{"terminating_gateway": {"Gateway": "g", "Port": 1}}"#,
            "Port",
        ),
        case(
            "tgw-sni-case",
            r#"{"terminating_gateway": {"Gateway": "g", "Sni": "x"}}"#,
            "Sni",
        ),
    ]
}

/// Known fields with values of the wrong type or form.
fn wrong_values() -> Vec<Invalid> {
    let long_protocol = format!(
        r#"{{"defaults": {{"Protocol": "{}"}}}}"#,
        "h".repeat(400_000)
    );
    let mut all = vec![
        case(
            "protocol-number",
            r#"{"defaults": {"Protocol": 80}}"#,
            "Protocol",
        ),
        case(
            "protocol-unknown",
            r#"{"defaults": {"Protocol": "udp"}}"#,
            "Protocol",
        ),
        case(
            "protocol-upper",
            r#"{"defaults": {"Protocol": "HTTP"}}"#,
            "Protocol",
        ),
        case("protocol-huge", long_protocol, "Protocol"),
        case(
            "timeout-number",
            r#"{"resolver": {"ConnectTimeout": 5}}"#,
            "ConnectTimeout",
        ),
        case(
            "timeout-word",
            r#"{"resolver": {"ConnectTimeout": "five"}}"#,
            "ConnectTimeout",
        ),
        case(
            "timeout-unitless",
            r#"{"resolver": {"ConnectTimeout": "5"}}"#,
            "ConnectTimeout",
        ),
        case(
            "timeout-empty",
            r#"{"resolver": {"ConnectTimeout": ""}}"#,
            "ConnectTimeout",
        ),
        case(
            "timeout-negative",
            r#"{"resolver": {"ConnectTimeout": "-1s"}}"#,
            "ConnectTimeout",
        ),
        case(
            "subsets-array",
            r#"{"resolver": {"Subsets": [1]}}"#,
            "Subsets",
        ),
        case(
            "subsets-empty-array",
            r#"{"resolver": {"Subsets": []}}"#,
            "Subsets",
        ),
        case(
            "subset-string",
            r#"{"resolver": {"Subsets": {"v1": "x"}}}"#,
            "Subsets",
        ),
        case(
            "failover-number",
            r#"{"resolver": {"Failover": {"*": 1}}}"#,
            "Failover",
        ),
        case(
            "redirect-string",
            r#"{"resolver": {"Redirect": "x"}}"#,
            "Redirect",
        ),
    ];
    all.extend(wrong_routes_and_gateways());
    all
}

/// Known router and terminating-gateway fields with wrong values.
fn wrong_routes_and_gateways() -> Vec<Invalid> {
    vec![
        case(
            "routes-object",
            r#"{"router": {"Routes": {"a": 1}}}"#,
            "Routes",
        ),
        case(
            "routes-empty-object",
            r#"{"router": {"Routes": {}}}"#,
            "Routes",
        ),
        case(
            "routes-strings",
            r#"{"router": {"Routes": ["x"]}}"#,
            "Routes",
        ),
        case(
            "routes-number",
            r#"{"router": {"Routes": [{}, 3]}}"#,
            "Routes",
        ),
        case(
            "methods-lowercase",
            r#"{"router": {"Routes": [{"Match": {"HTTP": {"Methods": ["get"]}}}]}}"#,
            "Methods",
        ),
        case(
            "request-timeout-word",
            r#"{"router": {"Routes": [{"Destination": {"RequestTimeout": "x"}}]}}"#,
            "RequestTimeout",
        ),
        case(
            "tgw-no-gateway",
            r#"{"terminating_gateway": {"SNI": "a"}}"#,
            "Gateway",
        ),
        case(
            "tgw-null-gateway",
            r#"{"terminating_gateway": {"Gateway": null}}"#,
            "Gateway",
        ),
        case(
            "tgw-bad-gateway",
            r#"{"terminating_gateway": {"Gateway": "no/slash"}}"#,
            "Gateway",
        ),
        case(
            "tgw-space-gateway",
            r#"{"terminating_gateway": {"Gateway": "bad name"}}"#,
            "Gateway",
        ),
        case(
            "tgw-number-sni",
            r#"{"terminating_gateway": {"Gateway": "g", "SNI": 7}}"#,
            "SNI",
        ),
    ]
}
