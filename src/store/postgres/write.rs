//! The log write on PostgreSQL: a log entry with its device and country,
//! the detections run on the user's history before it and the alerts they
//! raise, in one transaction under the user's row lock; and last logins.

use super::api::{exec, one, opt, opt_row, Tx, TxError};
use super::outbox::insert_alert;
use super::{pg_error, retryable, PgStore, RETRIES};
use crate::clock::quantize;
use crate::model::{Event, History, LogRecord};
use crate::store::types::{Detections, StoreError};
use crate::wire::LOG_TYPE_LOGIN_FAILURE;

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

    /// Stores a log entry in a transaction of its own; the device index
    /// learns its device once it is committed.
    pub(super) async fn record_one(
        &self,
        rec: LogRecord,
        detect: Option<Detections>,
    ) -> Result<usize, StoreError> {
        let generation = self.known.as_ref().map(|k| k.generation());
        let stored = in_transaction!(self, |tx| {
            let uid = lock_user(&tx, &rec.username).await?;
            record_for(&tx, uid, &rec, detect.as_ref()).await
        });
        if let (Ok(_), Some(known), Some(g)) = (&stored, &self.known, generation) {
            if !rec.sealed_id().is_empty() {
                known.learn(g, [known.key(&rec.username, rec.sealed_id())]);
            }
        }
        stored
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
}
