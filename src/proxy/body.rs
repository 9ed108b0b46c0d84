//! Response bodies: the upstream's streamed body (frames and trailers pass
//! through untouched) carrying the endpoint's in-flight guard and its
//! HTTP/1.1 connection until the body ends, or bytes steer made itself.
//! Also the tunnel behind a `101 Switching Protocols`.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Response;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::access::Access;
use crate::client::H1Sender;
use crate::upstream::InFlight;

pub use crate::BoxError;

/// The body of every response steer sends.
#[derive(Debug)]
pub enum ProxyBody {
    Upstream(UpstreamBody),
    Full(Full<Bytes>),
}

impl ProxyBody {
    pub fn full(bytes: Bytes) -> ProxyBody {
        ProxyBody::Full(Full::new(bytes))
    }

    pub fn empty() -> ProxyBody {
        ProxyBody::Full(Full::new(Bytes::new()))
    }

    pub(super) fn upstream(body: UpstreamBody) -> ProxyBody {
        ProxyBody::Upstream(body)
    }

    /// Hands the access-log record to the body: an upstream body writes it
    /// when it ends; steer's own bodies are complete, so it is written now.
    pub(super) fn attach_access(&mut self, mut access: Box<Access>) {
        match self {
            ProxyBody::Upstream(b) => b.access = Some(access),
            ProxyBody::Full(b) => {
                access.bytes = b.size_hint().exact().unwrap_or(0);
                drop(access);
            }
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Upstream(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            ProxyBody::Full(b) => Pin::new(b).poll_frame(cx).map_err(|never| match never {}),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream(b) => b.is_end_stream(),
            ProxyBody::Full(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream(b) => b.size_hint(),
            ProxyBody::Full(b) => b.size_hint(),
        }
    }
}

/// An upstream response body. When it ends, the endpoint's in-flight count
/// drops and the HTTP/1.1 connection goes back to the endpoint's pool; if it
/// is dropped early (client went away) the connection is closed instead, as
/// its state is unknown.
#[derive(Debug)]
pub struct UpstreamBody {
    inner: Incoming,
    guard: Option<InFlight>,
    h1: Option<H1Sender>,
    access: Option<Box<Access>>,
}

impl UpstreamBody {
    pub(super) fn new(inner: Incoming, guard: InFlight, h1: Option<H1Sender>) -> UpstreamBody {
        UpstreamBody {
            inner,
            guard: Some(guard),
            h1,
            access: None,
        }
    }

    fn finish(&mut self) {
        if let Some(guard) = self.guard.take() {
            if let Some(conn) = self.h1.take() {
                guard.endpoint().pool.put_h1(conn);
            }
            drop(guard);
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let (Poll::Ready(Some(Ok(frame))), Some(access)) = (&polled, this.access.as_mut()) {
            access.bytes += frame.data_ref().map_or(0, |d| d.len() as u64);
        }
        match &polled {
            Poll::Ready(None) => this.finish(),
            Poll::Ready(Some(Err(_))) => {
                this.h1 = None;
                this.guard = None;
            }
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.finish(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // A body with nothing to read (HEAD, 204, 304, Content-Length: 0) may
        // never be polled; its connection is still clean.
        if self.inner.is_end_stream() {
            self.finish();
        }
    }
}

/// Upgraded connections (WebSocket tunnels) open in this process; a
/// shutdown waits for them, whichever table they started on.
static TUNNELS: AtomicUsize = AtomicUsize::new(0);

pub fn open_tunnels() -> usize {
    TUNNELS.load(Ordering::Relaxed)
}

/// Answers the client's upgrade with the upstream's 101 and splices the two
/// upgraded connections together; the in-flight guard lives as long as the
/// tunnel.
pub(super) fn tunnel(
    mut upstream_resp: Response<Incoming>,
    client: Option<OnUpgrade>,
    guard: InFlight,
    idle: std::time::Duration,
) -> Response<ProxyBody> {
    let upstream = hyper::upgrade::on(&mut upstream_resp);
    if let Some(client) = client {
        TUNNELS.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            // Counted until the tunnel ends, whichever way.
            struct Open;
            impl Drop for Open {
                fn drop(&mut self) {
                    TUNNELS.fetch_sub(1, Ordering::Relaxed);
                }
            }
            let _open = Open;
            let (Ok(up), Ok(down)) = (upstream.await, client.await) else {
                tracing::debug!("upgrade did not complete on one side");
                return;
            };
            if let Err(e) = super::tunnel::splice(TokioIo::new(down), TokioIo::new(up), idle).await
            {
                tracing::debug!(error = %e, "upgraded connection ended");
            }
            drop(guard);
        });
    }
    let (parts, _) = upstream_resp.into_parts();
    Response::from_parts(parts, ProxyBody::empty())
}
