//! The listener for Windows login agents (the winauthmon protocol): server
//! TLS only (agents authenticate with an API key, not a certificate), two
//! paths, `POST /api/log_event` and `POST /api/health`, each with an
//! `X-API-Key` header, answered as the agent expects. A per-key rate limit
//! answers 429. A missing, unknown and disabled key are answered alike.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, RETRY_AFTER};
use hyper::http::request::Parts;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;

use super::body::RequestBody;
use super::handler::json_response;
use super::{framing, State};
use crate::metrics::AgentOutcome as Outcome;
use crate::service::ApiError;
use crate::store::{AgentKey, AgentOutcome};

/// How often expired sessions and retry hashes are deleted.
const EXPIRY_INTERVAL: Duration = Duration::from_secs(60);
/// Largest event body; the agent's are a few hundred bytes.
const MAX_BODY: usize = 16 * 1024;
const KEY_HEADER: &str = "x-api-key";

/// A token bucket per key: `per_minute` events, refilled continuously.
pub struct RateLimit {
    per_minute: f64,
    buckets: Mutex<HashMap<i64, (f64, Instant)>>,
}

impl RateLimit {
    pub fn new(per_minute: u32) -> RateLimit {
        RateLimit {
            per_minute: f64::from(per_minute),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token of `key`; `Err(seconds)` until the next one when empty.
    pub fn take(&self, key: i64) -> Result<(), u64> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let (tokens, at) = buckets.entry(key).or_insert((self.per_minute, now));
        let refill = now.duration_since(*at).as_secs_f64() * self.per_minute / 60.0;
        *tokens = (*tokens + refill).min(self.per_minute);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) * 60.0 / self.per_minute).ceil() as u64)
        }
    }
}

fn message(status: StatusCode, text: &str, ok: bool) -> Response<Full<Bytes>> {
    let body = json!({"message": text, "status": if ok { "success" } else { "error" }});
    json_response(status, body.to_string().into_bytes())
}

/// The health answer the agent expects: 200 with the key verified, or 500
/// with the database disconnected when the key could not be checked.
fn health_answer(connected: bool) -> Response<Full<Bytes>> {
    let (status, state, message, database) = if connected {
        (StatusCode::OK, "ok", "API is healthy", "connected")
    } else {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "error",
            "database unavailable",
            "disconnected",
        )
    };
    let body = json!({
        "status": state,
        "message": message,
        "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "database": database,
        "api_key_verified": connected,
    });
    json_response(status, body.to_string().into_bytes())
}

fn unauthorized() -> Response<Full<Bytes>> {
    crate::metrics::global().agent_request(Outcome::Unauthorized);
    message(
        StatusCode::UNAUTHORIZED,
        "invalid or missing API key",
        false,
    )
}

fn unavailable(e: &ApiError) -> Response<Full<Bytes>> {
    crate::metrics::global().agent_request(Outcome::Failed);
    if let ApiError::Store(e) = e {
        crate::metrics::global().storage_error(e.metric());
    }
    tracing::error!(error = %e, "agent event: storage failure");
    message(
        StatusCode::SERVICE_UNAVAILABLE,
        "storage unavailable, retry later",
        false,
    )
}

/// Serves one request of an agent connected from `peer` (used for the
/// country only, when public, and then dropped).
pub async fn handle(
    req: Request<Incoming>,
    state: Arc<State>,
    limits: Arc<RateLimit>,
    framing: Arc<framing::Ambiguity>,
    peer: IpAddr,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    super::side::request(req, &state, &framing, MAX_BODY, async |parts, body| {
        serve(parts, body, &state, &limits, peer).await
    })
    .await
}

