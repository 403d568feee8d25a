//! Dovecot's auth policy protocol, and the risk of a login for any auth
//! service.
//!
//! - `allow` is decided by the [throttle](crate::monitor::throttle) from
//!   state in memory that holds addresses only as keyed hashes; a login
//!   under distributed attack lets in only the user's known client from a
//!   known country.
//! - `report` becomes a log entry through the same privacy transforms as
//!   `add_log`: the username is `login` as sent, the log type `login` or
//!   `login_failure` (Dovecot 2.4's `fail_type` kept as the message), the
//!   service the protocol, the country from `remote` (then dropped), the
//!   client software from `device_id`; a success also sets the last login
//!   of that service. `pwhash` only tells repeated wrong passwords apart,
//!   in memory, hashed again; it and `session_id` are never stored or
//!   logged.
//! - **The device** of a mail login is the family of its client and its OS
//!   (`Thunderbird/Windows`), from the IMAP ID (`imap_id_retain = yes`), or
//!   from an HTTP user agent (webmail); versions are kept as the browser
//!   and OS shown, not in the device, so an update is not a new device. A
//!   client that sends no ID (POP3, SMTP AUTH, some IMAP clients) is one
//!   device per protocol, `unidentified imap client`.
//! - `check_login` answers an auth service, before it asks for a second
//!   factor: whether the device and the country are known, the recent
//!   failures, whether the login is under attack, and a risk level with
//!   its reasons.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::{check_username, invalid, ApiError, Service};
use crate::monitor::throttle::{Decision, Reason, Verdict};
use crate::wire::{
    AddLogRequest, CheckLoginRequest, CheckLoginResponse, ClearThrottlesResponse, DeviceInfo,
    LastLoginEntry, LogEntry, PairThrottleWire, SetLastLoginRequest, ThrottlesRequest,
    ThrottlesResponse, Timestamp, LOG_TYPE_LOGIN, LOG_TYPE_LOGIN_FAILURE,
};

/// What Dovecot (2.3 and 2.4) posts; every field optional, unknown ones
/// ignored (the attributes are configurable).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct PolicyRequest {
    pub login: String,
    pub remote: String,
    pub protocol: String,
    pub device_id: String,
    pub pwhash: String,
    pub success: Option<bool>,
    pub policy_reject: bool,
    pub fail_type: String,
}

/// Dovecot's answer: -1 refuse (the client is shown `msg`), 0 allow, N > 0
/// delay N seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyAnswer {
    pub status: i64,
    pub msg: String,
}

/// The outcome of `allow`, for the answer and the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowed {
    pub decision: Decision,
    pub reason: Reason,
    /// False in `policy.dry_run`: the answer allowed whatever was decided.
    pub enforced: bool,
}

/// The longest login, protocol or client string taken.
const MAX_FIELD: usize = 256;
const MAX_DEVICE_ID: usize = 2048;

fn field<'a>(name: &str, v: &'a str, max: usize) -> Result<&'a str, ApiError> {
    if v.len() > max || v.contains('\0') {
        return Err(invalid(format!("{name} is longer than {max} bytes")));
    }
    Ok(v)
}

/// The quoted strings (and NILs) of an IMAP ID list as Dovecot passes it
/// on: `"name" "Thunderbird" "version" "115.3"`.
fn imap_id_pairs(id: &str) -> Option<Vec<(String, String)>> {
    let mut items: Vec<Option<String>> = Vec::new();
    let mut chars = id
        .trim()
        .trim_start_matches('(')
        .trim_end_matches(')')
        .chars()
        .peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        match chars.next() {
            None => break,
            Some('"') => {
                let mut s = String::new();
                loop {
                    match chars.next()? {
                        '\\' => s.push(chars.next()?),
                        '"' => break,
                        c => s.push(c),
                    }
                }
                items.push(Some(s));
            }
            Some(c) => {
                let mut word = String::from(c);
                while chars.peek().is_some_and(|c| !c.is_whitespace()) {
                    word.push(chars.next()?);
                }
                if !word.eq_ignore_ascii_case("NIL") {
                    return None;
                }
                items.push(None);
            }
        }
    }
    if items.is_empty() || !items.len().is_multiple_of(2) {
        return None;
    }
    Some(
        items
            .chunks(2)
            .filter_map(|kv| Some((kv[0].clone()?.to_ascii_lowercase(), kv[1].clone()?)))
            .collect(),
    )
}

