//! The device index on PostgreSQL: (user name, sealed device ID) pairs known
//! to exist, held in memory by each replica, so that `check_device` of a
//! known device is answered without a query.
//!
//! It only ever answers "known". A pair it does not hold is asked of the
//! database, so a device another replica has just stored is never answered
//! "unknown"; a positive answer of the database is then kept.
//!
//! What it must not miss are removals (erasure, retention), which other
//! replicas make. Every transaction that deletes devices sends a
//! notification on [`CHANNEL`] at its commit; each replica LISTENs on a
//! connection of its own and, on a notification, drops its whole index and
//! reads it again from the table. Until it is listening and has read the
//! table, and whenever its listening connection is lost, the index answers
//! nothing. The replica that removes devices also forgets those pairs itself
//! as soon as its commit is done, so that its own next lookup never answers
//! from before its removal. A generation number, moved by every drop and
//! every such forgetting, keeps a pair read before a removal from being kept
//! after it.
//!
//! Pairs are kept as keyed 128-bit sums (`store::pairs`), nothing of either
//! in clear.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;

use crate::model::DeviceIndexStats;
use crate::store::pairs::{KeySet, PairKeys, PreHashed};

/// The notification channel of device removals.
pub(super) const CHANNEL: &str = "usermetadb_devices_removed";

/// Rows read per round trip while the index is read from the table.
const FETCH: i32 = 10_000;

pub(super) struct KnownDevices {
    keys: PairKeys,
    pairs: RwLock<KeySet>,
    /// Moved by every drop of the index.
    generation: AtomicU64,
    /// Listening, and the table read since the last drop.
    ready: AtomicBool,
    rebuilds: AtomicU64,
}

impl KnownDevices {
    pub(super) fn new() -> KnownDevices {
        KnownDevices {
            keys: PairKeys::new(),
            pairs: RwLock::new(KeySet::with_hasher(PreHashed)),
            generation: AtomicU64::new(0),
            ready: AtomicBool::new(false),
            rebuilds: AtomicU64::new(0),
        }
    }

    pub(super) fn key(&self, name: &str, sealed_id: &[u8]) -> u128 {
        self.keys.key(name, sealed_id)
    }

    /// Whether the pair of `key` is known to exist; `false` means "ask the
    /// database".
    pub(super) fn holds(&self, key: u128) -> bool {
        self.ready.load(Ordering::Acquire)
            && self
                .pairs
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .contains(&key)
    }

    /// The generation to pass to [`KnownDevices::learn`] for pairs about to
    /// be read or written.
    pub(super) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Keeps pairs found to exist, unless the index was dropped since
    /// `generation` was read (a removal may have come in between).
    pub(super) fn learn(&self, generation: u64, keys: impl IntoIterator<Item = u128>) {
        let mut pairs = self.pairs.write().unwrap_or_else(PoisonError::into_inner);
        // Under the write lock: a drop moves the generation under it too.
        if self.generation.load(Ordering::Acquire) == generation {
            pairs.extend(keys);
        }
    }

    /// Forgets pairs this replica has just removed, once its removal is
    /// committed: its own next lookup of them asks the database, without
    /// waiting for the notification (which rebuilds every replica's index,
    /// this one's too). Moves the generation, so a pair read before the
    /// removal and learnt after it is not kept. Nothing removed, nothing
    /// moved.
    pub(super) fn forget(&self, keys: impl IntoIterator<Item = u128>) {
        let mut keys = keys.into_iter().peekable();
        if keys.peek().is_none() {
            return;
        }
        let mut pairs = self.pairs.write().unwrap_or_else(PoisonError::into_inner);
        self.generation.fetch_add(1, Ordering::AcqRel);
        for key in keys {
            pairs.remove(&key);
        }
    }

    /// Forgets every pair, answering nothing until the table is read again.
    fn drop_all(&self) {
        self.ready.store(false, Ordering::Release);
        let mut pairs = self.pairs.write().unwrap_or_else(PoisonError::into_inner);
        self.generation.fetch_add(1, Ordering::AcqRel);
        pairs.clear();
        pairs.shrink_to_fit();
    }

    pub(super) fn stats(&self) -> DeviceIndexStats {
        let ready = self.ready.load(Ordering::Acquire);
        DeviceIndexStats {
            devices: ready.then(|| {
                self.pairs
                    .read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .len()
            }),
            rebuilds: self.rebuilds.load(Ordering::Relaxed),
        }
    }
}

/// What the listening connection reports.
enum Heard {
    Removed,
    Lost,
}

