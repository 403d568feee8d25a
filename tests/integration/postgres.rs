//! The server on PostgreSQL: several replicas on one database through a
//! SIGKILL, and moving a database between SQLite and PostgreSQL.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::json;

use crate::common::*;
use crate::receivers::{free_port, WebhookReceiver};

const SECRET: &[u8] = b"replica-hook-secret";
const REPLICAS: usize = 3;
/// Workers per replica, and users per worker (each user logs in twice,
/// the second time from a new device: one new_device alert each).
const WORKERS: usize = 2;
const USERS: usize = 40;

fn replica_config(dir: &std::path::Path, uri: &str, hook_port: u16) -> String {
    std::fs::write(dir.join("hook.secret"), SECRET).unwrap();
    let key = dir.join("device.key");
    if !key.exists() {
        std::fs::write(&key, "11".repeat(32)).unwrap();
    }
    format!(
        "db_uri: \"{uri}\"\nsecrets:\n  device_key_file: {key}\nhttp_server:\n  tls:\n    cert: {c}\n    key: {k}\n    ca: {ca}\n{ACL}alerts:\n  log: false\n  webhook:\n    url: http://127.0.0.1:{hook_port}/hook\n    secret_file: {secret}\n    timeout: 2s\n  retry: {{ initial: 1s, max: 1s }}\n  delivery_lease: 3s\nretention:\n  interval: 2s\n",
        key = key.display(),
        c = cert("server.pem").display(),
        k = cert("server.key").display(),
        ca = cert("ca.pem").display(),
        secret = dir.join("hook.secret").display(),
    )
}

#[derive(Default)]
struct Tally {
    /// Messages of the acknowledged add_logs, by user.
    acked: Vec<(String, String)>,
    /// 5xx answers, by replica.
    server_errors: [usize; REPLICAS],
    /// check_device answers "unknown" for a device this client had
    /// acknowledged.
    unseen: usize,
}

