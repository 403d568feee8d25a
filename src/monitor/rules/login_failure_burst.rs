//! `login_failure_burst`: `count` (default 10) `login_failure` entries for a
//! user within the window (default 1 hour) raise one alert per window.

use crate::monitor::{AlertDraft, AlertKind, Event, History};
use crate::wire::LOG_TYPE_LOGIN_FAILURE;

pub fn check(h: &History, e: &Event, _now: i64, count: u32) -> Option<AlertDraft> {
    let failures = h.failures_in_window + 1;
    (e.log_type == LOG_TYPE_LOGIN_FAILURE
        && failures >= u64::from(count)
        && !h.burst_alerted_in_window)
        .then(|| {
            let mut a = AlertDraft::new(AlertKind::LoginFailureBurst, e);
            a.details.failures = Some(failures);
            a
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::rules::fixtures::*;

    fn failure() -> Event {
        Event {
            log_type: "login_failure".into(),
            ..login()
        }
    }

    #[test]
    fn the_tenth_failure_in_the_window_alerts_once() {
        let nine_before = History {
            failures_in_window: 9,
            ..Default::default()
        };
        let a = check(&nine_before, &failure(), NOW, 10).unwrap();
        assert_eq!(a.details.failures, Some(10));
        let eight_before = History {
            failures_in_window: 8,
            ..Default::default()
        };
        assert_eq!(check(&eight_before, &failure(), NOW, 10), None);
        let already = History {
            failures_in_window: 30,
            burst_alerted_in_window: true,
            ..Default::default()
        };
        assert_eq!(check(&already, &failure(), NOW, 10), None);
        assert_eq!(check(&nine_before, &login(), NOW, 10), None);
    }
}
