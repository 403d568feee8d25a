//! The device index: every (user name, sealed device ID) pair of `devices`,
//! held in memory so that `check_device`, the lookup a user waits on, is
//! answered on the async worker without handing a query to a reader thread.
//!
//! The index follows the table through the writer. Temporary triggers on the
//! writer's connection (`INSTALL`) note every device added and every device
//! removed in a temporary table, inside the transaction: a write rolled back,
//! alone or with its group, takes its notes with it. After each commit the
//! writer applies the notes, in order, before anyone is answered. A change it
//! cannot follow pair by pair (a key or a user renamed), a commit whose
//! outcome is unknown, or a change made by another process (`PRAGMA
//! data_version` moved on the writer's connection) instead drops the whole
//! index, and a thread of its own reads it again from the table. Until that
//! read is done, lookups go to the database as before.
//!
//! A pair is kept as a keyed 128-bit sum (`store::pairs`): about 40 bytes a
//! device in all.

use std::path::Path;
use std::sync::{Condvar, Mutex, PoisonError, RwLock};
use std::time::Instant;

use rusqlite::Connection;

use super::{lock, StoreError};
use crate::store::pairs::{KeySet, PairKeys, PreHashed};

/// Makes the writer's connection note device changes in `temp.device_changes`,
/// in order: `added` or `removed` with the user's name and the sealed ID, or
/// `other` for a change that cannot be followed pair by pair (also when the
/// user's row is already gone). The temporary schema lives only in that
/// connection.
pub(super) const INSTALL: &str = "
    PRAGMA temp_store = MEMORY;
    CREATE TEMP TABLE device_changes (kind TEXT NOT NULL, name TEXT, device_id BLOB);
    CREATE TEMP TRIGGER device_added AFTER INSERT ON main.devices BEGIN
        INSERT INTO device_changes
            VALUES ('added', (SELECT name FROM main.users WHERE id = NEW.user_id), NEW.device_id);
    END;
    CREATE TEMP TRIGGER device_removed AFTER DELETE ON main.devices BEGIN
        INSERT INTO device_changes
            VALUES ('removed', (SELECT name FROM main.users WHERE id = OLD.user_id), OLD.device_id);
    END;
    CREATE TEMP TRIGGER device_rekeyed AFTER UPDATE OF user_id, device_id ON main.devices BEGIN
        INSERT INTO device_changes VALUES ('other', NULL, NULL);
    END;
    CREATE TEMP TRIGGER user_renamed AFTER UPDATE OF name ON main.users BEGIN
        INSERT INTO device_changes VALUES ('other', NULL, NULL);
    END;
";

/// One pair added (`true`) or removed (`false`).
pub(super) type Change = (bool, u128);

/// What a group transaction did to the pairs, read just before its commit.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Changes {
    /// In the order they were made.
    pub pairs: Vec<Change>,
    /// A change that cannot be followed pair by pair: the index must be read
    /// again.
    pub other: bool,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty() && !self.other
    }
}

fn apply(set: &mut KeySet, changes: &[Change]) {
    for &(added, key) in changes {
        if added {
            set.insert(key);
        } else {
            set.remove(&key);
        }
    }
}

#[derive(Default)]
struct State {
    /// `None` while the index is not in step with the table.
    set: Option<KeySet>,
    /// `Some` while the table is being read: changes committed since the
    /// read began, applied to what it read.
    pending: Option<Vec<Change>>,
    /// Moves on every drop of the index; a read begun before is discarded.
    generation: u64,
}

#[derive(Default)]
struct Rebuild {
    wanted: bool,
    stop: bool,
}

use crate::model::DeviceIndexStats as KnownStats;

pub struct KnownDevices {
    keys: PairKeys,
    state: RwLock<State>,
    rebuild: Mutex<Rebuild>,
    wake: Condvar,
    rebuilds: std::sync::atomic::AtomicU64,
}

impl KnownDevices {
    /// An empty index, not yet in step: [`run_rebuilds`](Self::run_rebuilds)
    /// reads it.
    pub(super) fn new() -> KnownDevices {
        KnownDevices {
            keys: PairKeys::new(),
            state: RwLock::new(State::default()),
            rebuild: Mutex::new(Rebuild {
                wanted: true,
                stop: false,
            }),
            wake: Condvar::new(),
            rebuilds: Default::default(),
        }
    }

    pub(super) fn key(&self, name: &str, sealed_id: &[u8]) -> u128 {
        self.keys.key(name, sealed_id)
    }

    /// Whether the user has this device, or `None` while the index is not in
    /// step with the table (ask the database).
    pub fn lookup(&self, name: &str, sealed_id: &[u8]) -> Option<bool> {
        let key = self.key(name, sealed_id);
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        state.set.as_ref().map(|s| s.contains(&key))
    }

