//! The listeners beside the API: the Windows agents' and the auth policy
//! protocol's. Each authenticates its clients with a key or a token rather
//! than a certificate, so it serves server TLS only (or plain HTTP, said
//! loudly at start), with the API's timeouts, connection cap, request
//! framing and graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::http::request::Parts;
use hyper::{Request, Response};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use super::body::RequestBody;
use super::handler::Reject;
use super::{framing, State};
use crate::config::agents::AgentTls;

/// A side listener, bound.
pub struct Listener {
    pub listener: TcpListener,
    pub tls: Option<TlsAcceptor>,
}

impl Listener {
    pub async fn bind(
        addr: Option<SocketAddr>,
        tls: Option<&AgentTls>,
    ) -> Result<Option<Listener>, super::ServerError> {
        let Some(addr) = addr else {
            return Ok(None);
        };
        let tls = match tls {
            Some(t) => Some(TlsAcceptor::from(Arc::new(
                super::tls::server_config_without_client_auth(&t.cert, &t.key)?,
            ))),
            None => None,
        };
        Ok(Some(Listener {
            listener: TcpListener::bind(addr).await?,
            tls,
        }))
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// Serves one request of a side listener with `serve`, which reads at most
/// `limit` bytes of body: a request whose framing is ambiguous is refused,
/// and what `serve` leaves of the body is dealt with after the answer.
pub async fn request(
    req: Request<Incoming>,
    state: &State,
    framing: &framing::Ambiguity,
    limit: usize,
    serve: impl AsyncFnOnce(&Parts, &mut RequestBody) -> Response<Full<Bytes>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let mut body = RequestBody::new(&parts, body);
    let mut resp = if framing.next_is_ambiguous() {
        Reject::AmbiguousFraming.into_response(None)
    } else {
        serve(&parts, &mut body).await
    };
    body.settle(parts.version, &mut resp, limit, state.http.request_timeout);
    Ok(resp)
}

/// Accepts connections until `shutdown` flips, serving each request with
/// `handle(request, framing, peer address)`, then lets in-flight requests
/// finish (up to the grace period). `name` labels its log lines.
pub async fn run<H, Fut>(
    listener: Listener,
    state: Arc<State>,
    name: &'static str,
    handle: H,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) where
    H: Fn(Request<Incoming>, Arc<framing::Ambiguity>, IpAddr) -> Fut
        + Clone
        + Send
        + Sync
        + 'static,
    Fut: Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send + 'static,
{
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    if listener.tls.is_none() {
        tracing::warn!(
            listener = name,
            "NO TLS CONFIGURED FOR THIS LISTENER: its keys or token cross the network in clear; use only for tests or a trusted local network"
        );
    }
    let connections = Arc::new(Semaphore::new(state.http.max_connections));
    loop {
        let (stream, addr) = tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = connections.clone().try_acquire_owned() else {
            crate::metrics::global().connection_refused();
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (state, tls, handle) = (state.clone(), listener.tls.clone(), handle.clone());
        let watcher = graceful.watcher();
        let peer = addr.ip();
        tokio::spawn(async move {
            let framing: Arc<framing::Ambiguity> = Default::default();
            let timeouts = super::Timeouts::of(&state.http);
            let handshake = state.http.handshake_timeout;
            let handler = {
                let framing = framing.clone();
                move |req| handle(req, framing.clone(), peer)
            };
            match tls {
                None => super::serve_http(stream, timeouts, framing, handler, watcher, false).await,
                Some(acceptor) => {
                    let stream =
                        match tokio::time::timeout(handshake, acceptor.accept(stream)).await {
                            Ok(Ok(s)) => s,
                            _ => {
                                tracing::debug!(listener = name, "TLS handshake failed");
                                return;
                            }
                        };
                    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                    super::serve_http(stream, timeouts, framing, handler, watcher, h2).await
                }
            }
            drop(slot);
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(super::SHUTDOWN_GRACE, graceful.shutdown()).await;
}
