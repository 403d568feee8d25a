//! `user-meta-admin ui`: the administrators' dashboard, a local web app that
//! talks to the server over mutual TLS with the admin's certificate, so the
//! server gains no human-facing login of its own.
//!
//! It serves five pages (events, a user, alerts, reports, stale accounts),
//! their one script and style sheet (compiled in: nothing is loaded from
//! the internet), and `POST /proxy/<endpoint>`, which forwards a JSON body to
//! one of the server's endpoints the dashboard uses. The pages are static
//! shells the script fills from the proxy.
//!
//! Whoever can reach the listener acts with the admin's certificate, so the
//! dashboard has a session, as Jupyter's has:
//!
//! - At start it prints `http://HOST:PORT/login?secret=S`, where `S` is 32
//!   random bytes in hex. Opening it (`GET /login?secret=S`, compared in
//!   constant time) sets a session cookie, `usermetadb-ui-PORT=C; HttpOnly;
//!   SameSite=Strict; Path=/`, where `C` is another 32 random bytes, and
//!   redirects (303) to `/events`. The secret is then spent: any later
//!   `/login` without the cookie gets 403 and no cookie (with the cookie it
//!   only redirects). A wrong secret gets the same 403 and spends nothing.
//!   To start over, restart the tool.
//! - Every page, `/` and `/proxy/*` need the cookie. Without it a page gets
//!   401 and a small page saying to open the URL the tool printed, and
//!   `/proxy/*` gets 401 JSON; neither holds the token below. Only the
//!   compiled-in script and style sheet are served to anyone.
//! - Cross-site requests (CSRF): the cookie is `SameSite=Strict`, so no other
//!   site's request carries it; a proxied request must also carry the
//!   per-run token in `X-UI-Token`, which is only written into pages served
//!   to a request holding the cookie (in a `<meta>` another origin cannot
//!   read); and an `Origin` or `Sec-Fetch-Site` header, when the browser
//!   sends one, must say this origin.
//! - The `Host` header must be this listener's (no DNS rebinding), and a
//!   strict Content-Security-Policy allows only this origin's script, style
//!   and requests.
//!
//! With `--listen unix:PATH` the dashboard is served on a unix socket made
//! with mode 0600 (only its owner can connect), for an SSH forward such as
//! `ssh -L 8080:PATH host`; the `Host` it accepts is then `localhost`,
//! `127.0.0.1` or `[::1]`, with any port.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{
    HeaderValue, CACHE_CONTROL, CONTENT_TYPE, COOKIE, HOST, LOCATION, ORIGIN, SET_COOKIE,
};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rand::RngCore;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Mutex;
use usermetadb::client::Connection;

use crate::conn::{Api, Failure};
use crate::html::esc;

const SCRIPT: &str = include_str!("app.js");
const STYLE: &str = include_str!("app.css");

/// What the pages may ask the server, through the proxy.
const ENDPOINTS: &[&str] = &[
    "admin/events",
    "admin/alerts",
    "admin/retry_alert",
    "get_user_logs",
    "get_user_devices",
    "get_last_login",
    "get_user_alerts",
    "get_user_summary",
    "forget_user",
    "report",
    "get_unused_accounts",
    "get_user_access",
];

/// The pages: path, title.
const PAGES: &[(&str, &str)] = &[
    ("/events", "Events"),
    ("/user", "User"),
    ("/alerts", "Alerts"),
    ("/reports", "Reports"),
    ("/stale", "Stale accounts"),
];

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   img-src 'self' data:; connect-src 'self'; form-action 'self'; \
                   base-uri 'none'; frame-ancestors 'none'";

/// Largest body the proxy forwards (a stale-account list).
const MAX_BODY: usize = 8 << 20;

/// Where the dashboard listens: `HOST:PORT`, or `unix:PATH`.
#[derive(Clone, Debug)]
pub enum Listen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::str::FromStr for Listen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("unix: needs a path, as in unix:/run/user/1000/umdb-ui.sock".into());
            }
            return Ok(Listen::Unix(PathBuf::from(path)));
        }
        s.parse()
            .map(Listen::Tcp)
            .map_err(|e| format!("{e}: HOST:PORT (such as 127.0.0.1:8080) or unix:PATH"))
    }
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Tcp(a) => write!(f, "{a}"),
            Listen::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// The `Host` header a request must carry.
