//! HTTP/2: offered by ALPN beside HTTP/1.1, the ACL on each request of a
//! multiplexed connection, and the abuse a peer can try with frames (rapid
//! resets, a CONTINUATION flood, too many streams, an oversized header
//! list, a flow-control window that never opens), spoken frame by frame.

use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use usermetadb::client::{Connection, Protocols};

use crate::common::*;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;

const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;

const REFUSED_STREAM: u32 = 0x7;
const CANCEL: u32 = 0x8;
const ENHANCE_YOUR_CALM: u32 = 0xb;

#[derive(Debug)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

impl Frame {
    /// The error code of a RST_STREAM or GOAWAY frame.
    fn error_code(&self) -> u32 {
        let at = if self.kind == GOAWAY { 4 } else { 0 };
        u32::from_be_bytes(self.payload[at..at + 4].try_into().unwrap())
    }
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.extend([kind, flags]);
    f.extend(stream.to_be_bytes());
    f.extend(payload);
    f
}

/// An HPACK integer with an `n`-bit prefix whose high bits are `first`.
fn hpack_int(out: &mut Vec<u8>, first: u8, n: u32, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128 + 128) as u8);
        v /= 128;
    }
    out.push(v as u8);
}

/// A header block of literal fields without indexing, no Huffman coding.
fn hpack(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0);
        hpack_int(&mut out, 0, 7, name.len());
        out.extend(name.as_bytes());
        hpack_int(&mut out, 0, 7, value.len());
        out.extend(value.as_bytes());
    }
    out
}

/// The request headers of a JSON POST to `path` with a body of `len` bytes.
fn post_headers(path: &str, len: usize) -> Vec<u8> {
    hpack(&[
        (":method", "POST"),
        (":scheme", "https"),
        (":authority", "localhost"),
        (":path", path),
        ("content-type", "application/json"),
        ("content-length", &len.to_string()),
    ])
}

/// The HPACK Huffman codes of the ten digits (RFC 7541, appendix B).
const DIGIT_CODES: [(u32, u32); 10] = [
    (0x0, 5),
    (0x1, 5),
    (0x2, 5),
    (0x19, 6),
    (0x1a, 6),
    (0x1b, 6),
    (0x1c, 6),
    (0x1d, 6),
    (0x1e, 6),
    (0x1f, 6),
];

/// The `:status` of a response header block: the first field, either
/// indexed from the static table or a literal with the indexed name
/// `:status` and a (possibly Huffman-coded) three-digit value.
fn status_of(block: &[u8]) -> Option<u16> {
    let first = *block.first()?;
    let indexed = [
        (8, 200),
        (9, 204),
        (10, 206),
        (11, 304),
        (12, 400),
        (13, 404),
        (14, 500),
    ];
    if first & 0x80 != 0 {
        let i = first & 0x7f;
        return indexed.iter().find(|(n, _)| *n == i).map(|(_, s)| *s);
    }
    // A literal whose name is static entry 8 (`:status`), with or without
    // incremental indexing, or never indexed.
    if !matches!(first, 0x48 | 0x08 | 0x18) {
        return None;
    }
    let (huffman, len) = (block[1] & 0x80 != 0, (block[1] & 0x7f) as usize);
    let value = &block[2..2 + len];
    let digits = if huffman {
        let mut bits: u64 = 0;
        for b in value {
            bits = bits << 8 | u64::from(*b);
        }
        let total = 8 * value.len() as u32;
        let mut at = 0;
        let mut out = String::new();
        while out.len() < 3 {
            let code = DIGIT_CODES.iter().position(|(code, n)| {
                at + n <= total && (bits >> (total - at - n)) & ((1 << n) - 1) == u64::from(*code)
            })?;
            at += DIGIT_CODES[code].1;
            out.push(char::from(b'0' + code as u8));
        }
        out
    } else {
        String::from_utf8(value.to_vec()).ok()?
    };
    digits.parse().ok()
}

/// An HTTP/2 connection spoken frame by frame, presenting `client-<cn>`.
struct Raw {
    tls: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    /// The server's SETTINGS, as (identifier, value).
    settings: Vec<(u16, u32)>,
}

