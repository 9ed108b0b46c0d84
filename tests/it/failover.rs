//! Failover that loses nothing: the process behind the serving upstream is
//! killed or stopped under a mixed GET/POST load with a healthy fallback,
//! and every request that upstream had not received goes elsewhere.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use http_body_util::Full;

use crate::support::*;

/// `steer demo-upstream NAME 127.0.0.1:0` in a process of its own.
struct UpstreamProc {
    child: Child,
    addr: std::net::SocketAddr,
}

impl Drop for UpstreamProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn upstream_proc(name: &str) -> UpstreamProc {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_steer"))
        .args(["demo-upstream", name, "127.0.0.1:0"])
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    UpstreamProc {
        addr: line.trim().parse().unwrap(),
        child,
    }
}

/// Waits for the process to exit, at most 10 s.
fn reap(child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the upstream did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
}

/// One keep-alive client sending `method` in a loop until `stop`; POSTs
/// carry a body that the upstream echoes.
async fn load(url: String, method: &'static str, tally: Arc<Tally>, stop: Arc<AtomicBool>) {
    let client = http1();
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        // GETs without a body, as browsers send them.
        let body = if method == "GET" {
            String::new()
        } else {
            format!("token request {i}")
        };
        let req = request(method, &url)
            .body(Full::new(Bytes::from(body.clone())))
            .unwrap();
        let ok = match tokio::time::timeout(Duration::from_secs(5), client.request(req)).await {
            Ok(Ok(resp)) => {
                let status = resp.status();
                let got = http_body_util::BodyExt::collect(resp.into_body())
                    .await
                    .map(|b| b.to_bytes());
                let good = status == StatusCode::OK
                    && got
                        .as_ref()
                        .is_ok_and(|b| method == "GET" || b == body.as_bytes());
                if !good {
                    eprintln!("failed: {method} {status} {got:?}");
                }
                good
            }
            other => {
                eprintln!("failed: {method} {other:?}");
                false
            }
        };
        let counter = if ok { &tally.ok } else { &tally.failed };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Blue (its own process, `protocol`) behind steer with green as the
/// fallback; a load of 4 GET and 4 POST clients; `stop_blue` ends blue
/// half a second in. Returns (GET tally, POST tally, steer's logs).
async fn failover(
    protocol: &str,
    stop_blue: impl FnOnce(&mut Child),
) -> (Arc<Tally>, Arc<Tally>, Vec<String>) {
    let mut blue = upstream_proc("blue");
    let green = upstream("green").await;
    let body = format!(
        "{}{}[[routes]]\nname = \"r\"\nupstream = \"blue\"\nfallback = [\"green\"]\n",
        upstream_toml("blue", blue.addr, protocol),
        upstream_toml("green", green.addr(), protocol)
    );
    let steer = spawn_steer(&body).await;
    let ready = format!("{}/ready", steer.admin);
    eventually("ready", || async { get(&ready).await.0 == StatusCode::OK }).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (gets, posts) = (Arc::new(Tally::default()), Arc::new(Tally::default()));
    let mut clients = Vec::new();
    for (method, tally) in [("GET", &gets), ("POST", &posts)] {
        for _ in 0..4 {
            let url = format!("{}/demo/echo", steer.http);
            clients.push(tokio::spawn(load(url, method, tally.clone(), stop.clone())));
        }
    }
    eventually("load on blue", || async {
        gets.ok.load(Ordering::Relaxed) > 50 && posts.ok.load(Ordering::Relaxed) > 50
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop_blue(&mut blue.child);
    let at_stop = green.requests();
    eventually("green takes the load", || async {
        green.requests() > at_stop + 200
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let logs: Vec<String> = steer.logs.try_iter().collect();
    (gets, posts, logs)
}

/// The counts, and steer's log lines about failures (for a failed
/// assertion's message).
fn summary(gets: &Tally, posts: &Tally, logs: &[String]) -> String {
    let failures: Vec<&str> = logs
        .iter()
        .filter(|l| l.contains("failed") || l.contains("unhealthy"))
        .map(String::as_str)
        .collect();
    format!(
        "GET {} ok / {} failed, POST {} ok / {} failed\nsteer said:\n{}",
        gets.ok.load(Ordering::Relaxed),
        gets.failed.load(Ordering::Relaxed),
        posts.ok.load(Ordering::Relaxed),
        posts.failed.load(Ordering::Relaxed),
        failures.join("\n")
    )
}

#[tokio::test]
async fn a_killed_upstream_loses_no_get_and_only_posts_it_had_received() {
    for protocol in ["http1", "h2c"] {
        let (gets, posts, logs) = failover(protocol, |blue| {
            signal(blue, "-KILL");
            reap(blue);
        })
        .await;
        let said = summary(&gets, &posts, &logs);
        assert_eq!(gets.failed.load(Ordering::Relaxed), 0, "{protocol}: {said}");
        // At most the one POST each load connection had in flight at the
        // instant of the kill.
        assert!(
            posts.failed.load(Ordering::Relaxed) <= 4,
            "{protocol}: {said}"
        );
        assert!(
            logs.iter()
                .any(|l| l.contains("endpoint unhealthy") && l.contains("blue")),
            "{protocol}: the ejection is logged"
        );
    }
}

#[tokio::test]
async fn a_graceful_stop_without_drain_loses_nothing() {
    for protocol in ["h2c", "http1"] {
        let (gets, posts, logs) = failover(protocol, |blue| {
            signal(blue, "-TERM");
            reap(blue);
        })
        .await;
        let said = summary(&gets, &posts, &logs);
        assert_eq!(gets.failed.load(Ordering::Relaxed), 0, "{protocol}: {said}");
        assert_eq!(
            posts.failed.load(Ordering::Relaxed),
            0,
            "{protocol}: {said}"
        );
    }
}

#[tokio::test]
async fn a_refused_stream_goes_to_the_fallback_whatever_its_method() {
    let busy = crate::h2_upstream::refusing().await;
    let green = upstream("green").await;
    let body = format!(
        "[upstreams.busy]\nendpoints = [\"{}\"]\nprotocol = \"h2c\"\nhealth = false\n\n{}\
         [[routes]]\nname = \"r\"\nupstream = \"busy\"\nfallback = [\"green\"]\n",
        busy.addr,
        upstream_toml("green", green.addr(), "http1")
    );
    let steer = Steer::start_ready(&body).await;
    // Eight: every one needs a retry, and the retry budget's floor is 10 a
    // second.
    for i in 0..8 {
        let sent = format!("token request {i}");
        let a = send(
            &http1(),
            request("POST", &steer.url("/demo/echo"))
                .body(Full::new(Bytes::from(sent.clone())))
                .unwrap(),
        )
        .await;
        assert_eq!(a.status, StatusCode::OK, "{i}: {}", a.text());
        assert_eq!(a.text(), sent);
    }
    assert!(busy.seen.requests.load(Ordering::Relaxed) >= 8);
    assert_eq!(green.requests(), 8);
    // A refused stream is no fault of the endpoint.
    assert_eq!(states(&steer.admin(), "busy").await, ["healthy"]);
}

/// How an HTTP/1.1 upstream ends a kept-alive connection as the next
/// request reaches it.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Close {
    /// Closes without reading it (Go's server closing an idle connection
    /// at shutdown): its kernel resets the connection.
    Unread,
    /// Shuts its side down, then closes unread (hyper's server): a FIN,
    /// then the reset.
    ShutdownUnread,
    /// Reads the whole request, then closes: it may have acted on it.
    AfterReading,
    /// Reads the first 4 KiB of a larger request (head and the start of
    /// the body), then closes with the rest unread: it may have acted on
    /// the head, so the reset proves nothing.
    ReadsPart,
}

/// Reads until what was read ends with `end`; false if the peer closed
/// first.
async fn read_to(s: &mut tokio::net::TcpStream, end: &[u8]) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.ends_with(end) {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    true
}

/// Answers a connection's first request with 200 `ok` and ends the
/// connection as `close` says when the next one arrives.
async fn closing_upstream(close: Close) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                if !read_to(&mut s, b"\r\n\r\n").await {
                    return;
                }
                let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                if s.write_all(ok).await.is_err() || s.readable().await.is_err() {
                    return;
                }
                match close {
                    Close::Unread => {}
                    Close::ShutdownUnread => {
                        let _ = s.shutdown().await;
                        // The FIN goes before the reset.
                        tokio::task::yield_now().await;
                    }
                    Close::ReadsPart => {
                        let mut part = vec![0u8; 4096];
                        let _ = s.read_exact(&mut part).await;
                    }
                    Close::AfterReading => {
                        read_to(&mut s, b"token request").await;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_post_on_a_connection_the_upstream_closes_unread_goes_to_the_fallback() {
    use Close::*;
    for close in [Unread, ShutdownUnread, AfterReading, ReadsPart] {
        let blue = closing_upstream(close).await;
        let green = upstream("green").await;
        let body = format!(
            "{}{}[[routes]]\nname = \"r\"\nupstream = \"blue\"\nfallback = [\"green\"]\n",
            upstream_toml("blue", blue, "http1").replace("protocol", "health = false\nprotocol"),
            upstream_toml("green", green.addr(), "http1")
        );
        let steer = Steer::start_ready(&body).await;
        let client = http1();
        // Leaves an idle connection to blue in steer's pool.
        let first = send(
            &client,
            request("GET", &steer.url("/demo/echo"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
        assert_eq!(
            (first.status, first.text()),
            (StatusCode::OK, "ok".to_owned()),
            "{close:?}"
        );
        let sent = if close == ReadsPart {
            format!("{}token request", "x".repeat(6 * 1024))
        } else {
            "token request".to_owned()
        };
        let token = send(
            &client,
            request("POST", &steer.url("/demo/echo"))
                .body(Full::new(Bytes::from(sent.clone())))
                .unwrap(),
        )
        .await;
        if matches!(close, AfterReading | ReadsPart) {
            // RFC 9112 §9.3.1: a proxy does not send a POST again that the
            // upstream may have acted on.
            assert_eq!(token.status, StatusCode::BAD_GATEWAY, "{close:?}");
            assert_eq!(green.requests(), 0, "{close:?}");
        } else {
            assert_eq!(token.status, StatusCode::OK, "{close:?}: {}", token.text());
            assert_eq!(token.text(), sent, "{close:?}");
            assert_eq!(green.requests(), 1, "{close:?}");
        }
    }
}

/// An h2c upstream that takes one stream at a time
/// (`SETTINGS_MAX_CONCURRENT_STREAMS` 1), counts the streams it accepts,
/// answers nothing, and drops its connections when `drop_now` is notified.
async fn one_stream_upstream(
    drop_now: Arc<tokio::sync::Notify>,
    taken: Arc<AtomicU64>,
) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let drop_now = drop_now.clone();
            let taken = taken.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::Builder::new()
                    .max_concurrent_streams(1)
                    .handshake::<_, Bytes>(tcp)
                    .await
                else {
                    return;
                };
                let mut held = Vec::new();
                loop {
                    tokio::select! {
                        accepted = conn.accept() => match accepted {
                            Some(Ok(stream)) => {
                                taken.fetch_add(1, Ordering::Relaxed);
                                held.push(stream);
                            }
                            _ => return,
                        },
                        () = drop_now.notified() => return,
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_request_whose_http2_stream_never_opened_goes_to_the_fallback() {
    let drop_now = Arc::new(tokio::sync::Notify::new());
    let accepted = Arc::new(AtomicU64::new(0));
    let blue = one_stream_upstream(drop_now.clone(), accepted.clone()).await;
    let green = upstream("green").await;
    let body = format!(
        "{}{}[[routes]]\nname = \"r\"\nupstream = \"blue\"\nfallback = [\"green\"]\n",
        upstream_toml("blue", blue, "h2c").replace("protocol", "health = false\nprotocol"),
        upstream_toml("green", green.addr(), "http1")
    );
    let steer = Steer::start_ready(&body).await;
    // GETs take the only stream of each connection steer opens to blue (16,
    // its most per endpoint), one after another, and get no answer.
    let mut firsts = Vec::new();
    for n in 1..=16 {
        let get = request("GET", &steer.url("/demo/echo"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        firsts.push(tokio::spawn(async move { send(&http1(), get).await }));
        eventually("blue took the stream", || async {
            accepted.load(Ordering::Relaxed) == n
        })
        .await;
    }
    let admin = steer.admin();
    let in_flight = || async {
        let v = call(request("GET", &format!("{admin}/upstreams")))
            .await
            .json();
        v["upstreams"][0]["in_flight"].as_u64().unwrap_or(0)
    };
    eventually("every connection's stream is taken", || async {
        in_flight().await == 16
    })
    .await;
    // The token request waits in steer for a stream of its own.
    let post = request("POST", &steer.url("/demo/echo"))
        .body(Full::new(Bytes::from_static(b"token request")))
        .unwrap();
    let token = tokio::spawn(async move { send(&http1(), post).await });
    eventually("all are in flight", || async { in_flight().await == 17 }).await;
    drop_now.notify_waiters();
    let token = token.await.unwrap();
    // Its stream never opened: nothing of it reached blue.
    assert_eq!(token.status, StatusCode::OK, "{}", token.text());
    assert_eq!(token.text(), "token request");
    // The GETs were sent and broke: being idempotent, they go again,
    // within the retry budget (at least 10 a second).
    let mut again = 0;
    for first in firsts {
        let status = first.await.unwrap().status;
        assert!(matches!(status.as_u16(), 200 | 502), "{status}");
        again += usize::from(status == StatusCode::OK);
    }
    assert!(again >= 10, "{again} of 16 went again");
}

/// A TCP relay in front of `to`. `go_silent` makes every connection it
/// relays now drop what either side sends from then on, without a FIN or
/// a reset: the peer of a connection through a NAT or load balancer that
/// forgot it, or on a node that died. `close` ends them (a FIN both
/// ways). Connections made later are relayed.
struct Relay {
    addr: std::net::SocketAddr,
    /// Connections born before the first number are silent, before the
    /// second closed.
    ends: tokio::sync::watch::Sender<(u64, u64)>,
    /// Bytes a silent connection dropped.
    dropped: Arc<AtomicU64>,
}

impl Relay {
    async fn start(to: std::net::SocketAddr) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (ends, _) = tokio::sync::watch::channel((0, 0));
        let dropped = Arc::new(AtomicU64::new(0));
        let (watch, counter) = (ends.clone(), dropped.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(to).await else {
                    continue;
                };
                let born = watch.borrow().0.max(watch.borrow().1);
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                for (from, to) in [(cr, sw), (sr, cw)] {
                    let half = RelayHalf {
                        ends: watch.subscribe(),
                        born,
                        dropped: counter.clone(),
                    };
                    tokio::spawn(half.run(from, to));
                }
            }
        });
        Relay {
            addr,
            ends,
            dropped,
        }
    }

    fn go_silent(&self) {
        self.ends.send_modify(|(silent, _)| *silent += 1);
    }

    fn close(&self) {
        self.ends.send_modify(|(_, closed)| *closed += 1);
    }
}

struct RelayHalf {
    ends: tokio::sync::watch::Receiver<(u64, u64)>,
    born: u64,
    dropped: Arc<AtomicU64>,
}

impl RelayHalf {
    async fn run(
        mut self,
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
    ) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = tokio::select! {
                read = from.read(&mut buf) => match read {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                },
                changed = self.ends.changed() => {
                    if changed.is_err() || self.ends.borrow().1 > self.born {
                        return;
                    }
                    continue;
                }
            };
            if self.ends.borrow().0 > self.born {
                self.dropped.fetch_add(n as u64, Ordering::Relaxed);
                continue;
            }
            if to.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    }
}

/// steer's HTTP/2 connection to an endpoint went silent while idle (the
/// endpoint still takes new connections): the next request, a POST that
/// cannot be sent twice, must not wait on it until `request_timeout`.
/// A quiet connection whose peer answers is kept.
#[tokio::test]
async fn a_request_does_not_wait_on_an_upstream_connection_that_went_silent() {
    let up = crate::h2_upstream::start(b"ok").await;
    let relay = Relay::start(up.addr).await;
    let body = one_route("blue", relay.addr, "h2c");
    // `request_timeout` 2 s, `connect_timeout` 500 ms (`with_listen_full`).
    let steer = Steer::start(&body).await;
    let first = post_to(&steer, "first").await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text());
    // Quiet past the point steer checks a connection before using it: a
    // peer that answers keeps it.
    quiet_past_the_check().await;
    let second = post_to(&steer, "second").await;
    assert_eq!(second.status, StatusCode::OK, "{}", second.text());
    assert_eq!(up.seen.connections.load(Ordering::Relaxed), 1);
    relay.go_silent();
    quiet_past_the_check().await;
    let started = Instant::now();
    let third = post_to(&steer, "third").await;
    let took = started.elapsed();
    assert_eq!(third.status, StatusCode::OK, "{}", third.text());
    // The check's PING had `connect_timeout` for its PONG.
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    assert_eq!(up.seen.connections.load(Ordering::Relaxed), 2);
    assert_eq!(up.seen.requests.load(Ordering::Relaxed), 3);
}

/// How long steer's HTTP/2 upstream connection may hear nothing before a
/// request checks it with a PING (`client::h2conn::QUIET`).
const QUIET: Duration = Duration::from_secs(5);

/// Lets steer's upstream connections stay quiet until the next request
/// checks them: the time passing is the condition, nothing to poll for.
async fn quiet_past_the_check() {
    tokio::time::sleep(QUIET + Duration::from_millis(500)).await;
}

/// Two connections to the endpoint went silent while quiet: the request
/// finds the first one silent and must not then try the second (and fail
/// for want of another endpoint), but go out on a new connection.
#[tokio::test]
async fn a_request_does_not_try_one_silent_upstream_connection_after_another() {
    let up = crate::h2_upstream::narrow_slow(b"ok").await;
    let relay = Relay::start(up.addr).await;
    let body = one_route("blue", relay.addr, "h2c");
    let steer = Steer::start(&body).await;
    // One request first: steer learns the upstream's limit of 8 streams.
    let first = post_to(&steer, "first").await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text());
    // More requests at once than one connection takes: two connections.
    all_posts_answered(&steer, crate::h2_upstream::NARROW_STREAMS as usize + 4).await;
    assert_eq!(up.seen.connections.load(Ordering::Relaxed), 2);
    relay.go_silent();
    quiet_past_the_check().await;
    let a = post_to(&steer, "after").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(up.seen.connections.load(Ordering::Relaxed), 3);
}

/// The upstream ends a quiet connection while a request waits for the
/// PONG of its check: the request goes on at once, not at the end of
/// `connect_timeout`.
#[tokio::test]
async fn a_request_waiting_on_a_check_goes_on_when_the_connection_ends() {
    let up = crate::h2_upstream::start(b"ok").await;
    let relay = Relay::start(up.addr).await;
    let body = one_route("blue", relay.addr, "h2c");
    let steer = Steer::start_with(
        "connect_timeout = \"4s\"\nrequest_timeout = \"8s\"\n",
        &body,
    )
    .await;
    assert_eq!(post_to(&steer, "first").await.status, StatusCode::OK);
    relay.go_silent();
    quiet_past_the_check().await;
    let started = Instant::now();
    let req = post_request(&steer, "second");
    let second = tokio::spawn(async move { send(&http1(), req).await });
    // The check's PING reached the silent connection; then it ends.
    eventually("the check's PING", || async {
        relay.dropped.load(Ordering::Relaxed) > 0
    })
    .await;
    relay.close();
    let second = second.await.unwrap();
    assert_eq!(second.status, StatusCode::OK, "{}", second.text());
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert_eq!(up.seen.connections.load(Ordering::Relaxed), 2);
}

async fn post_to(steer: &Steer, what: &'static str) -> Answer {
    send(&http1(), post_request(steer, what)).await
}

/// A POST to `/token`, which steer may not send twice.
fn post_request(steer: &Steer, what: &'static str) -> http::Request<Full<Bytes>> {
    request("POST", &steer.url("/token"))
        .body(Full::new(Bytes::from_static(what.as_bytes())))
        .unwrap()
}

/// An HTTP/2 upstream, in raw frames, that goes away under requests: on
/// each connection it waits for `want` streams (or 300 ms after the
/// first), answers the first, and sends GOAWAY(NO_ERROR) with that
/// stream as the last it processed, as a server that rotates or closes
/// its connections does when requests cross its GOAWAY. The others it
/// never processes (RFC 9113 §6.8). Counts connections and answers.
/// With `first_only`, only its first connection goes away so; the others
/// answer every stream as it comes.
async fn going_away_upstream(
    want: usize,
    first_only: bool,
) -> (std::net::SocketAddr, Arc<AtomicU64>, Arc<AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (connections, answered) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (c, a) = (connections.clone(), answered.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let n = c.fetch_add(1, Ordering::Relaxed);
            let want = if n == 0 || !first_only { want } else { 0 };
            tokio::spawn(go_away_after_one(tcp, want, a.clone()));
        }
    });
    (addr, connections, answered)
}

async fn go_away_after_one(mut tcp: tokio::net::TcpStream, want: usize, answered: Arc<AtomicU64>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    if tcp.write_all(&frame(0x4, 0, 0, &[])).await.is_err() {
        return;
    }
    let mut preface = [0u8; 24];
    if tcp.read_exact(&mut preface).await.is_err() {
        return;
    }
    let mut streams: Vec<u32> = Vec::new();
    let mut first_at = None;
    // `want` 0: every stream is answered as it comes, and nothing goes away.
    let all = want == 0;
    loop {
        let wait = first_at.map_or(Duration::from_secs(30), |t: Instant| {
            Duration::from_millis(300).saturating_sub(t.elapsed())
        });
        let mut head = [0u8; 9];
        match tokio::time::timeout(wait, tcp.read_exact(&mut head)).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return,
            Err(_) => break,
        }
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let mut payload = vec![0u8; len];
        if tcp.read_exact(&mut payload).await.is_err() {
            return;
        }
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        match head[3] {
            // SETTINGS (not an ACK): acknowledged.
            0x4 if head[4] & 0x1 == 0 => {
                let _ = tcp.write_all(&frame(0x4, 0x1, 0, &[])).await;
            }
            0x1 if all => {
                let mut out = frame(0x1, 0x4, stream, &[0x88]);
                out.extend(frame(0x0, 0x1, stream, b"ok"));
                if tcp.write_all(&out).await.is_err() {
                    return;
                }
                answered.fetch_add(1, Ordering::Relaxed);
            }
            0x1 if !streams.contains(&stream) => {
                streams.push(stream);
                first_at.get_or_insert_with(Instant::now);
            }
            _ => {}
        }
        if !all && streams.len() >= want {
            break;
        }
    }
    let first = streams[0];
    // `:status: 200` (static table index 8), "ok", then GOAWAY.
    let mut out = frame(0x1, 0x4, first, &[0x88]);
    out.extend(frame(0x0, 0x1, first, b"ok"));
    let mut goaway = first.to_be_bytes().to_vec();
    goaway.extend_from_slice(&0u32.to_be_bytes());
    out.extend(frame(0x7, 0, 0, &goaway));
    if tcp.write_all(&out).await.is_ok() {
        answered.fetch_add(1, Ordering::Relaxed);
    }
    // Open a while, reading, as a server finishing its processed streams.
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while tcp.read(&mut sink).await.is_ok_and(|n| n > 0) {}
    })
    .await;
}

/// One HTTP/2 endpoint (a Kubernetes Service address) that goes away
/// under requests: the streams it never processed (above its GOAWAY's
/// last stream) go out again on a new connection to it, POSTs with
/// bodies included, though there is no other endpoint to try.
#[tokio::test]
async fn requests_above_an_upstream_goaway_go_again_on_a_new_connection() {
    let (up, connections, answered) = going_away_upstream(3, false).await;
    all_posts_answered(&Steer::start(&one_route("blue", up, "h2c")).await, 3).await;
    // All three met the first connection; each round answers one.
    assert_eq!(answered.load(Ordering::Relaxed), 3);
    assert_eq!(connections.load(Ordering::Relaxed), 3);
}

/// Many requests cross one GOAWAY at once (a server rotating a busy
/// connection): each goes again on the new connection, and none is
/// refused for want of retry budget (20 % of a second's requests, at
/// least 10), which guards upstreams that fail what they get, not these.
#[tokio::test]
async fn many_requests_above_one_goaway_all_go_again() {
    let (up, connections, answered) = going_away_upstream(16, true).await;
    all_posts_answered(&Steer::start(&one_route("blue", up, "h2c")).await, 16).await;
    assert_eq!(answered.load(Ordering::Relaxed), 16);
    assert_eq!(connections.load(Ordering::Relaxed), 2);
}

/// `n` POSTs at once through `steer`: each gets 200.
async fn all_posts_answered(steer: &Steer, n: usize) {
    let posts: Vec<_> = (0..n)
        .map(|i| {
            let req = request("POST", &steer.url("/token"))
                .body(Full::new(Bytes::from(format!("token request {i}"))))
                .unwrap();
            tokio::spawn(async move { send(&http1(), req).await })
        })
        .collect();
    for post in posts {
        let a = post.await.unwrap();
        assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    }
}
