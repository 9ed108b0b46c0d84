//! The upstream HTTP client: one connection pool per endpoint (idle
//! HTTP/1.1 connections, shared HTTP/2 connections), over plain TCP or
//! TLS, used by the proxy and by health probes alike.
//!
//! Why not hyper-util's pooled `Client`: it takes the connection target and
//! the pool key from the request URI, and over HTTP/2 it sends that URI's
//! authority as `:authority`. steer must connect to the endpoint's address
//! while sending the client's Host as `:authority`, so connections are keyed
//! by endpoint here.
//!
//! Callers hand over requests in HTTP/1.1 form (origin-form URI plus a
//! `Host` header); when the exchange goes over HTTP/2 the request is turned
//! into absolute form with the Host as `:authority`.
//!
//! HTTP/1.1 exchanges use steer's own connection (`h1`), HTTP/2 ones
//! steer's own over the `h2` crate (`h2conn`); upgrades (WebSocket) use hyper's
//! HTTP/1.1 connection, which hands the upgraded socket over.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use http::{Request, Response, Uri, Version, header};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::boxed::pinned;
use crate::config::Protocol;
use crate::proxy::headers::HopFields;
use crate::tls::client::UpstreamTls;

mod body;
mod h1;
// HTTP/1.1 wire helpers the server side (`server::h1`) writes with too.
pub(crate) use h1::{chunk_size, field_line, field_name, last_coding_is_chunked, put_length};
mod h2conn;
mod replay;

pub use body::{BodyTooLarge, Fault, ReqBody, Source};
pub use h1::{H1Body, H1Conn};
pub use h2conn::H2Body;
pub(crate) use h2conn::read_out;
use h2conn::{H2Conn, H2Slot};
pub use replay::{REPLAY_LIMIT, Replay, ReplayBody};

/// Idle HTTP/1.1 connections kept per endpoint. The pool never holds
/// more than were in use at once (a connection opens only when none is
/// idle), so this bounds only what a burst leaves behind. Below the
/// concurrency of a load, every swing past it closes connections that the
/// next swing opens again: at 256 and 500 requests in flight that cost
/// ~10 % of steer's CPU per request (BENCHMARKS.md, "Raw HPACK literals,
/// one field check, no upstream churn"). HAProxy and Envoy keep idle
/// connections without a count cap.
const MAX_IDLE_H1: usize = 1024;
/// HTTP/2 connections per endpoint. Requests share one; another opens only
/// when every open one has all the streams the upstream allows at once
/// (`H2Conn::try_reserve`), so that streams one client holds open (slow
/// uploads, slow answers, young streams kept from their reset) cannot make
/// every other client wait for a slot. Past this many, a request waits in
/// `h2` for a slot on the least busy one. Connections open one at a time
/// (`Pool::shared_h2`), so a burst opens only as many as it fills.
const MAX_H2_CONNS: usize = 16;
/// A spare HTTP/2 connection (past the one requests go to) that stays
/// empty while this many requests are sent is let go: requests fill the
/// first connection with room, so a spare is only needed again in the
/// next burst, and one kept idle meanwhile may have died unseen (no PINGs
/// while idle, no probe reaches it).
const SPARE_IDLE_PICKS: u32 = 1000;
/// An idle HTTP/1.1 connection older than this is closed rather than reused:
/// upstreams (ZITADEL's Go server among them) close idle ones on their side.
const IDLE_H1_TTL: Duration = Duration::from_secs(50);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing was sent: the request may go to another endpoint.
    #[error("connect to {addr} failed: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// steer could not open a connection: its own descriptors or memory
    /// ran out (`local_shortage`). Nothing was sent, and
    /// nothing is known about the endpoint.
    #[error("steer is out of {what} for a connection to {addr}: {source}")]
    Local {
        addr: SocketAddr,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("connect to {addr} timed out after {timeout:?}")]
    ConnectTimeout { addr: SocketAddr, timeout: Duration },
    #[error("TLS handshake with {addr} failed: {source}")]
    Tls {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP handshake with {addr} failed: {source}")]
    Handshake {
        addr: SocketAddr,
        #[source]
        source: crate::BoxError,
    },
    #[error("request to {addr} cannot be sent: {reason}")]
    BadRequest {
        addr: SocketAddr,
        reason: &'static str,
    },
    /// The request was (perhaps partly) sent and the exchange broke.
    #[error("upstream {addr} broke: {source}")]
    Broken {
        addr: SocketAddr,
        #[source]
        source: crate::BoxError,
    },
    /// An HTTP/1.1 upstream reset the connection before any byte of an
    /// answer: it closed without reading the request (see
    /// `h1::reset_unread`). `reused`: on a pooled connection.
    #[error("upstream {addr} broke: {source} (it reset the connection unread)")]
    Unread {
        addr: SocketAddr,
        reused: bool,
        #[source]
        source: std::io::Error,
    },
}

