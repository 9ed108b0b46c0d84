//! Edge protocol correctness: what steer forwards and refuses, checked
//! with the bytes real clients and upstreams send (HTTP/1.1 on raw
//! sockets, HTTP/2 from the `h2` crate and tonic).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::h2_upstream;
use crate::support::*;

/// Sends `bytes` and reads what comes back until the server closes or
/// `wait` passes.
async fn exchange(addr: SocketAddr, bytes: &[u8], wait: Duration) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn complete_http2_upstream_answers_are_never_reset() {
    let up = h2_upstream::start(b"0123456789").await;
    let steer = Steer::start_ready(&one_route("api", up.addr, "h2c")).await;
    // HTTP/1.1 clients (hyper's server drops a Content-Length body once its
    // bytes are out) and HTTP/2 clients alike.
    for client in [http1(), h2c()] {
        for _ in 0..250 {
            let a = send(
                &client,
                request("GET", &steer.url("/x"))
                    .body(Default::default())
                    .unwrap(),
            )
            .await;
            assert_eq!(a.status, StatusCode::OK);
            assert_eq!(a.body, "0123456789");
        }
    }
    eventually("every stream ended", || async {
        metric(&steer.admin(), "steer_endpoint_in_flight{").await == 0.0
            && up.seen.requests.load(Ordering::Relaxed) == 500
    })
    .await;
    assert_eq!(
        up.seen.resets.load(Ordering::Relaxed),
        0,
        "RST_STREAM frames"
    );
    assert_eq!(up.seen.connections.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_client_that_leaves_early_resets_its_upstream_stream_and_it_is_counted() {
    // A long answer: the client reads the head, then goes away.
    let blue = upstream("blue").await;
    let steer = Steer::start_ready(&one_route("blue", blue.addr(), "h2c")).await;
    let mut s = TcpStream::connect(steer.addr()).await.unwrap();
    s.write_all(b"GET /demo/bytes?n=50000000 HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 64];
    s.read_exact(&mut head).await.unwrap();
    drop(s);
    let admin = steer.admin();
    eventually("the reset is counted", || async {
        metric(
            &admin,
            "steer_upstream_stream_resets_total{upstream=\"blue\"}",
        )
        .await
            == 1.0
    })
    .await;
}

#[tokio::test]
async fn cookie_crumbs_from_http2_reach_an_http1_upstream_as_one_line() {
    let blue = upstream("blue").await;
    let steer = Steer::start_ready(&one_route("blue", blue.addr(), "http1")).await;
    let tcp = TcpStream::connect(steer.addr()).await.unwrap();
    let (mut send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(format!("http://{}/what", steer.addr()))
        .header("cookie", "session=abc")
        .header("cookie", "csrf=def")
        .header("cookie", "lang=en")
        .body(())
        .unwrap();
    let (resp, _) = send.send_request(req, true).unwrap();
    let mut body = resp.await.unwrap().into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        bytes.extend_from_slice(&chunk.unwrap());
    }
    let seen: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(
        seen["headers"]["cookie"],
        serde_json::json!(["session=abc; csrf=def; lang=en"])
    );
}

/// A request head in HEADERS and CONTINUATION frames, written by hand so
/// that the split does not depend on a client's encoder or on the frame
/// size steer advertises (RFC 9113 §6.10): one split at a field's end, one
/// inside a field. steer's copy of h2 keeps the block in a box of its own
/// until it ends (`vendor/h2/STEER.md`, change 9).
#[tokio::test]
async fn a_head_split_into_continuation_frames_reaches_the_upstream_whole() {
    let blue = upstream("blue").await;
    let steer = Steer::start_ready(&one_route("blue", blue.addr(), "http1")).await;
    let crumbs: Vec<String> = (0..3u8)
        .map(|i| format!("c{i}={}", char::from(b'a' + i).to_string().repeat(90)))
        .collect();
    let mut s = TcpStream::connect(steer.addr()).await.unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[]));
    s.write_all(&out).await.unwrap();
    // Twice on one connection: the first head has `:authority` added to
    // the decoder's table (entry 62), the second names that entry, so the
    // table must have outlived the first split block.
    for (stream, authority) in [(1u32, Some("steer.test")), (3, None)] {
        let (block, field_end) = request_block(authority, "/what", &crumbs);
        s.write_all(&split_head(stream, stream, &block, field_end))
            .await
            .unwrap();
        let (head, body) = response_on(&mut s, stream).await;
        assert_eq!(head.first(), Some(&0x88), "not a 200: {head:x?}"); // :status 200
        let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            seen["headers"]["cookie"],
            serde_json::json!([crumbs.join("; ")]),
            "stream {stream}"
        );
    }

    // The same frames, but the last CONTINUATION on another stream than
    // its HEADERS: a connection error (RFC 9113 §6.10), GOAWAY
    // PROTOCOL_ERROR naming no stream as processed.
    let mut s = TcpStream::connect(steer.addr()).await.unwrap();
    let (block, field_end) = request_block(Some("steer.test"), "/what", &crumbs);
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[]));
    out.extend(split_head(1, 3, &block, field_end));
    s.write_all(&out).await.unwrap();
    let goaway = async {
        loop {
            let (kind, _, _, payload) = read_frame(&mut s).await;
            if kind == 0x7 {
                return payload;
            }
        }
    };
    let goaway = tokio::time::timeout(Duration::from_secs(5), goaway)
        .await
        .expect("a GOAWAY within 5 s");
    assert_eq!(
        goaway[..8],
        [0, 0, 0, 0, 0, 0, 0, 1],
        "not PROTOCOL_ERROR with last stream 0: {goaway:x?}"
    );
}