    /// Reads what the current transaction of `conn` (the writer's) did to the
    /// pairs, and clears the notes.
    pub(super) fn take_changes(&self, conn: &Connection) -> Result<Changes, StoreError> {
        let mut changes = Changes::default();
        let mut stmt = conn.prepare_cached(
            "SELECT kind, name, device_id FROM temp.device_changes ORDER BY rowid",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let kind = super::ops::text_ref(r, 0)?;
            let name: Option<&str> = r.get_ref(1)?.as_str_or_null().ok().flatten();
            let id: Option<&[u8]> = r.get_ref(2)?.as_blob_or_null().ok().flatten();
            match (kind, name, id) {
                ("added", Some(name), Some(id)) => changes.pairs.push((true, self.key(name, id))),
                ("removed", Some(name), Some(id)) => {
                    changes.pairs.push((false, self.key(name, id)))
                }
                _ => changes.other = true,
            }
        }
        drop(rows);
        if !changes.is_empty() {
            conn.prepare_cached("DELETE FROM temp.device_changes")?
                .execute([])?;
        }
        Ok(changes)
    }

    /// Applies what a committed transaction did.
    pub(super) fn committed(&self, changes: Changes) {
        if changes.other {
            self.invalidate();
            return;
        }
        if changes.pairs.is_empty() {
            return;
        }
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        let State { set, pending, .. } = &mut *state;
        if let Some(set) = set {
            apply(set, &changes.pairs);
        }
        if let Some(p) = pending {
            p.extend(changes.pairs);
        }
    }

    /// Drops the index and asks for it to be read again.
    pub(super) fn invalidate(&self) {
        {
            let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
            state.set = None;
            state.pending = None;
            state.generation += 1;
        }
        lock(&self.rebuild).wanted = true;
        self.wake.notify_one();
    }

    pub(super) fn stop(&self) {
        lock(&self.rebuild).stop = true;
        self.wake.notify_one();
    }