impl ClientError {
    /// True when the upstream did not process the request, so it may go
    /// anywhere else whatever its method: it never left steer (also an
    /// HTTP/2 stream that never opened, or that waited for a quiet
    /// connection's PONG in vain), an HTTP/2 upstream refused the
    /// stream (REFUSED_STREAM, RFC 9113 §8.7) or went away gracefully
    /// before it (GOAWAY with NO_ERROR: h2 fails only the streams above the
    /// GOAWAY's last-stream-id with it, and the requests sent after it), or
    /// an HTTP/1.1 upstream closed without reading it.
    pub fn unprocessed(&self) -> bool {
        match self {
            ClientError::Unread { .. } => true,
            ClientError::Broken { source, .. } => {
                self.connection_gone()
                    || h2_error(&**source).is_some_and(|e| {
                        e.is_remote() && e.reason() == Some(h2::Reason::REFUSED_STREAM)
                    })
            }
            other => other.not_sent(),
        }
    }

    /// True when the HTTP/2 connection, not the endpoint, failed the
    /// request before the upstream processed it: the connection went away
    /// gracefully above the request's stream (GOAWAY with NO_ERROR: an
    /// upstream that rotates or closes its connections, Go's server as it
    /// shuts down), ended before the stream opened, or stayed silent to
    /// its check. A new connection to the same endpoint may take it, as
    /// Go's HTTP/2 client and gRPC's transparent retries do (RFC 9113
    /// §8.7).
    pub(crate) fn connection_gone(&self) -> bool {
        let ClientError::Broken { source, .. } = self else {
            return false;
        };
        self.silent()
            || source.downcast_ref::<h2conn::NotOpened>().is_some()
            || h2_error(&**source).is_some_and(|e| {
                e.is_remote() && e.is_go_away() && e.reason() == Some(h2::Reason::NO_ERROR)
            })
    }

    /// True when the upstream answered with a head steer cannot pass on
    /// (`h1::BadAnswer`): no fault of the endpoint's that health counts.
    pub(crate) fn bad_answer(&self) -> bool {
        let ClientError::Broken { source, .. } = self else {
            return false;
        };
        let inner = source
            .downcast_ref::<std::io::Error>()
            .and_then(|e| e.get_ref())
            .unwrap_or(&**source);
        inner.downcast_ref::<h1::BadAnswer>().is_some()
    }

    /// True when a quiet HTTP/2 connection stayed silent to the PING sent
    /// before the request (which was not sent).
    pub(crate) fn silent(&self) -> bool {
        matches!(self, ClientError::Broken { source, .. }
            if source.downcast_ref::<h2conn::Silent>().is_some())
    }

    /// True when a new connection (not a pooled one) was reset with the
    /// request unread: unprocessed, but an endpoint, or a balancer in
    /// front of it, that does this to every request must still leave the
    /// rotation (`proxy::blame`).
    pub fn reset_when_new(&self) -> bool {
        matches!(self, ClientError::Unread { reused: false, .. })
    }

    /// True when nothing took the connection: the endpoint is down.
    pub fn endpoint_down(&self) -> bool {
        matches!(
            self,
            ClientError::Connect { .. }
                | ClientError::ConnectTimeout { .. }
                | ClientError::Tls { .. }
                | ClientError::Handshake { .. }
        )
    }

