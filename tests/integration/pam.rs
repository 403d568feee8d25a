//! SSH and other PAM logins: the `pam_exec` hook of `contrib/pam/` in a PAM
//! stack driven by Debian's `pamtester`, against a real server's policy
//! listener.
//!
//! The stacks are written to `/etc/pam.d/` under unique names (removed
//! after), so the tests need root and `pamtester`; without them they pass
//! with a notice, unless `CI` is set.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::*;

/// The token the hook sends.
const TOKEN: &str = "pam-hook-test-token-5f1c";

fn hook() -> PathBuf {
    repo().join("contrib/pam/usermetadb-pam-report")
}

/// Whether `pamtester` can run a stack of ours: root and `pamtester`; under
/// CI both must be there.
fn pamtester_usable() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let installed = Command::new("pamtester")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    match (root, installed) {
        (true, true) => true,
        _ if in_ci() => panic!("the PAM tests need root and pamtester in CI (root: {root})"),
        _ => {
            eprintln!("skipping a PAM test: it needs root and pamtester (root: {root})");
            false
        }
    }
}

/// A server with a policy listener and the test GeoIP database, and the
/// token file the hook reads (in its own directory).
async fn start() -> (TestServer, tempfile::TempDir) {
    let secrets = tempfile::tempdir().unwrap();
    let token_file = secrets.path().join("pam.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let ts = TestServer::start_with(&format!(
        "geoip:\n  db: {}\npolicy:\n  addr: 127.0.0.1:0\n  token_file: {}\n",
        shared_geoip("GeoIP2-Country-Test.mmdb").display(),
        token_file.display()
    ))
    .await;
    (ts, secrets)
}

/// The hook's `url=` for a listener.
fn url(addr: SocketAddr) -> String {
    format!("http://{addr}/")
}

/// A PAM service under `/etc/pam.d/`, removed on drop: `decision`
/// (`pam_permit.so` or `pam_deny.so`) stands in for the password check,
/// with the hook placed as the manual says.
struct PamService {
    name: String,
    path: PathBuf,
}

impl PamService {
    fn new(decision: &str, url: &str, token_file: &Path) -> PamService {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "usermetadb-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let path = Path::new("/etc/pam.d").join(&name);
        let hook = format!(
            "{} url={url} token_file={}",
            hook().display(),
            token_file.display()
        );
        std::fs::write(
            &path,
            format!(
                "auth    [success=2 default=ignore] {decision}
auth    optional  pam_exec.so quiet {hook} failure
auth    requisite pam_deny.so
auth    required  pam_permit.so
account required  pam_permit.so
session optional  pam_exec.so quiet {hook}
session required  pam_permit.so
"
            ),
        )
        .unwrap();
        PamService { name, path }
    }

    /// `pamtester -I rhost=RHOST SERVICE USER authenticate open_session`:
    /// whether it succeeded, and how long it took.
    async fn login(&self, user: &str, rhost: &str) -> (bool, Duration, String) {
        let (name, user, rhost) = (self.name.clone(), user.to_owned(), rhost.to_owned());
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let out = Command::new("pamtester")
                .arg("-I")
                .arg(format!("rhost={rhost}"))
                .args([&name, &user, "authenticate", "open_session"])
                .stdin(Stdio::null())
                .output()
                .expect("pamtester");
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            (out.status.success(), started.elapsed(), text)
        })
        .await
        .unwrap()
    }
}

