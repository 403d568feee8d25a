//! The listener for Dovecot's auth policy protocol (`auth_policy_server_url`),
//! which any other login source may speak too: `POST …?command=allow` before
//! (and after) a password check, answered `{"status": -1|0|N, "msg"}`, and
//! `POST …?command=report` once the check is done. The client presents the
//! token of `policy.token_file` as `Authorization: Bearer TOKEN` or as
//! `X-API-Key: TOKEN` (Dovecot sends a header value without `:` as the
//! latter); a missing and a wrong token are answered alike, 401, and
//! counted. Nothing of a request (login, address, password hash, session)
//! is logged.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, AUTHORIZATION, CONTENT_TYPE};
use hyper::http::request::Parts;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;

use super::body::RequestBody;
use super::handler::{json_response, Reject};
use super::{framing, State};
use crate::monitor::throttle::Decision;
use crate::service::ApiError;

/// Largest request body: Dovecot's are a few hundred bytes.
const MAX_BODY: usize = 16 * 1024;

/// Indexes of `metrics::POLICY_OUTCOMES`.
const ALLOW_OUTCOME: usize = 0;
const REPORT_SUCCESS: usize = 1;
const REPORT_FAILURE: usize = 2;
const INVALID: usize = 3;
const UNAUTHORIZED: usize = 4;

enum Command {
    Allow,
    Report,
}

/// The command of a target such as `/?command=allow`, `/x?a=1&command=report`
/// or `/??command=allow` (a configured URL ending in `?`).
fn command(parts: &Parts) -> Option<Command> {
    let query = parts.uri.query()?;
    query
        .split('&')
        .map(|kv| kv.trim_start_matches('?'))
        .find_map(|kv| match kv {
            "command=allow" => Some(Command::Allow),
            "command=report" => Some(Command::Report),
            _ => None,
        })
}

/// Equal, in a time that depends on the lengths only.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn presented_token(parts: &Parts) -> Option<&[u8]> {
    if let Some(v) = parts.headers.get(AUTHORIZATION) {
        let v = v.as_bytes();
        let scheme = b"bearer ";
        return (v.len() > scheme.len() && v[..scheme.len()].eq_ignore_ascii_case(scheme))
            .then(|| v[scheme.len()..].trim_ascii());
    }
    parts
        .headers
        .get("x-api-key")
        .map(|v| v.as_bytes().trim_ascii())
}

fn error(status: StatusCode, msg: &str) -> Response<Full<Bytes>> {
    json_response(status, json!({ "error": msg }).to_string().into_bytes())
}

fn outcome(i: usize) {
    crate::metrics::policy_outcome(i);
}

/// Serves one request of the policy client.
pub async fn handle(
    req: Request<Incoming>,
    state: Arc<State>,
    token: Arc<Vec<u8>>,
    framing: Arc<framing::Ambiguity>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    super::side::request(req, &state, &framing, MAX_BODY, async |parts, body| {
        serve(parts, body, &state, &token).await
    })
    .await
}

async fn serve(
    req: &Parts,
    body: &mut RequestBody,
    state: &State,
    token: &[u8],
) -> Response<Full<Bytes>> {
    if req.method != Method::POST {
        let mut resp = error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
        resp.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("POST"));
        return resp;
    }
    if !presented_token(req).is_some_and(|t| same(t, token)) {
        outcome(UNAUTHORIZED);
        return error(StatusCode::UNAUTHORIZED, "invalid or missing token");
    }
    let Some(command) = command(req) else {
        outcome(INVALID);
        return error(
            StatusCode::NOT_FOUND,
            "unknown command: expected ?command=allow or ?command=report",
        );
    };
    let json = req
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        outcome(INVALID);
        return Reject::UnsupportedMediaType.into_response(None);
    }
    let Ok(_permit) = state.inflight.clone().try_acquire_owned() else {
        return Reject::Overloaded.into_response(None);
    };
    let bytes = match body.read(MAX_BODY, state.http.request_timeout).await {
        Ok(b) => b,
        Err(r) => {
            outcome(INVALID);
            return r.into_response(None);
        }
    };
    let now = crate::clock::now_unix();
    let svc = &state.service;
    let result = match command {
        Command::Allow => svc.policy_allow(&bytes, now).await.map(|(answer, d)| {
            let (decision, _) = match d.decision {
                Decision::Allow => (0, 0),
                Decision::Delay(_) => (1, 0),
                Decision::Refuse => (2, 0),
            };
            crate::metrics::policy_decision(decision, d.reason as usize, d.enforced);
            outcome(ALLOW_OUTCOME);
            json!(answer)
        }),
        Command::Report => svc.policy_report(&bytes, now).await.map(|success| {
            outcome(if success {
                REPORT_SUCCESS
            } else {
                REPORT_FAILURE
            });
            json!({"status": 0, "msg": ""})
        }),
    };
    match result {
        Ok(answer) => json_response(StatusCode::OK, answer.to_string().into_bytes()),
        Err(ApiError::Invalid(msg)) | Err(ApiError::TooLarge(msg)) => {
            outcome(INVALID);
            tracing::debug!(error = %msg, "policy request refused");
            error(StatusCode::BAD_REQUEST, &msg)
        }
        Err(e) => Reject::Api(e).into_response(None),
    }
}

/// Accepts the policy client until `shutdown` flips.
pub async fn run(
    listener: super::side::Listener,
    state: Arc<State>,
    token: Vec<u8>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let token = Arc::new(token);
    // A new generation of throttling keys when one is due, even when no
    // attempt comes to start it.
    let expiry = tokio::spawn({
        let throttle = state.service.throttle.clone();
        async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
            loop {
                tick.tick().await;
                throttle.expire(crate::clock::now_unix());
            }
        }
    });
    let handler = {
        let state = state.clone();
        move |req, framing, _peer: IpAddr| handle(req, state.clone(), token.clone(), framing)
    };
    super::side::run(listener, state, "policy", handler, shutdown).await;
    expiry.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(target: &str) -> Parts {
        Request::post(target).body(()).unwrap().into_parts().0
    }

    #[test]
    fn the_command_is_found_however_the_url_was_configured() {
        for (target, allow) in [
            ("/?command=allow", true),
            ("/policy?command=report", false),
            ("/x?a=1&command=allow", true),
            ("/??command=report", false),
        ] {
            match command(&parts(target)) {
                Some(Command::Allow) => assert!(allow, "{target}"),
                Some(Command::Report) => assert!(!allow, "{target}"),
                None => panic!("{target}"),
            }
        }
        assert!(command(&parts("/?command=drop")).is_none());
        assert!(command(&parts("/")).is_none());
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"secret", b"secret"));
        assert!(!same(b"secret", b"secreT"));
        assert!(!same(b"secret", b"secret2"));
        assert!(!same(b"", b"x"));
    }
}
