//! The schema as numbered, append-only migrations. Migration `i` (1-based) moves
//! `PRAGMA user_version` from `i-1` to `i` in one transaction. Never edit a
//! migration that has shipped: add a new one.

use rusqlite::Connection;

use super::StoreError;

/// Each entry is one migration; its number is its position + 1.
pub const MIGRATIONS: &[&str] = &[
    // 1: users, logs, devices, last logins.
    "
    CREATE TABLE users (
        id   INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE
    );
    CREATE TABLE user_logs (
        id                     INTEGER PRIMARY KEY,
        user_id                INTEGER NOT NULL,
        ts                     INTEGER NOT NULL,
        log_type               TEXT NOT NULL,
        message                TEXT,
        service                TEXT,
        login_method           TEXT,
        login_authenticator_id TEXT,
        device_id              BLOB,
        zone                   TEXT,
        browser                TEXT,
        os                     TEXT,
        mobile                 INTEGER,
        user_agent             TEXT
    );
    CREATE INDEX user_logs_by_user ON user_logs (user_id, ts);
    CREATE INDEX user_logs_by_ts ON user_logs (ts);
    CREATE TABLE devices (
        user_id    INTEGER NOT NULL,
        device_id  BLOB NOT NULL,
        zone       TEXT NOT NULL,
        browser    TEXT NOT NULL,
        os         TEXT NOT NULL,
        mobile     INTEGER NOT NULL,
        user_agent TEXT NOT NULL,
        first_seen INTEGER NOT NULL,
        last_seen  INTEGER NOT NULL,
        num_logins INTEGER NOT NULL,
        PRIMARY KEY (user_id, device_id)
    ) WITHOUT ROWID;
    CREATE INDEX devices_by_last_seen ON devices (last_seen);
    CREATE TABLE last_login (
        user_id INTEGER NOT NULL,
        service TEXT NOT NULL,
        ts      INTEGER NOT NULL,
        PRIMARY KEY (user_id, service)
    ) WITHOUT ROWID;
    ",
    // 2: the login monitor: countries seen per user, the alert outbox and its
    // per-sink delivery state.
    "
    CREATE TABLE user_countries (
        user_id    INTEGER NOT NULL,
        zone       TEXT NOT NULL,
        first_seen INTEGER NOT NULL,
        last_seen  INTEGER NOT NULL,
        PRIMARY KEY (user_id, zone)
    ) WITHOUT ROWID;
    INSERT INTO user_countries (user_id, zone, first_seen, last_seen)
        SELECT user_id, zone, min(ts), max(ts) FROM user_logs
        WHERE zone IS NOT NULL AND zone <> '' GROUP BY user_id, zone;
    CREATE TABLE alerts (
        id      INTEGER PRIMARY KEY,
        user_id INTEGER NOT NULL,
        kind    TEXT NOT NULL,
        created INTEGER NOT NULL,
        details TEXT NOT NULL
    );
    CREATE INDEX alerts_by_user ON alerts (user_id, created);
    CREATE INDEX alerts_by_created ON alerts (created);
    CREATE TABLE alert_deliveries (
        alert_id     INTEGER NOT NULL,
        sink         TEXT NOT NULL,
        state        TEXT NOT NULL,
        attempts     INTEGER NOT NULL,
        next_attempt INTEGER NOT NULL,
        last_error   TEXT,
        delivered_at INTEGER,
        PRIMARY KEY (alert_id, sink)
    ) WITHOUT ROWID;
    CREATE INDEX alert_deliveries_due ON alert_deliveries (state, next_attempt);
    ",
    // 3: every login moved its device's entry in this index, a random page
    // write per login for an hourly retention scan; retention scans instead.
    "
    DROP INDEX devices_by_last_seen;
    ",
    // 4: the log clustered by user and time, so a user's history sits on one
    // or two pages instead of one page per entry, and the (user_id, ts) index
    // is the table itself. `seq` numbers the entries of one quantized hour in
    // order of arrival (the old row IDs carry that order over), so entries
    // join the time index at the end of their hour, not at a random place.
    "
    CREATE TABLE user_logs_v4 (
        user_id                INTEGER NOT NULL,
        ts                     INTEGER NOT NULL,
        seq                    INTEGER NOT NULL,
        log_type               TEXT NOT NULL,
        message                TEXT,
        service                TEXT,
        login_method           TEXT,
        login_authenticator_id TEXT,
        device_id              BLOB,
        zone                   TEXT,
        browser                TEXT,
        os                     TEXT,
        mobile                 INTEGER,
        user_agent             TEXT,
        PRIMARY KEY (user_id, ts, seq)
    ) WITHOUT ROWID;
    INSERT INTO user_logs_v4
        SELECT user_id, ts, id, log_type, message, service, login_method,
               login_authenticator_id, device_id, zone, browser, os, mobile, user_agent
        FROM user_logs ORDER BY user_id, ts, id;
    DROP TABLE user_logs;
    ALTER TABLE user_logs_v4 RENAME TO user_logs;
    CREATE INDEX user_logs_by_ts ON user_logs (ts, seq);
    ",
    // 5: Windows agents: API keys (hashed), the keyed hashes that recognise
    // a retried event (deleted after the dedup window), open sessions (an
    // exact start, deleted when the session closes or after a day) and the
    // time spent per user, computer and day (rounded).
    "
    CREATE TABLE agent_keys (
        id       INTEGER PRIMARY KEY,
        tenant   TEXT NOT NULL,
        site     TEXT NOT NULL,
        key_hash BLOB NOT NULL UNIQUE,
        created  INTEGER NOT NULL,
        disabled INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE agent_dedup (
        tag     BLOB PRIMARY KEY,
        expires INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX agent_dedup_by_expiry ON agent_dedup (expires);
    CREATE TABLE agent_sessions (
        session BLOB PRIMARY KEY,
        user_id INTEGER NOT NULL,
        started INTEGER NOT NULL,
        expires INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX agent_sessions_by_user ON agent_sessions (user_id);
    CREATE INDEX agent_sessions_by_expiry ON agent_sessions (expires);
    CREATE TABLE time_spent (
        user_id     INTEGER NOT NULL,
        device_id   BLOB NOT NULL,
        day         INTEGER NOT NULL,
        seconds     INTEGER NOT NULL,
        first_start INTEGER NOT NULL,
        last_end    INTEGER NOT NULL,
        PRIMARY KEY (user_id, device_id, day)
    ) WITHOUT ROWID;
    CREATE INDEX time_spent_by_day ON time_spent (day);
    ",
    // 6: access transparency: reads of a user's data by recorded clients,
    // one row per user, day, reader CN and endpoint. The user is named, not
    // numbered, so that the record outlives the user's other rows until
    // retention or an erasure removes it.
    "
    CREATE TABLE access_reads (
        username TEXT NOT NULL,
        day      INTEGER NOT NULL,
        reader   TEXT NOT NULL,
        endpoint TEXT NOT NULL,
        PRIMARY KEY (username, day, reader, endpoint)
    ) WITHOUT ROWID;
    CREATE INDEX access_reads_by_day ON access_reads (day);
    ",
    // 7: the record of reads is written every second and pruned once a
    // retention run: an index by day doubled the writes for the prune's
    // sake, which walks the table in key order instead.
    "
    DROP INDEX access_reads_by_day;
    ",
    // 8: the countries seen are kept to the day; those derived from the log
    // by migration 2 (and by imports before this version) kept the entries'
    // own times.
    "
    UPDATE user_countries SET first_seen = first_seen - first_seen % 86400,
                              last_seen = last_seen - last_seen % 86400
    WHERE first_seen % 86400 <> 0 OR last_seen % 86400 <> 0;
    ",
];

/// The schema version this build writes.
pub fn current_version() -> i64 {
    MIGRATIONS.len() as i64
}

/// Brings the database up to [`current_version`]; refuses a newer database.
pub fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > current_version() {
        return Err(StoreError::Downgrade {
            found: version,
            supported: current_version(),
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Exclusive)?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i as i64 + 1)?;
        tx.commit()?;
        tracing::info!(version = i + 1, "database migrated");
    }
    if version > 0 && version < current_version() {
        compact_if_mostly_free(conn)?;
    }
    Ok(())
}

/// A migration that rebuilds a table leaves the old one's pages free in the
/// file; when they are a quarter of it or more, the file is rewritten
/// without them (once, at the upgrade), rather than kept at its old size
/// plus the new table's until the log grows into the space.
fn compact_if_mostly_free(conn: &Connection) -> Result<(), StoreError> {
    let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    let free: i64 = conn.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
    if free * 4 >= pages && free > 0 {
        let started = std::time::Instant::now();
        conn.execute_batch("VACUUM")?;
        tracing::info!(
            freed_pages = free,
            seconds = started.elapsed().as_secs_f64(),
            "database compacted after the upgrade"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_apply_in_order_and_set_the_version() {
        let mut c = Connection::open_in_memory().unwrap();
        migrate(&mut c).unwrap();
        let v: i64 = c
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, MIGRATIONS.len() as i64);
        assert_eq!(
            current_version(),
            8,
            "a migration was added: update this count"
        );
        // Running again is a no-op.
        migrate(&mut c).unwrap();
    }

    #[test]
    fn migration_2_backfills_countries_and_8_keeps_them_to_the_day() {
        let mut c = Connection::open_in_memory().unwrap();
        let tx = c.transaction().unwrap();
        tx.execute_batch(MIGRATIONS[0]).unwrap();
        tx.execute_batch(
            "INSERT INTO users (id, name) VALUES (1, 'u');
             INSERT INTO user_logs (user_id, ts, log_type, zone) VALUES
                 (1, 86400 + 10, 'login', 'IT'), (1, 2 * 86400 + 20, 'login', 'IT'),
                 (1, 86400 + 30, 'login', 'DE'), (1, 40, 'logout', NULL);
             PRAGMA user_version = 1;",
        )
        .unwrap();
        tx.commit().unwrap();
        migrate(&mut c).unwrap();
        let rows: Vec<(String, i64, i64)> = c
            .prepare("SELECT zone, first_seen, last_seen FROM user_countries ORDER BY zone")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            rows,
            vec![("DE".into(), 86400, 86400), ("IT".into(), 86400, 2 * 86400)]
        );
    }

    #[test]
    fn migration_4_keeps_every_entry_and_the_order_within_an_hour() {
        let mut c = Connection::open_in_memory().unwrap();
        let tx = c.transaction().unwrap();
        for sql in &MIGRATIONS[..3] {
            tx.execute_batch(sql).unwrap();
        }
        // Rows 2 and 3 share an hour; 3 arrived later. Row 9 is older but
        // was imported last.
        tx.execute_batch(
            "INSERT INTO users (id, name) VALUES (1, 'u'), (2, 'v');
             INSERT INTO user_logs (id, user_id, ts, log_type, message, device_id, zone) VALUES
                 (2, 1, 7200, 'login', 'second', x'01', 'IT'),
                 (3, 1, 7200, 'logout', 'third', NULL, NULL),
                 (4, 2, 3600, 'login', 'other user', NULL, NULL),
                 (9, 1, 3600, 'login', 'first', NULL, NULL);
             -- Enough of another user's history that the old table is a
             -- good part of the file.
             WITH RECURSIVE n(i) AS (SELECT 10 UNION ALL SELECT i + 1 FROM n WHERE i < 3000)
             INSERT INTO user_logs (id, user_id, ts, log_type, message)
                 SELECT i, 2, 0, 'login', 'filler ' || i FROM n;
             PRAGMA user_version = 3;",
        )
        .unwrap();
        tx.commit().unwrap();
        migrate(&mut c).unwrap();

        let messages = |c: &Connection| -> Vec<String> {
            crate::store::sqlite::ops::user_logs(c, "u", 0, 10)
                .unwrap()
                .into_iter()
                .map(|r| r.message)
                .collect()
        };
        assert_eq!(messages(&c), ["third", "second", "first"]);
        let first = &crate::store::sqlite::ops::user_logs(&c, "u", 0, 10).unwrap()[1];
        assert_eq!(first.device.as_ref().unwrap().sealed_id, [1]);
        assert_eq!(first.device.as_ref().unwrap().zone, "IT");
        assert_eq!(
            crate::store::sqlite::ops::user_logs(&c, "v", 1, 10)
                .unwrap()
                .len(),
            1
        );

        // A new entry in the same hour sorts after the migrated ones.
        let rec = crate::model::LogRecord {
            username: "u".into(),
            ts: 7200,
            log_type: "login".into(),
            message: "fourth".into(),
            ..Default::default()
        };
        crate::store::sqlite::ops::insert_log(&c, &rec).unwrap();
        assert_eq!(messages(&c), ["fourth", "third", "second", "first"]);
        // The old table's pages went back to the file system.
        let free: i64 = c
            .query_row("PRAGMA freelist_count", [], |r| r.get(0))
            .unwrap();
        assert_eq!(free, 0);
        let indexes: Vec<String> = c
            .prepare(
                "SELECT name FROM sqlite_schema WHERE type = 'index' AND tbl_name = 'user_logs'",
            )
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(indexes, ["user_logs_by_ts"]);
    }

    #[test]
    fn a_newer_database_is_refused() {
        let mut c = Connection::open_in_memory().unwrap();
        c.pragma_update(None, "user_version", 99).unwrap();
        assert!(matches!(
            migrate(&mut c),
            Err(StoreError::Downgrade { found: 99, .. })
        ));
    }
}
