//! Fixtures: ZITADEL-like upstreams, a steer started from a TOML snippet on
//! port 0, real HTTP/1.1 and h2c clients, and polling with a deadline.

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use steer::app::Running;
use steer::demo::Deployment;

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A ZITADEL-like upstream on a free port.
pub async fn upstream(name: &str) -> Deployment {
    Deployment::start(name, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

/// A steer serving `body` (everything but `[listen]`, which is added with
/// port 0 for the proxy and the admin API).
pub struct Steer {
    pub running: Option<Running>,
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl Steer {
    pub async fn start(body: &str) -> Steer {
        Steer::start_with("", body).await
    }

    /// As `start`, with extra lines for the `[proxy]` table.
    pub async fn start_with(proxy: &str, body: &str) -> Steer {
        Steer::start_in(tempfile::tempdir().unwrap(), "", proxy, body).await
    }

    /// As `start_with`, in `dir` (which may hold certificates), with extra
    /// `[listen]` lines.
    pub async fn start_in(dir: tempfile::TempDir, listen: &str, proxy: &str, body: &str) -> Steer {
        let path = dir.path().join("routes.toml");
        std::fs::write(&path, with_listen_full(listen, proxy, body)).unwrap();
        let running = steer::app::start(&path).await.unwrap();
        Steer {
            running: Some(running),
            dir,
            path,
        }
    }

    /// Starts and waits until every endpoint has been probed once.
    pub async fn start_ready(body: &str) -> Steer {
        Steer::start_ready_with("", body).await
    }

    pub async fn start_ready_with(proxy: &str, body: &str) -> Steer {
        let s = Steer::start_with(proxy, body).await;
        let admin = s.admin();
        eventually("steer /ready", || async {
            get(&format!("{admin}/ready")).await.0 == StatusCode::OK
        })
        .await;
        s
    }

    fn running(&self) -> &Running {
        self.running.as_ref().unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.running().http.unwrap())
    }

    pub fn addr(&self) -> SocketAddr {
        self.running().http.unwrap()
    }

    pub fn https_addr(&self) -> SocketAddr {
        self.running().https.unwrap()
    }

    pub fn admin(&self) -> String {
        format!("http://{}", self.running().admin.unwrap())
    }

    /// Replaces the route table (same `[listen]`) on disk.
    pub fn write(&self, body: &str) {
        let tmp = self.dir.path().join("routes.toml.tmp");
        std::fs::write(&tmp, with_listen(body)).unwrap();
        std::fs::rename(&tmp, &self.path).unwrap();
    }
}

pub fn with_listen(body: &str) -> String {
    with_listen_proxy("", body)
}

pub fn with_listen_proxy(proxy: &str, body: &str) -> String {
    with_listen_full("", proxy, body)
}

/// The tests' `[proxy]` defaults, each unless `proxy` sets it.
const PROXY_DEFAULTS: [(&str, &str); 4] = [
    ("shutdown_delay", "\"0s\""),
    ("drain_timeout", "\"5s\""),
    ("request_timeout", "\"2s\""),
    ("connect_timeout", "\"500ms\""),
];

pub fn with_listen_full(listen: &str, proxy: &str, body: &str) -> String {
    let defaults: String = PROXY_DEFAULTS
        .iter()
        .filter(|(key, _)| {
            !proxy
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("{key} ")))
        })
        .map(|(key, value)| format!("{key} = {value}\n"))
        .collect();
    format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n{listen}\n\n[proxy]\n{proxy}\n{defaults}\n[health]\ninterval = \"100ms\"\ntimeout = \"500ms\"\nhealthy_threshold = 1\nunhealthy_threshold = 1\n\n{body}"
    )
}

/// ZITADEL-like `blue` and `green` (protocol as given) behind a ready
/// steer with `routes`.
pub async fn blue_green(
    routes: &str,
    protocol: &str,
) -> (steer::demo::Deployment, steer::demo::Deployment, Steer) {
    let blue = upstream("blue").await;
    let green = upstream("green").await;
    let config = format!(
        "{}{}{routes}",
        upstream_toml("blue", blue.addr(), protocol),
        upstream_toml("green", green.addr(), protocol)
    );
    let steer = Steer::start_ready(&config).await;
    (blue, green, steer)
}

/// One upstream `blue` (protocol as given) behind a ready steer whose
/// only route `r` sends everything to it.
pub async fn single(protocol: &str) -> (Deployment, Steer) {
    let blue = upstream("blue").await;
    let body = format!(
        "{}[[routes]]\nname = \"r\"\nupstream = \"blue\"\n",
        upstream_toml("blue", blue.addr(), protocol)
    );
    let steer = Steer::start_ready(&body).await;
    (blue, steer)
}

