//! Clients scoped to tenants: an ACL entry naming `tenants` lets its client
//! read only those tenants' users (`tenant/…`), and the answers across users
//! hold only their rows; an entry without tenants changes nothing.

use serde_json::{json, Value};

use crate::agents::{agent_time, event, new_key, Agent};
use crate::common::*;

/// `acme-admin` may read and administer acme only; it may also read any
/// user's summary through an entry without tenants.
const SCOPED: &str = r#"      - { path: "/api/(get_.*|admin/.*|report|forget_user)", cn: "acme-admin", tenants: [acme] }
      - { path: "/api/get_user_summary", cn: "acme-admin" }
"#;

async fn start(top_extra: &str) -> TestServer {
    TestServer::start_with(&format!(
        "{SCOPED}agents:\n  addr: 127.0.0.1:0\n  per_user_time: [acme, globex]\n  tls:\n    cert: {}\n    key: {}\nprivacy:\n  report_min_users: 1\n{top_extra}",
        cert("server.pem").display(),
        cert("server.key").display(),
    ))
    .await
}

/// Two logins of each user, the second from a new device: one
/// `new_device` alert each.
async fn seed(ts: &TestServer, users: &[&str]) {
    let mut sso = ts.client("sso-server").await;
    for user in users {
        sso.ok("/api/add_log", login(user, "d1", 3 * 3600)).await;
        sso.ok("/api/add_log", login(user, "d2", 2 * 3600)).await;
    }
}

const USERS: [&str; 5] = ["acme/ann", "acme/bob", "globex/cy", "dan", "acmex/eve"];

