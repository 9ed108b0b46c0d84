//! HTTP/2 client connections, served with the `h2` crate directly rather
//! than through hyper, so that steer owns each stream: it can reset one
//! whose client grants no flow-control window (`send_timeout`), and it
//! sends a response only as fast as the client's window allows, never
//! buffering beyond it (a stalled client holds at most one chunk per
//! stream).
//!
//! The connection's own task runs every stream: it accepts streams, drives
//! each (`proxy::handle`, then piping the response body) in a
//! `FuturesUnordered`, answers keep-alive pings, closes idle connections
//! and asks them to finish on shutdown. No task per stream: a spawn, a
//! wake-up across tasks and a copy of the stream's future per request are
//! what HAProxy and nginx do not pay either; a connection's streams share
//! one worker thread, as they do there.

use std::future::{Future, poll_fn};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::future::Either;
use futures_util::stream::FuturesUnordered;
use futures_util::task::AtomicWaker;
use futures_util::{FutureExt as _, StreamExt as _};
use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};
use http::{Request, Response, header};
use http_body::Body as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{oneshot, watch};
use tokio::time::{Interval, Sleep};

use super::conn::{self, OpenRef};
use super::h2_connect::{Handed, OnConnect};
use super::io::{Prefixed, Release, StallReport};
use super::{ClientResult, ConnCtx, Started};
use crate::body::Inbound;
use crate::boxed::pinned;
use crate::h2send::{self, Stop};
use crate::proxy::{self, ProxyBody};

/// A client connection after its handshake.
type Connection<I> = h2::server::Connection<Prefixed<I>, Bytes>;

/// Keep-alive: a PING after this long without one, and the connection is
/// closed when its PONG takes longer than `PONG_TIMEOUT` (a peer that
/// vanished without a FIN).
const PING_EVERY: Duration = Duration::from_secs(30);
const PONG_TIMEOUT: Duration = Duration::from_secs(20);
/// The receive windows steer grants: per stream and for the connection.
pub(super) const STREAM_WINDOW: u32 = 1024 * 1024;
pub(super) const CONNECTION_WINDOW: u32 = 2 * 1024 * 1024;
/// Streams a client may reset before steer has accepted them, and streams
/// steer resets for protocol errors, before the connection is closed
/// (rapid-reset protection, CVE-2023-44487).
pub(super) const MAX_PENDING_RESETS: usize = 100;
pub(super) const MAX_ERROR_RESETS: usize = 1024;
/// Rapid reset after steer has accepted the streams, which h2's limit
/// above (streams waiting to be accepted) does not see: a client that
/// resets a stream within `EARLY_RESET` of opening it, before its answer,
/// had steer and the upstream work for nothing (and steer's shared
/// upstream connection see the resets). A connection with
/// `MAX_EARLY_RESETS` such resets, more than half of its streams, is
/// asked to close (Envoy's "premature resets"), and so is one with
/// `CAP_EARLY_RESETS` whatever its other streams (nginx's
/// `keepalive_requests`), so that cheap streams steer answers itself do
/// not keep an attacker's ratio down. The close is graceful (GOAWAY
/// NO_ERROR): a client flagged by mistake loses no stream, and an
/// attacker must open a new connection.
const EARLY_RESET: Duration = Duration::from_secs(1);
const MAX_EARLY_RESETS: u32 = 100;
const CAP_EARLY_RESETS: u32 = 1000;
/// Bytes h2 may queue per stream beyond what the window allows.
pub(super) const SEND_BUFFER: usize = 64 * 1024;
/// How long the GOAWAY of a connection being closed gets to go out.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The HTTP/2 settings steer advertises to clients.
pub(super) fn builder(settings: &crate::config::ProxySettings) -> h2::server::Builder {
    let mut b = h2::server::Builder::new();
    b.max_concurrent_streams(settings.max_concurrent_streams)
        .max_header_list_size(
            u32::try_from(settings.max_header_bytes * super::PARSER_SLACK).unwrap_or(u32::MAX),
        )
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_pending_accept_reset_streams(MAX_PENDING_RESETS)
        .max_local_error_reset_streams(Some(MAX_ERROR_RESETS))
        .max_send_buffer_size(SEND_BUFFER)
        // Raw header literals: see `crate::client::h2conn`'s handshake.
        .huffman_encoding(false)
        // RFC 8441: WebSocket over HTTP/2 (see `h2_connect`).
        .enable_connect_protocol();
    b
}

