//! An HTTP/2 (h2c) upstream written with the `h2` crate, in the shape of a
//! Go or Node server: it sends each answer's body in one DATA frame and
//! END_STREAM in a frame of its own, and it counts the RST_STREAM frames it
//! receives (by reading the frame headers of the bytes that arrive).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;

#[derive(Default)]
pub struct Seen {
    pub resets: AtomicU64,
    pub requests: AtomicU64,
    /// Answers sent whole, END_STREAM included.
    pub answered: AtomicU64,
    /// When the first request arrived, and the first RST_STREAM.
    pub first_request_at: Mutex<Option<std::time::Instant>>,
    pub first_reset_at: Mutex<Option<std::time::Instant>>,
    pub connections: AtomicU64,
    /// PING frames received (not their ACKs).
    pub pings: AtomicU64,
    /// Trailers of request bodies, as received.
    pub trailers: Mutex<Vec<http::HeaderMap>>,
}

pub struct H2Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Seen>,
}

/// Starts the upstream; each answer is `body` (with `content-length`).
pub async fn start(body: &'static [u8]) -> H2Upstream {
    serve(Some(body), Mode::Plain).await
}

/// An upstream that refuses every stream with RST_STREAM(REFUSED_STREAM)
/// once its request has arrived (RFC 9113 §8.7: it processed nothing).
pub async fn refusing() -> H2Upstream {
    serve(None, Mode::Plain).await
}

/// An upstream that answers one request per connection, then goes away
/// gracefully (GOAWAY with NO_ERROR) and keeps the connection open a
/// while, as a server that rotates its connections does.
pub async fn one_per_connection(body: &'static [u8]) -> H2Upstream {
    serve(Some(body), Mode::Rotate).await
}

/// An upstream that answers at once, before the request body, and keeps
/// the request's stream open without reading it.
pub async fn answering_early(body: &'static [u8]) -> H2Upstream {
    serve(Some(body), Mode::Early).await
}

/// An upstream that sends each answer's head and `body`, then nothing
/// more: the stream stays open, its END_STREAM never comes.
pub async fn stalling(body: &'static [u8]) -> H2Upstream {
    serve(Some(body), Mode::Stall).await
}

/// An upstream that answers each request 300 ms after it has read it,
/// and counts the answers it sent to their END_STREAM.
pub async fn slow(body: &'static [u8]) -> H2Upstream {
    serve(Some(body), Mode::Slow).await
}

/// Streams the `narrow` upstream allows at once.
pub const NARROW_STREAMS: u32 = 8;

/// An upstream that allows `NARROW_STREAMS` streams at once
/// (SETTINGS_MAX_CONCURRENT_STREAMS) and otherwise answers as `start`.
pub async fn narrow(body: &'static [u8]) -> H2Upstream {
    serve(Some(body), Mode::Narrow).await
}

/// An upstream that allows `NARROW_STREAMS` streams at once and answers
/// each 300 ms after it has read it.
pub async fn narrow_slow(body: &'static [u8]) -> H2Upstream {
    serve(Some(body), Mode::NarrowSlow).await
}

/// How long the `lazy` upstream lets a stream wait to be accepted.
pub const LAZY_ACCEPT: std::time::Duration = std::time::Duration::from_millis(600);

/// An upstream that, when no stream is waiting to be accepted, reads
/// frames for `LAZY_ACCEPT` before it accepts the next (and then every one
/// that came meanwhile), as a busy server does; it answers as `start`. Its `h2` ends the connection (GOAWAY ENHANCE_YOUR_CALM) when
/// the client resets 20 streams it has not accepted yet, as hyper does.
pub async fn lazy(body: &'static [u8]) -> H2Upstream {
    serve(Some(body), Mode::Lazy).await
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Plain,
    Rotate,
    Early,
    Stall,
    Slow,
    Narrow,
    NarrowSlow,
    Lazy,
}

