//! Identity-aware cutovers: readiness-gated reloads, split ramps, gRPC
//! health checks, warm-up probes, and the `steer check` lints.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use http_body_util::Full;

use crate::support::*;

fn route_to(target: &str) -> String {
    format!("[[routes]]\nname = \"r\"\nupstream = \"{target}\"\n")
}

async fn config_json(steer: &Steer) -> serde_json::Value {
    call(request("GET", &format!("{}/config", steer.admin())))
        .await
        .json()
}

#[tokio::test]
async fn a_route_moved_to_a_starting_upstream_waits_for_it_with_no_5xx() {
    let blue = upstream("blue").await;
    let green = upstream("green").await;
    green.set_ready(false);
    let ups = format!(
        "{}{}",
        upstream_toml("blue", blue.addr(), "h2c"),
        upstream_toml("green", green.addr(), "h2c")
    );
    let steer = Steer::start_ready(&format!("{ups}{}", route_to("blue"))).await;
    let v1 = config_json(&steer).await["version"].clone();
    steer.write(&format!("{ups}{}", route_to("green")));
    let a = call(request("POST", &format!("{}/reload", steer.admin()))).await;
    assert_eq!(a.json()["pending"], true, "{}", a.text());
    let cfg = config_json(&steer).await;
    assert_eq!(
        cfg["version"], v1,
        "the running table stays while green is not ready"
    );
    assert_eq!(cfg["pending"]["waiting_for"][0], "green");
    for _ in 0..20 {
        let a = call(request("GET", &steer.url("/x"))).await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.deployment(), "blue");
    }
    green.set_ready(true);
    let mut seen_green = false;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !seen_green {
        assert!(Instant::now() < deadline, "traffic never moved to green");
        let a = call(request("GET", &steer.url("/x"))).await;
        assert_eq!(
            a.status,
            StatusCode::OK,
            "no 5xx during the cutover: {}",
            a.text()
        );
        seen_green = a.deployment() == "green";
    }
    let cfg = config_json(&steer).await;
    assert!(cfg["pending"].is_null());
    assert_ne!(cfg["version"], v1);
}

async fn gate_timeout(
    on_timeout: &str,
) -> (
    steer::demo::Deployment,
    steer::demo::Deployment,
    Steer,
    serde_json::Value,
) {
    let blue = upstream("blue").await;
    let green = upstream("green").await;
    green.set_ready(false);
    let ups = format!(
        "{}{}",
        upstream_toml("blue", blue.addr(), "h2c"),
        upstream_toml("green", green.addr(), "h2c")
    );
    let steer = Steer::start_ready(&format!("{ups}{}", route_to("blue"))).await;
    let v1 = config_json(&steer).await["version"].clone();
    steer.write(&format!(
        "[reload]\ngate_timeout = \"300ms\"\non_gate_timeout = \"{on_timeout}\"\n\n{ups}{}",
        route_to("green")
    ));
    let a = call(request("POST", &format!("{}/reload", steer.admin()))).await;
    assert_eq!(a.json()["pending"], true);
    eventually("gate settled", || async {
        config_json(&steer).await["pending"].is_null()
    })
    .await;
    (blue, green, steer, v1)
}

#[tokio::test]
async fn gate_timeout_keep_keeps_the_running_table_and_reports_it() {
    let (_b, _g, steer, v1) = gate_timeout("keep").await;
    let cfg = config_json(&steer).await;
    assert_eq!(cfg["version"], v1);
    assert!(
        cfg["last_error"]
            .as_str()
            .unwrap()
            .contains("gate timed out"),
        "{cfg}"
    );
    assert_eq!(
        call(request("GET", &steer.url("/x"))).await.deployment(),
        "blue"
    );
}

