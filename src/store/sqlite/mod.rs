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

mod access;
mod agents;
mod alerts;
mod api;
mod checkpoint;
mod decay;
pub mod export;
mod known;
mod ops;
mod reader;
mod readq;
mod reports;
mod schema;
mod sync;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::oneshot;

use crate::config::DbConfig;
use crate::store::types::StoreError;
use checkpoint::{checkpoint_loop, Checkpoints, WAL_SIZE_LIMIT};
use known::KnownDevices;
use reader::{open_reader, reader_loop, ReadJob};
use readq::ReadQueue;
use sync::{sync_loop, wal_path, Syncs};
use writer::{in_savepoint, writer_loop, WriteJob};

/// Process-wide SQLite settings. Call it first thing in `main`, before
/// anything opens a database and while no other thread uses SQLite (its
/// configuration is not thread-safe). It turns off SQLite's memory
/// statistics, which take a global mutex on every allocation and free of
/// every connection; nothing here reads them.
pub fn configure_sqlite() {
    static DONE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        // SAFETY: SQLITE_CONFIG_MEMSTATUS takes one int. Called before SQLite
        // is initialized; afterwards it is refused with SQLITE_MISUSE and
        // nothing changes.
        unsafe {
            rusqlite::ffi::sqlite3_config(
                rusqlite::ffi::SQLITE_CONFIG_MEMSTATUS,
                0 as std::ffi::c_int,
            );
        }
    });
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

/// Handle to the database; cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    writer: Mutex<Option<mpsc::Sender<WriteJob>>>,
    readers: Arc<ReadQueue<ReadJob>>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    checkpoints: Arc<Checkpoints>,
    known: Option<Arc<KnownDevices>>,
    path: PathBuf,
    /// Alert deliveries claimed and not yet recorded, with the end of their
    /// lease. A SQLite database has one server, so the leases live here
    /// rather than as a write per claim; a restart forgets them, and the
    /// deliveries are due again at once.
    leases: Mutex<std::collections::HashMap<(i64, String), i64>>,
}

/// A mutex only guards plain data here: a panic elsewhere leaves it usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Statements each connection keeps prepared. rusqlite's default of 16 is
/// fewer than the writer runs for one group of add_log (transaction and
/// savepoint, the user, the monitor's history, the entry, its device and
/// country, an alert and its deliveries, the device index's notes), so its
/// least recently used statements were finalized and prepared again.
pub(super) const STATEMENT_CACHE: usize = 64;

/// The writer's page cache, in SQLite's negative form (KiB).
const WRITER_CACHE_KIB: i64 = -16_384;

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

