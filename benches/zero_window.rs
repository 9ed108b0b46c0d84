//! The zero-window attack (not a criterion bench): HTTP/2 clients that
//! advertise a zero flow-control window open streams to a large response
//! against a real `steer` process whose descriptor limit is a few hundred.
//! Meanwhile a normal client and `GET /ready` on the admin listener are
//! timed. Passes when both are answered within 1 s throughout and steer's
//! open descriptors are back near where they started within
//! `send_timeout` plus a few seconds; exits 1 otherwise.
//!
//! Run: `scripts/ci/zero-window.sh` or
//! `cargo bench --bench zero_window -- --attackers 2 --streams 100 --fds 300`.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use steer::demo::Deployment;
use tokio::net::TcpStream;

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    l.local_addr().unwrap_or_else(|e| panic!("{e}"))
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

type Http = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

/// One GET; its time, or `None` when it failed or was not a 200.
async fn timed_get(client: &Http, url: &str) -> Option<Duration> {
    let started = Instant::now();
    let uri = url.parse().ok()?;
    let resp = tokio::time::timeout(Duration::from_secs(5), client.get(uri))
        .await
        .ok()?
        .ok()?;
    let ok = resp.status() == 200;
    resp.into_body().collect().await.ok()?;
    ok.then(|| started.elapsed())
}

/// An attacker: one connection, `streams` requests, no window, never read.
async fn attacker(addr: SocketAddr, streams: u64) -> Vec<Box<dyn std::any::Any + Send>> {
    let mut held: Vec<Box<dyn std::any::Any + Send>> = Vec::new();
    let Ok(tcp) = TcpStream::connect(addr).await else {
        return held;
    };
    let Ok((mut send, conn)) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, Bytes>(tcp)
        .await
    else {
        return held;
    };
    tokio::spawn(async move {
        let _ = conn.await;
    });
    for _ in 0..streams {
        let Ok(ready) = send.ready().await else {
            return held;
        };
        send = ready;
        let req = http::Request::get(format!("http://{addr}/demo/bytes?n=1000000"))
            .body(())
            .unwrap_or_else(|e| panic!("{e}"));
        let Ok((resp, _)) = send.send_request(req, true) else {
            break;
        };
        if let Ok(resp) = resp.await {
            held.push(Box::new(resp));
        }
    }
    held.push(Box::new(send));
    held
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let attackers = arg("--attackers", 2);
    let streams = arg("--streams", 100);
    let fds = arg("--fds", 300);
    let send_timeout = arg("--send-timeout", 3);
    let any: SocketAddr = ([127, 0, 0, 1], 0).into();
    let blue = Deployment::start("blue", any)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (http, admin) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("routes.toml");
    let config = format!(
        "[listen]\nhttp = \"{http}\"\nadmin = \"{admin}\"\n\n[proxy]\nsend_timeout = \"{send_timeout}s\"\n\n\
         [log]\naccess = false\n\n[upstreams.blue]\nendpoints = [\"{}\"]\nhealth = false\n\n\
         [[routes]]\nname = \"r\"\nupstream = \"blue\"\n",
        blue.addr()
    );
    std::fs::write(&path, config).unwrap_or_else(|e| panic!("{e}"));
    let mut steer = Command::new("sh")
        .args(["-c", &format!("ulimit -n {fds} && exec \"$0\" \"$@\"")])
        .arg(env!("CARGO_BIN_EXE_steer"))
        .args(["run", "--config"])
        .arg(&path)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let pid = steer.id();
    let client: Http = Client::builder(TokioExecutor::new()).build_http();
    let (ready, page) = (format!("http://{admin}/ready"), format!("http://{http}/"));
    let deadline = Instant::now() + Duration::from_secs(15);
    while timed_get(&client, &ready).await.is_none() {
        assert!(Instant::now() < deadline, "steer did not become ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = open_fds(pid);
    // The probes run from before the attack until steer has recovered.
    let stop = Arc::new(AtomicBool::new(false));
    let (worst, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let probes = {
        let (stop, worst, failed, client) =
            (stop.clone(), worst.clone(), failed.clone(), client.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for url in [&ready, &page] {
                    n += 1;
                    match timed_get(&client, url).await {
                        Some(t) => {
                            worst.fetch_max(
                                u64::try_from(t.as_micros()).unwrap_or(u64::MAX),
                                Ordering::Relaxed,
                            );
                        }
                        None => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            n
        })
    };
    let started = Instant::now();
    let attacks: Vec<_> = (0..attackers)
        .map(|_| tokio::spawn(attacker(http, streams)))
        .collect();
    let mut held = Vec::new();
    for a in attacks {
        held.extend(a.await.unwrap_or_default());
    }
    let peak = open_fds(pid);
    let heads = held.len() - usize::try_from(attackers).unwrap_or(0);
    let recover_by = started + Duration::from_secs(send_timeout + 10);
    let mut recovered = None;
    while Instant::now() < recover_by {
        if open_fds(pid) <= before + 10 {
            recovered = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let probed = probes.await.unwrap_or(0);
    drop(held);
    let _ = steer.kill();
    let _ = steer.wait();
    let worst = Duration::from_micros(worst.load(Ordering::Relaxed));
    let failed = failed.load(Ordering::Relaxed);
    println!(
        "zero-window: {attackers} attackers x {streams} streams (window 0) against steer with {fds} fds, send_timeout {send_timeout}s"
    );
    println!("  response heads the attackers got: {heads}");
    println!(
        "  steer's open descriptors: {before} before, {peak} at the peak, recovered after {recovered:?}"
    );
    println!("  probes (proxy GET and admin /ready): {probed}, failed {failed}, slowest {worst:?}");
    let ok = failed == 0 && worst < Duration::from_secs(1) && recovered.is_some();
    if !ok {
        println!("zero-window: FAILED");
        std::process::exit(1);
    }
    println!("zero-window: ok");
}
