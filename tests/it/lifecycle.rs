//! Reload triggers, rejection, in-flight work across reloads, graceful
//! shutdown; signals are sent to a real `steer` process.

use http::StatusCode;
use tonic_health::ServingStatus;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::support::*;

fn routes_to(target: &str) -> String {
    format!("[[routes]]\nname = \"r\"\nupstream = \"{target}\"\n")
}

async fn two(protocol: &str) -> (steer::demo::Deployment, steer::demo::Deployment, String) {
    let blue = upstream("blue").await;
    let green = upstream("green").await;
    let ups = format!(
        "{}{}",
        upstream_toml("blue", blue.addr(), protocol),
        upstream_toml("green", green.addr(), protocol)
    );
    (blue, green, ups)
}

async fn serves(steer: &Steer, who: &str) -> bool {
    call(request("GET", &steer.url("/x"))).await.deployment() == who
}

#[tokio::test]
async fn writing_the_file_in_place_reloads() {
    let (_b, _g, ups) = two("h2c").await;
    let steer = Steer::start_ready(&format!("{ups}{}", routes_to("blue"))).await;
    assert!(serves(&steer, "blue").await);
    std::fs::write(
        &steer.path,
        with_listen(&format!("{ups}{}", routes_to("green"))),
    )
    .unwrap();
    eventually("green after in-place write", || serves(&steer, "green")).await;
}

#[tokio::test]
async fn a_rename_over_the_file_reloads() {
    let (_b, _g, ups) = two("h2c").await;
    let steer = Steer::start_ready(&format!("{ups}{}", routes_to("blue"))).await;
    steer.write(&format!("{ups}{}", routes_to("green")));
    eventually("green after rename", || serves(&steer, "green")).await;
}

#[tokio::test]
async fn a_configmap_symlink_swap_reloads() {
    #[cfg(unix)]
    {
        use std::os::unix::fs::symlink;
        let (_b, _g, ups) = two("h2c").await;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("..2026_11_27_1")).unwrap();
        std::fs::write(
            d.join("..2026_11_27_1/routes.toml"),
            with_listen(&format!("{ups}{}", routes_to("blue"))),
        )
        .unwrap();
        symlink("..2026_11_27_1", d.join("..data")).unwrap();
        symlink("..data/routes.toml", d.join("routes.toml")).unwrap();
        let running = steer::app::start(&d.join("routes.toml")).await.unwrap();
        let url = format!("http://{}/x", running.http.unwrap());
        eventually("blue", || async {
            call(request("GET", &url)).await.deployment() == "blue"
        })
        .await;
        // What the kubelet does: new dir, new ..data link, renamed over.
        std::fs::create_dir(d.join("..2026_11_27_2")).unwrap();
        std::fs::write(
            d.join("..2026_11_27_2/routes.toml"),
            with_listen(&format!("{ups}{}", routes_to("green"))),
        )
        .unwrap();
        symlink("..2026_11_27_2", d.join("..data_tmp")).unwrap();
        std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
        eventually("green after ..data swap", || async {
            call(request("GET", &url)).await.deployment() == "green"
        })
        .await;
    }
}

#[tokio::test]
async fn post_reload_applies_and_an_invalid_file_is_rejected_and_reported() {
    let (_b, _g, ups) = two("h2c").await;
    let steer = Steer::start_ready(&format!("{ups}{}", routes_to("blue"))).await;
    let admin = steer.admin();
    let v1 = call(request("GET", &format!("{admin}/config")))
        .await
        .json();
    assert!(v1["last_error"].is_null());
    // Invalid: unknown upstream. The running table stays.
    steer.write(&format!("{ups}{}", routes_to("purple")));
    let a = call(request("POST", &format!("{admin}/reload"))).await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    let errors = a.json()["errors"].as_array().unwrap().clone();
    assert!(
        errors[0]
            .as_str()
            .unwrap()
            .contains("unknown upstream `purple`"),
        "{errors:?}"
    );
    assert!(
        errors[0].as_str().unwrap().contains("routes.toml:"),
        "{errors:?}"
    );
    assert!(serves(&steer, "blue").await);
    let cfg = call(request("GET", &format!("{admin}/config")))
        .await
        .json();
    assert_eq!(cfg["version"], v1["version"]);
    assert!(cfg["last_error"].as_str().unwrap().contains("purple"));
    let metrics = call(request("GET", &format!("{admin}/metrics")))
        .await
        .text();
    assert!(
        metrics.contains("steer_config_reloads_total{result=\"failure\"}"),
        "{metrics}"
    );
    // A good file clears the error.
    steer.write(&format!("{ups}{}", routes_to("green")));
    let a = call(request("POST", &format!("{admin}/reload"))).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_ne!(a.json()["version"], v1["version"]);
    assert!(serves(&steer, "green").await);
    let cfg = call(request("GET", &format!("{admin}/config")))
        .await
        .json();
    assert!(cfg["last_error"].is_null());
    for field in ["version", "loaded_at", "path"] {
        assert!(cfg[field].is_string(), "{field}");
    }
}

