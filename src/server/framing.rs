//! Requests framed two ways: a request with both `Content-Length` and
//! `Transfer-Encoding` is one a proxy in front may have framed differently
//! (request smuggling). The HTTP library frames it by `Transfer-Encoding`
//! and drops `Content-Length` before the handler sees the request, so the
//! connection's bytes are followed here, request by request, as they are
//! read: the index of the first such request on the connection is noted, and
//! the handler refuses that request with 400 and closes the connection, as
//! nginx does, before anything of it is processed.
//!
//! Following the framing also gives the header timeout its meaning: the time
//! from a request head's first byte to its end. (The HTTP library's own
//! header timeout also runs while a keep-alive connection waits between
//! requests, which would close idle connections long before the idle
//! timeout.)
//!
//! Only framing is followed (heads, `Content-Length` bodies, chunked bodies);
//! whatever this reader cannot follow, it stops following, and the library's
//! own checks (which refuse any malformed framing) stand alone.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// Largest request head followed (the server's own buffer is 64 KiB).
const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 128;

/// What the handler reads: which request of the connection, if any, carried
/// both framings.
#[derive(Default)]
pub struct Ambiguity {
    /// 1 + the index of the first ambiguous request; 0 for none.
    first: AtomicU64,
    /// Requests handed to the handler so far.
    served: AtomicU64,
}

impl Ambiguity {
    /// Called once per request by the handler, in order: whether this one
    /// carried both framings.
    pub fn next_is_ambiguous(&self) -> bool {
        let n = self.served.fetch_add(1, Ordering::AcqRel) + 1;
        self.first.load(Ordering::Acquire) == n
    }
}

enum Chunk {
    /// Reading the size line; the size so far, and whether an extension began.
    Size(u64, bool),
    /// The size line's LF.
    SizeLf(u64),
    Data(u64),
    /// The CR LF after a chunk's data.
    DataCrlf(u8),
    /// Trailer lines after the last chunk; the current line's length.
    Trailer(usize),
}

enum State {
    Head(Vec<u8>),
    Body(u64),
    Chunked(Chunk),
    /// No longer followed.
    Done,
}

/// Follows one connection's request framing.
pub struct Tracker {
    state: State,
    heads: u64,
    out: Arc<Ambiguity>,
}

impl Tracker {
    pub fn new(out: Arc<Ambiguity>) -> Tracker {
        Tracker {
            state: State::Head(Vec::new()),
            heads: 0,
            out,
        }
    }

    /// Whether part of a request head has arrived, and not its end.
    pub fn in_head(&self) -> bool {
        matches!(&self.state, State::Head(h) if !h.is_empty())
    }

    /// Takes the next bytes read from the connection.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match &mut self.state {
                State::Done => return,
                State::Head(head) => {
                    if head.is_empty() {
                        // Empty lines before a request line are skipped.
                        let skip = data.iter().take_while(|b| **b == b'\r' || **b == b'\n');
                        let n = skip.count();
                        data = &data[n..];
                        if data.is_empty() {
                            return;
                        }
                    }
                    let from = head.len().saturating_sub(3);
                    let take = data.len().min(MAX_HEAD + 1 - head.len());
                    head.extend_from_slice(&data[..take]);
                    match find(&head[from..], b"\r\n\r\n") {
                        Some(at) => {
                            let end = from + at + 4;
                            let rest = head.len() - end;
                            data = &data[take - rest..];
                            let head = std::mem::take(head);
                            self.state = self.after_head(&head[..end]);
                        }
                        None if head.len() > MAX_HEAD => self.state = State::Done,
                        None => return,
                    }
                }
                State::Body(left) => {
                    let n = (*left).min(data.len() as u64) as usize;
                    *left -= n as u64;
                    data = &data[n..];
                    if *left == 0 {
                        self.state = State::Head(Vec::new());
                    }
                }
                State::Chunked(chunk) => {
                    let (used, next) = step(chunk, data);
                    data = &data[used..];
                    match next {
                        Some(true) => self.state = State::Head(Vec::new()),
                        Some(false) => self.state = State::Done,
                        None => {}
                    }
                }
            }
        }
    }

    fn after_head(&mut self, head: &[u8]) -> State {
        self.heads += 1;
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        if !matches!(req.parse(head), Ok(httparse::Status::Complete(_))) {
            return State::Done;
        }
        let mut length: Option<u64> = None;
        let mut chunked = None;
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                let Some(n) = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse().ok())
                else {
                    return State::Done;
                };
                length = Some(n);
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                let last = h.value.rsplit(|b| *b == b',').next().unwrap_or(b"");
                chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            }
        }
        match (length, chunked) {
            (Some(_), Some(_)) => {
                let _ = self.out.first.compare_exchange(
                    0,
                    self.heads,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
                // The connection ends with this request.
                State::Done
            }
            (None, Some(true)) => State::Chunked(Chunk::Size(0, false)),
            (None, Some(false)) => State::Done,
            (Some(0), None) | (None, None) => State::Head(Vec::new()),
            (Some(n), None) => State::Body(n),
        }
    }
}

