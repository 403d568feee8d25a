//! Access transparency and subject access, on the backend under test: reads
//! of one user's data by a client whose CN matches `transparency.record`
//! are recorded once per day and endpoint, answered newest first, deleted by
//! `forget_user`, carried by `db export` / `db import`, and mentioned in the
//! summary; `export_user` (and `user-meta-admin export-user`) answers every
//! kind of row stored about a user.

use std::ffi::OsString;

use serde_json::{json, Value};

use crate::admin::{admin, run_bin, SERVER};
use crate::common::*;

/// `admin` is recorded; `accounts-panel` is not.
const RECORD: &str = "transparency:\n  record: \"admin|support\"\n";

fn today() -> String {
    chrono::Utc::now().format("%Y-%m-%d").to_string()
}

async fn server_db(ts: &TestServer, args: &[&str]) -> crate::admin::Run {
    let mut all: Vec<OsString> = vec!["--config".into(), ts.config.clone().into(), "db".into()];
    all.extend(args.iter().map(OsString::from));
    run_bin(SERVER, all, None).await
}

/// Two logins of `user`, the second from a new device (a `new_device`
/// alert), and a last login.
async fn seed(ts: &TestServer, user: &str) {
    let mut sso = ts.client("sso-server").await;
    sso.ok("/api/add_log", login(user, "d1", 3 * 3600)).await;
    sso.ok("/api/add_log", login(user, "d2", 2 * 3600)).await;
    sso.ok(
        "/api/set_last_login",
        json!({"last_login": {"timestamp": ago(3600), "username": user, "service": "mail"}}),
    )
    .await;
}

