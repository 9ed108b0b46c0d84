//! WebSocket (HTTP/1.1 Upgrade) through steer to an echo server.

// tungstenite fixes the callback's error type; it is not ours to box.
#![allow(clippy::result_large_err)]

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

/// A WebSocket echo server; answers the Host it saw as its first message.
pub async fn echo_server() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut host = String::new();
                let cb = |req: &tokio_tungstenite::tungstenite::handshake::server::Request,
                          resp: tokio_tungstenite::tungstenite::handshake::server::Response| {
                    host = req
                        .headers()
                        .get("host")
                        .and_then(|h| h.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    Ok(resp)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, cb).await else {
                    return;
                };
                let _ = ws.send(Message::text(format!("host={host}"))).await;
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() || msg.is_binary() {
                        let _ = ws.send(msg).await;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn websocket_echo_through_steer() {
    for protocol in ["http1", "h2c"] {
        let echo = echo_server().await;
        let body = format!(
            "[upstreams.ws]\nendpoints = [\"{echo}\"]\nprotocol = \"{protocol}\"\nhealth = false\n\n[[routes]]\nname = \"ws\"\nupstream = \"ws\"\n"
        );
        let steer = Steer::start_ready(&body).await;
        let url = format!("ws://{}/socket", steer.addr());
        let (mut ws, resp) = tokio_tungstenite::connect_async(url).await.unwrap();
        assert_eq!(resp.status(), 101);
        let hello = ws.next().await.unwrap().unwrap();
        assert_eq!(
            hello.into_text().unwrap().as_str(),
            format!("host={}", steer.addr())
        );
        for i in 0..3 {
            ws.send(Message::text(format!("ping {i}"))).await.unwrap();
            let back = ws.next().await.unwrap().unwrap();
            assert_eq!(
                back.into_text().unwrap().as_str(),
                format!("ping {i}"),
                "{protocol}"
            );
        }
        ws.send(Message::binary(vec![7u8; 100_000])).await.unwrap();
        let back = ws.next().await.unwrap().unwrap();
        assert_eq!(back.into_data().len(), 100_000);
        ws.close(None).await.unwrap();
    }
}

async fn ws_steer(proxy: &str) -> Steer {
    let echo = echo_server().await;
    let body = format!(
        "[upstreams.ws]\nendpoints = [\"{echo}\"]\nhealth = false\n\n[[routes]]\nname = \"ws\"\nupstream = \"ws\"\n"
    );
    Steer::start_ready_with(proxy, &body).await
}

#[tokio::test]
async fn an_idle_tunnel_is_closed_after_tunnel_idle_timeout_and_a_busy_one_is_not() {
    let steer = ws_steer("tunnel_idle_timeout = \"1s\"").await;
    let url = format!("ws://{}/socket", steer.addr());
    // Busy: a message every 250 ms for 2 s keeps it open.
    let (mut busy, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let _hello = busy.next().await.unwrap().unwrap();
    for i in 0..8 {
        busy.send(Message::text(format!("m{i}"))).await.unwrap();
        let back = busy.next().await.unwrap().unwrap();
        assert_eq!(back.into_text().unwrap().as_str(), format!("m{i}"));
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    // Idle: closed by steer within the timeout plus its check interval.
    let started = std::time::Instant::now();
    let ended = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        loop {
            match busy.next().await {
                Some(Ok(_)) => {}
                None | Some(Err(_)) => return,
            }
        }
    });
    ended.await.expect("the idle tunnel was closed");
    let took = started.elapsed();
    assert!(
        took >= std::time::Duration::from_millis(900),
        "closed after {took:?}"
    );
}

#[tokio::test]
async fn upgrades_not_in_the_allowlist_are_served_as_plain_http() {
    let blue = upstream("blue").await;
    let body = format!(
        "{}[[routes]]\nname = \"r\"\nupstream = \"blue\"\n",
        upstream_toml("blue", blue.addr(), "http1")
    );
    let steer = Steer::start_ready(&body).await;
    for (upgrade, connection) in [
        ("h2c", "Upgrade, HTTP2-Settings"),
        ("made-up/1", "upgrade, http2-settings"),
    ] {
        let a = call(
            request("GET", &steer.url("/what"))
                .header("upgrade", upgrade)
                .header("connection", connection)
                .header("http2-settings", "AAMAAABkAAQAoAAAAAIAAAAA"),
        )
        .await;
        assert_eq!(a.status, 200, "{upgrade}");
        let seen = a.json();
        let headers = &seen["headers"];
        assert!(headers.get("upgrade").is_none(), "{upgrade}: {seen}");
        // Named by Connection, so hop-by-hop.
        assert!(headers.get("http2-settings").is_none(), "{upgrade}: {seen}");
        assert!(headers.get("connection").is_none(), "{upgrade}: {seen}");
    }
}

/// The client's side of a WebSocket over HTTP/2 (RFC 8441): an extended
/// CONNECT stream, read and written as bytes, with tungstenite doing the
/// WebSocket framing (masked, as a browser's client frames are).
struct ConnectStream {
    send: h2::SendStream<bytes::Bytes>,
    recv: h2::RecvStream,
    unread: bytes::Bytes,
}

impl tokio::io::AsyncRead for ConnectStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        out: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        if self.unread.is_empty() {
            match self.recv.poll_data(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(std::io::Error::other(e))),
                Poll::Ready(Some(Ok(chunk))) => {
                    let _ = self.recv.flow_control().release_capacity(chunk.len());
                    self.unread = chunk;
                }
            }
        }
        let n = self.unread.len().min(out.remaining());
        let take = self.unread.split_to(n);
        out.put_slice(&take);
        Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncWrite for ConnectStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        use std::task::Poll;
        self.send.reserve_capacity(data.len());
        let room = loop {
            if self.send.capacity() > 0 {
                break self.send.capacity();
            }
            match self.send.poll_capacity(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(_))) => {}
                _ => return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into())),
            }
        };
        let n = room.min(data.len());
        let chunk = bytes::Bytes::copy_from_slice(&data[..n]);
        self.send
            .send_data(chunk, false)
            .map_err(std::io::Error::other)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let _ = self.send.send_data(bytes::Bytes::new(), true);
        std::task::Poll::Ready(Ok(()))
    }
}

