//! `POST /api/report` and `user-meta-admin report`: the aggregates, the
//! withholding of groups smaller than k users, the ACL, and the HTML page as
//! headless Chromium renders it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::admin::{admin, conn_args, run_bin, ADMIN};
use crate::common::*;

/// The top of the hour `hours` before the hour this test process started
/// in, RFC 3339: read once, so that a test spanning the top of an hour keeps
/// its sessions' lengths and its ranges.
fn hour_ago(hours: i64) -> String {
    static HOUR: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    let hour = *HOUR.get_or_init(|| chrono::Utc::now().timestamp() / 3600);
    let t = (hour - hours) * 3600;
    chrono::DateTime::from_timestamp(t, 0)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn event(user: &str, log_type: &str, service: &str, at: &str, device: Option<Value>) -> Value {
    let mut log =
        json!({"timestamp": at, "username": user, "log_type": log_type, "service": service});
    if let Some(d) = device {
        log["device_info"] = d;
    }
    json!({ "log": log })
}

/// Six users on Firefox / Linux from Italy with two-hour mail sessions; two on
/// Chrome / Windows from France on the web service; failed logins by five;
/// one user whose browser name is markup.
async fn seed(ts: &TestServer) {
    let mut c = ts.client("sso-server").await;
    let device = |id: &str, zone: &str, browser: &str, os: &str| json!({"id": id, "remote_zone": zone, "browser": browser, "os": os, "mobile": false});
    for i in 0..6 {
        let user = format!("italy{i}");
        let d = device(&format!("it-{i}"), "IT", "Firefox", "Linux");
        c.ok(
            "/api/add_log",
            event(&user, "login", "mail", &hour_ago(50), Some(d.clone())),
        )
        .await;
        c.ok(
            "/api/add_log",
            event(&user, "logout", "mail", &hour_ago(48), None),
        )
        .await;
        c.ok(
            "/api/add_log",
            event(&user, "login", "mail", &hour_ago(26), Some(d)),
        )
        .await;
    }
    for i in 0..2 {
        let user = format!("france{i}");
        let d = device(&format!("fr-{i}"), "FR", "Chrome", "Windows");
        c.ok(
            "/api/add_log",
            event(&user, "login", "web", &hour_ago(30), Some(d)),
        )
        .await;
    }
    for i in 0..5 {
        let user = format!("italy{i}");
        c.ok(
            "/api/add_log",
            event(&user, "login_failure", "mail", &hour_ago(27), None),
        )
        .await;
    }
    for i in 0..5 {
        let user = format!("markup{i}");
        let d = device(
            &format!("mk-{i}"),
            "DE",
            "<script>alert(1)</script>",
            "Linux",
        );
        c.ok(
            "/api/add_log",
            event(&user, "login", "mail", &hour_ago(29), Some(d)),
        )
        .await;
    }
}

fn report<'a>(resp: &'a Value, kind: &str) -> &'a Value {
    resp["reports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in {resp}"))
}

fn keys(r: &Value) -> Vec<(String, i64, i64)> {
    r["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["key"].as_str().unwrap().to_owned(),
                x["count"].as_i64().unwrap(),
                x["users"].as_i64().unwrap(),
            )
        })
        .collect()
}

fn range() -> Value {
    json!({"from": hour_ago(24 * 7), "to": hour_ago(0)})
}

