//! The storage interface on SQLite: each domain operation as one job for the
//! writer (inside its group transaction) or for a reader.

use super::{alerts, lock, ops, reports, SqliteStore};
use crate::model::{
    Aggregate, Aggregated, CountrySeen, Deleted, Delivery, DeviceIndexStats, DeviceRow, Due,
    LogRecord, LogRow, StoredAlert, UserOverview,
};
use crate::store::types::{Detections, StoreError};
use crate::wire::{LOG_TYPE_LOGIN, LOG_TYPE_LOGIN_FAILURE};

/// Stores a log entry of user `uid` and, with `detect`, runs the detections
/// on the history before it and queues the alerts they raise. Returns how
/// many were raised.
pub(super) fn record_for(
    c: &rusqlite::Connection,
    uid: i64,
    rec: &LogRecord,
    detect: Option<Detections>,
) -> Result<usize, StoreError> {
    let Some(d) = detect else {
        alerts::record_log(c, uid, rec, false)?;
        return Ok(0);
    };
    let event = rec.event();
    let (history, country_current) =
        alerts::history(c, uid, &event, rec.sealed_id(), d.burst_window)?;
    alerts::record_log(c, uid, rec, country_current)?;
    let drafts = (d.rules)(&history, &event);
    for a in &drafts {
        alerts::insert_alert(c, uid, a, &d.sinks)?;
    }
    Ok(drafts.len())
}

impl SqliteStore {
    pub async fn recent_logs(
        &self,
        filter: crate::store::types::EventFilter,
    ) -> Result<Vec<LogRecord>, StoreError> {
        self.read(move |c| ops::recent_logs(c, &filter)).await
    }

    pub async fn recent_alerts(
        &self,
        since: i64,
        state: String,
        user_prefix: String,
        limit: i64,
    ) -> Result<Vec<(StoredAlert, Vec<Delivery>)>, StoreError> {
        self.read(move |c| alerts::recent_alerts(c, since, &state, &user_prefix, limit))
            .await
    }

    pub async fn retry_alert(&self, alert_id: i64) -> Result<u64, StoreError> {
        self.write(move |c| alerts::retry_alert(c, alert_id)).await
    }
}

/// Rows deleted per table in one retention transaction.
const PRUNE_BATCH: i64 = 500;

impl SqliteStore {
    pub async fn record_log(
        &self,
        rec: LogRecord,
        detect: Option<Detections>,
    ) -> Result<usize, StoreError> {
        self.write(move |c| {
            let uid = ops::ensure_user(c, &rec.username)?;
            record_for(c, uid, &rec, detect)
        })
        .await
    }

    pub async fn set_last_login(
        &self,
        user: String,
        service: String,
        ts: i64,
    ) -> Result<(), StoreError> {
        self.write(move |c| ops::set_last_login(c, &user, &service, ts))
            .await
    }

    pub async fn forget_user(&self, user: String) -> Result<Deleted, StoreError> {
        let d = self.write(move |c| ops::forget_user(c, &user)).await?;
        if d.total() > 0 {
            // Deletion is deletion: no copy of the old pages may stay in the WAL.
            let path = self.path().to_owned();
            let truncated = tokio::task::spawn_blocking(move || ops::truncate_wal(&path)).await;
            if !matches!(truncated, Ok(Ok(()))) {
                tracing::warn!(
                    "could not truncate the WAL after an erasure; it will be checkpointed later"
                );
            }
        }
        Ok(d)
    }

    /// Retention in small steps through the writer, so that logins queued
    /// behind a step wait for one short transaction at most: expired devices
    /// and countries are found by a scan on a reader, then deleted by key.
    pub async fn prune(
        &self,
        logs_before: i64,
        devices_before: i64,
    ) -> Result<Deleted, StoreError> {
        let mut total = Deleted::default();
        loop {
            let expired = self
                .read(move |c| {
                    Ok(ops::Expired {
                        devices: ops::expired_devices(c, devices_before, PRUNE_BATCH)?,
                        countries: ops::expired_countries(c, devices_before, PRUNE_BATCH)?,
                    })
                })
                .await?;
            let more_expired = expired.devices.len() as i64 == PRUNE_BATCH
                || expired.countries.len() as i64 == PRUNE_BATCH;
            let step = self
                .write(move |c| {
                    ops::prune_step(c, logs_before, devices_before, PRUNE_BATCH, &expired)
                })
                .await?;
            total.add(step);
            if step.user_logs < PRUNE_BATCH as u64
                && step.alerts < PRUNE_BATCH as u64
                && !more_expired
            {
                return Ok(total);
            }
            // Let queued requests in between batches.
            tokio::task::yield_now().await;
        }
    }