/// An extended CONNECT's response and, on a 2xx, its stream as a WebSocket.
type Connected = (
    http::Response<()>,
    Option<tokio_tungstenite::WebSocketStream<ConnectStream>>,
);

/// Opens an h2c connection to `addr` and sends an extended CONNECT for
/// `path` with `:protocol` = `protocol`; the response and, on a 2xx, the
/// stream as a WebSocket.
async fn h2_connect(addr: std::net::SocketAddr, path: &str, protocol: &str) -> Connected {
    h2_connect_with(h2::client::Builder::new(), addr, path, protocol).await
}

async fn h2_connect_with(
    builder: h2::client::Builder,
    addr: std::net::SocketAddr,
    path: &str,
    protocol: &str,
) -> Connected {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) = builder.handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    h2_connect_on(send, addr, path, protocol).await
}

/// The extended CONNECT of [`h2_connect_with`] on a connection the caller
/// has (and may open other streams on).
async fn h2_connect_on(
    send: h2::client::SendRequest<bytes::Bytes>,
    addr: std::net::SocketAddr,
    path: &str,
    protocol: &str,
) -> Connected {
    let mut send = send.ready().await.unwrap();
    // Known once steer's SETTINGS have arrived.
    eventually("steer advertises SETTINGS_ENABLE_CONNECT_PROTOCOL", || {
        let enabled = send.is_extended_connect_protocol_enabled();
        async move { enabled }
    })
    .await;
    let mut req = http::Request::connect(format!("http://{addr}{path}"))
        .header("sec-websocket-version", "13")
        .body(())
        .unwrap();
    req.extensions_mut()
        .insert(h2::ext::Protocol::from(protocol));
    let (resp, stream) = send.send_request(req, false).unwrap();
    let resp = resp.await.unwrap();
    let (head, mut recv) = resp.into_parts();
    let resp = http::Response::from_parts(head, ());
    if !resp.status().is_success() {
        let mut text = Vec::new();
        while let Some(Ok(chunk)) = recv.data().await {
            text.extend_from_slice(&chunk);
        }
        eprintln!("{}: {}", resp.status(), String::from_utf8_lossy(&text));
        return (resp, None);
    }
    let io = ConnectStream {
        send: stream,
        recv,
        unread: bytes::Bytes::new(),
    };
    let role = tokio_tungstenite::tungstenite::protocol::Role::Client;
    let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(io, role, None).await;
    (resp, Some(ws))
}

