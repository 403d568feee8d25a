//! `user-meta-bench policy`: the auth policy listener under Dovecot's load.
//!
//! One login is what Dovecot sends with its defaults: `allow` before the
//! password check, `allow` after it, then `report` (a wrong password: `allow`
//! and `report`). Each keep-alive connection is one Dovecot auth process's
//! connection, doing logins one after another. Three runs, each on a freshly
//! spawned server for plain HTTP and for TLS:
//!
//! - **rate**: closed loop on every connection, logins and requests a second;
//! - **latency**: an open loop at `--rate` logins a second, the latency of
//!   `allow` from each request's send (p50, p99, p999);
//! - **memory**: failures from distinct addresses and logins fill the
//!   throttle, and the server's resident memory grows by so much per key
//!   held (`usermetadb_policy_keys`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::Args;
use hyper::Method;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use usermetadb::client::{tls_config_for, Connection, Protocols};
use usermetadb::config::parse_duration;

use crate::data::{Population, ADDRESSES};
use crate::procfs;
use crate::spawn::{free_loopback_addr, Server, WorkDir};

const TOKEN: &str = "bench-policy-token";

#[derive(Args, Clone)]
pub struct PolicyArgs {
    /// The server binary to spawn.
    #[arg(long, value_name = "PATH")]
    pub spawn_server: Option<PathBuf>,
    /// Keep-alive connections (Dovecot's auth processes' connections).
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// Measured time of each run.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Unmeasured time before each run's window.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Logins a second of the latency run.
    #[arg(long, default_value_t = 3000)]
    pub rate: u32,
    /// Share of logins with a wrong password, in percent.
    #[arg(long, default_value_t = 5)]
    pub failure_percent: u32,
    /// Failures from distinct addresses and logins in the memory run.
    #[arg(long, default_value_t = 50_000)]
    pub fill: u32,
    /// Users in the population.
    #[arg(long, default_value_t = 100_000)]
    pub users: u32,
    /// The test certificates (server and client).
    #[arg(long, default_value = "testdata/certs")]
    pub certs: PathBuf,
    /// GeoIP country database.
    #[arg(long, default_value = "testdata/geoip/GeoIP2-Country-Test.mmdb")]
    pub geoip: PathBuf,
    /// Where to make the scratch directory (default: the system's).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// A second or so of everything: every answer checked, fails unless all
    /// are as expected (CI).
    #[arg(long)]
    pub smoke: bool,
}

/// The figures of one transport.
#[derive(Debug, Default, serde::Serialize)]
pub struct Figures {
    pub transport: &'static str,
    pub logins_per_second: f64,
    pub requests_per_second: f64,
    pub server_cpu_ms_per_login: f64,
    pub latency_rate: u32,
    pub achieved_rate: f64,
    pub allow_p50_ms: f64,
    pub allow_p99_ms: f64,
    pub allow_p999_ms: f64,
    pub keys: i64,
    pub bytes_per_key: f64,
    /// Logins the first `allow` delayed or refused (not counted as logins).
    pub throttled: u64,
    pub errors: u64,
}

struct Shared {
    stop: AtomicBool,
    measuring: AtomicBool,
    logins: AtomicU64,
    requests: AtomicU64,
    /// Logins the first `allow` delayed or refused.
    throttled: AtomicU64,
    errors: AtomicU64,
}

/// One request of the policy client: its time and its answer.
async fn send(conn: &mut Connection, path: &'static str, body: Bytes) -> Result<(Duration, Bytes)> {
    let headers = [("Authorization", format!("Bearer {TOKEN}"))];
    let started = Instant::now();
    let r = conn
        .request_with_headers(Method::POST, path, &headers, Some("application/json"), body)
        .await?;
    if !r.status.is_success() {
        bail!("{path}: {}", r.status);
    }
    Ok((started.elapsed(), r.body))
}

