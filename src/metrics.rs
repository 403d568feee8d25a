//! Counters, gauges and histograms served at `GET /metrics` in the Prometheus
//! text format.
//!
//! One process-wide set of atomics ([`global`]): recording is a few relaxed
//! atomic additions, no lock and no allocation, so it stays on the hot path.
//! Every label comes from a closed set: [`Endpoint::name`], the status class,
//! and the small enums below. Nothing about a client or a user is ever a label.
//!
//! Other layers record through plain functions: the server ([`Metrics::request`],
//! connections, TLS failures), the store (write batches, queue depths) and the
//! alert sinks ([`alert_delivery`]).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::endpoint::Endpoint;

/// Routes plus one slot for requests that matched no route.
const ROUTES: usize = Endpoint::ALL.len() + 1;
const UNKNOWN_ROUTE: usize = Endpoint::ALL.len();
/// 1xx to 5xx.
const CLASSES: usize = 5;

/// Upper bounds of the latency buckets, in microseconds (the last is +Inf).
const LATENCY_BOUNDS_US: [u64; 14] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000,
];
const LATENCY_BUCKETS: usize = LATENCY_BOUNDS_US.len() + 1;

/// Upper bounds of the write-batch size buckets (the last is +Inf).
const BATCH_BOUNDS: [u64; 12] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096];
const BATCH_BUCKETS: usize = BATCH_BOUNDS.len() + 1;

/// Why a TLS handshake was refused: a closed set, safe as a label and in logs
/// (it names no certificate, address or time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFailure {
    /// The handshake did not finish within `handshake_timeout`.
    Timeout,
    /// The client sent no certificate.
    NoCertificate,
    /// The client certificate does not chain to the configured CA.
    UnknownIssuer,
    Expired,
    NotYetValid,
    /// The certificate is not for client authentication (extended key usage).
    WrongKeyUsage,
    /// Any other certificate problem (bad signature, encoding, revoked, ...).
    BadCertificate,
    /// An old or disabled protocol version (TLS 1.1 and below).
    ProtocolVersion,
    /// No cipher suite, group or signature scheme in common.
    Incompatible,
    /// Bytes that are not TLS (plain HTTP to the TLS port, garbage).
    NotTls,
    /// The client aborted the handshake with an alert.
    ClientAlert,
    /// The connection closed or failed during the handshake.
    Closed,
    Other,
}

impl TlsFailure {
    pub const ALL: [TlsFailure; 13] = [
        TlsFailure::Timeout,
        TlsFailure::NoCertificate,
        TlsFailure::UnknownIssuer,
        TlsFailure::Expired,
        TlsFailure::NotYetValid,
        TlsFailure::WrongKeyUsage,
        TlsFailure::BadCertificate,
        TlsFailure::ProtocolVersion,
        TlsFailure::Incompatible,
        TlsFailure::NotTls,
        TlsFailure::ClientAlert,
        TlsFailure::Closed,
        TlsFailure::Other,
    ];

