//! The network side: accept, TLS handshake, client identity, HTTP/1.1 and
//! HTTP/2 (chosen by ALPN), graceful shutdown. Requests are handed to
//! [`handler`], which calls the service.

mod access;
pub mod agents;
mod body;
pub mod framing;
pub mod handler;
mod idle;
pub mod policy;
pub mod scope;
pub mod side;

pub use crate::endpoint;
pub use crate::tls;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::acl::{Acl, Scope};
use crate::config::{Config, HttpConfig};
use crate::crypto::DeviceKey;
use crate::endpoint::Endpoint;
use crate::metrics::TlsFailure;
use crate::privacy::{GeoIp, Privacy};
use crate::service::Service;
use crate::store::Store;

/// How long shutdown waits for in-flight requests.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Key(#[from] crate::crypto::KeyError),
    #[error("geoip: {0}")]
    GeoIp(String),
    #[error("{0}")]
    Alerts(String),
    #[error("policy.token_file: {0}")]
    Policy(String),
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
}

/// Everything a request needs, shared by all connections.
pub struct State {
    pub service: Service,
    pub http: HttpConfig,
    pub inflight: Arc<Semaphore>,
}

/// Who is on the other end of a connection, decided once after the handshake.
pub struct Peer {
    /// Bit `e.bit()` is set when the ACL lets this peer call endpoint `e`.
    allowed: u32,
    /// The endpoints allowed only by entries naming tenants, with the union
    /// of those tenants (empty for most peers: nothing allocated).
    scoped: Vec<(Endpoint, Scope)>,
    /// Which of the connection's requests carried two framings.
    pub framing: Arc<framing::Ambiguity>,
    /// The CN, when `transparency.record` matches it: this peer's reads of
    /// a user's data are recorded.
    pub reader: Option<Arc<str>>,
}

impl Peer {
    /// Plain HTTP: no identity, no ACL.
    fn unauthenticated() -> Peer {
        Peer {
            allowed: u32::MAX,
            scoped: Vec::new(),
            framing: Default::default(),
            reader: None,
        }
    }

    fn with_cn(acl: &Acl, cn: &str) -> Peer {
        let mut allowed = 0;
        let mut scoped = Vec::new();
        for &e in Endpoint::ALL {
            match acl.scope(e.path(), cn) {
                None => {}
                Some(Scope::Everyone) => allowed |= e.bit(),
                Some(tenants) => {
                    allowed |= e.bit();
                    scoped.push((e, tenants));
                }
            }
        }
        Peer {
            allowed,
            scoped,
            framing: Default::default(),
            reader: None,
        }
    }

    fn denied() -> Peer {
        Peer {
            allowed: 0,
            scoped: Vec::new(),
            framing: Default::default(),
            reader: None,
        }
    }

    pub fn allows(&self, e: Endpoint) -> bool {
        self.allowed & e.bit() != 0
    }

    /// Whose data a call of `e` may concern (for an allowed `e`).
    pub fn scope(&self, e: Endpoint) -> Scope {
        self.scoped
            .iter()
            .find(|(s, _)| *s == e)
            .map(|(_, t)| t.clone())
            .unwrap_or(Scope::Everyone)
    }
}

/// A bound, ready server.
pub struct Server {
    listener: TcpListener,
    state: Arc<State>,
    tls: Option<(TlsAcceptor, Acl)>,
    store: Store,
    privacy: Arc<Privacy>,
    sinks: Arc<crate::monitor::sinks::Sinks>,
    agents: Option<(side::Listener, u32)>,
    /// The auth policy listener, with its token.
    policy: Option<(side::Listener, Vec<u8>)>,
}

