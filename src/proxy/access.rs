//! The access log: one line per request at target `steer::access`, written
//! when the response body is finished (or dropped), so that `bytes` and
//! `duration_ms` cover the whole exchange. Built only when `[log] access`
//! is on, so a switched-off log costs nothing per request.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderMap, HeaderValue, Method};

use crate::table::Table;

#[derive(Debug)]
pub struct Access {
    pub table: Arc<Table>,
    pub start: Instant,
    pub method: Method,
    pub host: Option<String>,
    pub path: String,
    pub request_id: HeaderValue,
    pub trace_id: Option<String>,
    pub client_ip: Option<IpAddr>,
    pub route: Option<usize>,
    pub upstream: Option<usize>,
    pub endpoint: Option<SocketAddr>,
    pub retries: u32,
    pub status: u16,
    pub bytes: u64,
}

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`).
pub fn trace_id(headers: &HeaderMap) -> Option<String> {
    let v = headers.get("traceparent")?.to_str().ok()?;
    let mut parts = v.split('-');
    let (_version, id) = (parts.next()?, parts.next()?);
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_owned())
}

impl Drop for Access {
    fn drop(&mut self) {
        let route = self
            .route
            .and_then(|r| self.table.routes.routes().get(r))
            .map_or("", |r| r.spec.name.as_str());
        let upstream = self
            .upstream
            .and_then(|u| self.table.upstreams.get(u))
            .map_or("", |u| u.name.as_str());
        tracing::info!(
            target: "steer::access",
            client_ip = %self.client_ip.map(|ip| ip.to_string()).unwrap_or_default(),
            method = %self.method,
            host = self.host.as_deref().unwrap_or(""),
            path = %self.path,
            route,
            upstream,
            endpoint = %self.endpoint.map(|e| e.to_string()).unwrap_or_default(),
            status = self.status,
            bytes = self.bytes,
            duration_ms = self.start.elapsed().as_secs_f64() * 1000.0,
            request_id = %String::from_utf8_lossy(self.request_id.as_bytes()),
            retries = self.retries,
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
