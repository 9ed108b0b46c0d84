//! Forwarding over real sockets: matchers end to end, split, fallback,
//! header hygiene, Host/:authority, h2c, large bodies, error statuses.

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

#[tokio::test]
async fn matchers_steer_end_to_end() {
    let routes = r#"
[[routes]]
name = "by-host"
hosts = ["*.green.example.com"]
upstream = "green"

[[routes]]
name = "by-path"
path_prefix = "/oauth/v2/"
methods = ["POST"]
upstream = "green"

[[routes]]
name = "by-query"
query = { "tenant" = "acme" }
upstream = "green"

[[routes]]
name = "by-client-ip"
client_ips = ["10.0.0.0/8"]
upstream = "green"

[[routes]]
name = "default"
upstream = "blue"
"#;
    let (_b, _g, steer) = blue_green(routes, "http1").await;
    let who = |req: http::request::Builder| async { call(req).await.deployment() };
    assert_eq!(
        who(request("GET", &steer.url("/")).header("host", "a.green.example.com")).await,
        "green"
    );
    assert_eq!(
        who(request("GET", &steer.url("/")).header("host", "green.example.com")).await,
        "blue"
    );
    assert_eq!(
        who(request("POST", &steer.url("/oauth/v2/token"))).await,
        "green"
    );
    assert_eq!(
        who(request("GET", &steer.url("/oauth/v2/token"))).await,
        "blue"
    );
    assert_eq!(
        who(request("GET", &steer.url("/x?tenant=acme"))).await,
        "green"
    );
    // 127.0.0.1 is not in 10.0.0.0/8, and an untrusted peer cannot claim to be.
    assert_eq!(
        who(request("GET", &steer.url("/")).header("x-forwarded-for", "10.1.1.1")).await,
        "blue"
    );
}

#[tokio::test]
async fn client_ip_from_trusted_proxy_steers() {
    let blue = upstream("blue").await;
    let green = upstream("green").await;
    let body = format!(
        "{}{}[[routes]]\nname = \"office\"\nclient_ips = [\"10.0.0.0/8\"]\nupstream = \"green\"\n[[routes]]\nname = \"d\"\nupstream = \"blue\"\n",
        upstream_toml("blue", blue.addr(), "http1"),
        upstream_toml("green", green.addr(), "http1"),
    );
    let steer = Steer::start_ready_with("trusted_proxies = [\"127.0.0.0/8\"]", &body).await;
    let who = |xff: &'static str| {
        let url = steer.url("/");
        async move {
            call(request("GET", &url).header("x-forwarded-for", xff))
                .await
                .deployment()
        }
    };
    assert_eq!(who("10.9.9.9").await, "green");
    // Right-most untrusted wins: a client prepending 10.x is not believed.
    assert_eq!(who("10.9.9.9, 198.51.100.1").await, "blue");
}

