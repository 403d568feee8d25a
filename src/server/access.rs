//! Access transparency at the edge: after the answer of a read of one
//! user's data is built, a client whose CN matches `transparency.record`
//! has the read recorded (user, CN, endpoint, day); when the record cannot
//! be written the answer is withheld (503), so that no read escapes it.

use super::handler::{decode, Reject};
use crate::endpoint::Endpoint;
use crate::service::Service;
use crate::wire::*;

/// The user whose data a request of `endpoint` reads, for the endpoints
/// whose reads are recorded.
fn user_read(endpoint: Endpoint, body: &[u8]) -> Result<Option<String>, Reject> {
    Ok(match endpoint {
        Endpoint::GetUserLogs => Some(decode::<GetUserLogsRequest>(body)?.username),
        Endpoint::GetUserDevices => Some(decode::<GetUserDevicesRequest>(body)?.username),
        Endpoint::GetLastLogin => Some(decode::<GetLastLoginRequest>(body)?.username),
        Endpoint::GetUserAlerts => Some(decode::<GetUserAlertsRequest>(body)?.username),
        Endpoint::GetUserSummary => Some(decode::<GetUserSummaryRequest>(body)?.username),
        Endpoint::ExportUser => Some(decode::<ExportUserRequest>(body)?.username),
        Endpoint::GetEvents => {
            Some(decode::<GetEventsRequest>(body)?.username).filter(|u| !u.is_empty())
        }
        _ => None,
    })
}

/// Records the read a request answered, if it is one that is recorded.
pub(super) async fn record(
    endpoint: Endpoint,
    body: &[u8],
    svc: &Service,
    reader: &str,
    now: i64,
) -> Result<(), Reject> {
    if let Some(user) = user_read(endpoint, body)? {
        svc.record_read(&user, reader, endpoint.name(), now)
            .await
            .map_err(Reject::Unrecorded)?;
    }
    Ok(())
}