    pub fn label(self) -> &'static str {
        match self {
            TlsFailure::Timeout => "timeout",
            TlsFailure::NoCertificate => "no_certificate",
            TlsFailure::UnknownIssuer => "unknown_issuer",
            TlsFailure::Expired => "expired",
            TlsFailure::NotYetValid => "not_yet_valid",
            TlsFailure::WrongKeyUsage => "wrong_key_usage",
            TlsFailure::BadCertificate => "bad_certificate",
            TlsFailure::ProtocolVersion => "protocol_version",
            TlsFailure::Incompatible => "incompatible",
            TlsFailure::NotTls => "not_tls",
            TlsFailure::ClientAlert => "client_alert",
            TlsFailure::Closed => "closed",
            TlsFailure::Other => "other",
        }
    }

    /// Classifies the error of a failed server-side handshake.
    pub fn from_io(e: &std::io::Error) -> TlsFailure {
        use rustls::{CertificateError as C, Error as E, PeerIncompatible as P};
        let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<E>()) else {
            return TlsFailure::Closed;
        };
        match tls {
            E::NoCertificatesPresented => TlsFailure::NoCertificate,
            E::InvalidCertificate(c) => match c {
                C::UnknownIssuer => TlsFailure::UnknownIssuer,
                C::Expired | C::ExpiredContext { .. } => TlsFailure::Expired,
                C::NotValidYet | C::NotValidYetContext { .. } => TlsFailure::NotYetValid,
                C::InvalidPurpose | C::InvalidPurposeContext { .. } => TlsFailure::WrongKeyUsage,
                _ => TlsFailure::BadCertificate,
            },
            // signature_algorithms came with TLS 1.2: a hello without it is
            // from an older protocol (rustls checks it before the version).
            E::PeerIncompatible(
                P::Tls12NotOffered
                | P::Tls12NotOfferedOrEnabled
                | P::SupportedVersionsExtensionRequired
                | P::SignatureAlgorithmsExtensionRequired
                | P::ServerDoesNotSupportTls12Or13,
            ) => TlsFailure::ProtocolVersion,
            E::PeerIncompatible(_) => TlsFailure::Incompatible,
            E::InvalidMessage(_) | E::InappropriateMessage { .. } => TlsFailure::NotTls,
            E::AlertReceived(_) => TlsFailure::ClientAlert,
            _ => TlsFailure::Other,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Why a verified certificate gave no identity (the request is then denied).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityFailure {
    NoCertificate,
    Unparsable,
    NoCommonName,
    SeveralCommonNames,
    BadCommonName,
}

impl IdentityFailure {
    const ALL: [IdentityFailure; 5] = [
        IdentityFailure::NoCertificate,
        IdentityFailure::Unparsable,
        IdentityFailure::NoCommonName,
        IdentityFailure::SeveralCommonNames,
        IdentityFailure::BadCommonName,
    ];

    pub fn label(self) -> &'static str {
        match self {
            IdentityFailure::NoCertificate => "no_certificate",
            IdentityFailure::Unparsable => "unparsable",
            IdentityFailure::NoCommonName => "no_common_name",
            IdentityFailure::SeveralCommonNames => "several_common_names",
            IdentityFailure::BadCommonName => "bad_common_name",
        }
    }
}

/// A storage failure as answered to a client (503 or 500).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageFailure {
    Full,
    ReadOnly,
    Busy,
    Io,
    Other,
}

impl StorageFailure {
    const ALL: [StorageFailure; 5] = [
        StorageFailure::Full,
        StorageFailure::ReadOnly,
        StorageFailure::Busy,
        StorageFailure::Io,
        StorageFailure::Other,
    ];

    pub fn label(self) -> &'static str {
        match self {
            StorageFailure::Full => "full",
            StorageFailure::ReadOnly => "read_only",
            StorageFailure::Busy => "busy",
            StorageFailure::Io => "io",
            StorageFailure::Other => "other",
        }
    }
}

/// Where an alert is delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertSink {
    Webhook,
    Smtp,
    Log,
}

impl AlertSink {
    pub const ALL: [AlertSink; 3] = [AlertSink::Webhook, AlertSink::Smtp, AlertSink::Log];

    pub fn label(self) -> &'static str {
        match self {
            AlertSink::Webhook => "webhook",
            AlertSink::Smtp => "smtp",
            AlertSink::Log => "log",
        }
    }
}

/// The outcome of one delivery attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// The sink accepted the alert.
    Delivered,
    /// The attempt failed; the alert stays in the outbox for a later retry.
    Retry,
    /// The attempt failed for good (retries exhausted, or a permanent refusal).
    Abandoned,
}

impl DeliveryOutcome {
    pub const ALL: [DeliveryOutcome; 3] = [
        DeliveryOutcome::Delivered,
        DeliveryOutcome::Retry,
        DeliveryOutcome::Abandoned,
    ];

    pub fn label(self) -> &'static str {
        match self {
            DeliveryOutcome::Delivered => "delivered",
            DeliveryOutcome::Retry => "retry",
            DeliveryOutcome::Abandoned => "abandoned",
        }
    }
}

/// What became of a request on the agents' listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentOutcome {
    /// A new event, stored (201).
    Stored,
    /// A retry of an event already stored (200).
    Duplicate,
    /// A malformed body or timestamp (400).
    Invalid,
    /// Over the key's rate limit (429).
    RateLimited,
    /// A missing, unknown or disabled key (401).
    Unauthorized,
    /// Storage failed (5xx).
    Failed,
}

