//! The Consul client against a real Consul agent: every operation, checked by
//! its effect in Consul.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::{eventually, prefix, shared};
use svc_handler::consul::{
    Client, ConsulError, QueryOptions, SessionBehavior, SessionRequest, TxnKvOp, TxnOutcome,
};

fn client() -> Client {
    shared().client()
}

fn session_req(name: &str) -> SessionRequest {
    SessionRequest {
        name: name.into(),
        ttl: Some(Duration::from_secs(15)),
        lock_delay: Some(Duration::from_millis(1)),
        behavior: SessionBehavior::Release,
        node_checks: Some(vec![]),
        node: None,
    }
}

#[tokio::test]
async fn kv_put_get_list_keys_delete() {
    let c = client();
    let p = prefix("kv-basic");
    let bin: Vec<u8> = (0u8..=255).collect();
    c.kv_put(&format!("{p}/a"), b"one").await.unwrap();
    c.kv_put(&format!("{p}/dir/b"), &bin).await.unwrap();
    c.kv_put(&format!("{p}/dir/sub/c"), b"").await.unwrap();
    c.kv_put(&format!("{p}/odd key?#%"), b"x").await.unwrap();

    let (a, meta) = c
        .kv_get(&format!("{p}/a"), &QueryOptions::consistent())
        .await
        .unwrap();
    let a = a.expect("a exists");
    assert_eq!(a.value, b"one");
    assert_eq!(a.key, format!("{p}/a"));
    assert!(a.modify_index > 0 && a.create_index == a.modify_index);
    assert!(meta.index >= a.modify_index);
    assert!(meta.known_leader);

    let (b, _) = c
        .kv_get(&format!("{p}/dir/b"), &QueryOptions::default())
        .await
        .unwrap();
    assert_eq!(b.unwrap().value, bin, "raw bytes survive the round trip");
    let (odd, _) = c
        .kv_get(&format!("{p}/odd key?#%"), &QueryOptions::default())
        .await
        .unwrap();
    assert_eq!(odd.unwrap().value, b"x", "keys are escaped");

    let (missing, meta) = c
        .kv_get(&format!("{p}/nope"), &QueryOptions::default())
        .await
        .unwrap();
    assert!(missing.is_none());
    assert!(meta.index > 0, "a 404 still carries X-Consul-Index");

    let (list, _) = c
        .kv_list(&format!("{p}/dir/"), &QueryOptions::default())
        .await
        .unwrap();
    let keys: Vec<_> = list.iter().map(|k| k.key.clone()).collect();
    assert_eq!(keys, vec![format!("{p}/dir/b"), format!("{p}/dir/sub/c")]);
    assert_eq!(list[1].value, b"");

    let (all, _) = c
        .kv_keys(&format!("{p}/"), None, &QueryOptions::default())
        .await
        .unwrap();
    assert_eq!(all.len(), 4);
    let (top, _) = c
        .kv_keys(&format!("{p}/"), Some("/"), &QueryOptions::default())
        .await
        .unwrap();
    assert_eq!(
        top,
        vec![
            format!("{p}/a"),
            format!("{p}/dir/"),
            format!("{p}/odd key?#%")
        ]
    );

    c.kv_delete(&format!("{p}/a")).await.unwrap();
    c.kv_delete(&format!("{p}/a")).await.unwrap();
    let (gone, _) = c
        .kv_get(&format!("{p}/a"), &QueryOptions::default())
        .await
        .unwrap();
    assert!(gone.is_none());

    c.kv_delete_tree(&format!("{p}/")).await.unwrap();
    let (rest, _) = c
        .kv_list(&format!("{p}/"), &QueryOptions::default())
        .await
        .unwrap();
    assert!(rest.is_empty(), "delete_tree removed {rest:?}");
}

