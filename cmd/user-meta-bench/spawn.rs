//! Running the server binary under test: its configuration, its working
//! directory, start-up and a clean stop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hyper::Method;
use rustls::ClientConfig;
use usermetadb::client::Connection;

/// A scratch directory, removed when dropped unless asked to keep it.
pub struct WorkDir {
    pub path: PathBuf,
    keep: bool,
}

impl WorkDir {
    pub fn create(parent: Option<&Path>, keep: bool) -> Result<WorkDir> {
        let parent = parent
            .map(Path::to_owned)
            .unwrap_or_else(std::env::temp_dir);
        let path = parent.join(format!("user-meta-bench-{}", std::process::id()));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(WorkDir { path, keep })
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("kept {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// The files a server configuration points at.
pub struct ServerFiles<'a> {
    pub db: &'a usermetadb::config::DbConfig,
    pub device_key: &'a Path,
    pub certs: &'a Path,
    pub geoip: Option<&'a Path>,
    pub synchronous: &'a str,
    /// The agents' listener, on the test server certificate, with the
    /// highest rate limit per key.
    pub agents: Option<SocketAddr>,
}

/// A YAML configuration for the server: mTLS with the test certificates, the
/// ACL the bench's two identities need.
pub fn config_yaml(f: &ServerFiles) -> String {
    // A JSON string is a valid YAML double-quoted scalar: paths need no escaping rules of their own.
    let q = |p: &Path| serde_json::to_string(&p.to_string_lossy()).unwrap_or_default();
    let db = match &f.db.postgres {
        Some(pg) => serde_json::to_string(&pg.uri).unwrap_or_default(),
        None => q(&f.db.path),
    };
    let pool = if f.db.postgres.is_some() {
        "\n  pool_size: 32"
    } else {
        ""
    };
    let mut y = format!(
        "db_uri: {db}
db:
  synchronous: {sync}{pool}
http_server:
  tls:
    cert: {cert}
    key: {key}
    ca: {ca}
    acl:
      - {{ path: \"/api/(add_log|set_last_login|check_device)\", cn: \"sso-server\" }}
      - {{ path: \"/api/get_.*\", cn: \"accounts-panel\" }}
      - {{ path: \"/health\", cn: \".*\" }}
secrets:
  device_key_file: {dk}
",
        sync = f.synchronous,
        cert = q(&f.certs.join("server.pem")),
        key = q(&f.certs.join("server.key")),
        ca = q(&f.certs.join("ca.pem")),
        dk = q(f.device_key),
    );
    if let Some(addr) = f.agents {
        y.push_str(&format!(
            "agents:\n  addr: {addr}\n  rate_limit: 100000\n  tls:\n    cert: {}\n    key: {}\n",
            q(&f.certs.join("server.pem")),
            q(&f.certs.join("server.key")),
        ));
    }
    if let Some(g) = f.geoip {
        y.push_str(&format!("geoip:\n  db: {}\n", q(g)));
    }
    y
}

/// A new agent key, made with the server binary's `agent-key add` on
/// `config`'s database.
pub fn agent_key(binary: &Path, config: &Path) -> Result<String> {
    let out = Command::new(binary)
        .arg("--config")
        .arg(config)
        .args(["agent-key", "add", "--tenant", "bench", "--site", "load"])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {} agent-key add", binary.display()))?;
    if !out.status.success() {
        bail!(
            "agent-key add failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// A free port on the loopback interface, as the kernel hands them out.
pub fn free_loopback_addr() -> Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    l.local_addr().context("finding a free port")
}

pub struct Server {
    child: Option<Child>,
    pub pid: u32,
    pub addr: SocketAddr,
    log: PathBuf,
}

impl Server {
    pub fn start(binary: &Path, config: &Path, addr: SocketAddr, log: &Path) -> Result<Server> {
        let log_file =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new(binary)
            .arg("--config")
            .arg(config)
            .arg("--addr")
            .arg(addr.to_string())
            .arg("--log")
            .arg("warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok(Server {
            pid: child.id(),
            child: Some(child),
            addr,
            log: log.to_owned(),
        })
    }

    /// The end of the server's log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Waits until `GET /health` answers 200.
    pub async fn wait_ready(&mut self, tls: Arc<ClientConfig>, server_name: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait().context("waiting for the server")? {
                    self.child = None;
                    bail!(
                        "the server exited at start-up ({status}):\n{}",
                        self.log_tail()
                    );
                }
            }
            let attempt = async {
                let mut c = Connection::connect(self.addr, server_name, Some(tls.clone())).await?;
                c.request(Method::GET, "/health", None, bytes::Bytes::new())
                    .await
            };
            match attempt.await {
                Ok(r) if r.status.is_success() => return Ok(()),
                Ok(r) => bail!("GET /health answered {}", r.status),
                Err(e) if Instant::now() > deadline => {
                    bail!(
                        "the server did not answer in 30 s: {e}\n{}",
                        self.log_tail()
                    )
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Asks the server to stop (SIGTERM: in-flight requests finish, the
    /// database is closed) and waits for it.
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = libc::pid_t::try_from(child.id()).context("server pid")?;
        // SAFETY: kill(2) with a pid of a child this process started and has not reaped.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(45);
        loop {
            if let Some(status) = child.try_wait().context("waiting for the server")? {
                if !status.success() {
                    bail!("the server exited with {status}:\n{}", self.log_tail());
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the server did not stop within 45 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
