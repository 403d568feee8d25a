//! The fixture: a real server on 127.0.0.1:0 with the testdata certificates and
//! a temporary SQLite file, and real mTLS clients.
//!
//! With `USERMETADB_TEST_BACKEND=postgres`, [`TestServer`] stores in a fresh
//! database of a throwaway PostgreSQL cluster instead, so that the tests of
//! the API run on both backends; the tests that read SQLite's files, or
//! fault its disk, keep SQLite (`TestServer::start_sqlite_in`).
//!
//! With `USERMETADB_TEST_HTTP=2`, the API clients speak HTTP/2 (by ALPN)
//! instead of HTTP/1.1; clients writing raw HTTP/1.1 keep it.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::oneshot;
use usermetadb::client::{tls_config_for, ClientError, Connection, Protocols, RawResponse};
use usermetadb::config::Config;
use usermetadb::server::Server;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn cert(name: &str) -> PathBuf {
    repo().join("testdata/certs").join(name)
}

pub fn shared_geoip(name: &str) -> PathBuf {
    repo().join("testdata/geoip").join(name)
}

/// The ACL every test server runs with.
pub const ACL: &str = r#"
    acl:
      - { path: "/api/(add_log|set_last_login|check_device|check_login|identify_device)", cn: "sso-server|auth-server" }
      - { path: "/api/get_.*", cn: "accounts-panel" }
      - { path: "/health", cn: ".*" }
      - { path: ".*", cn: "admin" }
"#;

/// A config with TLS, the test ACL, a database in `dir` and `extra` YAML appended.
pub fn config_yaml(dir: &Path, extra: &str) -> String {
    format!(
        "db_uri: {db}\nhttp_server:\n  tls:\n    cert: {c}\n    key: {k}\n    ca: {ca}\n{ACL}{extra}\n",
        db = dir.join("usermeta.db").display(),
        c = cert("server.pem").display(),
        k = cert("server.key").display(),
        ca = cert("ca.pem").display(),
    )
}

/// The HTTP version API clients speak: HTTP/2 with `USERMETADB_TEST_HTTP=2`.
pub fn test_protocols() -> Protocols {
    match std::env::var("USERMETADB_TEST_HTTP").as_deref() {
        Ok("2") => Protocols::Http2,
        _ => Protocols::Http1,
    }
}

/// A client TLS configuration presenting `testdata/certs/<name>.pem` / `.key`,
/// offering HTTP/1.1 only (for raw HTTP/1.1 bytes).
pub fn identity(name: &str) -> std::sync::Arc<rustls::ClientConfig> {
    identity_for(name, Protocols::Http1)
}

/// [`identity`] offering `protocols`.
pub fn identity_for(name: &str, protocols: Protocols) -> std::sync::Arc<rustls::ClientConfig> {
    tls_config_for(
        &cert("ca.pem"),
        Some((&cert(&format!("{name}.pem")), &cert(&format!("{name}.key")))),
        protocols,
    )
    .unwrap()
}