/// One login's requests on `conn`; the allows' latencies (µs) into `lat`.
/// `Ok(None)`: the first `allow` delayed or refused the login (a user of the
/// population with wrong passwords enough, as on a real server), so it
/// ended there.
async fn login(
    conn: &mut Connection,
    rng: &mut StdRng,
    pop: &Population,
    failure_percent: u32,
    lat: Option<&mut hdrhistogram::Histogram<u64>>,
) -> Result<Option<usize>> {
    let n = rng.gen_range(0..pop.users);
    let user = pop.username(n);
    // Each user logs in from a home address of its own, in a /24 of its
    // own: a population behind a dozen addresses would be a spray.
    let addr =
        std::net::Ipv4Addr::from(0x5100_0000u32.wrapping_add(n.wrapping_mul(263))).to_string();
    let ok = rng.gen_range(0..100) >= failure_percent;
    let pwhash = if ok {
        "0eab".to_owned()
    } else {
        format!("{:04x}", rng.gen::<u16>())
    };
    let body = |success: Option<bool>| {
        let mut v = serde_json::json!({
            "device_id": "\"name\" \"Thunderbird\" \"version\" \"115.3\" \"os\" \"Windows\"",
            "login": user, "protocol": "imap", "pwhash": pwhash, "remote": addr,
            "session_id": "iuWEr+9hTIV/AAAB", "tls": true,
        });
        if let Some(s) = success {
            v["success"] = s.into();
            v["policy_reject"] = false.into();
        }
        Bytes::from(v.to_string())
    };
    let mut allows = Vec::with_capacity(2);
    let (t, answer) = send(conn, "/?command=allow", body(None)).await?;
    allows.push(t);
    let status = serde_json::from_slice::<serde_json::Value>(&answer)
        .ok()
        .and_then(|v| v["status"].as_i64());
    match status {
        Some(0) => {}
        Some(_) => return Ok(None),
        None => bail!("allow answered {}", String::from_utf8_lossy(&answer)),
    }
    let mut requests = 2;
    if ok {
        let (t, _) = send(conn, "/?command=allow", body(None)).await?;
        allows.push(t);
        requests += 1;
    }
    send(conn, "/?command=report", body(Some(ok))).await?;
    if let Some(h) = lat {
        for t in allows {
            h.saturating_record(t.as_micros() as u64);
        }
    }
    Ok(Some(requests))
}

/// Runs `connections` workers, closed loop or paced at `rate` logins a
/// second in all; the allows' latency histogram of the measured window.
async fn drive(
    addr: SocketAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
    args: &PolicyArgs,
    pop: Arc<Population>,
    rate: Option<u32>,
    shared: Arc<Shared>,
) -> Result<hdrhistogram::Histogram<u64>> {
    let mut workers = Vec::new();
    for i in 0..args.connections {
        let (tls, pop, shared) = (tls.clone(), pop.clone(), shared.clone());
        let failure_percent = args.failure_percent;
        let interval =
            rate.map(|r| Duration::from_secs_f64(args.connections as f64 / f64::from(r)));
        workers.push(tokio::spawn(async move {
            let mut conn = Connection::connect(addr, "localhost", tls.clone()).await?;
            let mut rng = StdRng::seed_from_u64(i as u64);
            let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let start = Instant::now();
            let mut n: u32 = 0;
            while !shared.stop.load(Relaxed) {
                if let Some(iv) = interval {
                    // Spread the connections' first logins over one interval.
                    let due = start + iv.mul_f64(f64::from(n) + i as f64 / 64.0);
                    tokio::time::sleep_until(due.into()).await;
                }
                n += 1;
                let measuring = shared.measuring.load(Relaxed);
                match login(
                    &mut conn,
                    &mut rng,
                    &pop,
                    failure_percent,
                    measuring.then_some(&mut hist),
                )
                .await
                {
                    Ok(Some(requests)) if measuring => {
                        shared.logins.fetch_add(1, Relaxed);
                        shared.requests.fetch_add(requests as u64, Relaxed);
                    }
                    Ok(None) => {
                        shared.throttled.fetch_add(1, Relaxed);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        shared.errors.fetch_add(1, Relaxed);
                        if shared.errors.load(Relaxed) == 1 {
                            eprintln!("policy bench: {e:#}");
                        }
                        conn = Connection::connect(addr, "localhost", tls.clone()).await?;
                    }
                }
            }
            anyhow::Ok(hist)
        }));
    }
    tokio::time::sleep(args.warmup).await;
    shared.measuring.store(true, Relaxed);
    tokio::time::sleep(args.duration).await;
    shared.measuring.store(false, Relaxed);
    shared.stop.store(true, Relaxed);
    let mut all = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for w in workers {
        all.add(w.await??)?;
    }
    Ok(all)
}

fn shared() -> Arc<Shared> {
    Arc::new(Shared {
        stop: AtomicBool::new(false),
        measuring: AtomicBool::new(false),
        logins: AtomicU64::new(0),
        requests: AtomicU64::new(0),
        throttled: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    })
}

