//! Access transparency and subject access: the record of reads of one
//! user's data by clients whose CN matches `transparency.record`, answered
//! by `get_user_access` and mentioned in the summary, and `export_user`,
//! everything stored about one user in one document.
//!
//! A read is recorded after its answer is built and before it is sent: it
//! joins the reads waiting to be written, which a background task writes in
//! one transaction every second (and `get_user_access`, `export_user` and
//! `forget_user` first), so that a read waits for no write. When the
//! waiting reads reach [`MAX_PENDING`] (storage has been failing), a read
//! that would add one fails (503): no answered read escapes the record but
//! those of the last second before a crash. Only the CN, the endpoint and
//! the day (UTC) are stored. Repeats within a day are one row; a server
//! remembers the reads it recorded today, so that a repeat costs nothing.

use std::collections::HashSet;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

use super::{check_days, check_username, ApiError, Service};
use crate::model::AccessRead;
use crate::monitor::text;
use crate::store::pairs::PreHashed;
use crate::store::StoreError;
use crate::wire::*;

const DAY: i64 = 86_400;
/// Reads remembered at most (about 16 bytes each) before the memory is
/// emptied: a write each then, until the reads repeat.
const MAX_SEEN: usize = 500_000;

/// Reads waiting to be written at most; beyond, a new read fails.
pub const MAX_PENDING: usize = 100_000;

/// The reads answered and not yet written, and those this server recorded
/// today, as one state under one lock.
#[derive(Default)]
pub struct Reads {
    state: Mutex<ReadState>,
    /// Keys of the remembered reads: a read is remembered as a keyed 64-bit
    /// sum of (user, reader, endpoint), nothing in clear. Two reads sharing
    /// a sum (a chance of about one in 2^64 / MAX_SEEN) would leave the
    /// second of a day unrecorded.
    keys: RandomState,
    /// Serialises writers, so that a flush that must see every earlier read
    /// written waits for one under way.
    flushing: Arc<tokio::sync::Mutex<()>>,
}

#[derive(Default)]
struct ReadState {
    /// The day (UTC) of the remembered reads.
    day: i64,
    seen: HashSet<u64, PreHashed>,
    waiting: Vec<AccessRead>,
}

impl Reads {
    fn lock(&self) -> std::sync::MutexGuard<'_, ReadState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn entry(a: AccessRead) -> AccessEntry {
    AccessEntry {
        reader: a.reader,
        endpoint: a.endpoint,
        day: text::date(a.day),
    }
}

impl Service {
    /// Whether reads by a client with this CN are recorded.
    pub fn records_reads_of(&self, cn: &str) -> bool {
        self.transparency.records(cn)
    }

    /// Records that `reader` read `user`'s data through `endpoint` at `now`:
    /// it is written within a second (see the module's documentation).
    pub async fn record_read(
        &self,
        user: &str,
        reader: &str,
        endpoint: &'static str,
        now: i64,
    ) -> Result<(), StoreError> {
        let day = now.div_euclid(DAY) * DAY;
        let reads = &self.reads;
        let key = reads.keys.hash_one((user, reader, endpoint));
        let mut s = reads.lock();
        if s.day != day || s.seen.len() >= MAX_SEEN {
            s.day = day;
            s.seen = HashSet::default();
        }
        if s.seen.contains(&key) {
            return Ok(());
        }
        if s.waiting.len() >= MAX_PENDING {
            return Err(StoreError::Busy);
        }
        s.waiting.push(AccessRead {
            username: user.to_owned(),
            reader: reader.to_owned(),
            endpoint: endpoint.to_owned(),
            day,
        });
        s.seen.insert(key);
        Ok(())
    }

    /// Writes the reads waiting, in one transaction; on failure they wait
    /// for the next flush.
    pub async fn flush_reads(&self) -> Result<(), StoreError> {
        let turn = Arc::clone(&self.reads.flushing).lock_owned().await;
        self.write_waiting(Some(turn)).await
    }

    /// Writes the reads waiting, in a task of its own that holds `turn`: a
    /// caller that goes away (a client gone, a stop) does not take the
    /// reads with it, and the next flush waits for this one.
    async fn write_waiting(&self, turn: Option<OwnedMutexGuard<()>>) -> Result<(), StoreError> {
        let mut taken = std::mem::take(&mut self.reads.lock().waiting);
        if taken.is_empty() {
            return Ok(());
        }
        // In key order, so that each page of the record's index is changed
        // once per write.
        taken.sort_unstable_by(|a, b| {
            (&a.username, a.day, &a.reader, &a.endpoint).cmp(&(
                &b.username,
                b.day,
                &b.reader,
                &b.endpoint,
            ))
        });
        let (reads, store) = (Arc::clone(&self.reads), self.store.clone());
        let write = tokio::spawn(async move {
            let _turn = turn;
            let taken = Arc::new(taken);
            let written = store.record_access(Arc::clone(&taken)).await;
            if written.is_err() {
                let taken = Arc::try_unwrap(taken).unwrap_or_else(|t| (*t).clone());
                let mut s = reads.lock();
                s.waiting.extend(taken);
                // A read that could not be written is not remembered either.
                s.seen = HashSet::default();
            }
            written
        });
        write
            .await
            .map_err(|e| StoreError::Other(format!("writing recorded reads: {e}")))?
    }

