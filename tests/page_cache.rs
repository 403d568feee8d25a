//! The page cache wrapper (`store::sqlite::pcache`) against a model: a random
//! workload of page splits, rollbacks and a shrinking database gives the same
//! rows as a `BTreeMap`, and SQLite's integrity check passes.
//!
//! A test binary of its own: the wrapper goes in, and SQLite's memory
//! statistics go off, before the process opens its first SQLite connection.

use rand::{Rng, SeedableRng};
use rusqlite::{params, Connection};
use std::collections::BTreeMap;
use usermetadb::store::sqlite::pcache;

fn open(path: &std::path::Path) -> Connection {
    let c = Connection::open(path).unwrap();
    c.pragma_update(None, "journal_mode", "WAL").unwrap();
    // A small cache: pages come and go, and evictions happen unannounced.
    c.pragma_update(None, "cache_size", 64).unwrap();
    c
}

fn rows(c: &Connection) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut st = c.prepare("SELECT k, v FROM t ORDER BY k").unwrap();
    let it = st
        .query_map([], |r| {
            Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?))
        })
        .unwrap();
    it.map(Result::unwrap).collect()
}

fn random_bytes(rng: &mut impl Rng, n: usize) -> Vec<u8> {
    (0..n).map(|_| rng.gen()).collect()
}

#[test]
fn a_random_workload_reads_back_as_the_model_with_the_wrapper_in_place() {
    assert!(
        usermetadb::store::configure_sqlite(),
        "installed before any connection"
    );
    assert!(pcache::installed());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let mut w = open(&path);
    let r = open(&path);
    w.execute_batch("CREATE TABLE t (k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID")
        .unwrap();
    let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let (skipped0, passed0) = pcache::truncations();

    for round in 0..300 {
        let tx = w.transaction().unwrap();
        let mut changes = Vec::new();
        for _ in 0..rng.gen_range(1..40) {
            // Random keys split pages all over the tree; big values grow the
            // file, so that a rollback leaves pages past its end.
            let k = random_bytes(&mut rng, 8);
            let len = rng.gen_range(10..900);
            let v = random_bytes(&mut rng, len);
            tx.execute(
                "INSERT INTO t (k, v) VALUES (?1, ?2) ON CONFLICT (k) DO UPDATE SET v = ?2",
                params![k, v],
            )
            .unwrap();
            changes.push((k, Some(v)));
        }
        if rng.gen_bool(0.3) {
            if let Some((k, _)) = model.iter().nth(rng.gen_range(0..model.len().max(1))) {
                let k = k.clone();
                tx.execute("DELETE FROM t WHERE k = ?1", [&k]).unwrap();
                changes.push((k, None));
            }
        }
        if rng.gen_bool(0.25) {
            tx.rollback().unwrap();
        } else {
            tx.commit().unwrap();
            for (k, v) in changes {
                match v {
                    Some(v) => model.insert(k, v),
                    None => model.remove(&k),
                };
            }
        }
        if round % 50 == 49 {
            // Delete most rows and shrink the file: pages past the new end
            // must leave both caches.
            let keep: Vec<Vec<u8>> = model.keys().step_by(4).cloned().collect();
            let tx = w.transaction().unwrap();
            for k in model.keys() {
                if !keep.contains(k) {
                    tx.execute("DELETE FROM t WHERE k = ?1", [k]).unwrap();
                }
            }
            tx.commit().unwrap();
            model.retain(|k, _| keep.contains(k));
            w.execute_batch("VACUUM").unwrap();
        }
        assert_eq!(rows(&w), model, "writer, round {round}");
        assert_eq!(rows(&r), model, "reader, round {round}");
    }
    let check: String = w
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");

    let (skipped, passed) = pcache::truncations();
    assert!(
        skipped - skipped0 > 100,
        "most ends of transaction had nothing to drop: {} skipped",
        skipped - skipped0
    );
    assert!(
        passed > passed0,
        "rollbacks and VACUUM had pages to drop, and the truncation reached SQLite"
    );
}

#[test]
fn memory_statistics_are_off() {
    // Both tests in this binary call `configure_sqlite` first; whichever
    // runs first configures the process.
    usermetadb::store::configure_sqlite();
    let conn = rusqlite::Connection::open_in_memory().unwrap();
    conn.execute_batch("CREATE TABLE t (v BLOB); INSERT INTO t VALUES (zeroblob(100000));")
        .unwrap();
    // SAFETY: a plain query of SQLite's counters.
    let used = unsafe { rusqlite::ffi::sqlite3_memory_used() };
    assert_eq!(used, 0, "SQLite counts its memory: the statistics are on");
}
