//! The plan over a table of states: each row a base.json, what Consul and the
//! records hold, and what the plan must say.

use serde_json::{json, Value};

use super::*;
use crate::records::{Objects, Observed};
use crate::spec;

const KEY: &str = "svc-handler/desired/default/default/web/base.json";
const GEN: u64 = 50;

fn web() -> ServiceId {
    ServiceId::new("default", "default", "web").unwrap()
}

fn parse(v: Value) -> Spec {
    spec::parse(&serde_json::to_vec(&v).unwrap()).unwrap()
}

/// The entry svc-handler writes for `body`, as Consul returns it.
fn ours(kind: Kind, body: Value, index: u64) -> Value {
    let mut e = entries::build_entry(kind, &web(), body.as_object(), KEY);
    e["CreateIndex"] = json!(index);
    e["ModifyIndex"] = json!(index);
    e
}

fn with_meta(kind: Kind, body: Value, meta: Value) -> Value {
    let mut e = ours(kind, body, 7);
    match meta {
        Value::Null => {
            e.as_object_mut().unwrap().remove("Meta");
        }
        m => e["Meta"] = m,
    }
    e
}

fn gateway(name: &str, links: &[Value], index: u64) -> Value {
    json!({"Kind": "terminating-gateway", "Name": name, "Services": links,
           "CreateIndex": index, "ModifyIndex": index})
}

fn link(sni: &str) -> Value {
    json!({"Name": "web", "SNI": sni})
}

/// A builder of [`Current`] where every entry put is recorded as svc-handler
/// verified it at `GEN`, unless said otherwise.
#[derive(Default)]
struct State(Current);

impl State {
    fn entry(mut self, kind: Kind, e: Value) -> Self {
        self.0.entries.insert(kind, e);
        self
    }
    fn recorded(mut self, kind: Kind, e: &Value, generation: u64) -> Self {
        let r = Record::entry(kind, &web(), KEY, generation, e, "t".into());
        self.0.records.insert(kind, r);
        self
    }
    /// An entry of ours, equal to `body`, recorded at `GEN`.
    fn in_place(self, kind: Kind, body: Value) -> Self {
        let e = ours(kind, body, 10);
        self.entry(kind, e.clone()).recorded(kind, &e, GEN)
    }
    fn gw(mut self, g: Value) -> Self {
        let name = g["Name"].as_str().unwrap().to_string();
        self.0.gateways.insert(name, std::sync::Arc::new(g));
        self
    }
    fn link_record(mut self, gw: &Value, previous: Option<&str>, generation: u64) -> Self {
        let name = gw["Name"].as_str().unwrap();
        let found = entries::find_link(gw, &web())
            .cloned()
            .unwrap_or(Value::Null);
        let mut r = Record::link(&web(), KEY, name, generation, found, Some(gw), "t".into());
        r.previous_gateway = previous.map(str::to_string);
        self.0.records.insert(Kind::TerminatingGateway, r);
        self
    }
}

/// The records of `s` moved to the generation before.
fn older(mut s: State) -> State {
    s.0.records
        .values_mut()
        .for_each(|r| r.generation = GEN - 1);
    s
}

/// The record of `kind` says Consul stored it differently.
fn differs(mut s: State, kind: Kind) -> State {
    s.0.records.get_mut(&kind).unwrap().differs =
        Some("Protocol: expected \"grpc\", found \"http\"".into());
    s
}

/// defaults + resolver in place for `{"defaults": {"Protocol": "http"}}`.
fn base_state() -> State {
    State::default()
        .in_place(Kind::ServiceDefaults, json!({"Protocol": "http"}))
        .in_place(Kind::ServiceResolver, json!({}))
}

fn plan_of(spec: Option<Value>, state: &State) -> Plan {
    plan_with(spec, state, true)
}

fn plan_with(spec: Option<Value>, state: &State, prune: bool) -> Plan {
    let id = web();
    let t = Target {
        id: &id,
        base_key: KEY,
    };
    match spec {
        Some(v) => {
            let s = parse(v);
            plan(
                &t,
                &Desired::Spec {
                    spec: &s,
                    generation: GEN,
                },
                &state.0,
            )
        }
        None => plan(&t, &Desired::Gone { prune }, &state.0),
    }
}