#[tokio::test]
async fn websocket_over_http2_reaches_an_http1_websocket_upstream() {
    for protocol in ["http1", "h2c"] {
        let echo = echo_server().await;
        // Routed like the GET it becomes: a GET-only route takes it.
        let body = format!(
            "[upstreams.ws]\nendpoints = [\"{echo}\"]\nprotocol = \"{protocol}\"\nhealth = false\n\n\
             [[routes]]\nname = \"ws\"\npath_prefix = \"/socket\"\nmethods = [\"GET\"]\nupstream = \"ws\"\n"
        );
        let steer = Steer::start_ready(&body).await;
        let (resp, ws) = h2_connect(steer.addr(), "/socket", "websocket").await;
        assert_eq!(resp.status(), 200, "{protocol}: {resp:?}");
        assert!(resp.headers().get("sec-websocket-accept").is_none());
        assert!(resp.headers().get("upgrade").is_none());
        let mut ws = ws.unwrap();
        let hello = ws.next().await.unwrap().unwrap();
        // The client's :authority is the Host the upstream saw.
        assert_eq!(
            hello.into_text().unwrap().as_str(),
            format!("host={}", steer.addr()),
            "{protocol}"
        );
        for i in 0..3 {
            ws.send(Message::text(format!("ping {i}"))).await.unwrap();
            let back = ws.next().await.unwrap().unwrap();
            assert_eq!(back.into_text().unwrap().as_str(), format!("ping {i}"));
        }
        // Larger than every window steer grants: flow control both ways.
        ws.send(Message::binary(vec![7u8; 3_000_000]))
            .await
            .unwrap();
        let back = ws.next().await.unwrap().unwrap();
        assert_eq!(back.into_data().len(), 3_000_000, "{protocol}");
        // The tunnel holds the endpoint's in-flight count until it ends.
        assert_eq!(in_flight(&steer.admin()).await, 1, "{protocol}");
        ws.close(None).await.unwrap();
        // The close handshake done, the client ends its stream, as a
        // browser does.
        while ws.next().await.is_some() {}
        drop(ws);
        eventually("the tunnel is closed", || async {
            in_flight(&steer.admin()).await == 0
        })
        .await;
    }
}

#[tokio::test]
async fn extended_connect_for_other_protocols_or_without_websocket_in_upgrades_gets_501() {
    let echo = echo_server().await;
    let body = format!(
        "[upstreams.ws]\nendpoints = [\"{echo}\"]\nhealth = false\n\n[[routes]]\nname = \"ws\"\nupstream = \"ws\"\n"
    );
    let steer = Steer::start_ready(&body).await;
    let (resp, _) = h2_connect(steer.addr(), "/socket", "made-up").await;
    assert_eq!(resp.status(), 501);
    let closed = Steer::start_ready_with("upgrades = []", &body).await;
    let (resp, _) = h2_connect(closed.addr(), "/socket", "websocket").await;
    assert_eq!(resp.status(), 501);
}

#[tokio::test]
async fn an_http2_websocket_whose_client_grants_no_window_ends_after_send_timeout() {
    let echo = echo_server().await;
    let body = format!(
        "[upstreams.ws]\nendpoints = [\"{echo}\"]\nhealth = false\n\n[[routes]]\nname = \"ws\"\nupstream = \"ws\"\n"
    );
    let steer = Steer::start_ready_with("send_timeout = \"1s\"", &body).await;
    let mut zero = h2::client::Builder::new();
    zero.initial_window_size(0);
    // The echo server's greeting has nowhere to go.
    let (resp, _ws) = h2_connect_with(zero, steer.addr(), "/socket", "websocket").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(in_flight(&steer.admin()).await, 1);
    let started = std::time::Instant::now();
    eventually("the stalled tunnel is closed", || async {
        in_flight(&steer.admin()).await == 0
    })
    .await;
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(500),
        "closed after {:?}",
        started.elapsed()
    );
}

