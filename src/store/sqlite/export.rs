//! Whole-database streams on SQLite, on their own connections (the server
//! may be running or not): the export of every stored record from one read
//! snapshot, the import into an empty database in one transaction, a bulk
//! load, a consistent online copy of the file, and the room the data takes.

use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use super::agents::{key_from_row, KEY_COLUMNS};
use super::ops::DEVICE_COLUMNS;
use super::{alerts, ops, schema};
use crate::model::{Counts, Record, StorageSize};
use crate::store::types::{BulkError, StoreError};

impl From<rusqlite::Error> for BulkError {
    fn from(e: rusqlite::Error) -> Self {
        BulkError::Store(e.into())
    }
}

/// Opens an existing database read-only, refusing a newer schema.
fn open_read_only(path: &Path) -> Result<Connection, BulkError> {
    if !path.is_file() {
        return Err(BulkError::Missing(path.display().to_string()));
    }
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > schema::current_version() {
        return Err(StoreError::Downgrade {
            found: version,
            supported: schema::current_version(),
        }
        .into());
    }
    Ok(conn)
}

/// Opens (creating if needed) and migrates a database to write into.
fn open_for_writing(path: &Path) -> Result<Connection, BulkError> {
    let mut conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "secure_delete", "ON")?;
    schema::migrate(&mut conn)?;
    Ok(conn)
}

/// Every log entry (by user name, time, arrival), device (by user name) and
/// last login (by user name, service), from one read snapshot.
pub fn export(
    path: &Path,
    out: &mut dyn FnMut(Record) -> Result<(), BulkError>,
) -> Result<Counts, BulkError> {
    let conn = open_read_only(path)?;
    let tx = conn.unchecked_transaction()?;
    let mut counts = Counts::default();
    let mut emit = |r: Record| {
        counts.count(&r);
        out(r)
    };

    // Entries of one hour keep their order of arrival: `seq` from schema 4
    // on, the row ID before (a database not yet opened by this version).
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let arrival = if version >= 4 { "l.seq" } else { "l.id" };
    let mut stmt = tx.prepare(&format!(
        "SELECT u.name, l.ts, l.log_type, l.message, l.service, l.login_method,
                l.login_authenticator_id, l.device_id, l.zone, l.browser, l.os, l.mobile,
                l.user_agent
         FROM user_logs l JOIN users u ON u.id = l.user_id
         ORDER BY u.name, l.ts, {arrival}"
    ))?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        emit(Record::Log(ops::named_log_row(r)?))?;
    }
    drop(rows);
    drop(stmt);

    let mut stmt = tx.prepare(&format!(
        "SELECT u.name, {DEVICE_COLUMNS}
         FROM devices d JOIN users u ON u.id = d.user_id
         ORDER BY u.name, d.first_seen, d.last_seen, d.device_id"
    ))?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        emit(Record::Device {
            username: r.get(0)?,
            row: ops::device_row(r, 1)?,
        })?;
    }
    drop(rows);
    drop(stmt);

    let mut stmt = tx.prepare(
        "SELECT u.name, l.service, l.ts FROM last_login l JOIN users u ON u.id = l.user_id
         ORDER BY u.name, l.service",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        emit(Record::LastLogin {
            username: r.get(0)?,
            service: r.get(1)?,
            ts: r.get(2)?,
        })?;
    }
    drop(rows);
    drop(stmt);
    if version >= 5 {
        export_agents(&tx, &mut emit)?;
    }
    if version >= 6 {
        super::access::export(&tx, &mut emit)?;
    }
    Ok(counts)
}

/// The agents' keys and time spent (schema 5 on).
fn export_agents(
    tx: &Connection,
    emit: &mut dyn FnMut(Record) -> Result<(), BulkError>,
) -> Result<(), BulkError> {
    let mut stmt = tx.prepare(&format!(
        "SELECT {KEY_COLUMNS}, key_hash FROM agent_keys ORDER BY id"
    ))?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        emit(Record::AgentKey {
            key: key_from_row(r)?,
            key_hash: r.get(5)?,
        })?;
    }
    drop(rows);
    drop(stmt);
    let mut stmt = tx.prepare(
        "SELECT u.name, t.device_id, t.day, t.seconds, t.first_start, t.last_end
         FROM time_spent t JOIN users u ON u.id = t.user_id
         ORDER BY u.name, t.day, t.device_id",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        emit(Record::TimeSpent(ops::time_spent_row(r)?))?;
    }
    Ok(())
}

