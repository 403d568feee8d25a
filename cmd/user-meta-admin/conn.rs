//! Where the server is and which certificate to present (flags, or the same
//! keys in a YAML file), connecting, and turning every failure into a message
//! and an exit code a script can rely on.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ClientConfig;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use usermetadb::client::{tls_config_for, ClientError, Connection, Protocols};
use usermetadb::server::tls::{common_name, load_certs};

/// The exit codes, as documented in the README.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Bad flags, bad config file, unreadable input or certificate files.
    Usage = 1,
    /// The server could not be reached, or TLS failed.
    Connection = 2,
    /// The server's ACL does not allow this client on this path (403).
    Denied = 3,
    /// The server refused the request as invalid (another 4xx).
    Rejected = 4,
    /// The server failed (5xx) or answered something unreadable.
    Server = 5,
    /// `unused --exec --yes`: the command failed for some accounts.
    ExecFailed = 6,
}

/// A failure: what to print, and how to exit.
#[derive(Debug)]
pub struct Failure {
    pub exit: Exit,
    pub message: String,
}

impl Failure {
    pub fn new(exit: Exit, message: impl Into<String>) -> Failure {
        Failure {
            exit,
            message: message.into(),
        }
    }

    pub fn usage(message: impl Into<String>) -> Failure {
        Failure::new(Exit::Usage, message)
    }
}

/// The connection keys of `--config FILE`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    /// `https://host:port`
    server: Option<String>,
    /// CA that signed the server's certificate (PEM).
    ca: Option<PathBuf>,
    /// Client certificate (PEM).
    cert: Option<PathBuf>,
    /// Its private key (PEM).
    key: Option<PathBuf>,
}

/// Flags as given; each overrides the same key of the config file.
#[derive(Debug, Default, Clone)]
pub struct Flags {
    pub config: Option<PathBuf>,
    pub server: Option<String>,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// A resolved server: address, the name its certificate must carry, TLS setup.
pub struct Api {
    pub url: String,
    addr: SocketAddr,
    host: String,
    tls: Option<Arc<ClientConfig>>,
    /// The client certificate file and its CommonName, for error messages.
    cert: Option<(PathBuf, Result<String, String>)>,
    ca: Option<PathBuf>,
}

fn parse_url(url: &str) -> Result<(bool, String, u16), Failure> {
    let bad = || {
        Failure::usage(format!(
            "--server {url:?}: expected https://HOST:PORT (or http://HOST:PORT for a plain-HTTP server)"
        ))
    };
    let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(bad());
    };
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.contains('/') || rest.contains('@') {
        return Err(bad());
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (h, p) = v6.split_once(']').ok_or_else(bad)?;
        (h.to_owned(), p.strip_prefix(':'))
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (rest.to_owned(), None),
        }
    };
    let port = match port {
        Some(p) => p.parse().map_err(|_| bad())?,
        None => 5505,
    };
    if host.is_empty() {
        return Err(bad());
    }
    Ok((tls, host, port))
}

/// A relative path in the config file is relative to the file's directory.
fn relative_to(base: &Path, p: PathBuf) -> PathBuf {
    if p.is_relative() {
        base.join(p)
    } else {
        p
    }
}

/// The CommonName the server will see, or why there is none.
fn cert_cn(cert: &Path) -> Result<String, String> {
    let certs = load_certs(cert).map_err(|e| e.to_string())?;
    let leaf = certs.first().ok_or("no certificate")?;
    common_name(leaf).map_err(|e| e.reason().to_owned())
}

