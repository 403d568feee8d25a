//! The PostgreSQL schema as numbered, append-only migrations, like SQLite's:
//! migration `i` (1-based) moves `schema_version` from `i-1` to `i` in one
//! transaction. Replicas starting at the same moment run them once: each
//! takes a session advisory lock on a connection of its own first, and finds
//! the work done when it gets the lock. A database of a newer schema is
//! refused. Never edit a migration that has shipped: add a new one.

use tokio_postgres::Client;

use super::pg_error;
use crate::store::types::StoreError;

/// The advisory lock key of migrations ("usermeta" as ASCII).
const MIGRATION_LOCK: i64 = 0x7573_6572_6d65_7461;

/// Each entry is one migration; its number is its position + 1.
pub const MIGRATIONS: &[&str] = &[
    // 1: the schema of SQLite's migration 4, in PostgreSQL's types. `seq`
    // numbers entries in order of arrival across the whole log.
    "
    CREATE TABLE users (
        id   BIGSERIAL PRIMARY KEY,
        name TEXT NOT NULL UNIQUE
    );
    CREATE TABLE user_logs (
        user_id                BIGINT NOT NULL,
        ts                     BIGINT NOT NULL,
        seq                    BIGSERIAL,
        log_type               TEXT NOT NULL,
        message                TEXT,
        service                TEXT,
        login_method           TEXT,
        login_authenticator_id TEXT,
        device_id              BYTEA,
        zone                   TEXT,
        browser                TEXT,
        os                     TEXT,
        mobile                 BOOLEAN,
        user_agent             TEXT,
        PRIMARY KEY (user_id, ts, seq)
    );
    CREATE INDEX user_logs_by_ts ON user_logs (ts, seq);
    CREATE TABLE devices (
        user_id    BIGINT NOT NULL,
        device_id  BYTEA NOT NULL,
        zone       TEXT NOT NULL,
        browser    TEXT NOT NULL,
        os         TEXT NOT NULL,
        mobile     BOOLEAN NOT NULL,
        user_agent TEXT NOT NULL,
        first_seen BIGINT NOT NULL,
        last_seen  BIGINT NOT NULL,
        num_logins BIGINT NOT NULL,
        PRIMARY KEY (user_id, device_id)
    );
    CREATE TABLE last_login (
        user_id BIGINT NOT NULL,
        service TEXT NOT NULL,
        ts      BIGINT NOT NULL,
        PRIMARY KEY (user_id, service)
    );
    CREATE TABLE user_countries (
        user_id    BIGINT NOT NULL,
        zone       TEXT NOT NULL,
        first_seen BIGINT NOT NULL,
        last_seen  BIGINT NOT NULL,
        PRIMARY KEY (user_id, zone)
    );
    CREATE TABLE alerts (
        id      BIGSERIAL PRIMARY KEY,
        user_id BIGINT NOT NULL,
        kind    TEXT NOT NULL,
        created BIGINT NOT NULL,
        details TEXT NOT NULL
    );
    CREATE INDEX alerts_by_user ON alerts (user_id, created);
    CREATE INDEX alerts_by_created ON alerts (created);
    CREATE TABLE alert_deliveries (
        alert_id     BIGINT NOT NULL,
        sink         TEXT NOT NULL,
        state        TEXT NOT NULL,
        attempts     BIGINT NOT NULL,
        next_attempt BIGINT NOT NULL,
        last_error   TEXT,
        delivered_at BIGINT,
        PRIMARY KEY (alert_id, sink)
    );
    CREATE INDEX alert_deliveries_due ON alert_deliveries (state, next_attempt);
    ",
    // 2: every replica's device index hears of devices removed (or a pair
    // changed in place) at the commit that does it.
    "
    CREATE FUNCTION usermetadb_devices_removed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP <> 'DELETE' THEN
            PERFORM pg_notify('usermetadb_devices_removed', '');
        ELSIF EXISTS (SELECT 1 FROM gone) THEN
            PERFORM pg_notify('usermetadb_devices_removed', '');
        END IF;
        RETURN NULL;
    END
    $$;
    CREATE TRIGGER devices_removed AFTER DELETE ON devices
        REFERENCING OLD TABLE AS gone
        FOR EACH STATEMENT EXECUTE FUNCTION usermetadb_devices_removed();
    CREATE TRIGGER devices_rekeyed AFTER UPDATE OF user_id, device_id ON devices
        FOR EACH STATEMENT EXECUTE FUNCTION usermetadb_devices_removed();
    CREATE TRIGGER users_renamed AFTER UPDATE OF id, name ON users
        FOR EACH STATEMENT EXECUTE FUNCTION usermetadb_devices_removed();
    ",
    // 3: Windows agents, as SQLite's migration 5: API keys (hashed), the
    // keyed hashes that recognise a retried event, open sessions (an exact
    // start, deleted at close or after a day), time spent (rounded).
    "
    CREATE TABLE agent_keys (
        id       BIGSERIAL PRIMARY KEY,
        tenant   TEXT NOT NULL,
        site     TEXT NOT NULL,
        key_hash BYTEA NOT NULL UNIQUE,
        created  BIGINT NOT NULL,
        disabled BOOLEAN NOT NULL DEFAULT false
    );
    CREATE TABLE agent_dedup (
        tag     BYTEA PRIMARY KEY,
        expires BIGINT NOT NULL
    );
    CREATE INDEX agent_dedup_by_expiry ON agent_dedup (expires);
    CREATE TABLE agent_sessions (
        session BYTEA PRIMARY KEY,
        user_id BIGINT NOT NULL,
        started BIGINT NOT NULL,
        expires BIGINT NOT NULL
    );
    CREATE INDEX agent_sessions_by_user ON agent_sessions (user_id);
    CREATE INDEX agent_sessions_by_expiry ON agent_sessions (expires);
    CREATE TABLE time_spent (
        user_id     BIGINT NOT NULL,
        device_id   BYTEA NOT NULL,
        day         BIGINT NOT NULL,
        seconds     BIGINT NOT NULL,
        first_start BIGINT NOT NULL,
        last_end    BIGINT NOT NULL,
        PRIMARY KEY (user_id, device_id, day)
    );
    CREATE INDEX time_spent_by_day ON time_spent (day);
    ",
    // 4: access transparency, as SQLite's migration 6: reads of a user's
    // data by recorded clients, one row per user, day, reader and endpoint.
    "
    CREATE TABLE access_reads (
        username TEXT NOT NULL,
        day      BIGINT NOT NULL,
        reader   TEXT NOT NULL,
        endpoint TEXT NOT NULL,
        PRIMARY KEY (username, day, reader, endpoint)
    );
    CREATE INDEX access_reads_by_day ON access_reads (day);
    ",
    // 5: every replica's device index hears of the pairs inserted, at the
    // commit that inserts them: their keys (see `known::pair_key`), 200 to a
    // notification (32 hex digits and a comma each, under the 8000 bytes of
    // a payload). Past 1000 pairs in one transaction (an import, a bulk
    // load), one notification of a removal instead: every replica reads the
    // table again. A statement that inserts nothing (an upsert that only
    // updates) costs the EXISTS alone. A removal's notification now names
    // its transaction, so that the replica that made it knows whether it
    // was heard already.
    "
    CREATE OR REPLACE FUNCTION usermetadb_devices_removed() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP <> 'DELETE' THEN
            PERFORM pg_notify('usermetadb_devices_removed', txid_current()::text);
        ELSIF EXISTS (SELECT 1 FROM gone) THEN
            PERFORM pg_notify('usermetadb_devices_removed', txid_current()::text);
        END IF;
        RETURN NULL;
    END
    $$;
    CREATE FUNCTION usermetadb_devices_added() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        n     bigint;
        total bigint;
        keys  text[];
    BEGIN
        IF NOT EXISTS (SELECT 1 FROM added) THEN
            RETURN NULL;
        END IF;
        SELECT count(*) INTO n FROM added;
        total := n + coalesce(
            nullif(current_setting('usermetadb.devices_added', true), '')::bigint, 0);
        PERFORM set_config('usermetadb.devices_added', total::text, true);
        IF total > 1000 THEN
            PERFORM pg_notify('usermetadb_devices_removed', txid_current()::text);
            RETURN NULL;
        END IF;
        SELECT array_agg(encode(substr(sha256(
                   int4send(octet_length(convert_to(u.name, 'UTF8')))
                   || convert_to(u.name, 'UTF8') || a.device_id), 1, 16), 'hex'))
            INTO keys
            FROM added a JOIN users u ON u.id = a.user_id;
        IF coalesce(array_length(keys, 1), 0) < n THEN
            -- A pair without its user: let every replica read the table.
            PERFORM pg_notify('usermetadb_devices_removed', txid_current()::text);
            RETURN NULL;
        END IF;
        FOR i IN 0 .. (n - 1) / 200 LOOP
            PERFORM pg_notify('usermetadb_devices_added',
                              array_to_string(keys[i * 200 + 1 : i * 200 + 200], ','));
        END LOOP;
        RETURN NULL;
    END
    $$;
    CREATE TRIGGER devices_added AFTER INSERT ON devices
        REFERENCING NEW TABLE AS added
        FOR EACH STATEMENT EXECUTE FUNCTION usermetadb_devices_added();
    ",
    // 6: the countries seen are kept to the day; those derived from the log
    // by imports before this version kept the entries' own times.
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

async fn version(client: &Client) -> Result<i64, StoreError> {
    let row = client
        .query_one(
            "SELECT coalesce(max(version), 0)::BIGINT FROM schema_version",
            &[],
        )
        .await
        .map_err(pg_error)?;
    Ok(row.get(0))
}

/// Brings the database up to [`current_version`] under the migration lock;
/// refuses a newer database.
pub async fn migrate(client: &mut Client) -> Result<(), StoreError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg_error)?;
    let result = migrate_locked(client).await;
    let unlocked = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg_error);
    result.and(unlocked.map(|_| ()))
}

async fn migrate_locked(client: &mut Client) -> Result<(), StoreError> {
    client
        .batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        .await
        .map_err(pg_error)?;
    let found = version(client).await?;
    if found > current_version() {
        return Err(StoreError::Downgrade {
            found,
            supported: current_version(),
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let tx = client.transaction().await.map_err(pg_error)?;
        tx.batch_execute(sql).await.map_err(pg_error)?;
        tx.execute("DELETE FROM schema_version", &[])
            .await
            .map_err(pg_error)?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES ($1)",
            &[&(i as i32 + 1)],
        )
        .await
        .map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)?;
        tracing::info!(version = i + 1, "database migrated");
    }
    Ok(())
}