#[tokio::test]
async fn gate_timeout_apply_applies_the_table_anyway() {
    let (_b, green, steer, v1) = gate_timeout("apply").await;
    let cfg = config_json(&steer).await;
    assert_ne!(cfg["version"], v1);
    assert_eq!(
        call(request("GET", &steer.url("/x"))).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    green.set_ready(true);
    eventually("green serves", || async {
        call(request("GET", &steer.url("/x"))).await.deployment() == "green"
    })
    .await;
}

#[tokio::test]
async fn a_newer_file_supersedes_a_pending_one() {
    let blue = upstream("blue").await;
    let green = upstream("green").await;
    let teal = upstream("teal").await;
    green.set_ready(false);
    let ups = format!(
        "{}{}{}",
        upstream_toml("blue", blue.addr(), "h2c"),
        upstream_toml("green", green.addr(), "h2c"),
        upstream_toml("teal", teal.addr(), "h2c")
    );
    let steer = Steer::start_ready(&format!("{ups}{}", route_to("blue"))).await;
    steer.write(&format!("{ups}{}", route_to("green")));
    let a = call(request("POST", &format!("{}/reload", steer.admin()))).await;
    assert_eq!(a.json()["pending"], true);
    steer.write(&format!("{ups}{}", route_to("teal")));
    let a = call(request("POST", &format!("{}/reload", steer.admin()))).await;
    assert_eq!(a.json()["pending"], false);
    let v3 = a.json()["version"].clone();
    assert_eq!(
        call(request("GET", &steer.url("/x"))).await.deployment(),
        "teal"
    );
    // Green turning ready must not resurrect the superseded table.
    green.set_ready(true);
    eventually("green probed healthy", || async {
        states(&steer.admin(), "green").await == ["healthy"]
    })
    .await;
    assert_eq!(config_json(&steer).await["version"], v3);
    assert_eq!(
        call(request("GET", &steer.url("/x"))).await.deployment(),
        "teal"
    );
}

#[tokio::test]
async fn a_ramp_moves_the_split_shares_over_time() {
    let blue = upstream("blue").await;
    let green = upstream("green").await;
    let ups = format!(
        "{}{}",
        upstream_toml("blue", blue.addr(), "h2c"),
        upstream_toml("green", green.addr(), "h2c")
    );
    let split = |b: u32, g: u32| {
        format!(
            "{ups}[[routes]]\nname = \"r\"\nsplit = {{ blue = {b}, green = {g} }}\nramp = \"3s\"\n"
        )
    };
    let steer = Steer::start_ready(&split(100, 0)).await;
    steer.write(&split(0, 100));
    let started = Instant::now();
    let a = call(request("POST", &format!("{}/reload", steer.admin()))).await;
    assert_eq!(a.status, StatusCode::OK);
    let ramp = &config_json(&steer).await["ramps"][0];
    assert_eq!(ramp["route"], "r");
    let progress = ramp["progress"].as_f64().unwrap();
    assert!((0.0..0.5).contains(&progress), "{ramp}");
    // Early: mostly blue.
    let (mut early_green, mut early) = (0, 0);
    while started.elapsed() < Duration::from_millis(600) {
        early += 1;
        if call(request("GET", &steer.url("/x"))).await.deployment() == "green" {
            early_green += 1;
        }
    }
    assert!(early > 10);
    assert!(
        (early_green as f64) < 0.45 * early as f64,
        "green {early_green} of {early} early"
    );
    // Once the ramp is done (the admin API stops listing it, not before its
    // 3 s have passed): all green.
    eventually("the ramp to end", || async {
        config_json(&steer).await["ramps"]
            .as_array()
            .is_some_and(Vec::is_empty)
    })
    .await;
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    for _ in 0..50 {
        assert_eq!(
            call(request("GET", &steer.url("/x"))).await.deployment(),
            "green"
        );
    }
    assert_eq!(
        config_json(&steer).await["ramps"].as_array().unwrap().len(),
        0
    );
}

#[tokio::test]
async fn grpc_health_checks_use_the_standard_service() {
    let blue = upstream("blue").await;
    let body = format!(
        "[upstreams.blue]\nendpoints = [\"{}\"]\nprotocol = \"h2c\"\nhealth = {{ grpc_service = \"\", interval = \"100ms\" }}\n\n\
         [upstreams.unknown-svc]\nendpoints = [\"{}\"]\nprotocol = \"h2c\"\nhealth = {{ grpc_service = \"no.such.Service\", interval = \"100ms\" }}\n\n{}",
        blue.addr(),
        blue.addr(),
        route_to("blue")
    );
    let steer = Steer::start(&body).await;
    eventually("blue healthy over gRPC", || async {
        states(&steer.admin(), "blue").await == ["healthy"]
    })
    .await;
    // /debug/ready says 200 for both; only the gRPC answer tells them apart.
    eventually("unknown service unhealthy", || async {
        states(&steer.admin(), "unknown-svc").await == ["unhealthy"]
    })
    .await;
    blue.set_ready(false);
    eventually("NOT_SERVING -> unhealthy", || async {
        states(&steer.admin(), "blue").await == ["unhealthy"]
    })
    .await;
    let a = call(request("GET", &format!("{}/upstreams", steer.admin()))).await;
    let err = a.json()["upstreams"][0]["endpoints"][0]["last_check"]["error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(err.contains("NOT_SERVING"), "{err}");
    blue.set_ready(true);
    eventually("SERVING -> healthy", || async {
        states(&steer.admin(), "blue").await == ["healthy"]
    })
    .await;
}

/// An upstream that is ready but does not serve the instance yet: its
/// discovery document answers 404 until `serve` is set.
async fn half_ready() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let serve = std::sync::Arc::new(AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let flag = serve.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let flag = flag.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let ok = req.uri().path() == "/debug/ready"
                            || (req
                                .headers()
                                .get("host")
                                .is_some_and(|h| h == "auth.example.com")
                                && flag.load(Ordering::SeqCst));
                        let mut resp = http::Response::new(Full::new(Bytes::from_static(
                            b"{\"issuer\":\"https://auth.example.com\"}",
                        )));
                        if !ok {
                            *resp.status_mut() = StatusCode::NOT_FOUND;
                        }
                        async move { Ok::<_, Infallible>(resp) }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (addr, serve)
}

#[tokio::test]
async fn a_warm_up_that_answers_404_keeps_the_endpoint_out() {
    let (addr, serve) = half_ready().await;
    let body = format!(
        "[upstreams.new]\nendpoints = [\"{addr}\"]\nhealth = {{ interval = \"100ms\", warmup = [{{ path = \"/.well-known/openid-configuration\", host = \"auth.example.com\", expect_body = \"issuer\" }}] }}\n\n{}",
        route_to("new")
    );
    let steer = Steer::start(&body).await;
    eventually("probed", || async {
        states(&steer.admin(), "new").await == ["unhealthy"]
    })
    .await;
    let a = call(request("GET", &format!("{}/upstreams", steer.admin()))).await;
    let err = a.json()["upstreams"][0]["endpoints"][0]["last_check"]["error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        err.contains("warm-up GET /.well-known/openid-configuration: status 404"),
        "{err}"
    );
    assert_eq!(
        call(request("GET", &steer.url("/"))).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    serve.store(true, std::sync::atomic::Ordering::SeqCst);
    eventually("promoted once warm", || async {
        states(&steer.admin(), "new").await == ["healthy"]
    })
    .await;
}

fn check(text: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.toml");
    std::fs::write(&path, text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_steer"))
        .args(["check", "--strict"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `steer check --strict` on `text` exits 1 with `warning` in its output.
fn assert_warns(text: &str, warning: &str) {
    let (code, err) = check(text);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(warning), "{err}");
}

const HEAD: &str = "[listen]\nhttp = \"127.0.0.1:8080\"\n[upstreams.a]\nendpoints = [\"10.0.0.1:8080\", \"10.0.0.2:8080\"]\nprotocol = \"h2c\"\n[upstreams.b]\nendpoints = [\"10.0.1.1:8080\", \"10.0.1.2:8080\"]\nprotocol = \"h2c\"\n";

#[test]
fn lint_shadowed_route() {
    assert_warns(
        &format!(
            "{HEAD}[[routes]]\nname = \"all-oauth\"\npath_prefix = \"/oauth/\"\nupstream = \"a\"\nfallback = [\"b\"]\n[[routes]]\nname = \"token\"\npath = \"/oauth/v2/token\"\nupstream = \"a\"\nfallback = [\"b\"]\n"
        ),
        ":14:1: warning: route `token` can never match: the earlier route `all-oauth`",
    );
}

#[test]
fn lint_login_flow_split_across_upstreams() {
    assert_warns(
        &format!(
            "{HEAD}[[routes]]\nname = \"token\"\npath_prefix = \"/oauth/v2/token\"\nupstream = \"b\"\n[[routes]]\nname = \"rest\"\nupstream = \"a\"\nfallback = [\"b\"]\n"
        ),
        "login-flow paths go to different upstreams",
    );
}

#[test]
fn lint_unused_upstream() {
    assert_warns(
        &format!("{HEAD}[[routes]]\nname = \"r\"\nsplit = {{ a = 1 }}\n"),
        ":6:12: warning: upstream `b` is not used by any route",
    );
}

#[test]
fn lint_single_endpoint_without_fallback() {
    assert_warns(
        "[listen]\nhttp = \"127.0.0.1:8080\"\n[upstreams.one]\nendpoints = [\"10.0.0.1:8080\"]\nprotocol = \"h2c\"\n[[routes]]\nname = \"r\"\nupstream = \"one\"\n",
        "has no fallback and its upstream `one` has a single endpoint",
    );
}

#[test]
fn lint_split_to_an_unchecked_upstream() {
    assert_warns(
        &format!(
            "{}\nhealth = false\n[[routes]]\nname = \"r\"\nsplit = {{ a = 1, b = 1 }}\n",
            HEAD.trim_end()
        ),
        "splits traffic to `b`, which has health checks off",
    );
}

#[test]
fn lint_grpc_route_to_http1() {
    assert_warns(
        "[listen]\nhttp = \"127.0.0.1:8080\"\n[upstreams.a]\nendpoints = [\"10.0.0.1:8080\", \"10.0.0.2:8080\"]\n[[routes]]\nname = \"grpc\"\npath_prefix = \"/zitadel.\"\nupstream = \"a\"\n[[routes]]\nname = \"r\"\nupstream = \"a\"\n",
        "route `grpc` looks like native gRPC but upstream `a` speaks http1",
    );
}

#[test]
fn lints_stay_quiet_on_a_clean_file() {
    let (code, err) = check(&format!(
        "{HEAD}[[routes]]\nname = \"r\"\nsplit = {{ a = 9, b = 1 }}\n"
    ));
    assert_eq!((code, err.as_str()), (0, ""));
}
