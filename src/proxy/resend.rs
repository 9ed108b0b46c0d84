//! Sending a request again after a failed attempt, and where to.
//!
//! A request goes again when the failed attempt allows it:
//! - the upstream did not process it (it never left steer, an HTTP/2
//!   upstream refused the stream or went away gracefully before it, or an
//!   HTTP/1.1 upstream closed the connection without reading it): any
//!   method, its body from the first byte (`client::Replay`);
//! - the exchange broke after sending, before an answer: only a bodiless
//!   `GET`, `HEAD`, `OPTIONS`, `PUT` or `DELETE` (RFC 9110 §9.2.2).
//!
//! It goes to another endpoint of the same upstream, else wherever the
//! route would send it now (a split's other members, then the fallbacks),
//! never to an endpoint it already tried, unless only that endpoint's
//! HTTP/2 connection failed it (`ClientError::connection_gone`): with
//! nowhere else to go, the endpoint takes it again on a new connection.

use std::sync::Arc;

use http::Request;

use super::choose;
use super::headers::HopFields;
use crate::client::{Replay, ReqBody};
use crate::routing::Route;
use crate::table::Table;
use crate::upstream::Endpoint;

/// What a request needs to be sent again: its head, and its kept body.
pub(super) struct Resend {
    head: Request<()>,
    /// The forwarding fields not in `head`'s map (`headers::forwarding`).
    fields: Option<HopFields>,
    /// `None`: a bodiless request.
    body: Option<Arc<Replay>>,
}

impl Resend {
    pub(super) fn new(
        head: &Request<ReqBody>,
        fields: Option<HopFields>,
        body: Option<Arc<Replay>>,
    ) -> Resend {
        let mut copy = Request::new(());
        *copy.method_mut() = head.method().clone();
        *copy.uri_mut() = head.uri().clone();
        *copy.version_mut() = head.version();
        *copy.headers_mut() = head.headers().clone();
        Resend {
            head: copy,
            fields,
            body,
        }
    }

    /// The request again, if a failure that left it `unprocessed` (or not)
    /// allows a resend.
    pub(super) fn again(&self, unprocessed: bool) -> Option<Request<ReqBody>> {
        let body = match &self.body {
            Some(kept) if unprocessed => ReqBody::Replay(kept.again()?),
            Some(_) => return None,
            None if unprocessed || idempotent(self.head.method()) => ReqBody::empty(),
            None => return None,
        };
        let mut req = Request::new(body);
        *req.method_mut() = self.head.method().clone();
        *req.uri_mut() = self.head.uri().clone();
        *req.version_mut() = self.head.version();
        *req.headers_mut() = self.head.headers().clone();
        if let Some(fields) = &self.fields {
            fields.clone().insert(req.headers_mut());
        }
        Some(req)
    }
}

/// Methods whose bodiless requests may be replayed after the upstream broke
/// before answering.
fn idempotent(method: &http::Method) -> bool {
    matches!(
        method.as_str(),
        "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE"
    )
}

/// Where a retry goes: another endpoint of the same upstream, else the
/// route's choice without the endpoints already `tried`.
pub(super) fn next_target<'t>(
    table: &'t Table,
    route: &Route,
    upstream: usize,
    tried: &[Arc<Endpoint>],
) -> Option<(usize, &'t Arc<Endpoint>)> {
    if let Some(e) = table.upstreams[upstream].pick_excluding(tried) {
        return Some((upstream, e));
    }
    choose(table, route, tried).ok()
}
