//! Upstreams and their endpoints: health state, in-flight counts, drain,
//! and balancing (round robin, least request by power of two choices).
//! An `Arc<Endpoint>` outlives reloads that keep it, so its state and its
//! connection pool carry over; nothing here does I/O.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use crate::client::{Dial, Pool};
use crate::config::{Balance, HealthSpec, Protocol};
use crate::health::{Counter, State};
use crate::tls::client::UpstreamTls;

/// The outcome of the last probe, for `/upstreams`.
#[derive(Debug, Clone)]
pub struct CheckResult {
    pub at: SystemTime,
    /// False when steer could not open a connection for the probe (its
    /// own descriptors or memory ran out): no verdict, not counted.
    pub sent: bool,
    pub ok: bool,
    pub status: Option<u16>,
    pub error: Option<String>,
}

#[derive(Debug, Default)]
struct HealthRecord {
    counter: Counter,
    last_check: Option<CheckResult>,
    /// When live traffic last marked the endpoint down (for `health = false`).
    passive_down_at: Option<Instant>,
    /// Whether the endpoint has ever been healthy (warm-ups run until then).
    ever_healthy: bool,
}

/// With `health = false`, how long a failed connection keeps an endpoint
/// out before it is tried again (nginx's `fail_timeout`).
pub const PASSIVE_FAIL_TIMEOUT: Duration = Duration::from_secs(10);

/// Metric handles of one endpoint, resolved once.
#[derive(Debug)]
pub struct EndpointGauges {
    pub in_flight: prometheus::IntGauge,
    pub healthy: prometheus::IntGauge,
    /// Response bodies cut off for `response_idle_timeout`.
    pub body_timeouts: prometheus::IntCounter,
    /// `steer_upstream_stream_resets_total`, by upstream: a reset (rare)
    /// looks its series up, so no response carries a handle to it.
    pub stream_resets: prometheus::IntCounterVec,
}

/// One address of an upstream.
#[derive(Debug)]
pub struct Endpoint {
    pub upstream: String,
    pub addr: SocketAddr,
    /// How the config named it (`zitadel.internal:8080` or `10.0.0.1:8080`).
    pub configured_as: String,
    pub protocol: Protocol,
    /// TLS settings for `protocol = "https"`.
    pub tls: Option<UpstreamTls>,
    /// Identifies the TLS settings, so a reload that changes them gets a
    /// new endpoint (and new connections) instead of reusing this one.
    pub tls_id: String,
    state: AtomicU8,
    in_flight: AtomicUsize,
    health: Mutex<HealthRecord>,
    /// The owning upstream's check settings; updated when a reload keeps
    /// the endpoint but changes them. `None`: checks are off.
    health_spec: Mutex<Option<HealthSpec>>,
    gauges: std::sync::OnceLock<EndpointGauges>,
    /// Set when a table holding the endpoint was committed: from then on
    /// its probes are recorded in the metrics.
    committed: AtomicBool,
    /// Drained by the operator (`POST .../endpoints/ADDR/drain`): no new
    /// requests, still probed. Lives on the endpoint, so a reload that keeps
    /// the endpoint keeps the drain.
    draining: AtomicBool,
    /// Wakes the probe task when its settings change on a reload.
    pub(crate) settings_changed: Arc<tokio::sync::Notify>,
    pub pool: Pool,
}

const UNKNOWN: u8 = 0;
const HEALTHY: u8 = 1;
const UNHEALTHY: u8 = 2;

fn encode(state: State) -> u8 {
    match state {
        State::Unknown => UNKNOWN,
        State::Healthy => HEALTHY,
        State::Unhealthy => UNHEALTHY,
    }
}

impl Endpoint {
    pub fn new(
        upstream: &str,
        addr: SocketAddr,
        configured_as: String,
        protocol: Protocol,
    ) -> Endpoint {
        Endpoint {
            upstream: upstream.to_owned(),
            addr,
            configured_as,
            protocol,
            tls: None,
            tls_id: String::new(),
            state: AtomicU8::new(UNKNOWN),
            in_flight: AtomicUsize::new(0),
            health: Mutex::new(HealthRecord::default()),
            health_spec: Mutex::new(None),
            gauges: std::sync::OnceLock::new(),
            committed: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            settings_changed: Arc::new(tokio::sync::Notify::new()),
            pool: Pool::default(),
        }
    }

