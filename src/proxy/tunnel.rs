//! The tunnel behind a `101 Switching Protocols` (WebSocket): bytes are
//! copied both ways until either side closes, or until nothing has moved
//! either way for `tunnel_idle_timeout` (HAProxy's `timeout tunnel`), so
//! that an abandoned tunnel cannot hold its two sockets forever.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::server::now_ms;

/// Copies between `a` and `b` until one closes or both are quiet for
/// `idle`; the error says which.
pub(super) async fn splice<A, B>(a: A, b: B, idle: Duration) -> io::Result<()>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let last = Arc::new(AtomicU64::new(now_ms()));
    let mut a = Moving {
        io: a,
        last: last.clone(),
    };
    let mut b = Moving {
        io: b,
        last: last.clone(),
    };
    let copy = tokio::io::copy_bidirectional(&mut a, &mut b);
    tokio::pin!(copy);
    let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
    let mut tick =
        tokio::time::interval((idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(30)));
    loop {
        tokio::select! {
            copied = &mut copy => return copied.map(|_| ()),
            _ = tick.tick() => {
                if now_ms().saturating_sub(last.load(Ordering::Relaxed)) >= idle_ms {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no bytes either way for tunnel_idle_timeout",
                    ));
                }
            }
        }
    }
}

/// One side of a tunnel; every read that brings bytes marks the tunnel
/// as moving (what is read is what gets written to the other side).
struct Moving<T> {
    io: T,
    last: Arc<AtomicU64>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Moving<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.last.store(now_ms(), Ordering::Relaxed);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Moving<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
