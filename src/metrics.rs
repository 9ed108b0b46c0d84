//! Prometheus metrics: typed handles over one registry. Label values come
//! only from closed sets (route and upstream names from the config, status
//! codes, result enums), never from request data.

use std::sync::Arc;
use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::config::RouteSpec;
use crate::upstream::Upstream;

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
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// Handles resolved when a table loads, so the request path does no label
/// lookups for the histogram.
#[derive(Debug, Default)]
pub struct TableMetrics {
    /// `[route][upstream]` request duration; the extra last row is "no route".
    durations: Vec<Vec<prometheus::Histogram>>,
}

impl TableMetrics {
    pub fn observe(&self, route: Option<usize>, upstream: Option<usize>, elapsed: Duration) {
        let row = route.map_or(self.durations.len().saturating_sub(1), |r| r);
        if let Some(h) = self
            .durations
            .get(row)
            .and_then(|r| r.get(upstream.map_or(r.len().saturating_sub(1), |u| u)))
        {
            h.observe(elapsed.as_secs_f64());
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
            registry,
        }
    }

    pub fn for_table(&self, routes: &[RouteSpec], upstreams: &[Arc<Upstream>]) -> TableMetrics {
        let upstream_names: Vec<&str> = upstreams
            .iter()
            .map(|u| u.name.as_str())
            .chain([""])
            .collect();
        let durations = routes
            .iter()
            .map(|r| r.name.as_str())
            .chain([""])
            .map(|route| {
                upstream_names
                    .iter()
                    .map(|u| self.duration.with_label_values(&[route, u]))
                    .collect()
            })
            .collect();
        TableMetrics { durations }
    }

    pub fn request(&self, route: &str, upstream: &str, code: u16) {
        let mut buf = itoa_buf(code);
        self.requests
            .with_label_values(&[route, upstream, buf.as_str()])
            .inc();
        buf.clear();
    }

    pub fn endpoint_health(&self, upstream: &str, endpoint: &str, healthy: bool, ok: bool) {
        self.endpoint_healthy
            .with_label_values(&[upstream, endpoint])
            .set(i64::from(healthy));
        self.health_checks
            .with_label_values(&[upstream, endpoint, if ok { "pass" } else { "fail" }])
            .inc();
    }

    pub fn reload(&self, success: bool) {
        self.reloads
            .with_label_values(&[if success { "success" } else { "failure" }])
            .inc();
    }

    pub fn reload_count(&self, success: bool) -> u64 {
        self.reloads
            .with_label_values(&[if success { "success" } else { "failure" }])
            .get()
    }

    pub fn connections(&self, listener: &str) -> IntGauge {
        self.connections.with_label_values(&[listener])
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

fn itoa_buf(code: u16) -> String {
    code.to_string()
}
