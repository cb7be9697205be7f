//! `/graphql/ws` as the graphql-transport-ws spec says it behaves, probed
//! with a raw websocket client: each close code, malformed frames, limits,
//! pings; and the server stays healthy through all of it.

use std::time::Duration;

use crate::support::ws::{Received, WsClient};
use crate::support::{TestEnv, small_sim};
use futures::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

const SECOND: Duration = Duration::from_secs(1);
const HOST_EVENTS: &str = "subscription { hostEvents { kind } }";

async fn env() -> TestEnv {
    TestEnv::start(small_sim(), |config| {
        config.subscriptions.init_timeout = Duration::from_millis(300);
        config.subscriptions.keep_alive = Duration::from_millis(200);
        config.subscriptions.idle_timeout = Duration::from_secs(5);
        config.subscriptions.per_connection = 2;
    })
    .await
}

async fn still_healthy(env: &TestEnv) {
    let data = env.data("{ hostStats { total } }", json!({})).await;
    assert!(data["hostStats"]["total"].as_u64().unwrap() > 0);
    let mut client = WsClient::ready(&env.gateway.url()).await;
    client
        .subscribe("q", "{ hostStats { total } }", json!({}))
        .await;
    assert_eq!(client.message(5 * SECOND).await["type"], "next");
}

