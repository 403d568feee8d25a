//! Storage: one interface in domain terms, and the backends behind it.
//!
//! [`Store`] is a closed set of backends, each in a room of its own
//! ([`sqlite`]); nothing outside those rooms names a backend's types or
//! speaks SQL. Every method is one unit of work: a write is committed (and
//! durable) when it answers `Ok`, and a failed write changes nothing. The
//! records come from [`crate::model`], already privacy-reduced: no method sees
//! an address, a raw user agent, a device ID in clear or an exact time.
//!
//! The whole-database streams (export, import, bulk load, backup, size) are
//! functions of the database's configuration rather than methods, as they
//! run from the command line with or without a server on the database.
//!
//! The conformance suite (`store/conformance.rs`) states the interface's
//! behaviour once, as functions of a `Store`, and runs on every backend.
//!
//! This file only dispatches. What the backends share lies below them, in
//! leaves they import from: [`types`] (errors, the detections a write runs,
//! the administrator's filter), [`agents`] (what agents' events carry) and
//! `pairs` (the device indexes' keys). A backend never names the facade
//! (a test, `layers::backends_import_only_downward`, holds it).

pub mod agents;
#[cfg(test)]
pub mod conformance;
pub(crate) mod pairs;
pub mod postgres;
pub mod sqlite;
pub mod types;

use std::path::Path;
use std::sync::Arc;

use crate::config::DbConfig;
use crate::model::{
    AccessRead, Aggregate, Aggregated, CountrySeen, Counts, Deleted, Delivery, DeviceIndexStats,
    DeviceRow, Due, LogRecord, LogRow, Record, StorageSize, StoredAlert, UserOverview,
};

pub use agents::{AgentEvent, AgentKey, AgentOutcome, SessionStep, TimeSpentRow};
pub use sqlite::configure_sqlite;
pub use types::{BulkError, Detections, EventFilter, Rules, StoreError};

/// Handle to the database; cheap to clone.
#[derive(Clone)]
pub enum Store {
    Sqlite(sqlite::SqliteStore),
    Postgres(postgres::PgStore),
}

/// Runs `$e` with `$s` bound to the backend.
macro_rules! backend {
    ($self:expr, $s:ident => $e:expr) => {
        match $self {
            Store::Sqlite($s) => $e,
            Store::Postgres($s) => $e,
        }
    };
}

impl Store {
    /// Opens (creating if needed) and migrates the database, and starts what
    /// the backend runs beside it.
    pub async fn open(cfg: &DbConfig) -> Result<Store, StoreError> {
        match &cfg.postgres {
            Some(pg) => Ok(Store::Postgres(
                postgres::PgStore::open(pg, cfg.device_index).await?,
            )),
            None => Ok(Store::Sqlite(sqlite::SqliteStore::open(cfg)?)),
        }
    }

    /// Stops accepting work, finishes what is queued and releases the database.
    pub fn close(&self) {
        backend!(self, s => s.close())
    }

    /// Where the data lives, for the operator's log.
    pub fn location(&self) -> &Path {
        backend!(self, s => s.path())
    }

    /// Stores a log entry and, when `detect` is given, runs the detections on
    /// the user's history before it and queues the alerts they raise, all in
    /// one transaction: an acknowledged entry always has its alerts queued.
    /// Returns how many alerts were raised. A user's first device and first
    /// country are known from then on.
    pub async fn record_log(
        &self,
        rec: LogRecord,
        detect: Option<Detections>,
    ) -> Result<usize, StoreError> {
        backend!(self, s => s.record_log(rec, detect).await)
    }

    /// Stores an agent's event unless its `dedup` hash is already stored (a
    /// retry): the hash, the log entry with its detections and alerts, and
    /// the session step, in one transaction.
    pub async fn record_agent_event(
        &self,
        ev: AgentEvent,
        detect: Detections,
    ) -> Result<AgentOutcome, StoreError> {
        backend!(self, s => s.record_agent_event(ev, detect).await)
    }

    /// The newest log entries across users that pass `filter`, newest first.
    pub async fn recent_logs(&self, filter: EventFilter) -> Result<Vec<LogRecord>, StoreError> {
        backend!(self, s => s.recent_logs(filter).await)
    }