impl SqliteStore {
    /// Opens (creating if needed) and migrates the database, then starts the
    /// writer and reader threads.
    pub fn open(cfg: &DbConfig) -> Result<SqliteStore, StoreError> {
        let mut conn = Connection::open(&cfg.path)?;
        configure(&conn)?;
        schema::migrate(&mut conn)?;
        // Checkpoints are the checkpointer's job, never a commit's.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)?;
        // The writer's transactions touch many pages of an index at once
        // (a second's recorded reads, a batch of add_log): a cache of 16 MiB
        // keeps them from spilling dirty pages into the WAL mid-transaction,
        // where a page changed again is written again.
        conn.pragma_update(None, "cache_size", WRITER_CACHE_KIB)?;
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
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                writer: Mutex::new(Some(wtx)),
                readers,
                threads: Mutex::new(threads),
                checkpoints,
                known,
                path: cfg.path.clone(),
                leases: Mutex::default(),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Whether the user has this device, from the in-memory device index;
    /// `None` when the index is off or not in step with the table yet, and
    /// the database must be asked.
    fn known_device(&self, name: &str, sealed_id: &[u8]) -> Option<bool> {
        self.inner.known.as_ref()?.lookup(name, sealed_id)
    }

    /// Runs `f` inside the next group transaction on the writer thread. The
    /// answer arrives after the commit: `Ok` means the write is durable.
    /// An `Err` from `f` rolls back only `f`'s own changes.
    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
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
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
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

#[cfg(test)]
mod tests {
    use super::checkpoint::{CHECKPOINT_INTERVAL, WAL_RESTART_FRAMES};
    use super::reader::SNAPSHOT_MAX_AGE;
    use super::*;
    use crate::model::{DeviceRecord, LogRecord};
    use std::time::Instant;

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

    fn open(dir: &Path, synchronous_full: bool) -> SqliteStore {
        open_with_readers(dir, synchronous_full, 1)
    }

    fn config(dir: &Path, synchronous_full: bool, readers: usize) -> DbConfig {
        DbConfig {
            path: dir.join("t.db"),
            readers,
            max_batch: 64,
            synchronous_full,
            device_index: true,
            postgres: None,
        }
    }

    fn open_with_readers(dir: &Path, synchronous_full: bool, readers: usize) -> SqliteStore {
        SqliteStore::open(&config(dir, synchronous_full, readers)).unwrap()
    }

    async fn add_user(store: &SqliteStore, name: &'static str) -> Result<i64, StoreError> {
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
        store: &SqliteStore,
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
    async fn queue_count(store: &SqliteStore) -> tokio::task::JoinHandle<i64> {
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
        let other = Connection::open(store.path()).unwrap();
        let count = |name: &str| -> i64 {
            other
                .query_row("SELECT count(*) FROM users WHERE name = ?1", [name], |r| {
                    r.get(0)
                })
                .unwrap()
        };
        for name in ["a", "b", "c"] {
            assert_eq!(count(name), 0);
            add_user(&store, name).await.unwrap();
            // Answered, so committed: another connection sees it at once.
            assert_eq!(count(name), 1, "{name} answered before its commit");
        }
        drop(other);
        // The answer waits for the commit only, not for a sync: a WAL that
        // can no longer be synced goes unnoticed.
        std::fs::remove_file(wal_path(store.path())).unwrap();
        add_user(&store, "d").await.unwrap();
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
        // The WAL header's salt changes each time the WAL starts over.
        let salt = || {
            std::fs::read(&wal)
                .ok()
                .and_then(|b| b.get(16..24).map(<[u8]>::to_vec))
        };
        // Each row fills most of a page, so each commit writes at least two
        // frames: the new leaf and the page above it. Past
        // WAL_RESTART_FRAMES the WAL must start over; how soon depends on
        // the machine's load, so the commits go on until it has, up to four
        // times the frames that take.
        let limit = 4 * WAL_RESTART_FRAMES as u64;
        let mut first = None;
        let mut commits = 0;
        let mut restarted = false;
        while commits < limit && !restarted {
            store
                .write(|c| {
                    c.execute("INSERT INTO filler VALUES (zeroblob(3000))", [])?;
                    Ok(())
                })
                .await
                .unwrap();
            commits += 1;
            if commits % 64 == 0 {
                let now = salt();
                if first.is_none() {
                    first = now;
                } else {
                    restarted = now.is_some() && now != first;
                }
            }
        }
        assert!(
            restarted,
            "after {commits} commits of {} frames or more, the WAL never started over",
            2 * commits
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

    fn login(user: &str, sealed: &[u8]) -> LogRecord {
        LogRecord {
            username: user.into(),
            ts: 3600,
            log_type: "login".into(),
            device: Some(DeviceRecord {
                sealed_id: sealed.to_vec(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    async fn until_in_step(store: &SqliteStore, user: &str, id: &[u8]) -> bool {
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
        let rebuilds = store.device_index_stats().unwrap().rebuilds;

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
        assert_eq!(store.device_index_stats().unwrap().rebuilds, rebuilds);
        assert_eq!(store.device_index_stats().unwrap().devices, Some(302));

        // A removal is never answered before the index forgets the device,
        // and needs no new read of it.
        store.write(|c| ops::forget_user(c, "u")).await.unwrap();
        assert_eq!(store.known_device("u", b"one"), Some(false));
        assert_eq!(store.known_device("u", b"two"), Some(false));
        assert_eq!(store.known_device("w0", b"x"), Some(true));
        assert_eq!(store.device_index_stats().unwrap().rebuilds, rebuilds);
        assert_eq!(store.device_index_stats().unwrap().devices, Some(300));

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
        let store = SqliteStore::open(&DbConfig {
            device_index: false,
            postgres: None,
            ..config(dir.path(), false, 1)
        })
        .unwrap();
        let rec = login("u", b"one");
        store
            .write(move |c| ops::insert_log(c, &rec))
            .await
            .unwrap();
        assert_eq!(store.known_device("u", b"one"), None);
        assert!(store.device_index_stats().is_none());
        store.close();
    }

    /// The storage interface's conformance suite, with and without the
    /// device index.
    mod conformance {
        use super::*;
        use crate::store::conformance::Subject;

        pub(super) async fn subject(device_index: bool) -> Option<Subject> {
            let dir = tempfile::tempdir().unwrap();
            let db = DbConfig {
                device_index,
                ..config(dir.path(), true, 2)
            };
            let another = DbConfig {
                path: dir.path().join("another.db"),
                ..db.clone()
            };
            Some(Subject {
                store: crate::store::Store::open(&db).await.unwrap(),
                db,
                another,
                keep: Box::new(dir),
            })
        }

        crate::storage_conformance!(subject(true));

        mod without_device_index {
            crate::storage_conformance!(super::subject(false));
        }
    }
}
