//! steer's own HTTP/1.1 server path, for the common request: a head with
//! no body and nothing that needs hyper's machinery. The head is parsed
//! once (`httparse`) into the request the proxy sees, field values sliced
//! from the bytes read; the response head is written into one buffer
//! with hyper's rules (below), and the body goes out as it comes, within
//! its framing. Between requests the connection holds no buffer: with
//! nothing left to read it waits on its socket alone (`park`).
//!
//! A request with a body takes this path only when it is framed by one
//! `Content-Length` that is a plain number and the whole body came with
//! the head (a login form, a token request): it goes upstream from
//! memory, with no more reads and so no more waits. What this path does
//! not take goes, with every byte read so far, to a hyper round (`park`),
//! which answers it exactly as before:
//! - any other body: `Transfer-Encoding`, several or odd `Content-Length`
//!   values, a body still on its way; and `Expect`;
//! - `Upgrade` or `Connection: upgrade`, and CONNECT (tunnels);
//! - `TE` (trailers are sent only to clients that asked, RFC 9110 §10.1.4);
//! - HTTP/1.0 (keep-alive by `Connection: keep-alive` only);
//! - a head `httparse` or `http` refuses, one with more than 100 fields,
//!   or one that reaches the parser's ceiling: hyper's 400/414/431.
//!
//! Response heads follow hyper's server encoder (hyper 1.x
//! `proto::h1::role`), so that a client sees the same bytes on either
//! path: a `date` when there is none; `content-length` from the body when
//! no framing field is set (`content-length: 0` for an empty body, except
//! to HEAD and on 204/304); `transfer-encoding: chunked` for a body of
//! unknown length; no body, and no framing field made up, for HEAD, 204
//! and 304 (RFC 9110 §6.4.1); and `connection: close` added when the
//! connection will not be kept (the client asked, or steer is finishing).
//! One difference: an answer from an HTTP/1.0 upstream goes out as
//! HTTP/1.1 (chunked when its length is unknown), where hyper wrote it as
//! HTTP/1.0 and closed the connection after it.
//!
//! As with hyper, a client that closes its connection while its request
//! is being answered (and has sent nothing more) cancels the request; a
//! connection holds no buffer between requests, and every head has a
//! deadline (`server/LIFECYCLE.md`).

use std::cell::RefCell;
use std::io;
use std::mem::MaybeUninit;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Buf as _, Bytes, BytesMut};
use futures_util::FutureExt as _;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::BodyExt as _;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::time::Instant;

use super::ConnCtx;
use super::park::{Parkable, Peer};
use crate::body::Inbound;
use crate::body::{content_length, length_value};
use crate::client::{chunk_size, field_line, field_name, last_coding_is_chunked, put_length};
use crate::proxy::headers::connection_has;
use crate::proxy::{self, ProxyBody};

/// The first read buffer of a request head; it grows by as much again
/// until the head is whole or reaches the parser's ceiling.
pub(super) const READ_BUF: usize = 4096;
/// Field slots for one head: hyper's own default limit.
const MAX_FIELDS: usize = super::HYPER_MAX_HEADERS;
/// Body bytes gathered into one write; a larger data frame goes out as
/// it is.
const COALESCE: usize = 16 * 1024;
/// Fields the request path adds to a request before it goes upstream.
const ADDED_FIELDS: usize = 6;
/// Room for a typical response head.
const HEAD_CAPACITY: usize = 512;

/// How a run of requests on this path ended.
pub(super) enum Next {
    /// Every byte read is answered: the connection waits for the next
    /// request with no buffer and no request state (`park::serve`).
    Idle,
    /// The connection is closed (or the peer is gone).
    Closed,
    /// A request for hyper starts at `leftover` (see the module docs).
    Hyper { leftover: Bytes },
}

