//! Chaos under load (not a criterion bench): keep-alive GET and POST clients
//! and an admin-API hammer run against a real `steer` process on loopback
//! while one of an upstream's two endpoints misbehaves in turn:
//! `reset` (connections dropped at once, as a killed process), `stall`
//! (accepts, never answers), `garbage` (answers bytes that are not HTTP),
//! then `recovered`. Prints requests and failures per phase and client kind.
//!
//! Run: `scripts/chaos.sh` or `cargo bench --bench chaos -- --seconds 3`.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use steer::demo::Deployment;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Each fault starts from a healthy pool (a recovery phase in between), so
/// that it hits an endpoint that is taking traffic.
const PHASES: [(&str, u8); 7] = [
    ("normal", 0),
    ("reset", 1),
    ("recovered", 0),
    ("stall", 2),
    ("recovered", 0),
    ("garbage", 3),
    ("recovered", 0),
];

/// A TCP front for a demo deployment whose behaviour can be switched.
async fn chaotic(backend: SocketAddr, mode: Arc<AtomicU8>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let mode = mode.clone();
            tokio::spawn(async move {
                match mode.load(Ordering::Relaxed) {
                    1 => drop(client),
                    2 => {
                        let mut sink = [0u8; 4096];
                        while let Ok(n) = client.read(&mut sink).await {
                            if n == 0 {
                                break;
                            }
                        }
                    }
                    3 => {
                        let mut buf = [0u8; 4096];
                        let _ = client.read(&mut buf).await;
                        let _ = client
                            .write_all(b"\x16\x03\x01 this is not HTTP \xff\xfe\r\n\r\n")
                            .await;
                    }
                    _ => {
                        let Ok(mut back) = TcpStream::connect(backend).await else {
                            return;
                        };
                        // Open connections suffer the new mode too: a reset
                        // or garbage cuts them, a stall freezes them.
                        let changed = async {
                            while mode.load(Ordering::Relaxed) == 0 {
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                        };
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut back) => {}
                            () = changed => {
                                while mode.load(Ordering::Relaxed) == 2 {
                                    tokio::time::sleep(Duration::from_millis(20)).await;
                                }
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    failed: AtomicU64,
}

fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    l.local_addr().unwrap_or_else(|e| panic!("{e}"))
}

async fn client_loop(
    url: String,
    method: &'static str,
    counts: Arc<Counts>,
    stop: Arc<AtomicBool>,
) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    while !stop.load(Ordering::Relaxed) {
        let req = http::Request::builder()
            .method(method)
            .uri(&url)
            .body(Full::new(Bytes::from_static(b"payload")))
            .unwrap_or_default();
        match client.request(req).await {
            Ok(r) if r.status().is_success() => {
                let _ = r.into_body().collect().await;
                counts.ok.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                counts.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn seconds() -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--seconds")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let phase_len = Duration::from_secs(seconds());
    let any: SocketAddr = ([127, 0, 0, 1], 0).into();
    let a1 = Deployment::start("a1", any)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let a2 = Deployment::start("a2", any)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mode = Arc::new(AtomicU8::new(0));
    let front = chaotic(a1.addr(), mode.clone()).await;
    let (http, admin) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("routes.toml");
    let config = format!(
        "[listen]\nhttp = \"{http}\"\nadmin = \"{admin}\"\n\n[proxy]\nrequest_timeout = \"1s\"\nconnect_timeout = \"300ms\"\n\n\
         [log]\naccess = false\n\n[health]\ninterval = \"200ms\"\ntimeout = \"300ms\"\nunhealthy_threshold = 1\nhealthy_threshold = 2\n\n\
         [upstreams.api]\nendpoints = [\"{front}\", \"{}\"]\n\n[[routes]]\nname = \"api\"\nupstream = \"api\"\n",
        a2.addr()
    );
    std::fs::write(&path, config).unwrap_or_else(|e| panic!("{e}"));
    let mut steer = Command::new(env!("CARGO_BIN_EXE_steer"))
        .args(["run", "--config"])
        .arg(&path)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let ready = format!("http://{admin}/ready");
    let probe = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(r) = probe.get(ready.parse().unwrap_or_default()).await
            && r.status() == 200
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("phase       GET ok / failed     POST ok / failed    admin ok / failed");
    for (name, m) in PHASES {
        mode.store(m, Ordering::Relaxed);
        let stop = Arc::new(AtomicBool::new(false));
        let (get, post, adm) = (
            Arc::new(Counts::default()),
            Arc::new(Counts::default()),
            Arc::new(Counts::default()),
        );
        let mut tasks = Vec::new();
        for _ in 0..6 {
            tasks.push(tokio::spawn(client_loop(
                format!("http://{http}/x"),
                "GET",
                get.clone(),
                stop.clone(),
            )));
        }
        for _ in 0..2 {
            tasks.push(tokio::spawn(client_loop(
                format!("http://{http}/x"),
                "POST",
                post.clone(),
                stop.clone(),
            )));
        }
        for path in ["upstreams", "metrics", "config"] {
            tasks.push(tokio::spawn(client_loop(
                format!("http://{admin}/{path}"),
                "GET",
                adm.clone(),
                stop.clone(),
            )));
        }
        tokio::time::sleep(phase_len).await;
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            let _ = t.await;
        }
        let n = |c: &Counts| {
            (
                c.ok.load(Ordering::Relaxed),
                c.failed.load(Ordering::Relaxed),
            )
        };
        let ((go, gf), (po, pf), (ao, af)) = (n(&get), n(&post), n(&adm));
        println!("{name:<10} {go:>8} / {gf:<8} {po:>8} / {pf:<8} {ao:>8} / {af:<8}");
    }
    let _ = steer.kill();
    let _ = steer.wait();
    println!(
        "chaos: done (a1 = the misbehaving endpoint, a2 = healthy; request_timeout 1s, probes every 200ms)"
    );
}
