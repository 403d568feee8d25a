//! `user-meta-server`: the usermetadb server, its config check and database
//! maintenance.

#[path = "../common/generate.rs"]
mod generate;
mod notify;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use usermetadb::config::{Config, ConfigError, DEFAULT_CONFIG_PATH};
use usermetadb::server::{tls, Server};

#[derive(Parser)]
#[command(
    name = "user-meta-server",
    version,
    about = "Privacy-preserving user metadata database"
)]
struct Cli {
    /// Configuration file (YAML).
    #[arg(long, global = true, default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// Address to listen on, HOST:PORT (":PORT" means all interfaces).
    #[arg(long, global = true, default_value = ":5505")]
    addr: String,
    /// Log filter, e.g. info, debug, usermetadb=debug (or RUST_LOG).
    #[arg(long, global = true)]
    log: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API (the default).
    Serve,
    /// Check the configuration and report every problem with the key it concerns.
    CheckConfig,
    /// Database maintenance (run while the server is stopped, or beside it).
    Db {
        #[command(subcommand)]
        command: DbCommand,
    },
    /// API keys of Windows login agents (the winauthmon protocol).
    AgentKey {
        #[command(subcommand)]
        command: AgentKeyCommand,
    },
    /// Print the manual page or a shell's completion script.
    Generate {
        #[arg(value_enum)]
        what: generate::Artifact,
    },
}

#[derive(Subcommand)]
enum AgentKeyCommand {
    /// Make a key for one site of a tenant; it is printed once, and only its
    /// hash is stored.
    Add {
        /// The tenant (company): its agents' users are TENANT/username.
        #[arg(long)]
        tenant: String,
        /// The site (office, domain) the key is for.
        #[arg(long)]
        site: String,
    },
    /// Every key: ID, tenant, site, day made, state.
    List,
    /// Disable a key for good: its agents are answered 401.
    Disable {
        #[arg(value_name = "ID")]
        id: i64,
    },
}

