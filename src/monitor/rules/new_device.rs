//! `new_device`: a login from a device never seen for this user raises an
//! alert, except on the user's very first login.

use crate::monitor::{AlertDraft, AlertKind, Event, History};
use crate::wire::LOG_TYPE_LOGIN;

pub fn check(h: &History, e: &Event, _now: i64) -> Option<AlertDraft> {
    let first_login = h.last_login.is_none();
    (e.log_type == LOG_TYPE_LOGIN && e.has_device && !h.device_known && !first_login)
        .then(|| AlertDraft::new(AlertKind::NewDevice, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::rules::fixtures::*;

    fn seen_before() -> History {
        History {
            last_login: Some(NOW - 3600),
            ..Default::default()
        }
    }

    #[test]
    fn unknown_device_on_a_later_login_alerts() {
        let a = check(&seen_before(), &login(), NOW).unwrap();
        assert_eq!(a.kind, AlertKind::NewDevice);
        assert_eq!(a.details.browser, "Firefox");
    }

    #[test]
    fn known_device_first_login_other_types_and_no_device_do_not() {
        let known = History {
            device_known: true,
            ..seen_before()
        };
        assert_eq!(check(&known, &login(), NOW), None);
        assert_eq!(
            check(&History::default(), &login(), NOW),
            None,
            "first login"
        );
        let logout = Event {
            log_type: "logout".into(),
            ..login()
        };
        assert_eq!(check(&seen_before(), &logout, NOW), None);
        let no_device = Event {
            has_device: false,
            ..login()
        };
        assert_eq!(check(&seen_before(), &no_device, NOW), None);
    }
}