async fn serve(body: Option<&'static [u8]>, mode: Mode) -> H2Upstream {
    let rotate = mode == Mode::Rotate;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let s = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let seen = s.clone();
            seen.connections.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let io = Sniffing {
                    inner: tcp,
                    state: Frames::default(),
                    seen: seen.clone(),
                };
                let mut builder = h2::server::Builder::new();
                if matches!(mode, Mode::Narrow | Mode::NarrowSlow) {
                    builder.max_concurrent_streams(NARROW_STREAMS);
                }
                let Ok(mut conn) = builder.handshake(io).await else {
                    return;
                };
                while let Some(Ok((req, mut respond))) = next_stream(&mut conn, mode).await {
                    if rotate {
                        conn.graceful_shutdown();
                    }
                    let seen = seen.clone();
                    tokio::spawn(async move {
                        seen.requests.fetch_add(1, Ordering::Relaxed);
                        let now = std::time::Instant::now();
                        seen.first_request_at.lock().unwrap().get_or_insert(now);
                        let Some(body) = body else {
                            respond.send_reset(h2::Reason::REFUSED_STREAM);
                            return;
                        };
                        let mut recv = req.into_body();
                        if mode == Mode::Stall {
                            let resp = http::Response::new(());
                            if let Ok(mut send) = respond.send_response(resp, false) {
                                let _ = send.send_data(Bytes::from_static(body), false);
                                std::future::pending::<()>().await;
                            }
                        }
                        if mode == Mode::Early {
                            let resp = http::Response::new(());
                            if let Ok(mut send) = respond.send_response(resp, false) {
                                let _ = send.send_data(Bytes::from_static(body), true);
                            }
                            // The body stays unread and the stream open.
                            std::future::pending::<()>().await;
                        }
                        while let Some(Ok(chunk)) = recv.data().await {
                            let _ = recv.flow_control().release_capacity(chunk.len());
                        }
                        if let Ok(Some(t)) = recv.trailers().await {
                            seen.trailers.lock().unwrap().push(t);
                        }
                        if matches!(mode, Mode::Slow | Mode::NarrowSlow) {
                            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                        }
                        let resp = http::Response::builder()
                            .header("content-length", body.len())
                            .body(())
                            .unwrap();
                        let Ok(mut send) = respond.send_response(resp, false) else {
                            return;
                        };
                        let _ = send.send_data(Bytes::from_static(body), false);
                        // END_STREAM in a frame of its own.
                        tokio::task::yield_now().await;
                        if send.send_data(Bytes::new(), true).is_ok() {
                            seen.answered.fetch_add(1, Ordering::Relaxed);
                        }
                    });
                }
                if rotate {
                    // The GOAWAY is out; the connection stays a while.
                    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                }
            });
        }
    });
    H2Upstream { addr, seen }
}

type Accepted = (
    http::Request<h2::RecvStream>,
    h2::server::SendResponse<Bytes>,
);

/// The next stream; in `Mode::Lazy`, only once it has waited
/// `LAZY_ACCEPT` with the connection's frames read meanwhile, unless one
/// is there to accept at once.
async fn next_stream<T: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut h2::server::Connection<T, Bytes>,
    mode: Mode,
) -> Option<Result<Accepted, h2::Error>> {
    if mode == Mode::Lazy {
        let ready = std::future::poll_fn(|cx| Poll::Ready(conn.poll_accept(cx))).await;
        if let Poll::Ready(next) = ready {
            return next;
        }
        let idle = std::future::poll_fn(|cx| conn.poll_closed(cx));
        if let Ok(closed) = tokio::time::timeout(LAZY_ACCEPT, idle).await {
            return closed.err().map(Err);
        }
    }
    conn.accept().await
}

/// Where the reader is in the stream of frames the client sends.
#[derive(Default)]
struct Frames {
    preface_left: Option<usize>,
    header: Vec<u8>,
    payload_left: usize,
}

impl Frames {
    /// Feeds received bytes; counts RST_STREAM (type 0x3) and PING (0x6,
    /// without ACK) frames.
    fn feed(&mut self, mut bytes: &[u8], seen: &Seen) {
        let preface = self.preface_left.get_or_insert(24);
        let skip = (*preface).min(bytes.len());
        *preface -= skip;
        bytes = &bytes[skip..];
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let n = self.payload_left.min(bytes.len());
                self.payload_left -= n;
                bytes = &bytes[n..];
                continue;
            }
            let need = 9 - self.header.len();
            let n = need.min(bytes.len());
            self.header.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.header.len() == 9 {
                let h = &self.header;
                self.payload_left =
                    usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                if h[3] == 0x3 {
                    let now = std::time::Instant::now();
                    seen.first_reset_at.lock().unwrap().get_or_insert(now);
                    seen.resets.fetch_add(1, Ordering::Relaxed);
                }
                if h[3] == 0x6 && h[4] & 0x1 == 0 {
                    seen.pings.fetch_add(1, Ordering::Relaxed);
                }
                self.header.clear();
            }
        }
    }
}

struct Sniffing<T> {
    inner: T,
    state: Frames,
    seen: Arc<Seen>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Sniffing<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        let fresh = &buf.filled()[before..];
        this.state.feed(fresh, &this.seen);
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Sniffing<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
