//! A whole database as JSON Lines of the wire types, for backups and moves
//! between databases (and between backends).
//!
//! One record per line, tagged by `kind`:
//!
//! ```text
//! {"kind":"log","log":LogEntry}
//! {"kind":"device","username":"...","device":MetaDeviceInfo}
//! {"kind":"last_login","last_login":LastLoginEntry}
//! {"kind":"agent_key","agent_key":AgentKeyLine}
//! {"kind":"time_spent","time_spent":TimeSpentLine}
//! ```
//!
//! An export opens device IDs with the database's key (so it contains them,
//! like the API answers do, and must be kept as carefully as the key), and an
//! import seals them again under the target database's key. An import goes
//! through the target's privacy transforms and validation, runs in one
//! transaction, and only into an empty database: any bad line is an error
//! naming the line, and nothing is written.

use std::io::{BufRead, Write};

use serde::{Deserialize, Serialize};

use crate::config::DbConfig;
use crate::model::{self, Counts, DeviceRow, LogRecord};
use crate::privacy::Privacy;
use crate::service::{check_log_type, check_username};
use crate::store::{self, BulkError, StoreError};
use crate::wire::{DeviceInfo, LastLoginEntry, LogEntry, MetaDeviceInfo, Timestamp};

/// One line of an export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Record {
    Log {
        log: LogEntry,
    },
    Device {
        username: String,
        device: MetaDeviceInfo,
    },
    LastLogin {
        last_login: LastLoginEntry,
    },
    AgentKey {
        agent_key: AgentKeyLine,
    },
    TimeSpent {
        time_spent: TimeSpentLine,
    },
    AccessRead {
        access_read: AccessReadLine,
    },
}

/// A recorded read of a user's data: the reader's CN, the endpoint and the
/// day (access transparency).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessReadLine {
    pub username: String,
    pub reader: String,
    pub endpoint: String,
    /// The day's first second (UTC).
    pub day: Timestamp,
}

/// A Windows agents' API key: the SHA-256 it is known by, never the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentKeyLine {
    pub id: i64,
    pub tenant: String,
    pub site: String,
    /// 64 hex digits.
    pub key_sha256: String,
    pub created: Timestamp,
    pub disabled: bool,
}

/// Time a user spent at a computer (in clear, as device IDs are) on a day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeSpentLine {
    pub username: String,
    pub computer: String,
    /// The day's first second (UTC).
    pub day: Timestamp,
    pub seconds: i64,
    pub first_start: Timestamp,
    pub last_end: Timestamp,
}

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("line {line}: {message}")]
    Line { line: usize, message: String },
    #[error("the database is not empty: import only into a new or empty database")]
    NotEmpty,
    #[error("{0} device IDs do not open under this key: is it the key of this database (secrets.device_key_file)?")]
    WrongKey(u64),
    #[error("no database at {0}")]
    Missing(String),
    #[error("{0}")]
    Unsupported(String),
}

impl From<BulkError> for TransferError {
    fn from(e: BulkError) -> Self {
        match e {
            BulkError::Store(e) => TransferError::Store(e),
            BulkError::Io(e) => TransferError::Io(e),
            BulkError::Missing(p) => TransferError::Missing(p),
            BulkError::NotEmpty => TransferError::NotEmpty,
            other => TransferError::Unsupported(other.to_string()),
        }
    }
}

fn line(w: &mut dyn Write, rec: &Record) -> std::io::Result<()> {
    serde_json::to_writer(&mut *w, rec)?;
    w.write_all(b"\n")
}

fn device_info(id: String, d: model::DeviceRecord) -> DeviceInfo {
    DeviceInfo {
        id,
        remote_addr: String::new(),
        remote_zone: d.zone,
        user_agent: d.user_agent,
        browser: d.browser,
        os: d.os,
        mobile: d.mobile,
    }
}