async fn in_flight(admin: &str) -> u64 {
    let v = call(request("GET", &format!("{admin}/upstreams")))
        .await
        .json();
    v["upstreams"][0]["in_flight"].as_u64().unwrap()
}

#[tokio::test]
async fn an_http2_websocket_in_use_outlives_another_stream_of_its_connection_that_stalls() {
    let echo = echo_server().await;
    let green = upstream("green").await;
    let body = format!(
        "[upstreams.ws]\nendpoints = [\"{echo}\"]\nhealth = false\n\n{}\
         [[routes]]\nname = \"ws\"\npath_prefix = \"/socket\"\nupstream = \"ws\"\n\n\
         [[routes]]\nname = \"rest\"\nupstream = \"green\"\n",
        upstream_toml("green", green.addr(), "http1")
    );
    let steer = Steer::start_ready_with("send_timeout = \"1s\"", &body).await;
    // Small stream windows, a large connection window: one stream can
    // stall while the others still move.
    let mut builder = h2::client::Builder::new();
    builder
        .initial_window_size(16 * 1024)
        .initial_connection_window_size(16 << 20);
    let tcp = tokio::net::TcpStream::connect(steer.addr()).await.unwrap();
    let (send, conn) = builder.handshake(tcp).await.unwrap();
    let conn = tokio::spawn(conn);
    let (resp, ws) = h2_connect_on(send.clone(), steer.addr(), "/socket", "websocket").await;
    assert_eq!(resp.status(), 200);
    let mut ws = ws.unwrap();
    ws.next().await.unwrap().unwrap(); // the greeting
    // A download whose client takes 16 KiB and then grants nothing more.
    let mut send = send.ready().await.unwrap();
    let get = http::Request::get(format!("http://{}/demo/bytes?n=1000000", steer.addr()))
        .body(())
        .unwrap();
    let (answer, _) = send.send_request(get, true).unwrap();
    let stalled = tokio::spawn(async move {
        let mut body = answer.await.unwrap().into_body();
        // Read, never released: no window goes back.
        loop {
            match body.data().await {
                Some(Ok(_)) => {}
                Some(Err(e)) => return e.reason(),
                None => return None,
            }
        }
    });
    // The WebSocket keeps moving while the download stalls, until steer
    // resets the download after send_timeout.
    let mut i = 0;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !stalled.is_finished() {
        assert!(
            std::time::Instant::now() < deadline,
            "the stalled download was not reset"
        );
        ws.send(Message::text(format!("ping {i}"))).await.unwrap();
        let back = ws.next().await.unwrap().unwrap();
        assert_eq!(back.into_text().unwrap().as_str(), format!("ping {i}"));
        i += 1;
    }
    assert_eq!(stalled.await.unwrap(), Some(h2::Reason::CANCEL));
    // The connection, and the tunnel on it, stay: steer closes a
    // connection only when none of its streams moved for send_timeout,
    // and then within a second (h2.rs CLOSE_GRACE).
    let until = std::time::Instant::now() + std::time::Duration::from_millis(1500);
    while std::time::Instant::now() < until {
        let sent = format!("after {i}");
        ws.send(Message::text(sent.clone()))
            .await
            .expect("the tunnel is open");
        let back = ws
            .next()
            .await
            .expect("the tunnel is open")
            .expect("an echo");
        assert_eq!(back.into_text().unwrap().as_str(), sent);
        i += 1;
    }
    assert!(!conn.is_finished(), "steer closed the connection");
}

/// A WebSocket server that sends the forwarding fields of each handshake
/// it takes on `seen` (each field's values, in order).
async fn forwarding_echo(
    seen: tokio::sync::mpsc::UnboundedSender<Vec<String>>,
) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let cb = |req: &tokio_tungstenite::tungstenite::handshake::server::Request,
                          resp: tokio_tungstenite::tungstenite::handshake::server::Response| {
                    let fields = ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded"]
                        .iter()
                        .flat_map(|name| req.headers().get_all(*name))
                        .map(|v| v.to_str().unwrap_or("").to_owned())
                        .collect();
                    let _ = seen.send(fields);
                    Ok(resp)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, cb).await else {
                    return;
                };
                while let Some(Ok(_)) = ws.next().await {}
            });
        }
    });
    addr
}

