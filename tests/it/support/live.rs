//! What the live-data tests share: a fast watch interval, a gateway
//! configured for it, waiting with a deadline, and reading events.

use std::time::{Duration, Instant};

use dfgraph::config::Config;
use dfgraph_sim::SimCluster;
use serde_json::{Value, json};

use super::gateway_config;
use super::redis::RedisServer;
use super::ws::WsClient;

pub const INTERVAL: Duration = Duration::from_millis(200);
pub const LEASE_TTL: Duration = Duration::from_millis(800);

pub const HOST_EVENTS: &str = "subscription { hostEvents { kind host { id hostname } changedFields observedAt schedulerClusterId } }";
pub const HOST: &str =
    "query($id: ID!) { host(id: $id, schedulerClusterId: \"1\") { id hostname } }";

pub fn live_config(sim: &SimCluster, redis: Option<&RedisServer>) -> Config {
    let mut config = gateway_config(sim);
    config.cache.enabled = true;
    config.redis = redis.map(|r| r.url());
    config.watch.interval = INTERVAL;
    config.watch.lease_ttl = LEASE_TTL;
    config
}

/// The data of a query that must not fail.
pub async fn query(gateway_url: &str, query: &str, variables: Value) -> Value {
    response(gateway_url, query, variables).await["data"].clone()
}

/// The whole response (data and extensions) of a query that must not fail.
pub async fn response(gateway_url: &str, query: &str, variables: Value) -> Value {
    let body: Value = reqwest::Client::new()
        .post(format!("{gateway_url}/graphql"))
        .json(&json!({"query": query, "variables": variables}))
        .send()
        .await
        .expect("request sent")
        .json()
        .await
        .expect("JSON body");
    assert!(body.get("errors").is_none(), "{body}");
    body
}

pub async fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The payload of the next `next` message for subscription `id`.
pub async fn next_event(client: &mut WsClient, id: &str, within: Duration) -> Value {
    let message = client.message(within).await;
    assert_eq!(message["type"], "next", "{message}");
    assert_eq!(message["id"], id, "{message}");
    assert!(message["payload"].get("errors").is_none(), "{message}");
    message["payload"]["data"].clone()
}

pub fn lease_holders(redis: &RedisServer, clusters: &[u64]) -> Vec<Option<String>> {
    let mut conn = redis.conn();
    clusters
        .iter()
        .map(|c| {
            redis::cmd("GET")
                .arg(dfgraph::cache::keys::watch_lease(*c))
                .query(&mut conn)
                .unwrap()
        })
        .collect()
}
