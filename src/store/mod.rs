//! Storage: all SQL lives under this module.
//!
//! SQLite is blocking, so no query runs on an async worker thread. One writer
//! thread owns the only read-write connection and commits queued writes in
//! groups: each write runs in its own savepoint inside a shared transaction, and
//! its caller is answered only after the commit that holds it. Reads go to a
//! small pool of threads, each with a read-only connection. WAL mode lets the
//! readers run while the writer commits.
//!
//! Under `synchronous: full` the WAL is synced by a thread of its own, not by
//! the commit: the writer goes on with the next group while the previous
//! groups' sync runs, and a caller is answered once a sync begun after its
//! commit has finished (see `sync_loop`). Checkpoints (copying committed pages
//! from the WAL into the database file) run on another thread, so a commit
//! never waits for one; see `checkpoint_loop` for how the WAL stays bounded.
//!
//! The device index (`known`) holds every (user, device) pair in memory for
//! `check_device`; the writer keeps it in step with each commit.

pub mod alerts;
pub mod export;
pub mod known;
mod logrows;
pub mod ops;
pub mod pcache;
mod readq;
pub mod reports;
pub mod schema;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};
use tokio::sync::oneshot;

use crate::config::DbConfig;
use known::KnownDevices;
use readq::ReadQueue;

/// Process-wide SQLite settings. Call it first thing in `main`, before
/// anything opens a database and while no other thread uses SQLite (its
/// configuration is not thread-safe). Returns whether the page cache wrapper
/// ([`pcache`]) is in place.
///
/// Besides the wrapper, it turns off SQLite's memory statistics, which take
/// a global mutex on every allocation and free of every connection; nothing
/// here reads them.
pub fn configure_sqlite() -> bool {
    static DONE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DONE.get_or_init(|| {
        // SAFETY: SQLITE_CONFIG_MEMSTATUS takes one int. Called before SQLite
        // is initialized; afterwards it is refused with SQLITE_MISUSE and
        // nothing changes.
        unsafe {
            rusqlite::ffi::sqlite3_config(
                rusqlite::ffi::SQLITE_CONFIG_MEMSTATUS,
                0 as std::ffi::c_int,
            );
        }
        pcache::install()
    })
}

/// What went wrong in storage, in a form that can be sent to every request of a
/// failed group commit.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("storage is full")]
    Full,
    #[error("storage is read-only")]
    ReadOnly,
    #[error("storage is busy")]
    Busy,
    /// The OS failed or refused a read or write, for a cause other than a
    /// full disk or a read-only file, which the writer reports as such.
    #[error("storage I/O error: {0}")]
    Io(String),
    #[error("database schema version {found} is newer than this build supports ({supported})")]
    Downgrade { found: i64, supported: i64 },
    #[error("storage is shut down")]
    Closed,
    #[error("storage error: {0}")]
    Other(String),
}

impl StoreError {
    /// True when the cause lies outside the request (disk, locks), so the
    /// client may retry later.
    pub fn is_unavailable(&self) -> bool {
        !matches!(self, StoreError::Downgrade { .. })
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode;
        match e.sqlite_error_code() {
            Some(ErrorCode::DiskFull) => StoreError::Full,
            Some(ErrorCode::ReadOnly) | Some(ErrorCode::CannotOpen) => StoreError::ReadOnly,
            Some(ErrorCode::DatabaseBusy) | Some(ErrorCode::DatabaseLocked) => StoreError::Busy,
            _ => {
                // SQLITE_IOERR: a write refused (read-only file or
                // filesystem), ENOSPC outside the main write path, or a real
                // I/O failure. The writer tells them apart with `diagnose`.
                if let rusqlite::Error::SqliteFailure(f, _) = &e {
                    if f.code == ErrorCode::SystemIoFailure {
                        return StoreError::Io(e.to_string());
                    }
                }
                StoreError::Other(e.to_string())
            }
        }
    }
}

/// A write as queued for the writer thread: it runs inside the group
/// transaction (or not at all when given `None`, because the transaction could
/// not start) and returns what to do once the commit outcome is known.
type WriteJob = Box<dyn FnOnce(Option<&Connection>) -> Completion + Send>;
type Completion = Box<dyn FnOnce(Option<&StoreError>) + Send>;
type ReadJob = Box<dyn FnOnce(&Connection) + Send>;

/// Handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    writer: Mutex<Option<mpsc::Sender<WriteJob>>>,
    readers: Arc<ReadQueue<ReadJob>>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    checkpoints: Arc<Checkpoints>,
    known: Option<Arc<KnownDevices>>,
    path: PathBuf,
}

/// Least time between two checkpoint passes while commits keep coming.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(50);
/// WAL frames (pages) beyond which the checkpointer makes the WAL start over.
const WAL_RESTART_FRAMES: i64 = 8192;
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
const WAL_SIZE_LIMIT: i64 = 64 << 20;

/// What the writer and the checkpointer share.
#[derive(Default)]
struct Checkpoints {
    /// Held by the writer for each group commit. The checkpointer takes it to
    /// finish a pass while no commit runs.
    gate: Mutex<()>,
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

/// A mutex only guards plain data here: a panic elsewhere leaves it usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Checkpoints {
    fn moved(&self) {
        self.epoch.fetch_add(1, Ordering::Release);
    }

    fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    fn committed(&self) {
        lock(&self.state).commits += 1;
        self.wake.notify_one();
    }

    fn stop(&self) {
        lock(&self.state).stop = true;
        self.wake.notify_one();
    }
}

/// Statements each connection keeps prepared. rusqlite's default of 16 is
/// fewer than the writer runs for one group of add_log (transaction and
/// savepoint, the user, the monitor's history, the entry, its device and
/// country, an alert and its deliveries, the device index's notes), so its
/// least recently used statements were finalized and prepared again.
const STATEMENT_CACHE: usize = 64;

/// Sets up a read-write connection. The writer's commits never sync the WAL
/// themselves (`NORMAL`): under `synchronous: full` the sync thread does, and
/// answers the commits it covers. `NORMAL` still syncs the WAL before every
/// checkpoint, and its header whenever it starts over.
fn configure(conn: &Connection) -> Result<(), StoreError> {
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // Deleted rows are overwritten, not left in free pages.
    conn.pragma_update(None, "secure_delete", "ON")?;
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    Ok(())
}

impl Store {
    /// Opens (creating if needed) and migrates the database, then starts the
    /// writer and reader threads.
    pub fn open(cfg: &DbConfig) -> Result<Store, StoreError> {
        let mut conn = Connection::open(&cfg.path)?;
        configure(&conn)?;
        schema::migrate(&mut conn)?;
        // Checkpoints are the checkpointer's job, never a commit's.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)?;
        let known = if cfg.device_index {
            conn.execute_batch(known::INSTALL)?;
            Some(Arc::new(KnownDevices::new()))
        } else {
            None
        };
        let ckpt_conn = Connection::open(&cfg.path)?;
        configure(&ckpt_conn)?;
        ckpt_conn.pragma_update(None, "wal_autocheckpoint", 0)?;

        let checkpoints = Arc::new(Checkpoints::default());
        let mut threads = Vec::new();
        let (wtx, wrx) = mpsc::channel::<WriteJob>();
        let max_batch = cfg.max_batch;
        let ck = checkpoints.clone();
        let syncs = cfg.synchronous_full.then(|| Arc::new(Syncs::default()));
        let writer_syncs = syncs.clone();
        let writer_known = known.clone();
        threads.push(
            std::thread::Builder::new()
                .name("db-writer".into())
                .spawn(move || {
                    writer_loop(
                        conn,
                        wrx,
                        max_batch,
                        &ck,
                        writer_syncs.as_deref(),
                        writer_known.as_deref(),
                    )
                })
                .map_err(|e| StoreError::Other(e.to_string()))?,
        );
        if let Some(k) = known.clone() {
            let path = cfg.path.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("db-device-index".into())
                    .spawn(move || k.run_rebuilds(&path))
                    .map_err(|e| StoreError::Other(e.to_string()))?,
            );
        }
        if let Some(syncs) = syncs {
            let wal = wal_path(&cfg.path);
            threads.push(
                std::thread::Builder::new()
                    .name("db-sync".into())
                    .spawn(move || sync_loop(&wal, &syncs))
                    .map_err(|e| StoreError::Other(e.to_string()))?,
            );
        }
        let ck = checkpoints.clone();
        threads.push(
            std::thread::Builder::new()
                .name("db-checkpoint".into())
                .spawn(move || checkpoint_loop(ckpt_conn, &ck))
                .map_err(|e| StoreError::Other(e.to_string()))?,
        );

