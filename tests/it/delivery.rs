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
    let mut slow = Vec::new();
    while b.requests() == 0 {
        let url = steer.url("/x");
        slow.push(tokio::spawn(async move {
            call(request("GET", &url)).await.status
        }));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
    let before = b.requests();
    let mut on_b = Vec::new();
    while b.requests() == before {
        let url = steer.url("/x");
        on_b.push(tokio::spawn(async move {
            call(request("GET", &url)).await.status
        }));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
