//! The device index on PostgreSQL: (user name, sealed device ID) pairs that
//! exist, held in memory by each replica, so that `check_device` is answered
//! without a query, "known" as well as "unknown".
//!
//! Every replica is told of every change of the `devices` table, at the
//! commit that makes it, on a connection of its own that LISTENs:
//!
//! - inserts: a statement trigger sends the keys of the pairs a statement
//!   inserted on [`ADDED`] (a few hundred keys per notification), and each
//!   replica adds them to its index. A transaction inserting more than a
//!   thousand pairs (an import, a bulk load) sends one notification on
//!   [`REMOVED`] instead, which is cheaper for it and for the listeners.
//! - removals (erasure, retention, a pair or a user changed in place): one
//!   notification on [`REMOVED`] (naming the transaction), on which each
//!   replica drops its whole index and reads it again from the table.
//!
//! A lookup answers "known" when the index holds the pair, "unknown" when
//! it does not and the index is ready, and asks the database otherwise:
//! while the index is not ready (until it is listening and has read the
//! table, and from the moment its listening connection is lost or leaves
//! the primary), and for the pairs this replica was told to ask about (see
//! below). Notifications arrive in commit order on the one connection: a
//! removal heard after an insert always reads the table again after it, and
//! an insert heard is always right to add.
//!
//! The races, and how each is closed:
//!
//! - Another replica's insert is in the index once its notification has
//!   arrived, milliseconds after its commit. Until then this replica
//!   answers "unknown" for that pair: the accepted bound, as a removal by
//!   another replica is answered "known" until its notification arrives.
//!   If the listening connection hangs or its server stops taking writes,
//!   the index stops answering within [`CHECK_PRIMARY`] plus
//!   [`CHECK_TIMEOUT`].
//! - The table is read after LISTEN, so every commit is either in the read
//!   or notified. Inserts heard while the table is read are added after the
//!   read (they are committed facts; a removal heard with them reads the
//!   table again instead), and only then is the index ready.
//! - This replica's own writes are learnt as soon as their commit is done
//!   (its own next lookup never waits for the notification), unless the
//!   index was dropped since the write began (a removal may have come in
//!   between, and the table may have been read before the write): then the
//!   pairs are asked of the database until the write's own notification
//!   adds them, or the next read of the table.
//! - This replica's own removals are forgotten as soon as their commit is
//!   done, and the pairs marked removed: asked of the database until the
//!   removal's own notification drops the index (the table is read after
//!   the removal). A pair read (by a lookup, a read of the table, a write
//!   or an insert's notification) before the removal and added after it is
//!   never kept, and a pair stored again after the removal is found in the
//!   database. When the removal's notification was heard before the
//!   replica forgets (the transaction's ID tells), the index was already
//!   dropped after the removal and the table read after that: nothing is
//!   forgotten or marked.
//! - A positive answer of the database is kept on the same terms as a
//!   write of this replica.
//! - A mark that outlives its reason (the removal's notification lost with
//!   the connection, a write's heard before it was learnt and then dropped)
//!   only sends that pair's lookups to the database until the next drop.
//!
//! Keys are the first 128 bits of SHA-256 over the name's length, the name
//! and the sealed ID ([`pair_key`]), which PostgreSQL computes the same way
//! in the trigger: nothing of the name or the ID goes into a notification
//! in clear. The sealed ID is a ciphertext under the device key, so the
//! keys cannot be chosen by an outsider, and the set does not hash them
//! again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockWriteGuard};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;

use crate::model::DeviceIndexStats;
use crate::store::pairs::{KeySet, PreHashed};

/// The notification channel of device removals (and of large inserts).
pub(super) const REMOVED: &str = "usermetadb_devices_removed";
/// The notification channel of the keys of inserted pairs.
pub(super) const ADDED: &str = "usermetadb_devices_added";

/// Rows read per round trip while the index is read from the table.
const FETCH: i32 = 10_000;

/// The key of a (user name, sealed device ID) pair: the first 16 bytes,
/// big-endian, of `sha256(u32_be(len(name)) || name || sealed_id)`, as the
/// trigger of migration 5 computes it.
pub(super) fn pair_key(name: &str, sealed_id: &[u8]) -> u128 {
    let mut h = Sha256::new();
    h.update((name.len() as u32).to_be_bytes());
    h.update(name.as_bytes());
    h.update(sealed_id);
    let sum = h.finalize();
    let mut first = [0u8; 16];
    first.copy_from_slice(&sum[..16]);
    u128::from_be_bytes(first)
}

