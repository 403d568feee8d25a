//! The `alerts:` block of the configuration.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigDuration, Problem};

use crate::model::{AlertKind, SINK_LOG, SINK_MAIL_ADMIN, SINK_MAIL_USER, SINK_WEBHOOK};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAlerts {
    /// Rules that run (default: all of them).
    pub rules: Option<Vec<String>>,
    /// A login after this long without one is a dormant account waking up (default 180d).
    pub dormant_after: Option<ConfigDuration>,
    /// This many `login_failure` entries within the window raise one alert (default 10 in 1h).
    pub failure_burst: Option<RawFailureBurst>,
    /// The log sink: count each alert by kind in the metrics, and write it
    /// to the server log at debug level (default true).
    pub log: Option<bool>,
    /// POST each alert as signed JSON.
    pub webhook: Option<RawWebhook>,
    /// Mail each alert.
    pub smtp: Option<RawSmtp>,
    /// Delivery retries: exponential back-off between these bounds (default 5s to 1h).
    pub retry: Option<RawRetry>,
    /// How long a claimed delivery is left to the replica that claimed it
    /// before another may deliver it again (default 5m): longer than a
    /// delivery may take (the sinks' timeouts).
    pub delivery_lease: Option<ConfigDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFailureBurst {
    pub count: Option<u32>,
    pub window: Option<ConfigDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    pub initial: Option<ConfigDuration>,
    pub max: Option<ConfigDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhook {
    /// `https://…` or `http://…`.
    pub url: String,
    /// The HMAC-SHA256 key, inline …
    pub secret: Option<String>,
    /// … or in a file.
    pub secret_file: Option<String>,
    /// CA bundle to verify the receiver (default: the system bundle).
    pub ca: Option<String>,
    /// Client certificate and key to present (optional).
    pub cert: Option<String>,
    pub key: Option<String>,
    /// Per attempt (default 10s).
    pub timeout: Option<ConfigDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSmtp {
    /// `host:port`.
    pub server: String,
    /// `starttls` (default), `implicit` or `none`.
    pub tls: Option<String>,
    /// CA bundle to verify the server (default: the usual public roots).
    pub ca: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub password_file: Option<String>,
    pub from: String,
    /// Where every alert goes.
    pub admin_to: Option<String>,
    /// Where a user's own alerts go: a template such as `{username}@example.org`.
    pub user_to: Option<String>,
    /// Per attempt (default 30s).
    pub timeout: Option<ConfigDuration>,
}

#[derive(Clone)]
pub struct WebhookConfig {
    pub url: hyper::Uri,
    pub secret: Secret,
    pub ca: Option<PathBuf>,
    pub identity: Option<(PathBuf, PathBuf)>,
    pub timeout: Duration,
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &self.url)
            .field("secret", &"<redacted>")
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    StartTls,
    Implicit,
    None,
}

#[derive(Clone)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    pub ca: Option<PathBuf>,
    pub credentials: Option<(String, Secret)>,
    pub from: String,
    pub admin_to: Option<String>,
    pub user_to: Option<String>,
    pub timeout: Duration,
}

impl std::fmt::Debug for SmtpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpConfig")
            .field("server", &format_args!("{}:{}", self.host, self.port))
            .field("tls", &self.tls)
            .field(
                "credentials",
                &self.credentials.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct AlertsConfig {
    pub rules: Vec<AlertKind>,
    pub dormant_after: Duration,
    pub burst_count: u32,
    pub burst_window: Duration,
    pub log: bool,
    pub webhook: Option<WebhookConfig>,
    pub smtp: Option<SmtpConfig>,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    pub delivery_lease: Duration,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            rules: AlertKind::ALL.to_vec(),
            dormant_after: Duration::from_secs(180 * 86_400),
            burst_count: 10,
            burst_window: Duration::from_secs(3600),
            log: true,
            webhook: None,
            smtp: None,
            retry_initial: Duration::from_secs(5),
            retry_max: Duration::from_secs(3600),
            delivery_lease: Duration::from_secs(300),
        }
    }
}

