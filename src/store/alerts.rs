//! The monitor's SQL: the history a detection reads, the alert outbox, and
//! the delivery state of each alert per sink.

use rusqlite::{params, Connection, OptionalExtension};

use super::ops::{self, LogRecord};
use super::StoreError;
use crate::monitor::{AlertDetails, AlertDraft, AlertKind, Event, History};
use crate::wire::LOG_TYPE_LOGIN_FAILURE;

/// What the rules need to know about a user before `e` is stored.
pub fn history(
    conn: &Connection,
    uid: i64,
    e: &Event,
    sealed_id: &[u8],
    burst_window: i64,
) -> Result<History, StoreError> {
    let last_login: Option<i64> = conn
        .prepare_cached(
            "SELECT ts FROM user_logs WHERE user_id = ?1 AND log_type = 'login'
             ORDER BY ts DESC LIMIT 1",
        )?
        .query_row([uid], |r| r.get(0))
        .optional()?;
    let device_known = !sealed_id.is_empty()
        && conn
            .prepare_cached("SELECT 1 FROM devices WHERE user_id = ?1 AND device_id = ?2")?
            .exists(params![uid, sealed_id])?;
    let country_known = !e.zone.is_empty()
        && conn
            .prepare_cached("SELECT 1 FROM user_countries WHERE user_id = ?1 AND zone = ?2")?
            .exists(params![uid, e.zone])?;
    let (failures_in_window, burst_alerted_in_window) = if e.log_type == LOG_TYPE_LOGIN_FAILURE {
        let since = e.ts.saturating_sub(burst_window);
        let n: i64 = conn
            .prepare_cached(
                "SELECT count(*) FROM user_logs
                 WHERE user_id = ?1 AND ts >= ?2 AND log_type = 'login_failure'",
            )?
            .query_row(params![uid, since], |r| r.get(0))?;
        let alerted = conn
            .prepare_cached(
                "SELECT 1 FROM alerts WHERE user_id = ?1 AND kind = 'login_failure_burst'
                 AND created >= ?2",
            )?
            .exists(params![uid, since])?;
        (n as u64, alerted)
    } else {
        (0, false)
    };
    Ok(History {
        last_login,
        device_known,
        country_known,
        failures_in_window,
        burst_alerted_in_window,
    })
}

/// Stores a log entry for a known user, keeping the set of countries seen.
pub fn record_log(conn: &Connection, uid: i64, rec: &LogRecord) -> Result<(), StoreError> {
    ops::insert_log_as(conn, uid, rec)?;
    if let Some(zone) = rec
        .device
        .as_ref()
        .map(|d| &d.zone)
        .filter(|z| !z.is_empty())
    {
        // Kept to the day: it only ages countries out, and so the row is
        // rewritten once a day per country rather than on every login.
        let day = crate::privacy::quantize(rec.ts, 86_400);
        conn.prepare_cached(
            "INSERT INTO user_countries (user_id, zone, first_seen, last_seen) VALUES (?1, ?2, ?3, ?3)
             ON CONFLICT (user_id, zone) DO UPDATE SET
                 first_seen = min(first_seen, excluded.first_seen),
                 last_seen = max(last_seen, excluded.last_seen)
             WHERE excluded.first_seen < first_seen OR excluded.last_seen > last_seen",
        )?
        .execute(params![uid, zone, day])?;
    }
    Ok(())
}

/// Queues an alert for every sink; they are due at once.
pub fn insert_alert(
    conn: &Connection,
    uid: i64,
    a: &AlertDraft,
    sinks: &[&str],
) -> Result<i64, StoreError> {
    let details =
        serde_json::to_string(&a.details).map_err(|e| StoreError::Other(e.to_string()))?;
    conn.prepare_cached(
        "INSERT INTO alerts (user_id, kind, created, details) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![uid, a.kind.as_str(), a.ts, details])?;
    let id = conn.last_insert_rowid();
    let mut stmt = conn.prepare_cached(
        "INSERT INTO alert_deliveries (alert_id, sink, state, attempts, next_attempt)
         VALUES (?1, ?2, 'pending', 0, 0)",
    )?;
    // Due at once; stored as 0 rather than the clock, which would record the
    // exact time of the event behind the alert.
    for sink in sinks {
        stmt.execute(params![id, sink])?;
    }
    Ok(id)
}

/// An alert as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAlert {
    pub id: i64,
    pub username: String,
    pub kind: AlertKind,
    pub created: i64,
    pub details: AlertDetails,
}

/// One sink's view of one alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub sink: String,
    pub state: String,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub delivered_at: Option<i64>,
}

/// A delivery whose time has come, with its alert.
#[derive(Debug, Clone)]
pub struct Due {
    pub alert: StoredAlert,
    pub sink: String,
    pub attempts: i64,
}

fn alert_from_row(r: &rusqlite::Row<'_>, base: usize) -> rusqlite::Result<StoredAlert> {
    let kind: String = r.get(base + 2)?;
    let details: String = r.get(base + 4)?;
    Ok(StoredAlert {
        id: r.get(base)?,
        username: r.get(base + 1)?,
        kind: AlertKind::parse(&kind).unwrap_or(AlertKind::SecurityChange),
        created: r.get(base + 3)?,
        details: serde_json::from_str(&details).unwrap_or_default(),
    })
}

