//! Retention: log entries and devices older than the configured ages are
//! deleted, in small batches through the writer so that logins queued behind
//! a batch wait for one short transaction at most.

use std::time::Duration;

use crate::config::RetentionConfig;
use crate::store::ops::{self, Deleted};
use crate::store::{Store, StoreError};

/// Rows deleted per table in one transaction.
pub const BATCH: i64 = 500;

/// Deletes everything past retention as of `now` (Unix seconds).
pub async fn prune(
    store: &Store,
    retention: RetentionConfig,
    now: i64,
) -> Result<Deleted, StoreError> {
    let logs_before = now.saturating_sub(retention.user_logs.as_secs() as i64);
    let devices_before = now.saturating_sub(retention.devices.as_secs() as i64);
    let mut total = Deleted::default();
    loop {
        // Find expired devices and countries with a scan on a reader, then
        // delete them by key in a short write.
        let expired = store
            .read(move |c| {
                Ok(ops::Expired {
                    devices: ops::expired_devices(c, devices_before, BATCH)?,
                    countries: ops::expired_countries(c, devices_before, BATCH)?,
                })
            })
            .await?;
        let more_expired =
            expired.devices.len() as i64 == BATCH || expired.countries.len() as i64 == BATCH;
        let step = store
            .write(move |c| ops::prune_step(c, logs_before, devices_before, BATCH, &expired))
            .await?;
        total.add(step);
        if step.user_logs < BATCH as u64 && step.alerts < BATCH as u64 && !more_expired {
            return Ok(total);
        }
        // Let queued requests in between batches.
        tokio::task::yield_now().await;
    }
}

/// Prunes once shortly after start, then every `interval`, until dropped.
pub async fn run(store: Store, retention: RetentionConfig, interval: Duration) {
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(5).min(interval),
        interval,
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = crate::server::handler::now_unix();
        match prune(&store, retention, now).await {
            Ok(d) if d.total() > 0 => tracing::info!(
                user_logs = d.user_logs,
                devices = d.devices,
                users = d.users,
                "retention: deleted expired rows"
            ),
            Ok(_) => tracing::debug!("retention: nothing to delete"),
            Err(e) => tracing::warn!(error = %e, "retention run failed; will retry"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DbConfig;
    use crate::store::ops::{DeviceRecord, LogRecord};

    const DAY: i64 = 86_400;

    #[tokio::test]
    async fn prune_follows_the_clock_it_is_given() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&DbConfig {
            path: dir.path().join("t.db"),
            readers: 1,
            max_batch: 64,
            synchronous_full: false,
            device_index: true,
        })
        .unwrap();
        let now = 1_800_000_000;
        // 1,200 log entries a day apart for one user, each with a new device.
        for i in 0..1200 {
            let rec = LogRecord {
                username: "u".into(),
                ts: now - i * DAY,
                log_type: "login".into(),
                device: Some(DeviceRecord {
                    sealed_id: format!("d{i}").into_bytes(),
                    ..Default::default()
                }),
                ..Default::default()
            };
            store
                .write(move |c| ops::insert_log(c, &rec))
                .await
                .unwrap();
        }
        let retention = RetentionConfig {
            user_logs: Duration::from_secs(365 * DAY as u64),
            devices: Duration::from_secs(730 * DAY as u64),
            interval: Duration::from_secs(3600),
        };
        let d = prune(&store, retention, now).await.unwrap();
        // Entries 366..1199 days old go; devices older than 730 days go.
        assert_eq!(d.user_logs, 1200 - 366);
        assert_eq!(d.devices, 1200 - 731);
        assert_eq!(d.users, 0);
        assert_eq!(prune(&store, retention, now).await.unwrap().total(), 0);
        // A year later, everything is gone, including the user.
        let d = prune(&store, retention, now + 800 * DAY).await.unwrap();
        assert_eq!((d.user_logs, d.devices, d.users), (366, 731, 1));
        store.close();
    }
}
