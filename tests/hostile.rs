//! Hostile input against a running daemon: malformed base.json bodies and key
//! paths. Each gets an `invalid` observed.json naming the problem (where there
//! is a place to write one), the daemon stays up, no config entry is written,
//! and a well-formed service next to them is unaffected.

mod support;

use std::time::Duration;

use support::daemon::DaemonProc;
use support::{eventually, invalid, prefix, shared};
use svc_handler::consul::{Client, QueryOptions, TxnKvOp, TxnOutcome};
use svc_handler::keys::{Layout, ServiceId};
use svc_handler::records::{Observed, Status};

/// The shared table of invalid bodies, each as (service name, body, what the
/// message must name).
fn bodies(tag: &str) -> Vec<(String, Vec<u8>, &'static str)> {
    invalid::bodies()
        .into_iter()
        .map(|c| (format!("{}-{tag}", c.name), c.body, c.names))
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
    let good_key = layout.observed_key(&good);
    assert!(
        eventually(Duration::from_secs(30), || async {
            matches!(observed(&client, &good_key).await, Some(o) if o.status == Status::Applied)
        })
        .await
    );
    let good_obs = observed(&client, &good_key).await.unwrap();
    let writes_before = ok_writes(&d).await;

    let cases = bodies(&tag);
    assert!(cases.len() >= 40, "{} bodies", cases.len());
    for (name, body, _) in &cases {
        let id = ServiceId::new("default", "default", name).unwrap();
        client.kv_put(&layout.base_key(&id), body).await.unwrap();
    }
    let keys = bad_keys(&layout, &tag);
    for (key, _) in &keys {
        client.kv_put(key, b"{}").await.unwrap();
    }
    check_bodies(&client, &layout, &cases, &d).await;
    check_bad_keys(&client, &layout, &keys).await;

    // Alive, nothing written, the good service untouched.
    assert_eq!(d.readyz().await, Some(200), "{}", d.log_text());
    assert_eq!(
        ok_writes(&d).await,
        writes_before,
        "config writes for hostile input"
    );
    let invalid_count = d.metric(r#"svc_handler_services{status="invalid"}"#).await;
    assert_eq!(invalid_count as usize, cases.len());
    assert_eq!(
        observed(&client, &good_key).await.unwrap(),
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
    check_size_limit(&client, &layout, &tag).await;
}

/// Keys with a `.` or `..` segment (only a transaction can write them):
/// URLs drop such segments, so a report written for `web/./base.json` used
/// to land on `web`'s observed.json, and `api/../base.json` made a phantom
/// `api`. They are logged as outside the layout and touch nothing else.
#[tokio::test]
async fn dot_segment_keys_touch_no_other_service() {
    let agent = shared();
    let client = agent.client();
    let p = prefix("dots");
    let layout = Layout::new(&p).unwrap();
    let tag = p.rsplit('/').next().unwrap().to_string();
    let d = DaemonProc::start(&agent.url(), &p, "dots", &[], &[]);
    d.wait_ready(Duration::from_secs(30)).await;
    let web = ServiceId::new("default", "default", &format!("web-{tag}")).unwrap();
    let api = ServiceId::new("default", "default", &format!("api-{tag}")).unwrap();
    let body = br#"{"defaults": {"Protocol": "http"}}"#;
    client.kv_put(&layout.base_key(&web), body).await.unwrap();
    let web_key = layout.observed_key(&web);
    let applied = eventually(Duration::from_secs(30), || async {
        matches!(observed(&client, &web_key).await, Some(o) if o.status == Status::Applied)
    })
    .await;
    assert!(applied, "{}", d.log_text());
    let before = observed(&client, &web_key).await.unwrap();

    let desired = layout.desired_prefix();
    let dotted = [
        format!("{desired}default/default/{}/./base.json", web.name),
        format!("{desired}default/default/{}/../base.json", api.name),
    ];
    let ops: Vec<TxnKvOp> = dotted
        .iter()
        .map(|key| TxnKvOp::Set {
            key: key.clone(),
            value: br#"{"defaults": {"Protocol": "grpc"}}"#.to_vec(),
        })
        .collect();
    let outcome = client.txn(&ops).await.unwrap();
    assert!(matches!(outcome, TxnOutcome::Committed(_)), "{outcome:?}");
    let logged = eventually(Duration::from_secs(30), || async {
        let log = d.log_text();
        dotted.iter().all(|k| log.contains(k.as_str()))
    })
    .await;
    assert!(logged, "{}", d.log_text());
    assert_eq!(
        observed(&client, &web_key).await.unwrap(),
        before,
        "web's observed.json was written for a key that is not web's"
    );

    // A later change of web still lands, and nothing was written beside it.
    client
        .kv_put(
            &layout.base_key(&web),
            br#"{"defaults": {"Protocol": "http2"}}"#,
        )
        .await
        .unwrap();
    let reapplied = eventually(Duration::from_secs(30), || async {
        matches!(observed(&client, &web_key).await,
            Some(o) if o.status == Status::Applied && o.generation > before.generation)
    })
    .await;
    assert!(reapplied, "{}", d.log_text());
    let (all, _) = client
        .kv_list(&layout.observed_prefix(), &QueryOptions::consistent())
        .await
        .unwrap();
    let keys: Vec<&str> = all.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, vec![web_key.as_str()], "observed.json beside web's");
    assert!(!d.log_text().contains("panicked"), "{}", d.log_text());
}

/// observed.json at `key`, if there is one./// observed.json at `key`, if there is one.
async fn observed(client: &Client, key: &str) -> Option<Observed> {
    client
        .kv_get(key, &QueryOptions::consistent())
        .await
        .unwrap()
        .0
        .map(|p| serde_json::from_slice::<Observed>(&p.value).unwrap())
}

/// Config entries written successfully so far, from `/metrics`.
async fn ok_writes(d: &DaemonProc) -> f64 {
    d.metrics()
        .await
        .iter()
        .filter(|(k, _)| {
            k.starts_with("svc_handler_object_writes_total") && k.contains("result=\"ok\"")
        })
        .map(|(_, v)| v)
        .sum::<f64>()
}

/// Key paths outside the layout, each with what its observed.json must name
/// (`None`: a key that is not a base.json, which gets none).
fn bad_keys(layout: &Layout, tag: &str) -> Vec<(String, Option<&'static str>)> {
    let desired = layout.desired_prefix();
    vec![
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
    ]
}

/// Each body gets an `invalid` observed.json naming its problem.
async fn check_bodies(
    client: &Client,
    layout: &Layout,
    cases: &[(String, Vec<u8>, &'static str)],
    d: &DaemonProc,
) {
    for (name, _, needle) in cases {
        let id = ServiceId::new("default", "default", name).unwrap();
        let key = layout.observed_key(&id);
        let got = eventually(Duration::from_secs(30), || async {
            observed(client, &key).await.is_some()
        })
        .await;
        assert!(got, "{name}: no observed.json\n{}", d.log_text());
        let o = observed(client, &key).await.unwrap();
        assert_eq!(o.status, Status::Invalid, "{name}: {o:?}");
        let msg = o.message.unwrap_or_default();
        assert!(
            msg.to_lowercase().contains(&needle.to_lowercase()),
            "{name}: {msg:?} should name {needle:?}"
        );
    }
}

/// Each bad key with a place for one gets an `invalid` observed.json naming
/// the problem.
async fn check_bad_keys(client: &Client, layout: &Layout, keys: &[(String, Option<&str>)]) {
    let desired = layout.desired_prefix();
    let observed_prefix = layout.observed_prefix();
    for (key, needle) in keys {
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
}

/// At the 512 KiB limit a document is still fine; over it Consul refuses to store it.
async fn check_size_limit(client: &Client, layout: &Layout, tag: &str) {
    let at = ServiceId::new("default", "default", &format!("at-limit-{tag}")).unwrap();
    let mut doc = br#"{"adopt": false}"#.to_vec();
    doc.resize(512 * 1024, b' ');
    client.kv_put(&layout.base_key(&at), &doc).await.unwrap();
    let key = layout.observed_key(&at);
    assert!(
        eventually(Duration::from_secs(30), || async {
            matches!(observed(client, &key).await, Some(o) if o.status == Status::Applied)
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
