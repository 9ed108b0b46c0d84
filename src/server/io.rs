//! Client socket wrappers and the first bytes of a connection.
//!
//! - `Prefixed`: bytes already read from the socket (protocol detection,
//!   the HTTP/2 preface) are read again first.
//! - `WriteDeadline`: a write that makes no progress for `send_timeout`
//!   fails with `TimedOut`. Whoever writes (hyper's HTTP/1.1 connection,
//!   the h2 connection, rustls underneath either) then gives up, the
//!   connection closes and the response it was sending is dropped, which
//!   releases its upstream connection or stream (nginx's `send_timeout`).
//! - `sniff` / `read_h2_start`: what the client speaks, and the HTTP/2
//!   preface plus the client's first frame, read under the caller's
//!   deadline so that no prefix of either holds a connection open.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use super::conn::Activity;

/// The HTTP/2 connection preface (RFC 9113 §3.4).
pub(super) const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An HTTP/2 frame header (RFC 9113 §4.1).
const FRAME_HEADER: usize = 9;
/// The largest first frame read ahead: a SETTINGS frame is 6 bytes per
/// setting; anything larger is left for h2 to refuse.
const MAX_FIRST_FRAME: usize = 16 * 1024;

/// `inner`, with `prefix` read first.
#[derive(Debug)]
pub(crate) struct Prefixed<I> {
    prefix: Bytes,
    inner: I,
}

impl<I> Prefixed<I> {
    pub(super) fn new(prefix: Bytes, inner: I) -> Prefixed<I> {
        Prefixed { prefix, inner }
    }

    /// The bytes not read yet of the prefix, and the inner stream.
    pub(super) fn into_parts(self) -> (Bytes, I) {
        (self.prefix, self.inner)
    }
}

/// A client stream that can give back the buffers it holds while its
/// connection is idle: rustls's, over TLS. Each is allocated again when
/// next needed, so nothing read or queued is lost.
pub(super) trait Release {
    /// Frees what holds nothing now; says whether anything was freed.
    fn release_buffers(&mut self) -> bool;
}

impl Release for super::ClientIo {
    fn release_buffers(&mut self) -> bool {
        false
    }
}

/// rustls's buffers that hold nothing: its 4 KiB record buffer
/// (zero-filled, so resident), the handshake's room for messages and the
/// empty record queues (`vendor/rustls/STEER.md`).
impl Release for tokio_rustls::server::TlsStream<super::ClientIo> {
    fn release_buffers(&mut self) -> bool {
        self.get_mut().1.release_buffers()
    }
}

impl<R: Release> Release for Box<R> {
    fn release_buffers(&mut self) -> bool {
        (**self).release_buffers()
    }
}