/// Opens the database, loads keys and certificates: everything that can fail
/// at start-up fails here, before the listener is bound.
pub async fn build_state(
    config: &Config,
) -> Result<(Arc<State>, Store, Arc<Privacy>), ServerError> {
    let store = Store::open(&config.db).await?;
    let key = match &config.secrets.device_key_file {
        Some(path) => DeviceKey::load(path)?,
        None => {
            let path = config.db.path.with_extension("device.key");
            let (key, created) = DeviceKey::load_or_create(&path)?;
            if created {
                tracing::warn!(path = %path.display(), "created a new random device key beside the database; back it up with the database");
            }
            key
        }
    };
    let geoip = match &config.geoip {
        Some(path) => Some(GeoIp::open(path).map_err(ServerError::GeoIp)?),
        None => None,
    };
    let privacy = Arc::new(Privacy::new(config.privacy, key, geoip));
    let mut service = Service::new(
        store.clone(),
        privacy.clone(),
        config.retention,
        &config.http,
        config.alerts.clone(),
    );
    service.agents = config.agents.clone();
    service.transparency = config.transparency.clone();
    let service = service.with_policy(config.policy.clone(), crate::clock::now_unix());
    let state = Arc::new(State {
        service,
        http: config.http.clone(),
        inflight: Arc::new(Semaphore::new(config.http.max_inflight_requests)),
    });
    Ok((state, store, privacy))
}

impl Server {
    pub async fn bind(config: &Config, addr: SocketAddr) -> Result<Server, ServerError> {
        let (state, store, privacy) = build_state(config).await?;
        let tls = match &config.http.tls {
            Some(t) => {
                let cfg = tls::server_config(&t.cert, &t.key, &t.ca)?;
                Some((TlsAcceptor::from(Arc::new(cfg)), t.acl.clone()))
            }
            None => None,
        };
        let sinks = Arc::new(
            crate::monitor::sinks::Sinks::new(&config.alerts).map_err(ServerError::Alerts)?,
        );
        let listener = TcpListener::bind(addr).await?;
        let agents = side::Listener::bind(config.agents.addr, config.agents.tls.as_ref())
            .await?
            .map(|l| (l, config.agents.rate_limit));
        let policy = match side::Listener::bind(config.policy.addr, config.policy.tls.as_ref())
            .await?
        {
            Some(l) => {
                let token = config
                    .policy
                    .token
                    .as_ref()
                    .map(|t| t.read())
                    .transpose()
                    .map_err(ServerError::Policy)?
                    .ok_or_else(|| ServerError::Policy("no token given".into()))?;
                let token = token.trim().to_owned();
                if token.len() < 16 {
                    return Err(ServerError::Policy(
                            "the token must be at least 16 bytes (e.g. head -c 32 /dev/urandom | base64)"
                                .into(),
                        ));
                }
                Some((l, token.into_bytes()))
            }
            None => None,
        };
        Ok(Server {
            listener,
            state,
            tls,
            store,
            privacy,
            sinks,
            agents,
            policy,
        })
    }

