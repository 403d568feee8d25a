//! Windows login agents (the winauthmon protocol): an event as the agent
//! posts it, reduced like any log entry and stored once however often it is
//! retried, with the time spent between sign-in or unlock and sign-out or
//! lock kept only as a rounded duration.
//!
//! The user is `tenant/username` (lowercased: Windows account names are
//! case-insensitive; see [`names`] for the names refused), so tenants never
//! share a user; the computer (uppercased) is the device, sealed at rest; the country comes from
//! `PublicIP`, else from the connecting address when it is public, and every
//! address is dropped; the timestamp is floored as usual. The exact time
//! serves only to recognise retries (a keyed hash, deleted after
//! `agents.dedup_window`) and to measure sessions (held until the session
//! closes, a day at most).

use std::net::IpAddr;

use chrono::{DateTime, FixedOffset, NaiveDateTime, Utc};
use serde::Deserialize;

use super::{check_username, invalid, names, ApiError, Service};
use crate::model::LogRecord;
use crate::monitor;
use crate::store::{AgentEvent, AgentKey, AgentOutcome, Detections, SessionStep};
use crate::wire::{
    DeviceInfo, Timestamp, LOG_TYPE_LOCK, LOG_TYPE_LOGIN, LOG_TYPE_LOGOUT, LOG_TYPE_UNLOCK,
};

/// The service name agent events are logged under, and their last logins.
pub const AGENT_SERVICE: &str = "windows";
/// Longest computer name accepted (NetBIOS names are 15; DNS names longer).
const MAX_COMPUTER: usize = 255;

/// An event as the agent posts it. Unknown fields are ignored; older agents
/// send `IPAddress` instead of `LocalIP` / `PublicIP`.
#[derive(Debug, Deserialize)]
pub struct AgentEventBody {
    #[serde(rename = "EventType")]
    pub event_type: Option<String>,
    #[serde(rename = "UserName")]
    pub user_name: Option<String>,
    #[serde(rename = "ComputerName")]
    pub computer_name: Option<String>,
    #[serde(rename = "Timestamp")]
    pub timestamp: Option<String>,
    #[serde(rename = "LocalIP")]
    pub local_ip: Option<String>,
    #[serde(rename = "PublicIP")]
    pub public_ip: Option<String>,
    #[serde(rename = "IPAddress")]
    pub ip_address: Option<String>,
}

/// The log type of an agent's `EventType`, matched case-insensitively.
pub fn log_type(event_type: &str) -> Option<&'static str> {
    match event_type.trim().to_ascii_lowercase().as_str() {
        "sign-in" | "signin" | "logon" | "login" => Some(LOG_TYPE_LOGIN),
        "sign-out" | "signout" | "logoff" | "logout" => Some(LOG_TYPE_LOGOUT),
        "lock" => Some(LOG_TYPE_LOCK),
        "unlock" => Some(LOG_TYPE_UNLOCK),
        _ => None,
    }
}

/// An agent's timestamp: RFC 3339 (`Z` or an offset), or
/// `YYYY-MM-DD HH:MM:SS[.fff]` with an offset or none (then UTC).
pub fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    for f in ["%Y-%m-%d %H:%M:%S%.f%:z", "%Y-%m-%d %H:%M:%S%.f%z"] {
        if let Ok(t) = DateTime::<FixedOffset>::parse_from_str(s, f) {
            return Some(t.with_timezone(&Utc));
        }
    }
    let naive = s.strip_suffix('Z').unwrap_or(s);
    NaiveDateTime::parse_from_str(naive, "%Y-%m-%d %H:%M:%S%.f")
        .ok()
        .map(|t| t.and_utc())
}

/// Whether an address is routed on the internet (so that its country means
/// something): not private, loopback, link-local, shared, documentation,
/// multicast or unspecified.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.is_unspecified()
                || o[0] == 0
                || (o[0] == 100 && (64..128).contains(&o[1]))
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] == 0x2001 && s[1] == 0x0db8))
        }
    }
}

fn field<'a>(v: &'a Option<String>, name: &str) -> Result<&'a str, ApiError> {
    match v.as_deref().map(str::trim) {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(invalid(format!("{name} is required"))),
    }
}

