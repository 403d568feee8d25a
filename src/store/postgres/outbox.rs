//! The alert outbox on PostgreSQL: alerts queued with one delivery per sink
//! in the transaction of the entry that raised them, claimed with
//! `FOR UPDATE SKIP LOCKED` and a lease, their outcomes recorded, and the
//! alerts read back with their deliveries.

use std::collections::HashMap;

use tokio_postgres::{GenericClient, Row};

use super::api::{exec, one, Tx, TxError};
use super::{pg_error, retryable, PgStore, RETRIES};
use crate::model::{AlertDraft, AlertKind, Delivery, Due, StoredAlert};
use crate::store::types::StoreError;

fn alert_row(r: &Row, base: usize) -> StoredAlert {
    let kind: &str = r.get(base + 2);
    let details: &str = r.get(base + 4);
    StoredAlert {
        id: r.get(base),
        username: r.get(base + 1),
        kind: AlertKind::parse(kind).unwrap_or(AlertKind::SecurityChange),
        created: r.get(base + 3),
        details: serde_json::from_str(details).unwrap_or_default(),
    }
}

pub(super) async fn insert_alert(
    tx: &Tx<'_>,
    uid: i64,
    a: &AlertDraft,
    sinks: &[&'static str],
) -> Result<(), TxError> {
    let details =
        serde_json::to_string(&a.details).map_err(|e| StoreError::Other(e.to_string()))?;
    let id: i64 = one(
        tx,
        "INSERT INTO alerts (user_id, kind, created, details) VALUES ($1, $2, $3, $4)
             RETURNING id",
        &[&uid, &a.kind.as_str(), &a.ts, &details],
    )
    .await?
    .get(0);
    let sinks: Vec<&str> = sinks.to_vec();
    // Due at once; 0 rather than the clock, which would record the exact time
    // of the event behind the alert.
    exec(
        tx,
        "INSERT INTO alert_deliveries (alert_id, sink, state, attempts, next_attempt)
         SELECT $1, s, 'pending', 0, 0 FROM unnest($2::text[]) AS s",
        &[&id, &sinks],
    )
    .await?;
    Ok(())
}

impl PgStore {
    /// Runs a statement of the dispatcher's on the outbox with plans that
    /// use its indexes. The outbox is a queue: rows come and go faster than
    /// statistics follow, and a plan made while it was small (a sequential
    /// scan, cached with the prepared statement) stays while it grows.
    async fn on_the_queue(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        let (stmt, _) = tokio::try_join!(
            tx.prepare_cached(sql),
            tx.batch_execute("SET LOCAL enable_seqscan = off")
        )
        .map_err(pg_error)?;
        let rows = tx.query(&stmt, params).await.map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)?;
        Ok(rows)
    }

    pub async fn user_alerts(
        &self,
        user: String,
        since: i64,
        limit: i64,
    ) -> Result<Vec<(StoredAlert, Vec<Delivery>)>, StoreError> {
        let client = self.reader().await?;
        user_alerts(&**client, &user, since, limit).await
    }

    /// Claims with `FOR UPDATE SKIP LOCKED`: replicas claiming at once get
    /// disjoint sets, and the lease keeps a claim from being handed out again
    /// until its claimer records the outcome or the lease ends.
    pub async fn claim_due(
        &self,
        now: i64,
        lease: i64,
        limit: i64,
    ) -> Result<Vec<Due>, StoreError> {
        let until = now.saturating_add(lease);
        let rows = self
            .on_the_queue(
                "WITH c AS (
                     SELECT alert_id, sink, next_attempt FROM alert_deliveries
                     WHERE state = 'pending' AND next_attempt <= $1
                     ORDER BY next_attempt, alert_id
                     LIMIT $3
                     FOR UPDATE SKIP LOCKED)
                 UPDATE alert_deliveries d SET next_attempt = $2
                 FROM c, alerts a, users u
                 WHERE d.alert_id = c.alert_id AND d.sink = c.sink
                   AND a.id = d.alert_id AND u.id = a.user_id
                 RETURNING a.id, u.name, a.kind, a.created, a.details, d.sink, d.attempts,
                           c.next_attempt",
                &[&now, &until, &limit],
            )
            .await?;
        let mut due: Vec<(i64, Due)> = rows
            .iter()
            .map(|r| {
                (
                    r.get(7),
                    Due {
                        alert: alert_row(r, 0),
                        sink: r.get(5),
                        attempts: r.get(6),
                    },
                )
            })
            .collect();
        due.sort_by(|(a, x), (b, y)| (a, x.alert.id, &x.sink).cmp(&(b, y.alert.id, &y.sink)));
        Ok(due.into_iter().map(|(_, d)| d).collect())
    }

    pub async fn release(&self, alert_id: i64, sink: String, due: i64) -> Result<(), StoreError> {
        self.on_the_queue(
            "UPDATE alert_deliveries SET next_attempt = $3
             WHERE alert_id = $1 AND sink = $2 AND state = 'pending'",
            &[&alert_id, &sink, &due],
        )
        .await
        .map(|_| ())
    }

    pub async fn next_due(&self) -> Result<Option<i64>, StoreError> {
        let rows = self
            .on_the_queue(
                "SELECT min(next_attempt) FROM alert_deliveries WHERE state = 'pending'",
                &[],
            )
            .await?;
        Ok(rows.first().and_then(|r| r.get(0)))
    }

    /// One transaction, a statement a sink, each finding its rows by the
    /// primary key.
    pub async fn mark_delivered(
        &self,
        done: Vec<(i64, String)>,
        delivered_at: i64,
    ) -> Result<(), StoreError> {
        let mut by_sink: HashMap<&str, Vec<i64>> = HashMap::new();
        for (id, sink) in &done {
            by_sink.entry(sink).or_default().push(*id);
        }
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        let (stmt, _) = tokio::try_join!(
            tx.prepare_cached(
                "UPDATE alert_deliveries SET state = 'delivered', attempts = attempts + 1,
                     delivered_at = $3, next_attempt = 0, last_error = NULL
                 WHERE alert_id = ANY($1) AND sink = $2",
            ),
            tx.batch_execute("SET LOCAL enable_seqscan = off")
        )
        .map_err(pg_error)?;
        for (sink, ids) in by_sink {
            tx.execute(&stmt, &[&ids, &sink, &delivered_at])
                .await
                .map_err(pg_error)?;
        }
        tx.commit().await.map_err(pg_error)
    }

    pub async fn mark_failed(
        &self,
        alert_id: i64,
        sink: String,
        error: String,
        next: Option<i64>,
    ) -> Result<(), StoreError> {
        let state = if next.is_some() { "pending" } else { "failed" };
        self.on_the_queue(
            "UPDATE alert_deliveries SET state = $3, attempts = attempts + 1,
                 next_attempt = coalesce($4::BIGINT, 0), last_error = $5
             WHERE alert_id = $1 AND sink = $2",
            &[&alert_id, &sink, &state, &next, &error],
        )
        .await
        .map(|_| ())
    }

    pub async fn recent_alerts(
        &self,
        since: i64,
        state: String,
        user_prefix: String,
        limit: i64,
    ) -> Result<Vec<(StoredAlert, Vec<Delivery>)>, StoreError> {
        let client = self.reader().await?;
        let rows = client
            .query(
                "SELECT a.id, u.name, a.kind, a.created, a.details
                 FROM alerts a JOIN users u ON u.id = a.user_id
                 WHERE a.created >= $1
                   AND ($2 = '' OR EXISTS (SELECT 1 FROM alert_deliveries d
                                           WHERE d.alert_id = a.id AND d.state = $2))
                   AND starts_with(u.name, $4)
                 ORDER BY a.created DESC, a.id DESC
                 LIMIT $3",
                &[&since, &state, &limit, &user_prefix],
            )
            .await
            .map_err(pg_error)?;
        let alerts = rows.iter().map(|r| alert_row(r, 0)).collect();
        with_deliveries(&**client, alerts).await
    }

    pub async fn retry_alert(&self, alert_id: i64) -> Result<u64, StoreError> {
        in_transaction!(self, |tx| {
            Ok(exec(
                &tx,
                "UPDATE alert_deliveries SET state = 'pending', next_attempt = 0
                 WHERE alert_id = $1 AND state <> 'delivered'",
                &[&alert_id],
            )
            .await?)
        })
    }
}

