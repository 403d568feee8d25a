//! A real Dovecot (Debian's `dovecot-imapd`, 2.3) asking a policy server
//! before and after each login, and an IMAP client that logs in through it.
//!
//! [`Dovecot::start`] runs a throwaway instance: its own `base_dir`,
//! `state_dir` and log in a temporary directory, users `alice:secret1`,
//! `bob:secret2` and `carol:secret3` in a `passwd-file`, and one IMAP
//! listener on a free loopback port with `haproxy = yes`, so that
//! [`Dovecot::imap_login`] can give each connection a public client address
//! in a PROXY protocol header. Dovecot's own delays of failed logins are off
//! (`auth_failure_delay = 0`, no anvil `auth-penalty` socket), so any delay
//! a test measures is the policy server's.
//!
//! What Dovecot 2.3.19 does with the policy server's answers (measured):
//! - a correct password: `allow` before the password check, `allow` after
//!   it, then `report` (`success: true`); a wrong one: `allow`, then `report`
//!   (`success: false`);
//! - `{"status": N}` with N > 0 delays the login by N seconds (only the
//!   answer to the first `allow` counts);
//! - `{"status": -1, "msg": M}` fails the login with `NO [ALERT] M`, and the
//!   report then says `"policy_reject": true`;
//! - a non-2xx answer, a refused connection or no answer within 2 s falls
//!   back to `auth_policy_reject_on_fail` (here `no`: the login goes on).

#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::common::{client_at, eventually_some, in_ci, on_postgres};

/// The users of every instance, as `(name, password)`.
pub(crate) const USERS: [(&str, &str); 3] = [
    ("alice", "secret1"),
    ("bob", "secret2"),
    ("carol", "secret3"),
];

/// The IMAP ID a Thunderbird on Windows sends.
pub(crate) const THUNDERBIRD: &[(&str, &str)] = &[
    ("name", "Thunderbird"),
    ("version", "115.3"),
    ("os", "Windows"),
    ("os-version", "10"),
];

/// How one IMAP login went.
#[derive(Debug)]
pub(crate) struct Login {
    /// The server answered `OK` to `LOGIN`.
    pub ok: bool,
    /// The tagged answer to `LOGIN` (e.g. `NO [ALERT] Too many failures`),
    /// or what went wrong on the connection.
    pub text: String,
    /// From connecting to the tagged answer to `LOGIN`.
    pub elapsed: Duration,
}

/// A running Dovecot; dropping it stops it.
pub(crate) struct Dovecot {
    /// The IMAP listener (`haproxy = yes`: every connection must start with a
    /// PROXY header).
    pub addr: SocketAddr,
    /// Holds the configuration, the runtime directories and the log.
    pub dir: tempfile::TempDir,
    /// The configuration file (for `doveadm -c`).
    pub config: PathBuf,
    master: Child,
}

impl Dovecot {
    /// A Dovecot asking the policy server at `policy_url` (e.g.
    /// `http://127.0.0.1:PORT/`), sending `Authorization: Bearer {token}`.
    ///
    /// `None`, with a notice, where Dovecot is not installed, unless `CI` is
    /// set: then it panics.
    pub(crate) fn start(policy_url: &str, token: &str) -> Option<Dovecot> {
        Self::start_with(policy_url, token, "")
    }

