//! The admin API on `listen.admin`: liveness, readiness, metrics, config
//! version, upstream state, reload, drain. Reads the live table; writes
//! nothing but drain flags (and asks `reload` for reloads).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{Value, json};

use crate::app::AppState;
use crate::proxy::ProxyBody;
use crate::upstream::{Endpoint, Upstream};

const DEFAULT_DRAIN_WAIT: Duration = Duration::from_secs(30);
const MAX_DRAIN_WAIT: Duration = Duration::from_secs(3600);

pub async fn handle(state: Arc<AppState>, req: Request<Incoming>) -> Response<ProxyBody> {
    if let Some(refused) = refuse(&state, &req) {
        return refused;
    }
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let method = req.method().clone();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (&method, segments.as_slice()) {
        (&Method::GET, ["healthz"]) => text(StatusCode::OK, "ok\n"),
        (&Method::GET, ["ready"]) => {
            if state.is_ready() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        (&Method::GET, ["metrics"]) => {
            let mut resp =
                Response::new(ProxyBody::full(Bytes::from(state.shared.metrics.render())));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
        (&Method::GET, ["config"]) => json_response(StatusCode::OK, &config_json(&state)),
        (&Method::GET, ["upstreams"]) => json_response(StatusCode::OK, &upstreams_json(&state)),
        (&Method::POST, ["reload"]) => match state.reloader.reload(true).await {
            Ok(r) => json_response(
                StatusCode::OK,
                &json!({ "version": r.version, "pending": r.pending }),
            ),
            Err(e) => json_response(
                StatusCode::UNPROCESSABLE_ENTITY,
                &json!({ "errors": e.messages() }),
            ),
        },
        (&Method::POST, ["upstreams", name, "drain"]) => drain(&state, name, &query).await,
        (&Method::POST, ["upstreams", name, "undrain"]) => undrain(&state, name),
        (&Method::POST, ["upstreams", name, "endpoints", addr, "drain"]) => {
            drain_endpoint(&state, name, addr, &query).await
        }
        (&Method::POST, ["upstreams", name, "endpoints", addr, "undrain"]) => {
            undrain_endpoint(&state, name, addr)
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; see GET /config, /upstreams, /metrics\n",
        ),
    }
}

/// The admin API's access rules, in order:
/// 1. With `[admin] token_file`, every endpoint but `/healthz` and `/ready`
///    needs `Authorization: Bearer TOKEN` (401 otherwise).
/// 2. A `POST` (it changes what steer does) is refused (403) when it
///    carries an `Origin` header, which browsers add to cross-site
///    requests (CSRF), or a `Host` that is not an IP address, `localhost`
///    or a name in `[admin] allowed_hosts`: a page on a name that resolves
///    to the admin address (DNS rebinding) carries its own name.
fn refuse(state: &AppState, req: &Request<Incoming>) -> Option<Response<ProxyBody>> {
    let table = state.shared.live.load();
    let open = matches!(
        req.uri().path().trim_end_matches('/'),
        "/healthz" | "/ready"
    );
    if let Some(token) = &table.admin.token
        && !open
    {
        let offered = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
        if !offered.is_some_and(|t| token.matches(t)) {
            let mut resp = text(
                StatusCode::UNAUTHORIZED,
                "401 unauthorized: this admin API needs `Authorization: Bearer TOKEN`\n",
            );
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"steer admin\""),
            );
            return Some(resp);
        }
    }
    if req.method() != Method::POST {
        return None;
    }
    if req.headers().contains_key(header::ORIGIN) {
        return Some(text(
            StatusCode::FORBIDDEN,
            "403 forbidden: state-changing admin requests must not carry Origin (cross-site request)\n",
        ));
    }
    let host = req
        .uri()
        .authority()
        .map(|a| a.host().to_owned())
        .or_else(|| {
            let h = req.headers().get(header::HOST)?.to_str().ok()?;
            Some(h.parse::<http::uri::Authority>().ok()?.host().to_owned())
        });
    match host {
        Some(h) if !host_allowed(&h, &table.admin.allowed_hosts) => Some(text(
            StatusCode::FORBIDDEN,
            "403 forbidden: Host is not an IP address, localhost or a name in [admin] allowed_hosts\n",
        )),
        _ => None,
    }
}