#[tokio::test]
async fn split_ratio_is_within_tolerance_over_1000_requests() {
    let routes = "[[routes]]\nname = \"split\"\nsplit = { blue = 80, green = 20 }\n";
    let (_b, _g, steer) = blue_green(routes, "h2c").await;
    let client = http1();
    let mut green = 0;
    for _ in 0..1000 {
        let a = send(
            &client,
            request("GET", &steer.url("/"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
        if a.deployment() == "green" {
            green += 1;
        }
    }
    assert!(
        (140..=260).contains(&green),
        "green got {green} of 1000 (expected ~200)"
    );
}

#[tokio::test]
async fn fallback_is_used_when_the_upstream_has_no_healthy_endpoint() {
    let routes = "[[routes]]\nname = \"r\"\nupstream = \"blue\"\nfallback = [\"green\"]\n";
    let (blue, _g, steer) = blue_green(routes, "http1").await;
    assert_eq!(
        call(request("GET", &steer.url("/"))).await.deployment(),
        "blue"
    );
    blue.set_ready(false);
    eventually("traffic on green", || async {
        call(request("GET", &steer.url("/"))).await.deployment() == "green"
    })
    .await;
}

#[tokio::test]
async fn header_hygiene_untrusted_client() {
    let routes = "[[routes]]\nname = \"r\"\nupstream = \"blue\"\n";
    let (_b, _g, steer) = blue_green(routes, "http1").await;
    let a = call(
        request("GET", &steer.url("/"))
            .header("host", "auth.example.com")
            .header("x-forwarded-for", "6.6.6.6")
            .header("x-forwarded-host", "evil.example.com")
            .header("x-forwarded-proto", "https")
            .header("forwarded", "for=6.6.6.6;host=evil.example.com")
            .header("x-real-ip", "6.6.6.6")
            .header("x-zitadel-instance-host", "evil.example.com")
            .header("x-zitadel-public-host", "evil.example.com")
            .header("x-zitadel-forwarded", "host=evil.example.com")
            // The rest of the X-Forwarded-* family, which frameworks read
            // to build URLs.
            .header("x-forwarded-prefix", "/evil")
            .header("x-forwarded-server", "evil.example.com")
            // The host ZITADEL's gRPC gateway hands its own gRPC server.
            .header("x-zitadel-http1-host", "evil.example.com")
            // grpc-gateway turns Grpc-Metadata-NAME into gRPC metadata NAME.
            .header("grpc-metadata-x-forwarded-host", "evil.example.com")
            .header("grpc-metadata-x-zitadel-forwarded", "host=evil.example.com")
            .header("grpc-metadata-forwarded", "host=evil.example.com")
            // A client's own ZITADEL header: the organization it acts in.
            .header("x-zitadel-orgid", "123")
            .header("connection", "x-hop")
            .header("x-hop", "1"),
    )
    .await;
    let h = &a.json()["headers"];
    assert_eq!(h["x-zitadel-orgid"][0], "123");
    assert_eq!(h["x-forwarded-for"][0], "127.0.0.1");
    assert_eq!(h["x-forwarded-host"][0], "auth.example.com");
    assert_eq!(h["x-forwarded-proto"][0], "http");
    assert_eq!(
        h["forwarded"][0],
        "for=127.0.0.1;proto=http;host=auth.example.com"
    );
    for gone in [
        "x-real-ip",
        "x-zitadel-instance-host",
        "x-zitadel-public-host",
        "x-zitadel-forwarded",
        "x-forwarded-prefix",
        "x-forwarded-server",
        "x-zitadel-http1-host",
        "grpc-metadata-x-forwarded-host",
        "grpc-metadata-x-zitadel-forwarded",
        "grpc-metadata-forwarded",
        "x-hop",
    ] {
        assert!(h[gone].is_null(), "{gone} reached the upstream: {h}");
    }
}

#[tokio::test]
async fn header_hygiene_trusted_proxy() {
    let blue = upstream("blue").await;
    let body = format!(
        "{}[[routes]]\nname = \"r\"\nupstream = \"blue\"\n",
        upstream_toml("blue", blue.addr(), "http1")
    );
    let steer = Steer::start_ready_with("trusted_proxies = [\"127.0.0.0/8\"]", &body).await;
    let a = call(
        request("GET", &steer.url("/"))
            .header("host", "auth.example.com")
            .header("x-forwarded-for", "203.0.113.9")
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-prefix", "/auth")
            .header("x-zitadel-instance-host", "tenant.example.com")
            // No load balancer sets these: its client did.
            .header("x-zitadel-http1-host", "evil.example.com")
            .header("grpc-metadata-x-forwarded-host", "evil.example.com"),
    )
    .await;
    let h = &a.json()["headers"];
    assert_eq!(h["x-forwarded-for"][0], "203.0.113.9, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"][0], "https");
    assert_eq!(h["x-forwarded-prefix"][0], "/auth");
    assert_eq!(h["x-zitadel-instance-host"][0], "tenant.example.com");
    for gone in ["x-zitadel-http1-host", "grpc-metadata-x-forwarded-host"] {
        assert!(h[gone].is_null(), "{gone} reached the upstream: {h}");
    }
}

#[tokio::test]
async fn host_is_kept_for_http1_upstreams() {
    let routes = "[[routes]]\nname = \"r\"\nupstream = \"blue\"\n";
    let (_b, _g, steer) = blue_green(routes, "http1").await;
    let a = call(
        request("GET", &steer.url("/.well-known/openid-configuration"))
            .header("host", "auth.example.com"),
    )
    .await;
    assert_eq!(a.json()["issuer"], "http://auth.example.com");
    let echo = call(request("GET", &steer.url("/x")).header("host", "auth.example.com")).await;
    assert_eq!(echo.json()["host"], "auth.example.com");
    assert_eq!(echo.json()["version"], "HTTP/1.1");
}

#[tokio::test]
async fn host_becomes_authority_for_h2c_upstreams() {
    let routes = "[[routes]]\nname = \"r\"\nupstream = \"blue\"\n";
    let (_b, _g, steer) = blue_green(routes, "h2c").await;
    let echo = call(request("GET", &steer.url("/x")).header("host", "auth.example.com:8443")).await;
    let v = echo.json();
    assert_eq!(v["version"], "HTTP/2.0");
    assert_eq!(v["authority"], "auth.example.com:8443");
}

/// A request with an authority of its own (HTTP/2's `:authority`, an
/// absolute-form target) reaches an h2c upstream with that authority, the
/// rewritten path and no Host field beside it.
#[tokio::test]
async fn a_requests_own_authority_reaches_an_h2c_upstream() {
    let routes = "[[routes]]\nname = \"r\"\nupstream = \"blue\"\nstrip_prefix = \"/api\"\n";
    let (_b, _g, steer) = blue_green(routes, "h2c").await;
    let a = send(
        &h2c(),
        request("GET", &steer.url("/api/x?y=1"))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    let v = a.json();
    assert_eq!(v["version"], "HTTP/2.0", "{v}");
    assert_eq!(v["authority"], steer.addr().to_string(), "{v}");
    assert_eq!(
        (v["path"].as_str(), v["query"].as_str()),
        (Some("/x"), Some("y=1"))
    );
    assert!(v["headers"]["host"].is_null(), "{v}");
    let mut s = tokio::net::TcpStream::connect(steer.addr()).await.unwrap();
    s.write_all(b"GET http://auth.example.com/api/z HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    let read = s.read_to_string(&mut answer);
    tokio::time::timeout(std::time::Duration::from_secs(10), read)
        .await
        .expect("steer answers and closes within 10 s")
        .unwrap();
    let v: serde_json::Value =
        serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(v["authority"], "auth.example.com", "{v}");
    assert_eq!(v["path"], "/z", "{v}");
    assert!(v["headers"]["host"].is_null(), "{v}");
}

#[tokio::test]
async fn h2c_prior_knowledge_client_is_served() {
    let routes = "[[routes]]\nname = \"r\"\nupstream = \"blue\"\n";
    let (_b, _g, steer) = blue_green(routes, "http1").await;
    let a = send(
        &h2c(),
        request("GET", &steer.url("/x"))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    let v = a.json();
    assert_eq!(v["deployment"], "blue");
    // The client's :authority reaches the HTTP/1.1 upstream as Host.
    assert_eq!(v["host"], steer.addr().to_string());
}

#[tokio::test]
async fn ten_mib_upload_and_download_arrive_byte_identical() {
    let routes = "[[routes]]\nname = \"r\"\nupstream = \"blue\"\n";
    for protocol in ["http1", "h2c"] {
        let (_b, _g, steer) = blue_green(routes, protocol).await;
        let n: usize = 10 * 1024 * 1024;
        let upload: Vec<u8> = (0..n).map(|i| (i * 7 % 256) as u8).collect();
        for client in [http1(), h2c()] {
            let req = request("POST", &steer.url("/demo/echo"))
                .body(Full::new(Bytes::from(upload.clone())))
                .unwrap();
            let a = send(&client, req).await;
            assert_eq!(a.status, StatusCode::OK);
            assert!(
                a.body == upload,
                "{protocol}: echoed body differs ({} bytes)",
                a.body.len()
            );
            let req = request("GET", &steer.url(&format!("/demo/bytes?n={n}")))
                .body(Full::new(Bytes::new()))
                .unwrap();
            let a = send(&client, req).await;
            assert_eq!(a.body.len(), n);
            assert!(
                a.body
                    .iter()
                    .enumerate()
                    .all(|(i, b)| *b == steer::demo::pattern_byte(i as u64)),
                "{protocol}: download differs"
            );
        }
    }
}

#[tokio::test]
async fn request_id_is_generated_or_kept_on_request_and_response() {
    let routes = "[[routes]]\nname = \"r\"\nupstream = \"blue\"\n";
    let (_b, _g, steer) = blue_green(routes, "http1").await;
    let a = call(request("GET", &steer.url("/x"))).await;
    let id = a.headers["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(id.len(), 32);
    assert_eq!(a.json()["headers"]["x-request-id"][0], id.as_str());
    let a = call(request("GET", &steer.url("/x")).header("x-request-id", "mine-42")).await;
    assert_eq!(a.headers["x-request-id"], "mine-42");
    assert_eq!(a.json()["headers"]["x-request-id"][0], "mine-42");
}

#[tokio::test]
async fn strip_prefix_and_header_rules_apply() {
    let routes = r#"
[[routes]]
name = "api"
path_prefix = "/api/"
strip_prefix = "/api"
upstream = "blue"
request_headers = { set = { "x-env" = "prod" }, remove = ["x-debug"] }
response_headers = { set = { "strict-transport-security" = "max-age=31536000" }, remove = ["x-served-by"] }
"#;
    let (_b, _g, steer) = blue_green(routes, "http1").await;
    let a = call(request("GET", &steer.url("/api/v2/users?limit=1")).header("x-debug", "1")).await;
    let v = a.json();
    assert_eq!(v["path"], "/v2/users");
    assert_eq!(v["query"], "limit=1");
    assert_eq!(v["headers"]["x-env"][0], "prod");
    assert!(v["headers"]["x-debug"].is_null());
    assert_eq!(a.headers["strict-transport-security"], "max-age=31536000");
    assert!(!a.headers.contains_key("x-served-by"));
}

/// A route's rules apply to the forwarding fields steer adds, as to any
/// other: removed or set, each goes out once or not at all.
#[tokio::test]
async fn header_rules_apply_to_the_forwarding_fields_steer_adds() {
    let routes = r#"
[[routes]]
name = "r"
upstream = "blue"
request_headers = { set = { "x-forwarded-proto" = "https" }, remove = ["x-forwarded-host"] }
"#;
    for protocol in ["http1", "h2c"] {
        let (_b, _g, steer) = blue_green(routes, protocol).await;
        let a = call(request("GET", &steer.url("/")).header("host", "auth.example.com")).await;
        let h = &a.json()["headers"];
        assert_eq!(
            h["x-forwarded-proto"],
            serde_json::json!(["https"]),
            "{protocol}: {h}"
        );
        assert!(h["x-forwarded-host"].is_null(), "{protocol}: {h}");
        assert_eq!(
            h["x-forwarded-for"],
            serde_json::json!(["127.0.0.1"]),
            "{protocol}: {h}"
        );
        assert_eq!(
            h["forwarded"],
            serde_json::json!(["for=127.0.0.1;proto=http;host=auth.example.com"]),
            "{protocol}: {h}"
        );
    }
}

async fn error_case(steer: &Steer, req: http::request::Builder, status: u16, cause: &str) {
    let a = call(req.header("x-request-id", "err-test-1")).await;
    assert_eq!(a.status.as_u16(), status, "{}", a.text());
    assert!(
        a.text().contains(cause),
        "body {:?} should name {cause:?}",
        a.text()
    );
    assert!(
        a.text().contains("err-test-1"),
        "body should carry the request id: {}",
        a.text()
    );
    assert_eq!(a.headers["x-request-id"], "err-test-1");
    let _ = steer;
}

#[tokio::test]
async fn every_error_status() {
    let blue = upstream("blue").await;
    let dead = closed_port();
    let body = format!(
        "{}[upstreams.dead]\nendpoints = [\"{dead}\"]\nhealth = false\n\n{}\n",
        upstream_toml("blue", blue.addr(), "http1"),
        r#"
[[routes]]
name = "dead"
path_prefix = "/dead"
upstream = "dead"

[[routes]]
name = "down"
path_prefix = "/down"
upstream = "blue"

[[routes]]
name = "slow"
path_prefix = "/demo/slow"
upstream = "blue"

[[routes]]
name = "only-host"
hosts = ["auth.example.com"]
upstream = "blue"
"#
    );
    let steer = Steer::start_ready(&body).await;
    error_case(
        &steer,
        request("GET", &steer.url("/nothing")),
        404,
        "no route",
    )
    .await;
    error_case(
        &steer,
        request("GET", &steer.url("/dead")),
        502,
        "connection failed",
    )
    .await;
    // After the failed connect the endpoint is marked down: 503 now.
    error_case(
        &steer,
        request("GET", &steer.url("/dead")),
        503,
        "no healthy endpoint in upstream(s) dead",
    )
    .await;
    // request_timeout is 2s in the fixture.
    error_case(
        &steer,
        request("GET", &steer.url("/demo/slow?ms=4000")).header("host", "auth.example.com"),
        504,
        "did not answer",
    )
    .await;
    let big = "x".repeat(40 * 1024);
    error_case(
        &steer,
        request("GET", &steer.url("/"))
            .header("host", "auth.example.com")
            .header("x-big", big),
        431,
        "max_header_bytes",
    )
    .await;
    blue.set_ready(false);
    eventually("blue unhealthy", || async {
        states(&steer.admin(), "blue").await == ["unhealthy"]
    })
    .await;
    error_case(
        &steer,
        request("GET", &steer.url("/down")).header("host", "auth.example.com"),
        503,
        "blue",
    )
    .await;
}

#[tokio::test]
async fn malformed_host_is_a_400_with_reason() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let blue = upstream("blue").await;
    let steer = Steer::start_ready(&format!(
        "{}[[routes]]\nname = \"r\"\nupstream = \"blue\"\n",
        upstream_toml("blue", blue.addr(), "http1")
    ))
    .await;
    let mut s = tokio::net::TcpStream::connect(steer.addr()).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: bad host/x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("Host"), "{text}");
    let mut s = tokio::net::TcpStream::connect(steer.addr()).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 400"));
    assert_eq!(blue.requests(), 0);
}

#[tokio::test]
async fn streamed_request_body_is_not_buffered_whole() {
    // A body that is still being produced must already be arriving at the
    // upstream: echo the first chunk back before the client sends the rest.
    let routes = "[[routes]]\nname = \"r\"\nupstream = \"blue\"\n";
    let (_b, _g, steer) = blue_green(routes, "h2c").await;
    let (tx, rx) =
        tokio::sync::mpsc::channel::<Result<http_body::Frame<Bytes>, std::convert::Infallible>>(4);
    let body = http_body_util::StreamBody::new(tokio_stream_from(rx));
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::StreamBody<_>>();
    tx.send(Ok(http_body::Frame::data(Bytes::from_static(b"first"))))
        .await
        .unwrap();
    let resp = client
        .request(
            http::Request::post(steer.url("/demo/echo"))
                .body(body)
                .unwrap(),
        )
        .await
        .unwrap();
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[..], b"first");
    tx.send(Ok(http_body::Frame::data(Bytes::from_static(b"second"))))
        .await
        .unwrap();
    drop(tx);
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(&rest[..], b"second");
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// An HTTP/1.1 upstream that counts the connections it accepts and
/// answers each request once `barrier` is full: every request of a burst
/// is at the upstream at once, each on a connection of its own.
async fn burst_upstream(
    barrier: std::sync::Arc<tokio::sync::Barrier>,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut up, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let barrier = barrier.clone();
            tokio::spawn(async move {
                while read_head(&mut up).await {
                    barrier.wait().await;
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if up.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

/// A burst of requests to an HTTP/1.1 upstream finds, the next time, the
/// connections the last burst opened: the pool keeps up to 1,024 idle per
/// endpoint, so a load whose concurrency swings does not close and reopen
/// connections on every swing (10 % of steer's CPU per request at 500 in
/// flight, BENCHMARKS.md).
#[tokio::test]
async fn a_burst_of_300_requests_reuses_the_upstream_connections_the_last_one_opened() {
    const BURST: usize = 300;
    // ~1,200 sockets in this process (steer runs in it): more than a
    // soft limit of 1,024 holds. steer's `main` raises it the same way.
    steer::server::open_files::raise_to_hard();
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(BURST));
    let (addr, accepted) = burst_upstream(barrier).await;
    // A debug build serving 300 requests on the test's one thread takes
    // longer than the tests' 500 ms to come round to a connect.
    let proxy = "connect_timeout = \"10s\"\nrequest_timeout = \"20s\"";
    let steer = Steer::start_with(proxy, &one_route("up", addr, "http1")).await;
    let client = http1();
    for round in 1..=2 {
        let burst = (0..BURST).map(|_| {
            let client = client.clone();
            let url = steer.url("/burst");
            async move {
                let answer = tokio::time::timeout(
                    std::time::Duration::from_secs(20),
                    send(
                        &client,
                        request("GET", &url).body(Full::new(Bytes::new())).unwrap(),
                    ),
                )
                .await
                .expect("the burst is answered");
                assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
            }
        });
        futures_util::future::join_all(burst).await;
        // Each connection is back in the pool before its request leaves
        // the in-flight count.
        in_flight_becomes(&steer.admin(), 0, "no request in flight").await;
        assert_eq!(
            accepted.load(std::sync::atomic::Ordering::SeqCst),
            BURST,
            "upstream connections opened after round {round}"
        );
    }
}
