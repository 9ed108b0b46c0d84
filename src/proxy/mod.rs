//! The request path: snapshot -> select -> pick -> forward. Loads the live
//! table once per request and never holds a guard across `.await`. The
//! ONE place where errors become status codes is [`error_response`].

mod access;
mod body;
mod errors;
pub mod headers;
pub mod ratelimit;
mod request;
mod resend;
mod retry;
mod tunnel;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;

use access::Access;
use body::{ClientUpgrade, UpstreamBody};
pub use body::{ProxyBody, open_tunnels};
pub use errors::{Expects, ProxyError, error_response};
use headers::{Hop, HopCache, HopFields, X_REQUEST_ID};
pub(crate) use request::{check_target, drop_underscored};
pub use retry::RetryBudget;

use crate::body::Inbound;
use crate::client::{ClientError, Fault, Replay, ReqBody, Source};
use crate::config::{Protocol, Target};
use crate::metrics::Metrics;
use crate::routing::{self, RequestView, Route};
use crate::server::OnConnect;
use crate::table::Table;
use crate::upstream::{Endpoint, InFlight};

/// State shared by every request: the live table and the metrics.
#[derive(Debug)]
pub struct Shared {
    pub live: ArcSwap<Table>,
    pub metrics: Metrics,
    pub retry_budget: RetryBudget,
}

/// What the server knows about the connection a request came on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
    /// Set when the listener stopped accepting (shutdown, or a reload that
    /// moved it): HTTP/1.1 answers then carry `Connection: close`, so
    /// keep-alive clients move on cleanly instead of racing a close of
    /// their idle connection.
    pub closing: Arc<std::sync::atomic::AtomicBool>,
    /// Over TLS, when the client sent SNI: the names of the certificate
    /// that SNI selected. A request for a host they do not cover gets 421.
    pub tls_names: Option<Arc<[String]>>,
    /// Over TLS with a verified client certificate: its
    /// `X-Forwarded-Client-Cert` value.
    pub client_cert: Option<HeaderValue>,
    /// An HTTP/2 connection's forwarding values, shared by its streams.
    pub hop_cache: Option<Arc<HopCache>>,
}

/// Serves one request. Infallible: every failure is a response.
///
/// This and the request path's other steps (`proxy`, `forward`) are not
/// `async fn`s, and each awaits the next pinned where it is built: see
/// `crate::boxed` for why.
#[allow(clippy::manual_async_fn)]
pub fn handle<'a>(
    shared: &'a Shared,
    conn: &'a ConnInfo,
    mut req: Request<Inbound>,
) -> impl Future<Output = Response<ProxyBody>> + Send + 'a {
    async move {
        let started = Instant::now();
        let table = shared.live.load_full();
        let request_id = headers::request_id(req.headers());
        let expects = Expects::of(&req);
        // Parsed once: the access log and routing both need it.
        let raw_host = request::client_host(&req);
        // What the access log needs of the request, taken before it moves on.
        let logged = table.log.access.then(|| {
            (
                req.method().clone(),
                req.uri().clone(),
                req.headers().get(header::HOST).cloned(),
                access::trace_id(req.headers()),
            )
        });
        shared.retry_budget.record_request();
        let mut outcome = Outcome::default();
        let (mut resp, status) = match std::pin::pin!(proxy(
            shared,
            &table,
            conn,
            &mut req,
            raw_host,
            &request_id,
            &mut outcome,
        ))
        .await
        {
            Ok(mut resp) => {
                resp.headers_mut().insert(X_REQUEST_ID, request_id.clone());
                let status = resp.status().as_u16();
                (resp, status)
            }
            // error_response sets the request id itself. Metrics and the
            // access log count the status the error stands for, also when a
            // gRPC client gets it as a grpc-status on a 200.
            Err(err) => (
                error_response(&err, &request_id, expects),
                err.status().as_u16(),
            ),
        };
        if expects.http1
            && conn.closing.load(std::sync::atomic::Ordering::Relaxed)
            && resp.status() != StatusCode::SWITCHING_PROTOCOLS
        {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        table
            .metrics
            .record(outcome.route, outcome.upstream, status, started.elapsed());
        if let Some((method, uri, host, trace_id)) = logged {
            // Written when the body ends (or right away for steer's own answers).
            resp.body_mut().attach_access(Box::new(Access {
                table,
                start: started,
                method,
                uri,
                host,
                request_id,
                trace_id,
                outcome,
                status,
                bytes: 0,
            }));
        }
        resp
    }
}

