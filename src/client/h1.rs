//! steer's own HTTP/1.1 client connection for upstream exchanges (RFC 9112).
//!
//! hyper's client connection costs a task, a dispatch channel and a body
//! channel per exchange (about 16,000 instructions of a proxied request,
//! BENCHMARKS.md). Here the request head is encoded into one reused buffer
//! and written by the caller's own task, the response head is parsed with
//! `httparse` straight from the read buffer (header values are slices of
//! it, not copies), and the response body reads from the connection itself
//! while it finishes sending the request body: no task, no channel. The
//! body hands the connection back for reuse only when both messages ended
//! cleanly (see [`H1Body::take_conn`]).
//!
//! Upgrades (WebSocket) still go through hyper, which hands over the
//! upgraded connection.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf as _, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::{ClientError, Failed, ReqBody};
use crate::BoxError;
use crate::body::content_length;
use crate::proxy::headers::HopFields;

/// Largest response head (status line and fields) steer reads.
const MAX_HEAD: usize = 64 * 1024;
/// Most fields in a response head.
const MAX_HEADERS: usize = 128;
/// How long the rest of a request body still goes to an upstream that
/// answered before it had all of it (the client's connection stays usable
/// only if its body is read to the end).
pub(super) const BODY_GRACE: std::time::Duration = std::time::Duration::from_secs(5);
/// How long an upstream's close without an answer waits for the reset
/// that says the request was not read (see [`reset_unread`]).
const RESET_GRACE: std::time::Duration = std::time::Duration::from_millis(50);
/// Largest request, written at once, that a reset before the answer
/// proves unread (see [`reset_unread`]).
const UNREAD_MAX: usize = 4096;
/// Body bytes taken along with the head (or a previous chunk) into one
/// write, when they are there already.
const COALESCE: usize = 64 * 1024;
/// Room for a request head: steer's usual ones fit.
const HEAD_CAPACITY: usize = 1024;
/// Most room a read gets.
const READ_CHUNK: usize = 16 * 1024;
/// Room a new connection's first read gets: a usual response head with a
/// small body. Each read that fills its room doubles the next one's, up to
/// `READ_CHUNK`. Hundreds of upstream connections can be in flight, each
/// keeping its buffer: buffers under a page share pages, 16 KiB ones hold
/// at least a page each. Reads do not get smaller again (hyper's adaptive
/// reads do): the connection keeps the buffer they grew (`shrink`), and
/// asking for less than it has would save nothing.
const FIRST_READ: usize = 1024;
/// Largest chunk-size line, extensions included, and trailer section.
const MAX_CHUNK_LINE: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;

/// The socket under a connection: plain or TLS.
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// One HTTP/1.1 connection to an endpoint, idle or lent to one exchange.
/// Boxed once per connection: the response body that carries it through
/// the request path stays small to move.
pub struct H1Conn(Box<ConnState>);

pub struct ConnState {
    io: Stream,
    /// Read and not consumed yet.
    buf: BytesMut,
    /// Room the next read gets (`FIRST_READ` to `READ_CHUNK`).
    read_size: usize,
    addr: SocketAddr,
}

impl std::ops::Deref for H1Conn {
    type Target = ConnState;

    fn deref(&self) -> &ConnState {
        &self.0
    }
}

impl std::ops::DerefMut for H1Conn {
    fn deref_mut(&mut self) -> &mut ConnState {
        &mut self.0
    }
}

impl std::fmt::Debug for H1Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H1Conn").field("addr", &self.addr).finish()
    }
}

impl H1Conn {
    pub(crate) fn new(io: Stream, addr: SocketAddr) -> H1Conn {
        H1Conn(Box::new(ConnState {
            io,
            buf: BytesMut::new(),
            read_size: FIRST_READ,
            addr,
        }))
    }

