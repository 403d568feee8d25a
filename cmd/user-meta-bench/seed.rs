//! Filling a database with a year of history, straight through the library:
//! the same privacy reduction and the same queries as the server, in large
//! transactions instead of one request each.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rusqlite::Connection;
use usermetadb::privacy::Privacy;
use usermetadb::store::ops::{self, DeviceRecord, LogRecord};
use usermetadb::store::{alerts, schema};

use crate::data::{Kind, Population, DORMANT_DAYS, SERVICES};

const DAY: i64 = 86_400;
/// Entries per transaction.
const BATCH: usize = 20_000;

#[derive(Debug, Clone, serde::Serialize)]
pub struct SeedStats {
    pub entries: u64,
    pub users: u32,
    pub seconds: f64,
    pub entries_per_second: f64,
}

/// One entry to write, before it is expanded into a record.
#[derive(Clone, Copy)]
struct Planned {
    ts: i64,
    user: u32,
    device: u16,
    service: u8,
    kind: Kind,
}

/// Appends `entries` log entries spread over the year before `now` across
/// the population's users (every device of every user appears at least once
/// when there are enough entries), in time order as a live server would have
/// written them, and the last login of each user on each service. Dormant users
/// have no activity in the last [`DORMANT_DAYS`] days.
pub fn seed(
    db: &Path,
    privacy: &Privacy,
    pop: &Population,
    entries: u64,
    now: i64,
) -> Result<SeedStats> {
    let started = Instant::now();
    let mut conn = Connection::open(db).with_context(|| format!("opening {}", db.display()))?;
    // The server runs in WAL mode; the seed needs no durability until the end.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "OFF")?;
    conn.pragma_update(None, "cache_size", -262_144)?;
    schema::migrate(&mut conn).map_err(|e| anyhow::anyhow!("migrating {}: {e}", db.display()))?;

    let mut rng = StdRng::seed_from_u64(pop.seed ^ 0x5eed);
    let plan = plan(pop, entries, now, &mut rng);

    let per_user = pop.devices_per_user as usize;
    let mut devices: Vec<Option<DeviceRecord>> = vec![None; pop.users as usize * per_user];
    let mut last_login: Vec<[i64; 4]> = vec![[i64::MIN; 4]; pop.users as usize];
    let mut names: Vec<Option<String>> = vec![None; pop.users as usize];

    for chunk in plan.chunks(BATCH) {
        let tx = conn.transaction()?;
        for p in chunk {
            let user = p.user as usize;
            let name = names[user]
                .get_or_insert_with(|| pop.username(p.user))
                .clone();
            let device = if p.kind.has_device() {
                let slot = &mut devices[user * per_user + usize::from(p.device)];
                Some(
                    slot.get_or_insert_with(|| {
                        privacy.reduce_device(&name, &pop.device_info(p.user, u32::from(p.device)))
                    })
                    .clone(),
                )
            } else {
                None
            };
            if p.kind == Kind::Login {
                let l = &mut last_login[user][usize::from(p.service)];
                *l = (*l).max(p.ts);
            }
            let rec = LogRecord {
                username: name,
                ts: privacy.quantize_log(p.ts),
                log_type: p.kind.log_type().to_owned(),
                service: SERVICES[usize::from(p.service)].to_owned(),
                login_method: if p.kind == Kind::Login {
                    "password".to_owned()
                } else {
                    String::new()
                },
                device,
                ..Default::default()
            };
            // As the server stores an entry, countries seen included: a
            // history without them would make the monitor take every
            // login's country for a new one.
            let uid =
                ops::ensure_user(&tx, &rec.username).map_err(|e| anyhow::anyhow!("user: {e}"))?;
            alerts::record_log(&tx, uid, &rec, false)
                .map_err(|e| anyhow::anyhow!("record_log: {e}"))?;
        }
        tx.commit()?;
    }

    let tx = conn.transaction()?;
    for (user, services) in last_login.iter().enumerate() {
        let name = pop.username(user as u32);
        for (s, ts) in services.iter().enumerate() {
            if *ts != i64::MIN {
                ops::set_last_login(&tx, &name, SERVICES[s], privacy.quantize_last_login(*ts))
                    .map_err(|e| anyhow::anyhow!("set_last_login: {e}"))?;
            }
        }
    }
    tx.commit()?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    drop(conn);

    let seconds = started.elapsed().as_secs_f64();
    Ok(SeedStats {
        entries,
        users: pop.users,
        seconds,
        entries_per_second: entries as f64 / seconds.max(1e-9),
    })
}

fn plan(pop: &Population, entries: u64, now: i64, rng: &mut StdRng) -> Vec<Planned> {
    let users = u64::from(pop.users);
    let mut plan = Vec::with_capacity(entries as usize);
    for user in 0..pop.users {
        let n = entries / users + u64::from(u64::from(user) < entries % users);
        let newest = if pop.dormant(user) {
            now - DORMANT_DAYS * DAY - DAY
        } else {
            now
        };
        let oldest = now - 364 * DAY;
        for k in 0..n {
            let kind = Kind::random(rng);
            let device = if k < u64::from(pop.devices_per_user) {
                k as u16
            } else {
                pop.random_device(rng) as u16
            };
            // The first entries of a user bring its devices: let them log in.
            let kind = if k < u64::from(pop.devices_per_user) {
                Kind::Login
            } else {
                kind
            };
            plan.push(Planned {
                ts: rng.gen_range(oldest..newest.max(oldest + 1)),
                user,
                device,
                service: rng.gen_range(0..SERVICES.len()) as u8,
                kind,
            });
        }
    }
    plan.sort_unstable_by_key(|p| p.ts);
    plan
}

/// How much room the log takes, from SQLite's own page accounting.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct DbSize {
    pub log_entries: u64,
    pub users: u64,
    pub devices: u64,
    /// Every page of the database file, free pages excluded.
    pub total_bytes: u64,
    /// Pages of the `user_logs` table and its indexes.
    pub user_logs_bytes: u64,
    pub total_bytes_per_entry: f64,
    pub user_logs_bytes_per_entry: f64,
}

pub fn db_size(db: &Path) -> Result<DbSize> {
    let conn = Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .with_context(|| format!("opening {}", db.display()))?;
    let count =
        |sql: &str| -> Result<u64> { Ok(conn.query_row(sql, [], |r| r.get::<_, i64>(0))? as u64) };
    let log_entries = count("SELECT count(*) FROM user_logs")?;
    let users = count("SELECT count(*) FROM users")?;
    let devices = count("SELECT count(*) FROM devices")?;
    let page_size = count("PRAGMA page_size")?;
    let pages = count("PRAGMA page_count")?;
    let free = count("PRAGMA freelist_count")?;
    let user_logs_bytes = count(
        "SELECT coalesce(sum(pgsize), 0) FROM dbstat
         WHERE name IN (SELECT name FROM sqlite_schema WHERE tbl_name = 'user_logs')",
    )?;
    let total_bytes = (pages - free) * page_size;
    let per = |b: u64| {
        if log_entries == 0 {
            0.0
        } else {
            b as f64 / log_entries as f64
        }
    };
    Ok(DbSize {
        log_entries,
        users,
        devices,
        total_bytes,
        user_logs_bytes,
        total_bytes_per_entry: per(total_bytes),
        user_logs_bytes_per_entry: per(user_logs_bytes),
    })
}