impl AgentOutcome {
    pub const ALL: [AgentOutcome; 6] = [
        AgentOutcome::Stored,
        AgentOutcome::Duplicate,
        AgentOutcome::Invalid,
        AgentOutcome::RateLimited,
        AgentOutcome::Unauthorized,
        AgentOutcome::Failed,
    ];

    pub fn label(self) -> &'static str {
        match self {
            AgentOutcome::Stored => "stored",
            AgentOutcome::Duplicate => "duplicate",
            AgentOutcome::Invalid => "invalid",
            AgentOutcome::RateLimited => "rate_limited",
            AgentOutcome::Unauthorized => "unauthorized",
            AgentOutcome::Failed => "failed",
        }
    }
}

type Row<const N: usize> = [AtomicU64; N];

const fn row<const N: usize>() -> Row<N> {
    [const { AtomicU64::new(0) }; N]
}

/// Every metric of the process.
pub struct Metrics {
    requests: [Row<CLASSES>; ROUTES],
    latency: [Row<LATENCY_BUCKETS>; ROUTES],
    latency_sum_us: Row<ROUTES>,
    latency_count: Row<ROUTES>,
    batch_sizes: Row<BATCH_BUCKETS>,
    batch_sum: AtomicU64,
    batch_count: AtomicU64,
    batch_failures: AtomicU64,
    wal_syncs: AtomicU64,
    wal_sync_us: AtomicU64,
    wal_sync_failures: AtomicU64,
    writer_queue: AtomicI64,
    reader_queue: AtomicI64,
    open_connections: AtomicI64,
    connections_refused: AtomicU64,
    tls_failures: Row<13>,
    identity_failures: Row<5>,
    storage_errors: Row<5>,
    alert_deliveries: [Row<3>; 3],
    alerts: Row<5>,
    agent_requests: Row<6>,
}

/// The alert kinds, as `model::AlertKind` names them (a test there holds
/// the two lists equal).
pub const ALERT_KINDS: [&str; 5] = [
    "new_device",
    "new_country",
    "dormant_account",
    "security_change",
    "login_failure_burst",
];

static METRICS: Metrics = Metrics::new();

/// The process-wide metrics.
pub fn global() -> &'static Metrics {
    &METRICS
}

/// Counts one alert delivery attempt by sink and outcome (for the alert dispatcher).
pub fn alert_delivery(sink: AlertSink, outcome: DeliveryOutcome) {
    METRICS.alert_deliveries[sink as usize][outcome as usize].fetch_add(1, Relaxed);
}

/// Counts one alert raised, by kind (the log sink counts each alert once,
/// in place of a log line at info).
pub fn alert_raised(kind: &str) {
    if let Some(i) = ALERT_KINDS.iter().position(|k| *k == kind) {
        METRICS.alerts[i].fetch_add(1, Relaxed);
    }
}

fn route_index(e: Option<Endpoint>) -> usize {
    e.map(|e| e as usize).unwrap_or(UNKNOWN_ROUTE)
}

fn route_name(i: usize) -> &'static str {
    Endpoint::ALL.get(i).map(|e| e.name()).unwrap_or("unknown")
}

fn bucket(bounds: &[u64], v: u64) -> usize {
    bounds.iter().position(|b| v <= *b).unwrap_or(bounds.len())
}