    /// Whether an idle connection can carry a request: the upstream has
    /// neither closed it nor sent anything unasked (a late byte of an
    /// earlier answer would be read as the next one's head).
    ///
    /// A request that cannot go out again (`retryable` false: it is not
    /// idempotent, or has a body) always has the socket asked (a peek), so
    /// that an upstream's close that reached the kernel is seen even if
    /// tokio's driver has not collected its event yet (it runs when the
    /// worker parks or every 61 polls): a graceful upstream stop closes
    /// every idle connection at once, and a POST must not meet one.
    ///
    /// A retryable one skips the syscall when tokio has seen no event since
    /// the answer was read (it clears read readiness on a short read):
    /// `try_io` looks at readiness alone, no coop budget, no waker. A close
    /// it misses is the race the retry of `send` covers.
    pub(crate) fn is_usable(&mut self, retryable: bool) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let tcp = self.tcp();
        let mut byte = [0u8; 1];
        let flags = rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT;
        let mut ask = || rustix::net::recv(tcp, &mut byte[..], flags).map_err(io::Error::from);
        let peek = if retryable {
            tcp.try_io(tokio::io::Interest::READABLE, ask)
        } else {
            ask()
        };
        let quiet = match peek {
            Err(e) => e.kind() == io::ErrorKind::WouldBlock,
            Ok((_, 0)) => false,
            // Over TLS the bytes may be a record rustls takes by itself (a
            // session ticket).
            Ok(_) => matches!(&self.io, Stream::Tls(_)),
        };
        // Over TLS, rustls may also hold decrypted bytes of a late answer
        // that the socket no longer shows: they must not be read as the
        // next exchange's.
        quiet && (matches!(&self.io, Stream::Plain(_)) || self.nothing_to_read())
    }

    fn tcp(&self) -> &TcpStream {
        match &self.io {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.get_ref().0,
        }
    }

    fn nothing_to_read(&mut self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut probe = [0u8; 1];
        let mut probe = ReadBuf::new(&mut probe);
        matches!(
            Pin::new(&mut self.io).poll_read(&mut cx, &mut probe),
            Poll::Pending
        )
    }

    /// An idle connection keeps the read buffer its reads grew to, up to
    /// `READ_CHUNK`, for its next exchange, not one that a large head grew
    /// beyond it: freeing and allocating it for every exchange made the
    /// allocator give pages back and fault them in again, kernel time per
    /// request.
    pub(crate) fn shrink(&mut self) {
        if self.buf.capacity() > READ_CHUNK {
            self.buf = BytesMut::new();
        }
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let state = &mut *self.0;
        state.buf.reserve(state.read_size);
        let room = state.buf.capacity() - state.buf.len();
        let n = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut state.io),
            cx,
            &mut state.buf
        ))?;
        if n == room {
            // More is likely waiting: fewer, larger reads from now on.
            state.read_size = (state.read_size * 2).min(READ_CHUNK);
        }
        Poll::Ready(Ok(n))
    }
}

/// How the request body goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReqFraming {
    /// No body, no framing field.
    Empty,
    /// No body, `content-length: 0` (POST, PUT, PATCH: servers expect one).
    EmptyZero,
    /// `content-length: n`, from the request or the body's exact size.
    Length {
        n: u64,
    },
    Chunked,
}

fn request_framing(parts: &http::request::Parts, body: &ReqBody) -> ReqFraming {
    if let Some(n) = content_length(&parts.headers) {
        return ReqFraming::Length { n };
    }
    if body.is_end_stream() {
        return match parts.method {
            Method::POST | Method::PUT | Method::PATCH => ReqFraming::EmptyZero,
            _ => ReqFraming::Empty,
        };
    }
    match body.size_hint().exact() {
        Some(n) => ReqFraming::Length { n },
        None => ReqFraming::Chunked,
    }
}

/// `name: value` lines.
fn encode_fields<'a>(
    out: &mut Vec<u8>,
    fields: impl Iterator<Item = (&'a HeaderName, &'a HeaderValue)>,
) {
    for (name, value) in fields {
        field_line(out, name, &[value.as_bytes()]);
    }
}

/// One `name: value` line, the value given in pieces. Inlined: most
/// callers give one piece, and the loop then goes away.
#[inline]
pub(crate) fn field_line(out: &mut Vec<u8>, name: &HeaderName, value: &[&[u8]]) {
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
    for piece in value {
        out.extend_from_slice(piece);
    }
    out.extend_from_slice(b"\r\n");
}

