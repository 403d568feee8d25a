//! The compiled `user-meta-admin` against a real server over mutual TLS:
//! every subcommand, the exit codes and error messages scripts rely on, the
//! stale-account job with `--exec`; and `user-meta-server db export | import |
//! backup`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};

use crate::common::*;

/// What a run of a binary did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs a binary off the async runtime, so the in-process server keeps serving.
pub async fn run_bin(bin: &str, args: Vec<OsString>, stdin: Option<Vec<u8>>) -> Run {
    let bin = bin.to_owned();
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = Command::new(&bin)
            .args(&args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().unwrap();
            std::thread::spawn(move || {
                let _ = pipe.write_all(&input);
            });
        }
        let out = child.wait_with_output().unwrap();
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    })
    .await
    .unwrap()
}

pub const ADMIN: &str = env!("CARGO_BIN_EXE_user-meta-admin");
pub const SERVER: &str = env!("CARGO_BIN_EXE_user-meta-server");

/// Connection flags for `ts`, presenting `testdata/certs/<cert>.pem`.
pub fn conn_args(ts: &TestServer, cert_name: &str) -> Vec<OsString> {
    vec![
        "--server".into(),
        format!("https://localhost:{}", ts.addr.port()).into(),
        "--ca".into(),
        cert("ca.pem").into(),
        "--cert".into(),
        cert(&format!("{cert_name}.pem")).into(),
        "--key".into(),
        cert(&format!("{cert_name}.key")).into(),
    ]
}

/// `user-meta-admin` as client `cn` of `ts`.
pub async fn admin(ts: &TestServer, cn: &str, args: &[&str]) -> Run {
    let mut all = conn_args(ts, &format!("client-{cn}"));
    all.extend(args.iter().map(OsString::from));
    run_bin(ADMIN, all, None).await
}

fn ok(r: &Run) {
    assert_eq!(r.code, 0, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
}

fn json_of(r: &Run) -> Value {
    ok(r);
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}", r.stdout))
}

