//! Group commit of log entries: the entries that arrive while a transaction
//! is running are stored together by the next one, as on SQLite. One
//! transaction costs a handful of round trips and one WAL flush, whatever
//! the number of entries in it, and the statements that do not depend on
//! each other are sent together (pipelined on the connection).
//!
//! Each entry still takes its user's row lock (all of a batch's users are
//! locked in ID order, so batches of different replicas wait for each other
//! rather than deadlock) and runs its detections on what was stored before
//! it, in the transaction that stores it. Two entries of one user in one
//! batch go to successive rounds of that transaction, so the second sees the
//! first. An entry that fails on its own (any error but a lost race, which
//! runs the batch again) is stored on its own, so that it cannot fail the
//! others.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Mutex};
use tokio_postgres::types::ToSql;

use super::api::{opt, TxError};
use super::{pg_error, retryable, PgStore, RETRIES};
use crate::clock::quantize;
use crate::model::{AlertDraft, History, LogRecord};
use crate::store::types::{Detections, StoreError};
use crate::wire::LOG_TYPE_LOGIN_FAILURE;

/// Entries stored by one transaction at most.
const MAX_BATCH: usize = 256;

/// Transactions of entries in flight at once, per replica: one running its
/// statements while the other commits. A worker takes its entries only
/// once the other has sent its last statements with COMMIT (the turn), so
/// that the entries arriving meanwhile make one transaction rather than
/// many small ones.
const WORKERS: usize = 2;

/// The right to take entries and run a transaction's statements, handed on
/// when the COMMIT is sent.
type Turn = Option<tokio::sync::OwnedMutexGuard<()>>;

pub(super) struct Job {
    pub rec: LogRecord,
    pub detect: Option<Detections>,
    pub done: oneshot::Sender<Result<usize, StoreError>>,
}

/// The queue of entries waiting for a transaction.
pub(super) type Queue = mpsc::UnboundedSender<Job>;

/// Starts the workers of `store`'s queue; they end when every sender is
/// dropped.
pub(super) fn start(store: &PgStore) -> Queue {
    let (tx, rx) = mpsc::unbounded_channel();
    let rx = Arc::new(Mutex::new(rx));
    let turn = Arc::new(Mutex::new(()));
    for _ in 0..WORKERS {
        let rx = Arc::clone(&rx);
        let turn = Arc::clone(&turn);
        let store = store.clone();
        tokio::spawn(async move {
            loop {
                let mine = Some(Arc::clone(&turn).lock_owned().await);
                let Some(batch) = next_batch(&rx).await else {
                    return;
                };
                store.run_batch(batch, mine).await;
            }
        });
    }
    tx
}

/// Waits for an entry, then takes every entry already queued behind it.
async fn next_batch(rx: &Mutex<mpsc::UnboundedReceiver<Job>>) -> Option<Vec<Job>> {
    let mut rx = rx.lock().await;
    let first = rx.recv().await?;
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(job) => batch.push(job),
            Err(_) => break,
        }
    }
    Some(batch)
}

/// Whether a batch that failed with `e` may have failed for one of its
/// entries (a value PostgreSQL refused): only then are they stored one by
/// one. A lost connection, the pool or a read-only server says nothing of
/// the entries, and after a lost connection the batch's COMMIT may have
/// been done.
fn entry_may_be_at_fault(e: &TxError) -> bool {
    match e {
        TxError::Store(StoreError::Other(_)) => true,
        TxError::Store(_) => false,
        TxError::Pg(e) => e.as_db_error().is_some_and(|db| {
            let class = &db.code().code()[..2];
            // Data exceptions, integrity constraints, syntax or access:
            // not connection (08), not read-only (25), not resources (53),
            // not operator intervention (57).
            matches!(class, "22" | "23" | "42")
        }),
    }
}

/// Entries (by position) in rounds where each user appears at most once,
/// each user's entries in their order.
pub(super) fn rounds<'a>(users: impl Iterator<Item = &'a str>) -> Vec<Vec<usize>> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut rounds: Vec<Vec<usize>> = Vec::new();
    for (i, user) in users.enumerate() {
        let n = seen.entry(user).or_insert(0);
        if rounds.len() <= *n {
            rounds.push(Vec::new());
        }
        rounds[*n].push(i);
        *n += 1;
    }
    rounds
}