/// The request head in HTTP/1.1 form: origin-form target, the fields as
/// they are (names lower-case), and steer's own framing field, the only
/// one that goes out.
fn encode_head(
    out: &mut Vec<u8>,
    parts: &http::request::Parts,
    fields: Option<&HopFields>,
    framing: ReqFraming,
) {
    out.clear();
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    out.extend_from_slice(if target.is_empty() {
        b"/"
    } else {
        target.as_bytes()
    });
    out.extend_from_slice(b" HTTP/1.1\r\n");
    // Framing is steer's: the client's was its own connection's.
    encode_fields(
        out,
        parts
            .headers
            .iter()
            .filter(|(n, _)| *n != header::TRANSFER_ENCODING && *n != header::CONTENT_LENGTH),
    );
    if let Some(fields) = fields {
        fields.write(out);
    }
    match framing {
        ReqFraming::Empty => {}
        ReqFraming::EmptyZero => out.extend_from_slice(b"content-length: 0\r\n"),
        ReqFraming::Length { n } => put_length(out, n),
        ReqFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

/// The request on its way out: the head, then the body's frames, framed.
struct Writer {
    body: Option<ReqBody>,
    framing: ReqFraming,
    /// Content-Length bytes still to come.
    left: u64,
    queue: VecDeque<Bytes>,
    /// Bytes of the head not written yet: until it is out whole, the
    /// upstream cannot have acted on the request.
    head_left: usize,
    /// A body frame was taken: the request can no longer be handed back.
    polled: bool,
    /// The head has waited its one turn for the body's first bytes.
    waited: bool,
    /// A write failed: nothing more goes out; the rest of the body is only
    /// read (the client's connection needs its body read to the end).
    failed: bool,
    /// The client's body broke (malformed, over `max_body`, cut off): the
    /// exchange ends at once, as the upstream would wait for the rest.
    client_broke: bool,
    done: bool,
    /// Writes that took bytes, and the bytes they took.
    writes: u32,
    written: usize,
}

impl Writer {
    fn new(head: Bytes, body: ReqBody, framing: ReqFraming) -> Writer {
        let left = match framing {
            ReqFraming::Length { n, .. } => n,
            _ => 0,
        };
        let body = (!body.is_end_stream()).then_some(body);
        let head_left = head.len();
        let mut queue = VecDeque::with_capacity(4);
        queue.push_back(head);
        Writer {
            body,
            framing,
            left,
            queue,
            head_left,
            polled: false,
            waited: false,
            failed: false,
            client_broke: false,
            done: false,
            writes: 0,
            written: 0,
        }
    }

    /// Writes what it can; `Ready(Ok)` once the whole request is out. After
    /// an error it writes nothing more (see [`Writer::poll_finish`]).
    fn poll_progress(&mut self, cx: &mut Context<'_>, io: &mut Stream) -> Poll<io::Result<()>> {
        if self.failed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let progress = self.poll_write_request(cx, io);
        if let Poll::Ready(Err(_)) = &progress {
            self.failed = true;
            self.queue.clear();
        }
        progress
    }

    /// Ends the request side once the answer is in: sends the rest, or,
    /// once a write failed, reads the rest of the body and drops it.
    /// `Ready(true)` when the request went out whole.
    fn poll_finish(&mut self, cx: &mut Context<'_>, io: &mut Stream) -> Poll<bool> {
        if !self.failed && ready!(self.poll_progress(cx, io)).is_ok() {
            return Poll::Ready(true);
        }
        while let Some(body) = self.body.as_mut() {
            match ready!(Pin::new(body).poll_frame(cx)) {
                Some(Ok(_)) => self.polled = true,
                None | Some(Err(_)) => self.body = None,
            }
        }
        Poll::Ready(false)
    }

    fn poll_write_request(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut Stream,
    ) -> Poll<io::Result<()>> {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            // What the body has ready now goes with the head, in one write:
            // an upstream that answers before the body arrives may close.
            while self.queued() < COALESCE {
                let Some(body) = self.body.as_mut() else {
                    break;
                };
                let frame = match Pin::new(body).poll_frame(cx) {
                    Poll::Pending => break,
                    Poll::Ready(frame) => frame,
                };
                self.polled = true;
                match frame {
                    None => {
                        self.body = None;
                        if self.framing == ReqFraming::Chunked {
                            self.queue.push_back(Bytes::from_static(b"0\r\n\r\n"));
                        }
                    }
                    Some(Err(e)) => {
                        self.client_broke = true;
                        return Poll::Ready(Err(io::Error::other(e)));
                    }
                    Some(Ok(frame)) => self.queue_frame(frame)?,
                }
            }
            // The head waits one turn of the task for the body's first
            // bytes, which the client's connection usually has read with
            // the head but not handed over yet: a head that leaves alone
            // lets an upstream answer and close before the body is there
            // (hyper's server does when its handler skips the body), which
            // fails the next request on the connection. One turn only: a
            // client may wait for the answer before it sends its body.
            if self.body.is_some() && self.queue.len() == 1 && self.head_left > 0 && !self.waited {
                self.waited = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            if !self.queue.is_empty() {
                ready!(self.poll_write_queue(cx, io))?;
                continue;
            }
            if self.body.is_some() {
                // What is written must not sit in TLS's buffer while the
                // client takes its time.
                let _ = Pin::new(&mut *io).poll_flush(cx)?;
                return Poll::Pending;
            }
            ready!(Pin::new(&mut *io).poll_flush(cx))?;
            if self.framing != ReqFraming::Chunked && self.left > 0 {
                return Poll::Ready(Err(io::Error::other(
                    "the request body ended before its content-length",
                )));
            }
            self.done = true;
            return Poll::Ready(Ok(()));
        }
    }

    fn queued(&self) -> usize {
        self.queue.iter().map(Bytes::len).sum()
    }

    /// One vectored write of what is queued.
    fn poll_write_queue(&mut self, cx: &mut Context<'_>, io: &mut Stream) -> Poll<io::Result<()>> {
        let mut n = {
            let mut slices = [io::IoSlice::new(&[]); 8];
            let mut count = 0;
            for (slot, b) in slices.iter_mut().zip(&self.queue) {
                *slot = io::IoSlice::new(b);
                count += 1;
            }
            ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices[..count]))?
        };
        if n == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        self.writes += 1;
        self.written += n;
        self.head_left = self.head_left.saturating_sub(n);
        while n > 0 {
            let Some(front) = self.queue.front_mut() else {
                break;
            };
            let take = n.min(front.len());
            front.advance(take);
            n -= take;
            if front.is_empty() {
                self.queue.pop_front();
            }
        }
        Poll::Ready(Ok(()))
    }

    fn queue_frame(&mut self, frame: Frame<Bytes>) -> io::Result<()> {
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                // Trailers go out only in chunked framing (RFC 9112 §7.1.2).
                if let (Ok(trailers), ReqFraming::Chunked) = (frame.into_trailers(), self.framing) {
                    let mut end = b"0\r\n".to_vec();
                    encode_fields(&mut end, trailers.iter());
                    end.extend_from_slice(b"\r\n");
                    self.queue.push_back(Bytes::from(end));
                    self.body = None;
                    self.framing = ReqFraming::Empty;
                }
                return Ok(());
            }
        };
        if data.is_empty() {
            return Ok(());
        }
        match self.framing {
            ReqFraming::Chunked => {
                self.queue.push_back(chunk_size_line(data.len()));
                self.queue.push_back(data);
                self.queue.push_back(Bytes::from_static(b"\r\n"));
            }
            _ => {
                let len = data.len() as u64;
                if len > self.left {
                    return Err(io::Error::other(
                        "the request body is longer than its content-length",
                    ));
                }
                self.left -= len;
                self.queue.push_back(data);
            }
        }
        Ok(())
    }
}