/// A listing asks for gzip; Consul 1.8.7 compresses its answers, and the
/// client decodes them: the listing is whole, its wire size a fraction of it.
/// One asked for plain comes plain.
/// And a keys-only listing's index is the highest under its prefix, a
/// deleted key's tombstone included (what the watch's descent relies on).
#[tokio::test]
async fn answers_are_gzip_compressed_and_a_listing_index_covers_only_its_prefix() {
    let c = client();
    let p = prefix("gzip");
    for i in 0..60 {
        c.kv_put(
            &format!("{p}/desired/default/default/svc-{i}/base.json"),
            b"{}",
        )
        .await
        .unwrap();
    }
    let folder = format!("{p}/desired/default/default/");
    let (keys, meta) = c
        .kv_keys(&folder, Some("/"), &QueryOptions::consistent())
        .await
        .unwrap();
    assert_eq!(keys.len(), 60, "{keys:?}");
    assert!(keys.contains(&format!("{folder}svc-7/")));
    assert!(
        meta.wire_bytes > 0 && meta.wire_bytes * 4 < meta.body_bytes,
        "{} bytes on the wire for {} decoded",
        meta.wire_bytes,
        meta.body_bytes
    );
    // Asked for plain (a listing known to be small): the same answer,
    // uncompressed on the wire.
    let (plain, meta) = c
        .kv_keys(&folder, Some("/"), &QueryOptions::consistent().plain())
        .await
        .unwrap();
    assert_eq!(plain, keys);
    assert_eq!(meta.wire_bytes, meta.body_bytes);

    let one = format!("{folder}svc-1");
    let (_, before) = c
        .kv_keys(&one, Some("/"), &QueryOptions::consistent())
        .await
        .unwrap();
    c.kv_delete(&format!("{folder}svc-12/base.json"))
        .await
        .unwrap();
    // Elsewhere: moves the table's index, not this prefix's.
    c.kv_put(&format!("{p}/elsewhere"), b"x").await.unwrap();
    let (_, elsewhere) = c
        .kv_get(&format!("{p}/elsewhere"), &QueryOptions::consistent())
        .await
        .unwrap();
    let (keys, after) = c
        .kv_keys(&one, Some("/"), &QueryOptions::consistent())
        .await
        .unwrap();
    assert!(!keys.contains(&format!("{folder}svc-12/")));
    assert!(after.index > before.index, "the tombstone counts");
    assert!(after.index < elsewhere.index, "a write elsewhere does not");
    let (_, untouched) = c
        .kv_keys(
            &format!("{folder}svc-2"),
            Some("/"),
            &QueryOptions::consistent(),
        )
        .await
        .unwrap();
    assert!(untouched.index < after.index);
}

#[tokio::test]
async fn kv_cas_refuses_stale_index() {
    let c = client();
    let k = format!("{}/cas", prefix("kv-cas"));
    c.kv_cas(&k, b"v1", 0).await.unwrap();
    let e = c.kv_cas(&k, b"again", 0).await.unwrap_err();
    assert!(e.is_cas_conflict(), "cas=0 on an existing key: {e}");

    let (v1, _) = c.kv_get(&k, &QueryOptions::consistent()).await.unwrap();
    let idx = v1.unwrap().modify_index;
    c.kv_cas(&k, b"v2", idx).await.unwrap();
    let e = c.kv_cas(&k, b"v3", idx).await.unwrap_err();
    assert!(matches!(e, ConsulError::CasConflict { index, .. } if index == idx));
    let (now, _) = c.kv_get(&k, &QueryOptions::consistent()).await.unwrap();
    let now = now.unwrap();
    assert_eq!(now.value, b"v2", "the stale write left no trace");

    let e = c.kv_delete_cas(&k, idx).await.unwrap_err();
    assert!(e.is_cas_conflict());
    assert!(c
        .kv_get(&k, &QueryOptions::default())
        .await
        .unwrap()
        .0
        .is_some());
    c.kv_delete_cas(&k, now.modify_index).await.unwrap();
    assert!(c
        .kv_get(&k, &QueryOptions::default())
        .await
        .unwrap()
        .0
        .is_none());
}

