//! HTTP/2 client connections, served with the `h2` crate directly rather
//! than through hyper, so that steer owns each stream: it can reset one
//! whose client grants no flow-control window (`send_timeout`), and it
//! sends a response only as fast as the client's window allows, never
//! buffering beyond it (a stalled client holds at most one chunk per
//! stream).
//!
//! One task per stream runs `proxy::handle` and then pipes the response
//! body; the connection task accepts streams, answers keep-alive pings,
//! closes idle connections and asks them to finish on shutdown.

use std::future::poll_fn;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};
use http::{Request, Response, header};
use http_body::Body as _;
use tokio::io::{AsyncRead, AsyncWrite};

use super::conn::{self, OpenGuard};
use super::h2_connect::{Handed, OnConnect};
use super::io::StallReport;
use super::{ClientResult, ConnCtx};
use crate::body::Inbound;
use crate::h2send::{self, Stop};
use crate::proxy::{self, ProxyBody};

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

/// What each stream task of a connection shares.
struct Streams {
    shared: Arc<crate::proxy::Shared>,
    info: crate::proxy::ConnInfo,
    send_timeout: Duration,
    progress: Arc<Progress>,
    stalls: StallReport,
}

/// Serves one HTTP/2 connection whose preface and first frame are already
/// at the front of `io` (see `io::read_h2_start`).
pub(super) async fn serve<I>(io: I, ctx: ConnCtx) -> ClientResult
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ConnCtx {
        shared,
        info,
        activity,
        serving,
        mut finish,
        stalls,
        ..
    } = ctx;
    // The preface is in `io` already, so this only sends our SETTINGS;
    // bounded all the same, by the write deadline underneath.
    let mut conn = serving.h2.handshake::<_, Bytes>(io).await?;
    let mut ping = conn.ping_pong();
    let streams = Arc::new(Streams {
        shared,
        info,
        send_timeout: serving.send_timeout,
        progress: Arc::default(),
        stalls,
    });
    streams.progress.touch();
    let idle = serving.idle;
    let mut tick = super::idle_tick(idle);
    let mut keepalive = tokio::time::interval(PING_EVERY);
    keepalive.reset();
    let mut pong_due: Option<tokio::time::Instant> = None;
    let mut asked = *finish.borrow();
    if asked {
        conn.graceful_shutdown();
    }
    loop {
        let pong_wait = async {
            match (pong_due, ping.as_mut()) {
                (Some(due), Some(p)) => tokio::time::timeout_at(due, poll_fn(|cx| p.poll_pong(cx)))
                    .await
                    .map(|r| r.is_ok()),
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            accepted = conn.accept() => match accepted {
                Some(Ok((req, respond))) => {
                    let open = activity.open();
                    tokio::spawn(stream(req, respond, streams.clone(), open));
                }
                Some(Err(e)) => return Err(e.into()),
                None => return Ok(()),
            },
            changed = finish.changed(), if !asked => {
                if changed.is_err() || *finish.borrow() {
                    asked = true;
                    conn.graceful_shutdown();
                }
            }
            _ = tick.tick(), if !asked => {
                if activity.idle_for(idle) {
                    asked = true;
                    tracing::debug!(peer = %streams.info.peer, "closing idle HTTP/2 connection");
                    conn.graceful_shutdown();
                }
            }
            _ = keepalive.tick(), if pong_due.is_none() => {
                if let Some(p) = ping.as_mut()
                    && p.send_ping(h2::Ping::opaque()).is_ok()
                {
                    pong_due = Some(tokio::time::Instant::now() + PONG_TIMEOUT);
                }
            }
            answered = pong_wait => match answered {
                Ok(true) => pong_due = None,
                _ => {
                    tracing::debug!(peer = %streams.info.peer, "HTTP/2 keep-alive ping not answered; closing");
                    return Ok(());
                }
            },
            () = streams.progress.give_up.notified() => {
                conn.abrupt_shutdown(Reason::NO_ERROR);
                // Lets the GOAWAY out; the write deadline bounds a client
                // that reads nothing, this bounds the rest.
                let _ = tokio::time::timeout(CLOSE_GRACE, async {
                    while let Some(Ok(_)) = conn.accept().await {}
                })
                .await;
                return Ok(());
            }
        }
    }
}

/// One stream: the request through `proxy::handle`, the response back.
/// A client reset (RST_STREAM) drops whatever is in progress, and with it
/// the upstream request or response.
async fn stream(
    req: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    streams: Arc<Streams>,
    _open: OpenGuard,
) {
    let (mut parts, recv) = req.into_parts();
    let length = content_length(&parts.headers);
    // RFC 8441 §4: an extended CONNECT carries `:protocol`; its stream
    // becomes a tunnel if the request path answers 2xx.
    let connect = (parts.method == http::Method::CONNECT
        && parts.extensions.get::<h2::ext::Protocol>().is_some())
    .then(|| {
        let (on, hand) = OnConnect::new();
        parts.extensions.insert(on);
        hand
    });
    let req = Request::from_parts(parts, Inbound::h2(recv, length));
    // Boxed: the request path's future is kilobytes; inline, the stream's
    // task would copy it on spawn and again as the task ends.
    let mut handled = Box::pin(proxy::handle(
        streams.shared.clone(),
        streams.info.clone(),
        req,
    ));
    let resp = tokio::select! {
        resp = &mut handled => resp,
        _ = poll_fn(|cx| respond.poll_reset(cx)) => return,
    };
    if let Some(hand) = connect
        && resp.status().is_success()
    {
        return hand_over(resp, respond, hand, &streams).await;
    }
    let (mut head, body) = resp.into_parts();
    let eos = body.is_end_stream();
    if !eos
        && !head.headers.contains_key(header::CONTENT_LENGTH)
        && let Some(n) = body.size_hint().exact()
    {
        head.headers.insert(header::CONTENT_LENGTH, n.into());
    }
    let Some(send) = send_head(&mut respond, head, eos) else {
        return;
    };
    if !eos {
        pipe(body, send, &streams).await;
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
    mut respond: SendResponse<Bytes>,
    hand: tokio::sync::oneshot::Sender<Handed>,
    streams: &Streams,
) {
    // RFC 9110 §9.3.6: no framing headers on a 2xx to CONNECT.
    let (mut head, _) = resp.into_parts();
    head.headers.remove(header::CONTENT_LENGTH);
    head.headers.remove(header::TRANSFER_ENCODING);
    let Some(send) = send_head(&mut respond, head, false) else {
        return;
    };
    let (handed, ended) = Handed::new(send, streams.send_timeout, streams.progress.clone());
    if hand.send(handed).is_ok() {
        let _ = ended.await;
    }
}

fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Sends `body` on `send`, each chunk only within the window the client
/// grants (`h2send`). A stall past `send_timeout` resets the stream
/// (CANCEL) and, when no stream of the connection moved either, closes the
/// connection; the body, and with it the upstream side, is dropped on
/// return either way.
async fn pipe(body: ProxyBody, mut send: SendStream<Bytes>, streams: &Streams) {
    let touch = || streams.progress.touch();
    let sent = h2send::send_body(
        body,
        &mut send,
        Some(streams.send_timeout),
        touch,
        Reason::INTERNAL_ERROR,
    )
    .await;
    if sent == Err(Stop::Stalled) {
        send.send_reset(Reason::CANCEL);
        streams.stalls.stalled(
            "an HTTP/2 response got no flow-control window for send_timeout; stream reset",
        );
        streams.progress.stalled(streams.send_timeout);
    }
}