/// The request, out of `handle`'s future, which keeps it from the start:
/// `proxy` and `forward` borrow it instead of each keeping a 272-byte
/// copy in its own future for the request's whole life (rustc keeps a
/// moved-out capture's room).
fn taken(req: &mut Request<Inbound>) -> Request<Inbound> {
    std::mem::replace(req, Request::new(Inbound::Empty))
}

/// Which route, upstream and endpoint a request used (metrics and logs).
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub(crate) client_ip: Option<std::net::IpAddr>,
    pub(crate) route: Option<usize>,
    pub(crate) upstream: Option<usize>,
    pub(crate) endpoint: Option<SocketAddr>,
    pub(crate) retries: u32,
}

#[allow(clippy::manual_async_fn)]
fn proxy<'a>(
    shared: &'a Shared,
    table: &'a Table,
    conn: &'a ConnInfo,
    req: &'a mut Request<Inbound>,
    raw_host: Result<Option<HeaderValue>, ProxyError>,
    request_id: &'a HeaderValue,
    outcome: &'a mut Outcome,
) -> impl Future<Output = Result<Response<ProxyBody>, ProxyError>> + 'a {
    async move {
        check_limits(table, req)?;
        if req.version() < Version::HTTP_2 {
            request::check_framing(req.headers())?;
        }
        // Gone before routing too: no condition or rate-limit key sees them.
        if !table.proxy.underscores_in_headers {
            request::drop_underscored(req.headers_mut());
        }
        // Only steer says which certificate a client proved it holds (Envoy's
        // `sanitize_set`): a client's own copy is gone before routing, so a
        // header condition on it sees only what the handshake verified.
        let xfcc = crate::tls::X_FORWARDED_CLIENT_CERT;
        match &conn.client_cert {
            Some(cert) => {
                req.headers_mut().insert(xfcc, cert.clone());
            }
            None => {
                req.headers_mut().remove(xfcc);
            }
        }
        if req.method() == http::Method::CONNECT {
            websocket_connect(table, req)?;
        }
        request::check_target(req.method(), req.uri().path())?;
        if table.proxy.normalize_path {
            request::normalize_path(req.uri_mut())?;
        }
        let raw_host = raw_host?;
        let host = raw_host
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .map(routing::normalize_host);
        // RFC 9110 §15.5.20: a host the connection's certificate does not
        // cover was meant for another connection (HTTP/2 reuse); 421 makes
        // the client open a new one.
        if let (Some(names), Some(h)) = (&conn.tls_names, host.as_deref())
            && !request::covered(names, h)
        {
            return Err(ProxyError::Misdirected);
        }
        let trusted = routing::client_ip_trusted(conn.peer.ip(), &table.proxy.trusted_proxies);
        let client_ip = routing::resolve_client_ip(
            conn.peer.ip(),
            req.headers(),
            &table.proxy.trusted_proxies,
            table.proxy.client_ip_header,
        );
        outcome.client_ip = Some(client_ip);
        // In a block of its own: what matching needs is not kept in this
        // future across the forward's awaits.
        let (route, unstrippable) = {
            let decoded = match table.proxy.normalize_path {
                true => routing::match_form(req.uri().path()),
                false => None,
            };
            let view = RequestView {
                method: req.method(),
                host: host.as_deref(),
                path: decoded.as_deref().unwrap_or(req.uri().path()),
                query: req.uri().query(),
                headers: req.headers(),
                client_ip,
            };
            let route = table.routes.select(&view).ok_or(ProxyError::NoRoute)?;
            // A `%2F` in the prefix the route strips: the path the upstream
            // gets keeps `%2F`, so the prefix cannot be stripped from it.
            let unstrippable = match (decoded.as_deref(), route.spec.strip_prefix.as_deref()) {
                (Some(matched), Some(prefix)) => {
                    strip_at_boundary(matched, prefix).is_some()
                        && strip_at_boundary(req.uri().path(), prefix).is_none()
                }
                _ => false,
            };
            (route, unstrippable)
        };
        if unstrippable {
            return Err(ProxyError::BadRequest(
                "an encoded slash (%2F) in the prefix this route strips",
            ));
        }
        outcome.route = Some(route.index);
        if let Some(limiter) = table.limiters.get(route.index).and_then(Option::as_ref) {
            let ip_text;
            let key = match &limiter.spec.key {
                crate::config::RateKey::ClientIp => {
                    ip_text = headers::IpText::new(client_ip);
                    ip_text.as_str()
                }
                crate::config::RateKey::Header(h) => req
                    .headers()
                    .get(h)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or(""),
            };
            if let ratelimit::Verdict::Limit(secs) = limiter.check(key, Instant::now()) {
                shared.metrics.rate_limited(&route.spec.name);
                return Err(ProxyError::TooManyRequests(secs));
            }
        }
        let (upstream_index, endpoint) = choose(table, route, &[])?;
        outcome.upstream = Some(upstream_index);
        let hop = Hop {
            peer: conn.peer.ip(),
            trusted,
            via: table.proxy.client_ip_header,
            tls: conn.tls,
            host: raw_host.as_ref(),
            cache: conn.hop_cache.as_deref(),
        };
        std::pin::pin!(forward(
            shared,
            table,
            route,
            (upstream_index, endpoint),
            req,
            &hop,
            request_id,
            outcome,
        ))
        .await
    }
}

