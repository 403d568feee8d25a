//! A user's log read straight through SQLite's C API.
//!
//! get_user_logs reads about ten rows of twelve columns for every request.
//! Through rusqlite each column costs a bounds check against the column
//! count, a type query and a `ValueRef` before the text itself, and its
//! statement cache hashes the SQL text on every call. Here the statement is
//! prepared once per reader thread and kept ([`Kept`]), and each text column
//! is read with `sqlite3_column_text` and `sqlite3_column_bytes` alone.
//!
//! Every other caller (the writer, tests, tools) prepares the same statement
//! for the call: one code path reads the rows either way.

use std::cell::RefCell;
use std::ffi::{c_char, c_int, CStr};
use std::ptr::NonNull;

use rusqlite::{ffi, Connection};

use super::StoreError;
use crate::model::{LogDevice, LogRow};

const SQL: &str =
    "SELECT l.ts, l.log_type, l.message, l.service, l.login_method, l.login_authenticator_id,
            l.device_id, l.zone, l.browser, l.os, l.mobile, l.user_agent
     FROM users u JOIN user_logs l ON l.user_id = u.id
     WHERE u.name = ?1 AND l.ts >= ?2 AND (?4 IS NULL OR l.log_type = ?4)
     ORDER BY l.ts DESC, l.seq DESC
     LIMIT ?3";

/// The prepared query, on one connection.
pub(super) struct LogQuery {
    stmt: NonNull<ffi::sqlite3_stmt>,
    db: *mut ffi::sqlite3,
}

thread_local! {
    /// The reader thread's query, for its own connection.
    static KEPT: RefCell<Option<LogQuery>> = const { RefCell::new(None) };
}

/// A prepared query kept for a connection on this thread, until dropped.
/// SQLite refuses to close a connection with a statement still open, so it
/// must be dropped before the connection: declared after it.
pub(super) struct Kept(());

impl Kept {
    pub(super) fn new(conn: &Connection) -> Result<Kept, StoreError> {
        let q = LogQuery::prepare(conn)?;
        KEPT.with(|k| *k.borrow_mut() = Some(q));
        Ok(Kept(()))
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        // Finalized here, also when a job's panic unwinds the thread.
        KEPT.with(|k| k.borrow_mut().take());
    }
}

