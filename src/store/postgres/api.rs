//! The storage interface on PostgreSQL: each write one transaction (retried
//! on a serialization failure or a deadlock), each read one statement or one
//! read-only snapshot.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio_postgres::types::ToSql;
use tokio_postgres::{GenericClient, IsolationLevel, Row};

use super::{known, pg_error, retryable, PgStore, RETRIES};
use crate::clock::quantize;
use crate::model::{
    Aggregate, Aggregated, AlertDraft, AlertKind, Deleted, Delivery, DeviceIndexStats,
    DeviceRecord, DeviceRow, Due, Event, GroupRow, History, LogDevice, LogRecord, LogRow,
    LoginColumn, SessionStats, StoredAlert, UserOverview, SESSION_BUCKETS,
};
use crate::store::{Detections, StoreError};
use crate::wire::{LOG_TYPE_LOGIN, LOG_TYPE_LOGIN_FAILURE};

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

/// The advisory lock key of retention ("retentio").
const RETENTION_LOCK: i64 = 0x7265_7465_6e74_696f;
/// Rows deleted per table in one retention transaction.
const PRUNE_BATCH: i64 = 500;

/// `None` for an empty string, stored as NULL.
pub(super) fn opt(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

/// The user's ID, taking the row's lock: writes of one user run one after
/// the other, each seeing the last's rows.
pub(super) async fn lock_user(tx: &Tx<'_>, name: &str) -> Result<i64, TxError> {
    loop {
        let found = opt_row(
            tx,
            "SELECT id FROM users WHERE name = $1 FOR UPDATE",
            &[&name],
        )
        .await?;
        if let Some(row) = found {
            return Ok(row.get(0));
        }
        let made = opt_row(
            tx,
            "INSERT INTO users (name) VALUES ($1) ON CONFLICT (name) DO NOTHING RETURNING id",
            &[&name],
        )
        .await?;
        if let Some(row) = made {
            return Ok(row.get(0));
        }
        // Another transaction made it meanwhile: lock that one.
    }
}

const LOG_COLUMNS: &str = "l.ts, l.log_type, l.message, l.service, l.login_method,
     l.login_authenticator_id, l.device_id, l.zone, l.browser, l.os, l.mobile, l.user_agent";

fn text(r: &Row, i: usize) -> &str {
    r.get::<_, Option<&str>>(i).unwrap_or("")
}

/// A log row borrowed from a result row of [`LOG_COLUMNS`].
fn log_row(r: &Row) -> LogRow<'_> {
    LogRow {
        ts: r.get(0),
        log_type: text(r, 1),
        message: text(r, 2),
        service: text(r, 3),
        login_method: text(r, 4),
        login_authenticator_id: text(r, 5),
        device: r.get::<_, Option<&[u8]>>(6).map(|sealed_id| LogDevice {
            sealed_id,
            zone: text(r, 7),
            browser: text(r, 8),
            os: text(r, 9),
            mobile: r.get::<_, Option<bool>>(10).unwrap_or(false),
            user_agent: text(r, 11),
        }),
    }
}

const DEVICE_COLUMNS: &str = "d.device_id, d.zone, d.browser, d.os, d.mobile, d.user_agent,
     d.first_seen, d.last_seen, d.num_logins";

pub(super) fn device_row(r: &Row, base: usize) -> DeviceRow {
    DeviceRow {
        device: DeviceRecord {
            sealed_id: r.get(base),
            zone: r.get(base + 1),
            browser: r.get(base + 2),
            os: r.get(base + 3),
            mobile: r.get(base + 4),
            user_agent: r.get(base + 5),
        },
        first_seen: r.get(base + 6),
        last_seen: r.get(base + 7),
        num_logins: r.get(base + 8),
    }
}

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