/// A field name as HTTP/1.1 sent it. The names nearly every head carries
/// are found by length and first and last letter, then compared with it;
/// `HeaderName::from_bytes` (a lower-casing pass and a search of all
/// standard names, ~150 instructions a name) reads the rest. Names are
/// case-insensitive (RFC 9110 §5.1): any spelling of one matches.
pub(crate) fn field_name(raw: &[u8]) -> Result<HeaderName, http::header::InvalidHeaderName> {
    match common_name(raw) {
        Some(name) => Ok(name),
        None => HeaderName::from_bytes(raw),
    }
}

fn common_name(raw: &[u8]) -> Option<HeaderName> {
    use crate::proxy::headers::{X_FORWARDED_FOR, X_REQUEST_ID};
    let (first, last) = (raw.first()? | 0x20, raw.last()? | 0x20);
    let known = match (raw.len(), first, last) {
        (4, b'h', b't') => header::HOST,
        (4, b'd', b'e') => header::DATE,
        (4, b'e', b'g') => header::ETAG,
        (4, b'v', b'y') => header::VARY,
        (6, b'a', b't') => header::ACCEPT,
        (6, b'c', b'e') => header::COOKIE,
        (6, b's', b'r') => header::SERVER,
        (6, b'o', b'n') => header::ORIGIN,
        (7, b'r', b'r') => header::REFERER,
        (8, b'l', b'n') => header::LOCATION,
        (10, b'c', b'n') => header::CONNECTION,
        (10, b'u', b't') => header::USER_AGENT,
        (10, b's', b'e') => header::SET_COOKIE,
        (12, b'c', b'e') => header::CONTENT_TYPE,
        (12, b'x', b'd') => X_REQUEST_ID,
        (13, b'c', b'l') => header::CACHE_CONTROL,
        (13, b'a', b'n') => header::AUTHORIZATION,
        (13, b'l', b'd') => header::LAST_MODIFIED,
        (14, b'c', b'h') => header::CONTENT_LENGTH,
        (15, b'a', b'g') => header::ACCEPT_ENCODING,
        (15, b'a', b'e') => header::ACCEPT_LANGUAGE,
        (15, b'x', b'r') => X_FORWARDED_FOR,
        (16, b'c', b'g') => header::CONTENT_ENCODING,
        (17, b't', b'g') => header::TRANSFER_ENCODING,
        _ => return None,
    };
    let name = known.as_str().as_bytes();
    (raw == name || raw.eq_ignore_ascii_case(name)).then_some(known)
}