/// Calls `f` on the user's entries, newest first, at most `limit` at or
/// after `since` (of `log_type` only, if given), without copying them out of
/// SQLite: for answers written straight from the rows.
pub fn for_each_log(
    conn: &Connection,
    name: &str,
    since: i64,
    log_type: Option<&str>,
    limit: i64,
    f: impl FnMut(&LogRow<'_>) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    // SAFETY: only the handle's address is compared; nothing is called on it.
    let db = unsafe { conn.handle() };
    // Taken out for the call, so that a nested call (from `f`) prepares its
    // own instead of finding the statement mid-step.
    let kept = KEPT.with(|k| {
        let mut k = k.borrow_mut();
        match &*k {
            Some(q) if q.db == db => k.take(),
            _ => None,
        }
    });
    match kept {
        Some(mut q) => {
            let r = q.run(name, since, log_type, limit, f);
            KEPT.with(|k| *k.borrow_mut() = Some(q));
            r
        }
        None => LogQuery::prepare(conn)?.run(name, since, log_type, limit, f),
    }
}

impl LogQuery {
    fn prepare(conn: &Connection) -> Result<Self, StoreError> {
        // SAFETY: the handle is the open connection's. The statement is
        // finalized by `Drop`, and a `Kept` one is dropped
        // before the connection closes.
        unsafe {
            let db = conn.handle();
            let mut stmt = std::ptr::null_mut();
            let rc = ffi::sqlite3_prepare_v3(
                db,
                SQL.as_ptr().cast::<c_char>(),
                SQL.len() as c_int,
                ffi::SQLITE_PREPARE_PERSISTENT as _,
                &mut stmt,
                std::ptr::null_mut(),
            );
            match NonNull::new(stmt) {
                Some(stmt) if rc == ffi::SQLITE_OK => Ok(LogQuery { stmt, db }),
                _ => Err(error(db, rc)),
            }
        }
    }

    fn run(
        &mut self,
        name: &str,
        since: i64,
        log_type: Option<&str>,
        limit: i64,
        mut f: impl FnMut(&LogRow<'_>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let s = self.stmt.as_ptr();
        // Reset and unbound however the loop ends: a statement left
        // mid-step would hold its read transaction open, and the bound text
        // is borrowed.
        struct Done(*mut ffi::sqlite3_stmt);
        impl Drop for Done {
            fn drop(&mut self) {
                // SAFETY: the statement is alive for the whole of `run`.
                unsafe {
                    ffi::sqlite3_reset(self.0);
                    ffi::sqlite3_clear_bindings(self.0);
                }
            }
        }
        let _done = Done(s);
        // SAFETY: `s` is a prepared statement of `self.db`, used by this
        // thread only. The texts bound with SQLITE_STATIC outlive the steps
        // (`_done` unbinds them before they are dropped). Column values
        // are read only between a step that returned a row and the next
        // step, as SQLite requires, and `f` sees them only for that long.
        unsafe {
            bind_text(self.db, s, 1, Some(name))?;
            check(self.db, ffi::sqlite3_bind_int64(s, 2, since))?;
            check(self.db, ffi::sqlite3_bind_int64(s, 3, limit))?;
            bind_text(self.db, s, 4, log_type)?;
            loop {
                match ffi::sqlite3_step(s) {
                    ffi::SQLITE_ROW => {}
                    ffi::SQLITE_DONE => return Ok(()),
                    rc => return Err(error(self.db, rc)),
                }
                let device = match blob(self.db, s, 6)? {
                    None => None,
                    Some(sealed_id) => Some(LogDevice {
                        sealed_id,
                        zone: text(self.db, s, 7)?,
                        browser: text(self.db, s, 8)?,
                        os: text(self.db, s, 9)?,
                        mobile: ffi::sqlite3_column_int64(s, 10) != 0,
                        user_agent: text(self.db, s, 11)?,
                    }),
                };
                f(&LogRow {
                    ts: ffi::sqlite3_column_int64(s, 0),
                    log_type: text(self.db, s, 1)?,
                    message: text(self.db, s, 2)?,
                    service: text(self.db, s, 3)?,
                    login_method: text(self.db, s, 4)?,
                    login_authenticator_id: text(self.db, s, 5)?,
                    device,
                })?;
            }
        }
    }
}

impl Drop for LogQuery {
    fn drop(&mut self) {
        // SAFETY: the statement was prepared by `prepare` and is finalized
        // once, here.
        unsafe {
            ffi::sqlite3_finalize(self.stmt.as_ptr());
        }
    }
}

/// Binds `v`, or NULL, without a copy.
///
/// # Safety
/// `s` is a live statement of `db`, and `v` outlives its use by the statement.
unsafe fn bind_text(
    db: *mut ffi::sqlite3,
    s: *mut ffi::sqlite3_stmt,
    i: c_int,
    v: Option<&str>,
) -> Result<(), StoreError> {
    let rc = match v {
        None => ffi::sqlite3_bind_null(s, i),
        Some(v) => {
            let n = c_int::try_from(v.len()).map_err(|_| error(db, ffi::SQLITE_TOOBIG))?;
            ffi::sqlite3_bind_text(s, i, v.as_ptr().cast::<c_char>(), n, ffi::SQLITE_STATIC())
        }
    };
    check(db, rc)
}

/// A text column; NULL reads as "".
///
/// # Safety
/// `s` is a statement of `db` positioned on a row; the text is valid until
/// the next step or reset.
unsafe fn text<'a>(
    db: *mut ffi::sqlite3,
    s: *mut ffi::sqlite3_stmt,
    i: c_int,
) -> Result<&'a str, StoreError> {
    // Text first, then its length, as SQLite advises: the text conversion
    // (of a number, say) may change the length.
    let p = ffi::sqlite3_column_text(s, i);
    if p.is_null() {
        return null_or_nomem(db).map(|()| "");
    }
    let n = ffi::sqlite3_column_bytes(s, i) as usize;
    let bytes = std::slice::from_raw_parts(p, n);
    // Nearly every stored text is ASCII (countries, browsers, services),
    // which a short loop checks faster than a full UTF-8 validation.
    if bytes.is_ascii() {
        // ASCII is valid UTF-8.
        return Ok(std::str::from_utf8_unchecked(bytes));
    }
    std::str::from_utf8(bytes).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(
            i as usize,
            rusqlite::types::Type::Text,
            Box::new(e),
        )
        .into()
    })
}