/// The server's configuration: SQLite in `dir`, the API on mTLS (for
/// `/metrics`), the policy listener on `policy` (TLS when `tls`).
fn config(dir: &Path, args: &PolicyArgs, policy: SocketAddr, tls: bool) -> Result<PathBuf> {
    let q = |p: &Path| serde_json::to_string(&p.to_string_lossy()).unwrap_or_default();
    let certs = std::fs::canonicalize(&args.certs).context("--certs")?;
    let token = dir.join("policy.token");
    std::fs::write(&token, TOKEN)?;
    let mut y = format!(
        "db_uri: {db}\nhttp_server:\n  max_inflight_requests: 4096\n  tls:\n    cert: {cert}\n    key: {key}\n    ca: {ca}\n    acl:\n      - {{ path: \"/health|/metrics\", cn: \".*\" }}\n\
         geoip:\n  db: {geoip}\npolicy:\n  addr: {policy}\n  token_file: {token}\n  max_keys: 1000000\n",
        db = q(&dir.join("bench.db")),
        cert = q(&certs.join("server.pem")),
        key = q(&certs.join("server.key")),
        ca = q(&certs.join("ca.pem")),
        geoip = q(&std::fs::canonicalize(&args.geoip).context("--geoip")?),
        token = q(&token),
    );
    if tls {
        y.push_str(&format!(
            "  tls:\n    cert: {}\n    key: {}\n",
            q(&certs.join("server.pem")),
            q(&certs.join("server.key"))
        ));
    }
    let path = dir.join(if tls { "tls.yml" } else { "plain.yml" });
    std::fs::write(&path, y)?;
    Ok(path)
}

/// A value of the server's `/metrics`.
async fn metric(api: SocketAddr, tls: Arc<rustls::ClientConfig>, name: &str) -> Result<i64> {
    let mut c = Connection::connect(api, "localhost", Some(tls)).await?;
    let r = c
        .request(Method::GET, "/metrics", None, Bytes::new())
        .await?;
    let text = String::from_utf8_lossy(&r.body);
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .with_context(|| format!("{name} not in /metrics"))
}