/// An upstream `name` at `addr` without health checks, and one route,
/// `r`, that sends everything to it.
pub fn one_route(name: &str, addr: SocketAddr, protocol: &str) -> String {
    format!(
        "{}[[routes]]\nname = \"r\"\nupstream = \"{name}\"\n",
        upstream_toml(name, addr, protocol).replace("protocol", "health = false\nprotocol")
    )
}

/// An upstream block for `name` at `addr`.
pub fn upstream_toml(name: &str, addr: SocketAddr, protocol: &str) -> String {
    format!("[upstreams.{name}]\nendpoints = [\"{addr}\"]\nprotocol = \"{protocol}\"\n\n")
}

pub fn http1() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn h2c() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// The demo upstream's name for who answered.
    /// Empty when steer answered itself (503 and friends).
    pub fn deployment(&self) -> String {
        serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v["deployment"].as_str().map(str::to_owned))
            .unwrap_or_default()
    }
}

pub async fn send(client: &HttpClient, req: Request<Full<Bytes>>) -> Answer {
    let resp = client.request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

pub fn request(method: &str, url: &str) -> http::request::Builder {
    Request::builder().method(method).uri(url)
}

pub async fn call(req: http::request::Builder) -> Answer {
    send(&http1(), req.body(Full::new(Bytes::new())).unwrap()).await
}

/// GET over HTTP/1.1: (status, body text).
pub async fn get(url: &str) -> (StatusCode, String) {
    let a = call(request("GET", url)).await;
    (a.status, a.text())
}

pub async fn post(url: &str) -> (StatusCode, String) {
    let a = call(request("POST", url)).await;
    (a.status, a.text())
}

/// Polls `cond` every 20 ms until it holds; fails after 10 s.
pub async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// The value of the metric series `series` (name and labels as printed),
/// or 0 when it is absent.
pub async fn metric(admin: &str, series: &str) -> f64 {
    let text = get(&format!("{admin}/metrics")).await.1;
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

/// The state of every endpoint of `upstream` as `/upstreams` shows it.
pub async fn states(admin: &str, upstream: &str) -> Vec<String> {
    let a = call(request("GET", &format!("{admin}/upstreams"))).await;
    let v = a.json();
    v["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|u| u["name"] == upstream)
        .flat_map(|u| u["endpoints"].as_array().unwrap().clone())
        .map(|e| e["state"].as_str().unwrap().to_owned())
        .collect()
}

/// A port with nothing listening (bound, then closed).
pub fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A `steer run` child process and its bound addresses (from its JSON log).
pub struct Proc {
    pub child: Child,
    pub http: String,
    pub admin: String,
    _dir: Option<tempfile::TempDir>,
    /// The log lines before "steer started", and that line.
    pub start: Vec<String>,
    /// The log lines after it, as they come.
    pub logs: std::sync::mpsc::Receiver<String>,
}

impl Proc {
    /// Its HTTPS listener's address, when it has one.
    pub fn https(&self) -> SocketAddr {
        let started = self.start.last().unwrap();
        let v: serde_json::Value = serde_json::from_str(started).unwrap();
        v["https"].as_str().unwrap().parse().unwrap()
    }

    /// The next log line that `matches`, within 10 s (lines before it are
    /// taken too).
    pub fn log_line(&self, what: &str, matches: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            assert!(Instant::now() < deadline, "no {what} log line");
            if let Ok(line) = self.logs.recv_timeout(Duration::from_millis(100))
                && matches(&line)
            {
                return line;
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn spawn_steer(body: &str) -> Proc {
    let (dir, path) = config_dir(&with_listen(body));
    spawn_steer_at(Some(dir), path, &[]).await
}

/// As `spawn_steer`, with `proxy`'s lines in `[proxy]`, logging what
/// `RUST_LOG=filter` lets through.
pub async fn spawn_steer_logging(proxy: &str, body: &str, filter: &str) -> Proc {
    spawn_steer_logging_in("", |_| {}, proxy, body, filter).await
}

/// As `spawn_steer_logging`, with `listen`'s lines in `[listen]` too, and
/// `prepare` run on the config's directory first (to write the files the
/// config names, such as certificates).
pub async fn spawn_steer_logging_in(
    listen: &str,
    prepare: impl FnOnce(&std::path::Path),
    proxy: &str,
    body: &str,
    filter: &str,
) -> Proc {
    let (dir, path) = config_dir(&with_listen_full(listen, proxy, body));
    prepare(dir.path());
    let launch = Launch {
        rust_log: Some(filter.to_owned()),
        ..Launch::default()
    };
    spawn_off_runtime(Some(dir), path, launch).await
}

/// Runs `steer run --config PATH ARGS...` and waits for its start line.
pub async fn spawn_steer_at(dir: Option<tempfile::TempDir>, path: PathBuf, args: &[&str]) -> Proc {
    let launch = Launch {
        args: args.iter().map(|a| a.to_string()).collect(),
        ..Launch::default()
    };
    spawn_off_runtime(dir, path, launch).await
}

/// As `spawn_steer`, with `[proxy]` lines and the process's open-file
/// limit set to `fds` (soft and hard).
pub async fn spawn_steer_with_fd_limit(proxy: &str, body: &str, fds: u32) -> Proc {
    spawn_steer_with_ulimit(proxy, body, &format!("-n {fds}")).await
}

/// As `spawn_steer`, with `[proxy]` lines and `ulimit ARGS` applied to
/// the process (for example `-Sn 128`: the soft open-files limit).
pub async fn spawn_steer_with_ulimit(proxy: &str, body: &str, args: &str) -> Proc {
    let launch = Launch {
        ulimit: Some(args.to_owned()),
        ..Launch::default()
    };
    spawn_steer_launched(proxy, body, launch).await
}

/// As `spawn_steer`, with `[proxy]` lines, started as `launch` says.
async fn spawn_steer_launched(proxy: &str, body: &str, launch: Launch) -> Proc {
    let (dir, path) = config_dir(&with_listen_proxy(proxy, body));
    spawn_off_runtime(Some(dir), path, launch).await
}

/// A temporary directory holding `routes.toml` with `contents`.
fn config_dir(contents: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.toml");
    std::fs::write(&path, contents).unwrap();
    (dir, path)
}

/// How a `steer run` child is started, beyond its config.
#[derive(Default)]
struct Launch {
    /// More arguments after `--config PATH`.
    args: Vec<String>,
    /// `ulimit` arguments applied to the process.
    ulimit: Option<String>,
    /// Its `RUST_LOG`.
    rust_log: Option<String>,
}

/// Starts steer off the test's runtime (which must keep serving the test
/// upstreams that the new steer probes meanwhile).
async fn spawn_off_runtime(dir: Option<tempfile::TempDir>, path: PathBuf, launch: Launch) -> Proc {
    tokio::task::spawn_blocking(move || spawn_blocking_steer(dir, path, launch))
        .await
        .unwrap()
}

/// The soft and hard open-files limits of process `pid`.
pub fn open_files_limits(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let mut numbers = line.split_whitespace().filter_map(|w| w.parse().ok());
    (numbers.next().unwrap(), numbers.next().unwrap())
}

/// How many file descriptors process `pid` has open.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn spawn_blocking_steer(dir: Option<tempfile::TempDir>, path: PathBuf, launch: Launch) -> Proc {
    let mut command = match launch.ulimit {
        // `exec` keeps the pid: the limit applies to steer itself.
        Some(args) => {
            let mut c = Command::new("sh");
            c.args(["-c", &format!("ulimit {args} && exec \"$0\" \"$@\"")])
                .arg(env!("CARGO_BIN_EXE_steer"));
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_steer")),
    };
    if let Some(filter) = launch.rust_log {
        command.env("RUST_LOG", filter);
    }
    let mut child = command
        .args(["run", "--config"])
        .arg(&path)
        .arg("--log-format=json")
        .args(&launch.args)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let mut start = Vec::new();
    while !start
        .last()
        .is_some_and(|l: &String| l.contains("steer started"))
    {
        start.push(lines.next().expect("steer exited before starting").unwrap());
    }
    // Keep draining stderr so the child never blocks on a full pipe; the
    // lines stay readable through `logs`.
    let (tx, logs) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let v: serde_json::Value = serde_json::from_str(start.last().unwrap()).unwrap();
    let addr = |k: &str| v[k].as_str().unwrap().to_owned();
    Proc {
        http: format!("http://{}", addr("http")),
        admin: format!("http://{}", addr("admin")),
        child,
        _dir: dir,
        start,
        logs,
    }
}

pub fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

/// Reads from `s` until `count` complete responses with a `Content-Length`
/// body have arrived (or 5 s pass); returns their status codes.
pub async fn read_responses<S>(s: &mut S, count: usize) -> Vec<u16>
where
    S: tokio::io::AsyncRead + Unpin,
{
    let mut buf = Vec::new();
    let mut statuses = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while statuses.len() < count && std::time::Instant::now() < deadline {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            tokio::io::AsyncReadExt::read(s, &mut chunk),
        )
        .await
        .expect("responses in time")
        .unwrap();
        assert!(n > 0, "closed after {statuses:?}");
        buf.extend_from_slice(&chunk[..n]);
        // Take every complete response off the front of the buffer.
        while let Some(len) = answer_len(&buf) {
            statuses.push(status_code(&buf));
            buf.drain(..len);
        }
    }
    statuses
}

/// The length of the whole answer (head and `Content-Length` body) at the
/// start of `buf`, once all of it is there.
fn answer_len(buf: &[u8]) -> Option<usize> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let body: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    (buf.len() >= end + 4 + body).then_some(end + 4 + body)
}

fn status_code(answer: &[u8]) -> u16 {
    let code = answer.get(9..12).and_then(|c| std::str::from_utf8(c).ok());
    code.and_then(|c| c.parse().ok()).unwrap_or(0)
}

/// Reads one whole answer (head and `Content-Length` body) from `s`,
/// within 5 s; returns it in lower case.
pub async fn one_answer<S>(s: &mut S) -> String
where
    S: tokio::io::AsyncRead + Unpin,
{
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while answer_len(&buf).is_none() {
        let read = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::io::AsyncReadExt::read(s, &mut chunk),
        );
        let n = read.await.expect("an answer in time").unwrap();
        assert!(n > 0, "closed before a whole answer: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&buf).to_ascii_lowercase()
}

/// Reads from `s` until a whole request head has arrived; false when the
/// peer closed (or failed) first, or 5 s passed.
pub async fn read_head<S>(s: &mut S) -> bool
where
    S: tokio::io::AsyncRead + Unpin,
{
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let read = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::io::AsyncReadExt::read(s, &mut chunk),
        );
        match read.await {
            Ok(Ok(n)) if n > 0 => head.extend_from_slice(&chunk[..n]),
            _ => return false,
        }
    }
    true
}

/// An upstream that, on every connection, reads one request head, writes
/// `answer` (whole or not) and closes.
pub async fn answering_upstream(answer: &'static [u8]) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut up, _)) = listener.accept().await {
            tokio::spawn(async move {
                if read_head(&mut up).await {
                    let _ = tokio::io::AsyncWriteExt::write_all(&mut up, answer).await;
                }
            });
        }
    });
    addr
}

