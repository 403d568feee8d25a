//! Whole-database streams on PostgreSQL, on a connection of their own: the
//! export from one snapshot (read through a portal, so that a large database
//! is never held in memory), the import into an empty database in one
//! transaction, a bulk load, and the room the data takes. A backup is
//! `pg_dump`'s job, and says so.

use std::collections::HashMap;
use std::future::Future;

use tokio_postgres::error::SqlState;
use tokio_postgres::IsolationLevel;

use super::agents::time_spent_row;
use super::api::{Tx, TxError};
use super::batch::{insert_logs, rounds, Statements};
use super::read::{device_row, named_log_row};
use super::write::insert_log_row;
use super::{pg_error, PgStore};
use crate::config::PostgresConfig;
use crate::model::{Counts, LogRecord, Record, StorageSize};
use crate::store::types::BulkError;

/// Rows fetched from a portal at a time.
const FETCH: i32 = 2_000;
/// Entries per transaction of a bulk load.
const LOAD_BATCH: usize = 20_000;

/// Runs `f` on a runtime of its own: these streams are called from the
/// command line and from blocking threads, never from an async task.
fn block_on<T>(f: impl Future<Output = Result<T, BulkError>>) -> Result<T, BulkError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(BulkError::Io)?
        .block_on(f)
}

/// A connection of its own (its statements prepared once and kept), the
/// schema brought up to date (or refused).
async fn connect(cfg: &PostgresConfig) -> Result<deadpool_postgres::Object, BulkError> {
    let store = PgStore::open(
        &PostgresConfig {
            pool_size: 1,
            read_uri: None,
            ..cfg.clone()
        },
        false,
    )
    .await?;
    Ok(store.client().await?)
}

impl From<tokio_postgres::Error> for BulkError {
    fn from(e: tokio_postgres::Error) -> Self {
        if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
            return BulkError::Duplicate;
        }
        BulkError::Store(pg_error(e))
    }
}

/// Streams the rows of `sql` through a portal, `FETCH` at a time.
async fn each_row(
    tx: &Tx<'_>,
    sql: &str,
    mut f: impl FnMut(&tokio_postgres::Row) -> Result<(), BulkError>,
) -> Result<(), BulkError> {
    let portal = tx.bind(sql, &[]).await?;
    loop {
        let rows = tx.query_portal(&portal, FETCH).await?;
        for r in &rows {
            f(r)?;
        }
        if rows.len() < FETCH as usize {
            return Ok(());
        }
    }
}

/// Every stored record, in the order SQLite's export gives (names in byte
/// order), from one snapshot.
pub fn export(
    cfg: &PostgresConfig,
    out: &mut dyn FnMut(Record) -> Result<(), BulkError>,
) -> Result<Counts, BulkError> {
    block_on(async {
        let mut client = connect(cfg).await?;
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let mut counts = Counts::default();
        let mut emit = |r: Record| {
            counts.count(&r);
            out(r)
        };
        each_row(
            &tx,
            "SELECT u.name, l.ts, l.log_type, l.message, l.service, l.login_method,
                    l.login_authenticator_id, l.device_id, l.zone, l.browser, l.os, l.mobile,
                    l.user_agent
             FROM user_logs l JOIN users u ON u.id = l.user_id
             ORDER BY u.name COLLATE \"C\", l.ts, l.seq",
            |r| emit(Record::Log(named_log_row(r))),
        )
        .await?;
        each_row(
            &tx,
            "SELECT u.name, d.device_id, d.zone, d.browser, d.os, d.mobile, d.user_agent,
                    d.first_seen, d.last_seen, d.num_logins
             FROM devices d JOIN users u ON u.id = d.user_id
             ORDER BY u.name COLLATE \"C\", d.first_seen, d.last_seen, d.device_id",
            |r| {
                emit(Record::Device {
                    username: r.get(0),
                    row: device_row(r, 1),
                })
            },
        )
        .await?;
        each_row(
            &tx,
            "SELECT u.name, l.service, l.ts FROM last_login l JOIN users u ON u.id = l.user_id
             ORDER BY u.name COLLATE \"C\", l.service COLLATE \"C\"",
            |r| {
                emit(Record::LastLogin {
                    username: r.get(0),
                    service: r.get(1),
                    ts: r.get(2),
                })
            },
        )
        .await?;
        // A database of a schema before the agents' (not yet opened by this
        // version) has none of their rows.
        let agents: bool = tx
            .query_one("SELECT to_regclass('agent_keys') IS NOT NULL", &[])
            .await?
            .get(0);
        let keys = format!(
            "SELECT {}, key_hash FROM agent_keys ORDER BY id",
            super::agents::KEY_COLUMNS
        );
        each_row(
            &tx,
            if agents {
                &keys
            } else {
                "SELECT 0::bigint, '', '', 0::bigint, false, ''::bytea WHERE false"
            },
            |r| {
                emit(Record::AgentKey {
                    key: super::agents::key_row(r),
                    key_hash: r.get(5),
                })
            },
        )
        .await?;
        each_row(
            &tx,
            if agents {
                "SELECT u.name, t.device_id, t.day, t.seconds, t.first_start, t.last_end
                 FROM time_spent t JOIN users u ON u.id = t.user_id
                 ORDER BY u.name COLLATE \"C\", t.day, t.device_id"
            } else {
                "SELECT '', ''::bytea, 0::bigint, 0::bigint, 0::bigint, 0::bigint WHERE false"
            },
            |r| emit(Record::TimeSpent(time_spent_row(r))),
        )
        .await?;
        let access: bool = tx
            .query_one("SELECT to_regclass('access_reads') IS NOT NULL", &[])
            .await?
            .get(0);
        if access {
            each_row(&tx, super::access::EXPORT, |r| {
                emit(Record::AccessRead(super::access::row(r)))
            })
            .await?;
        }
        tx.commit().await?;
        Ok(counts)
    })
}

