//! Every endpoint's behaviour, and the golden request/response files.

use serde_json::{json, Value};

use crate::common::*;

#[tokio::test]
async fn golden_go_bodies_are_answered_as_the_go_server_would() {
    let ts = TestServer::start_with("retention:\n  user_logs: 36500d\n").await;
    let mut c = ts.client("admin").await;
    let dir = repo().join("testdata/golden");
    let mut requests: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".request.json"))
        .collect();
    requests.sort();
    assert!(requests.len() >= 15);
    for req in requests {
        let name = req.file_name().unwrap().to_string_lossy().to_string();
        let endpoint = name
            .trim_end_matches(".request.json")
            .split_once('-')
            .unwrap()
            .1
            .to_string();
        let body = std::fs::read(&req).unwrap();
        let want: Value = serde_json::from_slice(
            &std::fs::read(dir.join(name.replace(".request.", ".response."))).unwrap(),
        )
        .unwrap();
        let r = c.post_bytes(&format!("/api/{endpoint}"), body).await;
        assert_eq!(r.status, 200, "{name}: {:?}", r.body);
        assert_eq!(parse(&r), want, "{name}");
    }
}

#[tokio::test]
async fn logs_are_newest_first_quantized_and_bounded() {
    let ts = TestServer::start().await;
    let mut sso = ts.client("sso-server").await;
    let mut panel = ts.client("accounts-panel").await;
    for (i, days) in [40, 20, 10, 1].iter().enumerate() {
        sso.ok("/api/add_log", login("u1", &format!("d{i}"), days * 86_400))
            .await;
    }
    let all = panel
        .ok(
            "/api/get_user_logs",
            json!({"username": "u1", "max_days": 0, "limit": 0}),
        )
        .await;
    let entries = all["result"].as_array().unwrap();
    assert_eq!(entries.len(), 4);
    let times: Vec<&str> = entries
        .iter()
        .map(|e| e["timestamp"].as_str().unwrap())
        .collect();
    let mut sorted = times.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(times, sorted, "newest first");
    for t in &times {
        assert!(t.ends_with(":00:00Z"), "{t} not floored to the hour");
    }
    let recent = panel
        .ok(
            "/api/get_user_logs",
            json!({"username": "u1", "max_days": 15, "limit": 10}),
        )
        .await;
    assert_eq!(recent["result"].as_array().unwrap().len(), 2);
    let limited = panel
        .ok(
            "/api/get_user_logs",
            json!({"username": "u1", "max_days": 0, "limit": 3}),
        )
        .await;
    assert_eq!(limited["result"].as_array().unwrap().len(), 3);
    let nobody = panel
        .ok("/api/get_user_logs", json!({"username": "nobody"}))
        .await;
    assert_eq!(nobody, json!({"result": []}));
    for bad in [
        json!({"username": "u1", "limit": 1001}),
        json!({"username": "u1", "limit": -1}),
        json!({"username": "u1", "max_days": -1}),
        json!({"username": "u1", "max_days": 100000}),
    ] {
        let (status, v) = panel.post("/api/get_user_logs", bad.clone()).await;
        assert_eq!(status, 400, "{bad} -> {v}");
    }
}