/// A secret given inline or as a file; files are read when the sinks start,
/// so a configuration can be checked away from its secrets.
#[derive(Clone)]
pub enum Secret {
    Inline(String),
    File(PathBuf),
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Secret::Inline(_) => f.write_str("Secret(<redacted>)"),
            Secret::File(p) => write!(f, "Secret(file {})", p.display()),
        }
    }
}

impl Secret {
    pub fn read(&self) -> Result<String, String> {
        match self {
            Secret::Inline(v) => Ok(v.clone()),
            Secret::File(p) => std::fs::read_to_string(p)
                .map(|v| v.trim_end_matches(['\n', '\r']).to_owned())
                .map_err(|e| format!("{}: {e}", p.display())),
        }
    }

    pub fn file(&self) -> Option<&std::path::Path> {
        match self {
            Secret::File(p) => Some(p),
            Secret::Inline(_) => None,
        }
    }
}

pub(crate) fn secret(
    key: &str,
    inline: Option<String>,
    file: Option<String>,
    problems: &mut Vec<Problem>,
) -> Option<Secret> {
    match (inline, file) {
        (Some(_), Some(_)) => {
            problems.push(Problem {
                key: key.to_owned(),
                message: "give the value inline or as a file, not both".into(),
            });
            None
        }
        (Some(v), None) if !v.is_empty() => Some(Secret::Inline(v)),
        (None, Some(f)) if !f.is_empty() => Some(Secret::File(f.into())),
        _ => None,
    }
}