pub struct TestServer {
    pub addr: SocketAddr,
    /// The agents' listener, when the config has `agents.addr`.
    pub agents: Option<SocketAddr>,
    /// The auth policy listener, when the config has `policy.addr`.
    pub policy: Option<SocketAddr>,
    /// The configuration file the server runs on (for the CLI).
    pub config: PathBuf,
    pub dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with("").await
    }

    /// `extra` is YAML appended at the top level after `http_server.tls`; an
    /// indented line continues `http_server`.
    pub async fn start_with(extra: &str) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, extra).await
    }

    pub async fn start_in(dir: tempfile::TempDir, extra: &str) -> TestServer {
        let yaml = if on_postgres() {
            postgres_yaml(dir.path(), extra)
        } else {
            config_yaml(dir.path(), extra)
        };
        Self::start_yaml(dir, yaml).await
    }

    /// On SQLite whatever the backend under test: for tests that read the
    /// database file itself.
    pub async fn start_sqlite_in(dir: tempfile::TempDir, extra: &str) -> TestServer {
        let yaml = config_yaml(dir.path(), extra);
        Self::start_yaml(dir, yaml).await
    }

    async fn start_yaml(dir: tempfile::TempDir, yaml: String) -> TestServer {
        let config = Config::from_yaml(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        let server = Server::bind(&config, "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = server.local_addr().unwrap();
        let agents = server.agents_addr();
        let policy = server.policy_addr();
        let config = dir.path().join("server.yml");
        std::fs::write(&config, &yaml).unwrap();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(server.run(async {
            let _ = rx.await;
        }));
        TestServer {
            addr,
            agents,
            policy,
            config,
            dir,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("usermeta.db")
    }

    /// A client presenting `testdata/certs/client-<cn>.pem`.
    pub async fn client(&self, cn: &str) -> Client {
        self.client_cert(&format!("client-{cn}")).await.unwrap()
    }

    /// A client presenting `testdata/certs/<name>.pem` / `.key`.
    pub async fn client_cert(&self, name: &str) -> Result<Client, ClientError> {
        let tls = identity_for(name, test_protocols());
        Ok(Client(
            Connection::connect(self.addr, "localhost", Some(tls)).await?,
        ))
    }

    /// A TLS stream presenting `<name>.pem`, for writing raw HTTP.
    pub async fn raw_tls(
        &self,
        name: &str,
    ) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        raw_tls_at(self.addr, name).await
    }

    /// Stops the server gracefully and waits for it; the directory stays.
    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, dir)
    }

    /// Rows in each table, read straight from the database.
    pub fn counts(&self) -> [i64; 4] {
        if on_postgres() && !self.db_path().exists() {
            return postgres_counts(&database_name(self.dir.path()));
        }
        db_counts(&self.db_path())
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

pub fn db_counts(path: &Path) -> [i64; 4] {
    let c = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    let n = |t: &str| -> i64 {
        c.query_row(&format!("SELECT count(*) FROM {t}"), [], |r| r.get(0))
            .unwrap()
    };
    [n("users"), n("user_logs"), n("devices"), n("last_login")]
}

pub struct Client(pub Connection);

impl Client {
    /// POSTs JSON and returns (status, parsed body).
    pub async fn post(&mut self, path: &str, body: Value) -> (u16, Value) {
        let r = self.post_bytes(path, body.to_string()).await;
        (r.status.as_u16(), parse(&r))
    }

    pub async fn post_bytes(&mut self, path: &str, body: impl Into<Bytes>) -> RawResponse {
        self.0.post_raw(path, body.into()).await.unwrap()
    }

    /// POSTs and insists on 200.
    pub async fn ok(&mut self, path: &str, body: Value) -> Value {
        let (status, v) = self.post(path, body.clone()).await;
        assert_eq!(status, 200, "{path} {body} -> {v}");
        v
    }
}

pub fn parse(r: &RawResponse) -> Value {
    serde_json::from_slice(&r.body).unwrap_or(Value::Null)
}

/// An RFC 3339 timestamp `secs_ago` before now.
pub fn ago(secs_ago: i64) -> String {
    let t = chrono::Utc::now() - chrono::Duration::seconds(secs_ago);
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

pub fn login(user: &str, device: &str, secs_ago: i64) -> Value {
    json!({"log": {
        "timestamp": ago(secs_ago),
        "username": user,
        "log_type": "login",
        "service": "mail",
        "device_info": {"id": device, "remote_zone": "IT", "browser": "Firefox", "os": "Linux", "mobile": false}
    }})
}

/// Runs the compiled server on port 0 with `--log level`; returns the process,
/// its address, and everything it writes to stderr as it arrives.
pub fn spawn_binary(
    config: &Path,
    level: &str,
) -> (
    std::process::Child,
    SocketAddr,
    std::sync::Arc<std::sync::Mutex<String>>,
) {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_user-meta-server"))
        .arg("--config")
        .arg(config)
        .args(["--addr", "127.0.0.1:0", "--log", level])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let addr = loop {
        let line = lines
            .next()
            .expect("server exited before listening")
            .unwrap();
        log.lock().unwrap().push_str(&line);
        log.lock().unwrap().push('\n');
        if let Some(rest) = line.split("listening on https://").nth(1) {
            let addr: String = rest.chars().take_while(|c| !c.is_whitespace()).collect();
            break addr.parse().unwrap();
        }
    };
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            let mut s = sink.lock().unwrap();
            s.push_str(&line);
            s.push('\n');
        }
    });
    (child, addr, log)
}

/// Polls `check` every 100 ms until it holds, for at most 15 s: for state
/// the server reaches a moment after the client acts.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually_some(what, || {
        let f = check();
        async move { f.await.then_some(()) }
    })
    .await
}