/// A GET's header block (HPACK, RFC 7541), every literal raw, and where
/// its pseudo-header fields end. `authority`: a value the decoder is to
/// add to its table, or `None` for the entry the last such value made.
fn request_block(authority: Option<&str>, path: &str, cookies: &[String]) -> (Vec<u8>, usize) {
    // One-octet lengths: 127 and above need a longer integer (§5.1).
    let literal = |block: &mut Vec<u8>, value: &str| {
        assert!(value.len() < 127, "{value}");
        block.push(value.len() as u8);
        block.extend_from_slice(value.as_bytes());
    };
    // :method GET, :scheme http (static table); :path not indexed.
    let mut block = vec![0x82, 0x86, 0x04];
    literal(&mut block, path);
    match authority {
        // Incremental indexing, the name from static entry 1.
        Some(value) => {
            block.push(0x41);
            literal(&mut block, value);
        }
        // The first dynamic entry: 62.
        None => block.push(0x80 | 62),
    }
    let field_end = block.len();
    for cookie in cookies {
        // Not indexed; `cookie` is static entry 32: 15 in the 4-bit
        // prefix, then 17.
        block.extend([0x0f, 0x11]);
        literal(&mut block, cookie);
    }
    (block, field_end)
}

/// `block` as HEADERS (END_STREAM) on `stream` up to `field_end`, then two
/// CONTINUATION frames splitting the rest in the middle, the last one
/// (END_HEADERS) on `last`.
fn split_head(stream: u32, last: u32, block: &[u8], field_end: usize) -> Vec<u8> {
    let (first, rest) = block.split_at(field_end);
    let (second, third) = rest.split_at(rest.len() / 2);
    let mut out = frame(0x1, 0x1, stream, first);
    out.extend(frame(0x9, 0, stream, second));
    out.extend(frame(0x9, 0x4, last, third));
    out
}

/// One frame: its type, flags, stream and payload.
async fn read_frame(s: &mut TcpStream) -> (u8, u8, u32, Vec<u8>) {
    let mut head = [0u8; 9];
    s.read_exact(&mut head).await.unwrap();
    let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).await.unwrap();
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    (head[3], head[4], stream, payload)
}

