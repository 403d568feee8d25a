//! `user-meta-bench`: the server's throughput and latency per endpoint, side by
//! side with its ceiling (`GET /health` over the same mTLS connections, no
//! storage touched), measured with the project's own client.
//!
//! `user-meta-bench [--spawn-server PATH | --addr HOST:PORT --server-pid PID]`
//! runs every scenario; `user-meta-bench seed --db PATH` fills a database with
//! a realistic history; `--smoke` runs everything tiny and fails unless every
//! answer was a 2xx.

mod data;
#[path = "../common/generate.rs"]
mod generate;
mod load;
mod policy;
mod procfs;
mod report;
mod seed;
mod spawn;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use clap::{Args, CommandFactory, Parser, Subcommand};
use hyper::Method;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rustls::client::Resumption;
use rustls::ClientConfig;
use usermetadb::client::{tls_config_for, Protocols};
use usermetadb::config::{parse_duration, PrivacyConfig};
use usermetadb::crypto::DeviceKey;
use usermetadb::privacy::{GeoIp, Privacy};
use usermetadb::wire::{
    CheckDeviceResponse, EmptyResponse, GetUnusedAccountsResponse, GetUserLogsResponse, Timestamp,
};

use data::Population;
use load::{Pace, Scenario, Target};
use report::{Report, ScenarioReport};

#[derive(Parser)]
#[command(
    name = "user-meta-bench",
    version,
    about = "Benchmark of user-meta-server against its own /health ceiling",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Fill a database with a realistic history, directly through the library.
    Seed(SeedArgs),
    /// The auth policy listener under Dovecot's load: logins a second,
    /// `allow` latency at a given rate, memory per throttling key; on plain
    /// HTTP and on TLS.
    Policy(policy::PolicyArgs),
    /// Print the manual page or a shell's completion script.
    Generate {
        #[arg(value_enum)]
        what: generate::Artifact,
    },
}

