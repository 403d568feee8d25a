//! The API's behaviour, independent of HTTP: validate a decoded request, apply
//! the privacy transforms, call the store, build the answer. `now` (Unix
//! seconds) is always passed in.
//!
//! - this file: the Go-compatible core (logs, devices, last logins, unused
//!   accounts, device cookies, erasure);
//! - [`alerts`]: the monitor's endpoints, a user's alerts and summary;
//! - [`names`]: the characters a new identifier may not hold;
//! - [`policy`]: Dovecot's auth policy protocol, and a login's risk.

pub mod access;
pub mod agents;
pub mod alerts;
pub mod names;
pub mod policy;

use std::borrow::Cow;
use std::sync::Arc;

use crate::config::{HttpConfig, RetentionConfig};
use crate::model::LogRecord;
use crate::monitor::{self, AlertsConfig};
use crate::privacy::{Privacy, MAX_USER_AGENT};
use crate::store::{Detections, Store, StoreError};
use crate::wire::*;

/// Largest `limit` of `get_user_logs`; 0 asks for [`DEFAULT_LOG_LIMIT`].
pub const MAX_LOG_LIMIT: i64 = 1000;
pub const DEFAULT_LOG_LIMIT: i64 = 100;
/// Largest `max_days` / `days` accepted (100 years).
pub const MAX_DAYS: i64 = 36_500;
/// How far ahead of the server clock a timestamp may be.
pub const MAX_FUTURE_SECS: i64 = 86_400;
pub const MAX_USERNAME: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is wrong; the message is safe to show the client.
    #[error("{0}")]
    Invalid(String),
    /// More names than one request may carry.
    #[error("{0}")]
    TooLarge(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn invalid(msg: impl Into<String>) -> ApiError {
    ApiError::Invalid(msg.into())
}

/// Checks one string field: length, no NUL, and (for identifiers) no control
/// characters at all.
fn check_text(field: &str, v: &str, max: usize, identifier: bool) -> Result<(), ApiError> {
    if v.len() > max {
        return Err(invalid(format!("{field} is longer than {max} bytes")));
    }
    let bad = if identifier {
        v.chars().any(char::is_control)
    } else {
        v.contains('\0')
    };
    if bad {
        return Err(invalid(format!("{field} contains control characters")));
    }
    Ok(())
}

/// A list limit: 0 means 100; at most 1000.
fn check_limit(limit: i64) -> Result<i64, ApiError> {
    match limit {
        0 => Ok(100),
        1..=1000 => Ok(limit),
        _ => Err(invalid("limit must be between 0 and 1000")),
    }
}

pub fn check_username(v: &str) -> Result<(), ApiError> {
    if v.is_empty() {
        return Err(invalid("username is required"));
    }
    check_text("username", v, MAX_USERNAME, true)
}

pub fn check_log_type(v: &str) -> Result<(), ApiError> {
    if v.is_empty() {
        return Err(invalid("log_type is required"));
    }
    if v.len() > 64
        || !v
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(invalid("log_type must be lowercase letters, digits and _"));
    }
    Ok(())
}

fn check_device(d: &DeviceInfo) -> Result<(), ApiError> {
    check_text("device_info.id", &d.id, 256, true)?;
    check_text("device_info.remote_addr", &d.remote_addr, 64, true)?;
    check_text("device_info.remote_zone", &d.remote_zone, 64, true)?;
    // Longer agents are cut, not refused; only absurd ones are.
    check_text(
        "device_info.user_agent",
        &d.user_agent,
        16 * MAX_USER_AGENT,
        true,
    )?;
    check_text("device_info.browser", &d.browser, 128, true)?;
    check_text("device_info.os", &d.os, 128, true)
}

pub(crate) fn check_days(field: &str, v: i64) -> Result<(), ApiError> {
    if !(0..=MAX_DAYS).contains(&v) {
        return Err(invalid(format!("{field} must be between 0 and {MAX_DAYS}")));
    }
    Ok(())
}

pub struct Service {
    pub store: Store,
    pub privacy: Arc<Privacy>,
    pub retention: RetentionConfig,
    pub max_bulk_names: usize,
    pub alerts: Arc<AlertsConfig>,
    /// The sinks each new alert is queued for.
    pub sinks: Arc<Vec<&'static str>>,
    /// Wakes the alert dispatcher when an alert is queued.
    pub wake: Arc<tokio::sync::Notify>,
    /// Windows agents: the retry window and the per-user time opt-ins.
    pub agents: crate::config::AgentsConfig,
    /// The auth policy protocol's settings, and its throttling state.
    pub policy: crate::config::PolicyConfig,
    pub throttle: Arc<monitor::throttle::Throttle>,
    /// Whose reads of a user's data are recorded, and the reads recorded today.
    pub transparency: crate::config::TransparencyConfig,
    /// Reads answered and not yet written, and those recorded today.
    pub reads: Arc<access::Reads>,
}