#[tokio::test]
async fn every_endpoint_from_the_command_line() {
    let ts = TestServer::start().await;
    let r = admin(
        &ts,
        "admin",
        &[
            "add-log",
            "alice",
            "--type",
            "login",
            "--service",
            "mail",
            "--device-id",
            "dev-1",
            "--zone",
            "IT",
            "--browser",
            "Firefox",
            "--os",
            "Linux",
        ],
    )
    .await;
    ok(&r);
    assert_eq!(r.stdout, "", "a write prints nothing in table format");

    let logs = json_of(
        &admin(
            &ts,
            "admin",
            &["--format", "json", "get-user-logs", "alice"],
        )
        .await,
    );
    let entry = &logs["result"][0];
    assert_eq!(entry["log_type"], "login");
    assert_eq!(entry["device_info"]["id"], "dev-1");
    assert_eq!(entry["device_info"]["remote_zone"], "IT");

    let table = admin(&ts, "admin", &["get-user-logs", "alice"]).await;
    ok(&table);
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert!(
        lines[0].starts_with("timestamp") && lines[0].contains("browser"),
        "{}",
        table.stdout
    );
    assert!(
        lines[1].contains("dev-1") && lines[1].contains("Firefox"),
        "{}",
        table.stdout
    );

    let csv = admin(
        &ts,
        "admin",
        &["--format", "csv", "get-user-devices", "alice"],
    )
    .await;
    ok(&csv);
    let mut rows = csv.stdout.lines();
    assert_eq!(
        rows.next().unwrap(),
        "device_id,country,browser,os,mobile,first_seen,last_seen,logins"
    );
    assert!(rows
        .next()
        .unwrap()
        .starts_with("dev-1,IT,Firefox,Linux,no,"));

    let seen = admin(&ts, "admin", &["check-device", "alice", "dev-1"]).await;
    assert_eq!(seen.stdout, "seen\nyes\n");
    let unseen = admin(
        &ts,
        "admin",
        &["--format", "json", "check-device", "alice", "dev-2"],
    )
    .await;
    assert_eq!(json_of(&unseen)["seen"], false);

    ok(&admin(&ts, "admin", &["set-last-login", "alice", "imap"]).await);
    ok(&admin(
        &ts,
        "admin",
        &[
            "set-last-login",
            "alice",
            "web",
            "--timestamp",
            &ago(3 * 86_400),
        ],
    )
    .await);
    let last = json_of(
        &admin(
            &ts,
            "admin",
            &["--format", "json", "get-last-login", "alice"],
        )
        .await,
    );
    let services: Vec<&str> = last["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["service"].as_str().unwrap())
        .collect();
    assert_eq!(services, ["imap", "web"]);
    let one = admin(
        &ts,
        "admin",
        &["get-last-login", "alice", "--service", "web"],
    )
    .await;
    ok(&one);
    assert_eq!(one.stdout.lines().count(), 2, "{}", one.stdout);

    let dev = json_of(
        &admin(
            &ts,
            "admin",
            &[
                "--format",
                "json",
                "identify-device",
                "--remote-addr",
                "81.2.69.160",
            ],
        )
        .await,
    );
    assert_eq!(dev["new"], true);
    let cookie = dev["cookie"].as_str().unwrap().to_owned();
    let again = json_of(
        &admin(
            &ts,
            "admin",
            &["--format", "json", "identify-device", "--cookie", &cookie],
        )
        .await,
    );
    assert_eq!(again["new"], false);
    assert_eq!(again["device_info"]["id"], dev["device_info"]["id"]);

    let health = admin(&ts, "prometheus", &["health"]).await;
    assert_eq!(health.stdout, "status\nok\n");

    // Erasure needs --yes, and without it nothing is sent.
    let refused = admin(&ts, "admin", &["forget-user", "alice"]).await;
    assert_eq!(refused.code, 1);
    assert!(refused.stderr.contains("--yes"), "{}", refused.stderr);
    assert_eq!(ts.counts()[1], 1);
    let gone = json_of(
        &admin(
            &ts,
            "admin",
            &["--format", "json", "forget-user", "alice", "--yes"],
        )
        .await,
    );
    let deleted = &gone["deleted"];
    assert_eq!(
        (
            &deleted["user_logs"],
            &deleted["devices"],
            &deleted["last_logins"]
        ),
        (&json!(1), &json!(1), &json!(2))
    );
    assert_eq!(ts.counts(), [0, 0, 0, 0]);
}

#[tokio::test]
async fn events_and_the_alert_outbox_across_users_from_the_command_line() {
    // Alerts go to a webhook that refuses, so they wait in the outbox.
    let ts = TestServer::start_with(
        "alerts:\n  log: false\n  webhook:\n    url: http://127.0.0.1:9/hook\n    secret: s\n    timeout: 1s\n  retry: { initial: 1h, max: 1h }\n",
    )
    .await;
    let mut sso = ts.client("sso-server").await;
    for (user, device, ago) in [
        ("acme/a", "d1", 7200),
        ("acme/a", "d2", 3600),
        ("b", "d1", 60),
    ] {
        sso.ok("/api/add_log", login(user, device, ago)).await;
    }
    let events = json_of(
        &admin(
            &ts,
            "admin",
            &["--format", "json", "events", "--tenant", "acme"],
        )
        .await,
    );
    let users: Vec<&str> = events["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["username"].as_str().unwrap())
        .collect();
    assert_eq!(users, ["acme/a", "acme/a"]);
    let table = admin(&ts, "admin", &["events", "--user", "b"]).await;
    ok(&table);
    assert!(
        table.stdout.contains("username") && table.stdout.contains(" b "),
        "{}",
        table.stdout
    );
    // The new device of acme/a is in the outbox, undelivered.
    let alerts = json_of(&admin(&ts, "admin", &["--format", "json", "alerts"]).await);
    let list = alerts["alerts"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{alerts}");
    assert_eq!(list[0]["username"], "acme/a");
    assert_eq!(list[0]["deliveries"][0]["sink"], "webhook");
    let id = list[0]["id"].as_i64().unwrap().to_string();
    let retried = json_of(&admin(&ts, "admin", &["--format", "json", "retry-alert", &id]).await);
    assert_eq!(retried["rescheduled"], 1);
    // Administrators only: the panel is refused (exit code 3).
    assert_eq!(admin(&ts, "accounts-panel", &["events"]).await.code, 3);
}

#[tokio::test]
async fn exit_codes_and_errors_name_the_certificate_and_path() {
    let ts = TestServer::start().await;

    // 403: the ACL lets sso-server write logs, not read reports.
    let denied = admin(&ts, "sso-server", &["report"]).await;
    assert_eq!(denied.code, 3, "{denied:?}");
    let cert_file = cert("client-sso-server.pem").display().to_string();
    for part in [
        cert_file.as_str(),
        "CN \"sso-server\"",
        "/api/report",
        "403",
    ] {
        assert!(
            denied.stderr.contains(part),
            "{part} missing: {}",
            denied.stderr
        );
    }

    // Other 4xx: the request itself is wrong.
    let rejected = admin(&ts, "admin", &["get-user-logs", "alice", "--limit", "5000"]).await;
    assert_eq!(rejected.code, 4, "{rejected:?}");
    assert!(
        rejected.stderr.contains("400") && rejected.stderr.contains("limit"),
        "{}",
        rejected.stderr
    );

    // TLS: a client certificate the server does not trust.
    let mut args = conn_args(&ts, "bad-untrusted");
    args.push("health".into());
    let untrusted = run_bin(ADMIN, args, None).await;
    assert_eq!(untrusted.code, 2, "{untrusted:?}");
    let f = cert("bad-untrusted.pem").display().to_string();
    assert!(untrusted.stderr.contains(&f), "{}", untrusted.stderr);
    assert!(untrusted.stderr.contains("refused"), "{}", untrusted.stderr);

    let mut args = conn_args(&ts, "bad-expired");
    args.push("health".into());
    let expired = run_bin(ADMIN, args, None).await;
    assert_eq!(expired.code, 2, "{expired:?}");
    assert!(expired.stderr.contains("Expired"), "{}", expired.stderr);

    // TLS: the server's certificate is not from the CA we were given.
    let mut args = conn_args(&ts, "client-admin");
    args[3] = cert("other-ca.pem").into();
    args.push("health".into());
    let wrong_ca = run_bin(ADMIN, args, None).await;
    assert_eq!(wrong_ca.code, 2, "{wrong_ca:?}");
    assert!(
        wrong_ca.stderr.contains("other-ca.pem"),
        "{}",
        wrong_ca.stderr
    );

    // Nothing listening.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let mut args = conn_args(&ts, "client-admin");
    args[1] = format!("https://localhost:{port}").into();
    args.push("health".into());
    let refused = run_bin(ADMIN, args, None).await;
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(
        refused.stderr.contains("cannot connect"),
        "{}",
        refused.stderr
    );

    // Usage and configuration problems: 1, before any request.
    let unknown = admin(&ts, "admin", &["frobnicate"]).await;
    assert_eq!(unknown.code, 1);
    let no_cert = run_bin(
        ADMIN,
        vec![
            "--server".into(),
            format!("https://localhost:{}", ts.addr.port()).into(),
            "--ca".into(),
            cert("ca.pem").into(),
            "health".into(),
        ],
        None,
    )
    .await;
    assert_eq!(no_cert.code, 1);
    assert!(
        no_cert.stderr.contains("--cert is required"),
        "{}",
        no_cert.stderr
    );
    let mut args = conn_args(&ts, "client-admin");
    args[5] = "/nonexistent/admin.pem".into();
    args.push("health".into());
    let missing = run_bin(ADMIN, args, None).await;
    assert_eq!(missing.code, 1);
    assert!(
        missing.stderr.contains("/nonexistent/admin.pem"),
        "{}",
        missing.stderr
    );
    let help = run_bin(ADMIN, vec!["--help".into()], None).await;
    assert_eq!(help.code, 0);
    assert!(help.stdout.contains("Exit codes"), "{}", help.stdout);
}

#[tokio::test]
async fn connection_settings_from_a_config_file() {
    let ts = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(cert("client-admin.pem"), dir.path().join("admin.pem")).unwrap();
    std::fs::copy(cert("client-admin.key"), dir.path().join("admin.key")).unwrap();
    let config = dir.path().join("admin.yml");
    std::fs::write(
        &config,
        format!(
            "server: https://localhost:{}\nca: {}\ncert: admin.pem\nkey: admin.key\n",
            ts.addr.port(),
            cert("ca.pem").display()
        ),
    )
    .unwrap();
    let run = |args: Vec<OsString>| run_bin(ADMIN, args, None);
    let r = run(vec![
        "--config".into(),
        config.clone().into(),
        "report".into(),
    ])
    .await;
    ok(&r);
    // A flag overrides the file: this certificate may not read reports.
    let r = run(vec![
        "--config".into(),
        config.clone().into(),
        "--cert".into(),
        cert("client-accounts-panel.pem").into(),
        "--key".into(),
        cert("client-accounts-panel.key").into(),
        "report".into(),
    ])
    .await;
    assert_eq!(r.code, 3, "{r:?}");
    std::fs::write(&config, "server: https://localhost:1\ncrt: x.pem\n").unwrap();
    let r = run(vec!["--config".into(), config.into(), "health".into()]).await;
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("crt"), "{}", r.stderr);
}

/// Sets last logins for `names` `secs_ago`, over a few connections at once.
async fn seed_last_logins(ts: &TestServer, names: Vec<String>, secs_ago: i64) {
    let chunk = names.len().div_ceil(4).max(1);
    let mut tasks = Vec::new();
    for part in names.chunks(chunk) {
        let part = part.to_vec();
        let mut c = ts.client("sso-server").await;
        tasks.push(tokio::spawn(async move {
            for n in part {
                c.ok(
                    "/api/set_last_login",
                    json!({"last_login": {"timestamp": ago(secs_ago), "username": n, "service": "mail"}}),
                )
                .await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_account_job_over_200000_names() {
    let ts = TestServer::start_with("  max_bulk_names: 5000\n").await;
    let name = |i: usize| format!("user{i:06}");
    let active: Vec<String> = (0..200_000).step_by(200).map(name).collect();
    let stale: Vec<String> = (1..200_000).step_by(200).map(name).collect();
    seed_last_logins(&ts, active, 3_600).await;
    seed_last_logins(&ts, stale, 100 * 86_400).await;

    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("names.txt");
    let mut text = String::with_capacity(200_000 * 12);
    for i in 0..200_000 {
        text.push_str(&name(i));
        text.push('\n');
        if i % 50_000 == 7 {
            // Blank lines, stray whitespace and repeats are tolerated.
            text.push_str("\n  ");
            text.push_str(&name(i));
            text.push_str("  \r\n");
        }
    }
    std::fs::write(&list, &text).unwrap();

    let start = std::time::Instant::now();
    let mut args = conn_args(&ts, "client-accounts-panel");
    args.extend([
        "unused".into(),
        "--days".into(),
        "30".into(),
        list.clone().into(),
    ]);
    let r = run_bin(ADMIN, args, None).await;
    let took = start.elapsed();
    ok(&r);
    let want: Vec<String> = (0..200_000).filter(|i| i % 200 != 0).map(name).collect();
    let got: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(got.len(), want.len());
    assert!(
        got.iter().zip(&want).all(|(g, w)| g == w),
        "not in input order"
    );
    assert!(
        r.stderr
            .contains("199000 of 200000 accounts unused for 30 days"),
        "{}",
        r.stderr
    );
    // Not a terminal: no progress bar in the captured stderr.
    assert!(!r.stderr.contains("names checked"), "{}", r.stderr);
    println!("unused over 200000 names: {took:?}");

    // The same list on standard input, batches larger than the server allows: 413 → exit 4.
    let mut args = conn_args(&ts, "client-accounts-panel");
    args.extend(["unused", "--days", "30", "--batch", "6000", "-"].map(OsString::from));
    let r = run_bin(ADMIN, args, Some(text.into_bytes())).await;
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(r.stderr.contains("413"), "{}", r.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_account_exec_is_a_dry_run_until_yes() {
    let ts = TestServer::start().await;
    seed_last_logins(&ts, vec!["active".into()], 3_600).await;
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("names.txt");
    // A name full of shell syntax must arrive as one plain argument.
    let tricky = "x; touch pwned $(touch pwned2)";
    std::fs::write(&list, format!("alpha\nactive\nbeta\n{tricky}\n")).unwrap();
    let out = dir.path().join("disabled.txt");
    let script = format!("printf '%s\\n' \"$1\" >> '{}'", out.display());
    let job = |extra: &[&str]| {
        let mut args = conn_args(&ts, "client-accounts-panel");
        args.extend([
            "unused".into(),
            "--days".into(),
            "30".into(),
            list.clone().into(),
        ]);
        args.extend(extra.iter().map(OsString::from));
        run_bin(ADMIN, args, None)
    };

    let dry = job(&["--exec", "/bin/sh", "-c", &script, "sh", ";"]).await;
    ok(&dry);
    assert_eq!(dry.stdout, format!("alpha\nbeta\n{tricky}\n"));
    assert!(dry.stderr.contains("dry run"), "{}", dry.stderr);
    assert!(dry.stderr.contains("3 unused"), "{}", dry.stderr);
    assert!(!out.exists(), "a dry run ran the command");

    let real = job(&["--exec", "/bin/sh", "-c", &script, "sh", ";", "--yes"]).await;
    ok(&real);
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        format!("alpha\nbeta\n{tricky}\n")
    );
    assert!(real.stderr.contains("3 ok, 0 failed"), "{}", real.stderr);
    assert!(!Path::new("pwned").exists() && !dir.path().join("pwned").exists());

    // A command that fails for one account: the others still run, exit 6.
    let failing = job(&[
        "--yes",
        "--exec",
        "/bin/sh",
        "-c",
        "test \"$1\" != beta",
        "sh",
    ])
    .await;
    assert_eq!(failing.code, 6, "{failing:?}");
    assert!(
        failing.stderr.contains("2 ok, 1 failed"),
        "{}",
        failing.stderr
    );
    assert!(failing.stderr.contains("beta"), "{}", failing.stderr);

    let missing = job(&["--yes", "--exec", "/nonexistent/disable-account"]).await;
    assert_eq!(missing.code, 6, "{missing:?}");
    assert!(missing.stderr.contains("cannot run"), "{}", missing.stderr);
}

#[tokio::test]
async fn a_bad_name_list_is_refused_before_anything_is_sent() {
    let ts = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("names.txt");
    std::fs::write(&list, "alpha\nbe\u{7}ta\n").unwrap();
    let out = dir.path().join("ran");
    let mut args = conn_args(&ts, "client-accounts-panel");
    args.extend([
        "unused".into(),
        "--days".into(),
        "30".into(),
        list.clone().into(),
    ]);
    args.extend(["--yes", "--exec", "touch"].map(OsString::from));
    args.push(out.clone().into());
    let r = run_bin(ADMIN, args, None).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("names.txt:2:"), "{}", r.stderr);
    assert_eq!(r.stdout, "");
    assert!(!out.exists());
    let mut args = conn_args(&ts, "client-accounts-panel");
    args.extend(["unused", "--days", "0", "-"].map(OsString::from));
    let r = run_bin(ADMIN, args, Some(b"alpha\n".to_vec())).await;
    assert_eq!(r.code, 4, "{r:?}");
}

/// A config file for the database of `dir` (the test server's layout).
fn db_config(dir: &Path) -> PathBuf {
    let path = dir.join("config.yml");
    std::fs::write(&path, config_yaml(dir, "")).unwrap();
    path
}

async fn server_db(config: &Path, args: &[&str]) -> Run {
    let mut all: Vec<OsString> = vec!["--config".into(), config.into(), "db".into()];
    all.extend(args.iter().map(OsString::from));
    run_bin(SERVER, all, None).await
}

#[tokio::test]
async fn export_import_export_is_identical_and_reseals_device_ids() {
    let ts = TestServer::start_sqlite_in(tempfile::tempdir().unwrap(), "").await;
    let mut c = ts.client("admin").await;
    for (user, device, secs) in [
        ("carol", "phone", 30 * 86_400),
        ("carol", "laptop", 7200),
        ("dave", "phone", 3600),
        ("erin \"quoted\"", "tablet", 86_400),
    ] {
        c.ok("/api/add_log", login(user, device, secs)).await;
    }
    c.ok(
        "/api/add_log",
        json!({"log": {"timestamp": ago(60), "username": "dave", "log_type": "password_change",
                       "message": "via panel"}}),
    )
    .await;
    c.ok(
        "/api/set_last_login",
        json!({"last_login": {"timestamp": ago(60), "username": "dave", "service": "web"}}),
    )
    .await;

    let config = db_config(ts.dir.path());
    let work = tempfile::tempdir().unwrap();
    let first = work.path().join("first.jsonl");
    let r = server_db(&config, &["export", first.to_str().unwrap()]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stderr
            .contains("exported 5 log entries, 4 devices, 1 last logins"),
        "{}",
        r.stderr
    );
    let text = std::fs::read_to_string(&first).unwrap();
    assert_eq!(text.lines().count(), 10);
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        assert!(["log", "device", "last_login"].contains(&v["kind"].as_str().unwrap()));
    }
    assert!(
        text.contains("\"id\":\"laptop\""),
        "the export holds clear IDs"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&first).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // Into a new database with its own, new key.
    let target = tempfile::tempdir().unwrap();
    let target_config = db_config(target.path());
    let r = server_db(&target_config, &["import", first.to_str().unwrap()]).await;
    assert_eq!(r.code, 0, "{r:?}");
    let second = work.path().join("second.jsonl");
    let r = server_db(&target_config, &["export", "-"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    std::fs::write(&second, &r.stdout).unwrap();
    assert_eq!(r.stdout, text, "export → import → export changed the data");

    // Same clear IDs, different sealed bytes: re-sealed under the target key.
    let sealed = |db: PathBuf| -> Vec<Vec<u8>> {
        let c = rusqlite::Connection::open(db).unwrap();
        let mut s = c
            .prepare("SELECT device_id FROM devices ORDER BY device_id")
            .unwrap();
        s.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    let (a, b) = (
        sealed(ts.db_path()),
        sealed(target.path().join("usermeta.db")),
    );
    assert_eq!(a.len(), 4);
    assert!(a.iter().all(|x| !b.contains(x)));
    let raw = std::fs::read(target.path().join("usermeta.db")).unwrap();
    assert!(!raw.windows(6).any(|w| w == b"laptop"));

    // A second import is refused and changes nothing.
    let before = db_counts(&target.path().join("usermeta.db"));
    let r = server_db(&target_config, &["import", first.to_str().unwrap()]).await;
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("not empty"), "{}", r.stderr);
    assert_eq!(db_counts(&target.path().join("usermeta.db")), before);

    // The imported database serves the same answers.
    drop(c);
    let served = TestServer::start_sqlite_in(target, "").await;
    let mut c = served.client("admin").await;
    let devices = c
        .ok("/api/get_user_devices", json!({"username": "carol"}))
        .await;
    let ids: Vec<&str> = devices["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device_info"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["laptop", "phone"]);

    // A bad line: named, and the new database stays empty.
    let broken = work.path().join("broken.jsonl");
    let mut lines: Vec<&str> = text.lines().collect();
    lines.insert(3, "{\"kind\":\"log\",\"log\":{\"username\":\"x\",\"log_type\":\"Log In\",\"timestamp\":\"2026-01-01T00:00:00Z\"}}");
    std::fs::write(&broken, lines.join("\n")).unwrap();
    let empty = tempfile::tempdir().unwrap();
    let empty_config = db_config(empty.path());
    let r = server_db(&empty_config, &["import", broken.to_str().unwrap()]).await;
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("line 4") && r.stderr.contains("log_type"),
        "{}",
        r.stderr
    );
    assert_eq!(db_counts(&empty.path().join("usermeta.db")), [0, 0, 0, 0]);

    // Without the key, no export: it would have to show sealed bytes.
    let keyless = tempfile::tempdir().unwrap();
    std::fs::copy(ts.db_path(), keyless.path().join("usermeta.db")).unwrap();
    let r = server_db(&db_config(keyless.path()), &["export", "-"]).await;
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("key"), "{}", r.stderr);
    assert_eq!(r.stdout, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_of_a_live_database_is_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let config = db_config(dir.path());
    let (mut child, addr, _log) = spawn_binary(&config, "info");
    let acked = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..3 {
        let mut c = client_at(addr, "sso-server").await;
        let (acked, stop) = (acked.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) && i < 20_000 {
                c.ok("/api/add_log", login(&format!("w{w}-{i}"), "d", 60))
                    .await;
                acked.fetch_add(1, Ordering::SeqCst);
                i += 1;
            }
        }));
    }
    while acked.load(Ordering::SeqCst) < 200 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let before = acked.load(Ordering::SeqCst);
    let copy = dir.path().join("copy.db");
    let r = server_db(&config, &["backup", copy.to_str().unwrap()]).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("device.key"), "{}", r.stderr);
    let c = rusqlite::Connection::open(&copy).unwrap();
    let check: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let counts = db_counts(&copy);
    assert!(
        counts[1] as usize >= before,
        "{counts:?} < {before} acknowledged"
    );
    assert_eq!(
        counts[0], counts[1],
        "one user per log entry, both from one snapshot"
    );
    assert!(counts[1] as usize <= acked.load(Ordering::SeqCst));

    // Never over an existing file.
    let again = server_db(&config, &["backup", copy.to_str().unwrap()]).await;
    assert_ne!(again.code, 0);
    assert!(again.stderr.contains("copy.db"), "{}", again.stderr);
    child.kill().unwrap();
    child.wait().unwrap();
}