/// The log row alone, leaving the device list as it is (for imports, which
/// carry the device list themselves).
pub(super) async fn insert_log_row(
    tx: &Tx<'_>,
    uid: i64,
    rec: &LogRecord,
) -> Result<(), tokio_postgres::Error> {
    let d = rec.device.as_ref();
    exec(
        tx,
        "INSERT INTO user_logs (user_id, ts, log_type, message, service, login_method,
             login_authenticator_id, device_id, zone, browser, os, mobile, user_agent)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        &[
            &uid,
            &rec.ts,
            &rec.log_type,
            &opt(&rec.message),
            &opt(&rec.service),
            &opt(&rec.login_method),
            &opt(&rec.login_authenticator_id),
            &d.map(|d| d.sealed_id.as_slice()),
            &d.and_then(|d| opt(&d.zone)),
            &d.and_then(|d| opt(&d.browser)),
            &d.and_then(|d| opt(&d.os)),
            &d.map(|d| d.mobile),
            &d.and_then(|d| opt(&d.user_agent)),
        ],
    )
    .await?;
    Ok(())
}

/// Stores a log entry of user `uid`: the row, the device list and the
/// countries seen (left alone when `country_current`).
pub(super) async fn insert_log(
    tx: &Tx<'_>,
    uid: i64,
    rec: &LogRecord,
    country_current: bool,
) -> Result<(), tokio_postgres::Error> {
    insert_log_row(tx, uid, rec).await?;
    let d = rec.device.as_ref();
    if let Some(d) = d.filter(|d| !d.sealed_id.is_empty()) {
        exec(
            tx,
            concat!(
                "INSERT INTO devices (user_id, device_id, zone, browser, os, mobile, user_agent,
                     first_seen, last_seen, num_logins)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9) ",
                device_merge!()
            ),
            &[
                &uid,
                &d.sealed_id,
                &d.zone,
                &d.browser,
                &d.os,
                &d.mobile,
                &d.user_agent,
                &rec.ts,
                &rec.logins(),
            ],
        )
        .await?;
    }
    if let Some(zone) = d
        .map(|d| &d.zone)
        .filter(|z| !z.is_empty() && !country_current)
    {
        // Kept to the day, as on SQLite.
        let day = quantize(rec.ts, 86_400);
        exec(
            tx,
            "INSERT INTO user_countries (user_id, zone, first_seen, last_seen)
             VALUES ($1, $2, $3, $3)
             ON CONFLICT (user_id, zone) DO UPDATE SET
                 first_seen = LEAST(user_countries.first_seen, EXCLUDED.first_seen),
                 last_seen = GREATEST(user_countries.last_seen, EXCLUDED.last_seen)
             WHERE EXCLUDED.first_seen < user_countries.first_seen
                OR EXCLUDED.last_seen > user_countries.last_seen",
            &[&uid, zone, &day],
        )
        .await?;
    }
    Ok(())
}

/// What the rules need to know about a user before `e` is stored, and
/// whether the user's row for `e`'s country already covers its day.
async fn history(
    tx: &Tx<'_>,
    uid: i64,
    e: &Event,
    sealed_id: &[u8],
    burst_window: i64,
) -> Result<(History, bool), tokio_postgres::Error> {
    let day = quantize(e.ts, 86_400);
    let r = one(
        tx,
        "SELECT
                 (SELECT ts FROM user_logs WHERE user_id = $1 AND log_type = 'login'
                  ORDER BY ts DESC LIMIT 1),
                 EXISTS (SELECT 1 FROM devices WHERE user_id = $1 AND device_id = $2),
                 (SELECT first_seen <= $4 AND last_seen >= $4 FROM user_countries
                  WHERE user_id = $1 AND zone = $3)",
        &[&uid, &sealed_id, &e.zone, &day],
    )
    .await?;
    let last_login: Option<i64> = r.get(0);
    let device_row: bool = r.get(1);
    let country_row: Option<bool> = r.get(2);
    let country_known = !e.zone.is_empty() && country_row.is_some();
    let (failures_in_window, burst_alerted_in_window) = if e.log_type == LOG_TYPE_LOGIN_FAILURE {
        let since = e.ts.saturating_sub(burst_window);
        let r = one(
            tx,
            "SELECT
                     (SELECT count(*) FROM user_logs
                      WHERE user_id = $1 AND ts >= $2 AND log_type = 'login_failure'),
                     EXISTS (SELECT 1 FROM alerts WHERE user_id = $1
                             AND kind = 'login_failure_burst' AND created >= $2)",
            &[&uid, &since],
        )
        .await?;
        (r.get::<_, i64>(0) as u64, r.get(1))
    } else {
        (0, false)
    };
    Ok((
        History {
            last_login,
            device_known: !sealed_id.is_empty() && device_row,
            country_known,
            failures_in_window,
            burst_alerted_in_window,
        },
        country_known && country_row == Some(true),
    ))
}

