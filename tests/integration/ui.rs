//! The dashboard (`user-meta-admin ui`) in real headless Chromium: the
//! compiled admin tool serves it against a real server over mTLS, and
//! `tests/ui/dashboard.mjs` (playwright-core) drives every page: no console
//! error, filters, sorting, column choice, CSV and XLSX exports, a user's
//! page, forget_user behind its confirmation, retry of an alert, reports,
//! stale accounts; it writes a screenshot of each page. Values a spreadsheet
//! would evaluate, stored through add_log and the Windows agents' listener,
//! come out of the exports as text.
//!
//! And the dashboard's session, from another local process with a raw
//! HTTP/1.1 client: no page or proxied request without the cookie that only
//! the printed one-time URL sets.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use usermetadb::client::{tls_config_for, Connection, Protocols};

use crate::common::*;

/// A running `user-meta-admin ui`, killed when dropped.
struct Dashboard {
    child: Child,
    /// The URL it printed: `http://HOST:PORT/login?secret=…`.
    url: String,
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Dashboard {
    /// `user-meta-admin ui --listen LISTEN` against `ts` with the admin's
    /// certificate, once it has printed its URL.
    async fn start(ts: &TestServer, listen: &str) -> Dashboard {
        Self::start_as(ts, listen, "client-admin").await
    }

    /// [`Dashboard::start`] with `testdata/certs/<name>.pem`.
    async fn start_as(ts: &TestServer, listen: &str, name: &str) -> Dashboard {
        let mut child = Command::new(env!("CARGO_BIN_EXE_user-meta-admin"))
            .arg("--server")
            .arg(format!("https://localhost:{}", ts.addr.port()))
            .arg("--ca")
            .arg(cert("ca.pem"))
            .arg("--cert")
            .arg(cert(&format!("{name}.pem")))
            .arg("--key")
            .arg(cert(&format!("{name}.key")))
            .args(["ui", "--listen", listen])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            std::io::BufReader::new(stdout)
                .read_line(&mut line)
                .unwrap();
            line
        })
        .await
        .unwrap();
        let mut dashboard = Dashboard {
            child,
            url: String::new(),
        };
        dashboard.url = line
            .trim()
            .strip_prefix("dashboard: ")
            .and_then(|u| u.split(' ').next())
            .unwrap_or_else(|| panic!("the dashboard did not start: {line:?}"))
            .to_owned();
        dashboard
    }

    /// `HOST:PORT` of the URL.
    fn host(&self) -> &str {
        let rest = self.url.strip_prefix("http://").unwrap();
        &rest[..rest.find('/').unwrap()]
    }

    /// The path and query of the URL: `/login?secret=…`.
    fn login_path(&self) -> &str {
        let rest = self.url.strip_prefix("http://").unwrap();
        &rest[rest.find('/').unwrap()..]
    }

    fn secret(&self) -> &str {
        self.url.split_once("?secret=").unwrap().1
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        let tcp = tokio::net::TcpStream::connect(self.host()).await.unwrap();
        http(tcp, "GET", self.host(), path, headers, "").await
    }

    async fn post(&self, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
        let tcp = tokio::net::TcpStream::connect(self.host()).await.unwrap();
        http(tcp, "POST", self.host(), path, headers, body).await
    }
}

/// An answer as another local process sees it.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The per-run token of a page (its `<meta name="ui-token">`).
    fn token(&self) -> Option<String> {
        let (_, rest) = self.body.split_once("<meta name=\"ui-token\" content=\"")?;
        Some(rest[..rest.find('"')?].to_owned())
    }
}