/// `content-length: n\r\n`, without `core::fmt`.
pub(crate) fn put_length(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// `{len:X}\r\n`, without `core::fmt`.
fn chunk_size_line(len: usize) -> Bytes {
    let (line, at) = chunk_size(len);
    Bytes::copy_from_slice(&line[at..])
}

/// A chunk's size line, `{len:X}\r\n`, as `line[at..]` (RFC 9112 §7.1).
pub(crate) fn chunk_size(len: usize) -> ([u8; 18], usize) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut line = [0u8; 18];
    let mut at = 16;
    let mut rest = len;
    loop {
        at -= 1;
        line[at] = HEX[rest & 0xf];
        rest >>= 4;
        if rest == 0 {
            break;
        }
    }
    line[16..].copy_from_slice(b"\r\n");
    (line, at)
}

/// A parsed response head and how its body is framed.
struct Head {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    framing: FramingFields,
}

/// Which of the fields that decide a body's framing (RFC 9112 §6.3) a
/// head has, noted as it is parsed: `H1Body::new` looks up only those it
/// has, not each of them in the map.
#[derive(Debug, Default, Clone, Copy)]
struct FramingFields {
    connection: bool,
    transfer_encoding: bool,
    content_length: bool,
}

/// Sends `req` on `conn` (`reused`: it carried an exchange before) and
/// reads the response head. The request comes back in the error, to be
/// sent elsewhere, when its head did not go out whole (the upstream cannot
/// have acted on it), or when it is idempotent, took no body frame, and a
/// reused connection closed before any byte of an answer (RFC 9112 §9.3.1:
/// the upstream closed an idle connection as the request went out).
#[allow(clippy::manual_async_fn)]
pub(super) fn send(
    mut conn: H1Conn,
    req: Request<ReqBody>,
    fields: Option<&HopFields>,
    reused: bool,
) -> impl Future<Output = Result<Response<H1Body>, Failed>> {
    let (parts, body) = req.into_parts();
    let framing = request_framing(&parts, &body);
    // One allocation for most heads; it is handed to the writer as is.
    let mut head = Vec::with_capacity(HEAD_CAPACITY);
    encode_head(&mut head, &parts, fields, framing);
    async move {
        let mut writer = Writer::new(Bytes::from(head), body, framing);
        let mut read_any = false;
        let got = poll_fn(|cx| {
            if !writer.failed
                && let Poll::Ready(Err(e)) = writer.poll_progress(cx, &mut conn.io)
                && (writer.head_left > 0 || writer.client_broke)
            {
                return Poll::Ready(Err(e));
            }
            // Once the head is out, a failed write is not the end: an upstream
            // that refuses a body (413, 401) answers, then stops reading.
            poll_head(&mut conn, cx, &mut read_any)
        })
        .await;
        let addr = conn.addr;
        let head = match got {
            Ok(head) => head,
            Err(e) => {
                let closed_early = reused
                    && !read_any
                    && parts.method.is_idempotent()
                    && matches!(
                        e.kind(),
                        io::ErrorKind::UnexpectedEof
                            | io::ErrorKind::ConnectionReset
                            | io::ErrorKind::BrokenPipe
                    );
                let back = (!writer.polled && (writer.head_left > 0 || closed_early))
                    .then(|| writer.body.take().unwrap_or_else(ReqBody::empty))
                    .map(|body| Request::from_parts(parts, body));
                let whole_at_once =
                    writer.done && writer.writes == 1 && writer.written <= UNREAD_MAX;
                // Boxed: only a failed exchange waits here, and its timer would
                // otherwise be part of every request's future.
                let error = if back.is_none()
                    && !read_any
                    && whole_at_once
                    && Box::pin(reset_unread(&conn, &e)).await
                {
                    ClientError::Unread {
                        addr,
                        reused,
                        source: e,
                    }
                } else {
                    ClientError::Broken {
                        addr,
                        source: Box::new(e),
                    }
                };
                return Err(Failed {
                    error,
                    request: back,
                });
            }
        };
        let writer = (!writer.done).then(|| Box::new(writer));
        let body = H1Body::new(conn, writer, &parts.method, &head).map_err(|reason| Failed {
            error: ClientError::Broken {
                addr,
                source: Box::new(BadAnswer(reason)),
            },
            request: None,
        })?;
        let mut resp = Response::new(body);
        *resp.status_mut() = head.status;
        *resp.version_mut() = head.version;
        *resp.headers_mut() = head.headers;
        Ok(resp)
    }
}

