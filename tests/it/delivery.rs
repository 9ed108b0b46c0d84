//! Progressive delivery: draining single endpoints, ramps that roll
//! themselves back, mutual TLS, WebSocket over HTTP/2.

use std::time::{Duration, Instant};

use http::StatusCode;

use crate::support::*;

fn endpoint_state(v: &serde_json::Value, addr: std::net::SocketAddr) -> String {
    v["upstreams"][0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["address"] == addr.to_string())
        .map(|e| e["state"].as_str().unwrap().to_owned())
        .unwrap()
}

/// Sends requests, each in a task of its own, until `on` has received
/// more than `before` (10 s at most): with a delay set on `on`, one of them
/// is then in flight there. The tasks give each request's status.
async fn until_one_reaches(
    steer: &Steer,
    on: &steer::demo::Deployment,
    before: u64,
) -> Vec<tokio::task::JoinHandle<StatusCode>> {
    let mut sent = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while on.requests() == before {
        assert!(Instant::now() < deadline, "no request reached the endpoint");
        let url = steer.url("/x");
        sent.push(tokio::spawn(async move {
            call(request("GET", &url)).await.status
        }));
        // Pacing, not synchronisation: one more request per 20 ms.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sent
}

#[tokio::test]
async fn draining_one_endpoint_waits_for_its_own_requests_and_survives_reloads() {
    let a = upstream("a").await;
    let b = upstream("b").await;
    let body = format!(
        "[upstreams.api]\nendpoints = [\"{}\", \"{}\"]\nprotocol = \"h2c\"\n\n[[routes]]\nname = \"r\"\nupstream = \"api\"\n",
        a.addr(),
        b.addr()
    );
    let steer = Steer::start_ready(&body).await;
    let admin = steer.admin();
    let upstreams = || async {
        call(request("GET", &format!("{admin}/upstreams")))
            .await
            .json()
    };
    // A slow request in flight on b.
    b.set_delay(Duration::from_millis(1500));
    let slow = until_one_reaches(&steer, &b, 0).await;
    // Draining a waits for a's requests only: b's does not hold it.
    let started = Instant::now();
    let (status, said) = post(&format!(
        "{admin}/upstreams/api/endpoints/{}/drain?timeout=5s",
        a.addr()
    ))
    .await;
    assert_eq!(status, StatusCode::OK, "{said}");
    assert!(said.contains("\"drained\": true"), "{said}");
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "{:?}",
        started.elapsed()
    );
    let v = upstreams().await;
    assert_eq!(endpoint_state(&v, a.addr()), "draining");
    assert_eq!(endpoint_state(&v, b.addr()), "healthy");
    // New requests go to b only; a keeps being probed.
    b.set_delay(Duration::ZERO);
    let (a_before, checks_before) = (a.requests(), a.ready_checks());
    for _ in 0..10 {
        assert_eq!(
            call(request("GET", &steer.url("/x"))).await.deployment(),
            "b"
        );
    }
    assert_eq!(a.requests(), a_before);
    eventually("a is still probed", || async {
        a.ready_checks() > checks_before
    })
    .await;
    // A reload that keeps the endpoint keeps the drain.
    steer.write(&format!("# touched\n{body}"));
    let (_, reloaded) = post(&format!("{admin}/reload")).await;
    assert!(reloaded.contains("\"pending\": false"), "{reloaded}");
    assert_eq!(endpoint_state(&upstreams().await, a.addr()), "draining");
    for s in slow {
        assert_eq!(s.await.unwrap(), StatusCode::OK);
    }
    // Undrained, a takes requests again.
    let (status, _) = post(&format!(
        "{admin}/upstreams/api/endpoints/{}/undrain",
        a.addr()
    ))
    .await;
    assert_eq!(status, StatusCode::OK);
    eventually("a takes requests again", || async {
        call(request("GET", &steer.url("/x"))).await.deployment() == "a"
    })
    .await;
    // Draining b waits for the request in flight on b.
    b.set_delay(Duration::from_millis(800));
    let on_b = until_one_reaches(&steer, &b, b.requests()).await;
    let started = Instant::now();
    let (_, said) = post(&format!(
        "{admin}/upstreams/api/endpoints/{}/drain?timeout=5s",
        b.addr()
    ))
    .await;
    assert!(said.contains("\"drained\": true"), "{said}");
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
    for r in on_b {
        assert_eq!(r.await.unwrap(), StatusCode::OK);
    }
    let (status, _) = post(&format!(
        "{admin}/upstreams/api/endpoints/127.0.0.1:1/drain"
    ))
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

fn ramped(
    blue: &steer::demo::Deployment,
    green: &steer::demo::Deployment,
    weights: &str,
    ramp: &str,
) -> String {
    format!(
        "{}{}[[routes]]\nname = \"r\"\nsplit = {{ {weights} }}\nramp = \"{ramp}\"\n\
         rollback = {{ max_error_rate = 0.05, min_requests = 20, window = \"1s\" }}\n",
        upstream_toml("blue", blue.addr(), "h2c"),
        upstream_toml("green", green.addr(), "h2c")
    )
}

async fn config(steer: &Steer) -> serde_json::Value {
    call(request("GET", &format!("{}/config", steer.admin())))
        .await
        .json()
}

#[tokio::test]
async fn a_ramp_toward_an_upstream_that_fails_rolls_back_within_its_window() {
    let blue = upstream("blue").await;
    let green = upstream("green").await;
    green.set_errors_every(5);
    let steer = Steer::start_ready(&ramped(&blue, &green, "blue = 100, green = 0", "4s")).await;
    steer.write(&ramped(&blue, &green, "blue = 0, green = 100", "4s"));
    let (_, reloaded) = post(&format!("{}/reload", steer.admin())).await;
    assert!(reloaded.contains("\"pending\": false"), "{reloaded}");
    let started = Instant::now();
    let series = "steer_ramp_rollbacks_total{route=\"r\"}";
    while metric(&steer.admin(), series).await < 1.0 {
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "no rollback before the ramp's end"
        );
        for _ in 0..20 {
            call(request("GET", &steer.url("/x"))).await;
        }
    }
    let c = config(&steer).await;
    let rollbacks = c["rollbacks"].as_array().unwrap();
    assert_eq!(rollbacks.len(), 1, "{c}");
    assert_eq!(rollbacks[0]["route"], "r");
    assert!(
        rollbacks[0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("green: "),
        "{c}"
    );
    assert_eq!(rollbacks[0]["weights"]["blue"], 1.0);
    assert_eq!(rollbacks[0]["weights"]["green"], 0.0);
    assert_eq!(c["ramps"], serde_json::json!([]));
    // Back at the start's weights at once, and for good.
    for _ in 0..30 {
        assert_eq!(
            call(request("GET", &steer.url("/x"))).await.deployment(),
            "blue"
        );
    }
    // A reload of the same file keeps the rollback; one that changes the
    // weights starts a new ramp.
    let (_, same) = post(&format!("{}/reload", steer.admin())).await;
    assert!(same.contains("\"pending\": false"), "{same}");
    assert_eq!(
        config(&steer).await["rollbacks"].as_array().unwrap().len(),
        1
    );
    green.set_errors_every(0);
    steer.write(&ramped(&blue, &green, "blue = 50, green = 50", "4s"));
    post(&format!("{}/reload", steer.admin())).await;
    let c = config(&steer).await;
    assert_eq!(c["rollbacks"], serde_json::json!([]), "{c}");
    assert_eq!(c["ramps"].as_array().unwrap().len(), 1, "{c}");
}

#[tokio::test]
async fn a_ramp_toward_a_healthy_upstream_completes() {
    let blue = upstream("blue").await;
    let green = upstream("green").await;
    let steer = Steer::start_ready(&ramped(&blue, &green, "blue = 100, green = 0", "1s")).await;
    steer.write(&ramped(&blue, &green, "blue = 0, green = 100", "1s"));
    post(&format!("{}/reload", steer.admin())).await;
    let started = Instant::now();
    loop {
        let c = config(&steer).await;
        if c["ramps"] == serde_json::json!([]) {
            assert_eq!(c["rollbacks"], serde_json::json!([]), "{c}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "{c}");
        for _ in 0..20 {
            call(request("GET", &steer.url("/x"))).await;
        }
    }
    for _ in 0..20 {
        assert_eq!(
            call(request("GET", &steer.url("/x"))).await.deployment(),
            "green"
        );
    }
    assert_eq!(
        metric(&steer.admin(), "steer_ramp_rollbacks_total{route=\"r\"}").await,
        0.0
    );
}
