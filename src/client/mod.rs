//! The upstream HTTP client: one connection pool per endpoint (idle
//! HTTP/1.1 connections, one shared HTTP/2 connection), used by the proxy
//! and by health probes alike.
//!
//! Why not hyper-util's pooled `Client`: it takes the connection target and
//! the pool key from the request URI, and over HTTP/2 it sends that URI's
//! authority as `:authority`. steer must connect to the endpoint's address
//! while sending the client's Host as `:authority`, so connections are keyed
//! by endpoint here and the URI carries the client's host.

use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use crate::config::Protocol;

/// Request bodies sent upstream: the client's streamed body, or bytes we
/// hold (probes, buffered retries).
pub type ReqBody = Either<Incoming, Full<Bytes>>;

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
    #[error("HTTP handshake with {addr} failed: {source}")]
    Handshake {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
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
    /// True when the request never left steer (safe to retry anywhere).
    pub fn not_sent(&self) -> bool {
        matches!(
            self,
            ClientError::Connect { .. }
                | ClientError::ConnectTimeout { .. }
                | ClientError::Handshake { .. }
        )
    }
}

/// A HTTP/1.1 connection lent out for one exchange; give it back with
/// [`Pool::put_h1`] once the response body has ended.
pub type H1Sender = http1::SendRequest<ReqBody>;

#[derive(Debug, Default)]
pub struct Pool {
    idle_h1: Mutex<Vec<(H1Sender, Instant)>>,
    h2: tokio::sync::Mutex<Option<http2::SendRequest<ReqBody>>>,
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

    /// Number of idle HTTP/1.1 connections (for tests and metrics).
    pub fn idle_h1(&self) -> usize {
        self.idle_h1
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Sends `req` to `addr`. `req`'s URI must be in origin form for
    /// HTTP/1.1 and absolute (client's authority) for HTTP/2; `protocol`
    /// picks the wire protocol; upgrades always go over HTTP/1.1. When the
    /// request never left steer the error hands it back, so it can be sent
    /// elsewhere with its body intact.
    pub async fn send(
        &self,
        addr: SocketAddr,
        protocol: Protocol,
        mut req: Request<ReqBody>,
        connect_timeout: Duration,
    ) -> Result<Sent, Failed> {
        let h2 = matches!(protocol, Protocol::H2c) && req.version() == Version::HTTP_2;
        if h2 {
            let mut sender = match self.h2_sender(addr, connect_timeout).await {
                Ok(s) => s,
                Err(error) => {
                    return Err(Failed {
                        error,
                        request: Some(req),
                    });
                }
            };
            return match sender.try_send_request(req).await {
                Ok(response) => Ok(Sent { response, h1: None }),
                Err(mut e) => Err(Failed {
                    request: e.take_message(),
                    error: ClientError::Broken {
                        addr,
                        source: e.into_error(),
                    },
                }),
            };
        }
        *req.version_mut() = Version::HTTP_11;
        if let Some(mut sender) = self.take_h1().await {
            match sender.try_send_request(req).await {
                Ok(response) => {
                    return Ok(Sent {
                        response,
                        h1: Some(sender),
                    });
                }
                Err(mut e) => match e.take_message() {
                    // The idle connection died before our request went out
                    // (the upstream closed it): a fresh one is safe.
                    Some(back) => req = back,
                    None => {
                        let error = ClientError::Broken {
                            addr,
                            source: e.into_error(),
                        };
                        return Err(Failed {
                            error,
                            request: None,
                        });
                    }
                },
            }
        }
        let mut sender = match connect_h1(addr, connect_timeout).await {
            Ok(s) => s,
            Err(error) => {
                return Err(Failed {
                    error,
                    request: Some(req),
                });
            }
        };
        match sender.try_send_request(req).await {
            Ok(response) => Ok(Sent {
                response,
                h1: Some(sender),
            }),
            Err(mut e) => Err(Failed {
                request: e.take_message(),
                error: ClientError::Broken {
                    addr,
                    source: e.into_error(),
                },
            }),
        }
    }

    async fn h2_sender(
        &self,
        addr: SocketAddr,
        connect_timeout: Duration,
    ) -> Result<http2::SendRequest<ReqBody>, ClientError> {
        // Held across the connect so that a burst of first requests opens
        // one connection, not one each.
        let mut slot = self.h2.lock().await;
        if let Some(sender) = slot.as_ref()
            && !sender.is_closed()
        {
            return Ok(sender.clone());
        }
        let sender = connect_h2(addr, connect_timeout).await?;
        *slot = Some(sender.clone());
        Ok(sender)
    }
}

async fn connect_tcp(
    addr: SocketAddr,
    timeout: Duration,
) -> Result<TokioIo<TcpStream>, ClientError> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| ClientError::ConnectTimeout { addr, timeout })?
        .map_err(|source| ClientError::Connect { addr, source })?;
    // Small request/response heads must not wait for Nagle.
    let _ = stream.set_nodelay(true);
    Ok(TokioIo::new(stream))
}

async fn connect_h1(addr: SocketAddr, timeout: Duration) -> Result<H1Sender, ClientError> {
    let io = connect_tcp(addr, timeout).await?;
    let (sender, conn) = http1::Builder::new()
        .handshake(io)
        .await
        .map_err(|source| ClientError::Handshake { addr, source })?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(%addr, error = %e, "upstream HTTP/1.1 connection ended");
        }
    });
    Ok(sender)
}

async fn connect_h2(
    addr: SocketAddr,
    timeout: Duration,
) -> Result<http2::SendRequest<ReqBody>, ClientError> {
    let io = connect_tcp(addr, timeout).await?;
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
    Ok(sender)
}