#[derive(Args, Clone)]
struct PopulationArgs {
    /// Users in the population.
    #[arg(long, default_value_t = 100_000)]
    users: u32,
    /// Devices each user logs in from.
    #[arg(long, default_value_t = 3)]
    devices_per_user: u32,
    /// Countries the devices are in (at most 12: those of the test GeoIP database).
    #[arg(long, default_value_t = data::ADDRESSES.len())]
    countries: usize,
    /// Seed of everything random; `seed` and a run must use the same one.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Args)]
struct SeedArgs {
    /// The SQLite database to fill (created if missing; entries are appended).
    #[arg(long, required_unless_present = "db_uri")]
    db: Option<PathBuf>,
    /// A PostgreSQL database to fill instead (`postgres://…` or
    /// `host=… dbname=…`); needs --device-key.
    #[arg(long, conflicts_with = "db", requires = "device_key")]
    db_uri: Option<String>,
    /// Log entries to write.
    #[arg(long, default_value_t = 1_000_000)]
    entries: u64,
    #[command(flatten)]
    population: PopulationArgs,
    /// Device key file, shared with the server that will serve the database
    /// (default: beside the database, created if missing, as the server does).
    #[arg(long)]
    device_key: Option<PathBuf>,
    /// GeoIP country database reducing addresses to countries.
    #[arg(long, default_value = "testdata/geoip/GeoIP2-Country-Test.mmdb")]
    geoip: PathBuf,
}

#[derive(Args)]
struct RunArgs {
    /// Start this user-meta-server binary on a fresh, seeded database in a
    /// scratch directory (default: user-meta-server beside this binary, unless
    /// --addr is given).
    #[arg(long, conflicts_with = "addr")]
    spawn_server: Option<PathBuf>,
    /// Use a running server instead (loopback only); its database should have
    /// been filled by `seed` with the same population and device key.
    #[arg(long)]
    addr: Option<SocketAddr>,
    /// With --addr: the server's process ID, for its CPU time and memory.
    #[arg(long, requires = "addr")]
    server_pid: Option<u32>,
    /// With --addr: the server's database file, for bytes per log entry.
    #[arg(long, requires = "addr")]
    db: Option<PathBuf>,
    /// Directory with ca.pem, server.{pem,key}, client-sso-server.{pem,key}
    /// and client-accounts-panel.{pem,key}.
    #[arg(long, default_value = "testdata/certs")]
    certs: PathBuf,
    /// Name the server's certificate is checked against.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// GeoIP database for the spawned server and the seed.
    #[arg(long, default_value = "testdata/geoip/GeoIP2-Country-Test.mmdb")]
    geoip: PathBuf,
    /// Keep-alive connections of every closed-loop scenario.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// HTTP/2 connections of the `*_h2` scenarios.
    #[arg(long, default_value_t = 4)]
    h2_connections: usize,
    /// Concurrent streams on each HTTP/2 connection of the `*_h2` scenarios.
    #[arg(long, default_value_t = 8)]
    h2_streams: usize,
    /// Measured time of each scenario (e.g. 10s, 500ms).
    #[arg(long, default_value = "10s", value_parser = duration)]
    duration: Duration,
    /// Unmeasured time before each scenario's window.
    #[arg(long, default_value = "2s", value_parser = duration)]
    warmup: Duration,
    /// Requests per second of the open-loop add_log scenario.
    #[arg(long, default_value_t = 5000.0)]
    rate: f64,
    #[command(flatten)]
    population: PopulationArgs,
    /// YAML appended to the spawned server's configuration (for A/B runs of
    /// a setting, e.g. `transparency:\n  record: accounts-panel`).
    #[arg(long, value_name = "YAML")]
    server_yaml: Option<String>,
    /// Log entries seeded into the spawned server's database before the run.
    #[arg(long, default_value_t = 1_000_000)]
    seed_entries: u64,
    /// Share of add_log entries from a device never seen before, in percent.
    #[arg(long, default_value_t = 2)]
    new_device_percent: u32,
    /// Share of check_device lookups of an unknown device, in percent.
    #[arg(long, default_value_t = 10)]
    unknown_device_percent: u32,
    /// `limit` of get_user_logs.
    #[arg(long, default_value_t = 50)]
    logs_limit: i64,
    /// Names per get_unused_accounts request.
    #[arg(long, default_value_t = 10_000)]
    unused_names: usize,
    /// `days` of get_unused_accounts.
    #[arg(long, default_value_t = data::DORMANT_DAYS)]
    unused_days: i64,
    /// Connections of the get_unused_accounts scenario (a latency figure).
    #[arg(long, default_value_t = 1)]
    unused_connections: usize,
    /// Connections of the new-connection-per-request scenario (default: --connections).
    #[arg(long)]
    handshake_connections: Option<usize>,
    /// Scenarios to run, comma-separated (health always runs: it is the ceiling).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "check_device,check_device_h2,get_user_logs,get_unused_accounts,add_log,add_log_h2,log_event,add_log_rate,handshake"
    )]
    scenarios: Vec<String>,
    /// Threads of the load generator.
    #[arg(long, default_value_t = 2)]
    client_threads: usize,
    /// `db.synchronous` of the spawned server: full or normal.
    #[arg(long, default_value = "full")]
    synchronous: String,
    /// Run the spawned server(s) on a throwaway PostgreSQL cluster instead of
    /// SQLite (`initdb` into the scratch directory), and measure the cluster's
    /// own single-row INSERT rate with pgbench beside them.
    #[arg(long, conflicts_with = "addr")]
    postgres: bool,
    /// Spawned servers sharing the database (with --postgres); connections
    /// are spread over them.
    #[arg(long, default_value_t = 1, requires = "postgres")]
    replicas: usize,
    /// With --postgres: load pg_stat_statements into the cluster and print,
    /// after the run, where PostgreSQL spent its time per add_log entry.
    #[arg(long, requires = "postgres")]
    pg_statements: bool,
    /// With --postgres: the client counts pgbench runs with before the
    /// scenarios, besides --connections. Its ceiling is the best of them, so
    /// that no count that suits pgbench badly lowers it; after the
    /// scenarios it runs again with the best count.
    #[arg(
        long,
        requires = "postgres",
        value_delimiter = ',',
        default_value = "32,64"
    )]
    pgbench_clients: Vec<usize>,
    /// With --postgres: a setting of the cluster, NAME=VALUE (repeatable).
    /// The cluster starts with `shared_buffers=1GB`, room for the seeded
    /// database as on a production server; this can override it.
    #[arg(long = "pg-setting", requires = "postgres")]
    pg_settings: Vec<String>,
    /// Pause between scenarios, letting the server settle.
    #[arg(long, default_value = "1s", value_parser = duration)]
    pause: Duration,
    /// Write the figures as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Decode and check every answer (slower load generator).
    #[arg(long)]
    validate: bool,
    /// A few seconds in all: every scenario tiny, every answer checked; exits
    /// non-zero unless every answer was a valid 2xx. Asserts no timing.
    #[arg(long)]
    smoke: bool,
    /// Where the scratch directory goes (default: the system temporary directory).
    #[arg(long)]
    workdir: Option<PathBuf>,
    /// Keep the scratch directory (database, config, server log).
    #[arg(long)]
    keep: bool,
}

fn duration(s: &str) -> Result<Duration, String> {
    parse_duration(s)
}

fn main() -> ExitCode {
    // Before `seed` opens a database.
    usermetadb::store::configure_sqlite();
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Seed(args)) => seed_command(args).map(|()| true),
        Some(Command::Policy(args)) => policy_command(args).map(|()| true),
        Some(Command::Generate { what }) => generate::generate(Cli::command(), what)
            .map(|()| true)
            .context("writing to stdout"),
        None => run_command(cli.run),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("user-meta-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn policy_command(args: policy::PolicyArgs) -> Result<()> {
    let binary = match &args.spawn_server {
        Some(p) => p.clone(),
        None => default_server_binary()?,
    };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(policy::run(args, binary))
        .map(|_| ())
}

fn population(p: &PopulationArgs) -> Population {
    Population::new(p.users, p.devices_per_user, p.countries, p.seed)
}

fn open_geoip(path: &Path) -> Result<GeoIp> {
    GeoIp::open(path).map_err(|e| anyhow::anyhow!("GeoIP database: {e}"))
}