pub(super) async fn user_alerts(
    client: &impl GenericClient,
    user: &str,
    since: i64,
    limit: i64,
) -> Result<Vec<(StoredAlert, Vec<Delivery>)>, StoreError> {
    let rows = client
        .query(
            "SELECT a.id, u.name, a.kind, a.created, a.details
             FROM users u JOIN alerts a ON a.user_id = u.id
             WHERE u.name = $1 AND a.created >= $2
             ORDER BY a.created DESC, a.id DESC
             LIMIT $3",
            &[&user, &since, &limit],
        )
        .await
        .map_err(pg_error)?;
    let alerts: Vec<StoredAlert> = rows.iter().map(|r| alert_row(r, 0)).collect();
    with_deliveries(client, alerts).await
}

/// Each alert with its deliveries, by sink.
async fn with_deliveries(
    client: &impl GenericClient,
    alerts: Vec<StoredAlert>,
) -> Result<Vec<(StoredAlert, Vec<Delivery>)>, StoreError> {
    if alerts.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<i64> = alerts.iter().map(|a| a.id).collect();
    let rows = client
        .query(
            "SELECT alert_id, sink, state, attempts, last_error, delivered_at
             FROM alert_deliveries WHERE alert_id = ANY($1)
             ORDER BY alert_id, sink COLLATE \"C\"",
            &[&ids],
        )
        .await
        .map_err(pg_error)?;
    let mut by_alert: HashMap<i64, Vec<Delivery>> = HashMap::new();
    for r in &rows {
        by_alert.entry(r.get(0)).or_default().push(Delivery {
            sink: r.get(1),
            state: r.get(2),
            attempts: r.get(3),
            last_error: r.get(4),
            delivered_at: r.get(5),
        });
    }
    Ok(alerts
        .into_iter()
        .map(|a| {
            let d = by_alert.remove(&a.id).unwrap_or_default();
            (a, d)
        })
        .collect())
}