/// The forwarding fields of the next handshake `forwarding_echo` took.
async fn handshake(seen: &mut tokio::sync::mpsc::UnboundedReceiver<Vec<String>>) -> Vec<String> {
    tokio::time::timeout(std::time::Duration::from_secs(10), seen.recv())
        .await
        .expect("a handshake reaches the upstream within 10 s")
        .unwrap()
}

/// A WebSocket handshake, over HTTP/1.1 or as an HTTP/2 extended CONNECT,
/// reaches the upstream with steer's forwarding fields, once each.
#[tokio::test]
async fn a_websocket_handshake_carries_the_forwarding_fields() {
    for protocol in ["http1", "h2c"] {
        let (tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
        let echo = forwarding_echo(tx).await;
        let body = format!(
            "[upstreams.ws]\nendpoints = [\"{echo}\"]\nprotocol = \"{protocol}\"\nhealth = false\n\n[[routes]]\nname = \"ws\"\nupstream = \"ws\"\n"
        );
        let steer = Steer::start_ready(&body).await;
        let host = steer.addr().to_string();
        let expected = [
            "127.0.0.1".to_owned(),
            "http".to_owned(),
            host.clone(),
            format!("for=127.0.0.1;proto=http;host=\"{host}\""),
        ];
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{host}/socket"))
            .await
            .unwrap();
        assert_eq!(handshake(&mut seen).await, expected, "{protocol}, HTTP/1.1");
        ws.close(None).await.unwrap();
        let (resp, _ws) = h2_connect(steer.addr(), "/socket", "websocket").await;
        assert_eq!(resp.status(), 200, "{protocol}");
        assert_eq!(handshake(&mut seen).await, expected, "{protocol}, HTTP/2");
    }
}

/// Each WebSocket over HTTP/2 holds an upstream connection, a descriptor,
/// as a client connection does: it counts among the client's connections
/// (`max_connections_per_ip`) and the listener's (`max_connections`), and
/// one over either gets 503 with `Retry-After`. Before, one client's
/// HTTP/2 connections of 100 tunnels each took every descriptor.
#[tokio::test]
async fn websockets_over_http2_count_among_the_client_s_connections() {
    let steer = ws_steer("max_connections_per_ip = 3").await;
    let tcp = tokio::net::TcpStream::connect(steer.addr()).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    // The connection is one; two tunnels make three.
    let mut open = Vec::new();
    for _ in 0..2 {
        let (resp, ws) = h2_connect_on(send.clone(), steer.addr(), "/socket", "websocket").await;
        assert_eq!(resp.status(), 200);
        open.push(ws.unwrap());
    }
    let (resp, ws) = h2_connect_on(send.clone(), steer.addr(), "/socket", "websocket").await;
    assert_eq!(resp.status(), 503);
    assert!(ws.is_none());
    assert_eq!(resp.headers()["retry-after"], "1");
    // A tunnel that ends gives its place back.
    let mut first = open.remove(0);
    first.close(None).await.unwrap();
    while let Some(Ok(_)) = first.next().await {}
    tokio::io::AsyncWriteExt::shutdown(first.get_mut())
        .await
        .unwrap();
    drop(first);
    let addr = steer.addr();
    eventually("the closed tunnel's place comes back", || {
        let send = send.clone();
        async move {
            let (resp, _) = h2_connect_on(send, addr, "/socket", "websocket").await;
            resp.status() == 200
        }
    })
    .await;
    // Other requests on the connection are not counted: this one reaches
    // the upstream (which speaks only WebSocket: 502), not the cap's 503.
    let get = http::Request::get(format!("http://{addr}/plain"))
        .body(())
        .unwrap();
    let (answer, _) = send.ready().await.unwrap().send_request(get, true).unwrap();
    assert_eq!(answer.await.unwrap().status(), 502);
}
