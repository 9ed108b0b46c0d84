//! The probing shell around the threshold counter: one task per endpoint,
//! `GET {path}` over the endpoint's own protocol and connection pool, result
//! recorded on the endpoint. The task holds only a `Weak` to its endpoint,
//! so an endpoint dropped by a reload stops being probed.

use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Request, Uri, Version, header};
use http_body_util::{BodyExt, Limited};

use crate::client::ReqBody;
use crate::config::{HealthSpec, Warmup};
use crate::health::State;
use crate::upstream::{CheckResult, Endpoint};

/// Called after every probe (metrics, logs).
pub type ProbeHook = Arc<dyn Fn(&Endpoint, &CheckResult) + Send + Sync>;

/// Bodies of probe answers are read (so the connection can be reused) up to
/// this size; ZITADEL's answers are a few bytes.
const MAX_PROBE_BODY: usize = 64 * 1024;

/// Starts probing `endpoint` until it is dropped everywhere. The first probe
/// runs at once; later ones every `interval`, with the phase randomised and
/// ±10% jitter so that many endpoints are not probed in one burst.
pub fn spawn(endpoint: &Arc<Endpoint>, on_result: ProbeHook) {
    let weak: Weak<Endpoint> = Arc::downgrade(endpoint);
    tokio::spawn(async move {
        let mut first = true;
        let mut unsent = false;
        loop {
            let Some(ep) = weak.upgrade() else { return };
            let pause = match ep.health_spec() {
                Some(spec) => {
                    let before = ep.state();
                    let result = probe(&ep, &spec).await;
                    let after = ep.record_check(result.clone(), &spec);
                    on_result(&ep, &result);
                    log_change(&ep, before, after, &result);
                    log_unsent(&ep, &mut unsent, &result);
                    let factor = if first {
                        fastrand::f64()
                    } else {
                        0.9 + fastrand::f64() * 0.2
                    };
                    first = false;
                    spec.interval.mul_f64(factor)
                }
                None => {
                    if ep.revive_after_passive_failure() {
                        tracing::info!(upstream = %ep.upstream, endpoint = %ep.addr, "endpoint back in rotation after its passive-failure timeout");
                    }
                    Duration::from_secs(1)
                }
            };
            // Sleep without keeping the endpoint alive (a reload may drop
            // it); a reload that changes the settings wakes the task at once.
            let notify = ep.settings_changed.clone();
            drop(ep);
            let changed = async move { notify.notified().await };
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = changed => {}
            }
        }
    });
}

fn log_change(ep: &Endpoint, before: State, after: State, result: &CheckResult) {
    if before == after {
        return;
    }
    let error = result.error.as_deref().unwrap_or("");
    match after {
        State::Healthy => {
            tracing::info!(upstream = %ep.upstream, endpoint = %ep.addr, from = before.as_str(), "endpoint healthy");
        }
        State::Unhealthy | State::Unknown => {
            tracing::warn!(upstream = %ep.upstream, endpoint = %ep.addr, from = before.as_str(), error, "endpoint unhealthy");
        }
    }
}

/// Logs when probes of `ep` start and stop failing for steer's own
/// shortage, once each way rather than at every probe.
fn log_unsent(ep: &Endpoint, unsent: &mut bool, result: &CheckResult) {
    let now_unsent = !result.sent;
    if now_unsent == *unsent {
        return;
    }
    *unsent = now_unsent;
    if *unsent {
        let error = result.error.as_deref().unwrap_or("");
        tracing::warn!(upstream = %ep.upstream, endpoint = %ep.addr, error, "health check not sent: the endpoint keeps its state");
    } else {
        tracing::info!(upstream = %ep.upstream, endpoint = %ep.addr, "health checks sent again");
    }
}