/// RFC 8441: an extended CONNECT for a WebSocket goes on as the GET that
/// opens one over HTTP/1.1 (RFC 6455 §4.1), and is routed as that GET;
/// any other CONNECT asks for a tunnel, and steer is no forward proxy.
fn websocket_connect(table: &Table, req: &mut Request<Inbound>) -> Result<(), ProxyError> {
    let Some(protocol) = req.extensions().get::<h2::ext::Protocol>() else {
        return Err(ProxyError::MethodNotAllowed(
            "CONNECT: steer is a reverse proxy, not a tunnel",
        ));
    };
    let websocket = protocol.as_str().eq_ignore_ascii_case("websocket")
        && table.proxy.upgrades.iter().any(|u| u == "websocket")
        && req.extensions().get::<OnConnect>().is_some();
    if !websocket {
        return Err(ProxyError::NotImplemented(
            "extended CONNECT: only :protocol websocket, when `upgrades` allows it",
        ));
    }
    *req.method_mut() = http::Method::GET;
    Ok(())
}

/// Header count and size limits, answered with 431 and a reason (hyper's
/// own, larger limits only guard the parser).
fn check_limits(table: &Table, req: &Request<Inbound>) -> Result<(), ProxyError> {
    let headers = req.headers();
    if headers.len() > table.proxy.max_headers {
        return Err(ProxyError::HeadersTooLarge("too many header fields"));
    }
    let size: usize = req.uri().path_and_query().map_or(0, |p| p.as_str().len())
        + headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum::<usize>();
    if size > table.proxy.max_header_bytes {
        return Err(ProxyError::HeadersTooLarge(
            "request head larger than max_header_bytes",
        ));
    }
    Ok(())
}

