//! Health checks, failover, balancing, retries and drain, against
//! ZITADEL-like upstreams whose `/debug/ready` flips between 200 and 412.

use std::time::{Duration, Instant};

use http::StatusCode;

use crate::support::*;

#[tokio::test]
async fn a_not_yet_checked_endpoint_receives_no_proxied_request() {
    let blue = upstream("blue").await;
    blue.set_ready(false);
    let green = upstream("green").await;
    let body = format!(
        "{}{}[[routes]]\nname = \"r\"\nupstream = \"blue\"\nfallback = [\"green\"]\n",
        upstream_toml("blue", blue.addr(), "h2c"),
        upstream_toml("green", green.addr(), "h2c"),
    );
    let steer = Steer::start(&body).await;
    // Before and after blue's first (failed) check, nothing reaches blue.
    for _ in 0..20 {
        let a = call(request("GET", &steer.url("/x"))).await;
        assert!(
            a.status == StatusCode::SERVICE_UNAVAILABLE || a.deployment() == "green",
            "{} {}",
            a.status,
            a.text()
        );
    }
    eventually("green healthy", || async {
        states(&steer.admin(), "green").await == ["healthy"]
    })
    .await;
    for _ in 0..10 {
        assert_eq!(
            call(request("GET", &steer.url("/x"))).await.deployment(),
            "green"
        );
    }
    assert_eq!(blue.requests(), 0);
}

#[tokio::test]
async fn flipping_readiness_moves_traffic_to_the_fallback_and_back() {
    let (blue, _green, steer) = blue_green(
        "[[routes]]\nname = \"r\"\nupstream = \"blue\"\nfallback = [\"green\"]\n",
        "h2c",
    )
    .await;
    assert_eq!(
        call(request("GET", &steer.url("/"))).await.deployment(),
        "blue"
    );
    blue.set_ready(false);
    let flipped = Instant::now();
    eventually("traffic on green", || async {
        call(request("GET", &steer.url("/"))).await.deployment() == "green"
    })
    .await;
    // interval 100ms x unhealthy_threshold 1, plus jitter and a probe timeout.
    assert!(
        flipped.elapsed() < Duration::from_secs(2),
        "{:?}",
        flipped.elapsed()
    );
    blue.set_ready(true);
    eventually("traffic back on blue", || async {
        call(request("GET", &steer.url("/"))).await.deployment() == "blue"
    })
    .await;
}

#[tokio::test]
async fn all_down_is_503_naming_the_upstreams() {
    let (blue, green, steer) = blue_green(
        "[[routes]]\nname = \"r\"\nsplit = { blue = 1, green = 1 }\n",
        "h2c",
    )
    .await;
    blue.set_ready(false);
    green.set_ready(false);
    eventually("all unhealthy", || async {
        states(&steer.admin(), "blue").await == ["unhealthy"]
            && states(&steer.admin(), "green").await == ["unhealthy"]
    })
    .await;
    let a = call(request("GET", &steer.url("/"))).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(a.text().contains("blue, green"), "{}", a.text());
}

#[tokio::test]
async fn a_split_whose_pick_is_down_uses_the_other_members() {
    let (blue, _green, steer) = blue_green(
        "[[routes]]\nname = \"r\"\nsplit = { blue = 99, green = 1 }\n",
        "h2c",
    )
    .await;
    blue.set_ready(false);
    eventually("blue unhealthy", || async {
        states(&steer.admin(), "blue").await == ["unhealthy"]
    })
    .await;
    for _ in 0..20 {
        assert_eq!(
            call(request("GET", &steer.url("/"))).await.deployment(),
            "green"
        );
    }
}

#[tokio::test]
async fn an_endpoint_whose_port_is_closed_goes_unhealthy() {
    let dead = closed_port();
    let body = format!(
        "[upstreams.dead]\nendpoints = [\"{dead}\"]\n\n[[routes]]\nname = \"r\"\nupstream = \"dead\"\n"
    );
    let steer = Steer::start(&body).await;
    eventually("dead unhealthy", || async {
        states(&steer.admin(), "dead").await == ["unhealthy"]
    })
    .await;
    let a = call(request("GET", &format!("{}/upstreams", steer.admin()))).await;
    let check = &a.json()["upstreams"][0]["endpoints"][0]["last_check"];
    assert_eq!(check["ok"], false);
    assert!(
        check["error"].as_str().unwrap().contains("connect"),
        "{check}"
    );
}

#[tokio::test]
async fn state_survives_a_reload_with_no_503_window() {
    let blue = upstream("blue").await;
    let body = format!(
        "{}[[routes]]\nname = \"r\"\nupstream = \"blue\"\n",
        upstream_toml("blue", blue.addr(), "h2c")
    );
    let steer = Steer::start_ready(&body).await;
    // Much slower probes after the reload: an endpoint made unknown again
    // would give 503s for seconds.
    let slower = body.replace(
        "[[routes]]",
        "health = { interval = \"30s\" }\n\n[[routes]]\n",
    );
    steer.write(&slower);
    let (status, _) = post(&format!("{}/reload", steer.admin())).await;
    assert_eq!(status, StatusCode::OK);
    for _ in 0..50 {
        assert_eq!(
            call(request("GET", &steer.url("/"))).await.status,
            StatusCode::OK
        );
    }
    assert_eq!(states(&steer.admin(), "blue").await, ["healthy"]);
}