#[tokio::test]
async fn blocking_list_wakes_on_write_and_waits_when_idle() {
    let c = client();
    let p = format!("{}/", prefix("kv-block"));
    c.kv_put(&format!("{p}x"), b"0").await.unwrap();
    let (_, meta) = c.kv_list(&p, &QueryOptions::default()).await.unwrap();

    // Nothing changes under the prefix: the read waits its whole `wait`.
    let wait = Duration::from_secs(2);
    let started = Instant::now();
    let (list, idle) = c
        .kv_list(&p, &QueryOptions::blocking(meta.index, wait))
        .await
        .unwrap();
    let took = started.elapsed();
    assert!(took >= wait, "returned after {took:?}, before the wait");
    assert!(took < wait * 2, "took {took:?}");
    assert_eq!(idle.index, meta.index, "no change, same index");
    assert_eq!(list.len(), 1);

    // Another task writes: the read returns soon after, with the new value.
    let writer = client();
    let key = format!("{p}y");
    let task = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let at = Instant::now();
        writer.kv_put(&key, b"new").await.unwrap();
        at
    });
    let (list, woke) = c
        .kv_list(
            &p,
            &QueryOptions::blocking(meta.index, Duration::from_secs(30)),
        )
        .await
        .unwrap();
    let returned = Instant::now();
    let written = task.await.unwrap();
    assert!(
        returned.duration_since(written) < Duration::from_secs(1),
        "woke {:?} after the write",
        returned.duration_since(written)
    );
    assert!(woke.index > meta.index);
    assert_eq!(list.len(), 2);
}

#[tokio::test]
async fn sessions_create_info_renew_destroy() {
    let c = client();
    let mut req = session_req("svc-handler-test");
    req.behavior = SessionBehavior::Delete;
    req.lock_delay = Some(Duration::from_secs(2));
    let id = c.session_create(&req).await.unwrap();
    let info = c
        .session_info(&id, &QueryOptions::consistent())
        .await
        .unwrap()
        .expect("session exists");
    assert_eq!(info.id, id);
    assert_eq!(info.name, "svc-handler-test");
    assert_eq!(info.ttl, "15s");
    assert_eq!(info.behavior, "delete");
    assert_eq!(info.lock_delay, 2_000_000_000, "LockDelay sent as a string");

    let renewed = c.session_renew(&id).await.unwrap();
    assert_eq!(renewed.id, id);

    c.session_destroy(&id).await.unwrap();
    assert!(c
        .session_info(&id, &QueryOptions::consistent())
        .await
        .unwrap()
        .is_none());
    let e = c.session_renew(&id).await.unwrap_err();
    assert!(e.is_not_found(), "renew of a destroyed session: {e}");

    // Node checks: the default ties the session to serfHealth.
    let mut req = session_req("with-checks");
    req.node_checks = None;
    let id = c.session_create(&req).await.unwrap();
    let info = c
        .session_info(&id, &QueryOptions::consistent())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(info.node_checks, Some(vec!["serfHealth".to_string()]));
    c.session_destroy(&id).await.unwrap();
    let mut req = session_req("no-checks");
    req.node_checks = Some(vec![]);
    let id = c.session_create(&req).await.unwrap();
    let info = c
        .session_info(&id, &QueryOptions::consistent())
        .await
        .unwrap()
        .unwrap();
    assert!(
        info.node_checks.as_ref().is_none_or(|c| c.is_empty()),
        "{info:?}"
    );
    c.session_destroy(&id).await.unwrap();
}