/// The upstream and endpoint for a route: the target (or a weighted pick of
/// a split, then the split's other members), then the fallbacks in order.
fn choose<'t>(
    table: &'t Table,
    route: &Route,
    avoid: &[Arc<Endpoint>],
) -> Result<(usize, &'t Arc<Endpoint>), ProxyError> {
    let try_one = |u: usize| {
        table
            .upstreams
            .get(u)
            .and_then(|up| up.pick_excluding(avoid))
            .map(|e| (u, e))
    };
    let first = match &route.spec.target {
        Target::Upstream(u) => try_one(*u),
        Target::Split(parts) => {
            let now = Instant::now();
            let ramp = route.ramp.as_ref().filter(|r| r.governs(now));
            // A ramp in progress weighs by the effective shares (in parts
            // per million); otherwise the configured weights.
            let weight = |u: usize, w: u32| match ramp {
                Some(r) => (r.share(u, now) * 1_000_000.0) as u64,
                None => u64::from(w),
            };
            let picked = weighted(parts, weight, |_| true);
            picked.and_then(try_one).or_else(|| {
                let usable = |u: usize| {
                    Some(u) != picked
                        && table.upstreams.get(u).is_some_and(|up| up.is_usable(avoid))
                };
                // Weight-0 members are still members: after the weighted
                // ones they take the request (blue/green at 0/100).
                weighted(parts, weight, usable)
                    .or_else(|| parts.iter().map(|(u, _)| *u).find(|u| usable(*u)))
                    .and_then(try_one)
            })
        }
    };
    if let Some(found) = first.or_else(|| route.spec.fallback.iter().find_map(|u| try_one(*u))) {
        return Ok(found);
    }
    let tried: Vec<String> = match &route.spec.target {
        Target::Upstream(u) => vec![*u],
        Target::Split(parts) => parts.iter().map(|(u, _)| *u).collect(),
    }
    .into_iter()
    .chain(route.spec.fallback.iter().copied())
    .filter_map(|u| table.upstreams.get(u).map(|up| up.name.clone()))
    .fold(Vec::new(), |mut seen, name| {
        // Each upstream once, in the order tried (a fallback may repeat a
        // split member).
        if !seen.contains(&name) {
            seen.push(name);
        }
        seen
    });
    Err(ProxyError::NoHealthyUpstream(tried))
}

/// A weighted random pick among the parts that pass `keep`.
fn weighted(
    parts: &[(usize, u32)],
    weight: impl Fn(usize, u32) -> u64,
    keep: impl Fn(usize) -> bool,
) -> Option<usize> {
    let total: u64 = parts
        .iter()
        .filter(|(u, _)| keep(*u))
        .map(|(u, w)| weight(*u, *w))
        .sum();
    if total == 0 {
        return None;
    }
    let mut ticket = fastrand::u64(..total);
    for (u, w) in parts.iter().filter(|(u, _)| keep(*u)) {
        let w = weight(*u, *w);
        if ticket < w {
            return Some(*u);
        }
        ticket -= w;
    }
    None
}

/// The path sent upstream after `strip_prefix` (only at a segment boundary:
/// `/api` strips `/api` and `/api/x`, not `/apix`).
fn rewrite_path<'p>(path: &'p str, strip: Option<&str>) -> std::borrow::Cow<'p, str> {
    match strip.and_then(|p| strip_at_boundary(path, p)) {
        Some("") => "/".into(),
        Some(rest) => rest.into(),
        None => path.into(),
    }
}

/// What follows `prefix` in `path` when `path` starts with it at a segment
/// boundary (`/api` in `/api` and `/api/x`, not in `/apix`).
fn strip_at_boundary<'p>(path: &'p str, prefix: &str) -> Option<&'p str> {
    path.strip_prefix(prefix)
        .filter(|rest| rest.is_empty() || rest.starts_with('/'))
}

fn upstream_uri(
    req_uri: &Uri,
    strip: Option<&str>,
    authority: Option<&str>,
) -> Result<Uri, ProxyError> {
    let path = rewrite_path(req_uri.path(), strip);
    let mut s = String::with_capacity(path.len() + 64);
    if let Some(a) = authority {
        s.push_str("http://");
        s.push_str(a);
    }
    s.push_str(&path);
    if let Some(q) = req_uri.query() {
        s.push('?');
        s.push_str(q);
    }
    s.parse()
        .map_err(|_| ProxyError::BadRequest("request target cannot be forwarded"))
}

/// Where a prepared request goes: the client's authority and the path and
/// query after rewriting. Re-aiming at another upstream (a retry, possibly
/// a fallback with another protocol) changes only the URI form, the
/// version and whether the authority travels as Host or `:authority`.
struct Aim {
    /// The Host to set: the request's authority when it had one (HTTP/2,
    /// absolute-form), else none (the client's Host stays).
    host: Option<HeaderValue>,
    /// That authority as parsed, unless the request is an upgrade
    /// (`own_authority`).
    authority: Option<http::uri::Authority>,
    path_and_query: http::uri::PathAndQuery,
}

