//! Coarsening with age (`privacy.decay`) on SQLite: stored times older than a
//! step are floored to its granularity, in short steps. Keys needing work are
//! found on a reader, walking forward from a cursor, and changed by key on the
//! writer, so each write transaction touches at most a batch of rows.
//!
//! The log is clustered by (user_id, ts, seq), and `seq` numbers the entries
//! of one `ts` across users, so a floored entry takes the next `seq` of its
//! new `ts`: it cannot collide with an entry already there, and entries keep
//! their order (they are moved oldest first). Entries that become identical
//! are kept, not merged: counts of logins and failures stay right.

use rusqlite::{params, Connection};

use super::SqliteStore;
use crate::store::types::{Coarsened, DecayCut, StoreError};

/// Rows changed per write transaction.
const DECAY_BATCH: i64 = 2_000;

fn floor(t: i64, g: i64) -> i64 {
    t - t.rem_euclid(g)
}

/// Log keys at or after `from` and before `cut.before` not on a multiple of
/// the granularity, oldest first.
fn log_keys(
    c: &Connection,
    from: &i64,
    cut: DecayCut,
    batch: i64,
) -> Result<Vec<(i64, i64, i64)>, StoreError> {
    let mut stmt = c.prepare_cached(
        "SELECT user_id, ts, seq FROM user_logs
         WHERE ts >= ?1 AND ts < ?2 AND ts % ?3 <> 0 ORDER BY ts, seq LIMIT ?4",
    )?;
    let rows = stmt
        .query_map(params![from, cut.before, cut.granularity, batch], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

fn floor_logs(c: &Connection, keys: &[(i64, i64, i64)], cut: DecayCut) -> Result<u64, StoreError> {
    let g = cut.granularity;
    let mut stmt = c.prepare_cached(
        "UPDATE user_logs SET ts = ?4,
             seq = (SELECT ifnull(max(seq), 0) + 1 FROM user_logs WHERE ts = ?4)
         WHERE user_id = ?1 AND ts = ?2 AND seq = ?3",
    )?;
    let mut n = 0;
    for &(uid, ts, seq) in keys {
        n += stmt.execute(params![uid, ts, seq, floor(ts, g)])? as u64;
    }
    Ok(n)
}

type DeviceKey = (i64, Vec<u8>);
type CountryKey = (i64, String);

/// Keys `(user_id, key)` of a table of first and last seen times (devices,
/// countries) after `after`, with a time before the cut not yet floored.
fn seen_keys<K>(
    c: &Connection,
    table: &str,
    key: &str,
    after: &Option<(i64, K)>,
    cut: DecayCut,
    batch: i64,
) -> Result<Vec<(i64, K)>, StoreError>
where
    K: rusqlite::ToSql + rusqlite::types::FromSql + Default + Clone,
{
    let (uid, k) = after.clone().unwrap_or((i64::MIN, K::default()));
    let mut stmt = c.prepare_cached(&format!(
        "SELECT user_id, {key} FROM {table}
         WHERE (user_id, {key}) > (?1, ?2)
           AND ((first_seen < ?3 AND first_seen % ?4 <> 0)
                OR (last_seen < ?3 AND last_seen % ?4 <> 0))
         ORDER BY user_id, {key} LIMIT ?5"
    ))?;
    let rows = stmt
        .query_map(params![uid, k, cut.before, cut.granularity, batch], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// Floors the first and last seen times before the cut of `keys`.
fn floor_seen<K: rusqlite::ToSql>(
    c: &Connection,
    table: &str,
    key: &str,
    keys: &[(i64, K)],
    cut: DecayCut,
) -> Result<u64, StoreError> {
    let mut stmt = c.prepare_cached(&format!(
        "UPDATE {table} SET
             first_seen = CASE WHEN first_seen < ?3 THEN first_seen - first_seen % ?4
                          ELSE first_seen END,
             last_seen = CASE WHEN last_seen < ?3 THEN last_seen - last_seen % ?4
                         ELSE last_seen END
         WHERE user_id = ?1 AND {key} = ?2"
    ))?;
    let mut n = 0;
    for (uid, k) in keys {
        n += stmt.execute(params![uid, k, cut.before, cut.granularity])? as u64;
    }
    Ok(n)
}

fn device_keys(
    c: &Connection,
    after: &Option<DeviceKey>,
    cut: DecayCut,
    batch: i64,
) -> Result<Vec<DeviceKey>, StoreError> {
    seen_keys(c, "devices", "device_id", after, cut, batch)
}

fn floor_devices(c: &Connection, keys: &[DeviceKey], cut: DecayCut) -> Result<u64, StoreError> {
    floor_seen(c, "devices", "device_id", keys, cut)
}

fn country_keys(
    c: &Connection,
    after: &Option<CountryKey>,
    cut: DecayCut,
    batch: i64,
) -> Result<Vec<CountryKey>, StoreError> {
    seen_keys(c, "user_countries", "zone", after, cut, batch)
}

fn floor_countries(c: &Connection, keys: &[CountryKey], cut: DecayCut) -> Result<u64, StoreError> {
    floor_seen(c, "user_countries", "zone", keys, cut)
}

fn time_spent_keys(
    c: &Connection,
    from: &i64,
    cut: DecayCut,
    batch: i64,
) -> Result<Vec<DeviceKeyDay>, StoreError> {
    let mut stmt = c.prepare_cached(
        "SELECT user_id, device_id, day FROM time_spent
         WHERE day >= ?1 AND day < ?2 AND day % ?3 <> 0 ORDER BY day LIMIT ?4",
    )?;
    let rows = stmt
        .query_map(params![from, cut.before, cut.granularity, batch], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

type DeviceKeyDay = (i64, Vec<u8>, i64);

/// Moves each row to its floored day, adding it to a row already there: time
/// spent is a sum, so merging loses nothing but the finer day.
fn floor_time_spent(
    c: &Connection,
    keys: &[DeviceKeyDay],
    cut: DecayCut,
) -> Result<u64, StoreError> {
    let g = cut.granularity;
    let mut take = c.prepare_cached(
        "DELETE FROM time_spent WHERE user_id = ?1 AND device_id = ?2 AND day = ?3
         RETURNING seconds, first_start, last_end",
    )?;
    let mut put = c.prepare_cached(
        "INSERT INTO time_spent (user_id, device_id, day, seconds, first_start, last_end)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (user_id, device_id, day) DO UPDATE SET
             seconds = seconds + excluded.seconds,
             first_start = min(first_start, excluded.first_start),
             last_end = max(last_end, excluded.last_end)",
    )?;
    let mut n = 0;
    for (uid, id, day) in keys {
        let row: Option<(i64, i64, i64)> = {
            let mut rows = take.query(params![uid, id, day])?;
            match rows.next()? {
                Some(r) => Some((r.get(0)?, r.get(1)?, r.get(2)?)),
                None => None,
            }
        };
        if let Some((seconds, first, last)) = row {
            put.execute(params![
                uid,
                id,
                floor(*day, g),
                seconds,
                floor(first, g),
                floor(last, g)
            ])?;
            n += 1;
        }
    }
    Ok(n)
}

/// Reads a page of keys to floor after a cursor.
type KeysAfter<C, K> = fn(&Connection, &C, DecayCut, i64) -> Result<Vec<K>, StoreError>;

impl SqliteStore {
    /// One table's pass of a cut: pages of keys read after `cursor`, each
    /// floored in a write of its own, until a page is not full.
    async fn in_pages<K, C>(
        &self,
        cut: DecayCut,
        mut cursor: C,
        keys: KeysAfter<C, K>,
        next: fn(&K) -> C,
        floor: fn(&Connection, &[K], DecayCut) -> Result<u64, StoreError>,
    ) -> Result<u64, StoreError>
    where
        K: Send + 'static,
        C: Clone + Send + 'static,
    {
        let mut total = 0;
        loop {
            let after = cursor.clone();
            let page = self
                .read(move |c| keys(c, &after, cut, DECAY_BATCH))
                .await?;
            let Some(last) = page.last() else {
                return Ok(total);
            };
            cursor = next(last);
            let full = page.len() as i64 == DECAY_BATCH;
            total += self.write(move |c| floor(c, &page, cut)).await?;
            if !full {
                return Ok(total);
            }
            tokio::task::yield_now().await;
        }
    }

    /// Floors every stored time before each cut to its granularity. `cuts`
    /// come finest first (newest `before` first), each granularity a
    /// multiple of the one before; they are applied coarsest first, and a
    /// finer one skips what a coarser one already covered.
    pub async fn decay(&self, cuts: Vec<DecayCut>) -> Result<Coarsened, StoreError> {
        let mut total = Coarsened::default();
        let mut covered = i64::MIN;
        for &cut in cuts.iter().rev() {
            // Logs and time spent, oldest first from where the coarser cut
            // stopped; devices and countries, by key.
            total.user_logs += self
                .in_pages(cut, covered, log_keys, |k| k.1, floor_logs)
                .await?;
            total.devices += self
                .in_pages(cut, None, device_keys, |k| Some(k.clone()), floor_devices)
                .await?;
            total.time_spent += self
                .in_pages(cut, covered, time_spent_keys, |k| k.2, floor_time_spent)
                .await?;
            total.user_countries += self
                .in_pages(
                    cut,
                    None,
                    country_keys,
                    |k| Some(k.clone()),
                    floor_countries,
                )
                .await?;
            covered = covered.max(cut.before);
        }
        Ok(total)
    }
}
