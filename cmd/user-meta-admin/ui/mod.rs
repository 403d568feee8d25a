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
//! A local port is reachable by any web page the admin's browser opens, so:
//! every proxied request must carry the token of this run (in the pages'
//! `<meta>`, which another origin cannot read), the `Host` header must be
//! this listener's (no DNS rebinding), and a strict Content-Security-Policy
//! allows only this origin's script, style and requests.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, HOST, LOCATION};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rand::RngCore;
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

struct Ui {
    api: Api,
    conn: Mutex<Option<Connection>>,
    token: String,
    host: String,
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

    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, Infallible> {
        // Only requests addressed to this listener by name: a page of another
        // origin that rebinds its DNS name to 127.0.0.1 sends its own.
        let host_ok = req
            .headers()
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .is_some_and(|h| h == self.host);
        if !host_ok {
            return Ok(json_error(StatusCode::MISDIRECTED_REQUEST, "wrong Host"));
        }
        let path = req.uri().path().to_owned();
        let resp = match (req.method().clone(), path.as_str()) {
            (Method::GET, "/") => {
                let mut r = response(StatusCode::SEE_OTHER, "text/plain", "");
                r.headers_mut()
                    .insert(LOCATION, HeaderValue::from_static("/events"));
                r
            }
            (Method::GET, "/static/app.js") => {
                response(StatusCode::OK, "text/javascript; charset=utf-8", SCRIPT)
            }
            (Method::GET, "/static/app.css") => {
                response(StatusCode::OK, "text/css; charset=utf-8", STYLE)
            }
            (Method::GET, p) => match self.page(p) {
                Some(r) => r,
                None => json_error(StatusCode::NOT_FOUND, "no such page"),
            },
            (Method::POST, p) if p.starts_with("/proxy/") => {
                let endpoint = &p["/proxy/".len()..];
                let token_ok = req
                    .headers()
                    .get("x-ui-token")
                    .is_some_and(|t| t.as_bytes() == self.token.as_bytes());
                let json = req
                    .headers()
                    .get(CONTENT_TYPE)
                    .is_some_and(|t| t.as_bytes().starts_with(b"application/json"));
                if !token_ok {
                    json_error(StatusCode::FORBIDDEN, "missing or wrong UI token")
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

/// Serves the dashboard on `listen` until interrupted.
pub async fn run(api: Api, listen: SocketAddr) -> Result<(), Failure> {
    if !listen.ip().is_loopback() {
        eprintln!(
            "user-meta-admin ui: WARNING: listening on {listen}, not loopback: anyone who can reach it and read a page acts with your certificate"
        );
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| Failure::usage(format!("--listen {listen}: {e}")))?;
    let local = listener
        .local_addr()
        .map_err(|e| Failure::usage(format!("--listen {listen}: {e}")))?;
    // Checked early: a dashboard that cannot reach its server says so now.
    let first = api.connect().await?;
    let mut raw = [0u8; 24];
    rand::thread_rng().fill_bytes(&mut raw);
    let token = usermetadb::crypto::hex(&raw);
    let ui = Arc::new(Ui {
        api,
        conn: Mutex::new(Some(first)),
        token,
        host: local.to_string(),
    });
    println!("dashboard: http://{local}/");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    loop {
        let (stream, _) = tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(_) => continue,
            },
        };
        let ui = ui.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| ui.clone().handle(req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