/// Writes every log entry, device and last login, from one read snapshot,
/// in an order that depends only on the data (not on row IDs or the key).
pub fn export(
    db: &DbConfig,
    privacy: &Privacy,
    out: &mut dyn Write,
) -> Result<Counts, TransferError> {
    let mut unopened = 0u64;
    let mut open = |user: &str, sealed: &[u8]| -> String {
        privacy.key.open_id(user, sealed).unwrap_or_else(|| {
            unopened += 1;
            String::new()
        })
    };
    // A user's devices are sorted by their clear ID, which is the same under
    // any key, so two exports of the same data are identical.
    let mut pending: Vec<(String, MetaDeviceInfo)> = Vec::new();
    let flush =
        |pending: &mut Vec<(String, MetaDeviceInfo)>, out: &mut dyn Write| -> std::io::Result<()> {
            pending.sort_by(|(_, a), (_, b)| {
                let id = |m: &MetaDeviceInfo| m.device_info.as_ref().map(|d| d.id.clone());
                (a.first_seen, a.last_seen, id(a)).cmp(&(b.first_seen, b.last_seen, id(b)))
            });
            for (username, device) in pending.drain(..) {
                line(out, &Record::Device { username, device })?;
            }
            Ok(())
        };
    // Time spent is sorted by its clear computer name, for the same reason.
    let mut spent: Vec<TimeSpentLine> = Vec::new();
    // The record of reads comes last, after time spent.
    let mut reads: Vec<AccessReadLine> = Vec::new();
    let counts = store::export(db, &mut |rec| {
        if !matches!(rec, model::Record::Device { .. }) {
            flush(&mut pending, out)?;
        }
        match rec {
            model::Record::Log(l) => {
                let device_info = l.device.map(|d| {
                    let id = open(&l.username, &d.sealed_id);
                    device_info(id, d)
                });
                let log = LogEntry {
                    timestamp: Timestamp::from_unix(l.ts),
                    log_type: l.log_type,
                    message: l.message,
                    service: l.service,
                    login_method: l.login_method,
                    login_authenticator_id: l.login_authenticator_id,
                    device_info,
                    username: l.username,
                };
                line(out, &Record::Log { log })?;
            }
            model::Record::Device { username, row } => {
                if pending.first().is_some_and(|(u, _)| *u != username) {
                    flush(&mut pending, out)?;
                }
                let id = open(&username, &row.device.sealed_id);
                let device = MetaDeviceInfo {
                    device_info: Some(device_info(id, row.device)),
                    first_seen: Timestamp::from_unix(row.first_seen),
                    last_seen: Timestamp::from_unix(row.last_seen),
                    num_logins: row.num_logins,
                };
                pending.push((username, device));
            }
            model::Record::LastLogin {
                username,
                service,
                ts,
            } => {
                let last_login = LastLoginEntry {
                    username,
                    service,
                    timestamp: Timestamp::from_unix(ts),
                };
                line(out, &Record::LastLogin { last_login })?;
            }
            model::Record::AgentKey { key, key_hash } => {
                let agent_key = AgentKeyLine {
                    id: key.id,
                    tenant: key.tenant,
                    site: key.site,
                    key_sha256: crate::crypto::hex(&key_hash),
                    created: Timestamp::from_unix(key.created),
                    disabled: key.disabled,
                };
                line(out, &Record::AgentKey { agent_key })?;
            }
            model::Record::TimeSpent(t) => {
                let computer = open(&t.username, &t.sealed_device);
                spent.push(TimeSpentLine {
                    username: t.username,
                    computer,
                    day: Timestamp::from_unix(t.day),
                    seconds: t.seconds,
                    first_start: Timestamp::from_unix(t.first_start),
                    last_end: Timestamp::from_unix(t.last_end),
                });
            }
            model::Record::AccessRead(a) => reads.push(AccessReadLine {
                username: a.username,
                reader: a.reader,
                endpoint: a.endpoint,
                day: Timestamp::from_unix(a.day),
            }),
        }
        Ok(())
    })?;
    flush(&mut pending, out)?;
    spent.sort_by(|a, b| (&a.username, a.day, &a.computer).cmp(&(&b.username, b.day, &b.computer)));
    for time_spent in spent {
        line(out, &Record::TimeSpent { time_spent })?;
    }
    for access_read in reads {
        line(out, &Record::AccessRead { access_read })?;
    }
    out.flush()?;
    if unopened > 0 {
        return Err(TransferError::WrongKey(unopened));
    }
    Ok(counts)
}

fn check_time(t: &Timestamp, field: &str) -> Result<i64, String> {
    if t.is_zero() {
        return Err(format!("{field} is required"));
    }
    Ok(t.unix())
}

