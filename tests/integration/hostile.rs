//! The hostile-input catalogue, written as raw bytes over real mutual TLS:
//! methods, content types, message framing, header floods, HTTP/1.0 and
//! pipelining, malformed JSON, bad usernames and timestamps, oversized name
//! lists, and paths that try to get around the ACL. Each case asserts its status
//! and that nothing was written.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;

/// One HTTP answer as read off the wire.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// What came back on one connection.
#[derive(Debug)]
pub struct Exchange {
    pub answers: Vec<Answer>,
    /// The server closed the connection (EOF or reset) before `wait` ran out.
    pub closed: bool,
    pub elapsed: Duration,
}

impl Exchange {
    pub fn statuses(&self) -> Vec<u16> {
        self.answers.iter().map(|a| a.status).collect()
    }

    /// The only answer; fails the test if there is not exactly one.
    pub fn one(&self) -> &Answer {
        assert_eq!(self.answers.len(), 1, "{self:?}");
        &self.answers[0]
    }
}

/// Parses complete answers off the front of `buf`; `head_only` answers carry
/// no body whatever their Content-Length says.
fn parse_answers(buf: &mut Vec<u8>, out: &mut Vec<Answer>, head_only: bool) {
    loop {
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            return;
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let len: usize = if head_only {
            0
        } else {
            headers
                .iter()
                .find(|(k, _)| k == "content-length")
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0)
        };
        if buf.len() < end + 4 + len {
            return;
        }
        let body = buf[end + 4..end + 4 + len].to_vec();
        buf.drain(..end + 4 + len);
        out.push(Answer {
            status,
            headers,
            body,
        });
    }
}

/// Writes `bytes` on a fresh connection presenting `<cert>.pem` and reads
/// answers until `want` arrived, the server closed, or `wait` passed.
pub async fn exchange_opts(
    ts: &TestServer,
    cert: &str,
    bytes: &[u8],
    want: usize,
    wait: Duration,
    head_only: bool,
    check_close: bool,
) -> Exchange {
    let mut tls = ts.raw_tls(cert).await;
    let started = Instant::now();
    // A server may answer and close before reading everything: a failed write
    // is part of the outcome, not a test failure.
    let _ = tls.write_all(bytes).await;
    let _ = tls.flush().await;
    let mut buf = Vec::new();
    let mut answers = Vec::new();
    let mut closed = false;
    let deadline = tokio::time::Instant::now() + wait;
    let mut chunk = vec![0u8; 64 * 1024];
    while answers.len() < want {
        match tokio::time::timeout_at(deadline, tls.read(&mut chunk)).await {
            Err(_) => break,
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => {
                buf.extend_from_slice(&chunk[..n]);
                parse_answers(&mut buf, &mut answers, head_only);
            }
        }
    }
    if check_close && !closed && answers.len() >= want {
        // See whether the server closes right after its last answer.
        let grace = Duration::from_millis(150);
        if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(grace, tls.read(&mut chunk)).await {
            closed = true;
        }
    }
    Exchange {
        answers,
        closed,
        elapsed: started.elapsed(),
    }
}

pub async fn exchange(ts: &TestServer, cert: &str, bytes: &[u8], want: usize) -> Exchange {
    exchange_opts(ts, cert, bytes, want, Duration::from_secs(5), false, false).await
}

/// [`exchange`], then a short wait to see whether the server closes.
pub async fn exchange_closing(ts: &TestServer, cert: &str, bytes: &[u8], want: usize) -> Exchange {
    exchange_opts(ts, cert, bytes, want, Duration::from_secs(5), false, true).await
}

/// A complete request with a JSON body.
pub fn request(method: &str, target: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "{method} {target} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// POSTs `body` to `path` as `client-<cn>` and returns the one answer.
pub async fn post(ts: &TestServer, cn: &str, path: &str, body: &[u8]) -> Answer {
    let mut x = exchange_opts(
        ts,
        &format!("client-{cn}"),
        &request("POST", path, body),
        1,
        Duration::from_secs(5),
        false,
        false,
    )
    .await;
    assert_eq!(x.answers.len(), 1, "{path}: no answer: {x:?}");
    x.answers.remove(0)
}

fn short(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(100)]).into_owned()
}

/// Asserts the status and an `{"error": ...}` body for each (path, body, status).
async fn expect_all(ts: &TestServer, cn: &str, cases: &[(&str, Vec<u8>, u16)]) {
    for (path, body, want) in cases {
        let a = post(ts, cn, path, body).await;
        assert_eq!(
            a.status,
            *want,
            "{path} {}: {}",
            short(body),
            String::from_utf8_lossy(&a.body)
        );
        if *want >= 400 {
            assert!(
                a.json()["error"].is_string(),
                "{path} {}: error body {:?}",
                short(body),
                String::from_utf8_lossy(&a.body)
            );
        }
    }
}

fn entry(ts: &str, user: &str) -> Value {
    json!({"log": {"timestamp": ts, "username": user, "log_type": "login"}})
}

