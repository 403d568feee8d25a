//! Filling a database with a year of history, straight through the library:
//! the same privacy reduction and the store's bulk load, which keeps entries
//! as the server does, in large transactions instead of one request each.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use usermetadb::config::DbConfig;
use usermetadb::model::{DeviceRecord, LogRecord, Record, StorageSize};
use usermetadb::privacy::Privacy;
use usermetadb::store;

use crate::data::{Kind, Population, DORMANT_DAYS, SERVICES};

const DAY: i64 = 86_400;

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
    cfg: &DbConfig,
    privacy: &Privacy,
    pop: &Population,
    entries: u64,
    now: i64,
) -> Result<SeedStats> {
    let started = Instant::now();
    let db = describe(cfg);
    let mut rng = StdRng::seed_from_u64(pop.seed ^ 0x5eed);
    let plan = plan(pop, entries, now, &mut rng);

    let per_user = pop.devices_per_user as usize;
    let mut devices: Vec<Option<DeviceRecord>> = vec![None; pop.users as usize * per_user];
    let mut last_login: Vec<[i64; 4]> = vec![[i64::MIN; 4]; pop.users as usize];
    let mut names: Vec<Option<String>> = vec![None; pop.users as usize];

    // As the server stores an entry, countries seen included: a history
    // without them would make the monitor take every login's country for a
    // new one.
    let mut logs = plan.iter().map(|p| {
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
        Record::Log(LogRecord {
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
        })
    });
    store::bulk_load(cfg, &mut logs).with_context(|| format!("seeding {db}"))?;

    let mut last = last_login.iter().enumerate().flat_map(|(user, services)| {
        let name = pop.username(user as u32);
        services
            .iter()
            .enumerate()
            .filter(|(_, ts)| **ts != i64::MIN)
            .map(move |(s, ts)| Record::LastLogin {
                username: name.clone(),
                service: SERVICES[s].to_owned(),
                ts: privacy.quantize_last_login(*ts),
            })
    });
    store::bulk_load(cfg, &mut last).with_context(|| format!("seeding {db}"))?;

    let seconds = started.elapsed().as_secs_f64();
    Ok(SeedStats {
        entries,
        users: pop.users,
        seconds,
        entries_per_second: entries as f64 / seconds.max(1e-9),
    })
}

/// The database, for messages.
pub fn describe(cfg: &DbConfig) -> String {
    match &cfg.postgres {
        Some(pg) => usermetadb::config::redact_password(&pg.uri),
        None => cfg.path.display().to_string(),
    }
}

/// The storage settings of the SQLite database at `db`, for the
/// whole-database streams.
pub fn sqlite_config(db: &Path) -> DbConfig {
    DbConfig {
        path: db.to_owned(),
        readers: 1,
        max_batch: 1,
        synchronous_full: true,
        device_index: false,
        postgres: None,
    }
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

/// How much room the log takes, as the store counts it.
pub type DbSize = StorageSize;

pub fn db_size(cfg: &DbConfig) -> Result<DbSize> {
    store::storage_size(cfg).with_context(|| format!("measuring {}", describe(cfg)))
}