#[tokio::test]
async fn locks_acquire_release_and_destroy_releases() {
    let c = client();
    let lock = format!("{}/lock", prefix("lock"));
    let s1 = c.session_create(&session_req("holder-1")).await.unwrap();
    let s2 = c.session_create(&session_req("holder-2")).await.unwrap();

    assert!(c.kv_acquire(&lock, b"one", &s1).await.unwrap());
    assert!(
        !c.kv_acquire(&lock, b"two", &s2).await.unwrap(),
        "a second session is refused"
    );
    let (pair, _) = c.kv_get(&lock, &QueryOptions::consistent()).await.unwrap();
    let pair = pair.unwrap();
    assert_eq!(pair.session.as_deref(), Some(s1.as_str()));
    assert_eq!(pair.value, b"one", "the refused acquire wrote nothing");

    assert!(
        !c.kv_release(&lock, b"", &s2).await.unwrap(),
        "not s2's to release"
    );
    assert!(c.kv_release(&lock, b"released", &s1).await.unwrap());
    let (pair, _) = c.kv_get(&lock, &QueryOptions::consistent()).await.unwrap();
    assert_eq!(pair.unwrap().session, None);

    assert!(c.kv_acquire(&lock, b"two", &s2).await.unwrap());
    c.session_destroy(&s2).await.unwrap();
    let (pair, _) = c.kv_get(&lock, &QueryOptions::consistent()).await.unwrap();
    assert_eq!(
        pair.unwrap().session,
        None,
        "destroying the session released its lock"
    );
    // s2's lock-delay was 1 ms: s1 gets it back soon.
    let got = eventually(Duration::from_secs(5), || {
        let c = c.clone();
        let (lock, s1) = (lock.clone(), s1.clone());
        async move { c.kv_acquire(&lock, b"one", &s1).await.unwrap() }
    })
    .await;
    assert!(got, "s1 could not take the released lock");
    c.session_destroy(&s1).await.unwrap();
}