    /// True when steer itself lacked what a connection needs: no verdict
    /// on the endpoint, and no other endpoint would fare better.
    pub fn local(&self) -> bool {
        matches!(self, ClientError::Local { .. })
    }

    /// True when the request never left steer (safe to retry anywhere).
    pub fn not_sent(&self) -> bool {
        self.endpoint_down()
            || matches!(
                self,
                ClientError::BadRequest { .. } | ClientError::Local { .. }
            )
    }
}

/// What steer ran out of, when a connect failed for want of its own
/// resources rather than the endpoint's answer: descriptors (EMFILE,
/// ENFILE), socket buffers or memory (ENOBUFS, ENOMEM). HAProxy counts
/// these as resource errors, not server failures. Not EADDRNOTAVAIL:
/// ephemeral ports run out per destination, and an IPv6 endpoint on a
/// host without IPv6 gives it for ever; both are that endpoint's.
fn local_shortage(e: &std::io::Error) -> Option<&'static str> {
    use rustix::io::Errno;
    match Errno::from_io_error(e)? {
        Errno::MFILE | Errno::NFILE => Some("file descriptors"),
        Errno::NOBUFS | Errno::NOMEM => Some("memory"),
        _ => None,
    }
}

/// A failed connect(2) as a `ClientError`: steer's own shortage, or the
/// endpoint's refusal.
fn connect_error(addr: SocketAddr, source: std::io::Error) -> ClientError {
    match local_shortage(&source) {
        Some(what) => ClientError::Local { addr, what, source },
        None => ClientError::Connect { addr, source },
    }
}

/// The h2 error in an error's chain, if any.
fn h2_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a h2::Error> {
    let mut source = Some(e);
    while let Some(s) = source {
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            return Some(h2);
        }
        source = s.source();
    }
    None
}

/// hyper's HTTP/1.1 connection, for upgrades only (never pooled).
type UpgradeSender = http1::SendRequest<ReqBody>;

/// Where and how to connect.
#[derive(Debug, Clone, Copy)]
pub struct Dial<'a> {
    pub addr: SocketAddr,
    pub protocol: Protocol,
    pub tls: Option<&'a UpstreamTls>,
    pub connect_timeout: Duration,
}

#[derive(Debug, Default)]
pub struct Pool {
    /// Oldest first; requests take the newest (`take_h1`).
    idle_h1: Mutex<VecDeque<(H1Conn, Instant)>>,
    /// The shared HTTP/2 connections (`MAX_H2_CONNS`): read on every
    /// request without waiting (never held across `.await`).
    h2: Mutex<Vec<H2Conn>>,
    /// The last HTTP/2 connect failed: requests waiting for it try their
    /// own at once rather than one at a time behind a dead endpoint.
    h2_failed: AtomicBool,
    /// Held by the one request that opens an HTTP/2 connection, so that a
    /// burst of requests waits for that handshake instead of opening one
    /// each.
    h2_connect: tokio::sync::Mutex<()>,
}

/// A failed exchange; `request` is the request back when it was not sent.
#[derive(Debug)]
pub struct Failed {
    pub error: ClientError,
    pub request: Option<Request<ReqBody>>,
}

/// An upstream's answer: its head and a body that, for steer's own
/// HTTP/1.1 connection, gives the connection back once it ended cleanly
/// ([`RespBody::take_conn`], then [`Pool::put_h1`]).
pub struct Sent {
    pub response: Response<RespBody>,
}

impl Sent {
    fn hyper(response: Response<Incoming>) -> Sent {
        Sent {
            response: response.map(RespBody::Hyper),
        }
    }

    fn h1(response: Response<H1Body>) -> Sent {
        Sent {
            response: response.map(RespBody::H1),
        }
    }

    fn h2(response: Response<H2Body>) -> Sent {
        Sent {
            response: response.map(RespBody::H2),
        }
    }
}

/// A response body from any kind of connection.
#[derive(Debug)]
pub enum RespBody {
    /// hyper's HTTP/1.1 connection (upgrades).
    Hyper(Incoming),
    H1(H1Body),
    H2(H2Body),
}