#[tokio::test]
async fn a_slow_request_finishes_on_the_old_table_after_its_route_is_removed() {
    let (blue, _g, ups) = two("h2c").await;
    let steer = Steer::start_ready(&format!(
        "{ups}[[routes]]\nname = \"slow\"\npath_prefix = \"/demo/slow\"\nupstream = \"blue\"\n"
    ))
    .await;
    let url = steer.url("/demo/slow?ms=600");
    let slow = tokio::spawn(async move { call(request("GET", &url)).await });
    eventually("in flight", || async { blue.requests() == 1 }).await;
    steer.write(&format!(
        "{ups}{}",
        "[[routes]]\nname = \"other\"\npath = \"/other\"\nupstream = \"green\"\n"
    ));
    let (status, _) = post(&format!("{}/reload", steer.admin())).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        get(&steer.url("/demo/slow?ms=1")).await.0,
        StatusCode::NOT_FOUND
    );
    let a = slow.await.unwrap();
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.deployment(), "blue");
}

#[tokio::test]
async fn a_grpc_stream_and_a_websocket_survive_a_reload() {
    let (blue, _g, ups) = two("h2c").await;
    let steer = Steer::start_ready(&format!("{ups}{}", routes_to("blue"))).await;
    let channel = tonic::transport::Channel::from_shared(steer.url(""))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(channel);
    let mut stream = client
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        stream.message().await.unwrap().unwrap().status,
        ServingStatus::Serving as i32
    );
    steer.write(&format!("{ups}{}", routes_to("green")));
    let (status, _) = post(&format!("{}/reload", steer.admin())).await;
    assert_eq!(status, StatusCode::OK);
    assert!(serves(&steer, "green").await);
    blue.set_ready(false);
    assert_eq!(
        stream.message().await.unwrap().unwrap().status,
        ServingStatus::NotServing as i32
    );
}

