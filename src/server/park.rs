//! HTTP/1.1 connections (plain TCP and TLS) that hold no buffers while
//! idle.
//!
//! `serve` owns the connection: it waits for a request's first bytes
//! (`wait_for_request`, holding the socket, the connection's context and
//! the wait alone), then serves what was read on steer's own HTTP/1.1
//! path (`h1::serve`, in a box of its own, freed when every byte read is
//! answered), and waits again.
//!
//! A request the own path hands over (a body that did not arrive whole
//! with its head, an upgrade, a head hyper must answer; see `h1`) starts
//! a round: a hyper HTTP/1.1 connection over the socket, with the bytes
//! read so far first. The round ends when the connection has had no
//! request open for `PARK_AFTER` (1 s, or half of `header_read_timeout`
//! if that is shorter): steer asks hyper to finish, swallows hyper's
//! shutdown of the socket, and takes the socket back with any bytes hyper
//! had read (`into_parts`); the own path goes on from there. hyper keeps
//! an 8 KiB read buffer, its write buffer and connection state for as
//! long as a round lives.
//!
//! Only a hyper connection that is idle ends at once when asked; one in
//! the middle of an exchange (a head arriving just then, a response still
//! flushing) finishes it with keep-alive off, and steer then closes the
//! socket instead of parking it. A round whose request asked for an
//! upgrade that was not granted is not parked at all: hyper would hand the
//! socket to that upgrade.
//!
//! The caller may have read the first bytes already (to tell HTTP/1.1
//! from an h2c preface); they are where the own path starts.
//!
//! Over TLS the parked connection keeps its rustls session (keys and
//! buffers, as nginx keeps OpenSSL's), and the wait for the next request
//! first takes any plaintext rustls has already decrypted: the socket
//! would not turn readable for bytes that already came.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::io::{Prefixed, Release};
use super::{ClientIo, ClientResult, ConnCtx, conn, h1};
use crate::boxed::pinned;
use crate::proxy;

/// How long a connection has no request open before its round ends and
/// it gives its buffers back (at most half of `header_read_timeout`,
/// checked every half of that, but not more often than `MIN_CHECK`).
const PARK_AFTER: Duration = Duration::from_secs(1);
const MIN_CHECK: Duration = Duration::from_millis(20);

/// What happened in one round.
#[derive(Debug, Default)]
struct Exchange(AtomicU8);

/// An answer was `101`: hyper hands the socket to the upgrade.
const UPGRADED: u8 = 1;
/// A request asked for an upgrade that was not granted (see
/// `round_request`).
const STALE_UPGRADE: u8 = 2;

impl Exchange {
    fn set(&self, bit: u8) {
        self.0.fetch_or(bit, Ordering::Relaxed);
    }

    fn has(&self, bit: u8) -> bool {
        self.0.load(Ordering::Relaxed) & bit != 0
    }
}

/// A client stream that can be parked: its socket, to wait on, and what
/// it holds already read.
pub(super) trait Parkable:
    AsyncRead + AsyncWrite + Release + Unpin + Send + 'static
{
    fn socket(&self) -> &TcpStream;

    /// Bytes already received and decoded but not yet read (TLS
    /// plaintext); `None` when the peer has closed.
    fn take_buffered(&mut self) -> Option<BytesMut>;

    /// While a request is answered: whether the client has closed (or
    /// reset) its connection, or has sent more. Consumes nothing a later
    /// read would need.
    fn poll_peer(&mut self, cx: &mut Context<'_>) -> Poll<Peer>;
}

/// What a client did while its request was answered.
pub(super) enum Peer {
    Closed,
    /// Sent more: the next request (pipelined).
    Sent,
}

impl Parkable for ClientIo {
    fn socket(&self) -> &TcpStream {
        self.get_ref()
    }

    fn take_buffered(&mut self) -> Option<BytesMut> {
        Some(BytesMut::new())
    }

    fn poll_peer(&mut self, cx: &mut Context<'_>) -> Poll<Peer> {
        let mut byte = [0u8; 1];
        let mut peeked = ReadBuf::new(&mut byte);
        match std::task::ready!(self.get_ref().poll_peek(cx, &mut peeked)) {
            Ok(1..) => Poll::Ready(Peer::Sent),
            Ok(0) | Err(_) => Poll::Ready(Peer::Closed),
        }
    }
}

impl<P: Parkable> Parkable for Box<P> {
    fn socket(&self) -> &TcpStream {
        (**self).socket()
    }

    fn take_buffered(&mut self) -> Option<BytesMut> {
        (**self).take_buffered()
    }

    fn poll_peer(&mut self, cx: &mut Context<'_>) -> Poll<Peer> {
        (**self).poll_peer(cx)
    }
}

/// `TcpStream::try_read` as `io::Read`, for rustls's `read_tls`.
struct TryRead<'a>(&'a TcpStream);

