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

/// The example file with the commented-out block that starts at `marker`
/// (and ends at the next blank line) uncommented, and the file before it.
fn uncommented(marker: &str) -> (String, String) {
    let text = std::fs::read_to_string(repo().join("user-meta-server.example.yml")).unwrap();
    let (head, rest) = text.split_once(marker).unwrap();
    let block = format!("{marker}{rest}")
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(|l| l.strip_prefix("# ").unwrap_or(l).to_owned())
        .collect::<Vec<_>>()
        .join("\n");
    (head.to_owned(), format!("{head}{block}\n"))
}

#[test]
fn the_example_agents_block_parses_once_uncommented() {
    let (head, yaml) = uncommented("# agents:");
    let c = Config::from_yaml(&yaml).unwrap();
    assert_eq!(c.agents.addr.unwrap().port(), 5506);
    assert_eq!(c.agents.rate_limit, 60);
    assert_eq!(c.agents.dedup_window.as_secs(), 7 * 86_400);
    assert!(!c.agents.per_user_time.allows("acme"));
    assert_eq!(c.privacy.session_granularity.as_secs(), 300);
    // And its mistakes are named by key.
    let bad =
        format!("{head}agents:\n  addr: nowhere\n  rate_limit: 0\n  per_user_time: [\"a b\"]\n");
    let err = Config::from_yaml(&bad).unwrap_err().to_string();
    for key in ["agents.addr", "agents.rate_limit", "agents.per_user_time"] {
        assert!(err.contains(key), "{key} not named in: {err}");
    }
}

#[test]
fn the_example_policy_block_parses_once_uncommented() {
    let (head, yaml) = uncommented("# policy:");
    let c = Config::from_yaml(&yaml).unwrap();
    let p = &c.policy;
    assert_eq!(p.addr.unwrap().port(), 5507);
    assert!(p.tls.is_some() && p.token.is_some() && !p.dry_run);
    assert_eq!(
        (
            p.delay_after,
            p.refuse_after,
            p.spray_logins,
            p.spray_net_logins
        ),
        (3, 10, 10, 30)
    );
    assert_eq!(
        (
            p.window.as_secs(),
            p.cooldown.as_secs(),
            p.max_delay.as_secs()
        ),
        (900, 900, 15)
    );
    // And its mistakes are named by key.
    let bad = format!("{head}policy:\n  addr: nowhere\n  delay_after: 5\n  refuse_after: 2\n  guess_action: ban\n");
    let err = Config::from_yaml(&bad).unwrap_err().to_string();
    for key in ["policy.addr", "policy.refuse_after", "policy.guess_action"] {
        assert!(err.contains(key), "{key} not named in: {err}");
    }
    let no_token = format!("{head}policy:\n  addr: :5507\n");
    let err = Config::from_yaml(&no_token).unwrap_err().to_string();
    assert!(err.contains("policy.token_file"), "{err}");
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

/// Runs `user-meta-server check-config` on `yaml`: (success, what it printed).
fn check_config(yaml: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yml");
    std::fs::write(&path, yaml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_user-meta-server"))
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
    )
}

fn assert_reported(text: &str, keys: &[&str]) {
    for key in keys {
        assert!(text.contains(key), "{key} not reported:\n{text}");
    }
}

#[test]
fn check_config_reports_every_problem_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, text) = check_config(&config_yaml(dir.path(), ""));
    assert!(ok, "{text}");

    // A bad duration stops parsing at that key.
    let tls_block =
        "  tls: { cert: /nope.pem, key: /nope.key, ca: /nope-ca.pem, acl: [{path: '(', cn: x}] }\n";
    let (ok, text) = check_config(&format!(
        "db_uri: /nonexistent-dir/x.db\nhttp_server:\n  max_connections: 0\n{tls_block}privacy:\n  timestamp_granularity: 1y\n"
    ));
    assert!(!ok);
    assert_reported(&text, &["privacy.timestamp_granularity: invalid duration"]);

    // Value problems are all reported together.
    let (ok, text) = check_config(&format!(
        "db_uri: /nonexistent-dir/x.db\nhttp_server:\n  max_connections: 0\n{tls_block}"
    ));
    assert!(!ok);
    assert_reported(
        &text,
        &["http_server.max_connections", "http_server.tls.acl[0]"],
    );

    // So are missing files.
    let (ok, text) = check_config(
        "db_uri: /nonexistent-dir/x.db\nhttp_server:\n  tls: { cert: /nope.pem, key: /nope.key, ca: /nope-ca.pem, acl: [{path: x, cn: x}] }\n",
    );
    assert!(!ok);
    assert_reported(
        &text,
        &[
            ": db_uri:",
            ": http_server.tls.cert:",
            ": http_server.tls.key:",
            ": http_server.tls.ca:",
        ],
    );
}

#[test]
fn check_config_validates_the_alerts_block() {
    let dir = tempfile::tempdir().unwrap();
    let run = |extra: &str| check_config(&config_yaml(dir.path(), extra));
    let (ok, text) = run(
        "alerts:\n  rules: [new_device, teleportation]\n  webhook: { url: 'ftp://x', secret: s }\n  smtp: { server: nohost, from: 'not an address', tls: maybe }\n",
    );
    assert!(!ok);
    assert_reported(
        &text,
        &[
            "alerts.rules[1]",
            "alerts.webhook.url",
            "alerts.smtp.server",
            "alerts.smtp.from",
            "alerts.smtp.tls",
            "alerts.smtp:",
        ],
    );
    // A secret file that does not exist is named.
    let (ok, text) = run("alerts:\n  webhook: { url: 'https://hooks.example.org/x', secret_file: /nonexistent/hook.secret }\n");
    assert!(!ok);
    assert_reported(&text, &["alerts.webhook.secret_file"]);
    // A CA bundle that is not one fails when the sinks are prepared.
    let bogus = dir.path().join("bogus-ca.pem");
    std::fs::write(&bogus, "not a certificate").unwrap();
    let webhook_with_ca = |ca: &std::path::Path| {
        format!(
            "alerts:\n  webhook: {{ url: 'https://hooks.example.org/x', secret: s, ca: {} }}\n",
            ca.display()
        )
    };
    let (ok, text) = run(&webhook_with_ca(&bogus));
    assert!(!ok);
    assert_reported(&text, &["alerts.webhook"]);
    let (ok, text) = run(&webhook_with_ca(&cert("ca.pem")));
    assert!(ok, "{text}");
}

#[test]
fn a_missing_config_file_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.yml");
    for args in [&["--config"][..], &["check-config", "--config"][..]] {
        let out = Command::new(env!("CARGO_BIN_EXE_user-meta-server"))
            .args(args)
            .arg(&path)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(text.lines().count(), 1, "{args:?}: {text}");
        assert!(
            text.contains(&format!("cannot read {}", path.display())),
            "{text}"
        );
        assert_eq!(
            text.matches("No such file or directory").count(),
            1,
            "{text}"
        );
    }
}
