//! A whole database as JSON Lines of the wire types, for backups and moves
//! between databases; and a consistent online copy of the SQLite file.
//!
//! One record per line, tagged by `kind`:
//!
//! ```text
//! {"kind":"log","log":LogEntry}
//! {"kind":"device","username":"...","device":MetaDeviceInfo}
//! {"kind":"last_login","last_login":LastLoginEntry}
//! ```
//!
//! This is the one place under `store` that handles device IDs in clear: an
//! export opens them with the database's key (so it contains them, like the API
//! answers do, and must be kept as carefully as the key), and an import seals
//! them again under the target database's key. An import goes through the
//! target's privacy transforms, runs in one transaction, and only into an empty
//! database: any bad line is an error naming the line, and nothing is written.

use std::io::{BufRead, Write};
use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde::{Deserialize, Serialize};

use super::ops::{ensure_user, insert_log_row, LogRecord};
use super::{schema, StoreError};
use crate::privacy::Privacy;
use crate::service::check_username;
use crate::wire::{DeviceInfo, LastLoginEntry, LogEntry, MetaDeviceInfo, Timestamp};

/// One line of an export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Record {
    Log {
        log: LogEntry,
    },
    Device {
        username: String,
        device: MetaDeviceInfo,
    },
    LastLogin {
        last_login: LastLoginEntry,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("line {line}: {message}")]
    Line { line: usize, message: String },
    #[error("the database is not empty: import only into a new or empty database")]
    NotEmpty,
    #[error("{0} device IDs do not open under this key: is it the key of this database (secrets.device_key_file)?")]
    WrongKey(u64),
    #[error("no database at {0}")]
    Missing(String),
}

impl From<rusqlite::Error> for ExportError {
    fn from(e: rusqlite::Error) -> Self {
        ExportError::Store(e.into())
    }
}

/// Records written or read, per kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub logs: u64,
    pub devices: u64,
    pub last_logins: u64,
}

