//! Listeners and connection serving: accept, tell HTTP/1.1 from HTTP/2
//! (ALPN, or the preface under `header_read_timeout`), serve plain
//! and TLS HTTP/1.1 on steer's own path (`h1`) and in hyper rounds for
//! what it hands over, holding no buffer when idle (`park`), HTTP/2 with
//! the `h2` crate (`h2`), hand
//! each request to the proxy, and stop gracefully. Every client socket
//! writes under `send_timeout` (`io::WriteDeadline`). Knows nothing about
//! routing. `LIFECYCLE.md` lists what bounds a connection, and where.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use http::{Request, Response};
use hyper::body::Incoming;
use prometheus::IntGauge;
use tokio::io::AsyncRead;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::boxed::pinned;
use crate::config::ProxySettings;

mod admin_listener;
mod conn;
pub(crate) use conn::now_ms;
mod h1;
mod h2;
mod h2_connect;
pub mod open_files;
pub(crate) use h2_connect::OnConnect;
pub mod handover;
mod io;
pub mod listeners;
mod park;
use crate::proxy::{ConnInfo, ProxyBody, Shared};
use io::{Speaks, StallReport, WriteDeadline};

/// hyper's own parser limit sits above steer's `max_header_bytes` so that
/// oversized heads reach steer and get a 431 with a reason; only heads
/// beyond this get hyper's bare 431.
const PARSER_SLACK: usize = 4;

/// hyper's own header-count limit when none is set (`DEFAULT_MAX_HEADERS`).
const HYPER_MAX_HEADERS: usize = 100;

/// How long, at shutdown, keep-alive clients get to take their
/// `Connection: close` answers before idle connections are closed.
const KEEPALIVE_GRACE: Duration = Duration::from_secs(2);

/// hyper's parser buffer ceiling for a listener: far enough above
/// `max_header_bytes` that steer's own check answers first.
fn parser_buf_size(settings: &ProxySettings) -> usize {
    (settings.max_header_bytes * PARSER_SLACK).max(8192 * 2)
}

/// hyper's header-count ceiling, when its default does not do. hyper parses
/// into a stack array of 100 headers unless told a limit; any explicit limit
/// costs a heap allocation and an initialised array per request (~3,300
/// instructions). Up to 100 headers its default guards the parser and
/// `check_limits` answers with the reason.
fn parser_max_headers(settings: &ProxySettings) -> Option<usize> {
    (settings.max_headers > HYPER_MAX_HEADERS).then_some(settings.max_headers * 2)
}

/// How a proxy listener serves its connections: the protocol builders and
/// the per-listener timeouts, fixed when the listener starts.
pub(crate) struct Serving {
    http1: hyper::server::conn::http1::Builder,
    h2: ::h2::server::Builder,
    idle: Duration,
    header_read_timeout: Duration,
    send_timeout: Duration,
    /// The parser's ceiling for a request head (`parser_buf_size`).
    max_head: usize,
    /// Counts HTTP/2 connections closed for rapid reset (`h2::serve`).
    rapid_resets: prometheus::IntCounter,
    /// Where WebSockets over HTTP/2 count among the listener's connections.
    tunnels: conn::TunnelCap,
}

impl Serving {
    fn new(
        settings: &ProxySettings,
        rapid_resets: prometheus::IntCounter,
        tunnels: conn::TunnelCap,
    ) -> Serving {
        Serving {
            http1: park::http1_builder(settings),
            h2: h2::builder(settings),
            idle: settings.idle_timeout,
            header_read_timeout: settings.header_read_timeout,
            send_timeout: settings.send_timeout,
            max_head: parser_buf_size(settings),
            rapid_resets,
            tunnels,
        }
    }
}

/// What the protocol handlers of one client connection share.
pub(crate) struct ConnCtx {
    shared: Arc<Shared>,
    info: ConnInfo,
    activity: Arc<conn::Activity>,
    serving: Arc<Serving>,
    finish: watch::Receiver<bool>,
    stalls: StallReport,
    /// The connection's head deadline: a client that has not sent a whole
    /// request head (HTTP/1.1) or the preface and its SETTINGS (HTTP/2)
    /// by then is closed.
    head_deadline: tokio::time::Instant,
}

/// A connection gives its buffers back (h2's codec, HPACK and stream
/// buffers and its stream set, rustls's) after at least this long quiet,
/// however short its idle tick (`idle_timeout` / 4 can be 50 ms): a
/// client with a request every few hundred milliseconds would otherwise
/// have them freed and taken again between its requests.
const RELEASE_AFTER: Duration = Duration::from_secs(1);

