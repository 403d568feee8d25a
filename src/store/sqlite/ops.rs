//! The queries. Each function takes a connection (the writer's savepoint or a
//! read-only one) and privacy-reduced records: nothing here sees an address, a
//! raw timestamp or a device ID in clear.

use rusqlite::types::{FromSqlError, ValueRef};
use rusqlite::{params, Connection, OptionalExtension};

use super::StoreError;
use crate::model::{CountrySeen, Deleted, DeviceRecord, DeviceRow, LogDevice, LogRecord, LogRow};

fn opt(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

pub fn user_id(conn: &Connection, name: &str) -> Result<Option<i64>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT id FROM users WHERE name = ?1")?
        .query_row([name], |r| r.get(0))
        .optional()?)
}

pub fn ensure_user(conn: &Connection, name: &str) -> Result<i64, StoreError> {
    if let Some(id) = user_id(conn, name)? {
        return Ok(id);
    }
    conn.prepare_cached("INSERT INTO users (name) VALUES (?1)")?
        .execute([name])?;
    Ok(conn.last_insert_rowid())
}

/// Appends a log entry and, when it carries a device, updates the device list.
#[cfg(test)]
pub fn insert_log(conn: &Connection, rec: &LogRecord) -> Result<(), StoreError> {
    let uid = ensure_user(conn, &rec.username)?;
    insert_log_as(conn, uid, rec)
}

/// [`insert_log`] for a user whose ID is known.
pub fn insert_log_as(conn: &Connection, uid: i64, rec: &LogRecord) -> Result<(), StoreError> {
    insert_log_row(conn, uid, rec)?;
    if let Some(d) = rec.device.as_ref().filter(|d| !d.sealed_id.is_empty()) {
        let logins = i64::from(rec.log_type == crate::wire::LOG_TYPE_LOGIN);
        upsert_device(conn, uid, d, rec.ts, logins)?;
    }
    Ok(())
}

/// The log row alone, leaving the device list as it is (for imports, which
/// carry the device list themselves).
pub fn insert_log_row(conn: &Connection, uid: i64, rec: &LogRecord) -> rusqlite::Result<()> {
    let d = rec.device.as_ref();
    conn.prepare_cached(
        "INSERT INTO user_logs (user_id, ts, seq, log_type, message, service, login_method,
             login_authenticator_id, device_id, zone, browser, os, mobile, user_agent)
         VALUES (?1, ?2,
             (SELECT ifnull(max(seq), 0) + 1 FROM user_logs WHERE ts = ?2),
             ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    )?
    .execute(params![
        uid,
        rec.ts,
        rec.log_type,
        opt(&rec.message),
        opt(&rec.service),
        opt(&rec.login_method),
        opt(&rec.login_authenticator_id),
        d.map(|d| &d.sealed_id),
        d.and_then(|d| opt(&d.zone)),
        d.and_then(|d| opt(&d.browser)),
        d.and_then(|d| opt(&d.os)),
        d.map(|d| d.mobile),
        d.and_then(|d| opt(&d.user_agent)),
    ])?;
    Ok(())
}

fn upsert_device(
    conn: &Connection,
    uid: i64,
    d: &DeviceRecord,
    ts: i64,
    logins: i64,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO devices (user_id, device_id, zone, browser, os, mobile, user_agent,
             first_seen, last_seen, num_logins)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8, ?9)
         ON CONFLICT (user_id, device_id) DO UPDATE SET
             zone = CASE WHEN excluded.zone <> '' THEN excluded.zone ELSE zone END,
             browser = CASE WHEN excluded.browser <> '' THEN excluded.browser ELSE browser END,
             os = CASE WHEN excluded.os <> '' THEN excluded.os ELSE os END,
             mobile = excluded.mobile,
             user_agent = CASE WHEN excluded.user_agent <> '' THEN excluded.user_agent ELSE user_agent END,
             first_seen = min(first_seen, excluded.first_seen),
             last_seen = max(last_seen, excluded.last_seen),
             num_logins = num_logins + excluded.num_logins",
    )?
    .execute(params![
        uid,
        d.sealed_id,
        d.zone,
        d.browser,
        d.os,
        d.mobile,
        d.user_agent,
        ts,
        logins
    ])?;
    Ok(())
}

