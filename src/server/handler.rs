//! One HTTP request: route, authorize, check method, type and size, decode,
//! call the service, encode. [`Reject::into_response`] is the only place that
//! maps errors to HTTP statuses.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONNECTION, CONTENT_TYPE};
use hyper::http::request::Parts;
use hyper::{Request, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::body::RequestBody;
use super::{Peer, State};
use crate::acl::Scope;
use crate::endpoint::Endpoint;
use crate::service::ApiError;
use crate::store::StoreError;
use crate::wire::ErrorResponse;

/// Why a request was not served.
#[derive(Debug)]
pub enum Reject {
    NotFound,
    Forbidden,
    MethodNotAllowed(&'static hyper::Method),
    UnsupportedMediaType,
    TooLarge,
    BodyTimeout,
    BadBody(String),
    /// Both `Content-Length` and `Transfer-Encoding`: the framing a proxy in
    /// front may have read differently (request smuggling). Refused, and the
    /// connection closed, as nginx does.
    AmbiguousFraming,
    Overloaded,
    Api(ApiError),
    /// The read was answered but could not be recorded (access
    /// transparency): the answer is withheld.
    Unrecorded(StoreError),
}

impl From<ApiError> for Reject {
    fn from(e: ApiError) -> Self {
        Reject::Api(e)
    }
}

pub use crate::clock::now_unix;

pub(super) fn json_response(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn error_body(msg: &str) -> Vec<u8> {
    serde_json::to_vec(&ErrorResponse {
        error: msg.to_owned(),
    })
    .unwrap_or_default()
}

impl Reject {
    pub fn status(&self) -> StatusCode {
        match self {
            Reject::NotFound => StatusCode::NOT_FOUND,
            Reject::Forbidden => StatusCode::FORBIDDEN,
            Reject::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Reject::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Reject::TooLarge | Reject::Api(ApiError::TooLarge(_)) => StatusCode::PAYLOAD_TOO_LARGE,
            Reject::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Reject::BadBody(_) | Reject::AmbiguousFraming | Reject::Api(ApiError::Invalid(_)) => {
                StatusCode::BAD_REQUEST
            }
            Reject::Overloaded | Reject::Unrecorded(_) => StatusCode::SERVICE_UNAVAILABLE,
            Reject::Api(ApiError::Store(e)) if e.is_unavailable() => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Reject::Api(ApiError::Store(_)) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn into_response(self, endpoint: Option<Endpoint>) -> Response<Full<Bytes>> {
        let status = self.status();
        let name = endpoint.map(Endpoint::name).unwrap_or("unknown");
        let msg: String = match &self {
            Reject::NotFound => "not found".into(),
            Reject::Forbidden => "forbidden".into(),
            Reject::MethodNotAllowed(_) => "method not allowed".into(),
            Reject::UnsupportedMediaType => "content type must be application/json".into(),
            Reject::TooLarge => "request body too large".into(),
            Reject::BodyTimeout => "request body not received in time".into(),
            Reject::BadBody(m) => m.clone(),
            Reject::AmbiguousFraming => {
                "a request must not carry both Content-Length and Transfer-Encoding".into()
            }
            Reject::Overloaded => "server overloaded, retry later".into(),
            Reject::Unrecorded(e) => {
                crate::metrics::global().storage_error(e.metric());
                tracing::error!(endpoint = name, error = %e, "a read could not be recorded");
                "the read could not be recorded, retry later".into()
            }
            Reject::Api(ApiError::Invalid(m) | ApiError::TooLarge(m)) => m.clone(),
            Reject::Api(ApiError::Store(e)) => {
                crate::metrics::global().storage_error(e.metric());
                tracing::error!(endpoint = name, error = %e, "storage failure");
                match e {
                    StoreError::Full => "storage full, retry later".into(),
                    StoreError::ReadOnly => "storage read-only, retry later".into(),
                    _ => "storage unavailable, retry later".into(),
                }
            }
        };
        if status.is_client_error() {
            tracing::debug!(endpoint = name, status = status.as_u16(), error = %msg, "request rejected");
        } else if !matches!(self, Reject::Api(_) | Reject::Unrecorded(_)) {
            tracing::warn!(endpoint = name, status = status.as_u16(), error = %msg, "request rejected");
        }
        let mut resp = json_response(status, error_body(&msg));
        match self {
            Reject::MethodNotAllowed(m) => {
                if let Ok(v) = HeaderValue::from_str(m.as_str()) {
                    resp.headers_mut().insert(ALLOW, v);
                }
            }
            Reject::AmbiguousFraming => {
                resp.headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        resp
    }
}

fn is_json(req: &Parts) -> bool {
    let Some(ct) = req.headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let media = ct.split(';').next().unwrap_or("").trim();
    media.eq_ignore_ascii_case("application/json")
}

/// Strict JSON: one object, nothing before or after it.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, Reject> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(Reject::BadBody("request body must be a JSON object".into()));
    }
    serde_json::from_slice(body).map_err(|e| Reject::BadBody(format!("invalid request: {e}")))
}

pub(super) fn encode<T: Serialize>(v: &T) -> Response<Full<Bytes>> {
    match serde_json::to_vec(v) {
        Ok(body) => json_response(StatusCode::OK, body),
        Err(e) => {
            Reject::Api(ApiError::Store(StoreError::Other(e.to_string()))).into_response(None)
        }
    }
}

/// The body limit of a path: the bulk limit for `get_unused_accounts`.
fn body_limit(endpoint: Option<Endpoint>, state: &State) -> usize {
    if endpoint.is_some_and(Endpoint::is_bulk) {
        state.http.max_bulk_body_bytes
    } else {
        state.http.max_body_bytes
    }
}

/// Serves one request. Never fails: every outcome is a response.
pub async fn handle(
    req: Request<Incoming>,
    state: Arc<State>,
    peer: Arc<Peer>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let started = std::time::Instant::now();
    let (parts, body) = req.into_parts();
    let mut body = RequestBody::new(&parts, body);
    let endpoint = Endpoint::from_path(parts.uri.path());
    let outcome = if peer.framing.next_is_ambiguous() {
        Err(Reject::AmbiguousFraming)
    } else {
        serve(&parts, &mut body, endpoint, &state, &peer).await
    };
    let mut resp = match outcome {
        Ok(resp) => resp,
        Err(reject) => reject.into_response(endpoint),
    };
    body.settle(
        parts.version,
        &mut resp,
        body_limit(endpoint, &state),
        state.http.request_timeout,
    );
    crate::metrics::global().request(endpoint, resp.status().as_u16(), started.elapsed());
    Ok(resp)
}

async fn serve(
    req: &Parts,
    body: &mut RequestBody,
    endpoint: Option<Endpoint>,
    state: &State,
    peer: &Peer,
) -> Result<Response<Full<Bytes>>, Reject> {
    let endpoint = endpoint.ok_or(Reject::NotFound)?;
    if !peer.allows(endpoint) {
        return Err(Reject::Forbidden);
    }
    if req.method != endpoint.method() {
        return Err(Reject::MethodNotAllowed(endpoint.method()));
    }
    // Outside the request slots: an overload is exactly when it must be seen.
    if endpoint == Endpoint::Metrics {
        let max = state.http.max_inflight_requests;
        let inflight = max.saturating_sub(state.inflight.available_permits());
        let mut text = crate::metrics::global().render(inflight, max);
        if let Some(stats) = state.service.store.device_index_stats() {
            crate::metrics::render_device_index(&mut text, stats.devices, stats.rebuilds);
        }
        let (keys, evictions) = state.service.throttle.stats();
        crate::metrics::render_policy(&mut text, keys, evictions);
        let mut resp = Response::new(Full::new(Bytes::from(text)));
        resp.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        return Ok(resp);
    }
    let _permit = state
        .inflight
        .clone()
        .try_acquire_owned()
        .map_err(|_| Reject::Overloaded)?;
    if endpoint == Endpoint::Health {
        return Ok(json_response(
            StatusCode::OK,
            br#"{"status":"ok"}"#.to_vec(),
        ));
    }
    if !is_json(req) {
        return Err(Reject::UnsupportedMediaType);
    }
    let body = body
        .read(
            body_limit(Some(endpoint), state),
            state.http.request_timeout,
        )
        .await?;
    let svc = &state.service;
    let now = now_unix();
    let answer: Result<Response<Full<Bytes>>, Reject> = async {
        if let Scope::Tenants(tenants) = peer.scope(endpoint) {
            if let Some(resp) = super::scope::serve(endpoint, &body, state, &tenants, now).await? {
                return Ok(resp);
            }
        }
        answer(endpoint, &body, svc, now).await
    }
    .await;
    let resp = answer?;
    // The answer is built: the read is recorded before it is sent.
    if let Some(reader) = &peer.reader {
        super::access::record(endpoint, &body, svc, reader, now).await?;
    }
    Ok(resp)
}

/// The answer of an endpoint served as for any client.
async fn answer(
    endpoint: Endpoint,
    body: &[u8],
    svc: &crate::service::Service,
    now: i64,
) -> Result<Response<Full<Bytes>>, Reject> {
    Ok(match endpoint {
        Endpoint::AddLog => encode(&svc.add_log(decode(body)?, now).await?),
        Endpoint::GetUserLogs => {
            json_response(StatusCode::OK, svc.get_user_logs(decode(body)?, now).await?)
        }
        Endpoint::GetUserDevices => encode(&svc.get_user_devices(decode(body)?).await?),
        Endpoint::CheckDevice => encode(&svc.check_device(decode(body)?).await?),
        Endpoint::SetLastLogin => encode(&svc.set_last_login(decode(body)?, now).await?),
        Endpoint::GetLastLogin => encode(&svc.get_last_login(decode(body)?).await?),
        Endpoint::GetUnusedAccounts => encode(&svc.get_unused_accounts(decode(body)?, now).await?),
        Endpoint::IdentifyDevice => encode(&svc.identify_device(decode(body)?)?),
        Endpoint::ForgetUser => encode(&svc.forget_user(decode(body)?).await?),
        Endpoint::GetUserAlerts => encode(&svc.get_user_alerts(decode(body)?, now).await?),
        Endpoint::GetUserSummary => encode(&svc.get_user_summary(decode(body)?, now).await?),
        Endpoint::Report => encode(&crate::reports::report(svc, decode(body)?).await?),
        Endpoint::GetEvents => encode(&svc.get_events(decode(body)?, now).await?),
        Endpoint::GetAlerts => encode(&svc.get_alerts(decode(body)?, now).await?),
        Endpoint::RetryAlert => encode(&svc.retry_alert(decode(body)?).await?),
        Endpoint::CheckLogin => encode(&svc.check_login(decode(body)?, now).await?),
        Endpoint::GetThrottles => encode(&svc.throttles(decode(body)?, now)?),
        Endpoint::ClearThrottles => encode(&svc.clear_throttles(decode(body)?)?),
        Endpoint::GetUserAccess => encode(&svc.get_user_access(decode(body)?, now).await?),
        Endpoint::ExportUser => encode(&svc.export_user(decode(body)?).await?),
        Endpoint::Health | Endpoint::Metrics => return Err(Reject::NotFound),
    })
}
