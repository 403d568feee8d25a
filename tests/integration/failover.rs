//! The server on a primary and a synchronous standby, through two
//! failovers: the primary's postmaster killed and the standby promoted, then
//! that primary fenced read-only (as a failover tool demotes one) and a new
//! standby promoted. Three replicas on one multi-host `db_uri` with
//! `target_session_attrs=read-write`, a standby listed first.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use usermetadb::store::postgres::scratch::{self, Scratch};

use crate::common::*;
use crate::receivers::{free_port, WebhookReceiver};

const SECRET: &[u8] = b"failover-hook-secret";
const REPLICAS: usize = 3;
const WORKERS: usize = 2;
/// The longest a replica may take, after the promotion, to answer 2xx to a
/// write sent after it. Measured: see the manual's failover chapter.
const BOUND: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Outcomes {
    /// `(user, message)` of the add_logs answered 2xx.
    acked: Vec<(String, String)>,
    /// Those answered 5xx: stored or not, never twice.
    failed: Vec<(String, String)>,
    /// `(replica, sent, answered)` of every 2xx add_log.
    oks: Vec<(usize, Instant, Instant)>,
    /// Answers neither 2xx nor 5xx.
    other: Vec<u16>,
}

impl Outcomes {
    /// How long after `from` each replica first answered 2xx to a write
    /// sent after `from`, or `None` while one has not.
    fn recovered_after(&self, from: Instant) -> Option<Duration> {
        (0..REPLICAS)
            .map(|r| {
                self.oks
                    .iter()
                    .filter(|(x, sent, _)| *x == r && *sent > from)
                    .map(|(_, _, answered)| *answered - from)
                    .min()
            })
            .collect::<Option<Vec<_>>>()
            .and_then(|v| v.into_iter().max())
    }
}

fn config(dir: &std::path::Path, uri: &str, hook_port: u16) -> String {
    std::fs::write(dir.join("hook.secret"), SECRET).unwrap();
    let key = dir.join("device.key");
    std::fs::write(&key, "22".repeat(32)).unwrap();
    format!(
        "db_uri: \"{uri}\"\ndb:\n  connect_timeout: 2s\n  statement_timeout: 5s\nsecrets:\n  device_key_file: {key}\nhttp_server:\n  tls:\n    cert: {c}\n    key: {k}\n    ca: {ca}\n{ACL}alerts:\n  log: false\n  webhook:\n    url: http://127.0.0.1:{hook_port}/hook\n    secret_file: {secret}\n    timeout: 2s\n  retry: {{ initial: 1s, max: 1s }}\n  delivery_lease: 3s\nretention:\n  interval: 1s\n  user_logs: 30d\n",
        key = key.display(),
        c = cert("server.pem").display(),
        k = cert("server.key").display(),
        ca = cert("ca.pem").display(),
        secret = dir.join("hook.secret").display(),
    )
}

/// Waits until the cluster's standby `name` is synchronous.
async fn synchronous(primary: &Scratch, name: &str) {
    eventually(&format!("{name} synchronous"), || {
        let state = primary
            .sql_in(
                "postgres",
                &format!(
                    "SELECT sync_state FROM pg_stat_replication WHERE application_name = '{name}'"
                ),
            )
            .unwrap_or_default();
        async move { state.trim() == "sync" }
    })
    .await;
}