enum HostRule {
    /// Exactly this listener's `HOST:PORT`.
    Exact(String),
    /// A loopback name with any port: a unix socket reached through a
    /// forward whose port this end cannot know.
    Loopback,
}

impl HostRule {
    fn allows(&self, host: &str) -> bool {
        match self {
            HostRule::Exact(h) => host == h,
            HostRule::Loopback => {
                let name = match host.rsplit_once(':') {
                    Some((n, port))
                        if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) =>
                    {
                        n
                    }
                    _ => host,
                };
                matches!(name, "localhost" | "127.0.0.1" | "[::1]")
            }
        }
    }
}

struct Ui {
    api: Api,
    conn: Mutex<Option<Connection>>,
    /// The per-run token proxied requests carry in `X-UI-Token`.
    token: String,
    host: HostRule,
    /// The one-time secret of the printed URL.
    secret: String,
    /// The session's cookie value, once the secret is spent.
    session: std::sync::Mutex<Option<String>>,
    cookie_name: String,
}

fn response(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn json_error(status: StatusCode, msg: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "error": msg }).to_string();
    response(status, "application/json", body)
}

/// 32 random bytes, in hex.
fn random_hex() -> String {
    let mut raw = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut raw);
    usermetadb::crypto::hex(&raw)
}

/// Equality whose time does not depend on where `a` and `b` differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

fn html_page(status: StatusCode, title: &str, text: &str) -> Response<Full<Bytes>> {
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>{title} · usermetadb</title>\
         <link rel=\"stylesheet\" href=\"/static/app.css\">\
         <link rel=\"icon\" href=\"data:,\"></head>\
         <body><main id=\"main\"><h1>{title}</h1><p id=\"why\">{text}</p></main></body></html>\n"
    );
    response(status, "text/html; charset=utf-8", html)
}

fn redirect(to: &'static str) -> Response<Full<Bytes>> {
    let mut r = response(StatusCode::SEE_OTHER, "text/plain", "");
    r.headers_mut()
        .insert(LOCATION, HeaderValue::from_static(to));
    r
}

/// What a page or `/` answers a request without the session cookie.
fn needs_session() -> Response<Full<Bytes>> {
    html_page(
        StatusCode::UNAUTHORIZED,
        "Open the dashboard's URL",
        "This dashboard needs its session. Open the URL that <code>user-meta-admin ui</code> \
         printed when it started (<code>…/login?secret=…</code>) in this browser. It works \
         once: if it was used already, restart <code>user-meta-admin ui</code> for a new one.",
    )
}

impl Ui {
    fn page(&self, path: &str) -> Option<Response<Full<Bytes>>> {
        let (_, title) = PAGES.iter().find(|(p, _)| *p == path)?;
        let nav: String = PAGES
            .iter()
            .map(|(p, t)| {
                let current = if *p == path {
                    " aria-current=\"page\""
                } else {
                    ""
                };
                format!("<a href=\"{p}\"{current}>{t}</a>")
            })
            .collect();
        let html = format!(
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
             <meta name=\"ui-token\" content=\"{token}\">\
             <title>{title} · usermetadb</title>\
             <link rel=\"stylesheet\" href=\"/static/app.css\">\
             <link rel=\"icon\" href=\"data:,\">\
             <script src=\"/static/app.js\" defer></script></head>\
             <body data-page=\"{page}\"><header><span class=\"brand\">usermetadb</span>\
             <nav>{nav}</nav><span class=\"server\">{server}</span></header>\
             <main id=\"main\"><h1>{title}</h1></main></body></html>\n",
            token = self.token,
            page = &path[1..],
            server = esc(&self.api.url),
        );
        Some(response(StatusCode::OK, "text/html; charset=utf-8", html))
    }