/// A short, printable piece of client-supplied text: no control, invisible
/// or direction-changing character, at most 60 bytes.
fn clean(s: &str) -> String {
    let s: String = s
        .chars()
        .filter(|c| !c.is_control() && !super::names::is_deceptive(*c))
        .collect();
    crate::privacy::truncate(s.trim(), 60).to_owned()
}

/// How the throttle knows a login: what the user typed, trimmed and
/// lowercased, so that `Bob`, `BOB` and ` bob` are one login to it (the
/// log keeps the login as sent).
fn throttle_key(login: &str) -> String {
    login.trim().to_lowercase()
}

/// The client of a login: (device ID, browser shown, OS shown).
pub fn client_of(device_id: &str, protocol: &str) -> (String, String, String) {
    let unidentified = || {
        (
            format!("unidentified {protocol} client"),
            String::new(),
            String::new(),
        )
    };
    let device_id = device_id.trim();
    if device_id.is_empty() {
        return unidentified();
    }
    if let Some(pairs) = imap_id_pairs(device_id) {
        let get = |k: &str| {
            pairs
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| clean(v))
                .unwrap_or_default()
        };
        let (name, version, os, os_version) =
            (get("name"), get("version"), get("os"), get("os-version"));
        if name.is_empty() && os.is_empty() {
            return unidentified();
        }
        let join = |a: &str, b: &str| {
            if b.is_empty() {
                a.to_owned()
            } else {
                format!("{a} {b}")
            }
        };
        let family = format!("{name}/{os}");
        return (family, join(&name, &version), join(&os, &os_version));
    }
    // Webmail and other HTTP clients send their user agent.
    let (browser, os, _) = crate::privacy::parse_user_agent(device_id);
    if browser == "unknown" && os == "unknown" {
        return unidentified();
    }
    (
        format!("{}/{}", clean(&browser), clean(&os)),
        clean(&browser),
        clean(&os),
    )
}

/// The address of `remote`: bare, `[v6]`, or with a port.
fn parse_remote(remote: &str) -> Option<IpAddr> {
    let r = remote.trim();
    r.parse()
        .ok()
        .or_else(|| r.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| {
            r.strip_prefix('[')
                .and_then(|r| r.strip_suffix(']'))
                .and_then(|r| r.parse().ok())
        })
}

impl Service {
    fn decode_policy(body: &[u8]) -> Result<PolicyRequest, ApiError> {
        // Where, not what: serde's message would echo a value (an address).
        let req: PolicyRequest = serde_json::from_slice(body).map_err(|e| {
            invalid(format!(
                "invalid policy request at line {}, column {}: a JSON object of Dovecot's fields is expected",
                e.line(),
                e.column()
            ))
        })?;
        if req.login.is_empty() {
            return Err(invalid("login is required"));
        }
        field("login", &req.login, MAX_FIELD)?;
        field("protocol", &req.protocol, MAX_FIELD)?;
        field("remote", &req.remote, MAX_FIELD)?;
        field("device_id", &req.device_id, MAX_DEVICE_ID)?;
        field("pwhash", &req.pwhash, MAX_FIELD)?;
        field("fail_type", &req.fail_type, MAX_FIELD)?;
        Ok(req)
    }

    /// Whether `user` knows this device and this country: (device known,
    /// country, country known, failures since `since`, first login).
    async fn history_of(
        &self,
        user: &str,
        device_id: &str,
        country: String,
        since: i64,
    ) -> Result<(bool, String, bool, i64, bool), ApiError> {
        let overview = self.store.user_overview(user.to_owned(), since, 0).await?;
        let sealed = (!device_id.is_empty()).then(|| self.privacy.key.seal_id(user, device_id));
        let device_known =
            sealed.is_some_and(|s| overview.devices.iter().any(|d| d.device.sealed_id == s));
        let country_known =
            !country.is_empty() && overview.devices.iter().any(|d| d.device.zone == country);
        Ok((
            device_known,
            country,
            country_known,
            overview.failures,
            overview.last_login.is_none(),
        ))
    }

    fn country_of(&self, remote: &str) -> String {
        self.privacy
            .geoip
            .as_ref()
            .map(|g| g.country(remote))
            .unwrap_or_default()
    }