fn seed_command(args: SeedArgs) -> Result<()> {
    let cfg = match (&args.db, &args.db_uri) {
        (_, Some(uri)) => postgres_config(uri.clone(), 16),
        (Some(db), None) => seed::sqlite_config(db),
        (None, None) => anyhow::bail!("--db or --db-uri is required"),
    };
    let key_path = match (&args.device_key, &args.db) {
        (Some(k), _) => k.clone(),
        (None, Some(db)) => db.with_extension("device.key"),
        (None, None) => anyhow::bail!("--device-key is required with --db-uri"),
    };
    let (key, created) = DeviceKey::load_or_create(&key_path)
        .with_context(|| format!("device key {}", key_path.display()))?;
    if created {
        eprintln!("created device key {}", key_path.display());
    }
    let privacy = Privacy::new(
        PrivacyConfig::default(),
        key,
        Some(open_geoip(&args.geoip)?),
    );
    let pop = population(&args.population);
    eprintln!(
        "seeding {} with {} log entries for {} users...",
        seed::describe(&cfg),
        args.entries,
        pop.users
    );
    let stats = seed::seed(
        &cfg,
        &privacy,
        &pop,
        args.entries,
        usermetadb::clock::now_unix(),
    )?;
    let size = seed::db_size(&cfg)?;
    println!(
        "{} entries in {:.1} s ({:.0} entries/s)",
        stats.entries, stats.seconds, stats.entries_per_second
    );
    println!(
        "{}: {} log entries, {} users, {} devices, {:.1} MiB; {:.0} bytes per log entry in all, {:.0} in user_logs and its indexes",
        seed::describe(&cfg),
        size.log_entries,
        size.users,
        size.devices,
        size.total_bytes as f64 / (1024.0 * 1024.0),
        size.total_bytes_per_entry,
        size.user_logs_bytes_per_entry
    );
    Ok(())
}

/// The settings the run uses, after `--smoke` shrank them.
fn apply_smoke(a: &mut RunArgs) {
    a.connections = a.connections.min(4);
    a.h2_connections = a.h2_connections.min(2);
    a.h2_streams = a.h2_streams.min(4);
    a.duration = Duration::from_millis(300);
    a.warmup = Duration::from_millis(100);
    a.pause = Duration::ZERO;
    a.rate = a.rate.min(200.0);
    a.population.users = a.population.users.min(2_000);
    a.seed_entries = a.seed_entries.min(20_000);
    a.unused_names = a.unused_names.min(1_000);
    a.handshake_connections = Some(a.handshake_connections.unwrap_or(4).min(4));
    a.validate = true;
    a.pgbench_clients.clear();
}

struct Identities {
    writer: Arc<ClientConfig>,
    reader: Arc<ClientConfig>,
    /// The writer's identity with session resumption off: every connection
    /// makes a full handshake.
    fresh: Arc<ClientConfig>,
    /// The writer's identity offering HTTP/2 only.
    writer_h2: Arc<ClientConfig>,
    /// A Windows agent: the CA to trust, no certificate of its own.
    agent: Arc<ClientConfig>,
}

fn identities(certs: &Path) -> Result<Identities> {
    let ca = certs.join("ca.pem");
    let load = |name: &str, protocols: Protocols| -> Result<Arc<ClientConfig>> {
        let cert = certs.join(format!("{name}.pem"));
        let key = certs.join(format!("{name}.key"));
        tls_config_for(&ca, Some((&cert, &key)), protocols)
            .with_context(|| format!("client identity {}", cert.display()))
    };
    // HTTP/1.1 unless a scenario says otherwise: one request per connection
    // at a time, as the scenarios' connection counts mean.
    let writer = load("client-sso-server", Protocols::Http1)?;
    let reader = load("client-accounts-panel", Protocols::Http1)?;
    let mut fresh = (*writer).clone();
    fresh.resumption = Resumption::disabled();
    Ok(Identities {
        writer,
        reader,
        fresh: Arc::new(fresh),
        writer_h2: load("client-sso-server", Protocols::Http2)?,
        agent: tls_config_for(&ca, None, Protocols::Http1).context("the agents' TLS")?,
    })
}

fn default_server_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating this binary")?;
    let beside = exe.with_file_name("user-meta-server");
    if !beside.exists() {
        bail!(
            "no --addr or --spawn-server given and {} does not exist (cargo build --release --bins)",
            beside.display()
        );
    }
    Ok(beside)
}

/// How the answers of a scenario are checked.
/// The agents' listener's answer to an event.
#[derive(serde::Deserialize)]
struct AgentAnswer {
    message: String,
}

fn checker<T: serde::de::DeserializeOwned + 'static>(
    validate: bool,
    tally: fn(&T) -> u64,
) -> Option<load::CheckFn> {
    validate.then(|| {
        Arc::new(move |body: &[u8]| {
            serde_json::from_slice::<T>(body)
                .map(|v| tally(&v))
                .map_err(|e| e.to_string())
        }) as load::CheckFn
    })
}

