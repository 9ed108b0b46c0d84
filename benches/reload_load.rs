//! Zero-loss lifecycle check under load (not a criterion bench): keep-alive
//! clients hammer a real `steer` process on loopback while
//! 1. its route table is rewritten `--reloads` times (the default route
//!    alternating between two ZITADEL-like upstreams, blue and green), then
//! 2. a second steer takes its sockets over with `run --upgrade`, then
//! 3. the blue/green cutover runbook of docs/zitadel.md runs against h2c
//!    upstreams: a new deployment is added while not ready yet, the route
//!    is pointed at it (the readiness gate waits until it answers ready),
//!    the old one is drained and then stopped as ZITADEL stops on SIGTERM.
//!
//! It prints the requests sent and the failures seen in each phase and
//! exits 1 if any request failed. Run: `scripts/reload-load.sh` or
//! `cargo bench --bench reload_load -- --seconds 20 --reloads 100`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use steer::demo::Deployment;

struct Args {
    seconds: u64,
    reloads: u64,
    clients: usize,
}

fn args() -> Args {
    let mut a = Args {
        seconds: 20,
        reloads: 100,
        clients: 16,
    };
    let list: Vec<String> = std::env::args().collect();
    let value = |name: &str| {
        list.iter()
            .position(|x| x == name)
            .and_then(|i| list.get(i + 1))
            .and_then(|v| v.parse().ok())
    };
    a.seconds = value("--seconds").unwrap_or(a.seconds);
    a.reloads = value("--reloads").unwrap_or(a.reloads);
    a.clients = value("--clients").map_or(a.clients, |c: u64| c as usize);
    a
}

#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    failed: AtomicU64,
    blue: AtomicU64,
    green: AtomicU64,
}

fn config(target: &str, http: &str, admin: &str, blue: &Deployment, green: &Deployment) -> String {
    format!(
        "[listen]\nhttp = \"{http}\"\nadmin = \"{admin}\"\nupgrade_socket = \"steer.sock\"\n\n\
         [proxy]\nshutdown_delay = \"0s\"\ndrain_timeout = \"10s\"\n\n\
         [log]\naccess = false\n\n\
         [health]\ninterval = \"500ms\"\n\n\
         [upstreams.blue]\nendpoints = [\"{}\"]\nprotocol = \"h2c\"\n\n\
         [upstreams.green]\nendpoints = [\"{}\"]\nprotocol = \"h2c\"\n\n\
         [[routes]]\nname = \"default\"\nupstream = \"{target}\"\n",
        blue.addr(),
        green.addr()
    )
}

/// Phase 3's table: blue, green and `next` (the new version), the route
/// to `target`.
fn cutover_config(
    target: &str,
    http: &str,
    admin: &str,
    blue: &Deployment,
    green: &Deployment,
    next: &Deployment,
) -> String {
    format!(
        "{}\n[upstreams.next]\nendpoints = [\"{}\"]\nprotocol = \"h2c\"\n",
        config(target, http, admin, blue, green).replace(
            "[[routes]]",
            "[reload]\ngate_timeout = \"30s\"\n\n[[routes]]"
        ),
        next.addr()
    )
}

/// Polls `GET /config` until `done` holds for it.
async fn wait_config(admin: &str, what: &str, done: impl Fn(&serde_json::Value) -> bool) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let uri = format!("http://{admin}/config");
        if let Ok(r) = client.get(uri.parse().unwrap_or_default()).await
            && let Ok(body) = r.into_body().collect().await
            && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body.to_bytes())
            && done(&v)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

/// An admin POST; the answer's body.
async fn admin_post(admin: &str, path: &str) -> String {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = http::Request::post(format!("http://{admin}{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap_or_else(|e| panic!("{e}"));
    match client.request(req).await {
        Ok(r) => match r.into_body().collect().await {
            Ok(b) => String::from_utf8_lossy(&b.to_bytes()).into_owned(),
            Err(e) => format!("{e}"),
        },
        Err(e) => format!("{e}"),
    }
}

fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("rename: {e}"));
}

fn spawn(path: &Path, upgrade: bool) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_steer"));
    cmd.args(["run", "--config"]).arg(path);
    if upgrade {
        cmd.arg("--upgrade");
    }
    cmd.env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("starting steer: {e}"))
}

async fn wait_ready(admin: &str) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        let uri = format!("http://{admin}/ready");
        if let Ok(r) = client.get(uri.parse().unwrap_or_default()).await
            && r.status() == 200
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("steer did not become ready");
}

