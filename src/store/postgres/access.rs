//! Access transparency on PostgreSQL: the record of reads of each user's
//! data (user, reader CN, endpoint, day), one row per distinct quadruple.

use tokio_postgres::Row;

use super::api::{exec, Tx, TxError};
use super::{pg_error, retryable, PgStore, RETRIES};
use crate::model::AccessRead;
use crate::store::types::StoreError;

/// Rows deleted per retention transaction.
const PRUNE_BATCH: i64 = 500;

/// Every read, in the order SQLite's export gives.
pub(super) const EXPORT: &str = "SELECT username, day, reader, endpoint FROM access_reads
     ORDER BY username COLLATE \"C\", day, reader COLLATE \"C\", endpoint COLLATE \"C\"";

const INSERT: &str = "INSERT INTO access_reads (username, day, reader, endpoint)
     VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING";

/// An imported read; a duplicate is an error.
pub(super) const IMPORT: &str = "INSERT INTO access_reads (username, day, reader, endpoint)
     VALUES ($1, $2, $3, $4)";

pub(super) fn row(r: &Row) -> AccessRead {
    AccessRead {
        username: r.get(0),
        day: r.get(1),
        reader: r.get(2),
        endpoint: r.get(3),
    }
}

/// Stores a read; a repeat of a stored one changes nothing.
pub(super) async fn insert(tx: &Tx<'_>, a: &AccessRead) -> Result<u64, tokio_postgres::Error> {
    exec(tx, INSERT, &[&a.username, &a.day, &a.reader, &a.endpoint]).await
}

impl PgStore {
    pub async fn record_access(&self, reads: Vec<AccessRead>) -> Result<(), StoreError> {
        in_transaction!(self, |tx| {
            for a in &reads {
                insert(&tx, a).await?;
            }
            Ok(())
        })
    }

    pub async fn user_access(
        &self,
        user: String,
        since_day: i64,
    ) -> Result<Vec<AccessRead>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT username, day, reader, endpoint FROM access_reads
                 WHERE username = $1 AND day >= $2
                 ORDER BY day DESC, reader COLLATE \"C\", endpoint COLLATE \"C\"",
                &[&user, &since_day],
            )
            .await
            .map_err(pg_error)?;
        Ok(rows.iter().map(row).collect())
    }

    pub async fn forget_access(&self, user: String) -> Result<u64, StoreError> {
        in_transaction!(self, |tx| {
            Ok(exec(
                &tx,
                "DELETE FROM access_reads WHERE username = $1",
                &[&user],
            )
            .await?)
        })
    }

    pub async fn prune_access(&self, before_day: i64) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let n: u64 = in_transaction!(self, |tx| {
                Ok(exec(
                    &tx,
                    "DELETE FROM access_reads WHERE (username, day, reader, endpoint) IN
                         (SELECT username, day, reader, endpoint FROM access_reads
                          WHERE day < $1 ORDER BY day LIMIT $2)",
                    &[&before_day, &PRUNE_BATCH],
                )
                .await?)
            })?;
            total += n;
            if n < PRUNE_BATCH as u64 {
                return Ok(total);
            }
        }
    }
}
