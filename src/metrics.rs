//! Prometheus metrics: typed handles over one registry. Label values come
//! only from closed sets (route and upstream names from the config, status
//! codes, result enums), never from request data.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::config::RouteSpec;
use crate::upstream::{CheckResult, Upstream};

/// From 100 µs to 30 s: a proxy's own overhead sits at the low end, slow
/// upstream calls and long polls at the high end.
const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: prometheus::HistogramVec,
    endpoint_healthy: IntGaugeVec,
    health_checks: IntCounterVec,
    reloads: IntCounterVec,
    connections: IntGaugeVec,
    retries: IntCounterVec,
    in_flight: IntGaugeVec,
    config_info: IntGaugeVec,
    last_reload: IntGaugeVec,
    cert_expiry: IntGaugeVec,
    rate_limited: IntCounterVec,
    send_timeouts: IntCounterVec,
    rapid_resets: IntCounterVec,
    stream_resets: IntCounterVec,
    body_timeouts: IntCounterVec,
    ramp_rollbacks: IntCounterVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// Status codes whose counters are cached per (route, upstream); others go
/// through the label lookup (rare codes, rare requests).
const COMMON_CODES: [u16; 26] = [
    200, 201, 204, 206, 301, 302, 303, 304, 307, 308, 400, 401, 403, 404, 405, 408, 409, 412, 413,
    422, 429, 431, 500, 502, 503, 504,
];

fn code_slot(code: u16) -> Option<usize> {
    COMMON_CODES.iter().position(|c| *c == code)
}

/// The handles one (route, upstream) pair uses, created on first use so
/// that /metrics shows only series that saw traffic.
#[derive(Debug, Default)]
struct Cell {
    duration: OnceLock<prometheus::Histogram>,
    codes: [OnceLock<IntCounter>; COMMON_CODES.len()],
}

/// Per-table metric handles: the request path does no label hashing or
/// string formatting for the common cases, only an index and an atomic add.
#[derive(Debug)]
pub struct TableMetrics {
    route_names: Vec<String>,
    upstream_names: Vec<String>,
    /// One row per route plus one for "no route", created on first use.
    rows: Vec<OnceLock<Box<[Cell]>>>,
    requests: IntCounterVec,
    duration: HistogramVec,
}

impl TableMetrics {
    /// Counts one answered request and observes its time to response head.
    pub fn record(
        &self,
        route: Option<usize>,
        upstream: Option<usize>,
        code: u16,
        elapsed: Duration,
    ) {
        let r = route.unwrap_or(self.route_names.len() - 1);
        let u = upstream.unwrap_or(self.upstream_names.len() - 1);
        let (Some(row), Some(route_name), Some(upstream_name)) = (
            self.rows.get(r),
            self.route_names.get(r),
            self.upstream_names.get(u),
        ) else {
            return;
        };
        let cells = row.get_or_init(|| {
            (0..self.upstream_names.len())
                .map(|_| Cell::default())
                .collect()
        });
        let Some(cell) = cells.get(u) else { return };
        let labels = [route_name.as_str(), upstream_name.as_str()];
        cell.duration
            .get_or_init(|| self.duration.with_label_values(&labels))
            .observe(elapsed.as_secs_f64());
        match code_slot(code) {
            Some(slot) => cell.codes[slot]
                .get_or_init(|| {
                    self.requests
                        .with_label_values(&[labels[0], labels[1], &code.to_string()])
                })
                .inc(),
            None => self
                .requests
                .with_label_values(&[labels[0], labels[1], &code.to_string()])
                .inc(),
        }
    }
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let v = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| unreachable_metric(name, &e));
    let _ = registry.register(Box::new(v.clone()));
    v
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let v = IntGaugeVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| unreachable_metric(name, &e));
    let _ = registry.register(Box::new(v.clone()));
    v
}

