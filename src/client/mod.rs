//! The upstream HTTP client: one connection pool per endpoint (idle
//! HTTP/1.1 connections, one shared HTTP/2 connection), over plain TCP or
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

use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use http::{Request, Response, Uri, Version, header};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::config::Protocol;
use crate::tls::client::UpstreamTls;

mod body;
mod replay;

pub use body::{BodyTooLarge, Fault, ReqBody, Source};
pub use replay::{REPLAY_LIMIT, Replay, ReplayBody};

/// Idle HTTP/1.1 connections kept per endpoint.
const MAX_IDLE_H1: usize = 256;
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
        source: hyper::Error,
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
        source: hyper::Error,
    },
}

impl ClientError {
    /// True when the upstream did not process the request, so it may go
    /// anywhere else whatever its method: it never left steer, or an
    /// HTTP/2 upstream refused the stream (REFUSED_STREAM, RFC 9113 §8.7)
    /// or went away gracefully before it (GOAWAY with NO_ERROR: h2 fails
    /// only the streams above the GOAWAY's last-stream-id with it, and the
    /// requests sent after it).
    pub fn unprocessed(&self) -> bool {
        match self {
            ClientError::Broken { source, .. } => h2_error(source).is_some_and(|e| {
                e.is_remote()
                    && (e.reason() == Some(h2::Reason::REFUSED_STREAM)
                        || (e.is_go_away() && e.reason() == Some(h2::Reason::NO_ERROR)))
            }),
            other => other.not_sent(),
        }
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

    /// True when the request never left steer (safe to retry anywhere).
    pub fn not_sent(&self) -> bool {
        self.endpoint_down() || matches!(self, ClientError::BadRequest { .. })
    }
}

/// The h2 error behind a hyper error, if any.
fn h2_error(e: &hyper::Error) -> Option<&h2::Error> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            return Some(h2);
        }
        source = s.source();
    }
    None
}

/// A HTTP/1.1 connection lent out for one exchange; give it back with
/// [`Pool::put_h1`] once the response body has ended.
pub type H1Sender = http1::SendRequest<ReqBody>;
type H2Sender = http2::SendRequest<ReqBody>;

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
    idle_h1: Mutex<Vec<(H1Sender, Instant)>>,
    /// The shared HTTP/2 connection: read on every request without
    /// waiting (never held across `.await`).
    h2: Mutex<Option<H2Sender>>,
    /// Held by the one request that opens the HTTP/2 connection, so that a
    /// burst of first requests waits for that handshake instead of opening
    /// one each.
    h2_connect: tokio::sync::Mutex<()>,
}

/// A failed exchange; `request` is the request back when it was not sent.
#[derive(Debug)]
pub struct Failed {
    pub error: ClientError,
    pub request: Option<Request<ReqBody>>,
}

/// What `send` returns besides the response: the HTTP/1.1 connection to
/// return to the pool when the body is done.
pub struct Sent {
    pub response: Response<Incoming>,
    pub h1: Option<H1Sender>,
}

/// A fresh connection, by what its handshake (ALPN) settled on.
enum Fresh {
    H1(H1Sender),
    H2(H2Sender),
}

impl Pool {
    pub fn put_h1(&self, sender: H1Sender) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle_h1.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_IDLE_H1 {
            idle.push((sender, Instant::now()));
        }
    }

    async fn take_h1(&self) -> Option<H1Sender> {
        loop {
            let (mut sender, since) = {
                let mut idle = self.idle_h1.lock().unwrap_or_else(PoisonError::into_inner);
                idle.pop()?
            };
            if sender.is_closed() || since.elapsed() >= IDLE_H1_TTL {
                continue;
            }
            // A connection whose last response body just ended may need a
            // moment for its task to be ready for the next request.
            if let Ok(Ok(())) =
                tokio::time::timeout(Duration::from_millis(20), sender.ready()).await
            {
                return Some(sender);
            }
        }
    }

    /// A live shared HTTP/2 connection, if there is one.
    fn live_h2(&self) -> Option<H2Sender> {
        self.h2
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .filter(|s| !s.is_closed())
            .cloned()
    }

    fn store_h2(&self, sender: &H2Sender) {
        *self.h2.lock().unwrap_or_else(PoisonError::into_inner) = Some(sender.clone());
    }

    /// A shared HTTP/2 connection that failed a stream with a GOAWAY takes
    /// no new ones: the next request opens another at once, instead of
    /// waiting for hyper to notice.
    fn forget_h2_if_gone(&self, sent: &Result<Sent, Failed>) {
        if let Err(Failed {
            error: ClientError::Broken { source, .. },
            ..
        }) = sent
            && h2_error(source).is_some_and(h2::Error::is_go_away)
        {
            *self.h2.lock().unwrap_or_else(PoisonError::into_inner) = None;
        }
    }

    /// Opens the shared HTTP/2 connection, or waits for the request that is
    /// opening it. A waiter that finds none afterwards (that connect failed)
    /// tries once itself rather than queueing behind a dead endpoint.
    async fn shared_h2(&self, dial: Dial<'_>) -> Result<Fresh, ClientError> {
        let waited = match self.h2_connect.try_lock() {
            Ok(guard) => Some(guard),
            Err(_) => {
                let _turn = self.h2_connect.lock().await;
                if let Some(s) = self.live_h2() {
                    return Ok(Fresh::H2(s));
                }
                None
            }
        };
        let fresh = connect(dial, false).await?;
        if let Fresh::H2(s) = &fresh {
            self.store_h2(s);
        }
        drop(waited);
        Ok(fresh)
    }

    /// Sends `req` (HTTP/1.1 form) to the endpoint. h2c upstreams get
    /// HTTP/2, http1 upstreams HTTP/1.1, https upstreams what ALPN settles;
    /// upgrades always go over HTTP/1.1. When the request never left steer
    /// the error hands it back, so it can go elsewhere with its body intact.
    pub async fn send(&self, dial: Dial<'_>, req: Request<ReqBody>) -> Result<Sent, Failed> {
        let upgrade = req.headers().contains_key(header::UPGRADE);
        let wants_h2 = !upgrade && dial.protocol != Protocol::Http1;
        if wants_h2 && let Some(sender) = self.live_h2() {
            let sent = send_h2(sender, dial, req).await;
            self.forget_h2_if_gone(&sent);
            return sent;
        }
        let mut req = req;
        if (dial.protocol != Protocol::H2c || upgrade)
            && let Some(sender) = self.take_h1().await
        {
            match send_h1(sender, dial, req).await {
                // The idle connection died before our request went out (the
                // upstream closed it): a fresh one is safe.
                Err(Failed {
                    request: Some(back),
                    error: ClientError::Broken { .. },
                }) => req = back,
                other => return other,
            }
        }
        // Boxed: a connect (TCP, TLS handshake, HTTP handshake) is kilobytes
        // of future state that every request would otherwise carry and copy.
        let fresh = if wants_h2 {
            // h2c, or https where ALPN may settle on h2: one shared connection.
            Box::pin(self.shared_h2(dial)).await
        } else {
            Box::pin(connect(dial, upgrade)).await
        };
        match fresh {
            Err(error) => Err(Failed {
                error,
                request: Some(req),
            }),
            Ok(Fresh::H2(sender)) => {
                let sent = send_h2(sender, dial, req).await;
                self.forget_h2_if_gone(&sent);
                sent
            }
            Ok(Fresh::H1(sender)) => send_h1(sender, dial, req).await,
        }
    }
}

