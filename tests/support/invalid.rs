//! The one table of invalid base.json bodies. Each must be refused with a
//! message naming [`Invalid::names`]; the tests that use it: `properties`
//! (the parser alone), `cli` (the parser and the shipped JSON Schema agree),
//! `hostile` (a running daemon writes an `invalid` observed.json for each).
//! [`gated`] holds the bodies valid for the newest Consul but not for an older
//! target: only `validate --consul-version` and `spec::parse_with` refuse them.

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
    all.extend(misspelled_fields());
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

/// Fields spelled otherwise than Consul stores them, at several depths, and
/// unknown fields (with a did-you-mean where one is close).
fn misspelled_fields() -> Vec<Invalid> {
    vec![
        case(
            "mesh-gateway-snake",
            r#"{"defaults": {"mesh_gateway": {"Mode": "local"}}}"#,
            "write \"MeshGateway\"",
        ),
        case(
            "mesh-gateway-mode-lower",
            r#"{"defaults": {"MeshGateway": {"mode": "local"}}}"#,
            "$.defaults.MeshGateway.mode: write \"Mode\"",
        ),
        case(
            "path-prefix-snake",
            r#"{"router": {"Routes": [{"Match": {"HTTP": {"path_prefix": "/a"}}}]}}"#,
            "HTTP.path_prefix: write \"PathPrefix\"",
        ),
        case(
            "path-prefix-camel",
            r#"{"router": {"Routes": [{"Match": {"HTTP": {"pathPrefix": "/a"}}}]}}"#,
            "write \"PathPrefix\"",
        ),
        case(
            "route-destination-lower",
            r#"{"router": {"Routes": [{"destination": {"Service": "a"}}]}}"#,
            "write \"Destination\"",
        ),
        case(
            "subset-filter-lower",
            r#"{"resolver": {"Subsets": {"v1": {"filter": "x"}}}}"#,
            "$.resolver.Subsets.v1.filter: write \"Filter\"",
        ),
        case(
            "failover-datacenters-snake",
            r#"{"resolver": {"Failover": {"*": {"data_centers": ["dc2"]}}}}"#,
            "write \"Datacenters\"",
        ),
        case(
            "header-invert-lower",
            r#"{"router": {"Routes": [{"Match": {"HTTP": {"Header": [{"Name": "x", "invert": true}]}}}]}}"#,
            "Header[0].invert",
        ),
        case(
            "protocol-typo",
            r#"{"defaults": {"Protocl": "http"}}"#,
            "did you mean \"Protocol\"",
        ),
        case(
            "bogus-defaults",
            r#"{"defaults": {"Bogus": 1}}"#,
            "unknown field \"Bogus\"",
        ),
        case(
            "redirect-typo",
            r#"{"resolver": {"Redirect": {"Servce": "a"}}}"#,
            "did you mean \"Service\"",
        ),
        case(
            "subset-unknown",
            r#"{"resolver": {"Subsets": {"v1": {"Filter": "x", "Tags": []}}}}"#,
            "Subsets.v1.Tags",
        ),
        case(
            "route-unknown",
            r#"{"router": {"Routes": [{"Destination": {"Timeout": "5s"}}]}}"#,
            "unknown field \"Timeout\"",
        ),
        case(
            "expose-checks-string",
            r#"{"defaults": {"Expose": {"Checks": "yes"}}}"#,
            "Expose.Checks",
        ),
    ]
}

/// A body valid for the newest Consul svc-handler knows, invalid for the older
/// `version`: the message names the version that introduced the field.
pub struct Gated {
    pub name: &'static str,
    pub body: &'static str,
    pub version: &'static str,
    pub names: &'static str,
}

/// Fields newer than a target Consul version.
pub fn gated() -> Vec<Gated> {
    let g = |name, body, version, names| Gated {
        name,
        body,
        version,
        names,
    };
    vec![
        g(
            "load-balancer-1.8",
            r#"{"resolver": {"LoadBalancer": {"Policy": "least_request"}}}"#,
            "1.8.7",
            "$.resolver.LoadBalancer: needs Consul 1.9.0 or newer; the target is 1.8.7",
        ),
        g(
            "mode-1.9",
            r#"{"defaults": {"Mode": "transparent"}}"#,
            "1.9.17",
            "needs Consul 1.10.0",
        ),
        g(
            "transparent-proxy-1.8",
            r#"{"defaults": {"TransparentProxy": {"OutboundListenerPort": 15001}}}"#,
            "v1.8.7",
            "needs Consul 1.10.0",
        ),
        g(
            "upstream-config-1.8",
            r#"{"defaults": {"UpstreamConfig": {"Defaults": {"ConnectTimeoutMs": 500}}}}"#,
            "1.8.7",
            "$.defaults.UpstreamConfig: needs Consul 1.10.0",
        ),
        g(
            "destination-1.12",
            r#"{"defaults": {"Destination": {"Addresses": ["api.example.com"], "Port": 443}}}"#,
            "1.12.9",
            "needs Consul 1.13.0",
        ),
        g(
            "max-inbound-1.12",
            r#"{"defaults": {"MaxInboundConnections": 10}}"#,
            "1.12.0+ent",
            "needs Consul 1.13.0",
        ),
        g(
            "retry-on-1.8",
            r#"{"router": {"Routes": [{"Destination": {"RetryOn": ["reset"]}}]}}"#,
            "1.8.7",
            "Destination.RetryOn: needs Consul 1.13.0",
        ),
        g(
            "request-headers-1.8",
            r#"{"router": {"Routes": [{"Destination": {"RequestHeaders": {"Add": {"x": "1"}}}}]}}"#,
            "1.8.7",
            "Destination.RequestHeaders: needs Consul 1.9.0",
        ),
        g(
            "failover-targets-1.13",
            r#"{"resolver": {"Failover": {"*": {"Targets": [{"Datacenter": "dc2"}]}}}}"#,
            "1.13.9",
            "needs Consul 1.14.0",
        ),
        g(
            "redirect-partition-1.10",
            r#"{"resolver": {"Redirect": {"Service": "a", "Partition": "p"}}}"#,
            "1.10.0",
            "Redirect.Partition: needs Consul 1.11.0",
        ),
        g(
            "load-balancer-snake-1.8",
            r#"{"resolver": {"load_balancer": {}}}"#,
            "1.8.7",
            "needs Consul 1.9.0",
        ),
        g(
            "mutual-tls-1.15",
            r#"{"defaults": {"MutualTLSMode": "strict"}}"#,
            "1.15.2",
            "needs Consul 1.16.0",
        ),
    ]
}