    /// Dovecot's `allow`: the answer, and what was decided.
    pub async fn policy_allow(
        &self,
        body: &[u8],
        now: i64,
    ) -> Result<(PolicyAnswer, Allowed), ApiError> {
        let req = Self::decode_policy(body)?;
        let verdict = match parse_remote(&req.remote) {
            Some(ip) => self.throttle.check(&throttle_key(&req.login), ip, now),
            None => Verdict::Decided(Decision::Allow, Reason::None),
        };
        let (decision, reason) = match verdict {
            Verdict::Decided(d, r) => (d, r),
            Verdict::AskHistory => {
                let (device, _, _) = client_of(&req.device_id, &req.protocol);
                let country = self.country_of(&req.remote);
                let (device_known, _, country_known, _, _) =
                    self.history_of(&req.login, &device, country, now).await?;
                if device_known && country_known {
                    (Decision::Allow, Reason::None)
                } else {
                    (self.throttle.under_attack(), Reason::Guessing)
                }
            }
        };
        let enforced = !self.policy.dry_run;
        let answer = match (enforced, decision) {
            (false, _) | (true, Decision::Allow) => PolicyAnswer {
                status: 0,
                msg: String::new(),
            },
            (true, Decision::Delay(secs)) => PolicyAnswer {
                status: i64::from(secs),
                msg: String::new(),
            },
            (true, Decision::Refuse) => PolicyAnswer {
                status: -1,
                msg: self.policy.message.clone(),
            },
        };
        Ok((
            answer,
            Allowed {
                decision,
                reason,
                enforced,
            },
        ))
    }

    /// Dovecot's `report`: counted by the throttle, then stored as a log
    /// entry (and, on success, the last login of the protocol).
    pub async fn policy_report(&self, body: &[u8], now: i64) -> Result<bool, ApiError> {
        let req = Self::decode_policy(body)?;
        let success = req
            .success
            .ok_or_else(|| invalid("success is required in a report"))?;
        let protocol = if req.protocol.is_empty() {
            "unknown".to_owned()
        } else {
            req.protocol.to_ascii_lowercase()
        };
        let ip = parse_remote(&req.remote);
        let (id, browser, os) = client_of(&req.device_id, &protocol);
        let message = if success {
            String::new()
        } else if req.policy_reject {
            "policy".to_owned()
        } else {
            clean(&req.fail_type)
        };
        let log = LogEntry {
            timestamp: Timestamp::from_unix(now),
            username: req.login.clone(),
            log_type: if success {
                LOG_TYPE_LOGIN
            } else {
                LOG_TYPE_LOGIN_FAILURE
            }
            .to_owned(),
            message,
            service: protocol.clone(),
            device_info: Some(DeviceInfo {
                id,
                // Only an address: anything else could not be looked up,
                // and must not make the entry invalid.
                remote_addr: ip.map(|ip| ip.to_string()).unwrap_or_default(),
                browser,
                os,
                ..Default::default()
            }),
            ..Default::default()
        };
        // Validated before anything is counted: a report refused changes
        // nothing. What the client chose (its ID) is cleaned above and can
        // never be the reason.
        self.log_record(&log, now)?;
        // A refusal of ours is not another wrong password.
        if let (false, Some(ip)) = (req.policy_reject, ip) {
            self.throttle
                .report(&throttle_key(&req.login), ip, &req.pwhash, success, now);
        }
        self.add_log(AddLogRequest { log: Some(log) }, now).await?;
        if success {
            self.set_last_login(
                SetLastLoginRequest {
                    last_login: Some(LastLoginEntry {
                        timestamp: Timestamp::from_unix(now),
                        username: req.login,
                        service: protocol,
                    }),
                },
                now,
            )
            .await?;
        }
        Ok(success)
    }