/// Whether the upstream's application closed the connection with bytes of
/// the request it had not read: its kernel then resets the connection
/// (RFC 9293 §3.6.1: a close with data pending aborts; the same when our
/// bytes reach a socket already closed), where an application that read
/// the whole request and closed sends a FIN alone. ZITADEL's (Go's) and
/// hyper's servers close idle connections this way when they stop, also
/// one that a request has just reached. The reset comes at once, or after
/// a FIN the application sent first, within a round trip: `RESET_GRACE`
/// bounds that wait.
///
/// `send` asks only for a request that went out whole in one write of at
/// most `UNREAD_MAX` bytes, so that the application read all of it or none
/// (a server's first read of a request takes 4 KiB or more): unread, it
/// cannot have acted on it. Look-alikes that may have acted: a request
/// split by the network, whose head the application read and acted on
/// before the connection was closed (its process died, or its handler
/// failed) with the rest unread; and an upstream, or a load balancer in
/// front of it, that resets connections on purpose.
async fn reset_unread(conn: &H1Conn, e: &io::Error) -> bool {
    match e.kind() {
        io::ErrorKind::ConnectionReset => return true,
        io::ErrorKind::UnexpectedEof => {}
        _ => return false,
    }
    let tcp = conn.tcp();
    let reset = async {
        loop {
            // `try_io` clears the error readiness when there is no error.
            let taken = tcp.try_io(tokio::io::Interest::ERROR, || match tcp.take_error() {
                Ok(Some(error)) => Ok(error),
                Ok(None) => Err(io::ErrorKind::WouldBlock.into()),
                Err(error) => Ok(error),
            });
            match taken {
                // After the FIN, a reset is reported as EPIPE (Linux).
                Ok(error) => {
                    return matches!(
                        error.kind(),
                        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
                    );
                }
                Err(_) if tcp.ready(tokio::io::Interest::ERROR).await.is_err() => return false,
                Err(_) => {}
            }
        }
    };
    tokio::time::timeout(RESET_GRACE, reset)
        .await
        .unwrap_or(false)
}

/// Reads until a final response head has arrived; interim (1xx) answers
/// are skipped, as a client that sent no `Expect` never asked for them.
fn poll_head(
    conn: &mut H1Conn,
    cx: &mut Context<'_>,
    read_any: &mut bool,
) -> Poll<io::Result<Head>> {
    loop {
        if !conn.buf.is_empty() {
            match parse_head(&mut conn.buf)? {
                Some(head)
                    if head.status.is_informational()
                        && head.status != StatusCode::SWITCHING_PROTOCOLS =>
                {
                    continue;
                }
                Some(head) => return Poll::Ready(Ok(head)),
                None if conn.buf.len() >= MAX_HEAD => {
                    return Poll::Ready(Err(bad_head("response head too large")));
                }
                None => {}
            }
        }
        if ready!(conn.poll_fill(cx))? == 0 {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before the response head",
            )));
        }
        *read_any = true;
    }
}

fn invalid(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// An answer steer cannot pass on: its head malformed or too large, or a
/// 101 nobody asked for. The exchange failed, but a client may have made
/// it so (an upstream that puts a request's bytes into its answer's head,
/// a redirect's `Location`), so it says nothing of the endpoint's health
/// (`ClientError::bad_answer`; nginx counts such an answer only with
/// `proxy_next_upstream invalid_header`).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct BadAnswer(pub(crate) &'static str);

fn bad_head(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, BadAnswer(what))
}

/// Parses a complete head at the front of `buf` and takes it out; `None`
/// when more bytes are needed. Field values are slices of the head's bytes.
fn parse_head(buf: &mut BytesMut) -> io::Result<Option<Head>> {
    // Uninitialised slots: no 4 KiB of empty fields written per answer.
    let mut fields =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let config = httparse::ParserConfig::default();
    let len = match config.parse_response_with_uninit_headers(&mut parsed, buf, &mut fields) {
        // A head that came in one read is held to the limit too.
        Ok(httparse::Status::Complete(len)) if len > MAX_HEAD => {
            return Err(bad_head("response head too large"));
        }
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(bad_head("too many fields in the response head"));
        }
        Err(_) => return Err(bad_head("malformed response head")),
    };
    let code = parsed.code.unwrap_or(0);
    let status = StatusCode::from_u16(code).map_err(|_| bad_head("invalid status code"))?;
    let version = match parsed.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    // Copied out, not split off: field values outlive the exchange (an
    // HTTP/2 client's HPACK table keeps those it indexes, for as long as
    // that client stays connected), and a slice of the read buffer would
    // keep all 16 KiB of it, and the next exchange would need a new one.
    // Values are sliced from the copy at their offsets in `buf`.
    let head = Bytes::copy_from_slice(&buf[..len]);
    let base = buf.as_ptr() as usize;
    let mut headers = HeaderMap::with_capacity(parsed.headers.len());
    let mut framing = FramingFields::default();
    for f in parsed.headers.iter() {
        let name = field_name(f.name.as_bytes()).map_err(|_| bad_head("invalid field name"))?;
        match name {
            header::CONNECTION => framing.connection = true,
            header::TRANSFER_ENCODING => framing.transfer_encoding = true,
            header::CONTENT_LENGTH => framing.content_length = true,
            _ => {}
        }
        let start = f.value.as_ptr() as usize - base;
        let value = HeaderValue::from_maybe_shared(head.slice(start..start + f.value.len()))
            .map_err(|_| bad_head("invalid field value"))?;
        headers.append(name, value);
    }
    buf.advance(len);
    Ok(Some(Head {
        status,
        version,
        headers,
        framing,
    }))
}

