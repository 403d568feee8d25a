//! A request's body, read at most once by a handler, and what becomes of
//! the part a handler leaves unread.
//!
//! A refusal is often decided before the body is read (a wrong method,
//! media type, certificate or key, an unknown path, an overload, a body
//! announced larger than the limit). What the client is still sending must
//! not turn that answer into a transport error:
//!
//! - **HTTP/1.1.** The connection carries the next request only once this
//!   one's body is off the wire; a client that was told nothing reuses it
//!   and its next request fails without an answer. As Go's server does, an
//!   unread body of a known length within the path's limit is read and
//!   dropped after the answer has gone out; the answer to a request whose
//!   body cannot be (larger than the limit, of unknown length, awaiting
//!   `100 Continue`, or broken off half-read) says `Connection: close`.
//! - **HTTP/2.** A stream whose answer is complete while its body is not
//!   would be reset (`RST_STREAM` with `NO_ERROR`, as RFC 9113 §8.1
//!   allows), and libcurl, with everything built on it, reports a reset
//!   that comes while it still has body to send as a failed transfer. So
//!   the unread body is read and dropped after the answer, up to
//!   [`drain_bound`] bytes and within the request timeout: the client
//!   finishes its upload and sees the stream end with no reset. Past the
//!   bound, or when the client stalls, the body is dropped, and the stream
//!   is reset with `NO_ERROR`, never `CANCEL`, and only once the answer is
//!   complete (the stream's sending half keeps it open until then). The
//!   window granted meanwhile is returned only as bytes are read, so a
//!   client that keeps sending costs no more than the bound.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body as _, Incoming};
use hyper::header::{HeaderValue, CONNECTION, CONTENT_LENGTH, EXPECT};
use hyper::http::request::Parts;
use hyper::{Response, Version};

use super::handler::Reject;

/// The least an HTTP/2 body left unread is read for before its stream is
/// reset.
pub const DRAIN_MIN_BYTES: usize = 1 << 20;

/// How much of an HTTP/2 body left unread is read and dropped after the
/// answer: the path's body limit, and at least [`DRAIN_MIN_BYTES`].
pub fn drain_bound(limit: usize) -> u64 {
    limit.max(DRAIN_MIN_BYTES) as u64
}

pub struct RequestBody {
    body: Option<Incoming>,
    content_length: Option<HeaderValue>,
    expects_continue: bool,
    /// Read in part, then abandoned: an HTTP/1.1 connection's framing is
    /// lost.
    broken: bool,
    /// When the request arrived: what is left of its body is read within
    /// the request timeout from then, not from the refusal.
    arrived: Instant,
    /// Body bytes read so far, counted against the drain's bound.
    received: u64,
}

impl RequestBody {
    pub fn new(parts: &Parts, body: Incoming) -> RequestBody {
        RequestBody {
            body: Some(body),
            content_length: parts.headers.get(CONTENT_LENGTH).cloned(),
            expects_continue: parts
                .headers
                .get(EXPECT)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue")),
            broken: false,
            arrived: Instant::now(),
            received: 0,
        }
    }

    /// The whole body, at most `limit` bytes, within `timeout`. On a
    /// refusal the body is kept, so that [`settle`](Self::settle) can read
    /// what is left of it.
    pub async fn read(&mut self, limit: usize, timeout: Duration) -> Result<Bytes, Reject> {
        if let Some(len) = &self.content_length {
            let len: u64 = len
                .to_str()
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| Reject::BadBody("invalid Content-Length".into()))?;
            if len > limit as u64 {
                // Left unread: `settle` deals with it.
                return Err(Reject::TooLarge);
            }
        }
        let Some(body) = self.body.as_mut() else {
            return Err(Reject::BadBody("request body already read".into()));
        };
        let read =
            match tokio::time::timeout(timeout, collect(body, limit, &mut self.received)).await {
                Err(_) => Err(Reject::BodyTimeout),
                Ok(read) => read,
            };
        match &read {
            Ok(_) => self.body = None,
            Err(_) => self.broken = true,
        }
        read
    }

    /// Deals with what is left of the body once `resp` is decided; `limit`
    /// is the path's body limit (see the module's documentation).
    pub fn settle(
        self,
        version: Version,
        resp: &mut Response<Full<Bytes>>,
        limit: usize,
        timeout: Duration,
    ) {
        let Some(body) = self.body else { return };
        if body.is_end_stream() {
            return;
        }
        let deadline = self.arrived + timeout;
        if version == Version::HTTP_2 {
            let bound = drain_bound(limit).saturating_sub(self.received);
            tokio::spawn(drain(body, bound, deadline));
            return;
        }
        let close = match body.size_hint().exact() {
            _ if self.broken => true,
            // The client waits for a `100 Continue` it will not get.
            _ if self.expects_continue => true,
            Some(left) if left <= limit as u64 => {
                tokio::spawn(drain(body, left, deadline));
                false
            }
            _ => true,
        };
        if close {
            resp.headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
    }
}

/// Reads `body` to its end, keeping at most `limit` bytes: a single frame
/// is kept as it came, without a copy.
async fn collect(body: &mut Incoming, limit: usize, received: &mut u64) -> Result<Bytes, Reject> {
    let mut first: Option<Bytes> = None;
    let mut more: Option<BytesMut> = None;
    let mut len = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| Reject::BadBody("request body could not be read".into()))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        len += data.len();
        *received += data.len() as u64;
        if len > limit {
            return Err(Reject::TooLarge);
        }
        match (&mut first, &mut more) {
            (None, _) => first = Some(data),
            (Some(f), None) => {
                let mut buf = BytesMut::with_capacity(len);
                buf.extend_from_slice(f);
                buf.extend_from_slice(&data);
                more = Some(buf);
            }
            (Some(_), Some(buf)) => buf.extend_from_slice(&data),
        }
    }
    Ok(match (first, more) {
        (_, Some(buf)) => buf.freeze(),
        (Some(f), None) => f,
        (None, None) => Bytes::new(),
    })
}

/// Reads a body to its end and drops it, at most `bound` more bytes, until
/// `deadline`. Dropped unfinished, an HTTP/1.1 connection ends and an
/// HTTP/2 stream is reset with `NO_ERROR`.
async fn drain(mut body: Incoming, bound: u64, deadline: Instant) {
    let mut read = 0u64;
    let _ = tokio::time::timeout_at(deadline.into(), async {
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => {
                    if let Some(data) = frame.data_ref() {
                        read += data.len() as u64;
                        if read > bound {
                            break;
                        }
                    }
                }
                Err(_) => break,
            }
        }
    })
    .await;
}