/// Three processes on one PostgreSQL: a mixed load through all of them, one
/// SIGKILLed and started again in the middle. Every acknowledged write is
/// there exactly once, every alert reaches the webhook exactly once, and the
/// replicas that stay up never answer 5xx.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_share_one_database_through_a_kill() {
    let _quiet = QUIET.lock().await;
    let Some(cluster) = pg_cluster() else { return };
    cluster.create_database("replicas").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let hook_port = free_port();
    let config = dir.path().join("config.yml");
    std::fs::write(
        &config,
        replica_config(dir.path(), &cluster.uri("replicas"), hook_port),
    )
    .unwrap();

    let mut children = Children(Vec::new());
    let mut logs = Vec::new();
    let addrs: Arc<Mutex<Vec<SocketAddr>>> = Arc::new(Mutex::new(Vec::new()));
    for _ in 0..REPLICAS {
        let (child, addr, log) = spawn_binary(&config, "info");
        logs.push(log);
        children.0.push(child);
        addrs.lock().unwrap().push(addr);
    }

    // The webhook receiver is down while the load runs and the replica is
    // killed: no delivery can succeed before it, so none is in flight when
    // the replica dies, and each must arrive exactly once afterwards.
    let tally = Arc::new(Mutex::new(Tally::default()));
    let progress = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for replica in 0..REPLICAS {
        for w in 0..WORKERS {
            let (addrs, tally, progress) = (addrs.clone(), tally.clone(), progress.clone());
            workers.push(tokio::spawn(async move {
                let connect = |addrs: &Arc<Mutex<Vec<SocketAddr>>>| {
                    let addr = addrs.lock().unwrap()[replica];
                    async move { try_client_at(addr, "admin").await }
                };
                let mut client = None;
                for u in 0..USERS {
                    let user = format!("r{replica}w{w}u{u}");
                    for (step, device) in [(0, "first"), (1, "second")] {
                        // Bounded: a replica that is down is tried again,
                        // at most for a while. A request whose answer was
                        // lost may have been stored: the next attempt is
                        // a new entry (its own message), so that each
                        // acknowledged one can be counted exactly.
                        for attempt in 0..100 {
                            let message = format!("{user}-{step}-{attempt}");
                            let body = json!({"log": {
                                "timestamp": ago(60),
                                "username": user, "log_type": "login", "service": "mail",
                                "message": message,
                                "device_info": {"id": format!("{user}-{device}"),
                                                "remote_addr": "81.2.69.160"}}});
                            if client.is_none() {
                                client = connect(&addrs).await.ok();
                            }
                            let Some(c) = client.as_mut() else {
                                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                                continue;
                            };
                            match c.0.post_raw("/api/add_log", body.to_string().into()).await {
                                Ok(r) if r.status == 200 => {
                                    tally.lock().unwrap().acked.push((user.clone(), message.clone()));
                                    break;
                                }
                                Ok(r) => {
                                    if r.status.is_server_error() {
                                        tally.lock().unwrap().server_errors[replica] += 1;
                                    }
                                    client = None;
                                }
                                Err(_) => client = None,
                            }
                        }
                    }
                    // The device this worker just stored, asked of another
                    // replica (one that is never killed): it knows it as
                    // soon as the insert's notification has reached it
                    // (milliseconds).
                    let acked = tally
                        .lock()
                        .unwrap()
                        .acked
                        .iter()
                        .any(|(u, m)| *u == user && m.starts_with(&format!("{user}-1-")));
                    if acked {
                        let other = if replica == 1 { 2 } else { 1 };
                        let addr = addrs.lock().unwrap()[other];
                        let mut c = try_client_at(addr, "admin").await.unwrap();
                        let body = json!({"username": user, "device_info": {"id": format!("{user}-second")}});
                        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
                        loop {
                            let v = c.ok("/api/check_device", body.clone()).await;
                            if v["seen"] == true {
                                break;
                            }
                            if std::time::Instant::now() > deadline {
                                tally.lock().unwrap().unseen += 1;
                                break;
                            }
                            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                        }
                    }
                    // Reads and a last login through the same replica.
                    if let Some(c) = client.as_mut() {
                        let seen = c
                            .0
                            .post_raw(
                                "/api/check_device",
                                json!({"username": user, "device_info": {"id": format!("{user}-second")}})
                                    .to_string()
                                    .into(),
                            )
                            .await;
                        match seen {
                            Ok(r) if r.status == 200 => {
                                let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
                                let acked = tally
                                    .lock()
                                    .unwrap()
                                    .acked
                                    .iter()
                                    .any(|(u, m)| *u == user && m.starts_with(&format!("{user}-1-")));
                                if acked && v["seen"] != true {
                                    tally.lock().unwrap().unseen += 1;
                                }
                            }
                            Ok(r) if r.status.is_server_error() => {
                                tally.lock().unwrap().server_errors[replica] += 1
                            }
                            _ => client = None,
                        }
                        if let Some(c) = client.as_mut() {
                            for (path, body) in [
                                ("/api/set_last_login", json!({"last_login": {"timestamp": ago(0), "username": user, "service": "mail"}})),
                                ("/api/get_user_logs", json!({"username": user})),
                            ] {
                                match c.0.post_raw(path, body.to_string().into()).await {
                                    Ok(r) if r.status.is_server_error() => {
                                        tally.lock().unwrap().server_errors[replica] += 1
                                    }
                                    Ok(_) => {}
                                    Err(_) => {
                                        client = None;
                                        break;
                                    }
                                }
                            }
                        }
                    }
                    progress.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
    }

    // A third of the way through, replica 0 dies without warning, and comes
    // back on a new port.
    let total = REPLICAS * WORKERS * USERS;
    let p = progress.clone();
    eventually("a third of the load", || {
        let n = p.load(Ordering::Relaxed);
        async move { n >= total / 3 }
    })
    .await;
    children.0[0].kill().unwrap();
    children.0[0].wait().unwrap();
    let (child, addr, log) = spawn_binary(&config, "info");
    logs.push(log);
    children.0[0] = child;
    addrs.lock().unwrap()[0] = addr;
    for w in workers {
        w.await.unwrap();
    }

    let tally = Arc::try_unwrap(tally).ok().unwrap().into_inner().unwrap();
    assert_eq!(
        &tally.server_errors[1..],
        &[0, 0],
        "5xx from the replicas that stayed up"
    );
    assert_eq!(
        tally.unseen, 0,
        "check_device missed an acknowledged device"
    );
    assert!(
        tally.acked.len() > total,
        "only {} writes acknowledged",
        tally.acked.len()
    );

    // Every acknowledged write, exactly once, whichever replica is asked.
    let live = addrs.lock().unwrap()[1];
    let mut c = try_client_at(live, "admin").await.unwrap();
    let mut users: Vec<&String> = tally.acked.iter().map(|(u, _)| u).collect();
    users.sort();
    users.dedup();
    let mut alerts_expected = 0;
    for user in &users {
        let v = c.ok("/api/get_user_logs", json!({"username": user})).await;
        let messages: Vec<&str> = v["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["message"].as_str().unwrap())
            .collect();
        for (_, m) in tally.acked.iter().filter(|(u, _)| u == *user) {
            assert_eq!(
                messages.iter().filter(|x| **x == m).count(),
                1,
                "{user}: {m} in {messages:?}"
            );
        }
        let alerts = c
            .ok("/api/get_user_alerts", json!({"username": user}))
            .await;
        let n = alerts["alerts"].as_array().unwrap().len();
        assert!(n <= 1, "{user}: {n} alerts for one new device");
        alerts_expected += n;
    }
    assert!(alerts_expected > 0);

    // Now the receiver comes up: each alert arrives once, the killed
    // replica's claims included once their lease ran out.
    let receiver = WebhookReceiver::start(hook_port, SECRET).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while receiver.bodies().len() < alerts_expected {
        if std::time::Instant::now() > deadline {
            let addr = addrs.lock().unwrap()[1];
            let mut c = try_client_at(addr, "admin").await.unwrap();
            let v = c
                .ok("/api/get_user_alerts", json!({"username": users[0]}))
                .await;
            panic!(
                "{} of {alerts_expected} alerts delivered; {}: {v}\n{}",
                receiver.bodies().len(),
                users[0],
                logs.iter()
                    .map(|l| l.lock().unwrap().clone())
                    .collect::<Vec<_>>()
                    .join("\n---\n")
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // Once every delivery is recorded as delivered, none is sent again.
    eventually("every delivery to be recorded", || {
        let users = users.clone();
        let addr = addrs.lock().unwrap()[2];
        async move {
            let mut c = try_client_at(addr, "admin").await.unwrap();
            for user in users {
                let v = c
                    .ok("/api/get_user_alerts", json!({"username": user}))
                    .await;
                let pending = v["alerts"].as_array().unwrap().iter().any(|a| {
                    a["deliveries"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|d| d["state"] != "delivered")
                });
                if pending {
                    return false;
                }
            }
            true
        }
    })
    .await;
    let got = receiver.bodies();
    let mut ids: Vec<&str> = got.iter().map(|r| r.delivery_id.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), alerts_expected);
    assert_eq!(got.len(), alerts_expected, "an alert delivered twice");
    assert!(got.iter().all(|r| r.signature_ok));
    receiver.stop();
}

/// Server processes, killed when the test ends, however it ends.
struct Children(Vec<std::process::Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn server_cli(args: &[&str], config: &std::path::Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_user-meta-server"))
        .args(&args[..2])
        .arg("--config")
        .arg(config)
        .args(&args[2..])
        .output()
        .unwrap()
}

fn ok(out: std::process::Output) -> std::process::Output {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// An export from SQLite imported into PostgreSQL exports the same bytes,
/// and back again; a backup of PostgreSQL points to pg_dump.
#[tokio::test]
async fn a_database_moves_between_sqlite_and_postgresql_unchanged() {
    let Some(cluster) = pg_cluster() else { return };
    cluster.create_database("moved").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("device.key");
    std::fs::write(&key, "33".repeat(32)).unwrap();
    let secrets = format!("secrets:\n  device_key_file: {}\n", key.display());

    // Some history through the API, on SQLite.
    let ts = TestServer::start_sqlite_in(tempfile::tempdir_in(dir.path()).unwrap(), &secrets).await;
    let mut c = ts.client("admin").await;
    for (user, device, ago_s) in [("bob", "b1", 7200), ("bob", "b2", 3600), ("ann", "a1", 60)] {
        c.ok("/api/add_log", login(user, device, ago_s)).await;
    }
    c.ok(
        "/api/set_last_login",
        json!({"last_login": {"timestamp": ago(60), "username": "ann", "service": "mail"}}),
    )
    .await;
    drop(c);
    let sqlite_dir = ts.stop().await;
    let sqlite_yaml = dir.path().join("sqlite.yml");
    std::fs::write(&sqlite_yaml, config_yaml(sqlite_dir.path(), &secrets)).unwrap();
    let pg_yaml = dir.path().join("pg.yml");
    std::fs::write(
        &pg_yaml,
        format!("db_uri: \"{}\"\n{secrets}", cluster.uri("moved")),
    )
    .unwrap();

    let first = dir.path().join("from-sqlite.jsonl");
    ok(server_cli(
        &["db", "export", first.to_str().unwrap()],
        &sqlite_yaml,
    ));
    ok(server_cli(
        &["db", "import", first.to_str().unwrap()],
        &pg_yaml,
    ));
    let second = dir.path().join("from-postgresql.jsonl");
    ok(server_cli(
        &["db", "export", second.to_str().unwrap()],
        &pg_yaml,
    ));
    let (a, b) = (
        std::fs::read(&first).unwrap(),
        std::fs::read(&second).unwrap(),
    );
    assert_eq!(String::from_utf8_lossy(&a), String::from_utf8_lossy(&b));
    assert_eq!(a.iter().filter(|c| **c == b'\n').count(), 3 + 3 + 1);

    // And back into a new SQLite database.
    let back_dir = tempfile::tempdir_in(dir.path()).unwrap();
    let back_yaml = dir.path().join("back.yml");
    std::fs::write(&back_yaml, config_yaml(back_dir.path(), &secrets)).unwrap();
    ok(server_cli(
        &["db", "import", second.to_str().unwrap()],
        &back_yaml,
    ));
    let third = dir.path().join("back.jsonl");
    ok(server_cli(
        &["db", "export", third.to_str().unwrap()],
        &back_yaml,
    ));
    assert_eq!(std::fs::read(&third).unwrap(), a);

    // A second import is refused, and PostgreSQL's backup is pg_dump's.
    let again = server_cli(&["db", "import", first.to_str().unwrap()], &pg_yaml);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"));
    let backup = server_cli(&["db", "backup", "x.db"], &pg_yaml);
    assert!(!backup.status.success());
    let said = String::from_utf8_lossy(&backup.stderr);
    assert!(said.contains("pg_dump --format=custom"), "{said}");
}
