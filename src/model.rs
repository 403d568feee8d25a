//! The records that the service, the monitor, the reports and the store
//! share: what is stored (already privacy-reduced), what a detection sees,
//! what an alert and a report row are. Plain data, no I/O; every layer may use
//! it, and it uses only [`crate::wire`] and [`crate::clock`].

use serde::{Deserialize, Serialize};

pub use crate::wire::AlertDetails;
use crate::wire::LOG_TYPE_LOGIN;

/// A device as stored: the ID already sealed by the caller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceRecord {
    pub sealed_id: Vec<u8>,
    pub zone: String,
    pub browser: String,
    pub os: String,
    pub mobile: bool,
    /// Empty unless the deployment keeps user agents.
    pub user_agent: String,
}

/// A log entry as stored; `ts` is already quantized (Unix seconds).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogRecord {
    pub username: String,
    pub ts: i64,
    pub log_type: String,
    pub message: String,
    pub service: String,
    pub login_method: String,
    pub login_authenticator_id: String,
    pub device: Option<DeviceRecord>,
}

impl LogRecord {
    /// What the detection rules see of this entry.
    pub fn event(&self) -> Event {
        let d = self.device.as_ref();
        Event {
            ts: self.ts,
            log_type: self.log_type.clone(),
            service: self.service.clone(),
            has_device: d.is_some_and(|d| !d.sealed_id.is_empty()),
            zone: d.map(|d| d.zone.clone()).unwrap_or_default(),
            browser: d.map(|d| d.browser.clone()).unwrap_or_default(),
            os: d.map(|d| d.os.clone()).unwrap_or_default(),
            mobile: d.is_some_and(|d| d.mobile),
        }
    }

    /// The sealed device ID, or empty when the entry names no device.
    pub fn sealed_id(&self) -> &[u8] {
        self.device
            .as_ref()
            .map(|d| d.sealed_id.as_slice())
            .unwrap_or(&[])
    }

    /// How many logins this entry adds to its device's count.
    pub fn logins(&self) -> i64 {
        i64::from(self.log_type == LOG_TYPE_LOGIN)
    }
}

/// A country the user's entries came from, and the first and last days
/// they did (each kept to the day, then coarsened with age).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountrySeen {
    pub zone: String,
    pub first_seen: i64,
    pub last_seen: i64,
}

/// A row of the user's device list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRow {
    pub device: DeviceRecord,
    pub first_seen: i64,
    pub last_seen: i64,
    pub num_logins: i64,
}

/// A stored log entry with its text borrowed from the row being read; an
/// absent text column reads as "".
pub struct LogRow<'a> {
    pub ts: i64,
    pub log_type: &'a str,
    pub message: &'a str,
    pub service: &'a str,
    pub login_method: &'a str,
    pub login_authenticator_id: &'a str,
    pub device: Option<LogDevice<'a>>,
}

/// The device columns of a [`LogRow`].
pub struct LogDevice<'a> {
    pub sealed_id: &'a [u8],
    pub zone: &'a str,
    pub browser: &'a str,
    pub os: &'a str,
    pub mobile: bool,
    pub user_agent: &'a str,
}

impl LogRow<'_> {
    /// An owned copy, for the user `username`.
    pub fn to_record(&self, username: &str) -> LogRecord {
        LogRecord {
            username: username.to_owned(),
            ts: self.ts,
            log_type: self.log_type.to_owned(),
            message: self.message.to_owned(),
            service: self.service.to_owned(),
            login_method: self.login_method.to_owned(),
            login_authenticator_id: self.login_authenticator_id.to_owned(),
            device: self.device.as_ref().map(|d| DeviceRecord {
                sealed_id: d.sealed_id.to_vec(),
                zone: d.zone.to_owned(),
                browser: d.browser.to_owned(),
                os: d.os.to_owned(),
                mobile: d.mobile,
                user_agent: d.user_agent.to_owned(),
            }),
        }
    }
}

/// How many rows a deletion removed, per table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deleted {
    pub user_logs: u64,
    pub devices: u64,
    pub last_logins: u64,
    pub alerts: u64,
    pub users: u64,
}

impl Deleted {
    pub fn total(&self) -> u64 {
        self.user_logs + self.devices + self.last_logins + self.alerts + self.users
    }

    pub fn add(&mut self, other: Deleted) {
        self.user_logs += other.user_logs;
        self.devices += other.devices;
        self.last_logins += other.last_logins;
        self.alerts += other.alerts;
        self.users += other.users;
    }
}

/// The sinks an alert can be queued for.
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

/// An alert as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAlert {
    pub id: i64,
    pub username: String,
    pub kind: AlertKind,
    pub created: i64,
    pub details: AlertDetails,
}

/// One sink's view of one alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub sink: String,
    pub state: String,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub delivered_at: Option<i64>,
}

/// A delivery whose time has come, with its alert, claimed by one dispatcher.
#[derive(Debug, Clone)]
pub struct Due {
    pub alert: StoredAlert,
    pub sink: String,
    pub attempts: i64,
}

/// What a user's summary is made of, read in one snapshot.
#[derive(Debug, Clone, Default)]
pub struct UserOverview {
    /// The newest `login` entry.
    pub last_login: Option<LogRecord>,
    /// Most recently seen first.
    pub devices: Vec<DeviceRow>,
    /// `(service, ts)`, newest first.
    pub services: Vec<(String, i64)>,
    /// `login_failure` entries since the summary's start.
    pub failures: i64,
    /// Alerts since the summary's start, newest first.
    pub recent_alerts: Vec<(StoredAlert, Vec<Delivery>)>,
}