/// How often a connection checks whether it has been idle for `idle`.
fn idle_tick(idle: Duration) -> tokio::time::Interval {
    tokio::time::interval((idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(5)))
}

/// TLS on a listener: how long a client may take to finish its handshake,
/// and the store whose current server config each handshake uses.
#[derive(Clone)]
pub struct TlsListener {
    pub handshake_timeout: Duration,
    /// The served certificates and client verifier; also which names the
    /// certificate a client's SNI picked covers (421 for other hosts).
    pub store: Arc<crate::tls::TlsStore>,
}

/// A client socket as every protocol handler sees it.
type ClientIo = WriteDeadline<TcpStream>;

/// Accepts on `listener` until `stop` turns true, then asks every open
/// connection to finish (HTTP/1.1: `Connection: close` after the response
/// in progress; HTTP/2: GOAWAY) and waits up to `drain_timeout` for them.
/// Caps connections (per listener and per client IP) and closes idle ones
/// after `idle_timeout`.
pub async fn serve_proxy(
    listener: TcpListener,
    tls: Option<TlsListener>,
    shared: Arc<Shared>,
    settings: ProxySettings,
    stop: watch::Receiver<bool>,
    active: IntGauge,
    listener_name: &'static str,
) {
    let rapid_resets = shared.metrics.rapid_resets(listener_name);
    let tracker = Arc::new(conn::Tracker::default());
    let limits = Limits {
        // Resolved by `ListenerSet::apply`, which knows the listeners.
        max: settings
            .max_connections
            .unwrap_or(open_files::DEFAULT_MAX_CONNECTIONS),
        tracker: tracker.clone(),
    };
    let tunnels =
        conn::TunnelCap::new(tracker.clone(), limits.max, settings.max_connections_per_ip);
    let serving = Arc::new(Serving::new(&settings, rapid_resets, tunnels));
    let send_timeouts = shared.metrics.send_timeouts(listener_name);
    let (finish, finish_rx) = watch::channel(false);
    let closing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    accept_loop(listener, stop, Some(limits), |stream, peer| {
        let slot = tracker.admit(peer.ip(), settings.max_connections_per_ip);
        let shared = shared.clone();
        let serving = serving.clone();
        let tls = tls.clone();
        let active = active.clone();
        let finish = finish_rx.clone();
        let closing = closing.clone();
        let send_timeouts = send_timeouts.clone();
        async move {
            let Some(_slot) = slot else {
                tracing::warn!(%peer, "per-client connection cap reached; closing the new connection");
                return;
            };
            active.inc();
            let activity = conn::Activity::new(peer);
            let stalls = StallReport {
                activity: activity.clone(),
                counter: send_timeouts,
            };
            let io = WriteDeadline::new(stream, serving.send_timeout, stalls.clone());
            let ctx = ConnCtx {
                shared,
                info: ConnInfo {
                    peer,
                    tls: tls.is_some(),
                    closing,
                    tls_names: None,
                    client_cert: None,
                    hop_cache: None,
                },
                activity,
                head_deadline: tokio::time::Instant::now() + serving.header_read_timeout,
                serving,
                finish,
                stalls,
            };
            // Two boxes, one after the other: the start (sniff, TLS
            // handshake; for HTTP/2 its handshake too, in a box of its
            // own) is freed before the connection is served, and the task
            // holds a pointer to what serves it, not the largest of these
            // inline. Between requests this is what a connection costs.
            let started = match tls {
                None => pinned(|| start_plain(io, ctx)).await,
                Some(tls) => pinned(|| start_tls(io, tls, ctx)).await,
            };
            let result = match started {
                Ok(Some(server)) => server.await,
                Ok(None) => Ok(()),
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "client connection ended with an error");
            }
            active.dec();
        }
    })
    .await;
    closing.store(true, std::sync::atomic::Ordering::Relaxed);
    drain(&shared, &tracker, &finish).await;
}

/// What serves a connection once it is known what it speaks (and, for
/// HTTP/2, once its handshake is done); `None` when it is to close before
/// that (`start_plain`, `start_tls`, `h2::start`).
type Started = Option<futures_util::future::BoxFuture<'static, ClientResult>>;