    async fn proxy(&self, endpoint: &str, body: Bytes) -> Response<Full<Bytes>> {
        let path = format!("/api/{endpoint}");
        let mut guard = self.conn.lock().await;
        // One reconnection: the server may have closed an idle connection.
        for attempt in 0..2 {
            if guard.is_none() {
                match self.api.connect().await {
                    Ok(c) => *guard = Some(c),
                    Err(f) => return json_error(StatusCode::BAD_GATEWAY, &f.message),
                }
            }
            let Some(c) = guard.as_mut() else { continue };
            match c.post_raw(&path, body.clone()).await {
                Ok(r) => {
                    let mut resp = response(r.status, "application/json", r.body);
                    *resp.status_mut() = r.status;
                    return resp;
                }
                Err(e) if attempt == 0 => {
                    note(&format!("reconnecting after: {e}"));
                    *guard = None;
                }
                Err(e) => {
                    *guard = None;
                    let f: Failure = self.api.failure(e, &path);
                    return json_error(StatusCode::BAD_GATEWAY, &f.message);
                }
            }
        }
        json_error(StatusCode::BAD_GATEWAY, "the server could not be reached")
    }

    /// Whether the request carries this run's session cookie.
    fn has_session(&self, req: &Request<Incoming>) -> bool {
        let session = self.session.lock().unwrap_or_else(|e| e.into_inner());
        let Some(session) = session.as_deref() else {
            return false;
        };
        req.headers()
            .get_all(COOKIE)
            .iter()
            .filter_map(|h| h.to_str().ok())
            .flat_map(|h| h.split(';'))
            .filter_map(|c| c.trim().split_once('='))
            .any(|(name, value)| {
                name == self.cookie_name && same_secret(value.as_bytes(), session.as_bytes())
            })
    }

    /// `GET /login?secret=S`: spends the secret for a session cookie.
    fn login(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        if self.has_session(req) {
            return redirect("/events");
        }
        let given = req
            .uri()
            .query()
            .unwrap_or("")
            .split('&')
            .find_map(|kv| kv.strip_prefix("secret="))
            .unwrap_or("");
        let mut session = self.session.lock().unwrap_or_else(|e| e.into_inner());
        if session.is_some() || !same_secret(given.as_bytes(), self.secret.as_bytes()) {
            return html_page(
                StatusCode::FORBIDDEN,
                "This login URL is spent or wrong",
                "Each start of <code>user-meta-admin ui</code> prints a URL that works once. \
                 Restart it for a new one.",
            );
        }
        let value = random_hex();
        let cookie = format!(
            "{}={value}; HttpOnly; SameSite=Strict; Path=/",
            self.cookie_name
        );
        *session = Some(value);
        drop(session);
        note("the login URL was used: the session is open");
        let mut r = redirect("/events");
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            r.headers_mut().insert(SET_COOKIE, v);
        }
        r
    }

    /// Whether a request that may change something comes from this origin,
    /// by the headers browsers add (absent from other clients' requests,
    /// which the cookie and the token stop).
    fn same_origin(req: &Request<Incoming>, host: &str) -> bool {
        let h = req.headers();
        let origin_ok = h
            .get(ORIGIN)
            .is_none_or(|o| o.as_bytes() == format!("http://{host}").as_bytes());
        let site_ok = h
            .get("sec-fetch-site")
            .is_none_or(|s| s.as_bytes() == b"same-origin");
        origin_ok && site_ok
    }

    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, Infallible> {
        // Only requests addressed to this listener by name: a page of another
        // origin that rebinds its DNS name to 127.0.0.1 sends its own.
        let host = req
            .headers()
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .filter(|h| self.host.allows(h))
            .map(str::to_owned);
        let Some(host) = host else {
            return Ok(json_error(StatusCode::MISDIRECTED_REQUEST, "wrong Host"));
        };
        let path = req.uri().path().to_owned();
        let resp = match (req.method().clone(), path.as_str()) {
            (Method::GET, "/static/app.js") => {
                response(StatusCode::OK, "text/javascript; charset=utf-8", SCRIPT)
            }
            (Method::GET, "/static/app.css") => {
                response(StatusCode::OK, "text/css; charset=utf-8", STYLE)
            }
            (Method::GET, "/login") => self.login(&req),
            (Method::GET, _) if !self.has_session(&req) => needs_session(),
            (Method::GET, "/") => redirect("/events"),
            (Method::GET, p) => match self.page(p) {
                Some(r) => r,
                None => json_error(StatusCode::NOT_FOUND, "no such page"),
            },
            (Method::POST, p) if p.starts_with("/proxy/") => {
                let endpoint = &p["/proxy/".len()..];
                let token_ok = req
                    .headers()
                    .get("x-ui-token")
                    .is_some_and(|t| same_secret(t.as_bytes(), self.token.as_bytes()));
                let json = req
                    .headers()
                    .get(CONTENT_TYPE)
                    .is_some_and(|t| t.as_bytes().starts_with(b"application/json"));
                if !self.has_session(&req) {
                    json_error(
                        StatusCode::UNAUTHORIZED,
                        "no dashboard session: open the URL user-meta-admin ui printed",
                    )
                } else if !token_ok {
                    json_error(StatusCode::FORBIDDEN, "missing or wrong UI token")
                } else if !Self::same_origin(&req, &host) {
                    json_error(StatusCode::FORBIDDEN, "a request from another site")
                } else if !json {
                    json_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "JSON only")
                } else if !ENDPOINTS.contains(&endpoint) {
                    json_error(StatusCode::NOT_FOUND, "not an endpoint of the dashboard")
                } else {
                    match Limited::new(req.into_body(), MAX_BODY).collect().await {
                        Ok(b) => self.proxy(endpoint, b.to_bytes()).await,
                        Err(_) => json_error(StatusCode::PAYLOAD_TOO_LARGE, "body too large"),
                    }
                }
            }
            _ => json_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
        };
        Ok(resp)
    }
}

