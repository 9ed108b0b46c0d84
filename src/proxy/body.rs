//! Response bodies: the upstream's streamed body (frames and trailers pass
//! through untouched) carrying the endpoint's in-flight guard and its
//! HTTP/1.1 connection until the body ends, or bytes steer made itself.
//! Also the tunnel behind a `101 Switching Protocols`.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Response;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::Finished;
use super::access::Access;
use crate::client::RespBody;
use crate::server::OnConnect;
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
/// drops and the HTTP/1.1 connection goes back to the endpoint's pool (if
/// the request went out whole); if it is dropped early (client went away)
/// the connection is closed instead, as its state is unknown.
///
/// An HTTP/2 upstream stream is read to its END_STREAM even when the
/// client side has stopped reading because `content-length` bytes have
/// arrived (hyper's HTTP/1.1 server drops the body then): resetting a
/// stream whose answer was complete makes servers with rapid-reset
/// protection end the whole connection. Only a stream the client left
/// early is reset (CANCEL), and counted.
///
/// A body that delivers no byte for `response_idle_timeout` while steer
/// waits on it is cut off: the client gets an error where the rest would
/// be (an HTTP/1.1 connection closed, an HTTP/2 stream reset), and so
/// does the upstream, as nginx's `proxy_read_timeout` does.
#[derive(Debug)]
pub struct UpstreamBody {
    /// `None` only while being dropped.
    inner: Option<RespBody>,
    finished: Option<Finished>,
    ended: bool,
    /// Bytes came since the silence timer last started.
    progressed: bool,
    idle: std::time::Duration,
    /// Armed at the first wait on the upstream: most bodies come whole
    /// with their head and never need one.
    silence: Option<Pin<Box<tokio::time::Sleep>>>,
    access: Option<Box<Access>>,
}

#[derive(Debug, thiserror::Error)]
#[error("the upstream sent no byte of its response body for {0:?}")]
struct BodyStalled(std::time::Duration);

/// How long a complete HTTP/2 answer's END_STREAM is waited for once the
/// client has all its bytes.
const END_STREAM_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

impl UpstreamBody {
    pub(super) fn new(
        inner: RespBody,
        finished: Finished,
        idle: std::time::Duration,
    ) -> UpstreamBody {
        UpstreamBody {
            inner: Some(inner),
            finished: Some(finished),
            ended: false,
            progressed: false,
            idle,
            silence: None,
            access: None,
        }
    }

    /// Whether the exchange, whose answer steer now waits on, has moved no
    /// byte for `idle`: none from the upstream, none of the client's
    /// upload. The timer moves at the first wait after progress: one clock
    /// read per wait, none per frame.
    fn went_silent(&mut self, cx: &mut Context<'_>) -> bool {
        let idle = self.idle;
        // An upload still on its way keeps the exchange alive too (a gRPC
        // client stream whose server has answered its head).
        let uploading = (self.finished.as_ref()).is_some_and(|f| f.request.take_moved());
        let progressed = std::mem::take(&mut self.progressed) | uploading;
        let silence = match &mut self.silence {
            Some(silence) => {
                if progressed {
                    silence.as_mut().reset(tokio::time::Instant::now() + idle);
                }
                silence
            }
            None => self.silence.insert(Box::pin(tokio::time::sleep(idle))),
        };
        silence.as_mut().poll(cx).is_ready()
    }

    /// Gives up on a silent body: the endpoint is let go (its HTTP/1.1
    /// connection closed, its HTTP/2 stream reset when `inner` drops).
    fn cut_off(&mut self) -> BoxError {
        self.ended = true;
        if let Some(finished) = self.finished.take() {
            let endpoint = finished.guard.endpoint();
            tracing::warn!(upstream = %endpoint.upstream, endpoint = %endpoint.addr,
                idle = ?self.idle, "upstream response body stalled (response_idle_timeout); cut off");
            finished.guard.count_body_timeout();
        }
        BodyStalled(self.idle).into()
    }

