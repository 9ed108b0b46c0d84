//! steer's HTTP/2 connection to an upstream (h2c, or https when ALPN says
//! h2), on the `h2` crate directly.
//!
//! hyper's HTTP/2 client puts a dispatch channel and a task between the
//! caller and `h2`: each request crosses the channel, and its response
//! comes back through a spawned future (about 4 % of a proxied h2c request
//! in callgrind, BENCHMARKS.md). Here the caller's own task opens the
//! stream and awaits the response head; only a request with a body gets a
//! task of its own, which sends the body within the upstream's window.
//! The connection itself runs in one task that also keeps it alive with
//! PINGs, and checks it with one before a request goes out on it after a
//! quiet spell (`QUIET`).

use std::future::poll_fn;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use h2::client::SendRequest;
use h2::{RecvStream, SendStream};
use http::{HeaderMap, Request, Response, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt as _;
use tokio::io::{AsyncRead, AsyncWrite};

use super::{ClientError, Failed, ReqBody};

/// Receive windows. Data a client has not taken yet keeps its share of the
/// shared connection's window until `send_timeout` resets that client's
/// stream: with 256 KiB per stream and 32 MiB per connection, it takes 128
/// stalled streams at once (more than one client connection may open) to
/// stop the connection for everyone, and steer holds at most 32 MiB per
/// upstream connection. 256 KiB per round trip is ample for an upstream in
/// the same network.
const STREAM_WINDOW: u32 = 256 * 1024;
const CONN_WINDOW: u32 = 32 * 1024 * 1024;
/// The other bounds hyper's client had by default (hyper 1.x
/// `proto::h2::client::Config`): the largest response header list, what
/// may wait in steer for the upstream's window, and streams opened before
/// the upstream's SETTINGS arrive (on an endpoint's first connection; the
/// next ones take the limit the others learned: `client::Pool`).
const MAX_HEADER_LIST: u32 = 16 * 1024;
const MAX_FRAME: u32 = 16 * 1024;
const MAX_SEND_BUFFER: usize = 1024 * 1024;
pub(crate) const INITIAL_STREAMS: usize = 100;
const MAX_ERROR_RESETS: usize = 1024;
/// How old an upstream stream must be before steer resets it. Servers
/// with rapid-reset protection end the connection of a client that resets
/// streams right after opening them (h2's and hyper's count resets of
/// streams they have not accepted yet, Envoy's those within 1 s of their
/// start), and every client of steer shares that connection: a stream
/// whose client left earlier is read to its end instead, for what remains
/// of this, and reset only then.
const MIN_STREAM_AGE: Duration = Duration::from_secs(1);

/// While requests are open, a PING this often; no PONG within
/// `PONG_TIMEOUT` closes the connection. gRPC servers (grpc-go, gRPC
/// C-core) take a PING as a strike when the one before came less than
/// 5 min earlier and they sent no data since, and close the connection
/// on the third ("too_many_pings"): at 20 s, a quiet gRPC server stream,
/// and every other stream on the shared connection, died after 80 s. So
/// a little over 5 min. A dead connection's streams are cut before that
/// by `request_timeout` (heads) and `response_idle_timeout` (bodies), and
/// a new request checks a quiet connection first (`QUIET`).
const PING_EVERY: Duration = Duration::from_secs(310);
const PONG_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection that has sent steer nothing (no response head, no PONG)
/// for this long is checked with a PING before a request goes out on it,
/// and the request waits for the PONG (up to `connect_timeout`, what a new
/// connection would get for its round trip). An idle connection can die
/// unseen: a NAT or a balancer on the way forgets it, the upstream's node
/// goes away, and no FIN or reset comes. Sent on it, a request would wait
/// until `request_timeout`, and could not go elsewhere then (it may have
/// been processed); checked first, it goes out on a new connection
/// instead, unsent. A busy connection is never checked; a quiet one costs
/// its first request one round trip. gRPC servers count a PING on a
/// connection without streams as a strike, but forgive strikes once they
/// send a response, which the request after the PONG brings.
const QUIET: Duration = Duration::from_secs(5);

/// One HTTP/2 connection to an endpoint, shared by its requests.
#[derive(Clone)]
pub(crate) struct H2Conn {
    send: SendRequest<Bytes>,
    shared: Arc<Shared>,
}

/// What the connection's task, its handles and its streams share.
#[derive(Debug)]
struct Shared {
    /// Set when the connection task ended or a request found the
    /// connection unable to take streams (closed, or went away).
    closed: AtomicBool,
    /// Requests whose response has not ended (or been dropped), and
    /// uploads still under way: PINGs go out while there are any.
    open: AtomicUsize,
    /// Streams reserved or opened and not yet let go, held young ones among
    /// them (`H2Slot`): what the connection has of the upstream's slots.
    streams: AtomicUsize,
    /// The streams the upstream allows at once (its
    /// SETTINGS_MAX_CONCURRENT_STREAMS), as the connection's task last saw.
    max_streams: AtomicUsize,
    /// Requests the pool sent elsewhere while this connection, a spare,
    /// had no stream (`H2Conn::idle_spare`).
    idle_picks: AtomicU32,
    /// When the connection started, and when the upstream was last heard
    /// from (ms after `started`): a response head (counted from when its
    /// request went out) or a PONG.
    started: tokio::time::Instant,
    heard_ms: AtomicU64,
    /// A request asks the connection's task for a PING (`QUIET`): `ping`
    /// goes from `PING_IDLE` to `PING_ASKED` (unless one is on its way)
    /// and wakes `ask`; the request waits for the PONG at `pong`. An atomic
    /// and a waker, not a `Notify`: the task polls them at each of its
    /// wake-ups, several a request, and a `Notify` takes a lock to be polled.
    ping: AtomicU8,
    ask: AtomicWaker,
    pong: tokio::sync::Notify,
}

const PING_IDLE: u8 = 0;
const PING_ASKED: u8 = 1;
const PING_SENT: u8 = 2;

impl Shared {
    fn ms_at(&self, at: tokio::time::Instant) -> u64 {
        let since = at.saturating_duration_since(self.started);
        since.as_secs() * 1000 + u64::from(since.subsec_millis())
    }

    fn heard_at(&self, at: tokio::time::Instant) {
        self.heard_ms.fetch_max(self.ms_at(at), Ordering::Relaxed);
    }

    /// Whether nothing came from the upstream for `QUIET` before `now`.
    fn quiet(&self, now: tokio::time::Instant) -> bool {
        let heard = self.heard_ms.load(Ordering::Relaxed);
        self.ms_at(now).saturating_sub(heard) >= QUIET.as_secs() * 1000
    }

    /// A PING round trip, within `within`: false when no PONG came (or the
    /// connection cannot send PINGs).
    async fn check(&self, within: Duration) -> bool {
        let mut pong = std::pin::pin!(self.pong.notified());
        // Registered before the PING is asked for: its PONG cannot be missed.
        pong.as_mut().enable();
        let idle =
            self.ping
                .compare_exchange(PING_IDLE, PING_ASKED, Ordering::AcqRel, Ordering::Acquire);
        if idle.is_ok() {
            self.ask.wake();
        }
        let came = tokio::time::timeout(within, pong).await.is_ok();
        came && !self.closed.load(Ordering::Relaxed)
    }

    /// The check of a quiet connection failed, or the connection ended: it
    /// takes no new request, and every request waiting for its PONG learns
    /// so now rather than at its own deadline. True the first time.
    fn give_up(&self) -> bool {
        let first = !self.closed.swap(true, Ordering::Relaxed);
        self.pong.notify_waiters();
        first
    }

    /// A PONG came.
    fn ponged(&self) {
        self.heard_at(tokio::time::Instant::now());
        self.ping.store(PING_IDLE, Ordering::Release);
        self.pong.notify_waiters();
    }
}

/// Until when a stream opened at `opened` is kept from its reset
/// (`MIN_STREAM_AGE`); none once it may be reset.
fn young_until(opened: tokio::time::Instant) -> Option<tokio::time::Instant> {
    let until = opened + MIN_STREAM_AGE;
    (tokio::time::Instant::now() < until).then_some(until)
}

impl std::fmt::Debug for H2Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Conn")
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl H2Conn {
    /// The HTTP/2 handshake over `io`, and the connection's task; until
    /// the upstream's SETTINGS say otherwise, it may have `streams` open.
    pub(crate) async fn handshake<T>(
        io: T,
        addr: SocketAddr,
        streams: usize,
    ) -> Result<H2Conn, ClientError>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (send, mut conn) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONN_WINDOW)
            .max_header_list_size(MAX_HEADER_LIST)
            .max_frame_size(MAX_FRAME)
            .max_send_buffer_size(MAX_SEND_BUFFER)
            // Header literals go out raw, as HAProxy sends them: Huffman
            // coding cost ~10 instructions per octet on every literal (a
            // request id, a path, a content-length: literals on every
            // request) to save about a fifth of those octets (raw, a
            // quarter more). Repeated fields still go out as one-octet
            // indexes (RFC 7541 5.2, 6.1).
            .huffman_encoding(false)
            .initial_max_send_streams(streams)
            .max_local_error_reset_streams(Some(MAX_ERROR_RESETS))
            .enable_push(false)
            .handshake::<_, Bytes>(io)
            .await
            .map_err(|e| ClientError::Handshake {
                addr,
                source: e.into(),
            })?;
        let shared = Arc::new(Shared {
            closed: AtomicBool::new(false),
            open: AtomicUsize::new(0),
            streams: AtomicUsize::new(0),
            idle_picks: AtomicU32::new(0),
            max_streams: AtomicUsize::new(streams),
            started: tokio::time::Instant::now(),
            heard_ms: AtomicU64::new(0),
            ping: AtomicU8::new(PING_IDLE),
            ask: AtomicWaker::new(),
            pong: tokio::sync::Notify::new(),
        });
        let ping = conn.ping_pong();
        let task = shared.clone();
        tokio::spawn(async move {
            // The upstream's SETTINGS may change its limit at any frame;
            // reading it takes h2's lock, so it is read on the first polls
            // (the upstream's first SETTINGS) and then on every 64th.
            let mut polls = 0u32;
            let run = poll_fn(|cx| {
                let polled = Pin::new(&mut conn).poll(cx);
                if polls < 8 || polls.is_multiple_of(64) {
                    let max = conn.max_concurrent_send_streams();
                    task.max_streams.store(max, Ordering::Relaxed);
                }
                polls = polls.wrapping_add(1);
                polled
            });
            let ended = tokio::select! {
                ended = run => ended,
                () = keep_alive(ping, &task) => Ok(()),
            };
            task.give_up();
            if let Err(e) = ended {
                tracing::debug!(%addr, error = %e, "upstream HTTP/2 connection ended");
            }
        });
        Ok(H2Conn { send, shared })
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Relaxed)
    }

    /// Whether the upstream has sent nothing on it for `QUIET`.
    pub(crate) fn quiet(&self) -> bool {
        self.shared.quiet(tokio::time::Instant::now())
    }

    /// No new request goes to it; its open streams go on.
    pub(crate) fn retire(&self) {
        self.shared.closed.store(true, Ordering::Relaxed);
    }

    /// The streams the upstream allows at once, as last seen.
    pub(crate) fn max_streams(&self) -> usize {
        self.shared.max_streams.load(Ordering::Relaxed)
    }

    /// Streams open on the connection.
    pub(crate) fn streams(&self) -> usize {
        self.shared.streams.load(Ordering::Relaxed)
    }

    /// Counts a request the pool sent elsewhere while this spare had no
    /// stream; true once `picks` such requests came in a row.
    pub(crate) fn idle_spare(&self, picks: u32) -> bool {
        let idle = &self.shared.idle_picks;
        if self.streams() > 0 {
            idle.store(0, Ordering::Relaxed);
            return false;
        }
        idle.fetch_add(1, Ordering::Relaxed) + 1 >= picks
    }

    /// A stream's place on this connection when one of the upstream's
    /// slots is free: taken now, when the pool picks the connection, so
    /// that a burst of requests spreads over connections instead of all
    /// finding the same one with room (`client::Pool` opens another when
    /// none has).
    pub(crate) fn try_reserve(&self) -> Option<H2Slot> {
        let max = self.shared.max_streams.load(Ordering::Relaxed);
        if self.is_closed() {
            return None;
        }
        let streams = &self.shared.streams;
        (streams.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            (n < max).then_some(n + 1)
        }))
        .ok()?;
        Some(self.slot())
    }

    /// A stream's place on this connection, room or not (a fresh
    /// connection, or the least busy one when every one is full: the
    /// stream then waits in `h2` for a slot).
    pub(crate) fn reserve(&self) -> H2Slot {
        self.shared.streams.fetch_add(1, Ordering::Relaxed);
        self.slot()
    }

    /// A slot for a stream already counted in `streams`.
    fn slot(&self) -> H2Slot {
        self.shared.open.fetch_add(1, Ordering::Relaxed);
        H2Slot {
            conn: self.clone(),
            open: Open {
                shared: self.shared.clone(),
                stream: true,
            },
        }
    }
}