impl Service {
    pub fn new(
        store: Store,
        privacy: Arc<Privacy>,
        retention: RetentionConfig,
        http: &HttpConfig,
        alerts: AlertsConfig,
    ) -> Service {
        Service {
            store,
            privacy,
            retention,
            max_bulk_names: http.max_bulk_names,
            sinks: Arc::new(alerts.sinks()),
            alerts: Arc::new(alerts),
            wake: Arc::new(tokio::sync::Notify::new()),
            agents: crate::config::AgentsConfig::default(),
            policy: crate::config::PolicyConfig::default(),
            throttle: Arc::new(monitor::throttle::Throttle::new(
                monitor::throttle::Limits::of(&crate::config::PolicyConfig::default()),
                crate::clock::now_unix(),
            )),
            transparency: Default::default(),
            reads: Default::default(),
        }
    }

    /// Takes the `policy:` settings, with a throttle made for them.
    pub fn with_policy(mut self, cfg: crate::config::PolicyConfig, now: i64) -> Service {
        self.throttle = Arc::new(monitor::throttle::Throttle::new(
            monitor::throttle::Limits::of(&cfg),
            now,
        ));
        self.policy = cfg;
        self
    }

    fn check_log_time(&self, t: &Timestamp, now: i64) -> Result<i64, ApiError> {
        if t.is_zero() {
            return Err(invalid("timestamp is required"));
        }
        let ts = t.unix();
        if ts > now + MAX_FUTURE_SECS {
            return Err(invalid("timestamp is in the future"));
        }
        if ts < now - self.retention.user_logs.as_secs() as i64 {
            return Err(invalid("timestamp is older than the retention window"));
        }
        Ok(ts)
    }

    /// Validates and reduces a log entry to what is stored.
    pub fn log_record(&self, e: &LogEntry, now: i64) -> Result<LogRecord, ApiError> {
        check_username(&e.username)?;
        names::check_shown("username", &e.username)?;
        names::check_shown("service", &e.service)?;
        if let Some(d) = &e.device_info {
            names::check_shown("device_info.id", &d.id)?;
        }
        let ts = self.check_log_time(&e.timestamp, now)?;
        check_log_type(&e.log_type)?;
        check_text("message", &e.message, 4096, false)?;
        check_text("service", &e.service, 128, true)?;
        check_text("login_method", &e.login_method, 128, true)?;
        check_text(
            "login_authenticator_id",
            &e.login_authenticator_id,
            256,
            true,
        )?;
        if let Some(d) = &e.device_info {
            check_device(d)?;
        }
        Ok(LogRecord {
            username: e.username.clone(),
            ts: self.privacy.quantize_log(ts),
            log_type: e.log_type.clone(),
            message: e.message.clone(),
            service: e.service.clone(),
            login_method: e.login_method.clone(),
            login_authenticator_id: e.login_authenticator_id.clone(),
            device: e
                .device_info
                .as_ref()
                .map(|d| self.privacy.reduce_device(&e.username, d)),
        })
    }

    pub async fn add_log(&self, req: AddLogRequest, now: i64) -> Result<EmptyResponse, ApiError> {
        let entry = req.log.ok_or_else(|| invalid("log is required"))?;
        let rec = self.log_record(&entry, now)?;
        let cfg = self.alerts.clone();
        // The rules run in the transaction that stores the entry: an
        // acknowledged event always has its alerts queued.
        let detect = Detections {
            burst_window: cfg.burst_window.as_secs() as i64,
            sinks: self.sinks.clone(),
            rules: Box::new(move |history, event| monitor::evaluate(&cfg, history, event, now)),
        };
        let raised = self.store.record_log(rec, Some(detect)).await?;
        if raised > 0 {
            self.wake.notify_one();
        }
        Ok(EmptyResponse {})
    }

    /// The newest entries across users, for administrators.
    pub async fn get_events(
        &self,
        req: GetEventsRequest,
        now: i64,
    ) -> Result<GetEventsResponse, ApiError> {
        let to = if req.to.is_zero() {
            now + 1
        } else {
            req.to.unix()
        };
        let from = if req.from.is_zero() {
            to - 30 * 86_400
        } else {
            req.from.unix()
        };
        if from >= to {
            return Err(invalid("from must be before to"));
        }
        if !req.username.is_empty() {
            check_username(&req.username)?;
        }
        if !req.tenant.is_empty() && !crate::config::agents::valid_tenant(&req.tenant) {
            return Err(invalid("tenant: 1 to 64 letters, digits, '-', '_' or '.'"));
        }
        check_text("log_type", &req.log_type, 64, true)?;
        let limit = check_limit(req.limit)?;
        let filter = crate::store::EventFilter {
            from,
            to,
            username: req.username,
            user_prefix: if req.tenant.is_empty() {
                String::new()
            } else {
                format!("{}/", req.tenant)
            },
            log_type: req.log_type,
            limit,
        };
        let rows = self.store.recent_logs(filter).await?;
        Ok(GetEventsResponse {
            result: rows.into_iter().map(|r| self.log_entry(r)).collect(),
        })
    }

