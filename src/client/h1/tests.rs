use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::BodyExt as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

/// An upstream that reads one request (head, then a chunked body to its
/// end or `content-length` bytes), answers `answer` and keeps the
/// connection open (or closes it with `close`). Sends back what it read.
async fn upstream(
    answer: &'static [u8],
    close: bool,
) -> (SocketAddr, tokio::sync::oneshot::Receiver<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let seen = read_request(&mut s).await;
        let mut chunk = [0u8; 4096];
        let _ = tx.send(seen);
        s.write_all(answer).await.unwrap();
        if close {
            return;
        }
        // Held open until the test ends.
        let _ = s.read(&mut chunk).await;
    });
    (addr, rx)
}

/// Reads one request (head and body) or up to the peer's close.
async fn read_request(s: &mut (impl AsyncReadExt + Unpin)) -> Vec<u8> {
    let mut seen = Vec::new();
    let mut chunk = [0u8; 4096];
    while !request_complete(&seen) {
        let n = s.read(&mut chunk).await.unwrap();
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&chunk[..n]);
    }
    seen
}

fn request_complete(seen: &[u8]) -> bool {
    let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&seen[..end]).to_lowercase();
    let body = &seen[end + 4..];
    if head.contains("transfer-encoding: chunked") {
        return body.windows(5).any(|w| w == b"0\r\n\r\n");
    }
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .map_or(0, |n| n.trim().parse::<usize>().unwrap());
    body.len() >= length
}

async fn conn(addr: SocketAddr) -> H1Conn {
    H1Conn::new(Stream::Plain(TcpStream::connect(addr).await.unwrap()), addr)
}

fn get(path: &str) -> Request<ReqBody> {
    Request::get(path)
        .header("host", "auth.example.com")
        .body(ReqBody::empty())
        .unwrap()
}

/// The whole body: its bytes and trailers, and whether the connection
/// came back for reuse.
async fn read_all(resp: Response<H1Body>) -> (Vec<u8>, Option<HeaderMap>, bool) {
    let mut body = resp.into_body();
    let mut bytes = Vec::new();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.unwrap();
        match frame.into_data() {
            Ok(d) => bytes.extend_from_slice(&d),
            Err(f) => trailers = f.into_trailers().ok(),
        }
    }
    (bytes, trailers, body.take_conn().is_some())
}

#[tokio::test]
async fn a_content_length_answer_is_read_and_the_connection_comes_back() {
    let (addr, seen) = upstream(
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-a: 1\r\nx-a: 2\r\n\r\nhello",
        false,
    )
    .await;
    let resp = send(conn(addr).await, get("/a?b=c"), None, false)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let values: Vec<_> = resp.headers().get_all("x-a").iter().collect();
    assert_eq!(values, ["1", "2"]);
    assert_eq!(
        String::from_utf8(seen.await.unwrap()).unwrap(),
        "GET /a?b=c HTTP/1.1\r\nhost: auth.example.com\r\n\r\n"
    );
    assert_eq!(read_all(resp).await, (b"hello".to_vec(), None, true));
}

#[tokio::test]
async fn chunked_answers_with_extensions_and_trailers_are_decoded() {
    let (addr, _) = upstream(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
          5;name=value\r\nhello\r\n6\r\n world\r\n0\r\ngrpc-status: 0\r\n\r\n",
        false,
    )
    .await;
    let resp = send(conn(addr).await, get("/"), None, false).await.unwrap();
    let (bytes, trailers, reused) = read_all(resp).await;
    assert_eq!(bytes, b"hello world");
    assert_eq!(trailers.unwrap()["grpc-status"], "0");
    assert!(reused);
}

#[tokio::test]
async fn interim_answers_are_skipped() {
    let (addr, _) = upstream(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n\
          HTTP/1.1 204 No Content\r\n\r\n",
        false,
    )
    .await;
    let resp = send(conn(addr).await, get("/"), None, false).await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert!(resp.body().is_end_stream());
    assert_eq!(read_all(resp).await, (Vec::new(), None, true));
}

