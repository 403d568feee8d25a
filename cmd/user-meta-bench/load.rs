//! The load generator: N connections of the project's own client, each with
//! one request in flight, either as fast as answers come (closed loop) or at a
//! fixed overall rate (open loop). In the open loop a request's latency runs
//! from the moment it was due, not from when a free connection sent it, so a
//! server stall shows in full instead of holding the load back.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use hdrhistogram::Histogram;
use hyper::Method;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rustls::ClientConfig;
use tokio::sync::Notify;
use tokio::time::Instant;
use usermetadb::client::Connection;

use crate::procfs;

/// Latencies are kept in microseconds, up to two minutes, to 3 significant digits.
const MAX_LATENCY_US: u64 = 120_000_000;
/// Failures kept verbatim for the report.
const KEPT_FAILURES: usize = 5;

pub fn histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).context("creating a latency histogram")
}

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Pace {
    Closed,
    Open { rate: f64 },
}

/// Makes the body of the next request.
pub type BodyFn = Arc<dyn Fn(&mut StdRng) -> Bytes + Send + Sync>;
/// Checks an answer's body; `Ok(n)` adds `n` to the scenario's tally (e.g. 1
/// for a device that was seen, or the number of entries returned).
pub type CheckFn = Arc<dyn Fn(&[u8]) -> Result<u64, String> + Send + Sync>;

#[derive(Clone)]
pub struct Scenario {
    pub name: String,
    pub method: Method,
    pub path: &'static str,
    pub tls: Arc<ClientConfig>,
    pub connections: usize,
    pub pace: Pace,
    pub warmup: Duration,
    pub duration: Duration,
    /// Open a new connection (full TLS handshake) for every request.
    pub connect_per_request: bool,
    /// Workers per connection, each with a stream of its own (HTTP/2); 1
    /// for HTTP/1.1.
    pub streams: usize,
    pub body: BodyFn,
    /// Headers sent with each request; worker `i` sends set `i % n`
    /// (agents' API keys, one per worker). None when empty.
    pub headers: Vec<Vec<(&'static str, String)>>,
    /// Another listener of the server (the agents'), instead of the target's.
    pub addr: Option<SocketAddr>,
    pub check: Option<CheckFn>,
    /// Sample the server's resident memory while the scenario runs.
    pub sample_memory: bool,
    pub seed: u64,
}

impl Scenario {
    fn addr_of(&self, target: &Target, connection: usize) -> SocketAddr {
        self.addr.unwrap_or_else(|| target.addr(connection))
    }

    fn headers_of(&self, connection: usize) -> &[(&'static str, String)] {
        match self.headers.len() {
            0 => &[],
            n => &self.headers[connection % n],
        }
    }
}

pub struct Target {
    /// One address per replica; connection `i` goes to `addrs[i % n]`.
    pub addrs: Vec<SocketAddr>,
    pub server_name: String,
    /// The replicas' processes, for their CPU time (summed) and the first's
    /// memory.
    pub server_pids: Vec<u32>,
    /// The database's own process tree (PostgreSQL's postmaster), for its
    /// CPU time.
    pub db_pid: Option<u32>,
}

impl Target {
    fn addr(&self, connection: usize) -> SocketAddr {
        self.addrs[connection % self.addrs.len()]
    }