fn entries(v: &Value) -> Vec<(String, String, String)> {
    v["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["day"].as_str().unwrap().to_owned(),
                e["reader"].as_str().unwrap().to_owned(),
                e["endpoint"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn reads_by_a_recorded_cn_are_recorded_once_a_day_per_endpoint() {
    let ts = TestServer::start_with(RECORD).await;
    seed(&ts, "alice").await;
    let mut panel = ts.client("accounts-panel").await;
    let mut adm = ts.client("admin").await;
    // Not recorded: a client whose CN does not match, the event list not
    // filtered on a user, and the record itself.
    for path in [
        "/api/get_user_logs",
        "/api/get_user_devices",
        "/api/get_last_login",
        "/api/get_user_alerts",
        "/api/get_user_summary",
    ] {
        panel.ok(path, json!({"username": "alice"})).await;
    }
    adm.ok("/api/admin/events", json!({})).await;
    adm.ok("/api/get_user_access", json!({"username": "alice"}))
        .await;
    let none = panel
        .ok("/api/get_user_access", json!({"username": "alice"}))
        .await;
    assert_eq!(none, json!({"result": []}));

    // Each read twice: one row per endpoint.
    for _ in 0..2 {
        for path in [
            "/api/get_user_logs",
            "/api/get_user_devices",
            "/api/get_last_login",
            "/api/get_user_alerts",
            "/api/get_user_summary",
            "/api/export_user",
        ] {
            adm.ok(path, json!({"username": "alice"})).await;
        }
        adm.ok("/api/admin/events", json!({"username": "alice"}))
            .await;
    }
    let got = panel
        .ok(
            "/api/get_user_access",
            json!({"username": "alice", "max_days": 30}),
        )
        .await;
    let day = today();
    let want: Vec<(String, String, String)> = [
        "admin_events",
        "export_user",
        "get_last_login",
        "get_user_alerts",
        "get_user_devices",
        "get_user_logs",
        "get_user_summary",
    ]
    .iter()
    .map(|e| (day.clone(), "admin".to_owned(), e.to_string()))
    .collect();
    assert_eq!(entries(&got), want, "{got}");
    // Another user's reads are apart.
    let bob = panel
        .ok("/api/get_user_access", json!({"username": "bob"}))
        .await;
    assert_eq!(bob, json!({"result": []}));

    // The summary mentions the latest read.
    let summary = panel
        .ok("/api/get_user_summary", json!({"username": "alice"}))
        .await;
    let fact = summary["facts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["kind"] == "access")
        .unwrap_or_else(|| panic!("{summary}"));
    assert_eq!(
        fact["text"],
        format!("Your sign-in history was viewed by admin on {day}")
    );

    // Bad input: 400.
    let (status, _) = panel
        .post(
            "/api/get_user_access",
            json!({"username": "alice", "max_days": -1}),
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = adm.post("/api/export_user", json!({"username": ""})).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn without_the_setting_nothing_is_recorded() {
    let ts = TestServer::start().await;
    seed(&ts, "alice").await;
    let mut adm = ts.client("admin").await;
    adm.ok("/api/get_user_logs", json!({"username": "alice"}))
        .await;
    adm.ok("/api/export_user", json!({"username": "alice"}))
        .await;
    let got = adm
        .ok("/api/get_user_access", json!({"username": "alice"}))
        .await;
    assert_eq!(got, json!({"result": []}));
}

#[tokio::test]
async fn forget_user_deletes_the_record_and_later_reads_are_recorded_again() {
    let ts = TestServer::start_with(RECORD).await;
    seed(&ts, "alice").await;
    seed(&ts, "bob").await;
    let mut adm = ts.client("admin").await;
    for user in ["alice", "bob"] {
        adm.ok("/api/get_user_logs", json!({"username": user}))
            .await;
        adm.ok("/api/get_user_devices", json!({"username": user}))
            .await;
    }
    let gone = adm
        .ok("/api/forget_user", json!({"username": "alice"}))
        .await;
    assert_eq!(gone["deleted"]["access_reads"], 2, "{gone}");
    assert_eq!(gone["deleted"]["user_logs"], 2, "{gone}");
    let got = adm
        .ok("/api/get_user_access", json!({"username": "alice"}))
        .await;
    assert_eq!(got, json!({"result": []}));
    let bob = adm
        .ok("/api/get_user_access", json!({"username": "bob"}))
        .await;
    assert_eq!(entries(&bob).len(), 2);
    // The same read on the same day is recorded again after the erasure.
    adm.ok("/api/get_user_logs", json!({"username": "alice"}))
        .await;
    let got = adm
        .ok("/api/get_user_access", json!({"username": "alice"}))
        .await;
    assert_eq!(
        entries(&got),
        [(today(), "admin".into(), "get_user_logs".into())]
    );
}

/// A JSONL export holding an older read and a computer's time: imported
/// into the server's (empty) database.
fn older_rows(user: &str) -> String {
    format!(
        r#"{{"kind":"time_spent","time_spent":{{"username":"{user}","computer":"PC-7","day":"2026-01-02T00:00:00Z","seconds":3600,"first_start":"2026-01-02T09:00:00Z","last_end":"2026-01-02T10:00:00Z"}}}}
{{"kind":"access_read","access_read":{{"username":"{user}","reader":"support","endpoint":"get_user_logs","day":"2026-01-03T00:00:00Z"}}}}
"#
    )
}

#[tokio::test]
async fn export_user_holds_every_kind_of_row_and_the_cli_writes_it() {
    let ts = TestServer::start_with(RECORD).await;
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("older.jsonl");
    std::fs::write(&file, older_rows("acme/alice")).unwrap();
    let r = server_db(&ts, &["import", file.to_str().unwrap()]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("1 recorded reads"), "{}", r.stderr);
    seed(&ts, "acme/alice").await;
    seed(&ts, "acme/bob").await;

    let mut adm = ts.client("admin").await;
    let doc = adm
        .ok("/api/export_user", json!({"username": "acme/alice"}))
        .await;
    assert_eq!(doc["username"], "acme/alice");
    let logs = doc["logs"].as_array().unwrap();
    assert_eq!(logs.len(), 2, "{doc}");
    assert!(logs.iter().all(|l| l["username"] == "acme/alice"));
    assert_eq!(
        logs[0]["device_info"]["id"], "d2",
        "newest first, IDs opened"
    );
    let mut devices: Vec<&str> = doc["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device_info"]["id"].as_str().unwrap())
        .collect();
    devices.sort();
    assert_eq!(devices, ["d1", "d2"]);
    // The countries seen, each kept to the day.
    let countries = doc["countries"].as_array().unwrap();
    assert_eq!(countries.len(), 1, "{doc}");
    assert_eq!(countries[0]["country"], "IT");
    for seen in ["first_seen", "last_seen"] {
        let day = countries[0][seen].as_str().unwrap();
        assert!(day.ends_with("T00:00:00Z"), "{seen}: {day}");
    }
    assert_eq!(doc["last_logins"][0]["service"], "mail");
    let alerts = doc["alerts"].as_array().unwrap();
    assert_eq!(alerts.len(), 1, "{doc}");
    assert_eq!(alerts[0]["kind"], "new_device");
    assert!(alerts[0]["deliveries"].as_array().is_some());
    assert_eq!(
        doc["time_spent"],
        json!([{"computer": "PC-7", "day": "2026-01-02T00:00:00Z", "seconds": 3600,
                "first_start": "2026-01-02T09:00:00Z", "last_end": "2026-01-02T10:00:00Z"}])
    );
    // The access record: the imported read; this export is recorded after
    // its answer is built.
    assert_eq!(
        doc["access"],
        json!([{"reader": "support", "endpoint": "get_user_logs", "day": "2026-01-03"}])
    );
    // Newest first.
    let got = adm
        .ok("/api/get_user_access", json!({"username": "acme/alice"}))
        .await;
    assert_eq!(
        entries(&got),
        [
            (today(), "admin".into(), "export_user".into()),
            (
                "2026-01-03".into(),
                "support".into(),
                "get_user_logs".into()
            ),
        ]
    );
    let recent = adm
        .ok(
            "/api/get_user_access",
            json!({"username": "acme/alice", "max_days": 7}),
        )
        .await;
    assert_eq!(entries(&recent).len(), 1);

    // The command line writes the same document.
    let r = admin(&ts, "admin", &["export-user", "acme/alice"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    let cli: Value = serde_json::from_str(&r.stdout).unwrap();
    for key in [
        "username",
        "logs",
        "devices",
        "countries",
        "last_logins",
        "alerts",
        "time_spent",
    ] {
        assert_eq!(cli[key], doc[key], "{key}");
    }
    assert_eq!(cli["access"].as_array().unwrap().len(), 2);
    let r = admin(
        &ts,
        "admin",
        &["--format", "json", "user-access", "acme/alice"],
    )
    .await;
    assert_eq!(r.code, 0, "{r:?}");
    let listed: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(listed["result"].as_array().unwrap().len(), 2);

    // A user never seen: an empty document, not an error.
    let none = adm
        .ok("/api/export_user", json!({"username": "nobody"}))
        .await;
    assert_eq!(none["logs"], json!([]));
    assert_eq!(none["access"], json!([]));
}

#[tokio::test]
async fn db_export_and_import_carry_the_record() {
    let ts = TestServer::start_with(RECORD).await;
    seed(&ts, "alice").await;
    let mut adm = ts.client("admin").await;
    adm.ok("/api/get_user_logs", json!({"username": "alice"}))
        .await;
    adm.ok("/api/export_user", json!({"username": "alice"}))
        .await;
    // Reads are written within a second; asking for the record writes
    // those waiting at once.
    adm.ok("/api/get_user_access", json!({"username": "alice"}))
        .await;
    let r = server_db(&ts, &["export", "-"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("2 recorded reads"), "{}", r.stderr);
    let reads: Vec<Value> = r
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["kind"] == "access_read")
        .collect();
    assert_eq!(reads.len(), 2);
    assert_eq!(reads[0]["access_read"]["reader"], "admin");
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("all.jsonl");
    std::fs::write(&file, &r.stdout).unwrap();

    let target = TestServer::start_with(RECORD).await;
    let r = server_db(&target, &["import", file.to_str().unwrap()]).await;
    assert_eq!(r.code, 0, "{r:?}");
    let mut panel = target.client("accounts-panel").await;
    let got = panel
        .ok("/api/get_user_access", json!({"username": "alice"}))
        .await;
    assert_eq!(
        entries(&got),
        [
            (today(), "admin".into(), "export_user".into()),
            (today(), "admin".into(), "get_user_logs".into()),
        ]
    );
}

#[tokio::test]
async fn a_scoped_client_exports_only_its_tenants_users() {
    let ts = TestServer::start_with(&format!(
        "      - {{ path: \"/api/(get_.*|export_user)\", cn: \"acme-admin\", tenants: [acme] }}\n{RECORD}"
    ))
    .await;
    seed(&ts, "acme/ann").await;
    seed(&ts, "globex/cy").await;
    let mut acme = ts.client("acme-admin").await;
    let doc = acme
        .ok("/api/export_user", json!({"username": "acme/ann"}))
        .await;
    assert_eq!(doc["logs"].as_array().unwrap().len(), 2);
    for body in [json!({"username": "globex/cy"}), json!({"username": "dan"})] {
        let (status, _) = acme.post("/api/export_user", body.clone()).await;
        assert_eq!(status, 403, "{body}");
        let (status, _) = acme.post("/api/get_user_access", body.clone()).await;
        assert_eq!(status, 403, "{body}");
    }
    let (status, _) = acme
        .post("/api/get_user_access", json!({"username": "acme/ann"}))
        .await;
    assert_eq!(status, 200);
}
