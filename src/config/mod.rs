//! Configuration: the YAML file, parsed strictly into raw serde structs (unknown
//! keys are errors that name the key and line), then validated into [`Config`].
//!
//! Key names are those of the Go `user-meta-server` where it had them; every key
//! added here is optional. Relative paths are relative to the working directory,
//! as in the Go server.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::acl::{Acl, AclEntry};

pub mod agents;
pub mod alerts;
pub mod policy;
pub mod transparency;
pub use agents::AgentsConfig;
pub use alerts::AlertsConfig;
pub use policy::PolicyConfig;
pub use transparency::TransparencyConfig;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Its message names the file and the OS error; it carries no source,
    /// so that a chain of causes does not say the OS error twice.
    #[error("cannot read {}: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{0}")]
    Parse(String),
    #[error("{}", problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"))]
    Invalid { problems: Vec<Problem> },
}

/// One thing wrong with a configuration, and the key it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// A duration in the config: `"90s"`, `"15m"`, `"1h"`, `"365d"`, `"2w"`, `"250ms"`,
/// or a bare integer meaning seconds (as the Go server's `request_timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigDuration(pub Duration);

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Secs(s) => Ok(ConfigDuration(Duration::from_secs(s))),
            Raw::Text(t) => parse_duration(&t)
                .map(ConfigDuration)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// Parses `<number><unit>` with unit one of ms, s, m, h, d, w.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 90s, 1h, 365d"))?;
    let unit_ms: u64 = match unit {
        "ms" => 1,
        "s" | "" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "w" => 7 * 86_400_000,
        _ => {
            return Err(format!(
                "invalid duration unit in {s:?}: use ms, s, m, h, d or w"
            ))
        }
    };
    n.checked_mul(unit_ms)
        .filter(|ms| *ms <= 100 * 365 * 86_400_000)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("duration {s:?} is too long"))
}

