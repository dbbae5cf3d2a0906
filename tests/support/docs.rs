//! base.json bodies as Consul's documentation writes config entries (our own
//! words, from the docs' field reference), for tests/doc_bodies.rs and the
//! write-budget figures: what each must end as against Consul 1.8.7.

use serde_json::{json, Value};
use svc_handler::kind::Step;

/// What a body must end as.
pub enum Expect {
    Applied,
    /// `invalid` at this step, the message naming this.
    Invalid(Step, &'static str),
}

use Expect::{Applied, Invalid};

/// The service every route and redirect below may name (protocol http).
pub const BACKEND: &str = "backend";

fn http(extra: Value) -> Value {
    let mut v = json!({"defaults": {"Protocol": "http"}});
    v.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    v
}

fn subsets() -> Value {
    json!({"v1": {"Filter": "Service.Meta.version == v1"}, "v2": {"Filter": "Service.Meta.version == v2", "OnlyPassing": true}})
}

#[rustfmt::skip]
pub fn applied_rows() -> Vec<(&'static str, Value, Expect)> {
    vec![
        ("defaults-empty", json!({}), Applied),
        ("defaults-http", json!({"defaults": {"Protocol": "http"}}), Applied),
        ("defaults-grpc", json!({"defaults": {"Protocol": "grpc"}}), Applied),
        ("defaults-mesh-gateway", json!({"defaults": {"MeshGateway": {"Mode": "local"}}}), Applied),
        ("defaults-external-sni", json!({"defaults": {"ExternalSNI": "web.example.com"}}), Applied),
        ("defaults-expose", json!({"defaults": {"Protocol": "http", "Expose": {"Checks": true, "Paths": [{"Path": "/health", "LocalPathPort": 8080, "ListenerPort": 21500, "Protocol": "http"}]}}}), Applied),
        ("resolver-timeout", json!({"resolver": {"ConnectTimeout": "15s"}}), Applied),
        ("resolver-subsets", json!({"resolver": {"DefaultSubset": "v1", "Subsets": subsets()}}), Applied),
        ("resolver-failover", json!({"resolver": {"Subsets": subsets(), "Failover": {"v1": {"ServiceSubset": "v2"}, "*": {"Datacenters": ["dc2"]}}}}), Applied),
        ("resolver-redirect", http(json!({"resolver": {"Redirect": {"Service": BACKEND}}})), Applied),
        ("router-prefix", http(json!({"router": {"Routes": [{"Match": {"HTTP": {"PathPrefix": "/admin"}}, "Destination": {"Service": BACKEND}}]}})), Applied),
        ("router-exact-rewrite", http(json!({"router": {"Routes": [{"Match": {"HTTP": {"PathExact": "/old"}}, "Destination": {"PrefixRewrite": "/new", "RequestTimeout": "5s", "NumRetries": 3, "RetryOnConnectFailure": true, "RetryOnStatusCodes": [503]}}]}})), Applied),
        ("router-header-query", http(json!({"router": {"Routes": [{"Match": {"HTTP": {"Header": [{"Name": "x-debug", "Exact": "1"}], "QueryParam": [{"Name": "canary", "Present": true}], "Methods": ["GET", "HEAD"]}}, "Destination": {"Service": BACKEND}}]}})), Applied),
        ("router-to-subset", http(json!({"resolver": {"Subsets": subsets()}, "router": {"Routes": [{"Match": {"HTTP": {"PathPrefix": "/v2"}}, "Destination": {"ServiceSubset": "v2"}}]}})), Applied),
        ("splitter-canary", http(json!({"resolver": {"DefaultSubset": "v1", "Subsets": subsets()}, "splitter": {"Splits": [{"Weight": 90, "ServiceSubset": "v1"}, {"Weight": 10, "ServiceSubset": "v2"}]}})), Applied),
        ("splitter-migration", http(json!({"splitter": {"Splits": [{"Weight": 50}, {"Weight": 50, "Service": BACKEND}]}})), Applied),
        ("splitter-thirds", http(json!({"resolver": {"Subsets": subsets()}, "splitter": {"Splits": [{"Weight": 33.33, "ServiceSubset": "v1"}, {"Weight": 33.33, "ServiceSubset": "v2"}, {"Weight": 33.34}]}})), Applied),
        ("splitter-and-router", http(json!({"resolver": {"Subsets": subsets()}, "splitter": {"Splits": [{"Weight": 99.5, "ServiceSubset": "v1"}, {"Weight": 0.5, "ServiceSubset": "v2"}]}, "router": {"Routes": [{"Match": {"HTTP": {"Header": [{"Name": "x-canary", "Exact": "1"}]}}, "Destination": {"ServiceSubset": "v2"}}]}})), Applied),
    ]
}

#[rustfmt::skip]
pub fn invalid_rows() -> Vec<(&'static str, Value, Expect)> {
    vec![
        // Spelled as Consul decodes but does not store: every depth.
        ("spelling-top", json!({"defaults": {"protocol": "http"}}), Invalid(Step::Parse, "Protocol")),
        ("spelling-snake-top", json!({"resolver": {"connect_timeout": "5s"}}), Invalid(Step::Parse, "ConnectTimeout")),
        ("spelling-depth-2", json!({"defaults": {"MeshGateway": {"mode": "local"}}}), Invalid(Step::Parse, "Mode")),
        ("spelling-snake-depth-1", json!({"defaults": {"mesh_gateway": {"Mode": "local"}}}), Invalid(Step::Parse, "MeshGateway")),
        ("spelling-in-free-map", json!({"resolver": {"Subsets": {"v1": {"filter": "Service.Meta.v == 1"}}}}), Invalid(Step::Parse, "Filter")),
        ("spelling-depth-4-yaml", http(json!({"router": {"Routes": [{"Match": {"HTTP": {"pathPrefix": "/a"}}}]}})), Invalid(Step::Parse, "PathPrefix")),
        ("spelling-depth-4-snake", http(json!({"router": {"Routes": [{"Match": {"HTTP": {"path_prefix": "/a"}}}]}})), Invalid(Step::Parse, "PathPrefix")),
        ("spelling-destination", http(json!({"router": {"Routes": [{"Destination": {"service_subset": "v1"}}]}})), Invalid(Step::Parse, "ServiceSubset")),
        ("unknown-field", json!({"defaults": {"Protocl": "http"}}), Invalid(Step::Parse, "Protocol")),
        // Newer than Consul 1.8.7: refused before any write.
        ("newer-load-balancer", json!({"resolver": {"LoadBalancer": {"Policy": "least_request"}}}), Invalid(Step::Parse, "1.9")),
        ("newer-mode", json!({"defaults": {"Mode": "transparent"}}), Invalid(Step::Parse, "1.10")),
        ("newer-transparent-proxy", json!({"defaults": {"TransparentProxy": {"OutboundListenerPort": 15001}}}), Invalid(Step::Parse, "TransparentProxy")),
        ("newer-upstream-config", json!({"defaults": {"UpstreamConfig": {"Defaults": {"ConnectTimeoutMs": 500}}}}), Invalid(Step::Parse, "UpstreamConfig")),
        ("newer-request-headers", http(json!({"router": {"Routes": [{"Destination": {"RequestHeaders": {"Add": {"x-a": "b"}}}}]}})), Invalid(Step::Parse, "RequestHeaders")),
        ("newer-retry-on", http(json!({"router": {"Routes": [{"Destination": {"RetryOn": ["reset"]}}]}})), Invalid(Step::Parse, "RetryOn")),
        ("newer-failover-targets", json!({"resolver": {"Failover": {"*": {"Targets": [{"Datacenter": "dc2"}]}}}}), Invalid(Step::Parse, "Targets")),
        // Consul's cross-entry rules, foreseen: nothing written.
        ("preflight-router-on-tcp", json!({"router": {"Routes": [{"Match": {"HTTP": {"PathPrefix": "/a"}}}]}}), Invalid(Step::Preflight, "protocol")),
        ("preflight-router-explicit-tcp", json!({"defaults": {"Protocol": "tcp"}, "router": {"Routes": [{"Match": {"HTTP": {"PathPrefix": "/a"}}}]}}), Invalid(Step::Preflight, "protocol")),
        ("preflight-route-missing-subset", http(json!({"resolver": {"Subsets": subsets()}, "router": {"Routes": [{"Destination": {"ServiceSubset": "v9"}}]}})), Invalid(Step::Preflight, "v9")),
        ("preflight-default-subset", json!({"resolver": {"DefaultSubset": "v3", "Subsets": subsets()}}), Invalid(Step::Preflight, "v3")),
        ("preflight-splitter-sum", http(json!({"resolver": {"Subsets": subsets()}, "splitter": {"Splits": [{"Weight": 90, "ServiceSubset": "v1"}, {"Weight": 5, "ServiceSubset": "v2"}]}})), Invalid(Step::Preflight, "not 95")),
        ("preflight-splitter-on-tcp", json!({"splitter": {"Splits": [{"Weight": 100}]}}), Invalid(Step::Preflight, "protocol")),
        ("preflight-splitter-missing-subset", http(json!({"splitter": {"Splits": [{"Weight": 100, "ServiceSubset": "v1"}]}})), Invalid(Step::Preflight, "base.json has no resolver")),
        ("preflight-splitter-twice", http(json!({"splitter": {"Splits": [{"Weight": 50}, {"Weight": 50}]}})), Invalid(Step::Preflight, "more than once")),
        ("newer-split-request-headers", http(json!({"splitter": {"Splits": [{"Weight": 100, "RequestHeaders": {"Set": {"x-a": "b"}}}]}})), Invalid(Step::Parse, "RequestHeaders")),
        ("preflight-failover-key", json!({"resolver": {"Subsets": subsets(), "Failover": {"v7": {"Datacenters": ["dc2"]}}}}), Invalid(Step::Preflight, "v7")),
    ]
}
