//! Test support: a simulated cluster and a gateway on ephemeral ports, and
//! a small GraphQL-over-HTTP client, so tests read like a user's session.

pub mod live;
pub mod otlp;
pub mod proxy;
pub mod redis;
pub mod redis_cluster;
pub mod sse;
pub mod ws;

use std::time::Duration;

use dfgraph::config::Config;
use dfgraph::gateway::Gateway;
use dfgraph_sim::{SimCluster, SimConfig};
use serde_json::{Value, json};

/// A simulated Dragonfly cluster with a gateway in front of it.
pub struct TestEnv {
    pub sim: SimCluster,
    pub gateway: Gateway,
    pub http: reqwest::Client,
}

/// A small, frozen cluster: tests drive changes themselves.
pub fn small_sim() -> SimConfig {
    SimConfig {
        clusters: 2,
        schedulers_per_cluster: 3,
        hosts: 120,
        tasks: 40,
        peers_per_task: 5,
        seed: 7,
        tick_interval: None,
        ..SimConfig::default()
    }
}

/// Gateway settings pointing at `sim`, with the cache off so scheduler
/// call counts are what one request costs.
pub fn gateway_config(sim: &SimCluster) -> Config {
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        schedulers: sim
            .schedulers()
            .iter()
            .map(|s| format!("{}={}", s.cluster_id, s.addr))
            .collect(),
        ..Config::default()
    };
    config.cache.enabled = false;
    // Host probes would add ListHosts calls to the counts tests make;
    // the liveness tests turn them on. Never beyond this machine.
    config.liveness.enabled = false;
    config.liveness.networks = vec!["127.0.0.0/8".into()];
    // So would the scheduler probes of the health recorder (StatTask), and
    // its first records would stand in the event logs tests compare; the
    // scheduler history tests turn it on.
    config.event_log.scheduler_health = false;
    config.timeouts.stat = Duration::from_millis(500);
    config.timeouts.list_hosts = Duration::from_millis(1000);
    config
}

impl TestEnv {
    pub async fn start(sim: SimConfig, tweak: impl FnOnce(&mut Config)) -> TestEnv {
        let sim = SimCluster::start(sim).await.expect("simulator starts");
        let mut config = gateway_config(&sim);
        tweak(&mut config);
        let gateway = Gateway::start(config).await.expect("gateway starts");
        TestEnv {
            sim,
            gateway,
            http: reqwest::Client::new(),
        }
    }

    /// Hosts in every cluster of the simulator.
    pub fn total_hosts(&self) -> usize {
        self.sim
            .cluster_ids()
            .iter()
            .map(|&c| self.sim.hosts(c).len())
            .sum()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.gateway.url(), path)
    }

    /// POSTs a query and returns the whole JSON response body.
    pub async fn query(&self, query: &str, variables: Value) -> Value {
        let text = self.query_text(query, variables).await;
        serde_json::from_str(&text).expect("JSON body")
    }

    /// POSTs a query and returns the response body as sent (the exact
    /// digits of its numbers, which a JSON parser may round).
    pub async fn query_text(&self, query: &str, variables: Value) -> String {
        let response = self
            .http
            .post(self.url("/graphql"))
            .json(&json!({ "query": query, "variables": variables }))
            .send()
            .await
            .expect("request sent");
        assert_eq!(response.status(), 200, "status of {query}");
        response.text().await.expect("a body")
    }

    /// GETs `path` and returns the body as text, whatever the status.
    pub async fn get_text(&self, path: &str) -> String {
        let response = self.http.get(self.url(path)).send().await;
        response
            .expect("request sent")
            .text()
            .await
            .expect("a body")
    }

    /// Like [`TestEnv::query`], asserting the response has no errors.
    pub async fn data(&self, query: &str, variables: Value) -> Value {
        let body = self.query(query, variables).await;
        assert!(body.get("errors").is_none(), "unexpected errors: {body:#}");
        body["data"].clone()
    }

    pub async fn stop(self) {
        self.gateway.shutdown().await;
        self.sim.shutdown().await;
    }
}

/// The `extensions.code` of every error in a response.
pub fn error_codes(body: &Value) -> Vec<String> {
    body["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .map(|e| e["extensions"]["code"].as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default()
}