#[tokio::test]
async fn reports_aggregate_and_withhold_groups_smaller_than_k() {
    let ts = TestServer::start().await;
    seed(&ts).await;
    let mut c = ts.client("admin").await;
    let resp = c.ok("/api/report", range()).await;
    assert_eq!(resp["min_users"], 5);
    assert!(
        resp["from"].as_str().unwrap().ends_with("T00:00:00Z"),
        "whole days"
    );

    let countries = report(&resp, "countries");
    assert_eq!(keys(countries), [("IT".into(), 12, 6), ("DE".into(), 5, 5)]);
    assert_eq!(countries["suppressed_rows"], 1, "France has two users");
    let browsers = report(&resp, "browsers");
    assert_eq!(
        keys(browsers),
        [
            ("Firefox".into(), 12, 6),
            ("<script>alert(1)</script>".into(), 5, 5)
        ]
    );
    assert_eq!(browsers["suppressed_rows"], 1);
    let services = report(&resp, "logins_per_service");
    assert_eq!(keys(services), [("mail".into(), 17, 11)]);
    assert_eq!(services["suppressed_rows"], 1);
    assert_eq!(
        keys(report(&resp, "operating_systems")),
        [("Linux".into(), 17, 11)]
    );

    let per_day: i64 = keys(report(&resp, "logins_per_day"))
        .iter()
        .map(|k| k.1)
        .sum();
    let withheld = report(&resp, "logins_per_day")["suppressed_rows"]
        .as_i64()
        .unwrap();
    assert!(per_day <= 19 && (per_day == 19 || withheld > 0));
    let failures = keys(report(&resp, "login_failures_per_day"));
    assert_eq!(failures.len(), 1);
    assert_eq!((failures[0].1, failures[0].2), (5, 5));
    let users = keys(report(&resp, "distinct_users"));
    assert_eq!(users[0], ("(any)".into(), 30, 13));
    assert!(users.contains(&("logout".into(), 6, 6)));
    let devices: i64 = keys(report(&resp, "new_devices_per_day"))
        .iter()
        .map(|k| k.1)
        .sum();
    // France's two devices show only on a day they share with others.
    assert!((11..=13).contains(&devices), "{devices}");

    let sessions = report(&resp, "session_durations");
    assert_eq!(keys(sessions), [("2h–4h".into(), 6, 6)]);
    let stats: Vec<(String, i64)> = sessions["stats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_owned(),
                s["value"].as_i64().unwrap(),
            )
        })
        .collect();
    assert!(
        stats.contains(&("median_seconds".into(), 7200)),
        "{stats:?}"
    );
    assert!(stats.contains(&("sessions".into(), 6)), "{stats:?}");
    let alerts = report(&resp, "alerts_by_kind");
    assert!(alerts["rows"].is_array());

    // Nothing in any report names a user.
    let text = resp.to_string();
    for who in ["italy", "france", "markup"] {
        assert!(!text.contains(who), "{who} in {text}");
    }

    // One kind at a time.
    let only = c
        .ok(
            "/api/report",
            json!({"from": hour_ago(24 * 7), "to": hour_ago(0), "kind": "countries"}),
        )
        .await;
    assert_eq!(only["reports"].as_array().unwrap().len(), 1);

    // With k = 2, France shows.
    let small = TestServer::start_with("privacy:\n  report_min_users: 2\n").await;
    seed(&small).await;
    let mut c = small.client("admin").await;
    let resp = c.ok("/api/report", range()).await;
    assert_eq!(resp["min_users"], 2);
    assert!(keys(report(&resp, "countries")).contains(&("FR".into(), 2, 2)));
    assert_eq!(report(&resp, "countries")["suppressed_rows"], 0);
}

#[tokio::test]
async fn the_command_line_prints_reports_and_says_what_was_withheld() {
    let ts = TestServer::start().await;
    seed(&ts).await;
    let from = hour_ago(24 * 7);
    let json_run = admin(
        &ts,
        "admin",
        &["--format", "json", "report", "--from", &from],
    )
    .await;
    assert_eq!(json_run.code, 0, "{json_run:?}");
    let resp: Value = serde_json::from_str(&json_run.stdout).unwrap();
    assert_eq!(keys(report(&resp, "countries"))[0], ("IT".into(), 12, 6));

    let table = admin(
        &ts,
        "admin",
        &["report", "--from", &from, "--kind", "countries"],
    )
    .await;
    assert_eq!(table.code, 0, "{table:?}");
    assert!(
        table.stdout.contains("Logins per country"),
        "{}",
        table.stdout
    );
    assert!(
        table
            .stdout
            .contains("1 row withheld: fewer than 5 distinct users each."),
        "{}",
        table.stdout
    );
    assert!(!table.stdout.contains("FR"), "{}", table.stdout);

    let csv = admin(
        &ts,
        "admin",
        &["--format", "csv", "report", "--from", &from],
    )
    .await;
    assert_eq!(csv.code, 0, "{csv:?}");
    let lines: Vec<&str> = csv.stdout.lines().collect();
    assert_eq!(lines[0], "report,key,count,users");
    assert!(lines.contains(&"countries,IT,12,6"), "{}", csv.stdout);
    assert!(
        lines.contains(&"countries,(1 row withheld: fewer than 5 distinct users each.),,"),
        "{}",
        csv.stdout
    );
    assert!(
        lines.contains(&"session_durations:stats,median_seconds,7200,"),
        "{}",
        csv.stdout
    );

    let bad = admin(&ts, "admin", &["report", "--kind", "everything"]).await;
    assert_eq!(bad.code, 4, "{bad:?}");
    assert!(bad.stderr.contains("unknown report kind"), "{}", bad.stderr);
    let bad = admin(&ts, "admin", &["report", "--from", "yesterday"]).await;
    assert_eq!(bad.code, 1, "{bad:?}");
}

#[test]
fn the_threshold_is_configurable_within_bounds() {
    use usermetadb::config::Config;
    let c = Config::from_yaml("db_uri: x.db\nprivacy:\n  report_min_users: 10\n").unwrap();
    assert_eq!(c.privacy.report_min_users, 10);
    assert_eq!(
        Config::from_yaml("db_uri: x.db\n")
            .unwrap()
            .privacy
            .report_min_users,
        5
    );
    for bad in ["0", "10001", "-1", "many"] {
        let yaml = format!("db_uri: x.db\nprivacy:\n  report_min_users: {bad}\n");
        let err = Config::from_yaml(&yaml).unwrap_err().to_string();
        assert!(err.contains("report_min_users"), "{bad}: {err}");
    }
}