/// Decrements a gauge when dropped.
pub struct GaugeGuard(&'static AtomicI64);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub const fn new() -> Metrics {
        Metrics {
            requests: [const { row() }; ROUTES],
            latency: [const { row() }; ROUTES],
            latency_sum_us: row(),
            latency_count: row(),
            batch_sizes: row(),
            batch_sum: AtomicU64::new(0),
            batch_count: AtomicU64::new(0),
            batch_failures: AtomicU64::new(0),
            wal_syncs: AtomicU64::new(0),
            wal_sync_us: AtomicU64::new(0),
            wal_sync_failures: AtomicU64::new(0),
            writer_queue: AtomicI64::new(0),
            reader_queue: AtomicI64::new(0),
            open_connections: AtomicI64::new(0),
            connections_refused: AtomicU64::new(0),
            tls_failures: row(),
            identity_failures: row(),
            storage_errors: row(),
            alert_deliveries: [const { row() }; 3],
            alerts: row(),
            agent_requests: row(),
        }
    }

    /// One answered request: its route (None: no route matched), status and time.
    pub fn request(&self, endpoint: Option<Endpoint>, status: u16, elapsed: Duration) {
        let r = route_index(endpoint);
        let class = usize::from(status / 100).clamp(1, CLASSES) - 1;
        self.requests[r][class].fetch_add(1, Relaxed);
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.latency[r][bucket(&LATENCY_BOUNDS_US, us)].fetch_add(1, Relaxed);
        self.latency_sum_us[r].fetch_add(us, Relaxed);
        self.latency_count[r].fetch_add(1, Relaxed);
    }

    /// One group commit of `size` writes; `ok` is false when it failed.
    pub fn write_batch(&self, size: usize, ok: bool) {
        let size = size as u64;
        self.batch_sizes[bucket(&BATCH_BOUNDS, size)].fetch_add(1, Relaxed);
        self.batch_sum.fetch_add(size, Relaxed);
        self.batch_count.fetch_add(1, Relaxed);
        if !ok {
            self.batch_failures.fetch_add(1, Relaxed);
        }
    }

    /// One sync of the WAL, made for the commits waiting for it.
    pub fn wal_sync(&self, elapsed: std::time::Duration, ok: bool) {
        self.wal_syncs.fetch_add(1, Relaxed);
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.wal_sync_us.fetch_add(us, Relaxed);
        if !ok {
            self.wal_sync_failures.fetch_add(1, Relaxed);
        }
    }

    /// A write was queued for the writer thread (+1) or taken by it (-1).
    pub fn writer_queue(&self, delta: i64) {
        self.writer_queue.fetch_add(delta, Relaxed);
    }

    /// A read was queued for the reader threads (+1) or taken by one (-1).
    pub fn reader_queue(&self, delta: i64) {
        self.reader_queue.fetch_add(delta, Relaxed);
    }

    /// Counts an open connection until the guard is dropped.
    pub fn connection_opened(&'static self) -> GaugeGuard {
        self.open_connections.fetch_add(1, Relaxed);
        GaugeGuard(&self.open_connections)
    }

    pub fn connection_refused(&self) {
        self.connections_refused.fetch_add(1, Relaxed);
    }

    pub fn tls_failure(&self, reason: TlsFailure) {
        self.tls_failures[reason.index()].fetch_add(1, Relaxed);
    }

    pub fn identity_failure(&self, reason: IdentityFailure) {
        self.identity_failures[reason as usize].fetch_add(1, Relaxed);
    }

    /// One request on the agents' listener (log_event or health).
    pub fn agent_request(&self, outcome: AgentOutcome) {
        self.agent_requests[outcome as usize].fetch_add(1, Relaxed);
    }

    pub fn storage_error(&self, kind: StorageFailure) {
        self.storage_errors[kind as usize].fetch_add(1, Relaxed);
    }

    pub fn open_connections(&self) -> i64 {
        self.open_connections.load(Relaxed)
    }

    /// The text exposition format; `inflight` and `max_inflight` are the
    /// request slots of the server answering.
    pub fn render(&self, inflight: usize, max_inflight: usize) -> String {
        let mut out = String::with_capacity(16 * 1024);
        let o = &mut out;
        head(
            o,
            "usermetadb_build_info",
            "gauge",
            "Version of the server.",
        );
        line(
            o,
            "usermetadb_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))],
            1,
        );

        head(
            o,
            "usermetadb_requests_total",
            "counter",
            "Requests answered, by endpoint and status class.",
        );
        for (r, classes) in self.requests.iter().enumerate() {
            for (c, n) in classes.iter().enumerate() {
                let class = ["1xx", "2xx", "3xx", "4xx", "5xx"][c];
                let n = n.load(Relaxed);
                if n > 0 {
                    line(
                        o,
                        "usermetadb_requests_total",
                        &[("endpoint", route_name(r)), ("status", class)],
                        n,
                    );
                }
            }
        }

        head(
            o,
            "usermetadb_request_duration_seconds",
            "histogram",
            "Time from request head to response, by endpoint.",
        );
        for r in 0..ROUTES {
            let count = self.latency_count[r].load(Relaxed);
            if count == 0 {
                continue;
            }
            let name = route_name(r);
            let mut cumulative = 0;
            for (i, n) in self.latency[r].iter().enumerate() {
                cumulative += n.load(Relaxed);
                let le = match LATENCY_BOUNDS_US.get(i) {
                    Some(us) => seconds(*us),
                    None => "+Inf".into(),
                };
                line(
                    o,
                    "usermetadb_request_duration_seconds_bucket",
                    &[("endpoint", name), ("le", &le)],
                    cumulative,
                );
            }
            let sum = seconds(self.latency_sum_us[r].load(Relaxed));
            let _ = writeln!(
                o,
                "usermetadb_request_duration_seconds_sum{{endpoint=\"{name}\"}} {sum}"
            );
            line(
                o,
                "usermetadb_request_duration_seconds_count",
                &[("endpoint", name)],
                cumulative,
            );
        }

        head(
            o,
            "usermetadb_write_batch_size",
            "histogram",
            "Writes committed together in one transaction.",
        );
        let mut cumulative = 0;
        for (i, n) in self.batch_sizes.iter().enumerate() {
            cumulative += n.load(Relaxed);
            let le = match BATCH_BOUNDS.get(i) {
                Some(b) => b.to_string(),
                None => "+Inf".into(),
            };
            line(
                o,
                "usermetadb_write_batch_size_bucket",
                &[("le", &le)],
                cumulative,
            );
        }
        line(
            o,
            "usermetadb_write_batch_size_sum",
            &[],
            self.batch_sum.load(Relaxed),
        );
        line(o, "usermetadb_write_batch_size_count", &[], cumulative);
        counter(
            o,
            "usermetadb_write_batch_failures_total",
            "Group commits that failed (every write in them was answered with an error).",
            self.batch_failures.load(Relaxed),
        );

        counter(
            o,
            "usermetadb_wal_syncs_total",
            "Syncs of the WAL that made group commits durable (synchronous: full).",
            self.wal_syncs.load(Relaxed),
        );
        head(
            o,
            "usermetadb_wal_sync_seconds_total",
            "counter",
            "Time spent in those syncs.",
        );
        line(
            o,
            "usermetadb_wal_sync_seconds_total",
            &[],
            seconds(self.wal_sync_us.load(Relaxed)),
        );
        counter(
            o,
            "usermetadb_wal_sync_failures_total",
            "WAL syncs that failed (every write waiting for them was answered with an error).",
            self.wal_sync_failures.load(Relaxed),
        );

        gauge(
            o,
            "usermetadb_writer_queue_depth",
            "Writes waiting for the writer thread.",
            self.writer_queue.load(Relaxed).max(0),
        );
        gauge(
            o,
            "usermetadb_reader_queue_depth",
            "Reads waiting for a reader thread.",
            self.reader_queue.load(Relaxed).max(0),
        );
        gauge(
            o,
            "usermetadb_inflight_requests",
            "Requests being served now.",
            inflight as i64,
        );
        gauge(
            o,
            "usermetadb_max_inflight_requests",
            "Requests served at once at most; beyond it the answer is 503.",
            max_inflight as i64,
        );
        gauge(
            o,
            "usermetadb_open_connections",
            "Client connections open now.",
            self.open_connections.load(Relaxed).max(0),
        );
        counter(
            o,
            "usermetadb_connections_refused_total",
            "Connections closed at once because max_connections were open.",
            self.connections_refused.load(Relaxed),
        );

        head(
            o,
            "usermetadb_tls_handshake_failures_total",
            "counter",
            "TLS handshakes refused, by reason.",
        );
        for reason in TlsFailure::ALL {
            line(
                o,
                "usermetadb_tls_handshake_failures_total",
                &[("reason", reason.label())],
                self.tls_failures[reason.index()].load(Relaxed),
            );
        }
        head(
            o,
            "usermetadb_client_identity_failures_total",
            "counter",
            "Verified client certificates without a usable CommonName, by reason.",
        );
        for reason in IdentityFailure::ALL {
            line(
                o,
                "usermetadb_client_identity_failures_total",
                &[("reason", reason.label())],
                self.identity_failures[reason as usize].load(Relaxed),
            );
        }
        head(
            o,
            "usermetadb_storage_errors_total",
            "counter",
            "Requests answered with a storage error, by kind.",
        );
        for kind in StorageFailure::ALL {
            line(
                o,
                "usermetadb_storage_errors_total",
                &[("kind", kind.label())],
                self.storage_errors[kind as usize].load(Relaxed),
            );
        }
        head(
            o,
            "usermetadb_alert_deliveries_total",
            "counter",
            "Alert delivery attempts, by sink and outcome.",
        );
        for sink in AlertSink::ALL {
            for outcome in DeliveryOutcome::ALL {
                line(
                    o,
                    "usermetadb_alert_deliveries_total",
                    &[("sink", sink.label()), ("outcome", outcome.label())],
                    self.alert_deliveries[sink as usize][outcome as usize].load(Relaxed),
                );
            }
        }
        head(
            o,
            "usermetadb_alerts_total",
            "counter",
            "Alerts raised, by kind (as the log sink takes each one; alerts are not logged at info).",
        );
        for (i, kind) in ALERT_KINDS.iter().enumerate() {
            line(
                o,
                "usermetadb_alerts_total",
                &[("kind", kind)],
                self.alerts[i].load(Relaxed),
            );
        }
        head(
            o,
            "usermetadb_agent_requests_total",
            "counter",
            "Requests of Windows agents, by outcome (unauthorized: a missing, unknown or disabled key).",
        );
        for outcome in AgentOutcome::ALL {
            line(
                o,
                "usermetadb_agent_requests_total",
                &[("outcome", outcome.label())],
                self.agent_requests[outcome as usize].load(Relaxed),
            );
        }
        out
    }
}