/// Serves the requests in `buf` (with more read for a head that is not
/// whole) until none is left, the connection closes or a request needs
/// hyper. `deadline`: when the head `buf` begins must be whole by
/// (`header_read_timeout` from its first byte, or the connection's head
/// deadline); `None` once a request was read.
pub(super) async fn serve<S: Parkable>(
    stream: &mut S,
    mut buf: BytesMut,
    deadline: &mut Option<Instant>,
    ctx: &mut ConnCtx,
) -> io::Result<Next> {
    loop {
        // Empty lines between requests are ignored (RFC 9112 §2.2): some
        // clients send one after a POST body.
        let blank = buf
            .iter()
            .take_while(|b| matches!(b, b'\r' | b'\n'))
            .count();
        buf.advance(blank);
        if buf.is_empty() {
            // Nothing pipelined: what is left of the buffer goes with
            // this future, before the wait.
            return Ok(Next::Idle);
        }
        let (req, asked_close) = loop {
            match parse(&mut buf) {
                Parsed::Own { req, close } => break (req, close),
                Parsed::Partial if buf.len() < ctx.serving.max_head => {
                    // From the head's first byte (the time of this first
                    // parse), or the connection's, before its first request.
                    let by = *deadline
                        .get_or_insert_with(|| Instant::now() + ctx.serving.header_read_timeout);
                    buf.reserve(READ_BUF);
                    if !read_more(stream, &mut buf, by, &mut ctx.finish).await? {
                        return close(stream).await;
                    }
                }
                // What this path does not take, and a head at the parser's
                // ceiling: hyper answers them (its 431 for the latter).
                Parsed::Partial | Parsed::Hyper => {
                    return Ok(Next::Hyper {
                        leftover: buf.freeze(),
                    });
                }
            }
        };
        *deadline = None;
        // As hyper does: a client that closes while its request is
        // answered cancels it, unless it has sent more (the next request).
        let watch = buf.is_empty();
        let kept = std::pin::pin!(exchange(stream, ctx, req, asked_close, watch)).await?;
        // The idle clock starts again at the answer's end. No open count
        // around the exchange (`Activity::open`, four atomic operations):
        // this connection's idle checks (`park::wait_readable`, a hyper
        // round's tick) run on this task, never during an exchange.
        ctx.activity.touch();
        if !kept {
            return close(stream).await;
        }
    }
}

/// Resolves when the client has closed or reset its connection; stays
/// pending once it has sent more (the next request's bytes).
async fn client_gone<S: Parkable>(stream: &mut S) {
    if let Peer::Sent = std::future::poll_fn(|cx| stream.poll_peer(cx)).await {
        std::future::pending::<()>().await;
    }
}

async fn close<S: AsyncWrite + Unpin>(stream: &mut S) -> io::Result<Next> {
    let _ = stream.shutdown().await;
    Ok(Next::Closed)
}

/// Reads more of a head by `by`; false when the client closed, did not
/// finish it in time, or steer is finishing (hyper closes an unfinished
/// head the same way, without an answer).
async fn read_more<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    by: Instant,
    finish: &mut tokio::sync::watch::Receiver<bool>,
) -> io::Result<bool> {
    tokio::select! {
        biased;
        read = tokio::time::timeout_at(by, stream.read_buf(buf)) => match read {
            Ok(Ok(n)) => Ok(n > 0),
            Ok(Err(e)) => Err(e),
            Err(_) => Ok(false),
        },
        _ = finish.wait_for(|f| *f) => Ok(false),
    }
}

/// What the bytes at the front of a connection's buffer are.
// Moved once, straight into the request path: boxing the request would
// cost an allocation per request to save a copy of 270 bytes.
#[allow(clippy::large_enum_variant)]
enum Parsed {
    Partial,
    /// A request this path serves; `close`: the client asked for the
    /// connection to end after it (RFC 9112 §9.6).
    Own {
        req: Request<Inbound>,
        close: bool,
    },
    Hyper,
}