impl PgStore {
    async fn run_batch(&self, jobs: Vec<Job>, mut turn: Turn) {
        let mut attempt = 0;
        let outcome = loop {
            match self.store_batch(&jobs, &mut turn).await {
                Err(TxError::Pg(e)) if retryable(&e) && attempt < RETRIES => {
                    attempt += 1;
                    tracing::debug!(attempt, entries = jobs.len(), "batch retried: {e}");
                }
                other => break other,
            }
        };
        drop(turn);
        match outcome {
            Ok(alerts) => {
                for (job, n) in jobs.into_iter().zip(alerts) {
                    let _ = job.done.send(Ok(n));
                }
            }
            // One entry, or a failure that is no entry's fault: the
            // connection lost (perhaps during COMMIT, so the batch may or
            // may not be stored: storing its entries again could store them
            // twice), the pool, the server refusing writes.
            Err(e) if jobs.len() == 1 || !entry_may_be_at_fault(&e) => {
                let e = match e {
                    TxError::Pg(e) => pg_error(e),
                    TxError::Store(e) => e,
                };
                for job in jobs {
                    let _ = job.done.send(Err(e.clone()));
                }
            }
            Err(_) => {
                // One entry may be at fault: each on its own, so that it
                // fails alone.
                for job in jobs {
                    let one = self.record_one(job.rec, job.detect).await;
                    let _ = job.done.send(one);
                }
            }
        }
    }

    /// Stores every entry of `jobs` in one transaction; the alerts raised
    /// by each. On any error the transaction is rolled back before the
    /// connection goes back to the pool.
    async fn store_batch(&self, jobs: &[Job], turn: &mut Turn) -> Result<Vec<usize>, TxError> {
        let client = self.client().await?;
        let st = Statements::prepare(&client).await?;
        let generation = self.known.as_ref().map(|k| k.generation());
        let outcome = store_batch(&client, &st, jobs, turn).await;
        if let (Ok(_), Some(known), Some(g)) = (&outcome, &self.known, generation) {
            let pairs = jobs
                .iter()
                .filter(|j| !j.rec.sealed_id().is_empty())
                .map(|j| known.key(&j.rec.username, j.rec.sealed_id()));
            known.learn(g, pairs.collect::<Vec<_>>());
        }
        if outcome.is_err() {
            if let Err(e) = client.batch_execute("ROLLBACK").await {
                tracing::debug!("rollback after a failed batch: {e}");
            }
        }
        outcome
    }
}

/// The statements of a batch, in the order of [`SQL`].
pub(super) struct Statements(Vec<tokio_postgres::Statement>);

impl Statements {
    /// From the connection's statement cache.
    pub(super) async fn prepare(client: &Client) -> Result<Statements, tokio_postgres::Error> {
        let mut prepared = Vec::with_capacity(SQL.len());
        for sql in SQL {
            prepared.push(client.prepare_cached(sql).await?);
        }
        Ok(Statements(prepared))
    }
}

const LOCK: usize = 0;
const HISTORY: usize = 1;
const NEW_USERS: usize = 2;
const LOGS: usize = 3;
const DEVICES: usize = 4;
const COUNTRIES: usize = 5;
const ALERTS: usize = 6;