/// When a response on this connection last got flow-control window: a
/// stream that gives up closes the connection if none did for
/// `send_timeout` (the connection's own window is stalled, or the client
/// reads nothing at all).
#[derive(Debug, Default)]
pub(super) struct Progress {
    last_ms: AtomicU64,
    give_up: tokio::sync::Notify,
}

impl Progress {
    pub(super) fn touch(&self) {
        self.last_ms.store(conn::now_ms(), Ordering::Relaxed);
    }

    /// After a stream stalled: closes the connection if none of its
    /// streams (WebSocket tunnels included) got window for `d`.
    pub(super) fn stalled(&self, d: Duration) {
        if self.none_for(d) {
            self.give_up.notify_one();
        }
    }

    fn none_for(&self, d: Duration) -> bool {
        let quiet = conn::now_ms().saturating_sub(self.last_ms.load(Ordering::Relaxed));
        quiet >= u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
    }
}

/// What each stream of a connection shares.
struct Streams {
    shared: Arc<crate::proxy::Shared>,
    tunnels: super::conn::TunnelCap,
    info: crate::proxy::ConnInfo,
    send_timeout: Duration,
    progress: Arc<Progress>,
    stalls: StallReport,
    /// Streams the client reset early (`EARLY_RESET`).
    early_resets: AtomicU32,
}

impl Streams {
    /// Whether the client's early resets make it a rapid-reset attacker,
    /// with `opened` streams opened so far.
    fn rapid_reset(&self, opened: u32) -> bool {
        let early = self.early_resets.load(Ordering::Relaxed);
        early >= CAP_EARLY_RESETS || (early >= MAX_EARLY_RESETS && early * 2 > opened)
    }
}

/// Starts HTTP/2 on a connection whose preface is in `buf` or still to
/// come: reads the client's first frame by the head deadline, sends
/// steer's SETTINGS, and returns what serves the connection, boxed apart
/// from the start so that the handshake's state (~1.2 KB) is not part of
/// what an idle connection keeps.
pub(super) async fn start<I>(mut io: I, mut buf: BytesMut, ctx: ConnCtx) -> ClientResult<Started>
where
    I: AsyncRead + AsyncWrite + Release + Unpin + Send + 'static,
{
    if !super::read_h2_start(&mut io, &mut buf, ctx.head_deadline).await? {
        return Ok(None);
    }
    // The preface is in `buf`, so this only sends our SETTINGS; bounded
    // all the same, by the write deadline underneath.
    let conn = (ctx.serving.h2)
        .handshake::<_, Bytes>(Prefixed::new(buf.freeze(), io))
        .await?;
    Ok(Some(pinned(|| serve(conn, ctx))))
}

