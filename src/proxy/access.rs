//! The access log: one line per request at target `steer::access`, written
//! when the response body is finished (or dropped), so that `bytes` and
//! `duration_ms` cover the whole exchange. Built only when `[log] access`
//! is on, so a switched-off log costs nothing per request. In JSON mode the
//! line goes straight to the buffered writer of `crate::accesslog`; in the
//! pretty format it is a tracing event.

use std::sync::Arc;
use std::time::Instant;

use http::{HeaderMap, HeaderValue, Method, Uri};

use super::headers::IpText;
use crate::accesslog;
use crate::table::Table;

#[derive(Debug)]
pub struct Access {
    pub table: Arc<Table>,
    pub start: Instant,
    pub method: Method,
    /// The request target as received (shares hyper's buffer: no copy).
    pub uri: Uri,
    /// The `Host` header, for requests whose target has no authority.
    pub host: Option<HeaderValue>,
    pub request_id: HeaderValue,
    pub trace_id: Option<String>,
    /// Client IP, route, upstream, endpoint and retries, as `handle` saw them.
    pub(crate) outcome: super::Outcome,
    pub status: u16,
    pub bytes: u64,
}

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`).
pub fn trace_id(headers: &HeaderMap) -> Option<String> {
    const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
    let v = headers.get(TRACEPARENT)?.to_str().ok()?;
    let mut parts = v.split('-');
    let (_version, id) = (parts.next()?, parts.next()?);
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_owned())
}

impl Drop for Access {
    fn drop(&mut self) {
        let route = self
            .outcome
            .route
            .and_then(|r| self.table.routes.routes().get(r))
            .map_or("", |r| r.spec.name.as_str());
        let upstream = self
            .outcome
            .upstream
            .and_then(|u| self.table.upstreams.get(u))
            .map_or("", |u| u.name.as_str());
        let host = match self.uri.authority() {
            Some(a) => a.as_str().as_bytes(),
            None => self.host.as_ref().map_or(&b""[..], HeaderValue::as_bytes),
        };
        let path = self
            .uri
            .path_and_query()
            .map_or_else(|| self.uri.path(), |p| p.as_str());
        let client_ip = self.outcome.client_ip.map(IpText::new);
        let client_ip = client_ip.as_ref().map_or("", IpText::as_str);
        let endpoint = self.outcome.endpoint.map(IpText::socket);
        let endpoint = endpoint.as_ref().map_or("", IpText::as_str);
        let duration = self.start.elapsed();
        if let Some(sink) = accesslog::sink() {
            if tracing::enabled!(target: accesslog::TARGET, tracing::Level::INFO) {
                sink.line("request", |l| {
                    l.str("client_ip", client_ip);
                    l.str("method", self.method.as_str());
                    l.bytes("host", host);
                    l.str("path", path);
                    l.str("route", route);
                    l.str("upstream", upstream);
                    l.str("endpoint", endpoint);
                    l.u64("status", u64::from(self.status));
                    l.u64("bytes", self.bytes);
                    l.millis("duration_ms", duration);
                    l.bytes("request_id", self.request_id.as_bytes());
                    l.u64("retries", u64::from(self.outcome.retries));
                    l.str("trace_id", self.trace_id.as_deref().unwrap_or(""));
                });
            }
            return;
        }
        tracing::info!(
            target: accesslog::TARGET,
            client_ip,
            method = %self.method,
            host = %String::from_utf8_lossy(host),
            path,
            route,
            upstream,
            endpoint,
            status = self.status,
            bytes = self.bytes,
            duration_ms = duration.as_secs_f64() * 1000.0,
            request_id = %super::headers::id_text(&self.request_id),
            retries = self.outcome.retries,
            trace_id = self.trace_id.as_deref().unwrap_or(""),
            "request"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_id_is_read_from_traceparent() {
        let mut h = HeaderMap::new();
        h.insert(
            "traceparent",
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        assert_eq!(
            trace_id(&h).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        h.insert("traceparent", HeaderValue::from_static("garbage"));
        assert_eq!(trace_id(&h), None);
    }
}
