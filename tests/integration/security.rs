//! The admin surfaces against stored text planted by a hostile source (an
//! `add_log` caller, a workstation holding its agent's key): names that do
//! not mean what they show, spreadsheet formulas and terminal escapes in
//! the admin tool's output, and the server log never dating a login.

use std::ffi::OsString;

use serde_json::{json, Value};

use crate::admin::{admin, run_bin, SERVER};
use crate::common::*;

fn log_entry(user: &str, service: &str, device: &str) -> Value {
    json!({"log": {"timestamp": ago(60), "username": user, "log_type": "login",
                   "service": service, "device_info": {"id": device}}})
}

#[tokio::test]
async fn identifiers_that_do_not_mean_what_they_show_are_refused_by_every_writer() {
    let ts = crate::agents::start("", "").await;
    let mut c = ts.client("admin").await;
    let cases = [
        (log_entry("acme/a\u{200b}b", "mail", "d"), "U+200B"),
        (log_entry("acme/ab\u{feff}", "mail", "d"), "U+FEFF"),
        (log_entry("alice", "ma\u{202e}il", "d"), "U+202E"),
        (log_entry("alice", "mail", "d\u{2066}1"), "U+2066"),
        (log_entry("alice\u{ffff}", "mail", "d"), "U+FFFF"),
        (log_entry("alice\u{fdd0}", "mail", "d"), "U+FDD0"),
    ];
    for (body, named) in cases {
        let (status, v) = c.post("/api/add_log", body.clone()).await;
        assert_eq!(status, 400, "{body}: {v}");
        let msg = v["error"].as_str().unwrap();
        assert!(msg.contains(named), "{body}: {msg}");
    }
    let (status, v) = c
        .post(
            "/api/set_last_login",
            json!({"last_login": {"timestamp": ago(60), "username": "bob\u{200d}", "service": "mail"}}),
        )
        .await;
    assert_eq!(status, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("U+200D"), "{v}");

    // The agents: a computer name that displays reversed, and names that
    // case folding would merge into another account.
    let key = crate::agents::new_key(&ts, "acme", "hq");
    let mut agent = crate::agents::Agent::connect(&ts, &key).await;
    for (user, computer, named) in [
        ("john", "PC\u{202e}EXE.TXT", "U+202E"),
        ("\u{212a}elvin", "PC-1", "U+212A"),
        ("john", "pc-stra\u{df}e", "U+00DF"),
        ("\u{130}smail", "PC-1", "U+0130"),
        ("jo\u{200b}hn", "PC-1", "U+200B"),
    ] {
        let at = crate::agents::agent_time(60);
        let (status, v) = agent
            .event(crate::agents::event("logon", user, computer, &at))
            .await;
        assert_eq!(status, 400, "{user} {computer}: {v}");
        assert!(
            v.to_string().contains(named),
            "{user} {computer}: {v} names {named}"
        );
    }
    assert_eq!(ts.counts(), [0, 0, 0, 0], "nothing refused was stored");

    // Non-ASCII names that fold to non-ASCII still go in, folded as before.
    let at = crate::agents::agent_time(60);
    let (status, v) = agent
        .event(crate::agents::event("logon", "JÖRG", "pc-ü", &at))
        .await;
    assert_eq!(status, 201, "{v}");
    let (status, v) = c
        .post("/api/get_user_devices", json!({"username": "acme/jörg"}))
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["devices"][0]["device_info"]["id"], "PC-Ü", "{v}");
}

#[tokio::test]
async fn names_stored_before_the_rules_can_still_be_read_and_erased() {
    // A name with a zero-width space, as an older server stored it, brought
    // in by `db import` (which takes names as they are).
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yml");
    std::fs::write(&config, config_yaml(dir.path(), "")).unwrap();
    let old = "acme/a\u{200b}b";
    let lines = [
        json!({"kind": "log", "log": {"timestamp": ago(7200), "username": old, "log_type": "login", "service": "mail"}}),
        json!({"kind": "last_login", "last_login": {"timestamp": ago(7200), "username": old, "service": "mail"}}),
    ];
    let file = dir.path().join("old.jsonl");
    std::fs::write(
        &file,
        lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
    )
    .unwrap();
    let args: Vec<OsString> = vec![
        "--config".into(),
        config.into(),
        "db".into(),
        "import".into(),
        file.into(),
    ];
    let r = run_bin(SERVER, args, None).await;
    assert_eq!(r.code, 0, "{r:?}");

    let ts = TestServer::start_sqlite_in(dir, "").await;
    let mut c = ts.client("admin").await;
    let v = c
        .ok(
            "/api/get_user_logs",
            json!({"username": old, "max_days": 30}),
        )
        .await;
    assert_eq!(v["result"].as_array().unwrap().len(), 1, "{v}");
    let v = c.ok("/api/get_last_login", json!({"username": old})).await;
    assert_eq!(v["result"][0]["service"], "mail", "{v}");
    let v = c.ok("/api/forget_user", json!({"username": old})).await;
    assert_eq!(v["deleted"]["user_logs"], 1, "{v}");
    assert_eq!(v["deleted"]["last_logins"], 1, "{v}");
    assert_eq!(ts.counts()[1..], [0, 0, 0]);
}