async fn send_h1(
    mut sender: H1Sender,
    dial: Dial<'_>,
    mut req: Request<ReqBody>,
) -> Result<Sent, Failed> {
    *req.version_mut() = Version::HTTP_11;
    match sender.try_send_request(req).await {
        Ok(response) => Ok(Sent {
            response,
            h1: Some(sender),
        }),
        Err(mut e) => Err(Failed {
            request: e.take_message(),
            error: ClientError::Broken {
                addr: dial.addr,
                source: e.into_error(),
            },
        }),
    }
}

async fn send_h2(
    mut sender: H2Sender,
    dial: Dial<'_>,
    req: Request<ReqBody>,
) -> Result<Sent, Failed> {
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
    match sender.try_send_request(req).await {
        Ok(response) => Ok(Sent { response, h1: None }),
        Err(mut e) => Err(Failed {
            request: e.take_message().map(to_h1),
            error: ClientError::Broken {
                addr: dial.addr,
                source: e.into_error(),
            },
        }),
    }
}

/// HTTP/1.1 form -> HTTP/2 form: the Host becomes `:authority`.
fn to_h2(
    mut req: Request<ReqBody>,
    scheme: http::uri::Scheme,
    addr: SocketAddr,
) -> Result<Request<ReqBody>, &'static str> {
    // From parts: the path and query go on as they are (shared bytes), only
    // the authority is parsed; no URI text is built and parsed again.
    let authority = match req.headers_mut().remove(header::HOST) {
        Some(h) => {
            http::uri::Authority::from_maybe_shared(bytes::Bytes::copy_from_slice(h.as_bytes()))
        }
        None => addr.to_string().parse(),
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

async fn connect(dial: Dial<'_>, h1_only: bool) -> Result<Fresh, ClientError> {
    let addr = dial.addr;
    let tcp = tokio::time::timeout(dial.connect_timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| ClientError::ConnectTimeout {
            addr,
            timeout: dial.connect_timeout,
        })?
        .map_err(|source| ClientError::Connect { addr, source })?;
    // Small request/response heads must not wait for Nagle.
    let _ = tcp.set_nodelay(true);
    match (dial.protocol, dial.tls) {
        (Protocol::Https, Some(tls)) => {
            let config = if h1_only {
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
            let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
            handshake_http(TokioIo::new(stream), addr, h2).await
        }
        (Protocol::H2c, _) if !h1_only => handshake_http(TokioIo::new(tcp), addr, true).await,
        // Never fall back to plaintext for an https upstream.
        (Protocol::Https, None) => Err(ClientError::Tls {
            addr,
            source: std::io::Error::other(
                "no usable TLS settings for this upstream (see the load log)",
            ),
        }),
        _ => handshake_http(TokioIo::new(tcp), addr, false).await,
    }
}

async fn handshake_http<T>(io: TokioIo<T>, addr: SocketAddr, h2: bool) -> Result<Fresh, ClientError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if h2 {
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .adaptive_window(true)
            .keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10))
            .handshake(io)
            .await
            .map_err(|source| ClientError::Handshake { addr, source })?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "upstream HTTP/2 connection ended");
            }
        });
        return Ok(Fresh::H2(sender));
    }
    let (sender, conn) = http1::Builder::new()
        .handshake(io)
        .await
        .map_err(|source| ClientError::Handshake { addr, source })?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(%addr, error = %e, "upstream HTTP/1.1 connection ended");
        }
    });
    Ok(Fresh::H1(sender))
}
