//! The dashboard (`user-meta-admin ui`) in real headless Chromium: the
//! compiled admin tool serves it against a real server over mTLS, and
//! `tests/ui/dashboard.mjs` (playwright-core) drives every page: no console
//! error, filters, sorting, column choice, CSV and XLSX exports, a user's
//! page, forget_user behind its confirmation, retry of an alert, reports,
//! stale accounts; it writes a screenshot of each page.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::json;

use crate::common::*;

/// What the browser needs, or why it is missing (fatal under CI).
fn browser_tools() -> Option<PathBuf> {
    let modules = repo().join("tests/ui/node_modules/playwright-core");
    let chromium = PathBuf::from("/usr/bin/chromium");
    let node = Command::new("node").arg("--version").output().is_ok();
    let missing = match (modules.exists(), chromium.exists(), node) {
        (true, true, true) => return Some(chromium),
        (false, _, _) => "playwright-core (npm ci --prefix tests/ui)",
        (_, false, _) => "Debian's chromium",
        _ => "node",
    };
    if in_ci() {
        panic!("{missing} is required in CI: .ci/run installs it");
    }
    eprintln!("skipping the dashboard test: {missing} is not installed");
    None
}

fn entry(user: &str, kind: &str, device: &str, secs_ago: i64) -> serde_json::Value {
    let mut v = login(user, device, secs_ago);
    v["log"]["log_type"] = json!(kind);
    v
}

#[tokio::test]
async fn the_dashboard_in_headless_chromium() {
    let Some(chromium) = browser_tools() else {
        return;
    };
    // Alerts go to a webhook that refuses: they stay in the outbox to retry.
    let ts = TestServer::start_with(
        "privacy:\n  report_min_users: 2\nalerts:\n  log: false\n  webhook:\n    url: http://127.0.0.1:9/hook\n    secret: s\n    timeout: 1s\n  retry: { initial: 1h, max: 1h }\n",
    )
    .await;
    let mut sso = ts.client("sso-server").await;
    let day = 86_400;
    let events = [
        ("acme/ann", "login", "d1", 3 * day),
        ("acme/ann", "logout", "d1", 3 * day - 3600),
        ("acme/ann", "login", "d2", day),
        ("acme/ann", "logout", "d2", day - 3600),
        ("acme/bob", "login", "d1", 2 * day),
        ("acme/bob", "login", "d2", day),
        ("acme/bob", "logout", "d2", day - 7200),
        ("globex/cy", "login", "d1", 2 * day),
        ("globex/cy", "logout", "d1", 2 * day - 3600),
        ("dan", "login", "d1", 5 * day),
        ("dan", "password_change", "d1", 4 * day),
        ("zed", "login", "d1", 6 * day),
    ];
    for (user, kind, device, ago) in events {
        sso.ok("/api/add_log", entry(user, kind, device, ago)).await;
    }
    sso.ok(
        "/api/set_last_login",
        json!({"last_login": {"timestamp": ago(day), "username": "acme/ann", "service": "mail"}}),
    )
    .await;

    let dir = tempfile::tempdir().unwrap();
    let fixture = dir.path().join("fixture.json");
    std::fs::write(
        &fixture,
        json!({
            "total": events.len(),
            "user": "acme/ann",
            "user_events": 4,
            "tenant": "acme",
            "tenant_events": 7,
            "alerts": 2,
            "forget": "zed",
            "ghosts": ["ghost-1", "ghost-2"],
        })
        .to_string(),
    )
    .unwrap();

    let mut ui = Command::new(env!("CARGO_BIN_EXE_user-meta-admin"))
        .arg("--server")
        .arg(format!("https://localhost:{}", ts.addr.port()))
        .arg("--ca")
        .arg(cert("ca.pem"))
        .arg("--cert")
        .arg(cert("client-admin.pem"))
        .arg("--key")
        .arg(cert("client-admin.key"))
        .args(["ui", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = ui.stdout.take().unwrap();
    let url = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .unwrap();
        line
    })
    .await
    .unwrap();
    let url = url
        .trim()
        .strip_prefix("dashboard: ")
        .unwrap_or_else(|| panic!("the dashboard did not start: {url:?}"))
        .trim_end_matches('/')
        .to_owned();

    // Screenshots for the README with USERMETADB_SCREENSHOTS=DIR.
    let shots = std::env::var_os("USERMETADB_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.path().join("shots"));
    let script = repo().join("tests/ui/dashboard.mjs");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(script)
            .arg(&url)
            .arg(&shots)
            .arg(&fixture)
            .env("CHROMIUM", chromium)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let _ = ui.kill();
    let _ = ui.wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "the dashboard checks failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("dashboard: all checks passed"));
    // The erasure went through the server.
    let mut admin = ts.client("admin").await;
    let v = admin
        .ok(
            "/api/get_user_logs",
            json!({"username": "zed", "max_days": 0}),
        )
        .await;
    assert!(v["result"].as_array().unwrap().is_empty());
    drop(dir);
}
