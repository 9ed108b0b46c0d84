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

impl Fault {
    fn set(&self, bit: u8) {
        self.0.fetch_or(bit, Ordering::Relaxed);
    }

    fn has(&self, bit: u8) -> bool {
        self.0.load(Ordering::Relaxed) & bit != 0
    }

    pub fn too_large(&self) -> bool {
        self.has(TOO_LARGE)
    }

    pub fn malformed(&self) -> bool {
        self.has(MALFORMED)
    }

    /// The body went out to its end (or there was none).
    pub fn sent_whole(&self) -> bool {
        self.has(WHOLE)
    }
}

#[derive(Debug)]
pub enum ReqBody {
    /// The client's body; `left` is what `max_body` still allows.
    Client {
        inner: Inbound,
        left: Option<u64>,
        fault: Arc<Fault>,
        /// Keep trailer fields whose names contain `_`.
        underscores: bool,
    },
    Full(Full<Bytes>),
}

#[derive(Debug, thiserror::Error)]
#[error("request body larger than the route's max_body")]
pub struct BodyTooLarge;

impl ReqBody {
    pub fn client(
        inner: Inbound,
        max: Option<u64>,
        fault: Arc<Fault>,
        underscores: bool,
    ) -> ReqBody {
        if inner.is_end_stream() {
            fault.set(WHOLE);
        }
        ReqBody::Client {
            inner,
            left: max,
            fault,
            underscores,
        }
    }

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
            ReqBody::Client {
                inner,
                left,
                fault,
                underscores,
            } => match Pin::new(&mut *inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let len = frame.data_ref().map_or(0, |d| d.len() as u64);
                    if let Some(left) = left {
                        if len > *left {
                            fault.set(TOO_LARGE);
                            return Poll::Ready(Some(Err(BodyTooLarge.into())));
                        }
                        *left -= len;
                    }
                    if inner.is_end_stream() {
                        fault.set(WHOLE);
                    }
                    let frame = match frame.into_trailers() {
                        Ok(mut trailers) => {
                            crate::proxy::headers::clean_trailers(&mut trailers, *underscores);
                            Frame::trailers(trailers)
                        }
                        Err(frame) => frame,
                    };
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(Some(Err(e))) => {
                    fault.set(MALFORMED);
                    Poll::Ready(Some(Err(e)))
                }
                Poll::Ready(None) => {
                    fault.set(WHOLE);
                    Poll::Ready(None)
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Client { inner, .. } => inner.is_end_stream(),
            ReqBody::Full(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Client { inner, .. } => inner.size_hint(),
            ReqBody::Full(b) => b.size_hint(),
        }
    }
}