/// The user's log, newest first, at most `limit` entries at or after `since`.
#[cfg(test)]
pub fn user_logs(
    conn: &Connection,
    name: &str,
    since: i64,
    limit: i64,
) -> Result<Vec<LogRecord>, StoreError> {
    query_logs(conn, name, since, None, limit)
}

/// The user's newest entries of one type.
pub fn user_logs_of_type(
    conn: &Connection,
    name: &str,
    log_type: &str,
    limit: i64,
) -> Result<Vec<LogRecord>, StoreError> {
    query_logs(conn, name, i64::MIN, Some(log_type), limit)
}

fn query_logs(
    conn: &Connection,
    name: &str,
    since: i64,
    log_type: Option<&str>,
    limit: i64,
) -> Result<Vec<LogRecord>, StoreError> {
    let mut out = Vec::new();
    for_each_log(conn, name, since, log_type, limit, |l| {
        out.push(l.to_record(name));
        Ok(())
    })?;
    Ok(out)
}

/// Column `i`, holding `v`, when it is not of the type asked for.
fn wrong_type(i: usize, v: ValueRef<'_>, e: FromSqlError) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(i, v.data_type(), Box::new(e))
}

pub(super) fn text_ref<'a>(r: &'a rusqlite::Row<'_>, i: usize) -> rusqlite::Result<&'a str> {
    match r.get_ref(i)? {
        ValueRef::Null => Ok(""),
        v => v.as_str().map_err(|e| wrong_type(i, v, e)),
    }
}

/// A user's entries, newest first; `?4` NULL for every type.
const LOGS_SQL: &str =
    "SELECT l.ts, l.log_type, l.message, l.service, l.login_method, l.login_authenticator_id,
            l.device_id, l.zone, l.browser, l.os, l.mobile, l.user_agent
     FROM users u JOIN user_logs l ON l.user_id = u.id
     WHERE u.name = ?1 AND l.ts >= ?2 AND (?4 IS NULL OR l.log_type = ?4)
     ORDER BY l.ts DESC, l.seq DESC
     LIMIT ?3";