#[tokio::test]
async fn txn_commits_and_rolls_back_on_check_session() {
    let c = client();
    let p = prefix("txn");
    let lock = format!("{p}/lock");
    let rec = format!("{p}/record");
    let holder = c.session_create(&session_req("holder")).await.unwrap();
    let other = c.session_create(&session_req("other")).await.unwrap();
    assert!(c.kv_acquire(&lock, b"", &holder).await.unwrap());

    // Fenced write by the holder: committed.
    let out = c
        .txn(&[
            TxnKvOp::CheckSession {
                key: lock.clone(),
                session: holder.clone(),
            },
            TxnKvOp::Set {
                key: rec.clone(),
                value: b"by holder".to_vec(),
            },
            TxnKvOp::Get { key: rec.clone() },
        ])
        .await
        .unwrap();
    let TxnOutcome::Committed(results) = out else {
        panic!("expected commit, got {out:?}")
    };
    assert_eq!(results.len(), 3);
    assert_eq!(results[2].value, b"by holder");

    // Fenced write by a session that does not hold the lock: rolled back.
    let out = c
        .txn(&[
            TxnKvOp::Set {
                key: format!("{p}/side"),
                value: b"must not land".to_vec(),
            },
            TxnKvOp::CheckSession {
                key: lock.clone(),
                session: other.clone(),
            },
            TxnKvOp::Set {
                key: rec.clone(),
                value: b"by other".to_vec(),
            },
        ])
        .await
        .unwrap();
    let TxnOutcome::RolledBack(errors) = out else {
        panic!("expected rollback, got {out:?}")
    };
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].op_index, 1);
    assert!(errors[0].what.contains("lock"), "{}", errors[0].what);
    let (r, _) = c.kv_get(&rec, &QueryOptions::consistent()).await.unwrap();
    assert_eq!(r.unwrap().value, b"by holder");
    let (side, _) = c
        .kv_get(&format!("{p}/side"), &QueryOptions::consistent())
        .await
        .unwrap();
    assert!(side.is_none(), "the whole txn rolled back");

    // cas, check-index, check-not-exists, delete-cas, delete, delete-tree.
    let (r, _) = c.kv_get(&rec, &QueryOptions::consistent()).await.unwrap();
    let idx = r.unwrap().modify_index;
    let out = c
        .txn(&[
            TxnKvOp::CheckIndex {
                key: rec.clone(),
                index: idx,
            },
            TxnKvOp::Cas {
                key: rec.clone(),
                value: b"v2".to_vec(),
                index: idx,
            },
            TxnKvOp::CheckNotExists {
                key: format!("{p}/new"),
            },
            TxnKvOp::Set {
                key: format!("{p}/tree/a"),
                value: b"a".to_vec(),
            },
        ])
        .await
        .unwrap();
    assert!(out.is_committed(), "{out:?}");
    let out = c
        .txn(&[TxnKvOp::Cas {
            key: rec.clone(),
            value: b"stale".to_vec(),
            index: idx,
        }])
        .await
        .unwrap();
    assert!(
        matches!(out, TxnOutcome::RolledBack(ref e) if e[0].op_index == 0),
        "{out:?}"
    );
    let (r, _) = c.kv_get(&rec, &QueryOptions::consistent()).await.unwrap();
    let r = r.unwrap();
    assert_eq!(r.value, b"v2");
    let out = c
        .txn(&[
            TxnKvOp::DeleteCas {
                key: rec.clone(),
                index: r.modify_index,
            },
            TxnKvOp::DeleteTree {
                key: format!("{p}/tree/"),
            },
            TxnKvOp::Delete { key: lock.clone() },
        ])
        .await
        .unwrap();
    assert!(out.is_committed(), "{out:?}");
    let (left, _) = c
        .kv_list(&format!("{p}/"), &QueryOptions::consistent())
        .await
        .unwrap();
    assert!(left.is_empty(), "{left:?}");

    // Lock and unlock verbs.
    let out = c
        .txn(&[TxnKvOp::Lock {
            key: lock.clone(),
            value: b"l".to_vec(),
            session: other.clone(),
        }])
        .await
        .unwrap();
    assert!(out.is_committed());
    let (l, _) = c.kv_get(&lock, &QueryOptions::consistent()).await.unwrap();
    assert_eq!(l.unwrap().session.as_deref(), Some(other.as_str()));
    let out = c
        .txn(&[TxnKvOp::Unlock {
            key: lock.clone(),
            value: b"".to_vec(),
            session: other.clone(),
        }])
        .await
        .unwrap();
    assert!(out.is_committed());
    let (l, _) = c.kv_get(&lock, &QueryOptions::consistent()).await.unwrap();
    assert_eq!(l.unwrap().session, None);

    c.session_destroy(&holder).await.unwrap();
    c.session_destroy(&other).await.unwrap();
}

#[tokio::test]
async fn txn_over_the_operation_limit_is_an_error() {
    let c = client();
    let p = prefix("txn-limit");
    let ops: Vec<TxnKvOp> = (0..65)
        .map(|i| TxnKvOp::Set {
            key: format!("{p}/{i}"),
            value: vec![],
        })
        .collect();
    let e = c.txn(&ops).await.unwrap_err();
    assert_eq!(e.status(), Some(413), "{e}");
    assert!(!e.is_retryable());
}

