//! The checkpointer: copies committed pages from the WAL into the database
//! file on a thread of its own, so that no commit waits for a checkpoint, and
//! keeps the WAL bounded.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rusqlite::Connection;

use super::{lock, StoreError};

/// Least time between two checkpoint passes while commits keep coming.
pub(super) const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(50);
/// WAL frames (pages) beyond which the checkpointer makes the WAL start over.
pub(super) const WAL_RESTART_FRAMES: i64 = 8192;
/// Before the pass under the gate, passes outside it run until one has
/// copied at most this many frames, stops copying fewer than the one before,
/// or this many passes have run. Each pass copies what was committed during
/// the one before, so the tail shrinks towards what the commits add during
/// the shortest pass (about 40 frames at 5,000 add_log a second); the pass
/// under the gate, and the commits held for it, take about as long as the
/// tail is long.
const GATED_TAIL_FRAMES: i64 = 48;
const MAX_CATCH_UP_PASSES: usize = 12;
/// A WAL file that grew past this (long readers, bursts) is cut back to it
/// when it starts over.
pub(super) const WAL_SIZE_LIMIT: i64 = 64 << 20;

/// What the writer and the checkpointer share.
#[derive(Default)]
pub(super) struct Checkpoints {
    /// Held by the writer for each group commit. The checkpointer takes it to
    /// finish a pass while no commit runs.
    pub(super) gate: Mutex<()>,
    /// Moves on after every group commit and every checkpoint pass: a
    /// reader's snapshot taken before it moved may miss a write, or keep
    /// the WAL from starting over (see `reader_loop`).
    epoch: AtomicU64,
    state: Mutex<CheckpointState>,
    wake: Condvar,
}

#[derive(Default)]
struct CheckpointState {
    commits: u64,
    stop: bool,
}

impl Checkpoints {
    pub(super) fn moved(&self) {
        self.epoch.fetch_add(1, Ordering::Release);
    }

    pub(super) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    pub(super) fn committed(&self) {
        lock(&self.state).commits += 1;
        self.wake.notify_one();
    }

    pub(super) fn stop(&self) {
        lock(&self.state).stop = true;
        self.wake.notify_one();
    }
}

/// Keeps the WAL short without holding up commits.
///
/// After commits, at most every [`CHECKPOINT_INTERVAL`], a PASSIVE pass
/// copies what is committed into the database file; it takes no lock that a
/// commit needs. The WAL starts over only when a commit begins with every
/// frame already copied, which under steady writes never happens: each pass
/// ends behind the commits made while it ran, and the WAL would grow without
/// end. So once it holds more than [`WAL_RESTART_FRAMES`] frames, one more pass
/// runs while holding the writer's gate, between two group commits: it only
/// has the tail written during the previous pass to copy, and the commit after
/// it writes the WAL from its start again. A pass that readers keep from
/// finishing is simply tried again later.
///
/// SQLite syncs the database file only at the end of a pass that reached the
/// end of the WAL, so under load the pages copied by the passes would pile up
/// unsynced until the pass under the gate, which would then sync them all
/// while commits wait (80-180 ms on a virtual disk). Each pass is therefore
/// followed by a sync here, outside the gate, leaving only the tail for the
/// gated pass.
pub(super) fn checkpoint_loop(conn: Connection, checkpoints: &Checkpoints) {
    // Readers then take new snapshots: those of a WAL copied to its end
    // read the database file alone and let the WAL start over.
    let checkpoint_and_sync = |conn: &Connection| {
        let pass = checkpoint_and_sync(conn);
        checkpoints.moved();
        pass
    };
    let mut seen = 0;
    let mut last_pass = Instant::now();
    loop {
        {
            let mut state = lock(&checkpoints.state);
            while state.commits == seen && !state.stop {
                state = checkpoints
                    .wake
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if state.stop {
                break;
            }
            seen = state.commits;
        }
        if let Some(rest) = CHECKPOINT_INTERVAL.checked_sub(last_pass.elapsed()) {
            std::thread::sleep(rest);
        }
        last_pass = Instant::now();
        let pass = match checkpoint_and_sync(&conn) {
            Ok(pass) => pass,
            Err(e) => {
                tracing::warn!(error = %e, "checkpoint failed");
                continue;
            }
        };
        if pass.frames > WAL_RESTART_FRAMES {
            // Catch up outside the gate first: each pass has only what was
            // committed during the one before to copy, so after a few the
            // tail left for the pass under the gate is short.
            let (mut prev, mut copied) = (pass, i64::MAX);
            for _ in 0..MAX_CATCH_UP_PASSES {
                match checkpoint_and_sync(&conn) {
                    Ok(p) => {
                        let before = copied;
                        copied = p.copied_since(prev);
                        prev = p;
                        if copied <= GATED_TAIL_FRAMES || copied >= before {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "checkpoint failed");
                        break;
                    }
                }
            }
            let gate = lock(&checkpoints.gate);
            let held = Instant::now();
            if let Err(e) = checkpoint_and_sync(&conn) {
                tracing::warn!(error = %e, "checkpoint failed");
            }
            drop(gate);
            tracing::debug!(
                tail = copied,
                held_ms = held.elapsed().as_secs_f64() * 1e3,
                "WAL restart"
            );
        }
    }
    tracing::debug!("checkpointer stopped");
}

/// Where a checkpoint pass left the WAL.
#[derive(Clone, Copy)]
struct Pass {
    /// Frames in the WAL.
    frames: i64,
    /// Frames of it copied into the database file so far.
    done: i64,
}

impl Pass {
    /// Frames copied by this pass, the one before it being `prev`. The WAL
    /// may have started over in between, and then counts from zero.
    fn copied_since(&self, prev: Pass) -> i64 {
        if self.done >= prev.done {
            self.done - prev.done
        } else {
            self.done
        }
    }
}

/// One PASSIVE checkpoint, then a sync of the database file.
fn checkpoint_and_sync(conn: &Connection) -> Result<Pass, StoreError> {
    let pass = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok(Pass {
            frames: r.get(1)?,
            done: r.get(2)?,
        })
    })?;
    sync_database_file(conn)?;
    Ok(pass)
}

/// Syncs the database file through the connection's own SQLite file object.
/// A descriptor of our own would not do: closing it would drop every POSIX
/// lock this process holds on the file, SQLite's included.
fn sync_database_file(conn: &Connection) -> Result<(), StoreError> {
    use rusqlite::ffi;
    let mut file: *mut ffi::sqlite3_file = std::ptr::null_mut();
    // SAFETY: `conn` is open for the whole call and used by this thread only.
    // SQLITE_FCNTL_FILE_POINTER stores a pointer to the connection's own file
    // object, owned by SQLite and valid while the connection is open; `xSync`
    // is that object's method and takes the object and sync flags.
    let rc = unsafe {
        let rc = ffi::sqlite3_file_control(
            conn.handle(),
            c"main".as_ptr(),
            ffi::SQLITE_FCNTL_FILE_POINTER,
            (&mut file as *mut *mut ffi::sqlite3_file).cast(),
        );
        if rc != ffi::SQLITE_OK || file.is_null() || (*file).pMethods.is_null() {
            rc
        } else {
            match (*(*file).pMethods).xSync {
                Some(sync) => sync(file, ffi::SQLITE_SYNC_NORMAL),
                None => ffi::SQLITE_OK,
            }
        }
    };
    if rc == ffi::SQLITE_OK {
        Ok(())
    } else {
        Err(rusqlite::Error::SqliteFailure(ffi::Error::new(rc), None).into())
    }
}