impl AlertsConfig {
    /// Validates the block, adding every problem found to `problems`.
    pub fn from_raw(raw: Option<RawAlerts>, problems: &mut Vec<Problem>) -> AlertsConfig {
        let defaults = AlertsConfig::default();
        let Some(raw) = raw else {
            return defaults;
        };
        let mut problem = |key: &str, message: String| {
            problems.push(Problem {
                key: key.to_owned(),
                message,
            })
        };
        let mut rules = Vec::new();
        for (i, name) in raw
            .rules
            .unwrap_or_else(|| {
                AlertKind::ALL
                    .iter()
                    .map(|k| k.as_str().to_owned())
                    .collect()
            })
            .iter()
            .enumerate()
        {
            match AlertKind::parse(name) {
                Some(k) => rules.push(k),
                None => problem(
                    &format!("alerts.rules[{i}]"),
                    format!(
                        "unknown rule {name:?}; known: {}",
                        AlertKind::ALL.map(|k| k.as_str()).join(", ")
                    ),
                ),
            }
        }
        let burst = raw.failure_burst.unwrap_or_default();
        let burst_count = burst.count.unwrap_or(defaults.burst_count);
        if burst_count < 2 {
            problem("alerts.failure_burst.count", "must be at least 2".into());
        }
        let positive = |v: Option<ConfigDuration>, d: Duration| v.map(|v| v.0).unwrap_or(d);
        let burst_window = positive(burst.window, defaults.burst_window);
        let dormant_after = positive(raw.dormant_after, defaults.dormant_after);
        let retry = raw.retry.unwrap_or_default();
        let retry_initial = positive(retry.initial, defaults.retry_initial);
        let retry_max = positive(retry.max, defaults.retry_max);
        let delivery_lease = positive(raw.delivery_lease, defaults.delivery_lease);
        for (key, d) in [
            ("alerts.delivery_lease", delivery_lease),
            ("alerts.failure_burst.window", burst_window),
            ("alerts.dormant_after", dormant_after),
            ("alerts.retry.initial", retry_initial),
        ] {
            if d.is_zero() {
                problem(key, "must be longer than 0".into());
            }
        }
        if retry_max < retry_initial {
            problem(
                "alerts.retry.max",
                "must not be shorter than alerts.retry.initial".into(),
            );
        }

        let mut secret_problems = Vec::new();
        let webhook = raw.webhook.and_then(|w| {
            let url: Option<hyper::Uri> = match w.url.parse::<hyper::Uri>() {
                Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => {
                    Some(u)
                }
                _ => {
                    problem(
                        "alerts.webhook.url",
                        format!("{:?} is not an http(s) URL", w.url),
                    );
                    None
                }
            };
            let secret = secret(
                "alerts.webhook.secret",
                w.secret,
                w.secret_file,
                &mut secret_problems,
            );
            if secret.is_none() {
                problem(
                    "alerts.webhook.secret",
                    "a secret (or secret_file) is required to sign deliveries".into(),
                );
            }
            let identity = match (w.cert, w.key) {
                (Some(c), Some(k)) => Some((PathBuf::from(c), PathBuf::from(k))),
                (None, None) => None,
                _ => {
                    problem("alerts.webhook.cert", "cert and key go together".into());
                    None
                }
            };
            Some(WebhookConfig {
                url: url?,
                secret: secret?,
                ca: w.ca.map(PathBuf::from),
                identity,
                timeout: w.timeout.map(|t| t.0).unwrap_or(Duration::from_secs(10)),
            })
        });
        let smtp = raw.smtp.map(|s| {
            let tls = match s.tls.as_deref() {
                None | Some("starttls") => SmtpTls::StartTls,
                Some("implicit") => SmtpTls::Implicit,
                Some("none") => SmtpTls::None,
                Some(other) => {
                    problem(
                        "alerts.smtp.tls",
                        format!("must be starttls, implicit or none, not {other:?}"),
                    );
                    SmtpTls::StartTls
                }
            };
            let (host, port) = match s
                .server
                .rsplit_once(':')
                .map(|(h, p)| (h, p.parse::<u16>()))
            {
                Some((h, Ok(p))) if !h.is_empty() => (h.trim_matches(['[', ']']).to_owned(), p),
                _ => {
                    problem(
                        "alerts.smtp.server",
                        format!("{:?}: expected host:port", s.server),
                    );
                    (String::new(), 0)
                }
            };
            let password = secret(
                "alerts.smtp.password",
                s.password,
                s.password_file,
                &mut secret_problems,
            );
            let credentials = match (s.username, password) {
                (Some(u), Some(p)) => Some((u, p)),
                (None, None) => None,
                _ => {
                    problem(
                        "alerts.smtp.username",
                        "username and password go together".into(),
                    );
                    None
                }
            };
            for (key, addr) in [
                ("alerts.smtp.from", Some(&s.from)),
                ("alerts.smtp.admin_to", s.admin_to.as_ref()),
            ] {
                if let Some(a) = addr {
                    if a.parse::<lettre::Address>().is_err() {
                        problem(key, format!("{a:?} is not an e-mail address"));
                    }
                }
            }
            if let Some(t) = &s.user_to {
                if !t.contains("{username}")
                    || t.replace("{username}", "user")
                        .parse::<lettre::Address>()
                        .is_err()
                {
                    problem(
                        "alerts.smtp.user_to",
                        format!("{t:?} must be an address template containing {{username}}"),
                    );
                }
            }
            if s.admin_to.is_none() && s.user_to.is_none() {
                problem("alerts.smtp", "needs admin_to, user_to or both".into());
            }
            SmtpConfig {
                host,
                port,
                tls,
                ca: s.ca.map(PathBuf::from),
                credentials,
                from: s.from,
                admin_to: s.admin_to,
                user_to: s.user_to,
                timeout: s.timeout.map(|t| t.0).unwrap_or(Duration::from_secs(30)),
            }
        });
        problems.extend(secret_problems);
        AlertsConfig {
            rules,
            dormant_after,
            burst_count,
            burst_window,
            log: raw.log.unwrap_or(true),
            webhook,
            smtp,
            retry_initial,
            retry_max,
            delivery_lease,
        }
    }

    pub fn enabled(&self, kind: AlertKind) -> bool {
        self.rules.contains(&kind)
    }

    /// The sinks each new alert is queued for.
    pub fn sinks(&self) -> Vec<&'static str> {
        let mut s = Vec::new();
        if self.log {
            s.push(SINK_LOG);
        }
        if self.webhook.is_some() {
            s.push(SINK_WEBHOOK);
        }
        if let Some(smtp) = &self.smtp {
            if smtp.admin_to.is_some() {
                s.push(SINK_MAIL_ADMIN);
            }
            if smtp.user_to.is_some() {
                s.push(SINK_MAIL_USER);
            }
        }
        s
    }
}
