use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Response, StatusCode};
use http_body::Frame;
use http_body_util::BodyExt as _;
use http_body_util::combinators::BoxBody;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::*;

fn parsed(bytes: &[u8]) -> (Parsed, BytesMut) {
    let mut buf = BytesMut::from(bytes);
    (parse(&mut buf), buf)
}

#[test]
fn a_plain_get_is_taken_and_what_follows_stays() {
    let (p, rest) = parsed(b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nCookie: c=1\r\n\r\nGET /n");
    let Parsed::Own { req, close } = p else {
        panic!("not taken");
    };
    assert!(!close);
    assert_eq!(req.method(), Method::GET);
    assert_eq!(req.uri(), "/a?b=1");
    assert_eq!(req.version(), Version::HTTP_11);
    assert_eq!(req.headers()["host"], "x");
    assert_eq!(req.headers()["cookie"], "c=1");
    assert_eq!(&rest[..], b"GET /n");
}

#[test]
fn a_body_that_came_with_its_head_is_taken_with_it() {
    let (p, rest) = parsed(b"POST /t HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET /n");
    let Parsed::Own { req, .. } = p else {
        panic!("not taken");
    };
    assert_eq!(req.headers()["content-length"], "5");
    let body = futures_util::FutureExt::now_or_never(req.into_body().collect())
        .unwrap()
        .unwrap()
        .to_bytes();
    assert_eq!(&body[..], b"hello");
    assert_eq!(&rest[..], b"GET /n");
    let (p, _) = parsed(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
    let Parsed::Own { req, .. } = p else {
        panic!("not taken");
    };
    assert!(http_body::Body::is_end_stream(req.body()));
}

#[test]
fn connection_close_is_noted() {
    let (p, _) = parsed(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Close\r\n\r\n");
    assert!(matches!(p, Parsed::Own { close: true, .. }));
}

#[test]
fn a_partial_head_waits_for_more() {
    let (p, rest) = parsed(b"GET / HTTP/1.1\r\nHost: x\r\n");
    assert!(matches!(p, Parsed::Partial));
    assert_eq!(rest.len(), 25);
}

#[test]
fn what_needs_hyper_goes_to_hyper_with_every_byte() {
    let cases: [&[u8]; 15] = [
        // A body still on its way, or framed in any way but one number.
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nab",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nab",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2, 2\r\n\r\nab",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +2\r\n\r\nab",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\nab",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nTE: trailers\r\n\r\n",
        b"GET / HTTP/1.0\r\nHost: x\r\n\r\n",
        b"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n",
        b"GET / HTTP/1.1\r\nHo st: x\r\n\r\n",
        b"GET /\x7f HTTP/1.1\r\nHost: x\r\n\r\n",
        // httparse takes it, `http` refuses the target: the head is put
        // back as it was.
        b"GET /\xff HTTP/1.1\r\nHost: x\r\n\r\n",
    ];
    for case in cases {
        let (p, rest) = parsed(case);
        assert!(
            matches!(p, Parsed::Hyper),
            "{}",
            String::from_utf8_lossy(case)
        );
        assert_eq!(&rest[..], case, "{}", String::from_utf8_lossy(case));
    }
}

#[test]
fn more_fields_than_the_slots_go_to_hyper() {
    let mut head = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..MAX_FIELDS {
        head.extend_from_slice(format!("x-{i}: 1\r\n").as_bytes());
    }
    head.extend_from_slice(b"\r\n");
    assert!(matches!(parsed(&head).0, Parsed::Hyper));
}

/// A response to encode: status, fields, what its body says of its length.
struct Case {
    method: &'static str,
    keep_alive: bool,
    status: u16,
    fields: &'static [(&'static str, &'static str)],
    len: BodyLen,
}

/// A head that says its body is chunked.
const CHUNKED: &[(&str, &str)] = &[("transfer-encoding", "chunked")];

fn case(
    method: &'static str,
    keep_alive: bool,
    status: u16,
    fields: &'static [(&'static str, &'static str)],
    len: BodyLen,
) -> Case {
    Case {
        method,
        keep_alive,
        status,
        fields,
        len,
    }
}

fn response<B>(case: &Case, body: B) -> Response<B> {
    let mut resp = Response::new(body);
    *resp.status_mut() = StatusCode::from_u16(case.status).unwrap();
    for (name, value) in case.fields {
        resp.headers_mut().append(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    resp
}

fn hyper_body(len: BodyLen) -> BoxBody<Bytes, Infallible> {
    match len {
        BodyLen::Empty => http_body_util::Empty::new().boxed(),
        BodyLen::Known(n) => http_body_util::Full::new(Bytes::from(vec![b'a'; n as usize])).boxed(),
        BodyLen::Unknown => {
            http_body_util::StreamBody::new(futures_util::stream::iter([Ok::<_, Infallible>(
                Frame::data(Bytes::from_static(b"abc")),
            )]))
            .boxed()
        }
    }
}

/// The date's value replaced: it may tick between the two heads.
fn normalised(head: &[u8]) -> String {
    String::from_utf8_lossy(head)
        .split("\r\n")
        .map(|line| {
            if line.starts_with("date: ") {
                "date: *"
            } else {
                line
            }
        })
        .collect::<Vec<_>>()
        .join("\r\n")
}

/// The head hyper's HTTP/1.1 server writes for `case`.
async fn hyper_head(case: Arc<Case>) -> String {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let made = case.clone();
    let service = hyper::service::service_fn(move |_req| {
        let made = made.clone();
        async move { Ok::<_, Infallible>(response(&made, hyper_body(made.len))) }
    });
    tokio::spawn(
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(server), service),
    );
    let mut client = client;
    let close = if case.keep_alive {
        ""
    } else {
        "Connection: close\r\n"
    };
    let req = format!("{} / HTTP/1.1\r\nHost: x\r\n{close}\r\n", case.method);
    client.write_all(req.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut chunk = [0u8; 1024];
        let n = client.read(&mut chunk).await.unwrap();
        assert!(n > 0, "hyper closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&chunk[..n]);
    }
    let end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    normalised(&got[..end])
}

fn own_head(case: &Case) -> (String, Framing, bool) {
    let (mut parts, ()) = response(case, ()).into_parts();
    let mut out = Vec::new();
    let head_only = case.method == "HEAD";
    let (framing, last) =
        encode_head(&mut out, &mut parts, case.len, head_only, case.keep_alive).unwrap();
    (normalised(&out), framing, last)
}

#[tokio::test]
async fn response_heads_are_the_bytes_hyper_writes() {
    use BodyLen::{Empty, Known, Unknown};
    let cases = [
        case(
            "GET",
            true,
            200,
            &[("content-type", "text/plain")],
            Known(5),
        ),
        case("GET", true, 200, &[("content-length", "5")], Known(5)),
        case("GET", true, 200, &[], Empty),
        case("GET", true, 200, &[("content-length", "5")], Empty),
        case("GET", true, 200, &[], Unknown),
        case("GET", true, 200, &[("transfer-encoding", "gzip")], Unknown),
        case("GET", true, 200, &[("trailer", "grpc-status")], Unknown),
        case("GET", true, 200, &[("content-length", "3")], Unknown),
        case("HEAD", true, 200, &[], Known(5)),
        case("HEAD", true, 200, &[("content-length", "7")], Empty),
        case("HEAD", true, 200, &[], Unknown),
        case("HEAD", true, 200, &[], Known(0)),
        case("HEAD", true, 200, CHUNKED, Empty),
        case("GET", true, 204, &[], Empty),
        case("GET", true, 204, &[("content-length", "5")], Known(5)),
        case("GET", true, 204, CHUNKED, Unknown),
        case("GET", true, 304, &[], Known(5)),
        case("GET", true, 200, CHUNKED, Known(3)),
        case(
            "GET",
            true,
            304,
            &[("content-length", "5"), ("etag", "\"e\"")],
            Empty,
        ),
        case("GET", true, 200, &[("connection", "close")], Known(2)),
        case("GET", false, 200, &[], Known(2)),
        case("GET", false, 503, &[("connection", "x-a")], Known(2)),
        case("GET", true, 404, &[("x-a", "1"), ("x-a", "2")], Known(1)),
        case(
            "GET",
            true,
            200,
            &[("date", "Sun, 06 Nov 1994 08:49:37 GMT")],
            Known(1),
        ),
        case("GET", true, 418, &[], Known(1)),
        case("GET", true, 599, &[], Known(1)),
    ];
    for case in cases {
        let case = Arc::new(case);
        let (own, _, _) = own_head(&case);
        assert_eq!(
            own,
            hyper_head(case.clone()).await,
            "{} {} {:?} {:?} keep-alive {}",
            case.method,
            case.status,
            case.fields,
            case.len,
            case.keep_alive
        );
    }
}

#[test]
fn framing_and_close_follow_the_head() {
    let (_, framing, last) = own_head(&case("GET", true, 200, &[], BodyLen::Known(5)));
    assert_eq!((framing, last), (Framing::Length(5), false));
    let (_, framing, _) = own_head(&case("HEAD", true, 200, &[], BodyLen::Known(5)));
    assert_eq!(framing, Framing::Length(0));
    let (_, framing, _) = own_head(&case("GET", true, 304, &[], BodyLen::Known(5)));
    assert_eq!(framing, Framing::Length(0));
    let (_, framing, _) = own_head(&case("GET", true, 200, &[], BodyLen::Unknown));
    assert_eq!(framing, Framing::Chunked);
    let (_, _, last) = own_head(&case(
        "GET",
        true,
        200,
        &[("connection", "close")],
        BodyLen::Empty,
    ));
    assert!(last);
    let (_, _, last) = own_head(&case("GET", false, 200, &[], BodyLen::Empty));
    assert!(last);
}

#[test]
fn an_interim_status_is_not_sent_as_an_answer() {
    let case = Case {
        method: "GET",
        keep_alive: true,
        status: 101,
        fields: &[("upgrade", "websocket")],
        len: BodyLen::Empty,
    };
    let (head, framing, last) = own_head(&case);
    assert!(
        head.starts_with("HTTP/1.1 500 Internal Server Error\r\n"),
        "{head}"
    );
    assert!(!head.contains("upgrade"), "{head}");
    assert_eq!((framing, last), (Framing::Length(0), true));
}

#[test]
fn a_date_is_an_http_date() {
    let mut out = Vec::new();
    http_date(&mut out);
    let text = std::str::from_utf8(&out).unwrap();
    assert!(httpdate::parse_http_date(text).is_ok(), "{text}");
}