fn run_command(mut args: RunArgs) -> Result<bool> {
    if args.smoke {
        apply_smoke(&mut args);
    }
    if args.connections == 0 || args.client_threads == 0 || args.rate <= 0.0 {
        bail!("--connections, --client-threads and --rate must be greater than 0");
    }
    if let Some(addr) = args.addr {
        if !addr.ip().is_loopback() {
            bail!("--addr {addr}: the benchmark only targets loopback addresses");
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let certs = args
        .certs
        .canonicalize()
        .with_context(|| format!("certificates directory {}", args.certs.display()))?;
    let ids = identities(&certs)?;
    let pop = population(&args.population);
    let started = Timestamp(chrono::Utc::now());

    // The server: spawned on a seeded scratch database, or given.
    let mut workdir = None;
    let mut servers: Vec<spawn::Server> = Vec::new();
    let mut cluster = None;
    let mut seed_stats = None;
    let mut database_before = None;
    let mut insert_ceiling = None;
    let mut agents = None;
    let (target, db_cfg) = match args.addr {
        Some(addr) => {
            eprintln!(
                "using the server at {addr}; its database should hold `seed --users {} --devices-per-user {} --seed {}` with the same device key",
                pop.users, pop.devices_per_user, pop.seed
            );
            let target = Target {
                addrs: vec![addr],
                server_name: args.server_name.clone(),
                server_pids: args.server_pid.into_iter().collect(),
                db_pid: None,
            };
            (target, args.db.as_deref().map(seed::sqlite_config))
        }
        None => {
            let binary = match &args.spawn_server {
                Some(p) => p.clone(),
                None => default_server_binary()?,
            };
            let dir = spawn::WorkDir::create(args.workdir.as_deref(), args.keep)?;
            let key_path = dir.path.join("device.key");
            let db_cfg = if args.postgres {
                let mut settings = vec![format!("shared_buffers={BENCH_SHARED_BUFFERS}")];
                settings.extend(args.pg_settings.iter().cloned());
                if args.pg_statements
                    && !settings
                        .iter()
                        .any(|s| s.starts_with("shared_preload_libraries="))
                {
                    settings.push("shared_preload_libraries=pg_stat_statements".to_owned());
                }
                if args.pg_statements {
                    settings.push("pg_stat_statements.track_planning=on".to_owned());
                }
                let pg = usermetadb::store::postgres::scratch::Scratch::start_with_settings(
                    false, settings,
                )
                .context("starting a PostgreSQL cluster")?;
                pg.create_database("bench")
                    .context("creating the database")?;
                let cfg = postgres_config(pg.uri("bench"), 32);
                cluster = Some(pg);
                cfg
            } else {
                seed::sqlite_config(&dir.path.join("bench.db"))
            };
            let geoip = args
                .geoip
                .canonicalize()
                .with_context(|| format!("GeoIP database {}", args.geoip.display()))?;
            let (key, _) = DeviceKey::load_or_create(&key_path).context("creating a device key")?;
            let geo = open_geoip(&geoip)?;
            let unplaced: Vec<&str> = data::ADDRESSES[..pop.countries]
                .iter()
                .filter(|(addr, cc)| geo.country(addr) != *cc)
                .map(|(addr, _)| *addr)
                .collect();
            if !unplaced.is_empty() {
                eprintln!("warning: the GeoIP database does not place {unplaced:?} as expected");
            }
            let privacy = Privacy::new(PrivacyConfig::default(), key, Some(geo));
            eprintln!(
                "seeding {} log entries for {} users ({} devices each)...",
                args.seed_entries, pop.users, pop.devices_per_user
            );
            seed_stats = Some(seed::seed(
                &db_cfg,
                &privacy,
                &pop,
                args.seed_entries,
                usermetadb::clock::now_unix(),
            )?);
            database_before = Some(seed::db_size(&db_cfg)?);
            if let Some(pg) = &cluster {
                eprintln!("measuring the cluster's own single-row INSERT rate (pgbench)...");
                insert_ceiling = Some(pgbench_insert_rate(
                    pg,
                    &dir.path,
                    &args,
                    &pgbench_ladder(&args),
                )?);
                if args.pg_statements {
                    pg.sql_in(
                        "bench",
                        "CREATE EXTENSION IF NOT EXISTS pg_stat_statements; \
                         SELECT pg_stat_statements_reset()",
                    )
                    .context("resetting pg_stat_statements")?;
                }
            }
            let config = dir.path.join("server.yml");
            let agents_addr =
                if args.scenarios.iter().any(|s| s == "log_event") && args.replicas <= 1 {
                    Some(spawn::free_loopback_addr()?)
                } else {
                    None
                };
            let mut yaml = spawn::config_yaml(&spawn::ServerFiles {
                db: &db_cfg,
                device_key: &key_path,
                certs: &certs,
                geoip: Some(&geoip),
                synchronous: &args.synchronous,
                agents: agents_addr,
            });
            if let Some(extra) = &args.server_yaml {
                yaml.push_str(extra);
                yaml.push('\n');
            }
            std::fs::write(&config, yaml)
                .with_context(|| format!("writing {}", config.display()))?;
            if let Some(addr) = agents_addr {
                // A key per load worker: the per-key rate limit stays out of the figure.
                let keys = (0..args.connections)
                    .map(|_| spawn::agent_key(&binary, &config))
                    .collect::<Result<_>>()?;
                agents = Some(Agents { addr, keys });
            }
            let mut addrs = Vec::new();
            for i in 0..args.replicas.max(1) {
                let addr = spawn::free_loopback_addr()?;
                let mut s = spawn::Server::start(
                    &binary,
                    &config,
                    addr,
                    &dir.path.join(format!("server-{i}.log")),
                )?;
                rt.block_on(s.wait_ready(ids.writer.clone(), &args.server_name))?;
                eprintln!(
                    "server {} started at {addr} (pid {})",
                    binary.display(),
                    s.pid
                );
                addrs.push(addr);
                servers.push(s);
            }
            let target = Target {
                addrs,
                server_name: args.server_name.clone(),
                server_pids: servers.iter().map(|s| s.pid).collect(),
                db_pid: cluster.as_ref().map(|pg| pg.postmaster_pid()).transpose()?,
            };
            workdir = Some(dir);
            (target, Some(db_cfg))
        }
    };

    let scenarios = scenarios(&args, &pop, &ids, agents.as_ref())?;
    let mut reports: Vec<ScenarioReport> = Vec::new();
    let mut memory_peak: Option<procfs::Memory> = None;
    for (i, (sc, meaning)) in scenarios.iter().enumerate() {
        if i > 0 {
            std::thread::sleep(args.pause);
        }
        eprintln!(
            "running {} ({} connections, {:?} + {:?} warm-up)...",
            sc.name, sc.connections, sc.duration, sc.warmup
        );
        let outcome = rt.block_on(load::run(sc, &target))?;
        let mut r = ScenarioReport::new(sc, &outcome, *meaning);
        if let Some(ceiling) = reports.first() {
            r.set_ceiling(ceiling);
        } else {
            let c = r.clone();
            r.set_ceiling(&c);
        }
        eprintln!(
            "  {:.0} req/s, p50 {:.3} ms, p99 {:.3} ms, {} non-2xx, {} errors",
            r.requests_per_second,
            r.latency_ms.p50,
            r.latency_ms.p99,
            r.non_2xx,
            r.transport_errors + r.invalid_answers
        );
        if let Some(m) = outcome.memory {
            let p = memory_peak.get_or_insert(m);
            p.vm_rss_kib = p.vm_rss_kib.max(m.vm_rss_kib);
            p.vm_hwm_kib = p.vm_hwm_kib.max(m.vm_hwm_kib);
        }
        reports.push(r);
    }

    for s in servers.iter_mut() {
        s.stop()?;
    }
    let database_after = match &db_cfg {
        Some(db) => Some(seed::db_size(db)?),
        None => None,
    };
    drop(servers);
    let statements = match (args.pg_statements, &cluster) {
        (true, Some(pg)) => Some(statements_table(pg, &reports)?),
        _ => None,
    };
    // pgbench again, after the scenarios: the ceiling is the mean of the
    // two, so that a machine that slowed down or sped up during the run
    // shows as a gap between them rather than in the ratio alone.
    let mut insert_after = None;
    if let (Some(pg), Some(dir)) = (&cluster, &workdir) {
        eprintln!("measuring the cluster's own single-row INSERT rate again (pgbench)...");
        // At the client count that was best before: the two are the same
        // measure, and their gap is the machine's.
        let clients: Vec<usize> = insert_ceiling.iter().map(|c| c.clients).collect();
        match pgbench_insert_rate(pg, &dir.path, &args, &clients) {
            Ok(c) => insert_after = Some(c),
            Err(e) => eprintln!("warning: pgbench after the scenarios: {e:#}"),
        }
    }
    let insert_before = insert_ceiling.take();
    insert_ceiling = match (&insert_before, &insert_after) {
        (Some(a), Some(b)) => Some(InsertCeiling {
            tps: (a.tps + b.tps) / 2.0,
            cpu_us: (a.cpu_us + b.cpu_us) / 2.0,
            clients: a.clients,
        }),
        (Some(a), None) => Some(InsertCeiling {
            tps: a.tps,
            cpu_us: a.cpu_us,
            clients: a.clients,
        }),
        _ => None,
    };
    drop(cluster);
    drop(workdir);

    let settings = serde_json::json!({
        "connections": args.connections,
        "duration_s": args.duration.as_secs_f64(),
        "warmup_s": args.warmup.as_secs_f64(),
        "rate": args.rate,
        "users": pop.users,
        "devices_per_user": pop.devices_per_user,
        "countries": pop.countries,
        "seed_entries": args.seed_entries,
        "new_device_percent": args.new_device_percent,
        "unknown_device_percent": args.unknown_device_percent,
        "logs_limit": args.logs_limit,
        "unused_names": args.unused_names,
        "unused_days": args.unused_days,
        "client_threads": args.client_threads,
        "synchronous": args.synchronous,
        "smoke": args.smoke,
        "validate": args.validate,
        "backend": if args.postgres { "postgresql" } else { "sqlite" },
        "replicas": args.replicas,
        "postgres_single_row_inserts_per_second": insert_ceiling.as_ref().map(|c| c.tps),
        "postgres_cpu_us_per_insert": insert_ceiling.as_ref().map(|c| c.cpu_us),
        "postgres_pgbench_clients": insert_ceiling.as_ref().map(|c| c.clients),
        "postgres_pgbench_clients_tried": if args.postgres { pgbench_ladder(&args) } else { Vec::new() },
        "postgres_single_row_inserts_per_second_before": insert_before.as_ref().map(|c| c.tps),
        "postgres_single_row_inserts_per_second_after": insert_after.as_ref().map(|c| c.tps),
    });
    let mut report = Report {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        started: serde_json::to_value(started)?
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        machine: procfs::machine(),
        load_generator: format!(
            "load generator on the same machine ({} threads)",
            args.client_threads
        ),
        settings,
        ceiling: "GET /health".into(),
        scenarios: reports,
        seed: seed_stats,
        database_before,
        database_after,
        server_memory_peak: memory_peak,
        targets: Vec::new(),
    };
    report.evaluate_targets();
    print!("{}", report.table());
    if let Some(InsertCeiling {
        tps,
        cpu_us,
        clients,
    }) = insert_ceiling
    {
        println!(
            "PostgreSQL's own single-row INSERT rate (pgbench with {} clients, the best of {:?}, \
             mean of before and after the scenarios): {tps:.0}/s, PostgreSQL CPU {cpu_us:.0} µs \
             per INSERT",
            clients,
            pgbench_ladder(&args)
        );
        if let (Some(a), Some(b)) = (&insert_before, &insert_after) {
            println!(
                "  before: {:.0}/s, {:.0} µs; after: {:.0}/s, {:.0} µs{}",
                a.tps,
                a.cpu_us,
                b.tps,
                b.cpu_us,
                if (a.tps - b.tps).abs() > 0.25 * tps {
                    " (the machine's speed moved during the run: repeat it)"
                } else {
                    ""
                }
            );
        }
        if let Some(a) = report.scenarios.iter().find(|r| r.name == "add_log") {
            println!(
                "add_log: {:.0} req/s, {:.1}% of it",
                a.requests_per_second,
                100.0 * a.requests_per_second / tps
            );
        }
        if let Some(table) = &statements {
            print!("{table}");
        }
        for r in &report.scenarios {
            if let Some(db) = r.db_cpu_us_per_request {
                println!(
                    "PostgreSQL CPU per answer of {}: {db:.0} µs ({:.2}x pgbench's per INSERT)",
                    r.name,
                    db / cpu_us
                );
            }
        }
    }
    if let Some(path) = &args.json {
        let json = serde_json::to_vec_pretty(&report)?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    let ok = report.all_ok();
    if !ok {
        eprintln!("some answers were not a valid 2xx (see the failures above)");
    }
    Ok(ok || !args.smoke)
}

type Planned = (Scenario, Option<&'static str>);

/// The agents' listener of the spawned server, and keys for it.
struct Agents {
    addr: SocketAddr,
    keys: Vec<String>,
}

fn scenarios(
    args: &RunArgs,
    pop: &Population,
    ids: &Identities,
    agents: Option<&Agents>,
) -> Result<Vec<Planned>> {
    for s in &args.scenarios {
        if !matches!(
            s.as_str(),
            "health"
                | "check_device"
                | "check_device_h2"
                | "add_log_h2"
                | "get_user_logs"
                | "get_unused_accounts"
                | "add_log"
                | "add_log_rate"
                | "log_event"
                | "handshake"
        ) {
            bail!("unknown scenario {s:?}");
        }
    }
    let wanted = |name: &str| args.scenarios.iter().any(|s| s == name);
    let base = Scenario {
        name: String::new(),
        method: Method::POST,
        path: "",
        tls: ids.writer.clone(),
        connections: args.connections,
        pace: Pace::Closed,
        warmup: args.warmup,
        duration: args.duration,
        connect_per_request: false,
        streams: 1,
        body: Arc::new(|_| Bytes::new()),
        headers: Vec::new(),
        addr: None,
        check: None,
        sample_memory: false,
        seed: args.population.seed,
    };
    let v = args.validate;
    let mut out: Vec<Planned> = vec![(
        Scenario {
            name: "health".into(),
            method: Method::GET,
            path: "/health",
            ..base.clone()
        },
        None,
    )];
    if wanted("check_device") {
        let p = pop.clone();
        let unknown = args.unknown_device_percent;
        out.push((
            Scenario {
                name: "check_device".into(),
                path: "/api/check_device",
                body: Arc::new(move |rng| p.check_device(rng, unknown).into()),
                check: checker::<CheckDeviceResponse>(v, |r| u64::from(r.seen)),
                ..base.clone()
            },
            Some("devices seen"),
        ));
    }
    // HTTP/2: few connections, several streams each.
    let h2 = Scenario {
        tls: ids.writer_h2.clone(),
        connections: args.h2_connections,
        streams: args.h2_streams,
        ..base.clone()
    };
    if wanted("check_device_h2") {
        let p = pop.clone();
        let unknown = args.unknown_device_percent;
        out.push((
            Scenario {
                name: format!(
                    "check_device_h2 ({}x{})",
                    args.h2_connections, args.h2_streams
                ),
                path: "/api/check_device",
                body: Arc::new(move |rng| p.check_device(rng, unknown).into()),
                check: checker::<CheckDeviceResponse>(v, |r| u64::from(r.seen)),
                ..h2.clone()
            },
            Some("devices seen"),
        ));
    }
    if wanted("get_user_logs") {
        let p = pop.clone();
        let limit = args.logs_limit;
        out.push((
            Scenario {
                name: "get_user_logs".into(),
                path: "/api/get_user_logs",
                tls: ids.reader.clone(),
                body: Arc::new(move |rng| p.get_user_logs(rng, limit).into()),
                check: checker::<GetUserLogsResponse>(v, |r| r.results.len() as u64),
                ..base.clone()
            },
            Some("entries returned"),
        ));
    }
    if wanted("get_unused_accounts") {
        // Building 10,000 names takes the client milliseconds: draw from a few
        // prepared bodies instead.
        let mut rng = StdRng::seed_from_u64(args.population.seed ^ 0xacc0);
        let bodies: Arc<Vec<Bytes>> = Arc::new(
            (0..8)
                .map(|_| {
                    pop.get_unused_accounts(&mut rng, args.unused_names, args.unused_days)
                        .into()
                })
                .collect(),
        );
        out.push((
            Scenario {
                name: "get_unused_accounts".into(),
                path: "/api/get_unused_accounts",
                tls: ids.reader.clone(),
                connections: args.unused_connections,
                body: Arc::new(move |rng| bodies[rng.gen_range(0..bodies.len())].clone()),
                // Always checked: one answer every few milliseconds costs nothing.
                check: checker::<GetUnusedAccountsResponse>(true, |r| {
                    r.unused_usernames.len() as u64
                }),
                ..base.clone()
            },
            Some("names unused"),
        ));
    }
    let new_device = args.new_device_percent;
    let add_log_body = |p: Population| -> load::BodyFn {
        Arc::new(move |rng| {
            p.add_log(rng, Timestamp(chrono::Utc::now()), new_device)
                .into()
        })
    };
    if wanted("add_log") {
        out.push((
            Scenario {
                name: "add_log".into(),
                path: "/api/add_log",
                body: add_log_body(pop.clone()),
                check: checker::<EmptyResponse>(v, |_| 0),
                sample_memory: true,
                ..base.clone()
            },
            None,
        ));
    }
    if wanted("add_log_h2") {
        out.push((
            Scenario {
                name: format!("add_log_h2 ({}x{})", args.h2_connections, args.h2_streams),
                path: "/api/add_log",
                body: add_log_body(pop.clone()),
                check: checker::<EmptyResponse>(v, |_| 0),
                ..h2.clone()
            },
            None,
        ));
    }
    if wanted("log_event") && agents.is_none() {
        eprintln!("log_event skipped: it needs one spawned server (no --addr, no --replicas)");
    }
    if let Some(agents) = agents.filter(|_| wanted("log_event")) {
        let p = pop.clone();
        out.push((
            Scenario {
                name: "log_event".into(),
                path: "/api/log_event",
                tls: ids.agent.clone(),
                addr: Some(agents.addr),
                headers: agents
                    .keys
                    .iter()
                    .map(|k| vec![("X-API-Key", k.clone())])
                    .collect(),
                body: Arc::new(move |rng| p.agent_event(rng, chrono::Utc::now()).into()),
                // 200 is a retry recognised: the same user, computer, type
                // and second drawn twice.
                // Always checked: the share of retries is part of the figure.
                check: checker::<AgentAnswer>(true, |r| {
                    u64::from(r.message == "Event already recorded")
                }),
                ..base.clone()
            },
            Some("events already recorded"),
        ));
    }
    if wanted("add_log_rate") {
        out.push((
            Scenario {
                name: "add_log_rate".into(),
                path: "/api/add_log",
                pace: Pace::Open { rate: args.rate },
                body: add_log_body(pop.clone()),
                check: checker::<EmptyResponse>(v, |_| 0),
                sample_memory: true,
                ..base.clone()
            },
            None,
        ));
    }
    if wanted("handshake") {
        out.push((
            Scenario {
                name: "handshake".into(),
                method: Method::GET,
                path: "/health",
                tls: ids.fresh.clone(),
                connections: args.handshake_connections.unwrap_or(args.connections),
                connect_per_request: true,
                ..base.clone()
            },
            None,
        ));
    }
    Ok(out)
}

/// The storage settings of a PostgreSQL database.
fn postgres_config(uri: String, pool_size: usize) -> usermetadb::config::DbConfig {
    usermetadb::config::DbConfig {
        path: PathBuf::new(),
        readers: 0,
        max_batch: 0,
        synchronous_full: true,
        device_index: false,
        postgres: Some(usermetadb::config::PostgresConfig {
            read_uri: None,
            uri,
            password_file: None,
            pool_size,
            statement_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            ca_file: None,
        }),
    }
}

/// The client counts pgbench's ceiling is the best of: `--pgbench-clients`
/// and `--connections`, in order, none twice, none 0.
fn pgbench_ladder(args: &RunArgs) -> Vec<usize> {
    let mut clients = args.pgbench_clients.clone();
    clients.push(args.connections);
    clients.retain(|&n| n > 0);
    clients.sort_unstable();
    clients.dedup();
    clients
}

/// The cluster's own ceiling for durable writes: pgbench inserting one row
/// per transaction into a table shaped like a log entry, for the scenarios'
/// duration, over each of `clients` connections: the best of them. A count
/// pgbench fails at (say, above `max_connections`) is left out, with a
/// warning.
fn pgbench_insert_rate(
    pg: &usermetadb::store::postgres::scratch::Scratch,
    dir: &std::path::Path,
    args: &RunArgs,
    clients: &[usize],
) -> Result<InsertCeiling> {
    let mut best: Option<InsertCeiling> = None;
    let mut failure = None;
    for &n in clients {
        match pgbench_run(pg, dir, args, n) {
            Ok(run) if best.as_ref().is_none_or(|b| run.tps > b.tps) => best = Some(run),
            Ok(_) => {}
            Err(e) => {
                eprintln!("warning: pgbench with {n} clients: {e:#}");
                failure = Some(e);
            }
        }
    }
    match (best, failure) {
        (Some(best), _) => Ok(best),
        (None, Some(e)) => Err(e),
        (None, None) => Err(anyhow!("pgbench: no client count to run")),
    }
}

/// One pgbench run of single-row INSERTs over `clients` connections.
fn pgbench_run(
    pg: &usermetadb::store::postgres::scratch::Scratch,
    dir: &std::path::Path,
    args: &RunArgs,
    clients: usize,
) -> Result<InsertCeiling> {
    pg.sql_in(
        "bench",
        "CREATE TABLE IF NOT EXISTS pgbench_log (id BIGSERIAL PRIMARY KEY, \
         user_id BIGINT NOT NULL, ts BIGINT NOT NULL, log_type TEXT NOT NULL, \
         device_id BYTEA, zone TEXT)",
    )
    .context("creating pgbench's table")?;
    let script = dir.join("insert.sql");
    std::fs::write(
        &script,
        "\\set u random(1, 100000)\n\
         INSERT INTO pgbench_log (user_id, ts, log_type, device_id, zone) \
         VALUES (:u, 1800000000, 'login', '\\x0102030405060708', 'IT');\n",
    )?;
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    let postmaster = pg.postmaster_pid()?;
    let background = procfs::children(postmaster)?.len();
    let cpu0 = procfs::tree_cpu_seconds(postmaster)?;
    let out = pg
        .tool(
            "pgbench",
            &[
                "-U",
                "postgres",
                "-n",
                "-c",
                &clients.to_string(),
                "-j",
                &args.client_threads.to_string(),
                "-T",
                &args.duration.as_secs().max(1).to_string(),
                "-f",
                &script.to_string_lossy(),
                "bench",
            ],
        )
        .context("running pgbench")?;
    // pgbench's backends are ending: their time reaches the postmaster's
    // once it has reaped them.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while procfs::children(postmaster)?.len() > background && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let cpu = procfs::tree_cpu_seconds(postmaster)? - cpu0;
    let text = String::from_utf8_lossy(&out);
    let tps = text
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .with_context(|| format!("pgbench said:\n{text}"))?;
    pg.sql_in("bench", "DROP TABLE pgbench_log")
        .context("dropping pgbench's table")?;
    let inserts = text
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|v| v.split(['/', ' ']).next())
        .and_then(|v| v.parse::<f64>().ok())
        .with_context(|| format!("pgbench said:\n{text}"))?;
    let cpu_us = cpu * 1e6 / inserts.max(1.0);
    eprintln!(
        "  pgbench, {clients} clients: {tps:.0} single-row INSERTs/s, PostgreSQL CPU {cpu_us:.0} µs per INSERT"
    );
    Ok(InsertCeiling {
        tps,
        cpu_us,
        clients,
    })
}

/// Where PostgreSQL spent its time in the servers' statements (everything
/// after pgbench), per add_log entry answered (warm-up included): the
/// statements taking the most time first.
fn statements_table(
    pg: &usermetadb::store::postgres::scratch::Scratch,
    reports: &[ScenarioReport],
) -> Result<String> {
    use std::fmt::Write;
    let entries = reports
        .iter()
        .filter(|r| r.name.starts_with("add_log"))
        .map(|r| r.total_ok)
        .sum::<u64>()
        .max(1);
    let text = pg
        .sql_in(
            "bench",
            "SELECT round(total_exec_time::numeric, 1), round(total_plan_time::numeric, 1), \
                    calls, rows, regexp_replace(left(query, 90), '\\s+', ' ', 'g') \
             FROM pg_stat_statements ORDER BY total_exec_time + total_plan_time DESC LIMIT 15",
        )
        .context("reading pg_stat_statements")?;
    let mut out = String::new();
    writeln!(
        out,
        "PostgreSQL's statements by time, per add_log entry ({entries} entries):"
    )?;
    writeln!(
        out,
        "{:>10} {:>10} {:>9} {:>10}  statement",
        "µs/entry", "planning", "calls", "rows"
    )?;
    let per_entry = |ms: &str| ms.trim().parse::<f64>().unwrap_or(0.0) * 1000.0 / entries as f64;
    for line in text.lines() {
        let f: Vec<&str> = line.splitn(5, '|').collect();
        let [exec, plan, calls, rows, query] = f[..] else {
            continue;
        };
        writeln!(
            out,
            "{:>10.1} {:>10.1} {:>9} {:>10}  {}",
            per_entry(exec),
            per_entry(plan),
            calls.trim(),
            rows.trim(),
            query.trim()
        )?;
    }
    Ok(out)
}

/// `shared_buffers` of the bench's cluster.
const BENCH_SHARED_BUFFERS: &str = "1GB";

/// PostgreSQL's own rate of durable single-row INSERTs, and its CPU per
/// INSERT (the cluster's process tree, from /proc).
struct InsertCeiling {
    tps: f64,
    cpu_us: f64,
    /// pgbench's clients in the run (the best one's, for a ceiling).
    clients: usize,
}
