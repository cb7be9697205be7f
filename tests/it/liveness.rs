//! Liveness: dfgraph asks each listed host's own gRPC health service (the
//! simulator's real `grpc.health.v1` on the host's loopback `ip:port`) and
//! shows a host that stopped answering as `UNREACHABLE` in GraphQL, in
//! `hostEvents` and in the manager's REST API (`inactive`), while its
//! scheduler still lists it; and `REACHABLE` again once it answers.

use std::time::{Duration, Instant};

use dfgraph::config::Config;
use dfgraph::gateway::Gateway;
use dfgraph_sim::SimCluster;
use serde_json::{Value, json};

use crate::support::live::{next_event, query, wait_until};
use crate::support::redis::RedisServer;
use crate::support::ws::{Received, WsClient};
use crate::support::{TestEnv, gateway_config, small_sim};

const TIMEOUT: Duration = Duration::from_millis(300);
const INTERVAL: Duration = Duration::from_millis(200);
const FAILURES: u32 = 3;

/// The longest a host may take to be found unreachable here: one cycle
/// (at most `INTERVAL`: 60 hosts at 2000 probes/s take 30 ms), then
/// `FAILURES` probes of at most `TIMEOUT` each, and slack for a loaded
/// machine.
const BOUND: Duration = Duration::from_millis(200 + 3 * 300 + 1500);

/// Probes on, loopback only, fast enough for a test.
fn probing(config: &mut Config) {
    config.liveness.enabled = true;
    config.liveness.networks = vec!["127.0.0.0/8".into()];
    config.liveness.timeout = TIMEOUT;
    config.liveness.interval = INTERVAL;
    config.liveness.failures = FAILURES;
    config.liveness.probes_per_second = 2000;
    config.liveness.lease_ttl = Duration::from_secs(1);
}

const HOST_LIVENESS: &str = "query($id: ID!) { host(id: $id, schedulerClusterId: \"1\") { id liveness { state since lastProbeAt latencyMs consecutiveFailures } } }";
const ALL_LIVENESS: &str = "{ hosts(first: 1000) { edges { node { id liveness { state } } } } }";
const LIVENESS_EVENTS: &str = "subscription { hostEvents { kind host { id liveness { state consecutiveFailures } } changedFields } }";

async fn liveness(url: &str, host_id: &str) -> Value {
    query(url, HOST_LIVENESS, json!({ "id": host_id })).await["host"]["liveness"].clone()
}