fn is_empty(conn: &Connection) -> Result<bool, BulkError> {
    let any: Option<i64> = conn
        .query_row(
            "SELECT 1 WHERE EXISTS (SELECT 1 FROM users) OR EXISTS (SELECT 1 FROM user_logs)
                 OR EXISTS (SELECT 1 FROM devices) OR EXISTS (SELECT 1 FROM last_login)",
            [],
            |r| r.get(0),
        )
        .optional()?;
    Ok(any.is_none())
}

fn insert_record(conn: &Connection, rec: &Record) -> Result<(), BulkError> {
    let sql = |e: rusqlite::Error| match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::ConstraintViolation) => BulkError::Duplicate,
        _ => e.into(),
    };
    match rec {
        Record::Log(log) => {
            let uid = ops::ensure_user(conn, &log.username)?;
            ops::insert_log_row(conn, uid, log).map_err(sql)?;
        }
        Record::Device { username, row } => {
            let uid = ops::ensure_user(conn, username)?;
            let d = &row.device;
            conn.prepare_cached(
                "INSERT INTO devices (user_id, device_id, zone, browser, os, mobile, user_agent,
                     first_seen, last_seen, num_logins)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    uid,
                    d.sealed_id,
                    d.zone,
                    d.browser,
                    d.os,
                    d.mobile,
                    d.user_agent,
                    row.first_seen,
                    row.last_seen,
                    row.num_logins
                ])
            })
            .map_err(sql)?;
        }
        Record::LastLogin {
            username,
            service,
            ts,
        } => {
            let uid = ops::ensure_user(conn, username)?;
            conn.prepare_cached(
                "INSERT INTO last_login (user_id, service, ts) VALUES (?1, ?2, ?3)",
            )
            .and_then(|mut s| s.execute(params![uid, service, ts]))
            .map_err(sql)?;
        }
        Record::AgentKey { key, key_hash } => {
            conn.prepare_cached(
                "INSERT INTO agent_keys (id, tenant, site, key_hash, created, disabled)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    key.id,
                    key.tenant,
                    key.site,
                    key_hash,
                    key.created,
                    key.disabled
                ])
            })
            .map_err(sql)?;
        }
        Record::TimeSpent(t) => {
            let uid = ops::ensure_user(conn, &t.username)?;
            conn.prepare_cached(
                "INSERT INTO time_spent (user_id, device_id, day, seconds, first_start, last_end)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    uid,
                    t.sealed_device,
                    t.day,
                    t.seconds,
                    t.first_start,
                    t.last_end
                ])
            })
            .map_err(sql)?;
        }
        Record::AccessRead(a) => {
            super::access::import(conn, a).map_err(sql)?;
        }
    }
    Ok(())
}

/// Reads records into an empty database in one transaction: all of them or,
/// on any error (the source's included), nothing.
pub fn import(
    path: &Path,
    next: &mut dyn FnMut() -> Option<Result<Record, BulkError>>,
) -> Result<Counts, BulkError> {
    let mut conn = open_for_writing(path)?;
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    if !is_empty(&tx)? {
        return Err(BulkError::NotEmpty);
    }
    let mut counts = Counts::default();
    while let Some(rec) = next() {
        let rec = rec?;
        counts.count(&rec);
        insert_record(&tx, &rec)?;
    }
    rebuild_derived(&tx)?;
    tx.commit()?;
    Ok(counts)
}

/// Tables the server derives from the log, filled as its migration would.
fn rebuild_derived(conn: &Connection) -> Result<(), BulkError> {
    conn.execute_batch(
        "INSERT OR IGNORE INTO user_countries (user_id, zone, first_seen, last_seen)
             SELECT user_id, zone, min(ts) - min(ts) % 86400, max(ts) - max(ts) % 86400
             FROM user_logs
             WHERE zone IS NOT NULL AND zone <> '' GROUP BY user_id, zone",
    )?;
    Ok(())
}

