//! Windows login agents: a client that speaks exactly the winauthmon agent's
//! protocol (`POST /api/log_event`, `POST /api/health`, `X-API-Key`) to the
//! agents' listener over server TLS, keys made with `user-meta-server
//! agent-key`, and what is stored of the events, read back over the mTLS
//! API.

use std::process::Command;

use serde_json::{json, Value};
use usermetadb::client::{tls_config_for, Connection, Protocols};

use crate::common::*;
use crate::hostile::Wire;

/// The agents' listener on the test server certificate, with `extra` YAML
/// inside `agents:`.
fn agents_yaml(extra: &str) -> String {
    format!(
        "agents:\n  addr: 127.0.0.1:0\n  tls:\n    cert: {}\n    key: {}\n{extra}",
        cert("server.pem").display(),
        cert("server.key").display(),
    )
}

/// The server with an agents' listener and the test GeoIP database.
pub(crate) async fn start(agents_extra: &str, top_extra: &str) -> TestServer {
    TestServer::start_with(&format!(
        "{}geoip:\n  db: {}\n{top_extra}",
        agents_yaml(agents_extra),
        shared_geoip("GeoIP2-Country-Test.mmdb").display()
    ))
    .await
}

/// `user-meta-server agent-key ARGS` on the server's configuration: stdout.
fn agent_key_cli(ts: &TestServer, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_user-meta-server"))
        .arg("--config")
        .arg(&ts.config)
        .arg("agent-key")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "agent-key {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub(crate) fn new_key(ts: &TestServer, tenant: &str, site: &str) -> String {
    let key = agent_key_cli(ts, &["add", "--tenant", tenant, "--site", site])
        .trim()
        .to_owned();
    assert_eq!(key.len(), 64, "{key}");
    assert!(key.bytes().all(|b| b.is_ascii_hexdigit()));
    key
}

/// An agent: no client certificate, an API key in a header.
pub(crate) struct Agent {
    conn: Connection,
    key: String,
}

impl Agent {
    pub(crate) async fn connect(ts: &TestServer, key: &str) -> Agent {
        // As Go's client: HTTP/2 when offered.
        let tls = tls_config_for(&cert("ca.pem"), None, Protocols::Any).unwrap();
        let conn = Connection::connect(ts.agents.unwrap(), "localhost", Some(tls))
            .await
            .unwrap();
        Agent {
            conn,
            key: key.to_owned(),
        }
    }

    async fn send(&mut self, path: &str, key: Option<&str>, body: &[u8]) -> (u16, Value) {
        let headers: Vec<(&str, String)> = key
            .map(|k| ("X-API-Key", k.to_owned()))
            .into_iter()
            .collect();
        let r = self
            .conn
            .request_with_headers(
                hyper::Method::POST,
                path,
                &headers,
                Some("application/json"),
                body.to_vec().into(),
            )
            .await
            .unwrap();
        let v = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        (r.status.as_u16(), v)
    }

    pub(crate) async fn event(&mut self, body: Value) -> (u16, Value) {
        let key = self.key.clone();
        self.send("/api/log_event", Some(&key), body.to_string().as_bytes())
            .await
    }
}

/// A current agent's event (`LocalIP` and `PublicIP`).
pub(crate) fn event(kind: &str, user: &str, computer: &str, at: &str) -> Value {
    json!({
        "EventType": kind,
        "UserName": user,
        "ComputerName": computer,
        "Timestamp": at,
        "LocalIP": "10.1.2.3",
        "PublicIP": "81.2.69.160",
        "retry": 0,
    })
}