#[tokio::test]
async fn reports_are_admin_only_and_check_their_input() {
    let ts = TestServer::start().await;
    for cn in ["accounts-panel", "sso-server"] {
        let mut c = ts.client(cn).await;
        let (status, _) = c.post("/api/report", range()).await;
        assert_eq!(status, 403, "{cn}");
    }
    let mut c = ts.client("admin").await;
    for body in [
        json!({}),
        json!({"from": hour_ago(0), "to": hour_ago(48)}),
        json!({"from": "2026-01-01", "to": hour_ago(0)}),
        json!({"from": "2000-01-01T00:00:00Z", "to": hour_ago(0)}),
        json!({"from": hour_ago(48), "to": hour_ago(0), "kind": "users"}),
        json!({"from": hour_ago(48), "to": hour_ago(0), "user": "alice"}),
    ] {
        let (status, resp) = c.post("/api/report", body.clone()).await;
        assert_eq!(status, 400, "{body} -> {resp}");
        assert!(resp["error"].is_string());
    }
}

/// Headless Chromium, or why there is none: required in CI.
fn chromium() -> Option<PathBuf> {
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        if let Ok(out) = Command::new("sh")
            .args(["-c", &format!("command -v {name}")])
            .output()
        {
            let p = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if out.status.success() && !p.is_empty() {
                return Some(PathBuf::from(p));
            }
        }
    }
    if in_ci() {
        panic!("chromium is not installed: .ci/run installs it (apt-get install chromium); the HTML report test needs it");
    }
    None
}

/// Runs Chromium headless on `page` with `args`, killed after a minute.
fn run_chromium(bin: &Path, profile: &Path, args: &[OsString], page: &Path) -> (String, String) {
    let child = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting chromium");
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(60);
    let watchdog = std::thread::spawn(move || {
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
            // Signal 0 only checks that the process still exists.
            if unsafe { libc::kill(pid as i32, 0) } != 0 {
                return;
            }
        }
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    });
    let out = child.wait_with_output().unwrap();
    let _ = watchdog.join();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn html_report_renders_its_charts_in_headless_chromium() {
    let ts = TestServer::start().await;
    seed(&ts).await;
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("report.html");
    let mut args = conn_args(&ts, "client-admin");
    args.extend([
        "report".into(),
        "--from".into(),
        hour_ago(24 * 7).into(),
        "--html".into(),
    ]);
    args.push(page.clone().into());
    let r = run_bin(ADMIN, args, None).await;
    assert_eq!(r.code, 0, "{r:?}");
    let html = std::fs::read_to_string(&page).unwrap();
    // Self-contained: no script, nothing fetched.
    for banned in ["<script", "src=", "href=", "@import", "url("] {
        assert!(!html.contains(banned), "{banned} in the page");
    }
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(html.contains("withheld: fewer than 5 distinct users"));

    let Some(bin) = chromium() else {
        println!(
            "NOTICE: chromium not installed; skipping the browser rendering of the HTML report"
        );
        return;
    };
    let profile = tempfile::tempdir().unwrap();
    let (dom, log) = run_chromium(&bin, profile.path(), &["--dump-dom".into()], &page);
    let charts = dom.matches("<svg class=\"chart\"").count();
    assert!(
        charts >= 8,
        "{charts} charts in the rendered DOM:\n{dom}\n{log}"
    );
    assert!(dom.matches("<rect class=\"bar\"").count() >= 10, "{dom}");
    assert!(dom.contains("Logins per country") && dom.contains("Time between login and logout"));
    let console: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("CONSOLE") || l.contains("Uncaught") || l.contains("Refused to"))
        .collect();
    assert!(
        console.is_empty(),
        "console errors:\n{}",
        console.join("\n")
    );

    let shot = dir.path().join("report.png");
    let profile = tempfile::tempdir().unwrap();
    let (_, log) = run_chromium(
        &bin,
        profile.path(),
        &[
            format!("--screenshot={}", shot.display()).into(),
            "--window-size=1000,2400".into(),
            "--hide-scrollbars".into(),
        ],
        &page,
    );
    let png = std::fs::read(&shot).unwrap_or_else(|e| panic!("no screenshot ({e}):\n{log}"));
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(
        png.len() > 20_000,
        "a {}-byte screenshot is blank",
        png.len()
    );
    if let Ok(keep) = std::env::var("REPORT_SCREENSHOT") {
        std::fs::copy(&shot, keep).unwrap();
    }
}