/// `kind:name:action[!]` for each change (`!` when blocked).
fn shape(p: &Plan) -> Vec<String> {
    p.changes
        .iter()
        .map(|c| {
            let action = serde_json::to_value(c.action).unwrap();
            let bang = if c.blocked.is_some() { "!" } else { "" };
            format!("{}:{}:{}{bang}", c.kind, c.name, action.as_str().unwrap())
        })
        .collect()
}

const HTTP: fn() -> Value = || json!({"defaults": {"Protocol": "http"}});

struct Row {
    name: &'static str,
    spec: Option<Value>,
    state: State,
    shape: &'static [&'static str],
    writes_config: bool,
    noop: bool,
}

fn rows() -> Vec<Row> {
    let mut all = entry_rows();
    all.extend(gateway_rows());
    all.extend(gone_rows());
    for row in &mut all {
        row.state.0.generation = row.spec.as_ref().map(|_| GEN);
    }
    all
}

fn row(
    name: &'static str,
    spec: Option<Value>,
    state: State,
    shape: &'static [&'static str],
    writes_config: bool,
    noop: bool,
) -> Row {
    Row {
        name,
        spec,
        state,
        shape,
        writes_config,
        noop,
    }
}

fn router() -> Value {
    json!({"Routes": [{"Match": {"HTTP": {"PathPrefix": "/a"}}}]})
}

fn splitter() -> Value {
    json!({"Splits": [{"Weight": 100, "Service": "other"}]})
}

fn with_gw(g: &str) -> Value {
    json!({"defaults": {"Protocol": "http"}, "terminating_gateway": {"Gateway": g, "SNI": "x"}})
}

