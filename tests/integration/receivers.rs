//! Real receivers for alert deliveries: an HTTP server that checks webhook
//! signatures, and an SMTP server process (Python's aiosmtpd) writing a Maildir.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

/// One webhook delivery as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub signature_ok: bool,
    pub delivery_id: String,
    pub body: serde_json::Value,
}

pub struct WebhookReceiver {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn expected_signature(secret: &[u8], body: &[u8]) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

impl WebhookReceiver {
    /// Listens on `127.0.0.1:port` (0: any) and answers 200 to correctly
    /// signed POSTs, 401 otherwise.
    pub async fn start(port: u16, secret: &'static [u8]) -> WebhookReceiver {
        Self::start_with(port, secret, None).await
    }

    /// Like [`WebhookReceiver::start`], over TLS with the test server
    /// certificate, requiring a client certificate signed by the test CA.
    pub async fn start_tls(port: u16, secret: &'static [u8]) -> WebhookReceiver {
        use crate::common::cert;
        let cfg = usermetadb::server::tls::server_config(
            &cert("server.pem"),
            &cert("server.key"),
            &cert("ca.pem"),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        Self::start_with(port, secret, Some(acceptor)).await
    }

    async fn start_with(
        port: u16,
        secret: &'static [u8],
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> WebhookReceiver {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = received.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let sink = sink.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let sink = sink.clone();
                        async move {
                            let sig = req
                                .headers()
                                .get("x-usermetadb-signature")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_owned();
                            let id = req
                                .headers()
                                .get("x-usermetadb-delivery")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_owned();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let ok = sig == expected_signature(secret, &body);
                            sink.lock().unwrap().push(Received {
                                signature_ok: ok,
                                delivery_id: id,
                                body: serde_json::from_slice(&body).unwrap_or_default(),
                            });
                            let mut resp = Response::new(Full::new(Bytes::from_static(b"ok")));
                            if !ok {
                                *resp.status_mut() = hyper::StatusCode::UNAUTHORIZED;
                            }
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    match tls {
                        Some(acceptor) => {
                            let Ok(stream) = acceptor.accept(stream).await else {
                                return;
                            };
                            // Like most web servers, HTTP/2 when the sink offers it.
                            if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                                let _ = hyper::server::conn::http2::Builder::new(
                                    hyper_util::rt::TokioExecutor::new(),
                                )
                                .serve_connection(TokioIo::new(stream), svc)
                                .await;
                            } else {
                                let _ = http1::Builder::new()
                                    .serve_connection(TokioIo::new(stream), svc)
                                    .await;
                            }
                        }
                        None => {
                            let _ = http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), svc)
                                .await;
                        }
                    }
                });
            }
        });
        WebhookReceiver {
            addr,
            received,
            task,
        }
    }

    pub fn stop(self) {
        self.task.abort();
    }

    pub fn bodies(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

/// An aiosmtpd process delivering into a Maildir.
pub struct SmtpServer {
    pub port: u16,
    pub maildir: PathBuf,
    child: Child,
}

fn ensure_aiosmtpd() {
    let have = Command::new("python3")
        .args(["-c", "import aiosmtpd"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !have {
        let ok = Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "aiosmtpd"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(
            ok,
            "the SMTP tests need Python's aiosmtpd (pip install aiosmtpd)"
        );
    }
}

impl SmtpServer {
    /// Starts aiosmtpd on 127.0.0.1; with `tls`, it offers STARTTLS with the
    /// test server certificate and requires it.
    pub fn start(dir: &Path, tls: bool) -> SmtpServer {
        ensure_aiosmtpd();
        let port = free_port();
        let maildir = dir.join("Maildir");
        let mut cmd = Command::new("python3");
        cmd.args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")]);
        if tls {
            cmd.arg("--tlscert")
                .arg(crate::common::cert("server.pem"))
                .arg("--tlskey")
                .arg(crate::common::cert("server.key"));
        }
        cmd.args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&maildir)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().expect("starting aiosmtpd");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return SmtpServer {
                    port,
                    maildir,
                    child,
                };
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("aiosmtpd did not start");
    }

    /// The messages delivered so far, as text.
    pub fn messages(&self) -> Vec<String> {
        let mut out = Vec::new();
        for sub in ["new", "cur"] {
            if let Ok(entries) = std::fs::read_dir(self.maildir.join(sub)) {
                for e in entries.flatten() {
                    out.push(std::fs::read_to_string(e.path()).unwrap_or_default());
                }
            }
        }
        out
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