    /// [`Dovecot::start`] with `extra` settings appended to the configuration
    /// (a later setting overrides an earlier one, e.g.
    /// `auth_policy_reject_on_fail = yes`).
    pub(crate) fn start_with(policy_url: &str, token: &str, extra: &str) -> Option<Dovecot> {
        if !installed() {
            if in_ci() {
                panic!("dovecot is required in CI (apt-get install dovecot-imapd)");
            }
            eprintln!("skipping a Dovecot test: dovecot is not installed");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        // Dovecot's unprivileged processes read the users and write the mail.
        set_mode(root, 0o755);
        let (user, uid, gid) = service_user();
        for sub in ["run", "state", "mail"] {
            std::fs::create_dir(root.join(sub)).unwrap();
        }
        std::os::unix::fs::chown(root.join("mail"), Some(uid), Some(gid)).unwrap();
        let passwd = root.join("passwd");
        let users: String = USERS
            .iter()
            .map(|(u, p)| format!("{u}:{{PLAIN}}{p}::::::\n"))
            .collect();
        std::fs::write(&passwd, users).unwrap();
        set_mode(&passwd, 0o644);

        let port = free_port();
        let r = root.display();
        let unprivileged = if uid == 0 {
            String::new()
        } else {
            // Not root: every process runs as this user and its group, and
            // nothing chroots.
            let group = Command::new("id").arg("-gn").output().expect("id").stdout;
            format!(
                "default_internal_group = {}\n\
                 service imap-login {{\n  chroot =\n}}\nservice anvil {{\n  chroot =\n}}\n",
                String::from_utf8_lossy(&group).trim()
            )
        };
        let login_user = if uid == 0 { "dovenull" } else { &user };
        let internal_user = if uid == 0 { "dovecot" } else { &user };
        let conf = format!(
            "# A throwaway Dovecot for the integration tests.
base_dir = {r}/run
state_dir = {r}/state
log_path = {r}/dovecot.log
info_log_path = {r}/dovecot.log
protocols = imap
listen = 127.0.0.1
default_internal_user = {internal_user}
default_login_user = {login_user}
first_valid_uid = 1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
imap_id_retain = yes
haproxy_trusted_networks = 127.0.0.0/8
mail_location = maildir:{r}/mail/%u
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {r}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={r}/mail/%u
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
    haproxy = yes
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
# No anvil penalty per address either: every delay is the policy server's.
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
{unprivileged}auth_policy_server_url = {policy_url}
auth_policy_server_api_header = Authorization: Bearer {token}
auth_policy_hash_nonce = {nonce}
auth_policy_reject_on_fail = no
auth_policy_report_after_auth = yes
auth_policy_check_before_auth = yes
auth_policy_check_after_auth = yes
{extra}
",
            nonce = nonce(),
        );
        let config = root.join("dovecot.conf");
        std::fs::write(&config, conf).unwrap();
        set_mode(&config, 0o644);

        let check = Command::new("doveconf")
            .args(["-n", "-c"])
            .arg(&config)
            .output()
            .expect("doveconf");
        assert!(
            check.status.success(),
            "doveconf rejects the test configuration: {}",
            String::from_utf8_lossy(&check.stderr)
        );

        let master = Command::new("dovecot")
            .arg("-F")
            .arg("-c")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("dovecot");
        let mut dovecot = Dovecot {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            dir,
            config,
            master,
        };
        dovecot.wait_listening();
        Some(dovecot)
    }

    /// Polls until the IMAP port accepts; panics with the log after 30 s or
    /// if the master exits.
    fn wait_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.master.try_wait() {
                panic!("dovecot exited ({status}):\n{}", self.log());
            }
            if std::net::TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "dovecot does not listen on {} after 30 s:\n{}",
                self.addr,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Dovecot's log so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dovecot.log")).unwrap_or_default()
    }