/// [`eventually`] for a check that yields a value once it holds.
pub async fn eventually_some<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    for _ in 0..150 {
        if let Some(v) = check().await {
            return v;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

/// A client of a server started with [`spawn_binary`].
pub async fn client_at(addr: SocketAddr, cn: &str) -> Client {
    try_client_at(addr, cn).await.unwrap()
}

/// [`client_at`], or why the connection failed (a server at its connection
/// cap closes it during the handshake).
pub async fn try_client_at(addr: SocketAddr, cn: &str) -> Result<Client, ClientError> {
    let tls = identity_for(&format!("client-{cn}"), test_protocols());
    Ok(Client(
        Connection::connect(addr, "localhost", Some(tls)).await?,
    ))
}

/// A TLS stream to `addr` presenting `<name>.pem`, for writing raw HTTP.
pub async fn raw_tls_at(
    addr: SocketAddr,
    name: &str,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(identity(name))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap()
}
pub async fn metric(addr: SocketAddr, name: &str) -> i64 {
    let mut c = connect_when_free(addr, "admin").await;
    let r =
        c.0.request(hyper::Method::GET, "/metrics", None, bytes::Bytes::new())
            .await
            .unwrap();
    let text = String::from_utf8_lossy(&r.body).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in\n{text}"))
}

/// A client, once the server has a free slot for it: at its connection cap,
/// it frees one a moment after a client closes one.
pub async fn connect_when_free(addr: SocketAddr, cn: &str) -> Client {
    eventually_some("a free connection slot", || async move {
        try_client_at(addr, cn).await.ok()
    })
    .await
}

/// Waits until a metric reads `want`.
pub async fn metric_settles(addr: SocketAddr, name: &str, want: i64) {
    eventually(&format!("{name} to read {want}"), || async move {
        metric(addr, name).await == want
    })
    .await
}

/// True under CI (`CI` set, and not to "false"), where a test must not be
/// skipped for lack of a tool or of privileges: `.ci/run` provides them.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false")
}

/// One PostgreSQL cluster for the tests of this process, started on first
/// use, or `None` (the test then passes, saying so) where PostgreSQL is not
/// installed; under CI it must be.
pub fn pg_cluster() -> Option<&'static usermetadb::store::postgres::scratch::Scratch> {
    use usermetadb::store::postgres::scratch::Scratch;
    static CLUSTER: std::sync::OnceLock<Option<Scratch>> = std::sync::OnceLock::new();
    CLUSTER
        .get_or_init(|| match Scratch::start(false) {
            Ok(s) => Some(s),
            Err(e) if in_ci() => panic!("PostgreSQL is required in CI: {e}"),
            Err(e) => {
                eprintln!("skipping a PostgreSQL test: {e}");
                None
            }
        })
        .as_ref()
}

/// Whether the tests run on PostgreSQL (`USERMETADB_TEST_BACKEND=postgres`).
pub fn on_postgres() -> bool {
    std::env::var("USERMETADB_TEST_BACKEND").is_ok_and(|v| v == "postgres")
}

/// The database of a test directory: its name, which is unique.
fn database_name(dir: &Path) -> String {
    let name = dir.file_name().unwrap().to_string_lossy().to_lowercase();
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// [`config_yaml`] on a database of the PostgreSQL cluster, made on first
/// use (and kept across restarts on the same directory), with a device key
/// in `dir`.
pub fn postgres_yaml(dir: &Path, extra: &str) -> String {
    let cluster = pg_cluster().expect("USERMETADB_TEST_BACKEND=postgres needs PostgreSQL");
    let name = database_name(dir);
    let key = dir.join("device.key");
    if !key.exists() {
        cluster.create_database(&name).unwrap();
        let bytes: [u8; 32] = rand::random();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        std::fs::write(&key, hex).unwrap();
    }
    let sqlite = format!("db_uri: {}\n", dir.join("usermeta.db").display());
    config_yaml(dir, extra).replacen(
        &sqlite,
        &format!(
            "db_uri: \"{}\"\nsecrets:\n  device_key_file: {}\n",
            cluster.uri(&name),
            key.display()
        ),
        1,
    )
}

/// Rows in each table of database `name` of the cluster.
pub fn postgres_counts(name: &str) -> [i64; 4] {
    let text = pg_cluster()
        .unwrap()
        .sql_in(
            name,
            "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM user_logs), \
             (SELECT count(*) FROM devices), (SELECT count(*) FROM last_login)",
        )
        .unwrap();
    let n: Vec<i64> = text.trim().split('|').map(|v| v.parse().unwrap()).collect();
    [n[0], n[1], n[2], n[3]]
}

/// Held by the one test that compares latencies under load with latencies
/// idle, and by the tests that load the machine most (several server
/// processes and a PostgreSQL cluster): they never run at the same time.
pub static QUIET: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