impl Service {
    /// Reduces and stores one agent event posted with `key` from `peer` (the
    /// connecting address, used for the country only when public).
    pub async fn agent_event(
        &self,
        key: &AgentKey,
        body: &[u8],
        peer: Option<IpAddr>,
        now: i64,
    ) -> Result<AgentOutcome, ApiError> {
        let e: AgentEventBody = serde_json::from_slice(body)
            .map_err(|err| invalid(format!("invalid JSON body: {err}")))?;
        let event_type = field(&e.event_type, "EventType")?;
        let log_type = log_type(event_type).ok_or_else(|| {
            invalid("EventType must be one of Sign-In, Logon, Sign-Out, Logoff, Lock, Unlock")
        })?;
        let user = names::lowercase("UserName", field(&e.user_name, "UserName")?)?;
        let computer = names::uppercase("ComputerName", field(&e.computer_name, "ComputerName")?)?;
        names::check_shown("UserName", &user)?;
        names::check_shown("ComputerName", &computer)?;
        if computer.len() > MAX_COMPUTER || computer.chars().any(char::is_control) {
            return Err(invalid(format!(
                "ComputerName must be at most {MAX_COMPUTER} bytes, without control characters"
            )));
        }
        let exact = parse_time(field(&e.timestamp, "Timestamp")?).ok_or_else(|| {
            invalid("Timestamp must be RFC 3339 or YYYY-MM-DD HH:MM:SS with an optional offset")
        })?;
        let username = format!("{}/{user}", key.tenant);
        check_username(&username)?;
        let ts = self.check_log_time(&Timestamp(exact), now)?;

        // The country: PublicIP, else the connecting address when public.
        let public = e
            .public_ip
            .as_deref()
            .and_then(|s| s.trim().parse::<IpAddr>().ok())
            .filter(|ip| is_public(*ip))
            .or(peer.filter(|ip| is_public(*ip)));
        let device = DeviceInfo {
            id: computer.clone(),
            remote_addr: public.map(|ip| ip.to_string()).unwrap_or_default(),
            os: "Windows".into(),
            ..Default::default()
        };
        let rec = LogRecord {
            username: username.clone(),
            ts: self.privacy.quantize_log(ts),
            log_type: log_type.into(),
            service: AGENT_SERVICE.into(),
            device: Some(self.privacy.reduce_device(&username, &device)),
            ..Default::default()
        };

        let key_id = key.id.to_be_bytes();
        let nanos = exact.timestamp_subsec_nanos().to_be_bytes();
        let exact_secs = exact.timestamp().to_be_bytes();
        let tag = |parts: &[&[u8]]| self.privacy.key.agent_tag(parts);
        let dedup = tag(&[
            b"event",
            &key_id,
            log_type.as_bytes(),
            username.as_bytes(),
            computer.as_bytes(),
            &exact_secs,
            &nanos,
        ]);
        let session = tag(&[b"session", username.as_bytes(), computer.as_bytes()]);
        let step = match log_type {
            LOG_TYPE_LOGIN | LOG_TYPE_UNLOCK => SessionStep::Open {
                session,
                started: exact.timestamp(),
            },
            _ => SessionStep::Close {
                session,
                ended: exact.timestamp(),
                granularity: self.privacy.config.session_granularity.as_secs() as i64,
            },
        };
        let window = self.agents.dedup_window.as_secs() as i64;
        let ev = AgentEvent {
            rec,
            dedup,
            // Floored to the hour: the expiry must not date the event.
            dedup_expires: crate::clock::quantize(now, 3600) + 3600 + window,
            session: step,
        };
        if log_type == LOG_TYPE_LOGIN {
            // Idempotent (the newer time wins), so a retry after a failure
            // below does no harm.
            let day = self.privacy.quantize_last_login(ts);
            self.store
                .set_last_login(username.clone(), AGENT_SERVICE.into(), day)
                .await?;
        }
        let cfg = self.alerts.clone();
        let detect = Detections {
            burst_window: cfg.burst_window.as_secs() as i64,
            sinks: self.sinks.clone(),
            rules: Box::new(move |history, event| monitor::evaluate(&cfg, history, event, now)),
        };
        let outcome = self.store.record_agent_event(ev, detect).await?;
        if matches!(outcome, AgentOutcome::Stored { alerts } if alerts > 0) {
            self.wake.notify_one();
        }
        Ok(outcome)
    }

    /// The key a request presents, if it is known and enabled. Storage
    /// failures are errors; an unknown and a disabled key look the same.
    pub async fn agent_key(&self, presented: &str) -> Result<Option<AgentKey>, ApiError> {
        let hash = crate::crypto::agent_key_hash(presented.trim());
        let key = self.store.agent_key_by_hash(hash).await?;
        Ok(key.filter(|k| !k.disabled))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_types_in_the_wild() {
        for (t, want) in [
            ("Sign-In", "login"),
            ("logon", "login"),
            ("LOGIN", "login"),
            ("Sign-Out", "logout"),
            ("Logoff", "logout"),
            ("logout", "logout"),
            ("Lock", "lock"),
            ("UNLOCK", "unlock"),
        ] {
            assert_eq!(log_type(t), Some(want), "{t}");
        }
        assert_eq!(log_type("Reboot"), None);
    }

    #[test]
    fn timestamps_in_every_form_the_agents_send() {
        let want = DateTime::parse_from_rfc3339("2026-03-01T09:15:30Z")
            .unwrap()
            .with_timezone(&Utc);
        for s in [
            "2026-03-01T09:15:30Z",
            "2026-03-01T10:15:30+01:00",
            "2026-03-01 09:15:30",
            "2026-03-01 10:15:30+01:00",
            "2026-03-01 10:15:30+0100",
            "2026-03-01 09:15:30Z",
        ] {
            assert_eq!(parse_time(s), Some(want), "{s}");
        }
        assert!(parse_time("2026-03-01 09:15:30.250").is_some());
        for bad in ["", "yesterday", "2026-13-01 00:00:00", "2026-03-01"] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }

    #[test]
    fn public_addresses() {
        for ip in ["81.2.69.160", "2a02:c7f::1", "::ffff:81.2.69.160"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "10.0.0.1",
            "192.168.1.10",
            "172.16.0.1",
            "127.0.0.1",
            "169.254.1.1",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
            "192.0.2.1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
    }
}