#[rustfmt::skip]
fn entry_rows() -> Vec<Row> {
    let router = router();
    let with_router = json!({"defaults": {"Protocol": "http"}, "router": router});
    let splitter = splitter();
    let with_splitter = json!({"defaults": {"Protocol": "http"}, "splitter": splitter});
    vec![
        row("all absent", Some(HTTP()), State::default(),
            &["service-router:web:none", "service-splitter:web:none", "service-defaults:web:create", "service-resolver:web:create"], true, false),
        row("all equal", Some(HTTP()), base_state(),
            &["service-router:web:none", "service-splitter:web:none", "service-defaults:web:none", "service-resolver:web:none"], false, true),
        row("defaults different (a new generation)", Some(json!({"defaults": {"Protocol": "grpc"}})), older(base_state()),
            &["service-router:web:none", "service-splitter:web:none", "service-defaults:web:update", "service-resolver:web:none"], true, false),
        row("as written for this generation, Consul shows it otherwise", Some(json!({"defaults": {"Protocol": "grpc"}})), base_state(),
            &["service-router:web:none", "service-splitter:web:none", "service-defaults:web:none", "service-resolver:web:none"], false, true),
        row("stored differently for this generation", Some(json!({"defaults": {"Protocol": "grpc"}})), differs(base_state(), Kind::ServiceDefaults),
            &["service-router:web:none", "service-splitter:web:none", "service-defaults:web:none", "service-resolver:web:none"], false, false),
        row("changed by someone after our write for this generation", Some(HTTP()),
            base_state().entry(Kind::ServiceResolver, ours(Kind::ServiceResolver, json!({"ConnectTimeout": "9s"}), 12)),
            &["service-router:web:none", "service-splitter:web:none", "service-defaults:web:none", "service-resolver:web:update"], true, false),
        row("equal, records of an older generation", Some(HTTP()),
            State::default()
                .entry(Kind::ServiceDefaults, ours(Kind::ServiceDefaults, json!({"Protocol": "http"}), 10))
                .recorded(Kind::ServiceDefaults, &ours(Kind::ServiceDefaults, json!({"Protocol": "http"}), 10), GEN - 1)
                .in_place(Kind::ServiceResolver, json!({})),
            &["service-router:web:none", "service-splitter:web:none", "service-defaults:web:none", "service-resolver:web:none"], false, false),
        row("unmarked defaults", Some(HTTP()),
            State::default().entry(Kind::ServiceDefaults, with_meta(Kind::ServiceDefaults, json!({"Protocol": "tcp"}), Value::Null)),
            &["service-router:web:none", "service-splitter:web:none", "service-defaults:web:update!", "service-resolver:web:create"], false, false),
        row("unmarked defaults, adopt", Some(json!({"defaults": {"Protocol": "http"}, "adopt": true})),
            State::default().entry(Kind::ServiceDefaults, with_meta(Kind::ServiceDefaults, json!({"Protocol": "tcp"}), Value::Null)),
            &["service-router:web:none", "service-splitter:web:none", "service-defaults:web:update", "service-resolver:web:create"], true, false),
        row("unmarked but recorded (rewritten by hand)", Some(HTTP()),
            base_state().entry(Kind::ServiceDefaults, with_meta(Kind::ServiceDefaults, json!({"Protocol": "http"}), Value::Null)),
            &["service-router:web:none", "service-splitter:web:none", "service-defaults:web:update", "service-resolver:web:none"], true, false),
        row("marked for another key", Some(HTTP()),
            State::default().entry(Kind::ServiceDefaults, with_meta(Kind::ServiceDefaults, json!({"Protocol": "http"}), entries::ownership_meta("other/base.json"))),
            &["service-router:web:none", "service-splitter:web:none", "service-defaults:web:update!", "service-resolver:web:create"], false, false),
        row("owned by consul-k8s", Some(HTTP()),
            State::default().entry(Kind::ServiceResolver, with_meta(Kind::ServiceResolver, json!({}), json!({"external-source": "kubernetes"}))),
            &["service-router:web:none", "service-splitter:web:none", "service-defaults:web:create", "service-resolver:web:update!"], true, false),
        row("router removed, ours", Some(HTTP()), base_state().in_place(Kind::ServiceRouter, router.clone()),
            &["service-router:web:delete", "service-splitter:web:none", "service-defaults:web:none", "service-resolver:web:none"], true, false),
        row("router removed, someone else's", Some(HTTP()),
            base_state().entry(Kind::ServiceRouter, with_meta(Kind::ServiceRouter, router.clone(), Value::Null)),
            &["service-router:web:none", "service-splitter:web:none", "service-defaults:web:none", "service-resolver:web:none"], false, true),
        row("router removed, record without entry", Some(HTTP()),
            base_state().recorded(Kind::ServiceRouter, &ours(Kind::ServiceRouter, router.clone(), 9), GEN),
            &["service-router:web:none", "service-splitter:web:none", "service-defaults:web:none", "service-resolver:web:none"], false, false),
        row("router asked, record without entry", Some(with_router.clone()),
            base_state().recorded(Kind::ServiceRouter, &ours(Kind::ServiceRouter, router.clone(), 9), GEN),
            &["service-splitter:web:none", "service-defaults:web:none", "service-resolver:web:none", "service-router:web:create"], true, false),
        row("router asked and in place", Some(with_router.clone()), base_state().in_place(Kind::ServiceRouter, router.clone()),
            &["service-splitter:web:none", "service-defaults:web:none", "service-resolver:web:none", "service-router:web:none"], false, true),
        row("splitter asked: written after the resolver, before the router", Some(with_splitter.clone()), base_state(),
            &["service-router:web:none", "service-defaults:web:none", "service-resolver:web:none", "service-splitter:web:create"], true, false),
        row("splitter and router asked and in place", Some(json!({"defaults": {"Protocol": "http"}, "splitter": splitter, "router": router})),
            base_state().in_place(Kind::ServiceSplitter, splitter.clone()).in_place(Kind::ServiceRouter, router.clone()),
            &["service-defaults:web:none", "service-resolver:web:none", "service-splitter:web:none", "service-router:web:none"], false, true),
        row("splitter removed, ours: deleted first", Some(HTTP()), base_state().in_place(Kind::ServiceSplitter, splitter.clone()),
            &["service-router:web:none", "service-splitter:web:delete", "service-defaults:web:none", "service-resolver:web:none"], true, false),
        row("router and splitter removed: the router first", Some(HTTP()),
            base_state().in_place(Kind::ServiceSplitter, splitter.clone()).in_place(Kind::ServiceRouter, router.clone()),
            &["service-router:web:delete", "service-splitter:web:delete", "service-defaults:web:none", "service-resolver:web:none"], true, false),
        row("splitter removed, someone else's", Some(HTTP()),
            base_state().entry(Kind::ServiceSplitter, with_meta(Kind::ServiceSplitter, splitter.clone(), Value::Null)),
            &["service-router:web:none", "service-splitter:web:none", "service-defaults:web:none", "service-resolver:web:none"], false, true),
        row("entries without records", Some(HTTP()),
            State::default()
                .entry(Kind::ServiceDefaults, ours(Kind::ServiceDefaults, json!({"Protocol": "http"}), 10))
                .entry(Kind::ServiceResolver, ours(Kind::ServiceResolver, json!({}), 10)),
            &["service-router:web:none", "service-splitter:web:none", "service-defaults:web:none", "service-resolver:web:none"], false, false),
    ]
}

