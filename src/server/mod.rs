//! Listeners and connection serving: accept, serve plain HTTP/1.1 in rounds
//! that give their buffers back when idle (`park`), TLS and h2c prior
//! knowledge with hyper-util's auto builder, hand each request to a
//! service, and stop gracefully. Knows nothing about routing.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus::IntGauge;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::ProxySettings;

mod conn;
pub mod handover;
pub mod listeners;
mod park;
use crate::proxy::{self, ConnInfo, ProxyBody, Shared};

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

/// The two ways a client-facing listener serves a connection: hyper-util's
/// auto builder (TLS, h2c) and plain HTTP/1.1 rounds (`park`).
pub struct Builders {
    auto: auto::Builder<TokioExecutor>,
    http1: hyper::server::conn::http1::Builder,
}

/// Connection-level settings for client-facing listeners.
pub fn builder(settings: &ProxySettings) -> Builders {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .max_buf_size(parser_buf_size(settings))
        .keep_alive(true);
    if let Some(n) = parser_max_headers(settings) {
        builder.http1().max_headers(n);
    }
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(
            u32::try_from(settings.max_header_bytes * PARSER_SLACK).unwrap_or(u32::MAX),
        )
        .max_concurrent_streams(250)
        .adaptive_window(true)
        .max_pending_accept_reset_streams(100)
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20));
    Builders {
        auto: builder,
        http1: park::http1_builder(settings),
    }
}

/// How often a connection checks whether it has been idle for `idle`.
fn idle_tick(idle: Duration) -> tokio::time::Interval {
    tokio::time::interval((idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(5)))
}

/// TLS on a listener: the acceptor (certificates swap underneath it) and
/// how long a client may take to finish its handshake.
#[derive(Clone)]
pub struct TlsListener {
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub handshake_timeout: Duration,
}

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
) {
    let builder = Arc::new(builder(&settings));
    let tracker = Arc::new(conn::Tracker::default());
    let (finish, finish_rx) = watch::channel(false);
    let closing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let limits = Limits {
        max: settings.max_connections,
        tracker: tracker.clone(),
    };
    accept_loop(listener, stop, Some(limits), |stream, peer| {
        let slot = tracker.admit(peer.ip(), settings.max_connections_per_ip);
        let shared = shared.clone();
        let builder = builder.clone();
        let tls = tls.clone();
        let active = active.clone();
        let finish = finish_rx.clone();
        let idle = settings.idle_timeout;
        let header_read_timeout = settings.header_read_timeout;
        let closing = closing.clone();
        async move {
            let Some(_slot) = slot else {
                tracing::warn!(%peer, "per-client connection cap reached; closing the new connection");
                return;
            };
            active.inc();
            let activity = conn::Activity::new();
            let io = stream;
            let info = ConnInfo {
                peer,
                tls: tls.is_some(),
                closing: closing.clone(),
            };
            // Boxed: the task then holds a pointer, not the largest of the
            // two futures inline (a TLS session is kilobytes), which is what
            // an idle connection costs.
            let result = match tls {
                None => Box::pin(park::serve(&builder, io, shared, info, activity, idle, header_read_timeout, finish)).await,
                Some(tls) => {
                    Box::pin(async move {
                        match tokio::time::timeout(tls.handshake_timeout, tls.acceptor.accept(io)).await {
                            Ok(Ok(stream)) => {
                                serve_client(&builder.auto, TokioIo::new(stream), shared, info, activity, idle, finish).await
                            }
                            Ok(Err(e)) => Err(format!("TLS handshake failed: {e}").into()),
                            Err(_) => Err("TLS handshake timed out".into()),
                        }
                    })
                    .await
                }
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

type ClientResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// Serves one client connection until it ends; asks it to finish when
/// `finish` turns true or when it has been idle for `idle`.
async fn serve_client<I>(
    builder: &auto::Builder<TokioExecutor>,
    io: TokioIo<I>,
    shared: Arc<Shared>,
    info: ConnInfo,
    activity: Arc<conn::Activity>,
    idle: Duration,
    mut finish: watch::Receiver<bool>,
) -> ClientResult
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let per_request = activity.clone();
    let peer = info.peer;
    let service = service_fn(move |req: Request<Incoming>| {
        let shared = shared.clone();
        let open = per_request.open();
        let info = info.clone();
        async move {
            let resp = proxy::handle(shared, info, req).await;
            Ok::<_, Infallible>(resp.map(|b| conn::Guarded::new(b, open)))
        }
    });
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    let mut tick = idle_tick(idle);
    let mut asked = *finish.borrow();
    if asked {
        conn.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            result = conn.as_mut() => return result,
            changed = finish.changed(), if !asked => {
                if changed.is_err() || *finish.borrow() {
                    asked = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
            _ = tick.tick(), if !asked => {
                if activity.idle_for(idle) {
                    asked = true;
                    tracing::debug!(%peer, "closing idle client connection");
                    conn.as_mut().graceful_shutdown();
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

/// Serves a small internal HTTP service (admin API) on `listener`.
pub async fn serve_simple<F, Fut>(listener: TcpListener, stop: watch::Receiver<bool>, handler: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    accept_loop(listener, stop, None, move |stream, peer| {
        let handler = handler.clone();
        let service = service_fn(move |req| {
            let handler = handler.clone();
            async move { Ok::<_, Infallible>(handler(req).await) }
        });
        let builder = builder.clone();
        async move {
            if let Err(e) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "admin connection ended with an error");
            }
        }
    })
    .await;
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