/// The file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Database location: a filesystem path (or `sqlite://PATH`) means
    /// SQLite; `postgres://…`, `postgresql://…` or a `host=… dbname=…`
    /// connection string means PostgreSQL.
    #[serde(default)]
    pub db_uri: Option<String>,
    /// Storage tuning (additive).
    #[serde(default)]
    pub db: RawDb,
    /// The HTTP(S) listener.
    #[serde(default)]
    pub http_server: RawHttpServer,
    /// What is reduced before anything is stored.
    #[serde(default)]
    pub privacy: RawPrivacy,
    /// How long data is kept.
    #[serde(default)]
    pub retention: RawRetention,
    /// Country lookup for addresses.
    #[serde(default)]
    pub geoip: Option<RawGeoIp>,
    /// Keys.
    #[serde(default)]
    pub secrets: RawSecrets,
    /// The login monitor: rules and where alerts go.
    #[serde(default)]
    pub alerts: Option<alerts::RawAlerts>,
    /// Windows login agents (the winauthmon protocol).
    #[serde(default)]
    pub agents: Option<agents::RawAgents>,
    /// Dovecot's auth policy protocol: a listener and its throttling.
    #[serde(default)]
    pub policy: Option<policy::RawPolicy>,
    /// Access transparency: whose reads of a user's data are recorded.
    #[serde(default)]
    pub transparency: Option<transparency::RawTransparency>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGeoIp {
    /// A MaxMind DB country database (MaxMind or flat `country_code` layout).
    pub db: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSecrets {
    /// 32-byte device key (raw, hex or base64). Unset: created beside the database.
    pub device_key_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDb {
    /// Read-only connections serving lookups (default 2).
    pub readers: Option<usize>,
    /// Writes committed together in one transaction at most (default 512).
    pub max_batch: Option<usize>,
    /// `full` (default: a 2xx survives power loss) or `normal` (survives a process crash).
    pub synchronous: Option<String>,
    /// Keep every (user, device) pair in memory to answer check_device
    /// without a database read (default true; always off on PostgreSQL,
    /// where other replicas write too).
    pub device_index: Option<bool>,
    /// PostgreSQL: a file holding the password (instead of one in `db_uri`).
    pub password_file: Option<String>,
    /// PostgreSQL: the standbys that serve the reads that may lag (a user's
    /// logs, devices, last logins and alerts, reports, the event list).
    pub read_uri: Option<String>,
    /// PostgreSQL: connections in the pool (default 16).
    pub pool_size: Option<usize>,
    /// PostgreSQL: longest a statement may run (default 30s).
    pub statement_timeout: Option<ConfigDuration>,
    /// PostgreSQL: longest a connection may take to open (default 10s).
    pub connect_timeout: Option<ConfigDuration>,
    /// PostgreSQL over TLS: the CA certificates (PEM) the server's certificate
    /// must chain to; its name is checked too (`sslmode` verify-full).
    pub ca_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttpServer {
    /// Mutual TLS; without it the server speaks plain HTTP.
    pub tls: Option<RawTls>,
    /// Requests served at once; beyond it the answer is 503 (default 1000).
    pub max_inflight_requests: Option<usize>,
    /// Time to receive a request body, in seconds or as a duration (default 30).
    pub request_timeout: Option<ConfigDuration>,
    /// Open connections at most (default 4096).
    pub max_connections: Option<usize>,
    /// Time for the TLS handshake (default 10s).
    pub handshake_timeout: Option<ConfigDuration>,
    /// Time to receive the request line and headers (default 10s).
    pub header_timeout: Option<ConfigDuration>,
    /// Time a keep-alive connection may sit idle (default 120s).
    pub idle_timeout: Option<ConfigDuration>,
    /// Largest request body (default 65536).
    pub max_body_bytes: Option<usize>,
    /// Largest body of `get_unused_accounts`, which carries name lists (default 4 MiB).
    pub max_bulk_body_bytes: Option<usize>,
    /// Most names in one `get_unused_accounts` request (default 50000).
    pub max_bulk_names: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// Server certificate chain (PEM).
    pub cert: String,
    /// Server private key (PEM).
    pub key: String,
    /// CA that signs client certificates (PEM).
    pub ca: String,
    /// Who may call what: regular expressions on the path and the client CN,
    /// both anchored. Default deny.
    #[serde(default)]
    pub acl: Vec<RawAclEntry>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAclEntry {
    pub path: String,
    pub cn: String,
    /// Only requests about these tenants' users (`tenant/…`); absent: any.
    pub tenants: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrivacy {
    /// Log and device timestamps are floored to this (default 1h).
    pub timestamp_granularity: Option<ConfigDuration>,
    /// Last-login timestamps are floored to this (default 24h).
    pub last_login_granularity: Option<ConfigDuration>,
    /// Keep the raw user agent string (default false).
    pub keep_user_agent: Option<bool>,
    /// Report rows describing fewer distinct users than this are withheld (default 5).
    pub report_min_users: Option<u32>,
    /// Time spent in a session (agents) is stored rounded to this (default 5m).
    pub session_granularity: Option<ConfigDuration>,
    /// Coarsening with age: stored times older than a step's `after` are
    /// floored to its `granularity` by the retention run (default none).
    pub decay: Option<Vec<RawDecayStep>>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDecayStep {
    /// Times older than this are coarsened.
    pub after: ConfigDuration,
    /// ... to a multiple of this.
    pub granularity: ConfigDuration,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetention {
    /// Log entries older than this are deleted (default 365d).
    pub user_logs: Option<ConfigDuration>,
    /// Devices unseen for this long are deleted (default 730d).
    pub devices: Option<ConfigDuration>,
    /// How often expired rows are deleted (default 1h).
    pub interval: Option<ConfigDuration>,
}

/// The validated configuration the server runs on.
#[derive(Debug, Clone)]
pub struct Config {
    pub db: DbConfig,
    pub http: HttpConfig,
    pub privacy: PrivacyConfig,
    pub retention: RetentionConfig,
    /// The GeoIP database file, if any.
    pub geoip: Option<PathBuf>,
    pub secrets: SecretsConfig,
    pub alerts: AlertsConfig,
    pub agents: AgentsConfig,
    pub policy: PolicyConfig,
    pub transparency: TransparencyConfig,
}

#[derive(Debug, Clone, Default)]
pub struct SecretsConfig {
    pub device_key_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct DbConfig {
    /// The SQLite file (empty on PostgreSQL).
    pub path: PathBuf,
    pub readers: usize,
    pub max_batch: usize,
    pub synchronous_full: bool,
    /// Every (user, device) pair in memory, for check_device.
    pub device_index: bool,
    /// Set when the database is PostgreSQL.
    pub postgres: Option<PostgresConfig>,
}

/// A PostgreSQL database shared by any number of replicas.
#[derive(Clone)]
pub struct PostgresConfig {
    /// The connection string as configured (a password in it is never shown).
    pub uri: String,
    /// The standbys for reads that may lag; the primary when none answers.
    pub read_uri: Option<String>,
    pub password_file: Option<PathBuf>,
    pub pool_size: usize,
    pub statement_timeout: Duration,
    pub connect_timeout: Duration,
    pub ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("uri", &redact_password(&self.uri))
            .field("read_uri", &self.read_uri.as_deref().map(redact_password))
            .field("password_file", &self.password_file)
            .field("pool_size", &self.pool_size)
            .field("statement_timeout", &self.statement_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// A connection string with any password replaced by `***`.
pub fn redact_password(uri: &str) -> String {
    if let Some(rest) = uri.split_once("://").map(|(_, r)| r) {
        if let Some((userinfo, _)) = rest.split_once('@') {
            if let Some((user, _)) = userinfo.split_once(':') {
                return uri.replacen(userinfo, &format!("{user}:***"), 1);
            }
        }
        return uri.to_owned();
    }
    uri.split_whitespace()
        .map(|kv| match kv.split_once('=') {
            Some(("password", _)) => "password=***".to_owned(),
            _ => kv.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether `db_uri` names a PostgreSQL database.
pub fn is_postgres_uri(uri: &str) -> bool {
    uri.starts_with("postgres://")
        || uri.starts_with("postgresql://")
        || (!uri.starts_with("sqlite://") && (uri.contains("host=") || uri.contains("dbname=")))
}

#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub tls: Option<TlsConfig>,
    pub max_inflight_requests: usize,
    pub request_timeout: Duration,
    pub max_connections: usize,
    pub handshake_timeout: Duration,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_body_bytes: usize,
    pub max_bulk_body_bytes: usize,
    pub max_bulk_names: usize,
}

#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    pub acl: Acl,
}

#[derive(Debug, Clone, Copy)]
pub struct PrivacyConfig {
    pub timestamp_granularity: Duration,
    pub last_login_granularity: Duration,
    pub keep_user_agent: bool,
    /// The k of k-anonymity in reports: a row about fewer users is withheld.
    pub report_min_users: u32,
    /// Time spent in a session is stored rounded to this.
    pub session_granularity: Duration,
}

impl Default for PrivacyConfig {
    fn default() -> Self {
        PrivacyConfig {
            timestamp_granularity: Duration::from_secs(3600),
            last_login_granularity: Duration::from_secs(86_400),
            keep_user_agent: false,
            report_min_users: 5,
            session_granularity: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct RetentionConfig {
    pub user_logs: Duration,
    pub devices: Duration,
    pub interval: Duration,
    /// `privacy.decay`: applied by the retention run, so kept with it.
    pub decay: Decay,
}

/// One step of `privacy.decay`, in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecayStep {
    pub after: i64,
    pub granularity: i64,
}

/// The steps of `privacy.decay`, `after` increasing, each granularity a
/// multiple of the one before (so flooring to a later step keeps an entry
/// floored to every earlier one, and a run changes nothing twice). A fixed
/// array keeps the retention settings `Copy`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Decay {
    steps: [DecayStep; Decay::MAX_STEPS],
    len: usize,
}

impl Decay {
    pub const MAX_STEPS: usize = 8;

    /// The steps, at most [`Decay::MAX_STEPS`] (more are ignored; the
    /// configuration refuses them).
    pub fn new(steps: &[DecayStep]) -> Decay {
        let mut d = Decay::default();
        for s in steps.iter().take(Self::MAX_STEPS) {
            d.steps[d.len] = *s;
            d.len += 1;
        }
        d
    }

    pub fn steps(&self) -> &[DecayStep] {
        &self.steps[..self.len]
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            user_logs: Duration::from_secs(365 * 86_400),
            devices: Duration::from_secs(730 * 86_400),
            interval: Duration::from_secs(3600),
            decay: Decay::default(),
        }
    }
}

pub const DEFAULT_CONFIG_PATH: &str = "/etc/user-meta-server.yml";

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_owned(),
            error,
        })?;
        Config::from_yaml(&text)
    }

    /// Parses and validates YAML text.
    pub fn from_yaml(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = if text.trim().is_empty() {
            RawConfig::default()
        } else {
            let de = serde_yaml::Deserializer::from_str(text);
            serde_path_to_error::deserialize(de).map_err(|e| {
                let path = e.path().to_string();
                let inner = e.into_inner().to_string();
                // serde_yaml names the enclosing map; name the key itself.
                let inner = inner
                    .split_once(": ")
                    .filter(|(prefix, _)| !prefix.contains(' '))
                    .map(|(_, rest)| rest.to_owned())
                    .unwrap_or(inner);
                if path == "." || path.is_empty() {
                    ConfigError::Parse(inner)
                } else {
                    ConfigError::Parse(format!("{path}: {inner}"))
                }
            })?
        };
        Config::from_raw(raw)
    }

    /// Validates every key, collecting all problems rather than stopping at the first.
    pub fn from_raw(raw: RawConfig) -> Result<Config, ConfigError> {
        let mut problems = Vec::new();
        let mut problem = |key: &str, message: String| {
            problems.push(Problem {
                key: key.to_owned(),
                message,
            })
        };

        let db_path = match raw.db_uri.as_deref() {
            None | Some("") => {
                problem(
                    "db_uri",
                    "is required (a path to the SQLite database file)".into(),
                );
                PathBuf::new()
            }
            Some(uri) if is_postgres_uri(uri) => PathBuf::new(),
            Some(uri) => PathBuf::from(uri.strip_prefix("sqlite://").unwrap_or(uri)),
        };
        let synchronous_full = match raw.db.synchronous.as_deref() {
            None | Some("full") => true,
            Some("normal") => false,
            Some(other) => {
                problem(
                    "db.synchronous",
                    format!("must be full or normal, not {other:?}"),
                );
                true
            }
        };
        let readers = raw.db.readers.unwrap_or(2);
        if !(1..=64).contains(&readers) {
            problem("db.readers", "must be between 1 and 64".into());
        }
        let max_batch = raw.db.max_batch.unwrap_or(512);
        if !(1..=100_000).contains(&max_batch) {
            problem("db.max_batch", "must be between 1 and 100000".into());
        }

        let h = raw.http_server;
        let tls = h.tls.map(|t| {
            for (key, value) in [
                ("http_server.tls.cert", &t.cert),
                ("http_server.tls.key", &t.key),
                ("http_server.tls.ca", &t.ca),
            ] {
                if value.is_empty() {
                    problem(key, "is required".into());
                }
            }
            let mut entries = Vec::new();
            for (i, e) in t.acl.iter().enumerate() {
                let key = format!("http_server.tls.acl[{i}]");
                let entry = match AclEntry::new(&e.path, &e.cn) {
                    Ok(entry) => entry,
                    Err(msg) => {
                        problem(&key, msg);
                        continue;
                    }
                };
                match &e.tenants {
                    None => entries.push(entry),
                    Some(tenants) => {
                        if tenants.is_empty() {
                            problem(
                                &format!("{key}.tenants"),
                                "is empty: the entry would allow nothing; leave it out for every tenant"
                                    .into(),
                            );
                        }
                        for t in tenants.iter().filter(|t| !agents::valid_tenant(t)) {
                            problem(
                                &format!("{key}.tenants"),
                                format!("{t:?} is not a tenant name (1 to 64 letters, digits, '-', '_' or '.')"),
                            );
                        }
                        entries.push(entry.with_tenants(tenants.clone()));
                    }
                }
            }
            if t.acl.is_empty() {
                problem(
                    "http_server.tls.acl",
                    "is empty: every request would be denied".into(),
                );
            }
            TlsConfig {
                cert: t.cert.into(),
                key: t.key.into(),
                ca: t.ca.into(),
                acl: Acl::new(entries),
            }
        });
        let positive =
            |key: &str, v: Option<usize>, default: usize, problem: &mut dyn FnMut(&str, String)| {
                let v = v.unwrap_or(default);
                if v == 0 {
                    problem(key, "must be greater than 0".into());
                }
                v
            };
        let max_inflight_requests = positive(
            "http_server.max_inflight_requests",
            h.max_inflight_requests,
            1000,
            &mut problem,
        );
        let max_connections = positive(
            "http_server.max_connections",
            h.max_connections,
            4096,
            &mut problem,
        );
        let max_body_bytes = positive(
            "http_server.max_body_bytes",
            h.max_body_bytes,
            64 * 1024,
            &mut problem,
        );
        let max_bulk_body_bytes = positive(
            "http_server.max_bulk_body_bytes",
            h.max_bulk_body_bytes,
            4 << 20,
            &mut problem,
        );
        let max_bulk_names = positive(
            "http_server.max_bulk_names",
            h.max_bulk_names,
            50_000,
            &mut problem,
        );
        let mut nonzero = |key: &str, v: Option<ConfigDuration>, default: u64| {
            let d = v.map(|d| d.0).unwrap_or(Duration::from_secs(default));
            if d.is_zero() {
                problem(key, "must be longer than 0".into());
            }
            d
        };
        let request_timeout = nonzero("http_server.request_timeout", h.request_timeout, 30);
        let handshake_timeout = nonzero("http_server.handshake_timeout", h.handshake_timeout, 10);
        let header_timeout = nonzero("http_server.header_timeout", h.header_timeout, 10);
        let idle_timeout = nonzero("http_server.idle_timeout", h.idle_timeout, 120);

        let defaults = PrivacyConfig::default();
        let timestamp_granularity = nonzero(
            "privacy.timestamp_granularity",
            raw.privacy.timestamp_granularity,
            defaults.timestamp_granularity.as_secs(),
        );
        let last_login_granularity = nonzero(
            "privacy.last_login_granularity",
            raw.privacy.last_login_granularity,
            defaults.last_login_granularity.as_secs(),
        );
        let rdefaults = RetentionConfig::default();
        let user_logs = nonzero(
            "retention.user_logs",
            raw.retention.user_logs,
            rdefaults.user_logs.as_secs(),
        );
        let devices = nonzero(
            "retention.devices",
            raw.retention.devices,
            rdefaults.devices.as_secs(),
        );
        let interval = nonzero(
            "retention.interval",
            raw.retention.interval,
            rdefaults.interval.as_secs(),
        );
        let session_granularity = nonzero(
            "privacy.session_granularity",
            raw.privacy.session_granularity,
            defaults.session_granularity.as_secs(),
        );
        for (key, g) in [
            ("privacy.timestamp_granularity", timestamp_granularity),
            ("privacy.last_login_granularity", last_login_granularity),
            ("privacy.session_granularity", session_granularity),
        ] {
            if g.subsec_nanos() != 0 || g > Duration::from_secs(7 * 86_400) {
                problem(key, "must be whole seconds, at most 7d".into());
            }
        }

        let report_min_users = raw
            .privacy
            .report_min_users
            .unwrap_or(defaults.report_min_users);
        if !(1..=10_000).contains(&report_min_users) {
            problem(
                "privacy.report_min_users",
                "must be between 1 and 10000".into(),
            );
        }

        let mut non_empty = |key: &str, value: String| {
            if value.is_empty() {
                problem(key, "must not be empty".into());
            }
            PathBuf::from(value)
        };
        let geoip = raw.geoip.map(|g| non_empty("geoip.db", g.db));
        let device_key_file = raw
            .secrets
            .device_key_file
            .map(|f| non_empty("secrets.device_key_file", f));

        let alerts = AlertsConfig::from_raw(raw.alerts, &mut problems);
        let decay = decay_steps(
            raw.privacy.decay.as_deref().unwrap_or_default(),
            timestamp_granularity,
            &alerts,
            &mut problems,
        );
        let agents = AgentsConfig::from_raw(raw.agents, &mut problems);
        let policy = PolicyConfig::from_raw(raw.policy, &mut problems);
        let transparency = TransparencyConfig::from_raw(raw.transparency, &mut problems);
        let postgres = match raw.db_uri.as_deref() {
            Some(uri) if is_postgres_uri(uri) => {
                if device_key_file.is_none() {
                    problems.push(Problem {
                        key: "secrets.device_key_file".into(),
                        message: "is required with PostgreSQL: every replica needs the same key"
                            .into(),
                    });
                }
                let pool_size = raw.db.pool_size.unwrap_or(16);
                if !(1..=1024).contains(&pool_size) {
                    problems.push(Problem {
                        key: "db.pool_size".into(),
                        message: "must be between 1 and 1024".into(),
                    });
                }
                Some(PostgresConfig {
                    uri: uri.to_owned(),
                    read_uri: raw.db.read_uri.filter(|u| !u.is_empty()),
                    password_file: raw.db.password_file.as_deref().map(PathBuf::from),
                    pool_size,
                    statement_timeout: raw
                        .db
                        .statement_timeout
                        .map_or(Duration::from_secs(30), |d| d.0),
                    connect_timeout: raw
                        .db
                        .connect_timeout
                        .map_or(Duration::from_secs(10), |d| d.0),
                    ca_file: raw.db.ca_file.as_deref().map(PathBuf::from),
                })
            }
            _ if raw.db.read_uri.as_deref().is_some_and(|u| !u.is_empty()) => {
                problems.push(Problem {
                    key: "db.read_uri".into(),
                    message: "needs a PostgreSQL db_uri".into(),
                });
                None
            }
            _ => None,
        };

        if !problems.is_empty() {
            return Err(ConfigError::Invalid { problems });
        }
        Ok(Config {
            db: DbConfig {
                path: db_path,
                readers,
                max_batch,
                synchronous_full,
                device_index: raw.db.device_index.unwrap_or(true),
                postgres,
            },
            http: HttpConfig {
                tls,
                max_inflight_requests,
                request_timeout,
                max_connections,
                handshake_timeout,
                header_timeout,
                idle_timeout,
                max_body_bytes,
                max_bulk_body_bytes,
                max_bulk_names,
            },
            privacy: PrivacyConfig {
                timestamp_granularity,
                last_login_granularity,
                keep_user_agent: raw.privacy.keep_user_agent.unwrap_or(false),
                report_min_users,
                session_granularity,
            },
            retention: RetentionConfig {
                user_logs,
                devices,
                interval,
                decay,
            },
            geoip,
            secrets: SecretsConfig { device_key_file },
            alerts,
            agents,
            policy,
            transparency,
        })
    }
}

impl Config {
    /// The files the configuration names that do not exist. Kept apart from
    /// parsing so that a config can be checked on another machine.
    pub fn missing_files(&self) -> Vec<Problem> {
        let mut files: Vec<(&str, &Path)> = Vec::new();
        if let Some(t) = &self.http.tls {
            files.push(("http_server.tls.cert", &t.cert));
            files.push(("http_server.tls.key", &t.key));
            files.push(("http_server.tls.ca", &t.ca));
        }
        if let Some(g) = &self.geoip {
            files.push(("geoip.db", g));
        }
        if let Some(k) = &self.secrets.device_key_file {
            files.push(("secrets.device_key_file", k));
        }
        if let Some(pg) = &self.db.postgres {
            if let Some(f) = &pg.password_file {
                files.push(("db.password_file", f));
            }
            if let Some(f) = &pg.ca_file {
                files.push(("db.ca_file", f));
            }
        }
        if let Some(t) = &self.agents.tls {
            files.push(("agents.tls.cert", &t.cert));
            files.push(("agents.tls.key", &t.key));
        }
        if let Some(t) = &self.policy.tls {
            files.push(("policy.tls.cert", &t.cert));
            files.push(("policy.tls.key", &t.key));
        }
        if let Some(f) = self.policy.token.as_ref().and_then(|t| t.file()) {
            files.push(("policy.token_file", f));
        }
        if let Some(f) = self.alerts.webhook.as_ref().and_then(|w| w.secret.file()) {
            files.push(("alerts.webhook.secret_file", f));
        }
        if let Some(f) = self
            .alerts
            .smtp
            .as_ref()
            .and_then(|s| s.credentials.as_ref())
            .and_then(|(_, p)| p.file())
        {
            files.push(("alerts.smtp.password_file", f));
        }
        if let Some(dir) = self.db.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.is_dir() {
                files.push(("db_uri", dir));
            }
        }
        files
            .into_iter()
            .filter(|(_, p)| !p.exists())
            .map(|(key, p)| Problem {
                key: key.to_owned(),
                message: format!("{}: no such file or directory", p.display()),
            })
            .collect()
    }
}

/// Validates `privacy.decay`: at most [`Decay::MAX_STEPS`] steps, `after`
/// increasing, each granularity whole seconds, a multiple of
/// `privacy.timestamp_granularity` and of the step before's (and larger).
/// With the `dormant_account` rule on, no step may start before
/// `alerts.dormant_after`: the rule reads the newest login from the log, and
/// a login floored earlier while still inside the dormancy period could look
/// dormant. An entry older than `dormant_after` is dormant whichever way it
/// is floored, so steps from there on never change the rule's answer.
fn decay_steps(
    raw: &[RawDecayStep],
    timestamp_granularity: Duration,
    alerts: &AlertsConfig,
    problems: &mut Vec<Problem>,
) -> Decay {
    let mut problem = |key: String, message: String| problems.push(Problem { key, message });
    if raw.len() > Decay::MAX_STEPS {
        problem(
            "privacy.decay".into(),
            format!(
                "has {} steps; at most {} are allowed",
                raw.len(),
                Decay::MAX_STEPS
            ),
        );
    }
    let base = timestamp_granularity.as_secs().max(1) as i64;
    let dormant = alerts
        .rules
        .contains(&crate::model::AlertKind::DormantAccount)
        .then_some(alerts.dormant_after);
    let mut steps = Vec::with_capacity(raw.len());
    let mut previous = DecayStep {
        after: 0,
        granularity: base,
    };
    for (i, s) in raw.iter().enumerate() {
        let after = s.after.0;
        let g = s.granularity.0;
        let key = |field: &str| format!("privacy.decay[{i}].{field}");
        if after.subsec_nanos() != 0 || after.is_zero() {
            problem(key("after"), "must be whole seconds, longer than 0".into());
        } else if i > 0 && after.as_secs() as i64 <= previous.after {
            problem(key("after"), "must be longer than the step before's".into());
        }
        if let Some(d) = dormant.filter(|d| after < *d) {
            problem(
                key("after"),
                format!(
                    "is shorter than alerts.dormant_after ({}d): a login still inside the \
                     dormancy period could be floored to look dormant; start the step at \
                     {}d or later, or leave out the dormant_account rule",
                    d.as_secs() / 86_400,
                    d.as_secs().div_ceil(86_400)
                ),
            );
        }
        let gs = g.as_secs() as i64;
        if g.subsec_nanos() != 0 || gs == 0 {
            problem(
                key("granularity"),
                "must be whole seconds, longer than 0".into(),
            );
        } else if gs % base != 0 {
            problem(
                key("granularity"),
                "must be a multiple of privacy.timestamp_granularity".into(),
            );
        } else if i > 0 && (gs <= previous.granularity || gs % previous.granularity != 0) {
            problem(
                key("granularity"),
                "must be larger than the step before's and a multiple of it".into(),
            );
        }
        if gs > 0 && g.subsec_nanos() == 0 && gs % base == 0 {
            previous = DecayStep {
                after: after.as_secs() as i64,
                granularity: gs,
            };
        } else {
            previous.after = after.as_secs() as i64;
        }
        steps.push(DecayStep {
            after: after.as_secs() as i64,
            granularity: gs.max(1),
        });
    }
    Decay::new(&steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(
            parse_duration("365d").unwrap(),
            Duration::from_secs(365 * 86400)
        );
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        for bad in [
            "",
            "h",
            "1y",
            "-1h",
            "1.5h",
            "99999999999999999999d",
            "1000000d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn unknown_keys_name_the_key_and_line() {
        let err =
            Config::from_yaml("db_uri: x.db\nprivacy:\n  keep_user_agnet: true\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("keep_user_agnet"), "{msg}");
        assert!(msg.contains("line 3"), "{msg}");
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let yaml = "
http_server:
  max_inflight_requests: 0
  tls:
    cert: ''
    key: ''
    ca: ''
    acl:
      - { path: '(', cn: x }
      - { path: /api/get_.*, cn: y, tenants: [acme, 'a/b'] }
      - { path: /api/get_.*, cn: z, tenants: [] }
privacy:
  timestamp_granularity: 0s
";
        let Err(ConfigError::Invalid { problems }) = Config::from_yaml(yaml) else {
            panic!("expected problems")
        };
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        for key in [
            "db_uri",
            "http_server.tls.cert",
            "http_server.tls.key",
            "http_server.tls.ca",
            "http_server.tls.acl[0]",
            "http_server.tls.acl[1].tenants",
            "http_server.tls.acl[2].tenants",
            "http_server.max_inflight_requests",
            "privacy.timestamp_granularity",
        ] {
            assert!(keys.contains(&key), "{key} missing from {keys:?}");
        }
    }

    #[test]
    fn go_style_request_timeout_in_seconds() {
        let c = Config::from_yaml("db_uri: x.db\nhttp_server:\n  request_timeout: 7\n").unwrap();
        assert_eq!(c.http.request_timeout, Duration::from_secs(7));
        assert!(c.http.tls.is_none());
    }

    #[test]
    fn missing_files_are_named() {
        let c = Config::from_yaml(
            "db_uri: /nonexistent-dir/x.db\ngeoip: { db: /nonexistent/geo.mmdb }\n",
        )
        .unwrap();
        let keys: Vec<String> = c.missing_files().into_iter().map(|p| p.key).collect();
        assert_eq!(keys, vec!["geoip.db", "db_uri"]);
    }

    fn decay_problems(yaml: &str) -> Vec<String> {
        match Config::from_yaml(yaml) {
            Ok(_) => Vec::new(),
            Err(ConfigError::Invalid { problems }) => {
                problems.iter().map(|p| p.to_string()).collect()
            }
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn decay_steps_are_read_in_seconds() {
        let c = Config::from_yaml(
            "db_uri: x.db\nprivacy:\n  decay:\n    - { after: 180d, granularity: 1d }\n    - { after: 365d, granularity: 30d }\n",
        )
        .unwrap();
        assert_eq!(
            c.retention.decay.steps(),
            [
                DecayStep {
                    after: 180 * 86_400,
                    granularity: 86_400
                },
                DecayStep {
                    after: 365 * 86_400,
                    granularity: 30 * 86_400
                },
            ]
        );
        assert!(Config::from_yaml("db_uri: x.db\n")
            .unwrap()
            .retention
            .decay
            .is_empty());
    }

    #[test]
    fn decay_steps_must_grow_and_divide() {
        let problems = decay_problems(
            "db_uri: x.db
alerts: { rules: [new_device] }
privacy:
  decay:
    - { after: 30d, granularity: 90m }
    - { after: 20d, granularity: 1d }
    - { after: 40d, granularity: 36h }
    - { after: 50d, granularity: 12h }
",
        );
        let keys: Vec<&str> = problems
            .iter()
            .map(|p| p.split(':').next().unwrap())
            .collect();
        assert_eq!(
            keys,
            [
                "privacy.decay[0].granularity",
                "privacy.decay[1].after",
                "privacy.decay[2].granularity",
                "privacy.decay[3].granularity",
            ],
            "{problems:?}"
        );
        // Without the dormant rule, a step may start early.
        assert!(decay_problems(
            "db_uri: x.db\nalerts: { rules: [new_device] }\nprivacy:\n  decay: [{ after: 30d, granularity: 1d }]\n"
        )
        .is_empty());
    }

    #[test]
    fn decay_may_not_start_inside_the_dormancy_period() {
        let problems =
            decay_problems("db_uri: x.db\nprivacy:\n  decay: [{ after: 30d, granularity: 1d }]\n");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0]
                .starts_with("privacy.decay[0].after: is shorter than alerts.dormant_after (180d)"),
            "{problems:?}"
        );
        assert!(decay_problems(
            "db_uri: x.db\nalerts: { dormant_after: 20d }\nprivacy:\n  decay: [{ after: 20d, granularity: 1d }]\n"
        )
        .is_empty());
    }
}
