//! Storage: all SQL lives under this module.
//!
//! SQLite is blocking, so no query runs on an async worker thread. One writer
//! thread owns the only read-write connection and commits queued writes in
//! groups: each write runs in its own savepoint inside a shared transaction, and
//! its caller is answered only after the commit that holds it. Reads go to a
//! small pool of threads, each with a read-only connection. WAL mode lets the
//! readers run while the writer commits.

pub mod ops;
pub mod schema;

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use tokio::sync::oneshot;

use crate::config::DbConfig;

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
                // SQLITE_IOERR covers write failures such as ENOSPC on the WAL.
                if let rusqlite::Error::SqliteFailure(f, _) = &e {
                    if f.code == ErrorCode::SystemIoFailure {
                        return StoreError::Full;
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
    readers: Mutex<Option<mpsc::Sender<ReadJob>>>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    path: PathBuf,
}

fn configure(conn: &Connection, synchronous_full: bool) -> Result<(), StoreError> {
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(
        None,
        "synchronous",
        if synchronous_full { "FULL" } else { "NORMAL" },
    )?;
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
        configure(&conn, cfg.synchronous_full)?;
        schema::migrate(&mut conn)?;

        let mut threads = Vec::new();
        let (wtx, wrx) = mpsc::channel::<WriteJob>();
        let max_batch = cfg.max_batch;
        threads.push(
            std::thread::Builder::new()
                .name("db-writer".into())
                .spawn(move || writer_loop(conn, wrx, max_batch))
                .map_err(|e| StoreError::Other(e.to_string()))?,
        );

        let (rtx, rrx) = mpsc::channel::<ReadJob>();
        let rrx = Arc::new(Mutex::new(rrx));
        for i in 0..cfg.readers {
            let conn = open_reader(&cfg.path)?;
            let rrx = rrx.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("db-reader-{i}"))
                    .spawn(move || reader_loop(conn, rrx))
                    .map_err(|e| StoreError::Other(e.to_string()))?,
            );
        }
        Ok(Store {
            inner: Arc::new(Inner {
                writer: Mutex::new(Some(wtx)),
                readers: Mutex::new(Some(rtx)),
                threads: Mutex::new(threads),
                path: cfg.path.clone(),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
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
            guard
                .as_ref()
                .ok_or(StoreError::Closed)?
                .send(job)
                .map_err(|_| StoreError::Closed)?;
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
            let _ = tx.send(f(conn));
        });
        {
            let guard = self.inner.readers.lock().map_err(|_| StoreError::Closed)?;
            guard
                .as_ref()
                .ok_or(StoreError::Closed)?
                .send(job)
                .map_err(|_| StoreError::Closed)?;
        }
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Stops accepting work, lets the threads finish what is queued and joins them.
    pub fn close(&self) {
        if let Ok(mut w) = self.inner.writer.lock() {
            w.take();
        }
        if let Ok(mut r) = self.inner.readers.lock() {
            r.take();
        }
        let threads = match self.inner.threads.lock() {
            Ok(mut t) => std::mem::take(&mut *t),
            Err(_) => Vec::new(),
        };
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

fn writer_loop(conn: Connection, rx: mpsc::Receiver<WriteJob>, max_batch: usize) {
    let mut batch: Vec<WriteJob> = Vec::with_capacity(max_batch);
    let mut completions: Vec<Completion> = Vec::with_capacity(max_batch);
    while let Ok(first) = rx.recv() {
        batch.push(first);
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let outcome = run_batch(&conn, &mut batch, &mut completions);
        if let Err(e) = &outcome {
            tracing::error!(error = %e, writes = completions.len(), "group commit failed");
        }
        tracing::trace!(writes = completions.len(), "group commit");
        for done in completions.drain(..) {
            done(outcome.as_ref().err());
        }
    }
    tracing::debug!("writer stopped");
}

fn run_batch(
    conn: &Connection,
    batch: &mut Vec<WriteJob>,
    completions: &mut Vec<Completion>,
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
    for job in batch.drain(..) {
        completions.push(job(Some(conn)));
    }
    match conn
        .prepare_cached("COMMIT")
        .and_then(|mut s| s.execute([]))
    {
        Ok(_) => Ok(()),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e.into())
        }
    }
}

fn reader_loop(conn: Connection, rx: Arc<Mutex<mpsc::Receiver<ReadJob>>>) {
    loop {
        let job = match rx.lock() {
            Ok(guard) => match guard.recv() {
                Ok(job) => job,
                Err(_) => break,
            },
            Err(_) => break,
        };
        job(&conn);
    }
}