/// Opens an existing database read-only, refusing a newer schema.
pub fn open_read_only(path: &Path) -> Result<Connection, ExportError> {
    if !path.is_file() {
        return Err(ExportError::Missing(path.display().to_string()));
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

/// Opens (creating if needed) and migrates a database to import into.
pub fn open_for_import(path: &Path) -> Result<Connection, ExportError> {
    let mut conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "secure_delete", "ON")?;
    schema::migrate(&mut conn)?;
    Ok(conn)
}

fn text(r: &rusqlite::Row, i: usize) -> rusqlite::Result<String> {
    Ok(r.get::<_, Option<String>>(i)?.unwrap_or_default())
}

fn line(w: &mut dyn Write, rec: &Record) -> Result<(), ExportError> {
    serde_json::to_writer(&mut *w, rec).map_err(std::io::Error::from)?;
    w.write_all(b"\n")?;
    Ok(())
}

/// Writes every log entry, device and last login, from one read snapshot,
/// in an order that depends only on the data (not on row IDs or the key).
pub fn export(
    conn: &Connection,
    privacy: &Privacy,
    out: &mut dyn Write,
) -> Result<Counts, ExportError> {
    let tx = conn.unchecked_transaction()?;
    let mut counts = Counts::default();
    let mut unopened = 0u64;
    let mut open = |user: &str, sealed: &[u8]| -> String {
        privacy.key.open_id(user, sealed).unwrap_or_else(|| {
            unopened += 1;
            String::new()
        })
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
        let username: String = r.get(0)?;
        let sealed: Option<Vec<u8>> = r.get(7)?;
        let device_info = match sealed {
            Some(sealed) => Some(DeviceInfo {
                id: open(&username, &sealed),
                remote_addr: String::new(),
                remote_zone: text(r, 8)?,
                browser: text(r, 9)?,
                os: text(r, 10)?,
                mobile: r.get::<_, Option<bool>>(11)?.unwrap_or(false),
                user_agent: text(r, 12)?,
            }),
            None => None,
        };
        let log = LogEntry {
            timestamp: Timestamp::from_unix(r.get(1)?),
            log_type: r.get(2)?,
            message: text(r, 3)?,
            service: text(r, 4)?,
            login_method: text(r, 5)?,
            login_authenticator_id: text(r, 6)?,
            device_info,
            username,
        };
        line(out, &Record::Log { log })?;
        counts.logs += 1;
    }
    drop(rows);
    drop(stmt);

    // A user's devices are sorted by their clear ID, which is the same under
    // any key, so two exports of the same data are identical.
    let mut stmt = tx.prepare(
        "SELECT u.name, d.device_id, d.zone, d.browser, d.os, d.mobile, d.user_agent,
                d.first_seen, d.last_seen, d.num_logins
         FROM devices d JOIN users u ON u.id = d.user_id
         ORDER BY u.name",
    )?;
    let mut rows = stmt.query([])?;
    let mut pending: Vec<(String, MetaDeviceInfo)> = Vec::new();
    let flush = |pending: &mut Vec<(String, MetaDeviceInfo)>,
                 out: &mut dyn Write|
     -> Result<(), ExportError> {
        pending.sort_by(|(_, a), (_, b)| {
            let id = |m: &MetaDeviceInfo| m.device_info.as_ref().map(|d| d.id.clone());
            (a.first_seen, a.last_seen, id(a)).cmp(&(b.first_seen, b.last_seen, id(b)))
        });
        for (username, device) in pending.drain(..) {
            line(out, &Record::Device { username, device })?;
        }
        Ok(())
    };
    while let Some(r) = rows.next()? {
        let username: String = r.get(0)?;
        if pending.first().is_some_and(|(u, _)| *u != username) {
            flush(&mut pending, out)?;
        }
        let sealed: Vec<u8> = r.get(1)?;
        let device = MetaDeviceInfo {
            device_info: Some(DeviceInfo {
                id: open(&username, &sealed),
                remote_addr: String::new(),
                remote_zone: r.get(2)?,
                browser: r.get(3)?,
                os: r.get(4)?,
                mobile: r.get(5)?,
                user_agent: r.get(6)?,
            }),
            first_seen: Timestamp::from_unix(r.get(7)?),
            last_seen: Timestamp::from_unix(r.get(8)?),
            num_logins: r.get(9)?,
        };
        pending.push((username, device));
        counts.devices += 1;
    }
    flush(&mut pending, out)?;
    drop(rows);
    drop(stmt);

    let mut stmt = tx.prepare(
        "SELECT u.name, l.service, l.ts FROM last_login l JOIN users u ON u.id = l.user_id
         ORDER BY u.name, l.service",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let last_login = LastLoginEntry {
            username: r.get(0)?,
            service: r.get(1)?,
            timestamp: Timestamp::from_unix(r.get(2)?),
        };
        line(out, &Record::LastLogin { last_login })?;
        counts.last_logins += 1;
    }
    out.flush()?;
    if unopened > 0 {
        return Err(ExportError::WrongKey(unopened));
    }
    Ok(counts)
}

fn is_empty(conn: &Connection) -> Result<bool, ExportError> {
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

fn check_time(t: &Timestamp, field: &str) -> Result<i64, String> {
    if t.is_zero() {
        return Err(format!("{field} is required"));
    }
    Ok(t.unix())
}

fn check_log_type(t: &str) -> Result<(), String> {
    let ok = !t.is_empty()
        && t.len() <= 64
        && t.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err("log_type must be lowercase letters, digits and _".into())
    }
}

