//! The monitor's SQL: the history a detection reads, the alert outbox, and
//! the delivery state of each alert per sink.

use rusqlite::{params, Connection};

use super::ops;
use super::StoreError;
use crate::clock::quantize;
use crate::model::{AlertDraft, AlertKind, Delivery, Due, Event, History, LogRecord, StoredAlert};
use crate::wire::LOG_TYPE_LOGIN_FAILURE;

/// The user's newest login, whether the device is in the user's list, and
/// whether the user's row for the country covers the day (NULL: no row).
const HISTORY_SQL: &str = "SELECT
     (SELECT ts FROM user_logs WHERE user_id = ?1 AND log_type = 'login'
      ORDER BY ts DESC LIMIT 1),
     EXISTS (SELECT 1 FROM devices WHERE user_id = ?1 AND device_id = ?2),
     (SELECT first_seen <= ?4 AND last_seen >= ?4 FROM user_countries
      WHERE user_id = ?1 AND zone = ?3)";

/// What the rules need to know about a user before `e` is stored, and
/// whether the user's row for `e`'s country already covers its day (so that
/// [`record_log`] need not touch it).
///
/// The three lookups every entry needs are one statement: each statement run
/// on the writer has a fixed cost (the statement cache, binding, the VM's
/// set-up and reset) about as large as one of these indexed probes.
pub fn history(
    conn: &Connection,
    uid: i64,
    e: &Event,
    sealed_id: &[u8],
    burst_window: i64,
) -> Result<(History, bool), StoreError> {
    let day = quantize(e.ts, 86_400);
    let (last_login, device_row, country_row): (Option<i64>, bool, Option<bool>) = conn
        .prepare_cached(HISTORY_SQL)?
        .query_row(params![uid, sealed_id, e.zone, day], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
    let device_known = !sealed_id.is_empty() && device_row;
    let country_known = !e.zone.is_empty() && country_row.is_some();
    let country_current = country_known && country_row == Some(true);
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
    let history = History {
        last_login,
        device_known,
        country_known,
        failures_in_window,
        burst_alerted_in_window,
    };
    Ok((history, country_current))
}

/// Stores a log entry for a known user, keeping the set of countries seen.
/// `country_current` says the user's row for the entry's country already
/// covers its day ([`history`] finds out), and then leaves it alone.
pub fn record_log(
    conn: &Connection,
    uid: i64,
    rec: &LogRecord,
    country_current: bool,
) -> Result<(), StoreError> {
    ops::insert_log_as(conn, uid, rec)?;
    if let Some(zone) = rec
        .device
        .as_ref()
        .map(|d| &d.zone)
        .filter(|z| !z.is_empty() && !country_current)
    {
        // Kept to the day: it only ages countries out, and so the row is
        // rewritten once a day per country rather than on every login.
        let day = quantize(rec.ts, 86_400);
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

/// Gives back a claimed delivery, due at `due`; its attempts stay as they were.
pub fn release(conn: &Connection, alert_id: i64, sink: &str, due: i64) -> Result<(), StoreError> {
    conn.prepare_cached(
        "UPDATE alert_deliveries SET next_attempt = ?3
         WHERE alert_id = ?1 AND sink = ?2 AND state = 'pending'",
    )?
    .execute(params![alert_id, sink, due])?;
    Ok(())
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
    with_deliveries(conn, alerts)
}

/// Each alert with its deliveries, by sink.
fn with_deliveries(
    conn: &Connection,
    alerts: Vec<StoredAlert>,
) -> Result<Vec<(StoredAlert, Vec<Delivery>)>, StoreError> {
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

/// The newest alerts of every user since `since` (with a delivery in
/// `state`, when not empty; of users whose names start with `user_prefix`),
/// with their deliveries.
pub fn recent_alerts(
    conn: &Connection,
    since: i64,
    state: &str,
    user_prefix: &str,
    limit: i64,
) -> Result<Vec<(StoredAlert, Vec<Delivery>)>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT a.id, u.name, a.kind, a.created, a.details
         FROM alerts a JOIN users u ON u.id = a.user_id
         WHERE a.created >= ?1
           AND (?2 = '' OR EXISTS (SELECT 1 FROM alert_deliveries d
                                   WHERE d.alert_id = a.id AND d.state = ?2))
           AND substr(u.name, 1, length(?4)) = ?4
         ORDER BY a.created DESC, a.id DESC
         LIMIT ?3",
    )?;
    let alerts = stmt
        .query_map(params![since, state, limit, user_prefix], |r| {
            alert_from_row(r, 0)
        })?
        .collect::<Result<Vec<_>, _>>()?;
    with_deliveries(conn, alerts)
}

/// Makes the undelivered deliveries of an alert due now.
pub fn retry_alert(conn: &Connection, alert_id: i64) -> Result<u64, StoreError> {
    Ok(conn
        .prepare_cached(
            "UPDATE alert_deliveries SET state = 'pending', next_attempt = 0
             WHERE alert_id = ?1 AND state <> 'delivered'",
        )?
        .execute([alert_id])? as u64)
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
    use crate::model::DeviceRecord;

    fn db() -> Connection {
        let mut c = Connection::open_in_memory().unwrap();
        super::super::schema::migrate(&mut c).unwrap();
        c
    }

    fn entry(log_type: &str, ts: i64, device: &[u8], zone: &str) -> LogRecord {
        LogRecord {
            username: "alice".into(),
            ts,
            log_type: log_type.into(),
            device: Some(DeviceRecord {
                sealed_id: device.to_vec(),
                zone: zone.into(),
                browser: "Firefox".into(),
                os: "Linux".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn event(rec: &LogRecord) -> Event {
        let d = rec.device.as_ref().unwrap();
        Event {
            ts: rec.ts,
            log_type: rec.log_type.clone(),
            service: rec.service.clone(),
            has_device: !d.sealed_id.is_empty(),
            zone: d.zone.clone(),
            browser: d.browser.clone(),
            os: d.os.clone(),
            mobile: d.mobile,
        }
    }

    /// Stores `rec` as add_log does: the history first, then the entry.
    fn add(c: &Connection, uid: i64, rec: &LogRecord) -> History {
        let sealed = rec.device.as_ref().unwrap().sealed_id.clone();
        let (h, current) = history(c, uid, &event(rec), &sealed, 3600).unwrap();
        record_log(c, uid, rec, current).unwrap();
        h
    }

    const DAY: i64 = 86_400;

    fn triples(c: &Connection, sql: &str) -> Vec<(String, i64, i64)> {
        let mut stmt = c.prepare(sql).unwrap();
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)));
        rows.unwrap().collect::<Result<_, _>>().unwrap()
    }

    #[test]
    fn history_finds_the_last_login_the_device_and_the_country() {
        let c = db();
        let uid = ops::ensure_user(&c, "alice").unwrap();
        let t = 1_700_000_000 / DAY * DAY;
        let first = add(&c, uid, &entry("login", t + 3600, b"dev-a", "IT"));
        assert_eq!(first.last_login, None);
        assert!(!first.device_known && !first.country_known);

        add(&c, uid, &entry("password_change", t + 7200, b"dev-a", "IT"));
        let h = add(&c, uid, &entry("login", t + 10_800, b"dev-a", "IT"));
        assert_eq!(h.last_login, Some(t + 3600), "only logins count");
        assert!(h.device_known && h.country_known);

        let h = add(&c, uid, &entry("login", t + 14_400, b"dev-b", "FR"));
        assert_eq!(h.last_login, Some(t + 10_800));
        assert!(!h.device_known && !h.country_known);

        // No device ID, no zone: neither is known, whatever the rows hold.
        let h = add(&c, uid, &entry("login", t + 18_000, b"", ""));
        assert!(!h.device_known && !h.country_known);

        // Another user's rows are not this user's history.
        let bob = ops::ensure_user(&c, "bob").unwrap();
        let h = add(&c, bob, &entry("login", t + 18_000, b"dev-a", "IT"));
        assert_eq!(h.last_login, None);
        assert!(!h.device_known && !h.country_known);
    }

    #[test]
    fn the_history_query_probes_indexes_only() {
        let c = db();
        let plan: Vec<String> = c
            .prepare(&format!("EXPLAIN QUERY PLAN {HISTORY_SQL}"))
            .unwrap()
            .query_map(params![1, b"x".to_vec(), "IT", 0], |r| r.get(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            plan.iter()
                .all(|s| !s.starts_with("SCAN") || s == "SCAN CONSTANT ROW"),
            "a full scan: {plan:?}"
        );
        for table in ["user_logs", "devices", "user_countries"] {
            assert!(
                plan.iter()
                    .any(|s| s.starts_with(&format!("SEARCH {table} USING PRIMARY KEY"))),
                "{table}: {plan:?}"
            );
        }
    }

    /// The country rows are skipped when they already cover the day; they
    /// must still end up exactly the first and last day of each country in
    /// the log, whatever order the entries come in.
    #[test]
    fn country_rows_follow_the_log_with_writes_skipped() {
        let c = db();
        let uid = ops::ensure_user(&c, "alice").unwrap();
        let base = 1_700_000_000 / DAY * DAY;
        let zones = ["IT", "FR", "DE"];
        // A fixed pseudo-random walk over days (earlier and later ones) and
        // hours within them.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut skipped = 0;
        for _ in 0..400 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let day = (x % 9) as i64 - 4;
            let hour = ((x >> 8) % 24) as i64;
            let zone = zones[((x >> 16) % 3) as usize];
            let rec = entry("login", base + day * DAY + hour * 3600, b"dev", zone);
            let (_, current) = history(&c, uid, &event(&rec), b"dev", 3600).unwrap();
            skipped += usize::from(current);
            record_log(&c, uid, &rec, current).unwrap();
        }
        assert!(skipped > 300, "the writes were not skipped: {skipped}");
        let rows = triples(
            &c,
            "SELECT zone, first_seen, last_seen FROM user_countries ORDER BY zone",
        );
        let want = triples(
            &c,
            "SELECT zone, min(ts / 86400) * 86400, max(ts / 86400) * 86400
             FROM user_logs GROUP BY zone ORDER BY zone",
        );
        assert_eq!(rows.len(), 3);
        assert_eq!(rows, want);
    }

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
