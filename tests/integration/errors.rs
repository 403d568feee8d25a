//! Every error row of the API contract: the status, a JSON error body, and
//! nothing written.

use bytes::Bytes;
use hyper::Method;
use serde_json::{json, Value};

use crate::common::*;

fn log_with(field: &str, value: Value) -> Value {
    let mut entry = json!({"timestamp": ago(60), "username": "u", "log_type": "login"});
    entry[field] = value;
    json!({ "log": entry })
}

#[tokio::test]
async fn rejected_requests_get_their_status_and_write_nothing() {
    let ts = TestServer::start().await;
    let big_message = "x".repeat(70 * 1024);
    let deep = format!("{}{}", "[".repeat(1000), "]".repeat(1000));
    let cases: Vec<(&str, String, u16)> = vec![
        ("/api/add_log", "{\"log\":".into(), 400),
        ("/api/add_log", "[]".into(), 400),
        ("/api/add_log", "\"log\"".into(), 400),
        ("/api/add_log", "null".into(), 400),
        ("/api/add_log", "".into(), 400),
        ("/api/add_log", "{} trailing".into(), 400),
        ("/api/add_log", "{}{}".into(), 400),
        ("/api/add_log", "\u{feff}{}".into(), 400),
        ("/api/add_log", format!("{{\"log\": {deep}}}"), 400),
        ("/api/add_log", "{}".into(), 400),
        ("/api/add_log", json!({"log": null}).to_string(), 400),
        ("/api/add_log", json!({"log": {}, "extra": 1}).to_string(), 400),
        ("/api/add_log", log_with("username", json!("")).to_string(), 400),
        ("/api/add_log", log_with("username", json!("a\u{0}b")).to_string(), 400),
        ("/api/add_log", log_with("username", json!("a\u{7}b")).to_string(), 400),
        ("/api/add_log", log_with("username", json!("a\nb")).to_string(), 400),
        ("/api/add_log", log_with("username", json!("u".repeat(257))).to_string(), 400),
        ("/api/add_log", log_with("username", json!(42)).to_string(), 400),
        ("/api/add_log", log_with("timestamp", json!("2026-11-20 10:00:00")).to_string(), 400),
        ("/api/add_log", log_with("timestamp", json!("2026-11-20T10:00:00")).to_string(), 400),
        ("/api/add_log", log_with("timestamp", json!(1_700_000_000)).to_string(), 400),
        ("/api/add_log", log_with("timestamp", json!("0001-01-01T00:00:00Z")).to_string(), 400),
        ("/api/add_log", log_with("timestamp", json!(ago(-3 * 86_400))).to_string(), 400),
        ("/api/add_log", log_with("timestamp", json!(ago(400 * 86_400))).to_string(), 400),
        ("/api/add_log", log_with("log_type", json!("")).to_string(), 400),
        ("/api/add_log", log_with("log_type", json!("Login!")).to_string(), 400),
        ("/api/add_log", log_with("device_info", json!({"id": "d", "ip": "1.2.3.4"})).to_string(), 400),
        ("/api/add_log", log_with("device_info", json!({"id": "d", "mobile": "yes"})).to_string(), 400),
        ("/api/add_log", log_with("message", json!(big_message[..5000])).to_string(), 400),
        ("/api/add_log", r#"{"log":{"timestamp":"2026-11-20T10:00:00Z","username":"a","username":"b","log_type":"login"}}"#.into(), 400),
        ("/api/add_log", r#"{"log":{"username":"\ud800","log_type":"login"}}"#.into(), 400),
        ("/api/get_user_logs", json!({"username": "u", "limit": -5}).to_string(), 400),
        ("/api/get_user_logs", json!({"username": "u", "limit": 1.5}).to_string(), 400),
        ("/api/get_user_logs", json!({"username": "u", "limit": "10"}).to_string(), 400),
        ("/api/get_user_logs", r#"{"username":"u","limit":1e400}"#.into(), 400),
        ("/api/get_user_logs", json!({"username": "u", "max_days": 99_999_999_999i64}).to_string(), 400),
        ("/api/set_last_login", json!({"last_login": {"timestamp": ago(0), "username": "u"}}).to_string(), 400),
        ("/api/set_last_login", json!({"last_login": {"timestamp": ago(0), "service": "s"}}).to_string(), 400),
        ("/api/get_unused_accounts", json!({"usernames": ["a", ""], "days": 3}).to_string(), 400),
        ("/api/get_unused_accounts", json!({"usernames": ["a"], "days": -3}).to_string(), 400),
        ("/api/add_log", json!({"log": {"message": big_message}}).to_string(), 413),
        ("/api/nope", "{}".into(), 404),
        ("/api/add_log/", "{}".into(), 404),
        ("//api/add_log", "{}".into(), 404),
        ("/api/%61dd_log", "{}".into(), 404),
        ("/API/ADD_LOG", "{}".into(), 404),
    ];
    for (path, body, want) in cases {
        // A fresh connection each time: the server may close one after an error.
        let mut c = ts.client("admin").await;
        let r = c.post_bytes(path, body.clone()).await;
        let short: String = body.chars().take(120).collect();
        assert_eq!(r.status.as_u16(), want, "{path} {short}: {:?}", r.body);
        let v = parse(&r);
        assert!(v["error"].is_string(), "{path} {short}: error body {v}");
        assert_eq!(ts.counts(), [0, 0, 0, 0], "{path} {short} wrote something");
    }
}

#[tokio::test]
async fn method_and_content_type_errors() {
    let ts = TestServer::start().await;
    let mut c = ts.client("admin").await;
    let entry = login("u", "d", 60).to_string();
    for m in [
        Method::GET,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
        Method::OPTIONS,
    ] {
        let r =
            c.0.request(
                m.clone(),
                "/api/add_log",
                Some("application/json"),
                Bytes::from(entry.clone()),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 405, "{m}");
        assert_eq!(r.headers["allow"], "POST");
    }
    let r =
        c.0.request(Method::POST, "/health", None, Bytes::new())
            .await
            .unwrap();
    assert_eq!(r.status, 405);
    assert_eq!(r.headers["allow"], "GET");
    for ct in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("application/jsonx"),
    ] {
        let r =
            c.0.request(Method::POST, "/api/add_log", ct, Bytes::from(entry.clone()))
                .await
                .unwrap();
        assert_eq!(r.status, 415, "{ct:?}");
    }
    assert_eq!(ts.counts(), [0, 0, 0, 0]);
    let r =
        c.0.request(
            Method::POST,
            "/api/add_log",
            Some("Application/JSON; charset=utf-8"),
            Bytes::from(entry),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(ts.counts(), [1, 1, 1, 0]);
}

#[tokio::test]
async fn too_many_names_is_a_clear_413() {
    let ts = TestServer::start_with("  max_bulk_names: 100\n").await;
    let mut c = ts.client("admin").await;
    let names: Vec<String> = (0..101).map(|i| format!("n{i}")).collect();
    let (status, v) = c
        .post(
            "/api/get_unused_accounts",
            json!({"usernames": names, "days": 10}),
        )
        .await;
    assert_eq!(status, 413);
    assert!(v["error"].as_str().unwrap().contains("100"), "{v}");
}

#[tokio::test]
async fn overload_gives_503_not_a_queue() {
    use tokio::io::AsyncWriteExt;
    // One request slot, held by a request whose body never completes.
    let ts = TestServer::start_with("  max_inflight_requests: 1\n").await;
    let mut slow = ts.raw_tls("client-admin").await;
    slow.write_all(
        b"POST /api/add_log HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
    )
    .await
    .unwrap();
    slow.flush().await.unwrap();
    metric_settles(ts.addr, "usermetadb_inflight_requests", 1).await;
    let mut c = ts.client("admin").await;
    let r = c
        .post_bytes("/api/add_log", login("u", "d", 60).to_string())
        .await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert_eq!(ts.counts(), [0, 0, 0, 0]);
    // The slot comes back once the server sees the connection go; a 503
    // meanwhile wrote nothing, so the same request can be sent again.
    drop(slow);
    let ts = &ts;
    eventually("the request slot to come back", || async move {
        let r = ts
            .client("admin")
            .await
            .post_bytes("/api/add_log", login("u", "d", 60).to_string())
            .await;
        assert!(r.status == 200 || r.status == 503, "{:?}", r.body);
        r.status == 200
    })
    .await;
    // One entry, its user and its device: the refused attempts left nothing.
    assert_eq!(ts.counts(), [1, 1, 1, 0]);
}

#[tokio::test]
async fn idle_and_silent_connections_are_closed_at_their_timeouts() {
    use tokio::io::AsyncReadExt;
    let ts = TestServer::start_with("  idle_timeout: 1s\n  handshake_timeout: 1s\n").await;
    // A TCP connection that never starts TLS.
    let mut tcp = tokio::net::TcpStream::connect(ts.addr).await.unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .expect("server kept a silent connection open")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(started.elapsed() >= std::time::Duration::from_millis(900));

    // A TLS connection that served one request, then goes quiet.
    let mut c = ts.client("admin").await;
    assert_eq!(
        c.post("/api/get_user_logs", serde_json::json!({"username": "u"}))
            .await
            .0,
        200
    );
    // Only the connection asking is left once the quiet one is closed.
    metric_settles(ts.addr, "usermetadb_open_connections", 1).await;
    assert!(
        c.0.post_raw("/api/get_user_logs", "{\"username\":\"u\"}".into())
            .await
            .is_err(),
        "idle connection still open"
    );
}