async fn insert_alert(
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

/// Stores a log entry of the locked user `uid` and, with `detect`, runs the
/// detections on the history before it and queues the alerts they raise.
/// Returns how many were raised.
pub(super) async fn record_for(
    tx: &Tx<'_>,
    uid: i64,
    rec: &LogRecord,
    detect: Option<&Detections>,
) -> Result<usize, TxError> {
    match detect {
        None => {
            insert_log(tx, uid, rec, false).await?;
            Ok(0)
        }
        Some(d) => {
            let event = rec.event();
            let (h, current) = history(tx, uid, &event, rec.sealed_id(), d.burst_window).await?;
            insert_log(tx, uid, rec, current).await?;
            let drafts = (d.rules)(&h, &event);
            for a in &drafts {
                insert_alert(tx, uid, a, &d.sinks).await?;
            }
            Ok(drafts.len())
        }
    }
}

/// Set while a VACUUM after an erasure is queued or running.
static VACUUM_PENDING: AtomicBool = AtomicBool::new(false);

impl PgStore {
    /// Stores a log entry and the alerts its detections raise, in the next
    /// transaction of the replica's group commit.
    pub async fn record_log(
        &self,
        rec: LogRecord,
        detect: Option<Detections>,
    ) -> Result<usize, StoreError> {
        let Some(queue) = &self.queue else {
            return self.record_one(rec, detect).await;
        };
        let (done, answer) = tokio::sync::oneshot::channel();
        queue
            .send(super::batch::Job { rec, detect, done })
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Stores a log entry in a transaction of its own.
    pub(super) async fn record_one(
        &self,
        rec: LogRecord,
        detect: Option<Detections>,
    ) -> Result<usize, StoreError> {
        in_transaction!(self, |tx| {
            let uid = lock_user(&tx, &rec.username).await?;
            record_for(&tx, uid, &rec, detect.as_ref()).await
        })
    }

    pub async fn set_last_login(
        &self,
        user: String,
        service: String,
        ts: i64,
    ) -> Result<(), StoreError> {
        in_transaction!(self, |tx| {
            exec(
                &tx,
                "INSERT INTO users (name) VALUES ($1) ON CONFLICT (name) DO NOTHING",
                &[&user],
            )
            .await?;
            exec(
                &tx,
                "INSERT INTO last_login (user_id, service, ts)
                 SELECT id, $2, $3 FROM users WHERE name = $1
                 ON CONFLICT (user_id, service) DO UPDATE
                 SET ts = GREATEST(last_login.ts, EXCLUDED.ts)",
                &[&user, &service, &ts],
            )
            .await?;
            Ok(())
        })
    }

    pub async fn forget_user(&self, user: String) -> Result<Deleted, StoreError> {
        let (d, devices): (Deleted, Vec<Vec<u8>>) = in_transaction!(self, |tx| {
            let Some(row) = tx
                .query_opt("SELECT id FROM users WHERE name = $1 FOR UPDATE", &[&user])
                .await?
            else {
                return Ok((Deleted::default(), Vec::new()));
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
            let devices: Vec<Vec<u8>> = tx
                .query(
                    "DELETE FROM devices WHERE user_id = $1 RETURNING device_id",
                    &[&uid],
                )
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
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
            Ok((d, devices))
        })?;
        if let Some(known) = &self.known {
            known.forget(devices.iter().map(|dev| known.key(&user, dev)));
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
        let mut client = self.client().await?;
        let locked: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&RETENTION_LOCK])
            .await
            .map_err(pg_error)?
            .get(0);
        if !locked {
            tracing::debug!("retention: another replica is pruning");
            return Ok(Deleted::default());
        }
        let result = prune_locked(
            &mut client,
            logs_before,
            devices_before,
            self.known.as_deref(),
        )
        .await;
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

    pub async fn fold_logs<T, F>(
        &self,
        user: String,
        since: i64,
        log_type: Option<String>,
        limit: i64,
        init: T,
        mut f: F,
    ) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnMut(&mut T, &LogRow<'_>) -> Result<(), StoreError> + Send + 'static,
    {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {LOG_COLUMNS} FROM users u JOIN user_logs l ON l.user_id = u.id
                 WHERE u.name = $1 AND l.ts >= $2 AND ($4::text IS NULL OR l.log_type = $4)
                 ORDER BY l.ts DESC, l.seq DESC
                 LIMIT $3"
            ))
            .await
            .map_err(pg_error)?;
        let rows = client
            .query(&stmt, &[&user, &since, &limit, &log_type])
            .await
            .map_err(pg_error)?;
        let mut acc = init;
        for r in &rows {
            f(&mut acc, &log_row(r))?;
        }
        Ok(acc)
    }

    async fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(sql).await.map_err(pg_error)?;
        client.query(&stmt, params).await.map_err(pg_error)
    }

    async fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(sql).await.map_err(pg_error)?;
        client.execute(&stmt, params).await.map_err(pg_error)
    }

    pub async fn user_devices(&self, user: String) -> Result<Vec<DeviceRow>, StoreError> {
        let rows = self
            .query(
                &format!(
                    "SELECT {DEVICE_COLUMNS} FROM users u JOIN devices d ON d.user_id = u.id
                     WHERE u.name = $1
                     ORDER BY d.last_seen DESC, d.first_seen DESC"
                ),
                &[&user],
            )
            .await?;
        Ok(rows.iter().map(|r| device_row(r, 0)).collect())
    }

    pub async fn device_known(&self, user: String, sealed_id: Vec<u8>) -> Result<bool, StoreError> {
        // The pair's key, and the index's generation before the query.
        let known = self
            .known
            .as_ref()
            .map(|k| (k, k.key(&user, &sealed_id), k.generation()));
        if let Some((k, key, _)) = known {
            if k.holds(key) {
                return Ok(true);
            }
        }
        let rows = self
            .query(
                "SELECT EXISTS (SELECT 1 FROM users u JOIN devices d ON d.user_id = u.id
                                WHERE u.name = $1 AND d.device_id = $2)",
                &[&user, &sealed_id],
            )
            .await?;
        let found = rows.first().is_some_and(|r| r.get(0));
        if let (true, Some((k, key, generation))) = (found, known) {
            k.learn(generation, [key]);
        }
        Ok(found)
    }

    pub async fn last_logins(
        &self,
        user: String,
        service: Option<String>,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = self
            .query(
                "SELECT l.service, l.ts FROM users u JOIN last_login l ON l.user_id = u.id
                 WHERE u.name = $1 AND ($2::text IS NULL OR l.service = $2)
                 ORDER BY l.ts DESC, l.service COLLATE \"C\"",
                &[&user, &service],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    pub async fn unused_accounts(
        &self,
        names: Vec<String>,
        cutoff: i64,
    ) -> Result<Vec<String>, StoreError> {
        let mut sorted: Vec<&str> = names.iter().map(String::as_str).collect();
        sorted.sort_unstable();
        sorted.dedup();
        let rows = self
            .query(
                "SELECT n FROM unnest($1::text[]) AS n
                 WHERE NOT EXISTS (
                     SELECT 1 FROM users u JOIN last_login l ON l.user_id = u.id
                     WHERE u.name = n AND l.ts >= $2)",
                &[&sorted, &cutoff],
            )
            .await?;
        let unused: std::collections::HashSet<&str> = rows.iter().map(|r| r.get(0)).collect();
        let mut listed = std::collections::HashSet::with_capacity(unused.len());
        Ok(names
            .iter()
            .filter(|n| unused.contains(n.as_str()) && listed.insert(n.as_str()))
            .cloned()
            .collect())
    }

    pub async fn user_alerts(
        &self,
        user: String,
        since: i64,
        limit: i64,
    ) -> Result<Vec<(StoredAlert, Vec<Delivery>)>, StoreError> {
        let client = self.client().await?;
        user_alerts(&**client, &user, since, limit).await
    }

    pub async fn user_overview(
        &self,
        user: String,
        since: i64,
        alerts_limit: i64,
    ) -> Result<UserOverview, StoreError> {
        let mut client = self.client().await?;
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(pg_error)?;
        let last = tx
            .query_opt(
                &format!(
                    "SELECT {LOG_COLUMNS} FROM users u JOIN user_logs l ON l.user_id = u.id
                     WHERE u.name = $1 AND l.log_type = $2
                     ORDER BY l.ts DESC, l.seq DESC LIMIT 1"
                ),
                &[&user, &LOG_TYPE_LOGIN],
            )
            .await
            .map_err(pg_error)?;
        let devices = tx
            .query(
                &format!(
                    "SELECT {DEVICE_COLUMNS} FROM users u JOIN devices d ON d.user_id = u.id
                     WHERE u.name = $1 ORDER BY d.last_seen DESC, d.first_seen DESC"
                ),
                &[&user],
            )
            .await
            .map_err(pg_error)?;
        let services = tx
            .query(
                "SELECT l.service, l.ts FROM users u JOIN last_login l ON l.user_id = u.id
                 WHERE u.name = $1 ORDER BY l.ts DESC, l.service COLLATE \"C\"",
                &[&user],
            )
            .await
            .map_err(pg_error)?;
        let failures: i64 = tx
            .query_one(
                "SELECT count(*) FROM users u JOIN user_logs l ON l.user_id = u.id
                 WHERE u.name = $1 AND l.ts >= $2 AND l.log_type = $3",
                &[&user, &since, &LOG_TYPE_LOGIN_FAILURE],
            )
            .await
            .map_err(pg_error)?
            .get(0);
        let recent_alerts = user_alerts(&*tx, &user, since, alerts_limit).await?;
        tx.commit().await.map_err(pg_error)?;
        Ok(UserOverview {
            last_login: last.map(|r| log_row(&r).to_record(&user)),
            devices: devices.iter().map(|r| device_row(r, 0)).collect(),
            services: services.iter().map(|r| (r.get(0), r.get(1))).collect(),
            failures,
            recent_alerts,
        })
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
            .query(
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
        self.execute(
            "UPDATE alert_deliveries SET next_attempt = $3
             WHERE alert_id = $1 AND sink = $2 AND state = 'pending'",
            &[&alert_id, &sink, &due],
        )
        .await
        .map(|_| ())
    }

    pub async fn next_due(&self) -> Result<Option<i64>, StoreError> {
        let rows = self
            .query(
                "SELECT min(next_attempt) FROM alert_deliveries WHERE state = 'pending'",
                &[],
            )
            .await?;
        Ok(rows.first().and_then(|r| r.get(0)))
    }

    pub async fn mark_delivered(
        &self,
        alert_id: i64,
        sink: String,
        delivered_at: i64,
    ) -> Result<(), StoreError> {
        self.execute(
            "UPDATE alert_deliveries SET state = 'delivered', attempts = attempts + 1,
                 delivered_at = $3, next_attempt = 0, last_error = NULL
             WHERE alert_id = $1 AND sink = $2",
            &[&alert_id, &sink, &delivered_at],
        )
        .await
        .map(|_| ())
    }

    pub async fn mark_failed(
        &self,
        alert_id: i64,
        sink: String,
        error: String,
        next: Option<i64>,
    ) -> Result<(), StoreError> {
        let state = if next.is_some() { "pending" } else { "failed" };
        self.execute(
            "UPDATE alert_deliveries SET state = $3, attempts = attempts + 1,
                 next_attempt = coalesce($4::BIGINT, 0), last_error = $5
             WHERE alert_id = $1 AND sink = $2",
            &[&alert_id, &sink, &state, &next, &error],
        )
        .await
        .map(|_| ())
    }

    pub async fn aggregate(
        &self,
        queries: Vec<Aggregate>,
        from: i64,
        to: i64,
    ) -> Result<Vec<Aggregated>, StoreError> {
        let mut client = self.client().await?;
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(pg_error)?;
        let mut out = Vec::with_capacity(queries.len());
        for q in &queries {
            out.push(aggregate(&*tx, q, from, to).await.map_err(pg_error)?);
        }
        tx.commit().await.map_err(pg_error)?;
        Ok(out)
    }

    pub fn device_index_stats(&self) -> Option<DeviceIndexStats> {
        self.known.as_ref().map(|k| k.stats())
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
        let step: Result<(Deleted, bool, Vec<u128>), tokio_postgres::Error> = async {
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
                     SELECT u.name, d.device_id FROM d JOIN users u ON u.id = d.user_id",
                    &[&devices_before, &PRUNE_BATCH],
                )
                .await?;
            let devices = rows.len() as u64;
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
            Ok((deleted, countries == PRUNE_BATCH as u64, removed))
        }
        .await;
        let (step, more_countries) = match step {
            Ok((deleted, more_countries, removed)) => {
                tx.commit().await.map_err(pg_error)?;
                if let Some(known) = known {
                    known.forget(removed);
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

async fn user_alerts(
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

impl PgStore {
    pub async fn recent_logs(
        &self,
        f: crate::store::EventFilter,
    ) -> Result<Vec<LogRecord>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT u.name, {LOG_COLUMNS}
                     FROM user_logs l JOIN users u ON u.id = l.user_id
                     WHERE l.ts >= $1 AND l.ts < $2
                       AND ($3 = '' OR u.name = $3)
                       AND starts_with(u.name, $4)
                       AND ($5 = '' OR l.log_type = $5)
                     ORDER BY l.ts DESC, l.seq DESC LIMIT $6"
                ),
                &[
                    &f.from,
                    &f.to,
                    &f.username,
                    &f.user_prefix,
                    &f.log_type,
                    &f.limit,
                ],
            )
            .await
            .map_err(pg_error)?;
        Ok(rows.iter().map(named_log_row).collect())
    }

    pub async fn recent_alerts(
        &self,
        since: i64,
        state: String,
        limit: i64,
    ) -> Result<Vec<(StoredAlert, Vec<Delivery>)>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT a.id, u.name, a.kind, a.created, a.details
                 FROM alerts a JOIN users u ON u.id = a.user_id
                 WHERE a.created >= $1
                   AND ($2 = '' OR EXISTS (SELECT 1 FROM alert_deliveries d
                                           WHERE d.alert_id = a.id AND d.state = $2))
                 ORDER BY a.created DESC, a.id DESC
                 LIMIT $3",
                &[&since, &state, &limit],
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

/// A log entry from a row of the user's name and then [`LOG_COLUMNS`].
pub(super) fn named_log_row(r: &Row) -> LogRecord {
    let t = |i: usize| text(r, i).to_owned();
    LogRecord {
        username: r.get(0),
        ts: r.get(1),
        log_type: t(2),
        message: t(3),
        service: t(4),
        login_method: t(5),
        login_authenticator_id: t(6),
        device: r
            .get::<_, Option<Vec<u8>>>(7)
            .map(|sealed_id| DeviceRecord {
                sealed_id,
                zone: t(8),
                browser: t(9),
                os: t(10),
                mobile: r.get::<_, Option<bool>>(11).unwrap_or(false),
                user_agent: t(12),
            }),
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

fn groups(rows: &[Row]) -> Vec<GroupRow> {
    rows.iter()
        .map(|r| GroupRow {
            key: r.get::<_, Option<String>>(0).unwrap_or_default(),
            count: r.get(1),
            users: r.get(2),
        })
        .collect()
}

/// Each login followed by a logout of the same user and service, as
/// `(user_id, seconds)`, as on SQLite.
const SESSIONS: &str = "
    WITH ev AS (
        SELECT user_id, ts, log_type,
               lead(log_type) OVER w AS next_type,
               lead(ts) OVER w AS next_ts
        FROM user_logs
        WHERE ts >= $1 AND ts < $2 AND log_type IN ('login', 'logout')
        WINDOW w AS (PARTITION BY user_id, coalesce(service, '') ORDER BY ts, seq)
    ),
    s AS (
        SELECT user_id, next_ts - ts AS d FROM ev
        WHERE log_type = 'login' AND next_type = 'logout'
    )";

const DAY_OF: &str = "to_char(to_timestamp({}) AT TIME ZONE 'UTC', 'YYYY-MM-DD')";

async fn aggregate(
    tx: &impl GenericClient,
    q: &Aggregate,
    from: i64,
    to: i64,
) -> Result<Aggregated, tokio_postgres::Error> {
    let day = |col: &str| DAY_OF.replace("{}", col);
    Ok(match q {
        Aggregate::EventsPerDay(t) => Aggregated::Groups(groups(
            &tx.query(
                &format!(
                    "SELECT {}, count(*), count(DISTINCT user_id) FROM user_logs
                     WHERE ts >= $1 AND ts < $2 AND log_type = $3
                     GROUP BY 1 ORDER BY 1",
                    day("ts")
                ),
                &[&from, &to, t],
            )
            .await?,
        )),
        Aggregate::LoginsBy(c) => {
            let column = match c {
                LoginColumn::Service => "service",
                LoginColumn::Zone => "zone",
                LoginColumn::Browser => "browser",
                LoginColumn::Os => "os",
            };
            Aggregated::Groups(groups(
                &tx.query(
                    &format!(
                        "SELECT coalesce({column}, '') COLLATE \"C\", count(*),
                                count(DISTINCT user_id)
                         FROM user_logs
                         WHERE ts >= $1 AND ts < $2 AND log_type = 'login'
                         GROUP BY 1 ORDER BY 2 DESC, 1"
                    ),
                    &[&from, &to],
                )
                .await?,
            ))
        }
        Aggregate::EventsByType => Aggregated::Groups(groups(
            &tx.query(
                "SELECT log_type COLLATE \"C\", count(*), count(DISTINCT user_id) FROM user_logs
                 WHERE ts >= $1 AND ts < $2
                 GROUP BY 1 ORDER BY 2 DESC, 1",
                &[&from, &to],
            )
            .await?,
        )),
        Aggregate::EventsTotal => Aggregated::Groups(groups(
            &tx.query(
                "SELECT ''::text, count(*), count(DISTINCT user_id) FROM user_logs
                 WHERE ts >= $1 AND ts < $2",
                &[&from, &to],
            )
            .await?,
        )),
        Aggregate::NewDevicesPerDay => Aggregated::Groups(groups(
            &tx.query(
                &format!(
                    "SELECT {}, count(*), count(DISTINCT user_id) FROM devices
                     WHERE first_seen >= $1 AND first_seen < $2
                     GROUP BY 1 ORDER BY 1",
                    day("first_seen")
                ),
                &[&from, &to],
            )
            .await?,
        )),
        Aggregate::AlertsByKind => Aggregated::Groups(groups(
            &tx.query(
                "SELECT kind COLLATE \"C\", count(*), count(DISTINCT user_id) FROM alerts
                 WHERE created >= $1 AND created < $2
                 GROUP BY 1 ORDER BY 2 DESC, 1",
                &[&from, &to],
            )
            .await?,
        )),
        Aggregate::SessionBuckets => {
            let mut case = String::from("CASE");
            for (i, bound) in SESSION_BUCKETS.iter().enumerate() {
                case.push_str(&format!(" WHEN d < {bound} THEN {i}"));
            }
            case.push_str(&format!(" ELSE {} END", SESSION_BUCKETS.len()));
            let rows = tx
                .query(
                    &format!(
                        "{SESSIONS}
                         SELECT ({case})::BIGINT AS bucket, count(*), count(DISTINCT user_id)
                         FROM s GROUP BY bucket ORDER BY bucket"
                    ),
                    &[&from, &to],
                )
                .await?;
            Aggregated::Buckets(
                rows.iter()
                    .map(|r| (r.get::<_, i64>(0) as usize, r.get(1), r.get(2)))
                    .collect(),
            )
        }
        Aggregate::SessionStats => {
            let r = tx
                .query_one(
                    &format!(
                        "{SESSIONS},
                         n AS (SELECT count(*) AS c, count(DISTINCT user_id) AS u FROM s)
                         SELECT n.c, n.u,
                             (SELECT d FROM s ORDER BY d LIMIT 1
                                  OFFSET (SELECT (c - 1) / 2 FROM n)),
                             (SELECT d FROM s ORDER BY d LIMIT 1
                                  OFFSET (SELECT GREATEST(0, (c * 9 + 9) / 10 - 1) FROM n))
                         FROM n"
                    ),
                    &[&from, &to],
                )
                .await?;
            Aggregated::Sessions(SessionStats {
                sessions: r.get(0),
                users: r.get(1),
                median: r.get(2),
                p90: r.get(3),
            })
        }
    })
}