/// Serves one HTTP/2 connection after its handshake. Its setup (the
/// shared stream state, the timers) runs when the future is made, which
/// `start` does just before the connection's task awaits it.
///
/// Not an `async fn` (`crate::boxed`): what the block captures is all it
/// keeps, where an `async fn` would keep `ctx` apart from what is taken
/// out of it.
#[allow(clippy::manual_async_fn)]
fn serve<I>(
    mut conn: Connection<I>,
    ctx: ConnCtx,
) -> impl Future<Output = ClientResult> + Send + use<I>
where
    I: AsyncRead + AsyncWrite + Release + Unpin + Send + 'static,
{
    let ConnCtx {
        shared,
        mut info,
        activity,
        serving,
        finish,
        stalls,
        ..
    } = ctx;
    info.hop_cache = Some(Arc::default());
    let streams = Streams {
        shared,
        tunnels: serving.tunnels.clone(),
        info,
        send_timeout: serving.send_timeout,
        progress: Arc::default(),
        stalls,
        early_resets: AtomicU32::new(0),
    };
    streams.progress.touch();
    let mut control = Control::new(conn.ping_pong(), finish, &streams.progress, serving.idle);
    let (conn_woken, control_woken) = (Woken::new(), Woken::new());
    if control.asked {
        ask_to_finish(&mut conn, &conn_woken);
    }
    async move {
        // The streams borrow `streams` and `activity`, which the block
        // captured: a block's locals are dropped before what it captured. The set is
        // made at the first stream and dropped when the connection goes
        // quiet: an idle connection would otherwise keep its stub task,
        // as large as a stream's future (~0.8 KiB).
        let mut running = None;
        let mut opened: u32 = 0;
        loop {
            let event = poll_fn(|cx| {
                // The timers and signals first: they are cheap, and they must
                // not wait for the streams and the socket to leave some of the
                // task's coop budget (a busy connection would put its GOAWAY
                // off for as long as the load lasts).
                if let Some(mut cx) = control_woken.take(cx)
                    && let Poll::Ready(event) = control.poll_event(&mut cx)
                {
                    control_woken.again();
                    return Poll::Ready(event);
                }
                loop {
                    // Streams first: the connection's poll below then writes
                    // out the frames they queued, in this same turn (queueing
                    // a frame wakes the connection).
                    if let Some(running) = running.as_mut() {
                        while let Poll::Ready(Some(())) =
                            FuturesUnordered::poll_next_unpin(running, cx)
                        {}
                    }
                    let Some(mut conn_cx) = conn_woken.take(cx) else {
                        break;
                    };
                    let Poll::Ready(accepted) = conn.poll_accept(&mut conn_cx) else {
                        break;
                    };
                    conn_woken.again();
                    // The loop ends when h2 has no stream to hand over and
                    // nothing to write (or the socket's coop budget is spent).
                    match accepted {
                        Some(Ok((req, respond))) => {
                            // A panic ends its own stream, as it ended its
                            // own task when each stream had one.
                            let open = activity.open_borrowed();
                            let served = AssertUnwindSafe(stream(req, respond, &streams, open))
                                .catch_unwind()
                                .map(|_| ());
                            running
                                .get_or_insert_with(FuturesUnordered::new)
                                .push(served);
                            opened = opened.saturating_add(1);
                            if !control.asked && streams.rapid_reset(opened) {
                                return Poll::Ready(Event::RapidReset);
                            }
                        }
                        Some(Err(e)) => return Poll::Ready(Event::Failed(e)),
                        None => return Poll::Ready(Event::Closed),
                    }
                }
                Poll::Pending
            })
            .await;
            match event {
                Event::Failed(e) => return Err(e.into()),
                // The connection is done (after a GOAWAY, or the client's
                // close): streams still in `running` have nobody to answer.
                Event::Closed => return Ok(()),
                Event::Finish => ask_to_finish(&mut conn, &conn_woken),
                Event::Tick => {
                    // No stream for a whole tick (and at least RELEASE_AFTER;
                    // each stream counts as open until its future ends): h2's
                    // read, write and Huffman buffers (8, 16 and 4 KiB, their
                    // touched pages resident), the room its stream slots grew
                    // to, the stream set and rustls's buffers (4 KiB) go back
                    // until the next read, frame or stream. Checked per tick,
                    // so a busy connection pays nothing per request.
                    let quiet = control.tick.period().max(super::RELEASE_AFTER);
                    if activity.idle_for(quiet) {
                        if running.as_ref().is_some_and(FuturesUnordered::is_empty) {
                            running = None;
                        }
                        let freed = conn.release_buffers();
                        let tls = conn.get_mut().release_buffers();
                        if freed.read || freed.write || freed.hpack || tls {
                            tracing::trace!(peer = %streams.info.peer, read = freed.read, write = freed.write,
                            hpack = freed.hpack, tls, "idle HTTP/2 connection: codec buffers released");
                        }
                    }
                    if activity.idle_for(serving.idle) {
                        control.asked = true;
                        tracing::debug!(peer = %streams.info.peer, "closing idle HTTP/2 connection");
                        ask_to_finish(&mut conn, &conn_woken);
                    }
                }
                Event::PongLate => {
                    tracing::debug!(peer = %streams.info.peer, "HTTP/2 keep-alive ping not answered; closing");
                    return Ok(());
                }
                Event::GiveUp => {
                    // What the streams hold (upstream requests) goes now.
                    drop(running);
                    return close_now(&mut conn, Reason::NO_ERROR).await;
                }
                Event::RapidReset => {
                    let early = streams.early_resets.load(Ordering::Relaxed);
                    tracing::warn!(peer = %streams.info.peer, streams = opened, early_resets = early,
                    "HTTP/2 client reset most of its streams right after opening them (rapid reset); asking it to close");
                    serving.rapid_resets.inc();
                    control.asked = true;
                    ask_to_finish(&mut conn, &conn_woken);
                }
            }
        }
    }
}