/// A metric of a replica's `/metrics`, if it answers.
async fn read_metric(addr: SocketAddr, name: &str) -> Option<i64> {
    let mut c = try_client_at(addr, "admin").await.ok()?;
    let r =
        c.0.request(hyper::Method::GET, "/metrics", None, bytes::Bytes::new())
            .await
            .ok()?;
    let text = String::from_utf8_lossy(&r.body).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

/// The device index's reads of every replica.
async fn index_reads(addrs: &[SocketAddr]) -> Vec<i64> {
    let mut out = Vec::new();
    for a in addrs {
        out.push(
            read_metric(*a, "usermetadb_device_index_reads_total")
                .await
                .unwrap_or(-1),
        );
    }
    out
}

/// Waits until every replica's device index has been read again since
/// `before` and is answering: its listening connection is on the primary.
async fn index_follows(addrs: &[SocketAddr], before: &[i64]) {
    for (a, b) in addrs.iter().zip(before) {
        eventually("the device index listening on the primary", || async move {
            let reads = read_metric(*a, "usermetadb_device_index_reads_total").await;
            let held = read_metric(*a, "usermetadb_device_index_devices").await;
            reads.is_some_and(|r| r > *b) && held.is_some_and(|h| h >= 0)
        })
        .await;
    }
}

async fn seen(addr: SocketAddr, user: &str, device: &str) -> Option<bool> {
    let mut c = try_client_at(addr, "admin").await.ok()?;
    let body = json!({"username": user, "device_info": {"id": device}});
    let r =
        c.0.post_raw("/api/check_device", body.to_string().into())
            .await
            .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&r.body).ok()?;
    (r.status == 200).then(|| v["seen"] == true)
}

/// A device stored through one replica, known to every replica once the
/// insert's notification has reached it (so that each index holds it),
/// then erased through one: every replica answers "unknown" for it.
async fn erased_everywhere(addrs: &[SocketAddr], user: &str) {
    let mut c = client_at(addrs[0], "admin").await;
    c.ok("/api/add_log", login(user, "gone-device", 60)).await;
    assert_eq!(seen(addrs[0], user, "gone-device").await, Some(true));
    for a in addrs {
        eventually("the stored device known on every replica", || async move {
            seen(*a, user, "gone-device").await == Some(true)
        })
        .await;
    }
    c.ok("/api/forget_user", json!({"username": user})).await;
    for a in addrs {
        eventually(
            "the erased device unknown on every replica",
            || async move { seen(*a, user, "gone-device").await == Some(false) },
        )
        .await;
    }
}

