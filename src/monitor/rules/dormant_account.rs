//! `dormant_account`: the first login after `dormant_after` (default 180 days)
//! without one raises an alert.

use std::time::Duration;

use crate::monitor::{AlertDraft, AlertKind, Event, History};
use crate::wire::LOG_TYPE_LOGIN;

pub fn check(h: &History, e: &Event, _now: i64, dormant_after: Duration) -> Option<AlertDraft> {
    let previous = h.last_login?;
    let gap = e.ts.saturating_sub(previous);
    (e.log_type == LOG_TYPE_LOGIN && gap >= dormant_after.as_secs() as i64).then(|| {
        let mut a = AlertDraft::new(AlertKind::DormantAccount, e);
        a.details.previous_login = Some(previous);
        a
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::rules::fixtures::*;

    const HALF_YEAR: Duration = Duration::from_secs(180 * 86_400);

    #[test]
    fn a_login_after_the_dormancy_period_alerts() {
        let h = History {
            last_login: Some(NOW - 200 * 86_400),
            ..Default::default()
        };
        let a = check(&h, &login(), NOW, HALF_YEAR).unwrap();
        assert_eq!(a.details.previous_login, Some(NOW - 200 * 86_400));
    }

    #[test]
    fn recent_logins_first_logins_and_other_types_do_not() {
        let recent = History {
            last_login: Some(NOW - 179 * 86_400),
            ..Default::default()
        };
        assert_eq!(check(&recent, &login(), NOW, HALF_YEAR), None);
        assert_eq!(check(&History::default(), &login(), NOW, HALF_YEAR), None);
        let old = History {
            last_login: Some(NOW - 400 * 86_400),
            ..Default::default()
        };
        let change = Event {
            log_type: "password_change".into(),
            ..login()
        };
        assert_eq!(check(&old, &change, NOW, HALF_YEAR), None);
    }
}
