use std::sync::atomic::AtomicBool;
use std::time::SystemTime;

use super::*;

fn endpoints(n: usize) -> Vec<Arc<Endpoint>> {
    (0..n)
        .map(|i| {
            let addr: SocketAddr = format!("127.0.0.1:{}", 10000 + i).parse().unwrap();
            Arc::new(Endpoint::new("u", addr, addr.to_string(), Protocol::H2c))
        })
        .collect()
}

fn pass(e: &Endpoint) {
    let r = CheckResult {
        sent: true,
        at: SystemTime::now(),
        ok: true,
        status: Some(200),
        error: None,
    };
    e.record_check(r, &HealthSpec::default());
}

fn upstream(eps: Vec<Arc<Endpoint>>, balance: Balance) -> Upstream {
    Upstream::new(
        "u".into(),
        Protocol::H2c,
        balance,
        Some(HealthSpec::default()),
        eps,
        Arc::new(AtomicBool::new(false)),
    )
}

#[test]
fn unknown_endpoints_get_no_traffic() {
    let u = upstream(endpoints(2), Balance::RoundRobin);
    assert!(u.pick().is_none());
    assert!(!u.is_usable(&[]));
}

#[test]
fn round_robin_alternates_over_healthy_endpoints() {
    let eps = endpoints(3);
    pass(&eps[0]);
    pass(&eps[2]);
    let u = upstream(eps.clone(), Balance::RoundRobin);
    let picks: Vec<SocketAddr> = (0..6).map(|_| u.pick().unwrap().addr).collect();
    assert!(!picks.contains(&eps[1].addr));
    assert_eq!(
        picks.iter().filter(|a| **a == eps[0].addr).count(),
        3,
        "{picks:?}"
    );
}

#[test]
fn draining_upstream_picks_nothing() {
    let eps = endpoints(1);
    pass(&eps[0]);
    let u = upstream(eps, Balance::RoundRobin);
    u.draining.store(true, Ordering::Relaxed);
    assert!(u.pick().is_none());
}

#[test]
fn least_request_prefers_the_less_loaded_of_two() {
    let eps = endpoints(2);
    pass(&eps[0]);
    pass(&eps[1]);
    let _busy: Vec<InFlight> = (0..5).map(|_| InFlight::new(eps[0].clone())).collect();
    let u = upstream(eps.clone(), Balance::LeastRequest);
    for _ in 0..50 {
        assert_eq!(u.pick().unwrap().addr, eps[1].addr);
    }
}

#[test]
fn in_flight_guard_counts_until_dropped() {
    let eps = endpoints(1);
    let g = InFlight::new(eps[0].clone());
    assert_eq!(eps[0].in_flight(), 1);
    drop(g);
    assert_eq!(eps[0].in_flight(), 0);
}

#[test]
fn pick_excluding_avoids_the_failed_endpoint_when_it_can() {
    let eps = endpoints(2);
    pass(&eps[0]);
    pass(&eps[1]);
    let u = upstream(eps.clone(), Balance::RoundRobin);
    for _ in 0..4 {
        assert_eq!(
            u.pick_excluding(std::slice::from_ref(&eps[0]))
                .unwrap()
                .addr,
            eps[1].addr
        );
    }
}

#[test]
fn passive_failure_without_checks_takes_endpoint_out() {
    let eps = endpoints(1);
    eps[0].assume_healthy();
    eps[0].record_passive_failure(None, "test", false);
    assert_eq!(eps[0].state(), State::Unhealthy);
    eps[0].record_passive_success();
    assert_eq!(eps[0].state(), State::Healthy);
}

#[test]
fn passive_failure_without_checks_expires_after_the_fail_timeout() {
    let eps = endpoints(1);
    eps[0].assume_healthy();
    eps[0].record_passive_failure(None, "test", false);
    assert!(!eps[0].revive_after_passive_failure());
    assert_eq!(eps[0].state(), State::Unhealthy);
    eps[0].backdate_passive_failure(PASSIVE_FAIL_TIMEOUT);
    assert!(eps[0].revive_after_passive_failure());
    assert_eq!(eps[0].state(), State::Healthy);
}

#[test]
fn turning_checks_off_revives_an_endpoint_probes_marked_down() {
    let eps = endpoints(1);
    let fail = CheckResult {
        sent: true,
        at: SystemTime::now(),
        ok: false,
        status: Some(412),
        error: None,
    };
    eps[0].record_check(fail, &HealthSpec::default());
    assert_eq!(eps[0].state(), State::Unhealthy);
    eps[0].assume_healthy();
    assert_eq!(eps[0].state(), State::Healthy);
}

#[test]
fn assume_healthy_keeps_a_passive_failure_out() {
    let eps = endpoints(1);
    eps[0].assume_healthy();
    eps[0].record_passive_failure(None, "test", false);
    eps[0].assume_healthy();
    assert_eq!(eps[0].state(), State::Unhealthy);
}

#[test]
fn a_turn_past_the_usable_count_falls_back_to_the_first_usable() {
    // The count and the pick are two passes; an endpoint that turns
    // unusable between them must not make the pick come back empty.
    let eps = endpoints(3);
    let ok = |e: &Arc<Endpoint>| e.addr.port() != 10001;
    assert_eq!(nth_usable(&eps, &ok, 1).map(|e| e.addr.port()), Some(10002));
    assert_eq!(nth_usable(&eps, &ok, 2).map(|e| e.addr.port()), Some(10000));
    assert!(nth_usable(&eps, &|_: &Arc<Endpoint>| false, 0).is_none());
}
