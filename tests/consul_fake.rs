//! What a real Consul 1.8.7 cannot show, against a fake HTTP server: the
//! Enterprise query parameters, error statuses and their retry
//! classification, slow and dropped answers, and the ACL token's handling.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use svc_handler::consul::{
    Client, ConsulError, QueryOptions, RequestObserver, Scope, Secret, SessionRequest, Settings,
    TxnKvOp,
};
use wiremock::matchers::{header, method, path, query_param};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const TOKEN: &str = "4f9d2c1e-secret-token-value";

fn settings(server: &MockServer) -> Settings {
    Settings {
        address: server.uri(),
        token: Some(Secret::new(TOKEN)),
        request_timeout: Duration::from_millis(500),
        ..Settings::default()
    }
}

fn query_of(r: &Request) -> Vec<(String, String)> {
    r.url
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

#[tokio::test]
async fn enterprise_parameters_only_when_not_default() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("X-Consul-Index", "42")
                .set_body_json(json!([])),
        )
        .mount(&server)
        .await;
    Mock::given(method("PUT"))
        .and(path("/v1/config"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!(true)))
        .mount(&server)
        .await;
    Mock::given(method("PUT"))
        .and(path("/v1/session/create"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"ID": "s-1"})))
        .mount(&server)
        .await;
    Mock::given(method("PUT"))
        .and(path("/v1/txn"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"Results": [], "Errors": null})),
        )
        .mount(&server)
        .await;

    let base = Client::new(settings(&server)).unwrap();
    let scoped = base.scoped(Scope::new("p1", "team"));
    let half = base.scoped(Scope::new("default", "team"));

    base.kv_list("a/", &QueryOptions::default()).await.unwrap();
    scoped
        .kv_list("a/", &QueryOptions::default())
        .await
        .unwrap();
    scoped
        .config_list("service-defaults", &QueryOptions::default())
        .await
        .unwrap();
    scoped
        .config_put(&json!({"Kind": "service-defaults", "Name": "web"}))
        .await
        .unwrap();
    scoped
        .session_create(&SessionRequest::default())
        .await
        .unwrap();
    scoped
        .txn(&[TxnKvOp::Get { key: "k".into() }])
        .await
        .unwrap();
    half.config_get("service-resolver", "web", &QueryOptions::default())
        .await
        .unwrap();

    let reqs = server.received_requests().await.unwrap();
    assert_eq!(reqs.len(), 7);
    let q0 = query_of(&reqs[0]);
    assert!(
        q0.iter().all(|(k, _)| k != "ns" && k != "partition"),
        "default scope sends neither: {q0:?}"
    );
    for r in &reqs[1..6] {
        let q = query_of(r);
        assert!(
            q.contains(&("partition".into(), "p1".into())),
            "{} {q:?}",
            r.url
        );
        assert!(q.contains(&("ns".into(), "team".into())), "{} {q:?}", r.url);
    }
    let q = query_of(&reqs[6]);
    assert!(q.contains(&("ns".into(), "team".into())));
    assert!(q.iter().all(|(k, _)| k != "partition"), "{q:?}");
}

#[tokio::test]
async fn statuses_map_to_typed_retry_classified_errors() {
    let server = MockServer::start().await;
    for (code, p) in [
        (500, "/v1/kv/e500"),
        (502, "/v1/kv/e502"),
        (503, "/v1/kv/e503"),
        (429, "/v1/kv/e429"),
        (400, "/v1/kv/e400"),
        (403, "/v1/kv/e403"),
        (501, "/v1/kv/e501"),
    ] {
        Mock::given(path(p))
            .respond_with(ResponseTemplate::new(code).set_body_string(format!("boom {code}")))
            .mount(&server)
            .await;
    }
    let c = Client::new(settings(&server)).unwrap();
    for (code, retry) in [
        (500, true),
        (502, true),
        (503, true),
        (429, true),
        (400, false),
        (403, false),
        (501, false),
    ] {
        let e = c
            .kv_get(&format!("e{code}"), &QueryOptions::default())
            .await
            .unwrap_err();
        assert_eq!(e.status(), Some(code));
        assert_eq!(e.is_retryable(), retry, "{code}: {e}");
        let msg = e.to_string();
        assert!(
            msg.contains("kv.get") && msg.contains(&format!("boom {code}")),
            "{msg}"
        );
        assert!(!msg.contains(TOKEN));
        assert!(!format!("{e:?}").contains(TOKEN));
    }
}

