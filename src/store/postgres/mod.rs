//! The PostgreSQL backend: any number of stateless replicas share one
//! database.
//!
//! - A pool of connections (deadpool); every statement is prepared once per
//!   connection and kept (`prepare_cached`).
//! - Every write is one transaction, retried on a serialization failure or a
//!   deadlock (SQLSTATE 40001, 40P01). A log entry takes its user's row lock
//!   first, so two replicas storing entries of one user at once run one after
//!   the other, and the detections of each see the other's entry: a user's
//!   first login from a new device, received twice at the same moment, raises
//!   one alert.
//! - Log entries are group-committed: those that arrive while a transaction
//!   runs are stored by the next one, with set-based statements (`unnest`)
//!   sent together on the connection (see `batch`).
//! - Alert deliveries are claimed with `FOR UPDATE SKIP LOCKED` and a lease,
//!   so each is delivered once per sink across replicas, and again after the
//!   lease when its replica died.
//! - Retention runs on one replica at a time (`pg_try_advisory_lock`), and
//!   migrations once (`pg_advisory_lock` on a connection of their own).
//! - `check_device` may be answered by the replica's device index, "known"
//!   or "unknown": it learns its own writes and forgets its own removals at
//!   their commit, and hears of every replica's inserts and removals by
//!   LISTEN/NOTIFY (see `known`); while it cannot answer, the database is
//!   asked.

/// How a device entry merges into the user's device row: non-empty
/// attributes replace, the first and last sighting widen, logins add up.
macro_rules! device_merge {
    () => {
        "ON CONFLICT (user_id, device_id) DO UPDATE SET
             zone = CASE WHEN EXCLUDED.zone <> '' THEN EXCLUDED.zone ELSE devices.zone END,
             browser = CASE WHEN EXCLUDED.browser <> '' THEN EXCLUDED.browser
                       ELSE devices.browser END,
             os = CASE WHEN EXCLUDED.os <> '' THEN EXCLUDED.os ELSE devices.os END,
             mobile = EXCLUDED.mobile,
             user_agent = CASE WHEN EXCLUDED.user_agent <> '' THEN EXCLUDED.user_agent
                          ELSE devices.user_agent END,
             first_seen = LEAST(devices.first_seen, EXCLUDED.first_seen),
             last_seen = GREATEST(devices.last_seen, EXCLUDED.last_seen),
             num_logins = devices.num_logins + EXCLUDED.num_logins"
    };
}

#[macro_use]
mod api;
mod access;
mod agents;
mod batch;
pub mod bulk;
mod decay;
mod erase;
mod known;
mod outbox;
mod read;
mod reports;
mod schema;
pub mod scratch;
mod write;

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::error::SqlState;

use crate::config::PostgresConfig;
use crate::store::types::StoreError;

pub use schema::current_version;

/// Maps a PostgreSQL error onto the store's: what a client may retry later
/// (connections, locks, shutdown, resources) and what it may not.
pub(crate) fn pg_error(e: tokio_postgres::Error) -> StoreError {
    if let Some(db) = e.as_db_error() {
        let code = db.code();
        let msg = format!("{}: {}", code.code(), db.message());
        return match code {
            c if *c == SqlState::DISK_FULL || *c == SqlState::OUT_OF_MEMORY => StoreError::Full,
            c if *c == SqlState::READ_ONLY_SQL_TRANSACTION => {
                refused_writes();
                StoreError::ReadOnly
            }
            c if *c == SqlState::T_R_SERIALIZATION_FAILURE
                || *c == SqlState::T_R_DEADLOCK_DETECTED
                || *c == SqlState::LOCK_NOT_AVAILABLE
                || *c == SqlState::QUERY_CANCELED
                || *c == SqlState::TOO_MANY_CONNECTIONS
                || *c == SqlState::ADMIN_SHUTDOWN
                || *c == SqlState::CANNOT_CONNECT_NOW =>
            {
                StoreError::Busy
            }
            _ => StoreError::Other(msg),
        };
    }
    if e.is_closed() {
        return StoreError::Io(format!("connection to PostgreSQL lost: {e}"));
    }
    StoreError::Io(format!("PostgreSQL: {e}"))
}

/// The start of this process's clock of [`REFUSED_WRITES`].
static EPOCH: OnceLock<Instant> = OnceLock::new();
/// When (nanoseconds after [`EPOCH`]) a server last refused a write of this
/// process (SQLSTATE 25006): a primary demoted, or fenced by a failover tool.
/// Pooled connections made before then are dropped at their next checkout,
/// so that a new one looks for the primary again (with
/// `target_session_attrs=read-write`, skipping a read-only server), rather
/// than sending every write to the old primary for as long as it lives.
static REFUSED_WRITES: AtomicU64 = AtomicU64::new(0);

fn since_epoch(t: Instant) -> u64 {
    let epoch = *EPOCH.get_or_init(Instant::now);
    t.saturating_duration_since(epoch).as_nanos() as u64
}

fn refused_writes() {
    REFUSED_WRITES.fetch_max(since_epoch(Instant::now()), Ordering::AcqRel);
}

