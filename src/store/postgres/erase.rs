//! Erasure and retention on PostgreSQL: a user's rows deleted (and VACUUM
//! soon after, so that they do not stay readable in their pages), and the
//! expired rows deleted in short batches on one replica at a time.

use std::sync::atomic::{AtomicBool, Ordering};

use super::api::TxError;
use super::{known, pg_error, retryable, PgStore, RETRIES};
use crate::model::Deleted;
use crate::store::types::StoreError;

/// The advisory lock key of retention ("retentio").
pub(super) const RETENTION_LOCK: i64 = 0x7265_7465_6e74_696f;
/// Rows deleted per table in one retention transaction.
const PRUNE_BATCH: i64 = 500;

/// Set while a VACUUM after an erasure is queued or running.
static VACUUM_PENDING: AtomicBool = AtomicBool::new(false);

impl PgStore {
    pub async fn forget_user(&self, user: String) -> Result<Deleted, StoreError> {
        let (d, devices, xact): (Deleted, Vec<Vec<u8>>, Option<i64>) =
            in_transaction!(self, |tx| {
                let Some(row) = tx
                    .query_opt("SELECT id FROM users WHERE name = $1 FOR UPDATE", &[&user])
                    .await?
                else {
                    return Ok((Deleted::default(), Vec::new(), None));
                };
                let uid: i64 = row.get(0);
                tx.execute(
                    "DELETE FROM alert_deliveries WHERE alert_id IN
                     (SELECT id FROM alerts WHERE user_id = $1)",
                    &[&uid],
                )
                .await?;
                tx.execute("DELETE FROM user_countries WHERE user_id = $1", &[&uid])
                    .await?;
                tx.execute("DELETE FROM agent_sessions WHERE user_id = $1", &[&uid])
                    .await?;
                tx.execute("DELETE FROM time_spent WHERE user_id = $1", &[&uid])
                    .await?;
                // With the transaction's ID, which its notification names.
                let rows = tx
                .query(
                    "DELETE FROM devices WHERE user_id = $1 RETURNING device_id, txid_current()",
                    &[&uid],
                )
                .await?;
                let xact = rows.first().map(|r| r.get(1));
                let devices: Vec<Vec<u8>> = rows.iter().map(|r| r.get(0)).collect();
                let d = Deleted {
                    user_logs: tx
                        .execute("DELETE FROM user_logs WHERE user_id = $1", &[&uid])
                        .await?,
                    devices: devices.len() as u64,
                    last_logins: tx
                        .execute("DELETE FROM last_login WHERE user_id = $1", &[&uid])
                        .await?,
                    alerts: tx
                        .execute("DELETE FROM alerts WHERE user_id = $1", &[&uid])
                        .await?,
                    users: tx
                        .execute("DELETE FROM users WHERE id = $1", &[&uid])
                        .await?,
                };
                Ok((d, devices, xact))
            })?;
        if let Some(known) = &self.known {
            known.forget(xact, devices.iter().map(|dev| known.key(&user, dev)));
        }
        if d.total() > 0 {
            self.vacuum_soon();
        }
        Ok(d)
    }

    /// Deleted rows stay readable in their pages until VACUUM reclaims them:
    /// one runs after an erasure, off the request path (one at a time; an
    /// erasure while one is queued is covered by it).
    fn vacuum_soon(&self) {
        if VACUUM_PENDING.swap(true, Ordering::AcqRel) {
            return;
        }
        let store = self.clone();
        tokio::spawn(async move {
            let outcome = async {
                let client = store.client().await?;
                VACUUM_PENDING.store(false, Ordering::Release);
                client
                    .batch_execute(
                        "VACUUM user_logs, devices, last_login, user_countries, alerts,
                             alert_deliveries, users",
                    )
                    .await
                    .map_err(pg_error)
            }
            .await;
            if let Err(e) = outcome {
                VACUUM_PENDING.store(false, Ordering::Release);
                tracing::warn!(error = %e, "VACUUM after an erasure failed; autovacuum will reclaim the rows");
            }
        });
    }

    /// Retention, on one replica at a time: the others find the lock taken
    /// and delete nothing.
    pub async fn prune(
        &self,
        logs_before: i64,
        devices_before: i64,
    ) -> Result<Deleted, StoreError> {
        let known = self.known.as_deref();
        self.under_retention_lock("retention", async |client| {
            prune_locked(client, logs_before, devices_before, known).await
        })
        .await
    }

    /// Runs `work` holding the retention lock, a session lock that one
    /// replica at a time holds; when another holds it, does nothing and
    /// answers the default (nothing done).
    pub(super) async fn under_retention_lock<T: Default>(
        &self,
        what: &str,
        work: impl AsyncFnOnce(&mut deadpool_postgres::Object) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut client = self.client().await?;
        let locked: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&RETENTION_LOCK])
            .await
            .map_err(pg_error)?
            .get(0);
        if !locked {
            tracing::debug!("{what}: another replica holds the retention lock");
            return Ok(T::default());
        }
        let result = work(&mut client).await;
        let unlocked = client
            .execute("SELECT pg_advisory_unlock($1)", &[&RETENTION_LOCK])
            .await;
        if unlocked.is_err() {
            // A session lock left behind would stop retention everywhere:
            // this connection must not go back to the pool.
            let _ = deadpool_postgres::Object::take(client);
        }
        result
    }
}

