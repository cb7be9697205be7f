//! GraphQL over websocket at `/graphql/ws`, in both sub-protocols a
//! console may speak.

use crate::support::{TestEnv, small_sim};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

async fn connect(
    env: &TestEnv,
    protocol: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let url = env.url("/graphql/ws").replace("http://", "ws://");
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("sec-websocket-protocol", protocol.parse().unwrap());
    let (socket, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(
        response.headers()["sec-websocket-protocol"]
            .to_str()
            .unwrap(),
        protocol
    );
    socket
}

async fn next_json(
    socket: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> Value {
    loop {
        let message = tokio::time::timeout(std::time::Duration::from_secs(5), socket.next())
            .await
            .expect("a message within 5 s")
            .expect("socket open")
            .expect("valid frame");
        if let Message::Text(text) = message {
            let value: Value = serde_json::from_str(&text).unwrap();
            if value["type"] == "ping" || value["type"] == "ka" {
                continue;
            }
            return value;
        }
    }
}

#[tokio::test]
async fn graphql_transport_ws_runs_a_query() {
    let env = TestEnv::start(small_sim(), |_| {}).await;
    let mut socket = connect(&env, "graphql-transport-ws").await;
    socket
        .send(Message::text(
            json!({"type": "connection_init"}).to_string(),
        ))
        .await
        .unwrap();
    assert_eq!(next_json(&mut socket).await["type"], "connection_ack");
    socket
        .send(Message::text(
            json!({"type": "subscribe", "id": "1", "payload": {"query": "{ hostStats { total } }"}})
                .to_string(),
        ))
        .await
        .unwrap();
    let next = next_json(&mut socket).await;
    assert_eq!(next["type"], "next");
    assert_eq!(next["id"], "1");
    let total = env.total_hosts();
    assert_eq!(next["payload"]["data"]["hostStats"]["total"], total);
    let complete = next_json(&mut socket).await;
    assert_eq!(complete["type"], "complete");
    env.stop().await;
}

#[tokio::test]
async fn legacy_graphql_ws_runs_a_query() {
    let env = TestEnv::start(small_sim(), |_| {}).await;
    let mut socket = connect(&env, "graphql-ws").await;
    socket
        .send(Message::text(
            json!({"type": "connection_init"}).to_string(),
        ))
        .await
        .unwrap();
    assert_eq!(next_json(&mut socket).await["type"], "connection_ack");
    socket
        .send(Message::text(
            json!({"type": "start", "id": "a", "payload": {"query": "{ schedulers { address } }"}})
                .to_string(),
        ))
        .await
        .unwrap();
    let data = next_json(&mut socket).await;
    assert_eq!(data["type"], "data");
    assert_eq!(
        data["payload"]["data"]["schedulers"]
            .as_array()
            .unwrap()
            .len(),
        6
    );
    env.stop().await;
}
