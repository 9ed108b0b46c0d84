//! The ONE place where steer's own answers are made: every `ProxyError`
//! becomes a status, a short reason naming the cause and the request id,
//! logged once; for gRPC clients a gRPC status instead (HTTP 200,
//! trailers-only), so that a gRPC library reports steer's reason rather
//! than an unexplained protocol error; and `Connection: close` where the
//! rest of an HTTP/1.1 connection cannot be trusted.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};

use super::ProxyBody;
use super::headers::X_REQUEST_ID;
use crate::client::ClientError;

/// Everything that ends a request with a response steer makes itself.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no route for this request")]
    NoRoute,
    #[error("no healthy endpoint in upstream(s) {}", .0.join(", "))]
    NoHealthyUpstream(Vec<String>),
    #[error("upstream connection failed: {0}")]
    Connect(#[source] ClientError),
    #[error("{0}; retry shortly")]
    Exhausted(#[source] ClientError),
    #[error("upstream connection broke: {0}")]
    Broken(#[source] ClientError),
    #[error("upstream did not answer within {0:?}")]
    Timeout(std::time::Duration),
    #[error("request body not received within {0:?}")]
    BodyTimeout(std::time::Duration),
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("request header fields too large: {0}")]
    HeadersTooLarge(&'static str),
    #[error("method not allowed: {0}")]
    MethodNotAllowed(&'static str),
    #[error("too many requests; retry after {0} s")]
    TooManyRequests(u64),
    #[error("request body larger than this route's max_body")]
    BodyTooLarge,
    #[error("not implemented: {0}")]
    NotImplemented(&'static str),
    #[error("misdirected request: this connection's certificate does not cover the requested host")]
    Misdirected,
    /// A WebSocket over HTTP/2 when the listener's connections and tunnels
    /// are at `max_connections`, or its client's at
    /// `max_connections_per_ip` (`server::conn::TunnelCap`).
    #[error("too many connections and WebSocket tunnels open; retry shortly")]
    TooManyTunnels,
}

impl ProxyError {
    /// The HTTP status this error is answered with (for gRPC clients: the
    /// status it stands for; metrics and the access log count this one).
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::NoHealthyUpstream(_)
            | ProxyError::Exhausted(_)
            | ProxyError::TooManyTunnels => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Connect(_) | ProxyError::Broken(_) => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ProxyError::Misdirected => StatusCode::MISDIRECTED_REQUEST,
        }
    }

    /// Seconds for `Retry-After` (RFC 9110 §10.2.3): when a rate limit
    /// frees up, or 1 s for steer's own passing shortage.
    fn retry_after(&self) -> Option<u64> {
        match self {
            ProxyError::TooManyRequests(secs) => Some(*secs),
            ProxyError::Exhausted(_) | ProxyError::TooManyTunnels => Some(1),
            _ => None,
        }
    }

    /// Whether an HTTP/1.1 connection must close after this answer: the
    /// request's framing was not understood, or its body not read to its
    /// end, so it is not known where the next request starts.
    fn closes(&self) -> bool {
        // A body not received whole leaves the rest of it unread (RFC 9110
        // §15.5.9: a 408 closes the connection).
        matches!(
            self,
            ProxyError::NotImplemented(_) | ProxyError::BodyTimeout(_)
        )
    }
}

/// How the client wants steer's own answers.
#[derive(Debug, Clone, Copy)]
pub struct Expects {
    /// `content-type: application/grpc*` (gRPC, gRPC-web).
    pub grpc: bool,
    pub http1: bool,
}

impl Expects {
    pub fn of<B>(req: &Request<B>) -> Expects {
        let grpc = req
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        Expects {
            grpc,
            http1: req.version() < Version::HTTP_2,
        }
    }
}

/// How long a gRPC client should wait before it retries, in ms.
const GRPC_PUSHBACK: &str = "grpc-retry-pushback-ms";

/// Maps an error to its response and logs it once.
pub fn error_response(
    err: &ProxyError,
    request_id: &HeaderValue,
    expects: Expects,
) -> Response<ProxyBody> {
    let status = err.status();
    let id = super::headers::id_text(request_id);
    if status.is_server_error() {
        tracing::warn!(request_id = %id, status = status.as_u16(), error = %err, "request failed");
    } else {
        tracing::info!(request_id = %id, status = status.as_u16(), error = %err, "request refused");
    }
    let mut resp = if expects.grpc {
        grpc_status(err, status)
    } else {
        let body = format!(
            "{} {}: {err}\nrequest id: {id}\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        );
        let mut resp = Response::new(ProxyBody::full(Bytes::from(body)));
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        resp
    };
    resp.headers_mut().insert(X_REQUEST_ID, request_id.clone());
    if let Some(secs) = err.retry_after() {
        let h = resp.headers_mut();
        h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        // gRPC's retry design (gRFC A6): a client with a retry policy waits
        // this long before it retries, instead of its own backoff.
        if expects.grpc {
            h.insert(GRPC_PUSHBACK, HeaderValue::from(secs.saturating_mul(1000)));
        }
    }
    if expects.http1 && err.closes() {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// gRPC's code for an HTTP status, as the gRPC project's HTTP-to-gRPC
/// table maps it, with 413 as RESOURCE_EXHAUSTED and INTERNAL for the rest.
fn grpc_code(status: StatusCode) -> u8 {
    const PERMISSION_DENIED: u8 = 7;
    const RESOURCE_EXHAUSTED: u8 = 8;
    const UNIMPLEMENTED: u8 = 12;
    const INTERNAL: u8 = 13;
    const UNAVAILABLE: u8 = 14;
    const UNAUTHENTICATED: u8 = 16;
    match status.as_u16() {
        401 => UNAUTHENTICATED,
        403 => PERMISSION_DENIED,
        404 => UNIMPLEMENTED,
        413 => RESOURCE_EXHAUSTED,
        429 | 502 | 503 | 504 => UNAVAILABLE,
        _ => INTERNAL,
    }
}

/// A trailers-only gRPC answer: HTTP 200, `grpc-status` and `grpc-message`
/// (steer's reason, percent-encoded as the gRPC spec asks) in the head, no
/// body.
fn grpc_status(err: &ProxyError, status: StatusCode) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::empty());
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert(
        "grpc-status",
        HeaderValue::from(u16::from(grpc_code(status))),
    );
    let message = percent_encode(&format!("{} {}", status.as_u16(), err));
    if let Ok(v) = HeaderValue::from_str(&message) {
        h.insert("grpc-message", v);
    }
    resp
}

/// gRPC's grpc-message encoding: bytes outside 0x20-0x7E, and `%`, as
/// `%XX`.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_codes_follow_the_mapping() {
        let code = |s: u16| grpc_code(StatusCode::from_u16(s).unwrap());
        assert_eq!(code(404), 12);
        for s in [429, 502, 503, 504] {
            assert_eq!(code(s), 14, "{s}");
        }
        assert_eq!(code(401), 16);
        assert_eq!(code(403), 7);
        assert_eq!(code(413), 8);
        for s in [400, 405, 408, 421, 431, 501] {
            assert_eq!(code(s), 13, "{s}");
        }
    }

    #[test]
    fn grpc_messages_are_percent_encoded() {
        assert_eq!(percent_encode("50% off\nnow"), "50%25 off%0Anow");
        assert_eq!(percent_encode("ü"), "%C3%BC");
    }

    #[test]
    fn grpc_clients_get_a_trailers_only_status() {
        let id = HeaderValue::from_static("r1");
        let expects = Expects {
            grpc: true,
            http1: false,
        };
        let err = ProxyError::NoHealthyUpstream(vec!["blue".into()]);
        let resp = error_response(&err, &id, expects);
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["grpc-status"], "14");
        assert_eq!(
            resp.headers()["grpc-message"],
            "503 no healthy endpoint in upstream(s) blue"
        );
        assert_eq!(resp.headers()["x-request-id"], "r1");
        assert!(http_body::Body::is_end_stream(resp.body()));
    }
}
