//! Listeners and connection serving: accept, set up hyper-util's auto
//! builder (HTTP/1.1 and h2c prior knowledge on one port), hand each request
//! to a service, and stop gracefully. Knows nothing about routing.

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
use hyper_util::server::graceful::GracefulShutdown;
use prometheus::IntGauge;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::ProxySettings;

pub mod handover;
pub mod listeners;
use crate::proxy::{self, ConnInfo, ProxyBody, Shared};

/// hyper's own parser limit sits above steer's `max_header_bytes` so that
/// oversized heads reach steer and get a 431 with a reason; only heads
/// beyond this get hyper's bare 431.
const PARSER_SLACK: usize = 4;

/// How long, at shutdown, keep-alive clients get to take their
/// `Connection: close` answers before idle connections are closed.
const KEEPALIVE_GRACE: Duration = Duration::from_secs(2);

/// Connection-level settings for client-facing listeners.
pub fn builder(settings: &ProxySettings) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .max_buf_size((settings.max_header_bytes * PARSER_SLACK).max(8192 * 2))
        .max_headers(settings.max_headers * 2)
        .keep_alive(true);
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
    builder
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
/// in progress; HTTP/2: GOAWAY) and waits up to `drain` for them.
pub async fn serve_proxy(
    listener: TcpListener,
    tls: Option<TlsListener>,
    shared: Arc<Shared>,
    settings: ProxySettings,
    stop: watch::Receiver<bool>,
    active: IntGauge,
) {
    let builder = Arc::new(builder(&settings));
    let graceful = GracefulShutdown::new();
    accept_loop(listener, stop, |stream, peer| {
        let shared = shared.clone();
        let info = ConnInfo {
            peer,
            tls: tls.is_some(),
        };
        let service = service_fn(move |req: Request<Incoming>| {
            let shared = shared.clone();
            async move { Ok::<_, Infallible>(proxy::handle(shared, info, req).await) }
        });
        let watcher = graceful.watcher();
        let builder = builder.clone();
        let tls = tls.clone();
        let active = active.clone();
        async move {
            active.inc();
            let result = match tls {
                None => {
                    let conn =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    watcher.watch(conn.into_owned()).await
                }
                Some(tls) => {
                    match tokio::time::timeout(tls.handshake_timeout, tls.acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(stream)) => {
                            let conn = builder
                                .serve_connection_with_upgrades(TokioIo::new(stream), service);
                            watcher.watch(conn.into_owned()).await
                        }
                        Ok(Err(e)) => Err(format!("TLS handshake failed: {e}").into()),
                        Err(_) => Err("TLS handshake timed out".into()),
                    }
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "client connection ended with an error");
            }
            active.dec();
        }
    })
    .await;
    tracing::info!(
        open = graceful.count(),
        "stopped accepting; draining open connections"
    );
    let drain = shared.live.load().proxy.drain_timeout;
    let started = tokio::time::Instant::now();
    if shared.draining.load(std::sync::atomic::Ordering::Relaxed) {
        // Keep-alive grace: clients still sending get their answers with
        // `Connection: close` and leave by themselves; closing an idle
        // HTTP/1.1 connection under a client that is just sending on it
        // would fail that request. Whoever is left after the grace is
        // asked to finish (HTTP/2: GOAWAY) or closed.
        let grace = (drain / 2).min(KEEPALIVE_GRACE);
        while graceful.count() > 0 && started.elapsed() < grace {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let left = drain.saturating_sub(started.elapsed());
    if tokio::time::timeout(left, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain_timeout passed with requests still open; closing them");
    }
}

/// Serves a small internal HTTP service (admin API) on `listener`.
pub async fn serve_simple<F, Fut>(listener: TcpListener, stop: watch::Receiver<bool>, handler: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    accept_loop(listener, stop, move |stream, peer| {
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

async fn accept_loop<F, Fut>(listener: TcpListener, mut stop: watch::Receiver<bool>, on_conn: F)
where
    F: Fn(tokio::net::TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    tokio::pin!(stopped);
    loop {
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