/// Waits until every replica answered 2xx to a write sent after `from`;
/// how long that took.
async fn recovery(
    outcomes: &Mutex<Outcomes>,
    from: Instant,
    logs: &[Arc<Mutex<String>>],
) -> Duration {
    let deadline = from + Duration::from_secs(60);
    loop {
        if let Some(d) = outcomes.lock().unwrap().recovered_after(from) {
            return d;
        }
        assert!(
            Instant::now() < deadline,
            "a replica never wrote again:\n{}",
            logs.iter()
                .map(|l| l.lock().unwrap().clone())
                .collect::<Vec<_>>()
                .join("\n---\n")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_follow_the_primary_through_failovers() {
    let _quiet = QUIET.lock().await;
    let primary = match Scratch::start(true) {
        Ok(s) => s,
        Err(e) if in_ci() => panic!("PostgreSQL is required in CI: {e}"),
        Err(e) => {
            eprintln!("skipping the failover test: {e}");
            return;
        }
    };
    let standby = primary
        .standby("standby_a", scratch::free_port().unwrap())
        .unwrap();
    primary
        .set("synchronous_standby_names", "standby_a")
        .unwrap();
    synchronous(&primary, "standby_a").await;
    primary.create_database("failover").unwrap();
    // The standby promoted at the second failover; not there yet.
    let third_port = scratch::free_port().unwrap();
    // The standby first: skipped while it is one.
    let uri = format!(
        "postgresql://postgres@127.0.0.1:{},127.0.0.1:{},127.0.0.1:{third_port}/failover?target_session_attrs=read-write",
        standby.port(),
        primary.port(),
    );

    let dir = tempfile::tempdir().unwrap();
    let hook_port = free_port();
    let receiver = WebhookReceiver::start(hook_port, SECRET).await;
    let yaml = dir.path().join("config.yml");
    std::fs::write(&yaml, config(dir.path(), &uri, hook_port)).unwrap();
    let mut children = Vec::new();
    let mut logs = Vec::new();
    let mut addrs = Vec::new();
    for _ in 0..REPLICAS {
        let (child, addr, log) = spawn_binary(&yaml, "info");
        children.push(KillOnDrop(child));
        logs.push(log);
        addrs.push(addr);
    }

    // The load: add_log through every replica, each entry its own message,
    // a new device in one of ten.
    let outcomes = Arc::new(Mutex::new(Outcomes::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for (replica, &addr) in addrs.iter().enumerate() {
        for w in 0..WORKERS {
            let (outcomes, stop) = (outcomes.clone(), stop.clone());
            workers.push(tokio::spawn(async move {
                let mut client = None;
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let user = format!("r{replica}w{w}u{}", n % 20);
                    let message = format!("{user}-{n}");
                    let device = format!("{user}-d{}", n / 10);
                    if client.is_none() {
                        client = try_client_at(addr, "admin").await.ok();
                    }
                    let Some(c) = client.as_mut() else {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    };
                    let body = json!({"log": {
                        "timestamp": ago(60), "username": user, "log_type": "login",
                        "service": "mail", "message": message,
                        "device_info": {"id": device, "remote_addr": "81.2.69.160"}}});
                    let sent = Instant::now();
                    let answer = tokio::time::timeout(
                        Duration::from_secs(30),
                        c.0.post_raw("/api/add_log", body.to_string().into()),
                    )
                    .await;
                    let mut o = outcomes.lock().unwrap();
                    match answer {
                        Ok(Ok(r)) if r.status == 200 => {
                            o.acked.push((user, message));
                            o.oks.push((replica, sent, Instant::now()));
                        }
                        Ok(Ok(r)) if r.status.is_server_error() => {
                            o.failed.push((user, message));
                        }
                        Ok(Ok(r)) => o.other.push(r.status.as_u16()),
                        // No answer: neither acknowledged nor refused; the
                        // checks below still want it stored at most once.
                        _ => {
                            o.failed.push((user, message));
                            client = None;
                        }
                    }
                }
            }));
        }
    }
    let acked = |n: usize| {
        let outcomes = outcomes.clone();
        async move { outcomes.lock().unwrap().acked.len() >= n }
    };
    eventually("writes through the standby-first host list", || acked(100)).await;
    let reads = index_reads(&addrs).await;
    index_follows(&addrs, &[0; REPLICAS]).await;

    // 1. The primary's postmaster killed; the standby promoted.
    let killed = Instant::now();
    primary.kill().unwrap();
    standby.promote().unwrap();
    let promoted = Instant::now();
    // Writes sent before the promotion may still be acknowledged by the
    // killed primary's backends, which end only when they notice: count
    // from the promotion.
    let first = recovery(&outcomes, promoted, &logs).await;
    eprintln!(
        "kill -9 of the primary: promoted {:?} after the kill; every replica writing {first:?} after the promotion",
        promoted - killed
    );
    index_follows(&addrs, &reads).await;
    erased_everywhere(&addrs, "gone-after-kill").await;

    // Retention runs after the failover, on one replica.
    standby
        .sql_in(
            "failover",
            "WITH u AS (INSERT INTO users (name) VALUES ('aged0'), ('aged1'), ('aged2') RETURNING id)
             INSERT INTO user_logs (user_id, ts, log_type)
             SELECT id, extract(epoch FROM now())::bigint - 100 * 86400, 'login' FROM u",
        )
        .unwrap();
    let pruned = |logs: &Vec<Arc<Mutex<String>>>| {
        logs.iter()
            .map(|l| {
                l.lock()
                    .unwrap()
                    .lines()
                    .filter(|l| {
                        l.contains("retention: deleted expired rows") && l.contains("user_logs=3")
                    })
                    .count()
            })
            .sum::<usize>()
    };
    eventually("retention after the failover", || {
        let n = pruned(&logs);
        async move { n >= 1 }
    })
    .await;
    assert_eq!(pruned(&logs), 1, "the aged rows deleted by one replica");

    // An alert raised after the failover is delivered once.
    let mut c = client_at(addrs[1], "admin").await;
    c.ok("/api/add_log", login("late", "late-first", 120)).await;
    let mut c = client_at(addrs[2], "admin").await;
    c.ok("/api/add_log", login("late", "late-second", 60)).await;
    eventually("the late alert delivered and recorded", || {
        let addr = addrs[0];
        async move {
            let mut c = client_at(addr, "admin").await;
            let v = c
                .ok("/api/get_user_alerts", json!({"username": "late"}))
                .await;
            let alerts = v["alerts"].as_array().unwrap().clone();
            !alerts.is_empty()
                && alerts.iter().all(|a| {
                    a["deliveries"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .all(|d| d["state"] == "delivered")
                })
        }
    })
    .await;
    let late = receiver
        .bodies()
        .into_iter()
        .filter(|r| r.body["username"] == "late")
        .count();
    assert_eq!(
        late, 1,
        "the alert raised after the failover delivered once"
    );

    // 2. A new synchronous standby of the new primary; the primary fenced
    // read-only, as a failover tool demotes one that still runs, and the
    // standby promoted. Pooled connections to the fenced server meet
    // SQLSTATE 25006 and must be dropped for connections to the new one.
    let third = standby.standby("standby_b", third_port).unwrap();
    standby
        .set("synchronous_standby_names", "standby_b")
        .unwrap();
    synchronous(&standby, "standby_b").await;
    let reads = index_reads(&addrs).await;
    let fenced = Instant::now();
    standby.set("default_transaction_read_only", "on").unwrap();
    // As a failover tool does before it promotes: no transaction left
    // writing on the fenced primary, and the standby has replayed all of
    // its WAL (a commit waiting for a standby promoted meanwhile would wait
    // for ever).
    eventually("the fenced primary's WAL replayed on the standby", || {
        let quiet = standby
            .sql_in(
                "postgres",
                "SELECT (SELECT count(*) FROM pg_stat_activity WHERE backend_xid IS NOT NULL) = 0
                    AND (SELECT bool_and(replay_lsn = pg_current_wal_lsn()) FROM pg_stat_replication)",
            )
            .unwrap_or_default();
        async move { quiet.trim() == "t" }
    })
    .await;
    third.promote().unwrap();
    let promoted = Instant::now();
    let second = recovery(&outcomes, promoted, &logs).await;
    eprintln!(
        "primary fenced read-only: standby promoted {:?} after; every replica writing {second:?} after the promotion",
        promoted - fenced
    );
    index_follows(&addrs, &reads).await;
    erased_everywhere(&addrs, "gone-after-fence").await;

    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let o = Arc::try_unwrap(outcomes)
        .ok()
        .unwrap()
        .into_inner()
        .unwrap();
    assert!(
        o.other.is_empty(),
        "answers neither 2xx nor 5xx: {:?}",
        o.other
    );

    // On the last primary: every acknowledged entry exactly once, and no
    // entry answered 5xx more than once.
    let mut c = client_at(addrs[0], "admin").await;
    let mut users: Vec<&String> = o.acked.iter().chain(&o.failed).map(|(u, _)| u).collect();
    users.sort();
    users.dedup();
    let mut failed_but_stored = 0;
    for user in users {
        let v = c
            .ok(
                "/api/get_user_logs",
                json!({"username": user, "limit": 1000}),
            )
            .await;
        let messages: Vec<&str> = v["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["message"].as_str().unwrap())
            .collect();
        assert!(messages.len() < 1000);
        for (_, m) in o.acked.iter().filter(|(u, _)| u == user) {
            let n = messages.iter().filter(|x| **x == m).count();
            assert_eq!(n, 1, "{user}: acknowledged {m} stored {n} times");
        }
        for (_, m) in o.failed.iter().filter(|(u, _)| u == user) {
            let n = messages.iter().filter(|x| **x == m).count();
            assert!(n <= 1, "{user}: {m}, answered 5xx, stored {n} times");
            failed_but_stored += n;
        }
    }
    eprintln!(
        "{} writes acknowledged, {} answered 5xx ({failed_but_stored} of them committed all the same)",
        o.acked.len(),
        o.failed.len()
    );
    assert!(first < BOUND, "replicas wrote again after {first:?}");
    assert!(second < BOUND, "replicas wrote again after {second:?}");
    receiver.stop();
    drop(children);
    drop(third);
}

/// A server process, killed when the test ends, however it ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
