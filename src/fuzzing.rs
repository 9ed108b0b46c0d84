//! The bodies of the fuzz targets in `fuzz/` (cargo-fuzz, libFuzzer), kept
//! in the library so that a plain test can run them over the seed corpus
//! on stable Rust. Each must return normally for every input; a panic is a
//! finding. Nothing on the request path calls these.

use std::net::IpAddr;
use std::path::Path;
use std::sync::OnceLock;

use http::{HeaderMap, HeaderName, HeaderValue, Method};

use crate::config;
use crate::proxy::headers::{self, Hop};
use crate::routing::{self, RequestView, RouteTable};

/// Arbitrary bytes as a route table: an error or a config, never a panic;
/// a config also goes through the lints and route compilation.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = config::parse(text, Path::new("fuzz.toml")) {
        let _ = config::lint(&c);
        let _ = RouteTable::new(c.routes);
    }
}

const TABLE: &str = r#"
[listen]
http = "127.0.0.1:8080"
[upstreams.a]
endpoints = ["127.0.0.1:1"]
[[routes]]
name = "grpc"
hosts = ["*.example.com", "auth.example.com"]
path_prefix = "/zitadel."
methods = ["POST"]
header_regex = { "content-type" = "^application/grpc" }
upstream = "a"
[[routes]]
name = "exact"
path = "/oauth/v2/token"
query = { "tenant" = "acme corp" }
client_ips = ["10.0.0.0/8", "2001:db8::/32"]
upstream = "a"
[[routes]]
name = "regex"
path_regex = "^/v2(beta)?/users/[0-9]+$"
headers = { "x-canary" = "1" }
upstream = "a"
[[routes]]
name = "default"
upstream = "a"
"#;

fn table() -> &'static RouteTable {
    static T: OnceLock<RouteTable> = OnceLock::new();
    T.get_or_init(|| match config::parse(TABLE, Path::new("fuzz.toml")) {
        Ok(c) => RouteTable::new(c.routes),
        Err(e) => panic!("the fuzz route table is invalid: {e}"),
    })
}

/// Splits input into NUL-separated fields, as a request's parts.
fn fields(data: &[u8]) -> Vec<&[u8]> {
    data.split(|b| *b == 0).collect()
}

fn headers_from(lines: &[&[u8]]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for line in lines {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = line.split_at(colon);
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name),
            HeaderValue::from_bytes(&value[1..]),
        ) {
            h.append(n, v);
        }
    }
    h
}

/// Arbitrary request parts against a table using every matcher; also the
/// client-IP resolution behind trusted proxies.
pub fn route_select(data: &[u8]) {
    let f = fields(data);
    let text = |i: usize| {
        f.get(i)
            .and_then(|b| std::str::from_utf8(b).ok())
            .unwrap_or("")
    };
    let method = Method::from_bytes(f.first().copied().unwrap_or(b"GET")).unwrap_or(Method::GET);
    let host = routing::normalize_host(text(1));
    let target = text(2);
    let (path, query) = target
        .split_once('?')
        .map_or((target, None), |(p, q)| (p, Some(q)));
    // The proxy routes the normal form: it must be normal, and stay a path.
    let normal = routing::normalize_path(path).ok().flatten();
    if let Some(normal) = &normal {
        assert_eq!(
            routing::normalize_path(normal),
            Ok(None),
            "not normal: {normal}"
        );
        assert!(normal.starts_with('/'), "not a path: {normal}");
        assert!(
            http::uri::PathAndQuery::try_from(normal.as_str()).is_ok()
                || path.parse::<http::uri::PathAndQuery>().is_err(),
            "a valid path normalised into an invalid one: {path} -> {normal}"
        );
    }
    let path = normal.as_deref().unwrap_or(path);
    let decoded = routing::match_form(path);
    if let Some(decoded) = &decoded {
        assert!(!decoded.contains("%2F"), "an encoded slash left: {decoded}");
        assert!(decoded.starts_with('/'), "not a path: {decoded}");
    }
    let path = decoded.as_deref().unwrap_or(path);
    let headers = headers_from(f.get(3..).unwrap_or(&[]));
    let trusted = ["10.0.0.0/8".parse().unwrap_or_default()];
    let peer: IpAddr = IpAddr::from([10, 0, 0, 1]);
    let client_ip = routing::resolve_client_ip(
        peer,
        &headers,
        &trusted,
        crate::config::ClientIpHeader::XForwardedFor,
    );
    let view = RequestView {
        method: &method,
        host: (!host.is_empty()).then_some(&*host),
        path,
        query,
        headers: &headers,
        client_ip,
    };
    // The index must agree with the plain first-match scan, misses included.
    let first = table()
        .routes()
        .iter()
        .find(|r| r.check(&view).is_ok())
        .map(|r| r.index);
    assert_eq!(
        table().select(&view).map(|r| r.index),
        first,
        "indexed selection differs from first-match"
    );
}