/// Metric definitions are constants; an error here is a programming error
/// caught by the first test run, never something network input can cause.
fn unreachable_metric(name: &str, e: &prometheus::Error) -> ! {
    panic!("metric {name} is malformed: {e}")
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "steer_request_duration_seconds",
                "Time from request head to response head",
            )
            .buckets(BUCKETS.to_vec()),
            &["route", "upstream"],
        )
        .unwrap_or_else(|e| unreachable_metric("steer_request_duration_seconds", &e));
        let _ = registry.register(Box::new(duration.clone()));
        #[cfg(target_os = "linux")]
        let _ = registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ));
        Metrics {
            requests: counter_vec(
                &registry,
                "steer_requests_total",
                "Requests answered, by route, upstream and status code",
                &["route", "upstream", "code"],
            ),
            duration,
            endpoint_healthy: gauge_vec(
                &registry,
                "steer_upstream_endpoint_healthy",
                "1 when the endpoint is healthy, else 0",
                &["upstream", "endpoint"],
            ),
            health_checks: counter_vec(
                &registry,
                "steer_health_checks_total",
                "Active health checks by result (pass/fail)",
                &["upstream", "endpoint", "result"],
            ),
            reloads: counter_vec(
                &registry,
                "steer_config_reloads_total",
                "Config reloads by result (success/failure)",
                &["result"],
            ),
            connections: gauge_vec(
                &registry,
                "steer_connections_active",
                "Open client connections by listener",
                &["listener"],
            ),
            retries: counter_vec(
                &registry,
                "steer_retries_total",
                "Requests retried on another endpoint, by upstream",
                &["upstream"],
            ),
            in_flight: gauge_vec(
                &registry,
                "steer_endpoint_in_flight",
                "Requests (and upgraded connections) in flight to the endpoint",
                &["upstream", "endpoint"],
            ),
            config_info: gauge_vec(
                &registry,
                "steer_config_info",
                "1 for the version (content hash) of the running route table",
                &["version"],
            ),
            last_reload: gauge_vec(
                &registry,
                "steer_config_last_reload_timestamp_seconds",
                "Unix time of the last reload attempt, by result",
                &["result"],
            ),
            rate_limited: counter_vec(
                &registry,
                "steer_rate_limited_total",
                "Requests answered 429 by a route's rate limit",
                &["route"],
            ),
            send_timeouts: counter_vec(
                &registry,
                "steer_client_send_timeouts_total",
                "Responses given up because the client took no bytes for send_timeout (HTTP/1.1 connections closed, HTTP/2 streams reset), by listener",
                &["listener"],
            ),
            rapid_resets: counter_vec(
                &registry,
                "steer_client_rapid_reset_closes_total",
                "HTTP/2 client connections asked to close because the client reset most of its streams right after opening them, by listener",
                &["listener"],
            ),
            stream_resets: counter_vec(
                &registry,
                "steer_upstream_stream_resets_total",
                "HTTP/2 streams to upstreams that steer reset because the client went away before the response ended, by upstream",
                &["upstream"],
            ),
            body_timeouts: counter_vec(
                &registry,
                "steer_upstream_body_timeouts_total",
                "Upstream response bodies cut off because no byte came for response_idle_timeout, by endpoint",
                &["upstream", "endpoint"],
            ),
            ramp_rollbacks: counter_vec(
                &registry,
                "steer_ramp_rollbacks_total",
                "Split ramps rolled back because an upstream they raise failed too often, by route",
                &["route"],
            ),
            cert_expiry: gauge_vec(
                &registry,
                "steer_tls_certificate_expiry_timestamp_seconds",
                "Unix time at which the served certificate (by cert file) expires",
                &["cert"],
            ),
            registry,
        }
    }

    pub fn for_table(&self, routes: &[RouteSpec], upstreams: &[Arc<Upstream>]) -> TableMetrics {
        let route_names: Vec<String> = routes
            .iter()
            .map(|r| r.name.clone())
            .chain([String::new()])
            .collect();
        let upstream_names = upstreams
            .iter()
            .map(|u| u.name.clone())
            .chain([String::new()])
            .collect();
        TableMetrics {
            rows: route_names.iter().map(|_| OnceLock::new()).collect(),
            route_names,
            upstream_names,
            requests: self.requests.clone(),
            duration: self.duration.clone(),
        }
    }

    /// The gauges of one endpoint (resolved once per endpoint).
    pub fn endpoint_gauges(
        &self,
        upstream: &str,
        endpoint: &str,
    ) -> crate::upstream::EndpointGauges {
        crate::upstream::EndpointGauges {
            in_flight: self.in_flight.with_label_values(&[upstream, endpoint]),
            healthy: self
                .endpoint_healthy
                .with_label_values(&[upstream, endpoint]),
            body_timeouts: self.body_timeouts.with_label_values(&[upstream, endpoint]),
            stream_resets: self.stream_resets.clone(),
        }
    }

    /// Drops the per-endpoint series of an endpoint a reload removed.
    pub fn forget_endpoint(&self, upstream: &str, endpoint: &str) {
        let _ = self.in_flight.remove_label_values(&[upstream, endpoint]);
        let _ = self
            .endpoint_healthy
            .remove_label_values(&[upstream, endpoint]);
        let _ = self
            .body_timeouts
            .remove_label_values(&[upstream, endpoint]);
        for result in ["pass", "fail"] {
            let _ = self
                .health_checks
                .remove_label_values(&[upstream, endpoint, result]);
        }
    }

    pub fn rate_limited(&self, route: &str) {
        self.rate_limited.with_label_values(&[route]).inc();
    }

    /// Publishes the expiry of the certificates being served.
    pub fn certificates(&self, certs: &[crate::tls::LoadedCert]) {
        self.cert_expiry.reset();
        for c in certs {
            let at = c
                .not_after
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
            self.cert_expiry
                .with_label_values(&[&c.files.cert.display().to_string()])
                .set(at);
        }
    }

    /// Marks `version` as the running table.
    pub fn config_version(&self, version: &str) {
        self.config_info.reset();
        self.config_info.with_label_values(&[version]).set(1);
    }

    /// Counts one probe result (the health gauge follows the endpoint's
    /// state by itself).
    pub fn health_check(&self, upstream: &str, endpoint: &str, r: &CheckResult) {
        let result = match (r.sent, r.ok) {
            (false, _) => "not_sent",
            (true, true) => "pass",
            (true, false) => "fail",
        };
        self.health_checks
            .with_label_values(&[upstream, endpoint, result])
            .inc();
    }

    pub fn reload(&self, success: bool) {
        let result = if success { "success" } else { "failure" };
        self.reloads.with_label_values(&[result]).inc();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        self.last_reload.with_label_values(&[result]).set(now);
    }

    pub fn reload_count(&self, success: bool) -> u64 {
        self.reloads
            .with_label_values(&[if success { "success" } else { "failure" }])
            .get()
    }

    pub fn connections(&self, listener: &str) -> IntGauge {
        self.connections.with_label_values(&[listener])
    }

    pub fn ramp_rollback(&self, route: &str) {
        self.ramp_rollbacks.with_label_values(&[route]).inc();
    }

    pub fn send_timeouts(&self, listener: &str) -> IntCounter {
        self.send_timeouts.with_label_values(&[listener])
    }

    pub fn rapid_resets(&self, listener: &str) -> IntCounter {
        self.rapid_resets.with_label_values(&[listener])
    }

    pub fn retries(&self, upstream: &str) -> IntCounter {
        self.retries.with_label_values(&[upstream])
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}