    /// A stored entry as the API shows it, its device opened for its user.
    fn log_entry(&self, r: crate::model::LogRecord) -> LogEntry {
        LogEntry {
            timestamp: Timestamp::from_unix(r.ts),
            device_info: r
                .device
                .map(|d| self.privacy.restore_device(&r.username, d)),
            username: r.username,
            log_type: r.log_type,
            message: r.message,
            service: r.service,
            login_method: r.login_method,
            login_authenticator_id: r.login_authenticator_id,
        }
    }

    /// The user's log, as the JSON body of the answer.
    pub async fn get_user_logs(
        &self,
        req: GetUserLogsRequest,
        now: i64,
    ) -> Result<Vec<u8>, ApiError> {
        check_username(&req.username)?;
        check_days("max_days", req.max_days)?;
        if !(0..=MAX_LOG_LIMIT).contains(&req.limit) {
            return Err(invalid(format!(
                "limit must be between 0 and {MAX_LOG_LIMIT}"
            )));
        }
        let limit = if req.limit == 0 {
            DEFAULT_LOG_LIMIT
        } else {
            req.limit
        };
        let since = if req.max_days == 0 {
            i64::MIN
        } else {
            now - req.max_days * 86_400
        };
        let user = req.username;
        let privacy = self.privacy.clone();
        // Encoded on the reader, straight from the rows: no owned copy of
        // each entry is built only to be serialized and dropped.
        let name = user.clone();
        // Ten entries, a typical answer, take about 3 KB.
        let mut out = Vec::with_capacity(4096);
        out.extend_from_slice(br#"{"result":["#);
        let mut opened = OpenedIds::default();
        let mut out = self
            .store
            .fold_logs(user, since, None, limit, out, move |out, l| {
                if out.len() > br#"{"result":["#.len() {
                    out.push(b',');
                }
                let user = &name;
                let id = l
                    .device
                    .as_ref()
                    .map(|d| opened.open(&privacy, user, d.sealed_id));
                let entry = LogEntryRef {
                    timestamp: Timestamp::from_unix(l.ts),
                    username: user,
                    log_type: l.log_type,
                    message: l.message,
                    service: l.service,
                    login_method: l.login_method,
                    login_authenticator_id: l.login_authenticator_id,
                    device_info: l.device.as_ref().map(|d| DeviceInfoRef {
                        id: id.as_deref().unwrap_or_default(),
                        remote_addr: "",
                        remote_zone: d.zone,
                        user_agent: d.user_agent,
                        browser: d.browser,
                        os: d.os,
                        mobile: d.mobile,
                    }),
                };
                entry.write_json(out);
                Ok(())
            })
            .await?;
        out.extend_from_slice(b"]}");
        Ok(out)
    }

    pub async fn get_user_devices(
        &self,
        req: GetUserDevicesRequest,
    ) -> Result<GetUserDevicesResponse, ApiError> {
        check_username(&req.username)?;
        let user = req.username;
        let privacy = self.privacy.clone();
        let devices = self
            .store
            .user_devices(user.clone())
            .await?
            .into_iter()
            .map(|r| MetaDeviceInfo {
                device_info: Some(privacy.restore_device(&user, r.device)),
                first_seen: Timestamp::from_unix(r.first_seen),
                last_seen: Timestamp::from_unix(r.last_seen),
                num_logins: r.num_logins,
            })
            .collect();
        Ok(GetUserDevicesResponse { devices })
    }

    pub async fn check_device(
        &self,
        req: CheckDeviceRequest,
    ) -> Result<CheckDeviceResponse, ApiError> {
        check_username(&req.username)?;
        let d = req
            .device_info
            .ok_or_else(|| invalid("device_info is required"))?;
        check_device(&d)?;
        if d.id.is_empty() {
            return Err(invalid("device_info.id is required"));
        }
        let sealed = self.privacy.key.seal_id(&req.username, &d.id);
        let seen = self.store.device_known(req.username, sealed).await?;
        Ok(CheckDeviceResponse { seen })
    }

