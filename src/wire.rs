//! Wire types: the JSON bodies of the API, field for field as in the Go
//! `usermetadb` package. No I/O here.
//!
//! Decoding is strict (unknown fields are an error) but as lenient as Go about
//! what may be left out: a missing field takes its zero value, exactly as
//! `encoding/json` would fill it. Encoding follows the Go struct tags, including
//! `omitempty` and fields that are always present.

use chrono::{DateTime, Datelike, SecondsFormat, Timelike, Utc};
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `log_type` values defined by the Go package.
pub const LOG_TYPE_LOGIN: &str = "login";
pub const LOG_TYPE_LOGOUT: &str = "logout";
pub const LOG_TYPE_PASSWORD_RESET: &str = "password_reset";
pub const LOG_TYPE_PASSWORD_CHANGE: &str = "password_change";
pub const LOG_TYPE_OTP_ENABLED: &str = "otp_enabled";
pub const LOG_TYPE_OTP_DISABLED: &str = "otp_disabled";
/// Added by the login monitor: a failed authentication attempt.
pub const LOG_TYPE_LOGIN_FAILURE: &str = "login_failure";
/// Added for Windows agents: the workstation was locked / unlocked.
pub const LOG_TYPE_LOCK: &str = "lock";
pub const LOG_TYPE_UNLOCK: &str = "unlock";

/// A point in time on the wire: RFC 3339 in, RFC 3339 in UTC (`Z`) out, with
/// as many fractional digits as needed (Go's `time.RFC3339Nano`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub DateTime<Utc>);

impl Timestamp {
    pub fn from_unix(secs: i64) -> Self {
        Timestamp(DateTime::from_timestamp(secs, 0).unwrap_or_else(go_zero))
    }

    pub fn unix(&self) -> i64 {
        self.0.timestamp()
    }

    /// Go's zero `time.Time`: what a Go client sends when it never set the field.
    pub fn is_zero(&self) -> bool {
        self.0 == go_zero()
    }
}

fn go_zero() -> DateTime<Utc> {
    DateTime::from_timestamp(-62_135_596_800, 0).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

impl Default for Timestamp {
    fn default() -> Self {
        Timestamp(go_zero())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.whole_seconds() {
            Some(buf) => s.serialize_str(std::str::from_utf8(&buf).map_err(S::Error::custom)?),
            None => s.serialize_str(&self.0.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
        }
    }
}

impl Timestamp {
    /// `YYYY-MM-DDTHH:MM:SSZ` without going through a formatter, for a time
    /// of whole seconds in years 0–9999 (every stored time is one); `None`
    /// otherwise.
    fn whole_seconds(&self) -> Option<[u8; 20]> {
        if self.0.timestamp_subsec_nanos() != 0 {
            return None;
        }
        // Once: each accessor of a `DateTime` converts it to local time anew.
        let t = self.0.naive_utc();
        let year = u32::try_from(t.year()).ok().filter(|y| *y <= 9999)?;
        let mut b = *b"0000-00-00T00:00:00Z";
        // Constant divisors: the compiler multiplies instead of dividing.
        let mut two = |at: usize, v: u32| {
            b[at] = b'0' + (v / 10 % 10) as u8;
            b[at + 1] = b'0' + (v % 10) as u8;
        };
        two(0, year / 100);
        two(2, year % 100);
        two(5, t.month());
        two(8, t.day());
        two(11, t.hour());
        two(14, t.minute());
        two(17, t.second());
        Some(b)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        parse_rfc3339(&s).map_err(serde::de::Error::custom)
    }
}

/// Parses an RFC 3339 timestamp with any offset and up to nine fractional digits.
pub fn parse_rfc3339(s: &str) -> Result<Timestamp, &'static str> {
    // chrono also accepts a space for 'T' and more than nine digits; RFC 3339
    // as Go reads it does not, so check the shape first.
    let b = s.as_bytes();
    let shape_ok = b.len() >= 20
        && b.len() <= 35
        && b[4] == b'-'
        && b[7] == b'-'
        && (b[10] == b'T' || b[10] == b't')
        && b[13] == b':'
        && b[16] == b':';
    if !shape_ok {
        return Err("timestamp is not RFC 3339");
    }
    if let Some(frac) = s[19..].strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 9 {
            return Err("timestamp is not RFC 3339");
        }
    }
    DateTime::parse_from_rfc3339(s)
        .map(|t| Timestamp(t.with_timezone(&Utc)))
        .map_err(|_| "timestamp is not RFC 3339")
}