/// Ends the connection with a GOAWAY carrying `reason`, whatever its
/// streams are doing. Borrows the connection: moved in, it would add its
/// size to every connection's future, idle ones included.
async fn close_now<I>(conn: &mut h2::server::Connection<I, Bytes>, reason: Reason) -> ClientResult
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    conn.abrupt_shutdown(reason);
    // Lets the GOAWAY out; the write deadline bounds a client that reads
    // nothing, this bounds the rest.
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        while let Some(Ok(_)) = conn.accept().await {}
    })
    .await;
    Ok(())
}

/// Which part of a connection's task was woken: a turn of its loop polls
/// only those (as `FuturesUnordered` does for the streams). Polling the
/// connection costs a TLS read attempt and a pass over h2's state, and
/// every stream's progress wakes the task.
struct Woken {
    flag: Arc<WakeFlag>,
    waker: std::task::Waker,
}

struct WakeFlag {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl std::task::Wake for WakeFlag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// Asks the connection to finish (GOAWAY). Asked outside its own poll,
/// nothing would wake it for the GOAWAY to go out: `woken` marks it for
/// the next turn.
fn ask_to_finish<I>(conn: &mut h2::server::Connection<I, Bytes>, woken: &Woken)
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    conn.graceful_shutdown();
    woken.again();
}

impl Woken {
    /// Starts woken: the first turn polls everything.
    fn new() -> Woken {
        let flag = Arc::new(WakeFlag {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        let waker = std::task::Waker::from(flag.clone());
        Woken { flag, waker }
    }

    /// If this part was woken since its last poll: a context whose waker
    /// records the next wake-up. `None`: nothing to poll.
    fn take(&self, cx: &Context<'_>) -> Option<Context<'_>> {
        // Registered before the flag is read: a wake-up in between is seen.
        self.flag.task.register(cx.waker());
        self.flag
            .woken
            .swap(false, Ordering::AcqRel)
            .then(|| Context::from_waker(&self.waker))
    }

    /// After the part answered Ready: poll it again next turn, its
    /// wakers are not registered for what comes next.
    fn again(&self) {
        self.flag.woken.store(true, Ordering::Release);
    }
}

/// What wakes a connection's task, besides its streams.
enum Event {
    Failed(h2::Error),
    /// The connection ended after its last stream.
    Closed,
    /// Shutdown or a reload asks the connection to finish.
    Finish,
    /// Time to check whether the connection is idle.
    Tick,
    /// The keep-alive PING was not answered in time.
    PongLate,
    /// A stream stalled and no stream of the connection got window.
    GiveUp,
    /// The client resets its streams as soon as steer works on them.
    RapidReset,
}

/// The connection's timers and signals, kept across turns of its loop:
/// polling them costs little, creating and dropping them every turn (as a
/// `select!` over fresh futures does) cost ~5,000 instructions a request.
struct Control {
    /// The connection was asked to finish (shutdown or idle): no more
    /// idle checks or finish signals.
    asked: bool,
    finish: Pin<Box<dyn Future<Output = ()> + Send>>,
    give_up: Pin<Box<dyn Future<Output = ()> + Send>>,
    tick: Interval,
    keepalive: Interval,
    ping: Option<h2::PingPong>,
    pong_due: Option<Pin<Box<Sleep>>>,
}

impl Control {
    fn new(
        ping: Option<h2::PingPong>,
        mut finish: watch::Receiver<bool>,
        progress: &Arc<Progress>,
        idle: Duration,
    ) -> Control {
        let asked = *finish.borrow();
        let progress = progress.clone();
        let mut keepalive = tokio::time::interval(PING_EVERY);
        keepalive.reset();
        Control {
            asked,
            finish: Box::pin(async move {
                let _ = finish.wait_for(|f| *f).await;
            }),
            give_up: Box::pin(async move { progress.give_up.notified().await }),
            tick: super::idle_tick(idle),
            keepalive,
            ping,
            pong_due: None,
        }
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Event> {
        if self.give_up.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Event::GiveUp);
        }
        if !self.asked {
            if self.finish.as_mut().poll(cx).is_ready() {
                self.asked = true;
                return Poll::Ready(Event::Finish);
            }
            if self.tick.poll_tick(cx).is_ready() {
                return Poll::Ready(Event::Tick);
            }
        }
        self.poll_keepalive(cx)
    }

    /// A PING every `PING_EVERY`; its PONG must come within `PONG_TIMEOUT`.
    fn poll_keepalive(&mut self, cx: &mut Context<'_>) -> Poll<Event> {
        let Some(ping) = self.ping.as_mut() else {
            return Poll::Pending;
        };
        loop {
            if let Some(due) = self.pong_due.as_mut() {
                match ping.poll_pong(cx) {
                    Poll::Ready(Ok(_)) => self.pong_due = None,
                    Poll::Ready(Err(_)) => return Poll::Ready(Event::PongLate),
                    Poll::Pending if due.as_mut().poll(cx).is_ready() => {
                        return Poll::Ready(Event::PongLate);
                    }
                    Poll::Pending => return Poll::Pending,
                }
            }
            std::task::ready!(self.keepalive.poll_tick(cx));
            if ping.send_ping(h2::Ping::opaque()).is_ok() {
                self.pong_due = Some(Box::pin(tokio::time::sleep(PONG_TIMEOUT)));
            }
        }
    }
}

/// One stream: the request through `proxy::handle`, the response back.
/// A client reset (RST_STREAM) drops whatever is in progress, and with it
/// the upstream request or response.
///
/// Not an `async fn`: the request is taken apart and the request path's
/// future boxed before the stream's future exists, and `answer` sends the
/// response head, so the stream's future, one per stream in flight, has
/// no room for the request or its parts, nor for the response while its
/// body is piped (see `crate::boxed`). A tunnel's `hand_over` keeps the
/// response, in a state no larger than `pipe`'s. What runs before the
/// future exists cannot panic (`inbound`); a panic while it is polled
/// ends this stream alone (the `catch_unwind` where the connection pushes
/// it).
fn stream<'a>(
    req: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    streams: &'a Streams,
    open: OpenRef<'a>,
) -> impl Future<Output = ()> + 'a {
    let (req, connect) = inbound(req);
    // A WebSocket takes a place among the listener's connections for its
    // life (`conn::TunnelCap`), or gets 503.
    let place = connect
        .as_ref()
        .map(|_| streams.tunnels.admit(streams.info.peer.ip()));
    let handled = match &place {
        // Boxed: a response inline would add its size to every stream.
        Some(None) => Err(Box::new(proxy::error_response(
            &proxy::ProxyError::TooManyTunnels,
            &proxy::headers::request_id(req.headers()),
            proxy::Expects::of(&req),
        ))),
        // Boxed: the request path's future is kilobytes; inline, each
        // stream future would be that large from its start.
        _ => Ok(pinned(|| {
            proxy::handle(&streams.shared, &streams.info, req)
        })),
    };
    let opened = Instant::now();
    async move {
        let _open = open;
        let _place = place;
        // Freed when it has answered, not kept while the body or a tunnel
        // runs.
        let resp = match handled {
            Err(refused) => *refused,
            Ok(handled) => tokio::select! {
                // A stream reset before steer polled it starts no work.
                biased;
                _ = poll_fn(|cx| respond.poll_reset(cx)) => {
                    if opened.elapsed() < EARLY_RESET {
                        streams.early_resets.fetch_add(1, Ordering::Relaxed);
                    }
                    return;
                }
                resp = handled => resp,
            },
        };
        rest(answer(resp, &mut respond, connect), &mut respond, streams).await;
    }
}

