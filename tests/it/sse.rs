//! GraphQL over Server-Sent Events (graphql-sse, distinct connections
//! mode) on `/graphql`, over real HTTP: a query, a subscription whose
//! events carry their log cursor as the SSE id, a `Last-Event-ID` resume,
//! errors after acceptance, and the same CSRF rules as any GET.

use std::time::Duration;

use crate::support::live::{INTERVAL, live_config, wait_until};
use crate::support::redis::RedisServer;
use crate::support::sse::SseClient;
use crate::support::ws::WsClient;
use crate::support::{TestEnv, small_sim};
use dfgraph::gateway::Gateway;
use dfgraph_sim::SimCluster;
use serde_json::json;

const HOST_EVENTS: &str = "subscription { hostEvents { kind host { id } cursor } }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_is_one_next_event_then_complete() {
    let env = TestEnv::start(small_sim(), |_| {}).await;
    let total = env.total_hosts();
    let mut stream = SseClient::post(
        &env.gateway.url(),
        "{ hostStats { total } }",
        json!({}),
        None,
    )
    .await;
    let (data, id) = stream.next_data(Duration::from_secs(5)).await;
    assert_eq!(data["data"]["hostStats"]["total"], total, "{data}");
    assert_eq!(id, None);
    let complete = stream.next(Duration::from_secs(5)).await.expect("complete");
    assert_eq!(complete.event, "complete");
    assert!(stream.next(Duration::from_secs(5)).await.is_none(), "ended");

    // EventSource's way: GET, the operation in the URL; the CSRF rules of
    // any GET apply (a header a browser would preflight).
    let url = format!("{}/graphql?query={{__typename}}", env.gateway.url());
    let http = reqwest::Client::new();
    let refused = http
        .get(&url)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["errors"][0]["extensions"]["code"], "CSRF_REFUSED");
    let allowed = http
        .get(&url)
        .header("accept", "text/event-stream")
        .header("apollo-require-preflight", "true")
        .send()
        .await
        .unwrap();
    let mut stream = SseClient::accepted(allowed);
    let (data, _) = stream.next_data(Duration::from_secs(5)).await;
    assert_eq!(data["data"]["__typename"], "Query");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_after_acceptance_are_next_events() {
    let env = TestEnv::start(small_sim(), |_| {}).await;
    let mut stream = SseClient::post(
        &env.gateway.url(),
        "subscription { hostEvents(after: \"not-a-cursor\") { kind } }",
        json!({}),
        None,
    )
    .await;
    let (data, _) = stream.next_data(Duration::from_secs(5)).await;
    let message = data["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(message.contains("not an event cursor"), "{data}");
    let complete = stream.next(Duration::from_secs(5)).await.expect("complete");
    assert_eq!(complete.event, "complete");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_carries_cursors_as_ids_and_last_event_id_resumes_it() {
    let redis = RedisServer::start();
    let sim = SimCluster::start(small_sim()).await.unwrap();
    let gateway = Gateway::start(live_config(&sim, Some(&redis)))
        .await
        .unwrap();
    // Someone keeps host lists watched while the SSE client is away.
    let mut keeper = WsClient::ready(&gateway.url()).await;
    keeper.subscribe("k", HOST_EVENTS, json!({})).await;
    let mut stream = SseClient::post(&gateway.url(), HOST_EVENTS, json!({}), None).await;
    wait_until("both subscriptions live", Duration::from_secs(5), || {
        gateway.state.events.live_subscriptions() == 2
    })
    .await;
    tokio::time::sleep(INTERVAL * 4).await;

    let host = sim.hosts(1).remove(0);
    assert!(sim.remove_host(1, &host.id));
    let (left, id) = stream.next_data(Duration::from_secs(5)).await;
    assert_eq!(left["data"]["hostEvents"]["kind"], "LEFT");
    assert_eq!(left["data"]["hostEvents"]["host"]["id"], host.id.as_str());
    let id = id.expect("the event's cursor as its id");
    assert_eq!(left["data"]["hostEvents"]["cursor"], id.as_str());
    drop(stream);
    let keeper_saw =
        crate::support::live::next_event(&mut keeper, "k", Duration::from_secs(5)).await;
    assert_eq!(keeper_saw["hostEvents"], left["data"]["hostEvents"]);

    // Away: the host comes back and leaves again.
    sim.upsert_host(host.clone());
    let mut missed =
        vec![crate::support::live::next_event(&mut keeper, "k", Duration::from_secs(5)).await];
    assert!(sim.remove_host(1, &host.id));
    missed.push(crate::support::live::next_event(&mut keeper, "k", Duration::from_secs(5)).await);
    let missed: Vec<_> = missed
        .into_iter()
        .map(|e| e["hostEvents"].clone())
        .collect();
    assert_eq!(missed[0]["kind"], "JOINED");
    assert_eq!(missed[1]["kind"], "LEFT");

    // Back, as EventSource reconnects: the same request, Last-Event-ID.
    let mut resumed = SseClient::post(&gateway.url(), HOST_EVENTS, json!({}), Some(&id)).await;
    for expected in &missed {
        let (data, id) = resumed.next_data(Duration::from_secs(5)).await;
        assert_eq!(&data["data"]["hostEvents"], expected);
        assert_eq!(id.as_deref(), expected["cursor"].as_str());
    }
    gateway.shutdown().await;
    sim.shutdown().await;
}