/// One group of an aggregate: its key, how many events, how many distinct users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRow {
    pub key: String,
    pub count: i64,
    pub users: i64,
}

/// Upper bounds, in seconds, of the session-length buckets; the last bucket
/// is everything longer. Stored times are floored, so a bucket means "about".
pub const SESSION_BUCKETS: [i64; 6] = [3_600, 2 * 3_600, 4 * 3_600, 8 * 3_600, 86_400, 7 * 86_400];

/// Totals of the login → logout pairs in a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SessionStats {
    pub sessions: i64,
    pub users: i64,
    pub median: Option<i64>,
    pub p90: Option<i64>,
}

/// The log columns logins can be grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginColumn {
    Service,
    Zone,
    Browser,
    Os,
}

/// One aggregate over a time range `[from, to)`. No aggregate returns a
/// username, a device ID or a per-user row: each group says how many distinct
/// users it describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Aggregate {
    /// Events of one log type per UTC day (`YYYY-MM-DD`).
    EventsPerDay(String),
    /// Logins grouped by one column, largest groups first.
    LoginsBy(LoginColumn),
    /// Events per log type, largest first.
    EventsByType,
    /// All events: one row, key empty.
    EventsTotal,
    /// Devices first seen per UTC day.
    NewDevicesPerDay,
    /// Alerts raised per kind.
    AlertsByKind,
    /// Login → logout pairs per length bucket: the key is the bucket's index
    /// in [`SESSION_BUCKETS`] (its length means "longer than the last bound").
    SessionBuckets,
    /// How many login → logout pairs, their users, median and 90th percentile.
    SessionStats,
}

/// The answer to one [`Aggregate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Aggregated {
    Groups(Vec<GroupRow>),
    /// `AlertsByKind` on a database that has no alerts.
    NoAlerts,
    /// `(bucket, pairs, users)`.
    Buckets(Vec<(usize, i64, i64)>),
    Sessions(SessionStats),
}

/// The device index's counts, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceIndexStats {
    /// Pairs held, or `None` while the index is being read.
    pub devices: Option<usize>,
    pub rebuilds: u64,
}

/// An API key of one tenant's site. The key itself is never stored: only
/// its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentKey {
    pub id: i64,
    pub tenant: String,
    pub site: String,
    /// When it was made, floored to the day.
    pub created: i64,
    pub disabled: bool,
}

/// Time spent by a user on a computer on a day, at storage granularity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeSpentRow {
    pub username: String,
    pub sealed_device: Vec<u8>,
    /// The day's first second (UTC).
    pub day: i64,
    pub seconds: i64,
    /// The first session's start and the last one's end, floored to the
    /// granularity.
    pub first_start: i64,
    pub last_end: i64,
}

/// One record of a whole database, as exported and imported: stored values
/// (sealed IDs, floored times).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Log(LogRecord),
    Device {
        username: String,
        row: DeviceRow,
    },
    LastLogin {
        username: String,
        service: String,
        ts: i64,
    },
    /// An agent key with the SHA-256 it is known by.
    AgentKey {
        key: AgentKey,
        key_hash: Vec<u8>,
    },
    TimeSpent(TimeSpentRow),
    /// A recorded read of one user's data.
    AccessRead(AccessRead),
}

/// One read of a user's data by a client whose CN matches
/// `transparency.record`: who (the CN), through which endpoint, on which
/// day (UTC, the day's first second). Repeats within a day are one row; no
/// exact time and no request detail is kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessRead {
    pub username: String,
    pub reader: String,
    pub endpoint: String,
    pub day: i64,
}

/// Records written or read, per kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub logs: u64,
    pub devices: u64,
    pub last_logins: u64,
    pub agent_keys: u64,
    pub time_spent: u64,
    pub access_reads: u64,
}

impl Counts {
    pub fn count(&mut self, r: &Record) {
        match r {
            Record::Log(_) => self.logs += 1,
            Record::Device { .. } => self.devices += 1,
            Record::LastLogin { .. } => self.last_logins += 1,
            Record::AgentKey { .. } => self.agent_keys += 1,
            Record::TimeSpent(_) => self.time_spent += 1,
            Record::AccessRead(_) => self.access_reads += 1,
        }
    }
}

/// How much room the data takes, as the backend counts it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StorageSize {
    pub log_entries: u64,
    pub users: u64,
    pub devices: u64,
    /// Every page of the database, free pages excluded.
    pub total_bytes: u64,
    /// Pages of the log table and its indexes.
    pub user_logs_bytes: u64,
    pub total_bytes_per_entry: f64,
    pub user_logs_bytes_per_entry: f64,
}

impl StorageSize {
    /// The counts, with the bytes per log entry derived from them.
    pub fn new(
        log_entries: u64,
        users: u64,
        devices: u64,
        total_bytes: u64,
        user_logs_bytes: u64,
    ) -> StorageSize {
        let per = |b: u64| {
            if log_entries == 0 {
                0.0
            } else {
                b as f64 / log_entries as f64
            }
        };
        StorageSize {
            log_entries,
            users,
            devices,
            total_bytes,
            user_logs_bytes,
            total_bytes_per_entry: per(total_bytes),
            user_logs_bytes_per_entry: per(user_logs_bytes),
        }
    }
}