/// The request as the request path takes it, and for an extended CONNECT
/// (RFC 8441 §4: it carries `:protocol`) the hand that gives the stream
/// to the tunnel if the request path answers 2xx. It runs outside the
/// stream's `catch_unwind`, so it must not panic: nothing here indexes or
/// parses without checking.
fn inbound(req: Request<RecvStream>) -> (Request<Inbound>, Option<oneshot::Sender<Handed>>) {
    let (mut parts, recv) = req.into_parts();
    let length = crate::body::content_length(&parts.headers);
    let connect = (parts.method == http::Method::CONNECT
        && parts.extensions.get::<h2::ext::Protocol>().is_some())
    .then(|| {
        let (on, hand) = OnConnect::new();
        parts.extensions.insert(on);
        hand
    });
    (
        Request::from_parts(parts, Inbound::h2(recv, length)),
        connect,
    )
}

/// What follows a response head.
enum Next {
    /// A 2xx to an extended CONNECT: the stream becomes a tunnel.
    Tunnel(Response<ProxyBody>, oneshot::Sender<Handed>),
    /// The head went out; its body follows.
    Body(ProxyBody, SendStream<Bytes>),
    /// The head went out with END_STREAM, or h2 refused it.
    Done,
}

/// What follows the head, as one future. `next` is taken whole here: a
/// `match` on it in the stream's future would keep room for all of it
/// (264 octets) while the body is sent, next to what the arms took out.
fn rest<'a>(
    next: Next,
    respond: &'a mut SendResponse<Bytes>,
    streams: &'a Streams,
) -> impl Future<Output = ()> + 'a {
    match next {
        Next::Tunnel(resp, hand) => Either::Left(hand_over(resp, respond, hand, streams)),
        Next::Body(body, send) => Either::Right(Either::Left(pipe(body, send, streams))),
        Next::Done => Either::Right(Either::Right(std::future::ready(()))),
    }
}