impl io::Read for TryRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

impl Parkable for tokio_rustls::server::TlsStream<ClientIo> {
    fn socket(&self) -> &TcpStream {
        self.get_ref().0.get_ref()
    }

    fn take_buffered(&mut self) -> Option<BytesMut> {
        let mut taken = BytesMut::new();
        let mut chunk = [0u8; 1024];
        loop {
            match io::Read::read(&mut self.get_mut().1.reader(), &mut chunk) {
                Ok(0) => return None,
                Ok(n) => taken.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Some(taken),
                Err(_) => return None,
            }
        }
    }

    /// Through rustls: a client that sends `close_notify` before its FIN
    /// leaves bytes on the socket that a peek would take for more data.
    fn poll_peer(&mut self, cx: &mut Context<'_>) -> Poll<Peer> {
        let (io, session) = self.get_mut();
        let socket = io.get_ref();
        loop {
            match session.process_new_packets() {
                Err(_) => return Poll::Ready(Peer::Closed),
                Ok(state) if state.plaintext_bytes_to_read() > 0 => return Poll::Ready(Peer::Sent),
                Ok(state) if state.peer_has_closed() => return Poll::Ready(Peer::Closed),
                Ok(_) => {}
            }
            if !session.wants_read() {
                // Its buffer is full of what comes next.
                return Poll::Ready(Peer::Sent);
            }
            if std::task::ready!(socket.poll_read_ready(cx)).is_err() {
                return Poll::Ready(Peer::Closed);
            }
            match session.read_tls(&mut TryRead(socket)) {
                Ok(0) => return Poll::Ready(Peer::Closed),
                Ok(_) => {}
                // Readiness was stale; the next poll waits for more.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return Poll::Ready(Peer::Closed),
            }
        }
    }
}

/// The socket as hyper sees it during a round: first the bytes steer's
/// own path read but did not serve, then the stream. hyper's shutdown at the end
/// of a round is swallowed (steer decides whether the connection goes on);
/// after an upgrade it is real, as the tunnel's end needs it.
struct RoundIo<S> {
    io: Prefixed<S>,
    exchange: Arc<Exchange>,
}

impl<S: Parkable> AsyncRead for RoundIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<S: Parkable> AsyncWrite for RoundIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.exchange.has(UPGRADED) {
            Pin::new(&mut this.io).poll_shutdown(cx)
        } else {
            Poll::Ready(Ok(()))
        }
    }
}

/// Why the wait for the next request ended.
enum Woken {
    Readable,
    Close,
    /// Quiet for `quiet`: time to give the stream's buffers back.
    Quiet,
}

/// Waits, holding nothing but the socket, until it is readable; `Close`
/// when the listener finishes, the connection has been idle for `idle`
/// (checked at `tick`); `Quiet` at a tick that finds it quiet for
/// `quiet`, if given.
async fn wait_readable(
    socket: &TcpStream,
    tick: &mut tokio::time::Interval,
    activity: &conn::Activity,
    (idle, quiet): (Duration, Option<Duration>),
    finish: &mut watch::Receiver<bool>,
) -> io::Result<Woken> {
    if super::asked_to_finish(finish) {
        return Ok(Woken::Close);
    }
    loop {
        tokio::select! {
            biased;
            // The socket's own waker slot, not a waiter in this future:
            // nothing else reads it while the connection is parked.
            ready = std::future::poll_fn(|cx| socket.poll_read_ready(cx)) => {
                return ready.map(|()| Woken::Readable);
            }
            changed = finish.changed() => {
                if changed.is_err() || *finish.borrow() {
                    return Ok(Woken::Close);
                }
            }
            _ = std::future::poll_fn(|cx| tick.poll_tick(cx)) => {
                if activity.idle_for(idle) {
                    return Ok(Woken::Close);
                }
                if quiet.is_some_and(|quiet| activity.idle_for(quiet)) {
                    return Ok(Woken::Quiet);
                }
            }
        }
    }
}