/// The order is the one of the `alert_deliveries_due` index (whose entries
/// end with the primary key), so a backlog of any size is read without
/// sorting it.
const DUE_SQL: &str = "SELECT a.id, u.name, a.kind, a.created, a.details, d.sink, d.attempts
     FROM alert_deliveries d
     JOIN alerts a ON a.id = d.alert_id
     JOIN users u ON u.id = a.user_id
     WHERE d.state = 'pending' AND d.next_attempt <= ?1
     ORDER BY d.next_attempt, d.alert_id
     LIMIT ?2";

/// Pending deliveries due at `now`, oldest first.
pub fn due(conn: &Connection, now: i64, limit: i64) -> Result<Vec<Due>, StoreError> {
    let mut stmt = conn.prepare_cached(DUE_SQL)?;
    let rows = stmt.query_map(params![now, limit], |r| {
        Ok(Due {
            alert: alert_from_row(r, 0)?,
            sink: r.get(5)?,
            attempts: r.get(6)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// When the next pending delivery is due, if any.
pub fn next_due(conn: &Connection) -> Result<Option<i64>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT min(next_attempt) FROM alert_deliveries WHERE state = 'pending'")?
        .query_row([], |r| r.get(0))?)
}

/// Records a delivery; `delivered_at` is quantized by the caller like every
/// stored time.
pub fn mark_delivered(
    conn: &Connection,
    alert_id: i64,
    sink: &str,
    delivered_at: i64,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "UPDATE alert_deliveries SET state = 'delivered', attempts = attempts + 1,
             delivered_at = ?3, next_attempt = 0, last_error = NULL
         WHERE alert_id = ?1 AND sink = ?2",
    )?
    .execute(params![alert_id, sink, delivered_at])?;
    Ok(())
}

/// Records a failed attempt: retried at `next` or, when `next` is `None`,
/// kept as failed for good (the alert and its error stay visible). Only a
/// pending retry keeps a precise time, which the schedule needs.
pub fn mark_failed(
    conn: &Connection,
    alert_id: i64,
    sink: &str,
    error: &str,
    next: Option<i64>,
) -> Result<(), StoreError> {
    let state = if next.is_some() { "pending" } else { "failed" };
    conn.prepare_cached(
        "UPDATE alert_deliveries SET state = ?3, attempts = attempts + 1,
             next_attempt = coalesce(?4, 0), last_error = ?5
         WHERE alert_id = ?1 AND sink = ?2",
    )?
    .execute(params![alert_id, sink, state, next, error])?;
    Ok(())
}

/// A user's alerts since `since`, newest first, with their deliveries.
pub fn user_alerts(
    conn: &Connection,
    name: &str,
    since: i64,
    limit: i64,
) -> Result<Vec<(StoredAlert, Vec<Delivery>)>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT a.id, u.name, a.kind, a.created, a.details
         FROM users u JOIN alerts a ON a.user_id = u.id
         WHERE u.name = ?1 AND a.created >= ?2
         ORDER BY a.created DESC, a.id DESC
         LIMIT ?3",
    )?;
    let alerts = stmt
        .query_map(params![name, since, limit], |r| alert_from_row(r, 0))?
        .collect::<Result<Vec<_>, _>>()?;
    let mut dstmt = conn.prepare_cached(
        "SELECT sink, state, attempts, last_error, delivered_at FROM alert_deliveries
         WHERE alert_id = ?1 ORDER BY sink",
    )?;
    let mut out = Vec::with_capacity(alerts.len());
    for a in alerts {
        let deliveries = dstmt
            .query_map([a.id], |r| {
                Ok(Delivery {
                    sink: r.get(0)?,
                    state: r.get(1)?,
                    attempts: r.get(2)?,
                    last_error: r.get(3)?,
                    delivered_at: r.get(4)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        out.push((a, deliveries));
    }
    Ok(out)
}

/// The newest entry of `log_type` for the user.
pub fn latest_of_type(
    conn: &Connection,
    name: &str,
    log_type: &str,
) -> Result<Option<LogRecord>, StoreError> {
    Ok(ops::user_logs_of_type(conn, name, log_type, 1)?
        .into_iter()
        .next())
}

/// How many entries of `log_type` the user has since `since`.
pub fn count_of_type(
    conn: &Connection,
    name: &str,
    log_type: &str,
    since: i64,
) -> Result<i64, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT count(*) FROM users u JOIN user_logs l ON l.user_id = u.id
             WHERE u.name = ?1 AND l.ts >= ?2 AND l.log_type = ?3",
        )?
        .query_row(params![name, since, log_type], |r| r.get(0))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_due_query_reads_the_outbox_in_index_order_without_sorting() {
        let mut c = Connection::open_in_memory().unwrap();
        super::super::schema::migrate(&mut c).unwrap();
        let plan: Vec<String> = c
            .prepare(&format!("EXPLAIN QUERY PLAN {DUE_SQL}"))
            .unwrap()
            .query_map(params![0, 32], |r| r.get(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            plan.iter().any(|s| s.contains("alert_deliveries_due")),
            "{plan:?}"
        );
        assert!(
            !plan.iter().any(|s| s.contains("TEMP B-TREE")),
            "a backlog would be sorted on every poll: {plan:?}"
        );
    }
}
