//! `security_change`: every `password_change`, `password_reset`,
//! `otp_enabled` and `otp_disabled` raises an alert.

use crate::monitor::{AlertDraft, AlertKind, Event, History};
use crate::wire::{
    LOG_TYPE_OTP_DISABLED, LOG_TYPE_OTP_ENABLED, LOG_TYPE_PASSWORD_CHANGE, LOG_TYPE_PASSWORD_RESET,
};

pub fn check(_h: &History, e: &Event, _now: i64) -> Option<AlertDraft> {
    [
        LOG_TYPE_PASSWORD_CHANGE,
        LOG_TYPE_PASSWORD_RESET,
        LOG_TYPE_OTP_ENABLED,
        LOG_TYPE_OTP_DISABLED,
    ]
    .contains(&e.log_type.as_str())
    .then(|| AlertDraft::new(AlertKind::SecurityChange, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::rules::fixtures::*;

    #[test]
    fn security_changes_alert_and_nothing_else_does() {
        for t in [
            "password_change",
            "password_reset",
            "otp_enabled",
            "otp_disabled",
        ] {
            let e = Event {
                log_type: t.into(),
                ..login()
            };
            let a = check(&History::default(), &e, NOW).unwrap();
            assert_eq!(a.details.log_type, t);
        }
        for t in ["login", "logout", "login_failure"] {
            let e = Event {
                log_type: t.into(),
                ..login()
            };
            assert_eq!(check(&History::default(), &e, NOW), None, "{t}");
        }
    }
}