/// Advances a chunked body over `data`: the bytes used, and `Some(true)` at
/// its end, `Some(false)` when it cannot be followed.
fn step(chunk: &mut Chunk, data: &[u8]) -> (usize, Option<bool>) {
    let mut i = 0;
    while i < data.len() {
        let b = data[i];
        match chunk {
            Chunk::Size(n, ext) => {
                match b {
                    b'\r' => *chunk = Chunk::SizeLf(*n),
                    b';' => *ext = true,
                    _ if *ext => {}
                    _ => match (b as char).to_digit(16) {
                        Some(d) if *n >> 59 == 0 => *n = *n * 16 + u64::from(d),
                        _ => return (i, Some(false)),
                    },
                }
                i += 1;
            }
            Chunk::SizeLf(n) => {
                if b != b'\n' {
                    return (i, Some(false));
                }
                *chunk = if *n == 0 {
                    Chunk::Trailer(0)
                } else {
                    Chunk::Data(*n)
                };
                i += 1;
            }
            Chunk::Data(left) => {
                let n = (*left).min((data.len() - i) as u64);
                *left -= n;
                i += n as usize;
                if *left == 0 {
                    *chunk = Chunk::DataCrlf(0);
                }
            }
            Chunk::DataCrlf(seen) => {
                if b != [b'\r', b'\n'][*seen as usize] {
                    return (i, Some(false));
                }
                *seen += 1;
                i += 1;
                if *seen == 2 {
                    *chunk = Chunk::Size(0, false);
                }
            }
            Chunk::Trailer(len) => {
                i += 1;
                match b {
                    b'\n' if *len == 0 => return (i, Some(true)),
                    b'\n' => *len = 0,
                    b'\r' => {}
                    _ => *len += 1,
                }
            }
        }
    }
    (i, None)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A connection whose incoming bytes go through a [`Tracker`], and which
/// ends when a request head takes longer than `header_timeout` to arrive.
pub struct Followed<S> {
    inner: S,
    tracker: Tracker,
    header_timeout: Duration,
    /// While a head is arriving: when it must have arrived.
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<S> Followed<S> {
    pub fn new(inner: S, out: Arc<Ambiguity>, header_timeout: Duration) -> Self {
        Followed {
            inner,
            tracker: Tracker::new(out),
            header_timeout,
            deadline: None,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Followed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        match r {
            Poll::Ready(Ok(())) => {
                this.tracker.feed(&buf.filled()[before..]);
                if !this.tracker.in_head() {
                    this.deadline = None;
                } else if this.deadline.is_none() {
                    // A deadline from the head's first byte, not reset by
                    // each byte.
                    this.deadline = Some(Box::pin(tokio::time::sleep(this.header_timeout)));
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                let expired = match this.deadline.as_mut() {
                    Some(d) => d.as_mut().poll(cx).is_ready(),
                    None => false,
                };
                if expired {
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "request head not received in time",
                    )))
                } else {
                    Poll::Pending
                }
            }
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Followed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `bytes` in pieces of `step` bytes; the index (1-based) of the
    /// ambiguous request found, or 0.
    fn ambiguous(bytes: &[u8], step: usize) -> u64 {
        let out = Arc::new(Ambiguity::default());
        let mut t = Tracker::new(out.clone());
        for piece in bytes.chunks(step) {
            t.feed(piece);
        }
        out.first.load(Ordering::Acquire)
    }

    const CL: &str = "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
    const CHUNKED: &str =
        "POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nT: v\r\n\r\n";
    const BOTH: &str =
        "POST /a HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    const BOTH_REVERSED: &str =
        "POST /a HTTP/1.1\r\ntransfer-encoding: gzip, chunked\r\ncontent-length: 3\r\n\r\n0\r\n\r\n";

    #[test]
    fn pipelined_requests_are_followed_to_the_ambiguous_one() {
        for step in [1, 2, 3, 7, 1000] {
            assert_eq!(ambiguous(CL.as_bytes(), step), 0);
            assert_eq!(ambiguous(format!("{CL}{CHUNKED}{CL}").as_bytes(), step), 0);
            assert_eq!(ambiguous(BOTH.as_bytes(), step), 1, "step {step}");
            assert_eq!(
                ambiguous(format!("{CL}{CHUNKED}{BOTH}").as_bytes(), step),
                3
            );
            assert_eq!(
                ambiguous(format!("\r\n{CHUNKED}{BOTH_REVERSED}").as_bytes(), step),
                2
            );
            // A body that looks like a head is a body.
            let tricky = format!(
                "POST /a HTTP/1.1\r\nContent-Length: {}\r\n\r\n{BOTH}{CL}",
                BOTH.len()
            );
            assert_eq!(ambiguous(tricky.as_bytes(), step), 0);
        }
    }

    #[test]
    fn the_handler_learns_which_request_it_was() {
        let out = Arc::new(Ambiguity::default());
        let mut t = Tracker::new(out.clone());
        t.feed(format!("{CL}{BOTH}").as_bytes());
        assert!(!out.next_is_ambiguous());
        assert!(out.next_is_ambiguous());
        assert!(!out.next_is_ambiguous());
    }

    #[test]
    fn what_cannot_be_followed_is_let_go() {
        assert_eq!(
            ambiguous(b"POST /a HTTP/1.1\r\nContent-Length: x\r\n\r\n", 4),
            0
        );
        let bad_chunk =
            format!("POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{BOTH}");
        assert_eq!(ambiguous(bad_chunk.as_bytes(), 3), 0);
        assert_eq!(ambiguous(&vec![b'a'; MAX_HEAD + 10], 1000), 0);
    }
}
