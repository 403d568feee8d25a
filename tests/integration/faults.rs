//! Process and storage faults against the compiled server: `kill -9` during a
//! write load, again and again (run by `.ci/crash-test`); a full filesystem and
//! a read-only database, which give 503s, keep the process up, and heal by
//! themselves when the cause goes away.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use serde_json::json;
use usermetadb::client::{tls_config, Connection};

use crate::common::*;

/// The compiled server, killed when dropped (so a failing test leaves no process).
pub struct Binary {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: Arc<Mutex<String>>,
}

impl Binary {
    pub fn spawn(config: &Path, level: &str) -> Binary {
        let (child, addr, log) = spawn_binary(config, level);
        Binary { child, addr, log }
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        self.kill();
    }
}

fn sso_tls() -> Arc<rustls::ClientConfig> {
    tls_config(
        &cert("ca.pem"),
        Some((
            &cert("client-sso-server.pem"),
            &cert("client-sso-server.key"),
        )),
    )
    .unwrap()
}

fn open_db(path: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(path).unwrap()
}

fn integrity(c: &rusqlite::Connection) -> String {
    c.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap()
}

fn logs_of(c: &rusqlite::Connection, user: &str) -> i64 {
    c.query_row(
        "SELECT count(*) FROM users u JOIN user_logs l ON l.user_id = u.id WHERE u.name = ?1",
        [user],
        |r| r.get(0),
    )
    .unwrap()
}

fn last_logins_of(c: &rusqlite::Connection, user: &str) -> i64 {
    c.query_row(
        "SELECT count(*) FROM users u JOIN last_login l ON l.user_id = u.id WHERE u.name = ?1",
        [user],
        |r| r.get(0),
    )
    .unwrap()
}

/// A write the server acknowledged with 2xx.
#[derive(Debug, Clone)]
enum Acked {
    Log(String),
    LastLogin(String),
}

/// The number of SIGKILLs of [`crash_loop_keeps_every_acknowledged_write`]
/// (`CRASH_KILLS`, default 25).
fn crash_kills() -> usize {
    std::env::var("CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(25)
}

/// Run by `.ci/crash-test`: SIGKILL the server at random moments of a write
/// load, at least 20 times; after each kill the database passes
/// `PRAGMA integrity_check` and holds every acknowledged write, and the
/// server starts again on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long; run by .ci/crash-test"]
async fn crash_loop_keeps_every_acknowledged_write() {
    let kills = crash_kills();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yml");
    std::fs::write(&config, config_yaml(dir.path(), "")).unwrap();
    let db = dir.path().join("usermeta.db");
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let mut all_acked: Vec<Acked> = Vec::new();
    let started = Instant::now();

    for round in 0..kills {
        let mut bin = Binary::spawn(&config, "info");
        let addr = bin.addr;
        let acked = Arc::new(Mutex::new(Vec::<Acked>::new()));
        let mut tasks = Vec::new();
        for worker in 0..4 {
            let acked = acked.clone();
            tasks.push(tokio::spawn(async move {
                let Ok(mut c) = Connection::connect(addr, "localhost", Some(sso_tls())).await
                else {
                    return;
                };
                // Bounded: the kill ends the loop long before this.
                for i in 0..100_000 {
                    let user = format!("k{round}-w{worker}-{i}");
                    let (path, body, done) = if i % 3 == 2 {
                        (
                            "/api/set_last_login",
                            json!({"last_login": {"timestamp": ago(60), "username": user, "service": "mail"}}),
                            Acked::LastLogin(user),
                        )
                    } else {
                        (
                            "/api/add_log",
                            login(&user, "dev", 60),
                            Acked::Log(user),
                        )
                    };
                    match c.post_raw(path, body.to_string().into()).await {
                        Ok(r) if r.status == 200 => acked.lock().unwrap().push(done),
                        _ => return,
                    }
                }
            }));
        }
        let run_for = Duration::from_millis(rng.gen_range(150..700));
        tokio::time::sleep(run_for).await;
        bin.kill();
        for t in tasks {
            let _ = t.await;
        }
        let acked = acked.lock().unwrap().clone();
        assert!(
            !acked.is_empty(),
            "round {round}: nothing acknowledged in {run_for:?}"
        );
        all_acked.extend(acked);

        let c = open_db(&db);
        assert_eq!(integrity(&c), "ok", "round {round}");
        for a in &all_acked {
            match a {
                Acked::Log(u) => assert_eq!(logs_of(&c, u), 1, "round {round}: {a:?} lost"),
                Acked::LastLogin(u) => {
                    assert_eq!(last_logins_of(&c, u), 1, "round {round}: {a:?} lost")
                }
            }
        }
    }
    // One last start: the database still opens and serves.
    let bin = Binary::spawn(&config, "info");
    let mut c = client_at(bin.addr, "admin").await;
    let (status, _) = c
        .post("/api/get_user_logs", json!({"username": "k0-w0-0"}))
        .await;
    assert_eq!(status, 200);
    eprintln!(
        "crash test: {kills} SIGKILLs, {} acknowledged writes all present, integrity ok, {:.1}s",
        all_acked.len(),
        started.elapsed().as_secs_f64()
    );
}

/// Says why a fault test cannot run here: a failure in CI, a notice elsewhere.
fn cannot_run(what: &str) {
    if in_ci() {
        panic!("{what}: required in CI");
    }
    eprintln!("NOTICE: skipping: {what}");
}

fn run(cmd: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A small tmpfs mounted for the test's life.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let path = dir.path().to_str().ok_or("path")?.to_owned();
        run(
            "mount",
            &["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", &path],
        )?;
        Ok(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Some(p) = self.dir.path().to_str() {
            let _ = run("umount", &["-l", p]);
        }
    }
}

/// Fills the filesystem of `dir` with one file, to the last byte.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 4096];
    // Bounded by the size of the filesystem; the cap only guards a mistake.
    for _ in 0..(1 << 20) {
        if f.write_all(&chunk).is_err() {
            break;
        }
    }
    let _ = f.sync_all();
    path
}