impl Aim {
    /// Puts the request in the form its upstream takes. For an h2c
    /// upstream, HTTP/2 form (`:authority` the request's own, no Host)
    /// when the request had an authority: no Host inserted here for the
    /// client to take out and parse again. Else HTTP/1.1 form (origin-form
    /// URI, Host header), which the client turns into HTTP/2 form when the
    /// connection is h2.
    fn apply(&self, req: &mut Request<ReqBody>, h2c: bool) {
        if h2c && let Some(authority) = &self.authority {
            let mut uri = http::uri::Parts::default();
            uri.scheme = Some(http::uri::Scheme::HTTP);
            uri.authority = Some(authority.clone());
            uri.path_and_query = Some(self.path_and_query.clone());
            if let Ok(uri) = Uri::from_parts(uri) {
                req.headers_mut().remove(header::HOST);
                *req.uri_mut() = uri;
                *req.version_mut() = Version::HTTP_2;
                return;
            }
        }
        if let Some(host) = &self.host {
            req.headers_mut().insert(header::HOST, host.clone());
        }
        *req.uri_mut() = Uri::from(self.path_and_query.clone());
        *req.version_mut() = Version::HTTP_11;
    }
}

/// Retries after the first attempt: two when the upstream did not process
/// the request (it costs the upstream nothing), one for a broken exchange.
const MAX_RETRIES: u32 = 2;

/// A request made ready for its upstream: the head rewritten, the body
/// wrapped, and what a retry needs.
struct Prepared {
    request: Request<ReqBody>,
    /// The forwarding fields, when they go out with the head rather than
    /// in its map (`headers::forwarding`).
    fields: Option<HopFields>,
    aim: Aim,
    client_upgrade: Option<ClientUpgrade>,
    fault: Arc<Fault>,
    /// Set when there is somewhere else to send the request.
    /// Boxed: a copy of the head is ~230 bytes that the retry loop's
    /// future (copied whole into each future above it) would otherwise
    /// hold for every request, also those with nowhere else to go.
    resend: Option<Box<resend::Resend>>,
}

/// Rewrites the head (hop-by-hop, cookies, upgrade, forwarding
/// headers, the route's rules, request id, path and Host) and wraps the
/// body (`max_body`; kept for a resend when the request could go
/// elsewhere).
fn prepare(
    table: &Table,
    route: &Route,
    first: (usize, &Arc<Endpoint>),
    req: Request<Inbound>,
    hop: &Hop<'_>,
    request_id: &HeaderValue,
) -> Result<Prepared, ProxyError> {
    let (mut parts, body) = req.into_parts();
    // Only a WebSocket extended CONNECT (see `websocket_connect`) has one.
    let h2_websocket = parts.extensions.remove::<OnConnect>();
    let upgrade_to = if h2_websocket.is_some() {
        Some(HeaderValue::from_static("websocket"))
    } else {
        (parts.version == Version::HTTP_11)
            .then(|| headers::allowed_upgrade(&parts.headers, &table.proxy.upgrades))
            .flatten()
    };
    let upgrade = upgrade_to.is_some();
    let (client_upgrade, body) = match h2_websocket {
        Some(on) => {
            let recv = body
                .into_h2_recv()
                .ok_or(ProxyError::BadRequest("extended CONNECT outside HTTP/2"))?;
            (Some(ClientUpgrade::H2(on, recv)), Inbound::Empty)
        }
        None => {
            let on = upgrade
                .then(|| parts.extensions.remove::<hyper::upgrade::OnUpgrade>())
                .flatten();
            (on.map(ClientUpgrade::H1), body)
        }
    };
    headers::strip_hop_by_hop(&mut parts.headers, upgrade);
    request::join_cookies(&mut parts.headers);
    if let Some(to) = upgrade_to {
        parts.headers.insert(header::UPGRADE, to);
    }
    if matches!(client_upgrade, Some(ClientUpgrade::H2(..))) {
        headers::websocket_handshake(&mut parts.headers);
    }
    let mut fields = headers::forwarding(&mut parts.headers, hop);
    // A rule that names one of them applies to them: into the map first.
    let rules = &route.spec.request_headers;
    if headers::names_forwarding(rules)
        && let Some(f) = fields.take()
    {
        f.insert(&mut parts.headers);
    }
    headers::apply_rules(&mut parts.headers, rules);
    parts.headers.insert(X_REQUEST_ID, request_id.clone());
    let aim = aim(&parts, route, hop, first.1)?;
    if let Some(max) = route.spec.max_body
        && crate::body::content_length(&parts.headers).is_some_and(|n| n > max)
    {
        return Err(ProxyError::BodyTooLarge);
    }
    let empty_body = body.is_end_stream();
    let fault = Arc::new(Fault::default());
    let source = Source::new(
        body,
        route.spec.max_body,
        fault.clone(),
        table.proxy.underscores_in_headers,
    );
    // A copy of the head (and of the body, up to REPLAY_LIMIT) costs a
    // header-map clone per request: only worth it when there is
    // somewhere else to send it. An HTTP/2 endpoint always has: a new
    // connection, when its shared one goes away before the request's
    // stream (`ClientError::connection_gone`).
    let elsewhere = !upgrade
        && (table.upstreams[first.0].endpoints.len() > 1
            || first.1.protocol != Protocol::Http1
            || !route.spec.fallback.is_empty()
            || matches!(route.spec.target, Target::Split(_)));
    let (body, kept) = if elsewhere && !empty_body {
        let kept = Replay::new(source);
        (ReqBody::Replay(kept.first()), Some(kept))
    } else {
        (ReqBody::Client(source), None)
    };
    let request = Request::from_parts(parts, body);
    let resend = elsewhere.then(|| Box::new(resend::Resend::new(&request, fields.clone(), kept)));
    Ok(Prepared {
        request,
        fields,
        aim,
        client_upgrade,
        fault,
        resend,
    })
}