    /// The risk of a login, for an auth service deciding whether to ask
    /// for a second factor.
    pub async fn check_login(
        &self,
        req: CheckLoginRequest,
        now: i64,
    ) -> Result<CheckLoginResponse, ApiError> {
        check_username(&req.username)?;
        let d = req
            .device_info
            .ok_or_else(|| invalid("device_info is required"))?;
        super::check_device(&d)?;
        let country = if d.remote_zone.is_empty() {
            self.country_of(&d.remote_addr)
        } else {
            d.remote_zone.clone()
        };
        let window = self.alerts.burst_window.as_secs() as i64;
        let (device_known, country, country_known, failures, first_login) = self
            .history_of(&req.username, &d.id, country, now - window)
            .await?;
        let under_attack = self
            .throttle
            .login_throttles(&throttle_key(&req.username), now)
            .under_attack;
        let mut reasons = Vec::new();
        if first_login {
            reasons.push("first_login");
        }
        if !device_known && !first_login {
            reasons.push("new_device");
        }
        if !country_known && !country.is_empty() && !first_login {
            reasons.push("new_country");
        }
        if failures > 0 {
            reasons.push("recent_failures");
        }
        if under_attack {
            reasons.push("login_under_attack");
        }
        let burst = i64::from(self.alerts.burst_count);
        let new_place = reasons
            .iter()
            .any(|r| matches!(*r, "new_device" | "new_country"));
        let risk = if (under_attack && new_place) || failures >= burst {
            "high"
        } else if new_place || failures > 0 || under_attack {
            "medium"
        } else {
            "low"
        };
        Ok(CheckLoginResponse {
            seen: device_known,
            device_known,
            country,
            country_known,
            recent_failures: failures,
            under_attack,
            risk: risk.to_owned(),
            reasons: reasons.into_iter().map(str::to_owned).collect(),
        })
    }

    /// What this replica holds about a login's throttling.
    pub fn throttles(
        &self,
        req: ThrottlesRequest,
        now: i64,
    ) -> Result<ThrottlesResponse, ApiError> {
        check_username(&req.login)?;
        let t = self
            .throttle
            .login_throttles(&throttle_key(&req.login), now);
        Ok(ThrottlesResponse {
            login: req.login,
            failing_addresses: t.failing_addresses,
            under_attack: t.under_attack,
            pairs: t
                .pairs
                .into_iter()
                .map(|p| PairThrottleWire {
                    id: p.id,
                    failures: p.failures,
                    // To the minute: the second would date the last failure.
                    refused_until: p
                        .refused_until
                        .map(|t| Timestamp::from_unix((t + 59).div_euclid(60) * 60)),
                })
                .collect(),
        })
    }

    /// Forgets this replica's throttling of a login.
    pub fn clear_throttles(
        &self,
        req: ThrottlesRequest,
    ) -> Result<ClearThrottlesResponse, ApiError> {
        check_username(&req.login)?;
        Ok(ClearThrottlesResponse {
            cleared: self.throttle.clear_login(&throttle_key(&req.login)) as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_is_the_family_of_the_mail_app_and_its_os() {
        let id = r#""name" "Thunderbird" "version" "115.3" "os" "Windows" "os-version" "10""#;
        assert_eq!(
            client_of(id, "imap"),
            (
                "Thunderbird/Windows".to_owned(),
                "Thunderbird 115.3".to_owned(),
                "Windows 10".to_owned()
            )
        );
        assert_eq!(
            client_of(r#"("name" "K-9 \"Mail\"" "os" NIL)"#, "imap").1,
            "K-9 \"Mail\""
        );
        assert_eq!(client_of("", "pop3").0, "unidentified pop3 client");
        assert_eq!(
            client_of(r#""vendor" "x""#, "imap").0,
            "unidentified imap client"
        );
        let ua = "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0";
        assert_eq!(client_of(ua, "imap").0, "Firefox/Linux");
        assert_eq!(
            client_of("\"unterminated", "imap").0,
            "unidentified imap client"
        );
    }

    #[test]
    fn a_hostile_imap_id_still_gives_fields_that_can_be_stored() {
        let long = format!(
            "\"name\" \"{}\" \"version\" \"{}\" \"os\" \"Win\u{202e}dows{}\" \"os-version\" \"{}\"",
            "A".repeat(500),
            "B".repeat(500),
            "\u{200b}".repeat(100),
            "\u{e0001}".repeat(100)
        );
        let (id, browser, os) = client_of(&long, "imap");
        assert!(
            id.len() <= 256 && browser.len() <= 128 && os.len() <= 128,
            "{id} {browser} {os}"
        );
        for s in [&id, &browser, &os] {
            assert!(
                !s.chars()
                    .any(|c| c.is_control() || crate::service::names::is_deceptive(c)),
                "{s:?}"
            );
        }
        assert_eq!(os, "Windows");
    }
}
