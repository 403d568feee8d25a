//! The login monitor end to end: rules through the API, alert volume, summaries,
//! and deliveries to a real webhook receiver and a real SMTP server.

use serde_json::{json, Value};

use crate::common::*;
use crate::receivers::{free_port, SmtpServer, WebhookReceiver};

fn entry(user: &str, log_type: &str, device: Option<(&str, &str)>, secs_ago: i64) -> Value {
    let mut log = json!({"timestamp": ago(secs_ago), "username": user, "log_type": log_type, "service": "mail"});
    if let Some((id, zone)) = device {
        log["device_info"] =
            json!({"id": id, "remote_zone": zone, "browser": "Firefox", "os": "Linux"});
    }
    json!({ "log": log })
}

async fn kinds(c: &mut Client, user: &str) -> Vec<String> {
    let v = c
        .ok("/api/get_user_alerts", json!({"username": user}))
        .await;
    let mut k: Vec<String> = v["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["kind"].as_str().unwrap().to_owned())
        .collect();
    k.sort();
    k
}

#[tokio::test]
async fn rules_raise_the_right_alerts_through_the_api() {
    let ts = TestServer::start().await;
    let mut c = ts.client("admin").await;
    const DAY: i64 = 86_400;
    c.ok(
        "/api/add_log",
        entry("u", "login", Some(("d1", "IT")), 10 * DAY),
    )
    .await;
    assert!(
        kinds(&mut c, "u").await.is_empty(),
        "the very first login is not new"
    );
    c.ok(
        "/api/add_log",
        entry("u", "login", Some(("d1", "IT")), 9 * DAY),
    )
    .await;
    assert!(
        kinds(&mut c, "u").await.is_empty(),
        "a known device is not new"
    );
    c.ok(
        "/api/add_log",
        entry("u", "login", Some(("d2", "IT")), 8 * DAY),
    )
    .await;
    assert_eq!(kinds(&mut c, "u").await, ["new_device"]);
    c.ok(
        "/api/add_log",
        entry("u", "login", Some(("d2", "DE")), 7 * DAY),
    )
    .await;
    assert_eq!(kinds(&mut c, "u").await, ["new_country", "new_device"]);
    c.ok("/api/add_log", entry("u", "password_change", None, 6 * DAY))
        .await;
    c.ok("/api/add_log", entry("u", "otp_disabled", None, 6 * DAY))
        .await;
    c.ok(
        "/api/add_log",
        entry("u", "logout", Some(("d3", "FR")), 5 * DAY),
    )
    .await;
    assert_eq!(
        kinds(&mut c, "u").await,
        [
            "new_country",
            "new_device",
            "security_change",
            "security_change"
        ]
    );
    let v = c
        .ok(
            "/api/get_user_alerts",
            json!({"username": "u", "max_days": 30}),
        )
        .await;
    let texts: Vec<&str> = v["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["text"].as_str().unwrap())
        .collect();
    assert!(
        texts
            .iter()
            .any(|t| t.starts_with("Two-factor authentication disabled on ")),
        "{texts:?}"
    );
    assert!(
        texts
            .iter()
            .any(|t| t.starts_with("First login from Germany on ")),
        "{texts:?}"
    );
    assert!(
        texts
            .iter()
            .any(|t| t.contains(": Firefox on Linux from Italy")),
        "{texts:?}"
    );
    let recent = c
        .ok(
            "/api/get_user_alerts",
            json!({"username": "u", "max_days": 1}),
        )
        .await;
    assert!(recent["alerts"].as_array().unwrap().is_empty());

    // Dormant: a login after 200 days without one.
    c.ok(
        "/api/add_log",
        entry("sleepy", "login", Some(("d", "IT")), 300 * DAY),
    )
    .await;
    c.ok(
        "/api/add_log",
        entry("sleepy", "login", Some(("d", "IT")), 3600),
    )
    .await;
    assert_eq!(kinds(&mut c, "sleepy").await, ["dormant_account"]);

    // A burst of failures raises one alert.
    for _ in 0..25 {
        c.ok("/api/add_log", entry("target", "login_failure", None, 60))
            .await;
    }
    assert_eq!(kinds(&mut c, "target").await, ["login_failure_burst"]);
    let v = c
        .ok("/api/get_user_alerts", json!({"username": "target"}))
        .await;
    assert_eq!(v["alerts"][0]["details"]["failures"], 10);
}

#[tokio::test]
async fn a_burst_of_logins_from_one_new_device_yields_one_alert() {
    let ts = TestServer::start().await;
    let mut c = ts.client("sso-server").await;
    c.ok(
        "/api/add_log",
        entry("b", "login", Some(("old", "IT")), 86_400),
    )
    .await;
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let mut c = ts.client("sso-server").await;
        tasks.push(tokio::spawn(async move {
            for _ in 0..100 {
                c.ok("/api/add_log", entry("b", "login", Some(("new", "IT")), 60))
                    .await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut admin = ts.client("admin").await;
    assert_eq!(kinds(&mut admin, "b").await, ["new_device"]);
    assert_eq!(ts.counts()[1], 1001);
}

#[tokio::test]
async fn rules_can_be_switched_off_and_tuned() {
    let ts = TestServer::start_with(
        "alerts:\n  rules: [security_change, login_failure_burst]\n  failure_burst: { count: 3, window: 2h }\n",
    )
    .await;
    let mut c = ts.client("admin").await;
    c.ok(
        "/api/add_log",
        entry("u", "login", Some(("d1", "IT")), 7200),
    )
    .await;
    c.ok(
        "/api/add_log",
        entry("u", "login", Some(("d2", "DE")), 3600),
    )
    .await;
    for _ in 0..3 {
        c.ok("/api/add_log", entry("u", "login_failure", None, 60))
            .await;
    }
    c.ok("/api/add_log", entry("u", "password_reset", None, 60))
        .await;
    assert_eq!(
        kinds(&mut c, "u").await,
        ["login_failure_burst", "security_change"]
    );
}

#[tokio::test]
async fn summaries_read_like_sentences() {
    let ts = TestServer::start().await;
    let mut c = ts.client("admin").await;
    c.ok(
        "/api/add_log",
        entry("s", "login", Some(("d1", "DE")), 3 * 86_400),
    )
    .await;
    c.ok("/api/add_log", entry("s", "login", Some(("d2", "IT")), 60))
        .await;
    c.ok("/api/add_log", entry("s", "login_failure", None, 60))
        .await;
    c.ok(
        "/api/set_last_login",
        json!({"last_login": {"timestamp": ago(60), "username": "s", "service": "webmail"}}),
    )
    .await;
    let v = c
        .ok("/api/get_user_summary", json!({"username": "s"}))
        .await;
    assert_eq!(v["username"], "s");
    let facts = v["facts"].as_array().unwrap();
    let text_of = |kind: &str| -> Vec<String> {
        facts
            .iter()
            .filter(|f| f["kind"] == kind)
            .map(|f| f["text"].as_str().unwrap().to_owned())
            .collect()
    };
    let last = &text_of("last_login")[0];
    assert!(
        last == "Last login less than an hour ago with Firefox on Linux from Italy"
            || last == "Last login 1 hour ago with Firefox on Linux from Italy",
        "{last}"
    );
    assert_eq!(
        text_of("devices"),
        ["2 known devices; the most recent is Firefox on Linux"]
    );
    assert_eq!(
        text_of("failed_logins"),
        ["1 failed login in the last 30 days"]
    );
    let today = chrono::Utc::now() - chrono::Duration::seconds(60);
    let expect = format!(
        "New device on {}: Firefox on Linux from Italy",
        today.format("%Y-%m-%d")
    );
    assert_eq!(text_of("new_device"), [expect]);
    assert!(text_of("service_login")[0].starts_with("Last used webmail on "));
    let empty = c
        .ok("/api/get_user_summary", json!({"username": "nobody"}))
        .await;
    assert_eq!(empty["facts"][0]["text"], "No login recorded");
}

const SECRET: &[u8] = b"webhook-test-secret";

#[tokio::test]
async fn webhook_deliveries_are_signed_retried_and_survive_a_restart() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hook.secret"), SECRET).unwrap();
    let alerts_yaml = format!(
        "alerts:\n  webhook:\n    url: http://127.0.0.1:{port}/hooks/usermetadb\n    secret_file: {}\n    timeout: 2s\n  retry: {{ initial: 1s, max: 2s }}\n",
        dir.path().join("hook.secret").display()
    );
    let ts = TestServer::start_in(dir, &alerts_yaml).await;
    let mut c = ts.client("admin").await;
    // The receiver is down: alerts queue up and their failures show.
    let users = ["w1", "w2", "w3"];
    for u in users {
        c.ok("/api/add_log", entry(u, "login", Some(("a", "IT")), 7200))
            .await;
        c.ok("/api/add_log", entry(u, "login", Some(("b", "IT")), 3600))
            .await;
        c.ok("/api/add_log", entry(u, "password_change", None, 60))
            .await;
    }
    eventually("failed attempts to be recorded", || {
        let c2 = ts.client("admin");
        async move {
            let v = c2
                .await
                .ok("/api/get_user_alerts", json!({"username": "w1"}))
                .await;
            v["alerts"].as_array().unwrap().iter().all(|a| {
                a["deliveries"].as_array().unwrap().iter().any(|d| {
                    d["sink"] == "webhook"
                        && d["state"] == "pending"
                        && d["attempts"].as_i64() >= Some(1)
                        && d["last_error"].is_string()
                })
            })
        }
    })
    .await;
    drop(c);
    let dir = ts.stop().await;

    // Receiver up, server restarted on the same database: everything arrives.
    let receiver = WebhookReceiver::start(port, SECRET).await;
    let ts = TestServer::start_in(dir, &alerts_yaml).await;
    eventually("all six alerts delivered", || {
        let n = receiver.bodies().len();
        async move { n >= 6 }
    })
    .await;
    // Once every delivery is recorded as delivered, none is sent again.
    eventually("every webhook delivery to be recorded", || {
        let c = ts.client("admin");
        async move {
            let mut c = c.await;
            let mut all = true;
            for u in users {
                let v = c.ok("/api/get_user_alerts", json!({"username": u})).await;
                all &= v["alerts"].as_array().unwrap().iter().all(|a| {
                    a["deliveries"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .filter(|d| d["sink"] == "webhook")
                        .all(|d| d["state"] == "delivered")
                });
            }
            all
        }
    })
    .await;
    let got = receiver.bodies();
    assert_eq!(got.len(), 6, "each alert once: {got:?}");
    let mut ids: Vec<&str> = got.iter().map(|r| r.delivery_id.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 6);
    for r in &got {
        assert!(r.signature_ok, "bad signature on {:?}", r.body);
        assert!(users.contains(&r.body["username"].as_str().unwrap()));
        assert!(["new_device", "security_change"].contains(&r.body["kind"].as_str().unwrap()));
        assert!(r.body["text"].as_str().unwrap().contains(" on "));
        assert!(r.body["timestamp"].as_str().unwrap().ends_with(":00:00Z"));
    }
    let mut c = ts.client("admin").await;
    let v = c
        .ok("/api/get_user_alerts", json!({"username": "w2"}))
        .await;
    for a in v["alerts"].as_array().unwrap() {
        let hook = a["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["sink"] == "webhook")
            .unwrap();
        assert_eq!(hook["state"], "delivered");
        assert!(
            hook["delivered_at"].as_str().unwrap().ends_with(":00:00Z"),
            "delivery times are stored quantized: {hook}"
        );
        assert!(hook.get("last_error").is_none());
    }
    receiver.stop();
}

#[tokio::test]
async fn mail_reaches_the_admin_and_the_user_over_starttls() {
    let dir = tempfile::tempdir().unwrap();
    let smtp = SmtpServer::start(dir.path(), true);
    let alerts_yaml = format!(
        "alerts:\n  smtp:\n    server: 127.0.0.1:{}\n    tls: starttls\n    ca: {}\n    from: usermetadb@example.org\n    admin_to: security@example.org\n    user_to: \"{{username}}@example.org\"\n  retry: {{ initial: 1s, max: 2s }}\n",
        smtp.port,
        cert("ca.pem").display()
    );
    let ts = TestServer::start_with(&alerts_yaml).await;
    let mut c = ts.client("admin").await;
    c.ok(
        "/api/add_log",
        entry("alice", "login", Some(("a", "DE")), 7200),
    )
    .await;
    c.ok(
        "/api/add_log",
        entry("alice", "login", Some(("b", "IT")), 3600),
    )
    .await;
    // New device and new country: two alerts, each to two recipients.
    eventually("four messages", || {
        let n = smtp.messages().len();
        async move { n >= 4 }
    })
    .await;
    let msgs = smtp.messages();
    assert_eq!(msgs.len(), 4);
    let to_user: Vec<&String> = msgs
        .iter()
        .filter(|m| m.contains("To: alice@example.org"))
        .collect();
    let to_admin: Vec<&String> = msgs
        .iter()
        .filter(|m| m.contains("To: security@example.org"))
        .collect();
    assert_eq!((to_user.len(), to_admin.len()), (2, 2));
    let new_device = to_user
        .iter()
        .find(|m| m.contains("New device"))
        .expect("a new-device mail to the user");
    for part in [
        "Firefox on Linux",
        "Italy",
        "(to the hour)",
        "If it was not you",
        "change your password",
    ] {
        assert!(
            new_device.contains(part),
            "{part} missing from:\n{new_device}"
        );
    }
    assert!(to_admin.iter().all(|m| m.contains("alice")));
    drop(c);
    // The delivery is recorded just after the server accepted the message.
    eventually("every delivery recorded as delivered", || {
        let c = ts.client("admin");
        async move {
            let v = c
                .await
                .ok("/api/get_user_alerts", json!({"username": "alice"}))
                .await;
            v["alerts"].as_array().unwrap().iter().all(|a| {
                a["deliveries"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|d| d["state"] == "delivered")
            })
        }
    })
    .await;
}

#[tokio::test]
async fn webhooks_over_tls_verify_the_receiver_and_present_a_client_certificate() {
    let receiver = WebhookReceiver::start_tls(0, SECRET).await;
    let alerts_yaml = format!(
        "alerts:\n  webhook:\n    url: https://127.0.0.1:{}/hook\n    secret: {}\n    ca: {}\n    cert: {}\n    key: {}\n",
        receiver.addr.port(),
        std::str::from_utf8(SECRET).unwrap(),
        cert("ca.pem").display(),
        cert("client-admin.pem").display(),
        cert("client-admin.key").display(),
    );
    let ts = TestServer::start_with(&alerts_yaml).await;
    let mut c = ts.client("admin").await;
    c.ok("/api/add_log", entry("t", "otp_enabled", None, 60))
        .await;
    eventually("the alert over TLS", || {
        let n = receiver.bodies().len();
        async move { n >= 1 }
    })
    .await;
    let got = receiver.bodies();
    assert!(got[0].signature_ok);
    assert_eq!(got[0].body["kind"], "security_change");
    assert!(got[0].body["text"]
        .as_str()
        .unwrap()
        .starts_with("Two-factor authentication enabled on "));
}