/// A stream's place on a shared connection (`H2Conn::try_reserve`),
/// counted among its streams from the pick until the stream is let go.
#[derive(Debug)]
pub(crate) struct H2Slot {
    conn: H2Conn,
    open: Open,
}

impl H2Slot {
    pub(crate) fn conn(&self) -> &H2Conn {
        &self.conn
    }

    /// Sends `req` (HTTP/2 form: absolute URI, connection-specific fields
    /// already gone: `proxy::headers::strip_hop_by_hop`) on this handle
    /// (the pool's clone: a clone of `h2`'s handle takes its connection
    /// lock) and awaits the response head. The request comes back in the
    /// error when the connection could not take a new stream (nothing was
    /// sent). A GOAWAY marks the connection closed: the next request opens
    /// another, as does a connection that stays silent to the PING a quiet
    /// one gets first (`QUIET`; `check_within` for its PONG).
    ///
    /// Not an `async fn` (`crate::boxed`): the handle is taken apart and
    /// the request moved into the block, each kept once.
    #[allow(clippy::manual_async_fn)]
    pub(crate) fn send(
        self,
        req: Request<ReqBody>,
        addr: SocketAddr,
        check_within: Duration,
    ) -> impl Future<Output = Result<Response<H2Body>, Failed>> {
        let H2Slot {
            conn: H2Conn { mut send, shared },
            open: guard,
        } = self;
        async move {
            let closed = &shared.closed;
            let broken = |e: h2::Error| {
                if e.is_go_away() {
                    closed.store(true, Ordering::Relaxed);
                }
                ClientError::Broken {
                    addr,
                    source: Box::new(e),
                }
            };
            let now = tokio::time::Instant::now();
            let mut waited = shared.quiet(now);
            // Boxed: rare, and its timer would add to every request's future.
            if waited && !crate::boxed::pinned(|| shared.check(check_within)).await {
                if shared.give_up() {
                    tracing::warn!(%addr, within = ?check_within,
                        "upstream HTTP/2 connection silent: no PONG to the PING before a request; opening another");
                }
                return Err(Failed {
                    error: ClientError::Broken {
                        addr,
                        source: Box::new(Silent),
                    },
                    request: Some(req),
                });
            }
            if let Err(e) = poll_fn(|cx| send.poll_ready(cx)).await {
                closed.store(true, Ordering::Relaxed);
                return Err(Failed {
                    error: broken(e),
                    request: Some(req),
                });
            }
            let (mut head, body) = req.into_parts();
            if let Some(len) = body.size_hint().exact()
                && (len != 0 || has_payload(&head.method))
                && !head.headers.contains_key(header::CONTENT_LENGTH)
            {
                head.headers.insert(header::CONTENT_LENGTH, len.into());
            }
            let eos = body.is_end_stream();
            let (response, stream) = send
                .send_request(Request::from_parts(head, ()), eos)
                .map_err(|e| Failed {
                    error: broken(e),
                    request: None,
                })?;
            // A stream over the upstream's concurrency limit waits in h2 until
            // another closes, and goes out only once opened (hyper waited the
            // same way): if the connection ends first, nothing was sent.
            let ready = poll_fn(|cx| {
                let ready = send.poll_ready(cx);
                waited |= ready.is_pending();
                ready
            });
            if let Err(e) = ready.await {
                closed.store(true, Ordering::Relaxed);
                return Err(Failed {
                    error: ClientError::Broken {
                        addr,
                        source: Box::new(NotOpened(e)),
                    },
                    request: None,
                });
            }
            // Dropped with this future (request_timeout) or with the response
            // body before its end, the pump is aborted: with its last handle
            // gone, h2 resets the stream (a young one after `MIN_STREAM_AGE`).
            let opened = if waited {
                tokio::time::Instant::now()
            } else {
                now
            };
            let pump = (!eos).then(|| Pump::spawn(body, stream, Open::new(&shared), opened));
            let response = Unanswered {
                response: Some((response, guard)),
                opened,
            };
            let (response, guard) = response.await.map_err(|e| Failed {
                error: broken(e),
                request: None,
            })?;
            shared.heard_at(opened);
            let (head, recv) = response.into_parts();
            let body = H2Body::new(recv, &head.headers, guard, pump, opened);
            Ok(Response::from_parts(head, body))
        }
    }
}