/// One check: `GET {path}` (2xx passes) or, with `grpc_service`,
/// `grpc.health.v1.Health/Check` (SERVING passes); before an endpoint's
/// first promotion, also every warm-up request. Not sent when steer could
/// not open a connection for it (`ClientError::Local`): steer's shortage
/// is no verdict on the endpoint, and taking it out would turn a local
/// overload into an outage for every client.
pub async fn probe(endpoint: &Endpoint, spec: &HealthSpec) -> CheckResult {
    let at = SystemTime::now();
    let timed = |f| async move {
        tokio::time::timeout(spec.timeout, f)
            .await
            .unwrap_or_else(|_| Err(format!("timed out after {:?}", spec.timeout).into()))
    };
    let mut outcome = match &spec.grpc_service {
        Some(service) => {
            timed(Box::pin(grpc_check(endpoint, spec, service)) as CheckFuture<'_>).await
        }
        None => timed(Box::pin(http_check(endpoint, spec)) as CheckFuture<'_>).await,
    };
    if outcome.is_ok() && !endpoint.ever_healthy() {
        for w in &spec.warmup {
            if let Err(failed) = timed(Box::pin(warmup(endpoint, spec, w)) as CheckFuture<'_>).await
            {
                outcome = Err(failed.context(&w.path));
                break;
            }
        }
    }
    let (sent, status, error) = match outcome {
        Ok(status) => (true, Some(status), None),
        Err(CheckFailure::Answer(status, error)) => (true, status, Some(error)),
        Err(CheckFailure::Local(error)) => (false, None, Some(format!("not sent: {error}"))),
    };
    CheckResult {
        at,
        sent,
        ok: error.is_none(),
        status,
        error,
    }
}

/// A check's result: the status that passed, or why it failed.
type Checked = Result<u16, CheckFailure>;

/// Why a check did not pass.
enum CheckFailure {
    /// The endpoint's doing: the status it answered (if any) and why that
    /// fails, or its silence.
    Answer(Option<u16>, String),
    /// steer could not open a connection for the check.
    Local(String),
}

impl CheckFailure {
    /// The same failure, said of warm-up request `path`.
    fn context(self, path: &str) -> CheckFailure {
        match self {
            CheckFailure::Answer(status, e) => {
                CheckFailure::Answer(status, format!("warm-up GET {path}: {e}"))
            }
            local => local,
        }
    }
}

impl From<String> for CheckFailure {
    fn from(error: String) -> CheckFailure {
        CheckFailure::Answer(None, error)
    }
}

type CheckFuture<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Checked> + Send + 'a>>;

fn request(
    endpoint: &Endpoint,
    host: Option<&str>,
    path: &str,
    body: Bytes,
) -> Result<Request<ReqBody>, String> {
    let host = host.unwrap_or(&endpoint.configured_as);
    let mut req = Request::new(ReqBody::full(body));
    *req.uri_mut() = path
        .parse::<Uri>()
        .map_err(|e| format!("bad probe path: {e}"))?;
    *req.version_mut() = Version::HTTP_11;
    let value = HeaderValue::from_str(host).map_err(|e| format!("bad probe Host: {e}"))?;
    req.headers_mut().insert(header::HOST, value);
    req.headers_mut().insert(
        header::USER_AGENT,
        HeaderValue::from_static("steer-health-check"),
    );
    Ok(req)
}

/// Sends `req` and reads the whole (small) answer: status, head, body and
/// trailers.
async fn exchange(
    endpoint: &Endpoint,
    timeout: Duration,
    req: Request<ReqBody>,
) -> Result<(http::response::Parts, http_body_util::Collected<Bytes>), CheckFailure> {
    let sent = endpoint
        .pool
        .send(endpoint.dial(timeout), req, None)
        .await
        .map_err(|f| {
            let error = f.error.to_string();
            if f.error.local() {
                CheckFailure::Local(error)
            } else {
                CheckFailure::Answer(None, error)
            }
        })?;
    let (parts, mut body) = sent.response.into_parts();
    let status = parts.status.as_u16();
    let collected = Limited::new(&mut body, MAX_PROBE_BODY)
        .collect()
        .await
        .map_err(|e| CheckFailure::Answer(Some(status), format!("reading the answer: {e}")))?;
    if let Some(conn) = body.take_conn() {
        endpoint.pool.put_h1(conn);
    }
    Ok((parts, collected))
}

async fn http_check(endpoint: &Endpoint, spec: &HealthSpec) -> Checked {
    let req = request(endpoint, spec.host.as_deref(), &spec.path, Bytes::new())
        .map_err(CheckFailure::from)?;
    let (parts, _) = exchange(endpoint, spec.timeout, req).await?;
    let status = parts.status.as_u16();
    if parts.status.is_success() {
        Ok(status)
    } else {
        Err(CheckFailure::Answer(
            Some(status),
            format!("status {status}"),
        ))
    }
}

async fn warmup(endpoint: &Endpoint, spec: &HealthSpec, w: &Warmup) -> Checked {
    let host = w.host.as_deref().or(spec.host.as_deref());
    let req = request(endpoint, host, &w.path, Bytes::new()).map_err(CheckFailure::from)?;
    let (parts, body) = exchange(endpoint, spec.timeout, req).await?;
    let status = parts.status.as_u16();
    if !parts.status.is_success() {
        return Err(CheckFailure::Answer(
            Some(status),
            format!("status {status}"),
        ));
    }
    if let Some(needle) = &w.expect_body {
        let body = body.to_bytes();
        if !String::from_utf8_lossy(&body).contains(needle.as_str()) {
            return Err(CheckFailure::Answer(
                Some(status),
                format!("body does not contain {needle:?}"),
            ));
        }
    }
    Ok(status)
}

/// `grpc.health.v1.Health/Check` by hand over the endpoint's pool: one
/// length-prefixed protobuf message each way, status in the trailers.
async fn grpc_check(endpoint: &Endpoint, spec: &HealthSpec, service: &str) -> Checked {
    use prost::Message;
    let msg = tonic_health::pb::HealthCheckRequest {
        service: service.to_owned(),
    }
    .encode_to_vec();
    let mut frame = Vec::with_capacity(5 + msg.len());
    frame.push(0);
    frame.extend_from_slice(&u32::try_from(msg.len()).unwrap_or(u32::MAX).to_be_bytes());
    frame.extend_from_slice(&msg);
    let mut req = request(
        endpoint,
        spec.host.as_deref(),
        GRPC_HEALTH_CHECK,
        Bytes::from(frame),
    )
    .map_err(CheckFailure::from)?;
    *req.method_mut() = http::Method::POST;
    req.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    req.headers_mut()
        .insert(header::TE, HeaderValue::from_static("trailers"));
    let (parts, body) = exchange(endpoint, spec.timeout, req).await?;
    let status = parts.status.as_u16();
    let grpc_status = body
        .trailers()
        .and_then(|t| t.get("grpc-status"))
        .or_else(|| parts.headers.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .unwrap_or("missing")
        .to_owned();
    if grpc_status != "0" {
        return Err(CheckFailure::Answer(
            Some(status),
            format!("gRPC health check answered grpc-status {grpc_status}"),
        ));
    }
    let bytes = body.to_bytes();
    let serving = bytes
        .get(5..)
        .and_then(|m| tonic_health::pb::HealthCheckResponse::decode(m).ok())
        .map(|r| r.status());
    match serving {
        Some(tonic_health::pb::health_check_response::ServingStatus::Serving) => Ok(status),
        Some(other) => Err(CheckFailure::Answer(
            Some(status),
            format!("gRPC health: {}", other.as_str_name()),
        )),
        None => Err(CheckFailure::Answer(
            Some(status),
            "gRPC health: unreadable answer".to_owned(),
        )),
    }
}

const GRPC_HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";