impl Raw {
    /// Connects, sends the preface and `settings`, and reads the server's
    /// SETTINGS.
    async fn open(addr: std::net::SocketAddr, cn: &str, settings: &[(u16, u32)]) -> Raw {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(identity_for(
            &format!("client-{cn}"),
            Protocols::Http2,
        ))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let mut raw = Raw {
            tls,
            settings: Vec::new(),
        };
        let mut payload = Vec::new();
        for (id, v) in settings {
            payload.extend(id.to_be_bytes());
            payload.extend(v.to_be_bytes());
        }
        let mut hello = PREFACE.to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &payload));
        raw.send(&hello).await.unwrap();
        loop {
            let f = raw.read().await.expect("the server's SETTINGS");
            if f.kind == SETTINGS && f.flags & ACK == 0 {
                raw.settings = f
                    .payload
                    .chunks(6)
                    .map(|c| {
                        (
                            u16::from_be_bytes([c[0], c[1]]),
                            u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
                        )
                    })
                    .collect();
                raw.send(&frame(SETTINGS, ACK, 0, &[])).await.unwrap();
                return raw;
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.tls.write_all(bytes).await?;
        self.tls.flush().await
    }

    /// The next frame, or `None` once the server has closed the connection
    /// (or nothing came for 20 s).
    async fn read(&mut self) -> Option<Frame> {
        let mut head = [0u8; 9];
        let read = tokio::time::timeout(Duration::from_secs(20), self.tls.read_exact(&mut head));
        match read.await {
            Ok(Ok(_)) => {}
            _ => return None,
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        self.tls.read_exact(&mut payload).await.ok()?;
        Some(Frame {
            kind: head[3],
            flags: head[4],
            stream: u32::from_be_bytes(head[5..9].try_into().unwrap()) & 0x7fff_ffff,
            payload,
        })
    }

    /// Frames until one satisfies `want` (returned), or the connection ends
    /// (`None`).
    async fn until(&mut self, want: impl Fn(&Frame) -> bool) -> Option<Frame> {
        while let Some(f) = self.read().await {
            if want(&f) {
                return Some(f);
            }
        }
        None
    }

    /// A complete JSON POST on `stream`.
    async fn post(&mut self, stream: u32, path: &str, body: &[u8]) {
        let mut bytes = frame(
            HEADERS,
            END_HEADERS,
            stream,
            &post_headers(path, body.len()),
        );
        bytes.extend(frame(DATA, END_STREAM, stream, body));
        self.send(&bytes).await.unwrap();
    }

    /// The status the server answers on `stream`.
    async fn status(&mut self, stream: u32) -> Option<u16> {
        let f = self
            .until(|f| f.stream == stream && matches!(f.kind, HEADERS | RST_STREAM))
            .await?;
        assert_eq!(f.kind, HEADERS, "stream {stream} was reset: {f:?}");
        status_of(&f.payload)
    }
}

fn log_body(user: &str) -> Vec<u8> {
    login(user, "d1", 60).to_string().into_bytes()
}

#[tokio::test]
async fn http2_is_chosen_by_alpn_and_the_acl_holds_per_request() {
    let ts = TestServer::start().await;
    let connect = |cn: &str, p: Protocols| {
        let tls = identity_for(&format!("client-{cn}"), p);
        async move {
            Connection::connect(ts.addr, "localhost", Some(tls))
                .await
                .unwrap()
        }
    };
    // A client offering both (as Go's) gets HTTP/2; one offering HTTP/1.1 keeps it.
    let mut sso = connect("sso-server", Protocols::Any).await;
    assert_eq!(sso.version(), hyper::Version::HTTP_2);
    let h1 = connect("sso-server", Protocols::Http1).await;
    assert_eq!(h1.version(), hyper::Version::HTTP_11);

    // Many requests at once on one connection, each checked against the ACL.
    let mut tasks = Vec::new();
    for i in 0..24 {
        let mut c = sso.stream().unwrap();
        tasks.push(tokio::spawn(async move {
            let (path, body) = if i % 3 == 0 {
                (
                    "/api/get_user_logs",
                    json!({"username": "h2-0", "max_days": 30}),
                )
            } else {
                ("/api/add_log", login(&format!("h2-{i}"), "d1", 60))
            };
            c.post_raw(path, body.to_string().into())
                .await
                .unwrap()
                .status
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap().as_u16());
    }
    for (i, s) in statuses.iter().enumerate() {
        let want = if i % 3 == 0 { 403 } else { 200 };
        assert_eq!(*s, want, "request {i}: {statuses:?}");
    }
    let r = sso
        .post_raw(
            "/api/forget_user",
            br#"{"username":"h2-1"}"#.to_vec().into(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 403);

    // The admin reads over HTTP/2 what was written over HTTP/2.
    let mut admin = connect("admin", Protocols::Http2).await;
    let r = admin
        .post_raw(
            "/api/get_user_logs",
            json!({"username": "h2-1", "max_days": 30})
                .to_string()
                .into(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    // The refused `forget_user` changed nothing.
    assert_eq!(parse(&r)["result"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn rapid_stream_resets_end_the_connection_and_store_nothing() {
    let ts = TestServer::start().await;
    let mut raw = Raw::open(ts.addr, "sso-server", &[]).await;
    // Each stream: a request whose body never comes, reset at once.
    let body = log_body("reset");
    let mut burst = Vec::new();
    for i in 0..2000u32 {
        let id = 2 * i + 1;
        burst.extend(frame(
            HEADERS,
            END_HEADERS,
            id,
            &post_headers("/api/add_log", body.len()),
        ));
        burst.extend(frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes()));
    }
    // The server may close before the burst is all written.
    let _ = raw.send(&burst).await;
    let goaway = raw.until(|f| f.kind == GOAWAY).await;
    let goaway = goaway.expect("the server ends a connection resetting streams that fast");
    assert_eq!(goaway.error_code(), ENHANCE_YOUR_CALM);
    assert!(raw.read().await.is_none(), "the connection is closed");

    // The server still serves, and nothing of the reset requests was stored.
    let mut c = ts.client("admin").await;
    let (status, v) = c
        .post(
            "/api/get_user_logs",
            json!({"username": "reset", "max_days": 30}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(v["result"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn a_continuation_flood_ends_the_connection() {
    let ts = TestServer::start().await;
    let mut raw = Raw::open(ts.addr, "sso-server", &[]).await;
    let start = post_headers("/api/add_log", 2);
    raw.send(&frame(HEADERS, 0, 1, &start)).await.unwrap();
    // CONTINUATION frames of 16 KiB, never ending the header block: 64 MiB
    // if the server read them all.
    let filler = hpack(&[("x-filler", &"a".repeat(16_000))]);
    let one = frame(CONTINUATION, 0, 1, &filler);
    let mut sent = 0usize;
    let mut refused = false;
    for _ in 0..4096 {
        if raw.send(&one).await.is_err() {
            refused = true;
            break;
        }
        sent += one.len();
    }
    // Either a write failed (the server closed) or the connection is ended
    // with a GOAWAY and closed.
    if !refused {
        let f = raw.until(|f| f.kind == GOAWAY).await;
        assert!(f.is_some(), "no GOAWAY after {sent} bytes of CONTINUATION");
    }
    assert!(raw.read().await.is_none() || refused);
    assert!(
        sent < 8 << 20,
        "the server read {sent} bytes of one header block"
    );
    let mut c = ts.client("sso-server").await;
    let (status, _) = c.post("/api/add_log", login("after-flood", "d1", 60)).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn streams_beyond_the_limit_are_refused() {
    let ts = TestServer::start().await;
    let mut raw = Raw::open(ts.addr, "sso-server", &[]).await;
    let limit = raw
        .settings
        .iter()
        .find(|(id, _)| *id == SETTINGS_MAX_CONCURRENT_STREAMS)
        .map(|(_, v)| *v)
        .expect("the server announces a stream limit");
    assert_eq!(limit, usermetadb::server::h2_limits::MAX_CONCURRENT_STREAMS);
    // `limit` requests whose bodies never come hold their streams open;
    // one more is refused.
    let body = log_body("many");
    let mut bytes = Vec::new();
    for i in 0..=limit {
        bytes.extend(frame(
            HEADERS,
            END_HEADERS,
            2 * i + 1,
            &post_headers("/api/add_log", body.len()),
        ));
    }
    raw.send(&bytes).await.unwrap();
    let over = 2 * limit + 1;
    let f = raw
        .until(|f| f.kind == RST_STREAM || f.kind == GOAWAY)
        .await
        .expect("the stream over the limit is refused");
    assert_eq!(
        (f.kind, f.stream, f.error_code()),
        (RST_STREAM, over, REFUSED_STREAM)
    );
    // The open streams still complete.
    let mut finish = Vec::new();
    for i in 0..limit {
        finish.extend(frame(DATA, END_STREAM, 2 * i + 1, &body));
    }
    raw.send(&finish).await.unwrap();
    for i in 0..limit {
        assert_eq!(raw.status(2 * i + 1).await, Some(200));
    }
}

#[tokio::test]
async fn an_oversized_header_list_is_refused_and_the_connection_goes_on() {
    let ts = TestServer::start().await;
    let mut raw = Raw::open(ts.addr, "sso-server", &[]).await;
    let body = log_body("big-headers");
    let limit = usermetadb::server::h2_limits::MAX_HEADER_LIST_SIZE as usize;
    let mut block = post_headers("/api/add_log", body.len());
    block.extend(hpack(&[("x-big", &"b".repeat(limit + 1024))]));
    // Split over HEADERS and CONTINUATION frames of at most 16 KiB.
    let chunks: Vec<&[u8]> = block.chunks(16_384).collect();
    let mut bytes = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        let last = if i + 1 == chunks.len() {
            END_HEADERS
        } else {
            0
        };
        let kind = if i == 0 { HEADERS } else { CONTINUATION };
        bytes.extend(frame(kind, last, 1, c));
    }
    bytes.extend(frame(DATA, END_STREAM, 1, &body));
    raw.send(&bytes).await.unwrap();
    let f = raw
        .until(|f| f.stream == 1 && matches!(f.kind, HEADERS | RST_STREAM))
        .await
        .expect("an answer on the oversized stream");
    if f.kind == HEADERS {
        assert_eq!(status_of(&f.payload), Some(431));
    }
    // The same connection serves the next request.
    raw.post(3, "/api/add_log", &log_body("after-big")).await;
    assert_eq!(raw.status(3).await, Some(200));
    let mut c = ts.client("admin").await;
    let (_, v) = c
        .post(
            "/api/get_user_logs",
            json!({"username": "big-headers", "max_days": 30}),
        )
        .await;
    assert_eq!(
        v["result"].as_array().unwrap().len(),
        0,
        "nothing was stored"
    );
}

#[tokio::test]
async fn a_window_that_never_opens_is_closed_by_the_idle_timeout() {
    let ts = TestServer::start_with("  idle_timeout: 2s\n").await;
    let mut c = ts.client("sso-server").await;
    c.ok("/api/add_log", login("window", "d1", 60)).await;
    // A window of zero: the server may send headers, never the body.
    let mut raw = Raw::open(ts.addr, "admin", &[(SETTINGS_INITIAL_WINDOW_SIZE, 0)]).await;
    let started = std::time::Instant::now();
    raw.post(
        1,
        "/api/get_user_logs",
        json!({"username": "window", "max_days": 30})
            .to_string()
            .as_bytes(),
    )
    .await;
    let mut data = 0;
    let mut end = None;
    while let Some(f) = raw.read().await {
        match f.kind {
            DATA if f.stream == 1 => data += f.payload.len(),
            GOAWAY => end = Some(f.error_code()),
            PING | SETTINGS | HEADERS | WINDOW_UPDATE => {}
            _ => {}
        }
    }
    let held = started.elapsed();
    assert_eq!(data, 0, "no body crosses a closed window");
    assert!(
        held < Duration::from_secs(15),
        "the connection was held {held:?} (idle timeout 2 s); GOAWAY {end:?}"
    );
    // The server is unharmed.
    let mut c = ts.client("sso-server").await;
    c.ok("/api/add_log", login("window", "d2", 60)).await;
}
