//! Retention: log entries and devices older than the configured ages are
//! deleted, in short steps so that logins queued behind one wait little;
//! then the stored times of what is left are coarsened with age
//! (`privacy.decay`).

use std::time::Duration;

use crate::config::{Decay, RetentionConfig};
use crate::model::Deleted;
use crate::store::types::{Coarsened, DecayCut};
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

/// The cuts of `decay` as of `now`: times before `now - after` are floored
/// to the step's granularity; finest (newest) first.
pub fn cuts(decay: &Decay, now: i64) -> Vec<DecayCut> {
    decay
        .steps()
        .iter()
        .map(|s| DecayCut {
            before: now.saturating_sub(s.after),
            granularity: s.granularity.max(1),
        })
        .collect()
}

/// Floors the stored times older than each `privacy.decay` step as of `now`.
/// Idempotent: a second run at the same `now` changes nothing.
pub async fn coarsen(
    store: &Store,
    retention: RetentionConfig,
    now: i64,
) -> Result<Coarsened, StoreError> {
    if retention.decay.is_empty() {
        return Ok(Coarsened::default());
    }
    store.decay(cuts(&retention.decay, now)).await
}

/// One retention run: deletes what is past retention, then coarsens what
/// is left.
pub async fn run_once(
    store: &Store,
    retention: RetentionConfig,
    now: i64,
) -> Result<(Deleted, Coarsened), StoreError> {
    let deleted = prune(store, retention, now).await?;
    let coarsened = coarsen(store, retention, now).await?;
    Ok((deleted, coarsened))
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
        match run_once(&store, retention, now).await {
            Ok((d, c)) => {
                if d.total() > 0 {
                    tracing::info!(
                        user_logs = d.user_logs,
                        devices = d.devices,
                        users = d.users,
                        "retention: deleted expired rows"
                    );
                } else {
                    tracing::debug!("retention: nothing to delete");
                }
                if c.total() > 0 {
                    tracing::info!(
                        user_logs = c.user_logs,
                        devices = c.devices,
                        time_spent = c.time_spent,
                        user_countries = c.user_countries,
                        "retention: coarsened old rows"
                    );
                }
            }
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
            decay: Default::default(),
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

    async fn sqlite_store(dir: &tempfile::TempDir) -> Store {
        Store::open(&DbConfig {
            path: dir.path().join("t.db"),
            readers: 1,
            max_batch: 64,
            synchronous_full: false,
            device_index: true,
            postgres: None,
        })
        .await
        .unwrap()
    }

    /// The detections the server runs, with this configuration's rules.
    fn detections(cfg: &crate::config::AlertsConfig) -> crate::store::Detections {
        let cfg = cfg.clone();
        crate::store::Detections {
            burst_window: cfg.burst_window.as_secs() as i64,
            sinks: std::sync::Arc::new(vec![crate::model::SINK_LOG]),
            rules: Box::new(move |h, e| {
                crate::monitor::evaluate(&cfg, h, e, e.ts)
                    .into_iter()
                    .filter(|a| a.kind == crate::model::AlertKind::DormantAccount)
                    .collect()
            }),
        }
    }

    fn login(user: &str, ts: i64) -> LogRecord {
        LogRecord {
            username: user.into(),
            ts,
            log_type: "login".into(),
            ..Default::default()
        }
    }

    /// With the steps the configuration accepts, the dormant-account rule
    /// answers on coarsened history as on the original: a login inside the
    /// dormancy period is never floored, and one past it is dormant either
    /// way. A step inside the period (which the configuration refuses) would
    /// make a login of 179 days and 23 hours ago look dormant.
    #[tokio::test]
    async fn the_dormant_rule_stays_right_on_coarse_history() {
        let config = crate::config::Config::from_yaml(
            "db_uri: x.db\nprivacy:\n  decay:\n    - { after: 180d, granularity: 1d }\n    - { after: 365d, granularity: 30d }\n",
        )
        .unwrap();
        let alerts = config.alerts.clone();
        assert_eq!(alerts.dormant_after, Duration::from_secs(180 * DAY as u64));
        let now = 1_800_000_000 - 1_800_000_000 % DAY + 12 * 3600;
        let almost = now - 180 * DAY + 3600; // 179 days 23 hours ago
        let past = now - 180 * DAY - 3600; // 180 days 1 hour ago
        let long_past = now - 300 * DAY - 5 * 3600;

        for (steps, false_alarm) in [
            (config.retention, false),
            (
                RetentionConfig {
                    decay: crate::config::Decay::new(&[crate::config::DecayStep {
                        after: 30 * DAY,
                        granularity: DAY,
                    }]),
                    ..config.retention
                },
                true,
            ),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let store = sqlite_store(&dir).await;
            for (user, ts) in [("almost", almost), ("past", past), ("long", long_past)] {
                store
                    .record_log(login(user, ts), Some(detections(&alerts)))
                    .await
                    .unwrap();
            }
            let c = coarsen(&store, steps, now).await.unwrap();
            assert!(c.user_logs >= 2, "{c:?}");
            let last = store.user_logs("almost".into(), 0, 1).await.unwrap()[0].ts;
            assert_eq!(last != almost, false_alarm, "floored: {last}");
            // The next login, a minute after the run.
            let raised = |user: &'static str| {
                let store = store.clone();
                let alerts = alerts.clone();
                async move {
                    store
                        .record_log(login(user, now + 60), Some(detections(&alerts)))
                        .await
                        .unwrap()
                }
            };
            assert_eq!(
                raised("almost").await,
                usize::from(false_alarm),
                "inside the period"
            );
            assert_eq!(raised("past").await, 1, "past the period");
            assert_eq!(raised("long").await, 1, "long past the period");
            store.close();
        }
    }
}