/// Calls `f` on the user's entries, newest first, at most `limit` at or
/// after `since` (of `log_type` only, if given), borrowing each row's text
/// from SQLite: for answers written straight from the rows.
pub fn for_each_log(
    conn: &Connection,
    name: &str,
    since: i64,
    log_type: Option<&str>,
    limit: i64,
    mut f: impl FnMut(&LogRow<'_>) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let mut stmt = conn.prepare_cached(LOGS_SQL)?;
    let mut rows = stmt.query(params![name, since, limit, log_type])?;
    while let Some(r) = rows.next()? {
        let device = match r.get_ref(6)? {
            ValueRef::Null => None,
            v => Some(LogDevice {
                sealed_id: v.as_blob().map_err(|e| wrong_type(6, v, e))?,
                zone: text_ref(r, 7)?,
                browser: text_ref(r, 8)?,
                os: text_ref(r, 9)?,
                mobile: r.get::<_, Option<bool>>(10)?.unwrap_or(false),
                user_agent: text_ref(r, 11)?,
            }),
        };
        f(&LogRow {
            ts: r.get(0)?,
            log_type: text_ref(r, 1)?,
            message: text_ref(r, 2)?,
            service: text_ref(r, 3)?,
            login_method: text_ref(r, 4)?,
            login_authenticator_id: text_ref(r, 5)?,
            device,
        })?;
    }
    Ok(())
}

/// The columns [`device_row`] reads, in its order.
pub(super) const DEVICE_COLUMNS: &str =
    "d.device_id, d.zone, d.browser, d.os, d.mobile, d.user_agent,
     d.first_seen, d.last_seen, d.num_logins";

/// A device row read from [`DEVICE_COLUMNS`], starting at column `base`.
pub(super) fn device_row(r: &rusqlite::Row<'_>, base: usize) -> rusqlite::Result<DeviceRow> {
    Ok(DeviceRow {
        device: DeviceRecord {
            sealed_id: r.get(base)?,
            zone: r.get(base + 1)?,
            browser: r.get(base + 2)?,
            os: r.get(base + 3)?,
            mobile: r.get(base + 4)?,
            user_agent: r.get(base + 5)?,
        },
        first_seen: r.get(base + 6)?,
        last_seen: r.get(base + 7)?,
        num_logins: r.get(base + 8)?,
    })
}

/// The user's devices, most recently seen first.
pub fn user_devices(conn: &Connection, name: &str) -> Result<Vec<DeviceRow>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {DEVICE_COLUMNS}
         FROM users u JOIN devices d ON d.user_id = u.id
         WHERE u.name = ?1
         ORDER BY d.last_seen DESC, d.first_seen DESC"
    ))?;
    let rows = stmt.query_map([name], |r| device_row(r, 0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn user_countries(conn: &Connection, name: &str) -> Result<Vec<CountrySeen>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT c.zone, c.first_seen, c.last_seen
         FROM users u JOIN user_countries c ON c.user_id = u.id
         WHERE u.name = ?1
         ORDER BY c.first_seen, c.zone",
    )?;
    let rows = stmt.query_map([name], |r| {
        Ok(CountrySeen {
            zone: r.get(0)?,
            first_seen: r.get(1)?,
            last_seen: r.get(2)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Whether the user has this device: one index probe per table.
pub fn device_known(conn: &Connection, name: &str, sealed_id: &[u8]) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT 1 FROM users u JOIN devices d ON d.user_id = u.id
             WHERE u.name = ?1 AND d.device_id = ?2",
        )?
        .exists(params![name, sealed_id])?)
}

/// Records a login to `service`; an older timestamp never replaces a newer one.
pub fn set_last_login(
    conn: &Connection,
    name: &str,
    service: &str,
    ts: i64,
) -> Result<(), StoreError> {
    let uid = ensure_user(conn, name)?;
    conn.prepare_cached(
        "INSERT INTO last_login (user_id, service, ts) VALUES (?1, ?2, ?3)
         ON CONFLICT (user_id, service) DO UPDATE SET ts = max(ts, excluded.ts)",
    )?
    .execute(params![uid, service, ts])?;
    Ok(())
}

/// `(service, ts)` for every service of the user, or only `service` when given.
pub fn last_logins(
    conn: &Connection,
    name: &str,
    service: Option<&str>,
) -> Result<Vec<(String, i64)>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT l.service, l.ts FROM users u JOIN last_login l ON l.user_id = u.id
         WHERE u.name = ?1 AND (?2 IS NULL OR l.service = ?2)
         ORDER BY l.ts DESC, l.service",
    )?;
    let rows = stmt.query_map(params![name, service], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The names, in request order and without duplicates, with no last login on
/// any service at or after `cutoff`; names never seen are unused. One
/// set-based query over a JSON array, not one lookup per name.
pub fn unused_accounts(
    conn: &Connection,
    names: &[String],
    cutoff: i64,
) -> Result<Vec<String>, StoreError> {
    // Probed in the order of the names index (SQLite's BINARY collation is
    // byte order, as is `str`'s): consecutive names then share its leaf
    // pages, and each leaf is read once per call instead of once per name.
    let mut sorted: Vec<&str> = names.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    sorted.dedup();
    let json = serde_json::to_string(&sorted).map_err(|e| StoreError::Other(e.to_string()))?;
    let mut stmt = conn.prepare_cached(
        "SELECT j.value FROM json_each(?1) j
         WHERE NOT EXISTS (
             SELECT 1 FROM users u JOIN last_login l ON l.user_id = u.id
             WHERE u.name = j.value AND l.ts >= ?2)",
    )?;
    let unused = stmt
        .query_map(params![json, cutoff], |r| r.get::<_, String>(0))?
        .collect::<Result<std::collections::HashSet<String>, _>>()?;
    let mut listed = std::collections::HashSet::with_capacity(unused.len());
    Ok(names
        .iter()
        .filter(|n| unused.contains(n.as_str()) && listed.insert(n.as_str()))
        .cloned()
        .collect())
}

/// The newest entries across users that pass `f`, newest first.
pub fn recent_logs(
    conn: &Connection,
    f: &crate::store::types::EventFilter,
) -> Result<Vec<LogRecord>, StoreError> {
    // A named user goes through the user's own rows; otherwise the time index.
    let sql = if f.username.is_empty() {
        "SELECT u.name, l.ts, l.log_type, l.message, l.service, l.login_method,
                l.login_authenticator_id, l.device_id, l.zone, l.browser, l.os, l.mobile,
                l.user_agent
         FROM user_logs l JOIN users u ON u.id = l.user_id
         WHERE l.ts >= ?1 AND l.ts < ?2 AND ?3 = ''
           AND substr(u.name, 1, length(?4)) = ?4
           AND (?5 = '' OR l.log_type = ?5)
         ORDER BY l.ts DESC, l.seq DESC LIMIT ?6"
    } else {
        "SELECT u.name, l.ts, l.log_type, l.message, l.service, l.login_method,
                l.login_authenticator_id, l.device_id, l.zone, l.browser, l.os, l.mobile,
                l.user_agent
         FROM users u JOIN user_logs l ON l.user_id = u.id
         WHERE u.name = ?3 AND l.ts >= ?1 AND l.ts < ?2
           AND substr(u.name, 1, length(?4)) = ?4
           AND (?5 = '' OR l.log_type = ?5)
         ORDER BY l.ts DESC, l.seq DESC LIMIT ?6"
    };
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map(
        params![f.from, f.to, f.username, f.user_prefix, f.log_type, f.limit],
        named_log_row,
    )?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// A log entry from a row of the user's name and the log's columns: name,
/// ts, log_type, message, service, login_method, login_authenticator_id,
/// device_id, zone, browser, os, mobile, user_agent.
pub fn named_log_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<LogRecord> {
    let text =
        |i| -> rusqlite::Result<String> { Ok(r.get::<_, Option<String>>(i)?.unwrap_or_default()) };
    let device = match r.get::<_, Option<Vec<u8>>>(7)? {
        Some(sealed_id) => Some(crate::model::DeviceRecord {
            sealed_id,
            zone: text(8)?,
            browser: text(9)?,
            os: text(10)?,
            mobile: r.get::<_, Option<bool>>(11)?.unwrap_or(false),
            user_agent: text(12)?,
        }),
        None => None,
    };
    Ok(LogRecord {
        username: r.get(0)?,
        ts: r.get(1)?,
        log_type: r.get(2)?,
        message: text(3)?,
        service: text(4)?,
        login_method: text(5)?,
        login_authenticator_id: text(6)?,
        device,
    })
}

/// A day of time spent from a row of: name, device_id, day, seconds,
/// first_start, last_end.
pub fn time_spent_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<crate::model::TimeSpentRow> {
    Ok(crate::model::TimeSpentRow {
        username: r.get(0)?,
        sealed_device: r.get(1)?,
        day: r.get(2)?,
        seconds: r.get(3)?,
        first_start: r.get(4)?,
        last_end: r.get(5)?,
    })
}

/// Deletes every row of one user.
pub fn forget_user(conn: &Connection, name: &str) -> Result<Deleted, StoreError> {
    let Some(uid) = user_id(conn, name)? else {
        return Ok(Deleted::default());
    };
    let del = |sql: &str| -> Result<u64, StoreError> {
        Ok(conn.prepare_cached(sql)?.execute([uid])? as u64)
    };
    del(
        "DELETE FROM alert_deliveries WHERE alert_id IN (SELECT id FROM alerts WHERE user_id = ?1)",
    )?;
    del("DELETE FROM user_countries WHERE user_id = ?1")?;
    del("DELETE FROM agent_sessions WHERE user_id = ?1")?;
    del("DELETE FROM time_spent WHERE user_id = ?1")?;
    Ok(Deleted {
        user_logs: del("DELETE FROM user_logs WHERE user_id = ?1")?,
        devices: del("DELETE FROM devices WHERE user_id = ?1")?,
        last_logins: del("DELETE FROM last_login WHERE user_id = ?1")?,
        alerts: del("DELETE FROM alerts WHERE user_id = ?1")?,
        users: del("DELETE FROM users WHERE id = ?1")?,
    })
}

/// Copies the WAL into the database and truncates it, so rows just deleted
/// (overwritten in place by `secure_delete`) leave no older copy in the WAL.
/// Runs on its own connection; waits for readers up to the busy timeout.
pub fn truncate_wal(path: &std::path::Path) -> Result<(), StoreError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(1))?;
    // Another checkpoint in progress makes this one return at once, busy:
    // try again for a few seconds.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let outcome = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            r.get::<_, i64>(0)
        });
        match outcome {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) => match StoreError::from(e) {
                StoreError::Busy => {}
                other => return Err(other),
            },
        }
        if std::time::Instant::now() >= deadline {
            return Err(StoreError::Busy);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Devices (user, sealed ID) last seen before `before`, at most `limit`. A
/// plain scan, meant for a read-only connection: `devices` carries no index
/// on `last_seen`, which every login would otherwise move.
pub fn expired_devices(
    conn: &Connection,
    before: i64,
    limit: i64,
) -> Result<Vec<(i64, Vec<u8>)>, StoreError> {
    let mut stmt = conn
        .prepare_cached("SELECT user_id, device_id FROM devices WHERE last_seen < ?1 LIMIT ?2")?;
    let rows = stmt.query_map(params![before, limit], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Countries of users last seen before `before`, at most `limit`; a scan, as
/// [`expired_devices`].
pub fn expired_countries(
    conn: &Connection,
    before: i64,
    limit: i64,
) -> Result<Vec<(i64, String)>, StoreError> {
    let mut stmt = conn
        .prepare_cached("SELECT user_id, zone FROM user_countries WHERE last_seen < ?1 LIMIT ?2")?;
    let rows = stmt.query_map(params![before, limit], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Rows found expired by the scans above, to delete in a short write.
#[derive(Debug, Clone, Default)]
pub struct Expired {
    pub devices: Vec<(i64, Vec<u8>)>,
    pub countries: Vec<(i64, String)>,
}

/// One bounded step of retention: deletes at most `batch` log entries and
/// alerts older than `logs_before`, the devices and countries in `expired`
/// that are still last seen before `devices_before`, then users left with
/// no rows at all. Small steps keep each transaction short, so writers
/// queued behind it wait little.
pub fn prune_step(
    conn: &Connection,
    logs_before: i64,
    devices_before: i64,
    batch: i64,
    expired: &Expired,
) -> Result<Deleted, StoreError> {
    let user_logs = conn
        .prepare_cached(
            "DELETE FROM user_logs WHERE (user_id, ts, seq) IN
                 (SELECT user_id, ts, seq FROM user_logs WHERE ts < ?1 ORDER BY ts LIMIT ?2)",
        )?
        .execute(params![logs_before, batch])? as u64;
    let mut devices = 0;
    let mut stmt = conn.prepare_cached(
        "DELETE FROM devices WHERE user_id = ?1 AND device_id = ?2 AND last_seen < ?3",
    )?;
    for (uid, id) in &expired.devices {
        devices += stmt.execute(params![uid, id, devices_before])? as u64;
    }
    // Alerts age out with the logs; countries with the devices.
    let expired_alerts = "SELECT id FROM alerts WHERE created < ?1 ORDER BY created LIMIT ?2";
    conn.prepare_cached(&format!(
        "DELETE FROM alert_deliveries WHERE alert_id IN ({expired_alerts})"
    ))?
    .execute(params![logs_before, batch])?;
    let alerts = conn
        .prepare_cached(&format!(
            "DELETE FROM alerts WHERE id IN ({expired_alerts})"
        ))?
        .execute(params![logs_before, batch])? as u64;
    // Time spent ages out with the logs, by the day it was spent.
    conn.prepare_cached(
        "DELETE FROM time_spent WHERE (user_id, device_id, day) IN
             (SELECT user_id, device_id, day FROM time_spent WHERE day < ?1 ORDER BY day LIMIT ?2)",
    )?
    .execute(params![logs_before, batch])?;
    let mut stmt = conn.prepare_cached(
        "DELETE FROM user_countries WHERE user_id = ?1 AND zone = ?2 AND last_seen < ?3",
    )?;
    for (uid, zone) in &expired.countries {
        stmt.execute(params![uid, zone, devices_before])?;
    }
    let users = if user_logs + devices + alerts > 0 {
        conn.prepare_cached(
            "DELETE FROM users WHERE id IN (
                 SELECT u.id FROM users u
                 WHERE NOT EXISTS (SELECT 1 FROM user_logs l WHERE l.user_id = u.id)
                   AND NOT EXISTS (SELECT 1 FROM devices d WHERE d.user_id = u.id)
                   AND NOT EXISTS (SELECT 1 FROM last_login x WHERE x.user_id = u.id)
                   AND NOT EXISTS (SELECT 1 FROM alerts a WHERE a.user_id = u.id)
                   AND NOT EXISTS (SELECT 1 FROM time_spent t WHERE t.user_id = u.id)
                   AND NOT EXISTS (SELECT 1 FROM agent_sessions s WHERE s.user_id = u.id)
                 LIMIT ?1)",
        )?
        .execute([batch])? as u64
    } else {
        0
    };
    Ok(Deleted {
        user_logs,
        devices,
        last_logins: 0,
        alerts,
        users,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Connection {
        let mut c = Connection::open_in_memory().unwrap();
        crate::store::sqlite::schema::migrate(&mut c).unwrap();
        c
    }

    fn device(id: &[u8], zone: &str) -> DeviceRecord {
        DeviceRecord {
            sealed_id: id.to_vec(),
            zone: zone.into(),
            browser: "Firefox".into(),
            os: "Linux".into(),
            ..Default::default()
        }
    }

    #[test]
    fn device_list_tracks_first_last_and_logins() {
        let c = db();
        for (ts, t) in [(100, "login"), (300, "login"), (200, "logout")] {
            insert_log(
                &c,
                &LogRecord {
                    username: "u".into(),
                    ts,
                    log_type: t.into(),
                    device: Some(device(b"d1", "IT")),
                    ..Default::default()
                },
            )
            .unwrap();
        }
        let devs = user_devices(&c, "u").unwrap();
        assert_eq!(devs.len(), 1);
        assert_eq!(
            (devs[0].first_seen, devs[0].last_seen, devs[0].num_logins),
            (100, 300, 2)
        );
        assert!(device_known(&c, "u", b"d1").unwrap());
        assert!(!device_known(&c, "u", b"d2").unwrap());
        assert!(!device_known(&c, "other", b"d1").unwrap());
    }

    #[test]
    fn unused_accounts_is_set_based_and_keeps_request_order() {
        let c = db();
        set_last_login(&c, "active", "mail", 1000).unwrap();
        set_last_login(&c, "stale", "mail", 10).unwrap();
        let names: Vec<String> = ["stale", "active", "never", "stale", "never"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            unused_accounts(&c, &names, 500).unwrap(),
            vec!["stale", "never"]
        );
        assert!(unused_accounts(&c, &[], 500).unwrap().is_empty());
    }

    #[test]
    fn prune_removes_old_rows_in_batches_and_orphaned_users() {
        let c = db();
        for (user, ts) in [("old", 10), ("old", 20), ("old", 30), ("new", 1000)] {
            insert_log(
                &c,
                &LogRecord {
                    username: user.into(),
                    ts,
                    log_type: "login".into(),
                    device: Some(device(user.as_bytes(), "IT")),
                    ..Default::default()
                },
            )
            .unwrap();
        }
        let step = |c: &Connection| {
            let expired = Expired {
                devices: expired_devices(c, 500, 2).unwrap(),
                countries: expired_countries(c, 500, 2).unwrap(),
            };
            prune_step(c, 500, 500, 2, &expired).unwrap()
        };
        let first = step(&c);
        assert_eq!((first.user_logs, first.devices), (2, 1));
        let second = step(&c);
        assert_eq!((second.user_logs, second.devices, second.users), (1, 0, 1));
        assert_eq!(step(&c), Deleted::default());
        assert!(user_id(&c, "old").unwrap().is_none());
        assert_eq!(user_logs(&c, "new", 0, 10).unwrap().len(), 1);
    }

    #[test]
    fn forget_user_deletes_every_row_of_that_user_only() {
        let c = db();
        for user in ["a", "b"] {
            insert_log(
                &c,
                &LogRecord {
                    username: user.into(),
                    ts: 100,
                    log_type: "login".into(),
                    device: Some(device(b"d", "IT")),
                    ..Default::default()
                },
            )
            .unwrap();
            set_last_login(&c, user, "mail", 100).unwrap();
        }
        let d = forget_user(&c, "a").unwrap();
        assert_eq!(
            d,
            Deleted {
                user_logs: 1,
                devices: 1,
                last_logins: 1,
                alerts: 0,
                users: 1
            }
        );
        assert_eq!(forget_user(&c, "a").unwrap(), Deleted::default());
        assert_eq!(user_devices(&c, "b").unwrap().len(), 1);
    }

    #[test]
    fn last_login_never_goes_back_in_time() {
        let c = db();
        set_last_login(&c, "u", "mail", 1000).unwrap();
        set_last_login(&c, "u", "mail", 10).unwrap();
        set_last_login(&c, "u", "web", 20).unwrap();
        assert_eq!(
            last_logins(&c, "u", None).unwrap(),
            vec![("mail".to_string(), 1000), ("web".to_string(), 20)]
        );
        assert_eq!(
            last_logins(&c, "u", Some("web")).unwrap(),
            vec![("web".to_string(), 20)]
        );
    }

    #[test]
    fn every_kind_of_column_reads_back() {
        let c = db();
        let phone = DeviceRecord {
            sealed_id: vec![0, 1, 2, 0xff],
            zone: "IT".into(),
            browser: "Firefox".into(),
            os: "Android".into(),
            mobile: true,
            user_agent: String::new(),
        };
        let no_id = DeviceRecord {
            zone: "FR".into(),
            ..Default::default()
        };
        let entry = |ts, t: &str, d: Option<DeviceRecord>| LogRecord {
            username: "u".into(),
            ts,
            log_type: t.into(),
            device: d,
            ..Default::default()
        };
        let mut recs = vec![
            entry(3600, "login", Some(phone)),
            entry(7200, "password_change", None),
            entry(10800, "login", Some(no_id)),
        ];
        recs[1].message = "mot de passe changé ✓".into();
        recs[2].service = "mail".into();
        recs[2].login_authenticator_id = "key \"1\"".into();
        for r in &recs {
            insert_log(&c, r).unwrap();
        }
        recs.reverse();
        assert_eq!(user_logs(&c, "u", i64::MIN, 50).unwrap(), recs);
        assert_eq!(user_logs(&c, "u", 7200, 50).unwrap(), recs[..2]);
        assert_eq!(user_logs(&c, "u", i64::MIN, 1).unwrap(), recs[..1]);
        assert_eq!(
            user_logs_of_type(&c, "u", "password_change", 5).unwrap(),
            recs[1..2]
        );
        // A callback's error ends the read and leaves nothing open.
        let mut seen = 0;
        let r = for_each_log(&c, "u", i64::MIN, None, 50, |_| {
            seen += 1;
            Err(StoreError::Closed)
        });
        assert!(matches!(r, Err(StoreError::Closed)) && seen == 1);
        assert_eq!(user_logs(&c, "u", i64::MIN, 50).unwrap(), recs);
    }
}