/// A stream's response on its way, and the stream's place among the
/// connection's open ones. Dropped before the response came (the client
/// left, or `request_timeout`), a stream younger than `MIN_STREAM_AGE` is
/// kept open, and counted, with its answer read to its end until that age:
/// it keeps its slot, so new requests go to another connection when the
/// upstream's slots are full (`client::Pool`).
struct Unanswered {
    response: Option<(h2::client::ResponseFuture, Open)>,
    opened: tokio::time::Instant,
}

impl Future for Unanswered {
    type Output = Result<(Response<RecvStream>, Open), h2::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let Some((mut response, open)) = this.response.take() else {
            return Poll::Pending;
        };
        match Pin::new(&mut response).poll(cx) {
            Poll::Ready(answer) => Poll::Ready(answer.map(|answer| (answer, open))),
            Poll::Pending => {
                this.response = Some((response, open));
                Poll::Pending
            }
        }
    }
}

impl Drop for Unanswered {
    fn drop(&mut self) {
        if let Some((response, open)) = self.response.take()
            && let Some(until) = young_until(self.opened)
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(hold(response, open, until, self.opened));
        }
    }
}

/// Keeps a stream nobody waits for until it is `MIN_STREAM_AGE` old,
/// reading its answer (`read_out`), then lets it go: a stream not ended
/// by then is reset. An answer read to its end still leaves the request
/// side open when the request's body did not end, so the stream is kept
/// to that age either way.
async fn hold(
    response: h2::client::ResponseFuture,
    open: Open,
    until: tokio::time::Instant,
    opened: tokio::time::Instant,
) {
    let mut kept = None;
    let _ = tokio::time::timeout_at(until, async {
        if let Ok(answer) = response.await {
            let (head, recv) = answer.into_parts();
            let mut body = H2Body::new(recv, &head.headers, open, None, opened);
            if read_out(&mut body).await {
                kept = Some(body);
            }
        }
    })
    .await;
    tokio::time::sleep_until(until).await;
    drop(kept);
}

