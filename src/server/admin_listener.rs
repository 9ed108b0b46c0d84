//! Connections of the admin listener. At most `MAX_CONNECTIONS` are open
//! (accepting pauses at the cap, as on a proxy listener), so the admin API
//! can never take the descriptors the proxy needs; each connection has a
//! head deadline, an idle timeout and a write deadline of its own. What a
//! request may do is `crate::admin`'s business.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::io::{Prefixed, Speaks, StallReport, WriteDeadline};
use super::{Graceful, Limits, accept_loop, conn, drive, io};
use crate::config::ProxySettings;
use crate::proxy::ProxyBody;

/// Open admin connections at most.
pub const MAX_CONNECTIONS: usize = 64;
/// An admin client has this long to send a request head (or, for h2c, the
/// preface and its SETTINGS); at most the proxy's `header_read_timeout`.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// An admin connection with no request open for this long is closed; at
/// most the proxy's `idle_timeout`.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// An admin answer that cannot send a byte for this long is given up.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves the admin API on `listener` until `stop` turns true.
pub(super) async fn serve<F, Fut>(
    listener: TcpListener,
    stop: watch::Receiver<bool>,
    handler: F,
    settings: &ProxySettings,
    send_timeouts: prometheus::IntCounter,
) where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    let head_timeout = HEADER_READ_TIMEOUT.min(settings.header_read_timeout);
    let idle = IDLE_TIMEOUT.min(settings.idle_timeout);
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(head_timeout)
        .keep_alive(true);
    let http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    let builders = Arc::new((http1, http2));
    let tracker = Arc::new(conn::Tracker::default());
    let limits = Limits {
        max: MAX_CONNECTIONS,
        tracker: tracker.clone(),
    };
    accept_loop(listener, stop, Some(limits), move |stream, peer| {
        let slot = tracker.admit(peer.ip(), None);
        let handler = handler.clone();
        let builders = builders.clone();
        let send_timeouts = send_timeouts.clone();
        async move {
            let _slot = slot;
            let activity = conn::Activity::new(peer);
            let per_request = activity.clone();
            let service = service_fn(move |req| {
                let handler = handler.clone();
                let open = per_request.open();
                async move {
                    let resp = handler(req).await;
                    Ok::<_, Infallible>(resp.map(|b| conn::Guarded::new(b, open)))
                }
            });
            let report = StallReport {
                activity: activity.clone(),
                counter: send_timeouts,
            };
            let mut io = WriteDeadline::new(stream, SEND_TIMEOUT, report);
            let deadline = tokio::time::Instant::now() + head_timeout;
            let mut buf = BytesMut::new();
            let speaks = match tokio::time::timeout_at(deadline, io::sniff(&mut io, &mut buf)).await
            {
                Ok(Ok(speaks)) => speaks,
                Ok(Err(_)) | Err(_) => return,
            };
            let (http1, http2) = &*builders;
            let result = match speaks {
                Speaks::Nothing => Ok(()),
                Speaks::Http1 => {
                    let io = TokioIo::new(Prefixed::new(buf.freeze(), io));
                    drive(http1.serve_connection(io, service), &activity, idle, None).await
                }
                Speaks::Http2 => {
                    match tokio::time::timeout_at(deadline, io::read_h2_start(&mut io, &mut buf))
                        .await
                    {
                        Ok(Ok(())) => {
                            let io = TokioIo::new(Prefixed::new(buf.freeze(), io));
                            drive(http2.serve_connection(io, service), &activity, idle, None).await
                        }
                        Ok(Err(_)) | Err(_) => return,
                    }
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "admin connection ended with an error");
            }
        }
    })
    .await;
}

impl<I, S> Graceful for hyper::server::conn::http1::Connection<I, S>
where
    S: hyper::service::HttpService<Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S::ResBody: http_body::Body + 'static,
    <S::ResBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn graceful(self: std::pin::Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S, E> Graceful for hyper::server::conn::http2::Connection<I, S, E>
where
    S: hyper::service::HttpService<Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S::ResBody: http_body::Body + 'static,
    <S::ResBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, S::ResBody>,
{
    fn graceful(self: std::pin::Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}