/// A blob column; NULL reads as `None`.
///
/// # Safety
/// As for [`text`].
unsafe fn blob<'a>(
    db: *mut ffi::sqlite3,
    s: *mut ffi::sqlite3_stmt,
    i: c_int,
) -> Result<Option<&'a [u8]>, StoreError> {
    let p = ffi::sqlite3_column_blob(s, i);
    if p.is_null() {
        // NULL, an empty blob, or out of memory.
        if ffi::sqlite3_column_type(s, i) == ffi::SQLITE_NULL {
            return Ok(None);
        }
        return null_or_nomem(db).map(|()| Some(&[][..]));
    }
    let n = ffi::sqlite3_column_bytes(s, i) as usize;
    Ok(Some(std::slice::from_raw_parts(p.cast::<u8>(), n)))
}

/// After a column read returned no pointer: a NULL value, unless SQLite ran
/// out of memory converting it.
unsafe fn null_or_nomem(db: *mut ffi::sqlite3) -> Result<(), StoreError> {
    match ffi::sqlite3_errcode(db) {
        ffi::SQLITE_NOMEM => Err(error(db, ffi::SQLITE_NOMEM)),
        _ => Ok(()),
    }
}

unsafe fn check(db: *mut ffi::sqlite3, rc: c_int) -> Result<(), StoreError> {
    match rc {
        ffi::SQLITE_OK => Ok(()),
        rc => Err(error(db, rc)),
    }
}

