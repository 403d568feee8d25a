//! Windows agents on SQLite: keys, retries recognised, sessions, time spent.

use rusqlite::{params, Connection, OptionalExtension};

use super::{ops, SqliteStore};
use crate::store::agents::TimeSpentRow;
use crate::store::agents::{span, AgentEvent, AgentKey, AgentOutcome, SessionStep, MAX_SESSION};
use crate::store::types::{Detections, StoreError};

/// A key from a row of [`KEY_COLUMNS`] (and any columns after them).
pub(super) fn key_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AgentKey> {
    Ok(AgentKey {
        id: r.get(0)?,
        tenant: r.get(1)?,
        site: r.get(2)?,
        created: r.get(3)?,
        disabled: r.get(4)?,
    })
}

pub(super) const KEY_COLUMNS: &str = "id, tenant, site, created, disabled";

/// Applies a session step for user `uid` on the sealed computer `device`.
fn session_step(
    c: &Connection,
    uid: i64,
    device: &[u8],
    step: &SessionStep,
) -> Result<(), StoreError> {
    match step {
        SessionStep::Open { session, started } => {
            c.prepare_cached(
                "INSERT INTO agent_sessions (session, user_id, started, expires)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (session) DO UPDATE SET started = excluded.started,
                     expires = excluded.expires",
            )?
            .execute(params![&session[..], uid, started, started + MAX_SESSION])?;
        }
        SessionStep::Close {
            session,
            ended,
            granularity,
        } => {
            let started: Option<i64> = c
                .prepare_cached("DELETE FROM agent_sessions WHERE session = ?1 RETURNING started")?
                .query_row([&session[..]], |r| r.get(0))
                .optional()?;
            if let Some(s) = started.and_then(|s| span(s, *ended, *granularity)) {
                c.prepare_cached(
                    "INSERT INTO time_spent (user_id, device_id, day, seconds, first_start, last_end)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (user_id, device_id, day) DO UPDATE SET
                         seconds = seconds + excluded.seconds,
                         first_start = min(first_start, excluded.first_start),
                         last_end = max(last_end, excluded.last_end)",
                )?
                .execute(params![uid, device, s.day, s.seconds, s.first_start, s.last_end])?;
            }
        }
    }
    Ok(())
}

impl SqliteStore {
    pub async fn agent_key_add(
        &self,
        tenant: String,
        site: String,
        key_hash: [u8; 32],
        created: i64,
    ) -> Result<AgentKey, StoreError> {
        self.write(move |c| {
            c.prepare_cached(
                "INSERT INTO agent_keys (tenant, site, key_hash, created, disabled)
                 VALUES (?1, ?2, ?3, ?4, 0)",
            )?
            .execute(params![tenant, site, &key_hash[..], created])?;
            Ok(AgentKey {
                id: c.last_insert_rowid(),
                tenant,
                site,
                created,
                disabled: false,
            })
        })
        .await
    }

    pub async fn agent_keys(&self) -> Result<Vec<AgentKey>, StoreError> {
        self.read(|c| {
            let mut stmt =
                c.prepare_cached(&format!("SELECT {KEY_COLUMNS} FROM agent_keys ORDER BY id"))?;
            let rows = stmt.query_map([], key_from_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    pub async fn agent_key_disable(&self, id: i64) -> Result<bool, StoreError> {
        self.write(move |c| {
            Ok(
                c.prepare_cached("UPDATE agent_keys SET disabled = 1 WHERE id = ?1")?
                    .execute([id])?
                    > 0,
            )
        })
        .await
    }

    pub async fn agent_key_by_hash(
        &self,
        key_hash: [u8; 32],
    ) -> Result<Option<AgentKey>, StoreError> {
        self.read(move |c| {
            Ok(c.prepare_cached(&format!(
                "SELECT {KEY_COLUMNS} FROM agent_keys WHERE key_hash = ?1"
            ))?
            .query_row([&key_hash[..]], key_from_row)
            .optional()?)
        })
        .await
    }

    pub async fn record_agent_event(
        &self,
        ev: AgentEvent,
        detect: Detections,
    ) -> Result<AgentOutcome, StoreError> {
        self.write(move |c| {
            let fresh = c
                .prepare_cached(
                    "INSERT INTO agent_dedup (tag, expires) VALUES (?1, ?2)
                     ON CONFLICT (tag) DO NOTHING",
                )?
                .execute(params![&ev.dedup[..], ev.dedup_expires])?;
            if fresh == 0 {
                return Ok(AgentOutcome::Duplicate);
            }
            let uid = ops::ensure_user(c, &ev.rec.username)?;
            let alerts = super::api::record_for(c, uid, &ev.rec, Some(detect))?;
            let device = ev.rec.sealed_id();
            session_step(c, uid, device, &ev.session)?;
            Ok(AgentOutcome::Stored { alerts })
        })
        .await
    }

    pub async fn expire_agent_state(&self, now: i64) -> Result<u64, StoreError> {
        self.write(move |c| {
            let dedup = c
                .prepare_cached("DELETE FROM agent_dedup WHERE expires <= ?1")?
                .execute([now])?;
            let sessions = c
                .prepare_cached("DELETE FROM agent_sessions WHERE expires <= ?1")?
                .execute([now])?;
            Ok((dedup + sessions) as u64)
        })
        .await
    }

    pub async fn time_spent(
        &self,
        user_prefix: String,
        from_day: i64,
        to_day: i64,
    ) -> Result<Vec<TimeSpentRow>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT u.name, t.device_id, t.day, t.seconds, t.first_start, t.last_end
                 FROM time_spent t JOIN users u ON u.id = t.user_id
                 WHERE t.day >= ?2 AND t.day < ?3
                   AND substr(u.name, 1, length(?1)) = ?1
                 ORDER BY t.day, u.name, t.device_id",
            )?;
            let rows =
                stmt.query_map(params![user_prefix, from_day, to_day], ops::time_spent_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }
}
