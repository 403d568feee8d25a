//! The configs shipped in the repository, and `check-config`.

use std::process::Command;

use usermetadb::config::Config;

use crate::common::*;

#[test]
fn example_config_parses_cleanly() {
    let c = Config::load(&repo().join("user-meta-server.example.yml")).unwrap();
    assert!(c.http.tls.is_some());
    assert_eq!(c.privacy.timestamp_granularity.as_secs(), 3600);
}

#[test]
fn dev_config_is_complete_from_the_repository_root() {
    let c = Config::load(&repo().join("testdata/dev.yml")).unwrap();
    let tls = c.http.tls.unwrap();
    for p in [&tls.cert, &tls.key, &tls.ca, c.geoip.as_ref().unwrap()] {
        assert!(
            p.is_relative(),
            "{} should be relative to the repository",
            p.display()
        );
        assert!(repo().join(p).is_file(), "{} missing", p.display());
    }
}

#[test]
fn check_config_reports_every_problem_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_user-meta-server");
    let good = dir.path().join("good.yml");
    std::fs::write(&good, config_yaml(dir.path(), "")).unwrap();
    let out = Command::new(bin)
        .args(["check-config", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let bad = dir.path().join("bad.yml");
    std::fs::write(
        &bad,
        "db_uri: /nonexistent-dir/x.db\nhttp_server:\n  max_connections: 0\n  tls: { cert: /nope.pem, key: /nope.key, ca: /nope-ca.pem, acl: [{path: '(', cn: x}] }\nprivacy:\n  timestamp_granularity: 1y\n",
    )
    .unwrap();
    let out = Command::new(bin)
        .args(["check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    // A bad duration stops parsing at that key.
    assert!(
        text.contains("privacy.timestamp_granularity: invalid duration"),
        "{text}"
    );

    std::fs::write(
        &bad,
        "db_uri: /nonexistent-dir/x.db\nhttp_server:\n  max_connections: 0\n  tls: { cert: /nope.pem, key: /nope.key, ca: /nope-ca.pem, acl: [{path: '(', cn: x}] }\n",
    )
    .unwrap();
    let out = Command::new(bin)
        .args(["check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for key in ["http_server.max_connections", "http_server.tls.acl[0]"] {
        assert!(text.contains(key), "{key} not reported:\n{text}");
    }
    std::fs::write(
        &bad,
        "db_uri: /nonexistent-dir/x.db\nhttp_server:\n  tls: { cert: /nope.pem, key: /nope.key, ca: /nope-ca.pem, acl: [{path: x, cn: x}] }\n",
    )
    .unwrap();
    let out = Command::new(bin)
        .args(["check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for key in [
        "db_uri",
        "http_server.tls.cert",
        "http_server.tls.key",
        "http_server.tls.ca",
    ] {
        assert!(
            text.contains(&format!(": {key}:")),
            "{key} not reported:\n{text}"
        );
    }
}

#[test]
fn check_config_validates_the_alerts_block() {
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_user-meta-server");
    let path = dir.path().join("alerts.yml");
    let run = |extra: &str| {
        std::fs::write(&path, config_yaml(dir.path(), extra)).unwrap();
        let out = Command::new(bin)
            .args(["check-config", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };
    let (ok, text) = run(
        "alerts:\n  rules: [new_device, teleportation]\n  webhook: { url: 'ftp://x', secret: s }\n  smtp: { server: nohost, from: 'not an address', tls: maybe }\n",
    );
    assert!(!ok);
    for key in [
        "alerts.rules[1]",
        "alerts.webhook.url",
        "alerts.smtp.server",
        "alerts.smtp.from",
        "alerts.smtp.tls",
        "alerts.smtp:",
    ] {
        assert!(text.contains(key), "{key} not reported:\n{text}");
    }
    // A secret file that does not exist is named.
    let (ok, text) = run("alerts:\n  webhook: { url: 'https://hooks.example.org/x', secret_file: /nonexistent/hook.secret }\n");
    assert!(!ok);
    assert!(text.contains("alerts.webhook.secret_file"), "{text}");
    // A CA bundle that is not one fails when the sinks are prepared.
    let bogus = dir.path().join("bogus-ca.pem");
    std::fs::write(&bogus, "not a certificate").unwrap();
    let (ok, text) = run(&format!(
        "alerts:\n  webhook: {{ url: 'https://hooks.example.org/x', secret: s, ca: {} }}\n",
        bogus.display()
    ));
    assert!(!ok);
    assert!(text.contains("alerts.webhook"), "{text}");
    let (ok, text) = run(&format!(
        "alerts:\n  webhook: {{ url: 'https://hooks.example.org/x', secret: s, ca: {} }}\n",
        cert("ca.pem").display()
    ));
    assert!(ok, "{text}");
}