        let readers = Arc::new(ReadQueue::new());
        for i in 0..cfg.readers {
            let conn = open_reader(&cfg.path)?;
            let queue = readers.clone();
            let ck = checkpoints.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("db-reader-{i}"))
                    .spawn(move || reader_loop(conn, queue, &ck))
                    .map_err(|e| StoreError::Other(e.to_string()))?,
            );
        }
        Ok(Store {
            inner: Arc::new(Inner {
                writer: Mutex::new(Some(wtx)),
                readers,
                threads: Mutex::new(threads),
                checkpoints,
                known,
                path: cfg.path.clone(),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Whether the user has this device, from the in-memory device index;
    /// `None` when the index is off or not in step with the table yet, and
    /// the database must be asked.
    pub fn known_device(&self, name: &str, sealed_id: &[u8]) -> Option<bool> {
        self.inner.known.as_ref()?.lookup(name, sealed_id)
    }

    /// The device index's counts, when it is on.
    pub fn known_stats(&self) -> Option<known::KnownStats> {
        self.inner.known.as_ref().map(|k| k.stats())
    }

    /// Runs `f` inside the next group transaction on the writer thread. The
    /// answer arrives after the commit: `Ok` means the write is durable.
    /// An `Err` from `f` rolls back only `f`'s own changes.
    pub async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: WriteJob = Box::new(move |conn| {
            crate::metrics::global().writer_queue(-1);
            let result = match conn {
                Some(conn) => in_savepoint(conn, f),
                None => Err(StoreError::Closed),
            };
            Box::new(move |commit_error: Option<&StoreError>| {
                let result = match commit_error {
                    Some(e) => Err(e.clone()),
                    None => result,
                };
                let _ = tx.send(result);
            })
        });
        {
            let guard = self.inner.writer.lock().map_err(|_| StoreError::Closed)?;
            let sender = guard.as_ref().ok_or(StoreError::Closed)?;
            crate::metrics::global().writer_queue(1);
            sender.send(job).map_err(|_| {
                crate::metrics::global().writer_queue(-1);
                StoreError::Closed
            })?;
        }
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs `f` on a reader thread with a read-only connection.
    pub async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: ReadJob = Box::new(move |conn| {
            crate::metrics::global().reader_queue(-1);
            let _ = tx.send(f(conn));
        });
        crate::metrics::global().reader_queue(1);
        self.inner.readers.push(job).map_err(|_| {
            crate::metrics::global().reader_queue(-1);
            StoreError::Closed
        })?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Stops accepting work, lets the threads finish what is queued and joins them.
    pub fn close(&self) {
        if let Ok(mut w) = self.inner.writer.lock() {
            w.take();
        }
        self.inner.readers.close();
        let threads = match self.inner.threads.lock() {
            Ok(mut t) => std::mem::take(&mut *t),
            Err(_) => Vec::new(),
        };
        // The writer drains its queue before the checkpointer is told to stop.
        let mut threads = threads.into_iter();
        if let Some(writer) = threads.next() {
            let _ = writer.join();
        }
        self.inner.checkpoints.stop();
        if let Some(k) = &self.inner.known {
            k.stop();
        }
        for t in threads {
            let _ = t.join();
        }
    }
}

fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

fn in_savepoint<T>(
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

fn writer_loop(
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

/// Commits waiting for a WAL sync, handed from the writer to the sync thread.
#[derive(Default)]
struct Syncs {
    state: Mutex<SyncState>,
    wake: Condvar,
}

#[derive(Default)]
struct SyncState {
    waiting: Vec<Completion>,
    stop: bool,
}

impl Syncs {
    fn committed(&self, completions: &mut Vec<Completion>) {
        lock(&self.state).waiting.append(completions);
        self.wake.notify_one();
    }

    fn stop(&self) {
        lock(&self.state).stop = true;
        self.wake.notify_one();
    }
}

fn wal_path(db: &Path) -> PathBuf {
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
fn sync_loop(wal: &Path, syncs: &Syncs) {
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
fn checkpoint_loop(conn: Connection, checkpoints: &Checkpoints) {
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

/// Longest a reader keeps one snapshot while the epoch stands still: how
/// late it may see a write made by another process.
const SNAPSHOT_MAX_AGE: Duration = Duration::from_millis(5);

/// Runs the read jobs. While jobs keep coming, one read transaction serves
/// them one after another, sparing each the start and end of its own (the
/// WAL index and file locks, sizing the file). A job gets a new snapshot
/// when the epoch moved since the last one was taken (a group commit, so
/// that a read sent after a write was answered sees it; a checkpoint pass,
/// so that the WAL can start over), when the last is older than
/// [`SNAPSHOT_MAX_AGE`], or after the reader was idle: no snapshot is held
/// while there is nothing to read.
fn reader_loop(conn: Connection, queue: Arc<ReadQueue<ReadJob>>, checkpoints: &Checkpoints) {
    // Without it, each call prepares its own statement.
    let _kept = match logrows::Kept::new(&conn) {
        Ok(kept) => Some(kept),
        Err(e) => {
            tracing::warn!(error = %e, "reader: preparing the log query");
            None
        }
    };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_keeps_a_page_cache_per_connection() {
        let conn = Connection::open_in_memory().unwrap();
        let options: Vec<String> = conn
            .prepare("PRAGMA compile_options")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            options.iter().any(|o| o.starts_with("THREADSAFE=1")),
            "{options:?}"
        );
        // Set in .cargo/config.toml (LIBSQLITE3_FLAGS): with it, every
        // connection's pages share one cache under a global mutex.
        assert!(
            !options.iter().any(|o| o == "ENABLE_MEMORY_MANAGEMENT"),
            "SQLite built with ENABLE_MEMORY_MANAGEMENT: {options:?}"
        );
    }

    fn open(dir: &Path, synchronous_full: bool) -> Store {
        open_with_readers(dir, synchronous_full, 1)
    }

    fn config(dir: &Path, synchronous_full: bool, readers: usize) -> DbConfig {
        DbConfig {
            path: dir.join("t.db"),
            readers,
            max_batch: 64,
            synchronous_full,
            device_index: true,
        }
    }

    fn open_with_readers(dir: &Path, synchronous_full: bool, readers: usize) -> Store {
        Store::open(&config(dir, synchronous_full, readers)).unwrap()
    }

    async fn add_user(store: &Store, name: &'static str) -> Result<i64, StoreError> {
        store.write(move |c| ops::ensure_user(c, name)).await
    }

    #[tokio::test]
    async fn under_synchronous_full_a_write_is_answered_only_once_the_wal_is_synced() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), true);
        add_user(&store, "a").await.unwrap();
        // A WAL that can no longer be synced: the commit goes through in
        // SQLite, but it is not known to be durable, so it is not a success.
        let wal = wal_path(store.path());
        std::fs::remove_file(&wal).unwrap();
        let e = add_user(&store, "b").await.unwrap_err();
        assert!(matches!(e, StoreError::Io(_)), "{e:?}");
        assert!(e.to_string().contains("syncing the WAL"), "{e}");
        store.close();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_long_read_holds_up_no_reads_while_another_reader_is_free() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_with_readers(dir.path(), false, 2);
        let (release, held) = std::sync::mpsc::channel::<()>();
        let (started, running) = std::sync::mpsc::channel::<()>();
        let long = tokio::spawn({
            let store = store.clone();
            async move {
                store
                    .read(move |_| {
                        started.send(()).unwrap();
                        held.recv().unwrap();
                        Ok(())
                    })
                    .await
            }
        });
        running.recv().unwrap();
        // Every short read goes to the free reader, none behind the long one.
        let short = async {
            for _ in 0..20 {
                let one: i64 = store
                    .read(|c| Ok(c.query_row("SELECT 1", [], |r| r.get(0))?))
                    .await
                    .unwrap();
                assert_eq!(one, 1);
            }
        };
        tokio::time::timeout(Duration::from_secs(10), short)
            .await
            .expect("short reads waited behind the long one");
        release.send(()).unwrap();
        long.await.unwrap().unwrap();
        store.close();
    }

    fn count_users(c: &Connection) -> Result<i64, StoreError> {
        Ok(c.query_row("SELECT count(*) FROM users", [], |r| r.get(0))?)
    }

    /// Occupies the store's one reader with a job that first reads (taking
    /// a snapshot) and then waits; sending on the returned channel lets it
    /// finish. Jobs queued meanwhile run right after it, with no idle
    /// moment in between.
    async fn hold_reader(
        store: &Store,
    ) -> (std::sync::mpsc::Sender<()>, tokio::task::JoinHandle<i64>) {
        let (release, held) = std::sync::mpsc::channel::<()>();
        let (started, running) = tokio::sync::oneshot::channel::<()>();
        let job = tokio::spawn({
            let store = store.clone();
            async move {
                store
                    .read(move |c| {
                        let n = count_users(c)?;
                        started.send(()).unwrap();
                        held.recv().unwrap();
                        Ok(n)
                    })
                    .await
                    .unwrap()
            }
        });
        running.await.unwrap();
        (release, job)
    }

    /// Queues a count of the users and waits until it is in the queue.
    async fn queue_count(store: &Store) -> tokio::task::JoinHandle<i64> {
        let next = tokio::spawn({
            let store = store.clone();
            async move { store.read(count_users).await.unwrap() }
        });
        while store.inner.readers.queued() == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        next
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_sent_after_a_write_was_answered_sees_it_from_a_busy_reader() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), true);
        add_user(&store, "a").await.unwrap();
        let (release, first) = hold_reader(&store).await;
        // Answered while the reader holds a snapshot without it.
        add_user(&store, "b").await.unwrap();
        let next = queue_count(&store).await;
        release.send(()).unwrap();
        assert_eq!(first.await.unwrap(), 1);
        assert_eq!(next.await.unwrap(), 2, "the answered write is seen");
        store.close();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_busy_reader_sees_another_process_write_within_the_snapshot_age() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), false);
        add_user(&store, "a").await.unwrap();
        let (release, first) = hold_reader(&store).await;
        let other = Connection::open(store.path()).unwrap();
        other
            .execute("INSERT INTO users (name) VALUES ('b')", [])
            .unwrap();
        let next = queue_count(&store).await;
        // No commit of the store's own moves the epoch: only the age does.
        tokio::time::sleep(SNAPSHOT_MAX_AGE * 2).await;
        release.send(()).unwrap();
        assert_eq!(first.await.unwrap(), 1);
        assert_eq!(next.await.unwrap(), 2);
        store.close();
    }

    #[tokio::test]
    async fn an_idle_reader_holds_no_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), false);
        add_user(&store, "a").await.unwrap();
        assert_eq!(store.read(count_users).await.unwrap(), 1);
        // A checkpoint that must copy the whole WAL and empty it fails while
        // any reader holds a snapshot of it.
        let other = Connection::open(store.path()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (busy, log): (i64, i64) = other
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .unwrap();
            if busy == 0 && log == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the WAL stays held: busy {busy}, log {log}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        store.close();
    }

    #[tokio::test]
    async fn under_synchronous_normal_a_write_is_answered_after_its_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), false);
        add_user(&store, "a").await.unwrap();
        std::fs::remove_file(wal_path(store.path())).unwrap();
        // Nothing syncs at commit time, so the missing WAL file goes unnoticed.
        add_user(&store, "b").await.unwrap();
        store.close();
    }

    /// Commits that never pause never let a pass reach the end of the WAL
    /// on its own: the checkpointer must still make it start over, or each
    /// commit would append to it for ever.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn under_writes_that_never_pause_the_wal_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), false);
        store
            .write(|c| Ok(c.execute_batch("CREATE TABLE filler (x BLOB)")?))
            .await
            .unwrap();
        let wal = wal_path(store.path());
        // Each row fills most of a page, so each commit writes at least two
        // frames: the new leaf and the page above it.
        let commits = 3 * WAL_RESTART_FRAMES as u64;
        let appended_for_ever = commits * 2 * (4096 + 24);
        let mut largest = 0;
        for _ in 0..commits {
            store
                .write(|c| {
                    c.execute("INSERT INTO filler VALUES (zeroblob(3000))", [])?;
                    Ok(())
                })
                .await
                .unwrap();
            largest = largest.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
        }
        assert!(
            largest < appended_for_ever / 2,
            "the WAL grew to {largest} bytes of the {appended_for_ever} written"
        );
        let rows: i64 = store
            .read(|c| Ok(c.query_row("SELECT count(*) FROM filler", [], |r| r.get(0))?))
            .await
            .unwrap();
        assert_eq!(rows, commits as i64);
        store.close();
    }

    #[tokio::test]
    async fn every_write_answered_before_close_is_in_the_database_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), true);
        let mut answers = Vec::new();
        for i in 0..200 {
            let s = store.clone();
            answers.push(tokio::spawn(async move {
                s.write(move |c| ops::ensure_user(c, &format!("u{i}")))
                    .await
            }));
        }
        for a in answers {
            a.await.unwrap().unwrap();
        }
        store.close();
        let c = Connection::open(dir.path().join("t.db")).unwrap();
        let n: i64 = c
            .query_row("SELECT count(*) FROM users", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 200);
    }

    fn login(user: &str, sealed: &[u8]) -> ops::LogRecord {
        ops::LogRecord {
            username: user.into(),
            ts: 3600,
            log_type: "login".into(),
            device: Some(ops::DeviceRecord {
                sealed_id: sealed.to_vec(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    async fn until_in_step(store: &Store, user: &str, id: &[u8]) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(seen) = store.known_device(user, id) {
                return seen;
            }
            assert!(
                Instant::now() < deadline,
                "the device index never came back"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn the_device_index_follows_the_writer_and_other_processes() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), true);
        let rec = login("u", b"one");
        store
            .write(move |c| ops::insert_log(c, &rec))
            .await
            .unwrap();
        assert!(until_in_step(&store, "u", b"one").await);
        assert!(!until_in_step(&store, "u", b"two").await);
        assert!(!until_in_step(&store, "v", b"one").await);
        let rebuilds = store.known_stats().unwrap().rebuilds;

        // An added device is in the index by the time its write is answered,
        // and a write rolled back adds nothing.
        let rec = login("u", b"two");
        store
            .write(move |c| ops::insert_log(c, &rec))
            .await
            .unwrap();
        assert_eq!(store.known_device("u", b"two"), Some(true));
        let rec = login("u", b"three");
        let failed = store
            .write(move |c| {
                ops::insert_log(c, &rec)?;
                Err::<(), _>(StoreError::Other("refused".into()))
            })
            .await;
        assert!(failed.is_err());
        assert_eq!(store.known_device("u", b"three"), Some(false));

        // Many commits and the checkpoints between them leave it in step.
        for i in 0..300 {
            let rec = login(&format!("w{i}"), b"x");
            store
                .write(move |c| ops::insert_log(c, &rec))
                .await
                .unwrap();
            if i % 50 == 0 {
                tokio::time::sleep(CHECKPOINT_INTERVAL * 2).await;
            }
        }
        assert_eq!(store.known_device("w299", b"x"), Some(true));
        assert_eq!(store.known_stats().unwrap().rebuilds, rebuilds);
        assert_eq!(store.known_stats().unwrap().devices, Some(302));

        // A removal is never answered before the index forgets the device,
        // and needs no new read of it.
        store.write(|c| ops::forget_user(c, "u")).await.unwrap();
        assert_eq!(store.known_device("u", b"one"), Some(false));
        assert_eq!(store.known_device("u", b"two"), Some(false));
        assert_eq!(store.known_device("w0", b"x"), Some(true));
        assert_eq!(store.known_stats().unwrap().rebuilds, rebuilds);
        assert_eq!(store.known_stats().unwrap().devices, Some(300));

        // Another process adds a device: an idle writer notices.
        let other = Connection::open(dir.path().join("t.db")).unwrap();
        other.busy_timeout(Duration::from_secs(5)).unwrap();
        let rec = login("v", b"one");
        ops::insert_log(&other, &rec).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while store.known_device("v", b"one") != Some(true) {
            assert!(
                Instant::now() < deadline,
                "another process's device never showed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        store.close();
    }

    #[tokio::test]
    async fn without_the_device_index_nothing_is_held() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&DbConfig {
            device_index: false,
            ..config(dir.path(), false, 1)
        })
        .unwrap();
        let rec = login("u", b"one");
        store
            .write(move |c| ops::insert_log(c, &rec))
            .await
            .unwrap();
        assert_eq!(store.known_device("u", b"one"), None);
        assert!(store.known_stats().is_none());
        store.close();
    }
}