#[tokio::test]
async fn least_request_prefers_the_fast_endpoint() {
    let fast = upstream("fast").await;
    let slow = upstream("slow").await;
    let body = format!(
        "[upstreams.pool]\nendpoints = [\"{}\", \"{}\"]\nprotocol = \"h2c\"\nbalance = \"least_request\"\n\n[[routes]]\nname = \"r\"\nupstream = \"pool\"\n",
        fast.addr(),
        slow.addr()
    );
    let steer = Steer::start_ready(&body).await;
    slow.set_delay(Duration::from_millis(200));
    // Eight clients in parallel: requests pile up on the slow endpoint, so
    // power of two choices sends most new ones to the fast one.
    let mut workers = Vec::new();
    for _ in 0..8 {
        let url = steer.url("/x");
        workers.push(tokio::spawn(async move {
            for _ in 0..10 {
                assert_eq!(call(request("GET", &url)).await.status, StatusCode::OK);
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    let (to_fast, to_slow) = (fast.requests(), slow.requests());
    assert_eq!(to_fast + to_slow, 80);
    assert!(to_fast > to_slow * 3, "fast {to_fast}, slow {to_slow}");
}

#[tokio::test]
async fn retries_on_connect_failure_hide_a_dead_endpoint_from_get_and_post() {
    let live = upstream("live").await;
    let dead = closed_port();
    // No active checks: only live traffic can find the dead endpoint.
    let body = format!(
        "[upstreams.pool]\nendpoints = [\"{dead}\", \"{}\"]\nhealth = false\n\n[[routes]]\nname = \"r\"\nupstream = \"pool\"\n",
        live.addr()
    );
    let steer = Steer::start_ready(&body).await;
    for method in ["GET", "POST", "GET", "POST"] {
        let a = call(request(method, &steer.url("/x"))).await;
        assert_eq!(a.status, StatusCode::OK, "{method}: {}", a.text());
        assert_eq!(a.deployment(), "live");
        // The attempt at the dead endpoint handed the request back: it
        // goes again with its forwarding fields, once each.
        let h = &a.json()["headers"];
        assert_eq!(
            h["x-forwarded-for"],
            serde_json::json!(["127.0.0.1"]),
            "{h}"
        );
        assert_eq!(h["x-forwarded-proto"], serde_json::json!(["http"]), "{h}");
        assert_eq!(h["forwarded"].as_array().map(Vec::len), Some(1), "{h}");
    }
    let metrics = call(request("GET", &format!("{}/metrics", steer.admin())))
        .await
        .text();
    assert!(
        metrics.contains("steer_retries_total{upstream=\"pool\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn drain_waits_for_an_in_flight_slow_request_which_succeeds() {
    let (_blue, _green, steer) = blue_green(
        "[[routes]]\nname = \"r\"\nupstream = \"blue\"\nfallback = [\"green\"]\n",
        "h2c",
    )
    .await;
    let url = steer.url("/demo/slow?ms=700");
    let slow = tokio::spawn(async move { call(request("GET", &url)).await });
    eventually("request in flight", || async {
        let a = call(request("GET", &format!("{}/upstreams", steer.admin()))).await;
        a.json()["upstreams"][0]["in_flight"].as_u64() == Some(1)
    })
    .await;
    let started = Instant::now();
    let drain = call(request(
        "POST",
        &format!("{}/upstreams/blue/drain?timeout=5s", steer.admin()),
    ))
    .await;
    let v = drain.json();
    assert_eq!(v["drained"], true);
    assert_eq!(v["in_flight"], 0);
    assert!(started.elapsed() >= Duration::from_millis(200));
    let a = slow.await.unwrap();
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.deployment(), "blue");
    // Drained: new requests go to the fallback; /upstreams says draining.
    assert_eq!(
        call(request("GET", &steer.url("/"))).await.deployment(),
        "green"
    );
    assert_eq!(states(&steer.admin(), "blue").await, ["draining"]);
    let (status, _) = post(&format!("{}/upstreams/blue/undrain", steer.admin())).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        call(request("GET", &steer.url("/"))).await.deployment(),
        "blue"
    );
    let (status, _) = post(&format!("{}/upstreams/nope/drain", steer.admin())).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn upstreams_reflects_every_state() {
    let up = upstream("up").await;
    let down = upstream("down").await;
    down.set_ready(false);
    let never = closed_port();
    let body = format!(
        "[upstreams.mixed]\nendpoints = [\"{}\", \"{}\"]\nprotocol = \"h2c\"\n\n[upstreams.slowprobe]\nendpoints = [\"{never}\"]\nhealth = {{ interval = \"1h\", timeout = \"1h\" }}\n\n[[routes]]\nname = \"r\"\nupstream = \"mixed\"\n",
        up.addr(),
        down.addr()
    );
    let steer = Steer::start(&body).await;
    eventually("healthy and unhealthy", || async {
        let mut s = states(&steer.admin(), "mixed").await;
        s.sort();
        s == ["healthy", "unhealthy"]
    })
    .await;
    let a = call(request("GET", &format!("{}/upstreams", steer.admin()))).await;
    let v = a.json();
    let e = &v["upstreams"][0]["endpoints"][0];
    for field in [
        "address",
        "state",
        "in_flight",
        "last_check",
        "consecutive_passes",
        "consecutive_failures",
    ] {
        assert!(!e[field].is_null(), "{field} missing in {e}");
    }
    for field in ["at", "ok", "status", "error"] {
        assert!(
            e["last_check"].get(field).is_some(),
            "last_check.{field} missing"
        );
    }
    // /ready waits for the first round; the 1h-timeout probe of a closed
    // port still fails fast (connection refused), so it completes.
    eventually("ready", || async {
        get(&format!("{}/ready", steer.admin())).await.0 == StatusCode::OK
    })
    .await;
    let slow = states(&steer.admin(), "slowprobe").await;
    assert_eq!(slow.len(), 1, "{slow:?}");
    assert_ne!(slow[0], "healthy", "a probe of a closed port cannot pass");
}

#[tokio::test]
async fn ready_is_503_until_the_first_round_is_done() {
    // An endpoint that accepts but never answers keeps its first probe open.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let body = format!(
        "[upstreams.mute]\nendpoints = [\"{addr}\"]\nhealth = {{ timeout = \"1s\" }}\n\n[[routes]]\nname = \"r\"\nupstream = \"mute\"\n"
    );
    let steer = Steer::start(&body).await;
    assert_eq!(
        get(&format!("{}/ready", steer.admin())).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(states(&steer.admin(), "mute").await, ["unknown"]);
    eventually("ready after the timeout", || async {
        get(&format!("{}/ready", steer.admin())).await.0 == StatusCode::OK
    })
    .await;
    assert_eq!(states(&steer.admin(), "mute").await, ["unhealthy"]);
    hold.abort();
}

#[tokio::test]
async fn a_weight_zero_split_member_still_takes_over_when_the_others_are_down() {
    let (blue, _green, steer) = blue_green(
        "[[routes]]\nname = \"r\"\nsplit = { blue = 100, green = 0 }\n",
        "h2c",
    )
    .await;
    for _ in 0..10 {
        assert_eq!(
            call(request("GET", &steer.url("/"))).await.deployment(),
            "blue"
        );
    }
    blue.set_ready(false);
    eventually("green takes over", || async {
        call(request("GET", &steer.url("/"))).await.deployment() == "green"
    })
    .await;
}

/// An HTTP/1.1 upstream that answers `GET /reflect` with a head steer
/// cannot pass on (200 fields: more than steer takes), as an upstream that
/// puts a request's bytes into its answer's head can be made to, `GET
/// /big` with a head of 100 KiB (over steer's 64 KiB, in one write), and
/// everything else (its `/debug/ready` too) with 200 "ok".
async fn reflecting_upstream() -> std::net::SocketAddr {
    head_answering_upstream(|head| {
        let fields = if head.starts_with("GET /reflect") {
            (0..200).map(|i| format!("X-Echo-{i}: {i}\r\n")).collect()
        } else if head.starts_with("GET /big") {
            format!("X-Big: {}\r\n", "a".repeat(100 * 1024))
        } else {
            String::new()
        };
        let answer = format!("HTTP/1.1 200 OK\r\n{fields}Content-Length: 2\r\n\r\nok");
        (answer.into_bytes(), false)
    })
    .await
}

/// A client that makes the upstream answer with a head steer cannot pass
/// on gets 502, but does not take the endpoint out for everyone: with the
/// tests' `unhealthy_threshold = 1`, each such request took it out before.
#[tokio::test]
async fn answers_a_client_provokes_do_not_take_the_endpoint_out() {
    let up = reflecting_upstream().await;
    let steer = Steer::start_ready(&format!(
        "{}[[routes]]\nname = \"r\"\nupstream = \"up\"\n",
        upstream_toml("up", up, "http1")
    ))
    .await;
    for path in ["/reflect", "/big", "/reflect"] {
        let a = call(request("GET", &steer.url(path))).await;
        assert_eq!(a.status, StatusCode::BAD_GATEWAY, "{}", a.text());
        assert_eq!(states(&steer.admin(), "up").await, ["healthy"]);
        let other = call(request("GET", &steer.url("/login"))).await;
        assert_eq!(other.status, StatusCode::OK, "{}", other.text());
    }
}