/// The connection's error, as rusqlite reports one.
#[cold]
unsafe fn error(db: *mut ffi::sqlite3, rc: c_int) -> StoreError {
    let msg = ffi::sqlite3_errmsg(db);
    let msg = (!msg.is_null()).then(|| CStr::from_ptr(msg).to_string_lossy().into_owned());
    rusqlite::Error::SqliteFailure(ffi::Error::new(rc), msg).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DeviceRecord, LogRecord};
    use crate::store::sqlite::ops::{insert_log, user_logs, user_logs_of_type};

    fn db() -> Connection {
        let mut c = Connection::open_in_memory().unwrap();
        crate::store::sqlite::schema::migrate(&mut c).unwrap();
        c
    }

    fn entry(name: &str, ts: i64, log_type: &str, device: Option<DeviceRecord>) -> LogRecord {
        LogRecord {
            username: name.into(),
            ts,
            log_type: log_type.into(),
            device,
            ..Default::default()
        }
    }

    /// A history with every kind of column: absent and empty devices,
    /// text absent (NULL), ASCII and not, a mobile flag.
    fn history(c: &Connection) -> Vec<LogRecord> {
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
        let mut recs = vec![
            entry("u", 3600, "login", Some(phone.clone())),
            entry("u", 7200, "password_change", None),
            entry("u", 10800, "login", Some(no_id)),
            entry("other", 10800, "login", Some(phone)),
        ];
        recs[1].message = "mot de passe changé ✓".into();
        recs[2].service = "mail".into();
        recs[2].login_method = "password".into();
        recs[2].login_authenticator_id = "key \"1\"".into();
        for r in &recs {
            insert_log(c, r).unwrap();
        }
        recs.truncate(3);
        recs.reverse();
        recs
    }

    fn read(c: &Connection, name: &str, since: i64, limit: i64) -> Vec<LogRecord> {
        user_logs(c, name, since, limit).unwrap()
    }

    fn kept(c: &Connection) -> bool {
        KEPT.with(|k| {
            k.borrow()
                .as_ref()
                .is_some_and(|q| q.db == unsafe { c.handle() })
        })
    }

    #[test]
    fn a_kept_query_reads_what_a_prepared_one_does() {
        let c = db();
        let want = history(&c);
        assert!(!kept(&c));
        let prepared = read(&c, "u", i64::MIN, 50);
        assert_eq!(prepared, want);

        let guard = Kept::new(&c).unwrap();
        assert!(kept(&c));
        for _ in 0..2 {
            assert_eq!(read(&c, "u", i64::MIN, 50), want);
            assert_eq!(read(&c, "u", 7200, 50), want[..2]);
            assert_eq!(read(&c, "u", i64::MIN, 1), want[..1]);
            assert_eq!(read(&c, "nobody", i64::MIN, 50), []);
            assert_eq!(
                user_logs_of_type(&c, "u", "password_change", 5).unwrap(),
                want[1..2]
            );
        }
        assert!(kept(&c), "the query is put back after each call");
        drop(guard);
        assert!(!kept(&c));
        c.close().expect("no statement left open");
    }

    #[test]
    fn a_failing_callback_leaves_the_statement_reset() {
        let c = db();
        let want = history(&c);
        let _guard = Kept::new(&c).unwrap();
        let mut seen = 0;
        let r = for_each_log(&c, "u", i64::MIN, None, 50, |_| {
            seen += 1;
            Err(StoreError::Closed)
        });
        assert!(matches!(r, Err(StoreError::Closed)), "{r:?}");
        assert_eq!(seen, 1);
        let busy = KEPT.with(|k| {
            let k = k.borrow();
            unsafe { ffi::sqlite3_stmt_busy(k.as_ref().unwrap().stmt.as_ptr()) }
        });
        assert_eq!(busy, 0, "no read left open");
        assert_eq!(read(&c, "u", i64::MIN, 50), want);
    }

    #[test]
    fn a_call_from_the_callback_runs_a_query_of_its_own() {
        let c = db();
        let want = history(&c);
        let _guard = Kept::new(&c).unwrap();
        let mut inner = Vec::new();
        let mut outer = 0;
        for_each_log(&c, "u", i64::MIN, None, 50, |_| {
            outer += 1;
            inner.push(read(&c, "u", i64::MIN, 50));
            Ok(())
        })
        .unwrap();
        assert_eq!(outer, 3);
        assert!(inner.iter().all(|v| *v == want));
        assert!(kept(&c));
    }

    #[test]
    fn text_that_is_not_utf8_is_an_error() {
        let c = db();
        history(&c);
        c.execute(
            "UPDATE user_logs SET service = CAST(x'6d61c328' AS TEXT) WHERE ts = 3600",
            [],
        )
        .unwrap();
        let _guard = Kept::new(&c).unwrap();
        let e = user_logs(&c, "u", i64::MIN, 50).unwrap_err();
        assert!(e.to_string().contains("utf-8"), "{e}");
        // The rows before it were read, and the statement is usable again.
        assert_eq!(read(&c, "u", 7200, 50).len(), 2);
    }

    #[test]
    fn a_sql_error_is_reported() {
        let c = db();
        history(&c);
        c.execute_batch("DROP TABLE user_logs").unwrap();
        let e = user_logs(&c, "u", i64::MIN, 50).unwrap_err();
        assert!(e.to_string().contains("no such table"), "{e}");
    }
}