fn bytes(v: Value) -> Vec<u8> {
    v.to_string().into_bytes()
}

#[tokio::test]
async fn every_method_but_post_is_405_with_allow() {
    let ts = TestServer::start().await;
    let body = bytes(login("u", "d", 60));
    for m in [
        "GET", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "PROPFIND", "post",
        "FOO",
    ] {
        let x = exchange_opts(
            &ts,
            "client-admin",
            &request(m, "/api/add_log", &body),
            1,
            Duration::from_secs(5),
            m == "HEAD",
            false,
        )
        .await;
        let a = x.one();
        assert_eq!(a.status, 405, "{m}: {a:?}");
        assert_eq!(a.header("allow"), Some("POST"), "{m}");
    }
    // The GET endpoints refuse POST the same way.
    for path in ["/health", "/metrics"] {
        let a = post(&ts, "admin", path, b"{}").await;
        assert_eq!(a.status, 405, "{path}");
        assert_eq!(a.header("allow"), Some("GET"), "{path}");
    }
    assert_eq!(ts.counts(), [0, 0, 0, 0]);
}

#[tokio::test]
async fn missing_and_wrong_content_types_are_415() {
    let ts = TestServer::start().await;
    let body = login("u", "d", 60).to_string();
    for ct in [
        None,
        Some(""),
        Some("text/plain"),
        Some("application/jsonx"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        Some("json"),
        Some("application/*"),
        Some("text/json"),
    ] {
        let header = ct
            .map(|c| format!("Content-Type: {c}\r\n"))
            .unwrap_or_default();
        let req = format!(
            "POST /api/add_log HTTP/1.1\r\nHost: localhost\r\n{header}Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let x = exchange(&ts, "client-admin", req.as_bytes(), 1).await;
        assert_eq!(x.one().status, 415, "{ct:?}");
    }
    assert_eq!(ts.counts(), [0, 0, 0, 0]);
}

#[tokio::test]
async fn framing_attacks_are_refused_and_write_nothing() {
    let ts = TestServer::start_with("  request_timeout: 1s\n").await;
    let head =
        "POST /api/add_log HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n";
    let ok = login("u", "d", 60).to_string();
    let ok_req = request("POST", "/api/add_log", ok.as_bytes());

    // A body over the limit, announced: refused from the header, at once.
    let x = exchange(
        &ts,
        "client-admin",
        format!("{head}Content-Length: 70000\r\n\r\n").as_bytes(),
        1,
    )
    .await;
    assert_eq!(x.one().status, 413);
    assert!(x.elapsed < Duration::from_secs(1), "{:?}", x.elapsed);

    // A body over the limit, chunked: refused once the limit is crossed.
    let mut req = format!("{head}Transfer-Encoding: chunked\r\n\r\n").into_bytes();
    for _ in 0..70 {
        req.extend_from_slice(b"400\r\n");
        req.extend_from_slice(&[b' '; 1024]);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    assert_eq!(
        exchange(&ts, "client-admin", &req, 1).await.one().status,
        413
    );

    // A body shorter than its Content-Length: 408 at request_timeout.
    let x = exchange(
        &ts,
        "client-admin",
        format!("{head}Content-Length: 500\r\n\r\n{ok}").as_bytes(),
        1,
    )
    .await;
    assert_eq!(x.one().status, 408);
    assert!(
        x.elapsed >= Duration::from_millis(900) && x.elapsed < Duration::from_secs(4),
        "{:?}",
        x.elapsed
    );

    // A chunked body that never ends: 408 at request_timeout.
    let x = exchange(
        &ts,
        "client-admin",
        format!("{head}Transfer-Encoding: chunked\r\n\r\n5\r\n{{\"log\r\n").as_bytes(),
        1,
    )
    .await;
    assert_eq!(x.one().status, 408);

    // Content-Length that is not a number, and broken chunk sizes.
    for framing in [
        "Content-Length: abc\r\n\r\n{}".to_string(),
        "Content-Length: -1\r\n\r\n{}".to_string(),
        "Content-Length: 99999999999999999999999\r\n\r\n{}".to_string(),
        "Transfer-Encoding: gzip\r\n\r\n{}".to_string(),
        "Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n".to_string(),
        "Transfer-Encoding: chunked\r\n\r\nffffffffffffffffffff\r\n{}\r\n0\r\n\r\n".to_string(),
    ] {
        let x = exchange(
            &ts,
            "client-admin",
            format!("{head}{framing}").as_bytes(),
            1,
        )
        .await;
        assert_eq!(x.statuses(), vec![400], "{framing:?}: {x:?}");
    }
    assert_eq!(ts.counts(), [0, 0, 0, 0]);

    // Content-Length twice with different values, or as a list: 400, and closed.
    for framing in [
        format!(
            "Content-Length: {}\r\nContent-Length: 5\r\n\r\n{ok}",
            ok.len()
        ),
        format!("Content-Length: {n}, {n}\r\n\r\n{ok}", n = ok.len()),
    ] {
        let mut req = format!("{head}{framing}").into_bytes();
        req.extend_from_slice(&ok_req);
        let x = exchange_closing(&ts, "client-admin", &req, 2).await;
        assert_eq!(x.statuses(), vec![400], "{framing:?}: {x:?}");
        assert!(x.closed, "{framing:?}: connection left open");
    }
    assert_eq!(ts.counts(), [0, 0, 0, 0]);

    // Both Content-Length and Transfer-Encoding: refused with 400 and the
    // connection closed, as nginx does, whatever the order or the values, so
    // neither the body nor a request smuggled behind it is ever processed.
    let chunked = format!("{:x}\r\n{ok}\r\n0\r\n\r\n", ok.len());
    let smuggled = request("POST", "/api/add_log", &bytes(login("smuggled", "d", 60)));
    for framing in [
        format!(
            "Content-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n{chunked}",
            chunked.len()
        ),
        format!(
            "Transfer-Encoding: chunked\r\nContent-Length: {}\r\n\r\n{chunked}",
            chunked.len()
        ),
        format!("Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n{chunked}"),
    ] {
        let mut req = format!("{head}{framing}").into_bytes();
        req.extend_from_slice(&smuggled);
        let x = exchange_closing(&ts, "client-admin", &req, 2).await;
        assert_eq!(x.statuses(), vec![400], "{framing:?}: {x:?}");
        assert!(x.closed, "{framing:?}: connection left open");
    }
    // Behind a good request on the same connection: the good one is
    // answered, the ambiguous one refused.
    let mut req = ok_req.clone();
    req.extend_from_slice(
        format!(
            "{head}Content-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n{chunked}",
            chunked.len()
        )
        .as_bytes(),
    );
    req.extend_from_slice(&smuggled);
    let x = exchange_closing(&ts, "client-admin", &req, 3).await;
    assert_eq!(x.statuses(), vec![200, 400], "{x:?}");
    assert!(x.closed, "connection left open: {x:?}");
    // One entry: the good request's; never the ambiguous one's or the
    // smuggled one.
    assert_eq!(ts.counts(), [1, 1, 1, 0]);

    // The same Content-Length twice is one Content-Length: the connection
    // goes on to the next request.
    let mut req = format!(
        "{head}Content-Length: {n}\r\nContent-Length: {n}\r\n\r\n{ok}",
        n = ok.len()
    )
    .into_bytes();
    req.extend_from_slice(&ok_req);
    let x = exchange(&ts, "client-admin", &req, 2).await;
    assert_eq!(x.statuses(), vec![200, 200], "{x:?}");
    assert_eq!(ts.counts(), [1, 3, 1, 0]);
}

#[tokio::test]
async fn header_floods_and_huge_headers_are_refused() {
    let ts = TestServer::start().await;
    let body = login("u", "d", 60).to_string();
    let with_headers = |extra: &str| {
        format!(
            "POST /api/add_log HTTP/1.1\r\nHost: localhost\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let flood: String = (0..500).map(|i| format!("X-Flood-{i}: {i}\r\n")).collect();
    let huge = format!("X-Huge: {}\r\n", "a".repeat(256 * 1024));
    let many_cookies: String = (0..200).map(|i| format!("Cookie: c{i}=v\r\n")).collect();
    let long_target = format!(
        "POST /api/add_log?{} HTTP/1.1\r\nHost: localhost\r\n\r\n",
        "q".repeat(256 * 1024)
    );
    for (what, req) in [
        ("500 headers", with_headers(&flood)),
        ("a 256 KiB header", with_headers(&huge)),
        ("200 cookies", with_headers(&many_cookies)),
        ("a 256 KiB request target", long_target),
    ] {
        let x = exchange_closing(&ts, "client-admin", req.as_bytes(), 1).await;
        assert_eq!(x.statuses(), vec![431], "{what}: {x:?}");
        assert!(x.closed, "{what}: connection left open");
    }
    // 90 headers are fine.
    let many: String = (0..90).map(|i| format!("X-H-{i}: {i}\r\n")).collect();
    let x = exchange(&ts, "client-admin", with_headers(&many).as_bytes(), 1).await;
    assert_eq!(x.one().status, 200);
    assert_eq!(ts.counts()[1], 1);
}

#[tokio::test]
async fn http10_and_pipelined_requests_check_the_acl_on_each() {
    let ts = TestServer::start().await;
    let log = |user: &str| bytes(login(user, "d", 60));
    let http10 = |path: &str, body: &[u8]| {
        let mut r = format!(
            "POST {path} HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        r.extend_from_slice(body);
        r
    };

    // HTTP/1.0: served, then closed; the ACL applies.
    let x = exchange_closing(
        &ts,
        "client-sso-server",
        &http10("/api/add_log", &log("a")),
        2,
    )
    .await;
    assert_eq!(x.statuses(), vec![200]);
    assert!(x.closed, "HTTP/1.0 connection kept open");
    let x = exchange(
        &ts,
        "client-sso-server",
        &http10("/api/forget_user", br#"{"username":"a"}"#),
        1,
    )
    .await;
    assert_eq!(x.one().status, 403);
    // Chunked is not HTTP/1.0.
    let x = exchange(
        &ts,
        "client-sso-server",
        b"POST /api/add_log HTTP/1.0\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
        1,
    )
    .await;
    assert!(
        x.statuses() == vec![400] || (x.answers.is_empty() && x.closed),
        "{x:?}"
    );
    assert_eq!(ts.counts()[1], 1);

    // Pipelined: every request is authorized on its own, in order.
    let mut pipeline = Vec::new();
    pipeline.extend(request("POST", "/api/add_log", &log("b")));
    pipeline.extend(request(
        "POST",
        "/api/get_user_logs",
        br#"{"username":"b"}"#,
    ));
    pipeline.extend(request("POST", "/api/forget_user", br#"{"username":"a"}"#));
    pipeline.extend(request("POST", "/api/report", b"{}"));
    pipeline.extend(request("POST", "/api/add_log", &log("c")));
    pipeline.extend(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let x = exchange(&ts, "client-sso-server", &pipeline, 6).await;
    assert_eq!(x.statuses(), vec![200, 403, 403, 403, 200, 200], "{x:?}");
    // The two allowed writes, and the one before: nothing forgotten.
    assert_eq!(ts.counts()[1], 3);

    // Versions that are not HTTP/1.x, and an HTTP/2 preface.
    for req in [
        &b"POST /api/add_log HTTP/2.0\r\nContent-Length: 2\r\n\r\n{}"[..],
        b"POST /api/add_log HTTP/1.2\r\nContent-Length: 2\r\n\r\n{}",
        b"POST /api/add_log\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"\x00\x01\x02\x03\r\n\r\n",
    ] {
        let x = exchange(&ts, "client-admin", req, 1).await;
        if req.starts_with(b"PRI") {
            // An HTTP/2 preface on an HTTP/1.1-only server: closed unanswered.
            assert!(x.answers.is_empty() && x.closed, "{x:?}");
        } else {
            assert_eq!(
                x.statuses(),
                vec![400],
                "{:?}",
                String::from_utf8_lossy(req)
            );
        }
    }
    assert_eq!(ts.counts()[1], 3);
}

#[tokio::test]
async fn malformed_json_of_every_kind_is_400() {
    let ts = TestServer::start().await;
    let valid = login("u", "d", 60).to_string();
    let with_user = |raw: &[u8]| {
        let mut b = br#"{"log":{"timestamp":""#.to_vec();
        b.extend_from_slice(ago(60).as_bytes());
        b.extend_from_slice(br#"","log_type":"login","username":""#);
        b.extend_from_slice(raw);
        b.extend_from_slice(br#""}}"#);
        b
    };
    let deep_array = format!(
        r#"{{"usernames":{}{},"days":1}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let deep_object = format!(
        r#"{{"usernames":["a"],"days":1,"x":{}1{}}}"#,
        r#"{"a":"#.repeat(20_000),
        "}".repeat(20_000)
    );
    let add = "/api/add_log";
    let logs = "/api/get_user_logs";
    let unused = "/api/get_unused_accounts";
    let mut cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (add, format!("{valid} x").into_bytes(), 400),
        (add, format!("{valid}{valid}").into_bytes(), 400),
        (add, format!("{valid}\n{valid}").into_bytes(), 400),
        (add, format!("{valid},").into_bytes(), 400),
        (add, format!("\u{feff}{valid}").into_bytes(), 400),
        (add, with_user(b"\xff\xfe"), 400),
        (add, with_user(b"\xc0\xaf"), 400),
        (add, with_user(b"\xed\xa0\x80"), 400),
        (add, with_user(br"\ud800"), 400),
        (add, with_user(br"\udc00x"), 400),
        (add, with_user(br"\ud800\u0041"), 400),
        (add, b"[]".to_vec(), 400),
        (add, format!("[{valid}]").into_bytes(), 400),
        (add, b"\"log\"".to_vec(), 400),
        (add, b"42".to_vec(), 400),
        (add, b"null".to_vec(), 400),
        (add, b"true".to_vec(), 400),
        (add, b"".to_vec(), 400),
        (add, b"   \n ".to_vec(), 400),
        (add, b"{".to_vec(), 400),
        (add, b"{'log': {}}".to_vec(), 400),
        (add, b"{log: {}}".to_vec(), 400),
        (add, b"{\"log\": {},}".to_vec(), 400),
        (add, b"{/* c */ \"log\": {}}".to_vec(), 400),
        (
            add,
            valid.replace("\"login\"", "\"log\nin\"").into_bytes(),
            400,
        ),
        (
            add,
            format!(
                r#"{{"log":{},"log":{}}}"#,
                entry(&ago(60), "a")["log"],
                entry(&ago(60), "b")["log"]
            )
            .into_bytes(),
            400,
        ),
        (
            add,
            br#"{"log":{"username":"a","username":"b"}}"#.to_vec(),
            400,
        ),
        (
            add,
            bytes(json!({"log": entry(&ago(60), "u")["log"], "extra": 1})),
            400,
        ),
        (
            add,
            bytes(
                json!({"log": {"timestamp": ago(60), "username": "u", "log_type": "login", "ip": "192.0.2.1"}}),
            ),
            400,
        ),
        (
            add,
            bytes(
                json!({"log": {"timestamp": ago(60), "username": "u", "log_type": "login", "device_info": {"id": "d", "cookie": "x"}}}),
            ),
            400,
        ),
        (
            add,
            bytes(
                json!({"log": {"timestamp": ago(60), "username": "u", "log_type": "login", "device_info": {"id": "d", "mobile": "true"}}}),
            ),
            400,
        ),
        (
            add,
            bytes(
                json!({"log": {"timestamp": ago(60), "username": "u", "log_type": "login", "device_info": {"id": "d", "mobile": 1}}}),
            ),
            400,
        ),
        (
            add,
            bytes(json!({"log": {"timestamp": ago(60), "username": ["u"], "log_type": "login"}})),
            400,
        ),
        (add, bytes(json!({"log": "u"})), 400),
        (
            add,
            format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes(),
            413,
        ),
        (unused, deep_array.into_bytes(), 400),
        (unused, deep_object.into_bytes(), 400),
        (logs, bytes(json!({"username": "u", "limit": "10"})), 400),
        (logs, bytes(json!({"username": "u", "limit": 1.5})), 400),
        (logs, bytes(json!({"username": "u", "limit": 10.0})), 400),
        (logs, br#"{"username":"u","limit":1e3}"#.to_vec(), 400),
        (logs, br#"{"username":"u","limit":1e400}"#.to_vec(), 400),
        (logs, br#"{"username":"u","limit":-1e400}"#.to_vec(), 400),
        (logs, br#"{"username":"u","limit":NaN}"#.to_vec(), 400),
        (logs, br#"{"username":"u","limit":Infinity}"#.to_vec(), 400),
        (logs, br#"{"username":"u","limit":0x10}"#.to_vec(), 400),
        (logs, br#"{"username":"u","limit":010}"#.to_vec(), 400),
        (logs, br#"{"username":"u","limit":+1}"#.to_vec(), 400),
        (
            logs,
            br#"{"username":"u","limit":9223372036854775808}"#.to_vec(),
            400,
        ),
        (
            logs,
            br#"{"username":"u","max_days":-9223372036854775809}"#.to_vec(),
            400,
        ),
        (logs, bytes(json!({"username": "u", "limit": -1})), 400),
        (logs, bytes(json!({"username": "u", "limit": 1001})), 400),
        (logs, bytes(json!({"username": "u", "max_days": -1})), 400),
        (
            logs,
            bytes(json!({"username": "u", "max_days": 36_501})),
            400,
        ),
        (
            logs,
            bytes(json!({"username": "u", "max_days": i64::MAX})),
            400,
        ),
        (
            logs,
            bytes(json!({"username": "u", "max_days": i64::MIN})),
            400,
        ),
        (unused, bytes(json!({"usernames": ["a"], "days": -1})), 400),
        (unused, bytes(json!({"usernames": ["a"], "days": 0})), 400),
        (
            unused,
            bytes(json!({"usernames": ["a"], "days": "30"})),
            400,
        ),
        (unused, bytes(json!({"usernames": "a", "days": 30})), 400),
        (unused, bytes(json!({"usernames": [1, 2], "days": 30})), 400),
    ];
    cases.push((logs, bytes(json!({"username": "u", "limit": 5})), 200));
    expect_all(&ts, "admin", &cases).await;
    assert_eq!(ts.counts(), [0, 0, 0, 0]);
}

#[tokio::test]
async fn bad_usernames_are_400_everywhere() {
    let ts = TestServer::start().await;
    let bad: Vec<String> = vec![
        String::new(),
        "u".repeat(257),
        "€".repeat(86),
        "a\u{0}b".into(),
        "\u{0}".into(),
        "a\u{1}b".into(),
        "a\tb".into(),
        "a\r\nb".into(),
        "a\u{1b}[31mb".into(),
        "a\u{7f}".into(),
        "a\u{85}b".into(),
        "a\u{9b}b".into(),
    ];
    for name in &bad {
        let label = format!("{name:?}");
        let label = &label[..label.len().min(40)];
        for (path, body) in [
            ("/api/add_log", entry(&ago(60), name)),
            ("/api/add_log", login(name, "d", 60)),
            ("/api/get_user_logs", json!({ "username": name })),
            ("/api/get_user_devices", json!({ "username": name })),
            (
                "/api/check_device",
                json!({"username": name, "device_info": {"id": "d"}}),
            ),
            (
                "/api/set_last_login",
                json!({"last_login": {"timestamp": ago(60), "username": name, "service": "s"}}),
            ),
            ("/api/get_last_login", json!({ "username": name })),
            (
                "/api/get_unused_accounts",
                json!({"usernames": ["ok", name], "days": 1}),
            ),
            ("/api/forget_user", json!({ "username": name })),
        ] {
            let a = post(&ts, "admin", path, &bytes(body)).await;
            assert_eq!(a.status, 400, "{path} {label}");
        }
    }
    assert_eq!(ts.counts(), [0, 0, 0, 0]);
    // The edges that are fine: 256 bytes, non-ASCII letters.
    for name in [
        "u".repeat(256),
        "€".repeat(85),
        "élan-ü_1.2@example.org".into(),
    ] {
        let a = post(&ts, "admin", "/api/add_log", &bytes(entry(&ago(60), &name))).await;
        assert_eq!(a.status, 200, "{name}");
    }
    assert_eq!(ts.counts()[1], 3);
}

#[tokio::test]
async fn bad_timestamps_are_400() {
    let ts = TestServer::start().await;
    let far_future = (chrono::Utc::now() + chrono::Duration::days(2))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let bad_log: Vec<Value> = vec![
        json!("2026-11-20"),
        json!("2026-11-20 10:00:00Z"),
        json!("2026-11-20T10:00:00"),
        json!("2026-11-20T10:00Z"),
        json!("2026-11-20T10:00:00+25:00"),
        json!("2026-11-20T10:00:00+0100"),
        json!("2026-02-30T10:00:00Z"),
        json!("2026-11-20T24:00:01Z"),
        json!("2026-11-20T10:00:00.1234567890Z"),
        json!("2026-11-20T10:00:00,5Z"),
        json!("+002026-11-20T10:00:00Z"),
        json!("２０２６-11-20T10:00:00Z"),
        json!("yesterday"),
        json!(""),
        json!("1700000000"),
        json!(1_700_000_000),
        json!(null),
        json!("0001-01-01T00:00:00Z"),
        json!("1969-12-31T23:59:59Z"),
        json!("1970-01-01T00:00:00Z"),
        json!(ago(400 * 86_400)),
        json!(far_future),
        json!("9999-12-31T23:59:59Z"),
    ];
    for t in &bad_log {
        let body = json!({"log": {"timestamp": t, "username": "u", "log_type": "login"}});
        let a = post(&ts, "admin", "/api/add_log", &bytes(body)).await;
        assert_eq!(a.status, 400, "add_log timestamp {t}");
    }
    for t in [
        json!("1960-01-01T00:00:00Z"),
        json!(far_future),
        json!("9999-12-31T23:59:59Z"),
        json!("not a time"),
    ] {
        let body = json!({"last_login": {"timestamp": t, "username": "u", "service": "s"}});
        let a = post(&ts, "admin", "/api/set_last_login", &bytes(body)).await;
        assert_eq!(a.status, 400, "set_last_login timestamp {t}");
    }
    assert_eq!(ts.counts(), [0, 0, 0, 0]);
    // Offsets, lower case and nine digits are RFC 3339 too.
    let now = chrono::Utc::now() - chrono::Duration::minutes(5);
    let ist = chrono::FixedOffset::east_opt(5 * 3600 + 1800).unwrap();
    for t in [
        now.with_timezone(&ist)
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, false),
        now.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
            .replace('T', "t")
            .replace('Z', "z"),
    ] {
        let a = post(&ts, "admin", "/api/add_log", &bytes(entry(&t, "ok"))).await;
        assert_eq!(a.status, 200, "{t}");
    }
    assert_eq!(ts.counts()[1], 2);
}

#[tokio::test]
async fn unused_accounts_lists_empty_duplicate_and_too_long() {
    let ts = TestServer::start().await;
    let path = "/api/get_unused_accounts";
    let a = post(
        &ts,
        "admin",
        path,
        &bytes(json!({"usernames": [], "days": 30})),
    )
    .await;
    assert_eq!((a.status, a.json()), (200, json!({"unused_usernames": []})));
    let a = post(
        &ts,
        "admin",
        path,
        &bytes(json!({"usernames": null, "days": 30})),
    )
    .await;
    assert_eq!((a.status, a.json()), (200, json!({"unused_usernames": []})));
    let a = post(
        &ts,
        "admin",
        path,
        &bytes(json!({"usernames": ["b", "a", "b", "a", "b"], "days": 30})),
    )
    .await;
    assert_eq!(
        (a.status, a.json()),
        (200, json!({"unused_usernames": ["b", "a"]}))
    );

    // 100,000 names: over the cap (50,000 by default), a clear 413.
    let names: Vec<String> = (0..100_000).map(|i| format!("user{i}")).collect();
    let started = Instant::now();
    let a = post(
        &ts,
        "admin",
        path,
        &bytes(json!({"usernames": names, "days": 30})),
    )
    .await;
    assert_eq!(a.status, 413, "{:?}", a.json());
    let msg = a.json()["error"].as_str().unwrap_or_default().to_owned();
    assert!(msg.contains("50000"), "{msg}");
    assert!(started.elapsed() < Duration::from_secs(10));
    // Names big enough to cross the byte limit first: 413 as well.
    let fat: Vec<String> = (0..20_000)
        .map(|i| format!("{i}{}", "x".repeat(250)))
        .collect();
    let a = post(
        &ts,
        "admin",
        path,
        &bytes(json!({"usernames": fat, "days": 30})),
    )
    .await;
    assert_eq!(a.status, 413);
    // At the cap it is served.
    let names: Vec<String> = (0..50_000).map(|i| format!("user{i}")).collect();
    let a = post(
        &ts,
        "admin",
        path,
        &bytes(json!({"usernames": names, "days": 30})),
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(
        a.json()["unused_usernames"].as_array().map(Vec::len),
        Some(50_000)
    );
    assert_eq!(ts.counts(), [0, 0, 0, 0]);
}

#[tokio::test]
async fn odd_paths_never_get_around_the_acl() {
    let ts = TestServer::start().await;
    let log = bytes(login("u", "d", 60));
    // Exact match only: none of these is add_log, for anyone.
    for target in [
        "//api/add_log",
        "/api//add_log",
        "/api/./add_log",
        "/./api/add_log",
        "/api/../api/add_log",
        "/api/add_log/",
        "/api/add_log/.",
        "/api/add_log/..",
        "/api%2Fadd_log",
        "/api%2fadd_log",
        "%2Fapi%2Fadd_log",
        "/api/add%5Flog",
        "/api/%61dd_log",
        "/API/add_log",
        "/api/ADD_LOG",
        "/Api/Add_Log",
        "/api/add_log%00",
        "/api/add_log%20",
        "/api/add_log;x",
        "/api/add_log%2F",
        "https://localhost//api/add_log",
        "https://localhost/api/add_log/",
        "localhost:443",
        "*",
        "api/add_log",
    ] {
        for cn in ["admin", "sso-server"] {
            let x = exchange(
                &ts,
                &format!("client-{cn}"),
                &request("POST", target, &log),
                1,
            )
            .await;
            let statuses = x.statuses();
            assert!(
                statuses == vec![404] || statuses == vec![400] || (statuses.is_empty() && x.closed),
                "{cn} {target}: {x:?}"
            );
        }
    }
    assert_eq!(ts.counts(), [0, 0, 0, 0]);

    // sso-server may write, not read or erase: no spelling of a path changes that.
    let read = br#"{"username":"u"}"#;
    for target in [
        "/api/get_user_logs",
        "/api/get_user_logs?/api/add_log",
        "/api/get_user_logs?x=/api/add_log",
        "/api/forget_user",
        "/api/get_user_logs#/api/add_log",
        "https://localhost/api/get_user_logs",
        "http://evil.example/api/forget_user",
        "https://localhost:1/api/get_user_logs?x",
        "/metrics",
    ] {
        let method = if target == "/metrics" { "GET" } else { "POST" };
        let x = exchange(&ts, "client-sso-server", &request(method, target, read), 1).await;
        assert_eq!(x.statuses(), vec![403], "{target}: {x:?}");
    }
    for target in [
        "/api/add_log/../get_user_logs",
        "/api/add_log/%2E%2E/get_user_logs",
        "/api/get_user_logs%23/api/add_log",
        "/api/add_log\\..\\get_user_logs",
    ] {
        let x = exchange(&ts, "client-sso-server", &request("POST", target, read), 1).await;
        assert!(
            x.answers.iter().all(|a| a.status == 404 || a.status == 400)
                && (x.closed || !x.answers.is_empty()),
            "{target}: {x:?}"
        );
    }
    // The absolute form and a query string name the same route as the path:
    // allowed where the path is allowed, and nowhere else.
    for target in [
        "https://localhost/api/add_log",
        "/api/add_log?/api/get_user_logs",
    ] {
        let x = exchange(&ts, "client-sso-server", &request("POST", target, &log), 1).await;
        assert_eq!(x.statuses(), vec![200], "{target}");
    }
    for target in ["https://localhost/api/add_log", "/api/add_log?x"] {
        let x = exchange(
            &ts,
            "client-accounts-panel",
            &request("POST", target, &log),
            1,
        )
        .await;
        assert_eq!(x.statuses(), vec![403], "{target}");
    }
    assert_eq!(ts.counts()[1], 2);
}

/// One connection, written and read a piece at a time.
pub struct Wire<S> {
    stream: S,
    buf: Vec<u8>,
    answers: Vec<Answer>,
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> Wire<S> {
    pub fn new(stream: S) -> Wire<S> {
        Wire {
            stream,
            buf: Vec::new(),
            answers: Vec::new(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
        self.stream.flush().await.unwrap();
    }

    /// The next answer, or `None` once the server has closed the connection.
    pub async fn answer(&mut self) -> Option<Answer> {
        let mut chunk = vec![0u8; 16 * 1024];
        while self.answers.is_empty() {
            let read = tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut chunk));
            match read.await.expect("no answer within 10 s") {
                Ok(0) | Err(_) => return None,
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    parse_answers(&mut self.buf, &mut self.answers, false);
                }
            }
        }
        Some(self.answers.remove(0))
    }
}

const JSON: &str = "application/json";

/// A request head announcing a body of `len` bytes of type `ct`, with
/// `extra` header lines.
fn head(method: &str, path: &str, ct: &str, len: usize, extra: &str) -> Vec<u8> {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: {ct}\r\n{extra}Content-Length: {len}\r\n\r\n"
    )
    .into_bytes()
}

/// A refusal decided before the body has arrived (wrong method, media type
/// or certificate) is answered at once, and the connection still carries the
/// client's next request once the body is in: a client that reuses the
/// connection (every HTTP/1.1 client pool does) must not find it closed.
/// When the body cannot be read off (too large, or held back for `100
/// Continue`), the answer says `Connection: close` before the server closes.
#[tokio::test]
async fn a_refusal_before_the_body_keeps_the_connection_usable() {
    let ts = TestServer::start().await;
    let body = bytes(login("late", "d", 60));
    let (first, rest) = body.split_at(10);
    let next = request("POST", "/api/add_log", &bytes(login("next", "d", 60)));
    let cases: [(&str, Vec<u8>, u16); 3] = [
        (
            "client-admin",
            head("PUT", "/api/add_log", JSON, body.len(), ""),
            405,
        ),
        (
            "client-admin",
            head("POST", "/api/add_log", "text/plain", body.len(), ""),
            415,
        ),
        (
            "client-accounts-panel",
            head("POST", "/api/add_log", JSON, body.len(), ""),
            403,
        ),
    ];
    for (cert, head, status) in cases {
        let mut wire = Wire::new(ts.raw_tls(cert).await);
        wire.send(&[head.as_slice(), first].concat()).await;
        // Answered with part of the body still unsent.
        let a = wire.answer().await.expect("an answer");
        assert_eq!(a.status, status, "{cert}: {a:?}");
        assert_eq!(a.header("connection"), None, "{cert}: {a:?}");
        wire.send(&[rest, &next].concat()).await;
        let next_cert = if cert == "client-accounts-panel" {
            // The panel may not write: its next request is a read.
            wire.send(&request(
                "POST",
                "/api/get_last_login",
                br#"{"username": "next"}"#,
            ))
            .await;
            403
        } else {
            200
        };
        let a = wire.answer().await.expect("the connection is still open");
        assert_eq!(a.status, next_cert, "{cert}: {a:?}");
        if cert == "client-accounts-panel" {
            let a = wire.answer().await.expect("the connection is still open");
            assert_eq!(a.status, 200, "{cert}: {a:?}");
        }
    }
    // The admin's two next requests were stored, the refused ones not.
    assert_eq!(ts.counts()[..2], [1, 2]);

    // Bodies the server will not read through: a close announced, then done.
    let huge = 64 << 20;
    for (what, head) in [
        ("over the limit", head("PUT", "/api/add_log", JSON, huge, "")),
        (
            "awaiting 100 Continue",
            head("PUT", "/api/add_log", JSON, body.len(), "Expect: 100-continue\r\n"),
        ),
        (
            "chunked",
            b"PUT /api/add_log HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n".to_vec(),
        ),
    ] {
        let mut wire = Wire::new(ts.raw_tls("client-admin").await);
        wire.send(&head).await;
        let a = wire.answer().await.expect("an answer");
        assert_eq!(a.status, 405, "{what}: {a:?}");
        assert_eq!(a.header("connection"), Some("close"), "{what}: {a:?}");
        assert!(wire.answer().await.is_none(), "{what}: still open");
    }
    assert_eq!(ts.counts()[..2], [1, 2]);

    // HTTP/2: the stream's upload ends, no reset follows, and the
    // connection serves the next request (which is stored).
    use crate::h2::{refusals_end_their_streams_cleanly, Raw, Refusal};
    let next = bytes(login("next-h2", "d", 60));
    let json = [("content-type", JSON)];
    for (cn, refusal) in [
        ("admin", Refusal::new("405", "PUT", "/api/add_log", 405)),
        (
            "admin",
            Refusal {
                content_type: "text/plain",
                ..Refusal::new("415", "POST", "/api/add_log", 415)
            },
        ),
        (
            "accounts-panel",
            Refusal::new("403", "POST", "/api/add_log", 403),
        ),
    ] {
        let mut raw = Raw::open(ts.addr, cn, &[]).await;
        // The panel may not write: its next request is a read.
        let (path, body) = if cn == "admin" {
            ("/api/add_log", next.as_slice())
        } else {
            ("/api/get_last_login", &br#"{"username": "next"}"#[..])
        };
        refusals_end_their_streams_cleanly(&mut raw, &[refusal], (path, &json, body, 200)).await;
    }
    assert_eq!(
        ts.counts()[..2],
        [2, 4],
        "and the admin's two next requests over HTTP/2"
    );
}