#[tokio::test]
async fn connections_that_cannot_carry_another_exchange_do_not_come_back() {
    let cases: [(&'static [u8], &[u8]); 6] = [
        // Bytes after the announced body (response-queue poisoning).
        (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n\r\n", b"ok"),
        (b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok", b"ok"),
        (b"HTTP/1.1 200 OK\r\nConnection: Close\r\nContent-Length: 2\r\n\r\nok", b"ok"),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: Chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            b"ok",
        ),
        // Both framings: chunked wins (RFC 9112 §6.3).
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 99\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            b"ok",
        ),
        (b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok", b"ok"),
    ];
    for (answer, body) in cases {
        let (addr, _) = upstream(answer, false).await;
        let resp = send(conn(addr).await, get("/"), None, false).await.unwrap();
        let (bytes, _, reused) = read_all(resp).await;
        assert_eq!(bytes, body, "{}", String::from_utf8_lossy(answer));
        assert!(!reused, "{}", String::from_utf8_lossy(answer));
    }
}

#[tokio::test]
async fn reads_start_small_and_grow_for_answers_that_fill_them() {
    // A small answer leaves a connection with a buffer under a page: what
    // hundreds of connections in flight each keep.
    let (addr, _) = upstream(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", false).await;
    let resp = send(conn(addr).await, get("/"), None, false).await.unwrap();
    let mut body = resp.into_body();
    while body.frame().await.is_some() {}
    let small = body.take_conn().unwrap();
    assert!(
        small.buf.capacity() <= FIRST_READ,
        "{}",
        small.buf.capacity()
    );
    assert_eq!(small.read_size, FIRST_READ);

    // A head many times the first read's room and a large body, sent at
    // once, arrive whole; the connection's reads have grown to full size.
    let cookies: String = (0..20)
        .map(|i| format!("set-cookie: c{i}={}\r\n", "v".repeat(1500)))
        .collect();
    let payload = "b".repeat(200 * 1024);
    let answer = format!(
        "HTTP/1.1 200 OK\r\n{cookies}content-length: {}\r\n\r\n{payload}",
        payload.len()
    );
    let (addr, _) = upstream(answer.into_bytes().leak(), false).await;
    let resp = send(conn(addr).await, get("/"), None, false).await.unwrap();
    assert_eq!(resp.headers().get_all("set-cookie").iter().count(), 20);
    let mut body = resp.into_body();
    let mut got = 0;
    while let Some(frame) = body.frame().await {
        got += frame.unwrap().into_data().unwrap().len();
    }
    assert_eq!(got, payload.len());
    assert_eq!(body.take_conn().unwrap().read_size, READ_CHUNK);
}

#[tokio::test]
async fn a_body_until_close_ends_with_the_connection() {
    let (addr, _) = upstream(b"HTTP/1.1 200 OK\r\n\r\nall of it", true).await;
    let resp = send(conn(addr).await, get("/"), None, false).await.unwrap();
    assert_eq!(read_all(resp).await, (b"all of it".to_vec(), None, false));
}

#[tokio::test]
async fn a_head_answer_has_no_body_whatever_its_content_length() {
    let (addr, _) = upstream(b"HTTP/1.1 200 OK\r\ncontent-length: 1234\r\n\r\n", false).await;
    let mut req = get("/");
    *req.method_mut() = Method::HEAD;
    let resp = send(conn(addr).await, req, None, false).await.unwrap();
    assert!(resp.body().is_end_stream());
    assert_eq!(read_all(resp).await, (Vec::new(), None, true));
}

#[tokio::test]
async fn a_request_body_of_known_size_goes_with_its_content_length() {
    let (addr, seen) = upstream(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", false).await;
    let req = Request::post("/")
        .body(ReqBody::full(Bytes::from_static(b"abc")))
        .unwrap();
    send(conn(addr).await, req, None, false).await.unwrap();
    let seen = String::from_utf8(seen.await.unwrap()).unwrap();
    assert_eq!(seen, "POST / HTTP/1.1\r\ncontent-length: 3\r\n\r\nabc");

    // The framing field is steer's own, whatever the request carried.
    let (addr, seen) = upstream(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", false).await;
    let req = Request::post("/")
        .header("content-length", "+3")
        .body(ReqBody::full(Bytes::from_static(b"abc")))
        .unwrap();
    send(conn(addr).await, req, None, false).await.unwrap();
    let seen = String::from_utf8(seen.await.unwrap()).unwrap();
    assert_eq!(seen, "POST / HTTP/1.1\r\ncontent-length: 3\r\n\r\nabc");

    // Chunked request bodies and their trailers: tests/it/protocol.rs sends
    // them through steer to an HTTP/1.1 upstream.
}

#[tokio::test]
async fn malformed_answers_are_errors_not_panics() {
    let cases: [&'static [u8]; 6] = [
        b"HTTP/1.1 200 OK\r\ncontent-length: 1, 2\r\n\r\nx",
        b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
        b"NOT HTTP AT ALL\r\n\r\n",
        b"HTTP/1.1 999999 Big\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
    ];
    for answer in cases {
        let (addr, _) = upstream(answer, true).await;
        let err = send(conn(addr).await, get("/"), None, false)
            .await
            .unwrap_err();
        assert!(
            matches!(err.error, ClientError::Broken { .. }),
            "{}: {}",
            String::from_utf8_lossy(answer),
            err.error
        );
    }
    let bodies: [&'static [u8]; 4] = [
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nokXX",
        b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort",
        // An empty chunk-size line is not a last chunk.
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\r\n\r\n",
    ];
    for answer in bodies {
        let (addr, _) = upstream(answer, true).await;
        let resp = send(conn(addr).await, get("/"), None, false).await.unwrap();
        let got = resp.into_body().collect().await;
        assert!(got.is_err(), "{}", String::from_utf8_lossy(answer));
    }
}

/// Polls `conn.is_usable(true)` (letting the runtime collect socket events
/// between polls) until it says no, for at most 5 s.
async fn becomes_unusable(conn: &mut H1Conn, never_seen: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while conn.is_usable(true) {
        assert!(std::time::Instant::now() < deadline, "{never_seen}");
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn an_idle_connection_the_upstream_closed_is_not_usable() {
    let (addr, _) = upstream(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", true).await;
    let resp = send(conn(addr).await, get("/"), None, false).await.unwrap();
    let mut body = resp.into_body();
    assert!(body.frame().await.is_none());
    let mut conn = body.take_conn().unwrap();
    becomes_unusable(&mut conn, "the close was never seen").await;
}

/// A TLS upstream that answers the first request with `answer` followed,
/// in the same write, by `late` (bytes of an answer nobody asked for).
async fn tls_upstream(answer: Vec<u8>, late: &'static [u8]) -> (SocketAddr, rustls::RootCertStore) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.cert.der().clone()], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut s = acceptor.accept(tcp).await.unwrap();
        read_request(&mut s).await;
        let mut chunk = [0u8; 4096];
        let mut out = answer;
        out.extend_from_slice(late);
        s.write_all(&out).await.unwrap();
        s.flush().await.unwrap();
        // Held open until the test ends.
        let _ = s.read(&mut chunk).await;
    });
    (addr, roots)
}

#[tokio::test]
async fn late_bytes_rustls_holds_make_a_tls_connection_unusable() {
    // The first answer fills a new connection's first read exactly, so the
    // late bytes stay decrypted in rustls while the socket shows nothing.
    let head = b"HTTP/1.1 200 OK\r\ncontent-length: ";
    let mut answer = head.to_vec();
    let body_len = (0..FIRST_READ)
        .rev()
        .find(|n| head.len() + n.to_string().len() + 4 + n == FIRST_READ)
        .unwrap();
    answer.extend_from_slice(format!("{body_len}\r\n\r\n").as_bytes());
    answer.resize(FIRST_READ, b'x');
    let late = b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nlate";
    let (addr, roots) = tls_upstream(answer, late).await;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    let conn = H1Conn::new(Stream::Tls(Box::new(tls)), addr);
    let resp = send(conn, get("/"), None, false).await.unwrap();
    let mut body = resp.into_body();
    let mut got = 0;
    while let Some(frame) = body.frame().await {
        got += frame.unwrap().into_data().unwrap().len();
    }
    assert_eq!(got, body_len);
    let mut conn = body.take_conn().expect("the answer ended cleanly");
    becomes_unusable(
        &mut conn,
        "a connection with an unasked answer in rustls was judged usable",
    )
    .await;
}

#[tokio::test]
async fn an_idle_connection_the_upstream_wrote_to_is_not_usable() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (late_tx, late_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        read_request(&mut s).await;
        let mut chunk = [0u8; 4096];
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        // Once the connection is idle: an answer nobody asked for.
        let _ = late_rx.await;
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nlate")
            .await
            .unwrap();
        let _ = s.read(&mut chunk).await;
    });
    let resp = send(conn(addr).await, get("/"), None, false).await.unwrap();
    let mut body = resp.into_body();
    assert!(body.frame().await.is_none());
    let mut conn = body.take_conn().unwrap();
    assert!(conn.is_usable(true), "nothing has arrived yet");
    late_tx.send(()).unwrap();
    becomes_unusable(&mut conn, "the late answer was never seen").await;
}

#[tokio::test]
async fn a_close_the_runtime_has_not_collected_yet_is_seen_for_a_request_that_cannot_go_again() {
    // The upstream is a plain thread, and the test blocks on it, so tokio's
    // driver cannot collect the FIN's event before the check.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (close_tx, close_rx) = std::sync::mpsc::channel::<()>();
    let (closed_tx, closed_rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        use std::io::{Read as _, Write as _};
        let (mut s, _) = listener.accept().unwrap();
        let mut seen = Vec::new();
        let mut chunk = [0u8; 4096];
        while !request_complete(&seen) {
            let n = s.read(&mut chunk).unwrap();
            seen.extend_from_slice(&chunk[..n]);
        }
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .unwrap();
        let _ = close_rx.recv();
        drop(s);
        let _ = closed_tx.send(());
    });
    let resp = send(conn(addr).await, get("/"), None, false).await.unwrap();
    let mut body = resp.into_body();
    assert!(body.frame().await.is_none());
    let mut conn = body.take_conn().unwrap();
    close_tx.send(()).unwrap();
    closed_rx
        .recv_timeout(std::time::Duration::from_secs(5))
        .unwrap();
    assert!(
        !conn.is_usable(false),
        "a closed connection was lent to a request that cannot be sent again"
    );
}

#[test]
fn field_values_of_a_parsed_head_do_not_keep_the_read_buffer() {
    // An HTTP/2 client's HPACK table keeps the values it indexes for as
    // long as the client stays; they must not pin 16 KiB each.
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    buf.extend_from_slice(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok",
    );
    let head = parse_head(&mut buf).unwrap().unwrap();
    assert_eq!(head.headers["content-type"], "text/plain");
    assert_eq!(&buf[..], b"ok");
    buf.clear();
    assert!(
        buf.try_reclaim(READ_CHUNK),
        "the read buffer is shared with the head's field values"
    );
    drop(head);
}

#[test]
fn common_field_names_are_found_in_any_spelling_and_others_are_not() {
    let common = [
        "host",
        "date",
        "etag",
        "vary",
        "accept",
        "cookie",
        "server",
        "origin",
        "referer",
        "location",
        "connection",
        "user-agent",
        "set-cookie",
        "content-type",
        "x-request-id",
        "cache-control",
        "authorization",
        "last-modified",
        "content-length",
        "accept-encoding",
        "accept-language",
        "x-forwarded-for",
        "content-encoding",
        "transfer-encoding",
    ];
    for name in common {
        let title: String = name
            .split('-')
            .map(|w| w[..1].to_ascii_uppercase() + &w[1..])
            .collect::<Vec<_>>()
            .join("-");
        for spelling in [name.to_owned(), title, name.to_ascii_uppercase()] {
            // The same name as parsed (matches on header constants
            // depend on it), not only the same text.
            let parsed = HeaderName::from_bytes(spelling.as_bytes()).unwrap();
            assert_eq!(common_name(spelling.as_bytes()), Some(parsed), "{spelling}");
        }
    }
    // Same length and first and last letter as a common name, or not a
    // name: not found.
    for other in [
        "hoot",
        "x-served-by",
        "content-tape",
        "ho\0t",
        "",
        "h",
        "accept-charset",
    ] {
        assert!(common_name(other.as_bytes()).is_none(), "{other:?}");
    }
    for invalid in ["", "ho t", "ho\0t", "content-length:"] {
        assert!(field_name(invalid.as_bytes()).is_err(), "{invalid:?}");
    }
}