/// Whether a pooled connection made at `created` may have been made to a
/// server that has refused writes since.
pub(super) fn made_before_refusal(created: Instant) -> bool {
    let refused = REFUSED_WRITES.load(Ordering::Acquire);
    refused != 0 && since_epoch(created) <= refused
}

fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => pg_error(e),
        deadpool_postgres::PoolError::Timeout(_) => StoreError::Busy,
        deadpool_postgres::PoolError::Closed => StoreError::Closed,
        other => StoreError::Io(format!("PostgreSQL pool: {other}")),
    }
}

/// Whether a transaction that failed with `e` should simply run again.
fn retryable(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|c| {
        *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
    })
}

/// Times a transaction runs again after a serialization failure or a deadlock.
const RETRIES: usize = 8;

/// The connection settings: the URI (or key=value string) with what it may
/// carry that tokio-postgres does not read itself (`sslmode=verify-full`,
/// `sslrootcert=`) taken out, the password file read, and the timeouts.
fn connection_config(
    cfg: &PostgresConfig,
) -> Result<(tokio_postgres::Config, Option<std::path::PathBuf>, bool), String> {
    connection_config_of(cfg, &cfg.uri)
}

/// [`connection_config`] of `uri` (`db_uri` or `db.read_uri`), with the
/// rest of `cfg`.
fn connection_config_of(
    cfg: &PostgresConfig,
    uri: &str,
) -> Result<(tokio_postgres::Config, Option<std::path::PathBuf>, bool), String> {
    let mut ca = cfg.ca_file.clone();
    let mut verify = cfg.ca_file.is_some();
    let mut uri = uri.to_owned();
    // libpq's `sslmode` values tokio-postgres does not know: with a CA
    // (here or as `sslrootcert`), the server's certificate and name are
    // always verified.
    for mode in ["verify-full", "verify-ca"] {
        for sep in ["sslmode=", "sslmode = "] {
            let from = format!("{sep}{mode}");
            if uri.contains(&from) {
                uri = uri.replace(&from, "sslmode=require");
                verify = true;
            }
        }
    }
    if let Some(at) = uri.find("sslrootcert=") {
        let rest = &uri[at + "sslrootcert=".len()..];
        let end = rest.find(['&', ' ']).unwrap_or(rest.len());
        let path = percent_decode(&rest[..end]);
        ca = Some(path.into());
        verify = true;
        let mut cut = uri[..at].to_owned();
        let tail = &rest[end..];
        if cut.ends_with('&') || cut.ends_with('?') {
            cut.push_str(tail.trim_start_matches('&'));
        } else {
            cut.push_str(tail);
        }
        uri = cut.trim_end_matches(['?', '&']).to_owned();
    }
    let mut pg = tokio_postgres::Config::from_str(&uri).map_err(|e| e.to_string())?;
    if let Some(file) = &cfg.password_file {
        let password = std::fs::read_to_string(file)
            .map_err(|e| format!("db.password_file {}: {e}", file.display()))?;
        pg.password(password.trim_end_matches(['\n', '\r']));
    }
    pg.connect_timeout(cfg.connect_timeout);
    pg.options(format!(
        "-c statement_timeout={}",
        cfg.statement_timeout.as_millis()
    ));
    pg.application_name("user-meta-server");
    if verify {
        pg.ssl_mode(tokio_postgres::config::SslMode::Require);
    }
    Ok((pg, ca, verify))
}

/// `%2F` and the like, for a unix-socket host or a path written in a URI.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Checks `db_uri` and its companions without connecting: the message
/// names what is wrong.
pub fn check(cfg: &PostgresConfig) -> Result<(), String> {
    connection_config(cfg)?;
    if let Some(read) = &cfg.read_uri {
        connection_config_of(cfg, read).map_err(|e| format!("db.read_uri: {e}"))?;
    }
    Ok(())
}

/// The TLS client for PostgreSQL: rustls, checking the server's certificate
/// against the CA file (or the public roots) and its name.
fn tls(ca: Option<&std::path::Path>) -> Result<tokio_postgres_rustls::MakeRustlsConnect, String> {
    let roots = match ca {
        Some(path) => crate::tls::root_store(path).map_err(|e| e.to_string())?,
        None => {
            let mut roots = rustls::RootCertStore::empty();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            roots
        }
    };
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// Handle to the database; cheap to clone.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    /// For the operator's log, without a password.
    location: Arc<std::path::PathBuf>,
    /// The group commit of log entries; `None` in its own workers.
    queue: Option<batch::Queue>,
    /// With `db.device_index`: pairs known to exist.
    known: Option<Arc<known::KnownDevices>>,
    /// The task keeping `known` coherent, stopped by [`PgStore::close`].
    follower: Option<Arc<tokio::task::AbortHandle>>,
    /// With `db.read_uri`: the standbys serving reads that may lag.
    reads: Option<Arc<Standbys>>,
}

/// The pool of `db.read_uri`, and until when it is not tried again after
/// no standby answered (nanoseconds after [`EPOCH`]).
struct Standbys {
    pool: Pool,
    down_until: AtomicU64,
}

/// How long reads stay on the primary after no standby answered.
const STANDBYS_DOWN: Duration = Duration::from_secs(1);

