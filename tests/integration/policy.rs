//! The auth policy listener (Dovecot's `auth_policy_server_url`), spoken as
//! Dovecot 2.3.19 speaks it: the token, `allow` decided by the throttle,
//! `report` stored through the privacy transforms, the administrators'
//! view of a login's throttling, `check_login`, and what is never kept.

use std::net::SocketAddr;

use bytes::Bytes;
use serde_json::{json, Value};
use usermetadb::client::Connection;

use crate::common::*;

pub(crate) const TOKEN: &str = "policy-test-token-6f1c";
pub(crate) const THUNDERBIRD: &str =
    r#""name" "Thunderbird" "version" "115.3" "os" "Windows" "os-version" "10""#;

/// The server with a plain-HTTP policy listener, the test GeoIP database,
/// and `extra` YAML inside `policy:`.
pub(crate) async fn start(extra: &str) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("policy.token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    TestServer::start_in(
        dir,
        &format!(
            "policy:\n  addr: 127.0.0.1:0\n  token_file: {}\n{extra}geoip:\n  db: {}\n",
            token.display(),
            shared_geoip("GeoIP2-Country-Test.mmdb").display()
        ),
    )
    .await
}

/// A policy client on one keep-alive connection, as Dovecot keeps it.
pub(crate) struct Dovecot {
    conn: Connection,
    headers: Vec<(&'static str, String)>,
}

impl Dovecot {
    pub(crate) async fn connect(addr: SocketAddr) -> Dovecot {
        Dovecot::with_header(addr, ("Authorization", format!("Bearer {TOKEN}"))).await
    }