    pub fn stats(&self) -> KnownStats {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        KnownStats {
            devices: state.set.as_ref().map(KeySet::len),
            rebuilds: self.rebuilds.load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// Reads the index from the table whenever it is wanted, until stopped.
    pub(super) fn run_rebuilds(&self, path: &Path) {
        let mut conn: Option<Connection> = None;
        loop {
            {
                let mut r = lock(&self.rebuild);
                while !r.wanted && !r.stop {
                    r = self.wake.wait(r).unwrap_or_else(PoisonError::into_inner);
                }
                if r.stop {
                    break;
                }
                r.wanted = false;
            }
            let generation = {
                let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
                state.pending = Some(Vec::new());
                state.generation
            };
            let started = Instant::now();
            let read = match conn.take() {
                Some(c) => Ok(c),
                None => super::open_reader(path),
            }
            .and_then(|c| {
                let set = self.read_all(&c);
                conn = Some(c);
                set
            });
            match read {
                Ok(mut set) => {
                    let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
                    if state.generation != generation {
                        // Dropped while it was read: the next round reads it again.
                        continue;
                    }
                    apply(&mut set, &state.pending.take().unwrap_or_default());
                    let n = set.len();
                    state.set = Some(set);
                    drop(state);
                    self.rebuilds
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::info!(
                        devices = n,
                        ms = started.elapsed().as_millis() as u64,
                        "device index read"
                    );
                }
                Err(e) => {
                    conn = None;
                    tracing::warn!(error = %e, "reading the device index failed; check_device reads the database until a retry succeeds");
                    std::thread::sleep(std::time::Duration::from_secs(1));
                    lock(&self.rebuild).wanted = true;
                }
            }
        }
    }

    /// Every pair in the table, read in one transaction.
    fn read_all(&self, conn: &Connection) -> Result<KeySet, StoreError> {
        conn.execute_batch("BEGIN")?;
        let result = (|| {
            let n: i64 = conn.query_row("SELECT count(*) FROM devices", [], |r| r.get(0))?;
            let mut set =
                KeySet::with_capacity_and_hasher(usize::try_from(n).unwrap_or(0) + 1024, PreHashed);
            let mut stmt = conn.prepare(
                "SELECT u.name, d.device_id FROM devices d JOIN users u ON u.id = d.user_id",
            )?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                let name = super::ops::text_ref(r, 0)?;
                let id = match r.get_ref(1)? {
                    rusqlite::types::ValueRef::Blob(b) => b,
                    _ => continue,
                };
                set.insert(self.key(name, id));
            }
            Ok(set)
        })();
        let _ = conn.execute_batch("COMMIT");
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer() -> (Connection, KnownDevices) {
        let mut c = Connection::open_in_memory().unwrap();
        crate::store::sqlite::schema::migrate(&mut c).unwrap();
        c.execute_batch(INSTALL).unwrap();
        (c, KnownDevices::new())
    }

    fn add_device(c: &Connection, user: &str, id: &[u8]) {
        let uid = crate::store::sqlite::ops::ensure_user(c, user).unwrap();
        c.execute(
            "INSERT INTO devices (user_id, device_id, zone, browser, os, mobile, user_agent,
                 first_seen, last_seen, num_logins)
             VALUES (?1, ?2, '', '', '', 0, '', 0, 0, 1)
             ON CONFLICT (user_id, device_id) DO UPDATE SET num_logins = num_logins + 1",
            rusqlite::params![uid, id],
        )
        .unwrap();
    }

    #[test]
    fn the_triggers_note_pairs_added_and_removed_in_order_but_not_updates() {
        let (c, k) = writer();
        c.execute_batch("BEGIN").unwrap();
        add_device(&c, "a", b"one");
        add_device(&c, "b", b"one");
        add_device(&c, "a", b"one"); // an update of the same pair
        let ch = k.take_changes(&c).unwrap();
        let (a1, b1) = (k.key("a", b"one"), k.key("b", b"one"));
        assert_eq!(ch.pairs, vec![(true, a1), (true, b1)]);
        assert!(!ch.other);
        // Read and cleared.
        assert!(k.take_changes(&c).unwrap().is_empty());
        c.execute("DELETE FROM devices WHERE device_id = ?1", [b"one"])
            .unwrap();
        add_device(&c, "a", b"one");
        let ch = k.take_changes(&c).unwrap();
        assert_eq!(ch.pairs, vec![(false, a1), (false, b1), (true, a1)]);
        assert!(!ch.other);
        let mut set = KeySet::default();
        apply(&mut set, &[(true, a1), (true, b1)]);
        apply(&mut set, &ch.pairs);
        assert!(set.contains(&a1) && !set.contains(&b1));
        // A key changed in place cannot be followed.
        c.execute("UPDATE devices SET device_id = x'00' WHERE user_id = 1", [])
            .unwrap();
        assert!(k.take_changes(&c).unwrap().other);
        c.execute_batch("COMMIT").unwrap();
    }

    #[test]
    fn a_rolled_back_savepoint_takes_its_notes_with_it() {
        let (c, k) = writer();
        c.execute_batch("BEGIN").unwrap();
        add_device(&c, "a", b"kept");
        c.execute_batch("SAVEPOINT job").unwrap();
        add_device(&c, "a", b"dropped");
        c.execute_batch("ROLLBACK TO job; RELEASE job").unwrap();
        let ch = k.take_changes(&c).unwrap();
        assert_eq!(ch.pairs, vec![(true, k.key("a", b"kept"))]);
        c.execute_batch("COMMIT").unwrap();
    }

    #[test]
    fn keys_tell_names_and_ids_apart() {
        let k = KnownDevices::new();
        assert_ne!(k.key("ab", b"c"), k.key("a", b"bc"));
        assert_ne!(k.key("a", b"x"), k.key("b", b"x"));
        assert_eq!(k.key("a", b"x"), k.key("a", b"x"));
    }

    #[test]
    fn a_read_overtaken_by_a_drop_is_discarded_and_additions_during_a_read_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.db");
        let (c, k) = {
            let mut c = Connection::open(&path).unwrap();
            c.pragma_update(None, "journal_mode", "WAL").unwrap();
            crate::store::sqlite::schema::migrate(&mut c).unwrap();
            c.execute_batch(INSTALL).unwrap();
            (c, KnownDevices::new())
        };
        add_device(&c, "a", b"1");
        assert_eq!(
            k.lookup("a", b"1"),
            None,
            "not in step before the first read"
        );

        // A read begins; a device is added and committed while it runs.
        let generation = {
            let mut s = k.state.write().unwrap();
            s.pending = Some(Vec::new());
            s.generation
        };
        let reader = crate::store::sqlite::reader::open_reader(&path).unwrap();
        let mut set = k.read_all(&reader).unwrap();
        k.committed(Changes {
            pairs: vec![(true, k.key("a", b"2"))],
            other: false,
        });
        {
            let mut s = k.state.write().unwrap();
            assert_eq!(s.generation, generation);
            apply(&mut set, &s.pending.take().unwrap());
            s.set = Some(set);
        }
        assert_eq!(k.lookup("a", b"1"), Some(true));
        assert_eq!(k.lookup("a", b"2"), Some(true));
        assert_eq!(k.lookup("a", b"3"), Some(false));

        // A removal drops the index; the rebuild thread reads it again.
        c.execute("DELETE FROM devices WHERE device_id = ?1", [b"1"])
            .unwrap();
        k.invalidate();
        assert_eq!(k.lookup("a", b"2"), None);
        std::thread::scope(|s| {
            s.spawn(|| k.run_rebuilds(&path));
            let deadline = Instant::now() + std::time::Duration::from_secs(10);
            while k.lookup("a", b"1").is_none() {
                assert!(Instant::now() < deadline, "the index was never read again");
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            k.stop();
        });
        assert_eq!(k.lookup("a", b"1"), Some(false));
        // "2" was only noted, never committed to this table: the read from
        // the table is what counts.
        assert_eq!(k.lookup("a", b"2"), Some(false));
        assert_eq!(k.stats().rebuilds, 1);
    }
}
