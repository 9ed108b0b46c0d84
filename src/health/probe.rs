//! The probing shell around the threshold counter: one task per endpoint,
//! `GET {path}` over the endpoint's own protocol and connection pool, result
//! recorded on the endpoint. The task holds only a `Weak` to its endpoint,
//! so an endpoint dropped by a reload stops being probed.

use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Request, Uri, Version, header};
use http_body_util::{BodyExt, Either, Full, Limited};

use crate::config::HealthSpec;
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
        loop {
            let Some(ep) = weak.upgrade() else { return };
            let pause = match ep.health_spec() {
                Some(spec) => {
                    let before = ep.state();
                    let result = probe(&ep, &spec).await;
                    let after = ep.record_check(result.clone(), &spec);
                    on_result(&ep, &result);
                    log_change(&ep, before, after, &result);
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
            // Sleep without keeping the endpoint alive; a reload that
            // changes the settings wakes the task at once.
            let changed = async move { ep.settings_changed.notified().await };
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

/// One check: `GET {path}` with the configured Host; 2xx passes.
pub async fn probe(endpoint: &Endpoint, spec: &HealthSpec) -> CheckResult {
    let at = SystemTime::now();
    let outcome = tokio::time::timeout(spec.timeout, exchange(endpoint, spec)).await;
    let (ok, status, error) = match outcome {
        Err(_) => (
            false,
            None,
            Some(format!("timed out after {:?}", spec.timeout)),
        ),
        Ok(Err(e)) => (false, None, Some(e)),
        Ok(Ok(status)) => {
            let ok = (200..300).contains(&status);
            (ok, Some(status), (!ok).then(|| format!("status {status}")))
        }
    };
    CheckResult {
        at,
        ok,
        status,
        error,
    }
}

async fn exchange(endpoint: &Endpoint, spec: &HealthSpec) -> Result<u16, String> {
    let host = spec
        .host
        .clone()
        .unwrap_or_else(|| endpoint.configured_as.clone());
    let mut req = Request::new(Either::Right(Full::new(Bytes::new())));
    *req.uri_mut() = spec
        .path
        .parse::<Uri>()
        .map_err(|e| format!("bad probe path: {e}"))?;
    *req.version_mut() = Version::HTTP_11;
    let value = HeaderValue::from_str(&host).map_err(|e| format!("bad probe Host: {e}"))?;
    req.headers_mut().insert(header::HOST, value);
    req.headers_mut().insert(
        header::USER_AGENT,
        HeaderValue::from_static("steer-health-check"),
    );
    let sent = endpoint
        .pool
        .send(endpoint.dial(spec.timeout), req)
        .await
        .map_err(|f| f.error.to_string())?;
    let status = sent.response.status().as_u16();
    let body = Limited::new(sent.response.into_body(), MAX_PROBE_BODY);
    if body.collect().await.is_ok()
        && let Some(conn) = sent.h1
    {
        endpoint.pool.put_h1(conn);
    }
    Ok(status)
}
