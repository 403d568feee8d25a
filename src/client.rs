//! A client of the API over mutual TLS (or plain HTTP), on one keep-alive
//! connection: HTTP/2 when the server agrees to it by ALPN, else HTTP/1.1.
//! Used by the admin CLI, the benchmark, the webhook sink and the tests.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper::header::{HeaderMap, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::tls::{load_certs, load_key, provider, root_store, TlsError};
use crate::wire::ErrorResponse;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS handshake with {addr}: {source}")]
    Handshake {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("invalid server name {0:?}")]
    ServerName(String),
    #[error("{path}: {status}: {message}")]
    Status {
        path: String,
        status: StatusCode,
        message: String,
    },
    #[error("{path}: invalid response: {source}")]
    Decode {
        path: String,
        source: serde_json::Error,
    },
    #[error("encoding request: {0}")]
    Encode(serde_json::Error),
    #[error("{what} took longer than {secs} s")]
    Timeout { what: &'static str, secs: u64 },
}

/// Longest a connection may take to open: TCP, TLS and the HTTP handshake.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Longest one request may take, from sending it to the end of the answer.
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// Which HTTP versions a client offers by ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocols {
    /// HTTP/1.1 only.
    Http1,
    /// HTTP/2 only.
    Http2,
    /// HTTP/2 preferred, HTTP/1.1 accepted (as Go's `net/http` client).
    Any,
}

impl Protocols {
    fn alpn(self) -> Vec<Vec<u8>> {
        match self {
            Protocols::Http1 => vec![b"http/1.1".to_vec()],
            Protocols::Http2 => vec![b"h2".to_vec()],
            Protocols::Any => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        }
    }
}

/// A TLS client configuration trusting `ca`, presenting `cert`/`key` when
/// given, offering HTTP/2 and HTTP/1.1.
pub fn tls_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<Arc<ClientConfig>, TlsError> {
    tls_config_for(ca, identity, Protocols::Any)
}

/// [`tls_config`] offering only `protocols`.
pub fn tls_config_for(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
    protocols: Protocols,
) -> Result<Arc<ClientConfig>, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(root_store(ca)?);
    let mut cfg = match identity {
        Some((cert, key)) => builder.with_client_auth_cert(load_certs(cert)?, load_key(key)?)?,
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = protocols.alpn();
    Ok(Arc::new(cfg))
}

/// The HTTP handshake on an open stream; the connection is driven by a task
/// of its own.
async fn handshake<S>(io: TokioIo<S>, h2: bool) -> Result<Sender, ClientError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    if h2 {
        let (sender, conn) = http2::handshake(TokioExecutor::new(), io).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Sender::Http2(sender))
    } else {
        let (sender, conn) = http1::handshake(io).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Sender::Http1(sender))
    }
}

/// An answer as received.
#[derive(Debug)]
pub struct RawResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

enum Sender {
    Http1(http1::SendRequest<Full<Bytes>>),
    Http2(http2::SendRequest<Full<Bytes>>),
}

/// One open connection.
pub struct Connection {
    sender: Sender,
    host: String,
}

impl Connection {
    /// Connects to `addr`, with TLS when `tls` is given (verifying the server
    /// as `server_name`).
    pub async fn connect(
        addr: SocketAddr,
        server_name: &str,
        tls: Option<Arc<ClientConfig>>,
    ) -> Result<Connection, ClientError> {
        tokio::time::timeout(CONNECT_TIMEOUT, Self::open(addr, server_name, tls))
            .await
            .unwrap_or(Err(ClientError::Timeout {
                what: "connecting",
                secs: CONNECT_TIMEOUT.as_secs(),
            }))
    }

    async fn open(
        addr: SocketAddr,
        server_name: &str,
        tls: Option<Arc<ClientConfig>>,
    ) -> Result<Connection, ClientError> {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|source| ClientError::Connect { addr, source })?;
        let _ = tcp.set_nodelay(true);
        let host = format!("{server_name}:{}", addr.port());
        let sender = match tls {
            Some(cfg) => {
                let name = ServerName::try_from(server_name.to_owned())
                    .map_err(|_| ClientError::ServerName(server_name.to_owned()))?;
                let stream = TlsConnector::from(cfg)
                    .connect(name, tcp)
                    .await
                    .map_err(|source| ClientError::Handshake { addr, source })?;
                let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                handshake(TokioIo::new(stream), h2).await?
            }
            None => handshake(TokioIo::new(tcp), false).await?,
        };
        Ok(Connection { sender, host })
    }

    /// The HTTP version the connection speaks.
    pub fn version(&self) -> hyper::Version {
        match self.sender {
            Sender::Http1(_) => hyper::Version::HTTP_11,
            Sender::Http2(_) => hyper::Version::HTTP_2,
        }
    }

    /// Another handle on the same connection, whose requests run beside this
    /// one's as concurrent streams: HTTP/2 only.
    pub fn stream(&self) -> Option<Connection> {
        match &self.sender {
            Sender::Http1(_) => None,
            Sender::Http2(s) => Some(Connection {
                sender: Sender::Http2(s.clone()),
                host: self.host.clone(),
            }),
        }
    }

    /// Sends any request and returns the answer as it is.
    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<RawResponse, ClientError> {
        self.request_with_headers(method, path, &[], content_type, body)
            .await
    }

    /// [`Connection::request`] with extra headers.
    pub async fn request_with_headers(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<RawResponse, ClientError> {
        let mut req = Request::builder().method(method);
        req = match self.sender {
            Sender::Http1(_) => req.uri(path).header(HOST, &self.host),
            // HTTP/2 names the host in the `:authority` pseudo-header.
            Sender::Http2(_) => req.uri(format!("https://{}{path}", self.host)),
        };
        if let Some(ct) = content_type {
            req = req.header(CONTENT_TYPE, ct);
        }
        for (name, value) in headers {
            req = req.header(*name, value);
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| ClientError::ServerName(e.to_string()))?;
        tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(req))
            .await
            .unwrap_or(Err(ClientError::Timeout {
                what: "the request",
                secs: REQUEST_TIMEOUT.as_secs(),
            }))
    }

    async fn exchange(&mut self, req: Request<Full<Bytes>>) -> Result<RawResponse, ClientError> {
        let resp = match &mut self.sender {
            Sender::Http1(s) => {
                s.ready().await?;
                s.send_request(req).await?
            }
            Sender::Http2(s) => {
                s.ready().await?;
                s.send_request(req).await?
            }
        };
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok(RawResponse {
            status,
            headers,
            body,
        })
    }

    /// POSTs a JSON body and returns the answer as it is.
    pub async fn post_raw(&mut self, path: &str, body: Bytes) -> Result<RawResponse, ClientError> {
        self.request(Method::POST, path, Some("application/json"), body)
            .await
    }

    /// Calls an endpoint: a non-2xx answer is an error with the server's message.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &mut self,
        path: &str,
        req: &Req,
    ) -> Result<Resp, ClientError> {
        let body = serde_json::to_vec(req).map_err(ClientError::Encode)?;
        let resp = self.post_raw(path, body.into()).await?;
        if !resp.status.is_success() {
            let message = serde_json::from_slice::<ErrorResponse>(&resp.body)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&resp.body).into_owned());
            return Err(ClientError::Status {
                path: path.to_owned(),
                status: resp.status,
                message,
            });
        }
        serde_json::from_slice(&resp.body).map_err(|source| ClientError::Decode {
            path: path.to_owned(),
            source,
        })
    }
}