/// A time `secs_ago` seconds ago, in the agent's `YYYY-MM-DD HH:MM:SS` form (UTC).
pub(crate) fn agent_time(secs_ago: i64) -> String {
    (chrono::Utc::now() - chrono::Duration::seconds(secs_ago))
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

async fn logs_of(ts: &TestServer, user: &str) -> Vec<Value> {
    let mut admin = ts.client("admin").await;
    let v = admin
        .ok(
            "/api/get_user_logs",
            json!({"username": user, "max_days": 0, "limit": 100}),
        )
        .await;
    v["result"].as_array().unwrap().clone()
}

#[tokio::test]
async fn every_event_type_in_both_field_sets_is_stored_once() {
    let ts = start("", "").await;
    let key = new_key(&ts, "acme", "hq");
    let mut agent = Agent::connect(&ts, &key).await;

    let created = json!({"message": "Event logged successfully", "status": "success"});
    // Times read once: a retry below must carry exactly the first's.
    let times: Vec<String> = (0..4).map(|i| agent_time(7200 - 600 * i)).collect();
    for (kind, at) in ["Sign-In", "Lock", "Unlock", "Sign-Out"].iter().zip(&times) {
        let (status, body) = agent.event(event(kind, "John", "ws-017", at)).await;
        assert_eq!((status, &body), (201, &created), "{kind}");
    }
    // Older agents: `IPAddress`, other spellings, RFC 3339 with an offset.
    let rfc = (chrono::Utc::now() - chrono::Duration::seconds(1800))
        .with_timezone(&chrono::FixedOffset::east_opt(2 * 3600).unwrap())
        .to_rfc3339();
    for (kind, at) in [("logon", rfc.clone()), ("LOGOFF", agent_time(1500))] {
        let body = json!({"EventType": kind, "UserName": "john", "ComputerName": "WS-017",
                          "Timestamp": at, "IPAddress": "192.168.7.9"});
        let (status, _) = agent.event(body).await;
        assert_eq!(status, 201, "{kind}");
    }
    // A retry of an event already stored, as the agent sends it after a
    // failure (its `retry` count moved on): 200, and nothing written.
    let mut first = event("Sign-In", "John", "ws-017", &times[0]);
    for retry in [0, 3] {
        first["retry"] = json!(retry);
        let (status, body) = agent.event(first.clone()).await;
        assert_eq!(
            (status, body),
            (
                200,
                json!({"message": "Event already recorded", "status": "success"})
            )
        );
    }

    let logs = logs_of(&ts, "acme/john").await;
    let mut types: Vec<&str> = logs
        .iter()
        .map(|l| l["log_type"].as_str().unwrap())
        .collect();
    types.sort();
    assert_eq!(
        types,
        ["lock", "login", "login", "logout", "logout", "unlock"]
    );
    for l in &logs {
        assert_eq!(l["service"], "windows");
        let t = l["timestamp"].as_str().unwrap();
        assert!(t.ends_with(":00:00Z"), "{t} is floored");
        let d = &l["device_info"];
        assert_eq!(d["id"], "WS-017", "the computer, shown to the admin");
        assert_eq!(d["remote_addr"], "", "no address is kept");
        assert_eq!(d["os"], "Windows");
    }
    // The country of PublicIP; the old agent's private IPAddress has none.
    let zones: Vec<&str> = logs
        .iter()
        .map(|l| l["device_info"]["remote_zone"].as_str().unwrap())
        .collect();
    assert_eq!(zones.iter().filter(|z| **z == "GB").count(), 4, "{zones:?}");
    assert_eq!(
        zones.iter().filter(|z| z.is_empty()).count(),
        2,
        "{zones:?}"
    );

    // A sign-in is a last login of the service `windows`.
    let mut admin = ts.client("admin").await;
    let last = admin
        .ok("/api/get_last_login", json!({"username": "acme/john"}))
        .await;
    assert_eq!(last["result"][0]["service"], "windows");

    // No address, exact time or computer name in clear in the database.
    if !on_postgres() {
        let raw = crate::privacy::database_bytes(ts.dir.path());
        for needle in ["81.2.69.160", "10.1.2.3", "192.168.7.9", "WS-017", "ws-017"] {
            assert!(
                !crate::privacy::contains(&raw, needle.as_bytes()),
                "{needle} is stored in clear"
            );
        }
    }
}

#[tokio::test]
async fn keys_bodies_and_the_rate_limit_are_checked_and_refusals_write_nothing() {
    let ts = start("  rate_limit: 10\n", "").await;
    let key = new_key(&ts, "acme", "hq");
    let disabled = new_key(&ts, "acme", "branch");
    let listed = agent_key_cli(&ts, &["list"]);
    assert!(
        listed.contains("acme") && listed.contains("branch"),
        "{listed}"
    );
    assert!(!listed.contains(&key), "a key is shown only when made");
    let id = listed
        .lines()
        .find(|l| l.contains("branch"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_owned();
    assert!(agent_key_cli(&ts, &["disable", &id]).contains("disabled"));
    assert!(agent_key_cli(&ts, &["list"])
        .lines()
        .any(|l| l.contains("branch") && l.ends_with("disabled")));

    let refused_before = metric(
        ts.addr,
        "usermetadb_agent_requests_total{outcome=\"unauthorized\"}",
    )
    .await;
    let mut agent = Agent::connect(&ts, &key).await;
    let body = event("Sign-In", "mallory", "PC1", &agent_time(60)).to_string();
    // No key, an unknown key, a disabled key: the same answer.
    let mut answers = Vec::new();
    for k in [None, Some("00".repeat(32)), Some(disabled.clone())] {
        let (status, v) = agent
            .send("/api/log_event", k.as_deref(), body.as_bytes())
            .await;
        assert_eq!(status, 401);
        answers.push(v);
    }
    assert!(answers.iter().all(|a| *a == answers[0]), "{answers:?}");
    assert!(answers[0]["message"].is_string());
    let (status, _) = agent.send("/api/health", Some(&disabled), b"{}").await;
    assert_eq!(status, 401);
    // Counted (the counters are the process's: other tests' refusals add to them).
    let refused = metric(
        ts.addr,
        "usermetadb_agent_requests_total{outcome=\"unauthorized\"}",
    )
    .await;
    assert!(
        refused >= refused_before + 4,
        "{refused_before} -> {refused}"
    );

    // Malformed bodies and timestamps: 400 with a JSON message (each
    // counted against the key's rate limit, so a key of their own).
    let bodies = new_key(&ts, "acme", "bodies");
    for bad in [
        "not json".to_string(),
        json!({"EventType": "Sign-In", "UserName": "mallory", "ComputerName": "PC1"}).to_string(),
        json!({"EventType": "Reboot", "UserName": "mallory", "ComputerName": "PC1",
               "Timestamp": agent_time(60)})
        .to_string(),
        event("Sign-In", "mallory", "PC1", "yesterday at noon").to_string(),
        event("Sign-In", "mallory", "PC1", "2001-01-01 00:00:00").to_string(),
        event("Sign-In", "", "PC1", &agent_time(60)).to_string(),
    ] {
        let (status, v) = agent
            .send("/api/log_event", Some(&bodies), bad.as_bytes())
            .await;
        assert_eq!(status, 400, "{bad}: {v}");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    }
    assert!(
        logs_of(&ts, "acme/mallory").await.is_empty(),
        "refusals wrote nothing"
    );

    // Ten events a minute: the eleventh is refused with a time to wait.
    for i in 0..10 {
        let (status, _) = agent
            .event(event("Lock", "alice", "PC2", &agent_time(600 - i)))
            .await;
        assert_eq!(status, 201);
    }
    let (status, v) = agent
        .event(event("Unlock", "alice", "PC2", &agent_time(1)))
        .await;
    assert_eq!(status, 429, "{v}");
    assert_eq!(logs_of(&ts, "acme/alice").await.len(), 10);
    // The limit is per key.
    let other = new_key(&ts, "acme", "lab");
    let mut second = Agent::connect(&ts, &other).await;
    let (status, _) = second
        .event(event("Unlock", "alice", "PC2", &agent_time(1)))
        .await;
    assert_eq!(status, 201);
}

/// An agent whose key is refused before its event's body has arrived keeps a
/// usable connection: the agent's HTTP client reuses it for the next event.
#[tokio::test]
async fn a_refused_key_leaves_the_connection_usable() {
    let ts = start("", "").await;
    let key = new_key(&ts, "acme", "hq");
    let body = event("Sign-In", "alice", "PC1", &agent_time(60)).to_string();
    let (first, rest) = body.as_bytes().split_at(10);
    let head = |k: &str| {
        format!(
            "POST /api/log_event HTTP/1.1\r\nHost: localhost\r\nX-API-Key: {k}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes()
    };
    let mut wire = Wire::new(raw_tls_at(ts.agents.unwrap(), "client-admin").await);
    wire.send(&[head(&"00".repeat(32)).as_slice(), first].concat())
        .await;
    let a = wire.answer().await.expect("an answer");
    assert_eq!(a.status, 401, "{a:?}");
    assert_eq!(a.header("connection"), None, "{a:?}");
    wire.send(&[rest, &head(&key), body.as_bytes()].concat())
        .await;
    let a = wire.answer().await.expect("the connection is still open");
    assert_eq!(a.status, 201, "{a:?}");
    assert_eq!(logs_of(&ts, "acme/alice").await.len(), 1);
}

#[tokio::test]
async fn health_answers_with_the_key_verified() {
    let ts = start("", "").await;
    let key = new_key(&ts, "acme", "hq");
    let mut agent = Agent::connect(&ts, &key).await;
    let (status, v) = agent.send("/api/health", Some(&key), b"").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["status"], "ok");
    assert_eq!(v["database"], "connected");
    assert_eq!(v["api_key_verified"], true);
    assert!(v["message"].is_string() && v["timestamp"].is_string());
    let (status, _) = agent.send("/api/health", None, b"").await;
    assert_eq!(status, 401);
    // Only the two paths: the mTLS API is not served to agents.
    let (status, _) = agent.send("/api/get_user_logs", Some(&key), b"{}").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn tenants_never_share_a_user_and_a_new_computer_is_a_new_device() {
    let ts = start("", "").await;
    let acme = new_key(&ts, "acme", "hq");
    let globex = new_key(&ts, "globex", "hq");
    let mut a = Agent::connect(&ts, &acme).await;
    let mut g = Agent::connect(&ts, &globex).await;
    // The same event from two tenants: two users, each stored.
    let same = event("Sign-In", "john", "PC1", &agent_time(3 * 3600));
    assert_eq!(a.event(same.clone()).await.0, 201);
    assert_eq!(g.event(same).await.0, 201);
    assert_eq!(logs_of(&ts, "acme/john").await.len(), 1);
    assert_eq!(logs_of(&ts, "globex/john").await.len(), 1);
    assert!(logs_of(&ts, "john").await.is_empty());

    // acme's john on a computer he never used: a new_device alert.
    assert_eq!(
        a.event(event("Sign-In", "john", "PC9", &agent_time(3600)))
            .await
            .0,
        201
    );
    let mut admin = ts.client("admin").await;
    let alerts = admin
        .ok(
            "/api/get_user_alerts",
            json!({"username": "acme/john", "max_days": 30}),
        )
        .await;
    let kinds: Vec<&str> = alerts["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["new_device"]);
    let none = admin
        .ok(
            "/api/get_user_alerts",
            json!({"username": "globex/john", "max_days": 30}),
        )
        .await;
    assert!(none["alerts"].as_array().unwrap().is_empty());
}

/// Yesterday (UTC), read once: a test that spans midnight still scripts and
/// reads the same day.
fn yesterday() -> chrono::NaiveDate {
    static DAY: std::sync::OnceLock<chrono::NaiveDate> = std::sync::OnceLock::new();
    *DAY.get_or_init(|| chrono::Utc::now().date_naive() - chrono::Duration::days(1))
}

/// The report of time spent for yesterday.
async fn time_spent(ts: &TestServer, tenant: &str, per_computer: bool) -> Value {
    let day = yesterday();
    let mut admin = ts.client("admin").await;
    let v = admin
        .ok(
            "/api/report",
            json!({
                "from": format!("{day}T00:00:00Z"),
                "to": format!("{day}T23:59:59Z"),
                "kind": "time_spent",
                "tenant": tenant,
                "per_computer": per_computer,
            }),
        )
        .await;
    v["reports"][0].clone()
}

#[tokio::test]
async fn time_spent_is_kept_rounded_and_reported_per_user_only_when_opted_in() {
    let ts = start(
        "  per_user_time: [acme]\n",
        "privacy:\n  session_granularity: 5m\n",
    )
    .await;
    let acme = new_key(&ts, "acme", "hq");
    let globex = new_key(&ts, "globex", "hq");
    let day = yesterday();
    let at = |hms: &str| format!("{day} {hms}");
    // A scripted day: in at 08:58:10, lunch 12:01:40 – 12:47:05, out at 17:30:55.
    let script = [
        ("Sign-In", "08:58:10"),
        ("Lock", "12:01:40"),
        ("Unlock", "12:47:05"),
        ("Sign-Out", "17:30:55"),
    ];
    for key in [&acme, &globex] {
        let mut agent = Agent::connect(&ts, key).await;
        for (kind, hms) in script {
            assert_eq!(
                agent.event(event(kind, "john", "PC1", &at(hms))).await.0,
                201
            );
        }
        // Retries change nothing.
        assert_eq!(
            agent
                .event(event("Lock", "john", "PC1", &at("12:01:40")))
                .await
                .0,
            200
        );
    }
    // 3:03:30 -> 3:05, 4:43:50 -> 4:45: 7:50 in all.
    let want_seconds = (3 * 3600 + 5 * 60) + (4 * 3600 + 45 * 60);
    let r = time_spent(&ts, "acme", false).await;
    let rows = r["time_spent"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{r}");
    assert_eq!(rows[0]["username"], "acme/john");
    assert_eq!(rows[0]["seconds"], want_seconds);
    assert_eq!(rows[0]["day"], day.to_string());
    assert_eq!(rows[0]["first_start"], format!("{day}T08:55:00Z"));
    assert_eq!(rows[0]["last_end"], format!("{day}T17:30:00Z"));
    let per_computer = time_spent(&ts, "acme", true).await;
    assert_eq!(per_computer["time_spent"][0]["computer"], "PC1");

    // globex did not opt in: only the k-anonymous totals, and one user is
    // fewer than k.
    let r = time_spent(&ts, "globex", false).await;
    assert!(r.get("time_spent").is_none(), "{r}");
    assert!(r["rows"].as_array().unwrap().is_empty());
    assert_eq!(r["suppressed_rows"], 1);
    assert!(r["note"].as_str().unwrap().contains("off"));
    // Nor across tenants.
    let r = time_spent(&ts, "", false).await;
    assert!(r.get("time_spent").is_none(), "{r}");

    // No exact time of any event reaches the disk.
    if !on_postgres() {
        let raw = crate::privacy::database_bytes(ts.dir.path());
        for (_, hms) in script {
            let exact = chrono::NaiveDateTime::parse_from_str(&at(hms), "%Y-%m-%d %H:%M:%S")
                .unwrap()
                .and_utc()
                .timestamp();
            // As SQLite stores an integer: big-endian, in 6 bytes or more.
            let be = exact.to_be_bytes();
            assert!(
                !crate::privacy::contains(&raw, &be[2..]),
                "{hms}: the exact time is stored"
            );
        }
    }
}