/// Validates one line's record and reduces it to what is stored, under the
/// target's privacy settings and key.
fn stored(privacy: &Privacy, rec: Record) -> Result<model::Record, String> {
    let user = |name: &str| check_username(name).map_err(|e| e.to_string());
    Ok(match rec {
        Record::Log { log } => {
            user(&log.username)?;
            check_log_type(&log.log_type).map_err(|e| e.to_string())?;
            let ts = privacy.quantize_log(check_time(&log.timestamp, "timestamp")?);
            model::Record::Log(LogRecord {
                ts,
                device: log
                    .device_info
                    .as_ref()
                    .map(|d| privacy.reduce_device(&log.username, d)),
                username: log.username,
                log_type: log.log_type,
                message: log.message,
                service: log.service,
                login_method: log.login_method,
                login_authenticator_id: log.login_authenticator_id,
            })
        }
        Record::Device { username, device } => {
            user(&username)?;
            let info = device
                .device_info
                .as_ref()
                .ok_or("device.device_info is required")?;
            if info.id.is_empty() {
                return Err("device.device_info.id is required".into());
            }
            let first = privacy.quantize_log(check_time(&device.first_seen, "first_seen")?);
            let last = privacy.quantize_log(check_time(&device.last_seen, "last_seen")?);
            if first > last {
                return Err("first_seen is after last_seen".into());
            }
            if device.num_logins < 0 {
                return Err("num_logins is negative".into());
            }
            model::Record::Device {
                row: DeviceRow {
                    device: privacy.reduce_device(&username, info),
                    first_seen: first,
                    last_seen: last,
                    num_logins: device.num_logins,
                },
                username,
            }
        }
        Record::LastLogin { last_login: l } => {
            user(&l.username)?;
            if l.service.is_empty() {
                return Err("service is required".into());
            }
            model::Record::LastLogin {
                ts: privacy.quantize_last_login(check_time(&l.timestamp, "timestamp")?),
                username: l.username,
                service: l.service,
            }
        }
        Record::AgentKey { agent_key: k } => {
            if k.id <= 0 {
                return Err("agent_key.id must be positive".into());
            }
            if !crate::config::agents::valid_tenant(&k.tenant) {
                return Err("agent_key.tenant is not a tenant name".into());
            }
            if k.site.is_empty() {
                return Err("agent_key.site is required".into());
            }
            let key_hash = crate::crypto::unhex32(&k.key_sha256)
                .ok_or("agent_key.key_sha256 must be 64 hex digits")?
                .to_vec();
            model::Record::AgentKey {
                key: model::AgentKey {
                    id: k.id,
                    tenant: k.tenant,
                    site: k.site,
                    created: crate::clock::quantize(check_time(&k.created, "created")?, 86_400),
                    disabled: k.disabled,
                },
                key_hash,
            }
        }
        Record::TimeSpent { time_spent: t } => {
            user(&t.username)?;
            if t.computer.is_empty() {
                return Err("time_spent.computer is required".into());
            }
            let g = privacy.config.session_granularity.as_secs() as i64;
            let day = check_time(&t.day, "day")?;
            let floor = |v: i64| v - v.rem_euclid(g);
            if day.rem_euclid(86_400) != 0 {
                return Err("time_spent.day must be a day's first second".into());
            }
            if !(0..=86_400 * 2).contains(&t.seconds) {
                return Err("time_spent.seconds is out of range".into());
            }
            model::Record::TimeSpent(model::TimeSpentRow {
                sealed_device: privacy.key.seal_id(&t.username, &t.computer),
                username: t.username,
                day,
                seconds: t.seconds - t.seconds.rem_euclid(g),
                first_start: floor(check_time(&t.first_start, "first_start")?),
                last_end: floor(check_time(&t.last_end, "last_end")?),
            })
        }
        Record::AccessRead { access_read: a } => {
            user(&a.username)?;
            for (field, v) in [("reader", &a.reader), ("endpoint", &a.endpoint)] {
                if v.is_empty() || v.len() > 256 || v.chars().any(char::is_control) {
                    return Err(format!(
                        "access_read.{field}: 1 to 256 bytes, no control characters"
                    ));
                }
            }
            let day = check_time(&a.day, "day")?;
            if day.rem_euclid(86_400) != 0 {
                return Err("access_read.day must be a day's first second".into());
            }
            model::Record::AccessRead(model::AccessRead {
                username: a.username,
                reader: a.reader,
                endpoint: a.endpoint,
                day,
            })
        }
    })
}

