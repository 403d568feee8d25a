//! The writer thread: the only read-write connection, committing queued
//! writes in groups. Each write runs in its own savepoint inside a shared
//! transaction, and its caller is answered only after the commit that holds
//! it (under `synchronous: full`, after the WAL sync that covers it).

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use rusqlite::Connection;

use super::checkpoint::Checkpoints;
use super::known::KnownDevices;
use super::sync::{wal_path, Completion, Syncs};
use super::{lock, StoreError};

/// A write as queued for the writer thread: it runs inside the group
/// transaction (or not at all when given `None`, because the transaction could
/// not start) and returns what to do once the commit outcome is known.
pub(super) type WriteJob = Box<dyn FnOnce(Option<&Connection>) -> Completion + Send>;

pub(super) fn in_savepoint<T>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    conn.prepare_cached("SAVEPOINT job")?.execute([])?;
    match f(conn) {
        Ok(v) => {
            conn.prepare_cached("RELEASE job")?.execute([])?;
            Ok(v)
        }
        Err(e) => {
            conn.prepare_cached("ROLLBACK TO job")?.execute([])?;
            conn.prepare_cached("RELEASE job")?.execute([])?;
            Err(e)
        }
    }
}

pub(super) fn writer_loop(
    conn: Connection,
    rx: mpsc::Receiver<WriteJob>,
    max_batch: usize,
    checkpoints: &Checkpoints,
    syncs: Option<&Syncs>,
    known: Option<&KnownDevices>,
) {
    let mut batch: Vec<WriteJob> = Vec::with_capacity(max_batch);
    let mut completions: Vec<Completion> = Vec::with_capacity(max_batch);
    let mut others = known.map(|_| OtherWriters::new(&conn));
    loop {
        let first = match rx.recv_timeout(OTHER_WRITERS_POLL) {
            Ok(job) => job,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                // Idle: look for changes made by another process now and then.
                if let (Some(k), Some(o)) = (known, others.as_mut()) {
                    o.check(&conn, k);
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        batch.push(first);
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let outcome = {
            let _gate = lock(&checkpoints.gate);
            run_batch(&conn, &mut batch, &mut completions, known, others.as_mut())
        }
        .map_err(|e| diagnose(&conn, e));
        // Before anyone is answered: a read sent after the answer must see
        // the write.
        checkpoints.moved();
        if let Err(e) = &outcome {
            tracing::error!(error = %e, writes = completions.len(), "group commit failed");
        }
        tracing::trace!(writes = completions.len(), "group commit");
        crate::metrics::global().write_batch(completions.len(), outcome.is_ok());
        match (syncs, &outcome) {
            // Durable only once the WAL is synced: the sync thread answers.
            (Some(syncs), Ok(())) => syncs.committed(&mut completions),
            _ => {
                for done in completions.drain(..) {
                    done(outcome.as_ref().err());
                }
            }
        }
        checkpoints.committed();
    }
    if let Some(syncs) = syncs {
        syncs.stop();
    }
    tracing::debug!("writer stopped");
}

/// How often an idle writer looks for commits made by other processes.
const OTHER_WRITERS_POLL: Duration = Duration::from_secs(1);

/// Notices commits made to the database by another connection (another
/// process: `db prune`, `db import`, the sqlite3 shell), which the device
/// index cannot follow: `PRAGMA data_version` on the writer's connection moves
/// only for those.
struct OtherWriters {
    seen: Option<i64>,
}

impl OtherWriters {
    fn new(conn: &Connection) -> OtherWriters {
        OtherWriters {
            seen: data_version(conn),
        }
    }

    fn check(&mut self, conn: &Connection, known: &KnownDevices) {
        let now = data_version(conn);
        // A version that cannot be read cannot vouch for the index either.
        if now.is_none() || now != self.seen {
            tracing::info!(
                "the database was changed by another process; reading the device index again"
            );
            known.invalidate();
        }
        self.seen = now;
    }
}

fn data_version(conn: &Connection) -> Option<i64> {
    conn.prepare_cached("PRAGMA data_version")
        .and_then(|mut s| s.query_row([], |r| r.get(0)))
        .ok()
}

fn run_batch(
    conn: &Connection,
    batch: &mut Vec<WriteJob>,
    completions: &mut Vec<Completion>,
    known: Option<&KnownDevices>,
    others: Option<&mut OtherWriters>,
) -> Result<(), StoreError> {
    if let Err(e) = conn
        .prepare_cached("BEGIN IMMEDIATE")
        .and_then(|mut s| s.execute([]))
    {
        // Nothing runs: every job is answered with the error.
        for job in batch.drain(..) {
            completions.push(job(None));
        }
        return Err(e.into());
    }
    if let (Some(k), Some(o)) = (known, others) {
        o.check(conn, k);
    }
    for job in batch.drain(..) {
        // After an I/O error or a full disk SQLite may roll the whole
        // transaction back; a job run after that would commit on its own,
        // outside the group, while being answered with the group's error.
        let conn = (!conn.is_autocommit()).then_some(conn);
        completions.push(job(conn));
    }
    if conn.is_autocommit() {
        if let Some(k) = known {
            k.invalidate();
        }
        return Err(StoreError::Io(
            "the transaction was rolled back after a storage error".into(),
        ));
    }
    // What the group did to the device index, read inside the transaction.
    let changes = known.map(|k| k.take_changes(conn));
    match conn
        .prepare_cached("COMMIT")
        .and_then(|mut s| s.execute([]))
    {
        Ok(_) => {
            match (known, changes) {
                (Some(k), Some(Ok(changes))) => k.committed(changes),
                (Some(k), Some(Err(_))) => {
                    // Notes left behind must not be taken for the next group's.
                    let _ = conn.execute_batch("DELETE FROM temp.device_changes");
                    k.invalidate();
                }
                _ => {}
            }
            Ok(())
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            if let Some(k) = known {
                k.invalidate();
            }
            Err(e.into())
        }
    }
}

/// Names the cause of an I/O error for the operator and the client: a
/// database or WAL that may not be written (read-only filesystem, immutable
/// file, permissions) is `ReadOnly`; a filesystem with no space left is
/// `Full`. Checked by path, without opening the files: closing a descriptor of
/// the database would drop the locks SQLite holds on it.
fn diagnose(conn: &Connection, e: StoreError) -> StoreError {
    use rustix::fs::{access, statvfs, Access};
    use rustix::io::Errno;
    if !matches!(e, StoreError::Io(_)) {
        return e;
    }
    let Some(db) = conn.path().filter(|p| !p.is_empty()) else {
        return e;
    };
    let wal = wal_path(Path::new(db));
    for path in [Path::new(db), wal.as_path()] {
        if let Err(Errno::ROFS | Errno::PERM | Errno::ACCESS) = access(path, Access::WRITE_OK) {
            return StoreError::ReadOnly;
        }
    }
    match statvfs(db) {
        Ok(st) if st.f_bavail == 0 => StoreError::Full,
        _ => e,
    }
}