async fn serve(
    req: &Parts,
    body: &mut RequestBody,
    state: &State,
    limits: &RateLimit,
    peer: IpAddr,
) -> Response<Full<Bytes>> {
    let health = match req.uri.path() {
        "/api/log_event" => false,
        "/api/health" => true,
        _ => return message(StatusCode::NOT_FOUND, "not found", false),
    };
    if req.method != Method::POST && !(health && req.method == Method::GET) {
        let mut resp = message(StatusCode::METHOD_NOT_ALLOWED, "method not allowed", false);
        resp.headers_mut()
            .insert(hyper::header::ALLOW, HeaderValue::from_static("POST"));
        return resp;
    }
    let presented = req
        .headers
        .get(KEY_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    if presented.is_empty() {
        return unauthorized();
    }
    let key = match state.service.agent_key(&presented).await {
        Ok(Some(k)) => k,
        Ok(None) => return unauthorized(),
        Err(e) if health => {
            tracing::error!(error = %e, "agent health: storage failure");
            crate::metrics::global().agent_request(Outcome::Failed);
            return health_answer(false);
        }
        Err(e) => return unavailable(&e),
    };
    if health {
        return health_answer(true);
    }
    if let Err(wait) = limits.take(key.id) {
        crate::metrics::global().agent_request(Outcome::RateLimited);
        let mut resp = message(StatusCode::TOO_MANY_REQUESTS, "rate limit exceeded", false);
        resp.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(wait.max(1)));
        return resp;
    }
    log_event(body, state, &key, peer).await
}

async fn log_event(
    body: &mut RequestBody,
    state: &State,
    key: &AgentKey,
    peer: IpAddr,
) -> Response<Full<Bytes>> {
    let _permit = match state.inflight.clone().try_acquire_owned() {
        Ok(p) => p,
        Err(_) => {
            crate::metrics::global().agent_request(Outcome::Failed);
            return message(
                StatusCode::SERVICE_UNAVAILABLE,
                "server busy, retry later",
                false,
            );
        }
    };
    let body = match body.read(MAX_BODY, state.http.request_timeout).await {
        Ok(b) => b,
        Err(r) => {
            crate::metrics::global().agent_request(Outcome::Invalid);
            let status = r.status();
            return message(
                status,
                status.canonical_reason().unwrap_or("bad request"),
                false,
            );
        }
    };
    let now = crate::clock::now_unix();
    match state.service.agent_event(key, &body, Some(peer), now).await {
        Ok(AgentOutcome::Stored { .. }) => {
            crate::metrics::global().agent_request(Outcome::Stored);
            message(StatusCode::CREATED, "Event logged successfully", true)
        }
        Ok(AgentOutcome::Duplicate) => {
            crate::metrics::global().agent_request(Outcome::Duplicate);
            message(StatusCode::OK, "Event already recorded", true)
        }
        Err(ApiError::Invalid(msg)) | Err(ApiError::TooLarge(msg)) => {
            crate::metrics::global().agent_request(Outcome::Invalid);
            tracing::debug!(error = %msg, "agent event refused");
            message(StatusCode::BAD_REQUEST, &msg, false)
        }
        Err(e) => unavailable(&e),
    }
}

/// Accepts agents until `shutdown` flips, then lets in-flight requests
/// finish (up to the grace period).
pub async fn run(
    listener: super::side::Listener,
    state: Arc<State>,
    limits: Arc<RateLimit>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    // Exact session starts are held a day at most, retry hashes their
    // window: deleted within a minute of expiring, not at the next
    // retention run.
    let expiry = tokio::spawn({
        let store = state.service.store.clone();
        async move {
            let mut tick = tokio::time::interval(EXPIRY_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = store.expire_agent_state(crate::clock::now_unix()).await {
                    tracing::warn!(error = %e, "agents: deleting expired sessions and retry hashes failed; will retry");
                }
            }
        }
    });
    let handler = {
        let state = state.clone();
        move |req, framing, peer| handle(req, state.clone(), limits.clone(), framing, peer)
    };
    super::side::run(listener, state, "agents", handler, shutdown).await;
    expiry.abort();
}