#[tokio::test]
async fn sighup_reloads_even_an_unchanged_file() {
    let (_b, _g, ups) = two("h2c").await;
    let p = spawn_steer(&format!("{ups}{}", routes_to("blue"))).await;
    let count = || async {
        let m = call(request("GET", &format!("{}/metrics", p.admin)))
            .await
            .text();
        m.lines()
            .find(|l| l.starts_with("steer_config_reloads_total{result=\"success\"}"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    eventually("admin up", || async {
        get(&format!("{}/healthz", p.admin)).await.0 == StatusCode::OK
    })
    .await;
    assert_eq!(count().await, 0);
    signal(&p.child, "-HUP");
    eventually("a forced reload counted", || async { count().await == 1 }).await;
}

#[tokio::test]
async fn sigterm_lets_an_in_flight_request_finish_and_exits_0() {
    let (blue, _g, ups) = two("h2c").await;
    let mut p = spawn_steer(&format!("{ups}{}", routes_to("blue"))).await;
    let ready = format!("{}/ready", p.admin);
    eventually("ready", || async { get(&ready).await.0 == StatusCode::OK }).await;
    let url = format!("{}/demo/slow?ms=800", p.http);
    let slow = tokio::spawn(async move { call(request("GET", &url)).await });
    eventually("request in flight", || async { blue.requests() == 1 }).await;
    signal(&p.child, "-TERM");
    let a = slow.await.unwrap();
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.deployment(), "blue");
    let status = tokio::task::spawn_blocking(move || {
        let s = p.child.wait().unwrap();
        (s, p)
    })
    .await
    .unwrap()
    .0;
    assert_eq!(status.code(), Some(0));
}

/// Reloads `steer` with `body` listening on a new port; returns it.
async fn move_listener(steer: &Steer, body: &str) -> std::net::SocketAddr {
    let free = closed_port();
    let text =
        with_listen(body).replacen("http = \"127.0.0.1:0\"", &format!("http = \"{free}\""), 1);
    std::fs::write(&steer.path, text).unwrap();
    let a = call(request("POST", &format!("{}/reload", steer.admin()))).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    free
}

#[tokio::test]
async fn a_changed_listen_address_is_bound_before_the_old_one_stops() {
    let (_b, _g, ups) = two("h2c").await;
    let body = format!("{ups}{}", routes_to("blue"));
    let steer = Steer::start_ready(&body).await;
    let old = steer.url("/x");
    let free = move_listener(&steer, &body).await;
    assert_eq!(
        call(request("GET", &format!("http://{free}/x")))
            .await
            .deployment(),
        "blue"
    );
    eventually("old address closed", || async {
        tokio::net::TcpStream::connect(old.trim_start_matches("http://").trim_end_matches("/x"))
            .await
            .is_err()
    })
    .await;
}

#[tokio::test]
async fn an_http2_connection_on_a_moved_listener_is_asked_to_finish() {
    let (_b, _g, ups) = two("h2c").await;
    let body = format!("{ups}{}", routes_to("blue"));
    let steer = Steer::start_ready(&body).await;
    let tcp = tokio::net::TcpStream::connect(steer.addr()).await.unwrap();
    let (mut send, conn) = h2::client::handshake(tcp).await.unwrap();
    let ended = tokio::spawn(conn);
    let req = http::Request::get(steer.url("/x")).body(()).unwrap();
    let (resp, _) = send.send_request(req, true).unwrap();
    assert_eq!(resp.await.unwrap().status(), StatusCode::OK);
    move_listener(&steer, &body).await;
    // GOAWAY, then the close: well before `idle_timeout` (60 s).
    tokio::time::timeout(std::time::Duration::from_secs(5), ended)
        .await
        .expect("the HTTP/2 connection must be asked to finish")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_listen_address_that_cannot_be_bound_rejects_the_reload() {
    let (_b, _g, ups) = two("h2c").await;
    let body = format!("{ups}{}", routes_to("blue"));
    let steer = Steer::start_ready(&body).await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let text = with_listen(&format!("{ups}{}", routes_to("green"))).replacen(
        "http = \"127.0.0.1:0\"",
        &format!("http = \"{addr}\""),
        1,
    );
    std::fs::write(&steer.path, text).unwrap();
    let a = call(request("POST", &format!("{}/reload", steer.admin()))).await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(a.text().contains("cannot listen"), "{}", a.text());
    // Nothing changed: the old listener and the old table.
    assert!(serves(&steer, "blue").await);
}

#[tokio::test]
async fn upgrade_hands_the_sockets_over_while_a_client_keeps_sending() {
    let (_b, _g, ups) = two("h2c").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.toml");
    let text = with_listen_full(
        "upgrade_socket = \"steer.sock\"",
        "",
        &format!("{ups}{}", routes_to("blue")),
    );
    std::fs::write(&path, text).unwrap();
    let mut old = spawn_steer_at(None, path.clone(), &[]).await;
    let ready = format!("{}/ready", old.admin);
    eventually("old ready", || async {
        get(&ready).await.0 == StatusCode::OK
    })
    .await;
    // Clients on keep-alive connections, sending throughout the handover.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (url, stop) = (format!("{}/x", old.http), stop.clone());
        clients.push(tokio::spawn(async move {
            let client = http1();
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let req = request("GET", &url)
                    .body(http_body_util::Full::new(bytes::Bytes::new()))
                    .unwrap();
                match client.request(req).await {
                    Ok(r) if r.status() == StatusCode::OK => {
                        let _ = http_body_util::BodyExt::collect(r.into_body()).await;
                        ok += 1;
                    }
                    Ok(r) => {
                        let body = http_body_util::BodyExt::collect(r.into_body())
                            .await
                            .map(|b| b.to_bytes());
                        failed.push(format!("{body:?}"));
                    }
                    Err(e) => failed.push(format!("{e:?}")),
                }
            }
            (ok, failed)
        }));
    }
    let new = spawn_steer_at(Some(dir), path, &["--upgrade"]).await;
    assert_eq!(new.http, old.http, "the new steer serves the same socket");
    let status = tokio::task::spawn_blocking(move || old.child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0), "the old steer drains and exits 0");
    // Keep sending a little after the old one is gone, then stop.
    let served = call(request("GET", &format!("{}/x", new.http))).await;
    if served.deployment() != "blue" {
        let logs: Vec<String> = new.logs.try_iter().collect();
        panic!("{}\nnew steer: {logs:#?}", served.text());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for c in clients {
        let (ok, failed) = c.await.unwrap();
        if !failed.is_empty() {
            let logs: Vec<String> = new
                .logs
                .try_iter()
                .filter(|l| l.contains("WARN") || l.contains("healthy"))
                .collect();
            panic!("failed requests during the handover: {failed:?}\nnew steer: {logs:#?}");
        }
        total += ok;
    }
    assert!(total > 0);
}

#[tokio::test]
async fn one_worker_runs_on_a_current_thread_runtime_and_serves() {
    let (_b, _g, ups) = two("h2c").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.toml");
    std::fs::write(&path, with_listen(&format!("{ups}{}", routes_to("blue")))).unwrap();
    let p = spawn_steer_at(Some(dir), path, &["--workers", "1"]).await;
    let ready = format!("{}/ready", p.admin);
    eventually("ready", || async { get(&ready).await.0 == StatusCode::OK }).await;
    let a = call(request("GET", &format!("{}/x", p.http))).await;
    assert_eq!(a.deployment(), "blue");
}

/// Waits for `child` to exit within `budget`; its exit code.
async fn exits_within(mut p: Proc, budget: std::time::Duration) -> Option<i32> {
    tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        loop {
            if let Some(status) = p.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                started.elapsed() < budget,
                "steer did not exit within {budget:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn sigterm_stops_steer_with_an_upgrade_socket_and_an_open_tunnel() {
    use futures_util::{SinkExt, StreamExt};
    let echo = crate::websocket::echo_server().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.toml");
    std::fs::write(
        &path,
        format!(
            "[listen]\nhttp = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nupgrade_socket = \"upgrade.sock\"\n\n\
             [proxy]\nshutdown_delay = \"0s\"\ndrain_timeout = \"1s\"\n\n\
             [upstreams.ws]\nendpoints = [\"{echo}\"]\nhealth = false\n\n[[routes]]\nname = \"ws\"\nupstream = \"ws\"\n"
        ),
    )
    .unwrap();
    let p = spawn_steer_at(Some(dir), path, &[]).await;
    let ready = format!("{}/ready", p.admin);
    eventually("ready", || async { get(&ready).await.0 == StatusCode::OK }).await;
    let url = format!("{}/socket", p.http.replace("http://", "ws://"));
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let _hello = ws.next().await.unwrap().unwrap();
    ws.send(tokio_tungstenite::tungstenite::Message::text("hi"))
        .await
        .unwrap();
    assert!(ws.next().await.unwrap().is_ok());
    signal(&p.child, "-TERM");
    // shutdown_delay (0 s) + drain_timeout (1 s) + a margin.
    let code = exits_within(p, std::time::Duration::from_secs(4)).await;
    assert_eq!(code, Some(0));
}

#[tokio::test]
async fn last_error_clears_when_the_file_returns_to_the_running_content() {
    let (_b, _g, ups) = two("http1").await;
    let steer = Steer::start_ready(&format!("{ups}{}", routes_to("blue"))).await;
    let good = std::fs::read(&steer.path).unwrap();
    let admin = steer.admin();
    let config = || async {
        call(request("GET", &format!("{admin}/config")))
            .await
            .json()
    };
    let c = config().await;
    assert_eq!(c["file_matches"], true);
    let write = |bytes: &[u8]| {
        let tmp = steer.path.with_extension("tmp");
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::rename(&tmp, &steer.path).unwrap();
    };
    let mut broken = good.clone();
    broken.extend_from_slice(b"\n[[routes]]\nname = \"x\"\nupstream = \"purple\"\n");
    write(&broken);
    eventually("the broken file is reported", || async {
        let c = config().await;
        c["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("purple"))
            && c["file_matches"] == false
    })
    .await;
    // A ConfigMap rolled back: the running content is on disk again.
    write(&good);
    eventually("last_error clears", || async {
        let c = config().await;
        c["last_error"].is_null() && c["file_matches"] == true
    })
    .await;
}