/// Parses a whole head at the front of `buf` and takes it out, when it is
/// one this path serves (see the module docs); otherwise `buf` is left as
/// it was. The bytes are frozen once: the target and field values are
/// slices of them, with no list of offsets between the parse and the map.
fn parse(buf: &mut BytesMut) -> Parsed {
    let bytes = std::mem::take(buf).freeze();
    match parse_frozen(&bytes) {
        Some(Ok(Own {
            mut req,
            close,
            head_len,
            body_len,
        })) => {
            let end = head_len + body_len;
            if body_len > 0 {
                *req.body_mut() = Inbound::Buffered(Some(bytes.slice(head_len..end)));
            }
            // Pipelined bytes, if any, in a buffer of their own.
            *buf = BytesMut::from(&bytes[end..]);
            Parsed::Own { req, close }
        }
        // Back as it was: the only handle on these bytes, so not copied.
        Some(Err(())) => {
            *buf = BytesMut::from(bytes);
            Parsed::Hyper
        }
        None => {
            *buf = BytesMut::from(bytes);
            Parsed::Partial
        }
    }
}

/// A request this path serves, as parsed from the front of the bytes.
struct Own {
    req: Request<Inbound>,
    /// The client asked for the connection to end after it (RFC 9112 §9.6).
    close: bool,
    head_len: usize,
    body_len: usize,
}

/// The request whose head is at the front of `bytes`; `Err` for one this
/// path hands to hyper, `None` when the head is not whole.
fn parse_frozen(bytes: &Bytes) -> Option<Result<Own, ()>> {
    // Uninitialised slots: no 3 KiB of empty fields written per request.
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
    let mut parsed = httparse::Request::new(&mut []);
    let config = httparse::ParserConfig::default();
    let len = match config.parse_request_with_uninit_headers(&mut parsed, bytes, &mut slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return None,
        Err(_) => return Some(Err(())),
    };
    Some(own_request(bytes, &parsed, len))
}

/// The request of a parsed head, when this path serves it (see the module
/// docs); `Err` also for a target or value `http` refuses (as hyper does:
/// a 400 or 414).
fn own_request(bytes: &Bytes, parsed: &httparse::Request<'_, '_>, len: usize) -> Result<Own, ()> {
    if parsed.version != Some(1) {
        return Err(());
    }
    let method = Method::from_bytes(parsed.method.ok_or(())?.as_bytes()).map_err(|_| ())?;
    if method == Method::CONNECT {
        return Err(());
    }
    let uri = Uri::from_maybe_shared(bytes.slice_ref(parsed.path.ok_or(())?.as_bytes()))
        .map_err(|_| ())?;
    let mut close = false;
    let mut body_len = None;
    // Room for the fields the request path adds (X-Forwarded-*, the
    // request id) without growing the map.
    let mut headers = HeaderMap::with_capacity(parsed.headers.len() + ADDED_FIELDS);
    for f in parsed.headers.iter() {
        let name = field_name(f.name.as_bytes()).map_err(|_| ())?;
        match name {
            header::CONTENT_LENGTH => match (body_len, length_value(f.value)) {
                (None, Some(n)) => body_len = Some(n),
                // Several, or not one plain number (RFC 9112 §6.3):
                // hyper's rules decide.
                _ => return Err(()),
            },
            header::TRANSFER_ENCODING | header::EXPECT | header::UPGRADE | header::TE => {
                return Err(());
            }
            header::CONNECTION => {
                for token in f.value.split(|b| *b == b',') {
                    let token = token.trim_ascii();
                    if token.eq_ignore_ascii_case(b"upgrade") {
                        return Err(());
                    }
                    close |= token.eq_ignore_ascii_case(b"close");
                }
            }
            _ => {}
        }
        let value = HeaderValue::from_maybe_shared(bytes.slice_ref(f.value)).map_err(|_| ())?;
        headers.append(name, value);
    }
    let body_len = match body_len.map(usize::try_from) {
        None => 0,
        // Only a body that is all here already: no reads, no waits.
        Some(Ok(n)) if n <= bytes.len() - len => n,
        Some(_) => return Err(()),
    };
    let mut req = Request::new(Inbound::Empty);
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = headers;
    Ok(Own {
        req,
        close,
        head_len: len,
        body_len,
    })
}