/// Waits, holding no buffer, for the next request's first bytes and reads
/// them; `None` when the connection is to close: the client left, it has
/// been idle for `idle_timeout`, steer is finishing, or `deadline` (the
/// connection's head deadline, before its first request) passed.
async fn wait_for_request<S: Parkable>(
    stream: &mut S,
    deadline: Option<tokio::time::Instant>,
    ctx: &mut ConnCtx,
    tick: &mut tokio::time::Interval,
) -> io::Result<Option<BytesMut>> {
    // Over TLS, rustls's buffers go back once the connection has been
    // quiet for a whole tick (and at least RELEASE_AFTER), as h2's do: a
    // busy connection pays nothing per request.
    let mut quiet = Some(tick.period().max(super::RELEASE_AFTER));
    loop {
        match stream.take_buffered() {
            None => return Ok(None),
            Some(plain) if !plain.is_empty() => return Ok(Some(plain)),
            Some(_) => {}
        }
        let (idle, finish) = (ctx.serving.idle, &mut ctx.finish);
        let wait = wait_readable(stream.socket(), tick, &ctx.activity, (idle, quiet), finish);
        let woken = match deadline {
            // Boxed: only a wait before a connection's first request has
            // a deadline, and its timer is then no part of what every
            // parked connection holds.
            Some(by) => Box::pin(tokio::time::timeout_at(by, wait))
                .await
                .unwrap_or(Ok(Woken::Close))?,
            None => wait.await?,
        };
        match woken {
            Woken::Readable => {}
            Woken::Close => return Ok(None),
            Woken::Quiet => {
                quiet = None;
                if stream.release_buffers() {
                    tracing::trace!(peer = %ctx.info.peer, "idle connection: TLS buffers released");
                }
                continue;
            }
        }
        let mut buf = BytesMut::with_capacity(h1::READ_BUF);
        let mut read = std::pin::pin!(tokio::io::AsyncReadExt::read_buf(stream, &mut buf));
        match std::future::poll_fn(|cx| Poll::Ready(read.as_mut().poll(cx))).await {
            Poll::Ready(Ok(0)) => return Ok(None),
            Poll::Ready(Ok(_)) => {}
            Poll::Ready(Err(e)) => return Err(e),
            // A wake-up without bytes (readiness left from the last
            // read, a TLS record without data): wait again, bufferless.
            Poll::Pending => continue,
        }
        return Ok(Some(buf));
    }
}

/// Serves an HTTP/1.1 connection, `pending` read already (nothing when
/// TLS's ALPN said HTTP/1.1): steer's own path (`h1`) for as long as it
/// can, a hyper round for a request it hands over, then back (see the
/// module docs).
///
/// Both are boxed, one allocation per request (or run of pipelined
/// requests) or round: between requests the task holds only the socket,
/// the connection's context and the wait, not room for the request
/// path's state.
///
/// Not an `async fn` (`crate::boxed`): that would keep a second copy of
/// the stream and the context for the connection's life.
#[allow(clippy::manual_async_fn)]
pub(super) fn serve<S: Parkable>(
    mut stream: S,
    mut pending: BytesMut,
    mut ctx: ConnCtx,
) -> impl Future<Output = ClientResult> + Send {
    async move {
        let mut tick = super::idle_tick(ctx.serving.idle);
        let mut deadline = Some(ctx.head_deadline);
        loop {
            if pending.is_empty() {
                match wait_for_request(&mut stream, deadline, &mut ctx, &mut tick).await? {
                    Some(read) => pending = read,
                    None => {
                        let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
                        return Ok(());
                    }
                }
            }
            let taken = std::mem::take(&mut pending);
            let served = pinned(|| h1::serve(&mut stream, taken, &mut deadline, &mut ctx));
            let handed = match served.await? {
                h1::Next::Idle => continue,
                h1::Next::Closed => return Ok(()),
                h1::Next::Hyper { leftover } => leftover,
            };
            let (parked, unread) = match pinned(|| round(stream, handed, &ctx)).await? {
                Round::Closed => return Ok(()),
                Round::Parked { stream, leftover } => (stream, leftover),
            };
            stream = parked;
            pending = unread;
            // A head begun in the round gets a whole header_read_timeout
            // again, from its first byte that is not an empty line
            // (RFC 9112 §2.2), as h1::serve starts every head's deadline:
            // each round served a request, so a trickling client is still
            // cut off on steer's own path.
            deadline = None;
        }
    }
}

/// How a hyper round ended.
enum Round<S> {
    Closed,
    /// Idle, with the stream and the bytes hyper had read but not used.
    Parked {
        stream: S,
        leftover: BytesMut,
    },
}