/// Every listed host's liveness state.
async fn states(url: &str) -> Vec<(String, String)> {
    query(url, ALL_LIVENESS, json!({})).await["hosts"]["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .map(|e| {
            (
                e["node"]["id"].as_str().unwrap_or_default().to_owned(),
                e["node"]["liveness"]["state"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect()
}

/// Waits until the gateway at `url` has every listed host reachable.
async fn all_reachable(url: &str, hosts: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = states(url).await;
        if now.len() == hosts && now.iter().all(|(_, s)| s == "REACHABLE") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not every host reachable: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `host_id`'s liveness state on `url` is `state`; how long.
async fn until_state(url: &str, host_id: &str, state: &str, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let now = liveness(url, host_id).await;
        if now["state"] == state {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "{host_id} not {state} within {within:?}: {now}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The next host event the subscription `id` delivers about `host_id`.
async fn next_about(client: &mut WsClient, id: &str, host_id: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = next_event(client, id, left).await["hostEvents"].clone();
        if event["host"]["id"] == host_id {
            return event;
        }
    }
}

/// The REST `state` of the host with `ip`.
async fn rest_state(env: &TestEnv, ip: &str) -> String {
    let peers: Value = env
        .http
        .get(env.url(&format!("/api/v1/peers?page=1&per_page=1000&ip={ip}")))
        .send()
        .await
        .expect("request sent")
        .json()
        .await
        .expect("JSON body");
    let rows = peers.as_array().expect("a JSON array");
    assert_eq!(rows.len(), 1, "{peers}");
    rows[0]["state"].as_str().unwrap_or_default().to_owned()
}

fn cluster_hosts(sim: &SimCluster) -> usize {
    sim.cluster_ids().iter().map(|&c| sim.hosts(c).len()).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_host_is_unreachable_everywhere_while_its_scheduler_lists_it() {
    let env = TestEnv::start(small_sim(), probing).await;
    let url = env.gateway.url();
    all_reachable(&url, cluster_hosts(&env.sim)).await;
    let host = env.sim.hosts(1)[7].clone();
    let before = liveness(&url, &host.id).await;
    assert_eq!(before["consecutiveFailures"], 0, "{before}");
    assert!(before["latencyMs"].as_f64().is_some(), "{before}");
    assert!(before["lastProbeAt"].is_string(), "{before}");
    assert_eq!(rest_state(&env, &host.ip).await, "active");

    let mut ws = WsClient::ready(&url).await;
    ws.subscribe("l", LIVENESS_EVENTS, json!({})).await;
    // The subscription is registered once the gateway answers a query
    // sent after it on another connection: give it a moment.
    tokio::time::sleep(Duration::from_millis(100)).await;

    assert!(env.sim.stop_host(&host.id).await);
    let stopped = Instant::now();
    let event = next_about(&mut ws, "l", &host.id, BOUND).await;
    assert_eq!(event["kind"], "UNREACHABLE", "{event}");
    assert_eq!(event["changedFields"], json!(["liveness"]));
    assert_eq!(event["host"]["liveness"]["state"], "UNREACHABLE", "{event}");
    let detected = stopped.elapsed();
    assert!(detected < BOUND, "detected after {detected:?}");

    let now = liveness(&url, &host.id).await;
    assert_eq!(now["state"], "UNREACHABLE", "{now}");
    assert!(now["consecutiveFailures"].as_u64() >= Some(u64::from(FAILURES)));
    assert_ne!(now["since"], before["since"]);
    assert_eq!(rest_state(&env, &host.ip).await, "inactive");
    // Still listed: the scheduler does not know.
    assert!(env.sim.hosts(1).iter().any(|h| h.id == host.id));
    let listed = states(&url).await;
    assert!(listed.contains(&(host.id.clone(), "UNREACHABLE".to_owned())));
    // Only that host.
    assert_eq!(
        listed.iter().filter(|(_, s)| s == "UNREACHABLE").count(),
        1,
        "{listed:?}"
    );
    // The filter and the counts agree.
    let down = query(
        &url,
        "{ hosts(filter: { liveness: [UNREACHABLE] }) { totalCount edges { node { id } } }
           all: hostStats { total byLiveness { value count } }
           down: hostStats(filter: { liveness: [UNREACHABLE] }) { total bySchedulerCluster { value count } } }",
        json!({}),
    )
    .await;
    assert_eq!(down["hosts"]["totalCount"], 1, "{down}");
    assert_eq!(down["hosts"]["edges"][0]["node"]["id"], host.id.as_str());
    let total = cluster_hosts(&env.sim) as u64;
    assert_eq!(
        down["all"]["byLiveness"],
        json!([
            { "value": "REACHABLE", "count": total - 1 },
            { "value": "UNREACHABLE", "count": 1 },
            { "value": "UNKNOWN", "count": 0 },
        ]),
        "{down}"
    );
    assert_eq!(down["all"]["total"], total);
    assert_eq!(down["down"]["total"], 1);
    assert_eq!(
        down["down"]["bySchedulerCluster"],
        json!([{ "value": "1", "count": 1 }])
    );

    // Back: reachable at the next probe.
    assert!(env.sim.resume_host(&host.id).await);
    let event = next_about(&mut ws, "l", &host.id, BOUND).await;
    assert_eq!(event["kind"], "REACHABLE", "{event}");
    let now = liveness(&url, &host.id).await;
    assert_eq!(now["state"], "REACHABLE", "{now}");
    assert_eq!(now["consecutiveFailures"], 0);
    assert_eq!(rest_state(&env, &host.ip).await, "active");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_host_is_unreachable_and_reachable_once_it_thaws() {
    let env = TestEnv::start(small_sim(), probing).await;
    let url = env.gateway.url();
    all_reachable(&url, cluster_hosts(&env.sim)).await;
    let host = env.sim.hosts(2)[3].clone();
    let mut ws = WsClient::ready(&url).await;
    ws.subscribe("l", LIVENESS_EVENTS, json!({})).await;
    // A subscriber to unreachable hosts only.
    let mut down = WsClient::ready(&url).await;
    down.subscribe(
        "down",
        "subscription { hostEvents(filter: { liveness: [UNREACHABLE] }) { kind host { id } } }",
        json!({}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    assert!(env.sim.freeze_host(&host.id).await);
    // Both subscriptions hear it.
    let event = next_about(&mut ws, "l", &host.id, BOUND).await;
    assert_eq!(event["kind"], "UNREACHABLE", "{event}");
    let event = next_event(&mut down, "down", BOUND).await["hostEvents"].clone();
    assert_eq!(event["kind"], "UNREACHABLE", "{event}");
    assert_eq!(event["host"]["id"], host.id.as_str());
    let query =
        "query($id: ID!) { host(id: $id, schedulerClusterId: \"2\") { liveness { state } } }";
    let now = crate::support::live::query(&url, query, json!({ "id": host.id })).await;
    assert_eq!(now["host"]["liveness"]["state"], "UNREACHABLE", "{now}");
    assert_eq!(rest_state(&env, &host.ip).await, "inactive");
    assert!(env.sim.hosts(2).iter().any(|h| h.id == host.id));

    assert!(env.sim.resume_host(&host.id).await);
    let event = next_about(&mut ws, "l", &host.id, BOUND).await;
    assert_eq!(event["kind"], "REACHABLE", "{event}");
    // A reachable host is not what the filtered subscriber asked for.
    let nothing = down.receive(Duration::from_millis(500)).await;
    assert!(
        matches!(nothing, Received::Nothing),
        "the filtered subscription heard {nothing:?}"
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_probes_short_of_the_threshold_flip_nothing() {
    let env = TestEnv::start(small_sim(), probing).await;
    let url = env.gateway.url();
    all_reachable(&url, cluster_hosts(&env.sim)).await;
    let host = env.sim.hosts(1)[11].clone();
    let mut ws = WsClient::ready(&url).await;
    ws.subscribe("l", LIVENESS_EVENTS, json!({})).await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    // One lost probe, then two: each re-probed at once, never flipped.
    for lost in [1, u64::from(FAILURES) - 1] {
        let checks = env.sim.health_checks(&host.id);
        assert!(env.sim.lose_health_checks(&host.id, lost));
        wait_until("the lost probes and the answered one", BOUND, || {
            env.sim.health_checks(&host.id) > checks + lost
        })
        .await;
        let now = liveness(&url, &host.id).await;
        assert_eq!(now["state"], "REACHABLE", "{now}");
    }
    // No event about it; the next one about it is the real failure.
    assert!(env.sim.lose_health_checks(&host.id, u64::from(FAILURES)));
    let event = next_about(&mut ws, "l", &host.id, BOUND).await;
    assert_eq!(event["kind"], "UNREACHABLE", "{event}");
    // It answers again at the next cycle.
    let event = next_about(&mut ws, "l", &host.id, BOUND).await;
    assert_eq!(event["kind"], "REACHABLE", "{event}");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_probe_each_host_once_between_them_and_both_know() {
    let redis = RedisServer::start();
    let sim = SimCluster::start(small_sim()).await.unwrap();
    let config = || {
        let mut config = gateway_config(&sim);
        config.redis = Some(redis.url());
        probing(&mut config);
        // A cycle a second: counts per host are then easy to bound.
        config.liveness.interval = Duration::from_secs(1);
        config
    };
    let a = Gateway::start(config()).await.unwrap();
    let b = Gateway::start(config()).await.unwrap();
    let hosts = cluster_hosts(&sim);
    all_reachable(&a.url(), hosts).await;
    all_reachable(&b.url(), hosts).await;

    // Over 3.5 s one prober per cluster makes 3 or 4 cycles: two would
    // make twice as many.
    sim.reset_health_checks();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let mut counts = Vec::new();
    for c in sim.cluster_ids() {
        counts.extend(sim.hosts(c).iter().map(|h| sim.health_checks(&h.id)));
    }
    assert!(
        counts.iter().all(|&n| (2..=5).contains(&n)),
        "checks per host: {counts:?}"
    );

    // A host stopped is unreachable on both, whichever probes it.
    let host = sim.hosts(1)[5].clone();
    let mut on_a = WsClient::ready(&a.url()).await;
    let mut on_b = WsClient::ready(&b.url()).await;
    on_a.subscribe("l", LIVENESS_EVENTS, json!({})).await;
    on_b.subscribe("l", LIVENESS_EVENTS, json!({})).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(sim.stop_host(&host.id).await);
    let bound = BOUND + Duration::from_secs(1);
    for ws in [&mut on_a, &mut on_b] {
        let event = next_about(ws, "l", &host.id, bound).await;
        assert_eq!(event["kind"], "UNREACHABLE", "{event}");
        assert_eq!(event["host"]["liveness"]["state"], "UNREACHABLE", "{event}");
    }
    for url in [a.url(), b.url()] {
        until_state(&url, &host.id, "UNREACHABLE", Duration::from_secs(3)).await;
        let now = liveness(&url, &host.id).await;
        assert!(now["lastProbeAt"].is_string(), "{now}");
    }
    a.shutdown().await;
    b.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn with_probing_off_every_host_is_unknown_and_none_is_dialled() {
    let env = TestEnv::start(small_sim(), |c| {
        probing(c);
        c.liveness.enabled = false;
    })
    .await;
    let url = env.gateway.url();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let now = states(&url).await;
    assert_eq!(now.len(), cluster_hosts(&env.sim));
    assert!(now.iter().all(|(_, s)| s == "UNKNOWN"), "{now:?}");
    assert_eq!(env.sim.total_health_checks(), 0);
    env.stop().await;
}

#[tokio::test]
async fn hosts_outside_the_allowed_networks_are_never_dialled() {
    let env = TestEnv::start(small_sim(), |c| {
        probing(c);
        // No simulated host lives here.
        c.liveness.networks = vec!["127.0.0.1/32".into()];
    })
    .await;
    let url = env.gateway.url();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let now = states(&url).await;
    assert!(now.iter().all(|(_, s)| s == "UNKNOWN"), "{now:?}");
    assert_eq!(env.sim.total_health_checks(), 0);
    env.stop().await;
}