/// The path sent upstream and the Host: the host the request was routed by
/// is the Host the upstream sees. An absolute-form target (or an HTTP/2
/// `:authority`) wins over a Host header that says otherwise (RFC 9112
/// §3.2.2), so `hosts` conditions cannot be sidestepped to reach another
/// ZITADEL instance.
fn aim(
    parts: &http::request::Parts,
    route: &Route,
    hop: &Hop<'_>,
    first: &Arc<Endpoint>,
) -> Result<Aim, ProxyError> {
    // Without a rewrite the client's path and query go on as they are (a
    // cheap clone of shared bytes); only strip_prefix builds a new one.
    let path_and_query = match (
        route.spec.strip_prefix.as_deref(),
        parts.uri.path_and_query(),
    ) {
        (None, Some(pq)) => pq.clone(),
        (strip, _) => upstream_uri(&parts.uri, strip, None)?
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
    };
    let invalid = |_| ProxyError::BadRequest("invalid authority");
    let host = match hop.host {
        Some(h) if parts.uri.authority().is_some() || !parts.headers.contains_key(header::HOST) => {
            Some(h.clone())
        }
        Some(_) => None,
        None => Some(
            HeaderValue::from_str(headers::IpText::socket(first.addr).as_str()).map_err(invalid)?,
        ),
    };
    Ok(Aim {
        host,
        authority: own_authority(parts),
        path_and_query,
    })
}

/// The request's own authority (HTTP/2, absolute-form), for an h2c
/// upstream's `:authority`; none for an upgrade (an `Upgrade` field, the
/// client's or a route rule's), which goes out in HTTP/1.1 form through
/// hyper whatever the upstream.
fn own_authority(parts: &http::request::Parts) -> Option<http::uri::Authority> {
    let own = parts.uri.authority()?;
    (!parts.headers.contains_key(header::UPGRADE)).then(|| own.clone())
}