    /// The newest alerts across users since `since`, with their deliveries;
    /// with `state`, only alerts with a delivery in that state; with
    /// `user_prefix` (a tenant's `T/`), only its users' alerts.
    pub async fn recent_alerts(
        &self,
        since: i64,
        state: String,
        user_prefix: String,
        limit: i64,
    ) -> Result<Vec<(StoredAlert, Vec<Delivery>)>, StoreError> {
        backend!(self, s => s.recent_alerts(since, state, user_prefix, limit).await)
    }

    /// Makes every undelivered delivery of an alert due now (a failed one
    /// pending again); how many.
    pub async fn retry_alert(&self, alert_id: i64) -> Result<u64, StoreError> {
        backend!(self, s => s.retry_alert(alert_id).await)
    }

    /// Stores a new agent API key (by its hash).
    pub async fn agent_key_add(
        &self,
        tenant: String,
        site: String,
        key_hash: [u8; 32],
        created: i64,
    ) -> Result<AgentKey, StoreError> {
        backend!(self, s => s.agent_key_add(tenant, site, key_hash, created).await)
    }

    /// Every agent key, oldest first.
    pub async fn agent_keys(&self) -> Result<Vec<AgentKey>, StoreError> {
        backend!(self, s => s.agent_keys().await)
    }

    /// Disables a key for good; false when there is no such key.
    pub async fn agent_key_disable(&self, id: i64) -> Result<bool, StoreError> {
        backend!(self, s => s.agent_key_disable(id).await)
    }

    /// The key with this hash, disabled or not.
    pub async fn agent_key_by_hash(
        &self,
        key_hash: [u8; 32],
    ) -> Result<Option<AgentKey>, StoreError> {
        backend!(self, s => s.agent_key_by_hash(key_hash).await)
    }

    /// Deletes retry hashes and open sessions that expired by `now`.
    pub async fn expire_agent_state(&self, now: i64) -> Result<u64, StoreError> {
        backend!(self, s => s.expire_agent_state(now).await)
    }

    /// Time spent on days in `[from_day, to_day)` by users whose names start
    /// with `user_prefix` (a tenant's `T/`), by day, user and computer.
    pub async fn time_spent(
        &self,
        user_prefix: String,
        from_day: i64,
        to_day: i64,
    ) -> Result<Vec<TimeSpentRow>, StoreError> {
        backend!(self, s => s.time_spent(user_prefix, from_day, to_day).await)
    }

    /// Records a login to `service`; an older time never replaces a newer one.
    pub async fn set_last_login(
        &self,
        user: String,
        service: String,
        ts: i64,
    ) -> Result<(), StoreError> {
        backend!(self, s => s.set_last_login(user, service, ts).await)
    }

    /// Deletes every row of the user, and makes the deleted rows unreadable
    /// as far as the backend can.
    pub async fn forget_user(&self, user: String) -> Result<Deleted, StoreError> {
        backend!(self, s => s.forget_user(user).await)
    }

    /// Deletes log entries, alerts and recorded reads older than
    /// `logs_before`, devices and countries last seen before
    /// `devices_before`, then users left with no rows, in short steps.
    pub async fn prune(
        &self,
        logs_before: i64,
        devices_before: i64,
    ) -> Result<Deleted, StoreError> {
        let d = backend!(self, s => s.prune(logs_before, devices_before).await)?;
        // The record of reads ages out with the logs, by its day.
        backend!(self, s => s.prune_access(logs_before).await)?;
        Ok(d)
    }

    /// Floors stored times (log entries, devices' first and last seen, time
    /// spent) before each cut to its granularity, in short steps; `cuts`
    /// finest first, each granularity a multiple of the one before.
    pub async fn decay(&self, cuts: Vec<types::DecayCut>) -> Result<types::Coarsened, StoreError> {
        backend!(self, s => s.decay(cuts).await)
    }