/// An IP literal (`127.0.0.1`, `[::1]`), `localhost`, or a listed name.
fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    let name = host.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost" || allowed.contains(&name)
}

fn text(status: StatusCode, body: &'static str) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn json_response(status: StatusCode, value: &Value) -> Response<ProxyBody> {
    let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
    body.push(b'\n');
    let mut resp = Response::new(ProxyBody::full(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

fn config_json(state: &AppState) -> Value {
    let table = state.shared.live.load();
    let file_version = state.reloader.file_version();
    json!({
        "version": table.version,
        "file_version": file_version,
        "file_matches": file_version.as_deref() == Some(table.version.as_str()),
        "loaded_at": rfc3339(table.loaded_at),
        "path": state.reloader.path().display().to_string(),
        "last_error": state.reloader.last_error(),
        "pending": state.reloader.pending().map(|p| json!({
            "version": p.version,
            "waiting_for": p.waiting_for,
            "since": rfc3339(p.since),
            "gate_timeout_seconds": p.gate_timeout.as_secs_f64(),
        })),
        "ramps": ramps_json(&table),
        "rollbacks": rollbacks_json(&table),
    })
}

fn ramps_json(table: &crate::table::Table) -> Value {
    let now = std::time::Instant::now();
    let list: Vec<Value> = table
        .routes
        .routes()
        .iter()
        .filter_map(|r| {
            let ramp = r
                .ramp
                .as_ref()
                .filter(|x| x.progress(now) < 1.0 && x.rolled_back().is_none())?;
            let weights: serde_json::Map<String, Value> = ramp
                .upstreams()
                .filter_map(|u| {
                    Some((
                        table.upstreams.get(u)?.name.clone(),
                        json!(ramp.share(u, now)),
                    ))
                })
                .collect();
            Some(
                json!({ "route": r.spec.name, "progress": ramp.progress(now), "weights": weights }),
            )
        })
        .collect();
    json!(list)
}

/// Ramps rolled back, until a reload changes their route.
fn rollbacks_json(table: &crate::table::Table) -> Value {
    let list: Vec<Value> = table
        .routes
        .routes()
        .iter()
        .filter_map(|r| {
            let ramp = r.ramp.as_ref()?;
            let rolled = ramp.rolled_back()?;
            let spec = ramp.guard.as_ref()?.spec;
            let weights: serde_json::Map<String, Value> = rolled
                .weights
                .iter()
                .map(|(name, w)| (name.clone(), json!(w)))
                .collect();
            let reason = format!(
                "{}: {} of {} attempts failed in the last {:?} (more than {} %)",
                rolled.member,
                rolled.failures,
                rolled.attempts,
                spec.window,
                spec.max_error_rate * 100.0
            );
            Some(json!({ "route": r.spec.name, "reason": reason, "at": rfc3339(rolled.at), "weights": weights }))
        })
        .collect();
    json!(list)
}

fn endpoint_json(upstream: &Upstream, e: &Endpoint) -> Value {
    let state = if upstream.is_draining() || e.is_draining() {
        "draining"
    } else {
        e.state().as_str()
    };
    let counter = e.counter();
    json!({
        "address": e.addr.to_string(),
        "configured_as": e.configured_as,
        "draining": e.is_draining(),
        "state": state,
        "in_flight": e.in_flight(),
        "consecutive_passes": counter.passes,
        "consecutive_failures": counter.failures,
        "last_check": e.last_check().map(|c| json!({
            "at": rfc3339(c.at),
            "sent": c.sent,
            "ok": c.ok,
            "status": c.status,
            "error": c.error,
        })),
    })
}

fn upstreams_json(state: &AppState) -> Value {
    let table = state.shared.live.load();
    let list: Vec<Value> = table
        .upstreams
        .iter()
        .map(|u| {
            json!({
                "name": u.name,
                "protocol": u.protocol.as_str(),
                "draining": u.is_draining(),
                "in_flight": u.in_flight(),
                "endpoints": u.endpoints.iter().map(|e| endpoint_json(u, e)).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({ "upstreams": list })
}

fn find(state: &AppState, name: &str) -> Option<Arc<Upstream>> {
    state.shared.live.load().upstream(name).cloned()
}

/// `?timeout=` of a drain: how long the call waits for the in-flight
/// count to reach 0 (operator input: clamped, and 30 s when it does not
/// parse).
fn drain_wait(query: &str) -> Duration {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix("timeout="))
        .and_then(|t| crate::config::parse_duration(t).ok())
        .unwrap_or(DEFAULT_DRAIN_WAIT)
        .min(MAX_DRAIN_WAIT)
}

/// Waits until `in_flight` reads 0 or `wait` passes; what it read last.
async fn wait_in_flight(wait: Duration, in_flight: impl Fn() -> usize) -> usize {
    let deadline = Instant::now() + wait;
    while in_flight() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    in_flight()
}

async fn drain(state: &AppState, name: &str, query: &str) -> Response<ProxyBody> {
    let Some(upstream) = find(state, name) else {
        return text(StatusCode::NOT_FOUND, "unknown upstream\n");
    };
    upstream.draining.store(true, Ordering::Relaxed);
    tracing::info!(upstream = %name, "draining");
    // Reads the live table each round: a reload during the wait swaps the
    // Upstream object but keeps the endpoints (and their counts).
    let left = wait_in_flight(drain_wait(query), || {
        find(state, name).map_or(0, |u| u.in_flight())
    })
    .await;
    json_response(
        StatusCode::OK,
        &json!({ "upstream": name, "in_flight": left, "drained": left == 0 }),
    )
}

/// The endpoint `addr` (as `/upstreams` lists it) of upstream `name` in the
/// live table.
fn find_endpoint(state: &AppState, name: &str, addr: &str) -> Option<Arc<Endpoint>> {
    let upstream = find(state, name)?;
    upstream
        .endpoints
        .iter()
        .find(|e| e.addr.to_string() == addr)
        .cloned()
}

/// Drains one endpoint: no new requests to it (the rest of its upstream
/// takes them), waits for its own in-flight requests only.
async fn drain_endpoint(
    state: &AppState,
    name: &str,
    addr: &str,
    query: &str,
) -> Response<ProxyBody> {
    let Some(endpoint) = find_endpoint(state, name, addr) else {
        return text(StatusCode::NOT_FOUND, "unknown upstream or endpoint\n");
    };
    endpoint.set_draining(true);
    tracing::info!(upstream = %name, endpoint = %addr, "draining endpoint");
    let left = wait_in_flight(drain_wait(query), || endpoint.in_flight()).await;
    json_response(
        StatusCode::OK,
        &json!({ "upstream": name, "endpoint": addr, "in_flight": left, "drained": left == 0 }),
    )
}

fn undrain_endpoint(state: &AppState, name: &str, addr: &str) -> Response<ProxyBody> {
    let Some(endpoint) = find_endpoint(state, name, addr) else {
        return text(StatusCode::NOT_FOUND, "unknown upstream or endpoint\n");
    };
    endpoint.set_draining(false);
    tracing::info!(upstream = %name, endpoint = %addr, "endpoint undrained");
    json_response(
        StatusCode::OK,
        &json!({ "upstream": name, "endpoint": addr, "draining": false }),
    )
}

fn undrain(state: &AppState, name: &str) -> Response<ProxyBody> {
    let Some(upstream) = find(state, name) else {
        return text(StatusCode::NOT_FOUND, "unknown upstream\n");
    };
    upstream.draining.store(false, Ordering::Relaxed);
    tracing::info!(upstream = %name, "undrained");
    json_response(
        StatusCode::OK,
        &json!({ "upstream": name, "draining": false }),
    )
}