/// The keys of a notification on [`ADDED`]: 32 lowercase hex digits each,
/// separated by commas; `None` for anything else.
fn parse_keys(payload: &str) -> Option<Vec<u128>> {
    payload
        .split(',')
        .map(|k| {
            let hex = k.len() == 32 && k.bytes().all(|b| b.is_ascii_hexdigit());
            hex.then(|| u128::from_str_radix(k, 16).ok()).flatten()
        })
        .collect()
}

/// A lookup's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Answer {
    Known,
    Unknown,
    /// Ask the database.
    Ask,
}

/// Removal transactions remembered as heard, for [`KnownDevices::forget`].
const HEARD_REMOVALS: usize = 256;

/// What the index holds, under one lock.
struct Index {
    pairs: KeySet,
    /// This replica's own removals, asked of the database until the index is
    /// dropped; never added again before.
    removed: KeySet,
    /// This replica's own writes learnt too late, asked of the database
    /// until added (by a notification or a read of the table) or dropped.
    written: KeySet,
    /// The transactions of the last removals heard, oldest first.
    heard: std::collections::VecDeque<i64>,
    /// Listening, the table read since the last drop, and the inserts heard
    /// meanwhile added.
    ready: bool,
}

pub(super) struct KnownDevices {
    index: RwLock<Index>,
    /// Moved by every drop of the index (under its write lock).
    generation: AtomicU64,
    rebuilds: AtomicU64,
    /// Lookups that went to the database.
    asked: AtomicU64,
}

impl KnownDevices {
    pub(super) fn new() -> KnownDevices {
        KnownDevices {
            index: RwLock::new(Index {
                pairs: KeySet::with_hasher(PreHashed),
                removed: KeySet::with_hasher(PreHashed),
                written: KeySet::with_hasher(PreHashed),
                heard: std::collections::VecDeque::with_capacity(HEARD_REMOVALS),
                ready: false,
            }),
            generation: AtomicU64::new(0),
            rebuilds: AtomicU64::new(0),
            asked: AtomicU64::new(0),
        }
    }

