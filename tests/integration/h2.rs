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

const SETTINGS_HEADER_TABLE_SIZE: u16 = 0x1;
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
fn status_of(mut block: &[u8]) -> Option<u16> {
    // Dynamic table size updates (`001xxxxx`, and any continuation bytes).
    while block.first().is_some_and(|b| b & 0xe0 == 0x20) {
        let more = block[0] & 0x1f == 0x1f;
        block = &block[1..];
        if more {
            let end = block.iter().position(|b| b & 0x80 == 0)?;
            block = &block[end + 1..];
        }
    }
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
pub(crate) struct Raw {
    tls: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    /// The server's SETTINGS, as (identifier, value).
    settings: Vec<(u16, u32)>,
    /// What the server lets this side send: the connection's window, and
    /// each stream's beyond the initial one.
    window: i64,
    stream_windows: std::collections::HashMap<u32, i64>,
}

impl Raw {
    /// Connects, sends the preface and `settings`, and reads the server's
    /// SETTINGS.
    pub(crate) async fn open(addr: std::net::SocketAddr, cn: &str, settings: &[(u16, u32)]) -> Raw {
        Raw::open_with(
            addr,
            identity_for(&format!("client-{cn}"), Protocols::Http2),
            settings,
        )
        .await
    }

    /// As [`Raw::open`], with a TLS configuration of the caller's.
    pub(crate) async fn open_with(
        addr: std::net::SocketAddr,
        tls: std::sync::Arc<rustls::ClientConfig>,
        settings: &[(u16, u32)],
    ) -> Raw {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(tls)
            .connect("localhost".try_into().unwrap(), tcp)
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let mut raw = Raw {
            tls,
            settings: Vec::new(),
            window: 65_535,
            stream_windows: Default::default(),
        };
        // No dynamic table: every `:status` the server sends is one that
        // `status_of` can read without the connection's HPACK state.
        let mut payload = Vec::new();
        if !settings
            .iter()
            .any(|(id, _)| *id == SETTINGS_HEADER_TABLE_SIZE)
        {
            payload.extend(SETTINGS_HEADER_TABLE_SIZE.to_be_bytes());
            payload.extend(0u32.to_be_bytes());
        }
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
        let f = Frame {
            kind: head[3],
            flags: head[4],
            stream: u32::from_be_bytes(head[5..9].try_into().unwrap()) & 0x7fff_ffff,
            payload,
        };
        if f.kind == WINDOW_UPDATE {
            let inc = i64::from(u32::from_be_bytes(f.payload[..4].try_into().unwrap()));
            match f.stream {
                0 => self.window += inc,
                s => *self.stream_windows.entry(s).or_default() += inc,
            }
        }
        Some(f)
    }

    /// The window the server's SETTINGS give each new stream.
    fn initial_window(&self) -> i64 {
        self.settings
            .iter()
            .find(|(id, _)| *id == SETTINGS_INITIAL_WINDOW_SIZE)
            .map_or(65_535, |(_, v)| i64::from(*v))
    }

    /// Sends `body` as DATA on `stream` (END_STREAM on the last frame when
    /// `end`), within the flow-control windows, reading frames while they
    /// are shut. Those frames are returned; sending stops at a RST_STREAM
    /// of `stream`, or when the connection ends.
    async fn send_body(&mut self, stream: u32, body: &[u8], end: bool) -> Vec<Frame> {
        let mut seen = Vec::new();
        let mut at = 0;
        loop {
            let stream_window =
                self.initial_window() + self.stream_windows.get(&stream).copied().unwrap_or(0);
            let n = (body.len() - at)
                .min(16_384)
                .min(self.window.min(stream_window).max(0) as usize);
            if n > 0 || at == body.len() {
                let last = at + n == body.len();
                let flags = if last && end { END_STREAM } else { 0 };
                self.send(&frame(DATA, flags, stream, &body[at..at + n]))
                    .await
                    .unwrap();
                self.window -= n as i64;
                *self.stream_windows.entry(stream).or_default() -= n as i64;
                at += n;
                if last {
                    return seen;
                }
                continue;
            }
            match self.read().await {
                Some(f) => {
                    let reset = f.kind == RST_STREAM && f.stream == stream;
                    seen.push(f);
                    if reset {
                        return seen;
                    }
                }
                None => return seen,
            }
        }
    }

    /// The HEADERS of a request on `stream` whose body of `len` bytes
    /// (announced in `Content-Length`) is still to come.
    async fn open_request(
        &mut self,
        stream: u32,
        method: &str,
        path: &str,
        fields: &[(&str, &str)],
        len: usize,
    ) {
        let len = len.to_string();
        let mut all = vec![
            (":method", method),
            (":scheme", "https"),
            (":authority", "localhost"),
            (":path", path),
            ("content-length", len.as_str()),
        ];
        all.extend_from_slice(fields);
        self.send(&frame(HEADERS, END_HEADERS, stream, &hpack(&all)))
            .await
            .unwrap();
    }

    /// The whole answer on `stream`: its status, once its END_STREAM has
    /// come. Panics on any RST_STREAM or GOAWAY before that.
    async fn answer(&mut self, stream: u32) -> Option<u16> {
        let mut status = None;
        loop {
            let f = self
                .until(|f| f.stream == stream || matches!(f.kind, RST_STREAM | GOAWAY))
                .await?;
            match f.kind {
                RST_STREAM | GOAWAY => {
                    panic!("a reset while waiting for the answer on stream {stream}: {f:?}")
                }
                HEADERS => {
                    status = status.or_else(|| status_of(&f.payload));
                }
                _ => {}
            }
            if matches!(f.kind, HEADERS | DATA) && f.flags & END_STREAM != 0 {
                return status;
            }
        }
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

/// One refusal the server decides before reading the body: who asks, how,
/// and the status it must answer.
pub(crate) struct Refusal {
    pub(crate) what: &'static str,
    pub(crate) method: &'static str,
    pub(crate) path: &'static str,
    pub(crate) content_type: &'static str,
    pub(crate) key: Option<String>,
    pub(crate) status: u16,
}

impl Refusal {
    pub(crate) fn new(
        what: &'static str,
        method: &'static str,
        path: &'static str,
        status: u16,
    ) -> Refusal {
        Refusal {
            what,
            method,
            path,
            content_type: "application/json",
            key: None,
            status,
        }
    }
}

/// Sends each refusal with a body sent in two parts, the second after the
/// answer, and holds the stream to what RFC 9113 and libcurl both accept:
/// the answer comes whole, the upload ends, no RST_STREAM follows, and the
/// same connection serves the next request (`next`, answered `next_status`).
pub(crate) async fn refusals_end_their_streams_cleanly(
    raw: &mut Raw,
    refusals: &[Refusal],
    next: (&str, &[(&str, &str)], &[u8], u16),
) {
    let body = log_body("late");
    let (first, rest) = body.split_at(10);
    let mut stream = 1;
    for r in refusals {
        let key = r.key.clone().unwrap_or_default();
        let mut fields = vec![("content-type", r.content_type)];
        if r.key.is_some() {
            fields.push(("x-api-key", key.as_str()));
        }
        raw.open_request(stream, r.method, r.path, &fields, body.len())
            .await;
        raw.send(&frame(DATA, 0, stream, first)).await.unwrap();
        assert_eq!(raw.answer(stream).await, Some(r.status), "{}", r.what);
        let seen = raw.send_body(stream, rest, true).await;
        assert!(
            !seen.iter().any(|f| f.kind == RST_STREAM),
            "{}: {seen:?}",
            r.what
        );
        // The next request, on the same connection; no reset of the refused
        // stream may come before its answer.
        let (path, fields, next_body, next_status) = next;
        raw.open_request(stream + 2, "POST", path, fields, next_body.len())
            .await;
        raw.send_body(stream + 2, next_body, true).await;
        let mut status = None;
        loop {
            let f = raw.read().await.expect("the connection is still open");
            assert!(
                f.kind != RST_STREAM && f.kind != GOAWAY,
                "{}: {f:?} after the refusal",
                r.what
            );
            if f.stream == stream + 2 {
                if f.kind == HEADERS {
                    status = status.or_else(|| status_of(&f.payload));
                }
                if f.flags & END_STREAM != 0 && matches!(f.kind, HEADERS | DATA) {
                    break;
                }
            }
        }
        assert_eq!(status, Some(next_status), "{}: the next request", r.what);
        stream += 4;
    }
}

#[tokio::test]
async fn a_refusal_before_the_body_ends_its_stream_without_a_reset() {
    let ts = TestServer::start_with("  max_inflight_requests: 1\n").await;
    let mut raw = Raw::open(ts.addr, "admin", &[]).await;
    let mut refusals = vec![
        Refusal::new("405", "PUT", "/api/add_log", 405),
        Refusal {
            content_type: "text/plain",
            ..Refusal::new("415", "POST", "/api/get_user_logs", 415)
        },
        Refusal::new("404", "POST", "/api/no_such_path", 404),
    ];
    let next_body = json!({"username": "next"}).to_string();
    let next = (
        "/api/get_last_login",
        &[("content-type", "application/json")][..],
        next_body.as_bytes(),
        200,
    );
    refusals_end_their_streams_cleanly(&mut raw, &refusals, next).await;

    // 403: a client the ACL refuses for the path.
    let mut panel = Raw::open(ts.addr, "accounts-panel", &[]).await;
    refusals = vec![Refusal::new("403", "POST", "/api/add_log", 403)];
    refusals_end_their_streams_cleanly(&mut panel, &refusals, next).await;

    // 503: the one request slot held by a body that has not come yet.
    let mut holder = Raw::open(ts.addr, "sso-server", &[]).await;
    let held = log_body("held");
    holder
        .open_request(
            1,
            "POST",
            "/api/add_log",
            &[("content-type", "application/json")],
            held.len(),
        )
        .await;
    metric_settles(ts.addr, "usermetadb_inflight_requests", 1).await;
    let mut sso = Raw::open(ts.addr, "sso-server", &[]).await;
    let body = log_body("late");
    sso.open_request(
        1,
        "POST",
        "/api/add_log",
        &[("content-type", "application/json")],
        body.len(),
    )
    .await;
    sso.send(&frame(DATA, 0, 1, &body[..10])).await.unwrap();
    assert_eq!(sso.answer(1).await, Some(503));
    let seen = sso.send_body(1, &body[10..], true).await;
    assert!(!seen.iter().any(|f| f.kind == RST_STREAM), "{seen:?}");
    // The slot is given back; the same connection is served.
    holder.send_body(1, &held, true).await;
    assert_eq!(holder.answer(1).await, Some(200));
    sso.post(3, "/api/add_log", &log_body("after-503")).await;
    assert_eq!(sso.answer(3).await, Some(200));
    sso.post(5, "/api/add_log", &log_body("after-503-2")).await;
    assert_eq!(sso.answer(5).await, Some(200));

    // 413 within the drain bound (200 KB on a 64 KiB path): read through.
    let big = vec![b' '; 200_000];
    raw.open_request(
        101,
        "POST",
        "/api/get_user_devices",
        &[("content-type", "application/json")],
        big.len(),
    )
    .await;
    assert_eq!(raw.answer(101).await, Some(413));
    let seen = raw.send_body(101, &big, true).await;
    assert!(!seen.iter().any(|f| f.kind == RST_STREAM), "{seen:?}");
    raw.post(103, "/api/get_last_login", next_body.as_bytes())
        .await;
    assert_eq!(raw.answer(103).await, Some(200));

    // 413 beyond it: the answer whole, then at most a reset with NO_ERROR
    // once the bound is read, and the connection goes on.
    let huge = vec![b' '; 3 << 20];
    raw.open_request(
        105,
        "POST",
        "/api/get_user_devices",
        &[("content-type", "application/json")],
        64 << 20,
    )
    .await;
    assert_eq!(raw.answer(105).await, Some(413));
    let seen = raw.send_body(105, &huge, false).await;
    let reset = seen
        .iter()
        .find(|f| f.kind == RST_STREAM && f.stream == 105)
        .expect("a reset once the bound is read");
    assert_eq!(reset.error_code(), 0, "NO_ERROR, never CANCEL: {reset:?}");
    raw.post(107, "/api/get_last_login", next_body.as_bytes())
        .await;
    assert_eq!(raw.answer(107).await, Some(200));
    // Nothing refused was stored.
    assert_eq!(ts.counts()[1], 3, "held, after-503 and after-503-2 only");
}

#[tokio::test]
async fn a_stalled_upload_after_a_refusal_is_reset_with_no_error() {
    let ts = TestServer::start_with("  request_timeout: 1s\n").await;
    let mut raw = Raw::open(ts.addr, "admin", &[]).await;
    raw.open_request(
        1,
        "POST",
        "/api/get_user_logs",
        &[("content-type", "text/plain")],
        1000,
    )
    .await;
    raw.send(&frame(DATA, 0, 1, b"{")).await.unwrap();
    assert_eq!(raw.answer(1).await, Some(415));
    // The rest never comes: once the request timeout has passed, the stream
    // is reset, and only with NO_ERROR.
    let f = raw
        .until(|f| f.stream == 1 && f.kind == RST_STREAM)
        .await
        .expect("a reset");
    assert_eq!(f.error_code(), 0, "{f:?}");
}

#[tokio::test]
async fn a_refusal_on_the_agents_listener_ends_its_stream_without_a_reset() {
    let ts = crate::agents::start("  rate_limit: 1\n", "").await;
    let key = crate::agents::new_key(&ts, "acme", "hq");
    let agents = ts.agents.unwrap();
    let tls =
        || usermetadb::client::tls_config_for(&cert("ca.pem"), None, Protocols::Http2).unwrap();
    let mut raw = Raw::open_with(agents, tls(), &[]).await;
    let health = (
        "/api/health",
        &[
            ("content-type", "application/json"),
            ("x-api-key", key.as_str()),
        ][..],
        &b"{}"[..],
        200,
    );
    let refusals = [
        Refusal {
            key: Some("0".repeat(64)),
            ..Refusal::new("401 unknown key", "POST", "/api/log_event", 401)
        },
        Refusal::new("401 no key", "POST", "/api/log_event", 401),
        Refusal::new("404", "POST", "/api/nothing", 404),
        Refusal::new("405", "PUT", "/api/log_event", 405),
    ];
    refusals_end_their_streams_cleanly(&mut raw, &refusals, health).await;

    // 429: the key's one event a minute spent by a first event.
    let event =
        crate::agents::event("logon", "john", "PC-1", &crate::agents::agent_time(60)).to_string();
    let mut raw = Raw::open_with(agents, tls(), &[]).await;
    let fields = [
        ("content-type", "application/json"),
        ("x-api-key", key.as_str()),
    ];
    raw.open_request(1, "POST", "/api/log_event", &fields, event.len())
        .await;
    raw.send_body(1, event.as_bytes(), true).await;
    assert_eq!(raw.answer(1).await, Some(201));
    let refusals = [Refusal {
        key: Some(key.clone()),
        ..Refusal::new("429", "POST", "/api/log_event", 429)
    }];
    let mut raw = Raw::open_with(agents, tls(), &[]).await;
    refusals_end_their_streams_cleanly(&mut raw, &refusals, health).await;
}

/// `curl --http2` (libcurl with nghttp2, which reports a reset that comes
/// while it still has body to send as a failed transfer), `count` times in
/// one process (one connection, reused): each transfer's status, HTTP
/// version and exit code.
fn curl_many(
    addr: std::net::SocketAddr,
    cert_name: Option<&str>,
    path: &str,
    headers: &[String],
    body: &std::path::Path,
    count: usize,
) -> Vec<(u16, String, i32)> {
    let mut cfg = String::new();
    for i in 0..count {
        if i > 0 {
            cfg.push_str("next\n");
        }
        cfg.push_str(&format!(
            "url = \"https://localhost:{port}{path}\"\nresolve = \"localhost:{port}:127.0.0.1\"\n\
             http2\ncacert = \"{ca}\"\noutput = \"/dev/null\"\nrequest = \"POST\"\n\
             data-binary = \"@{body}\"\nheader = \"Expect:\"\n\
             write-out = \"%{{http_code}} %{{http_version}} %{{exitcode}}\\n\"\n",
            port = addr.port(),
            ca = cert("ca.pem").display(),
            body = body.display(),
        ));
        if let Some(name) = cert_name {
            cfg.push_str(&format!(
                "cert = \"{}\"\nkey = \"{}\"\n",
                cert(&format!("{name}.pem")).display(),
                cert(&format!("{name}.key")).display(),
            ));
        }
        for h in headers {
            cfg.push_str(&format!("header = \"{h}\"\n"));
        }
    }
    let cfg_path = body.with_extension(format!("curl-{}", path.replace('/', "_")));
    std::fs::write(&cfg_path, cfg).unwrap();
    let out = std::process::Command::new("curl")
        .args(["--silent", "--config"])
        .arg(&cfg_path)
        .output()
        .expect("curl (Debian's curl; .ci/run installs it)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let mut f = l.split(' ');
            (
                f.next().unwrap().parse().unwrap(),
                f.next().unwrap().to_owned(),
                f.next().unwrap().parse().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_over_http2_gets_every_refusal_while_the_server_is_busy() {
    let ts = crate::agents::start("", "").await;
    let dir = ts.dir.path().to_owned();
    // Bodies long enough that curl is still sending when the answer comes.
    let json_of = |len: usize| format!("{{\"username\":\"curl\",\"pad\":\"{}\"}}", "a".repeat(len));
    let within = dir.join("within.json");
    std::fs::write(&within, json_of(60_000)).unwrap();
    let over = dir.join("over.json");
    std::fs::write(&over, json_of(200_000)).unwrap();

    // Another client keeps the server writing meanwhile.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let busy = {
        let stop = stop.clone();
        let addr = ts.addr;
        tokio::spawn(async move {
            let mut c = client_at(addr, "sso-server").await;
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 100_000 {
                c.ok("/api/add_log", login(&format!("busy-{}", n % 50), "d", 60))
                    .await;
                n += 1;
            }
            n
        })
    };

    let api = ts.addr;
    let agents = ts.agents.unwrap();
    let json = "Content-Type: application/json".to_owned();
    // (refusal, listener, certificate, path, headers, body, status)
    let kinds = [
        (
            "415",
            api,
            Some("client-admin"),
            "/api/get_user_logs",
            "Content-Type: text/plain".to_owned(),
            &within,
            415,
        ),
        (
            "404",
            api,
            Some("client-admin"),
            "/api/no_such_path",
            json.clone(),
            &within,
            404,
        ),
        (
            "413",
            api,
            Some("client-admin"),
            "/api/get_user_devices",
            json.clone(),
            &over,
            413,
        ),
        (
            "403",
            api,
            Some("client-accounts-panel"),
            "/api/add_log",
            json.clone(),
            &within,
            403,
        ),
        (
            "401",
            agents,
            None,
            "/api/log_event",
            format!("X-API-Key: {}", "0".repeat(64)),
            &within,
            401,
        ),
    ];
    let mut runs = Vec::new();
    for (what, addr, cert_name, path, header, body, status) in kinds {
        // The content type, and the agent's key where there is one.
        let headers = if header.starts_with("Content-Type") {
            vec![header]
        } else {
            vec![json.clone(), header]
        };
        let (cert_name, path, body) = (
            cert_name.map(str::to_owned),
            path.to_owned(),
            body.to_owned(),
        );
        runs.push((
            what,
            status,
            tokio::task::spawn_blocking(move || {
                curl_many(addr, cert_name.as_deref(), &path, &headers, &body, 200)
            }),
        ));
    }
    let mut failures = Vec::new();
    for (what, status, run) in runs {
        let outcomes = run.await.unwrap();
        assert_eq!(outcomes.len(), 200, "{what}: {outcomes:?}");
        let transport_errors = outcomes.iter().filter(|(_, _, exit)| *exit != 0).count();
        let wrong = outcomes
            .iter()
            .filter(|(s, v, exit)| *exit == 0 && (*s != status || v != "2"))
            .count();
        if transport_errors > 0 || wrong > 0 {
            failures.push(format!(
                "{what}: {transport_errors} transport errors, {wrong} other answers, e.g. {:?}",
                outcomes
                    .iter()
                    .find(|(s, v, exit)| *exit != 0 || *s != status || v != "2")
            ));
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let busy = busy.await.unwrap();
    assert!(busy > 0, "the server was kept busy");
    assert!(failures.is_empty(), "{failures:#?}");
}
