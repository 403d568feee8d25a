//! The reader threads: each with a read-only connection, taking jobs from one
//! queue. WAL mode lets them run while the writer commits.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};

use super::checkpoint::Checkpoints;
use super::readq::ReadQueue;
use super::{StoreError, STATEMENT_CACHE};

pub(super) type ReadJob = Box<dyn FnOnce(&Connection) + Send>;

pub(super) fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

/// Longest a reader keeps one snapshot while the epoch stands still: how
/// late it may see a write made by another process.
pub(super) const SNAPSHOT_MAX_AGE: Duration = Duration::from_millis(5);

/// Runs the read jobs. While jobs keep coming, one read transaction serves
/// them one after another, sparing each the start and end of its own (the
/// WAL index and file locks, sizing the file). A job gets a new snapshot
/// when the epoch moved since the last one was taken (a group commit, so
/// that a read sent after a write was answered sees it; a checkpoint pass,
/// so that the WAL can start over), when the last is older than
/// [`SNAPSHOT_MAX_AGE`], or after the reader was idle: no snapshot is held
/// while there is nothing to read.
pub(super) fn reader_loop(
    conn: Connection,
    queue: Arc<ReadQueue<ReadJob>>,
    checkpoints: &Checkpoints,
) {
    let mut snapshot = Snapshot::default();
    loop {
        let job = match queue.try_pop() {
            Some(job) => job,
            None => {
                snapshot.end(&conn);
                match queue.pop() {
                    Some(job) => job,
                    None => break,
                }
            }
        };
        snapshot.refresh(&conn, checkpoints.epoch());
        job(&conn);
    }
    snapshot.end(&conn);
}

/// The read transaction a reader holds across jobs.
#[derive(Default)]
struct Snapshot {
    /// The epoch it was begun at, and when.
    open: Option<(u64, Instant)>,
}

impl Snapshot {
    fn refresh(&mut self, conn: &Connection, epoch: u64) {
        if let Some((at, since)) = self.open {
            if at == epoch && since.elapsed() < SNAPSHOT_MAX_AGE && !conn.is_autocommit() {
                return;
            }
            self.end(conn);
        }
        // Deferred: the snapshot is taken by the job's first read.
        match conn.prepare_cached("BEGIN").and_then(|mut s| s.execute([])) {
            Ok(_) => self.open = Some((epoch, Instant::now())),
            Err(e) => tracing::warn!(error = %e, "reader: beginning a read transaction"),
        }
    }

    fn end(&mut self, conn: &Connection) {
        if self.open.take().is_some() && !conn.is_autocommit() {
            if let Err(e) = conn
                .prepare_cached("COMMIT")
                .and_then(|mut s| s.execute([]))
            {
                tracing::warn!(error = %e, "reader: ending a read transaction");
                let _ = conn.execute_batch("ROLLBACK");
            }
        }
    }
}