    fn finish(&mut self) {
        self.ended = true;
        if let Some(finished) = self.finished.take()
            && finished.request.sent_whole()
            && let Some(conn) = self.inner.as_mut().and_then(RespBody::take_conn)
        {
            finished.guard.endpoint().pool.put_h1(conn);
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(&mut *inner).poll_frame(cx);
        if let (Poll::Ready(Some(Ok(frame))), Some(access)) = (&polled, this.access.as_mut()) {
            access.bytes += frame.data_ref().map_or(0, |d| d.len() as u64);
        }
        match &polled {
            Poll::Ready(None) => this.finish(),
            Poll::Ready(Some(Err(_))) => {
                this.finished = None;
                this.ended = true;
            }
            Poll::Ready(Some(Ok(_))) if inner.is_end_stream() => this.finish(),
            Poll::Ready(Some(Ok(_))) => this.progressed = true,
            Poll::Pending if this.went_silent(cx) => {
                return Poll::Ready(Some(Err(this.cut_off())));
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(RespBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), RespBody::size_hint)
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        let Some(ended) = self.inner.as_ref().map(RespBody::is_end_stream) else {
            return;
        };
        // A body with nothing to read (HEAD, 204, 304, Content-Length: 0) may
        // never be polled; its connection is still clean.
        if self.ended || ended {
            self.finish();
            return;
        }
        let Some(inner) = self.inner.take() else {
            return;
        };
        let RespBody::H2(h2) = &inner else {
            return;
        };
        // A complete answer is read to its END_STREAM; a young stream's
        // answer is read until the stream may be reset without making the
        // upstream end the connection (`MIN_STREAM_AGE`).
        let now = tokio::time::Instant::now();
        let until = match inner.size_hint().exact() == Some(0) {
            true => now + END_STREAM_WAIT,
            false => h2.young_until().unwrap_or(now),
        };
        let finished = self.finished.take();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) if until > now => {
                runtime.spawn(await_end_stream(inner, finished, until));
            }
            _ => {
                if let Some(f) = &finished {
                    f.guard.count_stream_reset();
                }
            }
        }
    }
}

/// Reads an HTTP/2 answer's remaining frames (its END_STREAM, maybe
/// trailers) so that the stream closes without a reset; resets it (and
/// counts it) if that takes until `until` or more than a stream window
/// (`client::read_out`).
async fn await_end_stream(
    mut inner: RespBody,
    finished: Option<Finished>,
    until: tokio::time::Instant,
) {
    let ended = tokio::time::timeout_at(until, crate::client::read_out(&mut inner))
        .await
        .unwrap_or(false);
    if !ended && let Some(f) = &finished {
        f.guard.count_stream_reset();
    }
}

/// Upgraded connections (WebSocket tunnels) open in this process; a
/// shutdown waits for them, whichever table they started on.
static TUNNELS: AtomicUsize = AtomicUsize::new(0);

pub fn open_tunnels() -> usize {
    TUNNELS.load(Ordering::Relaxed)
}

/// The client's side of an upgrade: an HTTP/1.1 connection hyper hands
/// over after the 101, or an HTTP/2 stream after the 200 to its extended
/// CONNECT (RFC 8441).
pub(super) enum ClientUpgrade {
    H1(OnUpgrade),
    H2(OnConnect, h2::RecvStream),
}

/// Answers the client's upgrade with the upstream's response (a 101, or
/// for HTTP/2 the 200 `respond` made of it) and splices the client's side
/// with the upstream's upgraded connection; the in-flight guard lives as
/// long as the tunnel.
pub(super) fn tunnel(
    mut upstream_resp: Response<RespBody>,
    client: ClientUpgrade,
    guard: InFlight,
    idle: std::time::Duration,
) -> Response<ProxyBody> {
    let upstream = hyper::upgrade::on(&mut upstream_resp);
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
        let Ok(up) = upstream.await else {
            tracing::debug!("the upstream's upgrade did not complete");
            return;
        };
        let up = TokioIo::new(up);
        let ended = match client {
            ClientUpgrade::H1(on) => match on.await {
                Ok(down) => super::tunnel::splice(TokioIo::new(down), up, idle).await,
                Err(e) => Err(std::io::Error::other(e)),
            },
            ClientUpgrade::H2(on, recv) => match on.tunnel(recv).await {
                Ok(down) => super::tunnel::splice(down, up, idle).await,
                Err(e) => Err(e),
            },
        };
        if let Err(e) = ended {
            tracing::debug!(error = %e, "upgraded connection ended");
        }
        drop(guard);
    });
    let (parts, _) = upstream_resp.into_parts();
    Response::from_parts(parts, ProxyBody::empty())
}
