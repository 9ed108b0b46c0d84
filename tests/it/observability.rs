//! Metrics move by exactly what happened; the access log is JSON with every
//! field; the admin API answers with the documented fields.

use std::time::{Duration, Instant};

use http::StatusCode;

use crate::support::*;

async fn metrics(steer: &Steer) -> String {
    call(request("GET", &format!("{}/metrics", steer.admin())))
        .await
        .text()
}

/// The value of the first sample line starting with `series`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test]
async fn counters_and_histograms_move_by_exactly_the_requests_made() {
    let blue = upstream("blue").await;
    let steer = Steer::start_ready(&format!(
        "{}[[routes]]\nname = \"api\"\npath_prefix = \"/api\"\nupstream = \"blue\"\n",
        upstream_toml("blue", blue.addr(), "h2c")
    ))
    .await;
    for _ in 0..25 {
        assert_eq!(
            call(request("GET", &steer.url("/api/x"))).await.status,
            StatusCode::OK
        );
    }
    for _ in 0..3 {
        assert_eq!(
            call(request("GET", &steer.url("/nope"))).await.status,
            StatusCode::NOT_FOUND
        );
    }
    let m = metrics(&steer).await;
    assert_eq!(
        sample(
            &m,
            "steer_requests_total{code=\"200\",route=\"api\",upstream=\"blue\"}"
        ),
        Some(25.0),
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            "steer_requests_total{code=\"404\",route=\"\",upstream=\"\"}"
        ),
        Some(3.0),
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            "steer_request_duration_seconds_count{route=\"api\",upstream=\"blue\"}"
        ),
        Some(25.0)
    );
    assert_eq!(
        sample(
            &m,
            "steer_request_duration_seconds_count{route=\"\",upstream=\"\"}"
        ),
        Some(3.0)
    );
    assert!(m.contains("steer_connections_active{listener=\"http\"}"));
    assert!(m.contains("steer_config_info{version=\""));
    assert!(m.contains("process_resident_memory_bytes"));
}

#[tokio::test]
async fn health_gauge_flips_with_the_endpoint_and_checks_are_counted() {
    let (blue, steer) = single("h2c").await;
    let series = format!(
        "steer_upstream_endpoint_healthy{{endpoint=\"{}\",upstream=\"blue\"}}",
        blue.addr()
    );
    eventually("gauge 1", || async {
        sample(&metrics(&steer).await, &series) == Some(1.0)
    })
    .await;
    blue.set_ready(false);
    eventually("gauge 0", || async {
        sample(&metrics(&steer).await, &series) == Some(0.0)
    })
    .await;
    let m = metrics(&steer).await;
    let fails = format!(
        "steer_health_checks_total{{endpoint=\"{}\",result=\"fail\",upstream=\"blue\"}}",
        blue.addr()
    );
    assert!(sample(&m, &fails).unwrap_or(0.0) >= 1.0, "{m}");
}

#[tokio::test]
async fn in_flight_gauge_counts_a_running_request() {
    let (blue, steer) = single("h2c").await;
    let series = format!(
        "steer_endpoint_in_flight{{endpoint=\"{}\",upstream=\"blue\"}}",
        blue.addr()
    );
    let url = steer.url("/demo/slow?ms=500");
    let slow = tokio::spawn(async move { call(request("GET", &url)).await });
    eventually("in flight 1", || async {
        sample(&metrics(&steer).await, &series) == Some(1.0)
    })
    .await;
    assert_eq!(slow.await.unwrap().status, StatusCode::OK);
    eventually("in flight 0", || async {
        sample(&metrics(&steer).await, &series) == Some(0.0)
    })
    .await;
}