/// Reads an export into an empty database, sealing device IDs under
/// `privacy`'s key, in one transaction: all of it or, on any error, nothing.
pub fn import(
    db: &DbConfig,
    privacy: &Privacy,
    input: &mut dyn BufRead,
) -> Result<Counts, TransferError> {
    let mut buf = String::new();
    let mut n = 0;
    let mut failed: Option<TransferError> = None;
    let mut next = || -> Option<Result<model::Record, BulkError>> {
        let mut stop = |e: TransferError| {
            failed = Some(e);
            Some(Err(BulkError::Stopped))
        };
        loop {
            buf.clear();
            n += 1;
            let read = match input.read_line(&mut buf) {
                Ok(read) => read,
                Err(e) => {
                    return stop(TransferError::Line {
                        line: n,
                        message: e.to_string(),
                    })
                }
            };
            if read == 0 {
                return None;
            }
            if buf.trim().is_empty() {
                continue;
            }
            let rec = serde_json::from_str::<Record>(&buf)
                .map_err(|e| format!("invalid record: {e}"))
                .and_then(|rec| stored(privacy, rec));
            return match rec {
                Ok(rec) => Some(Ok(rec)),
                Err(message) => stop(TransferError::Line { line: n, message }),
            };
        }
    };
    let result = store::import(db, &mut next);
    match result {
        Ok(counts) => Ok(counts),
        Err(BulkError::Stopped) => {
            Err(failed.unwrap_or(TransferError::Unsupported("the import stopped".into())))
        }
        Err(BulkError::Duplicate) => Err(TransferError::Line {
            line: n,
            message: "duplicate record".into(),
        }),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PrivacyConfig;
    use crate::crypto::DeviceKey;

    fn privacy(seed: u8) -> Privacy {
        Privacy::new(
            PrivacyConfig::default(),
            DeviceKey::from_bytes(&[seed; 32]),
            None,
        )
    }

    fn db(dir: &tempfile::TempDir) -> DbConfig {
        DbConfig {
            path: dir.path().join("t.db"),
            readers: 1,
            max_batch: 64,
            synchronous_full: false,
            device_index: false,
            postgres: None,
        }
    }

    fn is_empty(db: &DbConfig) -> bool {
        store::export(db, &mut |_| Ok(())).unwrap() == Counts::default()
    }

    const SAMPLE: &str = r#"{"kind":"log","log":{"timestamp":"2026-01-02T10:00:00Z","username":"bob","log_type":"login","service":"mail","device_info":{"id":"dev-1","remote_addr":"","remote_zone":"IT","user_agent":"","browser":"Firefox","os":"Linux","mobile":false}}}
{"kind":"log","log":{"timestamp":"2026-01-02T11:00:00Z","username":"bob","log_type":"logout"}}
{"kind":"device","username":"bob","device":{"device_info":{"id":"dev-1","remote_addr":"","remote_zone":"IT","user_agent":"","browser":"Firefox","os":"Linux","mobile":false},"first_seen":"2026-01-02T10:00:00Z","last_seen":"2026-01-02T10:00:00Z","num_logins":1}}
{"kind":"last_login","last_login":{"timestamp":"2026-01-02T00:00:00Z","username":"bob","service":"mail"}}
{"kind":"agent_key","agent_key":{"id":3,"tenant":"acme","site":"hq","key_sha256":"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08","created":"2026-01-02T00:00:00Z","disabled":false}}
{"kind":"time_spent","time_spent":{"username":"acme/bob","computer":"PC-7","day":"2026-01-02T00:00:00Z","seconds":3600,"first_start":"2026-01-02T09:00:00Z","last_end":"2026-01-02T10:00:00Z"}}
"#;

    #[test]
    fn import_then_export_reproduces_the_input_under_another_key() {
        let dir = tempfile::tempdir().unwrap();
        let c = db(&dir);
        let counts = import(&c, &privacy(1), &mut SAMPLE.as_bytes()).unwrap();
        assert_eq!(
            counts,
            Counts {
                logs: 2,
                devices: 1,
                last_logins: 1,
                agent_keys: 1,
                time_spent: 1,
                access_reads: 0,
            }
        );
        let file = std::fs::read(&c.path).unwrap();
        assert!(!file.windows(5).any(|w| w == b"dev-1"));
        let mut out = Vec::new();
        export(&c, &privacy(1), &mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), SAMPLE);
        // Another key cannot open the IDs (two devices, one computer), and says so.
        assert!(matches!(
            export(&c, &privacy(2), &mut Vec::new()),
            Err(TransferError::WrongKey(3))
        ));
    }

    #[test]
    fn a_bad_line_names_the_line_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let c = db(&dir);
        let bad = format!("{SAMPLE}{{\"kind\":\"log\",\"log\":{{\"username\":\"\"}}}}\n");
        let err = import(&c, &privacy(1), &mut bad.as_bytes()).unwrap_err();
        assert!(err.to_string().starts_with("line 7: "), "{err}");
        assert!(is_empty(&c));
        let dup = format!("{SAMPLE}{}", SAMPLE.lines().nth(3).unwrap());
        let err = import(&c, &privacy(1), &mut dup.as_bytes()).unwrap_err();
        assert_eq!(err.to_string(), "line 7: duplicate record");
        let key = format!("{SAMPLE}{}", SAMPLE.lines().nth(4).unwrap());
        let err = import(&c, &privacy(1), &mut key.as_bytes()).unwrap_err();
        assert_eq!(err.to_string(), "line 7: duplicate record");
        assert!(is_empty(&c));
        let unknown = "{\"kind\":\"alert\"}\n";
        let err = import(&c, &privacy(1), &mut unknown.as_bytes()).unwrap_err();
        assert!(
            err.to_string().starts_with("line 1: invalid record"),
            "{err}"
        );
        assert!(is_empty(&c));
    }

    #[test]
    fn import_refuses_a_database_with_data() {
        let dir = tempfile::tempdir().unwrap();
        let c = db(&dir);
        import(&c, &privacy(1), &mut SAMPLE.as_bytes()).unwrap();
        assert!(matches!(
            import(&c, &privacy(1), &mut SAMPLE.as_bytes()),
            Err(TransferError::NotEmpty)
        ));
    }
}