/// How a response body goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// Exactly this many bytes (none for HEAD, 204 and 304).
    Length(u64),
    Chunked,
}

/// What the body says of its length, as hyper's encoder asks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyLen {
    /// Ended already.
    Empty,
    Known(u64),
    Unknown,
}

fn body_len(body: &ProxyBody) -> BodyLen {
    if body.is_end_stream() {
        return BodyLen::Empty;
    }
    match body.size_hint().exact() {
        Some(n) => BodyLen::Known(n),
        None => BodyLen::Unknown,
    }
}

/// One request through the proxy and its answer back; false when the
/// connection must close after it.
/// `watch`: whether a client that closes cancels the exchange (see
/// `client_gone`).
#[allow(clippy::manual_async_fn)]
fn exchange<'a, S: Parkable>(
    stream: &'a mut S,
    ctx: &'a ConnCtx,
    req: Request<Inbound>,
    asked_close: bool,
    watch: bool,
) -> impl Future<Output = io::Result<bool>> + 'a {
    async move {
        let head_only = req.method() == Method::HEAD;
        // Pinned where built (`crate::boxed`), in a block of its own: its
        // room is free for `respond`'s state once it has answered.
        let resp = {
            let handled = std::pin::pin!(proxy::handle(&ctx.shared, &ctx.info, req));
            tokio::select! {
                biased;
                resp = handled => resp,
                () = client_gone(stream), if watch => return Ok(false),
            }
        };
        let keep_alive = !asked_close && !super::asked_to_finish(&ctx.finish);
        respond(stream, resp, head_only, keep_alive, watch).await
    }
}

/// Writes the response; false when the connection must close after it
/// (asked for, or the body did not end as framed).
#[allow(clippy::manual_async_fn)]
fn respond<S: Parkable>(
    stream: &mut S,
    resp: Response<ProxyBody>,
    head_only: bool,
    keep_alive: bool,
    watch: bool,
) -> impl Future<Output = io::Result<bool>> {
    async move {
        let (mut parts, mut body) = resp.into_parts();
        let mut out = Vec::with_capacity(HEAD_CAPACITY);
        let len = body_len(&body);
        let Some((framing, last)) = encode_head(&mut out, &mut parts, len, head_only, keep_alive)
        else {
            return Ok(false);
        };
        drop(parts);
        let whole = send_body(stream, &mut out, &mut body, framing, watch).await?;
        Ok(whole && !last)
    }
}