impl PgStore {
    /// Connects, runs the migrations once across replicas, and opens the pool.
    pub async fn open(cfg: &PostgresConfig, device_index: bool) -> Result<PgStore, StoreError> {
        let (pg, ca, _verify) = connection_config(cfg).map_err(StoreError::Other)?;
        let tls = tls(ca.as_deref()).map_err(StoreError::Other)?;
        // Migrations on a connection of their own, which holds the lock.
        let (mut client, connection) = pg.connect(tls.clone()).await.map_err(pg_error)?;
        let driver = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "migration connection ended");
            }
        });
        let migrated = schema::migrate(&mut client).await;
        drop(client);
        let _ = driver.await;
        migrated?;
        let manager = Manager::from_config(
            pg.clone(),
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(cfg.pool_size)
            .wait_timeout(Some(cfg.connect_timeout + Duration::from_secs(5)))
            .create_timeout(Some(cfg.connect_timeout))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Other(e.to_string()))?;
        // One connection now, so that a wrong password fails the start.
        drop(pool.get().await.map_err(pool_error)?);
        let reads = match &cfg.read_uri {
            Some(uri) => {
                let (read, _, _) = connection_config_of(cfg, uri).map_err(StoreError::Other)?;
                let manager = Manager::from_config(
                    read,
                    tls.clone(),
                    ManagerConfig {
                        recycling_method: RecyclingMethod::Fast,
                    },
                );
                let pool = Pool::builder(manager)
                    .max_size(cfg.pool_size)
                    .wait_timeout(Some(cfg.connect_timeout))
                    .create_timeout(Some(cfg.connect_timeout))
                    .runtime(deadpool_postgres::Runtime::Tokio1)
                    .build()
                    .map_err(|e| StoreError::Other(e.to_string()))?;
                Some(Arc::new(Standbys {
                    pool,
                    down_until: AtomicU64::new(0),
                }))
            }
            None => None,
        };
        let mut store = PgStore {
            pool,
            location: Arc::new(crate::config::redact_password(&cfg.uri).into()),
            queue: None,
            known: None,
            follower: None,
            reads,
        };
        if device_index {
            let known = Arc::new(known::KnownDevices::new());
            let follow = known::follow(known.clone(), pg, tls, store.pool.clone());
            store.follower = Some(Arc::new(tokio::spawn(follow).abort_handle()));
            store.known = Some(known);
        }
        store.queue = Some(batch::start(&store));
        Ok(store)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.location
    }

    pub fn close(&self) {
        if let Some(f) = &self.follower {
            f.abort();
        }
        self.pool.close();
        if let Some(r) = &self.reads {
            r.pool.close();
        }
    }

    /// A connection for a read that may lag behind the last commits: a
    /// standby's from `db.read_uri`, or the primary's when there is none or
    /// no standby answers (then for [`STANDBYS_DOWN`] before they are tried
    /// again).
    pub(super) async fn reader(&self) -> Result<deadpool_postgres::Object, StoreError> {
        if let Some(r) = &self.reads {
            let now = since_epoch(Instant::now());
            if r.down_until.load(Ordering::Acquire) <= now {
                match r.pool.get().await {
                    Ok(client) => return Ok(client),
                    Err(e) => {
                        tracing::warn!(
                            "no standby of db.read_uri answers ({e}); reads go to the primary"
                        );
                        let until = now + STANDBYS_DOWN.as_nanos() as u64;
                        r.down_until.store(until, Ordering::Release);
                    }
                }
            }
        }
        self.client().await
    }

    /// A pooled connection; never one made before a server refused a write
    /// (see [`REFUSED_WRITES`]).
    pub(super) async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        loop {
            let client = self.pool.get().await.map_err(pool_error)?;
            if !made_before_refusal(deadpool_postgres::Object::metrics(&client).created) {
                return Ok(client);
            }
            drop(deadpool_postgres::Object::take(client));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::OnceLock;

    use std::path::Path;

    use super::scratch::Scratch;
    use super::*;
    use crate::config::DbConfig;
    use crate::store::conformance::Subject;
    use crate::store::Store;

    /// One cluster for the tests of this process, or `None` where PostgreSQL
    /// is not installed (never under CI, where `.ci/run` installs it).
    fn cluster() -> Option<&'static Scratch> {
        static CLUSTER: OnceLock<Option<Scratch>> = OnceLock::new();
        CLUSTER
            .get_or_init(|| match Scratch::start(false) {
                Ok(s) => Some(s),
                Err(e) if std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false") => {
                    panic!("PostgreSQL is required in CI: {e}")
                }
                Err(e) => {
                    eprintln!("skipping the PostgreSQL tests: {e}");
                    None
                }
            })
            .as_ref()
    }

    pub(crate) fn config(uri: String) -> PostgresConfig {
        PostgresConfig {
            uri,
            read_uri: None,
            password_file: None,
            pool_size: 8,
            statement_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            ca_file: None,
        }
    }

    /// A fresh database in the cluster.
    async fn subject() -> Option<Subject> {
        subject_with(false).await
    }

    async fn subject_with(device_index: bool) -> Option<Subject> {
        static N: AtomicUsize = AtomicUsize::new(0);
        let cluster = cluster()?;
        let name = format!("conformance_{}", N.fetch_add(1, Ordering::Relaxed));
        cluster.create_database(&name).unwrap();
        cluster.create_database(&format!("{name}_another")).unwrap();
        let another = DbConfig {
            path: Default::default(),
            readers: 0,
            max_batch: 0,
            synchronous_full: true,
            device_index: false,
            postgres: Some(config(cluster.uri(&format!("{name}_another")))),
        };
        let db = DbConfig {
            path: Default::default(),
            readers: 0,
            max_batch: 0,
            synchronous_full: true,
            device_index,
            postgres: Some(config(cluster.uri(&name))),
        };
        Some(Subject {
            store: Store::open(&db).await.unwrap(),
            db,
            another,
            keep: Box::new(()),
        })
    }

    crate::storage_conformance!(subject());

    mod with_device_index {
        crate::storage_conformance!(super::subject_with(true));
    }

    /// Waits until `f` holds, polling; fails after 20 s.
    async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !f().await {
            assert!(std::time::Instant::now() < deadline, "never: {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether `store`'s device index answers "known" for the pair.
    fn holds(store: &PgStore, user: &str, dev: &[u8]) -> bool {
        answer(store, user, dev) == known::Answer::Known
    }

    /// What `store`'s device index answers for the pair.
    fn answer(store: &PgStore, user: &str, dev: &[u8]) -> known::Answer {
        let known = store.known.as_ref().unwrap();
        known.lookup(known.key(user, dev))
    }

    /// How many lookups `store`'s device index sent to the database.
    fn asked(store: &PgStore) -> u64 {
        store.known.as_ref().unwrap().asked()
    }

    /// A login of `user` at `ts` from the device `dev`.
    fn login_from(user: &str, dev: &str, ts: i64) -> crate::model::LogRecord {
        crate::model::LogRecord {
            username: user.into(),
            ts,
            log_type: "login".into(),
            device: Some(crate::model::DeviceRecord {
                sealed_id: dev.as_bytes().to_vec(),
                zone: "IT".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// The replica that erases or ages out a device answers "unknown" for it
    /// as soon as the removal returns, before the notification of its commit
    /// has come back to its own index. Each round starts from an index that
    /// holds the device.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_replica_reads_its_own_removals_of_devices() {
        let Some(cluster) = cluster() else { return };
        cluster.create_database("own_removals").unwrap();
        let store = PgStore::open(&config(cluster.uri("own_removals")), true)
            .await
            .unwrap();
        let now = crate::clock::now_unix();
        for round in 0..20 {
            let (erased, aged) = (format!("e{round}"), format!("a{round}"));
            store
                .record_log(login_from(&erased, "d", now), None)
                .await
                .unwrap();
            store
                .record_log(login_from(&aged, "d", now - 400 * 86_400), None)
                .await
                .unwrap();
            // A pair written while the index was being read again may be
            // missing from it: a lookup asks the database and keeps it.
            eventually("the index holds both devices", async || {
                for user in [&erased, &aged] {
                    let _ = store.device_known(user.clone(), b"d".to_vec()).await;
                }
                holds(&store, &erased, b"d") && holds(&store, &aged, b"d")
            })
            .await;

            let d = store.forget_user(erased.clone()).await.unwrap();
            assert_eq!(d.devices, 1);
            assert!(!holds(&store, &erased, b"d"), "round {round}");
            assert!(!store.device_known(erased, b"d".to_vec()).await.unwrap());

            eventually("the index holds the aged device", async || {
                let _ = store.device_known(aged.clone(), b"d".to_vec()).await;
                holds(&store, &aged, b"d")
            })
            .await;
            let d = store
                .prune(now - 800 * 86_400, now - 200 * 86_400)
                .await
                .unwrap();
            assert_eq!(d.devices, 1);
            assert!(!holds(&store, &aged, b"d"), "round {round}");
            assert!(!store.device_known(aged, b"d".to_vec()).await.unwrap());
        }
        store.close();
    }

    /// One replica's device index hears of the devices another replica
    /// stored, and stops answering "known" for one another replica erased
    /// or aged out, or when it stops hearing of changes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_device_index_stays_coherent_across_replicas() {
        let Some(cluster) = cluster() else { return };
        cluster.create_database("index_coherence").unwrap();
        let cfg = config(cluster.uri("index_coherence"));
        let a = PgStore::open(&cfg, true).await.unwrap();
        let b = PgStore::open(&cfg, true).await.unwrap();
        eventually("b's index read", async || {
            b.device_index_stats().unwrap().devices.is_some()
        })
        .await;
        let entry = login_from;
        let now = crate::clock::now_unix();
        a.record_log(entry("u", "d1", now), None).await.unwrap();
        a.record_log(entry("old", "d0", now - 400 * 86_400), None)
            .await
            .unwrap();
        // Stored by a: b hears of both.
        eventually("b hears of a's devices", async || {
            b.device_index_stats().unwrap().devices == Some(2)
        })
        .await;
        assert!(b.device_known("u".into(), b"d1".to_vec()).await.unwrap());
        assert!(b.device_known("old".into(), b"d0".to_vec()).await.unwrap());
        assert!(holds(&b, "u", b"d1"));

        // Erased by a: b stops answering "known" once the commit's
        // notification arrives, and reads the table again.
        a.forget_user("u".into()).await.unwrap();
        eventually("b forgets u's device", async || {
            !b.device_known("u".into(), b"d1".to_vec()).await.unwrap()
        })
        .await;
        assert!(!holds(&b, "u", b"d1"));

        // Aged out by a's retention: the same.
        eventually("b reads the table again", async || {
            b.device_index_stats().unwrap().devices == Some(1)
        })
        .await;
        assert!(holds(&b, "old", b"d0"));
        a.prune(now - 800 * 86_400, now - 200 * 86_400)
            .await
            .unwrap();
        eventually("b drops the aged-out device", async || {
            !holds(&b, "old", b"d0")
        })
        .await;
        assert!(!b.device_known("old".into(), b"d0".to_vec()).await.unwrap());

        // b's listening connection cut: its index answers nothing until it
        // listens again and has read the table.
        a.record_log(entry("w", "d2", now), None).await.unwrap();
        eventually("b hears of w's device", async || holds(&b, "w", b"d2")).await;
        let rebuilds = b.device_index_stats().unwrap().rebuilds;
        let (client, conn) = tokio_postgres::connect(&cfg.uri, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE datname = current_database()
                   AND (query LIKE 'LISTEN%' OR query LIKE 'SELECT NOT (pg_is_in_recovery()%')",
                &[],
            )
            .await
            .unwrap();
        eventually("b listens again", async || {
            b.device_index_stats().unwrap().rebuilds > rebuilds
                && b.device_index_stats().unwrap().devices.is_some()
        })
        .await;
        assert!(holds(&b, "w", b"d2"));
        a.close();
        b.close();
    }

    /// Two replicas with the index: each answers "unknown" for a device
    /// nobody stored without a query, hears of the devices the other
    /// stores (and answers "known" for them without a query), and of their
    /// removal and their return.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replicas_answer_unknown_devices_without_a_query() {
        let Some(cluster) = cluster() else { return };
        cluster.create_database("index_unknown").unwrap();
        let cfg = config(cluster.uri("index_unknown"));
        let a = PgStore::open(&cfg, true).await.unwrap();
        let b = PgStore::open(&cfg, true).await.unwrap();
        for store in [&a, &b] {
            eventually("the index read", async || {
                store.device_index_stats().unwrap().devices.is_some()
            })
            .await;
        }
        let now = crate::clock::now_unix();
        // A name that is not ASCII: the trigger's keys are the index's.
        let user = "zoë";
        let asked_before = asked(&b);
        assert!(!b.device_known(user.into(), b"d1".to_vec()).await.unwrap());
        assert_eq!(
            asked(&b),
            asked_before,
            "an unknown device asked of the database"
        );

        // (a) Stored through a: known to b without a query.
        a.record_log(login_from(user, "d1", now), None)
            .await
            .unwrap();
        assert!(a.device_known(user.into(), b"d1".to_vec()).await.unwrap());
        eventually("b hears of a's device", async || holds(&b, user, b"d1")).await;
        assert!(b.device_known(user.into(), b"d1".to_vec()).await.unwrap());
        assert!(!b
            .device_known(user.into(), b"never".to_vec())
            .await
            .unwrap());
        assert!(!b
            .device_known("nobody".into(), b"d1".to_vec())
            .await
            .unwrap());
        assert_eq!(asked(&b), asked_before);

        // (b) Stored through b, removed through a: unknown on both.
        b.record_log(login_from("v", "d2", now), None)
            .await
            .unwrap();
        eventually("a hears of b's device", async || holds(&a, "v", b"d2")).await;
        a.forget_user("v".into()).await.unwrap();
        assert_ne!(answer(&a, "v", b"d2"), known::Answer::Known);
        assert!(!a.device_known("v".into(), b"d2".to_vec()).await.unwrap());
        eventually("b forgets the device", async || {
            answer(&b, "v", b"d2") == known::Answer::Unknown
        })
        .await;
        assert!(!b.device_known("v".into(), b"d2".to_vec()).await.unwrap());
        // Once a has read the table again, it answers from memory too.
        eventually("a reads the table again", async || {
            answer(&a, "v", b"d2") == known::Answer::Unknown
        })
        .await;

        // (c) Stored again, through either: known again on both.
        a.record_log(login_from("v", "d2", now), None)
            .await
            .unwrap();
        assert!(a.device_known("v".into(), b"d2".to_vec()).await.unwrap());
        eventually("b hears of the device again", async || {
            holds(&b, "v", b"d2")
        })
        .await;
        b.forget_user("v".into()).await.unwrap();
        b.record_log(login_from("v", "d2", now), None)
            .await
            .unwrap();
        assert!(b.device_known("v".into(), b"d2".to_vec()).await.unwrap());
        eventually("a knows the device stored again", async || {
            a.device_known("v".into(), b"d2".to_vec()).await.unwrap()
        })
        .await;
        for store in [&a, &b] {
            eventually("each index holds the device", async || {
                holds(store, "v", b"d2")
            })
            .await;
        }
        assert!(holds(&a, user, b"d1") && holds(&b, user, b"d1"));
        a.close();
        b.close();
    }

    /// More than a thousand devices in one transaction (a bulk load, an
    /// import) make every replica read the table again, and then it knows
    /// them all.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replicas_hear_of_bulk_inserts() {
        let Some(cluster) = cluster() else { return };
        const N: usize = 1_500;
        let now = crate::clock::now_unix();
        for (db, import) in [("index_bulk_load", false), ("index_import", true)] {
            cluster.create_database(db).unwrap();
            let cfg = config(cluster.uri(db));
            let b = PgStore::open(&cfg, true).await.unwrap();
            eventually("the index read", async || {
                b.device_index_stats().unwrap().devices == Some(0)
            })
            .await;
            let rebuilds = b.device_index_stats().unwrap().rebuilds;
            let records: Vec<crate::model::Record> = (0..N)
                .map(|i| {
                    let log = login_from(&format!("u{}", i % 700), &format!("d{i}"), now);
                    if import {
                        crate::model::Record::Device {
                            username: log.username,
                            row: crate::model::DeviceRow {
                                device: log.device.unwrap(),
                                first_seen: now,
                                last_seen: now,
                                num_logins: 1,
                            },
                        }
                    } else {
                        crate::model::Record::Log(log)
                    }
                })
                .collect();
            let loading = cfg.clone();
            tokio::task::spawn_blocking(move || {
                let mut records = records.into_iter();
                if import {
                    bulk::import(&loading, &mut || records.next().map(Ok)).map(|_| ())
                } else {
                    bulk::bulk_load(&loading, &mut records).map(|_| ())
                }
            })
            .await
            .unwrap()
            .unwrap();
            eventually("b reads the table again", async || {
                b.device_index_stats().unwrap().devices == Some(N)
            })
            .await;
            assert!(b.device_index_stats().unwrap().rebuilds > rebuilds);
            let asked_before = asked(&b);
            for i in 0..N {
                let user = format!("u{}", i % 700);
                let dev = format!("d{i}").into_bytes();
                assert!(b.device_known(user, dev).await.unwrap(), "{db}: d{i}");
            }
            assert_eq!(asked(&b), asked_before);
            b.close();
        }
    }

    /// The trigger notifies the keys of the pairs inserted, 200 to a
    /// notification, and nothing for an entry of a device already stored.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn inserts_are_notified_by_their_keys_alone() {
        let Some(cluster) = cluster() else { return };
        cluster.create_database("index_notify").unwrap();
        let cfg = config(cluster.uri("index_notify"));
        let store = PgStore::open(&cfg, false).await.unwrap();
        let (client, mut conn) = tokio_postgres::connect(&cfg.uri, tokio_postgres::NoTls)
            .await
            .unwrap();
        let (tell, mut heard) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(Ok(m)) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                if let tokio_postgres::AsyncMessage::Notification(n) = m {
                    let _ = tell.send((n.channel().to_owned(), n.payload().to_owned()));
                }
            }
        });
        client
            .batch_execute(&format!(
                "LISTEN {}; LISTEN {}",
                known::ADDED,
                known::REMOVED
            ))
            .await
            .unwrap();
        let now = crate::clock::now_unix();
        let key = |user: &str, dev: &str| format!("{:032x}", known::pair_key(user, dev.as_bytes()));
        store
            .record_log(login_from("u", "d1", now), None)
            .await
            .unwrap();
        store
            .record_log(login_from("u", "d1", now), None)
            .await
            .unwrap();
        store
            .record_log(login_from("u", "d2", now), None)
            .await
            .unwrap();
        for dev in ["d1", "d2"] {
            let (channel, payload) = tokio::time::timeout(Duration::from_secs(20), heard.recv())
                .await
                .expect("never notified")
                .unwrap();
            assert_eq!((channel.as_str(), payload), (known::ADDED, key("u", dev)));
        }
        // 450 pairs in one statement: three notifications.
        let records: Vec<_> = (0..450)
            .map(|i| crate::model::Record::Log(login_from(&format!("b{i}"), "d", now)))
            .collect();
        let loading = cfg.clone();
        tokio::task::spawn_blocking(move || bulk::bulk_load(&loading, &mut records.into_iter()))
            .await
            .unwrap()
            .unwrap();
        let mut keys = Vec::new();
        for _ in 0..3 {
            let (channel, payload) = tokio::time::timeout(Duration::from_secs(20), heard.recv())
                .await
                .expect("never notified")
                .unwrap();
            assert_eq!(channel, known::ADDED);
            assert!(payload.len() < 8000);
            keys.extend(payload.split(',').map(str::to_owned));
        }
        let mut expected: Vec<String> = (0..450).map(|i| key(&format!("b{i}"), "d")).collect();
        keys.sort();
        expected.sort();
        assert_eq!(keys, expected);
        store.close();
    }

    /// The keys PostgreSQL computes are the index's, whatever the name.
    #[tokio::test]
    async fn the_database_computes_the_index_keys() {
        let Some(cluster) = cluster() else { return };
        cluster.create_database("index_keys").unwrap();
        let (client, conn) =
            tokio_postgres::connect(&cluster.uri("index_keys"), tokio_postgres::NoTls)
                .await
                .unwrap();
        tokio::spawn(conn);
        for (name, dev) in [("u", &b"d"[..]), ("zoë 日本", b"\x00\xff\x10"), ("", b"")] {
            let row = client
                .query_one(
                    "SELECT encode(substr(sha256(int4send(octet_length(convert_to($1, 'UTF8')))
                         || convert_to($1, 'UTF8') || $2), 1, 16), 'hex')",
                    &[&name, &dev],
                )
                .await
                .unwrap();
            let hex: String = row.get(0);
            assert_eq!(
                hex,
                format!("{:032x}", known::pair_key(name, dev)),
                "{name:?}"
            );
        }
    }

    /// With `db.read_uri`, the reads that may lag go to the standby (an
    /// entry the paused standby has not replayed is not in a user's logs,
    /// devices or reports yet) and everything else to the primary
    /// (`check_device`, the detections, writes); with the standby down,
    /// reads fall back to the primary.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_go_to_the_standbys_and_fall_back_to_the_primary() {
        let primary = match Scratch::start(true) {
            Ok(s) => s,
            Err(e) if std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false") => {
                panic!("PostgreSQL is required in CI: {e}")
            }
            Err(e) => {
                eprintln!("skipping the standby test: {e}");
                return;
            }
        };
        primary.create_database("reads").unwrap();
        let standby = primary
            .standby("reader", super::scratch::free_port().unwrap())
            .unwrap();
        let mut cfg = config(primary.tcp_uri("reads"));
        cfg.read_uri = Some(format!(
            "{}?target_session_attrs=read-only",
            standby.tcp_uri("reads")
        ));
        let store = PgStore::open(&cfg, false).await.unwrap();
        let ts = crate::clock::now_unix() - 60;
        store
            .record_log(login_from("u", "d1", ts), None)
            .await
            .unwrap();
        eventually("the standby has the first entry", async || {
            store.user_logs_len("u").await == 1
        })
        .await;

        // Replay paused: the second entry is on the primary only.
        standby.sql("SELECT pg_wal_replay_pause()").unwrap();
        store
            .record_log(login_from("u", "d2", ts + 1), None)
            .await
            .unwrap();
        assert!(store
            .device_known("u".into(), b"d2".to_vec())
            .await
            .unwrap());
        assert_eq!(store.user_logs_len("u").await, 1);
        assert_eq!(store.user_devices("u".into()).await.unwrap().len(), 1);
        let total = store
            .aggregate(vec![crate::model::Aggregate::EventsTotal], 0, i64::MAX)
            .await
            .unwrap();
        match &total[0] {
            crate::model::Aggregated::Groups(g) => assert_eq!(g[0].count, 1),
            other => panic!("{other:?}"),
        }
        // The detections read the primary: d2 is known there.
        store
            .record_log(login_from("u", "d2", ts + 2), None)
            .await
            .unwrap();
        assert_eq!(store.user_devices("u".into()).await.unwrap().len(), 1);

        // Replay resumed: the standby catches up.
        standby.sql("SELECT pg_wal_replay_resume()").unwrap();
        eventually("the standby catches up", async || {
            store.user_logs_len("u").await == 3
        })
        .await;

        // The standby down: reads go to the primary (a read in flight on
        // the standby's connection as it goes fails once, as a lost
        // connection does).
        store
            .record_log(login_from("u", "d3", ts + 3), None)
            .await
            .unwrap();
        drop(standby);
        eventually("reads from the primary", async || {
            store
                .user_devices("u".into())
                .await
                .is_ok_and(|d| d.len() == 3)
        })
        .await;
        assert_eq!(store.user_logs_len("u").await, 4);
        store.close();
    }

    impl PgStore {
        /// How many entries a read of the user's logs sees.
        async fn user_logs_len(&self, user: &str) -> usize {
            self.fold_logs(user.into(), i64::MIN, None, 100, 0, |n, _| {
                *n += 1;
                Ok(())
            })
            .await
            .unwrap_or(usize::MAX)
        }
    }

    /// An entry PostgreSQL refuses (a NUL byte in a text column) fails
    /// alone: the entries group-committed with it are stored.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_entry_fails_alone_in_its_batch() {
        let Some(subject) = subject().await else {
            return;
        };
        let store = subject.store.clone();
        let mut writes = Vec::new();
        for i in 0..40 {
            let store = store.clone();
            writes.push(tokio::spawn(async move {
                let rec = crate::model::LogRecord {
                    username: format!("u{}", i % 7),
                    ts: 1_800_000_000,
                    log_type: "login".into(),
                    message: if i == 17 {
                        "bad\0".into()
                    } else {
                        String::new()
                    },
                    ..Default::default()
                };
                store.record_log(rec, None).await
            }));
        }
        let mut failed = Vec::new();
        for (i, w) in writes.into_iter().enumerate() {
            if w.await.unwrap().is_err() {
                failed.push(i);
            }
        }
        assert_eq!(failed, [17]);
        let mut stored = 0;
        for u in 0..7 {
            stored += store
                .user_logs(format!("u{u}"), i64::MIN, 100)
                .await
                .unwrap()
                .len();
        }
        assert_eq!(stored, 39);
        store.close();
    }

    /// A batch's statements run on their generic plans, whatever the sizes
    /// of the batches: none is planned again for each call (which, for the
    /// history's lookups, cost more than running them).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_are_not_planned_at_each_call() {
        let Some(cluster) = cluster() else { return };
        cluster.create_database("generic_plans").unwrap();
        let mut cfg = config(cluster.uri("generic_plans"));
        cfg.pool_size = 1;
        let store = PgStore::open(&cfg, false).await.unwrap();
        let now = crate::clock::now_unix();
        let detect = || crate::store::types::Detections {
            rules: Box::new(|_: &crate::model::History, _: &crate::model::Event| Vec::new()),
            sinks: std::sync::Arc::new(Vec::new()),
            burst_window: 600,
        };
        // One entry at a time: batches of one, the smallest.
        for i in 0..12 {
            let rec = login_from(&format!("u{}", i % 3), "d", now + i);
            store.record_log(rec, Some(detect())).await.unwrap();
        }
        // The pool's one connection ran them all.
        let client = store.client().await.unwrap();
        let version: i32 = client
            .query_one("SELECT current_setting('server_version_num')::int", &[])
            .await
            .unwrap()
            .get(0);
        if version < 140_000 {
            // pg_prepared_statements counts plans from PostgreSQL 14.
            return;
        }
        let rows = client
            .query(
                "SELECT generic_plans, custom_plans FROM pg_prepared_statements
                 WHERE statement LIKE '%FROM unnest(%' AND statement LIKE '%user_logs%'",
                &[],
            )
            .await
            .unwrap();
        assert!(!rows.is_empty(), "the batch's statements are prepared");
        for r in rows {
            let (generic, custom): (i64, i64) = (r.get(0), r.get(1));
            assert_eq!(custom, 0, "planned at each call");
            assert!(generic > 0);
        }
        drop(client);
        store.close();
    }

    #[tokio::test]
    async fn replicas_starting_at_once_migrate_once() {
        let Some(cluster) = cluster() else { return };
        cluster.create_database("migrate_at_once").unwrap();
        let cfg = config(cluster.uri("migrate_at_once"));
        let opens: Vec<_> = (0..4)
            .map(|_| {
                let cfg = cfg.clone();
                tokio::spawn(async move { PgStore::open(&cfg, false).await })
            })
            .collect();
        for o in opens {
            o.await.unwrap().unwrap().close();
        }
        let (client, conn) = tokio_postgres::connect(&cfg.uri, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let versions: Vec<i32> = client
            .query("SELECT version FROM schema_version", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(versions, [current_version() as i32]);
        // A newer schema is refused.
        client
            .execute("UPDATE schema_version SET version = version + 1", &[])
            .await
            .unwrap();
        assert!(matches!(
            PgStore::open(&cfg, false).await,
            Err(StoreError::Downgrade { .. })
        ));
    }

    /// Over TCP with `sslmode=verify-full`: the server's certificate must
    /// chain to `db.ca_file` and name the host; a wrong CA is refused.
    #[tokio::test]
    async fn tls_to_postgresql_is_verified() {
        let certs = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/certs");
        let started = Scratch::start_tls(&certs.join("server.pem"), &certs.join("server.key"));
        let cluster = match started {
            Ok(c) => c,
            Err(e) if std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false") => {
                panic!("PostgreSQL is required in CI: {e}")
            }
            Err(e) => {
                eprintln!("skipping the PostgreSQL TLS test: {e}");
                return;
            }
        };
        cluster.create_database("over_tls").unwrap();
        let uri = format!(
            "postgresql://postgres@localhost:{}/over_tls?sslmode=verify-full",
            cluster.port()
        );
        let mut cfg = config(uri);
        cfg.ca_file = Some(certs.join("ca.pem"));
        let store = PgStore::open(&cfg, false).await.unwrap();
        let rec = crate::model::LogRecord {
            username: "u".into(),
            ts: 3600,
            log_type: "login".into(),
            ..Default::default()
        };
        store.record_log(rec, None).await.unwrap();
        // The pool's sessions really are encrypted.
        let out = cluster
            .sql_in("over_tls", "SELECT count(*) FROM pg_stat_ssl WHERE ssl")
            .unwrap();
        assert!(out.trim().parse::<i64>().unwrap() >= 1);
        store.close();
        // A CA that did not sign the server's certificate is refused.
        cfg.ca_file = Some(certs.join("bad-untrusted.pem"));
        assert!(PgStore::open(&cfg, false).await.is_err());
    }

    #[test]
    fn connection_strings_are_read_as_libpq_reads_them() {
        let mut cfg = config(
            "postgresql://u@%2Frun%2Fpostgresql:5433/meta?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem"
                .into(),
        );
        let (pg, ca, verify) = connection_config(&cfg).unwrap();
        assert!(verify);
        assert_eq!(ca.as_deref(), Some(Path::new("/etc/ca.pem")));
        assert_eq!(pg.get_dbname(), Some("meta"));
        assert_eq!(pg.get_user(), Some("u"));
        assert_eq!(pg.get_ports(), [5433]);
        cfg.uri = "host=/run/postgresql dbname=meta user=u".into();
        let (pg, ca, verify) = connection_config(&cfg).unwrap();
        assert!(!verify && ca.is_none());
        assert_eq!(pg.get_dbname(), Some("meta"));
        cfg.uri = "postgresql://u@host:notaport/db".into();
        assert!(check(&cfg).is_err());
    }
}