/// A JSON string that Go would also accept as `null` (its zero value).
fn nullable_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
}

/// Information about the client device, as the Go `DeviceInfo`. Every field is
/// always encoded (the Go type has no `omitempty`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeviceInfo {
    #[serde(deserialize_with = "nullable_string")]
    pub id: String,
    #[serde(deserialize_with = "nullable_string")]
    pub remote_addr: String,
    #[serde(deserialize_with = "nullable_string")]
    pub remote_zone: String,
    #[serde(deserialize_with = "nullable_string")]
    pub user_agent: String,
    #[serde(deserialize_with = "nullable_string")]
    pub browser: String,
    #[serde(deserialize_with = "nullable_string")]
    pub os: String,
    pub mobile: bool,
}

/// One authentication event in a user's log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogEntry {
    pub timestamp: Timestamp,
    #[serde(deserialize_with = "nullable_string")]
    pub username: String,
    #[serde(rename = "log_type", deserialize_with = "nullable_string")]
    pub log_type: String,
    #[serde(
        skip_serializing_if = "String::is_empty",
        deserialize_with = "nullable_string"
    )]
    pub message: String,
    #[serde(
        skip_serializing_if = "String::is_empty",
        deserialize_with = "nullable_string"
    )]
    pub service: String,
    #[serde(
        skip_serializing_if = "String::is_empty",
        deserialize_with = "nullable_string"
    )]
    pub login_method: String,
    #[serde(
        skip_serializing_if = "String::is_empty",
        deserialize_with = "nullable_string"
    )]
    pub login_authenticator_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_info: Option<DeviceInfo>,
}

/// [`LogEntry`] over borrowed text, for answers written straight from the
/// stored rows. Serializes exactly as the `LogEntry` with the same content.
#[derive(Debug, Serialize)]
pub struct LogEntryRef<'a> {
    pub timestamp: Timestamp,
    pub username: &'a str,
    pub log_type: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub message: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub service: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub login_method: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub login_authenticator_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_info: Option<DeviceInfoRef<'a>>,
}

impl LogEntryRef<'_> {
    /// Appends the entry as JSON, byte for byte as `serde_json` writes it,
    /// without serde's character-by-character escaping for the text that
    /// needs none (nearly all of it).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(br#"{"timestamp":"#);
        match self.timestamp.whole_seconds() {
            Some(t) => {
                out.push(b'"');
                out.extend_from_slice(&t);
                out.push(b'"');
            }
            None => json_value(out, &self.timestamp),
        }
        json_field(out, b",\"username\":", self.username);
        json_field(out, b",\"log_type\":", self.log_type);
        for (key, v) in [
            (&b",\"message\":"[..], self.message),
            (b",\"service\":", self.service),
            (b",\"login_method\":", self.login_method),
            (b",\"login_authenticator_id\":", self.login_authenticator_id),
        ] {
            if !v.is_empty() {
                json_field(out, key, v);
            }
        }
        if let Some(d) = &self.device_info {
            json_field(out, b",\"device_info\":{\"id\":", d.id);
            json_field(out, b",\"remote_addr\":", d.remote_addr);
            json_field(out, b",\"remote_zone\":", d.remote_zone);
            json_field(out, b",\"user_agent\":", d.user_agent);
            json_field(out, b",\"browser\":", d.browser);
            json_field(out, b",\"os\":", d.os);
            out.extend_from_slice(if d.mobile {
                b",\"mobile\":true}"
            } else {
                b",\"mobile\":false}"
            });
        }
        out.push(b'}');
    }
}

fn json_field(out: &mut Vec<u8>, key: &[u8], v: &str) {
    out.extend_from_slice(key);
    json_str(out, v);
}

