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
            3,
            "a migration was added: update this count"
        );
        // Running again is a no-op.
        migrate(&mut c).unwrap();
    }

    #[test]
    fn migration_2_backfills_countries_from_existing_logs() {
        let mut c = Connection::open_in_memory().unwrap();
        let tx = c.transaction().unwrap();
        tx.execute_batch(MIGRATIONS[0]).unwrap();
        tx.execute_batch(
            "INSERT INTO users (id, name) VALUES (1, 'u');
             INSERT INTO user_logs (user_id, ts, log_type, zone) VALUES
                 (1, 10, 'login', 'IT'), (1, 20, 'login', 'IT'), (1, 30, 'login', 'DE'), (1, 40, 'logout', NULL);
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
        assert_eq!(rows, vec![("DE".into(), 30, 30), ("IT".into(), 10, 20)]);
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
