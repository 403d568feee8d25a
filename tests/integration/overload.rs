//! Slow, idle and greedy clients against the compiled server: a thousand
//! connections dribbling headers do not slow normal clients down; idle, silent
//! and half-closed connections are closed at their timeouts; the connection
//! cap holds; `max_inflight_requests` answers 503 at once rather than queueing.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::common::*;
use crate::faults::Binary;

/// Raises this process's open-file limit towards `want` (children inherit it);
/// returns the limit in force.
fn raise_fd_limit(want: u64) -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain system calls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 1024;
        }
        if r.rlim_cur < want {
            let raised = libc::rlimit {
                rlim_cur: want.min(r.rlim_max),
                rlim_max: r.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                r = raised;
            }
        }
    }
    r.rlim_cur
}

/// A completed mutual-TLS connection presenting `client-<cn>`.
async fn tls_connect(addr: SocketAddr, cn: &str) -> std::io::Result<TlsStream<TcpStream>> {
    // HTTP/1.1 only: the tests write raw HTTP/1.1.
    let tls = identity(&format!("client-{cn}"));
    let tcp = TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(tls)
        .connect("localhost".try_into().map_err(std::io::Error::other)?, tcp)
        .await
}

fn start(extra: &str) -> (tempfile::TempDir, Binary) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yml");
    std::fs::write(&config, config_yaml(dir.path(), extra)).unwrap();
    let bin = Binary::spawn(&config, "info");
    (dir, bin)
}

