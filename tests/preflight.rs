//! Preflight against a real Consul 1.8 agent: for each base.json, the other
//! services' entries are written first, then `needs` says what to read, the
//! reads fill `Others`, and `check` foresees refusals. The service's entries
//! are then written straight to Consul in svc-handler's order (defaults,
//! resolver, router): a foreseen violation must match the write Consul
//! refuses (its kind and Consul's own error text), and a body with no
//! violation must be accepted whole.

mod support;

use serde_json::{json, Value};
use support::{prefix, shared};
use svc_handler::consul::{Client, QueryOptions};
use svc_handler::keys::ServiceId;
use svc_handler::kind::Kind;
use svc_handler::preflight::{self, Others, Violation};

/// One case: other entries (written first, must be accepted), base.json,
/// and the kind Consul refuses (`None`: all accepted). `API`, `WEB`, `DB` in
/// the JSON become this run's unique service names.
struct Case {
    name: &'static str,
    setup: Vec<Value>,
    body: Value,
    refused: Option<Kind>,
}

fn case(name: &'static str, setup: Vec<Value>, body: Value, refused: Option<Kind>) -> Case {
    Case {
        name,
        setup,
        body,
        refused,
    }
}

fn defaults(name: &str, protocol: &str) -> Value {
    json!({"Kind": "service-defaults", "Name": name, "Protocol": protocol})
}

fn resolver(name: &str, body: Value) -> Value {
    let mut v = body;
    v["Kind"] = json!("service-resolver");
    v["Name"] = json!(name);
    v
}

fn http() -> Value {
    json!({"Protocol": "http"})
}

fn refusing_cases() -> Vec<Case> {
    router_refusals()
        .into_iter()
        .chain(resolver_refusals())
        .collect()
}

fn router_refusals() -> Vec<Case> {
    use Kind::ServiceRouter as Rt;
    let routes = |r: Value| json!({"defaults": http(), "router": {"Routes": r}});
    vec![
        case(
            "router-on-tcp",
            vec![],
            json!({"defaults": {"Protocol": "tcp"}, "router": {}}),
            Some(Rt),
        ),
        case(
            "router-defaults-without-protocol",
            vec![],
            json!({"defaults": {}, "router": {}}),
            Some(Rt),
        ),
        case(
            "dest-http2-vs-http",
            vec![defaults("WEB", "http2")],
            routes(json!([{"Destination": {"Service": "WEB"}}])),
            Some(Rt),
        ),
        case(
            "dest-no-defaults-tcp",
            vec![],
            routes(json!([{"Destination": {"Service": "WEB"}}])),
            Some(Rt),
        ),
        case(
            "own-subset-missing",
            vec![],
            json!({"defaults": http(), "resolver": {"Subsets": {"v1": {}}},
                   "router": {"Routes": [{"Destination": {"ServiceSubset": "v2"}}]}}),
            Some(Rt),
        ),
        case(
            "other-subset-missing",
            vec![
                defaults("WEB", "http"),
                resolver("WEB", json!({"Subsets": {"v1": {}}})),
            ],
            routes(json!([{"Destination": {"Service": "WEB", "ServiceSubset": "v2"}}])),
            Some(Rt),
        ),
        case(
            "header-two-ways",
            vec![],
            routes(
                json!([{"Match": {"HTTP": {"Header": [{"Name": "x", "Exact": "a", "Prefix": "b"}]}}}]),
            ),
            Some(Rt),
        ),
        case(
            "prefix-rewrite-without-path",
            vec![],
            routes(json!([{"Destination": {"PrefixRewrite": "/b"}}])),
            Some(Rt),
        ),
        case(
            "method-twice",
            vec![],
            routes(json!([{"Match": {"HTTP": {"Methods": ["GET", "GET"]}}}])),
            Some(Rt),
        ),
        case(
            "path-exact-no-slash",
            vec![],
            routes(json!([{"Match": {"HTTP": {"PathExact": "a"}}}])),
            Some(Rt),
        ),
    ]
}

fn resolver_refusals() -> Vec<Case> {
    use Kind::ServiceResolver as Res;
    vec![
        case(
            "default-subset-missing",
            vec![],
            json!({"resolver": {"DefaultSubset": "v1"}}),
            Some(Res),
        ),
        case(
            "redirect-and-failover",
            vec![],
            json!({"resolver": {"Redirect": {"Service": "DB"}, "Failover": {"*": {"Service": "WEB"}}}}),
            Some(Res),
        ),
        case(
            "failover-bad-key",
            vec![],
            json!({"resolver": {"Failover": {"v1": {"Service": "WEB"}}}}),
            Some(Res),
        ),
        case(
            "failover-own-subset",
            vec![],
            json!({"resolver": {"Failover": {"*": {"ServiceSubset": "v3"}}}}),
            Some(Res),
        ),
        case(
            "redirect-other-subset-missing",
            vec![resolver("DB", json!({"Subsets": {"v1": {}}}))],
            json!({"resolver": {"Redirect": {"Service": "DB", "ServiceSubset": "v2"}}}),
            Some(Res),
        ),
        case(
            "failover-to-other-protocol",
            vec![defaults("WEB", "http")],
            json!({"defaults": {"Protocol": "tcp"}, "resolver": {"Failover": {"*": {"Service": "WEB"}}}}),
            Some(Res),
        ),
    ]
}