/// One hyper round over `stream`, `leftover` read first; it ends when it
/// has had no request open for `park_after` (then the connection is
/// handed back) or when hyper ends it.
async fn round<S: Parkable>(stream: S, leftover: Bytes, ctx: &ConnCtx) -> ClientResult<Round<S>> {
    let ConnCtx {
        shared,
        info,
        activity,
        serving,
        finish,
        ..
    } = ctx;
    let mut finish = finish.clone();
    let (idle, header_read_timeout) = (serving.idle, serving.header_read_timeout);
    // hyper's header timer runs while a round sits idle: park well before.
    let park_after = PARK_AFTER.min(header_read_timeout / 2);
    let exchange = Arc::new(Exchange::default());
    let service = {
        let (shared, info) = (shared.clone(), info.clone());
        let (activity, exchange) = (activity.clone(), exchange.clone());
        service_fn(move |req: Request<Incoming>| {
            let open = activity.open();
            round_request(shared.clone(), info.clone(), exchange.clone(), req, open)
        })
    };
    let io = RoundIo {
        io: Prefixed::new(leftover, stream),
        exchange: exchange.clone(),
    };
    // Inline: the round itself is boxed (`serve`).
    let mut conn = serving
        .http1
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    let mut check = tokio::time::interval((park_after / 2).min(idle).max(MIN_CHECK));
    check.reset();
    // A new round starts because bytes came: it gets a full `park_after`
    // before it can be parked again.
    activity.touch();
    let mut parking = false;
    let mut closing = false;
    let result = loop {
        tokio::select! {
            result = &mut conn => break result,
            changed = finish.changed(), if !closing => {
                if changed.is_err() || *finish.borrow() {
                    closing = true;
                    Pin::new(&mut conn).graceful_shutdown();
                }
            }
            _ = check.tick(), if !closing => {
                if activity.idle_for(idle) {
                    closing = true;
                    Pin::new(&mut conn).graceful_shutdown();
                } else if activity.idle_for(park_after) && !exchange.has(STALE_UPGRADE) {
                    // Only an idle hyper connection ends at once; one in
                    // the middle of an exchange (a head arriving, a
                    // response still flushing) finishes it with
                    // keep-alive off, and is then closed, not parked.
                    Pin::new(&mut conn).graceful_shutdown();
                    let polled = std::future::poll_fn(|cx| {
                        Poll::Ready(Pin::new(&mut conn).poll(cx))
                    })
                    .await;
                    match polled {
                        Poll::Ready(result) => {
                            parking = true;
                            break result;
                        }
                        Poll::Pending => closing = true,
                    }
                }
            }
        }
    };
    tracing::trace!(?result, parking, closing, "round ended");
    result?;
    let go_on = parking && !*finish.borrow();
    take_back(conn.into_parts(), go_on).await
}

/// One request of a round through the proxy; notes in `exchange` what the
/// round's end must know.
async fn round_request(
    shared: Arc<proxy::Shared>,
    info: proxy::ConnInfo,
    exchange: Arc<Exchange>,
    req: Request<Incoming>,
    open: conn::OpenGuard,
) -> Result<Response<conn::Guarded>, std::convert::Infallible> {
    // hyper readies an upgrade for every HTTP/1.1 request with an
    // `Upgrade` header and keeps it when the answer is not 101; ending
    // such a round hands the socket to nobody.
    let asks_upgrade = req
        .extensions()
        .get::<hyper::upgrade::OnUpgrade>()
        .is_some();
    let resp = std::pin::pin!(proxy::handle(&shared, &info, req.map(Into::into))).await;
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        exchange.set(UPGRADED);
    } else if asks_upgrade {
        exchange.set(STALE_UPGRADE);
    }
    Ok(resp.map(|b| conn::Guarded::new(b, open)))
}

/// The end of a round: the socket back with the bytes hyper read but did
/// not use, when `go_on` (steer parked an idle round); otherwise closed.
async fn take_back<S: Parkable, F>(
    parts: Option<http1::Parts<TokioIo<RoundIo<S>>, F>>,
    go_on: bool,
) -> ClientResult<Round<S>> {
    let Some(parts) = parts else {
        // Upgraded: the tunnel owns the socket now (or, for an upgrade
        // that was not granted, hyper dropped it at the round's end).
        return Ok(Round::Closed);
    };
    let http1::Parts { io, read_buf, .. } = parts;
    let (unread, mut stream) = io.into_inner().io.into_parts();
    // Only a round that ended because steer parked it may go on: hyper
    // ends one by itself when the client or the answer closes.
    if !go_on {
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
        return Ok(Round::Closed);
    }
    // Copied out, even when empty: a Bytes of hyper's read buffer pins
    // the whole 8 KiB allocation.
    let mut leftover = BytesMut::with_capacity(read_buf.len() + unread.len());
    leftover.extend_from_slice(&read_buf);
    leftover.extend_from_slice(&unread);
    tracing::trace!(leftover = leftover.len(), "round parked");
    Ok(Round::Parked { stream, leftover })
}

/// The HTTP/1.1 builder of a round, with the listener's settings.
pub(super) fn http1_builder(settings: &crate::config::ProxySettings) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .max_buf_size(super::parser_buf_size(settings))
        .keep_alive(true);
    if let Some(n) = super::parser_max_headers(settings) {
        builder.max_headers(n);
    }
    builder
}