#[derive(Subcommand)]
enum DbCommand {
    /// Delete log entries and devices past retention now.
    Prune,
    /// Write the whole database as JSON Lines (one record a line, tagged by
    /// `kind`), device IDs in clear; needs the device key.
    Export {
        /// New file to write (created mode 0600); `-` or nothing for stdout.
        #[arg(value_name = "FILE|-")]
        output: Option<PathBuf>,
    },
    /// Read an export into an empty database, sealing device IDs under its key.
    Import {
        /// `-` or nothing for stdin.
        #[arg(value_name = "FILE|-")]
        input: Option<PathBuf>,
    },
    /// A consistent copy of the live database into a new file.
    Backup {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}

fn parse_addr(s: &str) -> anyhow::Result<SocketAddr> {
    let full = if s.starts_with(':') {
        format!("0.0.0.0{s}")
    } else {
        s.to_owned()
    };
    full.parse()
        .with_context(|| format!("--addr {s:?}: expected HOST:PORT, e.g. 127.0.0.1:5505"))
}

fn init_logging(filter: Option<&str>) {
    let filter = filter
        .map(tracing_subscriber::EnvFilter::new)
        .or_else(|| tracing_subscriber::EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn main() -> ExitCode {
    // Before anything opens a database.
    usermetadb::store::configure_sqlite();
    let cli = Cli::parse();
    init_logging(cli.log.as_deref());
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(&cli.config, &cli.addr),
        Command::CheckConfig => return check_config(&cli.config),
        Command::Db { command } => db(&cli.config, command),
        Command::AgentKey { command } => agent_key(&cli.config, command),
        Command::Generate { what } => {
            generate::generate(Cli::command(), what).context("writing to stdout")
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("user-meta-server: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check_config(path: &std::path::Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(ConfigError::Invalid { problems }) => {
            for p in &problems {
                println!("{}: {p}", path.display());
            }
            return ExitCode::FAILURE;
        }
        Err(e @ ConfigError::Read { .. }) => {
            println!("{e}");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            println!("{}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    let missing = config.missing_files();
    for p in &missing {
        println!("{}: {p}", path.display());
    }
    let mut ok = missing.is_empty();
    for (key, problem) in usermetadb::store::check_config(&config.db) {
        println!("{}: {key}: {problem}", path.display());
        ok = false;
    }
    if let Some(t) = config.http.tls.as_ref().filter(|_| ok) {
        if let Err(e) = tls::server_config(&t.cert, &t.key, &t.ca) {
            println!("{}: http_server.tls: {e}", path.display());
            ok = false;
        }
    }
    if let Some(t) = config.agents.tls.as_ref().filter(|_| ok) {
        if let Err(e) = tls::server_config_without_client_auth(&t.cert, &t.key) {
            println!("{}: agents.tls: {e}", path.display());
            ok = false;
        }
    }
    if let Some(t) = config.policy.tls.as_ref().filter(|_| ok) {
        if let Err(e) = tls::server_config_without_client_auth(&t.cert, &t.key) {
            println!("{}: policy.tls: {e}", path.display());
            ok = false;
        }
    }
    if let Some(token) = config.policy.token.as_ref().filter(|_| ok) {
        match token.read() {
            Ok(t) if t.trim().is_empty() => {
                println!("{}: policy.token_file: the token is empty", path.display());
                ok = false;
            }
            Ok(_) => {}
            Err(e) => {
                println!("{}: policy.token_file: {e}", path.display());
                ok = false;
            }
        }
    }
    if let Some(g) = config.geoip.as_ref().filter(|_| ok) {
        if let Err(e) = usermetadb::privacy::GeoIp::open(g) {
            println!("{}: geoip.db: {e}", path.display());
            ok = false;
        }
    }
    if ok {
        // Secrets, CA bundles and client certificates of the alert sinks.
        if let Err(e) = usermetadb::monitor::sinks::Sinks::new(&config.alerts) {
            println!("{}: {e}", path.display());
            ok = false;
        }
    }
    if ok {
        println!("{}: ok", path.display());
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
}

fn agent_key(config_path: &std::path::Path, command: AgentKeyCommand) -> anyhow::Result<()> {
    use usermetadb::config::agents::valid_tenant;
    let config = Config::load(config_path)?;
    if let AgentKeyCommand::Add { tenant, site } = &command {
        if !valid_tenant(tenant) {
            anyhow::bail!(
                "--tenant {tenant:?}: 1 to 64 letters, digits, '-', '_' or '.' (it prefixes user names)"
            );
        }
        if site.trim().is_empty() || site.len() > 128 || site.chars().any(char::is_control) {
            anyhow::bail!("--site: 1 to 128 characters, no control characters");
        }
    }
    let runtime = runtime()?;
    let store = runtime.block_on(usermetadb::store::Store::open(&config.db))?;
    let result = runtime.block_on(async {
        match command {
            AgentKeyCommand::Add { tenant, site } => {
                let key = usermetadb::crypto::new_agent_key();
                let day = usermetadb::clock::quantize(usermetadb::clock::now_unix(), 86_400);
                let made = store
                    .agent_key_add(tenant, site, usermetadb::crypto::agent_key_hash(&key), day)
                    .await?;
                eprintln!(
                    "key {} for tenant {} site {}; it is shown only now:",
                    made.id, made.tenant, made.site
                );
                println!("{key}");
            }
            AgentKeyCommand::List => {
                println!(
                    "{:>4}  {:<20} {:<24} {:<10}  state",
                    "id", "tenant", "site", "made"
                );
                for k in store.agent_keys().await? {
                    let made = chrono::DateTime::from_timestamp(k.created, 0)
                        .map(|d| d.format("%Y-%m-%d").to_string())
                        .unwrap_or_default();
                    let state = if k.disabled { "disabled" } else { "active" };
                    println!(
                        "{:>4}  {:<20} {:<24} {made:<10}  {state}",
                        k.id, k.tenant, k.site
                    );
                }
            }
            AgentKeyCommand::Disable { id } => {
                if !store.agent_key_disable(id).await? {
                    anyhow::bail!("no agent key {id}");
                }
                println!("agent key {id} disabled");
            }
        }
        Ok::<(), anyhow::Error>(())
    });
    store.close();
    result
}

fn db(config_path: &std::path::Path, command: DbCommand) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    match command {
        DbCommand::Prune => db_prune(&config),
        DbCommand::Export { output } => db_export(&config, output.as_deref()),
        DbCommand::Import { input } => db_import(&config, input.as_deref()),
        DbCommand::Backup { file } => db_backup(&config, &file),
    }
}

fn db_prune(config: &Config) -> anyhow::Result<()> {
    let runtime = runtime()?;
    let store = runtime.block_on(usermetadb::store::Store::open(&config.db))?;
    let result = runtime.block_on(async {
        let now = usermetadb::clock::now_unix();
        let (d, c) = usermetadb::retention::run_once(&store, config.retention, now).await?;
        println!(
            "deleted {} log entries, {} devices, {} users with no data left",
            d.user_logs, d.devices, d.users
        );
        println!(
            "coarsened {} log entries, {} devices, {} time-spent rows, {} countries seen",
            c.user_logs, c.devices, c.time_spent, c.user_countries
        );
        Ok::<(), anyhow::Error>(())
    });
    store.close();
    result
}

/// The device key of the database: the configured file, or the one beside it.
fn device_key_path(config: &Config) -> PathBuf {
    config
        .secrets
        .device_key_file
        .clone()
        .unwrap_or_else(|| config.db.path.with_extension("device.key"))
}

fn is_stdio(p: Option<&std::path::Path>) -> bool {
    p.is_none_or(|p| p == std::path::Path::new("-"))
}

fn db_export(config: &Config, output: Option<&std::path::Path>) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let key_path = device_key_path(config);
    let key = usermetadb::crypto::DeviceKey::load(&key_path).with_context(|| {
        format!(
            "the export holds device IDs in clear and needs the database's key {}",
            key_path.display()
        )
    })?;
    let privacy = usermetadb::privacy::Privacy::new(config.privacy, key, None);
    if config.db.postgres.is_none() && !config.db.path.is_file() {
        anyhow::bail!("no database at {}", config.db.path.display());
    }
    let mut out: Box<dyn std::io::Write> = if is_stdio(output) {
        Box::new(std::io::BufWriter::new(std::io::stdout().lock()))
    } else {
        let path = output.unwrap_or(std::path::Path::new("-"));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("{}", path.display()))?;
        Box::new(std::io::BufWriter::new(file))
    };
    let n = usermetadb::transfer::export(&config.db, &privacy, &mut out)?;
    eprintln!(
        "exported {} log entries, {} devices, {} last logins, {} agent keys, {} time spent rows, {} recorded reads (device IDs in clear: keep this file as safe as the key)",
        n.logs, n.devices, n.last_logins, n.agent_keys, n.time_spent, n.access_reads
    );
    Ok(())
}

fn db_import(config: &Config, input: Option<&std::path::Path>) -> anyhow::Result<()> {
    use usermetadb::transfer;
    let key_path = device_key_path(config);
    let (key, created) = usermetadb::crypto::DeviceKey::load_or_create(&key_path)?;
    if created {
        eprintln!(
            "created a new device key {}; back it up with the database",
            key_path.display()
        );
    }
    let geoip = match &config.geoip {
        Some(p) => Some(usermetadb::privacy::GeoIp::open(p).map_err(anyhow::Error::msg)?),
        None => None,
    };
    let privacy = usermetadb::privacy::Privacy::new(config.privacy, key, geoip);
    let n = if is_stdio(input) {
        transfer::import(&config.db, &privacy, &mut std::io::stdin().lock())?
    } else {
        let path = input.unwrap_or(std::path::Path::new("-"));
        let file = std::fs::File::open(path).with_context(|| format!("{}", path.display()))?;
        transfer::import(&config.db, &privacy, &mut std::io::BufReader::new(file))
            .with_context(|| format!("{}", path.display()))?
    };
    eprintln!(
        "imported {} log entries, {} devices, {} last logins, {} agent keys, {} time spent rows, {} recorded reads",
        n.logs, n.devices, n.last_logins, n.agent_keys, n.time_spent, n.access_reads
    );
    Ok(())
}

fn db_backup(config: &Config, file: &std::path::Path) -> anyhow::Result<()> {
    usermetadb::store::backup(&config.db, file)?;
    eprintln!(
        "backed up {} to {}; device IDs in it open only with the key {}: back that up too",
        config.db.path.display(),
        file.display(),
        device_key_path(config).display()
    );
    Ok(())
}

fn serve(config_path: &std::path::Path, addr: &str) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    let addr = parse_addr(addr)?;
    runtime()?.block_on(async move {
        let server = Server::bind(&config, addr).await?;
        let local = server.local_addr()?;
        let scheme = if server.is_tls() { "https" } else { "http" };
        tracing::info!(
            address = %local,
            database = %config.db.path.display(),
            "listening on {scheme}://{local}"
        );
        if let Some(policy) = server.policy_addr() {
            let scheme = if config.policy.tls.is_some() { "https" } else { "http" };
            tracing::info!(address = %policy, "policy: listening on {scheme}://{policy}");
        }
        if let Some(agents) = server.agents_addr() {
            let scheme = if config.agents.tls.is_some() { "https" } else { "http" };
            tracing::info!(address = %agents, "agents: listening on {scheme}://{agents}");
        }
        // Bound, and the database open and migrated: ready.
        notify::notify(&format!("READY=1\nSTATUS=listening on {scheme}://{local}"));
        let privacy = server.privacy();
        tokio::spawn(async move {
            let Ok(mut hup) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            else {
                return;
            };
            while hup.recv().await.is_some() {
                notify::notify(&format!(
                    "RELOADING=1\nMONOTONIC_USEC={}",
                    notify::monotonic_usec()
                ));
                if let Some(g) = &privacy.geoip {
                    match g.reload() {
                        Ok(()) => tracing::info!("GeoIP database reloaded"),
                        Err(e) => tracing::error!(error = %e, "GeoIP reload failed; keeping the old database"),
                    }
                }
                notify::notify("READY=1");
            }
        });
        server
            .run(async {
                shutdown_signal().await;
                notify::notify("STOPPING=1");
            })
            .await;
        Ok::<(), anyhow::Error>(())
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}
