//! `policy:`: the listener for Dovecot's auth policy protocol (and any
//! other login source speaking it), and the throttling it decides with.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use super::agents::{listener, AgentTls, RawAgentTls};
use super::alerts::{secret, Secret};
use super::{ConfigDuration, Problem};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    /// Where the policy client (Dovecot's `auth_policy_server_url`) posts:
    /// HOST:PORT. Unset: no policy listener.
    pub addr: Option<String>,
    /// Server TLS (Dovecot verifies it with its `ssl_client_ca_*`
    /// settings). Unset: plain HTTP.
    pub tls: Option<RawAgentTls>,
    /// The token the client sends as `Authorization: Bearer TOKEN` or
    /// `X-API-Key: TOKEN` (Dovecot's `auth_policy_server_api_header`).
    pub token: Option<String>,
    /// The same, read from a file.
    pub token_file: Option<String>,
    /// Only count what would have been decided; always answer "allow"
    /// (default false).
    pub dry_run: Option<bool>,
    /// What a refused client is shown (default "Too many failed logins,
    /// try again later").
    pub message: Option<String>,
    /// Failures are counted over this sliding window, and the keys that
    /// hash addresses are replaced at this pace (default 15m).
    pub window: Option<ConfigDuration>,
    /// Distinct wrong passwords for one login from one address before its
    /// attempts are delayed (default 3).
    pub delay_after: Option<u32>,
    /// The first delay; it doubles with each further failure (default 1s).
    pub delay: Option<ConfigDuration>,
    /// The longest delay (default 15s).
    pub max_delay: Option<ConfigDuration>,
    /// Distinct wrong passwords for one login from one address before its
    /// attempts are refused (default 10).
    pub refuse_after: Option<u32>,
    /// How long a refusal lasts after the last failure (default 15m).
    pub cooldown: Option<ConfigDuration>,
    /// Distinct logins failing from one address within the window before
    /// that address is refused (default 10; spraying).
    pub spray_logins: Option<u32>,
    /// The same for an IPv4 /24 or an IPv6 /64 (default 30).
    pub spray_net_logins: Option<u32>,
    /// Distinct addresses failing for one login within the window before
    /// the login counts as under attack (default 10); then attempts from a
    /// device or country new to the user are treated as `guess_action`
    /// says, while the user's known client from a known country gets in.
    pub guess_addresses: Option<u32>,
    /// `delay` (the longest delay) or `refuse` (default delay).
    pub guess_action: Option<String>,
    /// Throttling keys held at most; the oldest are evicted (default 100000).
    pub max_keys: Option<usize>,
}

/// What an attempt on a login under distributed attack gets when it comes
/// from a device or a country new to the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuessAction {
    Delay,
    Refuse,
}

/// The validated `policy:` block.
#[derive(Debug, Clone)]
pub struct PolicyConfig {
    pub addr: Option<SocketAddr>,
    pub tls: Option<AgentTls>,
    pub token: Option<Secret>,
    pub dry_run: bool,
    pub message: String,
    pub window: Duration,
    pub delay_after: u32,
    pub delay: Duration,
    pub max_delay: Duration,
    pub refuse_after: u32,
    pub cooldown: Duration,
    pub spray_logins: u32,
    pub spray_net_logins: u32,
    pub guess_addresses: u32,
    pub guess_action: GuessAction,
    pub max_keys: usize,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            addr: None,
            tls: None,
            token: None,
            dry_run: false,
            message: "Too many failed logins, try again later".into(),
            window: Duration::from_secs(15 * 60),
            delay_after: 3,
            delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(15),
            refuse_after: 10,
            cooldown: Duration::from_secs(15 * 60),
            spray_logins: 10,
            spray_net_logins: 30,
            guess_addresses: 10,
            guess_action: GuessAction::Delay,
            max_keys: 100_000,
        }
    }
}