#[rustfmt::skip]
fn gateway_rows() -> Vec<Row> {
    let gw_a_linked = gateway("a", &[link("x")], 20);
    let gw_b_linked = gateway("b", &[link("x")], 21);
    vec![
        row("first link, gateway absent", Some(with_gw("a")), base_state(),
            &["service-router:web:none", "service-splitter:web:none", "service-defaults:web:none", "service-resolver:web:none", "terminating-gateway:a:link"], true, false),
        row("link in place", Some(with_gw("a")), base_state().gw(gw_a_linked.clone()).link_record(&gw_a_linked, None, GEN),
            &["service-router:web:none", "service-splitter:web:none", "service-defaults:web:none", "service-resolver:web:none", "terminating-gateway:a:none"], false, true),
        row("link present, no record", Some(with_gw("a")), base_state().gw(gw_a_linked.clone()),
            &["service-router:web:none", "service-splitter:web:none", "service-defaults:web:none", "service-resolver:web:none", "terminating-gateway:a:none!"], false, false),
        row("link present, no record, adopt", Some(json!({"defaults": {"Protocol": "http"}, "adopt": true, "terminating_gateway": {"Gateway": "a", "SNI": "x"}})),
            base_state().gw(gw_a_linked.clone()),
            &["service-router:web:none", "service-splitter:web:none", "service-defaults:web:none", "service-resolver:web:none", "terminating-gateway:a:none"], false, false),
        row("link changed", Some(with_gw("a")),
            base_state().gw(gateway("a", &[link("old")], 20)).link_record(&gateway("a", &[link("old")], 20), None, GEN - 1),
            &["service-router:web:none", "service-splitter:web:none", "service-defaults:web:none", "service-resolver:web:none", "terminating-gateway:a:link"], true, false),
        row("link as written for this generation", Some(with_gw("a")),
            base_state().gw(gateway("a", &[link("old")], 20)).link_record(&gateway("a", &[link("old")], 20), None, GEN),
            &["service-router:web:none", "service-splitter:web:none", "service-defaults:web:none", "service-resolver:web:none", "terminating-gateway:a:none"], false, true),
        row("gateway moved", Some(with_gw("b")), base_state().gw(gw_a_linked.clone()).link_record(&gw_a_linked, None, GEN),
            &["service-router:web:none", "service-splitter:web:none", "service-defaults:web:none", "service-resolver:web:none", "terminating-gateway:b:link", "terminating-gateway:a:unlink"], true, false),
        row("crash in the middle of a move", Some(with_gw("b")),
            base_state().gw(gw_a_linked.clone()).gw(gw_b_linked.clone()).link_record(&gw_b_linked, Some("a"), GEN),
            &["service-router:web:none", "service-splitter:web:none", "service-defaults:web:none", "service-resolver:web:none", "terminating-gateway:b:none", "terminating-gateway:a:unlink"], true, false),
        row("crash after the move, before the record", Some(with_gw("b")),
            base_state().gw(gateway("a", &[], 22)).gw(gw_b_linked.clone()).link_record(&gw_b_linked, Some("a"), GEN),
            &["service-router:web:none", "service-splitter:web:none", "service-defaults:web:none", "service-resolver:web:none", "terminating-gateway:b:none", "terminating-gateway:a:none"], false, false),
        row("link present in another gateway", Some(with_gw("b")), base_state().gw(gateway("c", &[link("x")], 30)),
            &["service-router:web:none", "service-splitter:web:none", "service-defaults:web:none", "service-resolver:web:none", "terminating-gateway:b:link"], true, false),
        row("link removed from base.json", Some(HTTP()), base_state().gw(gw_a_linked.clone()).link_record(&gw_a_linked, None, GEN),
            &["service-router:web:none", "service-splitter:web:none", "service-defaults:web:none", "service-resolver:web:none", "terminating-gateway:a:unlink"], true, false),
    ]
}