impl RespBody {
    /// The HTTP/1.1 connection, once the exchange ended cleanly.
    pub fn take_conn(&mut self) -> Option<H1Conn> {
        match self {
            RespBody::H1(b) => b.take_conn(),
            RespBody::Hyper(_) | RespBody::H2(_) => None,
        }
    }
}

impl http_body::Body for RespBody {
    type Data = bytes::Bytes;
    type Error = crate::BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, crate::BoxError>>> {
        match self.get_mut() {
            RespBody::Hyper(b) => std::pin::Pin::new(b).poll_frame(cx).map_err(Into::into),
            RespBody::H1(b) => std::pin::Pin::new(b).poll_frame(cx),
            RespBody::H2(b) => std::pin::Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RespBody::Hyper(b) => b.is_end_stream(),
            RespBody::H1(b) => b.is_end_stream(),
            RespBody::H2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            RespBody::Hyper(b) => b.size_hint(),
            RespBody::H1(b) => b.size_hint(),
            RespBody::H2(b) => b.size_hint(),
        }
    }
}

/// A fresh connection, by what its handshake (ALPN) settled on.
enum Fresh {
    H1(H1Conn),
    H2(H2Slot),
    Upgrade(UpgradeSender),
}

/// Idle connections a connection returned to the pool closes, at most.
const SWEEP_PER_RETURN: usize = 4;

/// Moves into `out` the oldest entries idle for `IDLE_H1_TTL` or more, up
/// to `SWEEP_PER_RETURN` in all. Requests take the newest, so without this
/// the connections a burst left behind would keep their descriptors and
/// read buffers until every newer one was taken; a few per return keep
/// any single request from paying for closing a burst's worth.
fn sweep<T>(idle: &mut VecDeque<(T, Instant)>, now: Instant, out: &mut Vec<T>) {
    while out.len() < SWEEP_PER_RETURN
        && idle
            .front()
            .is_some_and(|(_, since)| now.saturating_duration_since(*since) >= IDLE_H1_TTL)
        && let Some((conn, _)) = idle.pop_front()
    {
        out.push(conn);
    }
}

impl Pool {
    pub fn put_h1(&self, mut conn: H1Conn) {
        conn.shrink();
        let now = Instant::now();
        let mut expired = Vec::new();
        {
            let mut idle = self.idle_h1.lock().unwrap_or_else(PoisonError::into_inner);
            sweep(&mut idle, now, &mut expired);
            if idle.len() < MAX_IDLE_H1 {
                idle.push_back((conn, now));
            }
        }
        // Closed outside the lock.
        drop(expired);
    }

    /// The most recently used idle connection that is still open.
    /// `retryable`: the request goes out again should the connection turn
    /// out closed (see [`h1::send`]), so the check may skip the syscall.
    fn take_h1(&self, retryable: bool) -> Option<H1Conn> {
        loop {
            let (mut conn, since) = {
                let mut idle = self.idle_h1.lock().unwrap_or_else(PoisonError::into_inner);
                idle.pop_back()?
            };
            if since.elapsed() < IDLE_H1_TTL && conn.is_usable(retryable) {
                return Some(conn);
            }
        }
    }

    /// A live shared HTTP/2 connection with room for a stream; none when
    /// another should open (`MAX_H2_CONNS`), else the least busy one.
    fn live_h2(&self) -> Option<H2Slot> {
        let mut conns = self.h2.lock().unwrap_or_else(PoisonError::into_inner);
        conns.retain(|c| !c.is_closed());
        let found = conns
            .iter()
            .enumerate()
            .find_map(|(i, c)| c.try_reserve().map(|slot| (i, slot)));
        if let Some((used, slot)) = found {
            for spare in (used + 1..conns.len()).rev() {
                if conns[spare].idle_spare(SPARE_IDLE_PICKS) {
                    conns.remove(spare);
                }
            }
            return Some(slot);
        }
        if conns.len() < MAX_H2_CONNS {
            return None;
        }
        conns
            .iter()
            .min_by_key(|c| c.streams())
            .map(H2Conn::reserve)
    }