/// Retention in batches, a transaction each; the devices a batch removed are
/// forgotten by this replica's device index once it is committed.
async fn prune_locked(
    client: &mut deadpool_postgres::Object,
    logs_before: i64,
    devices_before: i64,
    known: Option<&known::KnownDevices>,
) -> Result<Deleted, StoreError> {
    let mut total = Deleted::default();
    loop {
        let tx = client.transaction().await.map_err(pg_error)?;
        let step: Result<(Deleted, bool, Option<i64>, Vec<u128>), tokio_postgres::Error> = async {
            let user_logs = tx
                .execute(
                    "DELETE FROM user_logs WHERE (user_id, ts, seq) IN
                         (SELECT user_id, ts, seq FROM user_logs WHERE ts < $1
                          ORDER BY ts LIMIT $2)",
                    &[&logs_before, &PRUNE_BATCH],
                )
                .await?;
            let rows = tx
                .query(
                    "WITH d AS (DELETE FROM devices WHERE (user_id, device_id) IN
                         (SELECT user_id, device_id FROM devices WHERE last_seen < $1 LIMIT $2)
                         RETURNING user_id, device_id)
                     SELECT u.name, d.device_id, txid_current() FROM d JOIN users u ON u.id = d.user_id",
                    &[&devices_before, &PRUNE_BATCH],
                )
                .await?;
            let devices = rows.len() as u64;
            let xact = rows.first().map(|r| r.get(2));
            let removed: Vec<u128> = known.map_or_else(Vec::new, |k| {
                rows.iter().map(|r| k.key(r.get(0), r.get(1))).collect()
            });
            let alerts = tx
                .query_one(
                    "WITH a AS (SELECT id FROM alerts WHERE created < $1 ORDER BY created LIMIT $2),
                          d AS (DELETE FROM alert_deliveries WHERE alert_id IN (SELECT id FROM a)),
                          x AS (DELETE FROM alerts WHERE id IN (SELECT id FROM a) RETURNING 1)
                     SELECT count(*) FROM x",
                    &[&logs_before, &PRUNE_BATCH],
                )
                .await?
                .get::<_, i64>(0) as u64;
            let countries = tx
                .execute(
                    "DELETE FROM user_countries WHERE (user_id, zone) IN
                         (SELECT user_id, zone FROM user_countries WHERE last_seen < $1 LIMIT $2)",
                    &[&devices_before, &PRUNE_BATCH],
                )
                .await?;
            // Time spent ages out with the logs, by the day it was spent.
            tx.execute(
                "DELETE FROM time_spent WHERE (user_id, device_id, day) IN
                     (SELECT user_id, device_id, day FROM time_spent WHERE day < $1
                      ORDER BY day LIMIT $2)",
                &[&logs_before, &PRUNE_BATCH],
            )
            .await?;
            let users = if user_logs + devices + alerts > 0 {
                tx.execute(
                    "DELETE FROM users WHERE id IN (
                         SELECT u.id FROM users u
                         WHERE NOT EXISTS (SELECT 1 FROM user_logs l WHERE l.user_id = u.id)
                           AND NOT EXISTS (SELECT 1 FROM devices d WHERE d.user_id = u.id)
                           AND NOT EXISTS (SELECT 1 FROM last_login x WHERE x.user_id = u.id)
                           AND NOT EXISTS (SELECT 1 FROM alerts a WHERE a.user_id = u.id)
                           AND NOT EXISTS (SELECT 1 FROM time_spent t WHERE t.user_id = u.id)
                           AND NOT EXISTS (SELECT 1 FROM agent_sessions s WHERE s.user_id = u.id)
                         LIMIT $1)",
                    &[&PRUNE_BATCH],
                )
                .await?
            } else {
                0
            };
            let deleted = Deleted {
                user_logs,
                devices,
                last_logins: 0,
                alerts,
                users,
            };
            // A full batch of countries alone asks for another step.
            Ok((deleted, countries == PRUNE_BATCH as u64, xact, removed))
        }
        .await;
        let (step, more_countries) = match step {
            Ok((deleted, more_countries, xact, removed)) => {
                tx.commit().await.map_err(pg_error)?;
                if let Some(known) = known {
                    known.forget(xact, removed);
                }
                (deleted, more_countries)
            }
            Err(e) => return Err(pg_error(e)),
        };
        total.add(step);
        let b = PRUNE_BATCH as u64;
        if step.user_logs < b && step.devices < b && step.alerts < b && !more_countries {
            return Ok(total);
        }
        tokio::task::yield_now().await;
    }
}
