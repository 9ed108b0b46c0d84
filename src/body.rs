//! A request body as it arrives from a client: hyper's body for HTTP/1.1
//! connections (or the bytes read with the head, on steer's own path), an h2 stream for HTTP/2 connections (which steer serves
//! with the `h2` crate itself, see `server::h2`). The request path sees one
//! type either way.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::BoxError;

#[derive(Debug)]
pub enum Inbound {
    Http1(Incoming),
    Http2(H2Recv),
    /// No body: an HTTP/1.1 request without one on steer's own path
    /// (`server::h1`), or one steer made up (tests, fuzzing).
    Empty,
    /// A whole `Content-Length` body read with its head (`server::h1`);
    /// `None` once taken.
    Buffered(Option<Bytes>),
}

impl Inbound {
    pub(crate) fn h2(recv: h2::RecvStream, content_length: Option<u64>) -> Inbound {
        Inbound::Http2(H2Recv::new(recv, content_length))
    }
}

impl Inbound {
    /// The HTTP/2 stream's receive half, for a tunnel (extended CONNECT).
    pub(crate) fn into_h2_recv(self) -> Option<h2::RecvStream> {
        match self {
            Inbound::Http2(b) => Some(b.into_inner()),
            _ => None,
        }
    }
}

impl From<Incoming> for Inbound {
    fn from(body: Incoming) -> Inbound {
        Inbound::Http1(body)
    }
}

/// The receive half of one HTTP/2 stream as a body: DATA, then trailers;
/// a client's request (`Inbound::Http2`) or an upstream's answer
/// (`client::h2conn::H2Body`). The window is given back as data is taken,
/// so a peer can only send as fast as steer forwards.
#[derive(Debug)]
pub struct H2Recv {
    recv: h2::RecvStream,
    /// What `content-length` still announces (h2 checks that the DATA
    /// frames add up to it).
    left: Option<u64>,
    data_done: bool,
    /// The stream's end, once known. `RecvStream::is_end_stream` locks the
    /// connection's stream store (two atomic operations), and the request
    /// path asks it several times a request; an ended stream stays ended.
    ended: AtomicBool,
}

impl H2Recv {
    pub(crate) fn new(recv: h2::RecvStream, content_length: Option<u64>) -> H2Recv {
        H2Recv {
            recv,
            left: content_length,
            data_done: false,
            ended: AtomicBool::new(false),
        }
    }

    pub(crate) fn into_inner(self) -> h2::RecvStream {
        self.recv
    }

    /// The next frame; `None` after the last.
    pub(crate) fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if !self.data_done {
            match std::task::ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    // The window is released as the data leaves:
                    // back-pressure reaches the sender.
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    if let Some(left) = &mut self.left {
                        *left = left.saturating_sub(data.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                None => self.data_done = true,
            }
        }
        let last = match std::task::ready!(self.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Some(Ok(Frame::trailers(trailers))),
            Ok(None) => None,
            Err(e) => return Poll::Ready(Some(Err(e.into()))),
        };
        *self.ended.get_mut() = true;
        Poll::Ready(last)
    }

    pub(crate) fn is_end_stream(&self) -> bool {
        // Relaxed: a plain load and store; the flag only caches what the
        // stream store said, under its lock, to this same owner.
        if self.ended.load(Ordering::Relaxed) {
            return true;
        }
        let ended = self.recv.is_end_stream();
        if ended {
            self.ended.store(true, Ordering::Relaxed);
        }
        ended
    }

    pub(crate) fn size_hint(&self) -> SizeHint {
        match self.left {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

impl Body for Inbound {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Inbound::Http1(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Inbound::Http2(b) => b.poll(cx),
            Inbound::Empty => Poll::Ready(None),
            Inbound::Buffered(b) => Poll::Ready(b.take().map(|data| Ok(Frame::data(data)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Inbound::Http1(b) => b.is_end_stream(),
            Inbound::Http2(b) => b.is_end_stream(),
            Inbound::Empty => true,
            Inbound::Buffered(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Inbound::Http1(b) => b.size_hint(),
            Inbound::Http2(b) => b.size_hint(),
            Inbound::Empty => SizeHint::with_exact(0),
            Inbound::Buffered(b) => SizeHint::with_exact(b.as_ref().map_or(0, |d| d.len() as u64)),
        }
    }
}

/// A `Content-Length` value: a plain decimal number (RFC 9110 §8.6), with
/// no sign, list or spaces; `None` for anything else or an overflow.
pub(crate) fn length_value(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    value.iter().try_fold(0u64, |n, &b| {
        let digit = b.wrapping_sub(b'0');
        (digit <= 9).then_some(())?;
        n.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

/// One Content-Length for all of a head's values (a list of equal values
/// is one), or `None`: absent, or differing or invalid values (RFC 9112
/// §6.3 item 5: an unrecoverable error).
pub(crate) fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    let mut found = None;
    for value in headers.get_all(http::header::CONTENT_LENGTH) {
        for part in value.as_bytes().split(|b| *b == b',') {
            let n = length_value(part.trim_ascii())?;
            if found.is_some_and(|f| f != n) {
                return None;
            }
            found = Some(n);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use http::HeaderMap;
    use http::header::CONTENT_LENGTH;

    use super::{content_length, length_value};

    fn head(values: &[&'static str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(CONTENT_LENGTH, http::HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn content_length_is_one_plain_number_for_all_values() {
        assert_eq!(content_length(&head(&["5"])), Some(5));
        assert_eq!(content_length(&head(&["5, 5"])), Some(5));
        assert_eq!(content_length(&head(&["5", "5"])), Some(5));
        assert_eq!(content_length(&head(&["005"])), Some(5));
        for bad in [
            &["5", "6"][..],
            &["5, 6"],
            &["+5"],
            &[""],
            &["5 5"],
            &["-1"],
            &["99999999999999999999"],
        ] {
            assert_eq!(content_length(&head(bad)), None, "{bad:?}");
        }
        assert_eq!(content_length(&HeaderMap::new()), None);
        assert_eq!(length_value(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(length_value(b" 5"), None);
    }
}
