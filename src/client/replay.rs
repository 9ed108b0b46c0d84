//! A request body that can be sent again. A request that may be retried
//! elsewhere reads the client's body through a shared slot that keeps what
//! was read (up to `REPLAY_LIMIT`), so that when an attempt fails with the
//! upstream not having processed the request (a refused stream, a GOAWAY,
//! a connection that never came up), the next attempt starts again from
//! the first byte, even when hyper dropped the failed attempt's body
//! without a word. A body larger than the limit is not kept; its request
//! is retried only if it was handed back unsent.

use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Frame, SizeHint};

use super::body::Source;
use crate::BoxError;

/// The most of a request body kept for a resend.
pub const REPLAY_LIMIT: usize = 64 * 1024;

/// The shared slot: the client's body and what was read of it.
#[derive(Debug)]
pub struct Replay(Mutex<Kept>);

#[derive(Debug)]
struct Kept {
    source: Source,
    data: Vec<Bytes>,
    len: usize,
    trailers: Option<HeaderMap>,
    /// The source has ended.
    ended: bool,
    /// More than `REPLAY_LIMIT` was read: nothing is kept any more.
    overflowed: bool,
    /// The attempt allowed to read; older attempts' bodies stop.
    attempt: u32,
    /// The body's length, when the client declared it.
    total: Option<u64>,
}

/// One attempt's view of the body.
#[derive(Debug)]
pub struct ReplayBody {
    shared: Arc<Replay>,
    attempt: u32,
    /// Kept data frames this attempt has sent.
    pos: usize,
    sent: u64,
    total: Option<u64>,
    trailers_sent: bool,
    /// This attempt read past the limit: it reads the source directly.
    direct: bool,
}

impl Replay {
    pub fn new(source: Source) -> Arc<Replay> {
        let total = source.size_hint().exact();
        Arc::new(Replay(Mutex::new(Kept {
            source,
            data: Vec::new(),
            len: 0,
            trailers: None,
            ended: false,
            overflowed: false,
            attempt: 0,
            total,
        })))
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The first attempt's body.
    pub fn first(self: &Arc<Self>) -> ReplayBody {
        let total = self.kept().total;
        self.body(0, total)
    }

    /// A body for the next attempt, from the first byte; `None` when the
    /// body was too large to keep.
    pub fn again(self: &Arc<Self>) -> Option<ReplayBody> {
        let mut kept = self.kept();
        if kept.overflowed {
            return None;
        }
        kept.attempt += 1;
        kept.source.fault().restart();
        let (attempt, total) = (kept.attempt, kept.total);
        drop(kept);
        Some(self.body(attempt, total))
    }

    fn body(self: &Arc<Self>, attempt: u32, total: Option<u64>) -> ReplayBody {
        ReplayBody {
            shared: self.clone(),
            attempt,
            pos: 0,
            sent: 0,
            total,
            trailers_sent: false,
            direct: false,
        }
    }
}

impl ReplayBody {
    pub(super) fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut kept = self.shared.kept();
        if kept.attempt != self.attempt {
            return Poll::Ready(Some(Err(
                "the request body is being sent again elsewhere".into()
            )));
        }
        if !self.direct && self.pos < kept.data.len() {
            let data = kept.data[self.pos].clone();
            self.pos += 1;
            self.sent += data.len() as u64;
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if kept.ended {
            if let Some(t) = kept.trailers.clone().filter(|_| !self.trailers_sent) {
                self.trailers_sent = true;
                return Poll::Ready(Some(Ok(Frame::trailers(t))));
            }
            kept.source.fault().mark_whole();
            return Poll::Ready(None);
        }
        let polled = kept.source.poll(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.sent += data.len() as u64;
                    if self.direct || kept.len + data.len() > REPLAY_LIMIT {
                        kept.overflowed = true;
                        kept.data = Vec::new();
                        self.direct = true;
                    } else {
                        kept.len += data.len();
                        kept.data.push(data.clone());
                        self.pos += 1;
                    }
                } else if let Some(t) = frame.trailers_ref() {
                    kept.trailers = Some(t.clone());
                    self.trailers_sent = true;
                }
            }
            Poll::Ready(None) => kept.ended = true,
            Poll::Ready(Some(Err(_))) | Poll::Pending => {}
        }
        polled
    }

    pub(super) fn is_end_stream(&self) -> bool {
        let kept = self.shared.kept();
        kept.ended
            && (self.direct || self.pos == kept.data.len())
            && (self.trailers_sent || kept.trailers.is_none())
    }

    pub(super) fn size_hint(&self) -> SizeHint {
        match self.total {
            Some(total) => SizeHint::with_exact(total.saturating_sub(self.sent)),
            None => SizeHint::default(),
        }
    }
}
