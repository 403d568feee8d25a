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

pub mod api;
pub mod config;
pub mod dispatch;
pub mod rules;
pub mod sinks;
pub mod text;

use serde::{Deserialize, Serialize};

pub use config::AlertsConfig;

pub const SINK_LOG: &str = "log";
pub const SINK_WEBHOOK: &str = "webhook";
pub const SINK_MAIL_ADMIN: &str = "mail_admin";
pub const SINK_MAIL_USER: &str = "mail_user";

/// What an alert is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    NewDevice,
    NewCountry,
    DormantAccount,
    SecurityChange,
    LoginFailureBurst,
}

impl AlertKind {
    pub const ALL: [AlertKind; 5] = [
        AlertKind::NewDevice,
        AlertKind::NewCountry,
        AlertKind::DormantAccount,
        AlertKind::SecurityChange,
        AlertKind::LoginFailureBurst,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::NewDevice => "new_device",
            AlertKind::NewCountry => "new_country",
            AlertKind::DormantAccount => "dormant_account",
            AlertKind::SecurityChange => "security_change",
            AlertKind::LoginFailureBurst => "login_failure_burst",
        }
    }

    pub fn parse(s: &str) -> Option<AlertKind> {
        AlertKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// The event being logged, privacy-reduced (quantized time, country only).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Event {
    pub ts: i64,
    pub log_type: String,
    pub service: String,
    /// Whether the entry names a device (a non-empty ID).
    pub has_device: bool,
    pub zone: String,
    pub browser: String,
    pub os: String,
    pub mobile: bool,
}

/// What the store knows about the user before the event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    /// The newest earlier `login`, if any.
    pub last_login: Option<i64>,
    /// The event's device is already in the user's device list.
    pub device_known: bool,
    /// The event's country appeared in an earlier entry of the user.
    pub country_known: bool,
    /// Earlier `login_failure` entries inside the burst window.
    pub failures_in_window: u64,
    /// A burst alert was already raised inside the window.
    pub burst_alerted_in_window: bool,
}

pub use crate::wire::AlertDetails;

/// An alert a rule raised, before it is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertDraft {
    pub kind: AlertKind,
    pub ts: i64,
    pub details: AlertDetails,
}

impl AlertDraft {
    pub fn new(kind: AlertKind, e: &Event) -> AlertDraft {
        AlertDraft {
            kind,
            ts: e.ts,
            details: AlertDetails {
                log_type: e.log_type.clone(),
                service: e.service.clone(),
                country: e.zone.clone(),
                browser: e.browser.clone(),
                os: e.os.clone(),
                mobile: e.mobile,
                ..Default::default()
            },
        }
    }
}

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