#[tokio::test]
async fn token_goes_in_the_header_and_nowhere_else() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(header("X-Consul-Token", TOKEN))
        .respond_with(ResponseTemplate::new(403).set_body_string("Permission denied"))
        .expect(1)
        .mount(&server)
        .await;
    let c = Client::new(settings(&server)).unwrap();
    let e = c.kv_get("k", &QueryOptions::default()).await.unwrap_err();
    assert_eq!(e.status(), Some(403));
    assert!(!format!("{e} {e:?} {c:?}").contains(TOKEN));
    let r = &server.received_requests().await.unwrap()[0];
    assert!(!r.url.as_str().contains(TOKEN), "never in the URL");
}

#[tokio::test]
async fn token_file_wins_and_reloads() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(404))
        .mount(&server)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "from-file-1\n").unwrap();
    let c = Client::new(Settings {
        token_file: Some(file.clone()),
        ..settings(&server)
    })
    .unwrap();
    c.kv_get("a", &QueryOptions::default()).await.unwrap();
    std::fs::write(&file, "from-file-2").unwrap();
    c.reload_token().unwrap();
    c.kv_get("b", &QueryOptions::default()).await.unwrap();
    let reqs = server.received_requests().await.unwrap();
    let tok = |i: usize| {
        reqs[i]
            .headers
            .get("x-consul-token")
            .unwrap()
            .to_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(tok(0), "from-file-1");
    assert_eq!(tok(1), "from-file-2");

    std::fs::remove_file(&file).unwrap();
    let e = c.reload_token().unwrap_err().to_string();
    assert!(e.contains("CONSUL_HTTP_TOKEN_FILE"), "{e}");
}

#[tokio::test]
async fn slow_answers_time_out_but_blocking_reads_get_their_wait() {
    let server = MockServer::start().await;
    Mock::given(path("/v1/kv/slow"))
        .respond_with(ResponseTemplate::new(404).set_delay(Duration::from_secs(2)))
        .mount(&server)
        .await;
    Mock::given(path("/v1/kv/blocking"))
        .and(query_param("index", "5"))
        .and(query_param("wait", "1000ms"))
        .respond_with(
            ResponseTemplate::new(404)
                .insert_header("X-Consul-Index", "5")
                .set_delay(Duration::from_millis(1200)),
        )
        .mount(&server)
        .await;
    let c = Client::new(settings(&server)).unwrap(); // request timeout 500 ms

    let e = c
        .kv_get("slow", &QueryOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(e, ConsulError::Timeout { .. }), "{e}");
    assert!(e.is_retryable());

    // wait 1 s + jitter 62 ms + 500 ms margin > 1.2 s: answered.
    let (v, meta) = c
        .kv_get(
            "blocking",
            &QueryOptions::blocking(5, Duration::from_secs(1)),
        )
        .await
        .unwrap();
    assert!(v.is_none());
    assert_eq!(meta.index, 5);
}

#[tokio::test]
async fn dropped_connections_are_retryable_transport_errors() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        // Accept and hang up at once, every time.
        while let Ok((sock, _)) = listener.accept().await {
            drop(sock);
        }
    });
    let c = Client::new(Settings {
        address: format!("127.0.0.1:{}", addr.port()),
        token: Some(Secret::new(TOKEN)),
        ..Settings::default()
    })
    .unwrap();
    let e = c.kv_put("k", b"v").await.unwrap_err();
    assert!(matches!(e, ConsulError::Transport { .. }), "{e}");
    assert!(e.is_retryable());
    assert!(!format!("{e} {e:?}").contains(TOKEN));
}

