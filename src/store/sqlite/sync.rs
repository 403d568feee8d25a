//! Making commits durable under `synchronous: full` without holding up the
//! writer: a thread of its own syncs the WAL and answers the commits it covers.

use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::Instant;

use super::{lock, StoreError};

/// What to do once a write's commit outcome is known: answer its caller
/// (with the error of a failed commit or sync).
pub(super) type Completion = Box<dyn FnOnce(Option<&StoreError>) + Send>;

/// Commits waiting for a WAL sync, handed from the writer to the sync thread.
#[derive(Default)]
pub(super) struct Syncs {
    state: Mutex<SyncState>,
    wake: Condvar,
}

#[derive(Default)]
struct SyncState {
    waiting: Vec<Completion>,
    stop: bool,
}

impl Syncs {
    pub(super) fn committed(&self, completions: &mut Vec<Completion>) {
        lock(&self.state).waiting.append(completions);
        self.wake.notify_one();
    }

    pub(super) fn stop(&self) {
        lock(&self.state).stop = true;
        self.wake.notify_one();
    }
}

pub(super) fn wal_path(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push("-wal");
    PathBuf::from(p)
}

/// Makes commits durable and answers them: takes every commit waiting, syncs
/// the WAL, answers them all, and starts again. Each sync covers every WAL
/// write finished before it began, so a caller is answered only after its
/// frames are on disk, which is what `synchronous = FULL` gives; but the writer
/// goes on committing while a sync runs, and one sync answers every group
/// committed during the one before.
///
/// The WAL is synced through a descriptor of this thread's own. SQLite keeps
/// no POSIX locks on the WAL file (they are on the database and the `-shm`
/// file), so opening and closing it here cannot drop one. The descriptor is
/// opened again if the WAL file was replaced, and the directory is synced
/// whenever it is opened, so a WAL file created since is durable by name too.
pub(super) fn sync_loop(wal: &Path, syncs: &Syncs) {
    let mut file: Option<std::fs::File> = None;
    let mut waiting = Vec::new();
    loop {
        {
            let mut state = lock(&syncs.state);
            while state.waiting.is_empty() && !state.stop {
                state = syncs
                    .wake
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if state.waiting.is_empty() {
                break;
            }
            std::mem::swap(&mut waiting, &mut state.waiting);
        }
        let started = Instant::now();
        let outcome = sync_wal(wal, &mut file);
        crate::metrics::global().wal_sync(started.elapsed(), outcome.is_ok());
        let outcome = outcome.map_err(|e| {
            file = None;
            tracing::error!(error = %e, writes = waiting.len(), "syncing the WAL failed");
            StoreError::Io(format!("syncing the WAL: {e}"))
        });
        for done in waiting.drain(..) {
            done(outcome.as_ref().err());
        }
    }
    tracing::debug!("WAL sync stopped");
}

fn sync_wal(wal: &Path, file: &mut Option<std::fs::File>) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let current = std::fs::metadata(wal)?;
    let same = |f: &std::fs::File| -> std::io::Result<bool> {
        let open = f.metadata()?;
        Ok((open.dev(), open.ino()) == (current.dev(), current.ino()))
    };
    let f = match file.take() {
        Some(f) if same(&f)? => f,
        _ => {
            let f = std::fs::File::open(wal)?;
            if let Some(dir) = wal.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::File::open(dir)?.sync_all()?;
            }
            f
        }
    };
    // fdatasync: the data and the size; a changed mtime is not needed to read
    // the frames back.
    file.insert(f).sync_data()
}