    fn cpu_seconds(&self) -> Option<Result<f64>> {
        if self.server_pids.is_empty() {
            return None;
        }
        Some(
            self.server_pids
                .iter()
                .map(|p| procfs::cpu_seconds(Some(*p)))
                .sum(),
        )
    }
}

/// What one scenario measured. Counts are of the measured window unless
/// named `total_*` (which include the warm-up).
pub struct Outcome {
    pub ok: u64,
    pub non_2xx: u64,
    /// Transport failures: connect, handshake, broken connection.
    pub errors: u64,
    /// 2xx answers whose body did not check out.
    pub invalid: u64,
    pub total_ok: u64,
    pub total_failed: u64,
    pub window: Duration,
    pub latency: Histogram<u64>,
    /// Open loop only: from the actual send, without the wait for a connection.
    pub service_time: Option<Histogram<u64>>,
    pub server_cpu_seconds: Option<f64>,
    /// PostgreSQL's CPU seconds in the window (its whole process tree).
    pub db_cpu_seconds: Option<f64>,
    pub client_cpu_seconds: f64,
    /// CPU time the hypervisor took away during the window (all CPUs).
    pub steal_seconds: Option<f64>,
    pub statuses: BTreeMap<u16, u64>,
    pub failures: Vec<String>,
    pub tally: u64,
    pub tallied: u64,
    pub memory: Option<procfs::Memory>,
}

#[derive(Default)]
struct WorkerResult {
    latency: Option<Histogram<u64>>,
    service_time: Option<Histogram<u64>>,
    ok: u64,
    non_2xx: u64,
    errors: u64,
    invalid: u64,
    total_ok: u64,
    total_failed: u64,
    statuses: BTreeMap<u16, u64>,
    failures: Vec<String>,
    tally: u64,
    tallied: u64,
}

struct Window {
    start: Instant,
    measure_from: Instant,
    end: Instant,
}

pub async fn run(sc: &Scenario, target: &Target) -> Result<Outcome> {
    let sc = Arc::new(sc.clone());
    // Keep-alive connections are opened before the clock starts.
    let mut conns = Vec::with_capacity(sc.connections);
    if !sc.connect_per_request {
        let opening = (0..sc.connections).map(|i| {
            let (addr, name, tls) = (
                sc.addr_of(target, i),
                target.server_name.clone(),
                sc.tls.clone(),
            );
            async move { Connection::connect(addr, &name, Some(tls)).await }
        });
        for c in futures_join_all(opening).await {
            conns.push(Some(c.with_context(|| format!("{}: connecting", sc.name))?));
        }
    } else {
        conns.resize_with(sc.connections, || None);
    }
    if sc.streams > 1 {
        // Each further worker on a connection is a stream of it.
        let mut multiplexed = Vec::with_capacity(conns.len() * sc.streams);
        for c in conns {
            let c = c.context("streams need keep-alive connections")?;
            for _ in 1..sc.streams {
                let s = c
                    .stream()
                    .with_context(|| format!("{}: the server did not agree to HTTP/2", sc.name))?;
                multiplexed.push(Some(s));
            }
            multiplexed.push(Some(c));
        }
        conns = multiplexed;
    }

    let start = Instant::now();
    let window = Arc::new(Window {
        start,
        measure_from: start + sc.warmup,
        end: start + sc.warmup + sc.duration,
    });
    let tickets = Arc::new(Tickets::default());
    let open = matches!(sc.pace, Pace::Open { .. });
    let pacer = match sc.pace {
        Pace::Open { rate } => {
            let (t, w) = (tickets.clone(), window.clone());
            Some(
                std::thread::Builder::new()
                    .name("pacer".into())
                    .spawn(move || pace(&t, &w, rate))
                    .context("starting the pacer thread")?,
            )
        }
        Pace::Closed => None,
    };
    let mut workers = Vec::with_capacity(conns.len());
    for (i, conn) in conns.into_iter().enumerate() {
        let result = WorkerResult {
            latency: Some(histogram()?),
            service_time: if open { Some(histogram()?) } else { None },
            ..Default::default()
        };
        let sc = sc.clone();
        let window = window.clone();
        let tickets = tickets.clone();
        let addr = sc.addr_of(target, i);
        let name = target.server_name.clone();
        workers.push(tokio::spawn(async move {
            worker(i as u64, conn, result, &sc, &window, &tickets, addr, &name).await
        }));
    }

    let memory = if sc.sample_memory {
        target.server_pids.first().copied().map(|pid| {
            let end = window.end;
            tokio::spawn(async move { sample_memory(pid, end).await })
        })
    } else {
        None
    };

    tokio::time::sleep_until(window.measure_from).await;
    let server_cpu0 = target.cpu_seconds();
    let db_cpu0 = target.db_pid.map(procfs::tree_cpu_seconds);
    let client_cpu0 = procfs::cpu_seconds(None)?;
    let steal0 = procfs::steal_seconds().ok();
    tokio::time::sleep_until(window.end).await;
    let server_cpu1 = target.cpu_seconds();
    let db_cpu1 = target.db_pid.map(procfs::tree_cpu_seconds);
    let client_cpu1 = procfs::cpu_seconds(None)?;
    let steal1 = procfs::steal_seconds().ok();

    let mut all = WorkerResult::default();
    let mut latency = histogram()?;
    let mut service_time = if open { Some(histogram()?) } else { None };
    for w in workers {
        let r = w.await.context("load worker panicked")?;
        if let Some(h) = &r.latency {
            latency.add(h).context("merging histograms")?;
        }
        if let (Some(total), Some(h)) = (service_time.as_mut(), r.service_time.as_ref()) {
            total.add(h).context("merging histograms")?;
        }
        all.ok += r.ok;
        all.non_2xx += r.non_2xx;
        all.errors += r.errors;
        all.invalid += r.invalid;
        all.total_ok += r.total_ok;
        all.total_failed += r.total_failed;
        all.tally += r.tally;
        all.tallied += r.tallied;
        for (s, n) in r.statuses {
            *all.statuses.entry(s).or_default() += n;
        }
        for f in r.failures {
            if all.failures.len() < KEPT_FAILURES {
                all.failures.push(f);
            }
        }
    }
    if let Some(p) = pacer {
        if p.join().is_err() {
            bail!("the pacer thread panicked");
        }
    }
    let memory = match memory {
        Some(task) => Some(task.await.context("memory sampler panicked")??),
        None => None,
    };
    let server_cpu_seconds = match (server_cpu0, server_cpu1) {
        (Some(a), Some(b)) => Some(b? - a?),
        _ => None,
    };
    let db_cpu_seconds = match (db_cpu0, db_cpu1) {
        (Some(a), Some(b)) => Some(b? - a?),
        _ => None,
    };
    Ok(Outcome {
        db_cpu_seconds,
        ok: all.ok,
        non_2xx: all.non_2xx,
        errors: all.errors,
        invalid: all.invalid,
        total_ok: all.total_ok,
        total_failed: all.total_failed,
        window: window.end - window.measure_from,
        latency,
        service_time,
        server_cpu_seconds,
        client_cpu_seconds: client_cpu1 - client_cpu0,
        steal_seconds: steal0.zip(steal1).map(|(a, b)| b - a),
        statuses: all.statuses,
        failures: all.failures,
        tally: all.tally,
        tallied: all.tallied,
        memory,
    })
}

/// Joins futures without pulling in a futures crate: each runs as a task.
async fn futures_join_all<F>(futs: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let tasks: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        match t.await {
            Ok(v) => out.push(v),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    out
}

#[allow(clippy::too_many_arguments)]
async fn worker(
    id: u64,
    mut conn: Option<Connection>,
    mut r: WorkerResult,
    sc: &Scenario,
    window: &Window,
    tickets: &Tickets,
    addr: SocketAddr,
    server_name: &str,
) -> WorkerResult {
    let mut rng = StdRng::seed_from_u64(sc.seed ^ (id.wrapping_mul(0x9e37_79b9_7f4a_7c15)));
    let content_type = (sc.method == Method::POST).then_some("application/json");
    let headers = sc.headers_of(id as usize);
    loop {
        // Closed loop: the clock starts once the body is ready. Open loop: it
        // started when the request was due.
        let (due, body) = match sc.pace {
            Pace::Closed => {
                let body = (sc.body)(&mut rng);
                (Instant::now(), body)
            }
            Pace::Open { rate } => {
                let Some(i) = tickets.take().await else {
                    break;
                };
                let due = window.start + Duration::from_secs_f64(i as f64 / rate);
                (due, (sc.body)(&mut rng))
            }
        };
        if due >= window.end {
            break;
        }
        let sent;
        let answer = if let Some(c) = conn.as_mut().filter(|_| !sc.connect_per_request) {
            sent = Instant::now();
            c.request_with_headers(sc.method.clone(), sc.path, headers, content_type, body)
                .await
        } else {
            sent = Instant::now();
            match Connection::connect(addr, server_name, Some(sc.tls.clone())).await {
                Ok(c) => {
                    let c = conn.insert(c);
                    c.request_with_headers(sc.method.clone(), sc.path, headers, content_type, body)
                        .await
                }
                Err(e) => Err(e),
            }
        };
        let done = Instant::now();
        let measured = match sc.pace {
            Pace::Closed => due >= window.measure_from && done <= window.end,
            Pace::Open { .. } => due >= window.measure_from,
        };
        match answer {
            Ok(resp) if resp.status.is_success() => {
                let checked = sc.check.as_ref().map(|check| check(&resp.body));
                match checked {
                    Some(Err(msg)) => {
                        r.total_failed += 1;
                        if measured {
                            r.invalid += 1;
                        }
                        keep(
                            &mut r.failures,
                            format!("{}: invalid answer: {msg}", sc.path),
                        );
                    }
                    Some(Ok(n)) => {
                        r.total_ok += 1;
                        if measured {
                            r.ok += 1;
                            r.tally += n;
                            r.tallied += 1;
                        }
                    }
                    None => {
                        r.total_ok += 1;
                        if measured {
                            r.ok += 1;
                        }
                    }
                }
                if measured {
                    *r.statuses.entry(resp.status.as_u16()).or_default() += 1;
                }
            }
            Ok(resp) => {
                r.total_failed += 1;
                if measured {
                    r.non_2xx += 1;
                    *r.statuses.entry(resp.status.as_u16()).or_default() += 1;
                }
                let text = String::from_utf8_lossy(&resp.body);
                keep(
                    &mut r.failures,
                    format!("{}: {}: {}", sc.path, resp.status, truncate(&text, 200)),
                );
            }
            Err(e) => {
                r.total_failed += 1;
                if measured {
                    r.errors += 1;
                }
                keep(&mut r.failures, format!("{}: {e}", sc.path));
                conn = None;
                // A refused connection fails at once: do not spin on it.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        if measured {
            if let Some(h) = r.latency.as_mut() {
                h.saturating_record(micros(done - due));
            }
            if let Some(h) = r.service_time.as_mut() {
                h.saturating_record(micros(done - sent));
            }
        }
        if sc.connect_per_request {
            conn = None;
        }
    }
    r
}

fn keep(failures: &mut Vec<String>, f: String) {
    if failures.len() < KEPT_FAILURES {
        failures.push(f);
    }
}

fn truncate(s: &str, max: usize) -> &str {
    usermetadb::privacy::truncate(s, max)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

async fn sample_memory(pid: u32, end: Instant) -> Result<procfs::Memory> {
    let mut peak = procfs::memory(pid)?;
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let m = procfs::memory(pid)?;
        peak.vm_rss_kib = peak.vm_rss_kib.max(m.vm_rss_kib);
        peak.vm_hwm_kib = peak.vm_hwm_kib.max(m.vm_hwm_kib);
    }
    Ok(peak)
}

/// The open loop's schedule: request `i` is due at `start + i / rate`. A
/// thread releases each ticket at its time (a thread sleep is precise to tens
/// of microseconds, the runtime's timer only to a millisecond); a free
/// connection takes the oldest released ticket, so when all are busy the
/// backlog waits and its wait is counted.
#[derive(Default)]
struct Tickets {
    released: AtomicU64,
    taken: AtomicU64,
    closed: std::sync::atomic::AtomicBool,
    notify: Notify,
}

impl Tickets {
    /// The next due ticket, waiting for it; `None` once the schedule is over
    /// and every ticket is taken.
    async fn take(&self) -> Option<u64> {
        loop {
            let notified = self.notify.notified();
            let taken = self.taken.load(Ordering::Acquire);
            if taken < self.released.load(Ordering::Acquire) {
                if self
                    .taken
                    .compare_exchange(taken, taken + 1, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    return Some(taken);
                }
                continue;
            }
            if self.closed.load(Ordering::Acquire) {
                return None;
            }
            notified.await;
        }
    }
}

fn pace(t: &Tickets, w: &Window, rate: f64) {
    let start = w.start.into_std();
    let end = w.end.into_std();
    let total = (w.end - w.start).as_secs_f64() * rate;
    let total = total.ceil() as u64;
    let mut released = 0u64;
    while released < total {
        let now = std::time::Instant::now();
        let due_now = (((now - start).as_secs_f64() * rate).floor() as u64 + 1).min(total);
        if due_now > released {
            t.released.store(due_now, Ordering::Release);
            for _ in released..due_now {
                t.notify.notify_one();
            }
            released = due_now;
        }
        if released >= total || now >= end {
            break;
        }
        let next_due = start + Duration::from_secs_f64(released as f64 / rate);
        if let Some(wait) = next_due.checked_duration_since(std::time::Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    t.closed.store(true, Ordering::Release);
    t.notify.notify_waiters();
}