    /// After a quiet connection stayed silent to the PING before a request
    /// (`h2conn::Silent`): no quiet connection gets another request. One
    /// that died unseen seldom died alone (the same NAT or balancer, the
    /// same node), and each would cost a request its `connect_timeout`;
    /// their open streams go on.
    fn retire_quiet(&self) {
        let conns = self.h2.lock().unwrap_or_else(PoisonError::into_inner);
        for c in conns.iter().filter(|c| c.quiet()) {
            c.retire();
        }
    }

    /// The streams a new HTTP/2 connection may open before the upstream's
    /// SETTINGS come: what the endpoint's other connections learned (a
    /// server that allows 8 would refuse the 9th to 100th), else h2's
    /// usual 100.
    fn h2_streams(&self) -> usize {
        let conns = self.h2.lock().unwrap_or_else(PoisonError::into_inner);
        let learned = conns.iter().map(H2Conn::max_streams).min();
        learned.unwrap_or(h2conn::INITIAL_STREAMS).max(1)
    }

    fn store_h2(&self, sender: &H2Conn) {
        let mut conns = self.h2.lock().unwrap_or_else(PoisonError::into_inner);
        if conns.len() < MAX_H2_CONNS {
            conns.push(sender.clone());
        }
    }

    /// Opens a shared HTTP/2 connection, one at a time: a request waits
    /// for the one opening, then takes a slot on it (or on another that
    /// freed one), and opens the next only when none has room. After a
    /// failed connect, a waiter tries its own at once rather than queueing
    /// behind a dead endpoint.
    async fn shared_h2(&self, dial: Dial<'_>) -> Result<Fresh, ClientError> {
        let turn = match self.h2_connect.try_lock() {
            Ok(turn) => Some(turn),
            Err(_) => {
                let turn = self.h2_connect.lock().await;
                let failed = self.h2_failed.load(Ordering::Relaxed);
                (!failed).then_some(turn)
            }
        };
        if let Some(s) = self.live_h2() {
            return Ok(Fresh::H2(s));
        }
        let fresh = connect(dial, false, self.h2_streams()).await;
        if turn.is_some() {
            let failed = fresh.is_err();
            self.h2_failed.store(failed, Ordering::Relaxed);
        }
        if let Ok(Fresh::H2(s)) = &fresh {
            self.store_h2(s.conn());
        }
        fresh
    }