/// The answer on `stream`: its header block and its body, within 5 s
/// (steer pads nothing and sends no priority).
async fn response_on(s: &mut TcpStream, stream: u32) -> (Vec<u8>, Vec<u8>) {
    let read = async {
        let (mut head, mut body) = (Vec::new(), Vec::new());
        loop {
            let (kind, flags, on, payload) = read_frame(s).await;
            if on != stream {
                continue;
            }
            match kind {
                // The first HEADERS: trailers would come after it.
                0x1 if head.is_empty() => head = payload,
                0x0 => body.extend_from_slice(&payload),
                _ => {}
            }
            if flags & 0x1 != 0 {
                return (head, body);
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("the answer within 5 s")
}

#[tokio::test]
async fn duplicate_and_malformed_hosts_get_400() {
    let blue = upstream("blue").await;
    let steer = Steer::start_ready(&one_route("blue", blue.addr(), "http1")).await;
    let cases: [&[u8]; 7] = [
        b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a.example:80@admin.example.com\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a.example,b.example\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a.example:99999\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a.example:\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a.example]\r\n\r\n",
    ];
    for bytes in cases {
        let answer = exchange(steer.addr(), bytes, Duration::from_millis(300)).await;
        assert!(
            answer.starts_with("HTTP/1.1 400"),
            "{:?}: {answer}",
            String::from_utf8_lossy(bytes)
        );
    }
    assert_eq!(blue.requests(), 0);
    // HTTP/2: a host field that names another authority.
    let tcp = TcpStream::connect(steer.addr()).await.unwrap();
    let (mut send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("http://a.example/")
        .header("host", "b.example")
        .body(())
        .unwrap();
    let (resp, _) = send.send_request(req, true).unwrap();
    assert_eq!(resp.await.unwrap().status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn transfer_codings_other_than_chunked_get_501_and_a_close() {
    let blue = upstream("blue").await;
    let steer = Steer::start_ready(&one_route("blue", blue.addr(), "http1")).await;
    for te in ["gzip, chunked", "chunked, chunked"] {
        let req = format!(
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: {te}\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /next HTTP/1.1\r\nHost: a\r\n\r\n"
        );
        let answer = exchange(steer.addr(), req.as_bytes(), Duration::from_secs(2)).await;
        assert!(answer.starts_with("HTTP/1.1 501"), "{te}: {answer}");
        assert!(answer.contains("connection: close"), "{te}: {answer}");
        assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{te}: {answer}");
    }
    assert_eq!(blue.requests(), 0);
}

/// A raw HTTP/1.1 upstream: answers every request head with `answer(path)`
/// (without reading a request body) and treats whatever follows as the
/// next request; it answers a connection's first request at once and later
/// ones after `later` (a busy server), and closes a connection unanswered
/// when a request arrives after `per_conn` answers (the race of a
/// keep-alive timeout with a reused connection); counts connections and
/// request heads read.
async fn raw_upstream(
    answer: fn(&str) -> String,
    later: Duration,
    per_conn: usize,
) -> (SocketAddr, Arc<AtomicU64>, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = Arc::new(AtomicU64::new(0));
    let heads = Arc::new(AtomicU64::new(0));
    let (c, h) = (conns.clone(), heads.clone());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::Relaxed);
            let heads = h.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let mut answered = 0;
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        buf.drain(..end + 4);
                        heads.fetch_add(1, Ordering::Relaxed);
                        let path = head.split(' ').nth(1).unwrap_or("?").to_owned();
                        if answered == per_conn {
                            return;
                        }
                        if answered > 0 {
                            tokio::time::sleep(later).await;
                        }
                        answered += 1;
                        if s.write_all(answer(&path).as_bytes()).await.is_err() {
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
    (addr, conns, heads)
}

#[tokio::test]
async fn an_upstream_answer_framed_both_ways_arrives_whole_and_its_connection_is_not_reused() {
    let (addr, conns, _) = raw_upstream(|_| {
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\nA\r\n0123456789\r\n0\r\n\r\n".to_owned()
    }, Duration::ZERO, usize::MAX)
    .await;
    let steer = Steer::start_ready(&one_route("raw", addr, "http1")).await;
    for _ in 0..2 {
        let a = call(request("GET", &steer.url("/x"))).await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.body, "0123456789");
        assert!(a.headers.get("content-length").is_none_or(|v| v == "10"));
    }
    assert_eq!(conns.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn an_upstream_that_answers_before_the_body_is_sent_does_not_poison_the_next_client() {
    fn answer(path: &str) -> String {
        let body = format!("for:{path}");
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }
    // The smuggled request is answered 100 ms late: long enough for the
    // next client's request to go out on the same connection, if steer
    // put it back in the pool.
    let (addr, _, _) = raw_upstream(answer, Duration::from_millis(100), usize::MAX).await;
    let steer = Steer::start_ready(&one_route("raw", addr, "http1")).await;
    let smuggled = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    for i in 0..30 {
        // Client A: its head, then (once its answer is in) a body that
        // reads like a request to an upstream that did not wait for it.
        let mut a = TcpStream::connect(steer.addr()).await.unwrap();
        let head = format!(
            "POST /a{i} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            smuggled.len()
        );
        a.write_all(head.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        let mut chunk = [0u8; 1024];
        while !String::from_utf8_lossy(&got).contains(&format!("for:/a{i}")) {
            let n = a.read(&mut chunk).await.unwrap();
            assert!(n > 0);
            got.extend_from_slice(&chunk[..n]);
        }
        a.write_all(smuggled).await.unwrap();
        // Client B, on its own connection, must get its own answer.
        let b = call(request("GET", &steer.url(&format!("/b{i}")))).await;
        assert_eq!(b.text(), format!("for:/b{i}"), "round {i}");
    }
}

#[tokio::test]
async fn underscored_header_names_are_dropped_unless_allowed() {
    let blue = upstream("blue").await;
    let routes = one_route("blue", blue.addr(), "http1");
    for (proxy, kept) in [("", false), ("underscores_in_headers = true", true)] {
        let steer = Steer::start_ready_with(proxy, &routes).await;
        let a = call(
            request("GET", &steer.url("/what"))
                .header("x_forwarded_for", "6.6.6.6")
                .header("x-kept", "1"),
        )
        .await;
        let seen = a.json();
        assert_eq!(
            seen["headers"].get("x_forwarded_for").is_some(),
            kept,
            "{proxy}: {seen}"
        );
        assert_eq!(seen["headers"]["x-kept"][0], "1");
    }
}

#[tokio::test]
async fn request_trailers_lose_forwarding_and_zitadel_fields() {
    let up = h2_upstream::start(b"ok").await;
    let steer = Steer::start_ready(&one_route("api", up.addr, "h2c")).await;
    let tcp = TcpStream::connect(steer.addr()).await.unwrap();
    let (mut send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::post(format!("http://{}/x", steer.addr()))
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (resp, mut body) = send.send_request(req, false).unwrap();
    body.send_data(Bytes::from_static(b"payload"), false)
        .unwrap();
    let mut trailers = http::HeaderMap::new();
    for (k, v) in [
        ("x-forwarded-for", "6.6.6.6"),
        ("forwarded", "for=6.6.6.6"),
        ("x-zitadel-instance-host", "evil.example"),
        ("x_forwarded_host", "evil.example"),
        ("content-length", "99"),
        ("x-checksum", "abc"),
    ] {
        trailers.insert(http::HeaderName::from_static(k), v.parse().unwrap());
    }
    body.send_trailers(trailers).unwrap();
    assert_eq!(resp.await.unwrap().status(), StatusCode::OK);
    let seen = up.seen.trailers.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].len(), 1, "{:?}", seen[0]);
    assert_eq!(seen[0]["x-checksum"], "abc");
}

#[tokio::test]
async fn behind_a_proxy_that_sets_forwarded_a_forged_x_forwarded_for_decides_nothing() {
    let blue = upstream("blue").await;
    let green = upstream("green").await;
    let body = format!(
        "{}{}[[routes]]\nname = \"office\"\nclient_ips = [\"203.0.113.0/24\"]\nupstream = \"green\"\n\n[[routes]]\nname = \"rest\"\nupstream = \"blue\"\n",
        upstream_toml("blue", blue.addr(), "http1"),
        upstream_toml("green", green.addr(), "http1")
    );
    let proxy = "trusted_proxies = [\"127.0.0.1\"]\nclient_ip_header = \"forwarded\"";
    let steer = Steer::start_ready_with(proxy, &body).await;
    // The client forges X-Forwarded-For; the proxy in front (127.0.0.1)
    // sets Forwarded with the real client.
    let a = call(
        request("GET", &steer.url("/what"))
            .header("x-forwarded-for", "203.0.113.9")
            .header("forwarded", "for=198.51.100.4;proto=https"),
    )
    .await;
    assert_eq!(a.deployment(), "blue");
    let seen = a.json();
    assert_eq!(
        seen["headers"]["x-forwarded-for"][0],
        "198.51.100.4, 127.0.0.1"
    );
    assert_eq!(seen["headers"]["x-forwarded-proto"][0], "https");
    let a = call(request("GET", &steer.url("/what")).header("forwarded", "for=203.0.113.9")).await;
    assert_eq!(a.deployment(), "green");
}

#[tokio::test]
async fn an_idempotent_request_on_a_connection_closed_as_it_arrives_is_sent_on_a_new_one() {
    fn ok(_: &str) -> String {
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_owned()
    }
    let (addr, conns, heads) = raw_upstream(ok, Duration::ZERO, 1).await;
    let steer = Steer::start_ready(&one_route("raw", addr, "http1")).await;
    for i in 0..5 {
        let a = call(request("GET", &steer.url(&format!("/{i}")))).await;
        assert_eq!(a.status, StatusCode::OK, "request {i}");
        assert_eq!(a.body, "ok");
    }
    // Each request after the first went out on a pooled connection first
    // (read there and left unanswered), then on a new one.
    assert_eq!(conns.load(Ordering::Relaxed), 5);
    assert_eq!(heads.load(Ordering::Relaxed), 9);
    // A POST is not sent twice on its own (RFC 9112 §9.3.1): the first
    // try may have been acted on.
    let post = call(request("POST", &steer.url("/once"))).await;
    assert_eq!(post.status, StatusCode::BAD_GATEWAY);
}

/// An upstream that refuses `/big` as soon as it has its head (413, then
/// closes without reading the body) and answers anything else with 200.
async fn refusing_upstream() -> SocketAddr {
    head_answering_upstream(|head| {
        if head.starts_with("POST /big ") {
            let no = "HTTP/1.1 413 Content Too Large\r\nconnection: close\r\ncontent-length: 2\r\n\r\nno";
            (no.into(), true)
        } else {
            (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec(), false)
        }
    })
    .await
}

#[tokio::test]
async fn an_upstream_that_refuses_a_body_is_answered_and_the_client_keeps_its_connection() {
    let addr = refusing_upstream().await;
    let steer = Steer::start_ready(&one_route("raw", addr, "http1")).await;
    let body = vec![b'x'; 4 << 20];
    let client = TcpStream::connect(steer.addr()).await.unwrap();
    let (mut rd, mut wr) = client.into_split();
    let head = format!(
        "POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    // The client sends its whole body whatever the answer, as curl does
    // without `Expect`; steer reads what the upstream no longer takes.
    let writer = tokio::spawn(async move {
        wr.write_all(head.as_bytes()).await.unwrap();
        wr.write_all(&body).await.unwrap();
        wr
    });
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(&got).ends_with("no") {
        let n = tokio::time::timeout_at(deadline, rd.read(&mut chunk))
            .await
            .expect("an answer in time")
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&chunk[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 413"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    let mut wr = tokio::time::timeout_at(deadline, writer)
        .await
        .expect("the whole body was read")
        .unwrap();
    wr.write_all(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut next = Vec::new();
    while !String::from_utf8_lossy(&next).ends_with("ok") {
        let n = tokio::time::timeout_at(deadline, rd.read(&mut chunk))
            .await
            .expect("the next answer in time")
            .unwrap();
        assert!(n > 0, "the client's connection closed after the 413");
        next.extend_from_slice(&chunk[..n]);
    }
    assert!(
        next.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&next)
    );
}

#[tokio::test]
async fn an_http2_upstream_that_rotates_its_connections_loses_no_request() {
    // One endpoint, no fallback: a request that meets the connection after
    // its GOAWAY must go out on a new connection to the same endpoint.
    let up = h2_upstream::one_per_connection(b"ok").await;
    let steer = Steer::start_ready(&one_route("rot", up.addr, "h2c")).await;
    for i in 0..5 {
        let a = call(request("GET", &steer.url(&format!("/{i}")))).await;
        assert_eq!(
            (a.status, a.text()),
            (StatusCode::OK, "ok".to_owned()),
            "request {i}"
        );
    }
    assert_eq!(up.seen.requests.load(Ordering::Relaxed), 5);
    assert_eq!(up.seen.connections.load(Ordering::Relaxed), 5);
    let metrics = call(request("GET", &format!("{}/metrics", steer.admin()))).await;
    let metrics = metrics.text();
    let retries = metrics
        .lines()
        .find(|l| l.starts_with("steer_retries_total{upstream=\"rot\"}"));
    assert!(retries.is_none_or(|l| l.ends_with(" 0")), "{retries:?}");
}

#[tokio::test]
async fn an_upload_on_its_way_keeps_a_quiet_answer_alive() {
    // An upstream that answers its head at once and the rest once the
    // whole body is in: quiet while the client uploads.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut up, _) = listener.accept().await.unwrap();
        assert!(read_head(&mut up).await, "a request head");
        up.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            .await
            .unwrap();
        let mut body = [0u8; 5];
        if up.read_exact(&mut body).await.is_ok() {
            let _ = up.write_all(b"2\r\nok\r\n0\r\n\r\n").await;
        }
        let _ = up.read(&mut [0u8; 64]).await;
    });
    let idle = "response_idle_timeout = \"1s\"";
    let steer = Steer::start_ready_with(idle, &one_route("up", addr, "http1")).await;
    let mut s = TcpStream::connect(steer.addr()).await.unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n")
        .await
        .unwrap();
    // Paced: a byte every 400 ms, 2 s in all, is the behaviour under test.
    for byte in b"hello" {
        tokio::time::sleep(Duration::from_millis(400)).await;
        s.write_all(&[*byte]).await.unwrap();
    }
    let mut answer = Vec::new();
    while !answer.ends_with(b"0\r\n\r\n") {
        let mut chunk = [0u8; 1024];
        let read = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk));
        let n = read.await.expect("the answer in time").unwrap();
        assert!(n > 0, "cut off: {}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&chunk[..n]);
    }
    assert!(answer.windows(2).any(|w| w == b"ok"));
}

/// A new h2c (prior knowledge) connection to `addr`, driven by a task.
async fn h2c_client(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    send
}

/// Sends `body` to `path` on `send`'s connection; the answer's status and
/// body (within 10 s), its window given back as it arrives.
pub(super) async fn h2_exchange(
    send: &h2::client::SendRequest<Bytes>,
    authority: &str,
    path: &str,
    body: Bytes,
) -> (StatusCode, Bytes) {
    let exchange = async {
        let method = if body.is_empty() { "GET" } else { "POST" };
        let req = http::Request::builder()
            .method(method)
            .uri(format!("http://{authority}{path}"))
            .body(())
            .unwrap();
        let mut send = send.clone().ready().await.unwrap();
        let (answer, mut upload) = send.send_request(req, body.is_empty()).unwrap();
        if !body.is_empty() {
            upload.send_data(body, true).unwrap();
        }
        let answer = answer.await.unwrap();
        let status = answer.status();
        let mut body = answer.into_body();
        let mut got = bytes::BytesMut::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            body.flow_control().release_capacity(chunk.len()).unwrap();
            got.extend_from_slice(&chunk);
        }
        (status, got.freeze())
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .unwrap_or_else(|_| panic!("no whole answer to {path} within 10 s"))
}

/// An HTTP/2 connection quiet for a whole idle tick gives h2's read and
/// write buffers back (vendor/h2/STEER.md), both of them. The requests
/// after it, on the same connection, take them again: an upload read in
/// frames through the new read buffer, and answers whose heads and DATA
/// frames go out through the new write buffer (which h2 must count as
/// room: without that it waits for room forever).
#[tokio::test]
async fn an_http2_connection_that_gave_back_its_buffers_serves_on() {
    let blue = upstream("blue").await;
    // idle_timeout 8 s: a tick every 2 s, and no close before the end.
    let p = spawn_steer_logging(
        "idle_timeout = \"8s\"",
        &one_route("blue", blue.addr(), "http1"),
        "steer=info,steer::server::h2=trace",
    )
    .await;
    let authority = p.http.trim_start_matches("http://").to_owned();
    let send = h2c_client(authority.parse().unwrap()).await;
    let (status, _) = h2_exchange(&send, &authority, "/first", Bytes::new()).await;
    assert_eq!(status, StatusCode::OK);
    let line = p.log_line("buffers released", |l| l.contains("codec buffers released"));
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        (
            v["read"].as_bool(),
            v["write"].as_bool(),
            v["hpack"].as_bool()
        ),
        (Some(true), Some(true), Some(true)),
        "{line}"
    );

    let upload = Bytes::from(
        (0..100_000u32)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>(),
    );
    let (status, echoed) = h2_exchange(&send, &authority, "/demo/echo", upload.clone()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        echoed == upload,
        "the echo differs: {} of {} bytes",
        echoed.len(),
        upload.len()
    );
    let (status, got) = h2_exchange(&send, &authority, "/demo/bytes?n=300000", Bytes::new()).await;
    assert_eq!((status, got.len()), (StatusCode::OK, 300_000));
}

/// A GET / over a new h2c connection to `steer`: its answer on the way.
async fn h2c_get(steer: &Steer) -> h2::client::ResponseFuture {
    let send = h2c_client(steer.addr()).await;
    let req = http::Request::get(format!("http://{}/", steer.addr()))
        .body(())
        .unwrap();
    send.ready()
        .await
        .unwrap()
        .send_request(req, true)
        .unwrap()
        .0
}

#[tokio::test]
async fn a_client_reset_right_after_opening_is_no_reset_upstream() {
    // Servers with rapid-reset protection (h2's and hyper's count resets
    // of streams they have not accepted yet, Envoy's resets within 1 s)
    // end the connection that sends them, and steer shares one upstream
    // connection among all its clients: a young stream is read to its end
    // instead, within a second of its start.
    let up = h2_upstream::slow(b"ok").await;
    let steer = Steer::start_ready(&one_route("up", up.addr, "h2c")).await;
    let answer = h2c_get(&steer).await;
    in_flight_becomes(&steer.admin(), 1, "the request sent upstream").await;
    drop(answer); // RST_STREAM(CANCEL) from the client
    eventually("the upstream's answer went out whole", || async {
        up.seen.answered.load(Ordering::Relaxed) == 1
    })
    .await;
    assert_eq!(up.seen.resets.load(Ordering::Relaxed), 0);
}

/// How long after its request arrived `up` saw its first RST_STREAM.
async fn first_reset_after(up: &h2_upstream::H2Upstream) -> Duration {
    eventually("the upstream stream is reset", || async {
        up.seen.resets.load(Ordering::Relaxed) >= 1
    })
    .await;
    let opened = up.seen.first_request_at.lock().unwrap().unwrap();
    let reset = up.seen.first_reset_at.lock().unwrap().unwrap();
    reset.duration_since(opened)
}

#[tokio::test]
async fn an_upload_that_fails_right_away_makes_no_early_upstream_reset() {
    // The upload never ends, so the upstream stream is reset in the end,
    // but not before it is a second old. Over max_body in its second part
    // (the body's pump sees it fail): 413, after that second.
    let up = h2_upstream::start(b"ok").await;
    let routes = one_route("up", up.addr, "h2c") + "max_body = \"1KiB\"\n";
    let steer = Steer::start_ready(&routes).await;
    let (answer, mut upload) = unfinished_upload_started(steer.addr()).await;
    in_flight_becomes(&steer.admin(), 1, "the upload sent upstream").await;
    upload
        .send_data(Bytes::from(vec![b'x'; 2048]), false)
        .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), answer).await;
    assert_eq!(answer.expect("an answer in time").unwrap().status(), 413);
    let held = first_reset_after(&up).await;
    assert!(held >= Duration::from_millis(900), "reset after {held:?}");
    // The client resets its upload (the request sees it first, or the
    // pump: either way).
    let up = h2_upstream::start(b"ok").await;
    let steer = Steer::start_ready(&one_route("up", up.addr, "h2c")).await;
    let (answer, mut upload) = unfinished_upload_started(steer.addr()).await;
    in_flight_becomes(&steer.admin(), 1, "the upload sent upstream").await;
    upload.send_reset(h2::Reason::CANCEL);
    drop((answer, upload));
    let held = first_reset_after(&up).await;
    assert!(held >= Duration::from_millis(900), "reset after {held:?}");
}

/// `NARROW_STREAMS` uploads through `steer` on one client connection,
/// each with a first part sent and never finished, all of them open at
/// the upstream (in flight).
async fn narrow_slots_taken(
    steer: &Steer,
) -> Vec<(h2::client::ResponseFuture, h2::SendStream<Bytes>)> {
    let send = h2c_client(steer.addr()).await;
    let mut uploads = Vec::new();
    for _ in 0..h2_upstream::NARROW_STREAMS {
        let mut send = send.clone().ready().await.unwrap();
        let req = http::Request::post(format!("http://{}/upload", steer.addr()))
            .body(())
            .unwrap();
        let (answer, mut upload) = send.send_request(req, false).unwrap();
        upload
            .send_data(Bytes::from_static(b"part"), false)
            .unwrap();
        uploads.push((answer, upload));
    }
    let streams = u64::from(h2_upstream::NARROW_STREAMS);
    in_flight_becomes(&steer.admin(), streams, "every slot taken").await;
    uploads
}

#[tokio::test]
async fn streams_one_client_holds_open_leave_other_clients_a_slot() {
    // One client takes every slot the upstream allows on steer's shared
    // connection: with uploads it never finishes, then with uploads it
    // resets at once (steer keeps those streams for their first second,
    // `MIN_STREAM_AGE`). Another client's request must not wait for those
    // slots (a second, or request_timeout): steer opens another connection.
    for reset in [false, true] {
        let up = h2_upstream::narrow(b"ok").await;
        let steer = Steer::start_ready(&one_route("up", up.addr, "h2c")).await;
        let mut uploads = narrow_slots_taken(&steer).await;
        if reset {
            for (_, upload) in &mut uploads {
                upload.send_reset(h2::Reason::CANCEL);
            }
            uploads.clear();
        }
        let asked = std::time::Instant::now();
        let answer = tokio::time::timeout(Duration::from_secs(5), h2c_get(&steer).await).await;
        assert_eq!(answer.expect("an answer in time").unwrap().status(), 200);
        let waited = asked.elapsed();
        assert!(
            waited < Duration::from_millis(900),
            "reset {reset}: the request waited {waited:?} for a slot"
        );
        assert_eq!(up.seen.connections.load(Ordering::Relaxed), 2);
        if reset {
            // The held streams are reset, each once a second old.
            let held = first_reset_after(&up).await;
            assert!(held >= Duration::from_millis(900), "reset after {held:?}");
        }
    }
}

#[tokio::test]
async fn a_burst_opens_only_the_upstream_connections_it_fills() {
    // Connections open one at a time: a burst of 32 requests on top of 8
    // that fill the first connection takes 4 more (8 streams each), not
    // one per request that found the others full.
    let up = h2_upstream::narrow_slow(b"ok").await;
    let steer = Steer::start_ready(&one_route("up", up.addr, "h2c")).await;
    let send = h2c_client(steer.addr()).await;
    let get = |send: h2::client::SendRequest<Bytes>| async move {
        let mut send = send.ready().await.unwrap();
        let req = http::Request::get("http://auth.example.com/")
            .body(())
            .unwrap();
        let answer = send.send_request(req, true).unwrap().0.await.unwrap();
        let status = answer.status();
        let text = answer.into_body().data().await.map(|d| d.unwrap());
        (status, text.unwrap_or_default())
    };
    let mut answers = Vec::new();
    for _ in 0..h2_upstream::NARROW_STREAMS {
        answers.push(tokio::spawn(get(send.clone())));
    }
    let first = u64::from(h2_upstream::NARROW_STREAMS);
    eventually("the first connection full", || async {
        up.seen.requests.load(Ordering::Relaxed) == first
    })
    .await;
    for _ in 0..32 {
        answers.push(tokio::spawn(get(send.clone())));
    }
    for answer in answers {
        let (status, text) = answer.await.unwrap();
        assert_eq!(status, 200, "{text:?}");
    }
    let connections = up.seen.connections.load(Ordering::Relaxed);
    assert!(connections <= 5, "{connections} connections");
}

#[tokio::test]
async fn resets_of_streams_the_upstream_has_not_accepted_yet_do_not_end_its_connection() {
    // hyper's and h2's HTTP/2 servers end a connection on which 20 streams
    // are reset before they have accepted them (a busy server accepts
    // late). A client that opens 100 streams and resets them all at once
    // must not make steer do that on the connection every client shares:
    // steer keeps each young stream until it is a second old.
    let up = h2_upstream::lazy(b"ok").await;
    let steer = Steer::start_ready(&one_route("up", up.addr, "h2c")).await;
    let send = h2c_client(steer.addr()).await;
    let mut answers = Vec::new();
    for _ in 0..100 {
        let mut send = send.clone().ready().await.unwrap();
        let req = http::Request::get(format!("http://{}/", steer.addr()))
            .body(())
            .unwrap();
        answers.push(send.send_request(req, true).unwrap().0);
    }
    in_flight_becomes(&steer.admin(), 100, "the streams opened upstream").await;
    drop(answers); // 100 RST_STREAM(CANCEL) at once
    // The upstream answers them once it accepts them; steer reads those
    // answers, and the connection stays: the next request uses it.
    eventually("the held streams answered", || async {
        up.seen.answered.load(Ordering::Relaxed) == 100
    })
    .await;
    let answer = tokio::time::timeout(Duration::from_secs(5), h2c_get(&steer).await).await;
    assert_eq!(answer.expect("an answer in time").unwrap().status(), 200);
    assert_eq!(up.seen.connections.load(Ordering::Relaxed), 1);
    assert_eq!(up.seen.resets.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn http2_answers_carry_a_date_as_http1_answers_do() {
    // RFC 9110 §6.6.1: a recipient that forwards a response without Date
    // adds one; an origin (steer's own answers) sends one.
    let up = answering_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    let body = format!(
        "{}[[routes]]\nname = \"r\"\nhosts = [\"auth.example.com\"]\nupstream = \"up\"\n",
        upstream_toml("up", up, "http1").replace("protocol", "health = false\nprotocol")
    );
    let steer = Steer::start_ready(&body).await;
    let send = h2c_client(steer.addr()).await;
    for (authority, status) in [("auth.example.com", 200), ("unrouted.example.com", 404)] {
        let req = http::Request::get(format!("http://{authority}/"))
            .body(())
            .unwrap();
        let mut send = send.clone().ready().await.unwrap();
        let (answer, _) = send.send_request(req, true).unwrap();
        let answer = answer.await.unwrap();
        assert_eq!(answer.status(), status);
        let date = answer.headers().get(http::header::DATE);
        let date = date.and_then(|d| httpdate::parse_http_date(d.to_str().ok()?).ok());
        assert!(date.is_some(), "{authority}: {:?}", answer.headers());
    }
}

#[tokio::test]
async fn an_upstream_that_stops_sending_its_body_is_cut_off() {
    const IDLE: &str = "response_idle_timeout = \"1s\"";
    // HTTP/1.1: the head, 10 of 100 bytes, then silence.
    let (addr, dropped) =
        holding_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789").await;
    let steer = Steer::start_ready_with(IDLE, &one_route("up", addr, "http1")).await;
    let mut client = TcpStream::connect(steer.addr()).await.unwrap();
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: auth.example.com\r\n\r\n")
        .await
        .unwrap();
    // While the client waits, steer lets the upstream go...
    let upstream_closed = tokio::time::timeout(Duration::from_secs(5), dropped).await;
    assert!(
        upstream_closed.is_ok(),
        "steer kept the stalled upstream connection"
    );
    // ...and the client gets what came, then a close: a body cut short.
    let answer = read_until_closed(&mut client).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("\r\n\r\n0123456789"), "{answer}");
    let series =
        format!("steer_upstream_body_timeouts_total{{endpoint=\"{addr}\",upstream=\"up\"}}");
    assert_eq!(metric(&steer.admin(), &series).await, 1.0);
    // HTTP/2: the stream is reset, and so is the upstream's.
    let up = h2_upstream::stalling(b"first").await;
    let steer = Steer::start_ready_with(IDLE, &one_route("up", up.addr, "h2c")).await;
    let answer = h2c_get(&steer).await;
    let mut body = answer.await.unwrap().into_body();
    assert_eq!(body.data().await.unwrap().unwrap(), "first");
    let end = tokio::time::timeout(Duration::from_secs(10), body.data()).await;
    let end = end.expect("the stalled stream ended in time");
    assert!(matches!(end, Some(Err(_))), "{end:?}");
    eventually("the upstream stream is reset", || async {
        up.seen.resets.load(Ordering::Relaxed) >= 1
    })
    .await;
}

/// An HTTP/2 POST through steer whose client has sent a first part of
/// its body: the answer on its way, and the upload.
async fn unfinished_upload_started(
    addr: SocketAddr,
) -> (h2::client::ResponseFuture, h2::SendStream<Bytes>) {
    let send = h2c_client(addr).await;
    let mut send = send.ready().await.unwrap();
    let req = http::Request::post(format!("http://{addr}/upload"))
        .body(())
        .unwrap();
    let (answer, mut upload) = send.send_request(req, false).unwrap();
    upload
        .send_data(Bytes::from_static(b"the first part"), false)
        .unwrap();
    (answer, upload)
}

/// As `unfinished_upload_started`, which never ends its upload: the
/// answer (within 10 s) and the upload.
async fn unfinished_upload(
    addr: SocketAddr,
) -> (http::Response<h2::RecvStream>, h2::SendStream<Bytes>) {
    let (answer, upload) = unfinished_upload_started(addr).await;
    let answer = tokio::time::timeout(Duration::from_secs(10), answer)
        .await
        .expect("an answer in time")
        .unwrap();
    (answer, upload)
}

#[tokio::test]
async fn a_request_timeout_resets_the_http2_upstream_stream_of_an_unfinished_upload() {
    let up = h2_upstream::start(b"ok").await;
    // The tests' request_timeout is 2 s.
    let steer = Steer::start_ready(&one_route("up", up.addr, "h2c")).await;
    // An upload that starts and then waits: the upstream answers only
    // once it has the whole body.
    let (answer, upload) = unfinished_upload(steer.addr()).await;
    // steer was waiting for the client's body: the client's timeout.
    assert_eq!(answer.status(), StatusCode::REQUEST_TIMEOUT);
    // The upload is still open on the client's side; the upstream's stream
    // must not wait for it.
    eventually("the upstream stream is reset", || async {
        up.seen.resets.load(Ordering::Relaxed) >= 1
    })
    .await;
    drop(upload);
}

#[tokio::test]
async fn an_upload_the_http2_upstream_answered_early_is_cut_off_after_a_grace() {
    let up = h2_upstream::answering_early(b"ok").await;
    let steer = Steer::start_ready(&one_route("up", up.addr, "h2c")).await;
    // The client never ends its upload; the upstream has answered anyway.
    let (answer, upload) = unfinished_upload(steer.addr()).await;
    assert_eq!(answer.status(), StatusCode::OK);
    let mut body = answer.into_body();
    while let Some(chunk) = body.data().await {
        chunk.unwrap();
    }
    // steer sends the rest of an upload for 5 s at most, then resets the
    // upstream stream.
    eventually("the upstream stream is reset", || async {
        up.seen.resets.load(Ordering::Relaxed) >= 1
    })
    .await;
    drop(upload);
}

/// Reads until the server closes, bounded.
async fn read_until_closed(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("steer must close the connection")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn answers_on_one_client_connection_keep_their_framing() {
    // steer's own HTTP/1.1 path (src/server/h1.rs) writes these heads:
    // chunked stays chunked, HEAD and 204 carry no body, and the client's
    // `Connection: close` ends the connection after its answer.
    fn answer(path: &str) -> String {
        match path {
            "/chunked" => {
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
            }
            "/head" => "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n",
            "/none" => "HTTP/1.1 204 No Content\r\n\r\n",
            _ => "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nxyz",
        }
        .to_owned()
    }
    let (addr, _, _) = raw_upstream(answer, Duration::ZERO, usize::MAX).await;
    let steer = Steer::start_ready(&one_route("raw", addr, "http1")).await;
    let mut s = TcpStream::connect(steer.addr()).await.unwrap();
    let host = "Host: auth.example.com\r\n";
    s.write_all(
        format!(
            "GET /chunked HTTP/1.1\r\n{host}\r\nHEAD /head HTTP/1.1\r\n{host}\r\n\
             GET /none HTTP/1.1\r\n{host}\r\nGET /len HTTP/1.1\r\n{host}Connection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let all = read_until_closed(&mut s).await;
    let answers: Vec<&str> = all.split("HTTP/1.1 ").skip(1).collect();
    assert_eq!(answers.len(), 4, "{all}");
    assert!(answers[0].starts_with("200 OK\r\n"), "{all}");
    assert!(
        answers[0].contains("transfer-encoding: chunked\r\n"),
        "{all}"
    );
    assert!(
        answers[0].ends_with("\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
        "{all}"
    );
    assert!(answers[1].contains("content-length: 3\r\n"), "{all}");
    assert!(
        answers[1].ends_with("\r\n\r\n"),
        "a HEAD answer has no body: {all}"
    );
    assert!(answers[2].starts_with("204 No Content\r\n"), "{all}");
    assert!(!answers[2].contains("content-length"), "{all}");
    assert!(answers[3].contains("connection: close\r\n"), "{all}");
    assert!(answers[3].ends_with("\r\n\r\nxyz"), "{all}");
}

#[tokio::test]
async fn an_upstream_answer_cut_short_closes_the_client_connection() {
    // The client cannot tell where a body shorter than its content-length
    // ends: steer must close, not keep the connection for the next request.
    let addr = answering_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234").await;
    let steer = Steer::start_ready(&one_route("cut", addr, "http1")).await;
    let mut s = TcpStream::connect(steer.addr()).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: auth.example.com\r\n\r\n")
        .await
        .unwrap();
    let all = read_until_closed(&mut s).await;
    assert!(all.starts_with("HTTP/1.1 200 OK\r\n"), "{all}");
    assert!(all.ends_with("\r\n\r\n01234"), "{all}");
}

#[tokio::test]
async fn a_form_post_that_came_whole_is_forwarded_whole_and_the_connection_goes_on() {
    // steer's own HTTP/1.1 path takes a Content-Length body that arrived
    // with its head (src/server/h1.rs); the GET after it is answered on
    // the same connection.
    let (blue, steer) = single("http1").await;
    let mut s = TcpStream::connect(steer.addr()).await.unwrap();
    s.write_all(
        b"POST /demo/echo HTTP/1.1\r\nHost: auth.example.com\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 11\r\n\r\na=1&b=2&c=3\
          GET /demo/echo HTTP/1.1\r\nHost: auth.example.com\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let all = read_until_closed(&mut s).await;
    let answers: Vec<&str> = all.split("HTTP/1.1 ").skip(1).collect();
    assert_eq!(answers.len(), 2, "{all}");
    assert!(answers[0].starts_with("200 OK\r\n"), "{all}");
    assert!(answers[0].ends_with("\r\n\r\na=1&b=2&c=3"), "{all}");
    assert!(answers[1].starts_with("200 OK\r\n"), "{all}");
    assert_eq!(blue.requests(), 2);
}

/// gRPC servers (grpc-go, gRPC C-core) count a PING as a strike when the
/// one before came less than 5 min earlier and they sent no data since,
/// and close the connection on the third strike (GOAWAY
/// ENHANCE_YOUR_CALM, "too_many_pings"). steer PINGed its shared upstream
/// connection every 20 s while streams were open, so a quiet gRPC server
/// stream (and every other client's stream on that connection) died
/// after 80 s. A quiet open stream now brings no PING for over 5 min.
#[tokio::test]
async fn a_quiet_open_upstream_stream_brings_no_pings_a_grpc_server_would_punish() {
    let up = h2_upstream::stalling(b"head").await;
    let steer = Steer::start(&one_route("up", up.addr, "h2c")).await;
    let send = h2c_client(steer.addr()).await;
    let req = http::Request::get(format!("http://{}/watch", steer.addr()))
        .body(())
        .unwrap();
    let (answer, _) = send.ready().await.unwrap().send_request(req, true).unwrap();
    let answer = answer.await.unwrap();
    assert_eq!(answer.status(), 200);
    // The stream stays open and quiet (its body never ends) past the
    // 20 s steer used to PING at.
    tokio::time::sleep(Duration::from_secs(25)).await;
    assert_eq!(up.seen.pings.load(Ordering::Relaxed), 0);
    drop(answer);
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Header literals that steer writes over HTTP/2 go out raw, not
/// Huffman-coded (RFC 7541 §5.2; `vendor/h2/STEER.md`, change 2): a value
/// sent as a literal is in the header block verbatim, to a client and to
/// an h2c upstream.
#[tokio::test]
async fn http2_header_literals_go_out_raw_to_clients_and_upstreams() {
    // To the client: an h2c request by hand, and the answer's head.
    let blue = upstream("blue").await;
    let down = "raw-literal-on-the-way-down";
    let route = one_route("blue", blue.addr(), "http1")
        + &format!("response_headers = {{ set = {{ \"x-check\" = \"{down}\" }} }}\n");
    let steer = Steer::start(&route).await;
    let mut s = TcpStream::connect(steer.addr()).await.unwrap();
    let authority = b"steer.test";
    // :method GET, :scheme http, :path / (static table), :authority as
    // a raw literal with its name from the static table.
    let mut block = vec![0x82, 0x86, 0x84, 0x41, authority.len() as u8];
    block.extend_from_slice(authority);
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[]));
    // END_STREAM | END_HEADERS
    out.extend(frame(0x1, 0x5, 1, &block));
    s.write_all(&out).await.unwrap();
    let (head, _) = response_on(&mut s, 1).await;
    assert!(contains(&head, down.as_bytes()), "{head:x?}");

    // To an h2c upstream: the request's head as steer sends it.
    let up = "raw-literal-on-the-way-up";
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        s.write_all(&frame(0x4, 0, 0, &[])).await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !contains(&got, up.as_bytes()) {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        got
    });
    let route = one_route("up", addr, "h2c")
        + &format!("request_headers = {{ set = {{ \"x-check\" = \"{up}\" }} }}\n");
    let steer = Steer::start(&route).await;
    // Never answered: it ends at the tests' request_timeout.
    let _asked = tokio::spawn(call(request("GET", &steer.url("/"))));
    let got = tokio::time::timeout(Duration::from_secs(5), seen)
        .await
        .expect("the request's head reached the upstream within 5 s")
        .unwrap();
    assert!(contains(&got, up.as_bytes()), "{got:x?}");
}