#[tokio::test]
async fn config_entries_get_put_cas_list_delete() {
    let c = client();
    let name = prefix("cfg").replace(['/'], "-");
    let entry = json!({
        "Kind": "service-defaults",
        "Name": name,
        "Protocol": "http",
        "Meta": {"managed-by": "svc-handler"}
    });
    assert!(c.config_put(&entry).await.unwrap());
    let (got, meta) = c
        .config_get("service-defaults", &name, &QueryOptions::consistent())
        .await
        .unwrap();
    let got = got.expect("written");
    assert_eq!(got.kind(), "service-defaults");
    assert_eq!(got.name(), name);
    assert_eq!(got.0["Protocol"], "http");
    assert_eq!(got.0["Meta"]["managed-by"], "svc-handler");
    assert!(got.modify_index() > 0);
    assert!(meta.index > 0);

    // CAS: a stale index is refused and changes nothing.
    let stale = got.modify_index();
    let mut grpc = entry.clone();
    grpc["Protocol"] = json!("grpc");
    c.config_cas(&grpc, stale).await.unwrap();
    let mut http2 = entry.clone();
    http2["Protocol"] = json!("http2");
    let e = c.config_cas(&http2, stale).await.unwrap_err();
    assert!(e.is_cas_conflict(), "{e}");
    let e = c.config_cas(&http2, 0).await.unwrap_err();
    assert!(e.is_cas_conflict(), "cas=0 on an existing entry: {e}");
    let (now, _) = c
        .config_get("service-defaults", &name, &QueryOptions::consistent())
        .await
        .unwrap();
    assert_eq!(now.unwrap().0["Protocol"], "grpc");

    // Blocking list wakes on a write to the kind.
    let (list, meta) = c
        .config_list("service-defaults", &QueryOptions::default())
        .await
        .unwrap();
    assert!(list.iter().any(|e| e.name() == name));
    let writer = client();
    let other = format!("{name}-other");
    let other2 = other.clone();
    let task = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        writer
            .config_put(&json!({"Kind": "service-defaults", "Name": other2}))
            .await
            .unwrap();
        Instant::now()
    });
    let (list, woke) = c
        .config_list(
            "service-defaults",
            &QueryOptions::blocking(meta.index, Duration::from_secs(30)),
        )
        .await
        .unwrap();
    let at = task.await.unwrap();
    assert!(Instant::now().duration_since(at) < Duration::from_secs(1));
    assert!(woke.index > meta.index);
    assert!(list.iter().any(|e| e.name() == other));

    c.config_delete("service-defaults", &name).await.unwrap();
    c.config_delete("service-defaults", &other).await.unwrap();
    c.config_delete("service-defaults", &other).await.unwrap();
    let (gone, _) = c
        .config_get("service-defaults", &name, &QueryOptions::consistent())
        .await
        .unwrap();
    assert!(gone.is_none());
    let (list, _) = c
        .config_list("service-router", &QueryOptions::default())
        .await
        .unwrap();
    assert!(list.iter().all(|e| e.kind() == "service-router"));
}

#[tokio::test]
async fn config_errors_carry_consuls_words() {
    let c = client();
    let e = c
        .config_put(&json!({"Kind": "service-defaults", "Name": "bogus-field", "Bogus": 1}))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(400));
    let msg = e.to_string();
    assert!(msg.contains("config.put") && msg.contains("Bogus"), "{msg}");
    assert!(!e.is_retryable());

    // Consul OSS refuses namespaces, even `default` if sent; the client
    // never sends ns=default, and a non-default one is Consul's 400.
    let scoped = c.scoped(svc_handler::consul::Scope::new("default", "team"));
    let e = scoped
        .config_get("service-defaults", "x", &QueryOptions::default())
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(400), "{e}");
    assert!(e.to_string().contains("Enterprise"), "{e}");
    let (none, _) = c
        .scoped(svc_handler::consul::Scope::default())
        .config_get("service-defaults", "x-absent", &QueryOptions::default())
        .await
        .unwrap();
    assert!(none.is_none());
}

#[tokio::test]
async fn leader_and_unreachable_agent() {
    let c = client();
    let leader = c.leader().await.unwrap();
    assert!(leader.starts_with("127.0.0.1:"), "{leader}");

    // A port with nothing behind it: a retryable transport error.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free.local_addr().unwrap().port();
    drop(free);
    let dead = Client::new(svc_handler::consul::Settings {
        address: format!("127.0.0.1:{port}"),
        ..Default::default()
    })
    .unwrap();
    let e = dead
        .kv_get("x", &QueryOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(e, ConsulError::Transport { .. }), "{e}");
    assert!(e.is_retryable());
}