#[rustfmt::skip]
fn gone_rows() -> Vec<Row> {
    let router = router();
    let gw_a_linked = gateway("a", &[link("x")], 20);
    vec![
        row("gone, pruned", None,
            base_state().in_place(Kind::ServiceRouter, router.clone()).gw(gw_a_linked.clone()).link_record(&gw_a_linked, None, GEN),
            &["terminating-gateway:a:unlink", "service-router:web:delete", "service-splitter:web:none", "service-resolver:web:delete", "service-defaults:web:delete"], true, false),
        row("gone, pruned, with a splitter: router, splitter, resolver, defaults", None,
            base_state().in_place(Kind::ServiceRouter, router.clone()).in_place(Kind::ServiceSplitter, splitter()),
            &["service-router:web:delete", "service-splitter:web:delete", "service-resolver:web:delete", "service-defaults:web:delete"], true, false),
        row("gone, entry taken over by another tool", None,
            base_state().entry(Kind::ServiceResolver, with_meta(Kind::ServiceResolver, json!({}), json!({"managed-by": "terraform"}))),
            &["service-router:web:none", "service-splitter:web:none", "service-resolver:web:none", "service-defaults:web:delete"], true, false),
        row("gone, nothing left", None, State::default(), &[], false, true),
    ]
}

#[test]
fn plan_over_a_table_of_states() {
    let rows = rows();
    assert!(rows.len() >= 25, "{} rows", rows.len());
    for row in rows {
        let p = plan_of(row.spec.clone(), &row.state);
        assert_eq!(shape(&p), row.shape, "{}: {p:#?}", row.name);
        assert_eq!(
            p.writes_config(),
            row.writes_config,
            "{}: writes_config",
            row.name
        );
        assert_eq!(p.is_noop(), row.noop, "{}: is_noop {p:#?}", row.name);
        // Deterministic: the same state gives the same plan.
        assert_eq!(plan_of(row.spec.clone(), &row.state), p, "{}", row.name);
    }
}

#[test]
fn blocked_messages_name_the_owner_and_the_way_out() {
    let state = State::default().entry(
        Kind::ServiceDefaults,
        with_meta(
            Kind::ServiceDefaults,
            json!({}),
            entries::ownership_meta("other/base.json"),
        ),
    );
    let p = plan_of(Some(HTTP()), &state);
    let b = p.blocked().unwrap().blocked.as_ref().unwrap().to_string();
    assert_eq!(
        b,
        "service-defaults/web is managed by svc-handler for other/base.json; it is left unchanged"
    );

    let state = State::default().entry(
        Kind::ServiceDefaults,
        with_meta(Kind::ServiceDefaults, json!({}), Value::Null),
    );
    let b = plan_of(Some(HTTP()), &state)
        .blocked()
        .unwrap()
        .blocked
        .clone()
        .unwrap();
    assert!(b.to_string().contains("\"adopt\": true"), "{b}");

    let g = gateway("a", &[link("x")], 20);
    let spec = json!({"terminating_gateway": {"Gateway": "a"}});
    let b = plan_of(Some(spec), &State::default().gw(g))
        .blocked()
        .unwrap()
        .blocked
        .clone()
        .unwrap();
    assert!(
        b.to_string()
            .starts_with("terminating-gateway/a already links web"),
        "{b}"
    );
}