#[tokio::test]
async fn the_admin_tool_writes_spreadsheet_safe_csv_and_terminal_safe_tables() {
    let ts = crate::agents::start("", "").await;
    let mut c = ts.client("admin").await;
    let formula_user = "=cmd|' /C calc'!A0";
    let escapes = "hello \u{1b}]0;owned\u{7}\u{1b}[2J\u{9b}31m";
    c.ok(
        "/api/add_log",
        json!({"log": {"timestamp": ago(60), "username": formula_user, "log_type": "login",
                       "service": "@SUM(A1)", "message": escapes,
                       "device_info": {"id": "+1-device"}}}),
    )
    .await;
    let key = crate::agents::new_key(&ts, "acme", "hq");
    let mut agent = crate::agents::Agent::connect(&ts, &key).await;
    let at = crate::agents::agent_time(60);
    let (status, v) = agent
        .event(crate::agents::event(
            "logon",
            "-john",
            "=HYPERLINK(\"http://evil.example/x\",\"open\")",
            &at,
        ))
        .await;
    assert_eq!(status, 201, "{v}");

    let r = admin(&ts, "admin", &["--format", "csv", "events"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    let cells = csv_cells(&r.stdout);
    for want in [
        "'=cmd|' /C calc'!A0",
        "'@SUM(A1)",
        "'+1-device",
        // Not a formula once the tenant is in front: kept as it is.
        "acme/-john",
        "'=HYPERLINK(\"HTTP://EVIL.EXAMPLE/X\",\"OPEN\")",
    ] {
        assert!(
            cells.iter().any(|c| c == want),
            "{want} not among {cells:?}"
        );
    }
    for cell in &cells {
        assert!(
            !cell.starts_with(['=', '+', '-', '@', '\t', '\r']),
            "a cell a spreadsheet evaluates: {cell:?}\n{}",
            r.stdout
        );
    }

    // The table escapes the message's terminal controls; JSON keeps it exact.
    let r = admin(&ts, "admin", &["get-user-logs", formula_user]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        !r.stdout.chars().any(|ch| ch.is_control() && ch != '\n'),
        "{:?}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("hello \\x1b]0;owned\\x07\\x1b[2J\\u{9b}31m"),
        "{}",
        r.stdout
    );
    let r = admin(
        &ts,
        "admin",
        &["--format", "json", "get-user-logs", formula_user],
    )
    .await;
    assert_eq!(r.code, 0, "{r:?}");
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["result"][0]["message"], escapes);
}

/// The cells of a CSV document (RFC 4180 quoting).
fn csv_cells(text: &str) -> Vec<String> {
    let mut cells = Vec::new();
    let mut cell = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(ch) = chars.next() {
        match (quoted, ch) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                cell.push('"');
            }
            (true, '"') => quoted = false,
            (true, ch) => cell.push(ch),
            (false, '"') => quoted = true,
            (false, ',' | '\n') => cells.push(std::mem::take(&mut cell)),
            (false, ch) => cell.push(ch),
        }
    }
    cells
}

#[tokio::test]
async fn no_log_line_at_info_names_an_alert_or_a_user() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yml");
    std::fs::write(&config, config_yaml(dir.path(), "")).unwrap();
    let (mut child, addr, log) = spawn_binary(&config, "info");
    let mut c = client_at(addr, "sso-server").await;
    let user = "dated-user";
    c.ok("/api/add_log", login(user, "d1", 60)).await;
    // A second device: a new_device alert, taken by the log sink.
    c.ok("/api/add_log", login(user, "d2", 30)).await;
    c.ok(
        "/api/add_log",
        json!({"log": {"timestamp": ago(20), "username": user, "log_type": "password_change"}}),
    )
    .await;
    for kind in ["new_device", "security_change"] {
        let name = format!("usermetadb_alerts_total{{kind=\"{kind}\"}}");
        eventually(&format!("the log sink takes the {kind} alert"), || {
            let name = name.clone();
            async move { metric(addr, &name).await >= 1 }
        })
        .await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let log = log.lock().unwrap().clone();
    assert!(log.contains("listening on"), "{log}");
    let kinds = [
        "new_device",
        "new_country",
        "dormant_account",
        "security_change",
        "login_failure_burst",
        "alert",
    ];
    for line in log.lines() {
        let level = line.split_whitespace().nth(1).unwrap_or("");
        if !matches!(level, "INFO" | "WARN" | "ERROR") {
            continue;
        }
        for needle in kinds.iter().chain([&user]) {
            assert!(
                !line.contains(needle),
                "a line at {level} names {needle}: {line}"
            );
        }
    }
}