/// A JSON string. Only `"`, `\` and control characters are escaped by
/// `serde_json`; text without them is copied as it is, and the rest goes
/// through `serde_json` itself. The check runs over 16 bytes at a time with
/// no early exit, which the compiler turns into vector instructions.
fn json_str(out: &mut Vec<u8>, v: &str) {
    fn plain(chunk: &[u8]) -> bool {
        chunk
            .iter()
            .fold(true, |ok, &b| ok & (b >= 0x20) & (b != b'"') & (b != b'\\'))
    }
    let bytes = v.as_bytes();
    let mut chunks = bytes.chunks_exact(16);
    let clean = chunks.by_ref().all(plain) && plain(chunks.remainder());
    if clean {
        out.reserve(bytes.len() + 2);
        out.push(b'"');
        out.extend_from_slice(bytes);
        out.push(b'"');
    } else {
        json_value(out, v);
    }
}

fn json_value<T: Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) {
    // Writing a string or a timestamp into a Vec cannot fail.
    let _ = serde_json::to_writer(out, v);
}

/// [`DeviceInfo`] over borrowed text.
#[derive(Debug, Serialize)]
pub struct DeviceInfoRef<'a> {
    pub id: &'a str,
    pub remote_addr: &'a str,
    pub remote_zone: &'a str,
    pub user_agent: &'a str,
    pub browser: &'a str,
    pub os: &'a str,
    pub mobile: bool,
}

/// A device as the user's device list holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetaDeviceInfo {
    pub device_info: Option<DeviceInfo>,
    pub first_seen: Timestamp,
    pub last_seen: Timestamp,
    pub num_logins: i64,
}

