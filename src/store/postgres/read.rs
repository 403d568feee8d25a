//! Reads on PostgreSQL: a user's logs, devices, last logins and summary,
//! unused accounts, `check_device` (through the device index when there is
//! one), and the administrator's list of log entries across users.

use tokio_postgres::{IsolationLevel, Row};

use super::known::Answer;
use super::outbox::user_alerts;
use super::{pg_error, PgStore};
use crate::model::{
    CountrySeen, DeviceRecord, DeviceRow, LogDevice, LogRecord, LogRow, UserOverview,
};
use crate::store::types::{EventFilter, StoreError};
use crate::wire::{LOG_TYPE_LOGIN, LOG_TYPE_LOGIN_FAILURE};

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

impl PgStore {
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
        let client = self.reader().await?;
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

    pub async fn user_devices(&self, user: String) -> Result<Vec<DeviceRow>, StoreError> {
        let rows = self
            .read_query(
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

    pub async fn user_countries(&self, user: String) -> Result<Vec<CountrySeen>, StoreError> {
        let rows = self
            .read_query(
                "SELECT c.zone, c.first_seen, c.last_seen
                 FROM users u JOIN user_countries c ON c.user_id = u.id
                 WHERE u.name = $1
                 ORDER BY c.first_seen, c.zone COLLATE \"C\"",
                &[&user],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| CountrySeen {
                zone: r.get(0),
                first_seen: r.get(1),
                last_seen: r.get(2),
            })
            .collect())
    }

    pub async fn device_known(&self, user: String, sealed_id: Vec<u8>) -> Result<bool, StoreError> {
        // The pair's key, and the index's generation before the query.
        let known = self
            .known
            .as_ref()
            .map(|k| (k, k.key(&user, &sealed_id), k.generation()));
        if let Some((k, key, _)) = known {
            match k.lookup(key) {
                Answer::Known => return Ok(true),
                Answer::Unknown => return Ok(false),
                Answer::Ask => k.asking(),
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
            .read_query(
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
            .read_query(
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

    pub async fn user_overview(
        &self,
        user: String,
        since: i64,
        alerts_limit: i64,
    ) -> Result<UserOverview, StoreError> {
        let mut client = self.reader().await?;
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

    pub async fn recent_logs(&self, f: EventFilter) -> Result<Vec<LogRecord>, StoreError> {
        let client = self.reader().await?;
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
}