fn seconds(us: u64) -> String {
    format!("{}.{:06}", us / 1_000_000, us % 1_000_000)
        .trim_end_matches('0')
        .trim_end_matches('.')
        .to_owned()
}

/// The device index's lines, for a server whose store keeps one.
pub fn render_device_index(o: &mut String, devices: Option<usize>, reads: u64) {
    head(
        o,
        "usermetadb_device_index_devices",
        "gauge",
        "(user, device) pairs held in memory for check_device; -1 while the index is being read.",
    );
    let held = devices.map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX));
    line(o, "usermetadb_device_index_devices", &[], held);
    head(
        o,
        "usermetadb_device_index_reads_total",
        "counter",
        "Times the device index was read from the database: at start, and after changes it could not follow (another process's).",
    );
    line(o, "usermetadb_device_index_reads_total", &[], reads);
}

/// The auth policy listener's decisions, by what was decided and why.
pub const POLICY_DECISIONS: [&str; 3] = ["allow", "delay", "refuse"];
/// Why (the throttle's reasons, in its order; a test there holds them equal).
pub const POLICY_REASONS: [&str; 6] = [
    "none",
    "failures",
    "cooldown",
    "spray",
    "spray_net",
    "guessing",
];
/// What became of the policy listener's requests.
pub const POLICY_OUTCOMES: [&str; 5] = [
    "allow",
    "report_success",
    "report_failure",
    "invalid",
    "unauthorized",
];