const SQL: [&str; 7] = [
    // LOCK: the users that exist, each row locked, in ID order.
    "SELECT id, name FROM users WHERE name = ANY($1) ORDER BY id FOR UPDATE",
    // HISTORY: run after LOCK, so its snapshot holds every entry committed
    // by the lock's previous holders.
    "SELECT q.i,
         (SELECT ts FROM user_logs WHERE user_id = u.id AND log_type = 'login'
          ORDER BY ts DESC LIMIT 1),
         EXISTS (SELECT 1 FROM devices WHERE user_id = u.id AND device_id = q.dev),
         (SELECT first_seen <= q.day AND last_seen >= q.day FROM user_countries
          WHERE user_id = u.id AND zone = q.zone),
         CASE WHEN q.failure THEN
             (SELECT count(*) FROM user_logs
              WHERE user_id = u.id AND ts >= q.since AND log_type = 'login_failure')
         ELSE 0 END,
         q.failure AND EXISTS (SELECT 1 FROM alerts WHERE user_id = u.id
             AND kind = 'login_failure_burst' AND created >= q.since)
     FROM unnest($1::int[], $2::text[], $3::bytea[], $4::text[], $5::bigint[],
                 $6::bigint[], $7::bool[]) AS q(i, name, dev, zone, day, since, failure)
     LEFT JOIN users u ON u.name = q.name",
    // NEW_USERS: those this transaction made (and so holds) come back.
    "INSERT INTO users (name) SELECT n FROM unnest($1::text[]) AS n
     ORDER BY n ON CONFLICT (name) DO NOTHING RETURNING id, name",
    // LOGS
    "INSERT INTO user_logs (user_id, ts, log_type, message, service, login_method,
         login_authenticator_id, device_id, zone, browser, os, mobile, user_agent)
     SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[],
         $6::text[], $7::text[], $8::bytea[], $9::text[], $10::text[], $11::text[],
         $12::bool[], $13::text[])",
    // DEVICES: each (user, device) at most once per round.
    concat!(
        "INSERT INTO devices (user_id, device_id, zone, browser, os, mobile, user_agent,
             first_seen, last_seen, num_logins)
         SELECT u, d, z, b, o, m, a, t, t, n
         FROM unnest($1::bigint[], $2::bytea[], $3::text[], $4::text[], $5::text[],
                     $6::bool[], $7::text[], $8::bigint[], $9::bigint[])
              AS q(u, d, z, b, o, m, a, t, n) ",
        device_merge!()
    ),
    // COUNTRIES: kept to the day.
    "INSERT INTO user_countries (user_id, zone, first_seen, last_seen)
     SELECT u, z, d, d FROM unnest($1::bigint[], $2::text[], $3::bigint[]) AS q(u, z, d)
     ON CONFLICT (user_id, zone) DO UPDATE SET
         first_seen = LEAST(user_countries.first_seen, EXCLUDED.first_seen),
         last_seen = GREATEST(user_countries.last_seen, EXCLUDED.last_seen)
     WHERE EXCLUDED.first_seen < user_countries.first_seen
        OR EXCLUDED.last_seen > user_countries.last_seen",
    // ALERTS and their deliveries, due at once (0 rather than the clock,
    // which would record the exact time of the event behind the alert).
    "WITH a AS (
         INSERT INTO alerts (user_id, kind, created, details)
         SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::text[])
         RETURNING id)
     INSERT INTO alert_deliveries (alert_id, sink, state, attempts, next_attempt)
     SELECT a.id, s, 'pending', 0, 0 FROM a, unnest($5::text[]) AS s",
];

pub(super) type Client = deadpool_postgres::Object;

/// Locks the rows of the users named that exist.
async fn lock(
    client: &Client,
    st: &Statements,
    names: &[&str],
) -> Result<Vec<tokio_postgres::Row>, TxError> {
    Ok(client.query(&st.0[LOCK], &[&names]).await?)
}

