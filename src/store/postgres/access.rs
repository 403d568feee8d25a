//! Access transparency on PostgreSQL: the record of reads of each user's
//! data (user, reader CN, endpoint, day), one row per distinct quadruple.

use std::sync::Arc;

use tokio_postgres::Row;

use super::api::{exec, TxError};
use super::{pg_error, retryable, PgStore, RETRIES};
use crate::model::AccessRead;
use crate::store::types::StoreError;

/// Rows deleted per retention transaction.
const PRUNE_BATCH: i64 = 500;

/// Every read, in the order SQLite's export gives.
pub(super) const EXPORT: &str = "SELECT username, day, reader, endpoint FROM access_reads
     ORDER BY username COLLATE \"C\", day, reader COLLATE \"C\", endpoint COLLATE \"C\"";

/// A second's reads in one statement.
const INSERT_MANY: &str = "INSERT INTO access_reads (username, day, reader, endpoint)
     SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[])
     ON CONFLICT DO NOTHING";

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

impl PgStore {
    pub async fn record_access(&self, reads: Arc<Vec<AccessRead>>) -> Result<(), StoreError> {
        let users: Vec<&str> = reads.iter().map(|a| a.username.as_str()).collect();
        let days: Vec<i64> = reads.iter().map(|a| a.day).collect();
        let readers: Vec<&str> = reads.iter().map(|a| a.reader.as_str()).collect();
        let endpoints: Vec<&str> = reads.iter().map(|a| a.endpoint.as_str()).collect();
        in_transaction!(self, |tx| {
            exec(&tx, INSERT_MANY, &[&users, &days, &readers, &endpoints]).await?;
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