/// One raw HTTP/1.1 request on `stream`, read to its end.
async fn http<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Reply {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// The cookie a login answer sets, as `NAME=VALUE`, checking its attributes.
fn session_cookie(login: &Reply, port: &str) -> String {
    let set = login
        .header("set-cookie")
        .unwrap_or_else(|| panic!("the login sets no cookie: {login:?}"));
    let mut parts = set.split("; ");
    let pair = parts.next().unwrap().to_owned();
    let (name, value) = pair.split_once('=').unwrap();
    assert_eq!(name, format!("usermetadb-ui-{port}"), "{set}");
    assert_eq!(value.len(), 64, "{set}");
    assert!(value.bytes().all(|b| b.is_ascii_hexdigit()), "{set}");
    let mut attrs: Vec<&str> = parts.collect();
    attrs.sort_unstable();
    assert_eq!(attrs, ["HttpOnly", "Path=/", "SameSite=Strict"], "{set}");
    pair
}

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

/// A Windows agents' key of `tenant`, made with `user-meta-server agent-key`.
fn agent_key(ts: &TestServer, tenant: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_user-meta-server"))
        .arg("--config")
        .arg(&ts.config)
        .args(["agent-key", "add", "--tenant", tenant, "--site", "hq"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// One event posted as a Windows agent does, with `key`.
async fn agent_event(
    ts: &TestServer,
    key: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let tls = tls_config_for(&cert("ca.pem"), None, Protocols::Any).unwrap();
    let mut conn = Connection::connect(ts.agents.unwrap(), "localhost", Some(tls))
        .await
        .unwrap();
    let r = conn
        .request_with_headers(
            hyper::Method::POST,
            "/api/log_event",
            &[("X-API-Key", key.to_owned())],
            Some("application/json"),
            body.to_string().into_bytes().into(),
        )
        .await
        .unwrap();
    let v = serde_json::from_slice(&r.body).unwrap_or(serde_json::Value::Null);
    (r.status.as_u16(), v)
}

#[tokio::test]
async fn the_dashboard_in_headless_chromium() {
    let Some(chromium) = browser_tools() else {
        return;
    };
    // Alerts go to a webhook that refuses: they stay in the outbox to retry.
    // The Windows agents' listener takes one agent's event (below).
    let ts = TestServer::start_with(&format!(
        "agents:\n  addr: 127.0.0.1:0\n  per_user_time: [evil]\n  tls:\n    cert: {}\n    key: {}\n\
         privacy:\n  report_min_users: 2\ntransparency:\n  record: admin\nalerts:\n  log: false\n  webhook:\n    url: http://127.0.0.1:9/hook\n    secret: s\n    timeout: 1s\n  retry: {{ initial: 1h, max: 1h }}\n",
        cert("server.pem").display(),
        cert("server.key").display(),
    ))
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
    // Values a spreadsheet would evaluate: through add_log (a username and
    // free-text fields) and as an agent's ComputerName.
    let mut planted = entry("=cmd|' /C calc'!A0", "login", "-1+1", 2 * day);
    planted["log"]["service"] = json!("+SUM(1,1)");
    planted["log"]["device_info"]["os"] = json!("@SUM(A1)");
    sso.ok("/api/add_log", planted).await;
    // A day of mallory's at that computer, yesterday (UTC), for the time
    // spent (tenant evil's per-user time is on).
    let key = agent_key(&ts, "evil");
    let yesterday = chrono::Utc::now().date_naive() - chrono::Duration::days(1);
    for (kind, hms) in [("Sign-In", "08:00:00"), ("Sign-Out", "09:00:00")] {
        let (status, v) = agent_event(
            &ts,
            &key,
            json!({
                "EventType": kind,
                "UserName": "mallory",
                "ComputerName": "=HYPERLINK(\"http://evil.example/x\",\"open\")",
                "Timestamp": format!("{yesterday} {hms}"),
                "LocalIP": "10.1.2.3",
            }),
        )
        .await;
        assert_eq!(status, 201, "the agent's {kind}: {v}");
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
            "total": events.len() + 3,
            "user": "acme/ann",
            "user_events": 4,
            "tenant": "acme",
            "tenant_events": 7,
            "alerts": 2,
            "forget": "zed",
            "ghosts": ["ghost-1", "ghost-2"],
            // How the planted cells start on screen (the first of each).
            "planted": ["=cmd|", "+SUM(", "-1+1", "@SUM(", "=HYPERLINK("],
            "time_spent": {"tenant": "evil", "user": "evil/mallory", "computer": "=HYPERLINK("},
            // The dashboard's own reads, under the admin's certificate.
            "reader": "admin",
        })
        .to_string(),
    )
    .unwrap();

    let ui = Dashboard::start(&ts, "127.0.0.1:0").await;
    let url = ui.url.clone();

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
    drop(ui);
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

/// The issue's attack, as another local process: no cookie, so no page, no
/// token, and no erasure, whatever token it guesses or learns.
#[tokio::test]
async fn without_the_session_cookie_another_local_process_gets_no_token_and_erases_nobody() {
    let ts = TestServer::start().await;
    let mut sso = ts.client("sso-server").await;
    sso.ok("/api/add_log", login("acme/victim", "d1", 3600))
        .await;
    let ui = Dashboard::start(&ts, "127.0.0.1:0").await;
    let forget = json!({"username": "acme/victim"}).to_string();
    let json_type = ("Content-Type", "application/json");

    // Pages: 401, a note on what to open, and no token.
    let mut refused = Vec::new();
    for path in ["/events", "/user?u=acme/victim", "/alerts", "/"] {
        let r = ui.get(path, &[]).await;
        assert_eq!(r.status, 401, "{path}: {r:?}");
        assert!(
            r.token().is_none() && !r.body.contains("ui-token"),
            "{path}: {r:?}"
        );
        assert!(r.body.contains("printed"), "{path}: {}", r.body);
        assert!(r.header("set-cookie").is_none(), "{path}: {r:?}");
        let csp = r.header("content-security-policy").unwrap();
        assert!(csp.contains("default-src 'none'"), "{csp}");
        refused.push(r.body);
    }
    // The proxy: 401 without a token and with a guessed one.
    let r = ui.post("/proxy/forget_user", &[json_type], &forget).await;
    assert_eq!(r.status, 401, "{r:?}");
    let guess = "0123456789abcdef".repeat(4);
    let r = ui
        .post(
            "/proxy/forget_user",
            &[json_type, ("X-UI-Token", &guess)],
            &forget,
        )
        .await;
    assert_eq!(r.status, 401, "{r:?}");

    // The admin opens the printed URL; a page served with the cookie holds
    // the token, which no refused page held.
    let login = ui.get(ui.login_path(), &[]).await;
    assert_eq!(login.status, 303, "{login:?}");
    let port = ui.host().rsplit_once(':').unwrap().1;
    let cookie = session_cookie(&login, port);
    let page = ui.get("/events", &[("Cookie", &cookie)]).await;
    assert_eq!(page.status, 200, "{page:?}");
    let token = page
        .token()
        .expect("a page with the cookie holds the token");
    assert!(refused.iter().all(|b| !b.contains(&token)));
    assert!(!cookie.contains(&token) && !cookie.contains(ui.secret()));

    // Even the right token is refused without the cookie.
    let r = ui
        .post(
            "/proxy/forget_user",
            &[json_type, ("X-UI-Token", &token)],
            &forget,
        )
        .await;
    assert_eq!(r.status, 401, "{r:?}");
    // A cookie alone (a forged cross-site request) is refused; so are the
    // cookie and the token from another site's page.
    let r = ui
        .post(
            "/proxy/forget_user",
            &[json_type, ("Cookie", &cookie)],
            &forget,
        )
        .await;
    assert_eq!(r.status, 403, "{r:?}");
    let with_both = [json_type, ("Cookie", &cookie), ("X-UI-Token", &token)];
    for cross in [
        ("Origin", "http://evil.example"),
        ("Sec-Fetch-Site", "cross-site"),
    ] {
        let mut h = with_both.to_vec();
        h.push(cross);
        let r = ui.post("/proxy/forget_user", &h, &forget).await;
        assert_eq!(r.status, 403, "{cross:?}: {r:?}");
    }
    // A wrong Host is refused before anything else.
    let tcp = tokio::net::TcpStream::connect(ui.host()).await.unwrap();
    let r = http(
        tcp,
        "GET",
        "evil.example",
        "/events",
        &[("Cookie", &cookie)],
        "",
    )
    .await;
    assert_eq!(r.status, 421, "{r:?}");

    // The victim is still there, and the session itself works.
    let mut admin = ts.client("admin").await;
    let v = admin
        .ok(
            "/api/get_user_logs",
            json!({"username": "acme/victim", "max_days": 0}),
        )
        .await;
    assert_eq!(v["result"].as_array().unwrap().len(), 1, "{v}");
    let origin = format!("http://{}", ui.host());
    let mut h = with_both.to_vec();
    h.push(("Origin", &origin));
    h.push(("Sec-Fetch-Site", "same-origin"));
    let body = json!({"username": "acme/victim", "max_days": 0}).to_string();
    let r = ui.post("/proxy/get_user_logs", &h, &body).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("acme/victim"), "{r:?}");
}

/// The printed URL opens one session: a wrong secret gets nothing and spends
/// nothing, the right one sets the cookie, and using it again is refused.
#[tokio::test]
async fn on_a_tenant_scoped_certificate_the_dashboard_shows_that_tenant_only() {
    let ts = TestServer::start_with(
        r#"      - { path: "/api/(get_.*|admin/.*|report)", cn: "acme-admin", tenants: [acme] }
"#,
    )
    .await;
    let mut sso = ts.client("sso-server").await;
    for user in ["acme/ann", "globex/cy", "dan"] {
        sso.ok("/api/add_log", login(user, "d1", 3600)).await;
    }
    let ui = Dashboard::start_as(&ts, "127.0.0.1:0", "client-acme-admin").await;
    let login = ui.get(ui.login_path(), &[]).await;
    let port = ui.host().rsplit_once(':').unwrap().1;
    let cookie = session_cookie(&login, port);
    let token = ui
        .get("/events", &[("Cookie", &cookie)])
        .await
        .token()
        .unwrap();
    let headers = [
        ("Content-Type", "application/json"),
        ("Cookie", &cookie),
        ("X-UI-Token", &token),
    ];
    // The events page as it asks: no tenant named, the server scopes it.
    let r = ui
        .post(
            "/proxy/admin/events",
            &headers,
            r#"{"tenant":"","username":"","log_type":"","limit":100}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("acme/ann"), "{}", r.body);
    assert!(
        !r.body.contains("globex/") && !r.body.contains("\"dan\""),
        "{}",
        r.body
    );
    // Another tenant's user: the server's 403, passed on for the page to say.
    let r = ui
        .post(
            "/proxy/get_user_logs",
            &headers,
            r#"{"username":"globex/cy"}"#,
        )
        .await;
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.body.contains("forbidden"), "{}", r.body);
}

#[tokio::test]
async fn the_login_url_works_once() {
    let ts = TestServer::start().await;
    let ui = Dashboard::start(&ts, "127.0.0.1:0").await;
    let secret = ui.secret().to_owned();
    assert_eq!(secret.len(), 64, "{}", ui.url);
    assert!(secret.bytes().all(|b| b.is_ascii_hexdigit()), "{}", ui.url);
    assert!(ui.url.starts_with("http://127.0.0.1:"), "{}", ui.url);

    let mut wrong = secret.clone().into_bytes();
    wrong[63] = if wrong[63] == b'0' { b'1' } else { b'0' };
    let wrong = String::from_utf8(wrong).unwrap();
    for path in [
        format!("/login?secret={wrong}"),
        "/login".to_owned(),
        format!("/login?secret={}", &secret[..32]),
    ] {
        let r = ui.get(&path, &[]).await;
        assert_eq!(r.status, 403, "{path}: {r:?}");
        assert!(r.header("set-cookie").is_none(), "{path}: {r:?}");
        assert!(r.token().is_none(), "{path}: {r:?}");
    }

    let first = ui.get(ui.login_path(), &[]).await;
    assert_eq!(first.status, 303, "{first:?}");
    assert_eq!(first.header("location"), Some("/events"));
    let port = ui.host().rsplit_once(':').unwrap().1;
    let cookie = session_cookie(&first, port);
    assert!(!cookie.contains(&secret));

    let second = ui.get(ui.login_path(), &[]).await;
    assert_eq!(second.status, 403, "{second:?}");
    assert!(second.header("set-cookie").is_none(), "{second:?}");
    assert!(second.token().is_none(), "{second:?}");
    // With the session, opening it again only leads to the pages.
    let again = ui.get(ui.login_path(), &[("Cookie", &cookie)]).await;
    assert_eq!(again.status, 303, "{again:?}");
    assert!(again.header("set-cookie").is_none(), "{again:?}");
    // The session still works; a made-up one does not.
    let r = ui.get("/events", &[("Cookie", &cookie)]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.token().is_some());
    let forged = format!("usermetadb-ui-{port}={}", "0".repeat(64));
    let r = ui.get("/events", &[("Cookie", &forged)]).await;
    assert_eq!(r.status, 401, "{r:?}");
}

/// `--listen unix:PATH`: a socket only its owner may connect to, with the
/// same session.
#[tokio::test]
async fn on_a_unix_socket_the_dashboard_is_its_owners_only() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let ts = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("ui.sock");
    let ui = Dashboard::start(&ts, &format!("unix:{}", sock.display())).await;
    let meta = std::fs::metadata(&sock).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert!(
        ui.url.starts_with("http://localhost/login?secret="),
        "{}",
        ui.url
    );

    let unix = || tokio::net::UnixStream::connect(&sock);
    let r = http(
        unix().await.unwrap(),
        "GET",
        "localhost",
        "/events",
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 401, "{r:?}");
    assert!(r.token().is_none());
    // Through a forward, the Host names the forwarded port.
    let login = http(
        unix().await.unwrap(),
        "GET",
        "localhost:8080",
        ui.login_path(),
        &[],
        "",
    )
    .await;
    assert_eq!(login.status, 303, "{login:?}");
    let set = login.header("set-cookie").unwrap();
    let cookie = set.split("; ").next().unwrap();
    assert!(cookie.starts_with("usermetadb-ui="), "{set}");
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    let r = http(
        unix().await.unwrap(),
        "GET",
        "localhost:8080",
        "/events",
        &[("Cookie", cookie)],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.token().is_some());
    let r = http(
        unix().await.unwrap(),
        "GET",
        "evil.example",
        "/events",
        &[("Cookie", cookie)],
        "",
    )
    .await;
    assert_eq!(r.status, 421, "{r:?}");
    drop(ui);
}
