//! Extended CONNECT (RFC 8441): a WebSocket carried by one HTTP/2 stream.
//!
//! The stream task (`h2::stream`) puts an [`OnConnect`] into the request's
//! extensions; once the request path has answered 200 and the head is out,
//! the task hands its send half over, the way hyper hands over an upgraded
//! HTTP/1.1 connection (`hyper::upgrade::OnUpgrade`). The request path then
//! joins that half with the stream's receive half into an [`H2Tunnel`]
//! (bytes in, bytes out) and splices it with the upstream's upgraded
//! connection. The stream task waits until the tunnel is dropped, so the
//! stream counts as open (idle timeout, shutdown) while the tunnel lives.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf as _, Bytes};
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;

use super::h2::Progress;

/// What the stream task hands over once the 200 is sent.
pub(super) struct Handed {
    send: SendStream<Bytes>,
    send_timeout: Duration,
    /// The connection's: a tunnel that moves keeps it open.
    progress: Arc<Progress>,
    /// Dropped with the tunnel: tells the stream task it may end.
    done: oneshot::Sender<()>,
}

impl Handed {
    /// The send half, and what resolves once the tunnel is gone.
    pub(super) fn new(
        send: SendStream<Bytes>,
        send_timeout: Duration,
        progress: Arc<Progress>,
    ) -> (Handed, oneshot::Receiver<()>) {
        let (done, ended) = oneshot::channel();
        let handed = Handed {
            send,
            send_timeout,
            progress,
            done,
        };
        (handed, ended)
    }
}

impl std::fmt::Debug for Handed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Handed")
    }
}

/// The promise of an extended CONNECT stream's send half. `Clone` only
/// because request extensions must be; the first to take it gets it.
#[derive(Clone, Debug)]
pub struct OnConnect(Arc<Mutex<Option<oneshot::Receiver<Handed>>>>);

impl OnConnect {
    pub(super) fn new() -> (OnConnect, oneshot::Sender<Handed>) {
        let (tx, rx) = oneshot::channel();
        (OnConnect(Arc::new(Mutex::new(Some(rx)))), tx)
    }

    /// Waits for the stream's 200 to go out, then joins both halves. Fails
    /// when the stream task never sent it (the client reset the stream,
    /// or the head could not be sent).
    pub(crate) async fn tunnel(self, recv: RecvStream) -> io::Result<H2Tunnel> {
        let rx = self.0.lock().ok().and_then(|mut slot| slot.take());
        let Some(rx) = rx else {
            return Err(io::Error::other("extended CONNECT stream already taken"));
        };
        let handed = rx
            .await
            .map_err(|_| io::Error::other("the CONNECT stream ended before its 200"))?;
        Ok(H2Tunnel {
            recv,
            send: handed.send,
            pending: Bytes::new(),
            shut: false,
            send_timeout: handed.send_timeout,
            progress: handed.progress,
            stalled: None,
            _done: handed.done,
        })
    }
}

/// An HTTP/2 stream as a byte stream: DATA frames in, DATA frames out,
/// END_STREAM at either end as EOF / shutdown. Receive window goes back as
/// the bytes are read and sending waits for the client's window, so a slow
/// side holds the other back instead of filling memory; a client that
/// grants no window for `send_timeout` ends the tunnel, as a client socket
/// that takes no bytes for that long is closed. Window it gets counts as
/// the connection's progress, as a response's does (`h2::Progress`): a
/// tunnel in use keeps the connection open when another stream stalls.
pub(crate) struct H2Tunnel {
    recv: RecvStream,
    send: SendStream<Bytes>,
    /// Received, not yet read.
    pending: Bytes,
    shut: bool,
    send_timeout: Duration,
    progress: Arc<Progress>,
    /// Set while a write waits for window.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
    _done: oneshot::Sender<()>,
}

fn h2_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        e.into_io()
            .unwrap_or_else(|| io::Error::other("HTTP/2 I/O error"))
    } else {
        io::Error::new(io::ErrorKind::BrokenPipe, e)
    }
}

impl AsyncRead for H2Tunnel {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while this.pending.is_empty() {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    this.pending = data;
                }
                Some(Err(e)) => return Poll::Ready(Err(h2_io(e))),
                // END_STREAM: the client closed its side.
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = buf.remaining().min(this.pending.len());
        buf.put_slice(&this.pending[..n]);
        this.pending.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl H2Tunnel {
    /// Window to send in, waiting at most `send_timeout` for it.
    fn poll_window(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        loop {
            let granted = self.send.capacity();
            if granted > 0 {
                self.stalled = None;
                self.progress.touch();
                return Poll::Ready(Ok(granted));
            }
            match self.send.poll_capacity(cx) {
                Poll::Ready(Some(Ok(_))) => continue,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(h2_io(e))),
                Poll::Ready(None) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "the HTTP/2 stream is closed",
                    )));
                }
                Poll::Pending => {}
            }
            let limit = self.send_timeout;
            let stall = self
                .stalled
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
            ready!(stall.as_mut().poll(cx));
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client granted no flow-control window for send_timeout",
            )));
        }
    }
}

impl AsyncWrite for H2Tunnel {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if let Poll::Ready(reset) = this.send.poll_reset(cx) {
            let reason = reset.map_or_else(|e| e.to_string(), |r| format!("{r:?}"));
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                format!("the client reset the stream: {reason}"),
            )));
        }
        this.send.reserve_capacity(buf.len());
        let granted = ready!(this.poll_window(cx))?;
        let n = granted.min(buf.len());
        this.send
            .send_data(Bytes::copy_from_slice(&buf[..n]), false)
            .map_err(h2_io)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The connection task writes what the stream queued.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.shut {
            this.shut = true;
            this.send.send_data(Bytes::new(), true).map_err(h2_io)?;
        }
        Poll::Ready(Ok(()))
    }
}
