//! The storage interface on PostgreSQL, its plumbing: each write one
//! transaction (retried on a serialization failure or a deadlock), each read
//! one statement or one read-only snapshot, every statement prepared once per
//! connection. The operations live by idea: the log write (`write`), reads
//! (`read`), the alert outbox (`outbox`), erasure and retention (`erase`),
//! reports (`reports`), agents (`agents`).

use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::{pg_error, PgStore};
use crate::model::DeviceIndexStats;
use crate::store::types::StoreError;

/// What ends a transaction's body: PostgreSQL's error (perhaps one to retry)
/// or the store's own.
pub(super) enum TxError {
    Pg(tokio_postgres::Error),
    Store(StoreError),
}

impl From<tokio_postgres::Error> for TxError {
    fn from(e: tokio_postgres::Error) -> Self {
        TxError::Pg(e)
    }
}

impl From<StoreError> for TxError {
    fn from(e: StoreError) -> Self {
        TxError::Store(e)
    }
}

/// Runs `$body` (an expression using the transaction `$tx`) in a
/// transaction on a pooled connection, committing it, and running it again
/// from the start after a serialization failure or a deadlock.
macro_rules! in_transaction {
    ($self:ident, |$tx:ident| $body:expr) => {{
        let mut attempt = 0;
        loop {
            let mut client = $self.client().await?;
            let $tx = client.transaction().await.map_err(pg_error)?;
            let outcome: Result<_, TxError> = async { $body }.await;
            let outcome = match outcome {
                Ok(v) => $tx.commit().await.map(|_| v).map_err(TxError::Pg),
                Err(e) => Err(e),
            };
            match outcome {
                Ok(v) => break Ok(v),
                Err(TxError::Pg(e)) if retryable(&e) && attempt < RETRIES => {
                    attempt += 1;
                    tracing::debug!(attempt, "transaction retried: {e}");
                }
                Err(TxError::Pg(e)) => break Err(pg_error(e)),
                Err(TxError::Store(e)) => break Err(e),
            }
        }
    }};
}

/// A transaction on a pooled connection, whose statements are prepared once
/// per connection and kept.
pub(super) type Tx<'a> = deadpool_postgres::Transaction<'a>;

/// Runs `sql` through the connection's statement cache.
pub(super) async fn exec(
    tx: &Tx<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, tokio_postgres::Error> {
    let stmt = tx.prepare_cached(sql).await?;
    tx.execute(&stmt, params).await
}

pub(super) async fn one(
    tx: &Tx<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Row, tokio_postgres::Error> {
    let stmt = tx.prepare_cached(sql).await?;
    tx.query_one(&stmt, params).await
}

pub(super) async fn opt_row(
    tx: &Tx<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Option<Row>, tokio_postgres::Error> {
    let stmt = tx.prepare_cached(sql).await?;
    tx.query_opt(&stmt, params).await
}

/// `None` for an empty string, stored as NULL.
pub(super) fn opt(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

impl PgStore {
    pub(super) async fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(sql).await.map_err(pg_error)?;
        client.query(&stmt, params).await.map_err(pg_error)
    }

    /// [`PgStore::query`] for a read that may lag: on a standby when
    /// there is one (see [`PgStore::reader`]).
    pub(super) async fn read_query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        let client = self.reader().await?;
        let stmt = client.prepare_cached(sql).await.map_err(pg_error)?;
        client.query(&stmt, params).await.map_err(pg_error)
    }

    pub fn device_index_stats(&self) -> Option<DeviceIndexStats> {
        self.known.as_ref().map(|k| k.stats())
    }
}