/// Most bytes of an answer nobody waits for that steer reads to spare its
/// stream a reset: one stream window. A stream that sent more has been
/// accepted, and reading on would only move bytes nobody reads.
const READ_OUT_MAX: u64 = STREAM_WINDOW as u64;

/// Reads an answer nobody waits for to its end (an HTTP/2 body gives its
/// window back as it is read); false when it is longer than
/// `READ_OUT_MAX` bytes. A body that fails has ended too.
pub(crate) async fn read_out<B>(body: &mut B) -> bool
where
    B: Body<Data = Bytes> + Unpin,
{
    let mut read = 0;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return true;
        };
        read += frame.data_ref().map_or(0, |d| d.len() as u64);
        if read > READ_OUT_MAX {
            return false;
        }
    }
    true
}

/// The stream of a request never opened: the connection ended while it
/// waited for the upstream's concurrency limit. Nothing of it was sent.
#[derive(Debug, thiserror::Error)]
#[error("the connection ended before the stream opened: {0}")]
pub(crate) struct NotOpened(#[source] h2::Error);

/// A quiet connection did not answer the PING a request sent first
/// (`QUIET`). Nothing of the request was sent.
#[derive(Debug, thiserror::Error)]
#[error("the connection was quiet and did not answer a PING in time; the request was not sent")]
pub(crate) struct Silent;

/// The task that sends a request body, aborted when dropped armed.
struct Pump(Option<tokio::task::AbortHandle>);

impl Pump {
    fn spawn(
        body: ReqBody,
        stream: SendStream<Bytes>,
        open: Open,
        opened: tokio::time::Instant,
    ) -> Pump {
        Pump(Some(
            tokio::spawn(pump(body, stream, open, opened)).abort_handle(),
        ))
    }

    /// The answer ended: the rest of the body may still go out, for
    /// `BODY_GRACE` at most (as toward HTTP/1.1 upstreams); then the
    /// stream is reset, so that a client that never ends its upload does
    /// not hold the upstream stream.
    fn disarm(&mut self) {
        if let Some(task) = self.0.take()
            && !task.is_finished()
        {
            // Reached from `H2Body`'s drop, which may run off the runtime:
            // then the stream is reset at once.
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(async move {
                        tokio::time::sleep(super::h1::BODY_GRACE).await;
                        task.abort();
                    });
                }
                Err(_) => task.abort(),
            }
        }
    }
}