    /// Where the auth policy client posts, when `policy.addr` is set.
    pub fn policy_addr(&self) -> Option<SocketAddr> {
        self.policy.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// Where Windows agents post, when `agents.addr` is set.
    pub fn agents_addr(&self) -> Option<SocketAddr> {
        self.agents.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The privacy layer, for reloading the GeoIP database.
    pub fn privacy(&self) -> Arc<Privacy> {
        self.privacy.clone()
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets in-flight
    /// requests finish (up to a grace period) and closes the database.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Server {
            listener,
            state,
            tls,
            store,
            sinks,
            agents,
            policy,
            ..
        } = self;
        if tls.is_none() {
            tracing::warn!("NO TLS CONFIGURED: serving plain HTTP without client authentication or ACL; use only for tests or a local socket");
        }
        let tls = tls.map(Arc::new);
        let (stop_dispatcher, dispatcher_stop) = tokio::sync::watch::channel(false);
        // Stops the side listeners (agents, policy).
        let (stop_agents, agents_stop) = tokio::sync::watch::channel(false);
        let agents = agents.map(|(listener, rate)| {
            let limits = Arc::new(agents::RateLimit::new(rate));
            tokio::spawn(agents::run(
                listener,
                state.clone(),
                limits,
                agents_stop.clone(),
            ))
        });
        let policy = policy.map(|(listener, token)| {
            tokio::spawn(policy::run(listener, state.clone(), token, agents_stop))
        });
        let mut dispatcher = tokio::spawn(
            crate::monitor::dispatch::Dispatcher {
                store: store.clone(),
                sinks: sinks.clone(),
                cfg: state.service.alerts.clone(),
                wake: state.service.wake.clone(),
                clock: crate::clock::now_unix,
                granularity: state.service.privacy.config.timestamp_granularity.as_secs(),
            }
            .run(dispatcher_stop),
        );
        let retention = tokio::spawn(crate::retention::run(
            store.clone(),
            state.service.retention,
            state.service.retention.interval,
            crate::clock::now_unix,
        ));
        // Recorded reads are written every second (access transparency).
        let reads = tokio::spawn({
            let state = state.clone();
            async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    if let Err(e) = state.service.flush_reads().await {
                        tracing::warn!(error = %e, "recorded reads could not be written; will retry");
                    }
                }
            }
        });
        let connections = Arc::new(Semaphore::new(state.http.max_connections));
        // A flood of refused connections is one log line per interval, not one each.
        let mut limit_logged: Option<std::time::Instant> = None;
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        tokio::pin!(shutdown);
        loop {
            let (stream, _) = tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: back off rather than spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Ok(slot) = connections.clone().try_acquire_owned() else {
                crate::metrics::global().connection_refused();
                if limit_logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                    limit_logged = Some(std::time::Instant::now());
                    tracing::warn!(
                        max_connections = state.http.max_connections,
                        "connection limit reached, closing new connections (counted in usermetadb_connections_refused_total)"
                    );
                }
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let state = state.clone();
            let tls = tls.clone();
            let watcher = graceful.watcher();
            let open = crate::metrics::global().connection_opened();
            tokio::spawn(async move {
                serve_connection(stream, state, tls, watcher).await;
                drop(slot);
                drop(open);
            });
        }
        drop(listener);
        tracing::info!("shutting down: finishing in-flight requests");
        let _ = stop_agents.send(true);
        tokio::select! {
            _ = graceful.shutdown() => {}
            _ = tokio::time::sleep(SHUTDOWN_GRACE) => {
                tracing::warn!("grace period over, closing remaining connections");
            }
        }
        for side in [agents, policy].into_iter().flatten() {
            let _ = side.await;
        }
        retention.abort();
        reads.abort();
        if let Err(e) = state.service.flush_reads().await {
            tracing::warn!(error = %e, "recorded reads could not be written at stop");
        }
        let _ = stop_dispatcher.send(true);
        if tokio::time::timeout(DISPATCHER_GRACE, &mut dispatcher)
            .await
            .is_err()
        {
            dispatcher.abort();
        }
        let store2 = store.clone();
        let _ = tokio::task::spawn_blocking(move || store2.close()).await;
        tracing::info!("stopped");
    }
}

/// How long a stopping dispatcher may take to give its claims back.
const DISPATCHER_GRACE: Duration = Duration::from_secs(5);

/// HTTP/2 limits. Each bounds what one connection can make the server hold
/// or do; `max_connections` bounds the number of connections.
pub mod h2_limits {
    /// Streams open at once per connection; more are refused (`REFUSED_STREAM`).
    pub const MAX_CONCURRENT_STREAMS: u32 = 64;
    /// The decoded request header list, in bytes (as HPACK counts it); a
    /// larger one is answered 431 and never reaches a handler. Also bounds
    /// a header block spread over CONTINUATION frames.
    pub const MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;
    /// Streams the client reset before they were served: more than this at
    /// once ends the connection (`ENHANCE_YOUR_CALM`; rapid reset).
    pub const MAX_PENDING_RESETS: usize = 20;
    /// Streams the server had to reset for a client's protocol errors; more
    /// ends the connection.
    pub const MAX_ERROR_RESETS: usize = 256;
    /// Response bytes buffered per stream while the client's window is shut.
    pub const MAX_SEND_BUFFER: usize = 64 * 1024;
}

fn http1_builder(idle: Duration) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // The header timeout proper (from a head's first byte) is kept by
        // `framing::Followed`; the library's own, which also runs between
        // keep-alive requests, only backs up the idle timeout.
        .header_read_timeout(idle)
        .max_buf_size(64 * 1024)
        .keep_alive(true);
    builder
}

fn http2_builder() -> http2::Builder<TokioExecutor> {
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(h2_limits::MAX_CONCURRENT_STREAMS)
        .max_header_list_size(h2_limits::MAX_HEADER_LIST_SIZE)
        .max_pending_accept_reset_streams(h2_limits::MAX_PENDING_RESETS)
        .max_local_error_reset_streams(h2_limits::MAX_ERROR_RESETS)
        .max_send_buf_size(h2_limits::MAX_SEND_BUFFER)
        // A request body is at most the bulk limit; the window lets one
        // arrive without a round trip per 64 KiB.
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(4 << 20);
    // No keep-alive pings: a connection no request uses is closed by the idle
    // timeout, which counts bytes, and pings would keep it open.
    builder
}

