//! WebSocket (HTTP/1.1 Upgrade) through steer to an echo server.

// tungstenite fixes the callback's error type; it is not ours to box.
#![allow(clippy::result_large_err)]

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

/// A WebSocket echo server; answers the Host it saw as its first message.
async fn echo_server() -> std::net::SocketAddr {
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