impl<R: Release> Release for Prefixed<R> {
    fn release_buffers(&mut self) -> bool {
        // A prefix read to its end still holds the allocation it was
        // read into (the preface and first frame, usually ~100 bytes).
        if self.prefix.is_empty() {
            self.prefix = Bytes::new();
        }
        self.inner.release_buffers()
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Prefixed<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Prefixed<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// What a stalled write reports to: the connection (which logs once) and
/// the metric.
#[derive(Debug, Clone)]
pub(crate) struct StallReport {
    pub(super) activity: Arc<Activity>,
    pub(super) counter: prometheus::IntCounter,
}

impl StallReport {
    pub(super) fn stalled(&self, what: &'static str) {
        self.counter.inc();
        self.activity.log_send_timeout(what);
    }
}

/// `inner` whose writes fail once one has been pending for `timeout`.
#[derive(Debug)]
pub(crate) struct WriteDeadline<I> {
    inner: I,
    timeout: Duration,
    /// Armed while a write is pending; allocated on the first stall only,
    /// so that a connection that never stalls carries no timer.
    timer: Option<Pin<Box<Sleep>>>,
    armed: bool,
    report: Option<StallReport>,
}

impl<I> WriteDeadline<I> {
    pub(super) fn new(inner: I, timeout: Duration, report: StallReport) -> WriteDeadline<I> {
        WriteDeadline {
            inner,
            timeout,
            timer: None,
            armed: false,
            report: Some(report),
        }
    }

    pub(super) fn get_ref(&self) -> &I {
        &self.inner
    }

    /// After a `Pending` write: arms the deadline (if not armed) and tells
    /// whether it has passed.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let at = tokio::time::Instant::now() + self.timeout;
        if !self.armed {
            self.armed = true;
            match &mut self.timer {
                Some(t) => t.as_mut().reset(at),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(at))),
            }
        }
        let fired = self
            .timer
            .as_mut()
            .is_some_and(|t| t.as_mut().poll(cx).is_ready());
        if fired && let Some(report) = self.report.take() {
            report.stalled("the client took no response bytes for send_timeout; closing");
        }
        fired
    }

    fn track<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match polled {
            Poll::Ready(r) => {
                self.armed = false;
                Poll::Ready(r)
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "send_timeout: the client took no bytes",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for WriteDeadline<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.track(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.track(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.track(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.track(cx, polled)
    }
}

/// What the first bytes of a connection say it speaks.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Speaks {
    /// The HTTP/2 preface, whole (it is in `buf`).
    Http2,
    /// Anything else (HTTP/1.1, or garbage for hyper to refuse).
    Http1,
    /// The client closed before saying anything.
    Nothing,
}

/// Reads into `buf` until the bytes are the whole HTTP/2 preface or
/// cannot be its start. Bounded by the caller's deadline: a client that
/// sends `P` and stops is not waited for beyond it.
pub(super) async fn sniff<I: AsyncRead + Unpin>(
    io: &mut I,
    buf: &mut BytesMut,
) -> io::Result<Speaks> {
    loop {
        let n = buf.len().min(H2_PREFACE.len());
        if buf[..n] != H2_PREFACE[..n] {
            return Ok(Speaks::Http1);
        }
        if n == H2_PREFACE.len() {
            return Ok(Speaks::Http2);
        }
        buf.reserve(H2_PREFACE.len() - n);
        if io.read_buf(buf).await? == 0 {
            return Ok(if buf.is_empty() {
                Speaks::Nothing
            } else {
                Speaks::Http1
            });
        }
    }
}

/// Reads the rest of the preface (all of it when TLS's ALPN chose h2 and
/// nothing was sniffed) and the client's first frame whole (RFC 9113
/// §3.4: it must be SETTINGS; h2 checks that). Under the caller's
/// deadline, like `sniff`.
pub(super) async fn read_h2_start<I: AsyncRead + Unpin>(
    io: &mut I,
    buf: &mut BytesMut,
) -> io::Result<()> {
    let header_end = H2_PREFACE.len() + FRAME_HEADER;
    while buf.len() < header_end {
        read_more(io, buf, header_end).await?;
    }
    let header = &buf[H2_PREFACE.len()..header_end];
    let len = usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
    if len > MAX_FIRST_FRAME {
        return Ok(());
    }
    while buf.len() < header_end + len {
        read_more(io, buf, header_end + len).await?;
    }
    Ok(())
}

async fn read_more<I: AsyncRead + Unpin>(
    io: &mut I,
    buf: &mut BytesMut,
    want: usize,
) -> io::Result<()> {
    buf.reserve(want.saturating_sub(buf.len()));
    if io.read_buf(buf).await? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "closed inside the HTTP/2 preface",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn sniffed(bytes: &[u8]) -> (Speaks, usize) {
        let mut io = bytes;
        let mut buf = BytesMut::new();
        let speaks = sniff(&mut io, &mut buf).await.unwrap();
        (speaks, buf.len())
    }

    #[tokio::test]
    async fn a_request_line_is_http1_after_its_first_byte() {
        assert_eq!(sniffed(b"GET / HTTP/1.1\r\n").await.0, Speaks::Http1);
        // `P` could start the preface; `PO` cannot.
        assert_eq!(sniffed(b"POST / HTTP/1.1\r\n").await.0, Speaks::Http1);
    }

    #[tokio::test]
    async fn the_whole_preface_is_http2_and_nothing_is_nothing() {
        assert_eq!(sniffed(H2_PREFACE).await, (Speaks::Http2, 24));
        assert_eq!(sniffed(b"").await.0, Speaks::Nothing);
        // A prefix of the preface and then EOF: not HTTP/2.
        assert_eq!(sniffed(b"PRI * HT").await.0, Speaks::Http1);
    }

    #[tokio::test]
    async fn the_first_frame_is_read_whole() {
        let mut bytes = H2_PREFACE.to_vec();
        // SETTINGS with one setting (6 bytes), then a PING that stays unread.
        bytes.extend_from_slice(&[0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100]);
        bytes.extend_from_slice(&[0, 0, 8, 6, 0, 0, 0, 0, 0]);
        let mut io = &bytes[..];
        let mut buf = BytesMut::new();
        assert_eq!(sniff(&mut io, &mut buf).await.unwrap(), Speaks::Http2);
        read_h2_start(&mut io, &mut buf).await.unwrap();
        assert!(buf.len() >= 24 + 9 + 6);
    }

    #[tokio::test]
    async fn a_preface_without_its_frame_is_an_error() {
        let mut io = &H2_PREFACE[..];
        let mut buf = BytesMut::new();
        sniff(&mut io, &mut buf).await.unwrap();
        assert!(read_h2_start(&mut io, &mut buf).await.is_err());
    }
}