    pub async fn set_last_login(
        &self,
        req: SetLastLoginRequest,
        now: i64,
    ) -> Result<EmptyResponse, ApiError> {
        let e = req
            .last_login
            .ok_or_else(|| invalid("last_login is required"))?;
        check_username(&e.username)?;
        names::check_shown("username", &e.username)?;
        if e.service.is_empty() {
            return Err(invalid("service is required"));
        }
        check_text("service", &e.service, 128, true)?;
        names::check_shown("service", &e.service)?;
        if e.timestamp.is_zero() {
            return Err(invalid("timestamp is required"));
        }
        let ts = e.timestamp.unix();
        if ts > now + MAX_FUTURE_SECS {
            return Err(invalid("timestamp is in the future"));
        }
        if ts < 0 {
            return Err(invalid("timestamp is before 1970"));
        }
        let ts = self.privacy.quantize_last_login(ts);
        self.store.set_last_login(e.username, e.service, ts).await?;
        Ok(EmptyResponse {})
    }

    pub async fn get_last_login(
        &self,
        req: GetLastLoginRequest,
    ) -> Result<GetLastLoginResponse, ApiError> {
        check_username(&req.username)?;
        check_text("service", &req.service, 128, true)?;
        let user = req.username;
        let service = (!req.service.is_empty()).then_some(req.service);
        let results = self
            .store
            .last_logins(user.clone(), service)
            .await?
            .into_iter()
            .map(|(service, ts)| LastLoginEntry {
                timestamp: Timestamp::from_unix(ts),
                username: user.clone(),
                service,
            })
            .collect();
        Ok(GetLastLoginResponse { results })
    }

    /// Opens the device cookie or mints a new one, and reduces the device.
    /// A bad cookie is a new device, never an error.
    pub fn identify_device(
        &self,
        req: IdentifyDeviceRequest,
    ) -> Result<IdentifyDeviceResponse, ApiError> {
        check_text("remote_addr", &req.remote_addr, 64, true)?;
        check_text("user_agent", &req.user_agent, 16 * MAX_USER_AGENT, true)?;
        let key = &self.privacy.key;
        let (id, cookie, new) = match key.open_cookie(&req.cookie) {
            Some(id) => (id, req.cookie, false),
            None => {
                let (id, cookie) = key.mint_cookie();
                (id, cookie, true)
            }
        };
        let seen = DeviceInfo {
            remote_addr: req.remote_addr,
            user_agent: req.user_agent,
            ..Default::default()
        };
        Ok(IdentifyDeviceResponse {
            device_info: self.privacy.reduce_info(id, &seen),
            cookie,
            new,
        })
    }

    /// Deletes every row of the user.
    pub async fn forget_user(
        &self,
        req: ForgetUserRequest,
    ) -> Result<ForgetUserResponse, ApiError> {
        check_username(&req.username)?;
        let user = req.username;
        // The reads answered so far are written first, then erased with
        // the user's other rows.
        let (access_reads, d) = self
            .forget_reads(&user, async || self.store.forget_user(user.clone()).await)
            .await?;
        Ok(ForgetUserResponse {
            deleted: DeletedCounts {
                user_logs: d.user_logs,
                devices: d.devices,
                last_logins: d.last_logins,
                alerts: d.alerts,
                access_reads,
            },
        })
    }

    pub async fn get_unused_accounts(
        &self,
        req: GetUnusedAccountsRequest,
        now: i64,
    ) -> Result<GetUnusedAccountsResponse, ApiError> {
        if !(1..=MAX_DAYS).contains(&req.days) {
            return Err(invalid(format!("days must be between 1 and {MAX_DAYS}")));
        }
        let names = req.usernames.unwrap_or_default();
        if names.len() > self.max_bulk_names {
            return Err(ApiError::TooLarge(format!(
                "at most {} usernames per request",
                self.max_bulk_names
            )));
        }
        for n in &names {
            check_username(n)?;
        }
        if names.is_empty() {
            return Ok(GetUnusedAccountsResponse::default());
        }
        // Stored last logins are floored; floor the cutoff the same way so a
        // login inside the window is never counted as outside it.
        let cutoff = self.privacy.quantize_last_login(now - req.days * 86_400);
        let unused = self.store.unused_accounts(names, cutoff).await?;
        Ok(GetUnusedAccountsResponse {
            unused_usernames: unused,
        })
    }
}

/// The device IDs opened for one answer. A user's log comes from a few
/// devices, so each sealed ID is opened once; only the first few are kept,
/// so that a user of many devices costs no more than one open per entry.
#[derive(Default)]
struct OpenedIds {
    kept: Vec<(Vec<u8>, String)>,
}

impl OpenedIds {
    const KEEP: usize = 16;

    fn open(&mut self, privacy: &Privacy, user: &str, sealed: &[u8]) -> Cow<'_, str> {
        if let Some(at) = self.kept.iter().position(|(s, _)| s == sealed) {
            return Cow::Borrowed(&self.kept[at].1);
        }
        let id = privacy.open_device_id(user, sealed);
        if self.kept.len() == Self::KEEP {
            return Cow::Owned(id);
        }
        self.kept.push((sealed.to_vec(), id));
        Cow::Borrowed(&self.kept[self.kept.len() - 1].1)
    }
}
