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
