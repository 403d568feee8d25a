//! `agents:`: the listener for Windows login agents (the winauthmon
//! protocol), their rate limit, and what their events may be used for.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigDuration, Problem};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAgents {
    /// Where agents post: HOST:PORT. Unset: no agent listener.
    pub addr: Option<String>,
    /// Server TLS (agents have no client certificates). Unset: plain HTTP.
    pub tls: Option<RawAgentTls>,
    /// Events one key may post per minute (default 60); beyond it, 429.
    pub rate_limit: Option<u32>,
    /// How long a retried event is recognised (default 7d); the keyed hash
    /// that recognises it is deleted after that.
    pub dedup_window: Option<ConfigDuration>,
    /// The per-user `time_spent` report: `true` for every tenant, or a list
    /// of the tenants that opted in (default: none; only the aggregate).
    pub per_user_time: Option<PerUserTimeRaw>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum PerUserTimeRaw {
    All(bool),
    Tenants(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAgentTls {
    pub cert: String,
    pub key: String,
}

/// Which tenants may see time spent per user.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum PerUserTime {
    #[default]
    None,
    All,
    Tenants(BTreeSet<String>),
}

impl PerUserTime {
    pub fn allows(&self, tenant: &str) -> bool {
        match self {
            PerUserTime::None => false,
            PerUserTime::All => true,
            PerUserTime::Tenants(t) => t.contains(tenant),
        }
    }
}

#[derive(Debug, Clone)]
pub struct AgentTls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct AgentsConfig {
    pub addr: Option<SocketAddr>,
    pub tls: Option<AgentTls>,
    pub rate_limit: u32,
    pub dedup_window: Duration,
    pub per_user_time: PerUserTime,
}

impl Default for AgentsConfig {
    fn default() -> Self {
        AgentsConfig {
            addr: None,
            tls: None,
            rate_limit: 60,
            dedup_window: Duration::from_secs(7 * 86_400),
            per_user_time: PerUserTime::None,
        }
    }
}

/// A tenant name: what comes before the `/` of an agent's users.
pub fn valid_tenant(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 64
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A side listener's `PREFIX.addr` (`HOST:PORT`, or `:PORT` for every
/// interface) and `PREFIX.tls`, with their problems.
pub(crate) fn listener(
    prefix: &str,
    addr: Option<&str>,
    tls: Option<RawAgentTls>,
    problem: &mut dyn FnMut(&str, String),
) -> (Option<SocketAddr>, Option<AgentTls>) {
    let addr = addr.and_then(|a| {
        let full = if a.starts_with(':') {
            format!("0.0.0.0{a}")
        } else {
            a.to_owned()
        };
        match full.parse() {
            Ok(addr) => Some(addr),
            Err(_) => {
                problem(
                    &format!("{prefix}.addr"),
                    format!("expected HOST:PORT, not {a:?}"),
                );
                None
            }
        }
    });
    let tls = tls.map(|t| {
        for (key, value) in [("cert", &t.cert), ("key", &t.key)] {
            if value.is_empty() {
                problem(&format!("{prefix}.tls.{key}"), "is required".into());
            }
        }
        AgentTls {
            cert: t.cert.into(),
            key: t.key.into(),
        }
    });
    (addr, tls)
}

impl AgentsConfig {
    pub fn from_raw(raw: Option<RawAgents>, problems: &mut Vec<Problem>) -> AgentsConfig {
        let mut problem = |key: &str, message: String| {
            problems.push(Problem {
                key: key.to_owned(),
                message,
            })
        };
        let Some(raw) = raw else {
            return AgentsConfig::default();
        };
        let defaults = AgentsConfig::default();
        let (addr, tls) = listener("agents", raw.addr.as_deref(), raw.tls, &mut problem);
        let rate_limit = raw.rate_limit.unwrap_or(defaults.rate_limit);
        if !(1..=100_000).contains(&rate_limit) {
            problem("agents.rate_limit", "must be between 1 and 100000".into());
        }
        let dedup_window = raw.dedup_window.map_or(defaults.dedup_window, |d| d.0);
        if dedup_window < Duration::from_secs(3600)
            || dedup_window > Duration::from_secs(90 * 86_400)
        {
            problem("agents.dedup_window", "must be between 1h and 90d".into());
        }
        let per_user_time = match raw.per_user_time {
            None | Some(PerUserTimeRaw::All(false)) => PerUserTime::None,
            Some(PerUserTimeRaw::All(true)) => PerUserTime::All,
            Some(PerUserTimeRaw::Tenants(list)) => {
                for t in list.iter().filter(|t| !valid_tenant(t)) {
                    problem(
                        "agents.per_user_time",
                        format!("{t:?} is not a tenant name"),
                    );
                }
                PerUserTime::Tenants(list.into_iter().collect())
            }
        };
        AgentsConfig {
            addr,
            tls,
            rate_limit,
            dedup_window,
            per_user_time,
        }
    }
}