/// `conns` clients each making `per_conn` sequential reads: every latency.
async fn probe(addr: SocketAddr, conns: usize, per_conn: usize) -> Vec<Duration> {
    let mut tasks = Vec::new();
    for i in 0..conns {
        tasks.push(tokio::spawn(async move {
            let mut c = client_at(addr, "accounts-panel").await;
            let body = json!({"username": format!("probe{i}")}).to_string();
            let mut out = Vec::with_capacity(per_conn);
            for _ in 0..per_conn {
                let t = Instant::now();
                let r =
                    c.0.post_raw("/api/get_last_login", body.clone().into())
                        .await
                        .unwrap();
                out.push(t.elapsed());
                assert_eq!(r.status, 200);
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    all
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The documented bound: slow clients at most double the p99 of normal ones.
/// The floor keeps scheduler noise of a shared 2-core machine at sub-ms idle
/// latencies from failing the test; it is far below what a starved server
/// (requests waiting behind slow ones) would show.
const SLOWDOWN_FACTOR: f64 = 2.0;
const NOISE_FLOOR: Duration = Duration::from_millis(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_header_clients_do_not_slow_normal_clients() {
    let _quiet = QUIET.lock().await;
    let limit = raise_fd_limit(4096);
    let slow = 1000.min(limit.saturating_sub(300) as usize);
    if slow < 1000 {
        eprintln!("NOTICE: open-file limit {limit}: using {slow} slow connections");
    }
    let (_dir, mut bin) = start("  header_timeout: 120s\n  idle_timeout: 120s\n");
    let addr = bin.addr;
    // Warm up connections, caches and the reader threads.
    probe(addr, 4, 25).await;
    let idle_before = probe(addr, 4, 150).await;

    // The slow clients: a completed handshake, then a request head a byte at a time.
    let mut streams = Vec::with_capacity(slow);
    let gate = Arc::new(tokio::sync::Semaphore::new(32));
    let mut opening = tokio::task::JoinSet::new();
    for _ in 0..slow {
        let gate = gate.clone();
        opening.spawn(async move {
            let _p = gate.acquire_owned().await.unwrap();
            tls_connect(addr, "sso-server").await
        });
    }
    while let Some(s) = opening.join_next().await {
        streams.push(s.unwrap().expect("slow client could not connect"));
    }
    let head: &[u8] =
        b"POST /api/add_log HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nX-Slow: 1\r\n";
    let stop = Arc::new(AtomicBool::new(false));
    let dribbler = {
        let stop = stop.clone();
        tokio::spawn(async move {
            // Each connection sends its next byte once a second, the
            // connections spread evenly over the second as independent
            // clients would be. Bounded by the head's length; stopped early.
            let slice = (streams.len() / 100).max(1);
            'bytes: for i in 0..head.len() {
                for group in streams.chunks_mut(slice) {
                    if stop.load(Ordering::Relaxed) {
                        break 'bytes;
                    }
                    for s in group.iter_mut() {
                        let _ = s.write_all(&head[i..i + 1]).await;
                        let _ = s.flush().await;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            streams
        })
    };
    let open = eventually_some("the slow clients to connect", || async move {
        let open = metric(addr, "usermetadb_open_connections").await;
        (open as usize > slow).then_some(open)
    })
    .await;
    assert!(open as usize > slow, "only {open} connections open");
    let loaded_a = probe(addr, 4, 150).await;
    let loaded_b = probe(addr, 4, 150).await;
    stop.store(true, Ordering::Relaxed);
    let mut streams = dribbler.await.unwrap();
    // None of them got an answer: they are still sending their head.
    let mut buf = [0u8; 64];
    for s in streams.iter_mut().take(20) {
        let r = tokio::time::timeout(Duration::from_millis(5), s.read(&mut buf)).await;
        assert!(r.is_err(), "a slow client got an answer: {r:?}");
    }
    drop(streams);
    eventually("the slow clients' connections to close", || async move {
        metric(addr, "usermetadb_open_connections").await <= 1
    })
    .await;
    let idle_after = probe(addr, 4, 150).await;

    let idle_p99 = pct(&idle_before, 0.99).max(pct(&idle_after, 0.99));
    let loaded_p99 = pct(&loaded_a, 0.99).min(pct(&loaded_b, 0.99));
    eprintln!(
        "{slow} slow clients: normal-client p50 idle {:.2} ms / loaded {:.2} ms; p99 idle {:.2} ms (before {:.2}, after {:.2}) / loaded {:.2} ms (runs {:.2}, {:.2})",
        ms(pct(&idle_before, 0.5)),
        ms(pct(&loaded_a, 0.5)),
        ms(idle_p99),
        ms(pct(&idle_before, 0.99)),
        ms(pct(&idle_after, 0.99)),
        ms(loaded_p99),
        ms(pct(&loaded_a, 0.99)),
        ms(pct(&loaded_b, 0.99)),
    );
    let bound = idle_p99.max(NOISE_FLOOR).mul_f64(SLOWDOWN_FACTOR);
    assert!(
        loaded_p99 <= bound,
        "p99 with {slow} slow clients {:.2} ms > {SLOWDOWN_FACTOR} x idle {:.2} ms",
        ms(loaded_p99),
        ms(idle_p99)
    );
    assert!(bin.alive());
}

/// Reads until EOF or error; how long that took, or None if `within` passed first.
async fn closed_within<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    within: Duration,
) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout_at(tokio::time::Instant::now() + within, s.read(&mut buf)).await
        {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {
                if started.elapsed() > within {
                    return None;
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_silent_and_half_open_connections_are_closed_at_their_timeouts() {
    let (_dir, mut bin) = start(
        "  handshake_timeout: 1s\n  header_timeout: 1s\n  idle_timeout: 2s\n  max_bulk_body_bytes: 16777216\n",
    );
    let addr = bin.addr;
    let window = Duration::from_secs(6);

    // Headers a byte every 200 ms: the header timeout is a deadline, not reset
    // by each byte.
    let mut dribble = tls_connect(addr, "sso-server").await.unwrap();
    let started = Instant::now();
    let head = b"POST /api/add_log HTTP/1.1\r\nHost: localhost\r\nX-Slow: 1\r\n";
    let mut closed = None;
    for b in head.iter().cycle().take(50) {
        if dribble.write_all(&[*b]).await.is_err() || dribble.flush().await.is_err() {
            closed = Some(started.elapsed());
            break;
        }
        let mut one = [0u8; 1];
        match tokio::time::timeout(Duration::from_millis(200), dribble.read(&mut one)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = Some(started.elapsed());
                break;
            }
            _ => {}
        }
    }
    let closed = closed.expect("a dribbling client kept its connection for 10 s");
    assert!(
        closed >= Duration::from_millis(900) && closed < Duration::from_secs(4),
        "header timeout closed after {closed:?}"
    );

    // A completed handshake, then silence.
    let mut silent = tls_connect(addr, "sso-server").await.unwrap();
    let took = closed_within(&mut silent, window)
        .await
        .expect("silent TLS connection kept open");
    assert!(took >= Duration::from_millis(900), "{took:?}");

    // A TCP connection that never starts TLS.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let took = closed_within(&mut tcp, window)
        .await
        .expect("silent TCP connection kept open");
    assert!(took >= Duration::from_millis(900), "{took:?}");

    // Half-closed: part of a request, then the client shuts its side.
    let mut half = tls_connect(addr, "sso-server").await.unwrap();
    half.write_all(
        b"POST /api/add_log HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n{",
    )
    .await
    .unwrap();
    half.shutdown().await.unwrap();
    let took = closed_within(&mut half, window)
        .await
        .expect("half-closed connection kept open");
    assert!(took < Duration::from_secs(3), "{took:?}");

    // A client that asks for a large answer and never reads it: the server's
    // writes stall, and the idle timeout ends the connection. A small receive
    // buffer and a 10 MB answer keep the kernel from absorbing it all.
    let names: Vec<String> = (0..50_000)
        .map(|i| format!("stalled-reader-{i:06}-{}", "x".repeat(180)))
        .collect();
    let body = json!({"usernames": names, "days": 30}).to_string();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(addr).await.unwrap();
    let tls = identity("client-accounts-panel");
    let mut stalled = tokio_rustls::TlsConnector::from(tls)
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    stalled
        .write_all(
            format!(
                "POST /api/get_unused_accounts HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    stalled.flush().await.unwrap();
    // Wait, without reading, until the server has dropped every connection
    // but the one asking.
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(addr, "usermetadb_open_connections").await > 1 {
        assert!(
            Instant::now() < deadline,
            "the stalled connection was not closed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut got = 0usize;
    let mut buf = vec![0u8; 256 * 1024];
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(3), stalled.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => got += n,
            Err(_) => break false,
        }
    };
    assert!(ended, "the stalled connection was not closed");
    assert!(
        got < body.len() / 2,
        "{got} bytes of a {} byte answer delivered",
        body.len()
    );

    // Every one of them is gone: only the metrics client itself is open.
    metric_settles(addr, "usermetadb_open_connections", 1).await;
    assert!(bin.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_open_connection_cap_holds() {
    let cap = 40;
    let (_dir, mut bin) = start(&format!("  max_connections: {cap}\n"));
    let addr = bin.addr;
    let mut held = Vec::new();
    for i in 0..cap {
        let mut c = client_at(addr, "accounts-panel").await;
        let (status, _) = c
            .post("/api/get_last_login", json!({"username": format!("h{i}")}))
            .await;
        assert_eq!(status, 200, "connection {i} under the cap");
        held.push(c);
    }
    // Over the cap: accepted by the kernel, closed at once by the server.
    for _ in 0..5 {
        let started = Instant::now();
        let refused = match tls_connect(addr, "accounts-panel").await {
            Err(_) => true,
            Ok(mut s) => closed_within(&mut s, Duration::from_secs(3))
                .await
                .is_some(),
        };
        assert!(refused, "a connection over the cap was served");
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    // The held ones still work.
    for c in held.iter_mut().take(3) {
        assert_eq!(
            c.post("/api/get_last_login", json!({"username": "x"}))
                .await
                .0,
            200
        );
    }
    // Closing some frees their slots, once the server has seen them close.
    held.truncate(cap - 2);
    let mut c = connect_when_free(addr, "accounts-panel").await;
    assert!(metric(addr, "usermetadb_connections_refused_total").await >= 5);
    assert_eq!(
        c.post("/api/get_last_login", json!({"username": "x"}))
            .await
            .0,
        200
    );
    assert!(bin.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_inflight_gives_immediate_503s_not_a_queue() {
    let slots = 8;
    let (_dir, mut bin) = start(&format!(
        "  max_inflight_requests: {slots}\n  request_timeout: 10s\n"
    ));
    let addr = bin.addr;
    // Every slot held by a request whose body never comes.
    let mut holders = Vec::new();
    for _ in 0..slots {
        let mut s = tls_connect(addr, "sso-server").await.unwrap();
        s.write_all(b"POST /api/add_log HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
            .await
            .unwrap();
        s.flush().await.unwrap();
        holders.push(s);
    }
    metric_settles(addr, "usermetadb_inflight_requests", slots as i64).await;

    // 200 more requests from 10 clients: each answered 503 at once.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..10 {
        tasks.push(tokio::spawn(async move {
            let mut c = client_at(addr, "sso-server").await;
            let mut worst = Duration::ZERO;
            for i in 0..20 {
                let t = Instant::now();
                let (status, v) = c
                    .post("/api/add_log", login(&format!("o{w}-{i}"), "d", 60))
                    .await;
                worst = worst.max(t.elapsed());
                assert_eq!(status, 503, "{v}");
                assert_eq!(v["error"], "server overloaded, retry later");
            }
            worst
        }));
    }
    let mut worst = Duration::ZERO;
    for t in tasks {
        worst = worst.max(t.await.unwrap());
    }
    let all = started.elapsed();
    eprintln!("200 requests over {slots} held slots: all 503 in {all:?}, slowest {worst:?}");
    assert!(
        worst < Duration::from_secs(1),
        "a 503 took {worst:?}: queued?"
    );
    assert!(all < Duration::from_secs(5), "{all:?}");
    // The in-flight count did not grow past the cap.
    assert_eq!(
        metric(addr, "usermetadb_inflight_requests").await,
        slots as i64
    );

    // The slots come back as the held requests end.
    drop(holders);
    metric_settles(addr, "usermetadb_inflight_requests", 0).await;
    let mut c = client_at(addr, "sso-server").await;
    assert_eq!(c.post("/api/add_log", login("after", "d", 60)).await.0, 200);
    assert_eq!(metric(addr, "usermetadb_inflight_requests").await, 0);
    assert!(bin.alive());
}

async fn get_metrics(c: &mut Client) -> usermetadb::client::RawResponse {
    c.0.request(hyper::Method::GET, "/metrics", None, bytes::Bytes::new())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_prometheus_text_behind_the_acl() {
    let (_dir, bin) = start("      - { path: \"/metrics\", cn: \"prometheus\" }\n");
    let addr = bin.addr;
    let mut sso = client_at(addr, "sso-server").await;
    for i in 0..3 {
        let (status, _) = sso
            .post("/api/add_log", login(&format!("metrics-user-{i}"), "d", 60))
            .await;
        assert_eq!(status, 200);
    }
    assert_eq!(sso.post("/api/add_log", json!({"log": {}})).await.0, 400);
    assert_eq!(sso.post("/api/nope", json!({})).await.0, 404);
    assert_eq!(
        sso.post("/api/forget_user", json!({"username": "x"}))
            .await
            .0,
        403
    );
    // Subject to the ACL like any path.
    assert_eq!(get_metrics(&mut sso).await.status, 403);
    let mut prom = client_at(addr, "prometheus").await;
    let r = prom
        .0
        .request(hyper::Method::POST, "/metrics", None, bytes::Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.status, 405);
    let r = get_metrics(&mut prom).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.headers["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = String::from_utf8(r.body.to_vec()).unwrap();

    // The format: HELP and TYPE for every family, then `name{labels} value`.
    let mut families = std::collections::BTreeSet::new();
    let mut values = std::collections::BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            families.insert(rest.split(' ').next().unwrap().to_owned());
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
        let name = series.split('{').next().unwrap();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| families.contains(*f)))
            .unwrap_or(name);
        assert!(families.contains(family), "{line}: no TYPE");
        if let Some(labels) = series.split_once('{').map(|(_, l)| l.trim_end_matches('}')) {
            for pair in labels.split(',') {
                let (k, _) = pair.split_once('=').unwrap();
                assert!(
                    [
                        "endpoint", "status", "le", "reason", "kind", "sink", "outcome", "version",
                        "decision", "enforced",
                    ]
                    .contains(&k),
                    "{line}: label {k}"
                );
            }
        }
        values.insert(series.to_owned(), value);
    }
    let v = |s: &str| {
        values
            .get(s)
            .copied()
            .unwrap_or_else(|| panic!("{s} missing:\n{text}"))
    };
    assert_eq!(
        v("usermetadb_requests_total{endpoint=\"add_log\",status=\"2xx\"}"),
        3.0
    );
    assert_eq!(
        v("usermetadb_requests_total{endpoint=\"add_log\",status=\"4xx\"}"),
        1.0
    );
    assert_eq!(
        v("usermetadb_requests_total{endpoint=\"unknown\",status=\"4xx\"}"),
        1.0
    );
    assert_eq!(
        v("usermetadb_requests_total{endpoint=\"forget_user\",status=\"4xx\"}"),
        1.0
    );
    assert_eq!(
        v("usermetadb_requests_total{endpoint=\"metrics\",status=\"4xx\"}"),
        2.0
    );
    assert_eq!(
        v("usermetadb_request_duration_seconds_count{endpoint=\"add_log\"}"),
        4.0
    );
    assert_eq!(
        v("usermetadb_request_duration_seconds_bucket{endpoint=\"add_log\",le=\"+Inf\"}"),
        4.0
    );
    let mut buckets: Vec<(f64, f64)> = values
        .iter()
        .filter_map(|(series, value)| {
            let le = series
                .strip_prefix(
                    "usermetadb_request_duration_seconds_bucket{endpoint=\"add_log\",le=\"",
                )?
                .trim_end_matches("\"}");
            Some((le.parse::<f64>().unwrap_or(f64::INFINITY), *value))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(buckets.len() > 10);
    assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{buckets:?}");
    assert!(v("usermetadb_request_duration_seconds_sum{endpoint=\"add_log\"}") > 0.0);
    assert!(v("usermetadb_write_batch_size_sum") >= 3.0);
    assert!(v("usermetadb_write_batch_size_count") >= 1.0);
    assert_eq!(v("usermetadb_write_batch_failures_total"), 0.0);
    // Idle queues (the alert dispatcher may have one read in flight).
    assert!(v("usermetadb_writer_queue_depth") <= 1.0);
    assert!(v("usermetadb_reader_queue_depth") <= 1.0);
    assert_eq!(v("usermetadb_inflight_requests"), 0.0);
    assert_eq!(v("usermetadb_max_inflight_requests"), 1000.0);
    assert!(v("usermetadb_open_connections") >= 2.0);
    assert_eq!(
        v("usermetadb_tls_handshake_failures_total{reason=\"expired\"}"),
        0.0
    );
    assert_eq!(
        v("usermetadb_alert_deliveries_total{sink=\"webhook\",outcome=\"delivered\"}"),
        values["usermetadb_alert_deliveries_total{sink=\"webhook\",outcome=\"delivered\"}"]
    );
    // Nothing about a client or a user.
    for secret in ["metrics-user", "sso-server", "prometheus\"", "127.0.0.1"] {
        assert!(!text.contains(secret), "{secret} in metrics");
    }
}

/// The header timeout runs from a request head's first byte: a keep-alive
/// connection that waits between requests longer than it (but less than the
/// idle timeout) is still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_connections_outlive_the_header_timeout() {
    let (_dir, bin) = start("  header_timeout: 1s\n  idle_timeout: 10s\n");
    let mut c = client_at(bin.addr, "sso-server").await;
    for _ in 0..2 {
        let r =
            c.0.request(hyper::Method::GET, "/health", None, bytes::Bytes::new())
                .await
                .unwrap();
        assert_eq!(r.status, 200);
        // Idle time on the connection is what is under test.
        tokio::time::sleep(Duration::from_millis(2500)).await;
    }
    let r =
        c.0.request(hyper::Method::GET, "/health", None, bytes::Bytes::new())
            .await
            .expect("the idle keep-alive connection was closed");
    assert_eq!(r.status, 200);
}
