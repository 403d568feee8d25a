//! A throwaway PostgreSQL cluster, for the tests and the benchmark: `initdb`
//! into a fresh directory, the server on a unix socket in it (and, when
//! asked, on a loopback TCP port), stopped and removed on drop, and stopped
//! by a watcher when the process that started it goes away without dropping
//! it. As root, the cluster runs as the `postgres` user (PostgreSQL refuses
//! root); the binaries are found with `pg_config --bindir`, or under
//! `/usr/lib/postgresql/*/bin` where Debian puts them.

use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A running cluster. Its superuser is `postgres`, trusted on the socket
/// and on loopback.
pub struct Scratch {
    root: PathBuf,
    bindir: PathBuf,
    port: u16,
    tcp: bool,
    /// Served over TLS on TCP with this certificate chain and key (PEM).
    tls: Option<(PathBuf, PathBuf)>,
    /// `(uid, gid)` the cluster runs as, when that is not this process's.
    owner: Option<(u32, u32)>,
    /// Settings given to the server at start (`name=value`).
    settings: Vec<String>,
}

fn other(msg: impl Into<String>) -> io::Error {
    io::Error::other(msg.into())
}

/// The folder of `initdb`, `postgres` and `psql`.
pub fn bindir() -> io::Result<PathBuf> {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && dir.join("initdb").is_file() {
            return Ok(dir);
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    found.retain(|d| d.join("initdb").is_file());
    found.sort();
    found
        .pop()
        .ok_or_else(|| other("no PostgreSQL server binaries (initdb): install Debian's postgresql"))
}

/// The uid and gid of `postgres`, from `/etc/passwd`.
fn postgres_user() -> io::Result<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd")?;
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&"postgres") && f.len() > 3)
                .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
                .flatten()
        })
        .ok_or_else(|| other("running as root, and there is no postgres user to run PostgreSQL as"))
}

