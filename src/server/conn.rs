//! Per-connection bookkeeping for client connections: the idle timeout's
//! clock, open requests (a connection with a request or stream in
//! flight is never idle), connection caps per listener and per client IP,
//! and the count that a graceful shutdown waits on.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::Notify;

use crate::proxy::ProxyBody;

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Milliseconds on a process-wide monotonic clock (cheap to store in an
/// atomic).
pub(crate) fn now_ms() -> u64 {
    u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// What one connection is doing.
#[derive(Debug)]
pub struct Activity {
    peer: SocketAddr,
    last_ms: AtomicU64,
    open: AtomicUsize,
    /// A send timeout is logged once per connection, however many of its
    /// streams hit one.
    send_timeout_logged: AtomicBool,
}

impl Activity {
    pub fn new(peer: SocketAddr) -> Arc<Activity> {
        Arc::new(Activity {
            peer,
            last_ms: AtomicU64::new(now_ms()),
            open: AtomicUsize::new(0),
            send_timeout_logged: AtomicBool::new(false),
        })
    }

    /// Logs a send timeout on this connection, the first time only.
    pub fn log_send_timeout(&self, what: &'static str) {
        if !self.send_timeout_logged.swap(true, Ordering::Relaxed) {
            tracing::warn!(peer = %self.peer, "{what}");
        }
    }

    /// Marks activity now (the idle clock starts again).
    pub fn touch(&self) {
        self.last_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// Idle: no request open, and none ended, for `timeout`. Bytes alone
    /// do not count: HTTP/2 keep-alive pings would keep a connection that
    /// nobody uses open forever.
    pub fn idle_for(&self, timeout: Duration) -> bool {
        let quiet = now_ms().saturating_sub(self.last_ms.load(Ordering::Relaxed));
        self.open.load(Ordering::Relaxed) == 0
            && quiet >= u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX)
    }

    /// Marks a request open until the returned guard drops.
    pub fn open(self: &Arc<Self>) -> OpenGuard {
        self.open.fetch_add(1, Ordering::Relaxed);
        OpenGuard(self.clone())
    }

    /// As `open`, for a request that ends before this borrow does (an
    /// HTTP/2 stream, whose future borrows its connection's state): no
    /// reference count taken and given back per request.
    pub fn open_borrowed(&self) -> OpenRef<'_> {
        self.open.fetch_add(1, Ordering::Relaxed);
        OpenRef(self)
    }

    fn close_one(&self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        self.touch();
    }
}

#[derive(Debug)]
pub struct OpenGuard(Arc<Activity>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.close_one();
    }
}

/// `Activity::open_borrowed`'s guard.
#[derive(Debug)]
pub struct OpenRef<'a>(&'a Activity);

impl Drop for OpenRef<'_> {
    fn drop(&mut self) {
        self.0.close_one();
    }
}

/// A response body that keeps its request counted as open until the body
/// is finished (long gRPC streams are not idle connections).
#[derive(Debug)]
pub struct Guarded {
    inner: ProxyBody,
    _open: OpenGuard,
}

impl Guarded {
    pub fn new(inner: ProxyBody, open: OpenGuard) -> Guarded {
        Guarded { inner, _open: open }
    }
}

impl Body for Guarded {
    type Data = Bytes;
    type Error = <ProxyBody as Body>::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Open connections of one listener: the cap, the per-IP counts, and what
/// a drain waits on.
#[derive(Debug, Default)]
pub struct Tracker {
    open: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    closed: Notify,
}

/// Where a WebSocket over HTTP/2 takes its place among a listener's
/// connections: each holds an upstream connection, a descriptor, as a
/// client connection does, and the connection cap is fitted to two
/// descriptors a client (`open_files`). Without it, one client with 30
/// connections of 100 tunnels held 2,800 descriptors under a cap of 686.
#[derive(Debug, Clone)]
pub(crate) struct TunnelCap {
    tracker: Arc<Tracker>,
    max: usize,
    per_ip: Option<usize>,
}

impl TunnelCap {
    pub(crate) fn new(tracker: Arc<Tracker>, max: usize, per_ip: Option<usize>) -> TunnelCap {
        TunnelCap {
            tracker,
            max,
            per_ip,
        }
    }

    /// A place for a tunnel from `ip`, unless the listener's connections
    /// and tunnels are at its cap, or this client's at its own.
    pub(crate) fn admit(&self, ip: IpAddr) -> Option<Slot> {
        if self.tracker.open() >= self.max {
            return None;
        }
        self.tracker.admit(ip, self.per_ip)
    }
}

/// Counts one connection until dropped.
#[derive(Debug)]
pub struct Slot {
    tracker: Arc<Tracker>,
    ip: Option<IpAddr>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(ip) = self.ip {
            let mut map = self
                .tracker
                .per_ip
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(n) = map.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&ip);
                }
            }
        }
        self.tracker.open.fetch_sub(1, Ordering::Relaxed);
        self.tracker.closed.notify_waiters();
    }
}

impl Tracker {
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Admits a connection from `ip`, unless that client already has
    /// `per_ip` open.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, per_ip: Option<usize>) -> Option<Slot> {
        let counted = match per_ip {
            Some(cap) => {
                let mut map = self.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
                let n = map.entry(ip).or_insert(0);
                if *n >= cap {
                    return None;
                }
                *n += 1;
                Some(ip)
            }
            None => None,
        };
        self.open.fetch_add(1, Ordering::Relaxed);
        Some(Slot {
            tracker: self.clone(),
            ip: counted,
        })
    }

    /// Waits until every connection has closed.
    pub async fn all_closed(&self) {
        self.at_most(0).await;
    }

    /// Waits until at most `n` connections are open.
    pub async fn at_most(&self, n: usize) {
        loop {
            let notified = self.closed.notified();
            tokio::pin!(notified);
            // Registered before the check, so a close in between wakes us.
            notified.as_mut().enable();
            if self.open() <= n {
                return;
            }
            notified.await;
        }
    }
}