fn accepted_cases() -> Vec<Case> {
    vec![
        case(
            "full-http",
            vec![
                defaults("WEB", "http"),
                resolver("WEB", json!({"Subsets": {"canary": {}}})),
            ],
            json!({"defaults": http(),
                   "resolver": {"Subsets": {"v1": {}, "v2": {}}, "DefaultSubset": "v1",
                                "Failover": {"*": {"Datacenters": ["dc2"]}}},
                   "router": {"Routes": [
                       {"Match": {"HTTP": {"PathPrefix": "/a", "Methods": ["GET", "FETCH"]}},
                        "Destination": {"Service": "WEB", "ServiceSubset": "canary", "PrefixRewrite": "/"}},
                       {"Match": {"HTTP": {"Header": [{"Name": "x", "Present": true}],
                                           "QueryParam": [{"Name": "q", "Present": true}]}},
                        "Destination": {"ServiceSubset": "v2"}}]}}),
            None,
        ),
        case(
            "redirect-with-subsets",
            vec![],
            json!({"resolver": {"Redirect": {"Service": "DB"}, "Subsets": {"v1": {}}, "DefaultSubset": "v1"}}),
            None,
        ),
        case(
            "failover-not-reached",
            vec![defaults("DB", "http")],
            json!({"defaults": {"Protocol": "tcp"},
                   "resolver": {"Subsets": {"v1": {}}, "Failover": {"v1": {"Service": "DB", "ServiceSubset": "zz"}}}}),
            None,
        ),
        case(
            "subset-on-redirecting-service",
            vec![
                defaults("WEB", "http"),
                defaults("DB", "http"),
                resolver("WEB", json!({"Redirect": {"Service": "DB"}})),
            ],
            json!({"defaults": http(), "router": {"Routes": [{"Destination": {"Service": "WEB", "ServiceSubset": "v9"}}]}}),
            None,
        ),
        case(
            "failover-to-same-protocol",
            vec![
                defaults("WEB", "grpc"),
                resolver("WEB", json!({"Subsets": {"b": {}}})),
            ],
            json!({"defaults": {"Protocol": "grpc"}, "router": {},
                   "resolver": {"Failover": {"*": {"Service": "WEB", "ServiceSubset": "b"}}}}),
            None,
        ),
    ]
}

/// The body with this run's service names.
fn named(v: &Value, tag: &str) -> Value {
    let text = v.to_string();
    let text = ["API", "WEB", "DB"].iter().fold(text, |t, n| {
        t.replace(
            &format!("\"{n}\""),
            &format!("\"{}-{tag}\"", n.to_lowercase()),
        )
    });
    serde_json::from_str(&text).unwrap()
}

async fn read_others(client: &Client, spec: &svc_handler::spec::Spec, id: &ServiceId) -> Others {
    let needs = preflight::needs(spec, id);
    let q = QueryOptions::default();
    let mut others = Others::default();
    for name in &needs.defaults {
        let (e, _) = client
            .config_get("service-defaults", name, &q)
            .await
            .unwrap();
        others.add_defaults(name, e.map(|e| e.into_value()).as_ref());
    }
    for name in &needs.resolvers {
        let (e, _) = client
            .config_get("service-resolver", name, &q)
            .await
            .unwrap();
        others.add_resolver(name, e.map(|e| e.into_value()).as_ref());
    }
    if needs.proxy_defaults {
        let (e, _) = client
            .config_get("proxy-defaults", "global", &q)
            .await
            .unwrap();
        others.set_proxy_defaults(e.map(|e| e.into_value()).as_ref());
    }
    others
}

/// Writes the spec's entries in svc-handler's order; the first refusal.
async fn write_all(
    client: &Client,
    spec: &svc_handler::spec::Spec,
    name: &str,
) -> Option<(Kind, String)> {
    for kind in Kind::OWN {
        let Some(body) = spec.body(kind) else {
            continue;
        };
        let mut entry = Value::Object(body.clone());
        entry["Kind"] = json!(kind.as_str());
        entry["Name"] = json!(name);
        if let Err(e) = client.config_put(&entry).await {
            return Some((kind, e.to_string()));
        }
    }
    None
}

/// Consul's own words in a violation's message.
fn consul_text(v: &Violation) -> &str {
    v.message.rsplit("Consul refuses it: ").next().unwrap()
}

async fn run(c: &Case, client: &Client) -> Result<(), String> {
    let tag = prefix(c.name).replace(['/', '_'], "-");
    let api = format!("api-{tag}");
    for e in &c.setup {
        let e = named(e, &tag);
        let ok = client.config_put(&e).await;
        assert!(matches!(ok, Ok(true)), "{}: setup {e}: {ok:?}", c.name);
    }
    let body = named(&c.body, &tag);
    let spec = svc_handler::spec::parse(body.to_string().as_bytes()).unwrap();
    let id = ServiceId::new("default", "default", &api).unwrap();
    let others = read_others(client, &spec, &id).await;
    let found = preflight::check(&spec, &id, &others);
    let refused = write_all(client, &spec, &api).await;
    match (&c.refused, &refused, found.first()) {
        (None, None, None) => Ok(()),
        (Some(want), Some((kind, err)), Some(_)) if want == kind => {
            let matched = found.iter().any(|v| err.contains(consul_text(v)));
            matched
                .then_some(())
                .ok_or_else(|| format!("{}: Consul said {err:?}, foreseen {found:?}", c.name))
        }
        _ => Err(format!(
            "{}: expected refusal {:?}; Consul refused {refused:?}; foreseen {found:?}",
            c.name, c.refused
        )),
    }
}

#[tokio::test]
async fn preflight_foresees_what_consul_refuses_and_accepts() {
    let client = shared().client();
    let cases: Vec<Case> = refusing_cases()
        .into_iter()
        .chain(accepted_cases())
        .collect();
    let mut failures = Vec::new();
    for c in &cases {
        if let Err(e) = run(c, &client).await {
            failures.push(e);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    assert!(refusing_cases().len() >= 8 && accepted_cases().len() >= 4);
}