/// A loopback port free now, below the kernel's range of ephemeral ports:
/// one that no outgoing connection takes meanwhile, so that a server may be
/// started on it later (a standby listed in a `db_uri` before it exists).
pub fn free_port() -> io::Result<u16> {
    let range =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let low: u16 = range
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(32768);
    let (from, to) = if low > 12_000 {
        (10_000, low)
    } else {
        (1024, low.max(2048))
    };
    for _ in 0..200 {
        let port = rand::Rng::gen_range(&mut rand::thread_rng(), from..to);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Scratch {
    /// Creates and starts a cluster; with `tcp`, it also listens on
    /// 127.0.0.1.
    pub fn start(tcp: bool) -> io::Result<Scratch> {
        Self::start_with(tcp, None, Vec::new())
    }

    /// Like [`Scratch::start`], with server settings (`name=value`) given
    /// at start, such as `shared_preload_libraries`.
    pub fn start_with_settings(tcp: bool, settings: Vec<String>) -> io::Result<Scratch> {
        Self::start_with(tcp, None, settings)
    }

    /// Like [`Scratch::start`], listening on 127.0.0.1 too and offering TLS
    /// there with the certificate chain and key given (PEM files).
    pub fn start_tls(cert: &Path, key: &Path) -> io::Result<Scratch> {
        Self::start_with(true, Some((cert.to_owned(), key.to_owned())), Vec::new())
    }

    fn start_with(
        tcp: bool,
        tls: Option<(PathBuf, PathBuf)>,
        settings: Vec<String>,
    ) -> io::Result<Scratch> {
        let bindir = bindir()?;
        let owner = if rustix::process::geteuid().is_root() {
            Some(postgres_user()?)
        } else {
            None
        };
        let root = std::env::temp_dir().join(format!(
            "usermeta-pg-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir(&root)?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&root, Some(uid), Some(gid))?;
        }
        // The server reads its key only if its owner alone may.
        let tls = match tls {
            Some((cert, key)) => {
                let (c, k) = (root.join("server.crt"), root.join("server.key"));
                std::fs::copy(cert, &c)?;
                std::fs::copy(key, &k)?;
                std::fs::set_permissions(&k, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
                if let Some((uid, gid)) = owner {
                    std::os::unix::fs::chown(&c, Some(uid), Some(gid))?;
                    std::os::unix::fs::chown(&k, Some(uid), Some(gid))?;
                }
                Some((c, k))
            }
            None => None,
        };
        let scratch = Scratch {
            root,
            bindir,
            port: free_port()?,
            tcp,
            tls,
            owner,
            settings,
        };
        scratch.run(
            "initdb",
            &[
                "-D",
                &scratch.data().to_string_lossy(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ],
        )?;
        scratch.launch()?;
        Ok(scratch)
    }

    /// A streaming standby of this cluster (which must listen on TCP): a
    /// base backup with `pg_basebackup -R`, started on a port of its own
    /// and on loopback TCP, as `name` (its `application_name`, which the
    /// primary's `synchronous_standby_names` may list), on `port`.
    pub fn standby(&self, name: &str, port: u16) -> io::Result<Scratch> {
        let root = std::env::temp_dir().join(format!(
            "usermeta-pg-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir(&root)?;
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::chown(&root, Some(uid), Some(gid))?;
        }
        let standby = Scratch {
            root,
            bindir: self.bindir.clone(),
            port,
            tcp: true,
            tls: None,
            owner: self.owner,
            settings: vec![format!(
                "primary_conninfo=host=127.0.0.1 port={} user=postgres application_name={name}",
                self.port
            )],
        };
        standby.run(
            "pg_basebackup",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-D",
                &standby.data().to_string_lossy(),
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-sync",
            ],
        )?;
        standby.launch()?;
        Ok(standby)
    }

    /// Sets a server setting for good (`ALTER SYSTEM`) and reloads.
    pub fn set(&self, name: &str, value: &str) -> io::Result<()> {
        self.sql(&format!("ALTER SYSTEM SET {name} = '{value}'"))?;
        self.sql("SELECT pg_reload_conf()")
    }

    /// Kills the postmaster with SIGKILL, as a crash of the machine would
    /// stop it; its backends notice and end on their own.
    pub fn kill(&self) -> io::Result<()> {
        let pid = std::fs::read_to_string(self.data().join("postmaster.pid"))?;
        let pid = pid.lines().next().unwrap_or("").trim().to_owned();
        let killed = Command::new("kill")
            .args(["-KILL", &pid])
            .status()
            .map_err(|e| other(format!("kill: {e}")))?;
        if !killed.success() {
            return Err(other(format!("kill -KILL {pid} failed")));
        }
        Ok(())
    }

    /// Promotes a standby to a primary, waiting until it accepts writes.
    pub fn promote(&self) -> io::Result<()> {
        self.run(
            "pg_ctl",
            &["-D", &self.data().to_string_lossy(), "-w", "promote"],
        )
    }

    fn data(&self) -> PathBuf {
        self.root.join("data")
    }

    /// The postmaster's process ID (the first line of `postmaster.pid`).
    pub fn postmaster_pid(&self) -> io::Result<u32> {
        let text = std::fs::read_to_string(self.data().join("postmaster.pid"))?;
        text.lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .ok_or_else(|| other("postmaster.pid: no process ID"))
    }

    /// The folder of the server's unix socket.
    pub fn socket_dir(&self) -> &Path {
        &self.root
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(self.bindir.join(program));
        if let Some((uid, gid)) = self.owner {
            c.uid(uid).gid(gid);
        }
        c.current_dir(&self.root);
        c
    }

    fn run(&self, program: &str, args: &[&str]) -> io::Result<()> {
        let out = self
            .command(program)
            .args(args)
            .output()
            .map_err(|e| other(format!("{}: {e}", self.bindir.join(program).display())))?;
        if !out.status.success() {
            return Err(other(format!(
                "{program}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(())
    }

    /// Starts the server behind a watcher that stops it when this process
    /// is gone, and waits until it accepts connections.
    fn launch(&self) -> io::Result<()> {
        let listen = if self.tcp { "127.0.0.1" } else { "" };
        let postgres = self.bindir.join("postgres");
        let ssl = match &self.tls {
            Some((c, k)) => format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                c.display(),
                k.display()
            ),
            None => String::new(),
        };
        let settings: String = self
            .settings
            .iter()
            .map(|s| format!(" -c \"{s}\""))
            .collect();
        let script = format!(
            "{postgres} -D {data} -k {sock} -p {port} -c listen_addresses='{listen}' \
             -c max_connections=200 -c shared_buffers=64MB{ssl}{settings} >> {log} 2>&1 &
             pg=$!
             while [ -d /proc/{parent} ] && kill -0 $pg 2>/dev/null; do sleep 1; done
             if kill -INT $pg 2>/dev/null; then wait $pg; rm -rf {root}; fi",
            postgres = postgres.display(),
            data = self.data().display(),
            sock = self.root.display(),
            port = self.port,
            log = self.root.join("server.log").display(),
            parent = std::process::id(),
            root = self.root.display(),
        );
        let mut c = Command::new("sh");
        if let Some((uid, gid)) = self.owner {
            c.uid(uid).gid(gid);
        }
        c.arg("-c")
            .arg(script)
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| other(format!("sh: {e}")))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = self
                .command("pg_isready")
                .args([
                    "-q",
                    "-h",
                    &self.root.to_string_lossy(),
                    "-p",
                    &self.port.to_string(),
                ])
                .status()
                .map_err(|e| other(format!("pg_isready: {e}")))?;
            if ready.success() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(self.root.join("server.log")).unwrap_or_default();
                return Err(other(format!("PostgreSQL did not start:\n{log}")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A connection string for database `db` over the unix socket.
    pub fn uri(&self, db: &str) -> String {
        format!(
            "host={} port={} user=postgres dbname={db}",
            self.root.display(),
            self.port
        )
    }

    /// A URI for database `db` over loopback TCP (a cluster started with `tcp`).
    pub fn tcp_uri(&self, db: &str) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Runs `sql` in the `postgres` database as its owner.
    pub fn sql(&self, sql: &str) -> io::Result<()> {
        self.sql_in("postgres", sql).map(drop)
    }

    /// Runs `sql` in database `db` as the cluster's owner, stopping at the
    /// first error; the rows printed unaligned (`|` between columns), one a
    /// line, without headers.
    pub fn sql_in(&self, db: &str, sql: &str) -> io::Result<String> {
        let out = self.tool(
            "psql",
            &[
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-U",
                "postgres",
                "-d",
                db,
                "-c",
                sql,
            ],
        )?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// A new, empty database.
    pub fn create_database(&self, name: &str) -> io::Result<()> {
        self.sql(&format!("CREATE DATABASE \"{name}\""))
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("server.log")).unwrap_or_default()
    }

    /// Runs a program of the cluster's (`pg_dump`, `pgbench`, ...) against
    /// it, as its owner, and returns what it printed.
    pub fn tool(&self, program: &str, args: &[&str]) -> io::Result<Vec<u8>> {
        let out = self
            .command(program)
            .args([
                "-h",
                &self.root.to_string_lossy(),
                "-p",
                &self.port.to_string(),
            ])
            .args(args)
            .output()?;
        if !out.status.success() {
            return Err(other(format!(
                "{program}: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(out.stdout)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data().to_string_lossy(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