/// The timeouts a connection is served with: copied per connection, where
/// the whole `HttpConfig` (ACL regexes included) would be cloned.
#[derive(Clone, Copy)]
struct Timeouts {
    idle: Duration,
    header: Duration,
}

impl Timeouts {
    fn of(http: &HttpConfig) -> Timeouts {
        Timeouts {
            idle: http.idle_timeout,
            header: http.header_timeout,
        }
    }
}

/// Serves one connection, after any TLS handshake, as HTTP/2 when `h2`,
/// each request with `handle`. On HTTP/1.1 the connection's framing is
/// followed into `framing` for `handle` to consult.
async fn serve_http<S, F, Fut>(
    stream: S,
    timeouts: Timeouts,
    framing: Arc<framing::Ambiguity>,
    handle: F,
    watcher: hyper_util::server::graceful::Watcher,
    h2: bool,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    F: Fn(hyper::Request<hyper::body::Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<hyper::Response<http_body_util::Full<bytes::Bytes>>, Infallible>>
        + Send
        + 'static,
{
    let idle = timeouts.idle;
    let svc = service_fn(handle);
    let result = if h2 {
        // HTTP/2 has no framing ambiguity to follow: lengths are in frames,
        // and the library refuses `Transfer-Encoding` in a request.
        let stream = idle::IdleTimeout::new(stream, idle);
        watcher
            .watch(http2_builder().serve_connection(TokioIo::new(stream), svc))
            .await
    } else {
        let stream = framing::Followed::new(stream, framing, timeouts.header);
        let stream = idle::IdleTimeout::new(stream, idle);
        watcher
            .watch(http1_builder(idle).serve_connection(TokioIo::new(stream), svc))
            .await
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// Serves a connection of the API to `peer`.
async fn serve_api<S>(
    stream: S,
    state: Arc<State>,
    peer: Arc<Peer>,
    watcher: hyper_util::server::graceful::Watcher,
    h2: bool,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let timeouts = Timeouts::of(&state.http);
    let framing = peer.framing.clone();
    let handle = move |req| handler::handle(req, state.clone(), peer.clone());
    serve_http(stream, timeouts, framing, handle, watcher, h2).await
}

async fn serve_connection(
    stream: TcpStream,
    state: Arc<State>,
    tls: Option<Arc<(TlsAcceptor, Acl)>>,
    watcher: hyper_util::server::graceful::Watcher,
) {
    match tls {
        None => {
            serve_api(
                stream,
                state,
                Arc::new(Peer::unauthenticated()),
                watcher,
                false,
            )
            .await
        }
        Some(tls) => {
            let (acceptor, acl) = &*tls;
            let handshake =
                tokio::time::timeout(state.http.handshake_timeout, acceptor.accept(stream)).await;
            let stream = match handshake {
                Err(_) => {
                    let reason = TlsFailure::Timeout;
                    crate::metrics::global().tls_failure(reason);
                    tracing::info!(reason = reason.label(), "TLS handshake refused");
                    return;
                }
                Ok(Err(e)) => {
                    // The label names no certificate, address or time; the
                    // library's own message may, so it stays at debug.
                    let reason = TlsFailure::from_io(&e);
                    crate::metrics::global().tls_failure(reason);
                    tracing::info!(reason = reason.label(), "TLS handshake refused");
                    tracing::debug!(error = %e, "TLS handshake error");
                    return;
                }
                Ok(Ok(s)) => s,
            };
            let leaf = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| tls::common_name(c))
                .unwrap_or(Err(tls::IdentityError::NoCertificate));
            let peer = match leaf {
                Ok(cn) => {
                    tracing::debug!(cn = %cn, "client connected");
                    let mut peer = Peer::with_cn(acl, &cn);
                    if state.service.records_reads_of(&cn) {
                        peer.reader = Some(cn.as_str().into());
                    }
                    peer
                }
                Err(e) => {
                    crate::metrics::global().identity_failure(e.metric());
                    tracing::info!(reason = e.reason(), "client identity refused");
                    Peer::denied()
                }
            };
            let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
            serve_api(stream, state, Arc::new(peer), watcher, h2).await
        }
    }
}