/// Sends the request to `first`, and on a failure that allows it, again
/// elsewhere (`resend`), within `request_timeout` and the retry budget.
#[allow(clippy::too_many_arguments, clippy::manual_async_fn)]
fn forward<'a>(
    shared: &'a Shared,
    table: &'a Table,
    route: &'a Route,
    first: (usize, &'a Arc<Endpoint>),
    req: &'a mut Request<Inbound>,
    hop: &'a Hop<'a>,
    request_id: &'a HeaderValue,
    outcome: &'a mut Outcome,
) -> impl Future<Output = Result<Response<ProxyBody>, ProxyError>> + 'a {
    async move {
        let Prepared {
            mut request,
            mut fields,
            aim,
            client_upgrade,
            fault,
            resend,
        } = prepare(table, route, first, taken(req), hop, request_id)?;
        let deadline = tokio::time::Instant::now() + table.proxy.request_timeout;
        let (mut upstream_index, mut endpoint) = first;
        let mut tried: Vec<Arc<Endpoint>> = Vec::new();
        let mut retries = 0;
        loop {
            let upstream = &table.upstreams[upstream_index];
            outcome.upstream = Some(upstream_index);
            outcome.endpoint = Some(endpoint.addr);
            aim.apply(&mut request, endpoint.protocol == Protocol::H2c);
            let guard = InFlight::new(endpoint.clone());
            let send = std::pin::pin!(endpoint.pool.send(
                endpoint.dial(table.proxy.connect_timeout),
                request,
                fields.take(),
            ));
            let failed = match tokio::time::timeout_at(deadline, send).await {
                // The client's body stopped coming: not the upstream's
                // fault (nginx's client_body_timeout answers 408 too).
                Err(_) if fault.waits_for_client() => {
                    return Err(ProxyError::BodyTimeout(table.proxy.request_timeout));
                }
                Err(_) => {
                    ramp_attempt(shared, table, route, upstream_index, true);
                    return Err(ProxyError::Timeout(table.proxy.request_timeout));
                }
                Ok(Ok(sent)) => {
                    let server_error = sent.response.status().is_server_error();
                    ramp_attempt(shared, table, route, upstream_index, server_error);
                    if upstream.health.is_none() {
                        endpoint.record_passive_success();
                    }
                    let finished = Finished {
                        guard,
                        request: fault,
                    };
                    return respond(sent, table, route, client_upgrade, finished);
                }
                Ok(Err(failed)) => failed,
            };
            drop(guard);
            // The client's side failed (our max_body, or a malformed body):
            // not the upstream's fault, and nothing to retry.
            if fault.too_large() {
                return Err(ProxyError::BodyTooLarge);
            }
            if fault.malformed() {
                return Err(ProxyError::BadRequest("malformed request body"));
            }
            let error = failed.error;
            // steer's own shortage (descriptors, memory) says nothing about
            // the endpoint: no blame and no ramp failure. Its resend costs
            // no retry budget: it fails at once where it needs a new
            // connection, and an endpoint with an open one can serve it.
            let local = error.local();
            let unprocessed = failed.request.is_some() || error.unprocessed();
            if !local {
                ramp_attempt(shared, table, route, upstream_index, true);
                blame(endpoint, upstream, &error, unprocessed);
            }
            tracing::debug!(request_id = %headers::id_text(request_id), endpoint = %endpoint.addr, error = %error, unprocessed, "upstream attempt failed");
            tried.push(endpoint.clone());
            let again = failed
                .request
                .or_else(|| resend.as_ref()?.again(unprocessed));
            let limit = if unprocessed { MAX_RETRIES } else { 1 };
            // Somewhere else first; else the same endpoint again, on a new
            // connection, when only its connection failed.
            let gone = error.connection_gone();
            let next = resend::next_target(table, route, upstream_index, &tried)
                .or_else(|| gone.then_some((upstream_index, endpoint)));
            // The budget guards upstreams that fail what they get; a request
            // steer's own shortage or a gone connection kept from the
            // upstream costs it nothing (Go's HTTP/2 client, too, resends
            // those freely).
            let free = local || gone;
            match (again, next) {
                (Some(req), Some(next))
                    if retries < limit && (free || shared.retry_budget.try_retry()) =>
                {
                    retries += 1;
                    outcome.retries = retries;
                    shared.metrics.retries(&upstream.name).inc();
                    request = req;
                    (upstream_index, endpoint) = next;
                }
                _ if local => return Err(ProxyError::Exhausted(error)),
                _ if error.not_sent() => return Err(ProxyError::Connect(error)),
                _ => return Err(ProxyError::Broken(error)),
            }
        }
    }
}