impl Api {
    /// Resolves flags and the config file into a server to talk to.
    pub async fn resolve(flags: &Flags) -> Result<Api, Failure> {
        let mut file = FileSettings::default();
        if let Some(path) = &flags.config {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Failure::usage(format!("--config {}: {e}", path.display())))?;
            file = serde_yaml::from_str(&text)
                .map_err(|e| Failure::usage(format!("--config {}: {e}", path.display())))?;
            let base = path.parent().unwrap_or(Path::new(""));
            file.ca = file.ca.map(|p| relative_to(base, p));
            file.cert = file.cert.map(|p| relative_to(base, p));
            file.key = file.key.map(|p| relative_to(base, p));
        }
        let url = flags.server.clone().or(file.server).ok_or_else(|| {
            Failure::usage("--server is required (or `server:` in the --config file)")
        })?;
        let (tls, host, port) = parse_url(&url)?;
        let addr = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| {
                Failure::new(
                    Exit::Connection,
                    format!("{url}: cannot resolve {host}: {e}"),
                )
            })?
            .next()
            .ok_or_else(|| {
                Failure::new(Exit::Connection, format!("{url}: {host} has no address"))
            })?;
        if !tls {
            return Ok(Api {
                url,
                addr,
                host,
                tls: None,
                cert: None,
                ca: None,
            });
        }
        let need = |flag: Option<PathBuf>, from_file: Option<PathBuf>, name: &str| {
            flag.or(from_file).ok_or_else(|| {
                Failure::usage(format!(
                    "--{name} is required for https (or `{name}:` in the --config file)"
                ))
            })
        };
        let ca = need(flags.ca.clone(), file.ca, "ca")?;
        let cert = need(flags.cert.clone(), file.cert, "cert")?;
        let key = need(flags.key.clone(), file.key, "key")?;
        // One request at a time: HTTP/1.1 (a TLS refusal of the certificate
        // then surfaces on the first request, which `explain` relies on).
        let config = tls_config_for(&ca, Some((&cert, &key)), Protocols::Http1)
            .map_err(|e| Failure::usage(format!("TLS setup: {e}")))?;
        let cn = cert_cn(&cert);
        Ok(Api {
            url,
            addr,
            host,
            tls: Some(config),
            cert: Some((cert, cn)),
            ca: Some(ca),
        })
    }

    /// Opens one keep-alive connection.
    pub async fn connect(&self) -> Result<Connection, Failure> {
        match Connection::connect(self.addr, &self.host, self.tls.clone()).await {
            Ok(c) => Ok(c),
            Err(e) => Err(self.explain(e, "").await),
        }
    }

    /// Calls an endpoint on `conn`.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        conn: &mut Connection,
        path: &str,
        req: &Req,
    ) -> Result<Resp, Failure> {
        match conn.call(path, req).await {
            Ok(r) => Ok(r),
            Err(e) => Err(self.explain(e, path).await),
        }
    }

    /// [`Api::failure`], after finding out why the server dropped the
    /// connection when the error itself does not say.
    async fn explain(&self, e: ClientError, path: &str) -> Failure {
        let unexplained = match &e {
            ClientError::Http(h) => find_rustls(h).is_none(),
            ClientError::Handshake { source, .. } => find_rustls(source).is_none(),
            _ => false,
        };
        let probed = if unexplained {
            self.probe().await
        } else {
            None
        };
        match probed {
            Some(cause) => self.tls_failure(&cause, path),
            None => self.failure(e, path),
        }
    }

    /// A TLS 1.3 server judges the client certificate after the handshake, so
    /// its refusal arrives as an alert on the first read, which the HTTP
    /// client does not report. A fresh connection that only reads catches it
    /// (sending anything could make the closing server reset the connection
    /// before the alert is read).
    async fn probe(&self) -> Option<rustls::Error> {
        use tokio::io::AsyncReadExt;
        let tls = self.tls.clone()?;
        let name = rustls::pki_types::ServerName::try_from(self.host.clone()).ok()?;
        let wait = std::time::Duration::from_secs(10);
        let tcp = tokio::time::timeout(wait, tokio::net::TcpStream::connect(self.addr))
            .await
            .ok()?
            .ok()?;
        let handshake = tokio_rustls::TlsConnector::from(tls).connect(name, tcp);
        let mut s = match tokio::time::timeout(wait, handshake).await.ok()? {
            Ok(s) => s,
            Err(e) => return find_rustls(&e).cloned(),
        };
        let mut buf = [0u8; 64];
        match tokio::time::timeout(std::time::Duration::from_secs(3), s.read(&mut buf)).await {
            Ok(Err(e)) => find_rustls(&e).cloned(),
            _ => None,
        }
    }

    /// `GET path`, answered as JSON.
    pub async fn get(
        &self,
        conn: &mut Connection,
        path: &str,
    ) -> Result<serde_json::Value, Failure> {
        let resp = match conn
            .request(hyper::Method::GET, path, None, Default::default())
            .await
        {
            Ok(r) => r,
            Err(e) => return Err(self.explain(e, path).await),
        };
        let text = || String::from_utf8_lossy(&resp.body).into_owned();
        if !resp.status.is_success() {
            let message = serde_json::from_slice::<usermetadb::wire::ErrorResponse>(&resp.body)
                .map(|e| e.error)
                .unwrap_or_else(|_| text());
            return Err(self.failure(
                ClientError::Status {
                    path: path.into(),
                    status: resp.status,
                    message,
                },
                path,
            ));
        }
        serde_json::from_slice(&resp.body).map_err(|e| {
            Failure::new(
                Exit::Server,
                format!("{}{path}: invalid response: {e}: {}", self.url, text()),
            )
        })
    }

    fn who(&self) -> String {
        match &self.cert {
            Some((file, Ok(cn))) => format!("certificate {} (CN {cn:?})", file.display()),
            Some((file, Err(why))) => format!("certificate {} ({why})", file.display()),
            None => "this client".into(),
        }
    }

    /// The message and exit code of a client error.
    pub fn failure(&self, e: ClientError, path: &str) -> Failure {
        let url = &self.url;
        match e {
            ClientError::Tls(e) => Failure::usage(format!("TLS setup: {e}")),
            ClientError::Encode(e) => Failure::usage(format!("encoding the request: {e}")),
            ClientError::ServerName(n) => {
                Failure::usage(format!("{url}: {n:?} is not a valid server name"))
            }
            ClientError::Connect { addr, source } => Failure::new(
                Exit::Connection,
                format!("cannot connect to {url} ({addr}): {source}"),
            ),
            ClientError::Handshake { source, .. } => self.tls_failure(&source, path),
            ClientError::Http(e) => self.tls_failure(&e, path),
            ClientError::Timeout { .. } => {
                Failure::new(Exit::Connection, format!("{url}{path}: {e}"))
            }
            ClientError::Status {
                path,
                status,
                message,
            } => {
                let code = status.as_u16();
                if code == 403 {
                    let cn_note = match &self.cert {
                        Some((_, Err(_))) => {
                            ": without exactly one CommonName every request is denied"
                        }
                        _ => "",
                    };
                    Failure::new(
                        Exit::Denied,
                        format!(
                            "{url}{path}: 403 forbidden: the server's ACL does not allow {} to call {path}{cn_note}",
                            self.who()
                        ),
                    )
                } else if status.is_client_error() {
                    Failure::new(Exit::Rejected, format!("{url}{path}: {status}: {message}"))
                } else {
                    Failure::new(Exit::Server, format!("{url}{path}: {status}: {message}"))
                }
            }
            ClientError::Decode { path, source } => Failure::new(
                Exit::Server,
                format!("{url}{path}: invalid response: {source}"),
            ),
        }
    }

    fn tls_failure(&self, e: &(dyn std::error::Error + 'static), path: &str) -> Failure {
        let url = &self.url;
        let msg = match find_rustls(e) {
            Some(rustls::Error::InvalidCertificate(why)) => format!(
                "TLS: the certificate of {url} is not valid for CA {}: {why:?}",
                self.ca
                    .as_deref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            ),
            Some(rustls::Error::AlertReceived(alert)) => format!(
                "TLS: {url} refused {}: {alert:?} (is it signed by the CA the server trusts, and still valid?)",
                self.who()
            ),
            Some(other) => format!("TLS with {url}: {other}"),
            None if self.tls.is_some() => format!(
                "connection to {url} failed{}: {e} (the server may have refused {})",
                if path.is_empty() {
                    String::new()
                } else {
                    format!(" on {path}")
                },
                self.who()
            ),
            None => format!("connection to {url} failed: {e}"),
        };
        Failure::new(Exit::Connection, msg)
    }
}

/// The rustls error behind an I/O or HTTP error, if there is one.
fn find_rustls<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            if let Some(r) = inner.downcast_ref::<rustls::Error>() {
                return Some(r);
            }
        }
        cur = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls() {
        assert_eq!(
            parse_url("https://db.example.org:5505").unwrap(),
            (true, "db.example.org".into(), 5505)
        );
        assert_eq!(
            parse_url("https://localhost").unwrap(),
            (true, "localhost".into(), 5505)
        );
        assert_eq!(
            parse_url("http://[::1]:80/").unwrap(),
            (false, "::1".into(), 80)
        );
        for bad in [
            "localhost:5505",
            "https://",
            "https://h:x",
            "https://h/api",
            "ftp://h",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }
}