#[tokio::test]
async fn each_misuse_gets_the_close_code_the_spec_names() {
    let env = env().await;
    let url = env.gateway.url();

    let mut silent = WsClient::connect(&url, "graphql-transport-ws").await;
    assert_eq!(
        silent.close_code(5 * SECOND).await,
        Some(4408),
        "no connection_init"
    );

    let mut eager = WsClient::connect(&url, "graphql-transport-ws").await;
    eager.subscribe("1", HOST_EVENTS, json!({})).await;
    assert_eq!(
        eager.close_code(5 * SECOND).await,
        Some(4401),
        "subscribe before ack"
    );

    let mut twice = WsClient::ready(&url).await;
    twice.send(json!({"type": "connection_init"})).await;
    assert_eq!(
        twice.close_code(5 * SECOND).await,
        Some(4429),
        "second connection_init"
    );

    let mut duplicate = WsClient::ready(&url).await;
    duplicate.subscribe("same", HOST_EVENTS, json!({})).await;
    duplicate.subscribe("same", HOST_EVENTS, json!({})).await;
    assert_eq!(
        duplicate.close_code(5 * SECOND).await,
        Some(4409),
        "duplicate id"
    );

    for (what, text) in [
        ("not JSON", "{nope"),
        ("not an object", "[1,2]"),
        ("no type", r#"{"id":"1"}"#),
        ("unknown type", r#"{"type":"launch"}"#),
        (
            "subscribe without id",
            r#"{"type":"subscribe","payload":{"query":"{ __typename }"}}"#,
        ),
        (
            "payload not a request",
            r#"{"type":"subscribe","id":"1","payload":{"query":7}}"#,
        ),
    ] {
        let mut client = WsClient::ready(&url).await;
        client.send_text(text).await;
        assert_eq!(client.close_code(5 * SECOND).await, Some(4400), "{what}");
    }
    let mut binary = WsClient::ready(&url).await;
    binary
        .socket
        .send(Message::binary(vec![1u8, 2, 3]))
        .await
        .unwrap();
    assert_eq!(
        binary.close_code(5 * SECOND).await,
        Some(4400),
        "binary frame"
    );

    still_healthy(&env).await;
    assert_eq!(env.gateway.state.events.live_subscriptions(), 0);
    env.stop().await;
}

#[tokio::test]
async fn pings_are_answered_and_sent() {
    let env = env().await;
    let mut client = WsClient::ready(&env.gateway.url()).await;
    client
        .send(json!({"type": "ping", "payload": {"n": 1}}))
        .await;
    let pong = client.message(5 * SECOND).await;
    assert_eq!(pong, json!({"type": "pong", "payload": {"n": 1}}));
    // The server pings on its own every keep-alive interval.
    let frame = tokio::time::timeout(5 * SECOND, async {
        use futures::StreamExt;
        loop {
            if let Some(Ok(Message::Text(text))) = client.socket.next().await
                && text.contains("\"ping\"")
            {
                return text.to_string();
            }
        }
    })
    .await
    .expect("a server ping");
    assert_eq!(frame, r#"{"type":"ping"}"#);
    env.stop().await;
}

#[tokio::test]
async fn operations_are_limited_per_connection_and_complete_ends_them() {
    let env = env().await;
    let mut client = WsClient::ready(&env.gateway.url()).await;
    client.subscribe("a", HOST_EVENTS, json!({})).await;
    client.subscribe("b", HOST_EVENTS, json!({})).await;
    client.subscribe("c", HOST_EVENTS, json!({})).await;
    let refused = client.message(5 * SECOND).await;
    assert_eq!(refused["type"], "error");
    assert_eq!(refused["id"], "c");
    assert_eq!(
        refused["payload"][0]["extensions"]["code"],
        "TOO_MANY_SUBSCRIPTIONS"
    );
    let live = || env.gateway.state.events.live_subscriptions();
    assert_eq!(live(), 2);

    client.send(json!({"type": "complete", "id": "a"})).await;
    tokio::time::timeout(5 * SECOND, async {
        while live() != 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("complete from the client ends the subscription");
    // The freed slot can be used again, even with the old id.
    client.subscribe("a", HOST_EVENTS, json!({})).await;
    assert_eq!(client.receive(SECOND / 2).await, Received::Nothing);
    assert_eq!(live(), 2);

    drop(client);
    tokio::time::timeout(5 * SECOND, async {
        while live() != 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("a closed connection leaves no subscription behind");
    env.stop().await;
}

#[tokio::test]
async fn bad_operations_get_an_error_message_and_the_connection_lives() {
    let env = env().await;
    let mut client = WsClient::ready(&env.gateway.url()).await;
    client
        .subscribe("v", "subscription { noSuchField }", json!({}))
        .await;
    let invalid = client.message(5 * SECOND).await;
    assert_eq!(invalid["type"], "error", "{invalid}");
    assert_eq!(invalid["id"], "v");

    // A subscription whose source cannot start (no such peer) is an
    // `error` message too: the operation ends without `complete`.
    let peer = env.sim.peers(1).remove(0);
    client
        .subscribe(
            "p",
            "subscription($h: ID!, $t: ID!) { peerStateChanged(hostId: $h, taskId: $t, peerId: \"nobody\") { to } }",
            json!({"h": peer.host.unwrap().id, "t": peer.task.unwrap().id}),
        )
        .await;
    let missing = client.message(5 * SECOND).await;
    assert_eq!(missing["type"], "error", "{missing}");
    assert_eq!(missing["payload"][0]["extensions"]["code"], "NOT_FOUND");

    client
        .subscribe("ok", "{ hostStats { total } }", json!({}))
        .await;
    assert_eq!(client.message(5 * SECOND).await["type"], "next");
    env.stop().await;
}

#[tokio::test]
async fn legacy_graphql_ws_subscribes_and_stops() {
    let env = env().await;
    let mut client = WsClient::connect(&env.gateway.url(), "graphql-ws").await;
    client
        .send(json!({"type": "connection_init", "payload": {}}))
        .await;
    assert_eq!(client.message(5 * SECOND).await["type"], "connection_ack");
    client
        .send(json!({"type": "start", "id": "1", "payload": {"query": HOST_EVENTS}}))
        .await;
    tokio::time::timeout(5 * SECOND, async {
        while env.gateway.state.events.live_subscriptions() != 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the subscription starts");
    client.send(json!({"type": "stop", "id": "1"})).await;
    assert_eq!(
        client.message(5 * SECOND).await,
        json!({"type": "complete", "id": "1"})
    );
    // `stop` ended the operation itself, with the connection still open.
    tokio::time::timeout(5 * SECOND, async {
        while env.gateway.state.events.live_subscriptions() != 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the stopped subscription is gone");
    client.send(json!({"type": "connection_terminate"})).await;
    assert_eq!(client.close_code(5 * SECOND).await, Some(1000));
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_disconnected_not_buffered_for() {
    let env = TestEnv::start(small_sim(), |config| {
        config.watch.interval = Duration::from_millis(50);
        config.watch.lease_ttl = Duration::from_millis(500);
        config.subscriptions.send_queue = 4;
        config.subscriptions.slow_consumer_timeout = Duration::from_millis(300);
    })
    .await;
    let mut reader = WsClient::ready(&env.gateway.url()).await;
    reader
        .subscribe(
            "h",
            "subscription { hostEvents(includeResourceChanges: true) { host { hostname } } }",
            json!({}),
        )
        .await;
    let live = || env.gateway.state.events.live_subscriptions();
    tokio::time::timeout(5 * SECOND, async {
        while live() != 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("subscribed");
    // From here on the client reads nothing while hosts change fast with
    // large payloads, until the server gives up on it.
    let hosts = env.sim.hosts(1);
    let mut round = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while live() != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "slow client still connected"
        );
        round += 1;
        for host in &hosts {
            let mut host = host.clone();
            host.hostname = format!("{round}-{}", "x".repeat(4096));
            env.sim.upsert_host(host);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The server let go of the socket too: what was in flight drains, then
    // the connection ends.
    let drained = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match reader.receive(Duration::from_secs(10)).await {
                Received::Message(_) => continue,
                Received::Closed(_) => return true,
                Received::Nothing => return false,
            }
        }
    })
    .await;
    assert_eq!(
        drained,
        Ok(true),
        "the server kept the slow client's socket open"
    );
    still_healthy(&env).await;
    env.stop().await;
}