fn load(
    url: String,
    clients: usize,
    counts: Arc<Counts>,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..clients)
        .map(|_| {
            let (url, counts, stop) = (url.clone(), counts.clone(), stop.clone());
            tokio::spawn(async move {
                // One client per task: its own keep-alive connection.
                let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
                let uri: http::Uri = url.parse().unwrap_or_default();
                while !stop.load(Ordering::Relaxed) {
                    match client.get(uri.clone()).await {
                        Ok(r) if r.status() == 200 => {
                            let who = r.headers().get("x-served-by").cloned();
                            let _ = r.into_body().collect().await;
                            counts.ok.fetch_add(1, Ordering::Relaxed);
                            match who.as_ref().map(|v| v.as_bytes()) {
                                Some(b"blue") => counts.blue.fetch_add(1, Ordering::Relaxed),
                                _ => counts.green.fetch_add(1, Ordering::Relaxed),
                            };
                        }
                        Ok(r) => {
                            eprintln!("failed: status {}", r.status());
                            counts.failed.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            eprintln!("failed: {e:?}");
                            counts.failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect()
}

async fn finish(stop: &AtomicBool, tasks: Vec<tokio::task::JoinHandle<()>>) {
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
}

fn free_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    l.local_addr().map(|a| a.to_string()).unwrap_or_default()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a = args();
    let blue = Deployment::start(
        "blue",
        "127.0.0.1:0".parse().unwrap_or(([127, 0, 0, 1], 0).into()),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let green = Deployment::start(
        "green",
        "127.0.0.1:0".parse().unwrap_or(([127, 0, 0, 1], 0).into()),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path: PathBuf = dir.path().join("routes.toml");
    let (http, admin) = (free_port(), free_port());
    write_atomically(&path, &config("blue", &http, &admin, &blue, &green));
    let mut old = spawn(&path, false);
    wait_ready(&admin).await;
    let url = format!("http://{http}/x");

    // Phase 1: reloads under load.
    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = load(url.clone(), a.clients, counts.clone(), stop.clone());
    let started = Instant::now();
    let every = Duration::from_secs(a.seconds) / a.reloads.max(1) as u32;
    for i in 0..a.reloads {
        tokio::time::sleep(every).await;
        let target = if i % 2 == 0 { "green" } else { "blue" };
        write_atomically(&path, &config(target, &http, &admin, &blue, &green));
    }
    finish(&stop, tasks).await;
    let secs = started.elapsed().as_secs_f64();
    let (ok, failed) = (
        counts.ok.load(Ordering::Relaxed),
        counts.failed.load(Ordering::Relaxed),
    );
    println!(
        "reload:  {secs:5.1} s, {} requests, {failed} failed, {} rewrites of routes.toml (blue {} / green {})",
        ok + failed,
        a.reloads,
        counts.blue.load(Ordering::Relaxed),
        counts.green.load(Ordering::Relaxed)
    );
    let mut total_failed = failed;

    // Phase 2: binary upgrade under load.
    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = load(url, a.clients, counts.clone(), stop.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = Instant::now();
    let mut new = spawn(&path, true);
    let status = tokio::task::spawn_blocking(move || old.wait())
        .await
        .ok()
        .and_then(Result::ok);
    tokio::time::sleep(Duration::from_secs(1)).await;
    finish(&stop, tasks).await;
    let (ok, failed) = (
        counts.ok.load(Ordering::Relaxed),
        counts.failed.load(Ordering::Relaxed),
    );
    println!(
        "upgrade: {:5.1} s, {} requests, {failed} failed, old steer exited with {:?}",
        started.elapsed().as_secs_f64() + 1.0,
        ok + failed,
        status.and_then(|s| s.code())
    );
    total_failed += failed;

    // Phase 3: the blue/green cutover runbook, with the new steer.
    let next = Deployment::start(
        "next",
        "127.0.0.1:0".parse().unwrap_or(([127, 0, 0, 1], 0).into()),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    next.set_ready(false);
    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = load(
        format!("http://{http}/x"),
        a.clients,
        counts.clone(),
        stop.clone(),
    );
    let started = Instant::now();
    // 1. Add the new version beside blue; nothing routes to it yet.
    let with = |target: &str| cutover_config(target, &http, &admin, &blue, &green, &next);
    write_atomically(&path, &with("blue"));
    let added = config_hash(&with("blue"));
    wait_config(&admin, "the new upstream added", |c| {
        c["version"] == added.as_str()
    })
    .await;
    // 2. Point the route at it while it still answers 412: the gate waits.
    write_atomically(&path, &with("next"));
    wait_config(&admin, "the gate to hold", |c| !c["pending"].is_null()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // 3. It turns ready; the gate opens.
    next.set_ready(true);
    let routed = config_hash(&with("next"));
    wait_config(&admin, "the cutover", |c| {
        c["version"] == routed.as_str() && c["pending"].is_null()
    })
    .await;
    // 4. Drain blue, 5. stop it as ZITADEL stops on SIGTERM.
    let drained = admin_post(&admin, "/upstreams/blue/drain?timeout=10s").await;
    blue.stop().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    finish(&stop, tasks).await;
    let (ok, failed) = (
        counts.ok.load(Ordering::Relaxed),
        counts.failed.load(Ordering::Relaxed),
    );
    println!(
        "cutover: {:5.1} s, {} requests, {failed} failed, to the new deployment: {} (drain: {})",
        started.elapsed().as_secs_f64(),
        ok + failed,
        next.requests(),
        drained.split_whitespace().collect::<Vec<_>>().join(" ")
    );
    total_failed += failed;
    let _ = new.kill();
    let _ = new.wait();
    println!(
        "reload-load: {}",
        if total_failed == 0 {
            "no request failed"
        } else {
            "REQUESTS FAILED"
        }
    );
    if total_failed > 0 || status.and_then(|s| s.code()) != Some(0) {
        std::process::exit(1);
    }
}

/// The version `/config` reports for a file's content.
fn config_hash(text: &str) -> String {
    steer::config::content_hash(text.as_bytes())
}