/// Sends the response head, unless the stream becomes a tunnel; a body
/// of known size gets its `content-length`.
fn answer(
    mut resp: Response<ProxyBody>,
    respond: &mut SendResponse<Bytes>,
    connect: Option<oneshot::Sender<Handed>>,
) -> Next {
    // RFC 9110 §6.6.1: a response forwarded without one, and steer's own,
    // get a Date (steer's HTTP/1.1 path and hyper add it too).
    if !resp.headers().contains_key(header::DATE) {
        resp.headers_mut()
            .insert(header::DATE, super::h1::date_value());
    }
    if let Some(hand) = connect
        && resp.status().is_success()
    {
        return Next::Tunnel(resp, hand);
    }
    let (mut head, body) = resp.into_parts();
    let eos = body.is_end_stream();
    if !eos
        && !head.headers.contains_key(header::CONTENT_LENGTH)
        && let Some(n) = body.size_hint().exact()
    {
        head.headers.insert(header::CONTENT_LENGTH, n.into());
    }
    match send_head(respond, head, eos) {
        Some(send) if !eos => Next::Body(body, send),
        _ => Next::Done,
    }
}

/// Sends a response head; a head h2 refuses (a header HTTP/2 forbids)
/// resets the stream.
fn send_head(
    respond: &mut SendResponse<Bytes>,
    head: http::response::Parts,
    eos: bool,
) -> Option<SendStream<Bytes>> {
    match respond.send_response(Response::from_parts(head, ()), eos) {
        Ok(send) => Some(send),
        Err(e) => {
            tracing::debug!(error = %e, "cannot send the response head");
            respond.send_reset(Reason::INTERNAL_ERROR);
            None
        }
    }
}

/// Sends the 200 of an extended CONNECT and gives the stream to the tunnel
/// the request path set up; returns when the tunnel is gone.
async fn hand_over(
    resp: Response<ProxyBody>,
    respond: &mut SendResponse<Bytes>,
    hand: oneshot::Sender<Handed>,
    streams: &Streams,
) {
    // RFC 9110 §9.3.6: no framing headers on a 2xx to CONNECT.
    let (mut head, _) = resp.into_parts();
    head.headers.remove(header::CONTENT_LENGTH);
    head.headers.remove(header::TRANSFER_ENCODING);
    let Some(send) = send_head(respond, head, false) else {
        return;
    };
    let (handed, ended) = Handed::new(send, streams.send_timeout, streams.progress.clone());
    if hand.send(handed).is_ok() {
        let _ = ended.await;
    }
}

/// Sends `body` on `send`, each chunk only within the window the client
/// grants (`h2send`). A stall past `send_timeout` resets the stream
/// (CANCEL) and, when no stream of the connection moved either, closes the
/// connection; the body, and with it the upstream side, is dropped before
/// either.
///
/// Not an `async fn` (`crate::boxed`): the future is part of every stream's
/// while its body is sent, and would hold the body and the stream twice.
#[allow(clippy::manual_async_fn)]
fn pipe<'a>(
    mut body: ProxyBody,
    mut send: SendStream<Bytes>,
    streams: &'a Streams,
) -> impl Future<Output = ()> + 'a {
    async move {
        let touch = || streams.progress.touch();
        let sent = h2send::send_body(
            &mut body,
            &mut send,
            Some(streams.send_timeout),
            touch,
            Some(Reason::INTERNAL_ERROR),
        )
        .await;
        drop(body);
        if sent == Err(Stop::Stalled) {
            send.send_reset(Reason::CANCEL);
            streams.stalls.stalled(
                "an HTTP/2 response got no flow-control window for send_timeout; stream reset",
            );
            streams.progress.stalled(streams.send_timeout);
        }
    }
}
