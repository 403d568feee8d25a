//! Windows agents on PostgreSQL: keys, retries recognised, sessions, time
//! spent. An event is one transaction of its own (not the group commit's):
//! its retry check and its session must commit with its log entry.

use tokio_postgres::Row;

use super::api::{exec, one, opt_row, TxError};
use super::write::{lock_user, record_for};
use super::{pg_error, retryable, PgStore, RETRIES};
use crate::store::agents::TimeSpentRow;
use crate::store::agents::{span, AgentEvent, AgentKey, AgentOutcome, SessionStep, MAX_SESSION};
use crate::store::types::{Detections, StoreError};

pub(super) const KEY_COLUMNS: &str = "id, tenant, site, created, disabled";

/// A key from a row of [`KEY_COLUMNS`] (and any columns after them).
pub(super) fn key_row(r: &Row) -> AgentKey {
    AgentKey {
        id: r.get(0),
        tenant: r.get(1),
        site: r.get(2),
        created: r.get(3),
        disabled: r.get(4),
    }
}

impl PgStore {
    pub async fn agent_key_add(
        &self,
        tenant: String,
        site: String,
        key_hash: [u8; 32],
        created: i64,
    ) -> Result<AgentKey, StoreError> {
        let hash = &key_hash[..];
        in_transaction!(self, |tx| {
            let row = one(
                &tx,
                &format!(
                    "INSERT INTO agent_keys (tenant, site, key_hash, created)
                     VALUES ($1, $2, $3, $4) RETURNING {KEY_COLUMNS}"
                ),
                &[&tenant, &site, &hash, &created],
            )
            .await?;
            Ok(key_row(&row))
        })
    }

    pub async fn agent_keys(&self) -> Result<Vec<AgentKey>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!("SELECT {KEY_COLUMNS} FROM agent_keys ORDER BY id"),
                &[],
            )
            .await
            .map_err(pg_error)?;
        Ok(rows.iter().map(key_row).collect())
    }

    pub async fn agent_key_disable(&self, id: i64) -> Result<bool, StoreError> {
        in_transaction!(self, |tx| {
            Ok(exec(
                &tx,
                "UPDATE agent_keys SET disabled = true WHERE id = $1",
                &[&id],
            )
            .await?
                > 0)
        })
    }

    pub async fn agent_key_by_hash(
        &self,
        key_hash: [u8; 32],
    ) -> Result<Option<AgentKey>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {KEY_COLUMNS} FROM agent_keys WHERE key_hash = $1"
            ))
            .await
            .map_err(pg_error)?;
        let row = client
            .query_opt(&stmt, &[&&key_hash[..]])
            .await
            .map_err(pg_error)?;
        Ok(row.as_ref().map(key_row))
    }

    pub async fn record_agent_event(
        &self,
        ev: AgentEvent,
        detect: Detections,
    ) -> Result<AgentOutcome, StoreError> {
        let tag = &ev.dedup[..];
        let generation = self.known.as_ref().map(|k| k.generation());
        let stored = in_transaction!(self, |tx| {
            let fresh = exec(
                &tx,
                "INSERT INTO agent_dedup (tag, expires) VALUES ($1, $2)
                 ON CONFLICT (tag) DO NOTHING",
                &[&tag, &ev.dedup_expires],
            )
            .await?;
            if fresh == 0 {
                return Ok(AgentOutcome::Duplicate);
            }
            let uid = lock_user(&tx, &ev.rec.username).await?;
            let alerts = record_for(&tx, uid, &ev.rec, Some(&detect)).await?;
            let device = ev.rec.sealed_id();
            match &ev.session {
                SessionStep::Open { session, started } => {
                    exec(
                        &tx,
                        "INSERT INTO agent_sessions (session, user_id, started, expires)
                         VALUES ($1, $2, $3, $4)
                         ON CONFLICT (session) DO UPDATE SET started = EXCLUDED.started,
                             expires = EXCLUDED.expires",
                        &[&&session[..], &uid, started, &(started + MAX_SESSION)],
                    )
                    .await?;
                }
                SessionStep::Close {
                    session,
                    ended,
                    granularity,
                } => {
                    let started = opt_row(
                        &tx,
                        "DELETE FROM agent_sessions WHERE session = $1 RETURNING started",
                        &[&&session[..]],
                    )
                    .await?
                    .map(|r| r.get::<_, i64>(0));
                    if let Some(s) = started.and_then(|s| span(s, *ended, *granularity)) {
                        exec(
                            &tx,
                            "INSERT INTO time_spent
                                 (user_id, device_id, day, seconds, first_start, last_end)
                             VALUES ($1, $2, $3, $4, $5, $6)
                             ON CONFLICT (user_id, device_id, day) DO UPDATE SET
                                 seconds = time_spent.seconds + EXCLUDED.seconds,
                                 first_start = LEAST(time_spent.first_start, EXCLUDED.first_start),
                                 last_end = GREATEST(time_spent.last_end, EXCLUDED.last_end)",
                            &[
                                &uid,
                                &device,
                                &s.day,
                                &s.seconds,
                                &s.first_start,
                                &s.last_end,
                            ],
                        )
                        .await?;
                    }
                }
            }
            Ok(AgentOutcome::Stored { alerts })
        });
        // As for add_log: the device index learns the device once it is
        // committed, so this replica's next check_device knows it.
        if let (Ok(AgentOutcome::Stored { .. }), Some(known), Some(g)) =
            (&stored, &self.known, generation)
        {
            if !ev.rec.sealed_id().is_empty() {
                known.learn(g, [known.key(&ev.rec.username, ev.rec.sealed_id())]);
            }
        }
        stored
    }

    pub async fn expire_agent_state(&self, now: i64) -> Result<u64, StoreError> {
        in_transaction!(self, |tx| {
            let dedup = exec(&tx, "DELETE FROM agent_dedup WHERE expires <= $1", &[&now]).await?;
            let sessions = exec(
                &tx,
                "DELETE FROM agent_sessions WHERE expires <= $1",
                &[&now],
            )
            .await?;
            Ok(dedup + sessions)
        })
    }

    pub async fn time_spent(
        &self,
        user_prefix: String,
        from_day: i64,
        to_day: i64,
    ) -> Result<Vec<TimeSpentRow>, StoreError> {
        let client = self.reader().await?;
        let rows = client
            .query(
                "SELECT u.name, t.device_id, t.day, t.seconds, t.first_start, t.last_end
                 FROM time_spent t JOIN users u ON u.id = t.user_id
                 WHERE t.day >= $2 AND t.day < $3 AND starts_with(u.name, $1)
                 ORDER BY t.day, u.name, t.device_id",
                &[&user_prefix, &from_day, &to_day],
            )
            .await
            .map_err(pg_error)?;
        Ok(rows.iter().map(time_spent_row).collect())
    }
}

/// A day of time spent from a row of: name, device_id, day, seconds,
/// first_start, last_end.
pub(super) fn time_spent_row(r: &Row) -> crate::model::TimeSpentRow {
    crate::model::TimeSpentRow {
        username: r.get(0),
        sealed_device: r.get(1),
        day: r.get(2),
        seconds: r.get(3),
        first_start: r.get(4),
        last_end: r.get(5),
    }
}