    /// Logs `user` in with `password` over IMAP, from `source` as far as
    /// Dovecot knows (a PROXY v1 header; the connection itself is loopback),
    /// sending `ID` with `id` first when given. Bounded by 30 s.
    pub(crate) async fn imap_login(
        &self,
        source: IpAddr,
        user: &str,
        password: &str,
        id: Option<&[(&str, &str)]>,
    ) -> Login {
        let started = Instant::now();
        let exchange = imap_exchange(self.addr, source, user, password, id);
        let (ok, text) = match tokio::time::timeout(Duration::from_secs(30), exchange).await {
            Ok(Ok(answer)) => (answer.starts_with("a2 OK"), answer),
            Ok(Err(e)) => (false, format!("connection error: {e}")),
            Err(_) => (false, "no answer to LOGIN within 30 s".to_string()),
        };
        Login {
            ok,
            text,
            elapsed: started.elapsed(),
        }
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        // On SIGTERM the master stops its children, then exits.
        if let Some(pid) = rustix::process::Pid::from_raw(self.master.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let _ = self.master.wait();
    }
}

/// The tagged answer to `LOGIN`.
async fn imap_exchange(
    addr: SocketAddr,
    source: IpAddr,
    user: &str,
    password: &str,
    id: Option<&[(&str, &str)]>,
) -> std::io::Result<String> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let header = match source {
        IpAddr::V4(ip) => format!("PROXY TCP4 {ip} 127.0.0.1 40000 143\r\n"),
        IpAddr::V6(ip) => format!("PROXY TCP6 {ip} ::1 40000 143\r\n"),
    };
    write.write_all(header.as_bytes()).await?;
    let greeting = read_line(&mut read).await?;
    if !greeting.starts_with("* OK") {
        return Ok(greeting);
    }
    if let Some(id) = id {
        let fields: Vec<String> = id
            .iter()
            .map(|(k, v)| format!("{} {}", quoted(k), quoted(v)))
            .collect();
        let command = format!("a1 ID ({})\r\n", fields.join(" "));
        write.write_all(command.as_bytes()).await?;
        let answer = read_tagged(&mut read, "a1 ").await?;
        if !answer.starts_with("a1 OK") {
            return Ok(answer);
        }
    }
    let command = format!("a2 LOGIN {} {}\r\n", quoted(user), quoted(password));
    write.write_all(command.as_bytes()).await?;
    let answer = read_tagged(&mut read, "a2 ").await?;
    let _ = write.write_all(b"a3 LOGOUT\r\n").await;
    Ok(answer)
}

async fn read_line(
    read: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
) -> std::io::Result<String> {
    let mut line = String::new();
    if read.read_line(&mut line).await? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    Ok(line.trim_end().to_string())
}

/// Skips untagged lines up to the one tagged `tag`.
async fn read_tagged(
    read: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    tag: &str,
) -> std::io::Result<String> {
    loop {
        let line = read_line(read).await?;
        if line.starts_with(tag) {
            return Ok(line);
        }
    }
}