    /// Sends `req` (HTTP/1.1 form, or HTTP/2 form for an h2c endpoint:
    /// `proxy::Aim`) to the endpoint. h2c upstreams get
    /// HTTP/2, http1 upstreams HTTP/1.1, https upstreams what ALPN settles;
    /// upgrades always go over HTTP/1.1. When the request never left steer
    /// the error hands it back, so it can go elsewhere with its body intact.
    /// `fields`, the forwarding fields not in its map, go into an HTTP/1.1
    /// head as it is written; every other way, and a request handed back,
    /// gets them in its map.
    ///
    /// Only the common request, on a pooled HTTP/1.1 connection, is
    /// awaited in place; every other way is boxed. This future is part of
    /// every future above it (the retry loop, the request path, the
    /// connection's), each moved whole at least once a request: its size
    /// is paid several times over, a box once.
    #[allow(clippy::manual_async_fn)]
    pub(crate) fn send<'a>(
        &'a self,
        dial: Dial<'a>,
        mut req: Request<ReqBody>,
        mut fields: Option<HopFields>,
    ) -> impl Future<Output = Result<Sent, Failed>> + Send + 'a {
        async move {
            if req.headers().contains_key(header::UPGRADE) {
                into_map(&mut req, &mut fields);
                return pinned(|| send_upgrade(dial, req)).await;
            }
            let wants_h2 = dial.protocol != Protocol::Http1;
            if wants_h2 && let Some(sender) = self.live_h2() {
                into_map(&mut req, &mut fields);
                match pinned(|| send_h2(sender, dial, req)).await {
                    // The shared connection could take no new stream (it went
                    // away, or closed, before its task noticed): nothing was
                    // sent, and a new connection to the same endpoint is safe.
                    Err(Failed {
                        request: Some(back),
                        error,
                    }) => {
                        if error.silent() {
                            self.retire_quiet();
                        }
                        req = back;
                    }
                    sent => return sent,
                }
            }
            if dial.protocol != Protocol::H2c
                && let Some(conn) = self.take_h1(
                    req.method().is_idempotent() && http_body::Body::is_end_stream(req.body()),
                )
            {
                // Pinned where built (`crate::boxed`), in a statement of its
                // own: it borrows `fields`, which a failure hands back.
                let sent = std::pin::pin!(h1::send(conn, req, fields.as_ref(), true)).await;
                match sent {
                    // The idle connection died before our request went out (the
                    // upstream closed it): a fresh one is safe.
                    Err(Failed {
                        request: Some(back),
                        error: ClientError::Broken { .. },
                    }) => req = back,
                    other => return other.map(Sent::h1).map_err(|f| hand_back(f, fields)),
                }
            }
            pinned(|| self.send_fresh(dial, wants_h2, req, fields)).await
        }
    }

    /// Sends `req` on a new connection (a connect is kilobytes of future
    /// state: TCP, TLS handshake, HTTP handshake), or on a shared HTTP/2
    /// connection that another request opened, or that freed a slot,
    /// meanwhile.
    async fn send_fresh(
        &self,
        dial: Dial<'_>,
        wants_h2: bool,
        mut req: Request<ReqBody>,
        mut fields: Option<HopFields>,
    ) -> Result<Sent, Failed> {
        let mut silent_before = false;
        loop {
            let fresh = if wants_h2 {
                // h2c, or https where ALPN may settle on h2: shared connections.
                self.shared_h2(dial).await
            } else {
                connect(dial, false, h2conn::INITIAL_STREAMS).await
            };
            return match fresh {
                Err(error) => Err(hand_back(
                    Failed {
                        error,
                        request: Some(req),
                    },
                    fields,
                )),
                Ok(Fresh::H2(sender)) => {
                    into_map(&mut req, &mut fields);
                    match send_h2(sender, dial, req).await {
                        // A connection that had room meanwhile was quiet and
                        // stayed silent: once more, with the quiet ones gone.
                        Err(Failed {
                            request: Some(back),
                            error,
                        }) if error.silent() && !silent_before => {
                            silent_before = true;
                            self.retire_quiet();
                            req = back;
                            continue;
                        }
                        sent => sent,
                    }
                }
                Ok(Fresh::H1(conn)) => h1::send(conn, req, fields.as_ref(), false)
                    .await
                    .map(Sent::h1)
                    .map_err(|f| hand_back(f, fields)),
                Ok(Fresh::Upgrade(sender)) => {
                    into_map(&mut req, &mut fields);
                    send_hyper_h1(sender, dial, req).await
                }
            };
        }
    }
}

/// The forwarding fields into the request's map, for a way that sends
/// the map as it is.
fn into_map(req: &mut Request<ReqBody>, fields: &mut Option<HopFields>) {
    if let Some(fields) = fields.take() {
        fields.insert(req.headers_mut());
    }
}

/// A request handed back goes elsewhere with its forwarding fields in
/// its map: what sends it next sends the map.
fn hand_back(mut failed: Failed, mut fields: Option<HopFields>) -> Failed {
    if let Some(req) = &mut failed.request {
        into_map(req, &mut fields);
    }
    failed
}

/// An upgrade (WebSocket) on a fresh hyper HTTP/1.1 connection, which
/// hands the upgraded connection over after a 101.
async fn send_upgrade(dial: Dial<'_>, req: Request<ReqBody>) -> Result<Sent, Failed> {
    match connect(dial, true, h2conn::INITIAL_STREAMS).await {
        Ok(Fresh::Upgrade(sender)) => send_hyper_h1(sender, dial, req).await,
        Ok(_) => Err(Failed {
            error: ClientError::BadRequest {
                addr: dial.addr,
                reason: "the upstream did not settle on HTTP/1.1 for an upgrade",
            },
            request: Some(req),
        }),
        Err(error) => Err(Failed {
            error,
            request: Some(req),
        }),
    }
}