/// The last time a user logged in to one service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LastLoginEntry {
    pub timestamp: Timestamp,
    #[serde(deserialize_with = "nullable_string")]
    pub username: String,
    #[serde(deserialize_with = "nullable_string")]
    pub service: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AddLogRequest {
    pub log: Option<LogEntry>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmptyResponse {}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GetUserLogsRequest {
    #[serde(deserialize_with = "nullable_string")]
    pub username: String,
    pub max_days: i64,
    pub limit: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetUserLogsResponse {
    #[serde(rename = "result")]
    pub results: Vec<LogEntry>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GetUserDevicesRequest {
    #[serde(deserialize_with = "nullable_string")]
    pub username: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetUserDevicesResponse {
    pub devices: Vec<MetaDeviceInfo>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckDeviceRequest {
    #[serde(deserialize_with = "nullable_string")]
    pub username: String,
    pub device_info: Option<DeviceInfo>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckDeviceResponse {
    pub seen: bool,
}

/// `check_login`: `check_device`'s request, answered with the risk of the
/// login.
pub type CheckLoginRequest = CheckDeviceRequest;

/// The risk of a login, computed from data that holds no address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckLoginResponse {
    /// As `check_device` answers it.
    pub seen: bool,
    pub device_known: bool,
    /// The country of the login (from `remote_zone`, else the address).
    pub country: String,
    pub country_known: bool,
    /// `login_failure` entries within the failure-burst window.
    pub recent_failures: i64,
    /// The login failed from many addresses lately (on this replica).
    pub under_attack: bool,
    /// `low`, `medium` or `high`.
    pub risk: String,
    /// Among `first_login`, `new_device`, `new_country`,
    /// `recent_failures`, `login_under_attack`.
    pub reasons: Vec<String>,
}

/// A login whose throttling an administrator reads or clears.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ThrottlesRequest {
    #[serde(deserialize_with = "nullable_string")]
    pub login: String,
}

/// What one replica holds about a login's throttling.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThrottlesResponse {
    pub login: String,
    /// Distinct addresses it failed from within the window.
    pub failing_addresses: u32,
    pub under_attack: bool,
    /// One per address (an opaque ID: the address is not held).
    pub pairs: Vec<PairThrottleWire>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairThrottleWire {
    pub id: String,
    /// Distinct wrong passwords within the window.
    pub failures: u32,
    /// Refused until then, when a refusal is in force.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub refused_until: Option<Timestamp>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClearThrottlesResponse {
    /// Keys forgotten.
    pub cleared: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SetLastLoginRequest {
    pub last_login: Option<LastLoginEntry>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GetLastLoginRequest {
    #[serde(deserialize_with = "nullable_string")]
    pub username: String,
    #[serde(
        skip_serializing_if = "String::is_empty",
        deserialize_with = "nullable_string"
    )]
    pub service: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetLastLoginResponse {
    #[serde(rename = "result")]
    pub results: Vec<LastLoginEntry>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GetUnusedAccountsRequest {
    pub usernames: Option<Vec<String>>,
    pub days: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetUnusedAccountsResponse {
    pub unused_usernames: Vec<String>,
}

/// Asks the server to recognise (or mint) the long-term device cookie.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentifyDeviceRequest {
    #[serde(deserialize_with = "nullable_string")]
    pub cookie: String,
    #[serde(deserialize_with = "nullable_string")]
    pub remote_addr: String,
    #[serde(deserialize_with = "nullable_string")]
    pub user_agent: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentifyDeviceResponse {
    /// The privacy-reduced device: ID, zone, browser, OS, mobile; never the address.
    pub device_info: DeviceInfo,
    /// The cookie value to set (the same one when it was valid).
    pub cookie: String,
    /// True when the cookie was absent or invalid and a new device was minted.
    pub new: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForgetUserRequest {
    #[serde(deserialize_with = "nullable_string")]
    pub username: String,
}

/// How many rows were deleted, per kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletedCounts {
    pub user_logs: u64,
    pub devices: u64,
    pub last_logins: u64,
    pub alerts: u64,
    /// Recorded reads of the user's data (access transparency); left out
    /// when none was deleted.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub access_reads: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForgetUserResponse {
    pub deleted: DeletedCounts,
}

/// Details carried by an alert: privacy-reduced facts only.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertDetails {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub log_type: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service: String,
    /// ISO country code.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub country: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub browser: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub os: String,
    #[serde(default)]
    pub mobile: bool,
    /// For a dormant account: the previous login (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_login: Option<i64>,
    /// For a failure burst: failures counted in the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failures: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GetUserAlertsRequest {
    #[serde(deserialize_with = "nullable_string")]
    pub username: String,
    /// 0: every alert kept.
    pub max_days: i64,
}

/// How one sink fared with one alert.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryInfo {
    pub sink: String,
    /// `pending`, `delivered` or `failed`.
    pub state: String,
    pub attempts: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_at: Option<Timestamp>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertInfo {
    pub id: i64,
    /// The user it is about: in answers across users (`/api/admin/alerts`) only.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub username: String,
    pub kind: String,
    pub timestamp: Timestamp,
    /// One plain sentence: "New device on 2026-11-20: Firefox on Linux from Italy".
    pub text: String,
    pub details: AlertDetails,
    pub deliveries: Vec<DeliveryInfo>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetUserAlertsResponse {
    pub alerts: Vec<AlertInfo>,
}

/// `/api/admin/events`: the newest log entries across users, for administrators.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GetEventsRequest {
    /// Start; unset: 30 days before `to`.
    pub from: Timestamp,
    /// End, exclusive; unset: now.
    pub to: Timestamp,
    /// Only this tenant's users (`TENANT/...`).
    #[serde(deserialize_with = "nullable_string")]
    pub tenant: String,
    /// Only this user.
    #[serde(deserialize_with = "nullable_string")]
    pub username: String,
    /// Only this log type.
    #[serde(deserialize_with = "nullable_string")]
    pub log_type: String,
    /// 0: 100; at most 1000.
    pub limit: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetEventsResponse {
    pub result: Vec<LogEntry>,
}

/// `/api/admin/alerts`: the alert outbox across users, for administrators.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GetAlertsRequest {
    /// 0: every alert kept.
    pub max_days: i64,
    /// Only alerts with a delivery `pending`, `failed` or `delivered`; empty: all.
    #[serde(deserialize_with = "nullable_string")]
    pub state: String,
    /// 0: 100; at most 1000.
    pub limit: i64,
}

/// The outbox: alerts with their deliveries, each naming its user.
pub type GetAlertsResponse = GetUserAlertsResponse;

/// `/api/admin/retry_alert`: every undelivered delivery of the alert, due now.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryAlertRequest {
    pub id: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryAlertResponse {
    /// Deliveries made due again (0: none undelivered, or no such alert).
    pub rescheduled: i64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GetUserSummaryRequest {
    #[serde(deserialize_with = "nullable_string")]
    pub username: String,
}

/// One fact about an account, with the sentence an account panel shows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SummaryFact {
    /// `last_login`, `service_login`, `devices`, `failed_logins`, or an alert kind.
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<Timestamp>,
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<AlertDetails>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetUserSummaryResponse {
    pub username: String,
    pub facts: Vec<SummaryFact>,
}

/// `/api/get_user_access`: the recorded reads of the user's data (access
/// transparency), newest day first.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GetUserAccessRequest {
    #[serde(deserialize_with = "nullable_string")]
    pub username: String,
    /// Only the last this many days; 0: every recorded day.
    pub max_days: i64,
}

/// One recorded read: who (the client certificate's CN), through which
/// endpoint, on which day (UTC, `YYYY-MM-DD`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessEntry {
    pub reader: String,
    pub endpoint: String,
    pub day: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetUserAccessResponse {
    pub result: Vec<AccessEntry>,
}

/// `/api/export_user`: everything stored about one user (a subject-access
/// request).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExportUserRequest {
    #[serde(deserialize_with = "nullable_string")]
    pub username: String,
}

/// Time the user spent at a computer on a day (Windows agents).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeSpentEntry {
    pub computer: String,
    /// The day's first second (UTC).
    pub day: Timestamp,
    pub seconds: i64,
    pub first_start: Timestamp,
    pub last_end: Timestamp,
}

/// A country the user's entries came from (`export_user`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountryEntry {
    pub country: String,
    /// The first and the last day seen (UTC), coarsened with age.
    pub first_seen: Timestamp,
    pub last_seen: Timestamp,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExportUserResponse {
    pub username: String,
    /// Every log entry, newest first.
    pub logs: Vec<LogEntry>,
    pub devices: Vec<MetaDeviceInfo>,
    /// The countries seen, first seen first.
    #[serde(default)]
    pub countries: Vec<CountryEntry>,
    pub last_logins: Vec<LastLoginEntry>,
    /// Every alert, newest first, with its deliveries.
    pub alerts: Vec<AlertInfo>,
    pub time_spent: Vec<TimeSpentEntry>,
    /// The recorded reads of the user's data, newest first.
    pub access: Vec<AccessEntry>,
}

/// The body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResponse {
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_accept_offsets_and_nanoseconds_and_answer_in_utc() {
        let t = parse_rfc3339("2026-11-20T11:30:15.123456789+01:00").unwrap();
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            "\"2026-11-20T10:30:15.123456789Z\""
        );
        let t = parse_rfc3339("2026-11-20T10:00:00Z").unwrap();
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            "\"2026-11-20T10:00:00Z\""
        );
    }

    /// `e` lent as a [`LogEntryRef`]. No `..` in the patterns: a field
    /// added to `LogEntry` or `DeviceInfo` must be added here too.
    fn borrowed(e: &LogEntry) -> LogEntryRef<'_> {
        let LogEntry {
            timestamp,
            username,
            log_type,
            message,
            service,
            login_method,
            login_authenticator_id,
            device_info,
        } = e;
        LogEntryRef {
            timestamp: *timestamp,
            username,
            log_type,
            message,
            service,
            login_method,
            login_authenticator_id,
            device_info: device_info.as_ref().map(|d| {
                let DeviceInfo {
                    id,
                    remote_addr,
                    remote_zone,
                    user_agent,
                    browser,
                    os,
                    mobile,
                } = d;
                DeviceInfoRef {
                    id,
                    remote_addr,
                    remote_zone,
                    user_agent,
                    browser,
                    os,
                    mobile: *mobile,
                }
            }),
        }
    }

    #[test]
    fn a_borrowed_log_entry_serializes_as_the_owned_one() {
        let full = LogEntry {
            timestamp: Timestamp::from_unix(1_763_820_000),
            username: "bob \"b\"".into(),
            log_type: "login".into(),
            message: "via \u{e8}\n".into(),
            service: "mail".into(),
            login_method: "password".into(),
            login_authenticator_id: "otp-1".into(),
            device_info: Some(DeviceInfo {
                id: "dev".into(),
                remote_addr: String::new(),
                remote_zone: "IT".into(),
                user_agent: "Firefox on Linux".into(),
                browser: "Firefox".into(),
                os: "Linux".into(),
                mobile: true,
            }),
        };
        let sparse = LogEntry {
            timestamp: Timestamp::from_unix(3600),
            username: "u".into(),
            log_type: "logout".into(),
            ..Default::default()
        };
        for e in [full, sparse] {
            assert_eq!(
                serde_json::to_string(&borrowed(&e)).unwrap(),
                serde_json::to_string(&e).unwrap()
            );
        }
    }

    #[test]
    fn the_hand_written_encoder_writes_what_serde_writes() {
        let texts = [
            "",
            "plain",
            "exactly sixteen!",
            "seventeen bytes!!",
            "quote \" in the middle of a longer text",
            "back\\slash",
            "line\nbreak",
            "\u{1}\u{1f}\u{7f} and \u{e8}\u{2028}\u{1F600}",
            "0123456789abcdef0123456789abcde\"",
            "\t",
        ];
        let mut n = 0;
        for (i, a) in texts.iter().enumerate() {
            for (j, b) in texts.iter().enumerate() {
                let e = LogEntry {
                    timestamp: if (i + j) % 3 == 0 {
                        Timestamp(DateTime::from_timestamp(1_763_820_000, 5).unwrap())
                    } else {
                        Timestamp::from_unix(1_763_820_000 + 3600 * i as i64)
                    },
                    username: a.to_string(),
                    log_type: "login".into(),
                    message: b.to_string(),
                    service: a.to_string(),
                    login_method: b.to_string(),
                    login_authenticator_id: a.to_string(),
                    device_info: (j % 2 == 0).then(|| DeviceInfo {
                        id: b.to_string(),
                        remote_addr: String::new(),
                        remote_zone: a.to_string(),
                        user_agent: b.to_string(),
                        browser: a.to_string(),
                        os: b.to_string(),
                        mobile: i % 2 == 0,
                    }),
                };
                let mut out = Vec::new();
                borrowed(&e).write_json(&mut out);
                assert_eq!(
                    String::from_utf8(out).unwrap(),
                    serde_json::to_string(&e).unwrap()
                );
                n += 1;
            }
        }
        assert_eq!(n, texts.len() * texts.len());
    }

    #[test]
    fn whole_second_timestamps_are_formatted_as_chrono_formats_them() {
        let mut secs = vec![
            -62_135_596_800,
            0,
            1,
            59,
            3600,
            951_782_400,
            253_402_300_799,
        ];
        // Every hour and odd second across a few years, leap days included.
        secs.extend((0..40_000).map(|h| 946_684_800 + h * 3_600 + (h % 61)));
        for t in secs {
            let ts = Timestamp::from_unix(t);
            assert_eq!(
                serde_json::to_string(&ts).unwrap(),
                format!("\"{}\"", ts.0.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
                "{t}"
            );
        }
        // Before year 0 and with a fraction: chrono's own format.
        let t = Timestamp(DateTime::from_timestamp(-62_200_000_000, 0).unwrap());
        assert!(t.whole_seconds().is_none());
        let t = Timestamp(DateTime::from_timestamp(10, 5).unwrap());
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            "\"1970-01-01T00:00:10.000000005Z\""
        );
    }

    #[test]
    fn timestamps_reject_what_is_not_rfc3339() {
        for bad in [
            "",
            "2026-11-20",
            "2026-11-20 10:00:00Z",
            "2026-11-20T10:00:00",
            "2026-11-20T10:00:00.1234567890Z",
            "2026-11-20T10:00:00.Z",
            "1700000000",
            "2026-13-20T10:00:00Z",
            "2026-11-20T25:00:00Z",
        ] {
            assert!(parse_rfc3339(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn log_entry_omits_empty_optional_fields_like_go() {
        let e = LogEntry {
            timestamp: Timestamp::from_unix(1_700_000_000),
            username: "u".into(),
            log_type: "login".into(),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"timestamp":"2023-11-14T22:13:20Z","username":"u","log_type":"login"}"#
        );
    }

    #[test]
    fn zero_timestamp_matches_go() {
        assert_eq!(
            serde_json::to_string(&Timestamp::default()).unwrap(),
            "\"0001-01-01T00:00:00Z\""
        );
        assert!(Timestamp::default().is_zero());
    }

    #[test]
    fn unknown_and_duplicate_fields_are_rejected() {
        assert!(
            serde_json::from_str::<GetUserDevicesRequest>(r#"{"username":"a","x":1}"#).is_err()
        );
        assert!(serde_json::from_str::<GetUserDevicesRequest>(
            r#"{"username":"a","username":"b"}"#
        )
        .is_err());
    }
}
