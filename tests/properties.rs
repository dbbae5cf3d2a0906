//! Property tests of the pure parts that face user input: the base.json parser
//! never panics, normalizing is stable, and the canonical comparison is an
//! equivalence that ignores what Consul adds. `PROPTEST_CASES` raises the
//! number of cases for a longer run (`PROPTEST_CASES=20000 cargo test --test
//! properties`).

// Only the table: the rest of tests/support starts Consul agents.
#[allow(dead_code)]
#[path = "support/invalid.rs"]
mod invalid;

use proptest::prelude::*;
use serde_json::{json, Map, Value};
use svc_handler::entries;
use svc_handler::keys::{Layout, ServiceId};
use svc_handler::kind::Kind;
use svc_handler::spec;

/// Every body of the shared invalid table is refused, and the message names
/// what it must.
#[test]
fn the_parser_refuses_every_invalid_body_naming_the_problem() {
    let all = invalid::bodies();
    let mut seen = std::collections::BTreeSet::new();
    for case in &all {
        assert!(seen.insert(case.name), "{} twice in the table", case.name);
        let e = spec::parse(&case.body).expect_err(case.name).to_string();
        assert!(
            e.to_lowercase().contains(&case.names.to_lowercase()),
            "{}: {e:?} should name {:?}",
            case.name,
            case.names
        );
    }
}

/// Every body of the version-gated table is refused for its target and
/// accepted for the newest Consul.
#[test]
fn the_parser_refuses_fields_newer_than_the_target() {
    for case in invalid::gated() {
        let options = spec::ParseOptions {
            consul_version: case.version.parse().expect(case.version),
        };
        let e = spec::parse_with(case.body.as_bytes(), &options)
            .expect_err(case.name)
            .to_string();
        assert!(
            e.contains(case.names),
            "{}: {e:?} should name {:?}",
            case.name,
            case.names
        );
        let errors = spec::check_all(case.body.as_bytes(), &options);
        assert_eq!(errors.len(), 1, "{}: {errors:?}", case.name);
        if !case.name.contains("snake") {
            spec::parse(case.body.as_bytes()).unwrap_or_else(|e| panic!("{}: {e}", case.name));
        }
    }
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        "[a-zA-Z0-9 _./:-]{0,12}".prop_map(Value::String),
        prop_oneof![
            Just("5s"),
            Just("5000ms"),
            Just("1m30s"),
            Just("0"),
            Just("default"),
            Just("")
        ]
        .prop_map(|s| Value::String(s.to_string())),
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Z][a-zA-Z]{0,10}",
        Just("Namespace".to_string()),
        Just("ConnectTimeout".to_string()),
        Just("Subsets".to_string()),
        Just("Redirect".to_string()),
        Just("Failover".to_string()),
        Just("Destination".to_string()),
        Just("Protocol".to_string()),
        "[a-z_]{1,8}",
    ]
}

fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(5, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn document() -> impl Strategy<Value = Value> {
    let top = prop_oneof![
        Just("defaults".to_string()),
        Just("resolver".to_string()),
        Just("router".to_string()),
        Just("terminating_gateway".to_string()),
        Just("adopt".to_string()),
        "[a-z_]{1,10}",
    ];
    prop::collection::btree_map(top, value(), 0..5)
        .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>()))
}

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn parser_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = spec::parse(&bytes);
    }

    #[test]
    fn parser_never_panics_on_json_shaped_text(doc in document(), cut in 0usize..400) {
        let text = doc.to_string();
        let _ = spec::parse(text.as_bytes());
        let end = cut.min(text.len());
        if text.is_char_boundary(end) {
            let _ = spec::parse(&text.as_bytes()[..end]);
        }
    }

    #[test]
    fn parse_normalize_parse_is_stable(doc in document()) {
        if let Ok(parsed) = spec::parse(doc.to_string().as_bytes()) {
            let normalized = spec::to_canonical_json(&parsed);
            let again = spec::parse(&normalized).expect("normalized output parses");
            prop_assert_eq!(&again, &parsed);
            prop_assert_eq!(spec::to_canonical_json(&again), normalized);
        }
    }

    #[test]
    fn canonical_is_idempotent_and_an_equivalence(v in value(), w in value()) {
        let c = entries::canonical(&v);
        prop_assert_eq!(entries::canonical(&c), c.clone());
        prop_assert!(entries::entries_equal(&v, &v));
        prop_assert_eq!(entries::entries_equal(&v, &w), entries::entries_equal(&w, &v));
    }

    #[test]
    fn what_consul_adds_is_not_a_difference(doc in document(), index in 1u64..1_000_000) {
        let Ok(parsed) = spec::parse(doc.to_string().as_bytes()) else { return Ok(()) };
        let layout = Layout::new("svc-handler").unwrap();
        let id = ServiceId::new("default", "default", "web").unwrap();
        let key = layout.base_key(&id);
        let desired = entries::build_entry(Kind::ServiceDefaults, &id, parsed.defaults.as_ref(), &key);
        let mut read_back = desired.clone();
        let obj = read_back.as_object_mut().unwrap();
        obj.insert("CreateIndex".into(), json!(index));
        obj.insert("ModifyIndex".into(), json!(index));
        obj.entry("MeshGateway").or_insert(json!({}));
        obj.entry("Expose").or_insert(json!({}));
        prop_assert!(entries::entries_equal(&desired, &read_back));
        prop_assert!(entries::verify(&desired, &read_back).is_ok());
    }
}
