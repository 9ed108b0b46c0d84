//! Sending a body on an HTTP/2 stream within the window the peer grants:
//! responses to clients (`server::h2`) and request bodies to upstreams
//! (`client::h2conn`) alike.
//!
//! Window is asked for only once a chunk is in hand, so a body that has
//! nothing to send holds none of the connection's window (hyper issue
//! #4003: speculative reservations starve other streams), and no more than
//! the granted bytes are handed to `h2`, so a stalled peer holds at most
//! one chunk per stream in steer.

use std::future::{Future, poll_fn};
use std::task::{Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use h2::{Reason, SendStream};
use http_body::Body;
use http_body_util::BodyExt as _;

/// Why a body stopped before its end.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Stop {
    /// The peer reset the stream, or the connection went away.
    Gone,
    /// The body failed (the stream was reset then, if `on_error` said so).
    Failed,
    /// No window within the limit.
    Stalled,
}

/// Sends `body` on `send`: its DATA in the pieces the window allows, then
/// its trailers or END_STREAM. `limit` bounds each wait for window;
/// `granted` is called whenever window came. A failing body resets the
/// stream with `on_error`, or leaves that to the caller (`None`).
///
/// Borrows the body, and is not an `async fn` (`crate::boxed`): the
/// future is part of every HTTP/2 stream's while its body is sent, and
/// would otherwise hold the body twice, its caller's copy and its own.
/// The caller drops the body once this returns.
#[allow(clippy::manual_async_fn)]
pub(crate) fn send_body<'a, B>(
    body: &'a mut B,
    send: &'a mut SendStream<Bytes>,
    limit: Option<Duration>,
    mut granted: impl FnMut() + 'a,
    on_error: Option<Reason>,
) -> impl Future<Output = Result<(), Stop>> + 'a
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    async move {
        loop {
            let frame = tokio::select! {
                frame = body.frame() => frame,
                _ = poll_fn(|cx| send.poll_reset(cx)) => return Err(Stop::Gone),
            };
            let frame = match frame {
                None => {
                    let _ = send.send_data(Bytes::new(), true);
                    return Ok(());
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "HTTP/2 body failed");
                    if let Some(reason) = on_error {
                        send.send_reset(reason);
                    }
                    return Err(Stop::Failed);
                }
                Some(Ok(frame)) => frame,
            };
            let mut data = match frame.into_data() {
                Ok(data) => data,
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        let _ = send.send_trailers(trailers);
                        return Ok(());
                    }
                    continue;
                }
            };
            let eos = body.is_end_stream();
            if data.is_empty() && eos {
                send.send_data(data, true).map_err(|_| Stop::Gone)?;
                return Ok(());
            }
            while !data.is_empty() {
                send.reserve_capacity(data.len());
                let n = window(send, limit).await?;
                granted();
                let part = data.split_to(n.min(data.len()));
                send.send_data(part, eos && data.is_empty())
                    .map_err(|_| Stop::Gone)?;
            }
            if eos {
                return Ok(());
            }
        }
    }
}

/// Waits until the stream has window to send, at most `limit`.
async fn window(send: &mut SendStream<Bytes>, limit: Option<Duration>) -> Result<usize, Stop> {
    // capacity() takes h2's connection-wide lock: once.
    let n = send.capacity();
    if n > 0 {
        return Ok(n);
    }
    let granted = poll_fn(|cx| {
        if send.poll_reset(cx).is_ready() {
            return Poll::Ready(Err(Stop::Gone));
        }
        loop {
            match ready!(send.poll_capacity(cx)) {
                Some(Ok(0)) => {}
                Some(Ok(n)) => return Poll::Ready(Ok(n)),
                Some(Err(_)) | None => return Poll::Ready(Err(Stop::Gone)),
            }
        }
    });
    match limit {
        Some(limit) => tokio::time::timeout(limit, granted)
            .await
            .unwrap_or(Err(Stop::Stalled)),
        None => granted.await,
    }
}