/// A statement's future, failing as a transaction's body does.
async fn pg<T>(
    f: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, TxError> {
    Ok(f.await?)
}

/// The batch's transaction, in as few round trips as the detections allow:
/// BEGIN, the locks and the first round's history together; then each
/// round's writes with the next round's history, the last with COMMIT.
async fn store_batch(
    client: &Client,
    st: &Statements,
    jobs: &[Job],
    turn: &mut Turn,
) -> Result<Vec<usize>, TxError> {
    let rounds = rounds(jobs.iter().map(|j| j.rec.username.as_str()));
    let mut names: Vec<&str> = jobs.iter().map(|j| j.rec.username.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    // The batch's statements run on their generic plans. The planner's
    // choice between a generic plan and one made for each call's arrays
    // depends on the sizes of the batches a connection has seen: with small
    // ones (three replicas splitting the entries) it made a new plan at
    // every call, and the planning of the history's five lookups cost more
    // than running them. The generic plans are those it keeps with larger
    // batches.
    let begin = pg(client.batch_execute("BEGIN; SET LOCAL plan_cache_mode = force_generic_plan"));
    let first = history(client, st, jobs, &rounds[0]);
    let (_, locked, mut histories) = tokio::try_join!(begin, lock(client, st, &names), first)?;
    let mut uids: HashMap<&str, i64> = HashMap::with_capacity(names.len());
    for r in &locked {
        let name: &str = r.get(1);
        if let Ok(k) = names.binary_search(&name) {
            uids.insert(names[k], r.get(0));
        }
    }
    if uids.len() < names.len() {
        let missing: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| !uids.contains_key(n))
            .collect();
        let made = client.query(&st.0[NEW_USERS], &[&missing]).await?;
        let mut ours = std::collections::HashSet::new();
        for r in &made {
            let name: &str = r.get(1);
            if let Ok(k) = names.binary_search(&name) {
                uids.insert(names[k], r.get(0));
                ours.insert(names[k]);
            }
        }
        // A user made by this transaction has no history yet.
        for h in histories.iter_mut() {
            if ours.contains(jobs[h.0].rec.username.as_str()) {
                h.1 = (History::default(), false);
            }
        }
        // Users another transaction made meanwhile: locked now, their
        // history read again after the lock.
        let theirs: Vec<&str> = missing
            .iter()
            .copied()
            .filter(|n| !ours.contains(n))
            .collect();
        if !theirs.is_empty() {
            let again: Vec<usize> = rounds[0]
                .iter()
                .copied()
                .filter(|&i| theirs.contains(&jobs[i].rec.username.as_str()))
                .collect();
            let (locked, fresh) =
                tokio::try_join!(lock(client, st, &theirs), history(client, st, jobs, &again))?;
            for r in &locked {
                let name: &str = r.get(1);
                if let Ok(k) = names.binary_search(&name) {
                    uids.insert(names[k], r.get(0));
                }
            }
            histories.retain(|h| !again.contains(&h.0));
            histories.extend(fresh);
        }
        if uids.len() < names.len() {
            return Err(StoreError::Other("a user vanished while being written".into()).into());
        }
    }
    let uid_of = |i: usize| uids[jobs[i].rec.username.as_str()];
    let mut alerts = vec![0; jobs.len()];
    for (r, round) in rounds.iter().enumerate() {
        let current: HashMap<usize, bool> = histories.iter().map(|(i, (_, c))| (*i, *c)).collect();
        let rows: Vec<(i64, &LogRecord, bool)> = round
            .iter()
            .map(|&i| (uid_of(i), &jobs[i].rec, current.get(&i) == Some(&true)))
            .collect();
        let mut raised = Vec::new();
        for (i, (h, _)) in &histories {
            let job = &jobs[*i];
            let d = job
                .detect
                .as_ref()
                .expect("only entries with detections have a history");
            let drafts = (d.rules)(h, &job.rec.event());
            alerts[*i] = drafts.len();
            raised.extend(drafts.into_iter().map(|a| (uid_of(*i), a, &d.sinks)));
        }
        let writes = write_round(client, st, &rows, &raised);
        if let Some(next) = rounds.get(r + 1) {
            let (_, h) = tokio::try_join!(writes, history(client, st, jobs, next))?;
            histories = h;
        } else {
            // The last statements go with COMMIT: the next transaction may
            // take its entries.
            drop(turn.take());
            tokio::try_join!(writes, pg(client.batch_execute("COMMIT")))?;
        }
    }
    Ok(alerts)
}

/// A round's rows, devices, countries and alerts: statements sent together.
async fn write_round(
    client: &Client,
    st: &Statements,
    rows: &[(i64, &LogRecord, bool)],
    raised: &[(i64, AlertDraft, &Arc<Vec<&'static str>>)],
) -> Result<(), TxError> {
    tokio::try_join!(
        insert_logs(client, st, rows),
        insert_alerts(client, st, raised)
    )?;
    Ok(())
}

/// The alerts of one round and their deliveries: one statement per set of
/// sinks.
async fn insert_alerts(
    client: &Client,
    st: &Statements,
    raised: &[(i64, AlertDraft, &Arc<Vec<&'static str>>)],
) -> Result<(), TxError> {
    let mut by_sinks: Vec<(&[&'static str], Vec<usize>)> = Vec::new();
    for (k, (_, _, sinks)) in raised.iter().enumerate() {
        match by_sinks.iter_mut().find(|(s, _)| *s == sinks.as_slice()) {
            Some((_, ks)) => ks.push(k),
            None => by_sinks.push((sinks.as_slice(), vec![k])),
        }
    }
    for (sinks, ks) in by_sinks {
        let uid: Vec<i64> = ks.iter().map(|&k| raised[k].0).collect();
        let kind: Vec<&str> = ks.iter().map(|&k| raised[k].1.kind.as_str()).collect();
        let created: Vec<i64> = ks.iter().map(|&k| raised[k].1.ts).collect();
        let details = ks
            .iter()
            .map(|&k| serde_json::to_string(&raised[k].1.details))
            .collect::<Result<Vec<String>, _>>()
            .map_err(|e| StoreError::Other(e.to_string()))?;
        let sinks: Vec<&str> = sinks.to_vec();
        client
            .execute(&st.0[ALERTS], &[&uid, &kind, &created, &details, &sinks])
            .await?;
    }
    Ok(())
}

/// What the rules need about the user of each entry of `round` that has
/// detections, before the entry; and whether the user's row for the
/// entry's country already covers its day.
async fn history(
    client: &Client,
    st: &Statements,
    jobs: &[Job],
    round: &[usize],
) -> Result<Vec<(usize, (History, bool))>, TxError> {
    let detected: Vec<usize> = round
        .iter()
        .copied()
        .filter(|&i| jobs[i].detect.is_some())
        .collect();
    if detected.is_empty() {
        return Ok(Vec::new());
    }
    let idx: Vec<i32> = detected.iter().map(|&i| i as i32).collect();
    let name: Vec<&str> = detected
        .iter()
        .map(|&i| jobs[i].rec.username.as_str())
        .collect();
    let dev: Vec<&[u8]> = detected.iter().map(|&i| jobs[i].rec.sealed_id()).collect();
    let zone: Vec<&str> = detected
        .iter()
        .map(|&i| jobs[i].rec.device.as_ref().map_or("", |d| d.zone.as_str()))
        .collect();
    let day: Vec<i64> = detected
        .iter()
        .map(|&i| quantize(jobs[i].rec.ts, 86_400))
        .collect();
    let since: Vec<i64> = detected
        .iter()
        .map(|&i| {
            let j = &jobs[i];
            let window = j.detect.as_ref().map_or(0, |d| d.burst_window);
            j.rec.ts.saturating_sub(window)
        })
        .collect();
    let failure: Vec<bool> = detected
        .iter()
        .map(|&i| jobs[i].rec.log_type == LOG_TYPE_LOGIN_FAILURE)
        .collect();
    let rows = client
        .query(
            &st.0[HISTORY],
            &[&idx, &name, &dev, &zone, &day, &since, &failure],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let i = r.get::<_, i32>(0) as usize;
            let rec = &jobs[i].rec;
            let device_row: bool = r.get(2);
            let country_row: Option<bool> = r.get(3);
            let zone = rec.device.as_ref().map_or("", |d| d.zone.as_str());
            let country_known = !zone.is_empty() && country_row.is_some();
            let h = History {
                last_login: r.get(1),
                device_known: !rec.sealed_id().is_empty() && device_row,
                country_known,
                failures_in_window: r.get::<_, i64>(4) as u64,
                burst_alerted_in_window: r.get(5),
            };
            (i, (h, country_known && country_row == Some(true)))
        })
        .collect())
}

/// The log rows of one round (each user once), their devices and their
/// countries (left alone where `current`): three statements sent together.
pub(super) async fn insert_logs(
    client: &Client,
    st: &Statements,
    rows: &[(i64, &LogRecord, bool)],
) -> Result<(), TxError> {
    let uid: Vec<i64> = rows.iter().map(|r| r.0).collect();
    let ts: Vec<i64> = rows.iter().map(|r| r.1.ts).collect();
    let log_type: Vec<&str> = rows.iter().map(|r| r.1.log_type.as_str()).collect();
    let message: Vec<Option<&str>> = rows.iter().map(|r| opt(&r.1.message)).collect();
    let service: Vec<Option<&str>> = rows.iter().map(|r| opt(&r.1.service)).collect();
    let method: Vec<Option<&str>> = rows.iter().map(|r| opt(&r.1.login_method)).collect();
    let authenticator: Vec<Option<&str>> = rows
        .iter()
        .map(|r| opt(&r.1.login_authenticator_id))
        .collect();
    fn dev<'a>(r: &(i64, &'a LogRecord, bool)) -> Option<&'a crate::model::DeviceRecord> {
        r.1.device.as_ref()
    }
    let device_id: Vec<Option<&[u8]>> = rows
        .iter()
        .map(|r| dev(r).map(|d| d.sealed_id.as_slice()))
        .collect();
    let zone: Vec<Option<&str>> = rows
        .iter()
        .map(|r| dev(r).and_then(|d| opt(&d.zone)))
        .collect();
    let browser: Vec<Option<&str>> = rows
        .iter()
        .map(|r| dev(r).and_then(|d| opt(&d.browser)))
        .collect();
    let os: Vec<Option<&str>> = rows
        .iter()
        .map(|r| dev(r).and_then(|d| opt(&d.os)))
        .collect();
    let mobile: Vec<Option<bool>> = rows.iter().map(|r| dev(r).map(|d| d.mobile)).collect();
    let agent: Vec<Option<&str>> = rows
        .iter()
        .map(|r| dev(r).and_then(|d| opt(&d.user_agent)))
        .collect();
    let log_params: [&(dyn ToSql + Sync); 13] = [
        &uid,
        &ts,
        &log_type,
        &message,
        &service,
        &method,
        &authenticator,
        &device_id,
        &zone,
        &browser,
        &os,
        &mobile,
        &agent,
    ];
    let logs = client.execute(&st.0[LOGS], &log_params);

    // The device list: entries that name a device.
    let with_device: Vec<&(i64, &LogRecord, bool)> = rows
        .iter()
        .filter(|r| dev(r).is_some_and(|d| !d.sealed_id.is_empty()))
        .collect();
    let d_uid: Vec<i64> = with_device.iter().map(|r| r.0).collect();
    let d_id: Vec<&[u8]> = with_device.iter().map(|r| r.1.sealed_id()).collect();
    let d_field = |f: fn(&crate::model::DeviceRecord) -> &str| -> Vec<&str> {
        with_device.iter().map(|r| dev(r).map_or("", f)).collect()
    };
    let d_zone = d_field(|d| &d.zone);
    let d_browser = d_field(|d| &d.browser);
    let d_os = d_field(|d| &d.os);
    let d_agent = d_field(|d| &d.user_agent);
    let d_mobile: Vec<bool> = with_device
        .iter()
        .map(|r| dev(r).is_some_and(|d| d.mobile))
        .collect();
    let d_ts: Vec<i64> = with_device.iter().map(|r| r.1.ts).collect();
    let d_logins: Vec<i64> = with_device.iter().map(|r| r.1.logins()).collect();
    let devices = async {
        if with_device.is_empty() {
            return Ok(0);
        }
        client
            .execute(
                &st.0[DEVICES],
                &[
                    &d_uid, &d_id, &d_zone, &d_browser, &d_os, &d_mobile, &d_agent, &d_ts,
                    &d_logins,
                ],
            )
            .await
    };

    // The countries seen, kept to the day.
    let with_country: Vec<&(i64, &LogRecord, bool)> = rows
        .iter()
        .filter(|r| !r.2 && dev(r).is_some_and(|d| !d.zone.is_empty()))
        .collect();
    let c_uid: Vec<i64> = with_country.iter().map(|r| r.0).collect();
    let c_zone: Vec<&str> = with_country
        .iter()
        .map(|r| dev(r).map_or("", |d| d.zone.as_str()))
        .collect();
    let c_day: Vec<i64> = with_country
        .iter()
        .map(|r| quantize(r.1.ts, 86_400))
        .collect();
    let countries = async {
        if with_country.is_empty() {
            return Ok(0);
        }
        client
            .execute(&st.0[COUNTRIES], &[&c_uid, &c_zone, &c_day])
            .await
    };
    tokio::try_join!(logs, devices, countries)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(user: &str) -> Job {
        Job {
            rec: LogRecord {
                username: user.into(),
                ..Default::default()
            },
            detect: None,
            done: oneshot::channel().0,
        }
    }

    #[test]
    fn a_user_appears_once_per_round() {
        let jobs: Vec<Job> = ["a", "b", "a", "c", "a", "b"].map(job).into();
        let users = jobs.iter().map(|j| j.rec.username.as_str());
        assert_eq!(rounds(users), vec![vec![0, 1, 3], vec![2, 5], vec![4]]);
    }
}