#[test]
fn a_move_records_its_intent_and_the_gateway_it_leaves() {
    let a = gateway("a", &[link("x")], 20);
    let state = base_state().gw(a.clone()).link_record(&a, None, GEN);
    let spec = json!({"terminating_gateway": {"Gateway": "b", "SNI": "x"}});
    let p = plan_of(Some(spec), &state);
    let linking = p.changes.iter().find(|c| c.name == "b").unwrap();
    let intent = linking
        .intent
        .as_ref()
        .expect("an intent before the first link");
    assert_eq!(intent.name, "b");
    assert_eq!(intent.previous_gateway.as_deref(), Some("a"));
    assert_eq!(intent.modify_index, 0);
    assert_eq!(p.gateway_record, RecordOp::Write);
    // The link into a gateway it is already recorded in needs no intent.
    let p = plan_of(
        Some(json!({"terminating_gateway": {"Gateway": "a", "SNI": "y"}})),
        &state,
    );
    assert!(p.changes.iter().all(|c| c.intent.is_none()), "{p:#?}");
}

#[test]
fn drift_is_a_write_over_what_this_generation_recorded() {
    let state = base_state().entry(
        Kind::ServiceDefaults,
        ours(Kind::ServiceDefaults, json!({"Protocol": "grpc"}), 11),
    );
    let p = plan_of(Some(HTTP()), &state);
    assert!(p.changes[2].drift, "{p:#?}");
    // A new generation asking for something else is a change, not drift.
    let mut older = base_state();
    older
        .0
        .records
        .values_mut()
        .for_each(|r| r.generation = GEN - 1);
    let p = plan_of(Some(json!({"defaults": {"Protocol": "http2"}})), &older);
    assert_eq!(p.changes[2].action, Action::Update);
    assert!(!p.changes[2].drift, "{p:#?}");
}

#[test]
fn in_sync_needs_a_noop_plan_and_observed_applied_for_this_generation() {
    let id = web();
    let t = Target {
        id: &id,
        base_key: KEY,
    };
    let mut state = base_state();
    state.0.generation = Some(GEN);
    let p = plan_of(Some(HTTP()), &state);
    let observed = |status: Status, generation: u64, objects: Objects| Observed {
        status,
        generation,
        message: None,
        step: None,
        objects,
        updated_at: String::new(),
        duration_ms: 0,
        holder: String::new(),
        base_key: KEY.into(),
        retry: false,
        history: Vec::new(),
    };
    let objects = p.objects(&t);
    assert_eq!(objects.defaults.as_ref().unwrap().modify_index, 10);
    assert!(objects.router.is_none() && objects.terminating_gateway.is_none());
    assert!(p.in_sync(&t, Some(&observed(Status::Applied, GEN, objects.clone()))));
    assert!(!p.in_sync(&t, Some(&observed(Status::Error, GEN, objects.clone()))));
    assert!(!p.in_sync(
        &t,
        Some(&observed(Status::Applied, GEN - 1, objects.clone()))
    ));
    assert!(!p.in_sync(
        &t,
        Some(&observed(Status::Applied, GEN, Objects::default()))
    ));
    assert!(!p.in_sync(&t, None));

    let gone = plan_with(None, &State::default(), true);
    assert!(gone.in_sync(&t, None));
    let kept = plan_with(None, &base_state(), false);
    assert!(kept.changes.is_empty() && kept.forget && !kept.in_sync(&t, None));
}

