//! Coarsening with age (`privacy.decay`) on PostgreSQL: stored times older
//! than a step are floored to its granularity, a bounded batch per
//! transaction, on one replica at a time (the retention lock).
//!
//! `seq` is a sequence over the whole log, so a floored entry keeps it and
//! cannot collide with an entry already at its new time; entries keep their
//! order. Entries that become identical are kept, not merged, as on SQLite.

use super::{pg_error, PgStore};
use crate::store::types::{Coarsened, DecayCut, StoreError};

/// Rows changed per transaction.
const DECAY_BATCH: i64 = 2_000;

impl PgStore {
    /// Floors every stored time before each cut to its granularity; `cuts`
    /// come finest first, applied coarsest first (see the SQLite backend).
    pub async fn decay(&self, cuts: Vec<DecayCut>) -> Result<Coarsened, StoreError> {
        if cuts.is_empty() {
            return Ok(Coarsened::default());
        }
        self.under_retention_lock("decay", async |client| decay_locked(client, &cuts).await)
            .await
    }
}

async fn decay_locked(
    client: &deadpool_postgres::Object,
    cuts: &[DecayCut],
) -> Result<Coarsened, StoreError> {
    let mut total = Coarsened::default();
    let mut covered = i64::MIN;
    for cut in cuts.iter().rev() {
        let (before, g) = (cut.before, cut.granularity);
        // Logs, oldest first from where the coarser cut stopped; each
        // statement is its own transaction.
        let mut from = covered;
        loop {
            let row = client
                .query_one(
                    "WITH k AS (SELECT user_id, ts, seq FROM user_logs
                                WHERE ts >= $1 AND ts < $2 AND ts % $3 <> 0
                                ORDER BY ts, seq LIMIT $4),
                          u AS (UPDATE user_logs l SET ts = l.ts - l.ts % $3 FROM k
                                WHERE (l.user_id, l.ts, l.seq) = (k.user_id, k.ts, k.seq)
                                RETURNING 1)
                     SELECT (SELECT count(*) FROM u), (SELECT max(ts) FROM k)",
                    &[&from, &before, &g, &DECAY_BATCH],
                )
                .await
                .map_err(pg_error)?;
            let n: i64 = row.get(0);
            total.user_logs += n as u64;
            match row.get::<_, Option<i64>>(1) {
                Some(last) if n == DECAY_BATCH => from = last,
                _ => break,
            }
            tokio::task::yield_now().await;
        }
        total.devices += floor_seen::<Vec<u8>>(client, "devices", "device_id", before, g).await?;
        total.user_countries +=
            floor_seen::<String>(client, "user_countries", "zone", before, g).await?;
        // Time spent is a sum: rows meeting on a floored day are added up.
        let mut from = covered;
        loop {
            let row = client
                .query_one(
                    "WITH k AS (SELECT user_id, device_id, day FROM time_spent
                                WHERE day >= $1 AND day < $2 AND day % $3 <> 0
                                ORDER BY day LIMIT $4),
                          d AS (DELETE FROM time_spent t USING k
                                WHERE (t.user_id, t.device_id, t.day) = (k.user_id, k.device_id, k.day)
                                RETURNING t.*),
                          i AS (INSERT INTO time_spent
                                    (user_id, device_id, day, seconds, first_start, last_end)
                                SELECT user_id, device_id, day - day % $3, sum(seconds)::BIGINT,
                                       min(first_start - first_start % $3),
                                       max(last_end - last_end % $3)
                                FROM d GROUP BY user_id, device_id, day - day % $3
                                ON CONFLICT (user_id, device_id, day) DO UPDATE SET
                                    seconds = time_spent.seconds + excluded.seconds,
                                    first_start = least(time_spent.first_start, excluded.first_start),
                                    last_end = greatest(time_spent.last_end, excluded.last_end))
                     SELECT (SELECT count(*) FROM d), (SELECT max(day) FROM k)",
                    &[&from, &before, &g, &DECAY_BATCH],
                )
                .await
                .map_err(pg_error)?;
            let n: i64 = row.get(0);
            total.time_spent += n as u64;
            match row.get::<_, Option<i64>>(1) {
                Some(last) if n == DECAY_BATCH => from = last,
                _ => break,
            }
            tokio::task::yield_now().await;
        }
        covered = covered.max(before);
    }
    Ok(total)
}

/// Floors the first and last seen times before `before` of a table keyed by
/// (user_id, `key`) (devices, countries): a page of keys per statement, in
/// key order. Paged on the keys read, so a row erased meanwhile does not end
/// the walk.
async fn floor_seen<K>(
    client: &deadpool_postgres::Object,
    table: &str,
    key: &str,
    before: i64,
    g: i64,
) -> Result<u64, StoreError>
where
    K: Default + tokio_postgres::types::ToSql + Sync + for<'a> tokio_postgres::types::FromSql<'a>,
{
    let sql = format!(
        "WITH k AS (SELECT user_id, {key} FROM {table}
                    WHERE (user_id, {key}) > ($4, $5)
                      AND ((first_seen < $1 AND first_seen % $2 <> 0)
                           OR (last_seen < $1 AND last_seen % $2 <> 0))
                    ORDER BY user_id, {key} LIMIT $3),
              u AS (UPDATE {table} t SET
                        first_seen = CASE WHEN t.first_seen < $1
                            THEN t.first_seen - t.first_seen % $2 ELSE t.first_seen END,
                        last_seen = CASE WHEN t.last_seen < $1
                            THEN t.last_seen - t.last_seen % $2 ELSE t.last_seen END
                    FROM k WHERE (t.user_id, t.{key}) = (k.user_id, k.{key})
                    RETURNING 1)
         SELECT (SELECT count(*) FROM u), (SELECT count(*) FROM k),
                (SELECT user_id FROM k ORDER BY user_id DESC, {key} DESC LIMIT 1),
                (SELECT {key} FROM k ORDER BY user_id DESC, {key} DESC LIMIT 1)"
    );
    let st = client.prepare(&sql).await.map_err(pg_error)?;
    let mut after: (i64, K) = (i64::MIN, K::default());
    let mut total = 0;
    loop {
        let row = client
            .query_one(&st, &[&before, &g, &DECAY_BATCH, &after.0, &after.1])
            .await
            .map_err(pg_error)?;
        let (n, page): (i64, i64) = (row.get(0), row.get(1));
        total += n as u64;
        match (row.get::<_, Option<i64>>(2), row.get::<_, Option<K>>(3)) {
            (Some(uid), Some(k)) if page == DECAY_BATCH => after = (uid, k),
            _ => return Ok(total),
        }
        tokio::task::yield_now().await;
    }
}