/// Progress for the operator, on stderr (never a username or a body).
fn note(msg: &str) {
    eprintln!("user-meta-admin ui: {msg}");
}

fn serve<S>(ui: &Arc<Ui>, stream: S)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ui = ui.clone();
    tokio::spawn(async move {
        let svc = hyper::service::service_fn(move |req| ui.clone().handle(req));
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), svc)
            .await;
    });
}

/// A unix socket at `path` that only this user can connect to: made under
/// umask 0177 (no moment with wider modes), then checked.
fn bind_unix(path: &std::path::Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o177));
    let bound = tokio::net::UnixListener::bind(path);
    rustix::process::umask(old);
    let listener = bound?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

/// Serves the dashboard on `listen` until interrupted.
pub async fn run(api: Api, listen: Listen) -> Result<(), Failure> {
    let usage = |e: std::io::Error| Failure::usage(format!("--listen {listen}: {e}"));
    let (listener, host, cookie_name, origin) = match &listen {
        Listen::Tcp(addr) => {
            if !addr.ip().is_loopback() {
                eprintln!(
                    "user-meta-admin ui: WARNING: listening on {addr}, not loopback: anyone who can reach it and open the printed URL first acts with your certificate"
                );
            }
            let l = tokio::net::TcpListener::bind(addr).await.map_err(usage)?;
            let local = l.local_addr().map_err(usage)?;
            (
                Listener::Tcp(l),
                HostRule::Exact(local.to_string()),
                // Cookies are not kept apart by port: the name is.
                format!("usermetadb-ui-{}", local.port()),
                format!("http://{local}"),
            )
        }
        Listen::Unix(path) => (
            Listener::Unix(bind_unix(path).map_err(usage)?),
            HostRule::Loopback,
            "usermetadb-ui".to_owned(),
            "http://localhost".to_owned(),
        ),
    };
    // Checked early: a dashboard that cannot reach its server says so now.
    let first = match api.connect().await {
        Ok(c) => c,
        Err(f) => {
            if let Listen::Unix(path) = &listen {
                let _ = std::fs::remove_file(path);
            }
            return Err(f);
        }
    };
    let secret = random_hex();
    let ui = Arc::new(Ui {
        api,
        conn: Mutex::new(Some(first)),
        token: random_hex(),
        host,
        secret,
        session: std::sync::Mutex::new(None),
        cookie_name,
    });
    match &listen {
        Listen::Tcp(_) => println!("dashboard: {origin}/login?secret={}", ui.secret),
        Listen::Unix(path) => println!(
            "dashboard: {origin}/login?secret={} (on unix socket {}: forward a local port to it, as in ssh -L 8080:{} HOST, and open the URL with that port)",
            ui.secret,
            path.display(),
            path.display(),
        ),
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            a = async {
                match &listener {
                    Listener::Tcp(l) => l.accept().await.map(|(s, _)| serve(&ui, s)),
                    Listener::Unix(l) => l.accept().await.map(|(s, _)| serve(&ui, s)),
                }
            } => {
                let _ = a;
            }
        }
    }
    if let Listen::Unix(path) = &listen {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}