/// How the response body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked(Chunk),
    /// Until the upstream closes the connection.
    Close,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

/// The response body, read from the connection as the client takes it.
/// It also finishes sending the request body, if the upstream answered
/// before it had all of it.
pub struct H1Body {
    conn: Option<H1Conn>,
    /// Boxed: only an upstream that answers before it has the whole
    /// request leaves one.
    writer: Option<Box<Writer>>,
    framing: Framing,
    reusable: bool,
}

impl std::fmt::Debug for H1Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H1Body")
            .field("framing", &self.framing)
            .field("reusable", &self.reusable)
            .finish()
    }
}

impl H1Body {
    fn new(
        conn: H1Conn,
        writer: Option<Box<Writer>>,
        method: &Method,
        head: &Head,
    ) -> Result<H1Body, &'static str> {
        let (headers, has) = (&head.headers, head.framing);
        // An upstream that answered before it had the whole request may
        // close the connection once its answer is out (hyper's server does
        // when its handler left the body unread): not reused.
        let mut reusable = head.version == Version::HTTP_11
            && writer.is_none()
            && !(has.connection && crate::proxy::headers::connection_has(headers, "close"));
        let framing = if *method == Method::HEAD
            || head.status == StatusCode::NO_CONTENT
            || head.status == StatusCode::NOT_MODIFIED
        {
            Framing::Length(0)
        } else if has.transfer_encoding {
            // With both, chunked wins and the connection is not trusted with
            // another message (§6.3 item 3).
            if has.content_length {
                reusable = false;
            }
            if last_coding_is_chunked(headers) {
                Framing::Chunked(Chunk::Size)
            } else {
                reusable = false;
                Framing::Close
            }
        } else if has.content_length {
            Framing::Length(
                content_length(headers).ok_or("invalid content-length in the response")?,
            )
        } else {
            reusable = false;
            Framing::Close
        };
        let framing = if framing == Framing::Length(0) {
            Framing::Done
        } else {
            framing
        };
        if head.status == StatusCode::SWITCHING_PROTOCOLS {
            return Err("upstream switched protocols unasked");
        }
        let mut body = H1Body {
            conn: Some(conn),
            writer,
            framing,
            reusable,
        };
        if framing == Framing::Done {
            body.finish_request();
        }
        Ok(body)
    }

    /// The response is complete but the request is not: the rest of the
    /// request body goes on in the background (at most `BODY_GRACE`), so
    /// that the client's body is read to its end, as its connection needs;
    /// this connection then closes.
    fn finish_request(&mut self) {
        let Some(mut writer) = self.writer.take() else {
            return;
        };
        self.reusable = false;
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let rest = poll_fn(|cx| writer.poll_finish(cx, &mut conn.io));
                let _ = tokio::time::timeout(BODY_GRACE, rest).await;
            });
        }
    }

    /// The connection, once the exchange ended cleanly: the whole request
    /// went out, the whole response came in and nothing followed it.
    pub fn take_conn(&mut self) -> Option<H1Conn> {
        if self.framing != Framing::Done || self.writer.is_some() || !self.reusable {
            return None;
        }
        let conn = self.conn.take()?;
        conn.buf.is_empty().then_some(conn)
    }

    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(None);
        };
        if let Some(w) = self.writer.as_mut()
            && let Poll::Ready(whole) = w.poll_finish(cx, &mut conn.io)
        {
            // An upstream that stopped reading may still answer whole,
            // but its connection is done.
            self.writer = None;
            self.reusable &= whole;
        }
        loop {
            match self.framing {
                Framing::Done => break,
                Framing::Length(left) => {
                    if !conn.buf.is_empty() {
                        let n = conn
                            .buf
                            .len()
                            .min(usize::try_from(left).unwrap_or(usize::MAX));
                        let data = conn.buf.split_to(n).freeze();
                        self.framing = match left - n as u64 {
                            0 => Framing::Done,
                            rest => Framing::Length(rest),
                        };
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    if ready!(conn.poll_fill(cx))? == 0 {
                        return Poll::Ready(Some(Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "connection closed before the response body ended",
                        ))));
                    }
                }
                Framing::Close => {
                    if !conn.buf.is_empty() {
                        let data = conn.buf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    if ready!(conn.poll_fill(cx))? == 0 {
                        self.framing = Framing::Done;
                        break;
                    }
                }
                Framing::Chunked(state) => {
                    if let Some(frame) = chunked(&mut self.framing, state, &mut conn.buf)? {
                        return Poll::Ready(Some(Ok(frame)));
                    }
                    if self.framing != Framing::Chunked(state) {
                        continue;
                    }
                    if ready!(conn.poll_fill(cx))? == 0 {
                        return Poll::Ready(Some(Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "connection closed before the last chunk",
                        ))));
                    }
                }
            }
        }
        self.finish_request();
        Poll::Ready(None)
    }
}

