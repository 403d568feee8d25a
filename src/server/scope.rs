//! Clients scoped to tenants: a request that only ACL entries naming tenants
//! allow ([`Scope::Tenants`]) may concern only those tenants' users
//! (`tenant/…`).
//!
//! - An endpoint about one user (`add_log`, `set_last_login`, `get_*`,
//!   `check_device`, `check_login`, `forget_user`, `export_user`), and the admin throttling
//!   endpoints (their `login`), is refused (403) for a user of another
//!   tenant or of none; `get_unused_accounts` when any name of its list is.
//! - The cross-user answers hold only the tenants' rows: the event list (a
//!   `tenant` it names must be one of them), the alert list, and every
//!   report (all of them counted over one tenant's users, `time_spent`
//!   included; a client of several tenants names one in `tenant`).
//! - `retry_alert` is refused: an alert ID names no tenant, and the delivery
//!   queue is the operator's.
//! - `identify_device` concerns no stored user: it answers only about the
//!   cookie and request the client sends, and stays allowed.
//! - `/health` and `/metrics` hold no user data, and are not scoped.

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;

use super::handler::{decode, encode, Reject};
use super::State;
use crate::acl::Scope;
use crate::endpoint::Endpoint;
use crate::reports::ReportRequest;
use crate::service::ApiError;
use crate::wire::*;

/// Entries or alerts a list answers when the request leaves `limit` at 0.
const DEFAULT_LIMIT: usize = 100;

/// Serves a request of a client scoped to `tenants`: `Ok(Some)` with the
/// answer of a cross-user endpoint, `Ok(None)` when the request concerns
/// only the tenants' users and is served as any other, else 403.
pub(super) async fn serve(
    endpoint: Endpoint,
    body: &[u8],
    state: &State,
    tenants: &Arc<BTreeSet<String>>,
    now: i64,
) -> Result<Option<Response<Full<Bytes>>>, Reject> {
    let scope = Scope::Tenants(tenants.clone());
    let user = |name: &str| {
        if scope.covers(name) {
            Ok(None)
        } else {
            Err(Reject::Forbidden)
        }
    };
    let svc = &state.service;
    match endpoint {
        Endpoint::AddLog => match decode::<AddLogRequest>(body)?.log {
            Some(log) => user(&log.username),
            None => Ok(None),
        },
        Endpoint::SetLastLogin => match decode::<SetLastLoginRequest>(body)?.last_login {
            Some(l) => user(&l.username),
            None => Ok(None),
        },
        Endpoint::GetUserLogs => user(&decode::<GetUserLogsRequest>(body)?.username),
        Endpoint::GetUserDevices => user(&decode::<GetUserDevicesRequest>(body)?.username),
        Endpoint::CheckDevice | Endpoint::CheckLogin => {
            user(&decode::<CheckDeviceRequest>(body)?.username)
        }
        Endpoint::GetLastLogin => user(&decode::<GetLastLoginRequest>(body)?.username),
        Endpoint::ForgetUser => user(&decode::<ForgetUserRequest>(body)?.username),
        Endpoint::GetUserAlerts => user(&decode::<GetUserAlertsRequest>(body)?.username),
        Endpoint::GetUserSummary => user(&decode::<GetUserSummaryRequest>(body)?.username),
        Endpoint::GetUserAccess => user(&decode::<GetUserAccessRequest>(body)?.username),
        Endpoint::ExportUser => user(&decode::<ExportUserRequest>(body)?.username),
        Endpoint::GetThrottles | Endpoint::ClearThrottles => {
            user(&decode::<ThrottlesRequest>(body)?.login)
        }
        Endpoint::GetUnusedAccounts => {
            let req: GetUnusedAccountsRequest = decode(body)?;
            if req.usernames.iter().flatten().all(|n| scope.covers(n)) {
                Ok(None)
            } else {
                Err(Reject::Forbidden)
            }
        }
        Endpoint::IdentifyDevice | Endpoint::Health | Endpoint::Metrics => Ok(None),
        Endpoint::RetryAlert => Err(Reject::Forbidden),
        Endpoint::GetEvents => {
            let mut req: GetEventsRequest = decode(body)?;
            if !req.username.is_empty() && !scope.covers(&req.username) {
                return Err(Reject::Forbidden);
            }
            if !req.tenant.is_empty() {
                if !tenants.contains(&req.tenant) {
                    return Err(Reject::Forbidden);
                }
                return Ok(Some(encode(&svc.get_events(req, now).await?)));
            }
            if let Some((tenant, _)) = req.username.split_once('/') {
                req.tenant = tenant.to_owned();
                return Ok(Some(encode(&svc.get_events(req, now).await?)));
            }
            // Each tenant's newest, merged: newest first, at most `limit`.
            let limit = limit_of(req.limit);
            let mut result = Vec::new();
            for tenant in tenants.iter() {
                let one = GetEventsRequest {
                    tenant: tenant.clone(),
                    ..req.clone()
                };
                result.extend(svc.get_events(one, now).await?.result);
            }
            result.sort_by_key(|e| std::cmp::Reverse(e.timestamp.unix()));
            result.truncate(limit);
            Ok(Some(encode(&GetEventsResponse { result })))
        }
        Endpoint::GetAlerts => {
            let req: GetAlertsRequest = decode(body)?;
            let limit = limit_of(req.limit);
            let mut alerts = Vec::new();
            for tenant in tenants.iter() {
                let found = svc
                    .get_alerts_within(req.clone(), now, format!("{tenant}/"))
                    .await?;
                alerts.extend(found.alerts);
            }
            alerts.sort_by_key(|a| std::cmp::Reverse((a.timestamp.unix(), a.id)));
            alerts.truncate(limit);
            Ok(Some(encode(&GetAlertsResponse { alerts })))
        }
        Endpoint::Report => {
            let mut req: ReportRequest = decode(body)?;
            if req.tenant.is_empty() {
                match tenants.iter().collect::<Vec<_>>()[..] {
                    [one] => req.tenant = one.clone(),
                    _ => {
                        return Err(Reject::Api(ApiError::Invalid(format!(
                            "tenant: this client sees the tenants {}; name one",
                            tenants.iter().cloned().collect::<Vec<_>>().join(", ")
                        ))))
                    }
                }
            } else if !tenants.contains(&req.tenant) {
                return Err(Reject::Forbidden);
            }
            Ok(Some(encode(
                &crate::reports::report_within(svc, req, true).await?,
            )))
        }
    }
}

/// A list's length as the service reads `limit` (0: the default); a limit
/// out of range was already refused by the service.
fn limit_of(limit: i64) -> usize {
    if limit <= 0 {
        DEFAULT_LIMIT
    } else {
        limit as usize
    }
}