async fn send_hyper_h1(
    mut sender: UpgradeSender,
    dial: Dial<'_>,
    mut req: Request<ReqBody>,
) -> Result<Sent, Failed> {
    *req.version_mut() = Version::HTTP_11;
    match sender.try_send_request(req).await {
        Ok(response) => Ok(Sent::hyper(response)),
        Err(mut e) => Err(Failed {
            request: e.take_message(),
            error: ClientError::Broken {
                addr: dial.addr,
                source: e.into_error().into(),
            },
        }),
    }
}

/// Not an `async fn`, and the send pinned where built: `crate::boxed`.
#[allow(clippy::manual_async_fn)]
fn send_h2(
    sender: H2Slot,
    dial: Dial<'_>,
    req: Request<ReqBody>,
) -> impl Future<Output = Result<Sent, Failed>> {
    async move {
        let scheme = if dial.protocol == Protocol::Https {
            http::uri::Scheme::HTTPS
        } else {
            http::uri::Scheme::HTTP
        };
        let req = match to_h2(req, scheme, dial.addr) {
            Ok(r) => r,
            Err(reason) => {
                return Err(Failed {
                    error: ClientError::BadRequest {
                        addr: dial.addr,
                        reason,
                    },
                    request: None,
                });
            }
        };
        match std::pin::pin!(sender.send(req, dial.addr, dial.connect_timeout)).await {
            Ok(response) => Ok(Sent::h2(response)),
            Err(Failed { error, request }) => Err(Failed {
                error,
                request: request.map(to_h1),
            }),
        }
    }
}

/// HTTP/1.1 form -> HTTP/2 form: the Host becomes `:authority`.
fn to_h2(
    mut req: Request<ReqBody>,
    scheme: http::uri::Scheme,
    addr: SocketAddr,
) -> Result<Request<ReqBody>, &'static str> {
    // Already in HTTP/2 form: `proxy::Aim` for an h2c upstream.
    if req.version() == Version::HTTP_2
        && req.uri().scheme() == Some(&scheme)
        && req.uri().authority().is_some()
    {
        return Ok(req);
    }
    // From parts: the path and query go on as they are (shared bytes), only
    // the authority is parsed; no URI text is built and parsed again.
    let authority = match req.headers_mut().remove(header::HOST) {
        Some(h) => {
            http::uri::Authority::from_maybe_shared(bytes::Bytes::copy_from_slice(h.as_bytes()))
        }
        None => match req.uri().authority() {
            Some(own) => Ok(own.clone()),
            None => addr.to_string().parse(),
        },
    }
    .map_err(|_| "Host is not a valid authority")?;
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    parts.scheme = Some(scheme);
    parts.authority = Some(authority);
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    *req.uri_mut() = Uri::from_parts(parts).map_err(|_| "Host and path do not form a URI")?;
    *req.version_mut() = Version::HTTP_2;
    Ok(req)
}

/// HTTP/2 form -> HTTP/1.1 form (a request handed back unsent).
fn to_h1(mut req: Request<ReqBody>) -> Request<ReqBody> {
    if let Some(authority) = req.uri().authority().map(|a| a.as_str().to_owned())
        && let Ok(host) = http::HeaderValue::from_str(&authority)
    {
        req.headers_mut().insert(header::HOST, host);
    }
    if let Some(pq) = req.uri().path_and_query().cloned() {
        *req.uri_mut() = Uri::from(pq);
    }
    *req.version_mut() = Version::HTTP_11;
    req
}