impl Drop for Pump {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

impl std::fmt::Debug for Pump {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pump")
    }
}

/// Counts a request (or an upload) as open until dropped, and a stream
/// among the connection's `streams` when made for an `H2Slot`.
struct Open {
    shared: Arc<Shared>,
    stream: bool,
}

impl Open {
    fn new(shared: &Arc<Shared>) -> Open {
        shared.open.fetch_add(1, Ordering::Relaxed);
        Open {
            shared: shared.clone(),
            stream: false,
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.shared.open.fetch_sub(1, Ordering::Relaxed);
        if self.stream {
            self.shared.streams.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl std::fmt::Debug for Open {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Open")
    }
}

/// PINGs the peer every `PING_EVERY` while requests are `open`, and when
/// a request asks (`QUIET`); returns when a PONG is late.
async fn keep_alive(ping: Option<h2::PingPong>, shared: &Shared) {
    let Some(mut ping) = ping else {
        return std::future::pending().await;
    };
    loop {
        let asked = {
            let mut every = std::pin::pin!(tokio::time::sleep(PING_EVERY));
            poll_fn(|cx| {
                shared.ask.register(cx.waker());
                let asked = shared.ping.compare_exchange(
                    PING_ASKED,
                    PING_SENT,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                );
                if asked.is_ok() {
                    return Poll::Ready(true);
                }
                every.as_mut().poll(cx).map(|()| false)
            })
            .await
        };
        if !asked && shared.open.load(Ordering::Relaxed) == 0 {
            continue;
        }
        if ping.send_ping(h2::Ping::opaque()).is_err() {
            return std::future::pending().await;
        }
        let pong = poll_fn(|cx| ping.poll_pong(cx));
        match tokio::time::timeout(PONG_TIMEOUT, pong).await {
            Ok(Ok(_)) => shared.ponged(),
            Ok(Err(_)) => return std::future::pending().await,
            Err(_) => {
                tracing::debug!("upstream HTTP/2 keep-alive PING not answered; closing");
                return;
            }
        }
    }
}

/// Methods whose requests may carry a body, so that an empty one still
/// gets `content-length: 0` (as hyper does: all but these four).
fn has_payload(method: &http::Method) -> bool {
    !matches!(method.as_str(), "GET" | "HEAD" | "DELETE" | "CONNECT")
}

/// Sends the request body within the window the upstream grants
/// (`h2send`); a failing body resets the stream. `_open` keeps PINGs
/// going while an upload is under way.
async fn pump(
    mut body: ReqBody,
    mut stream: SendStream<Bytes>,
    _open: Open,
    opened: tokio::time::Instant,
) {
    let sent = crate::h2send::send_body(&mut body, &mut stream, None, || {}, None).await;
    drop(body);
    // The client's body failed, most often because the client left: the
    // stream is reset, but not before it is `MIN_STREAM_AGE` old.
    if sent == Err(crate::h2send::Stop::Failed) {
        if let Some(until) = young_until(opened) {
            tokio::time::sleep_until(until).await;
        }
        stream.send_reset(h2::Reason::CANCEL);
    }
}

/// An upstream's HTTP/2 response body: DATA (its window given back as it
/// is read), then trailers. Dropped before its end, it resets the stream
/// (RST_STREAM CANCEL, which `h2` sends once the body pump, aborted here,
/// let go of it too).
#[derive(Debug)]
pub struct H2Body {
    recv: crate::body::H2Recv,
    pump: Option<Pump>,
    _open: Open,
    opened: tokio::time::Instant,
}

impl H2Body {
    fn new(
        recv: RecvStream,
        headers: &HeaderMap,
        open: Open,
        pump: Option<Pump>,
        opened: tokio::time::Instant,
    ) -> H2Body {
        H2Body {
            recv: crate::body::H2Recv::new(recv, crate::body::content_length(headers)),
            pump,
            _open: open,
            opened,
        }
    }

    /// Until when a body dropped before its end is read out rather than
    /// reset: none when the stream may be reset now.
    pub(crate) fn young_until(&self) -> Option<tokio::time::Instant> {
        young_until(self.opened)
    }

    fn ended(&mut self) {
        if let Some(pump) = self.pump.as_mut() {
            pump.disarm();
        }
    }
}

impl Drop for H2Body {
    fn drop(&mut self) {
        // An answer whose end was known without a last poll is complete:
        // the upload may go on (`Pump::disarm`), not be reset.
        if self.recv.is_end_stream() {
            self.ended();
        }
    }
}

impl Body for H2Body {
    type Data = Bytes;
    type Error = crate::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, crate::BoxError>>> {
        let this = self.get_mut();
        let frame = ready!(this.recv.poll(cx));
        // Trailers or the end: the answer is whole.
        let whole = match &frame {
            None => true,
            Some(Ok(f)) => !f.is_data(),
            Some(Err(_)) => false,
        };
        if whole {
            this.ended();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.recv.size_hint()
    }
}
