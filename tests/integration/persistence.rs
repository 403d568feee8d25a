//! Durability: restarts keep everything, and an acknowledged write survives
//! `kill -9` of the server process.

use std::sync::{Arc, Mutex};

use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn a_restart_keeps_all_data() {
    let ts = TestServer::start().await;
    let mut c = ts.client("admin").await;
    c.ok("/api/add_log", login("keep", "dev", 3600)).await;
    c.ok(
        "/api/set_last_login",
        json!({"last_login": {"timestamp": ago(60), "username": "keep", "service": "mail"}}),
    )
    .await;
    let logs_before = c
        .ok("/api/get_user_logs", json!({"username": "keep"}))
        .await;
    let devices_before = c
        .ok("/api/get_user_devices", json!({"username": "keep"}))
        .await;
    drop(c);
    let dir = ts.stop().await;

    let ts = TestServer::start_in(dir, "").await;
    let mut c = ts.client("admin").await;
    assert_eq!(
        c.ok("/api/get_user_logs", json!({"username": "keep"}))
            .await,
        logs_before
    );
    assert_eq!(
        c.ok("/api/get_user_devices", json!({"username": "keep"}))
            .await,
        devices_before
    );
    let last = c
        .ok("/api/get_last_login", json!({"username": "keep"}))
        .await;
    assert_eq!(last["result"].as_array().unwrap().len(), 1);
    // The device ID still opens: the key was kept beside the database.
    assert_eq!(devices_before["devices"][0]["device_info"]["id"], "dev");
}

#[tokio::test]
async fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yml");
    std::fs::write(&config, config_yaml(dir.path(), "")).unwrap();
    let db = dir.path().join("usermeta.db");

    for round in 0..3 {
        let (mut child, addr, _log) = spawn_binary(&config, "info");
        let acked = Arc::new(Mutex::new(Vec::<String>::new()));
        let mut tasks = Vec::new();
        for worker in 0..4 {
            let acked = acked.clone();
            tasks.push(tokio::spawn(async move {
                let tls = identity("client-sso-server");
                let Ok(mut c) =
                    usermetadb::client::Connection::connect(addr, "localhost", Some(tls)).await
                else {
                    return;
                };
                for i in 0.. {
                    let user = format!("r{round}-w{worker}-{i}");
                    let body = login(&user, "dev", 60).to_string();
                    match c.post_raw("/api/add_log", body.into()).await {
                        Ok(r) if r.status == 200 => acked.lock().unwrap().push(user),
                        _ => return,
                    }
                }
            }));
        }
        // Let the load run until writes are being acknowledged, then kill
        // without warning.
        let acking = acked.clone();
        eventually("writes to be acknowledged", || {
            let n = acking.lock().unwrap().len();
            async move { n >= 50 }
        })
        .await;
        child.kill().unwrap();
        child.wait().unwrap();
        for t in tasks {
            let _ = t.await;
        }
        let acked = acked.lock().unwrap().clone();
        assert!(
            acked.len() > 10,
            "round {round}: only {} writes acknowledged",
            acked.len()
        );

        let c = rusqlite::Connection::open(&db).unwrap();
        let ok: String = c
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ok, "ok");
        let mut stmt = c
            .prepare("SELECT count(*) FROM users u JOIN user_logs l ON l.user_id = u.id WHERE u.name = ?1")
            .unwrap();
        for user in &acked {
            let n: i64 = stmt.query_row([user], |r| r.get(0)).unwrap();
            assert_eq!(n, 1, "round {round}: acknowledged write for {user} lost");
        }
    }
}

#[tokio::test]
async fn sigterm_finishes_the_request_in_flight_then_exits() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yml");
    std::fs::write(&config, config_yaml(dir.path(), "")).unwrap();
    let (mut child, addr, log) = spawn_binary(&config, "info");

    let mut s = raw_tls_at(addr, "client-sso-server").await;
    let body = login("inflight", "dev", 60).to_string();
    let head = format!(
        "POST /api/add_log HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&body.as_bytes()[..10]).await.unwrap();
    s.flush().await.unwrap();
    metric_settles(addr, "usermetadb_inflight_requests", 1).await;

    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    // The listener closes, but the request in flight completes.
    eventually("the listener to close after SIGTERM", || async move {
        tokio::net::TcpStream::connect(addr).await.is_err()
    })
    .await;
    s.write_all(&body.as_bytes()[10..]).await.unwrap();
    s.flush().await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    drop(s);
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
    assert!(log.lock().unwrap().contains("SIGTERM received"));
    assert_eq!(db_counts(&dir.path().join("usermeta.db"))[1], 1);
}
