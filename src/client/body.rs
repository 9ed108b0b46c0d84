//! Request bodies sent upstream: the client's body streamed as it comes
//! (optionally capped by a route's `max_body`), or bytes steer holds
//! (probes, replayed heads). When the client's side fails (too large, or a
//! malformed body), `Fault` says so, so that the proxy blames the client
//! (413/400) and not the upstream.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};

use crate::body::Inbound;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;

pub use crate::BoxError;

/// What went wrong on the client's side of a streamed body (0: nothing).
#[derive(Debug, Default)]
pub struct Fault(AtomicU8);

const TOO_LARGE: u8 = 1;
const MALFORMED: u8 = 2;

impl Fault {
    pub fn too_large(&self) -> bool {
        self.0.load(Ordering::Relaxed) == TOO_LARGE
    }

    pub fn malformed(&self) -> bool {
        self.0.load(Ordering::Relaxed) == MALFORMED
    }
}

#[derive(Debug)]
pub enum ReqBody {
    /// The client's body; `left` is what `max_body` still allows.
    Client {
        inner: Inbound,
        left: Option<u64>,
        fault: Arc<Fault>,
    },
    Full(Full<Bytes>),
}

#[derive(Debug, thiserror::Error)]
#[error("request body larger than the route's max_body")]
pub struct BodyTooLarge;

impl ReqBody {
    pub fn client(inner: Inbound, max: Option<u64>, fault: Arc<Fault>) -> ReqBody {
        ReqBody::Client {
            inner,
            left: max,
            fault,
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
            ReqBody::Client { inner, left, fault } => match Pin::new(inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let len = frame.data_ref().map_or(0, |d| d.len() as u64);
                    if let Some(left) = left {
                        if len > *left {
                            fault.0.store(TOO_LARGE, Ordering::Relaxed);
                            return Poll::Ready(Some(Err(BodyTooLarge.into())));
                        }
                        *left -= len;
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(Some(Err(e))) => {
                    fault.0.store(MALFORMED, Ordering::Relaxed);
                    Poll::Ready(Some(Err(e)))
                }
                other => other,
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