/// Counts an attempt towards the route's ramp rollback, if one is
/// watching; a rollback is logged and counted here.
fn ramp_attempt(shared: &Shared, table: &Table, route: &Route, upstream: usize, failed: bool) {
    let (Some(ramp), Some(member)) = (route.ramp.as_ref(), table.upstreams.get(upstream)) else {
        return;
    };
    let now = Instant::now();
    let Some(guard) = ramp.watching(now) else {
        return;
    };
    let restore = || {
        ramp.from
            .iter()
            .filter_map(|(u, w)| Some((table.upstreams.get(*u)?.name.clone(), *w)))
            .collect()
    };
    if let Some(rolled) = guard.record(&member.name, failed, now, restore) {
        shared.metrics.ramp_rollback(&route.spec.name);
        tracing::warn!(route = %route.spec.name, upstream = %rolled.member,
            failed = rolled.failures, attempts = rolled.attempts,
            window = ?guard.spec.window, max_error_rate = guard.spec.max_error_rate,
            weights = ?rolled.weights,
            "ramp rolled back: the upstream it raises fails too often; the route is back at the weights the ramp started from");
    }
}

/// What a failed attempt says about its endpoint: one that took no
/// connection is out at once; a broken exchange counts like a failed
/// probe, unless it broke on an answer steer cannot pass on (a head too
/// large or malformed, a 101 unasked: a client can provoke one, and must
/// not take the endpoint out for everyone with two requests); a stream
/// refused or cut by a graceful GOAWAY, or a pooled
/// HTTP/1.1 connection closed with the request unread, is no fault (the
/// endpoint is busy or restarting; a refused connect follows if it is
/// gone). A new connection reset unread counts like a broken exchange: an
/// endpoint (or a balancer in front of it) that resets every request must
/// leave the rotation.
fn blame(
    endpoint: &Endpoint,
    upstream: &crate::upstream::Upstream,
    error: &ClientError,
    unprocessed: bool,
) {
    let health = upstream.health.as_ref();
    if error.endpoint_down() {
        endpoint.record_passive_failure(health, &error.to_string(), true);
    } else if (!unprocessed && !error.bad_answer()) || error.reset_when_new() {
        endpoint.record_passive_failure(health, &error.to_string(), false);
    }
}

/// What a response body releases when it ends.
#[derive(Debug)]
pub(crate) struct Finished {
    pub(crate) guard: InFlight,
    /// Whether the request went out whole: only then may an HTTP/1.1
    /// upstream connection carry another request.
    pub(crate) request: Arc<Fault>,
}

/// The client's response from the upstream's: framing made unambiguous,
/// hop-by-hop removed, the route's rules applied, body wrapped to release
/// the endpoint at its end.
fn respond(
    sent: crate::client::Sent,
    table: &Table,
    route: &Route,
    client_upgrade: Option<ClientUpgrade>,
    finished: Finished,
) -> Result<Response<ProxyBody>, ProxyError> {
    let mut response = sent.response;
    // RFC 9112 §6.3: with both, chunked framing wins (the body was read
    // that way, and the connection is not reused: `client::h1`); the stale
    // Content-Length must not reach the client.
    if response.headers().contains_key(header::TRANSFER_ENCODING) {
        response.headers_mut().remove(header::CONTENT_LENGTH);
    }
    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    headers::strip_hop_by_hop(response.headers_mut(), switching);
    headers::apply_rules(response.headers_mut(), &route.spec.response_headers);
    let unswitched = |reason| {
        Err(ProxyError::Broken(ClientError::BadRequest {
            addr: finished.guard.endpoint().addr,
            reason,
        }))
    };
    match client_upgrade {
        // A 101 the client did not ask for cannot be passed on.
        None if switching => return unswitched("upstream switched protocols unasked"),
        Some(client) if switching => {
            if matches!(client, ClientUpgrade::H2(..)) {
                headers::websocket_accepted(&mut response);
            }
            return Ok(body::tunnel(
                response,
                client,
                finished.guard,
                table.proxy.tunnel_idle_timeout,
            ));
        }
        // An HTTP/2 client takes any 2xx to its CONNECT as the tunnel
        // (RFC 8441 §5): an upstream that answered the page instead of
        // switching must not look like one.
        Some(ClientUpgrade::H2(..)) if response.status().is_success() => {
            return unswitched("upstream answered a WebSocket request without switching protocols");
        }
        _ => {}
    }
    let (parts, incoming) = response.into_parts();
    Ok(Response::from_parts(
        parts,
        ProxyBody::upstream(UpstreamBody::new(
            incoming,
            finished,
            table.proxy.response_idle_timeout,
        )),
    ))
}

#[cfg(test)]
mod tests;
