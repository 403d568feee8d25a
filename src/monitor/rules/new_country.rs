//! `new_country`: a login from a country never seen for this user raises an
//! alert, except on the user's very first login; an unknown country is not new.

use crate::monitor::{AlertDraft, AlertKind, Event, History};
use crate::wire::LOG_TYPE_LOGIN;

pub fn check(h: &History, e: &Event, _now: i64) -> Option<AlertDraft> {
    let first_login = h.last_login.is_none();
    (e.log_type == LOG_TYPE_LOGIN && !e.zone.is_empty() && !h.country_known && !first_login)
        .then(|| AlertDraft::new(AlertKind::NewCountry, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::rules::fixtures::*;

    #[test]
    fn a_new_country_alerts_once_known_it_does_not() {
        let h = History {
            last_login: Some(NOW - 86_400),
            ..Default::default()
        };
        let a = check(&h, &login(), NOW).unwrap();
        assert_eq!(
            (a.kind, a.details.country.as_str()),
            (AlertKind::NewCountry, "IT")
        );
        let known = History {
            country_known: true,
            ..h.clone()
        };
        assert_eq!(check(&known, &login(), NOW), None);
        assert_eq!(
            check(&History::default(), &login(), NOW),
            None,
            "first login"
        );
        let nowhere = Event {
            zone: String::new(),
            ..login()
        };
        assert_eq!(check(&h, &nowhere, NOW), None);
    }
}