/// Failure reports from `n` distinct addresses and logins.
async fn fill(addr: SocketAddr, tls: Option<Arc<rustls::ClientConfig>>, n: u32) -> Result<()> {
    let mut tasks = Vec::new();
    let per = n.div_ceil(8);
    for t in 0..8u32 {
        let tls = tls.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = Connection::connect(addr, "localhost", tls).await?;
            let headers = [("Authorization", format!("Bearer {TOKEN}"))];
            for i in t * per..((t + 1) * per).min(n) {
                // 81.0.0.0/8 and onwards: a distinct public address each.
                let ip = std::net::Ipv4Addr::from(0x5100_0000u32 + i * 7);
                let body = serde_json::json!({"login": format!("fill{i}"), "remote": ip.to_string(),
                    "protocol": "imap", "pwhash": "0000", "success": false});
                let r = conn
                    .request_with_headers(
                        Method::POST,
                        "/?command=report",
                        &headers,
                        Some("application/json"),
                        Bytes::from(body.to_string()),
                    )
                    .await?;
                if !r.status.is_success() {
                    bail!("fill: {}", r.status);
                }
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

async fn one_transport(args: &PolicyArgs, binary: &Path, tls: bool) -> Result<Figures> {
    let work = WorkDir::create(args.work_dir.as_deref(), false)?;
    let dir = work.path.join(if tls { "tls" } else { "plain" });
    std::fs::create_dir_all(&dir)?;
    let policy = free_loopback_addr()?;
    let api = free_loopback_addr()?;
    let cfg = config(&dir, args, policy, tls)?;
    let mut server = Server::start(binary, &cfg, api, &dir.join("server.log"))?;
    let certs = &args.certs;
    let admin = tls_config_for(
        &certs.join("ca.pem"),
        Some((
            &certs.join("client-prometheus.pem"),
            &certs.join("client-prometheus.key"),
        )),
        Protocols::Http1,
    )?;
    server.wait_ready(admin.clone(), "localhost").await?;
    let client_tls = if tls {
        Some(tls_config_for(
            &certs.join("ca.pem"),
            None,
            Protocols::Http1,
        )?)
    } else {
        None
    };
    let pop = Arc::new(Population::new(args.users, 1, ADDRESSES.len(), 1));
    let mut f = Figures {
        transport: if tls { "TLS" } else { "plain" },
        latency_rate: args.rate,
        ..Default::default()
    };

    // Rate: closed loop.
    let s = shared();
    let cpu0 = procfs::cpu_seconds(Some(server.pid))?;
    let started = Instant::now();
    drive(
        policy,
        client_tls.clone(),
        args,
        pop.clone(),
        None,
        s.clone(),
    )
    .await?;
    let cpu = procfs::cpu_seconds(Some(server.pid))? - cpu0;
    let window = args.duration.as_secs_f64();
    let _ = started;
    let logins = s.logins.load(Relaxed) as f64;
    f.logins_per_second = logins / window;
    f.requests_per_second = s.requests.load(Relaxed) as f64 / window;
    // CPU over the whole run (warm-up included) per login measured is an
    // upper bound; the warm-up is a small share of it.
    f.server_cpu_ms_per_login =
        cpu * 1000.0 / (logins * (window + args.warmup.as_secs_f64()) / window).max(1.0);
    f.errors += s.errors.load(Relaxed);
    f.throttled += s.throttled.load(Relaxed);

    // Latency: open loop at --rate.
    let s = shared();
    let hist = drive(
        policy,
        client_tls.clone(),
        args,
        pop.clone(),
        Some(args.rate),
        s.clone(),
    )
    .await?;
    f.achieved_rate = s.logins.load(Relaxed) as f64 / window;
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    (f.allow_p50_ms, f.allow_p99_ms, f.allow_p999_ms) = (ms(0.5), ms(0.99), ms(0.999));
    f.errors += s.errors.load(Relaxed);
    f.throttled += s.throttled.load(Relaxed);

    // Memory: keys held against resident memory.
    let keys0 = metric(api, admin.clone(), "usermetadb_policy_keys").await?;
    let rss0 = procfs::memory(server.pid)?.vm_rss_kib;
    fill(policy, client_tls.clone(), args.fill).await?;
    let keys1 = metric(api, admin.clone(), "usermetadb_policy_keys").await?;
    let rss1 = procfs::memory(server.pid)?.vm_rss_kib;
    f.keys = keys1;
    f.bytes_per_key = (rss1.saturating_sub(rss0) * 1024) as f64 / ((keys1 - keys0).max(1)) as f64;
    server.stop()?;
    Ok(f)
}

/// Runs the policy benchmark on plain HTTP and on TLS; prints a table (and
/// returns the figures).
pub async fn run(mut args: PolicyArgs, binary: PathBuf) -> Result<Vec<Figures>> {
    if args.smoke {
        args.duration = Duration::from_millis(500);
        args.warmup = Duration::from_millis(200);
        args.connections = args.connections.min(4);
        args.rate = args.rate.min(200);
        args.fill = args.fill.min(500);
        args.users = args.users.min(1000);
    }
    let mut all = Vec::new();
    for tls in [false, true] {
        all.push(one_transport(&args, &binary, tls).await?);
    }
    println!(
        "policy: {} connections, {:?} windows, {}% wrong passwords",
        args.connections, args.duration, args.failure_percent
    );
    println!(
        "{:<6} {:>10} {:>10} {:>12} | {:>10} {:>9} {:>9} {:>9} | {:>8} {:>10} | {:>9} {:>6}",
        "",
        "logins/s",
        "req/s",
        "CPU ms/login",
        "at logins/s",
        "p50 ms",
        "p99 ms",
        "p999 ms",
        "keys",
        "bytes/key",
        "throttled",
        "errors"
    );
    for f in &all {
        println!(
            "{:<6} {:>10.0} {:>10.0} {:>12.3} | {:>10.0} {:>9.2} {:>9.2} {:>9.2} | {:>8} {:>10.0} | {:>9} {:>6}",
            f.transport,
            f.logins_per_second,
            f.requests_per_second,
            f.server_cpu_ms_per_login,
            f.achieved_rate,
            f.allow_p50_ms,
            f.allow_p99_ms,
            f.allow_p999_ms,
            f.keys,
            f.bytes_per_key,
            f.throttled,
            f.errors
        );
    }
    if args.smoke
        && all
            .iter()
            .any(|f| f.errors > 0 || f.logins_per_second == 0.0)
    {
        bail!("policy smoke run: errors or no logins");
    }
    Ok(all)
}