/// The future that serves a started connection, boxed and begun from the
/// start phase's result (for HTTP/2, after its handshake, which this
/// awaits): a future keeps its arguments for as long as it
/// lives, so each layer of async functions that passed the stream and
/// context on would hold a copy of them. HTTP/2's handshake is part of
/// the start (`h2::start`): its state would otherwise take room in every
/// connection's future for the connection's life. Boxed apart from the
/// start too: inline, it would make every connection's start, HTTP/1.1
/// ones and clients that never send a byte included, as large as itself.
/// An `async fn` all the same (`crate::boxed`'s rule is for what lives
/// long): it and `h2::start` last only until the connection is served.
async fn server_for<I: park::Parkable>(
    io: I,
    buf: BytesMut,
    ctx: ConnCtx,
    speaks: Speaks,
) -> ClientResult<Started> {
    match speaks {
        Speaks::Nothing => Ok(None),
        Speaks::Http1 => Ok(Some(pinned(|| park::serve(io, buf, ctx)))),
        Speaks::Http2 => pinned(|| h2::start(io, buf, ctx)).await,
    }
}

/// A plain-TCP connection: HTTP/2 by its preface (h2c prior knowledge),
/// else HTTP/1.1 in rounds (`park`). A client that sends nothing at all
/// is bounded like one that sends a partial head (or by `idle_timeout`
/// if shorter).
async fn start_plain(mut io: ClientIo, mut ctx: ConnCtx) -> ClientResult<Started> {
    let first = ctx
        .head_deadline
        .min(tokio::time::Instant::now() + ctx.serving.idle);
    let mut buf = BytesMut::new();
    let finish = &mut ctx.finish;
    let speaks = tokio::select! {
        biased;
        speaks = tokio::time::timeout_at(first, io::sniff(&mut io, &mut buf)) => match speaks {
            Ok(speaks) => speaks?,
            Err(_) => return Ok(None),
        },
        () = async { let _ = finish.wait_for(|f| *f).await; } => return Ok(None),
    };
    server_for(io, buf, ctx, speaks).await
}

/// Reads the client's first HTTP/2 frame by `deadline`; false when the
/// client did not send it in time.
async fn read_h2_start<I: AsyncRead + Unpin>(
    io: &mut I,
    buf: &mut BytesMut,
    deadline: tokio::time::Instant,
) -> std::io::Result<bool> {
    match tokio::time::timeout_at(deadline, io::read_h2_start(io, buf)).await {
        Ok(read) => read.map(|()| true),
        Err(_) => Ok(false),
    }
}

/// A TLS connection: the handshake under `tls_handshake_timeout`, then
/// HTTP/2 or HTTP/1.1 as ALPN says (by the preface when the client named
/// no protocol).
///
/// The session is boxed: it is kilobytes, and a stream passed by value
/// is copied at each move (and kept by each future it passed through).
async fn start_tls(io: ClientIo, tls: TlsListener, mut ctx: ConnCtx) -> ClientResult<Started> {
    // Per handshake: a reload or a changed client CA swaps the config.
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.store.server_config());
    let mut stream = match tokio::time::timeout(tls.handshake_timeout, acceptor.accept(io)).await {
        Ok(Ok(stream)) => Box::new(stream),
        Ok(Err(e)) => return Err(format!("TLS handshake failed: {e}").into()),
        Err(_) => return Err("TLS handshake timed out".into()),
    };
    let session = stream.get_ref().1;
    if let Some(sni) = session.server_name() {
        ctx.info.tls_names = Some(tls.store.current().names_for(sni));
    }
    // Verified by rustls against `[listen.client_auth] ca`.
    if let Some(leaf) = session.peer_certificates().and_then(<[_]>::first) {
        ctx.info.client_cert = crate::tls::forwarded_client_cert(leaf);
    }
    let mut buf = BytesMut::new();
    let speaks = match stream.get_ref().1.alpn_protocol() {
        Some(b"h2") => Speaks::Http2,
        Some(_) => Speaks::Http1,
        None => match tokio::time::timeout_at(ctx.head_deadline, io::sniff(&mut stream, &mut buf))
            .await
        {
            Ok(speaks) => speaks?,
            Err(_) => return Ok(None),
        },
    };
    server_for(stream, buf, ctx, speaks).await
}

/// Whether `drain` has asked the connections to finish, for the checks
/// made per request: the watch's version is one atomic load, where
/// `borrow` takes its read lock. `drain` sends `true` once, and a
/// connection's receiver takes that change only in the waits that end the
/// connection, so a change not yet taken is the ask. A dropped sender (the
/// listener is gone) counts as one, as in the waits.
fn asked_to_finish(finish: &watch::Receiver<bool>) -> bool {
    !matches!(finish.has_changed(), Ok(false))
}