fn insert_record(conn: &Connection, privacy: &Privacy, rec: Record) -> Result<(), String> {
    let sql = |e: rusqlite::Error| match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::ConstraintViolation) => "duplicate record".to_string(),
        _ => StoreError::from(e).to_string(),
    };
    let user = |name: &str| -> Result<i64, String> {
        check_username(name).map_err(|e| e.to_string())?;
        ensure_user(conn, name).map_err(|e| e.to_string())
    };
    match rec {
        Record::Log { log } => {
            let uid = user(&log.username)?;
            check_log_type(&log.log_type)?;
            let ts = privacy.quantize_log(check_time(&log.timestamp, "timestamp")?);
            let rec = LogRecord {
                username: log.username.clone(),
                ts,
                log_type: log.log_type.clone(),
                message: log.message.clone(),
                service: log.service.clone(),
                login_method: log.login_method.clone(),
                login_authenticator_id: log.login_authenticator_id.clone(),
                device: log
                    .device_info
                    .as_ref()
                    .map(|d| privacy.reduce_device(&log.username, d)),
            };
            insert_log_row(conn, uid, &rec).map_err(sql)?;
        }
        Record::Device { username, device } => {
            let uid = user(&username)?;
            let info = device
                .device_info
                .as_ref()
                .ok_or("device.device_info is required")?;
            if info.id.is_empty() {
                return Err("device.device_info.id is required".into());
            }
            let first = privacy.quantize_log(check_time(&device.first_seen, "first_seen")?);
            let last = privacy.quantize_log(check_time(&device.last_seen, "last_seen")?);
            if first > last {
                return Err("first_seen is after last_seen".into());
            }
            if device.num_logins < 0 {
                return Err("num_logins is negative".into());
            }
            let d = privacy.reduce_device(&username, info);
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
                    first,
                    last,
                    device.num_logins
                ])
            })
            .map_err(sql)?;
        }
        Record::LastLogin { last_login: l } => {
            let uid = user(&l.username)?;
            if l.service.is_empty() {
                return Err("service is required".into());
            }
            let ts = privacy.quantize_last_login(check_time(&l.timestamp, "timestamp")?);
            conn.prepare_cached(
                "INSERT INTO last_login (user_id, service, ts) VALUES (?1, ?2, ?3)",
            )
            .and_then(|mut s| s.execute(params![uid, l.service, ts]))
            .map_err(sql)?;
        }
    }
    Ok(())
}

/// Reads an export into an empty database, sealing device IDs under
/// `privacy`'s key, in one transaction: all of it or, on any error, nothing.
pub fn import(
    conn: &mut Connection,
    privacy: &Privacy,
    input: &mut dyn BufRead,
) -> Result<Counts, ExportError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    if !is_empty(&tx)? {
        return Err(ExportError::NotEmpty);
    }
    let mut counts = Counts::default();
    let mut buf = String::new();
    let mut n = 0;
    loop {
        buf.clear();
        n += 1;
        let read = input.read_line(&mut buf).map_err(|e| ExportError::Line {
            line: n,
            message: e.to_string(),
        })?;
        if read == 0 {
            break;
        }
        if buf.trim().is_empty() {
            continue;
        }
        let rec: Record = serde_json::from_str(&buf).map_err(|e| ExportError::Line {
            line: n,
            message: format!("invalid record: {e}"),
        })?;
        match &rec {
            Record::Log { .. } => counts.logs += 1,
            Record::Device { .. } => counts.devices += 1,
            Record::LastLogin { .. } => counts.last_logins += 1,
        }
        insert_record(&tx, privacy, rec)
            .map_err(|message| ExportError::Line { line: n, message })?;
    }
    rebuild_derived(&tx)?;
    tx.commit()?;
    Ok(counts)
}

/// Tables the server derives from the log, filled as its migration would.
fn rebuild_derived(conn: &Connection) -> Result<(), ExportError> {
    let has_countries = conn
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'user_countries'",
            [],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
    if has_countries {
        conn.execute_batch(
            "INSERT OR IGNORE INTO user_countries (user_id, zone, first_seen, last_seen)
                 SELECT user_id, zone, min(ts), max(ts) FROM user_logs
                 WHERE zone IS NOT NULL AND zone <> '' GROUP BY user_id, zone",
        )?;
    }
    Ok(())
}

