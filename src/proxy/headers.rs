//! Header rules of the request path: hop-by-hop removal, forwarding-header
//! hygiene (a client that is not a trusted proxy cannot forge who it is or
//! which ZITADEL instance it wants), the `X-Forwarded-*`/`Forwarded` that
//! steer adds, and a route's set/remove rules. Pure functions over HeaderMap.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::config::HeaderRules;

/// Forwarding headers removed from clients that are not trusted proxies.
pub const FORWARDING: [&str; 9] = [
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-real-ip",
    "x-zitadel-forwarded",
    "x-zitadel-instance-host",
    "x-zitadel-public-host",
];

/// RFC 9110 §7.6.1 hop-by-hop fields, plus the legacy `proxy-connection`.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Whether the request asks for a protocol upgrade (WebSocket and the like).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && connection_has(headers, "upgrade")
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Removes hop-by-hop fields and those the `Connection` header names. Keeps
/// `te: trailers` (gRPC needs it end to end) and, for upgrades, `Upgrade`
/// with `Connection: upgrade`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let te_trailers = headers
        .get(header::TE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        if !(upgrade && name == header::UPGRADE) {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// What steer knows about the hop it received a request on.
#[derive(Debug, Clone, Copy)]
pub struct Hop<'a> {
    pub peer: IpAddr,
    pub trusted: bool,
    pub tls: bool,
    /// The client's Host / `:authority`, as sent.
    pub host: Option<&'a str>,
}

/// Forwarding-header hygiene and the headers steer adds.
///
/// From an untrusted peer every forwarding header is dropped first. Then
/// `X-Forwarded-For` gets the peer appended; `X-Forwarded-Proto` and
/// `X-Forwarded-Host` are set unless a trusted proxy already set them (it
/// saw the original request); `Forwarded` gets an element for this hop
/// appended, so its left-most element stays the original client's.
pub fn apply_forwarding(headers: &mut HeaderMap, hop: &Hop<'_>) {
    if !hop.trusted {
        for name in FORWARDING {
            headers.remove(name);
        }
    }
    let peer = hop.peer.to_string();
    let xff = match join_values(headers, &X_FORWARDED_FOR) {
        Some(prev) => format!("{prev}, {peer}"),
        None => peer.clone(),
    };
    set(headers, X_FORWARDED_FOR, &xff);
    let own_proto = if hop.tls { "https" } else { "http" };
    // A trusted proxy in front that speaks only X-Forwarded-* (most load
    // balancers) saw the original scheme and host; the Forwarded element
    // steer starts must say the same, or ZITADEL, which reads the left-most
    // Forwarded element first, would build http:// URLs behind a TLS LB.
    let first_hop = !headers.contains_key(header::FORWARDED);
    let trusted_value = |name: &HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(',').next().unwrap_or("").trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    let (proto, fwd_host) = if hop.trusted && first_hop {
        (
            trusted_value(&X_FORWARDED_PROTO).unwrap_or_else(|| own_proto.to_owned()),
            trusted_value(&X_FORWARDED_HOST).or_else(|| hop.host.map(str::to_owned)),
        )
    } else {
        (own_proto.to_owned(), hop.host.map(str::to_owned))
    };
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(own_proto));
    }
    if let Some(host) = hop.host
        && !headers.contains_key(&X_FORWARDED_HOST)
    {
        set(headers, X_FORWARDED_HOST, host);
    }
    let node = match hop.peer {
        IpAddr::V4(_) => peer,
        IpAddr::V6(_) => format!("\"[{peer}]\""),
    };
    let proto = if is_token(&proto) {
        proto
    } else {
        own_proto.to_owned()
    };
    let mut element = format!("for={node};proto={proto}");
    match fwd_host {
        Some(host) if is_token(&host) => {
            element.push_str(";host=");
            element.push_str(&host);
        }
        Some(host) => {
            element.push_str(";host=\"");
            element.push_str(&host.replace(['"', '\\'], ""));
            element.push('"');
        }
        None => {}
    }
    let forwarded = match join_values(headers, &header::FORWARDED) {
        Some(prev) => format!("{prev}, {element}"),
        None => element,
    };
    set(headers, header::FORWARDED, &forwarded);
}

/// RFC 7230 token characters: such a value needs no quotes in `Forwarded`.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn join_values(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let mut out: Option<String> = None;
    for v in headers.get_all(name) {
        let v = v.to_str().ok()?;
        match &mut out {
            Some(s) => {
                s.push_str(", ");
                s.push_str(v);
            }
            None => out = Some(v.to_owned()),
        }
    }
    out
}

fn set(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    }
}

/// A route's `request_headers` / `response_headers`: removes first, then sets.
pub fn apply_rules(headers: &mut HeaderMap, rules: &HeaderRules) {
    for name in &rules.remove {
        headers.remove(name);
    }
    for (name, value) in &rules.set {
        headers.insert(name.clone(), value.clone());
    }
}

/// The request id: the client's if it sent a usable one, else a new one.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    match headers.get(X_REQUEST_ID) {
        Some(v) if !v.is_empty() && v.len() <= 200 => v.clone(),
        _ => new_request_id(),
    }
}

fn new_request_id() -> HeaderValue {
    let id = format!("{:032x}", fastrand::u128(..));
    HeaderValue::from_str(&id).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

#[cfg(test)]
mod tests;
