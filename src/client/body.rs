//! Request bodies sent upstream: the client's body streamed as it comes
//! (optionally capped by a route's `max_body`, its trailers cleaned like
//! request headers), or bytes steer holds (probes, replayed heads). When
//! the client's side fails (too large, or a malformed body), `Fault` says
//! so, so that the proxy blames the client (413/400) and not the upstream;
//! it also says whether the body was sent whole, which an HTTP/1.1
//! upstream connection needs before it may carry another request.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};

use super::replay::ReplayBody;
use crate::body::Inbound;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;

pub use crate::BoxError;

/// What happened to the client's side of a streamed body (bit flags).
#[derive(Debug, Default)]
pub struct Fault(AtomicU8);

const TOO_LARGE: u8 = 1;
const MALFORMED: u8 = 2;
const WHOLE: u8 = 4;
/// The body's last poll found no bytes from the client.
const WAITING: u8 = 8;
/// Bytes came from the client since `take_moved` last looked.
const MOVED: u8 = 16;

impl Fault {
    fn set(&self, bit: u8) {
        self.0.fetch_or(bit, Ordering::Relaxed);
    }

    fn has(&self, bit: u8) -> bool {
        self.0.load(Ordering::Relaxed) & bit != 0
    }

    fn clear(&self, bits: u8) {
        self.0.fetch_and(!bits, Ordering::Relaxed);
    }

    pub fn too_large(&self) -> bool {
        self.has(TOO_LARGE)
    }

    pub fn malformed(&self) -> bool {
        self.has(MALFORMED)
    }

    /// Whether steer, when it last asked, was waiting for the client's
    /// body bytes (and not for the upstream to take them): a deadline that
    /// passes now is the client's doing.
    pub fn waits_for_client(&self) -> bool {
        self.has(WAITING)
    }

    /// The body went out to its end (or there was none).
    pub fn sent_whole(&self) -> bool {
        self.has(WHOLE)
    }

    pub(super) fn mark_whole(&self) {
        self.set(WHOLE);
    }

    /// Whether the client's body moved since the last call: a stream
    /// whose upload goes on is not idle (`response_idle_timeout`).
    pub fn take_moved(&self) -> bool {
        self.has(MOVED) && self.0.fetch_and(!MOVED, Ordering::Relaxed) & MOVED != 0
    }

    /// A new attempt starts sending the body again: what the last one sent
    /// and waited on no longer holds.
    pub(super) fn restart(&self) {
        self.clear(WHOLE | WAITING);
    }
}

/// The client's body as read for one request: `max_body`, the fault flags
/// and trailer hygiene are applied here, once, whichever attempt reads it.
#[derive(Debug)]
pub struct Source {
    inner: Inbound,
    /// What `max_body` still allows.
    left: Option<u64>,
    fault: Arc<Fault>,
    /// Keep trailer fields whose names contain `_`.
    underscores: bool,
}

impl Source {
    pub fn new(inner: Inbound, max: Option<u64>, fault: Arc<Fault>, underscores: bool) -> Source {
        if inner.is_end_stream() {
            fault.set(WHOLE);
        }
        Source {
            inner,
            left: max,
            fault,
            underscores,
        }
    }

    pub(super) fn fault(&self) -> &Fault {
        &self.fault
    }

    pub(super) fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Pending => self.fault.set(WAITING),
            Poll::Ready(frame) => {
                if matches!(frame, Some(Ok(_))) {
                    self.fault.set(MOVED);
                }
                if self.fault.has(WAITING) {
                    self.fault.clear(WAITING);
                }
            }
        }
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                let len = frame.data_ref().map_or(0, |d| d.len() as u64);
                if let Some(left) = &mut self.left {
                    if len > *left {
                        self.fault.set(TOO_LARGE);
                        return Poll::Ready(Some(Err(BodyTooLarge.into())));
                    }
                    *left -= len;
                }
                if self.inner.is_end_stream() {
                    self.fault.set(WHOLE);
                }
                let frame = match frame.into_trailers() {
                    Ok(mut trailers) => {
                        crate::proxy::headers::clean_trailers(&mut trailers, self.underscores);
                        Frame::trailers(trailers)
                    }
                    Err(frame) => frame,
                };
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                self.fault.set(MALFORMED);
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                self.fault.set(WHOLE);
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    pub(super) fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    pub(super) fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[derive(Debug)]
pub enum ReqBody {
    /// The client's body, read once.
    Client(Source),
    /// The client's body, kept for a resend (see `replay`).
    Replay(ReplayBody),
    Full(Full<Bytes>),
}

#[derive(Debug, thiserror::Error)]
#[error("request body larger than the route's max_body")]
pub struct BodyTooLarge;

impl ReqBody {
    pub fn full(bytes: Bytes) -> ReqBody {
        ReqBody::Full(Full::new(bytes))
    }

    pub fn empty() -> ReqBody {
        ReqBody::full(Bytes::new())
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ReqBody::Full(b) => Pin::new(b).poll_frame(cx).map_err(|never| match never {}),
            ReqBody::Client(source) => source.poll(cx),
            ReqBody::Replay(body) => body.poll(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Client(source) => source.is_end_stream(),
            ReqBody::Replay(body) => body.is_end_stream(),
            ReqBody::Full(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Client(source) => source.size_hint(),
            ReqBody::Replay(body) => body.size_hint(),
            ReqBody::Full(b) => b.size_hint(),
        }
    }
}