    /// Sets the TLS settings (at creation).
    pub fn with_tls(mut self, tls: Option<UpstreamTls>, tls_id: String) -> Endpoint {
        self.tls = tls;
        self.tls_id = tls_id;
        self
    }

    /// How to reach this endpoint.
    pub fn dial(&self, connect_timeout: Duration) -> Dial<'_> {
        Dial {
            addr: self.addr,
            protocol: self.protocol,
            tls: self.tls.as_ref(),
            connect_timeout,
        }
    }

    pub fn state(&self) -> State {
        match self.state.load(Ordering::Relaxed) {
            HEALTHY => State::Healthy,
            UNHEALTHY => State::Unhealthy,
            _ => State::Unknown,
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Marks the endpoint live (its table was committed), creating its
    /// metric series with `gauges` the first time.
    pub fn commit(&self, gauges: impl FnOnce() -> EndpointGauges) {
        if !self.committed.swap(true, Ordering::Relaxed) {
            self.set_gauges(gauges());
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn set_draining(&self, draining: bool) {
        self.draining.store(draining, Ordering::Relaxed);
    }

    /// Whether a committed table holds the endpoint.
    pub fn is_committed(&self) -> bool {
        self.committed.load(Ordering::Relaxed)
    }

    pub fn set_gauges(&self, gauges: EndpointGauges) {
        gauges
            .healthy
            .set(i64::from(self.state() == State::Healthy));
        let _ = self.gauges.set(gauges);
    }

    /// The one place the shared state word is written, so the health gauge
    /// follows every change (probes, live traffic, revival).
    fn publish(&self, state: State) {
        self.state.store(encode(state), Ordering::Relaxed);
        if let Some(g) = self.gauges.get() {
            g.healthy.set(i64::from(state == State::Healthy));
        }
    }

    pub fn ever_healthy(&self) -> bool {
        self.record().ever_healthy
    }

    pub fn health_spec(&self) -> Option<HealthSpec> {
        self.health_spec
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn set_health_spec(&self, spec: Option<HealthSpec>) {
        let mut current = self
            .health_spec
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if *current != spec {
            *current = spec;
            self.settings_changed.notify_one();
        }
    }

    pub fn last_check(&self) -> Option<CheckResult> {
        self.record().last_check.clone()
    }

    pub fn counter(&self) -> Counter {
        self.record().counter
    }

    fn record(&self) -> std::sync::MutexGuard<'_, HealthRecord> {
        // A panic while holding this lock cannot leave the record half
        // written (plain field stores), so a poisoned lock is still usable.
        self.health.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Feeds one probe result through the thresholds (one that was not
    /// sent is only shown); returns the new state.
    pub fn record_check(&self, result: CheckResult, spec: &HealthSpec) -> State {
        let mut rec = self.record();
        let state = if result.sent {
            rec.counter
                .record(result.ok, spec.healthy_threshold, spec.unhealthy_threshold)
        } else {
            rec.counter.state
        };
        rec.last_check = Some(result);
        rec.ever_healthy |= state == State::Healthy;
        self.publish(state);
        state
    }

    /// A failure on live traffic (`reason` says what). With `at_once` (the
    /// endpoint did not take a connection) it is out at once; otherwise it
    /// counts like a failed probe. A change of state is logged.
    pub fn record_passive_failure(
        &self,
        health: Option<&HealthSpec>,
        reason: &str,
        at_once: bool,
    ) -> State {
        let mut rec = self.record();
        let before = rec.counter.state;
        let state = match health {
            Some(spec) => {
                let threshold = if at_once { 1 } else { spec.unhealthy_threshold };
                rec.counter.record_passive_failure(threshold)
            }
            // Without active checks nothing would ever bring it back, so a
            // passive failure only counts until the next success.
            None => {
                rec.passive_down_at = Some(Instant::now());
                rec.counter.record(false, 1, 1)
            }
        };
        // Published under the record's lock, so that the state word always
        // matches the counter whoever (probe or request) wrote last.
        self.publish(state);
        drop(rec);
        if state != before && state == State::Unhealthy {
            tracing::warn!(upstream = %self.upstream, endpoint = %self.addr, from = before.as_str(), reason,
                "endpoint unhealthy: failed on live traffic");
        }
        state
    }

    /// A request that went through, on an upstream without active checks.
    pub fn record_passive_success(&self) {
        if self.state.load(Ordering::Relaxed) != HEALTHY {
            let mut rec = self.record();
            let before = rec.counter.state;
            let state = rec.counter.record(true, 1, 1);
            self.publish(state);
            drop(rec);
            if before != State::Healthy {
                tracing::info!(upstream = %self.upstream, endpoint = %self.addr, from = before.as_str(),
                    "endpoint healthy: a request went through");
            }
        }
    }

    /// Marks the endpoint healthy without a probe (upstreams with
    /// `health = false` start usable).
    /// (also when a reload turned checks off: an endpoint that probes had
    /// marked down would otherwise never come back).
    pub fn assume_healthy(&self) {
        let mut rec = self.record();
        let probed_down = rec.counter.state == State::Unhealthy && rec.passive_down_at.is_none();
        if rec.counter.state == State::Unknown || probed_down {
            rec.counter = Counter {
                state: State::Healthy,
                passes: 0,
                failures: 0,
            };
            self.publish(State::Healthy);
        }
    }

    #[cfg(test)]
    pub(crate) fn backdate_passive_failure(&self, by: Duration) {
        let mut rec = self.record();
        rec.passive_down_at = rec.passive_down_at.and_then(|t| t.checked_sub(by));
    }

    /// `health = false`: brings an endpoint that live traffic took out back
    /// once `PASSIVE_FAIL_TIMEOUT` has passed. Returns whether it did.
    pub fn revive_after_passive_failure(&self) -> bool {
        let mut rec = self.record();
        let due = rec
            .passive_down_at
            .is_some_and(|t| t.elapsed() >= PASSIVE_FAIL_TIMEOUT);
        if due && rec.counter.state == State::Unhealthy {
            rec.counter = Counter {
                state: State::Healthy,
                passes: 0,
                failures: 0,
            };
            rec.passive_down_at = None;
            self.publish(State::Healthy);
        }
        due
    }
}

/// Counts a request against an endpoint until dropped (when the response
/// body ends, not when its head arrives).
#[derive(Debug)]
pub struct InFlight {
    endpoint: Arc<Endpoint>,
}

impl InFlight {
    pub fn new(endpoint: Arc<Endpoint>) -> InFlight {
        endpoint.in_flight.fetch_add(1, Ordering::Relaxed);
        // Kept in step, not copied from the count when `/metrics` is read:
        // endpoints a reload replaced (another protocol or TLS setting,
        // same address) and duplicates of one address share a series,
        // and their requests and tunnels add up in it.
        if let Some(g) = endpoint.gauges.get() {
            g.in_flight.inc();
        }
        InFlight { endpoint }
    }

    /// Counts a response body of this endpoint that went silent.
    pub fn count_body_timeout(&self) {
        if let Some(g) = self.endpoint.gauges.get() {
            g.body_timeouts.inc();
        }
    }

    /// Counts an HTTP/2 stream to this endpoint that steer reset because
    /// its client went away before the response ended.
    pub fn count_stream_reset(&self) {
        if let Some(g) = self.endpoint.gauges.get() {
            let upstream = self.endpoint.upstream.as_str();
            g.stream_resets.with_label_values(&[upstream]).inc();
        }
    }

    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.endpoint
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.endpoint.in_flight.fetch_sub(1, Ordering::Relaxed);
        if let Some(g) = self.endpoint.gauges.get() {
            g.in_flight.dec();
        }
    }
}

/// A named group of endpoints.
#[derive(Debug)]
pub struct Upstream {
    pub name: String,
    pub protocol: Protocol,
    pub balance: Balance,
    pub health: Option<HealthSpec>,
    pub endpoints: Vec<Arc<Endpoint>>,
    /// Shared by every table that has an upstream of this name, so a drain
    /// survives reloads.
    pub draining: Arc<AtomicBool>,
    next: AtomicUsize,
}

impl Upstream {
    pub fn new(
        name: String,
        protocol: Protocol,
        balance: Balance,
        health: Option<HealthSpec>,
        endpoints: Vec<Arc<Endpoint>>,
        draining: Arc<AtomicBool>,
    ) -> Upstream {
        Upstream {
            name,
            protocol,
            balance,
            health,
            endpoints,
            draining,
            next: AtomicUsize::new(fastrand::usize(..1024)),
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn in_flight(&self) -> usize {
        self.endpoints.iter().map(|e| e.in_flight()).sum()
    }

    /// Whether `pick_excluding(avoid)` would find an endpoint.
    pub fn is_usable(&self, avoid: &[Arc<Endpoint>]) -> bool {
        !self.is_draining()
            && self
                .endpoints
                .iter()
                .any(|e| usable(e) && !avoid.iter().any(|a| Arc::ptr_eq(a, e)))
    }

    /// An endpoint for the next request, or `None` when none is usable.
    pub fn pick(&self) -> Option<&Arc<Endpoint>> {
        self.pick_excluding(&[])
    }

    /// As `pick`, but never one of `avoid` (a retry goes elsewhere).
    pub fn pick_excluding(&self, avoid: &[Arc<Endpoint>]) -> Option<&Arc<Endpoint>> {
        if self.is_draining() {
            return None;
        }
        let ok = |e: &Arc<Endpoint>| usable(e) && !avoid.iter().any(|a| Arc::ptr_eq(a, e));
        match self.balance {
            Balance::RoundRobin => self.round_robin(ok),
            Balance::LeastRequest => least_request(&self.endpoints, ok),
        }
    }

    /// Counts over the usable endpoints only, so that an unusable one does
    /// not hand its turns to its neighbour.
    fn round_robin(&self, ok: impl Fn(&Arc<Endpoint>) -> bool) -> Option<&Arc<Endpoint>> {
        let usable = self.endpoints.iter().filter(|e| ok(e)).count();
        if usable == 0 {
            return None;
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed) % usable;
        nth_usable(&self.endpoints, &ok, turn)
    }
}

fn usable(e: &Endpoint) -> bool {
    e.state() == State::Healthy && !e.is_draining()
}

/// The `i`-th endpoint that passes `ok`; if one became unusable since they
/// were counted (a probe runs concurrently), the first that passes, so a
/// state change never turns into a 503 while another endpoint is usable.
fn nth_usable<'e>(
    endpoints: &'e [Arc<Endpoint>],
    ok: &impl Fn(&Arc<Endpoint>) -> bool,
    i: usize,
) -> Option<&'e Arc<Endpoint>> {
    let mut usable = endpoints.iter().filter(|e| ok(e));
    usable.clone().nth(i).or_else(|| usable.next())
}

/// Power of two choices over in-flight counts: two random usable endpoints,
/// the less loaded wins (tower's p2c, without its EWMA).
fn least_request(
    endpoints: &[Arc<Endpoint>],
    ok: impl Fn(&Arc<Endpoint>) -> bool,
) -> Option<&Arc<Endpoint>> {
    let count = endpoints.iter().filter(|e| ok(e)).count();
    let nth = |i: usize| nth_usable(endpoints, &ok, i);
    match count {
        0 => None,
        1 => nth(0),
        _ => {
            let a = fastrand::usize(..count);
            let mut b = fastrand::usize(..count - 1);
            if b >= a {
                b += 1;
            }
            let (ea, eb) = (nth(a)?, nth(b)?);
            Some(if eb.in_flight() < ea.in_flight() {
                eb
            } else {
                ea
            })
        }
    }
}

#[cfg(test)]
mod tests;