struct Policy {
    /// [decision][reason][enforced]
    decisions: [[Row<2>; 6]; 3],
    outcomes: Row<5>,
}

static POLICY: Policy = Policy {
    decisions: [const { [const { row() }; 6] }; 3],
    outcomes: row(),
};

/// Counts one `allow` decision (`enforced` false in a dry run).
pub fn policy_decision(decision: usize, reason: usize, enforced: bool) {
    if let Some(r) = POLICY.decisions.get(decision).and_then(|d| d.get(reason)) {
        r[usize::from(enforced)].fetch_add(1, Relaxed);
    }
}

/// Counts one request of the policy listener by its outcome (an index of
/// [`POLICY_OUTCOMES`]).
pub fn policy_outcome(outcome: usize) {
    if let Some(c) = POLICY.outcomes.get(outcome) {
        c.fetch_add(1, Relaxed);
    }
}

/// The policy listener's counters, and the throttle's keys (`keys` held,
/// `evictions` since the start). Never a username or an address.
pub fn render_policy(o: &mut String, keys: usize, evictions: u64) {
    head(
        o,
        "usermetadb_policy_requests_total",
        "counter",
        "Requests of the auth policy listener (Dovecot), by outcome; unauthorized: a missing or wrong token.",
    );
    for (i, outcome) in POLICY_OUTCOMES.iter().enumerate() {
        line(
            o,
            "usermetadb_policy_requests_total",
            &[("outcome", outcome)],
            POLICY.outcomes[i].load(Relaxed),
        );
    }
    head(
        o,
        "usermetadb_policy_decisions_total",
        "counter",
        "Decisions on login attempts, by decision and reason; enforced=\"false\" in a dry run.",
    );
    for (d, decision) in POLICY_DECISIONS.iter().enumerate() {
        for (r, reason) in POLICY_REASONS.iter().enumerate() {
            for (e, enforced) in ["false", "true"].iter().enumerate() {
                line(
                    o,
                    "usermetadb_policy_decisions_total",
                    &[
                        ("decision", decision),
                        ("reason", reason),
                        ("enforced", enforced),
                    ],
                    POLICY.decisions[d][r][e].load(Relaxed),
                );
            }
        }
    }
    head(
        o,
        "usermetadb_policy_keys",
        "gauge",
        "Throttling keys held in memory (keyed hashes of logins, addresses and networks).",
    );
    line(o, "usermetadb_policy_keys", &[], keys);
    head(
        o,
        "usermetadb_policy_key_evictions_total",
        "counter",
        "Throttling keys evicted, oldest first, at policy.max_keys.",
    );
    line(o, "usermetadb_policy_key_evictions_total", &[], evictions);
}

