//! A request's body, read at most once by a handler, and what becomes of
//! the part a handler leaves unread.
//!
//! An HTTP/1.1 connection carries the next request only once this one's
//! body is off the wire. A refusal decided before the body is read (a
//! wrong method, media type, certificate or key) would otherwise end the
//! connection under a client that was told nothing: it reuses the
//! connection for its next request, which then fails without an answer.
//! As Go's server does, a small unread body is read and dropped after the
//! answer has gone out, and the answer to a request whose body cannot be
//! (larger than the limit, of unknown length, awaiting `100 Continue`, or
//! broken off half-read) says `Connection: close`. On HTTP/2 an unread
//! body only ends its own stream, so nothing is needed there.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body as _, Incoming};
use hyper::header::{HeaderValue, CONNECTION, CONTENT_LENGTH, EXPECT};
use hyper::http::request::Parts;
use hyper::{Response, Version};

use super::handler::Reject;

pub struct RequestBody {
    body: Option<Incoming>,
    content_length: Option<HeaderValue>,
    expects_continue: bool,
    /// Read in part, then abandoned: the connection's framing is lost.
    broken: bool,
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
        }
    }

    /// The whole body, at most `limit` bytes, within `timeout`.
    pub async fn read(&mut self, limit: usize, timeout: Duration) -> Result<Bytes, Reject> {
        if let Some(len) = &self.content_length {
            let len: u64 = len
                .to_str()
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| Reject::BadBody("invalid Content-Length".into()))?;
            if len > limit as u64 {
                // Left unread: `settle` closes the connection.
                return Err(Reject::TooLarge);
            }
        }
        let Some(body) = self.body.take() else {
            return Err(Reject::BadBody("request body already read".into()));
        };
        let body = Limited::new(body, limit);
        let read = match tokio::time::timeout(timeout, body.collect()).await {
            Err(_) => Err(Reject::BodyTimeout),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(Reject::TooLarge),
            Ok(Err(_)) => Err(Reject::BadBody("request body could not be read".into())),
            Ok(Ok(collected)) => Ok(collected.to_bytes()),
        };
        self.broken = read.is_err();
        read
    }

    /// Deals with what is left of the body once `resp` is decided: on
    /// HTTP/1.x, up to `limit` unread bytes are read and dropped after the
    /// answer (within `timeout`); beyond that, the answer closes the
    /// connection.
    pub fn settle(
        self,
        version: Version,
        resp: &mut Response<Full<Bytes>>,
        limit: usize,
        timeout: Duration,
    ) {
        if version != Version::HTTP_11 && version != Version::HTTP_10 {
            return;
        }
        let close = match self.body {
            _ if self.broken => true,
            None => false,
            Some(body) if body.is_end_stream() => false,
            // The client waits for a `100 Continue` it will not get.
            Some(_) if self.expects_continue => true,
            Some(body) => match body.size_hint().exact() {
                Some(left) if left <= limit as u64 => {
                    tokio::spawn(drain(body, timeout));
                    false
                }
                _ => true,
            },
        };
        if close {
            resp.headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
    }
}

/// Reads a body to its end and drops it. Dropped unfinished (the client
/// stalls past `timeout`), the connection ends.
async fn drain(mut body: Incoming, timeout: Duration) {
    let _ = tokio::time::timeout(timeout, async {
        while let Some(frame) = body.frame().await {
            if frame.is_err() {
                break;
            }
        }
    })
    .await;
}