/// An IMAP quoted string.
fn quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn installed() -> bool {
    Command::new("dovecot")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The user Dovecot's unprivileged processes and the mail run as: `dovecot`
/// when the tests run as root, else the current user.
fn service_user() -> (String, u32, u32) {
    let id = |args: &[&str]| -> String {
        let out = Command::new("id").args(args).output().expect("id");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let me: u32 = id(&["-u"]).parse().unwrap();
    let name = if me == 0 {
        "dovecot".to_string()
    } else {
        id(&["-un"])
    };
    let uid = id(&["-u", &name]).parse().unwrap();
    let gid = id(&["-g", &name]).parse().unwrap();
    (name, uid, gid)
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A port nothing listens on right now.
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A random `auth_policy_hash_nonce`.
fn nonce() -> String {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .unwrap();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Dovecot is configured with `auth_policy_reject_on_fail = no`: with nothing
/// listening at the policy URL, a correct password still logs in, promptly,
/// and a wrong one is still refused.
#[tokio::test]
async fn a_stopped_policy_server_lets_logins_through() {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/");
    let Some(dovecot) = Dovecot::start(&url, "stopped-server-token") else {
        return;
    };
    let source: IpAddr = "81.2.69.160".parse().unwrap();

    let login = dovecot
        .imap_login(source, "alice", "secret1", Some(THUNDERBIRD))
        .await;
    assert!(login.ok, "{login:?}");
    assert!(login.elapsed < Duration::from_secs(5), "{login:?}");

    let login = dovecot.imap_login(source, "bob", "wrong", None).await;
    assert!(!login.ok, "{login:?}");
    assert!(login.text.contains("AUTHENTICATIONFAILED"), "{login:?}");
    assert!(login.elapsed < Duration::from_secs(5), "{login:?}");

    // Dovecot did ask, and found nobody.
    let log = dovecot.log();
    assert!(
        log.contains("Policy server HTTP error") && log.contains("Connection refused"),
        "{log}"
    );
}

/// A stand-in policy server: records each request's target, bearer token and
/// body, and answers every request with the body it currently holds.
struct StubPolicy {
    url: String,
    requests: std::sync::Arc<std::sync::Mutex<Vec<(String, String, serde_json::Value)>>>,
    answer: std::sync::Arc<std::sync::Mutex<String>>,
}

impl StubPolicy {
    async fn start() -> StubPolicy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let stub = StubPolicy {
            url,
            requests: Default::default(),
            answer: std::sync::Arc::new(std::sync::Mutex::new(r#"{"status":0,"msg":""}"#.into())),
        };
        let (requests, answer) = (stub.requests.clone(), stub.answer.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (requests, answer) = (requests.clone(), answer.clone());
                tokio::spawn(async move {
                    let (read, mut write) = stream.into_split();
                    let mut read = BufReader::new(read);
                    // Keep-alive: one request after another on the connection.
                    while let Ok(target) = read_line(&mut read).await {
                        let (mut length, mut token) = (0, String::new());
                        loop {
                            let Ok(line) = read_line(&mut read).await else {
                                return;
                            };
                            if line.is_empty() {
                                break;
                            }
                            let (name, value) = line.split_once(':').unwrap_or((&line, ""));
                            match name.to_ascii_lowercase().as_str() {
                                "content-length" => length = value.trim().parse().unwrap(),
                                "authorization" => token = value.trim().to_string(),
                                _ => {}
                            }
                        }
                        let mut body = vec![0; length];
                        if tokio::io::AsyncReadExt::read_exact(&mut read, &mut body)
                            .await
                            .is_err()
                        {
                            return;
                        }
                        let body = serde_json::from_slice(&body).unwrap();
                        requests.lock().unwrap().push((target, token, body));
                        let answer = answer.lock().unwrap().clone();
                        let response = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                             Content-Length: {}\r\n\r\n{answer}",
                            answer.len()
                        );
                        if write.write_all(response.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        stub
    }

    fn answer(&self, body: &str) {
        *self.answer.lock().unwrap() = body.to_string();
    }

    fn take(&self) -> Vec<(String, String, serde_json::Value)> {
        std::mem::take(&mut *self.requests.lock().unwrap())
    }

    /// Polls until `n` requests are in (the report follows the answer to
    /// the client), 10 s at most.
    async fn wait_for(&self, n: usize) -> Vec<(String, String, serde_json::Value)> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.requests.lock().unwrap().len() < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.take()
    }
}

/// What the policy listener is built against, checked on the Dovecot the
/// tests run: the requests of a good and a bad login, a delay waited, a
/// refusal's message shown to the client.
#[tokio::test]
async fn dovecot_asks_reports_waits_and_shows_the_refusal() {
    let stub = StubPolicy::start().await;
    let Some(dovecot) = Dovecot::start(&stub.url, "contract-token") else {
        return;
    };
    let gb: IpAddr = "81.2.69.160".parse().unwrap();

    let login = dovecot
        .imap_login(gb, "alice", "secret1", Some(THUNDERBIRD))
        .await;
    assert!(login.ok, "{login:?}");
    let requests = stub.wait_for(3).await;
    let targets: Vec<&str> = requests.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(
        targets,
        [
            "POST /?command=allow HTTP/1.1",
            "POST /?command=allow HTTP/1.1",
            "POST /?command=report HTTP/1.1"
        ]
    );
    assert!(requests.iter().all(|r| r.1 == "Bearer contract-token"));
    let report = &requests[2].2;
    assert_eq!(report["login"], "alice");
    assert_eq!(report["remote"], "81.2.69.160");
    assert_eq!(report["protocol"], "imap");
    assert_eq!(report["success"], true);
    assert_eq!(report["policy_reject"], false);
    assert_eq!(report["tls"], false);
    assert_eq!(
        report["device_id"],
        r#""name" "Thunderbird" "version" "115.3" "os" "Windows" "os-version" "10""#
    );
    let pwhash = report["pwhash"].as_str().unwrap();
    assert!(!pwhash.is_empty() && pwhash.bytes().all(|b| b.is_ascii_hexdigit()));
    assert!(!report["session_id"].as_str().unwrap().is_empty());

    // A wrong password: one allow, then a failed report; the same wrong
    // password gives the same pwhash.
    let mut hashes = Vec::new();
    for _ in 0..2 {
        let login = dovecot.imap_login(gb, "alice", "wrong", None).await;
        assert!(
            !login.ok && login.text.contains("AUTHENTICATIONFAILED"),
            "{login:?}"
        );
        let requests = stub.wait_for(2).await;
        assert_eq!(requests[0].0, "POST /?command=allow HTTP/1.1");
        assert_eq!(requests[1].0, "POST /?command=report HTTP/1.1");
        assert_eq!(requests[1].2["success"], false);
        assert_eq!(requests[1].2["device_id"], "");
        hashes.push(requests[1].2["pwhash"].clone());
    }
    assert_eq!(hashes[0], hashes[1]);
    assert_ne!(hashes[0], report["pwhash"]);

    // A delay of 2 s is waited before the password check.
    stub.answer(r#"{"status":2,"msg":"slow down"}"#);
    let login = dovecot.imap_login(gb, "bob", "secret2", None).await;
    assert!(login.ok, "{login:?}");
    assert!(login.elapsed >= Duration::from_secs(2), "{login:?}");
    stub.wait_for(3).await;

    // A refusal fails even the right password, and the client sees the message.
    stub.answer(r#"{"status":-1,"msg":"Too many failures, try later"}"#);
    let login = dovecot.imap_login(gb, "carol", "secret3", None).await;
    assert!(!login.ok, "{login:?}");
    assert_eq!(login.text, "a2 NO [ALERT] Too many failures, try later");
    let requests = stub.wait_for(2).await;
    assert_eq!(requests[1].0, "POST /?command=report HTTP/1.1");
    assert_eq!(requests[1].2["success"], false);
    assert_eq!(requests[1].2["policy_reject"], true);
}

/// The `login_failure` entries of a `get_user_logs` answer.
fn failures_in(v: &serde_json::Value) -> usize {
    v["result"].as_array().map_or(0, |r| {
        r.iter()
            .filter(|e| e["log_type"] == "login_failure")
            .count()
    })
}

/// `user`'s log once `done` holds of it (Dovecot reports after it has
/// answered the client).
async fn logs_once(
    addr: SocketAddr,
    user: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let done = &done;
    eventually_some(&format!("{user}'s log entries"), || async move {
        let mut c = client_at(addr, "admin").await;
        let v = c
            .ok(
                "/api/get_user_logs",
                serde_json::json!({"username": user, "max_days": 1}),
            )
            .await;
        done(&v).then_some(v)
    })
    .await
}

/// Counts of the policy listener's decisions that slowed or refused.
async fn slowed_or_refused(addr: SocketAddr) -> i64 {
    let mut c = client_at(addr, "admin").await;
    let r =
        c.0.request(hyper::Method::GET, "/metrics", None, bytes::Bytes::new())
            .await
            .unwrap();
    String::from_utf8_lossy(&r.body)
        .lines()
        .filter(|l| {
            l.starts_with("usermetadb_policy_decisions_total{")
                && (l.contains("decision=\"delay\"") || l.contains("decision=\"refuse\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<i64>().ok())
        .sum()
}

#[tokio::test]
async fn a_real_dovecot_is_throttled_and_its_logins_stored_without_addresses() {
    let ts = crate::policy::start(
        "  delay_after: 2\n  refuse_after: 4\n  message: Too many failures, try later\n",
    )
    .await;
    let url = format!("http://{}/", ts.policy.unwrap());
    let Some(dovecot) = Dovecot::start(&url, crate::policy::TOKEN) else {
        return;
    };
    let mut admin = ts.client("admin").await;

    // A login: stored with its service, country and client.
    let gb: IpAddr = "81.2.69.160".parse().unwrap();
    let login = dovecot
        .imap_login(gb, "alice", "secret1", Some(THUNDERBIRD))
        .await;
    assert!(login.ok, "{login:?}");
    // Dovecot answers the client before it reports: wait for the entry.
    let v = logs_once(ts.addr, "alice", |v| {
        v["result"].as_array().is_some_and(|r| !r.is_empty())
    })
    .await;
    let entry = &v["result"][0];
    assert_eq!(
        (
            &entry["log_type"],
            &entry["service"],
            &entry["device_info"]["remote_zone"]
        ),
        (
            &serde_json::json!("login"),
            &serde_json::json!("imap"),
            &serde_json::json!("GB")
        ),
        "{v}"
    );
    assert_eq!(entry["device_info"]["id"], "Thunderbird/Windows", "{v}");
    assert_eq!(entry["device_info"]["browser"], "Thunderbird 115.3", "{v}");

    // Wrong passwords from one address: allowed, then delayed by Dovecot
    // on the policy's word (1 s, then 2 s), then refused with the message,
    // even with the right password.
    let se: IpAddr = "89.160.20.112".parse().unwrap();
    let mut attempts = Vec::new();
    for password in ["w1", "w2", "w3", "w4"] {
        attempts.push(dovecot.imap_login(se, "bob", password, None).await);
    }
    assert!(
        attempts
            .iter()
            .all(|l| !l.ok && l.text.contains("AUTHENTICATIONFAILED")),
        "{attempts:?}"
    );
    assert!(
        attempts[2].elapsed >= Duration::from_secs(1),
        "{attempts:?}"
    );
    assert!(
        attempts[3].elapsed >= Duration::from_secs(2),
        "{attempts:?}"
    );
    let refused = dovecot.imap_login(se, "bob", "secret2", None).await;
    assert!(!refused.ok, "{refused:?}");
    assert!(
        refused
            .text
            .contains("[ALERT] Too many failures, try later"),
        "{refused:?}"
    );

    // Another user from the same address is neither delayed nor refused.
    let before = slowed_or_refused(ts.addr).await;
    let carol = dovecot.imap_login(se, "carol", "secret3", None).await;
    assert!(carol.ok, "{carol:?}");
    assert_eq!(slowed_or_refused(ts.addr).await, before, "carol was slowed");

    // The same wrong password again and again (a phone with an old one)
    // counts once: never delayed, and the right one still gets in.
    let us: IpAddr = "216.160.83.56".parse().unwrap();
    for _ in 0..4 {
        let l = dovecot.imap_login(us, "alice", "old-password", None).await;
        assert!(!l.ok, "{l:?}");
    }
    assert_eq!(
        slowed_or_refused(ts.addr).await,
        before,
        "a repeated password was counted again"
    );
    let l = dovecot.imap_login(us, "alice", "secret1", None).await;
    assert!(l.ok, "{l:?}");

    // Every attempt was stored, as a login or a failure.
    let v = logs_once(ts.addr, "bob", |v| failures_in(v) == 5).await;
    assert_eq!(failures_in(&v), 5, "{v}");

    // No address, password hash or token in the database or the metrics.
    let r = admin
        .0
        .request(hyper::Method::GET, "/metrics", None, bytes::Bytes::new())
        .await
        .unwrap();
    let metrics = String::from_utf8_lossy(&r.body).into_owned();
    let raw = if on_postgres() {
        Vec::new()
    } else {
        crate::privacy::database_bytes(ts.dir.path())
    };
    for needle in [
        "81.2.69.160",
        "89.160.20.112",
        "216.160.83.56",
        crate::policy::TOKEN,
    ] {
        assert!(!metrics.contains(needle), "{needle} in /metrics");
        assert!(
            !crate::privacy::contains(&raw, needle.as_bytes()),
            "{needle} in the database"
        );
    }
}