    pub(super) fn key(&self, name: &str, sealed_id: &[u8]) -> u128 {
        pair_key(name, sealed_id)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the pair of `key` exists, as far as the index can say.
    pub(super) fn lookup(&self, key: u128) -> Answer {
        let index = self.index.read().unwrap_or_else(PoisonError::into_inner);
        if !index.ready || index.removed.contains(&key) {
            Answer::Ask
        } else if index.pairs.contains(&key) {
            Answer::Known
        } else if index.written.contains(&key) {
            Answer::Ask
        } else {
            Answer::Unknown
        }
    }

    /// Counts a lookup that goes to the database.
    pub(super) fn asking(&self) {
        self.asked.fetch_add(1, Ordering::Relaxed);
    }

    /// Lookups that went to the database so far.
    #[cfg(test)]
    pub(super) fn asked(&self) -> u64 {
        self.asked.load(Ordering::Relaxed)
    }

    /// The generation to pass to [`KnownDevices::learn`] for pairs about to
    /// be read or written.
    pub(super) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Keeps pairs found to exist (read or written) by this replica, unless
    /// the index was dropped since `generation` was read: a removal may have
    /// come in between, so those it does not hold are asked of the database
    /// until their insert's notification or the next read of the table.
    pub(super) fn learn(&self, generation: u64, keys: impl IntoIterator<Item = u128>) {
        let mut index = self.write();
        // Under the write lock: a drop moves the generation under it too.
        if self.generation.load(Ordering::Acquire) == generation {
            index.add(keys);
        } else {
            for key in keys {
                if !index.pairs.contains(&key) && !index.removed.contains(&key) {
                    index.written.insert(key);
                }
            }
        }
    }

    /// Forgets pairs this replica has just removed in the transaction
    /// `xact`, once it is committed: they are asked of the database until
    /// the removal's notification drops the index, and nothing read or
    /// written before the removal brings them back. Nothing to do when that
    /// notification was heard already (the table was read after it).
    pub(super) fn forget(&self, xact: Option<i64>, keys: impl IntoIterator<Item = u128>) {
        let mut keys = keys.into_iter().peekable();
        if keys.peek().is_none() {
            return;
        }
        let mut index = self.write();
        if xact.is_some_and(|x| index.heard.contains(&x)) {
            return;
        }
        for key in keys {
            index.pairs.remove(&key);
            index.written.remove(&key);
            index.removed.insert(key);
        }
    }

    /// Pairs read from the table, or heard of as inserted.
    fn add(&self, keys: impl IntoIterator<Item = u128>) {
        self.write().add(keys);
    }

    /// The table read and the inserts heard meanwhile added: the index
    /// answers.
    fn open(&self, heard: Vec<u128>) {
        let mut index = self.write();
        index.add(heard);
        index.ready = true;
    }

    /// Forgets every pair, answering nothing until the table is read again;
    /// on the notification of the removals of the transactions `heard`.
    fn drop_all(&self, heard: &[i64]) {
        let mut index = self.write();
        index.ready = false;
        self.generation.fetch_add(1, Ordering::AcqRel);
        index.pairs.clear();
        index.pairs.shrink_to_fit();
        index.removed.clear();
        index.removed.shrink_to_fit();
        index.written.clear();
        index.written.shrink_to_fit();
        for &x in heard {
            if index.heard.len() == HEARD_REMOVALS {
                index.heard.pop_front();
            }
            index.heard.push_back(x);
        }
    }

    pub(super) fn stats(&self) -> DeviceIndexStats {
        let index = self.index.read().unwrap_or_else(PoisonError::into_inner);
        DeviceIndexStats {
            devices: index.ready.then(|| index.pairs.len()),
            rebuilds: self.rebuilds.load(Ordering::Relaxed),
        }
    }
}

impl Index {
    /// Adds pairs, but none this replica removed.
    fn add(&mut self, keys: impl IntoIterator<Item = u128>) {
        for key in keys {
            if !self.removed.contains(&key) {
                self.written.remove(&key);
                self.pairs.insert(key);
            }
        }
    }
}

/// What the listening connection reports.
enum Heard {
    Added(Vec<u128>),
    /// With the ID of the transaction that removed devices, when it is
    /// given.
    Removed(Option<i64>),
    Lost,
}

/// What a notification says.
fn heard(channel: &str, payload: &str) -> Option<Heard> {
    match channel {
        // Keys that cannot be read: read the whole table again.
        ADDED => Some(parse_keys(payload).map_or(Heard::Removed(None), Heard::Added)),
        REMOVED => Some(Heard::Removed(payload.parse().ok())),
        _ => None,
    }
}

/// Keeps `known` coherent for as long as `store` lives: listens, reads the
/// table, adds the inserts heard of, and starts again after every removal
/// or lost connection.
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
                tracing::warn!("device index: cannot listen for changes: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let (tell, mut hearing) = mpsc::unbounded_channel();
        let driver = tokio::spawn(async move {
            loop {
                match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(AsyncMessage::Notification(n))) => {
                        if let Some(h) = heard(n.channel(), n.payload()) {
                            if tell.send(h).is_err() {
                                return;
                            }
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => {
                        let _ = tell.send(Heard::Lost);
                        return;
                    }
                }
            }
        });
        if let Err(e) = client
            .batch_execute(&format!("LISTEN {REMOVED}; LISTEN {ADDED}"))
            .await
        {
            tracing::warn!("device index: LISTEN failed: {e}");
            driver.abort();
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        // Read the table, again after every removal heard meanwhile.
        let mut removals = Vec::new();
        'listening: loop {
            known.drop_all(&removals);
            removals.clear();
            if let Err(e) = read_table(&known, &pool).await {
                tracing::warn!("device index: reading the devices failed: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue 'listening;
            }
            // Inserts heard while reading are added; a removal heard while
            // reading: read again.
            let (mut added, mut removed) = (Vec::new(), false);
            loop {
                match hearing.try_recv() {
                    Ok(Heard::Added(keys)) => added.extend(keys),
                    Ok(Heard::Removed(xact)) => {
                        removed = true;
                        removals.extend(xact);
                    }
                    Ok(Heard::Lost) | Err(mpsc::error::TryRecvError::Disconnected) => {
                        break 'listening
                    }
                    Err(mpsc::error::TryRecvError::Empty) => break,
                }
            }
            if removed {
                continue 'listening;
            }
            known.open(added);
            known.rebuilds.fetch_add(1, Ordering::Relaxed);
            let mut check = tokio::time::interval(CHECK_PRIMARY);
            check.tick().await;
            loop {
                tokio::select! {
                    heard = hearing.recv() => match heard {
                        Some(Heard::Added(keys)) => known.add(keys),
                        Some(Heard::Removed(xact)) => {
                            removals.extend(xact);
                            continue 'listening;
                        }
                        Some(Heard::Lost) | None => break 'listening,
                    },
                    _ = check.tick() => {
                        if !on_the_primary(&client, connected_at).await {
                            tracing::warn!(
                                "device index: the listening connection's server no longer \
                                 answers or takes writes; listening on the primary again"
                            );
                            break 'listening;
                        }
                    }
                }
            }
        }
        known.drop_all(&[]);
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
/// fenced read-only), changes are notified on the new one, so the index
/// hears nothing for up to this long.
const CHECK_PRIMARY: Duration = Duration::from_millis(500);

/// How long that check may take before the connection is taken for lost
/// (a server or a network that stopped answering without closing it).
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether the listening connection, made at `connected_at`, is still on a
/// server that takes writes (the primary, where changes are notified):
/// not one in recovery or read-only, and not one of a server that has
/// refused this process a write since, and one that answers.
async fn on_the_primary(client: &tokio_postgres::Client, connected_at: std::time::Instant) -> bool {
    if super::made_before_refusal(connected_at) {
        return false;
    }
    let asked = client.query_one(
        "SELECT NOT (pg_is_in_recovery() OR current_setting('transaction_read_only')::bool)",
        &[],
    );
    match tokio::time::timeout(CHECK_TIMEOUT, asked).await {
        Ok(Ok(row)) => row.get(0),
        Ok(Err(_)) | Err(_) => false,
    }
}

/// Every pair of the table into the index, a portal's page at a time.
async fn read_table(known: &KnownDevices, pool: &deadpool_postgres::Pool) -> Result<(), String> {
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
        known.add(rows.iter().map(|r| pair_key(r.get(0), r.get(1))));
        if rows.len() < FETCH as usize {
            break;
        }
    }
    tx.commit().await.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_read_from_notifications() {
        let a = pair_key("ü", b"\x00\x01");
        let b = pair_key("u", b"d");
        assert_ne!(a, b);
        // The name's length keeps the name and the ID apart.
        assert_ne!(pair_key("ab", b"c"), pair_key("a", b"bc"));
        let payload = format!("{a:032x},{b:032x}");
        assert_eq!(parse_keys(&payload), Some(vec![a, b]));
        assert!(matches!(heard(ADDED, &payload), Some(Heard::Added(k)) if k == [a, b]));
        for bad in ["", "zz", &format!("{a:032x},"), &format!("+{:031x}", 1)] {
            assert_eq!(parse_keys(bad), None, "{bad:?}");
            assert!(matches!(heard(ADDED, bad), Some(Heard::Removed(None))));
        }
        assert!(matches!(
            heard(REMOVED, "1234"),
            Some(Heard::Removed(Some(1234)))
        ));
        assert!(matches!(heard(REMOVED, ""), Some(Heard::Removed(None))));
        assert!(heard("other", "").is_none());
    }

    #[test]
    fn own_removals_and_late_writes_are_asked_of_the_database() {
        let known = KnownDevices::new();
        let [a, b, c, d] = [b"a", b"b", b"c", b"d"].map(|dev| pair_key("u", dev));
        known.learn(known.generation(), [a]);
        assert_eq!(known.lookup(a), Answer::Ask, "not ready");
        known.open(vec![b]);
        assert_eq!(known.lookup(a), Answer::Known);
        assert_eq!(known.lookup(b), Answer::Known);
        assert_eq!(known.lookup(c), Answer::Unknown);

        // Removed here, its notification not heard yet: asked, and never
        // added again by what was read or heard before the removal.
        let before = known.generation();
        known.forget(Some(7), [a]);
        assert_eq!(known.lookup(a), Answer::Ask);
        known.learn(before, [a]);
        known.add([a]);
        assert_eq!(known.lookup(a), Answer::Ask);
        // Its notification drops the index; once read, "unknown".
        known.drop_all(&[7]);
        known.open(Vec::new());
        assert_eq!(known.lookup(a), Answer::Unknown);
        // Removed here, the notification heard first: nothing to forget.
        known.add([b]);
        known.drop_all(&[8]);
        known.open(vec![b]);
        known.forget(Some(8), [b]);
        assert_eq!(known.lookup(b), Answer::Known);

        // Written before a drop, learnt after it: asked until its insert
        // is heard of; one already held stays known.
        known.learn(before, [c, b]);
        assert_eq!(known.lookup(c), Answer::Ask);
        assert_eq!(known.lookup(b), Answer::Known);
        known.add([c]);
        assert_eq!(known.lookup(c), Answer::Known);
        known.learn(before, [d]);
        assert_eq!(known.lookup(d), Answer::Ask);
        known.drop_all(&[]);
        known.open(Vec::new());
        assert_eq!(known.lookup(d), Answer::Unknown);
        known.learn(known.generation(), [d]);
        assert_eq!(known.lookup(d), Answer::Known);
        assert_eq!(known.stats().devices, Some(1));
    }
}