    /// Folds `f` over the user's entries, newest first, at most `limit` at or
    /// after `since` (of `log_type` only, when given), without an owned copy
    /// of each: for answers written straight from the rows.
    pub async fn fold_logs<T, F>(
        &self,
        user: String,
        since: i64,
        log_type: Option<String>,
        limit: i64,
        init: T,
        f: F,
    ) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnMut(&mut T, &LogRow<'_>) -> Result<(), StoreError> + Send + 'static,
    {
        backend!(self, s => s.fold_logs(user, since, log_type, limit, init, f).await)
    }

    /// The user's entries, newest first: [`Store::fold_logs`] into records.
    pub async fn user_logs(
        &self,
        user: String,
        since: i64,
        limit: i64,
    ) -> Result<Vec<LogRecord>, StoreError> {
        let name = user.clone();
        self.fold_logs(user, since, None, limit, Vec::new(), move |out, row| {
            out.push(row.to_record(&name));
            Ok(())
        })
        .await
    }

    /// The user's devices, most recently seen first.
    pub async fn user_devices(&self, user: String) -> Result<Vec<DeviceRow>, StoreError> {
        backend!(self, s => s.user_devices(user).await)
    }

    /// The countries the user's entries came from, first seen first.
    pub async fn user_countries(&self, user: String) -> Result<Vec<CountrySeen>, StoreError> {
        backend!(self, s => s.user_countries(user).await)
    }

    /// Whether the user has this (sealed) device.
    pub async fn device_known(&self, user: String, sealed_id: Vec<u8>) -> Result<bool, StoreError> {
        backend!(self, s => s.device_known(user, sealed_id).await)
    }

    /// `(service, ts)` for every service of the user (or only `service`),
    /// newest first.
    pub async fn last_logins(
        &self,
        user: String,
        service: Option<String>,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        backend!(self, s => s.last_logins(user, service).await)
    }

    /// The names, in request order and without duplicates, with no last login
    /// on any service at or after `cutoff`; names never seen are unused. One
    /// set-based query, not one lookup per name.
    pub async fn unused_accounts(
        &self,
        names: Vec<String>,
        cutoff: i64,
    ) -> Result<Vec<String>, StoreError> {
        backend!(self, s => s.unused_accounts(names, cutoff).await)
    }

    /// The user's alerts since `since`, newest first, with their deliveries.
    pub async fn user_alerts(
        &self,
        user: String,
        since: i64,
        limit: i64,
    ) -> Result<Vec<(StoredAlert, Vec<Delivery>)>, StoreError> {
        backend!(self, s => s.user_alerts(user, since, limit).await)
    }

    /// What the user's summary is made of, from one snapshot.
    pub async fn user_overview(
        &self,
        user: String,
        since: i64,
        alerts_limit: i64,
    ) -> Result<UserOverview, StoreError> {
        backend!(self, s => s.user_overview(user, since, alerts_limit).await)
    }

    /// Claims up to `limit` pending deliveries due at `now`, oldest first, for
    /// `lease` seconds: none is handed out again before the lease ends unless
    /// its outcome is recorded, and one whose outcome never is (the claimer
    /// died) is due again after it. At least once, per sink.
    pub async fn claim_due(
        &self,
        now: i64,
        lease: i64,
        limit: i64,
    ) -> Result<Vec<Due>, StoreError> {
        backend!(self, s => s.claim_due(now, lease, limit).await)
    }

    /// Gives back a claimed delivery whose outcome is unknown (its claimer is
    /// stopping), due at `due`; its attempts stay as they were.
    pub async fn release(&self, alert_id: i64, sink: String, due: i64) -> Result<(), StoreError> {
        backend!(self, s => s.release(alert_id, sink, due).await)
    }

    /// When the next pending delivery is due, if any.
    pub async fn next_due(&self) -> Result<Option<i64>, StoreError> {
        backend!(self, s => s.next_due().await)
    }

    /// Records deliveries, (alert ID, sink) each, in one transaction;
    /// `delivered_at` is floored by the caller.
    pub async fn mark_delivered(
        &self,
        done: Vec<(i64, String)>,
        delivered_at: i64,
    ) -> Result<(), StoreError> {
        backend!(self, s => s.mark_delivered(done, delivered_at).await)
    }

    /// Records a failed attempt: due again at `next` or, when `None`, failed
    /// for good (the alert and its error stay visible).
    pub async fn mark_failed(
        &self,
        alert_id: i64,
        sink: String,
        error: String,
        next: Option<i64>,
    ) -> Result<(), StoreError> {
        backend!(self, s => s.mark_failed(alert_id, sink, error, next).await)
    }

    /// Answers each aggregate over `[from, to)`, in order, from one snapshot.
    pub async fn aggregate(
        &self,
        queries: Vec<Aggregate>,
        from: i64,
        to: i64,
    ) -> Result<Vec<Aggregated>, StoreError> {
        backend!(self, s => s.aggregate(queries, from, to).await)
    }

    /// As [`Store::aggregate`], over the users whose names start with
    /// `user_prefix` (a tenant's `T/`) only, when it is not empty.
    pub async fn aggregate_within(
        &self,
        queries: Vec<Aggregate>,
        from: i64,
        to: i64,
        user_prefix: String,
    ) -> Result<Vec<Aggregated>, StoreError> {
        backend!(self, s => s.aggregate_within(queries, from, to, user_prefix).await)
    }

    /// Records reads of users' data (access transparency), in one
    /// transaction; a repeat of a stored read (same user, day, reader and
    /// endpoint) changes nothing.
    pub async fn record_access(&self, reads: Arc<Vec<AccessRead>>) -> Result<(), StoreError> {
        backend!(self, s => s.record_access(reads).await)
    }

    /// The recorded reads of the user's data on days at or after `since_day`,
    /// newest day first (then by reader and endpoint).
    pub async fn user_access(
        &self,
        user: String,
        since_day: i64,
    ) -> Result<Vec<AccessRead>, StoreError> {
        backend!(self, s => s.user_access(user, since_day).await)
    }

    /// Deletes the recorded reads of the user's data; how many.
    pub async fn forget_access(&self, user: String) -> Result<u64, StoreError> {
        backend!(self, s => s.forget_access(user).await)
    }

    /// Deletes recorded reads of days before `before_day`, in short steps;
    /// how many.
    pub async fn prune_access(&self, before_day: i64) -> Result<u64, StoreError> {
        backend!(self, s => s.prune_access(before_day).await)
    }

    /// The in-memory device index's counts, when the backend keeps one.
    pub fn device_index_stats(&self) -> Option<DeviceIndexStats> {
        backend!(self, s => s.device_index_stats())
    }
}

/// Streams every stored record of the database to `out`: log entries by user
/// name, time and arrival; devices by user name; last logins by user name and
/// service. One snapshot; sealed IDs as stored.
pub fn export(
    cfg: &DbConfig,
    out: &mut dyn FnMut(Record) -> Result<(), BulkError>,
) -> Result<Counts, BulkError> {
    match &cfg.postgres {
        Some(pg) => postgres::bulk::export(pg, out),
        None => sqlite::export::export(&cfg.path, out),
    }
}

/// Reads records into an empty database (created and migrated if needed) in
/// one transaction: all of them or, on any error, nothing. Records are stored
/// as given: the device list and last logins come from their own records.
pub fn import(
    cfg: &DbConfig,
    next: &mut dyn FnMut() -> Option<Result<Record, BulkError>>,
) -> Result<Counts, BulkError> {
    match &cfg.postgres {
        Some(pg) => postgres::bulk::import(pg, next),
        None => sqlite::export::import(&cfg.path, next),
    }
}

/// Appends log entries (stored as [`Store::record_log`] stores them, without
/// detections) and last logins, in large transactions: for filling a
/// database fast.
pub fn bulk_load(
    cfg: &DbConfig,
    records: &mut dyn Iterator<Item = Record>,
) -> Result<Counts, BulkError> {
    match &cfg.postgres {
        Some(pg) => postgres::bulk::bulk_load(pg, records),
        None => sqlite::export::bulk_load(&cfg.path, records),
    }
}

/// A consistent copy of the live database into `dest`, readable by the owner
/// only; on PostgreSQL, an error saying how to use `pg_dump` instead.
pub fn backup(cfg: &DbConfig, dest: &Path) -> Result<(), BulkError> {
    match &cfg.postgres {
        Some(pg) => postgres::bulk::backup(pg),
        None => sqlite::export::backup(&cfg.path, dest),
    }
}

/// How much room the data takes.
pub fn storage_size(cfg: &DbConfig) -> Result<StorageSize, BulkError> {
    match &cfg.postgres {
        Some(pg) => postgres::bulk::storage_size(pg),
        None => sqlite::export::storage_size(&cfg.path),
    }
}

/// Checks what the configuration says of the database without opening it:
/// `(key, problem)` for each problem found.
pub fn check_config(cfg: &DbConfig) -> Vec<(&'static str, String)> {
    match &cfg.postgres {
        Some(pg) => postgres::check(pg)
            .err()
            .map(|e| ("db_uri", e))
            .into_iter()
            .collect(),
        None => Vec::new(),
    }
}