async fn write_one(c: &mut Client, user: &str) -> (u16, serde_json::Value) {
    let body = json!({"log": {"timestamp": ago(60), "username": user, "log_type": "login",
        "message": "m".repeat(2000)}});
    c.post("/api/add_log", body).await
}

/// Writes until a write fails or `max` were made: (acknowledged, refused).
async fn write_until_refused(
    c: &mut Client,
    prefix: &str,
    max: usize,
) -> (Vec<String>, Vec<(String, u16, serde_json::Value)>) {
    let mut acked = Vec::new();
    let mut refused = Vec::new();
    for i in 0..max {
        let user = format!("{prefix}{i}");
        let (status, v) = write_one(c, &user).await;
        if status == 200 {
            acked.push(user);
        } else {
            refused.push((user, status, v));
            if refused.len() >= 5 {
                break;
            }
        }
    }
    (acked, refused)
}

/// Retries a write until it is acknowledged, for at most `within`.
async fn recovers(c: &mut Client, prefix: &str, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut i = 0;
    while started.elapsed() < within {
        i += 1;
        if write_one(c, &format!("{prefix}{i}")).await.0 == 200 {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// Every refused write got 503 with `error`; the process is up, still
/// serves reads, and logged `log_line`.
async fn refused_but_serving(
    bin: &mut Binary,
    c: &mut Client,
    refused: &[(String, u16, serde_json::Value)],
    error: &str,
    log_line: &str,
) {
    for (user, status, v) in refused {
        assert_eq!(*status, 503, "{user}: {v}");
        assert_eq!(v["error"], error, "{user}");
    }
    assert!(bin.alive());
    assert_eq!(health(bin.addr).await, 200);
    let (status, v) = c
        .post("/api/get_user_logs", json!({"username": "before"}))
        .await;
    assert_eq!(status, 200, "{v}");
    assert!(bin.log_text().contains(log_line), "{}", bin.log_text());
}

async fn health(addr: SocketAddr) -> u16 {
    let mut c = client_at(addr, "admin").await;
    c.0.request(hyper::Method::GET, "/health", None, bytes::Bytes::new())
        .await
        .map(|r| r.status.as_u16())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_filesystem_gives_503s_and_heals_when_space_returns() {
    let fs = match Tmpfs::mount("3m") {
        Ok(fs) => fs,
        Err(e) => return cannot_run(&format!("mounting a tmpfs ({e})")),
    };
    let config = fs.path().join("config.yml");
    std::fs::write(&config, config_yaml(fs.path(), "")).unwrap();
    let mut bin = Binary::spawn(&config, "info");
    let mut c = client_at(bin.addr, "admin").await;
    assert_eq!(write_one(&mut c, "before").await.0, 200);

    let filler = fill(fs.path());
    let (acked, refused) = write_until_refused(&mut c, "full-", 3000).await;
    assert!(!refused.is_empty(), "3000 writes fit on a full filesystem");
    refused_but_serving(
        &mut bin,
        &mut c,
        &refused,
        "storage full, retry later",
        "storage is full",
    )
    .await;

    // Space returns: writes go through again without a restart.
    std::fs::remove_file(&filler).unwrap();
    let took = recovers(&mut c, "after-", Duration::from_secs(15)).await;
    assert!(took.is_some(), "no recovery after space returned");
    eprintln!(
        "full filesystem: {} writes acknowledged, then {} refused with 503; writable again after {took:?}",
        acked.len(),
        refused.len()
    );
    assert!(bin.alive());

    // Every acknowledged write is there, nothing of a refused one.
    let db = open_db(&fs.path().join("usermeta.db"));
    assert_eq!(integrity(&db), "ok");
    for u in &acked {
        assert_eq!(logs_of(&db, u), 1, "{u} acknowledged but missing");
    }
    for (u, _, _) in &refused {
        assert_eq!(logs_of(&db, u), 0, "{u} refused but written");
    }
    drop(db);
    drop(c);
    drop(bin);
}

/// Sets or clears the immutable attribute, which refuses writes even to root
/// and even through descriptors opened before.
fn chattr(flag: &str, files: &[PathBuf]) -> Result<(), String> {
    let mut args = vec![flag];
    let names: Vec<&str> = files.iter().filter_map(|p| p.to_str()).collect();
    args.extend(names);
    run("chattr", &args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_database_gives_503s_and_heals_when_writable() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yml");
    std::fs::write(&config, config_yaml(dir.path(), "")).unwrap();
    let mut bin = Binary::spawn(&config, "info");
    let mut c = client_at(bin.addr, "admin").await;
    assert_eq!(write_one(&mut c, "before").await.0, 200);

    let db = dir.path().join("usermeta.db");
    // Not the -shm file: SQLite maps it into memory, and a write fault on an
    // immutable mapping is SIGBUS, which no program survives. The database
    // and its WAL are what "read-only storage" means.
    let files: Vec<PathBuf> = ["", "-wal"]
        .iter()
        .map(|s| PathBuf::from(format!("{}{s}", db.display())))
        .filter(|p| p.exists())
        .collect();
    if let Err(e) = chattr("+i", &files) {
        return cannot_run(&format!("making the database immutable ({e})"));
    }
    struct Mutable(Vec<PathBuf>);
    impl Drop for Mutable {
        fn drop(&mut self) {
            let _ = chattr("-i", &self.0);
        }
    }
    let guard = Mutable(files.clone());

    let (acked, refused) = write_until_refused(&mut c, "ro-", 200).await;
    assert!(
        !refused.is_empty(),
        "writes to an immutable database succeeded"
    );
    refused_but_serving(
        &mut bin,
        &mut c,
        &refused,
        "storage read-only, retry later",
        "storage is read-only",
    )
    .await;

    chattr("-i", &files).unwrap();
    drop(guard);
    let took = recovers(&mut c, "rw-", Duration::from_secs(15)).await;
    assert!(took.is_some(), "no recovery once writable");
    eprintln!(
        "read-only database: {} writes acknowledged, then {} refused with 503; writable again after {took:?}",
        acked.len(),
        refused.len()
    );
    assert!(bin.alive());

    let conn = open_db(&db);
    assert_eq!(integrity(&conn), "ok");
    for u in &acked {
        assert_eq!(logs_of(&conn, u), 1, "{u} acknowledged but missing");
    }
    for (u, _, _) in &refused {
        assert_eq!(logs_of(&conn, u), 0, "{u} refused but written");
    }
}