/// An upstream that reads every connection to its end and never answers.
pub async fn swallowing_upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut up, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut up, &mut tokio::io::sink()).await;
            });
        }
    });
    addr
}

/// An upstream that reads one request head, writes `answer` (maybe only
/// part of one), then holds the connection; the receiver resolves when
/// steer drops that connection.
pub async fn holding_upstream(
    answer: &'static [u8],
) -> (SocketAddr, tokio::sync::oneshot::Receiver<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (dropped_tx, dropped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let (mut up, _) = listener.accept().await.unwrap();
        assert!(read_head(&mut up).await, "a request head");
        up.write_all(answer).await.unwrap();
        // Returns when steer drops the upstream connection.
        let _ = up.read(&mut [0u8; 1024]).await;
        let _ = dropped_tx.send(());
    });
    (addr, dropped)
}

/// Waits (1 s at most) for `holding_upstream`'s connection to be dropped:
/// the tests' `request_timeout` (2 s) must not be what ends it.
pub async fn upstream_dropped(dropped: tokio::sync::oneshot::Receiver<()>) {
    tokio::time::timeout(Duration::from_secs(1), dropped)
        .await
        .expect("steer must drop the upstream connection of a client that left")
        .unwrap();
}

/// Waits until the first upstream of `/upstreams` has `n` requests in
/// flight.
pub async fn in_flight_becomes(admin: &str, n: u64, what: &str) {
    eventually(what, || async {
        let v = call(request("GET", &format!("{admin}/upstreams")))
            .await
            .json();
        v["upstreams"][0]["in_flight"] == n
    })
    .await;
}

/// An HTTP/1.1 upstream that answers each request head (up to its blank
/// line, as text) with `answer(head)`: the bytes to write, and whether to
/// close the connection after them. Bodies are not read as such.
pub async fn head_answering_upstream(answer: fn(&str) -> (Vec<u8>, bool)) -> SocketAddr {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        buf.drain(..end + 4);
                        let (bytes, close) = answer(&head);
                        if s.write_all(&bytes).await.is_err() || close {
                            return;
                        }
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    addr
}

/// An HTTP/2 frame (RFC 9113 §4.1) of `kind` with `flags` on `stream`.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}