/// Connects to the endpoint: steer's own HTTP/1.1 connection, its HTTP/2
/// one (h2c, or https when ALPN says h2; `h2_streams` open before the
/// upstream's SETTINGS), or with `upgrade` hyper's HTTP/1.1 (TLS offers
/// only http/1.1 then).
async fn connect(dial: Dial<'_>, upgrade: bool, h2_streams: usize) -> Result<Fresh, ClientError> {
    let addr = dial.addr;
    let tcp = tokio::time::timeout(dial.connect_timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| ClientError::ConnectTimeout {
            addr,
            timeout: dial.connect_timeout,
        })?
        .map_err(|source| connect_error(addr, source))?;
    // Small request/response heads must not wait for Nagle.
    let _ = tcp.set_nodelay(true);
    match (dial.protocol, dial.tls) {
        (Protocol::Https, Some(tls)) => {
            let config = if upgrade {
                tls.config_h1.clone()
            } else {
                tls.config.clone()
            };
            let handshake =
                tokio_rustls::TlsConnector::from(config).connect(tls.server_name.clone(), tcp);
            let stream = tokio::time::timeout(dial.connect_timeout, handshake)
                .await
                .map_err(|_| ClientError::ConnectTimeout {
                    addr,
                    timeout: dial.connect_timeout,
                })?
                .map_err(|source| ClientError::Tls { addr, source })?;
            if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                H2Conn::handshake(stream, addr, h2_streams)
                    .await
                    .map(|c| Fresh::H2(c.reserve()))
            } else if upgrade {
                handshake_upgrade(stream, addr).await
            } else {
                Ok(Fresh::H1(H1Conn::new(
                    h1::Stream::Tls(Box::new(stream)),
                    addr,
                )))
            }
        }
        (Protocol::H2c, _) if !upgrade => H2Conn::handshake(tcp, addr, h2_streams)
            .await
            .map(|c| Fresh::H2(c.reserve())),
        // Never fall back to plaintext for an https upstream.
        (Protocol::Https, None) => Err(ClientError::Tls {
            addr,
            source: std::io::Error::other(
                "no usable TLS settings for this upstream (see the load log)",
            ),
        }),
        _ if upgrade => handshake_upgrade(tcp, addr).await,
        _ => Ok(Fresh::H1(H1Conn::new(h1::Stream::Plain(tcp), addr))),
    }
}

/// hyper's HTTP/1.1 connection, for an upgrade.
async fn handshake_upgrade<T>(io: T, addr: SocketAddr) -> Result<Fresh, ClientError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| ClientError::Handshake {
            addr,
            source: e.into(),
        })?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(%addr, error = %e, "upstream HTTP/1.1 connection ended");
        }
    });
    Ok(Fresh::Upgrade(sender))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_return_closes_a_few_of_the_connections_idle_past_the_ttl_oldest_first() {
        let start = Instant::now();
        let ages = [70u64, 65, 60, 55, 51, 50, 49, 10];
        let now = start + Duration::from_secs(ages[0]);
        let mut idle: VecDeque<(u64, Instant)> = ages
            .iter()
            .map(|age| (*age, now - Duration::from_secs(*age)))
            .collect();
        let mut out = Vec::new();
        sweep(&mut idle, now, &mut out);
        assert_eq!(out, [70, 65, 60, 55], "at most four, oldest first");
        out.clear();
        sweep(&mut idle, now, &mut out);
        assert_eq!(out, [51, 50], "50 s idle is past the TTL, 49 s is not");
        assert_eq!(
            idle.iter().map(|(age, _)| *age).collect::<Vec<_>>(),
            [49, 10]
        );
        out.clear();
        sweep(&mut idle, now, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn only_steers_own_shortages_spare_the_endpoint() {
        use rustix::io::Errno;
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let failed = |errno: Errno| connect_error(addr, std::io::Error::from(errno));
        for errno in [Errno::MFILE, Errno::NFILE, Errno::NOBUFS, Errno::NOMEM] {
            let e = failed(errno);
            assert!(e.local() && !e.endpoint_down() && e.not_sent(), "{e}");
        }
        for errno in [
            Errno::ADDRNOTAVAIL,
            Errno::CONNREFUSED,
            Errno::NETUNREACH,
            Errno::HOSTUNREACH,
            Errno::CONNRESET,
        ] {
            let e = failed(errno);
            assert!(!e.local() && e.endpoint_down(), "{e}");
        }
    }
}
