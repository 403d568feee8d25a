//! The types both backends and the facade share: what went wrong, what a
//! log write needs to run the detections, which entries an administrator
//! browses. A leaf of the store: the backends import from here, never from
//! the facade in `store/mod.rs`, which imports the backends.

use std::sync::Arc;

use crate::metrics::StorageFailure;
use crate::model::{AlertDraft, Event, History};

/// What went wrong in storage, in a form that can be sent to every request of a
/// failed group commit.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("storage is full")]
    Full,
    #[error("storage is read-only")]
    ReadOnly,
    #[error("storage is busy")]
    Busy,
    /// The OS failed or refused a read or write, for a cause other than a
    /// full disk or a read-only file, which the writer reports as such.
    #[error("storage I/O error: {0}")]
    Io(String),
    #[error("database schema version {found} is newer than this build supports ({supported})")]
    Downgrade { found: i64, supported: i64 },
    #[error("storage is shut down")]
    Closed,
    #[error("storage error: {0}")]
    Other(String),
}

impl StoreError {
    /// True when the cause lies outside the request (disk, locks), so the
    /// client may retry later.
    pub fn is_unavailable(&self) -> bool {
        !matches!(self, StoreError::Downgrade { .. })
    }

    /// The label it is counted under in `/metrics`.
    pub fn metric(&self) -> StorageFailure {
        match self {
            StoreError::Full => StorageFailure::Full,
            StoreError::ReadOnly => StorageFailure::ReadOnly,
            StoreError::Busy => StorageFailure::Busy,
            StoreError::Io(_) => StorageFailure::Io,
            _ => StorageFailure::Other,
        }
    }
}

/// What went wrong in a whole-database stream.
#[derive(Debug, thiserror::Error)]
pub enum BulkError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("no database at {0}")]
    Missing(String),
    #[error("the database is not empty: import only into a new or empty database")]
    NotEmpty,
    /// A record that is already in the database (same key).
    #[error("duplicate record")]
    Duplicate,
    /// The caller's source of records stopped the stream; it holds the reason.
    #[error("stopped by its source")]
    Stopped,
    #[error("{0}")]
    Unsupported(String),
}

/// The detection rules, run inside the transaction that stores a log entry,
/// on what the store knew of the user before it.
/// They may run more than once: a backend retries a transaction that lost a
/// race with another writer.
pub type Rules = Box<dyn Fn(&History, &Event) -> Vec<AlertDraft> + Send + Sync>;

/// What [`Store::record_log`](super::Store::record_log) needs to run the detections.
pub struct Detections {
    /// How far back failures count towards a burst (seconds).
    pub burst_window: i64,
    /// The sinks every raised alert is queued for.
    pub sinks: Arc<Vec<&'static str>>,
    pub rules: Rules,
}

/// Which log entries an administrator browses across users.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// Entries with `from <= ts < to`.
    pub from: i64,
    pub to: i64,
    /// Only this user, when not empty.
    pub username: String,
    /// Only users whose names start with this (a tenant's `T/`), when not empty.
    pub user_prefix: String,
    /// Only this log type, when not empty.
    pub log_type: String,
    pub limit: i64,
}

/// How many rows a coarsening run (`privacy.decay`) changed, per table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Coarsened {
    pub user_logs: u64,
    pub devices: u64,
    /// Time-spent rows floored to a coarser day (merged rows count once each).
    pub time_spent: u64,
    pub user_countries: u64,
}

impl Coarsened {
    pub fn total(&self) -> u64 {
        self.user_logs + self.devices + self.time_spent + self.user_countries
    }

    pub fn add(&mut self, other: Coarsened) {
        self.user_logs += other.user_logs;
        self.devices += other.devices;
        self.time_spent += other.time_spent;
        self.user_countries += other.user_countries;
    }
}

/// One step of coarsening as of a run: stored times before `before` are
/// floored to a multiple of `granularity` (seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecayCut {
    pub before: i64,
    pub granularity: i64,
}
