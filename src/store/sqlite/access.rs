//! Access transparency on SQLite: the record of reads of each user's data
//! (user, reader CN, endpoint, day), one row per distinct quadruple.

use std::sync::Arc;

use rusqlite::{params, Connection};

use super::{ops, SqliteStore};
use crate::model::{AccessRead, Record};
use crate::store::types::{BulkError, StoreError};

/// Rows looked at per retention transaction.
const PRUNE_PAGE: i64 = 2_000;

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AccessRead> {
    Ok(AccessRead {
        username: r.get(0)?,
        day: r.get(1)?,
        reader: r.get(2)?,
        endpoint: r.get(3)?,
    })
}

/// Stores a read; a repeat of a stored one changes nothing.
pub(super) fn insert(c: &Connection, a: &AccessRead) -> rusqlite::Result<usize> {
    c.prepare_cached(
        "INSERT INTO access_reads (username, day, reader, endpoint) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT DO NOTHING",
    )?
    .execute(params![a.username, a.day, a.reader, a.endpoint])
}

/// Stores an imported read; a duplicate is an error.
pub(super) fn import(c: &Connection, a: &AccessRead) -> rusqlite::Result<usize> {
    c.prepare_cached(
        "INSERT INTO access_reads (username, day, reader, endpoint) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![a.username, a.day, a.reader, a.endpoint])
}

/// Every read of the database, by user, day, reader and endpoint (schema 6 on).
pub(super) fn export(
    c: &Connection,
    emit: &mut dyn FnMut(Record) -> Result<(), BulkError>,
) -> Result<(), BulkError> {
    let mut stmt = c.prepare(
        "SELECT username, day, reader, endpoint FROM access_reads
         ORDER BY username, day, reader, endpoint",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        emit(Record::AccessRead(row(r)?))?;
    }
    Ok(())
}

impl SqliteStore {
    pub async fn record_access(&self, reads: Arc<Vec<AccessRead>>) -> Result<(), StoreError> {
        self.write(move |c| {
            for a in reads.iter() {
                insert(c, a)?;
            }
            Ok(())
        })
        .await
    }

    pub async fn user_access(
        &self,
        user: String,
        since_day: i64,
    ) -> Result<Vec<AccessRead>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT username, day, reader, endpoint FROM access_reads
                 WHERE username = ?1 AND day >= ?2
                 ORDER BY day DESC, reader, endpoint",
            )?;
            let rows = stmt.query_map(params![user, since_day], row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    pub async fn forget_access(&self, user: String) -> Result<u64, StoreError> {
        let n = self
            .write(move |c| {
                Ok(
                    c.prepare_cached("DELETE FROM access_reads WHERE username = ?1")?
                        .execute([user])? as u64,
                )
            })
            .await?;
        if n > 0 {
            // As for the user's other rows: no old copy stays in the WAL.
            let path = self.path().to_owned();
            let truncated = tokio::task::spawn_blocking(move || ops::truncate_wal(&path)).await;
            if !matches!(truncated, Ok(Ok(()))) {
                tracing::warn!(
                    "could not truncate the WAL after an erasure; it will be checkpointed later"
                );
            }
        }
        Ok(n)
    }

    /// Deletes the reads of days before `before_day`: the table is walked
    /// in key order, a page of keys a transaction, so that no write waits
    /// long behind it.
    pub async fn prune_access(&self, before_day: i64) -> Result<u64, StoreError> {
        let mut total = 0;
        let mut after: Option<AccessRead> = None;
        loop {
            let (n, last) = self
                .write(move |c| {
                    let keys: Vec<AccessRead> = match &after {
                        None => c
                            .prepare_cached(
                                "SELECT username, day, reader, endpoint FROM access_reads
                                 ORDER BY username, day, reader, endpoint LIMIT ?1",
                            )?
                            .query_map([PRUNE_PAGE], row)?
                            .collect::<Result<_, _>>()?,
                        Some(a) => c
                            .prepare_cached(
                                "SELECT username, day, reader, endpoint FROM access_reads
                                 WHERE (username, day, reader, endpoint) > (?1, ?2, ?3, ?4)
                                 ORDER BY username, day, reader, endpoint LIMIT ?5",
                            )?
                            .query_map(
                                params![a.username, a.day, a.reader, a.endpoint, PRUNE_PAGE],
                                row,
                            )?
                            .collect::<Result<_, _>>()?,
                    };
                    let mut delete = c.prepare_cached(
                        "DELETE FROM access_reads
                         WHERE username = ?1 AND day = ?2 AND reader = ?3 AND endpoint = ?4",
                    )?;
                    let mut n = 0;
                    for a in keys.iter().filter(|a| a.day < before_day) {
                        n += delete.execute(params![a.username, a.day, a.reader, a.endpoint])?
                            as u64;
                    }
                    let last = (keys.len() == PRUNE_PAGE as usize).then(|| keys.last().cloned());
                    Ok((n, last.flatten()))
                })
                .await?;
            total += n;
            match last {
                Some(a) => after = Some(a),
                None => return Ok(total),
            }
        }
    }
}