#[tokio::test]
async fn every_log_entry_answers_its_own_device_id() {
    let ts = TestServer::start().await;
    let mut sso = ts.client("sso-server").await;
    let mut panel = ts.client("accounts-panel").await;
    // More devices than an answer keeps opened, each used twice, interleaved,
    // one hour apart so the order is known; entries without a device between.
    let mut sent = Vec::new();
    for round in 0..2 {
        for d in 0..20 {
            let hours_ago = 100 - (round * 20 + d);
            sso.ok(
                "/api/add_log",
                login("many", &format!("device-{d}"), hours_ago * 3_600),
            )
            .await;
            sent.push(Some(format!("device-{d}")));
            if d % 7 == 0 {
                let mut bare = login("many", "", hours_ago * 3_600 - 1);
                bare["log"].as_object_mut().unwrap().remove("device_info");
                sso.ok("/api/add_log", bare).await;
                sent.push(None);
            }
        }
    }
    let got = panel
        .ok(
            "/api/get_user_logs",
            json!({"username": "many", "max_days": 0, "limit": 0}),
        )
        .await;
    let got: Vec<Option<String>> = got["result"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|e| e["device_info"]["id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(got, sent);
}

#[tokio::test]
async fn devices_track_first_and_last_seen_and_logins() {
    let ts = TestServer::start().await;
    let mut sso = ts.client("sso-server").await;
    let mut panel = ts.client("accounts-panel").await;
    sso.ok("/api/add_log", login("u2", "phone", 5 * 86_400))
        .await;
    sso.ok("/api/add_log", login("u2", "phone", 2 * 86_400))
        .await;
    sso.ok("/api/add_log", login("u2", "laptop", 86_400)).await;
    let d = panel
        .ok("/api/get_user_devices", json!({"username": "u2"}))
        .await;
    let devices = d["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 2);
    assert_eq!(
        devices[0]["device_info"]["id"], "laptop",
        "most recent first"
    );
    let phone = &devices[1];
    assert_eq!(phone["device_info"]["id"], "phone");
    assert_eq!(phone["num_logins"], 2);
    assert!(phone["first_seen"].as_str() < phone["last_seen"].as_str());
    assert_eq!(phone["device_info"]["remote_addr"], "");

    let seen = |id: &str| json!({"username": "u2", "device_info": {"id": id}});
    assert_eq!(
        sso.ok("/api/check_device", seen("phone")).await,
        json!({"seen": true})
    );
    assert_eq!(
        sso.ok("/api/check_device", seen("tablet")).await,
        json!({"seen": false})
    );
    let other = json!({"username": "u3", "device_info": {"id": "phone"}});
    assert_eq!(
        sso.ok("/api/check_device", other).await,
        json!({"seen": false})
    );
    let (status, _) = sso
        .post("/api/check_device", json!({"username": "u2"}))
        .await;
    assert_eq!(status, 400);
}

/// The device index's gauge from `/metrics`, once the index is in step with
/// the table.
async fn device_index_held(admin: &mut Client) -> f64 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let r = admin
            .0
            .request(hyper::Method::GET, "/metrics", None, bytes::Bytes::new())
            .await
            .unwrap();
        let text = String::from_utf8(r.body.to_vec()).unwrap();
        let held: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("usermetadb_device_index_devices "))
            .expect("the device index gauge")
            .parse()
            .unwrap();
        if held >= 0.0 {
            return held;
        }
        assert!(std::time::Instant::now() < deadline, "never in step");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn check_device_sees_a_new_device_and_a_forgotten_user_at_once() {
    // SQLite's device index, followed through writes and an erasure.
    let ts = TestServer::start_sqlite_in(tempfile::tempdir().unwrap(), "").await;
    let mut sso = ts.client("sso-server").await;
    let mut admin = ts.client("admin").await;
    sso.ok("/api/add_log", login("k1", "phone", 7200)).await;
    let seen = |id: &str| json!({"username": "k1", "device_info": {"id": id}});
    assert_eq!(device_index_held(&mut admin).await, 1.0);
    assert_eq!(
        sso.ok("/api/check_device", seen("phone")).await,
        json!({"seen": true})
    );
    assert_eq!(
        sso.ok("/api/check_device", seen("laptop")).await,
        json!({"seen": false})
    );
    // Known as soon as the login that brought it is answered.
    sso.ok("/api/add_log", login("k1", "laptop", 60)).await;
    assert_eq!(
        sso.ok("/api/check_device", seen("laptop")).await,
        json!({"seen": true})
    );
    assert_eq!(device_index_held(&mut admin).await, 2.0);
    // Unknown as soon as the user is forgotten.
    admin
        .ok("/api/forget_user", json!({"username": "k1"}))
        .await;
    for id in ["phone", "laptop"] {
        assert_eq!(
            sso.ok("/api/check_device", seen(id)).await,
            json!({"seen": false})
        );
    }
    assert_eq!(device_index_held(&mut admin).await, 0.0);
    for id in ["phone", "laptop"] {
        assert_eq!(
            sso.ok("/api/check_device", seen(id)).await,
            json!({"seen": false})
        );
    }
}

#[tokio::test]
async fn last_login_per_service_and_unused_accounts() {
    let ts = TestServer::start().await;
    let mut sso = ts.client("sso-server").await;
    let mut admin = ts.client("admin").await;
    let set = |user: &str, service: &str, secs_ago: i64| json!({"last_login": {"timestamp": ago(secs_ago), "username": user, "service": service}});
    sso.ok("/api/set_last_login", set("active", "mail", 3600))
        .await;
    sso.ok("/api/set_last_login", set("active", "web", 10 * 86_400))
        .await;
    sso.ok("/api/set_last_login", set("stale", "mail", 400 * 86_400))
        .await;
    let (status, v) = sso
        .post(
            "/api/set_last_login",
            json!({"last_login": {"timestamp": ago(0), "username": "x"}}),
        )
        .await;
    assert_eq!(status, 400, "service is required: {v}");

    let all = admin
        .ok("/api/get_last_login", json!({"username": "active"}))
        .await;
    let services: Vec<&str> = all["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["service"].as_str().unwrap())
        .collect();
    assert_eq!(services, ["mail", "web"]);
    for e in all["result"].as_array().unwrap() {
        assert!(
            e["timestamp"].as_str().unwrap().ends_with("T00:00:00Z"),
            "floored to the day"
        );
    }
    let one = admin
        .ok(
            "/api/get_last_login",
            json!({"username": "active", "service": "web"}),
        )
        .await;
    assert_eq!(one["result"].as_array().unwrap().len(), 1);

    let unused = admin
        .ok(
            "/api/get_unused_accounts",
            json!({"usernames": ["stale", "active", "never", "stale", "never"], "days": 365}),
        )
        .await;
    assert_eq!(unused, json!({"unused_usernames": ["stale", "never"]}));
    let empty = admin
        .ok(
            "/api/get_unused_accounts",
            json!({"usernames": [], "days": 30}),
        )
        .await;
    assert_eq!(empty, json!({"unused_usernames": []}));
    let (status, _) = admin
        .post(
            "/api/get_unused_accounts",
            json!({"usernames": ["a"], "days": 0}),
        )
        .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn unused_accounts_takes_ten_thousand_names_in_one_request() {
    let ts = TestServer::start().await;
    let mut admin = ts.client("admin").await;
    for i in 0..50 {
        admin
            .ok(
                "/api/set_last_login",
                json!({"last_login": {"timestamp": ago(60), "username": format!("user{i}"), "service": "mail"}}),
            )
            .await;
    }
    let names: Vec<String> = (0..10_000).map(|i| format!("user{i}")).collect();
    let v = admin
        .ok(
            "/api/get_unused_accounts",
            json!({"usernames": names, "days": 30}),
        )
        .await;
    let unused = v["unused_usernames"].as_array().unwrap();
    assert_eq!(unused.len(), 10_000 - 50);
    assert_eq!(unused[0], "user50");
}

#[tokio::test]
async fn health_answers_get() {
    let ts = TestServer::start().await;
    let mut c = ts.client("prometheus").await;
    let r =
        c.0.request(hyper::Method::GET, "/health", None, bytes::Bytes::new())
            .await
            .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(parse(&r), json!({"status": "ok"}));
}