#[test]
fn the_write_budget_suppresses_and_reports_what_consul_stored_differently() {
    let spec = Some(json!({"defaults": {"Protocol": "grpc"}}));
    let p = plan_of(spec.clone(), &base_state());
    assert!(
        p.changes[2].suppressed && p.changes[2].stuck.is_none(),
        "{p:#?}"
    );
    assert_eq!(p.stops_at(), None);
    let p = plan_of(spec.clone(), &differs(base_state(), Kind::ServiceDefaults));
    let (status, message) = p.stops_at().expect("stops at the defaults");
    assert_eq!(status, Status::Error);
    assert!(
        message.starts_with("service-defaults/web: Consul stored it differently"),
        "{message}"
    );
    assert!(message.contains("Protocol: expected"), "{message}");
    // observed.json telling the same is settled; another message is not.
    let mut o = Observed {
        status: Status::Error,
        generation: GEN,
        message: Some(message.clone()),
        step: None,
        objects: Objects::default(),
        updated_at: String::new(),
        duration_ms: 0,
        holder: String::new(),
        base_key: KEY.into(),
        retry: false,
        history: Vec::new(),
    };
    assert_eq!(p.settled(Some(&o)), Some(Status::Error));
    o.retry = true;
    assert_eq!(p.settled(Some(&o)), None, "a transient error is retried");
    o.retry = false;
    o.message = Some("other".into());
    assert_eq!(p.settled(Some(&o)), None);
    // A refusal by Consul is final for its generation, whatever the plan.
    o.status = Status::Invalid;
    let writes = plan_of(spec, &older(base_state()));
    assert_eq!(writes.settled(Some(&o)), Some(Status::Invalid));
    o.generation = GEN - 1;
    assert_eq!(writes.settled(Some(&o)), None, "a new generation is tried");
}

#[test]
fn a_lost_race_is_planned_again_from_the_fresh_entry() {
    let id = web();
    let t = Target {
        id: &id,
        base_key: KEY,
    };
    let s = parse(HTTP());
    let fresh = with_meta(
        Kind::ServiceDefaults,
        json!({"Protocol": "tcp"}),
        json!({"managed-by": "terraform"}),
    );
    let c = entry_change(
        &t,
        Kind::ServiceDefaults,
        s.body(Kind::ServiceDefaults),
        spec::Adopt::No,
        Some(&fresh),
        None,
        GEN,
    );
    assert!(matches!(c.blocked, Some(Blocked::Managed { .. })), "{c:#?}");
    let equal = ours(Kind::ServiceDefaults, json!({"Protocol": "http"}), 12);
    let c = entry_change(
        &t,
        Kind::ServiceDefaults,
        s.body(Kind::ServiceDefaults),
        spec::Adopt::No,
        Some(&equal),
        None,
        GEN,
    );
    assert_eq!((c.action, c.record), (Action::None, RecordOp::Write));
}