/// Entries per transaction of a bulk load.
const LOAD_BATCH: usize = 20_000;

/// Appends log entries (kept as the server keeps them: device list and
/// countries seen) and last logins (never moving one back) in large
/// transactions, synced once at the end.
pub fn bulk_load(
    path: &Path,
    records: &mut dyn Iterator<Item = Record>,
) -> Result<Counts, BulkError> {
    let mut conn = open_for_writing(path)?;
    conn.pragma_update(None, "synchronous", "OFF")?;
    conn.pragma_update(None, "cache_size", -262_144)?;
    let mut counts = Counts::default();
    let mut records = records.peekable();
    while records.peek().is_some() {
        let tx = conn.transaction()?;
        for rec in records.by_ref().take(LOAD_BATCH) {
            counts.count(&rec);
            match rec {
                Record::Log(log) => {
                    let uid = ops::ensure_user(&tx, &log.username)?;
                    alerts::record_log(&tx, uid, &log, false)?;
                }
                Record::LastLogin {
                    username,
                    service,
                    ts,
                } => ops::set_last_login(&tx, &username, &service, ts)?,
                _ => {
                    return Err(BulkError::Unsupported(
                        "a bulk load takes log entries and last logins; devices follow from the entries"
                            .into(),
                    ))
                }
            }
        }
        tx.commit()?;
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    Ok(counts)
}

/// A consistent copy of a live database into `dest` (which must not exist),
/// created readable by the owner only.
pub fn backup(path: &Path, dest: &Path) -> Result<(), BulkError> {
    use std::os::unix::fs::OpenOptionsExt;
    let conn = open_read_only(path)?;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dest)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", dest.display())))?;
    let dest_str = dest.to_str().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{}: not a UTF-8 path", dest.display()),
        )
    });
    let result = dest_str
        .map_err(BulkError::from)
        .and_then(|d| Ok(conn.execute("VACUUM INTO ?1", [d]).map(|_| ())?));
    if result.is_err() {
        let _ = std::fs::remove_file(dest);
    }
    result
}

/// How much room the log takes, from SQLite's own page accounting.
pub fn storage_size(path: &Path) -> Result<StorageSize, BulkError> {
    let conn = open_read_only(path)?;
    let count = |sql: &str| -> Result<u64, BulkError> {
        Ok(conn.query_row(sql, [], |r| r.get::<_, i64>(0))? as u64)
    };
    let log_entries = count("SELECT count(*) FROM user_logs")?;
    let users = count("SELECT count(*) FROM users")?;
    let devices = count("SELECT count(*) FROM devices")?;
    let page_size = count("PRAGMA page_size")?;
    let pages = count("PRAGMA page_count")?;
    let free = count("PRAGMA freelist_count")?;
    let user_logs_bytes = count(
        "SELECT coalesce(sum(pgsize), 0) FROM dbstat
         WHERE name IN (SELECT name FROM sqlite_schema WHERE tbl_name = 'user_logs')",
    )?;
    let total_bytes = (pages - free) * page_size;
    Ok(StorageSize::new(
        log_entries,
        users,
        devices,
        total_bytes,
        user_logs_bytes,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_of_an_older_schema_exports_in_arrival_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        let mut c = Connection::open(&path).unwrap();
        let tx = c.transaction().unwrap();
        for sql in &schema::MIGRATIONS[..3] {
            tx.execute_batch(sql).unwrap();
        }
        tx.execute_batch(
            "INSERT INTO users (id, name) VALUES (1, 'bob');
             INSERT INTO user_logs (id, user_id, ts, log_type, message) VALUES
                 (7, 1, 3600, 'login', 'later'), (3, 1, 3600, 'login', 'earlier');
             PRAGMA user_version = 3;",
        )
        .unwrap();
        tx.commit().unwrap();
        drop(c);
        let mut messages = Vec::new();
        let counts = export(&path, &mut |r| {
            if let Record::Log(l) = r {
                messages.push(l.message);
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(counts.logs, 2);
        assert_eq!(messages, ["earlier", "later"]);
    }
}