/// The response head, by hyper's rules (see the module docs): how the
/// body goes out, and whether the connection ends after it. `None` when
/// the head cannot be written (a Content-Length that is not one number:
/// hyper closes without an answer).
fn encode_head(
    out: &mut Vec<u8>,
    parts: &mut http::response::Parts,
    len: BodyLen,
    head_only: bool,
    keep_alive: bool,
) -> Option<(Framing, bool)> {
    let (mut len, mut last) = (len, !keep_alive);
    if parts.status.is_informational() {
        // No interim answer can be final (RFC 9110 §15.2); hyper sends 500.
        parts.status = StatusCode::INTERNAL_SERVER_ERROR;
        parts.headers.clear();
        (len, last) = (BodyLen::Empty, true);
    }
    if last {
        add_close(&mut parts.headers);
    }
    // RFC 9110 §6.4.1: no content in answers to HEAD, nor in 204 and 304.
    let no_length = matches!(
        parts.status,
        StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED
    );
    let has_body = !head_only && !no_length;
    status_line(out, parts.status);
    let fields = encode_response_fields(out, &parts.headers, len, head_only, has_body)?;
    let framing = match fields.framing {
        _ if !has_body => Framing::Length(0),
        Some(framing) => framing,
        None => implicit_framing(out, len),
    };
    // An answer to HEAD without a framing field names the length the body
    // would have had (hyper's rule; 204 and 304 never name one).
    if let BodyLen::Known(n @ 1..) = len
        && head_only
        && !no_length
        && !parts.headers.contains_key(header::CONTENT_LENGTH)
    {
        put_length(out, n);
    }
    if !fields.dated {
        out.extend_from_slice(b"date: ");
        http_date(out);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Some((framing, last || fields.close))
}

/// `connection: close`, unless a `close` is there already.
fn add_close(headers: &mut HeaderMap) {
    if !connection_has(headers, "close") {
        headers.append(header::CONNECTION, HeaderValue::from_static("close"));
    }
}

fn status_line(out: &mut Vec<u8>, status: StatusCode) {
    if status == StatusCode::OK {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        return;
    }
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// What a response's fields said, as they were written.
struct Fields {
    /// The framing a `content-length` or `transfer-encoding` set.
    framing: Option<Framing>,
    dated: bool,
    /// `connection: close` was among them.
    close: bool,
}

/// The fields as hyper writes them: `connection`, `transfer-encoding` and
/// `trailer` joined into one line each, the first `content-length` only
/// (and none for an empty body, except to HEAD), no framing field where
/// no body may follow. `None`: a Content-Length that is not one number.
fn encode_response_fields(
    out: &mut Vec<u8>,
    headers: &HeaderMap,
    len: BodyLen,
    head_only: bool,
    has_body: bool,
) -> Option<Fields> {
    let mut fields = Fields {
        framing: None,
        dated: false,
        close: false,
    };
    // The field being joined (a name's values are adjacent in a
    // HeaderMap's iteration).
    let mut joining: Option<&HeaderName> = None;
    for (name, value) in headers.iter() {
        if joining.is_some_and(|j| j == name) {
            out.truncate(out.len() - 2);
            out.extend_from_slice(b", ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
            continue;
        }
        end_join(out, &mut joining, headers);
        match *name {
            header::CONTENT_LENGTH => {
                if fields.framing.is_some() {
                    continue;
                }
                let n = match len {
                    BodyLen::Known(n) => n,
                    BodyLen::Unknown => content_length(headers)?,
                    // hyper trusts the body: an empty one is `0` (below),
                    // but an answer to HEAD keeps the length it names.
                    BodyLen::Empty if head_only => 0,
                    BodyLen::Empty => continue,
                };
                field_line(out, name, &[value.as_bytes()]);
                fields.framing = Some(Framing::Length(n));
            }
            header::TRANSFER_ENCODING if has_body && fields.framing.is_none() => {
                field_line(out, name, &[value.as_bytes()]);
                joining = Some(name);
                fields.framing = Some(Framing::Chunked);
            }
            header::TRANSFER_ENCODING => {}
            header::TRAILER if !has_body => {}
            header::CONNECTION | header::TRAILER => {
                fields.close |= name == header::CONNECTION && connection_has(headers, "close");
                field_line(out, name, &[value.as_bytes()]);
                joining = Some(name);
            }
            _ => {
                fields.dated |= name == header::DATE;
                field_line(out, name, &[value.as_bytes()]);
            }
        }
    }
    end_join(out, &mut joining, headers);
    Some(fields)
}

/// The framing field hyper adds when the fields set none.
fn implicit_framing(out: &mut Vec<u8>, len: BodyLen) -> Framing {
    match len {
        BodyLen::Unknown => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
            Framing::Chunked
        }
        BodyLen::Empty | BodyLen::Known(0) => {
            out.extend_from_slice(b"content-length: 0\r\n");
            Framing::Length(0)
        }
        BodyLen::Known(n) => {
            put_length(out, n);
            Framing::Length(n)
        }
    }
}

/// Ends a joined line; `transfer-encoding` gets the coding hyper applies
/// when its last one is not `chunked`.
fn end_join(out: &mut Vec<u8>, joining: &mut Option<&HeaderName>, headers: &HeaderMap) {
    if joining.take() == Some(&header::TRANSFER_ENCODING) && !last_coding_is_chunked(headers) {
        out.truncate(out.len() - 2);
        out.extend_from_slice(b", chunked\r\n");
    }
}

/// Sends the body after the head waiting in `out`, gathering what is
/// ready into one write; false when it did not end as framed (it failed,
/// or its length was not the one announced): the client cannot tell where
/// the answer ends, so the connection closes.
async fn send_body<S: Parkable>(
    stream: &mut S,
    out: &mut Vec<u8>,
    body: &mut ProxyBody,
    framing: Framing,
    watch: bool,
) -> io::Result<bool> {
    let mut left = match framing {
        // HEAD, 204, 304 or empty: whatever the body holds stays unsent.
        Framing::Length(0) => return flush(stream, out).await.map(|()| true),
        Framing::Length(n) => Some(n),
        Framing::Chunked => None,
    };
    loop {
        let frame = match body.frame().now_or_never() {
            Some(frame) => frame,
            None => {
                // Nothing more ready: what is gathered goes out first.
                flush(stream, out).await?;
                // A long poll or event stream may send nothing for long:
                // a client that left ends it now, not at the next write.
                tokio::select! {
                    biased;
                    frame = body.frame() => frame,
                    () = client_gone(stream), if watch => return Ok(false),
                }
            }
        };
        let mut data = match frame {
            None => break,
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                // Trailers: clients that asked for them (TE) go to hyper.
                Err(_) => continue,
            },
            Some(Err(e)) => {
                tracing::debug!(error = %e, "response body failed; closing the client connection");
                flush(stream, out).await?;
                return Ok(false);
            }
        };
        if data.is_empty() {
            continue;
        }
        match &mut left {
            Some(n) => {
                let too_long = data.len() as u64 > *n;
                if too_long {
                    data.truncate(usize::try_from(*n).unwrap_or(usize::MAX));
                }
                *n -= data.len() as u64;
                put(stream, out, &data).await?;
                if too_long {
                    flush(stream, out).await?;
                    return Ok(false);
                }
            }
            None => {
                let (line, at) = chunk_size(data.len());
                out.extend_from_slice(&line[at..]);
                put(stream, out, &data).await?;
                out.extend_from_slice(b"\r\n");
            }
        }
    }
    if left.is_none() {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    flush(stream, out).await?;
    Ok(left.is_none_or(|n| n == 0))
}

/// Adds `data` to what goes out next; a large piece is written as it is,
/// after what was gathered.
async fn put<S: AsyncWrite + Unpin>(
    stream: &mut S,
    out: &mut Vec<u8>,
    data: &Bytes,
) -> io::Result<()> {
    if out.len() + data.len() <= COALESCE {
        out.extend_from_slice(data);
        return Ok(());
    }
    stream.write_all(out).await?;
    out.clear();
    stream.write_all(data).await
}

async fn flush<S: AsyncWrite + Unpin>(stream: &mut S, out: &mut Vec<u8>) -> io::Result<()> {
    if !out.is_empty() {
        stream.write_all(out).await?;
        out.clear();
    }
    stream.flush().await
}

/// Runs `f` on the `date` field's value (RFC 9110 §6.6.1), formatted once
/// a second per thread.
fn with_date<R>(f: impl FnOnce(&HeaderValue) -> R) -> R {
    thread_local! {
        static CACHED: RefCell<(u64, HeaderValue)> =
            const { RefCell::new((u64::MAX, HeaderValue::from_static(""))) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHED.with_borrow_mut(|(at, value)| {
        if *at != secs
            && let Ok(formatted) = HeaderValue::from_str(&httpdate::fmt_http_date(now))
        {
            *value = formatted;
            *at = secs;
        }
        f(value)
    })
}

fn http_date(out: &mut Vec<u8>) {
    with_date(|value| out.extend_from_slice(value.as_bytes()));
}

/// The `date` field's value, for heads that go through a map (HTTP/2).
pub(super) fn date_value() -> HeaderValue {
    with_date(HeaderValue::clone)
}

#[cfg(test)]
mod tests;
