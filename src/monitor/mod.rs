//! The login monitor: detections on the stored history, alerts in a durable
//! outbox, delivery to sinks, and plain-language summaries.
//!
//! - [`rules`]: one module per detection, each a pure function of (the user's
//!   history, the event, now), evaluated inside the transaction of the
//!   `add_log` that triggers it, so an acknowledged event never loses its alert.
//! - [`dispatch`]: delivers every queued alert at least once to each sink, with
//!   retries and exponential back-off that survive restarts.
//! - [`sinks`]: the server log, a signed webhook, e-mail over SMTP.
//! - [`text`]: the sentences shown to people.

pub mod dispatch;
pub mod rules;
pub mod sinks;
pub mod text;
pub mod throttle;

pub use crate::config::AlertsConfig;

pub use crate::model::{
    AlertDetails, AlertDraft, AlertKind, Event, History, SINK_LOG, SINK_MAIL_ADMIN, SINK_MAIL_USER,
    SINK_WEBHOOK,
};

/// Runs every enabled rule.
pub fn evaluate(cfg: &AlertsConfig, h: &History, e: &Event, now: i64) -> Vec<AlertDraft> {
    AlertKind::ALL
        .into_iter()
        .filter(|k| cfg.enabled(*k))
        .filter_map(|k| match k {
            AlertKind::NewDevice => rules::new_device::check(h, e, now),
            AlertKind::NewCountry => rules::new_country::check(h, e, now),
            AlertKind::DormantAccount => {
                rules::dormant_account::check(h, e, now, cfg.dormant_after)
            }
            AlertKind::SecurityChange => rules::security_change::check(h, e, now),
            AlertKind::LoginFailureBurst => {
                rules::login_failure_burst::check(h, e, now, cfg.burst_count)
            }
        })
        .collect()
}