/// Keeps `known` coherent for as long as `store` lives: listens, reads the
/// table, and starts again after every removal or lost connection.
pub(super) async fn follow(
    known: Arc<KnownDevices>,
    config: tokio_postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    pool: deadpool_postgres::Pool,
) {
    loop {
        if pool.is_closed() {
            return;
        }
        let connected_at = std::time::Instant::now();
        let (client, mut connection) = match config.connect(tls.clone()).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("device index: cannot listen for removals: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let (heard, mut hearing) = mpsc::unbounded_channel();
        let driver = tokio::spawn(async move {
            loop {
                match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(AsyncMessage::Notification(_))) => {
                        if heard.send(Heard::Removed).is_err() {
                            return;
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => {
                        let _ = heard.send(Heard::Lost);
                        return;
                    }
                }
            }
        });
        if let Err(e) = client.batch_execute(&format!("LISTEN {CHANNEL}")).await {
            tracing::warn!("device index: LISTEN failed: {e}");
            driver.abort();
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        // Read the table, again after every removal heard meanwhile.
        'listening: loop {
            known.drop_all();
            let generation = known.generation();
            match read_table(&known, &pool, generation).await {
                Ok(()) => {}
                Err(e) => {
                    tracing::warn!("device index: reading the devices failed: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue 'listening;
                }
            }
            // Removals heard while reading: read again.
            let mut removed = false;
            loop {
                match hearing.try_recv() {
                    Ok(Heard::Removed) => removed = true,
                    Ok(Heard::Lost) | Err(mpsc::error::TryRecvError::Disconnected) => {
                        break 'listening
                    }
                    Err(mpsc::error::TryRecvError::Empty) => break,
                }
            }
            if removed {
                continue 'listening;
            }
            // This replica's own removal during the read: pairs read after
            // it were not kept, so read again.
            if known.generation() != generation {
                continue 'listening;
            }
            known.ready.store(true, Ordering::Release);
            known.rebuilds.fetch_add(1, Ordering::Relaxed);
            let mut check = tokio::time::interval(CHECK_PRIMARY);
            check.tick().await;
            loop {
                tokio::select! {
                    heard = hearing.recv() => match heard {
                        Some(Heard::Removed) => continue 'listening,
                        Some(Heard::Lost) | None => break 'listening,
                    },
                    _ = check.tick() => {
                        if !on_the_primary(&client, connected_at).await {
                            tracing::warn!(
                                "device index: the listening connection's server no longer \
                                 takes writes; listening on the primary again"
                            );
                            break 'listening;
                        }
                    }
                }
            }
        }
        known.drop_all();
        driver.abort();
        drop(client);
        if pool.is_closed() {
            return;
        }
        tracing::warn!("device index: listening connection lost; lookups go to the database");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How often the listening connection checks that its server is still the
/// primary: after a failover that leaves the old primary running (demoted or
/// fenced read-only), removals are notified on the new one, so the index
/// hears nothing for up to this long.
const CHECK_PRIMARY: Duration = Duration::from_millis(500);

/// Whether the listening connection, made at `connected_at`, is still on a
/// server that takes writes (the primary, where removals are notified):
/// not one in recovery or read-only, and not one of a server that has
/// refused this process a write since.
async fn on_the_primary(client: &tokio_postgres::Client, connected_at: std::time::Instant) -> bool {
    if super::made_before_refusal(connected_at) {
        return false;
    }
    match client
        .query_one(
            "SELECT NOT (pg_is_in_recovery() OR current_setting('transaction_read_only')::bool)",
            &[],
        )
        .await
    {
        Ok(row) => row.get(0),
        Err(_) => false,
    }
}

/// Every pair of the table into the index, a portal's page at a time.
async fn read_table(
    known: &KnownDevices,
    pool: &deadpool_postgres::Pool,
    generation: u64,
) -> Result<(), String> {
    let mut client = pool.get().await.map_err(|e| e.to_string())?;
    let tx = client
        .build_transaction()
        .read_only(true)
        .start()
        .await
        .map_err(|e| e.to_string())?;
    let portal = tx
        .bind(
            "SELECT u.name, d.device_id FROM devices d JOIN users u ON u.id = d.user_id",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    loop {
        let rows = tx
            .query_portal(&portal, FETCH)
            .await
            .map_err(|e| e.to_string())?;
        let keys: Vec<u128> = rows.iter().map(|r| known.key(r.get(0), r.get(1))).collect();
        known.learn(generation, keys);
        if rows.len() < FETCH as usize || known.generation() != generation {
            break;
        }
    }
    tx.commit().await.map_err(|e| e.to_string())
}