/// The IDs of users met so far, made when missing.
#[derive(Default)]
struct Users(HashMap<String, i64>);

impl Users {
    async fn id(&mut self, tx: &Tx<'_>, name: &str) -> Result<i64, BulkError> {
        if let Some(id) = self.0.get(name) {
            return Ok(*id);
        }
        let insert = tx
            .prepare_cached("INSERT INTO users (name) VALUES ($1) ON CONFLICT (name) DO NOTHING")
            .await?;
        tx.execute(&insert, &[&name]).await?;
        let select = tx
            .prepare_cached("SELECT id FROM users WHERE name = $1")
            .await?;
        let id: i64 = tx.query_one(&select, &[&name]).await?.get(0);
        self.0.insert(name.to_owned(), id);
        Ok(id)
    }
}

/// Reads records into an empty database in one transaction: all or nothing.
pub fn import(
    cfg: &PostgresConfig,
    next: &mut dyn FnMut() -> Option<Result<Record, BulkError>>,
) -> Result<Counts, BulkError> {
    block_on(async {
        let mut client = connect(cfg).await?;
        let tx = client.transaction().await?;
        let any: bool = tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM users) OR EXISTS (SELECT 1 FROM user_logs)
                     OR EXISTS (SELECT 1 FROM devices) OR EXISTS (SELECT 1 FROM last_login)",
                &[],
            )
            .await?
            .get(0);
        if any {
            return Err(BulkError::NotEmpty);
        }
        let mut users = Users::default();
        let mut counts = Counts::default();
        while let Some(rec) = next() {
            let rec = rec?;
            counts.count(&rec);
            match &rec {
                Record::Log(log) => {
                    let uid = users.id(&tx, &log.username).await?;
                    // The row alone: the device list comes from its own records.
                    insert_log_row(&tx, uid, log).await?;
                }
                Record::Device { username, row } => {
                    let uid = users.id(&tx, username).await?;
                    let d = &row.device;
                    tx.execute(
                        "INSERT INTO devices (user_id, device_id, zone, browser, os, mobile,
                             user_agent, first_seen, last_seen, num_logins)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                        &[
                            &uid,
                            &d.sealed_id,
                            &d.zone,
                            &d.browser,
                            &d.os,
                            &d.mobile,
                            &d.user_agent,
                            &row.first_seen,
                            &row.last_seen,
                            &row.num_logins,
                        ],
                    )
                    .await?;
                }
                Record::LastLogin {
                    username,
                    service,
                    ts,
                } => {
                    let uid = users.id(&tx, username).await?;
                    tx.execute(
                        "INSERT INTO last_login (user_id, service, ts) VALUES ($1, $2, $3)",
                        &[&uid, service, ts],
                    )
                    .await?;
                }
                Record::AgentKey { key, key_hash } => {
                    tx.execute(
                        "INSERT INTO agent_keys (id, tenant, site, key_hash, created, disabled)
                         VALUES ($1, $2, $3, $4, $5, $6)",
                        &[
                            &key.id,
                            &key.tenant,
                            &key.site,
                            key_hash,
                            &key.created,
                            &key.disabled,
                        ],
                    )
                    .await?;
                }
                Record::TimeSpent(t) => {
                    let uid = users.id(&tx, &t.username).await?;
                    tx.execute(
                        "INSERT INTO time_spent
                             (user_id, device_id, day, seconds, first_start, last_end)
                         VALUES ($1, $2, $3, $4, $5, $6)",
                        &[
                            &uid,
                            &t.sealed_device,
                            &t.day,
                            &t.seconds,
                            &t.first_start,
                            &t.last_end,
                        ],
                    )
                    .await?;
                }
                Record::AccessRead(a) => {
                    tx.execute(
                        super::access::IMPORT,
                        &[&a.username, &a.day, &a.reader, &a.endpoint],
                    )
                    .await?;
                }
            }
        }
        // Keys imported with their IDs: new keys are numbered after them.
        tx.batch_execute(
            "SELECT setval(pg_get_serial_sequence('agent_keys', 'id'),
                           coalesce(max(id), 0) + 1, false) FROM agent_keys",
        )
        .await?;
        // The countries seen, derived from the log as the server keeps them
        // (to the day).
        tx.batch_execute(
            "INSERT INTO user_countries (user_id, zone, first_seen, last_seen)
                 SELECT user_id, zone, min(ts) - min(ts) % 86400, max(ts) - max(ts) % 86400
                 FROM user_logs
                 WHERE zone IS NOT NULL AND zone <> '' GROUP BY user_id, zone
             ON CONFLICT DO NOTHING",
        )
        .await?;
        tx.commit().await?;
        Ok(counts)
    })
}