fn users_of(list: &Value, key: &str) -> Vec<String> {
    let mut names: Vec<String> = list[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["username"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names.dedup();
    names
}

#[tokio::test]
async fn a_scoped_client_reads_its_tenants_users_only() {
    let ts = start("").await;
    seed(&ts, &USERS).await;
    let mut acme = ts.client("acme-admin").await;
    for (path, body) in [
        ("/api/get_user_logs", json!({"username": "acme/ann"})),
        ("/api/get_user_devices", json!({"username": "acme/ann"})),
        ("/api/get_last_login", json!({"username": "acme/ann"})),
        ("/api/get_user_alerts", json!({"username": "acme/ann"})),
        ("/api/admin/throttles", json!({"login": "acme/ann"})),
    ] {
        let (status, v) = acme.post(path, body).await;
        assert_eq!(status, 200, "{path}: {v}");
    }
    let logs = acme
        .ok("/api/get_user_logs", json!({"username": "acme/ann"}))
        .await;
    assert_eq!(logs["result"].as_array().unwrap().len(), 2);
    // Another tenant's user, a user of no tenant, a tenant whose name only
    // starts like acme's, a tenant's name alone: refused as the ACL refuses.
    for user in ["globex/cy", "dan", "acmex/eve", "acme", "ACME/ann", ""] {
        for (path, body) in [
            ("/api/get_user_logs", json!({"username": user})),
            ("/api/get_user_devices", json!({"username": user})),
            ("/api/get_last_login", json!({"username": user})),
            ("/api/get_user_alerts", json!({"username": user})),
            ("/api/forget_user", json!({"username": user})),
            ("/api/admin/throttles", json!({"login": user})),
            ("/api/admin/clear_throttles", json!({"login": user})),
        ] {
            let (status, v) = acme.post(path, body).await;
            assert_eq!(
                (status, &v),
                (403, &json!({"error": "forbidden"})),
                "{path} {user:?}"
            );
        }
        if !user.is_empty() {
            let (status, _) = acme
                .post("/api/admin/events", json!({"username": user}))
                .await;
            assert_eq!(status, 403, "events of {user:?}");
        }
    }
    // Nothing was forgotten.
    let mut admin = ts.client("admin").await;
    let cy = admin
        .ok("/api/get_user_logs", json!({"username": "globex/cy"}))
        .await;
    assert_eq!(cy["result"].as_array().unwrap().len(), 2);
    // An entry without tenants that also allows the request lifts the scope.
    let (status, _) = acme
        .post("/api/get_user_summary", json!({"username": "globex/cy"}))
        .await;
    assert_eq!(status, 200);
    // What no entry allows stays refused.
    assert_eq!(
        acme.post("/api/add_log", login("acme/ann", "d1", 60))
            .await
            .0,
        403
    );
    // An alert ID names no tenant: retrying is the operator's.
    assert_eq!(
        acme.post("/api/admin/retry_alert", json!({"id": 1}))
            .await
            .0,
        403
    );
    // A tenant's own user may be forgotten.
    acme.ok("/api/forget_user", json!({"username": "acme/bob"}))
        .await;
    let bob = admin
        .ok("/api/get_user_logs", json!({"username": "acme/bob"}))
        .await;
    assert!(bob["result"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn unused_accounts_must_all_be_the_tenants() {
    let ts = start("").await;
    seed(&ts, &USERS).await;
    let mut sso = ts.client("sso-server").await;
    sso.ok(
        "/api/set_last_login",
        json!({"last_login": {"timestamp": ago(3600), "username": "acme/ann", "service": "mail"}}),
    )
    .await;
    let mut acme = ts.client("acme-admin").await;
    let v = acme
        .ok(
            "/api/get_unused_accounts",
            json!({"usernames": ["acme/ann", "acme/zed"], "days": 30}),
        )
        .await;
    assert_eq!(v["unused_usernames"], json!(["acme/zed"]));
    for foreign in ["globex/cy", "dan", "acmex/eve"] {
        let (status, v) = acme
            .post(
                "/api/get_unused_accounts",
                json!({"usernames": ["acme/ann", foreign], "days": 30}),
            )
            .await;
        assert_eq!(
            (status, v),
            (403, json!({"error": "forbidden"})),
            "{foreign}"
        );
    }
}

#[tokio::test]
async fn listings_across_users_hold_only_the_tenants_rows() {
    let ts = start("").await;
    seed(&ts, &USERS).await;
    let mut acme = ts.client("acme-admin").await;
    let mut admin = ts.client("admin").await;

    // Events: without a tenant, with its own, and never another's.
    let mine = acme.ok("/api/admin/events", json!({})).await;
    assert_eq!(users_of(&mine, "result"), ["acme/ann", "acme/bob"]);
    assert_eq!(mine["result"].as_array().unwrap().len(), 4);
    let named = acme
        .ok("/api/admin/events", json!({"tenant": "acme"}))
        .await;
    assert_eq!(named, mine);
    let one = acme
        .ok("/api/admin/events", json!({"username": "acme/ann"}))
        .await;
    assert_eq!(users_of(&one, "result"), ["acme/ann"]);
    let (status, _) = acme
        .post("/api/admin/events", json!({"tenant": "globex"}))
        .await;
    assert_eq!(status, 403);
    let limited = acme.ok("/api/admin/events", json!({"limit": 1})).await;
    assert_eq!(limited["result"].as_array().unwrap().len(), 1);

    // Alerts.
    let alerts = acme.ok("/api/admin/alerts", json!({})).await;
    assert_eq!(users_of(&alerts, "alerts"), ["acme/ann", "acme/bob"]);

    // Unscoped: everyone, as before.
    let all = admin.ok("/api/admin/events", json!({})).await;
    assert_eq!(users_of(&all, "result").len(), USERS.len());
    let all_alerts = admin.ok("/api/admin/alerts", json!({})).await;
    assert_eq!(users_of(&all_alerts, "alerts").len(), USERS.len());

    // Reports: every one counts acme's users only.
    let day = chrono::Utc::now().date_naive();
    let distinct = |v: &Value| -> Value {
        let r = v["reports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["kind"] == "distinct_users")
            .unwrap();
        r["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|row| row["key"] == "(any)")
            .unwrap()["users"]
            .clone()
    };
    // Logged two hours ago: yesterday's when run just after midnight.
    let wide = json!({
        "from": format!("{}T00:00:00Z", day - chrono::Duration::days(1)),
        "to": format!("{day}T23:59:59Z"),
    });
    let scoped = acme.ok("/api/report", wide.clone()).await;
    assert_eq!(distinct(&scoped), 2, "{scoped}");
    let alerts_report = scoped["reports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kind"] == "alerts_by_kind")
        .unwrap();
    assert_eq!(alerts_report["rows"][0]["users"], 2, "{alerts_report}");
    let everyone = admin.ok("/api/report", wide.clone()).await;
    assert_eq!(distinct(&everyone), USERS.len());
    let mut named = wide.clone();
    named["tenant"] = json!("acme");
    assert_eq!(acme.ok("/api/report", named).await, scoped);
    let mut foreign = wide;
    foreign["tenant"] = json!("globex");
    assert_eq!(acme.post("/api/report", foreign).await.0, 403);
}

#[tokio::test]
async fn time_spent_from_agents_is_the_tenants_only() {
    let ts = start("").await;
    let day = (chrono::Utc::now() - chrono::Duration::hours(3)).date_naive();
    for tenant in ["acme", "globex"] {
        let key = new_key(&ts, tenant, "hq");
        let mut agent = Agent::connect(&ts, &key).await;
        for (kind, secs_ago) in [("Sign-In", 3 * 3600), ("Sign-Out", 2 * 3600)] {
            let (status, v) = agent
                .event(event(kind, "john", "PC1", &agent_time(secs_ago)))
                .await;
            assert_eq!(status, 201, "{v}");
        }
    }
    let request = |tenant: &str| {
        json!({
            "from": format!("{}T00:00:00Z", day - chrono::Duration::days(1)),
            "to": format!("{}T00:00:00Z", day + chrono::Duration::days(2)),
            "kind": "time_spent",
            "tenant": tenant,
        })
    };
    let mut acme = ts.client("acme-admin").await;
    let mut admin = ts.client("admin").await;
    // The client's tenant by default: per user, acme's only.
    let v = acme.ok("/api/report", request("")).await;
    let rows = v["reports"][0]["time_spent"].as_array().unwrap().clone();
    assert!(!rows.is_empty(), "{v}");
    assert!(rows.iter().all(|r| r["username"] == "acme/john"), "{v}");
    let total = |v: &Value| -> i64 {
        v["reports"][0]["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["users"].as_i64().unwrap())
            .max()
            .unwrap_or(0)
    };
    assert_eq!(total(&v), 1, "{v}");
    assert_eq!(acme.post("/api/report", request("globex")).await.0, 403);
    // The unscoped admin still sees both tenants' totals.
    let all = admin.ok("/api/report", request("")).await;
    assert_eq!(total(&all), 2, "{all}");
}

#[tokio::test]
async fn a_client_of_several_tenants_sees_each_and_names_one_for_reports() {
    let ts = TestServer::start_with(
        r#"      - { path: "/api/(admin/events|report)", cn: "acme-admin", tenants: [acme] }
      - { path: "/api/admin/events", cn: "acme-admin", tenants: [globex] }
      - { path: "/api/report", cn: "acme-admin", tenants: [globex] }
"#,
    )
    .await;
    seed(&ts, &USERS).await;
    let mut c = ts.client("acme-admin").await;
    let v = c.ok("/api/admin/events", json!({})).await;
    assert_eq!(
        users_of(&v, "result"),
        ["acme/ann", "acme/bob", "globex/cy"]
    );
    let newest: Vec<&str> = v["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["timestamp"].as_str().unwrap())
        .collect();
    let mut sorted = newest.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(newest, sorted, "newest first");
    let day = chrono::Utc::now().date_naive();
    let mut range = json!({
        "from": format!("{}T00:00:00Z", day - chrono::Duration::days(1)),
        "to": format!("{day}T23:59:59Z"),
    });
    let (status, v) = c.post("/api/report", range.clone()).await;
    assert_eq!(status, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("name one"), "{v}");
    range["tenant"] = json!("globex");
    assert_eq!(c.post("/api/report", range).await.0, 200);
}