impl PolicyConfig {
    pub fn from_raw(raw: Option<RawPolicy>, problems: &mut Vec<Problem>) -> PolicyConfig {
        let defaults = PolicyConfig::default();
        let Some(raw) = raw else {
            return defaults;
        };
        let mut problem = |key: &str, message: String| {
            problems.push(Problem {
                key: key.to_owned(),
                message,
            })
        };
        let (addr, tls) = listener("policy", raw.addr.as_deref(), raw.tls, &mut problem);
        let mut secret_problems = Vec::new();
        let token = secret(
            "policy.token",
            raw.token,
            raw.token_file,
            &mut secret_problems,
        );
        for p in secret_problems {
            problem(&p.key, p.message);
        }
        if addr.is_some() && token.is_none() {
            problem(
                "policy.token_file",
                "is required with policy.addr (or policy.token)".into(),
            );
        }
        let count =
            |key: &str, v: Option<u32>, default: u32, problem: &mut dyn FnMut(&str, String)| {
                let v = v.unwrap_or(default);
                if !(1..=1_000_000).contains(&v) {
                    problem(key, "must be between 1 and 1000000".into());
                }
                v
            };
        let delay_after = count(
            "policy.delay_after",
            raw.delay_after,
            defaults.delay_after,
            &mut problem,
        );
        let refuse_after = count(
            "policy.refuse_after",
            raw.refuse_after,
            defaults.refuse_after,
            &mut problem,
        );
        if refuse_after < delay_after {
            problem(
                "policy.refuse_after",
                "must be at least policy.delay_after".into(),
            );
        }
        let spray_logins = count(
            "policy.spray_logins",
            raw.spray_logins,
            defaults.spray_logins,
            &mut problem,
        );
        let spray_net_logins = count(
            "policy.spray_net_logins",
            raw.spray_net_logins,
            defaults.spray_net_logins,
            &mut problem,
        );
        let guess_addresses = count(
            "policy.guess_addresses",
            raw.guess_addresses,
            defaults.guess_addresses,
            &mut problem,
        );
        let guess_action = match raw.guess_action.as_deref() {
            None | Some("delay") => GuessAction::Delay,
            Some("refuse") => GuessAction::Refuse,
            Some(other) => {
                problem(
                    "policy.guess_action",
                    format!("must be delay or refuse, not {other:?}"),
                );
                GuessAction::Delay
            }
        };
        let duration = |key: &str,
                        v: Option<ConfigDuration>,
                        default: Duration,
                        problem: &mut dyn FnMut(&str, String)| {
            let d = v.map_or(default, |d| d.0);
            if d.is_zero() {
                problem(key, "must be longer than zero".into());
            }
            d
        };
        let window = duration("policy.window", raw.window, defaults.window, &mut problem);
        let delay = duration("policy.delay", raw.delay, defaults.delay, &mut problem);
        let max_delay = duration(
            "policy.max_delay",
            raw.max_delay,
            defaults.max_delay,
            &mut problem,
        );
        let cooldown = duration(
            "policy.cooldown",
            raw.cooldown,
            defaults.cooldown,
            &mut problem,
        );
        if max_delay < delay {
            problem("policy.max_delay", "must be at least policy.delay".into());
        }
        if max_delay > Duration::from_secs(3600) {
            problem("policy.max_delay", "must be at most 1h".into());
        }
        let max_keys = raw.max_keys.unwrap_or(defaults.max_keys);
        if !(1..=100_000_000).contains(&max_keys) {
            problem("policy.max_keys", "must be between 1 and 100000000".into());
        }
        let message = raw.message.unwrap_or(defaults.message);
        if message.len() > 200 || message.chars().any(char::is_control) {
            problem(
                "policy.message",
                "must be at most 200 bytes, without control characters".into(),
            );
        }
        PolicyConfig {
            addr,
            tls,
            token,
            dry_run: raw.dry_run.unwrap_or(false),
            message,
            window,
            delay_after,
            delay,
            max_delay,
            refuse_after,
            cooldown,
            spray_logins,
            spray_net_logins,
            guess_addresses,
            guess_action,
            max_keys,
        }
    }
}