#[test]
fn adopting_never_drops_fields_someone_else_wrote_unless_told_to_replace() {
    // A hand-made resolver: no mark, fields of its own, a Meta of its own.
    let hand_made = with_meta(
        Kind::ServiceResolver,
        json!({"ConnectTimeout": "15s", "DefaultSubset": "v1",
               "Subsets": {"v1": {"Filter": "Service.Meta.version == v1"},
                           "v2": {"Filter": "Service.Meta.version == v2"}}}),
        json!({"owner": "ops"}),
    );
    let state = State::default()
        .in_place(Kind::ServiceDefaults, json!({"Protocol": "http"}))
        .entry(Kind::ServiceResolver, hand_made.clone());
    let resolver = |p: &Plan| {
        p.changes
            .iter()
            .find(|c| c.kind == Kind::ServiceResolver)
            .cloned()
            .expect("a resolver change")
    };

    // adopt: true without a resolver body would empty it: conflict, named.
    let keep = json!({"defaults": {"Protocol": "http"}, "adopt": true});
    let c = resolver(&plan_of(Some(keep), &state));
    match &c.blocked {
        Some(Blocked::WouldDrop { fields, .. }) => assert_eq!(
            fields,
            &["ConnectTimeout", "DefaultSubset", "Meta.owner", "Subsets"]
        ),
        other => panic!("{other:?}"),
    }
    let message = c.blocked.as_ref().unwrap().to_string();
    assert!(message.contains("\"adopt\": \"replace\""), "{message}");

    // Part of a map kept, part dropped: the dropped path is named.
    let partial = json!({"defaults": {"Protocol": "http"}, "adopt": true,
        "resolver": {"ConnectTimeout": "15s", "DefaultSubset": "v1",
                     "Subsets": {"v1": {"Filter": "Service.Meta.version == v1"}}}});
    let c = resolver(&plan_of(Some(partial), &state));
    match &c.blocked {
        Some(Blocked::WouldDrop { fields, .. }) => {
            assert_eq!(fields, &["Meta.owner", "Subsets.v2"])
        }
        other => panic!("{other:?}"),
    }

    // "replace": taken over, fields dropped as asked.
    let replace = json!({"defaults": {"Protocol": "http"}, "adopt": "replace"});
    let c = resolver(&plan_of(Some(replace), &state));
    assert_eq!(
        (c.blocked.clone(), c.action),
        (None, Action::Update),
        "{c:#?}"
    );

    // Every field in base.json (a changed value is an update, not a drop).
    let all = json!({"defaults": {"Protocol": "http"}, "adopt": true,
        "resolver": {"ConnectTimeout": "20s", "DefaultSubset": "v1",
                     "Subsets": {"v1": {"Filter": "Service.Meta.version == v1"},
                                 "v2": {"Filter": "Service.Meta.version == v2"}}}});
    let mut owned_meta = state;
    owned_meta
        .0
        .entries
        .get_mut(&Kind::ServiceResolver)
        .unwrap()["Meta"] = Value::Null;
    let c = resolver(&plan_of(Some(all), &owned_meta));
    assert_eq!(
        (c.blocked.clone(), c.action),
        (None, Action::Update),
        "{c:#?}"
    );

    // Without adopt it stays the plain ownership conflict.
    let c = resolver(&plan_of(Some(HTTP()), &owned_meta));
    assert!(
        matches!(c.blocked, Some(Blocked::Unmarked { .. })),
        "{c:#?}"
    );
}

#[test]
fn a_scope_consul_refuses_is_invalid_and_its_deletion_only_forgets() {
    let mut state = base_state();
    state.0.entries.clear();
    state.0.unsupported = Some(
        "config.get: Consul answered 400: Bad request: Invalid query parameter: \"ns\" - \
         Namespaces are a Consul Enterprise feature"
            .into(),
    );
    let p = plan_of(Some(HTTP()), &state);
    let m = p.preflight_message().expect("refused before any write");
    assert!(
        m.contains("needs Consul Enterprise") && m.contains("\"ns\""),
        "{m}"
    );
    assert!(!p.violations_depend_on_others, "final");
    assert_eq!(p.config_writes().count(), 0);
    let gone = plan_of(None, &state);
    assert!(gone.forget, "{gone:#?}");
    assert!(!gone.changes.iter().any(|c| c.action.writes()), "{gone:#?}");
}

#[test]
fn a_first_link_is_not_drift_though_its_intent_is_recorded() {
    let id = web();
    let t = Target {
        id: &id,
        base_key: KEY,
    };
    let spec = parse(json!({"terminating_gateway": {"Gateway": "b", "SNI": "x"}}));
    let want = spec.terminating_gateway.clone().unwrap();
    let first = link_change(&t, &want, false, None, None, GEN);
    let intent = first
        .intent
        .clone()
        .expect("an intent before the first link");
    // As the gateway's committer plans it again, with the intent queued.
    let again = link_change(&t, &want, false, None, Some(&intent), GEN);
    assert!(again.action.writes() && !again.drift, "{again:#?}");
    // A link this generation verified, then taken out by hand: drift.
    let mut verified = intent;
    verified.verified_at = "2026-11-28T00:00:00Z".into();
    let gw = gateway("b", &[], 30);
    let lost = link_change(&t, &want, false, Some(&gw), Some(&verified), GEN);
    assert!(lost.action.writes() && lost.drift, "{lost:#?}");
}