#[tokio::test]
async fn a_failed_reload_increments_the_failure_counter_once() {
    let blue = upstream("blue").await;
    let good = format!(
        "{}[[routes]]\nname = \"r\"\nupstream = \"blue\"\n",
        upstream_toml("blue", blue.addr(), "h2c")
    );
    let steer = Steer::start_ready(&good).await;
    steer.write(&good.replace("upstream = \"blue\"\n", "upstream = \"nope\"\n"));
    let series = "steer_config_reloads_total{result=\"failure\"}";
    eventually("failure counted", || async {
        sample(&metrics(&steer).await, series) == Some(1.0)
    })
    .await;
    // The same bad file written again (a file event, so a read) is not
    // counted a second time; a different bad file is.
    let bad = std::fs::read_to_string(&steer.path).unwrap();
    std::fs::write(&steer.path, &bad).unwrap();
    let until = Instant::now() + Duration::from_millis(500);
    while Instant::now() < until {
        assert_eq!(sample(&metrics(&steer).await, series), Some(1.0));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    std::fs::write(&steer.path, bad.replace("\"nope\"", "\"nope2\"")).unwrap();
    eventually("second failure counted", || async {
        sample(&metrics(&steer).await, series) == Some(2.0)
    })
    .await;
}

#[tokio::test]
async fn access_log_lines_are_json_with_every_field() {
    let blue = upstream("blue").await;
    let p = spawn_steer(&format!(
        "{}[[routes]]\nname = \"r\"\nupstream = \"blue\"\n",
        upstream_toml("blue", blue.addr(), "h2c")
    ))
    .await;
    let ready = format!("{}/ready", p.admin);
    eventually("ready", || async { get(&ready).await.0 == StatusCode::OK }).await;
    let a = call(
        request("GET", &format!("{}/demo/bytes?n=1234", p.http))
            .header("host", "auth.example.com")
            .header("x-request-id", "access-1")
            .header(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
    )
    .await;
    assert_eq!(a.body.len(), 1234);
    let line = p.log_line("access", |l| {
        l.contains("steer::access") && l.contains("access-1")
    });
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["target"], "steer::access");
    assert_eq!(v["method"], "GET");
    assert_eq!(v["host"], "auth.example.com");
    assert_eq!(v["path"], "/demo/bytes?n=1234");
    assert_eq!(v["route"], "r");
    assert_eq!(v["upstream"], "blue");
    assert_eq!(v["endpoint"], blue.addr().to_string());
    assert_eq!(v["status"], 200);
    assert_eq!(v["bytes"], 1234);
    assert_eq!(v["client_ip"], "127.0.0.1");
    assert_eq!(v["retries"], 0);
    assert_eq!(v["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert!(v["duration_ms"].as_f64().unwrap() > 0.0);
    assert!(v["timestamp"].is_string());
}

#[tokio::test]
async fn traceparent_passes_through_untouched() {
    let (_blue, steer) = single("http1").await;
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let a = call(
        request("GET", &steer.url("/x"))
            .header("traceparent", tp)
            .header("tracestate", "a=b"),
    )
    .await;
    let h = &a.json()["headers"];
    assert_eq!(h["traceparent"][0], tp);
    assert_eq!(h["tracestate"][0], "a=b");
}

#[tokio::test]
async fn a_missing_upstream_is_named_at_start_with_why() {
    let down = closed_port();
    let body = format!(
        "[upstreams.zitadel]\nendpoints = [\"{down}\"]\nprotocol = \"h2c\"\n\n\
         [upstreams.nowhere]\nendpoints = [\"no-such-host.invalid:8080\"]\n\n\
         [[routes]]\nname = \"r\"\nupstream = \"zitadel\"\nfallback = [\"nowhere\"]\n"
    );
    let p = spawn_steer(&body).await;
    let mut said = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while said.len() < 2 && std::time::Instant::now() < deadline {
        if let Ok(line) = p.logs.recv_timeout(std::time::Duration::from_millis(100))
            && line.contains("upstream has no healthy endpoint")
        {
            said.push(line);
        }
    }
    assert_eq!(said.len(), 2, "{said:?}");
    let zitadel = said
        .iter()
        .find(|l| l.contains("\"upstream\":\"zitadel\""))
        .unwrap();
    assert!(
        zitadel.contains(&format!("{down} unhealthy (connect to {down} failed")),
        "{zitadel}"
    );
    let nowhere = said
        .iter()
        .find(|l| l.contains("\"upstream\":\"nowhere\""))
        .unwrap();
    assert!(
        nowhere.contains("no-such-host.invalid:8080 did not resolve"),
        "{nowhere}"
    );
}

#[tokio::test]
async fn a_failed_attempt_is_logged_with_the_requests_id() {
    // Nothing listens at the endpoint: the attempt fails, and its DEBUG
    // line must let an operator find the request in the access log.
    let p = spawn_steer_logging(
        "",
        &one_route("blue", closed_port(), "http1"),
        "steer=debug",
    )
    .await;
    let a =
        call(request("GET", &format!("{}/x", p.http)).header("x-request-id", "attempt-7")).await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY);
    let line = p.log_line("`upstream attempt failed`", |l| {
        l.contains("upstream attempt failed")
    });
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["request_id"], "attempt-7", "{line}");
}