    async fn with_header(addr: SocketAddr, header: (&'static str, String)) -> Dovecot {
        Dovecot {
            conn: Connection::connect(addr, "localhost", None).await.unwrap(),
            headers: vec![header],
        }
    }

    async fn post(&mut self, command: &str, body: &Value) -> (u16, Value) {
        let r = self
            .conn
            .request_with_headers(
                hyper::Method::POST,
                &format!("/?command={command}"),
                &self.headers,
                Some("application/json"),
                Bytes::from(body.to_string()),
            )
            .await
            .unwrap();
        (
            r.status.as_u16(),
            serde_json::from_slice(&r.body).unwrap_or(Value::Null),
        )
    }

    /// `allow`: the status answered (-1 refuse, 0 allow, N delay).
    pub(crate) async fn allow(&mut self, login: &str, remote: &str, pwhash: &str) -> (i64, String) {
        let (status, v) = self
            .post("allow", &attempt(login, remote, pwhash, None))
            .await;
        assert_eq!(status, 200, "{v}");
        (
            v["status"].as_i64().unwrap(),
            v["msg"].as_str().unwrap().to_owned(),
        )
    }

    pub(crate) async fn report(&mut self, login: &str, remote: &str, pwhash: &str, success: bool) {
        let (status, v) = self
            .post("report", &attempt(login, remote, pwhash, Some(success)))
            .await;
        assert_eq!((status, &v), (200, &json!({"status": 0, "msg": ""})));
    }
}

/// A request body as Dovecot 2.3.19 sends it.
pub(crate) fn attempt(login: &str, remote: &str, pwhash: &str, success: Option<bool>) -> Value {
    let mut v = json!({"device_id": THUNDERBIRD, "login": login, "protocol": "imap",
                       "pwhash": pwhash, "remote": remote, "session_id": "iuWEr+9hTIV/AAAB",
                       "tls": false});
    if let Some(s) = success {
        v["success"] = json!(s);
        v["policy_reject"] = json!(false);
    }
    v
}

#[tokio::test]
async fn a_missing_or_wrong_token_is_refused_alike_and_counted() {
    let ts = start("").await;
    let addr = ts.policy.unwrap();
    let before = metric(
        ts.addr,
        "usermetadb_policy_requests_total{outcome=\"unauthorized\"}",
    )
    .await;
    let body = attempt("alice", "81.2.69.160", "0d09", None);
    for header in [
        ("Authorization", "Bearer wrong".to_owned()),
        ("Authorization", TOKEN.to_owned()),
        ("X-API-Key", "wrong".to_owned()),
        ("X-Other", TOKEN.to_owned()),
    ] {
        let mut c = Dovecot::with_header(addr, header.clone()).await;
        let (status, v) = c.post("allow", &body).await;
        assert_eq!(
            (status, &v),
            (401, &json!({"error": "invalid or missing token"})),
            "{header:?}"
        );
    }
    // Dovecot sends a header value without ':' as X-API-Key.
    let mut c = Dovecot::with_header(addr, ("X-API-Key", TOKEN.to_owned())).await;
    assert_eq!(c.post("allow", &body).await.0, 200);
    let after = metric(
        ts.addr,
        "usermetadb_policy_requests_total{outcome=\"unauthorized\"}",
    )
    .await;
    assert!(after - before >= 4, "{before} -> {after}");
    // Wrong commands, methods and bodies: clear errors, nothing stored.
    let mut c = Dovecot::connect(addr).await;
    assert_eq!(c.post("drop", &body).await.0, 404);
    assert_eq!(c.post("report", &json!({"login": "alice"})).await.0, 400);
    assert_eq!(
        c.post("allow", &json!({"remote": "81.2.69.160"})).await.0,
        400
    );
    assert_eq!(c.post("allow", &json!([1])).await.0, 400);
    assert_eq!(ts.counts(), [0, 0, 0, 0]);
}

#[tokio::test]
async fn a_report_is_stored_as_a_login_with_its_country_and_client() {
    let ts = start("").await;
    let mut d = Dovecot::connect(ts.policy.unwrap()).await;
    assert_eq!(d.allow("alice", "81.2.69.160", "0eab").await.0, 0);
    d.report("alice", "81.2.69.160", "0eab", true).await;
    let mut body = attempt("alice", "89.160.20.112", "0639", Some(false));
    body["fail_type"] = json!("credentials");
    body["protocol"] = json!("submission");
    d.post("report", &body).await;

    let mut c = ts.client("admin").await;
    let v = c
        .ok(
            "/api/get_user_logs",
            json!({"username": "alice", "max_days": 30}),
        )
        .await;
    let logs = v["result"].as_array().unwrap();
    assert_eq!(logs.len(), 2, "{v}");
    let failure = &logs
        .iter()
        .find(|l| l["log_type"] == "login_failure")
        .unwrap();
    assert_eq!(failure["service"], "submission");
    assert_eq!(failure["message"], "credentials");
    assert_eq!(failure["device_info"]["remote_zone"], "SE");
    let login = &logs.iter().find(|l| l["log_type"] == "login").unwrap();
    assert_eq!(login["service"], "imap");
    let dev = &login["device_info"];
    assert_eq!(
        (
            &dev["id"],
            &dev["remote_zone"],
            &dev["browser"],
            &dev["os"],
            &dev["remote_addr"]
        ),
        (
            &json!("Thunderbird/Windows"),
            &json!("GB"),
            &json!("Thunderbird 115.3"),
            &json!("Windows 10"),
            &json!("")
        ),
        "{login}"
    );
    // What the client chose (its IMAP ID, an odd `remote`) can never make
    // a report fail: a login is always recorded.
    let mut hostile = attempt("alice", "[81.2.69.160]", "0eab", Some(true));
    hostile["device_id"] = json!(format!(
        "\"name\" \"{}\" \"version\" \"{}\" \"os\" \"Thunder\u{200b}bird\"",
        "A".repeat(300),
        "B".repeat(300)
    ));
    assert_eq!(d.post("report", &hostile).await.0, 200);
    let mut bad_remote = attempt("alice", &"x".repeat(100), "0eab", Some(true));
    bad_remote["protocol"] = json!("pop3");
    assert_eq!(d.post("report", &bad_remote).await.0, 200);
    let v = c
        .ok(
            "/api/get_user_logs",
            json!({"username": "alice", "max_days": 30}),
        )
        .await;
    assert_eq!(v["result"].as_array().unwrap().len(), 4, "{v}");
    let v = c
        .ok(
            "/api/get_last_login",
            json!({"username": "alice", "service": "imap"}),
        )
        .await;
    assert_eq!(v["result"].as_array().unwrap().len(), 1, "{v}");
    // The login counts for the stale-account job.
    let v = c
        .ok(
            "/api/get_unused_accounts",
            json!({"usernames": ["alice", "bob"], "days": 30}),
        )
        .await;
    assert_eq!(v["unused_usernames"], json!(["bob"]));
}

#[tokio::test]
async fn wrong_passwords_are_delayed_then_refused_and_nobody_else_is_slowed() {
    let ts = start("  delay_after: 2\n  refuse_after: 4\n  message: Slow down\n").await;
    let mut d = Dovecot::connect(ts.policy.unwrap()).await;
    let a = "81.2.69.160";
    let mut answers = Vec::new();
    for i in 0..5 {
        answers.push(d.allow("alice", a, &format!("{i:04x}")).await.0);
        d.report("alice", a, &format!("{i:04x}"), false).await;
    }
    assert_eq!(answers, [0, 0, 1, 2, -1]);
    assert_eq!(
        d.allow("alice", a, "0000").await,
        (-1, "Slow down".to_owned())
    );
    // Another user from the same address, and alice from elsewhere.
    assert_eq!(d.allow("bob", a, "1111").await.0, 0);
    assert_eq!(d.allow("alice", "89.160.20.112", "2222").await.0, 0);
    // The same wrong password again and again (a phone with an old one)
    // counts once.
    for _ in 0..20 {
        d.report("carol", a, "beef", false).await;
    }
    assert_eq!(d.allow("carol", a, "beef").await.0, 0);

    // The administrators' view, and clearing it.
    let mut admin = ts.client("admin").await;
    let v = admin
        .ok("/api/admin/throttles", json!({"login": "alice"}))
        .await;
    assert_eq!(v["failing_addresses"], 1, "{v}");
    assert_eq!(v["pairs"][0]["failures"], 5, "{v}");
    assert!(v["pairs"][0]["refused_until"].is_string(), "{v}");
    assert!(!v.to_string().contains(a), "{v}");
    // The same through the admin tool.
    let r = crate::admin::admin(&ts, "admin", &["throttles", "alice"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    let row = r.stdout.lines().nth(1).unwrap_or_default().to_owned();
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        (cells[0], cells[1], cells[3]),
        ("1", "no", "5"),
        "{}",
        r.stdout
    );
    assert!(!r.stdout.contains(a), "{}", r.stdout);
    let r = crate::admin::admin(&ts, "admin", &["clear-throttles", "alice"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    let cleared: u64 = r.stdout.lines().nth(1).unwrap().trim().parse().unwrap();
    assert!(cleared >= 2, "{}", r.stdout);
    let v = admin
        .ok("/api/admin/clear_throttles", json!({"login": "alice"}))
        .await;
    assert_eq!(v["cleared"], 0, "already cleared: {v}");
    assert_eq!(d.allow("alice", a, "0000").await.0, 0);
    // The throttle knows a login as typed, whatever the case or spaces:
    // each variant gets no budget of its own.
    for (i, variant) in ["Alice", "ALICE", " alice", "alice "].iter().enumerate() {
        d.report(variant, a, &format!("{:04x}", 100 + i), false)
            .await;
    }
    assert_eq!(d.allow("aLiCe", a, "0000").await.0, -1);
    // Decisions are counted by reason.
    let refused = metric(
        ts.addr,
        "usermetadb_policy_decisions_total{decision=\"refuse\",reason=\"cooldown\",enforced=\"true\"}",
    )
    .await;
    assert!(refused >= 1, "{refused}");
}

#[tokio::test]
async fn spraying_and_distributed_guessing_are_stopped_but_the_user_gets_in() {
    let ts = start("  spray_logins: 5\n  guess_addresses: 4\n  guess_action: refuse\n").await;
    let mut d = Dovecot::connect(ts.policy.unwrap()).await;
    // One address against many logins.
    let sprayer = "216.160.83.56";
    for i in 0..5 {
        d.report(&format!("victim{i}"), sprayer, "aaaa", false)
            .await;
    }
    assert_eq!(d.allow("someone", sprayer, "aaaa").await.0, -1);

    // One login from many addresses: alice's own client from her country
    // still gets in; a new client or a new country does not.
    d.report("alice", "81.2.69.160", "0eab", true).await;
    for i in 1..=4 {
        d.report(
            "alice",
            &format!("89.160.20.{}", 100 + i),
            &format!("{i:04x}"),
            false,
        )
        .await;
    }
    assert_eq!(
        d.allow("alice", "81.2.69.161", "0eab").await.0,
        0,
        "known client and country"
    );
    assert_eq!(
        d.allow("alice", "89.160.20.120", "0eab").await.0,
        -1,
        "a new country"
    );
    let mut other = attempt("alice", "81.2.69.162", "0eab", None);
    other["device_id"] = json!(r#""name" "Outlook" "os" "Windows""#);
    let (_, v) = d.post("allow", &other).await;
    assert_eq!(v["status"], -1, "a new client: {v}");
    let mut admin = ts.client("admin").await;
    let v = admin
        .ok("/api/admin/throttles", json!({"login": "alice"}))
        .await;
    assert_eq!(
        (v["failing_addresses"].as_i64(), v["under_attack"].as_bool()),
        (Some(4), Some(true)),
        "{v}"
    );

    // The same signals for any auth service.
    let v = admin
        .ok(
            "/api/check_login",
            json!({"username": "alice", "device_info": {"id": "Thunderbird/Windows", "remote_addr": "89.160.20.120"}}),
        )
        .await;
    assert_eq!(v["device_known"], true, "{v}");
    assert_eq!(v["country"], "SE", "{v}");
    assert_eq!(v["country_known"], false, "{v}");
    assert_eq!(v["recent_failures"], 4, "{v}");
    assert_eq!(v["under_attack"], true, "{v}");
    assert_eq!(v["risk"], "high", "{v}");
    assert_eq!(
        v["reasons"],
        json!(["new_country", "recent_failures", "login_under_attack"]),
        "{v}"
    );
    let v = admin
        .ok(
            "/api/check_login",
            json!({"username": "bob", "device_info": {"id": "d1", "remote_addr": "81.2.69.160"}}),
        )
        .await;
    assert_eq!(
        (&v["risk"], &v["reasons"]),
        (&json!("low"), &json!(["first_login"])),
        "{v}"
    );
}

#[tokio::test]
async fn a_dry_run_only_counts_what_it_would_have_done() {
    let ts = start("  dry_run: true\n  delay_after: 1\n  refuse_after: 2\n").await;
    let mut d = Dovecot::connect(ts.policy.unwrap()).await;
    for i in 0..3 {
        d.report("alice", "81.2.69.160", &format!("{i:04x}"), false)
            .await;
    }
    assert_eq!(
        d.allow("alice", "81.2.69.160", "0000").await,
        (0, String::new())
    );
    let would = metric(
        ts.addr,
        "usermetadb_policy_decisions_total{decision=\"refuse\",reason=\"cooldown\",enforced=\"false\"}",
    )
    .await;
    assert_eq!(would, 1);
}

#[tokio::test]
async fn no_address_password_hash_session_or_token_is_kept() {
    // The compiled server on SQLite, logging at debug: the database files,
    // the log and the metrics are read whole.
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("policy.token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let config = dir.path().join("config.yml");
    std::fs::write(
        &config,
        config_yaml(
            dir.path(),
            &format!(
                "policy:\n  addr: 127.0.0.1:0\n  token_file: {}\ngeoip:\n  db: {}\n",
                token.display(),
                shared_geoip("GeoIP2-Country-Test.mmdb").display()
            ),
        ),
    )
    .unwrap();
    let (mut child, addr, log) = spawn_binary(&config, "debug");
    let policy: SocketAddr = eventually_some("the policy listener's address", || {
        let log = log.clone();
        async move {
            let text = log.lock().unwrap().clone();
            let rest = text.split("policy: listening on http://").nth(1)?;
            rest.split_whitespace().next()?.parse().ok()
        }
    })
    .await;
    let mut d = Dovecot::connect(policy).await;
    for (login, ok) in [("alice", true), ("alice", false), ("bob", false)] {
        d.allow(login, "81.2.69.160", "a1b2").await;
        d.report(login, "81.2.69.160", "a1b2", ok).await;
    }
    let mut admin = client_at(addr, "admin").await;
    let r = admin
        .0
        .request(hyper::Method::GET, "/metrics", None, Bytes::new())
        .await
        .unwrap();
    let metrics = String::from_utf8_lossy(&r.body).into_owned();
    assert!(
        metrics.contains("usermetadb_policy_requests_total{outcome=\"report_success\"} 1"),
        "{metrics}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let raw = crate::privacy::database_bytes(dir.path());
    let log = log.lock().unwrap().clone();
    for needle in ["81.2.69.160", "a1b2", "iuWEr+9hTIV/AAAB", TOKEN] {
        assert!(!metrics.contains(needle), "{needle} in /metrics");
        assert!(!log.contains(needle), "{needle} in the log:\n{log}");
        assert!(
            !crate::privacy::contains(&raw, needle.as_bytes()),
            "{needle} in the database files"
        );
    }
    assert!(!metrics.contains("alice"));
}
