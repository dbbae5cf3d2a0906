//! Hostile input against a running daemon: malformed base.json bodies and key
//! paths. Each gets an `invalid` observed.json naming the problem (where there
//! is a place to write one), the daemon stays up, no config entry is written,
//! and a well-formed service next to them is unaffected.

mod support;

use std::time::Duration;

use support::daemon::DaemonProc;
use support::{eventually, prefix, shared};
use svc_handler::consul::QueryOptions;
use svc_handler::keys::{Layout, ServiceId};
use svc_handler::records::{Observed, Status};

fn bodies(tag: &str) -> Vec<(String, Vec<u8>, &'static str)> {
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let deep_obj = format!("{}{}", r#"{"a":"#.repeat(200), "}".repeat(200));
    let long_protocol = format!(
        r#"{{"defaults": {{"Protocol": "{}"}}}}"#,
        "h".repeat(400_000)
    );
    let cases: Vec<(&str, Vec<u8>, &'static str)> = vec![
        ("truncated", b"{\"defaults\": {".to_vec(), "line 1"),
        ("lone-brace", b"}".to_vec(), "line 1"),
        ("null-doc", b"null".to_vec(), "object"),
        ("bool-doc", b"true".to_vec(), "object"),
        ("number-doc", b"123".to_vec(), "object"),
        ("string-doc", b"\"web\"".to_vec(), "object"),
        ("array-doc", b"[]".to_vec(), "object"),
        ("trailing", b"{} x".to_vec(), "line 1"),
        ("comment", b"{/* c */}".to_vec(), "line 1"),
        ("single-quotes", b"{'adopt': true}".to_vec(), "line 1"),
        ("nan", b"{\"adopt\": NaN}".to_vec(), "line 1"),
        ("empty", b"".to_vec(), "empty"),
        ("whitespace", b"  \n\t ".to_vec(), "empty"),
        ("unknown-top", br#"{"router2": {}}"#.to_vec(), "router2"),
        ("snake-top", br#"{"Defaults": {}}"#.to_vec(), "Defaults"),
        (
            "defaults-string",
            br#"{"defaults": "http"}"#.to_vec(),
            "$.defaults",
        ),
        (
            "defaults-array",
            br#"{"defaults": []}"#.to_vec(),
            "$.defaults",
        ),
        (
            "resolver-number",
            br#"{"resolver": 5}"#.to_vec(),
            "$.resolver",
        ),
        ("router-bool", br#"{"router": true}"#.to_vec(), "$.router"),
        (
            "tgw-string",
            br#"{"terminating_gateway": "egress"}"#.to_vec(),
            "terminating_gateway",
        ),
        ("adopt-string", br#"{"adopt": "true"}"#.to_vec(), "$.adopt"),
        ("adopt-number", br#"{"adopt": 1}"#.to_vec(), "$.adopt"),
        (
            "kind",
            br#"{"defaults": {"Kind": "service-defaults"}}"#.to_vec(),
            "Kind",
        ),
        (
            "name",
            br#"{"resolver": {"Name": "other"}}"#.to_vec(),
            "Name",
        ),
        ("meta", br#"{"router": {"Meta": {}}}"#.to_vec(), "Meta"),
        (
            "namespace",
            br#"{"defaults": {"Namespace": "team"}}"#.to_vec(),
            "Namespace",
        ),
        (
            "partition-snake",
            br#"{"resolver": {"partition": "p"}}"#.to_vec(),
            "partition",
        ),
        (
            "modify-index",
            br#"{"defaults": {"ModifyIndex": 3}}"#.to_vec(),
            "ModifyIndex",
        ),
        (
            "snake-field",
            br#"{"resolver": {"connect_timeout": "5s"}}"#.to_vec(),
            "ConnectTimeout",
        ),
        (
            "protocol-number",
            br#"{"defaults": {"Protocol": 80}}"#.to_vec(),
            "Protocol",
        ),
        (
            "protocol-unknown",
            br#"{"defaults": {"Protocol": "udp"}}"#.to_vec(),
            "Protocol",
        ),
        ("protocol-huge", long_protocol.into_bytes(), "Protocol"),
        (
            "timeout-number",
            br#"{"resolver": {"ConnectTimeout": 5}}"#.to_vec(),
            "ConnectTimeout",
        ),
        (
            "timeout-word",
            br#"{"resolver": {"ConnectTimeout": "five"}}"#.to_vec(),
            "ConnectTimeout",
        ),
        (
            "subsets-array",
            br#"{"resolver": {"Subsets": [1]}}"#.to_vec(),
            "Subsets",
        ),
        (
            "routes-object",
            br#"{"router": {"Routes": {"a": 1}}}"#.to_vec(),
            "Routes",
        ),
        (
            "routes-strings",
            br#"{"router": {"Routes": ["x"]}}"#.to_vec(),
            "Routes",
        ),
        (
            "tgw-no-gateway",
            br#"{"terminating_gateway": {"SNI": "a"}}"#.to_vec(),
            "Gateway",
        ),
        (
            "tgw-bad-gateway",
            br#"{"terminating_gateway": {"Gateway": "no/slash"}}"#.to_vec(),
            "Gateway",
        ),
        (
            "tgw-number-sni",
            br#"{"terminating_gateway": {"Gateway": "g", "SNI": 7}}"#.to_vec(),
            "SNI",
        ),
        (
            "tgw-extra",
            br#"{"terminating_gateway": {"Gateway": "g", "Port": 1}}"#.to_vec(),
            "Port",
        ),
        (
            "dup-top",
            br#"{"adopt": true, "adopt": true}"#.to_vec(),
            "duplicate",
        ),
        (
            "dup-nested",
            br#"{"resolver": {"Subsets": {"a": {}, "a": {}}}}"#.to_vec(),
            "duplicate",
        ),
        (
            "non-utf8",
            b"{\"defaults\": {\"Protocol\": \"h\xc3\x28\"}}".to_vec(),
            "UTF-8",
        ),
        ("deep-array", deep.into_bytes(), "deep"),
        ("deep-object", deep_obj.into_bytes(), "deep"),
    ];
    cases
        .into_iter()
        .map(|(n, b, needle)| (format!("{n}-{tag}"), b, needle))
        .collect()
}

#[tokio::test]
async fn hostile_bodies_and_keys_are_invalid_and_harmless() {
    let agent = shared();
    let client = agent.client();
    let p = prefix("hostile");
    let layout = Layout::new(&p).unwrap();
    let tag = p.rsplit('/').next().unwrap().to_string();
    let d = DaemonProc::start(&agent.url(), &p, "hostile", &[], &[]);
    d.wait_ready(Duration::from_secs(30)).await;

    let good = ServiceId::new("default", "default", &format!("good-{tag}")).unwrap();
    client
        .kv_put(
            &layout.base_key(&good),
            br#"{"defaults": {"Protocol": "http"}}"#,
        )
        .await
        .unwrap();
    let obs_of = |id: ServiceId| {
        let (c, key) = (client.clone(), layout.observed_key(&id));
        async move {
            c.kv_get(&key, &QueryOptions::consistent())
                .await
                .unwrap()
                .0
                .map(|p| serde_json::from_slice::<Observed>(&p.value).unwrap())
        }
    };
    assert!(
        eventually(Duration::from_secs(30), || async {
            matches!(obs_of(good.clone()).await, Some(o) if o.status == Status::Applied)
        })
        .await
    );
    let good_obs = obs_of(good.clone()).await.unwrap();
    let writes_before = d
        .metrics()
        .await
        .iter()
        .filter(|(k, _)| {
            k.starts_with("svc_handler_object_writes_total") && k.contains("result=\"ok\"")
        })
        .map(|(_, v)| v)
        .sum::<f64>();

    let cases = bodies(&tag);
    assert!(cases.len() >= 40, "{} bodies", cases.len());
    for (name, body, _) in &cases {
        let id = ServiceId::new("default", "default", name).unwrap();
        client.kv_put(&layout.base_key(&id), body).await.unwrap();
    }
    // Key paths outside the layout.
    let desired = layout.desired_prefix();
    let bad_keys = [
        (
            format!("{desired}default/default/Bad Name!/base.json"),
            Some("service name"),
        ),
        (
            format!("{desired}default/default/a.b-{tag}/base.json"),
            Some("service name"),
        ),
        (
            format!("{desired}default/default/{}/base.json", "x".repeat(64)),
            Some("63"),
        ),
        (
            format!("{desired}default/default/-lead-{tag}/base.json"),
            Some("service name"),
        ),
        (
            format!("{desired}default/default/w\u{e9}b-{tag}/base.json"),
            Some("service name"),
        ),
        (
            format!("{desired}default/team space/web-{tag}/base.json"),
            Some("namespace"),
        ),
        (
            format!("{desired}part!/default/web-{tag}/base.json"),
            Some("partition"),
        ),
        (format!("{desired}default/web-{tag}/base.json"), Some("")),
        (
            format!("{desired}default/default/web-{tag}/extra/base.json"),
            Some(""),
        ),
        (
            format!("{desired}default/default/web-{tag}/notes.txt"),
            None,
        ),
    ];
    for (key, _) in &bad_keys {
        client.kv_put(key, b"{}").await.unwrap();
    }

    for (name, _, needle) in &cases {
        let id = ServiceId::new("default", "default", name).unwrap();
        let got = eventually(Duration::from_secs(30), || async {
            obs_of(id.clone()).await.is_some()
        })
        .await;
        assert!(got, "{name}: no observed.json\n{}", d.log_text());
        let o = obs_of(id.clone()).await.unwrap();
        assert_eq!(o.status, Status::Invalid, "{name}: {o:?}");
        let msg = o.message.unwrap_or_default();
        assert!(
            msg.to_lowercase().contains(&needle.to_lowercase()),
            "{name}: {msg:?} should name {needle:?}"
        );
    }
    let observed_prefix = layout.observed_prefix();
    for (key, needle) in &bad_keys {
        let Some(needle) = needle else { continue };
        let okey = key
            .replacen(&desired, &observed_prefix, 1)
            .replace("/base.json", "/observed.json");
        let got = eventually(Duration::from_secs(30), || async {
            client
                .kv_get(&okey, &QueryOptions::default())
                .await
                .unwrap()
                .0
                .is_some()
        })
        .await;
        assert!(got, "{key}: no observed.json at {okey}");
        let o: Observed = serde_json::from_slice(
            &client
                .kv_get(&okey, &QueryOptions::default())
                .await
                .unwrap()
                .0
                .unwrap()
                .value,
        )
        .unwrap();
        assert_eq!(o.status, Status::Invalid);
        assert!(
            o.message.as_deref().unwrap_or("").contains(needle),
            "{key}: {:?}",
            o.message
        );
    }

    // Alive, nothing written, the good service untouched.
    assert_eq!(d.readyz().await, Some(200), "{}", d.log_text());
    let writes_after = d
        .metrics()
        .await
        .iter()
        .filter(|(k, _)| {
            k.starts_with("svc_handler_object_writes_total") && k.contains("result=\"ok\"")
        })
        .map(|(_, v)| v)
        .sum::<f64>();
    assert_eq!(
        writes_after, writes_before,
        "config writes for hostile input"
    );
    let invalid_count = d.metric(r#"svc_handler_services{status="invalid"}"#).await;
    assert_eq!(invalid_count as usize, cases.len());
    assert_eq!(
        obs_of(good.clone()).await.unwrap(),
        good_obs,
        "the good service was disturbed"
    );
    for (name, _, _) in &cases {
        assert!(client
            .config_get("service-defaults", name, &QueryOptions::default())
            .await
            .unwrap()
            .0
            .is_none());
    }

    // At the 512 KiB limit a document is still fine; over it Consul refuses to store it.
    let at = ServiceId::new("default", "default", &format!("at-limit-{tag}")).unwrap();
    let mut doc = br#"{"adopt": false}"#.to_vec();
    doc.resize(512 * 1024, b' ');
    client.kv_put(&layout.base_key(&at), &doc).await.unwrap();
    assert!(
        eventually(Duration::from_secs(30), || async {
            matches!(obs_of(at.clone()).await, Some(o) if o.status == Status::Applied)
        })
        .await
    );
    doc.push(b' ');
    let e = client
        .kv_put(&layout.base_key(&at), &doc)
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(413), "{e}");
}
