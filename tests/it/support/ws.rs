//! A small graphql-transport-ws (and legacy graphql-ws) client over a real
//! websocket, for tests that subscribe like a console does.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub struct WsClient {
    pub socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// What the server did next.
#[derive(Debug, PartialEq)]
pub enum Received {
    Message(Value),
    Closed(Option<u16>),
    Nothing,
}

impl WsClient {
    /// Opens `/graphql/ws` of the gateway at `base` (`http://host:port`).
    pub async fn connect(base: &str, protocol: &str) -> WsClient {
        let url = format!("{}/graphql/ws", base.replace("http://", "ws://"));
        let mut request = url.into_client_request().expect("a websocket URL");
        request.headers_mut().insert(
            "sec-websocket-protocol",
            protocol.parse().expect("a header value"),
        );
        let (socket, _) = tokio_tungstenite::connect_async(request)
            .await
            .expect("websocket connects");
        WsClient { socket }
    }

    /// Connects and completes `connection_init` / `connection_ack`.
    pub async fn ready(base: &str) -> WsClient {
        let mut client = WsClient::connect(base, "graphql-transport-ws").await;
        client
            .send(json!({"type": "connection_init", "payload": {}}))
            .await;
        let ack = client.message(Duration::from_secs(5)).await;
        assert_eq!(ack["type"], "connection_ack", "{ack}");
        client
    }

    pub async fn send(&mut self, message: Value) {
        self.send_text(&message.to_string()).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.socket
            .send(Message::text(text.to_owned()))
            .await
            .expect("message sent");
    }

    pub async fn subscribe(&mut self, id: &str, query: &str, variables: Value) {
        self.send(json!({"type": "subscribe", "id": id, "payload": {"query": query, "variables": variables}}))
            .await;
    }

    /// The next protocol message other than pings (answered) and
    /// keep-alives, a close, or nothing within `within`.
    pub async fn receive(&mut self, within: Duration) -> Received {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let frame = match tokio::time::timeout_at(deadline, self.socket.next()).await {
                Err(_) => return Received::Nothing,
                Ok(None) | Ok(Some(Err(_))) => return Received::Closed(None),
                Ok(Some(Ok(frame))) => frame,
            };
            match frame {
                Message::Text(text) => {
                    let value: Value = serde_json::from_str(&text).expect("JSON from the server");
                    match value["type"].as_str() {
                        Some("ping") => self.send(json!({"type": "pong"})).await,
                        Some("ka") => {}
                        _ => return Received::Message(value),
                    }
                }
                Message::Close(frame) => return Received::Closed(frame.map(|f| f.code.into())),
                _ => {}
            }
        }
    }

    /// The next protocol message; panics on a close or silence.
    pub async fn message(&mut self, within: Duration) -> Value {
        match self.receive(within).await {
            Received::Message(value) => value,
            other => panic!("expected a message within {within:?}, got {other:?}"),
        }
    }

    /// The close code the server ends the connection with.
    pub async fn close_code(&mut self, within: Duration) -> Option<u16> {
        loop {
            match self.receive(within).await {
                Received::Message(_) => continue,
                Received::Closed(code) => return code,
                Received::Nothing => panic!("connection still open after {within:?}"),
            }
        }
    }
}