#[tokio::test]
async fn metadata_headers_are_read() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("X-Consul-Index", "1234")
                .insert_header("X-Consul-KnownLeader", "false")
                .insert_header("X-Consul-LastContact", "250")
                .set_body_json(json!([])),
        )
        .mount(&server)
        .await;
    let c = Client::new(settings(&server)).unwrap();
    let (_, meta) = c
        .kv_list(
            "p/",
            &QueryOptions {
                consistency: svc_handler::consul::Consistency::Stale,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(meta.index, 1234);
    assert!(!meta.known_leader);
    assert_eq!(meta.last_contact, Duration::from_millis(250));
    let r = &server.received_requests().await.unwrap()[0];
    assert!(query_of(r).iter().any(|(k, _)| k == "stale"));
}

#[derive(Default)]
struct Recorder(Mutex<Vec<(String, String)>>);

impl RequestObserver for Recorder {
    fn observe(&self, op: &'static str, code: &str, _elapsed: Duration) {
        self.0
            .lock()
            .unwrap()
            .push((op.to_string(), code.to_string()));
    }
}

#[tokio::test]
async fn observer_sees_every_request() {
    let server = MockServer::start().await;
    Mock::given(path("/v1/kv/ok"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!(true)))
        .mount(&server)
        .await;
    Mock::given(path("/v1/kv/bad"))
        .respond_with(ResponseTemplate::new(500))
        .mount(&server)
        .await;
    let rec = Arc::new(Recorder::default());
    let c = Client::with_observer(settings(&server), Some(rec.clone())).unwrap();
    c.kv_put("ok", b"1").await.unwrap();
    c.kv_put("bad", b"1").await.unwrap_err();
    let seen = rec.0.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![
            ("kv.put".to_string(), "200".to_string()),
            ("kv.put".to_string(), "500".to_string())
        ]
    );
}

/// A server that answers every request after `delay` (four times that for a
/// path with `blocking` in it), counting the
/// requests in flight and the connections open at once, and keeping the
/// highest of each.
async fn counting_server(delay: Duration) -> (String, Arc<Mutex<(usize, usize, usize, usize)>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // (in flight, most in flight, connections open, most connections open)
    let seen = Arc::new(Mutex::new((0usize, 0usize, 0usize, 0usize)));
    let counts = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            let counts = Arc::clone(&counts);
            tokio::spawn(async move {
                {
                    let mut c = counts.lock().unwrap();
                    c.2 += 1;
                    c.3 = c.3.max(c.2);
                }
                let mut buf = vec![0u8; 8192];
                // One request per read: the client sends small GETs and
                // waits for each answer before reusing the connection.
                while let Ok(n) = sock.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    {
                        let mut c = counts.lock().unwrap();
                        c.0 += 1;
                        c.1 = c.1.max(c.0);
                    }
                    let slow = String::from_utf8_lossy(&buf[..n]).contains("blocking");
                    tokio::time::sleep(if slow { delay * 4 } else { delay }).await;
                    counts.lock().unwrap().0 -= 1;
                    let answer = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Consul-Index: 7\r\nContent-Length: 2\r\n\r\n[]";
                    if sock.write_all(answer.as_bytes()).await.is_err() {
                        break;
                    }
                }
                counts.lock().unwrap().2 -= 1;
            });
        }
    });
    (format!("http://{addr}"), seen)
}

/// However many reads a daemon's workers make at once, at most
/// MAX_SHORT_REQUESTS are in flight (the rest wait their turn), so a
/// daemon stays well within the agent's `http_max_conns_per_client`; a
/// blocking read does not count against them.
#[tokio::test]
async fn at_most_max_short_requests_are_in_flight_and_blocking_reads_are_apart() {
    let (url, seen) = counting_server(Duration::from_millis(100)).await;
    let c = Client::new(Settings {
        address: url,
        ..Settings::default()
    })
    .unwrap();
    let max = svc_handler::consul::MAX_SHORT_REQUESTS;
    let mut set = tokio::task::JoinSet::new();
    // Blocking reads first, holding their connections.
    for i in 0..4 {
        let c = c.clone();
        set.spawn(async move {
            let opts = QueryOptions::blocking(1, Duration::from_secs(1));
            c.kv_list(&format!("blocking/{i}"), &opts).await.map(|_| ())
        });
    }
    for i in 0..(3 * max) {
        let c = c.clone();
        set.spawn(async move {
            c.kv_list(&format!("short/{i}"), &QueryOptions::default())
                .await
                .map(|_| ())
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap().unwrap();
    }
    let (in_flight, most, _, most_open) = *seen.lock().unwrap();
    assert_eq!(in_flight, 0);
    // The short reads reached the cap (so the cap, not the test, bounded
    // them), and the blocking reads came on top.
    assert_eq!(most, max + 4, "most requests in flight at once");
    assert!(most_open <= max + 4, "{most_open} connections open at once");
}