impl Drop for PamService {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// `user`'s log entries once there are `n` (polled, 10 s at most).
async fn logs(ts: &TestServer, user: &str, n: usize) -> Vec<Value> {
    let mut admin = ts.client("admin").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = admin
            .ok(
                "/api/get_user_logs",
                json!({"username": user, "max_days": 30}),
            )
            .await;
        let entries = v["result"].as_array().cloned().unwrap_or_default();
        if entries.len() >= n || Instant::now() > deadline {
            return entries;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_pam_login_and_a_pam_failure_are_stored_with_service_and_country() {
    if !pamtester_usable() {
        return;
    }
    let (ts, secrets) = start().await;
    let policy = ts.policy.expect("the config has policy.addr");
    let token_file = secrets.path().join("pam.token");

    let permit = PamService::new("pam_permit.so", &url(policy), &token_file);
    let (ok, _, out) = permit.login("alice", "81.2.69.160").await;
    assert!(ok, "{out}");
    let entries = logs(&ts, "alice", 1).await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    let e = &entries[0];
    assert_eq!(e["log_type"], "login");
    assert_eq!(e["service"], permit.name.as_str());
    assert_eq!(e["device_info"]["remote_zone"], "GB");
    assert_eq!(e["device_info"]["remote_addr"], "", "no address is kept");
    let mut admin = ts.client("admin").await;
    let last = admin
        .ok("/api/get_last_login", json!({"username": "alice"}))
        .await;
    let services: Vec<&str> = last["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["service"].as_str().unwrap())
        .collect();
    assert_eq!(services, [permit.name.as_str()], "{last}");

    // The password check fails: the hook below it reports the failure, and
    // the login still fails.
    let deny = PamService::new("pam_deny.so", &url(policy), &token_file);
    let (ok, _, out) = deny.login("bob", "89.160.20.112").await;
    assert!(!ok, "{out}");
    let entries = logs(&ts, "bob", 1).await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    let e = &entries[0];
    assert_eq!(e["log_type"], "login_failure");
    assert_eq!(e["service"], deny.name.as_str());
    assert_eq!(e["device_info"]["remote_zone"], "SE");
    let last = admin
        .ok("/api/get_last_login", json!({"username": "bob"}))
        .await;
    assert_eq!(last["result"].as_array().map(Vec::len), Some(0), "{last}");

    // A local login (no PAM_RHOST) is stored with no country.
    let (ok, _, out) = permit.login("carol", "").await;
    assert!(ok, "{out}");
    let entries = logs(&ts, "carol", 1).await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["device_info"]["remote_zone"], "");
}

/// Run as `pam_exec` runs it, with only the PAM variables: `sshd` is
/// reported as `ssh`, a username is sent exactly, and a phase with nothing
/// to report (closing the session) sends nothing.
#[tokio::test]
async fn the_hook_reports_sshd_as_ssh_and_sends_the_username_exactly() {
    if Command::new("curl").arg("--version").output().is_err() {
        assert!(!in_ci(), "the PAM hook needs curl in CI");
        eprintln!("skipping a PAM test: curl is not installed");
        return;
    }
    let (ts, secrets) = start().await;
    let policy = ts.policy.expect("the config has policy.addr");
    let token_file = secrets.path().join("pam.token");
    let run = move |user: &str, pam_type: &str| {
        let status = Command::new(hook())
            .arg(format!("url={}", url(policy)))
            .arg(format!("token_file={}", token_file.display()))
            .env_clear()
            .env("PAM_USER", user)
            .env("PAM_RHOST", "216.160.83.56")
            .env("PAM_SERVICE", "sshd")
            .env("PAM_TYPE", pam_type)
            .output()
            .expect("the hook");
        assert!(status.status.success());
        assert!(
            status.stdout.is_empty() && status.stderr.is_empty(),
            "the hook prints nothing"
        );
    };
    let odd = r#"o"brien\ x"#;
    tokio::task::spawn_blocking(move || {
        run(odd, "open_session");
        run(odd, "close_session");
    })
    .await
    .unwrap();
    let entries = logs(&ts, odd, 1).await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["username"], odd);
    assert_eq!(entries[0]["log_type"], "login");
    assert_eq!(entries[0]["service"], "ssh");
    assert_eq!(entries[0]["device_info"]["remote_zone"], "US");
}

/// With no server, or one that never answers, the login goes on: at most
/// the hook's 2 s bound (asserted < 5 s).
#[tokio::test]
async fn a_stopped_or_silent_server_does_not_hold_up_a_pam_login() {
    if !pamtester_usable() {
        return;
    }
    let (ts, secrets) = start().await;
    let policy = ts.policy.expect("the config has policy.addr");
    let token_file = secrets.path().join("pam.token");
    drop(ts.stop().await);
    // Nothing listens at the stopped server's address any more.
    assert!(std::net::TcpStream::connect(policy).is_err());

    // Accepts connections (the kernel completes them) but never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap();

    for addr in [policy, silent_addr] {
        for decision in ["pam_permit.so", "pam_deny.so"] {
            let service = PamService::new(decision, &url(addr), &token_file);
            let (ok, elapsed, out) = service.login("alice", "81.2.69.160").await;
            assert_eq!(ok, decision == "pam_permit.so", "{addr} {decision}: {out}");
            assert!(
                elapsed < Duration::from_secs(5),
                "{addr} {decision}: {elapsed:?}"
            );
        }
    }
    drop(silent);
}
