//! The figures: one row per scenario, each also as a ratio to the ceiling
//! (`GET /health` on the same connections), the targets, as a table and as JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::load::{Outcome, Pace, Scenario};
use crate::procfs::{Machine, Memory};
use crate::seed::{DbSize, SeedStats};

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub max: f64,
}

impl Latency {
    fn from_histogram(h: &Histogram<u64>) -> Latency {
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            mean: h.mean() / 1000.0,
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p99_9: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

/// A scenario's figure divided by the ceiling's.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Ratios {
    pub requests_per_second: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub max: f64,
    pub server_cpu_per_request: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScenarioReport {
    pub name: String,
    pub method: String,
    pub path: String,
    #[serde(flatten)]
    pub pace: Pace,
    pub connections: usize,
    pub new_connection_per_request: bool,
    pub measured_seconds: f64,
    pub ok_2xx: u64,
    pub non_2xx: u64,
    pub transport_errors: u64,
    pub invalid_answers: u64,
    pub statuses: BTreeMap<u16, u64>,
    pub requests_per_second: f64,
    /// From the time a request was due (open loop) or sent (closed loop).
    pub latency_ms: Latency,
    /// Open loop only: from the actual send.
    pub service_time_ms: Option<Latency>,
    pub server_cpu_seconds: Option<f64>,
    pub server_cpu_us_per_request: Option<f64>,
    /// PostgreSQL's CPU per answer (its whole process tree), when measured.
    pub db_cpu_us_per_request: Option<f64>,
    /// Server CPU seconds per wall second: 2.0 is both cores.
    pub server_cores_busy: Option<f64>,
    pub client_cpu_us_per_request: f64,
    pub client_cores_busy: f64,
    /// CPU time per wall second the hypervisor took away (all CPUs): a run
    /// with steal is not comparable with one without.
    pub steal_cores: Option<f64>,
    /// What the answers said, on average: devices seen, entries returned, names unused.
    pub answer_mean: Option<f64>,
    pub answer_meaning: Option<String>,
    pub ratio_to_ceiling: Ratios,
    pub server_memory: Option<Memory>,
    pub failures: Vec<String>,
    #[serde(skip)]
    pub total_ok: u64,
    #[serde(skip)]
    pub total_failed: u64,
}

impl ScenarioReport {
    pub fn new(sc: &Scenario, o: &Outcome, meaning: Option<&str>) -> ScenarioReport {
        let secs = o.window.as_secs_f64().max(1e-9);
        let served = (o.ok + o.non_2xx + o.invalid).max(1) as f64;
        ScenarioReport {
            name: sc.name.clone(),
            method: sc.method.to_string(),
            path: sc.path.to_owned(),
            pace: sc.pace,
            connections: sc.connections,
            new_connection_per_request: sc.connect_per_request,
            measured_seconds: secs,
            ok_2xx: o.ok,
            non_2xx: o.non_2xx,
            transport_errors: o.errors,
            invalid_answers: o.invalid,
            statuses: o.statuses.clone(),
            requests_per_second: o.ok as f64 / secs,
            latency_ms: Latency::from_histogram(&o.latency),
            service_time_ms: o.service_time.as_ref().map(Latency::from_histogram),
            server_cpu_seconds: o.server_cpu_seconds,
            server_cpu_us_per_request: o.server_cpu_seconds.map(|c| c * 1e6 / served),
            db_cpu_us_per_request: o.db_cpu_seconds.map(|c| c * 1e6 / served),
            server_cores_busy: o.server_cpu_seconds.map(|c| c / secs),
            client_cpu_us_per_request: o.client_cpu_seconds * 1e6 / served,
            client_cores_busy: o.client_cpu_seconds / secs,
            steal_cores: o.steal_seconds.map(|s| s / secs),
            answer_mean: (o.tallied > 0).then(|| o.tally as f64 / o.tallied as f64),
            answer_meaning: meaning.filter(|_| o.tallied > 0).map(str::to_owned),
            ratio_to_ceiling: Ratios::default(),
            server_memory: o.memory,
            failures: o.failures.clone(),
            total_ok: o.total_ok,
            total_failed: o.total_failed,
        }
    }

    pub fn set_ceiling(&mut self, c: &ScenarioReport) {
        let div = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
        self.ratio_to_ceiling = Ratios {
            requests_per_second: div(self.requests_per_second, c.requests_per_second),
            p50: div(self.latency_ms.p50, c.latency_ms.p50),
            p90: div(self.latency_ms.p90, c.latency_ms.p90),
            p99: div(self.latency_ms.p99, c.latency_ms.p99),
            p99_9: div(self.latency_ms.p99_9, c.latency_ms.p99_9),
            max: div(self.latency_ms.max, c.latency_ms.max),
            server_cpu_per_request: match (
                self.server_cpu_us_per_request,
                c.server_cpu_us_per_request,
            ) {
                (Some(a), Some(b)) => Some(div(a, b)),
                _ => None,
            },
        };
    }

    pub fn mode(&self) -> String {
        match self.pace {
            Pace::Closed if self.new_connection_per_request => "closed, new conn".into(),
            Pace::Closed => "closed".into(),
            Pace::Open { rate } => format!("open {rate:.0}/s"),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TargetCheck {
    pub target: String,
    pub measured: String,
    /// `None`: measured only, or not run.
    pub met: Option<bool>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub command: String,
    pub started: String,
    pub machine: Machine,
    pub load_generator: String,
    pub settings: serde_json::Value,
    pub ceiling: String,
    pub scenarios: Vec<ScenarioReport>,
    pub seed: Option<SeedStats>,
    pub database_before: Option<DbSize>,
    pub database_after: Option<DbSize>,
    pub server_memory_peak: Option<Memory>,
    pub targets: Vec<TargetCheck>,
}

impl Report {
    pub fn scenario(&self, name: &str) -> Option<&ScenarioReport> {
        self.scenarios.iter().find(|s| s.name == name)
    }

    /// Every answer of every scenario, warm-up included, was a valid 2xx, and
    /// every scenario had answers.
    pub fn all_ok(&self) -> bool {
        self.scenarios
            .iter()
            .all(|s| s.total_failed == 0 && s.total_ok > 0)
    }

    pub fn evaluate_targets(&mut self) {
        let mut t = Vec::new();
        let ratio = |name: &str| {
            self.scenario(name)
                .map(|s| s.ratio_to_ceiling.requests_per_second)
        };
        let mut ratio_target = |name: &str, min: f64, label: &str| {
            let (measured, met) = match (ratio(name), self.scenario(name)) {
                (Some(r), Some(s)) => (
                    format!("{:.0}% ({:.0} req/s)", r * 100.0, s.requests_per_second),
                    Some(r >= min),
                ),
                _ => ("not run".into(), None),
            };
            t.push(TargetCheck {
                target: format!("{label} >= {:.0}% of ceiling", min * 100.0),
                measured,
                met,
            });
        };
        ratio_target("add_log", 0.25, "add_log closed loop");
        ratio_target("check_device", 0.60, "check_device closed loop");
        ratio_target("get_user_logs", 0.40, "get_user_logs(limit 50) closed loop");
        let (measured, met) = match self.scenario("add_log_rate") {
            Some(s) => (
                format!(
                    "p99 {:.2} ms, {} non-2xx, {} errors, {:.0} req/s",
                    s.latency_ms.p99, s.non_2xx, s.transport_errors, s.requests_per_second
                ),
                Some(s.latency_ms.p99 <= 10.0 && s.non_2xx == 0 && s.transport_errors == 0),
            ),
            None => ("not run".into(), None),
        };
        let rate = self
            .scenario("add_log_rate")
            .map(|s| s.mode())
            .unwrap_or_else(|| "fixed rate".into());
        t.push(TargetCheck {
            target: format!("add_log {rate}: p99 <= 10 ms, zero non-2xx"),
            measured,
            met,
        });
        let (measured, met) = match self.scenario("get_unused_accounts") {
            Some(s) => (
                format!(
                    "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                    s.latency_ms.p50, s.latency_ms.p99, s.latency_ms.max
                ),
                Some(s.latency_ms.p99 <= 100.0),
            ),
            None => ("not run".into(), None),
        };
        t.push(TargetCheck {
            target: "get_unused_accounts: p99 <= 100 ms".into(),
            measured,
            met,
        });
        let (measured, met) = match &self.server_memory_peak {
            Some(m) => (
                format!(
                    "VmHWM {:.1} MiB, VmRSS peak {:.1} MiB",
                    m.vm_hwm_kib as f64 / 1024.0,
                    m.vm_rss_kib as f64 / 1024.0
                ),
                Some(m.vm_hwm_kib <= 128 * 1024),
            ),
            None => ("not measured (no server pid)".into(), None),
        };
        t.push(TargetCheck {
            target: "server RSS <= 128 MiB".into(),
            measured,
            met,
        });
        let db = self
            .database_after
            .as_ref()
            .or(self.database_before.as_ref());
        t.push(TargetCheck {
            target: "database bytes per log entry (measured)".into(),
            measured: match db {
                Some(d) => format!(
                    "{:.0} B total, {:.0} B in user_logs + indexes ({} entries)",
                    d.total_bytes_per_entry, d.user_logs_bytes_per_entry, d.log_entries
                ),
                None => "not measured (no database path)".into(),
            },
            met: None,
        });
        let (measured, met) = match self.scenario("handshake") {
            Some(s) => (
                format!("{:.0} conn/s", s.requests_per_second),
                Some(s.requests_per_second >= 2000.0),
            ),
            None => ("not run".into(), None),
        };
        t.push(TargetCheck {
            target: "new connection + full mTLS handshake >= 2000/s".into(),
            measured,
            met,
        });
        self.targets = t;
    }

    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "machine: {} CPUs ({}), {} GiB, Linux {}; {}",
            self.machine.cpus,
            self.machine.cpu_model,
            self.machine.memory_gib,
            self.machine.kernel,
            self.load_generator
        );
        if let Some(s) = &self.seed {
            let _ = writeln!(
                out,
                "seeded {} log entries for {} users in {:.1} s ({:.0} entries/s)",
                s.entries, s.users, s.seconds, s.entries_per_second
            );
        }
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:<20} {:<16} {:>5} {:>9} {:>7} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>6} {:>6} {:>6}",
            "scenario",
            "mode",
            "conns",
            "2xx",
            "non2xx",
            "req/s",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "p99.9 ms",
            "max ms",
            "srv µs/req",
            "srv %",
            "cli %",
            "steal%"
        );
        for s in &self.scenarios {
            let _ = writeln!(
                out,
                "{:<20} {:<16} {:>5} {:>9} {:>7} {:>9.0} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>9} {:>6} {:>6.0} {:>6}",
                s.name,
                s.mode(),
                s.connections,
                s.ok_2xx,
                s.non_2xx + s.transport_errors + s.invalid_answers,
                s.requests_per_second,
                s.latency_ms.p50,
                s.latency_ms.p90,
                s.latency_ms.p99,
                s.latency_ms.p99_9,
                s.latency_ms.max,
                s.server_cpu_us_per_request
                    .map(|v| format!("{v:.1}"))
                    .unwrap_or_else(|| "n/a".into()),
                s.server_cores_busy
                    .map(|v| format!("{:.0}", v * 100.0))
                    .unwrap_or_else(|| "n/a".into()),
                s.client_cores_busy * 100.0,
                s.steal_cores
                    .map(|v| format!("{:.1}", v * 100.0))
                    .unwrap_or_else(|| "n/a".into()),
            );
        }
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "as a ratio to the ceiling ({}): req/s as a share, latency and CPU as multiples",
            self.ceiling
        );
        let _ = writeln!(
            out,
            "{:<20} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>10}",
            "scenario", "req/s", "p50", "p90", "p99", "p99.9", "max", "srv µs/req"
        );
        for s in &self.scenarios {
            let r = &s.ratio_to_ceiling;
            let _ = writeln!(
                out,
                "{:<20} {:>7.1}% {:>7.2}x {:>7.2}x {:>7.2}x {:>7.2}x {:>7.2}x {:>10}",
                s.name,
                r.requests_per_second * 100.0,
                r.p50,
                r.p90,
                r.p99,
                r.p99_9,
                r.max,
                r.server_cpu_per_request
                    .map(|v| format!("{v:.2}x"))
                    .unwrap_or_else(|| "n/a".into()),
            );
        }
        let notes: Vec<String> = self
            .scenarios
            .iter()
            .filter_map(|s| {
                let mut parts = Vec::new();
                if let (Some(m), Some(what)) = (s.answer_mean, &s.answer_meaning) {
                    parts.push(format!("{what}: {m:.2} per answer"));
                }
                if let Some(st) = &s.service_time_ms {
                    parts.push(format!(
                        "service time from send: p50 {:.3} p99 {:.3} max {:.3} ms",
                        st.p50, st.p99, st.max
                    ));
                }
                if let Some(m) = &s.server_memory {
                    parts.push(format!(
                        "server VmRSS peak {:.1} MiB, VmHWM {:.1} MiB",
                        m.vm_rss_kib as f64 / 1024.0,
                        m.vm_hwm_kib as f64 / 1024.0
                    ));
                }
                if !s.statuses.is_empty() && s.statuses.keys().any(|k| !(200..300).contains(k)) {
                    parts.push(format!("statuses {:?}", s.statuses));
                }
                for f in &s.failures {
                    parts.push(format!("failure: {f}"));
                }
                (!parts.is_empty()).then(|| format!("  {}: {}", s.name, parts.join("; ")))
            })
            .collect();
        if !notes.is_empty() {
            let _ = writeln!(out);
            for n in notes {
                let _ = writeln!(out, "{n}");
            }
        }
        for (label, db) in [
            ("database after seeding", &self.database_before),
            ("database after the run", &self.database_after),
        ] {
            if let Some(d) = db {
                let _ = writeln!(
                    out,
                    "{label}: {} log entries, {} users, {} devices, {:.1} MiB; {:.0} bytes per log entry in all, {:.0} in user_logs and its indexes",
                    d.log_entries,
                    d.users,
                    d.devices,
                    d.total_bytes as f64 / (1024.0 * 1024.0),
                    d.total_bytes_per_entry,
                    d.user_logs_bytes_per_entry
                );
            }
        }
        let _ = writeln!(out);
        let _ = writeln!(out, "{:<55} {:<8} measured", "target", "met");
        for t in &self.targets {
            let met = match t.met {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "-",
            };
            let _ = writeln!(out, "{:<55} {:<8} {}", t.target, met, t.measured);
        }
        out
    }
}