/// Appends log entries (device list and countries kept as the server keeps
/// them) and last logins, in large transactions of set-based statements.
pub fn bulk_load(
    cfg: &PostgresConfig,
    records: &mut dyn Iterator<Item = Record>,
) -> Result<Counts, BulkError> {
    block_on(async {
        let client = connect(cfg).await?;
        let st = Statements::prepare(&client).await?;
        let mut counts = Counts::default();
        let mut records = records.peekable();
        while records.peek().is_some() {
            let mut logs = Vec::new();
            let mut last: HashMap<(String, String), i64> = HashMap::new();
            for rec in records.by_ref().take(LOAD_BATCH) {
                counts.count(&rec);
                match rec {
                    Record::Log(log) => logs.push(log),
                    Record::LastLogin {
                        username,
                        service,
                        ts,
                    } => {
                        let t = last.entry((username, service)).or_insert(ts);
                        *t = (*t).max(ts);
                    }
                    _ => {
                        return Err(BulkError::Unsupported(
                            "a bulk load takes log entries and last logins; devices follow from the entries"
                                .into(),
                        ))
                    }
                }
            }
            client.batch_execute("BEGIN").await?;
            let mut names: Vec<&str> = logs
                .iter()
                .map(|l| l.username.as_str())
                .chain(last.keys().map(|(u, _)| u.as_str()))
                .collect();
            names.sort_unstable();
            names.dedup();
            client
                .execute(
                    "INSERT INTO users (name) SELECT n FROM unnest($1::text[]) AS n
                     ON CONFLICT (name) DO NOTHING",
                    &[&names],
                )
                .await?;
            let ids: HashMap<String, i64> = client
                .query("SELECT name, id FROM users WHERE name = ANY($1)", &[&names])
                .await?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            for round in rounds(logs.iter().map(|l| l.username.as_str())) {
                let rows: Vec<(i64, &LogRecord, bool)> = round
                    .iter()
                    .map(|&i| (ids[&logs[i].username], &logs[i], false))
                    .collect();
                insert_logs(&client, &st, &rows)
                    .await
                    .map_err(|e| match e {
                        TxError::Pg(e) => BulkError::from(e),
                        TxError::Store(e) => BulkError::Store(e),
                    })?;
            }
            let (uid, service, ts): (Vec<i64>, Vec<&str>, Vec<i64>) = last
                .iter()
                .map(|((u, s), t)| (ids[u], s.as_str(), *t))
                .collect();
            client
                .execute(
                    "INSERT INTO last_login (user_id, service, ts)
                     SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[])
                     ON CONFLICT (user_id, service) DO UPDATE
                     SET ts = GREATEST(last_login.ts, EXCLUDED.ts)",
                    &[&uid, &service, &ts],
                )
                .await?;
            client.batch_execute("COMMIT").await?;
        }
        client.batch_execute("ANALYZE").await?;
        Ok(counts)
    })
}

/// A backup of a PostgreSQL database is `pg_dump`'s: consistent, online,
/// and restorable with `pg_restore`.
pub fn backup(cfg: &PostgresConfig) -> Result<(), BulkError> {
    Err(BulkError::Unsupported(format!(
        "on PostgreSQL, back up with pg_dump, which takes a consistent copy of a live database: \
         pg_dump --format=custom --file=usermeta.dump '{}' (restore with pg_restore --dbname=…); \
         keep the device key (secrets.device_key_file) with the dump, or the device IDs in it \
         cannot be opened",
        crate::config::redact_password(&cfg.uri)
    )))
}

/// How much room the data takes, from PostgreSQL's own accounting.
pub fn storage_size(cfg: &PostgresConfig) -> Result<StorageSize, BulkError> {
    block_on(async {
        let client = connect(cfg).await?;
        let r = client
            .query_one(
                "SELECT (SELECT count(*) FROM user_logs), (SELECT count(*) FROM users),
                        (SELECT count(*) FROM devices),
                        pg_database_size(current_database()),
                        pg_total_relation_size('user_logs')",
                &[],
            )
            .await?;
        let log_entries = r.get::<_, i64>(0) as u64;
        let total_bytes = r.get::<_, i64>(3) as u64;
        let user_logs_bytes = r.get::<_, i64>(4) as u64;
        Ok(StorageSize::new(
            log_entries,
            r.get::<_, i64>(1) as u64,
            r.get::<_, i64>(2) as u64,
            total_bytes,
            user_logs_bytes,
        ))
    })
}
