//! SQLite's process-wide settings (`store::configure_sqlite`): a test binary
//! of its own, as they must be made before the process opens its first
//! SQLite connection.

#[test]
fn memory_statistics_are_off() {
    usermetadb::store::configure_sqlite();
    let conn = rusqlite::Connection::open_in_memory().unwrap();
    conn.execute_batch("CREATE TABLE t (v BLOB); INSERT INTO t VALUES (zeroblob(100000));")
        .unwrap();
    // SAFETY: a plain query of SQLite's counters.
    let used = unsafe { rusqlite::ffi::sqlite3_memory_used() };
    assert_eq!(used, 0, "SQLite counts its memory: the statistics are on");
}