/// Arbitrary headers through hop-by-hop removal and forwarding hygiene:
/// from an untrusted peer no forwarding header may survive but the ones
/// steer sets itself.
pub fn forwarding_headers(data: &[u8]) {
    let f = fields(data);
    let trusted = f
        .first()
        .is_some_and(|b| b.first().is_some_and(|x| x & 1 == 1));
    let mut h = headers_from(f.get(1..).unwrap_or(&[]));
    let upgrade = headers::allowed_upgrade(&h, &["websocket".to_owned()]).is_some();
    headers::strip_hop_by_hop(&mut h, upgrade);
    let host = HeaderValue::from_static("auth.example.com");
    let hop = Hop {
        peer: IpAddr::from([192, 0, 2, 7]),
        trusted,
        via: crate::config::ClientIpHeader::XForwardedFor,
        tls: false,
        host: Some(&host),
        cache: None,
    };
    let mut apart = h.clone();
    headers::apply_forwarding(&mut h, &hop);
    // The fields kept out of the map, where there are any, are written as
    // they would be inserted.
    if let Some(fields) = headers::forwarding(&mut apart, &hop) {
        let mut head = Vec::new();
        fields.write(&mut head);
        let mut written = HeaderMap::new();
        for line in head.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let at = line.iter().position(|b| *b == b':').unwrap_or(0);
            let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(&line[..at]),
                HeaderValue::from_bytes(line.get(at + 2..).unwrap_or_default()),
            ) else {
                panic!("written line is no field: {line:?}");
            };
            written.append(name, value);
        }
        for (name, value) in &written {
            assert!(
                !apart.contains_key(name),
                "{name} both in the map and written"
            );
            assert_eq!(h.get_all(name).iter().collect::<Vec<_>>(), [value]);
        }
        fields.insert(&mut apart);
        assert_eq!(apart, h);
    }
    if !trusted {
        for name in [
            "x-real-ip",
            "x-forwarded-port",
            "x-zitadel-forwarded",
            "x-zitadel-instance-host",
            "x-zitadel-public-host",
        ] {
            assert!(
                !h.contains_key(name),
                "{name} survived from an untrusted client"
            );
        }
        assert_eq!(
            h.get("x-forwarded-for").map(|v| v.as_bytes()),
            Some(&b"192.0.2.7"[..])
        );
        // Nor any other field that names a client, host or scheme, bare or
        // as grpc-gateway metadata (`X-Forwarded-Client-Cert` is removed
        // before routing, not here).
        for name in h.keys().map(HeaderName::as_str) {
            let bare = name.strip_prefix("grpc-metadata-").unwrap_or(name);
            let steers = matches!(
                name,
                "forwarded" | "x-forwarded-for" | "x-forwarded-host" | "x-forwarded-proto"
            ) || name == "x-forwarded-client-cert";
            let forwarding = bare.starts_with("x-forwarded-")
                || matches!(
                    bare,
                    "forwarded"
                        | "x-real-ip"
                        | "x-zitadel-forwarded"
                        | "x-zitadel-instance-host"
                        | "x-zitadel-public-host"
                        | "x-zitadel-http1-host"
                );
            assert!(
                steers || !forwarding,
                "{name} survived from an untrusted client"
            );
        }
    }
    assert!(!h.contains_key("transfer-encoding"));
    assert!(!h.contains_key("keep-alive"));
}