/// A consistent copy of a live database into `dest` (which must not exist),
/// created readable by the owner only.
pub fn backup(conn: &Connection, dest: &Path) -> Result<(), ExportError> {
    use std::os::unix::fs::OpenOptionsExt;
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
        .map_err(ExportError::from)
        .and_then(|d| Ok(conn.execute("VACUUM INTO ?1", [d]).map(|_| ())?));
    if result.is_err() {
        let _ = std::fs::remove_file(dest);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PrivacyConfig;
    use crate::crypto::DeviceKey;

    fn privacy(seed: u8) -> Privacy {
        Privacy::new(
            PrivacyConfig::default(),
            DeviceKey::from_bytes(&[seed; 32]),
            None,
        )
    }

    fn db() -> Connection {
        let mut c = Connection::open_in_memory().unwrap();
        schema::migrate(&mut c).unwrap();
        c
    }

    const SAMPLE: &str = r#"{"kind":"log","log":{"timestamp":"2026-01-02T10:00:00Z","username":"bob","log_type":"login","service":"mail","device_info":{"id":"dev-1","remote_addr":"","remote_zone":"IT","user_agent":"","browser":"Firefox","os":"Linux","mobile":false}}}
{"kind":"log","log":{"timestamp":"2026-01-02T11:00:00Z","username":"bob","log_type":"logout"}}
{"kind":"device","username":"bob","device":{"device_info":{"id":"dev-1","remote_addr":"","remote_zone":"IT","user_agent":"","browser":"Firefox","os":"Linux","mobile":false},"first_seen":"2026-01-02T10:00:00Z","last_seen":"2026-01-02T10:00:00Z","num_logins":1}}
{"kind":"last_login","last_login":{"timestamp":"2026-01-02T00:00:00Z","username":"bob","service":"mail"}}
"#;

    #[test]
    fn import_then_export_reproduces_the_input_under_another_key() {
        let mut c = db();
        let counts = import(&mut c, &privacy(1), &mut SAMPLE.as_bytes()).unwrap();
        assert_eq!(
            counts,
            Counts {
                logs: 2,
                devices: 1,
                last_logins: 1
            }
        );
        let sealed: Vec<u8> = c
            .query_row("SELECT device_id FROM devices", [], |r| r.get(0))
            .unwrap();
        assert!(!sealed.windows(5).any(|w| w == b"dev-1"));
        let mut out = Vec::new();
        export(&c, &privacy(1), &mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), SAMPLE);
        // Another key cannot open the IDs, and says so.
        assert!(matches!(
            export(&c, &privacy(2), &mut Vec::new()),
            Err(ExportError::WrongKey(2))
        ));
    }

    #[test]
    fn a_bad_line_names_the_line_and_writes_nothing() {
        let mut c = db();
        let bad = format!("{SAMPLE}{{\"kind\":\"log\",\"log\":{{\"username\":\"\"}}}}\n");
        let err = import(&mut c, &privacy(1), &mut bad.as_bytes()).unwrap_err();
        assert!(err.to_string().starts_with("line 5: "), "{err}");
        assert!(is_empty(&c).unwrap());
        let dup = format!("{SAMPLE}{}", SAMPLE.lines().nth(3).unwrap());
        let err = import(&mut c, &privacy(1), &mut dup.as_bytes()).unwrap_err();
        assert_eq!(err.to_string(), "line 5: duplicate record");
        let unknown = "{\"kind\":\"alert\"}\n";
        let err = import(&mut c, &privacy(1), &mut unknown.as_bytes()).unwrap_err();
        assert!(
            err.to_string().starts_with("line 1: invalid record"),
            "{err}"
        );
        assert!(is_empty(&c).unwrap());
    }

    #[test]
    fn a_database_of_an_older_schema_exports_in_arrival_order() {
        let mut c = Connection::open_in_memory().unwrap();
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
        let mut out = Vec::new();
        let counts = export(&c, &privacy(1), &mut out).unwrap();
        assert_eq!(counts.logs, 2);
        let out = String::from_utf8(out).unwrap();
        let earlier = out.find("earlier").unwrap();
        assert!(earlier < out.find("later").unwrap(), "{out}");
    }

    #[test]
    fn import_refuses_a_database_with_data() {
        let mut c = db();
        import(&mut c, &privacy(1), &mut SAMPLE.as_bytes()).unwrap();
        assert!(matches!(
            import(&mut c, &privacy(1), &mut SAMPLE.as_bytes()),
            Err(ExportError::NotEmpty)
        ));
    }
}