    pub async fn fold_logs<T, F>(
        &self,
        user: String,
        since: i64,
        log_type: Option<String>,
        limit: i64,
        init: T,
        mut f: F,
    ) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnMut(&mut T, &LogRow<'_>) -> Result<(), StoreError> + Send + 'static,
    {
        self.read(move |c| {
            let mut acc = init;
            ops::for_each_log(c, &user, since, log_type.as_deref(), limit, |row| {
                f(&mut acc, row)
            })?;
            Ok(acc)
        })
        .await
    }

    pub async fn user_devices(&self, user: String) -> Result<Vec<DeviceRow>, StoreError> {
        self.read(move |c| ops::user_devices(c, &user)).await
    }

    pub async fn user_countries(&self, user: String) -> Result<Vec<CountrySeen>, StoreError> {
        self.read(move |c| ops::user_countries(c, &user)).await
    }

    pub async fn device_known(&self, user: String, sealed_id: Vec<u8>) -> Result<bool, StoreError> {
        if let Some(seen) = self.known_device(&user, &sealed_id) {
            return Ok(seen);
        }
        self.read(move |c| ops::device_known(c, &user, &sealed_id))
            .await
    }

    pub async fn last_logins(
        &self,
        user: String,
        service: Option<String>,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        self.read(move |c| ops::last_logins(c, &user, service.as_deref()))
            .await
    }

    pub async fn unused_accounts(
        &self,
        names: Vec<String>,
        cutoff: i64,
    ) -> Result<Vec<String>, StoreError> {
        self.read(move |c| ops::unused_accounts(c, &names, cutoff))
            .await
    }

    pub async fn user_alerts(
        &self,
        user: String,
        since: i64,
        limit: i64,
    ) -> Result<Vec<(StoredAlert, Vec<Delivery>)>, StoreError> {
        self.read(move |c| alerts::user_alerts(c, &user, since, limit))
            .await
    }

    pub async fn user_overview(
        &self,
        user: String,
        since: i64,
        alerts_limit: i64,
    ) -> Result<UserOverview, StoreError> {
        self.read(move |c| {
            Ok(UserOverview {
                last_login: ops::user_logs_of_type(c, &user, LOG_TYPE_LOGIN, 1)?
                    .into_iter()
                    .next(),
                devices: ops::user_devices(c, &user)?,
                services: ops::last_logins(c, &user, None)?,
                failures: alerts::count_of_type(c, &user, LOG_TYPE_LOGIN_FAILURE, since)?,
                recent_alerts: alerts::user_alerts(c, &user, since, alerts_limit)?,
            })
        })
        .await
    }

    /// The due deliveries are read on a reader, as many more as are leased
    /// (those are skipped), and leased in memory.
    pub async fn claim_due(
        &self,
        now: i64,
        lease: i64,
        limit: i64,
    ) -> Result<Vec<Due>, StoreError> {
        let leased = {
            let mut leases = lock(&self.inner.leases);
            leases.retain(|_, until| *until > now);
            leases.len() as i64
        };
        let due = self
            .read(move |c| alerts::due(c, now, limit.saturating_add(leased)))
            .await?;
        let mut leases = lock(&self.inner.leases);
        let until = now.saturating_add(lease);
        Ok(due
            .into_iter()
            .filter(|d| {
                let key = (d.alert.id, d.sink.clone());
                match leases.get(&key) {
                    Some(held) if *held > now => false,
                    _ => {
                        leases.insert(key, until);
                        true
                    }
                }
            })
            .take(limit.max(0) as usize)
            .collect())
    }

    fn unlease(&self, alert_id: i64, sink: &str) {
        lock(&self.inner.leases).remove(&(alert_id, sink.to_owned()));
    }

    pub async fn release(&self, alert_id: i64, sink: String, due: i64) -> Result<(), StoreError> {
        self.unlease(alert_id, &sink);
        self.write(move |c| alerts::release(c, alert_id, &sink, due))
            .await
    }

    pub async fn next_due(&self) -> Result<Option<i64>, StoreError> {
        self.read(alerts::next_due).await
    }

    pub async fn mark_delivered(
        &self,
        done: Vec<(i64, String)>,
        delivered_at: i64,
    ) -> Result<(), StoreError> {
        for (alert_id, sink) in &done {
            self.unlease(*alert_id, sink);
        }
        self.write(move |c| {
            for (alert_id, sink) in &done {
                alerts::mark_delivered(c, *alert_id, sink, delivered_at)?;
            }
            Ok(())
        })
        .await
    }

    pub async fn mark_failed(
        &self,
        alert_id: i64,
        sink: String,
        error: String,
        next: Option<i64>,
    ) -> Result<(), StoreError> {
        self.unlease(alert_id, &sink);
        self.write(move |c| alerts::mark_failed(c, alert_id, &sink, &error, next))
            .await
    }

    pub async fn aggregate(
        &self,
        queries: Vec<Aggregate>,
        from: i64,
        to: i64,
    ) -> Result<Vec<Aggregated>, StoreError> {
        self.aggregate_within(queries, from, to, String::new())
            .await
    }

    pub async fn aggregate_within(
        &self,
        queries: Vec<Aggregate>,
        from: i64,
        to: i64,
        user_prefix: String,
    ) -> Result<Vec<Aggregated>, StoreError> {
        self.read(move |c| {
            queries
                .iter()
                .map(|q| reports::aggregate(c, q, from, to, &user_prefix))
                .collect()
        })
        .await
    }

    pub fn device_index_stats(&self) -> Option<DeviceIndexStats> {
        self.inner.known.as_ref().map(|k| k.stats())
    }
}