/// After the accept loop: keep-alive grace, then
/// ask every connection to finish, bounded by `drain_timeout`.
async fn drain(shared: &Shared, tracker: &conn::Tracker, finish: &watch::Sender<bool>) {
    let drain = shared.live.load().proxy.drain_timeout;
    let started = tokio::time::Instant::now();
    tracing::info!(
        open = tracker.open(),
        "stopped accepting; draining open connections"
    );
    {
        // Keep-alive grace: clients still sending get their answers with
        // `Connection: close` and leave by themselves; closing an idle
        // HTTP/1.1 connection under a client that is just sending on it
        // would fail that request. Whoever is left after the grace is
        // asked to finish (HTTP/2: GOAWAY) or closed.
        let grace = (drain / 2).min(KEEPALIVE_GRACE);
        let _ = tokio::time::timeout(grace, tracker.all_closed()).await;
    }
    let _ = finish.send(true);
    let left = drain.saturating_sub(started.elapsed());
    if tokio::time::timeout(left, tracker.all_closed())
        .await
        .is_err()
    {
        tracing::warn!(
            open = tracker.open(),
            "drain_timeout passed with requests still open; closing them"
        );
    }
}

type ClientResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// A hyper server connection that can be asked to finish.
trait Graceful: Future<Output = hyper::Result<()>> {
    fn graceful(self: Pin<&mut Self>);
}

impl<I, S> Graceful for hyper::server::conn::http1::UpgradeableConnection<I, S>
where
    S: hyper::service::HttpService<Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S::ResBody: http_body::Body + 'static,
    <S::ResBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn graceful(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Drives a hyper connection until it ends; asks it to finish when
/// `finish` turns true or when it has had no request open for `idle`.
async fn drive<C: Graceful>(
    conn: C,
    activity: &conn::Activity,
    idle: Duration,
    mut finish: Option<watch::Receiver<bool>>,
) -> ClientResult {
    tokio::pin!(conn);
    let mut tick = idle_tick(idle);
    let mut asked = finish.as_ref().is_some_and(|f| *f.borrow());
    if asked {
        conn.as_mut().graceful();
    }
    loop {
        let finished = async {
            match finish.as_mut() {
                Some(f) => f.changed().await.is_err() || *f.borrow(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            result = conn.as_mut() => return result.map_err(Into::into),
            stop = finished, if !asked => {
                if stop {
                    asked = true;
                    conn.as_mut().graceful();
                }
            }
            _ = tick.tick(), if !asked => {
                if activity.idle_for(idle) {
                    asked = true;
                    tracing::debug!("closing idle client connection");
                    conn.as_mut().graceful();
                }
            }
        }
    }
}

/// The connection cap of a proxy listener.
struct Limits {
    max: usize,
    tracker: Arc<conn::Tracker>,
}

/// Serves the admin API on `listener` (see `admin_listener`).
pub async fn serve_admin<F, Fut>(
    listener: TcpListener,
    stop: watch::Receiver<bool>,
    handler: F,
    settings: ProxySettings,
    send_timeouts: prometheus::IntCounter,
) where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    admin_listener::serve(listener, stop, handler, &settings, send_timeouts).await;
}

async fn accept_loop<F, Fut>(
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
    limits: Option<Limits>,
    on_conn: F,
) where
    F: Fn(tokio::net::TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    tokio::pin!(stopped);
    let mut at_cap = false;
    loop {
        if let Some(l) = &limits
            && l.tracker.open() >= l.max
        {
            // Stop accepting (the kernel backlog holds new clients) until a
            // connection closes.
            if !at_cap {
                tracing::warn!(
                    max_connections = l.max,
                    "connection limit reached; not accepting until one closes"
                );
                at_cap = true;
            }
            tokio::select! {
                () = &mut stopped => return,
                () = l.tracker.at_most(l.max.saturating_sub(1)) => continue,
            }
        }
        at_cap = false;
        tokio::select! {
            biased;
            () = &mut stopped => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(on_conn(stream, peer));
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// Binds a TCP listener with SO_REUSEADDR (restarts do not wait for
/// TIME_WAIT) and a deep backlog.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

#[cfg(test)]
mod lifecycle_doc;