/// One step of the chunked decoder over what `buf` holds: a frame, a new
/// state (`framing` changed), or neither when more bytes are needed.
fn chunked(
    framing: &mut Framing,
    state: Chunk,
    buf: &mut BytesMut,
) -> io::Result<Option<Frame<Bytes>>> {
    match state {
        Chunk::Size => {
            // httparse reads an empty size line as 0: a size needs a digit.
            if buf.first().is_some_and(|b| !b.is_ascii_hexdigit()) {
                return Err(invalid("invalid chunk size"));
            }
            let (used, size) = match httparse::parse_chunk_size(buf) {
                Ok(httparse::Status::Complete(found)) => found,
                Ok(httparse::Status::Partial) if buf.len() > MAX_CHUNK_LINE => {
                    return Err(invalid("chunk-size line too long"));
                }
                Ok(httparse::Status::Partial) => return Ok(None),
                Err(_) => return Err(invalid("invalid chunk size")),
            };
            buf.advance(used);
            *framing = Framing::Chunked(if size == 0 {
                Chunk::Trailers
            } else {
                Chunk::Data(size)
            });
            Ok(None)
        }
        Chunk::Data(left) => {
            if buf.is_empty() {
                return Ok(None);
            }
            let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let data = buf.split_to(n).freeze();
            let left = left - n as u64;
            *framing = Framing::Chunked(if left == 0 {
                Chunk::DataEnd
            } else {
                Chunk::Data(left)
            });
            if left == 0 {
                // The end of the body may already be here: say so now, so
                // the last data frame is known to be the last.
                settle(framing, buf)?;
            }
            Ok(Some(Frame::data(data)))
        }
        Chunk::DataEnd => {
            if buf.len() < 2 {
                return Ok(None);
            }
            if &buf[..2] != b"\r\n" {
                return Err(invalid("chunk data not followed by CRLF"));
            }
            buf.advance(2);
            *framing = Framing::Chunked(Chunk::Size);
            Ok(None)
        }
        Chunk::Trailers => {
            if buf.starts_with(b"\r\n") {
                buf.advance(2);
                *framing = Framing::Done;
                return Ok(None);
            }
            let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
            match httparse::parse_headers(buf, &mut fields) {
                Ok(httparse::Status::Complete((len, fields))) => {
                    let mut trailers = HeaderMap::with_capacity(fields.len());
                    for f in fields.iter() {
                        if let (Ok(name), Ok(value)) = (
                            field_name(f.name.as_bytes()),
                            HeaderValue::from_bytes(f.value),
                        ) {
                            trailers.append(name, value);
                        }
                    }
                    buf.advance(len);
                    *framing = Framing::Done;
                    Ok(Some(Frame::trailers(trailers)))
                }
                Ok(httparse::Status::Partial) if buf.len() > MAX_TRAILERS => {
                    Err(invalid("trailer section too large"))
                }
                Ok(httparse::Status::Partial) => Ok(None),
                Err(httparse::Error::TooManyHeaders) => Err(invalid("too many trailer fields")),
                Err(_) => Err(invalid("malformed trailer section")),
            }
        }
    }
}

/// After a chunk's data: consumes its CRLF and, when the last chunk and an
/// empty trailer section follow at once, ends the body.
fn settle(framing: &mut Framing, buf: &mut BytesMut) -> io::Result<()> {
    if buf.len() >= 2 {
        chunked(framing, Chunk::DataEnd, buf)?;
        if buf.starts_with(b"0\r\n\r\n") {
            buf.advance(5);
            *framing = Framing::Done;
        }
    }
    Ok(())
}

pub(crate) fn last_coding_is_chunked(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .next_back()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"))
}

impl Drop for H1Body {
    fn drop(&mut self) {
        // A complete answer dropped without a last poll (its end was
        // known): the request may still need finishing.
        if self.framing == Framing::Done {
            self.finish_request();
        }
    }
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match ready!(this.poll_data(cx)) {
            Some(Err(e)) => {
                this.framing = Framing::Done;
                this.reusable = false;
                this.conn = None;
                Poll::Ready(Some(Err(e.into())))
            }
            other => Poll::Ready(other.map(|r| r.map_err(Into::into))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing == Framing::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            Framing::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests;