    /// Erases the user's record of reads: the reads waiting are written
    /// first and no other write of them runs until the erasure is done;
    /// reads of the user recorded meanwhile are dropped with the rest, and
    /// the remembered reads forgotten (their rows may be gone). Then
    /// `erase` runs, still before any further write of reads.
    pub(super) async fn forget_reads<T>(
        &self,
        user: &str,
        erase: impl AsyncFnOnce() -> Result<T, StoreError>,
    ) -> Result<(u64, T), StoreError> {
        let turn = Arc::clone(&self.reads.flushing).lock_owned().await;
        self.write_waiting(None).await?;
        let forgotten = self.store.forget_access(user.to_owned()).await?;
        {
            let mut s = self.reads.lock();
            s.waiting.retain(|r| r.username != user);
            s.seen = HashSet::default();
        }
        let erased = erase().await?;
        drop(turn);
        Ok((forgotten, erased))
    }

    pub async fn get_user_access(
        &self,
        req: GetUserAccessRequest,
        now: i64,
    ) -> Result<GetUserAccessResponse, ApiError> {
        check_username(&req.username)?;
        check_days("max_days", req.max_days)?;
        self.flush_reads().await?;
        let since = if req.max_days == 0 {
            i64::MIN
        } else {
            (now - req.max_days * DAY).div_euclid(DAY) * DAY
        };
        let rows = self.store.user_access(req.username, since).await?;
        Ok(GetUserAccessResponse {
            result: rows.into_iter().map(entry).collect(),
        })
    }

    /// The summary's fact on the latest recorded read, if any.
    pub(super) async fn access_fact(&self, user: &str) -> Result<Option<SummaryFact>, ApiError> {
        self.flush_reads().await?;
        let rows = self.store.user_access(user.to_owned(), i64::MIN).await?;
        Ok(rows.into_iter().next().map(|a| SummaryFact {
            kind: "access".into(),
            timestamp: Some(Timestamp::from_unix(a.day)),
            text: text::access_sentence(&a.reader, a.day),
            count: None,
            details: None,
        }))
    }

    /// Everything stored about the user, device IDs and computers opened.
    pub async fn export_user(
        &self,
        req: ExportUserRequest,
    ) -> Result<ExportUserResponse, ApiError> {
        check_username(&req.username)?;
        self.flush_reads().await?;
        let user = req.username;
        let store = &self.store;
        let privacy = &self.privacy;
        let logs = store
            .user_logs(user.clone(), i64::MIN, i64::MAX)
            .await?
            .into_iter()
            .map(|r| self.log_entry(r))
            .collect();
        let devices = self.get_user_devices(GetUserDevicesRequest {
            username: user.clone(),
        });
        let devices = devices.await?.devices;
        let countries = store
            .user_countries(user.clone())
            .await?
            .into_iter()
            .map(|c| CountryEntry {
                country: c.zone,
                first_seen: Timestamp::from_unix(c.first_seen),
                last_seen: Timestamp::from_unix(c.last_seen),
            })
            .collect();
        let last_logins = self.get_last_login(GetLastLoginRequest {
            username: user.clone(),
            service: String::new(),
        });
        let last_logins = last_logins.await?.results;
        let alerts = store
            .user_alerts(user.clone(), i64::MIN, i64::MAX)
            .await?
            .into_iter()
            .map(|(a, d)| super::alerts::alert_info(a, d))
            .collect();
        let time_spent = store
            .time_spent(user.clone(), i64::MIN, i64::MAX)
            .await?
            .into_iter()
            .filter(|t| t.username == user)
            .map(|t| TimeSpentEntry {
                computer: privacy
                    .key
                    .open_id(&user, &t.sealed_device)
                    .unwrap_or_default(),
                day: Timestamp::from_unix(t.day),
                seconds: t.seconds,
                first_start: Timestamp::from_unix(t.first_start),
                last_end: Timestamp::from_unix(t.last_end),
            })
            .collect();
        let access = store
            .user_access(user.clone(), i64::MIN)
            .await?
            .into_iter()
            .map(entry)
            .collect();
        Ok(ExportUserResponse {
            username: user,
            logs,
            devices,
            countries,
            last_logins,
            alerts,
            time_spent,
            access,
        })
    }
}
