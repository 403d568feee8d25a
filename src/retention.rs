//! Retention: log entries and devices older than the configured ages are
//! deleted, in short steps so that logins queued behind one wait little.

use std::time::Duration;

use crate::config::RetentionConfig;
use crate::model::Deleted;
use crate::store::{Store, StoreError};

/// Deletes everything past retention as of `now` (Unix seconds).
pub async fn prune(
    store: &Store,
    retention: RetentionConfig,
    now: i64,
) -> Result<Deleted, StoreError> {
    let logs_before = now.saturating_sub(retention.user_logs.as_secs() as i64);
    let devices_before = now.saturating_sub(retention.devices.as_secs() as i64);
    // Agents' retry hashes past their window, sessions open for a day.
    store.expire_agent_state(now).await?;
    store.prune(logs_before, devices_before).await
}

/// Prunes once shortly after start, then every `interval`, until dropped.
pub async fn run(store: Store, retention: RetentionConfig, interval: Duration, clock: fn() -> i64) {
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(5).min(interval),
        interval,
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = clock();
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
    use crate::model::{DeviceRecord, LogRecord};

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
            postgres: None,
        })
        .await
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
            store.record_log(rec, None).await.unwrap();
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