fn head(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn line(o: &mut String, name: &str, labels: &[(&str, &str)], v: impl std::fmt::Display) {
    o.push_str(name);
    if !labels.is_empty() {
        o.push('{');
        for (i, (k, val)) in labels.iter().enumerate() {
            if i > 0 {
                o.push(',');
            }
            let _ = write!(o, "{k}=\"{val}\"");
        }
        o.push('}');
    }
    let _ = writeln!(o, " {v}");
}

fn counter(o: &mut String, name: &str, help: &str, v: u64) {
    head(o, name, "counter", help);
    line(o, name, &[], v);
}

fn gauge(o: &mut String, name: &str, help: &str, v: i64) {
    head(o, name, "gauge", help);
    line(o, name, &[], v);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_and_seconds() {
        assert_eq!(bucket(&LATENCY_BOUNDS_US, 0), 0);
        assert_eq!(bucket(&LATENCY_BOUNDS_US, 500), 0);
        assert_eq!(bucket(&LATENCY_BOUNDS_US, 501), 1);
        assert_eq!(
            bucket(&LATENCY_BOUNDS_US, u64::MAX),
            LATENCY_BOUNDS_US.len()
        );
        assert_eq!(seconds(500), "0.0005");
        assert_eq!(seconds(2_500_000), "2.5");
        assert_eq!(seconds(10_000_000), "10");
        assert_eq!(seconds(0), "0");
    }

    #[test]
    fn render_is_prometheus_text_with_closed_labels() {
        let m = Box::leak(Box::new(Metrics::new()));
        m.request(Some(Endpoint::AddLog), 200, Duration::from_micros(700));
        m.request(Some(Endpoint::AddLog), 503, Duration::from_millis(30));
        m.request(None, 404, Duration::from_micros(10));
        m.write_batch(3, true);
        m.tls_failure(TlsFailure::Expired);
        let _open = m.connection_opened();
        let text = m.render(2, 10);
        for want in [
            "usermetadb_requests_total{endpoint=\"add_log\",status=\"2xx\"} 1",
            "usermetadb_requests_total{endpoint=\"add_log\",status=\"5xx\"} 1",
            "usermetadb_requests_total{endpoint=\"unknown\",status=\"4xx\"} 1",
            "usermetadb_request_duration_seconds_bucket{endpoint=\"add_log\",le=\"0.0005\"} 0",
            "usermetadb_request_duration_seconds_bucket{endpoint=\"add_log\",le=\"0.001\"} 1",
            "usermetadb_request_duration_seconds_bucket{endpoint=\"add_log\",le=\"+Inf\"} 2",
            "usermetadb_request_duration_seconds_count{endpoint=\"add_log\"} 2",
            "usermetadb_write_batch_size_bucket{le=\"4\"} 1",
            "usermetadb_write_batch_size_sum 3",
            "usermetadb_tls_handshake_failures_total{reason=\"expired\"} 1",
            "usermetadb_inflight_requests 2",
            "usermetadb_open_connections 1",
        ] {
            assert!(text.contains(want), "{want} missing from\n{text}");
        }
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = l.rsplit_once(' ').unwrap();
            assert!(value.parse::<f64>().is_ok(), "{l}");
        }
    }
}
