//! The cache as a console sees it: through the gateway, against the
//! simulated schedulers' own call counters, with a real Redis.

use std::sync::Arc;
use std::time::Duration;

use crate::support::redis::RedisServer;
use crate::support::{gateway_config, small_sim};
use dfgraph::cache::CacheKey;
use dfgraph::clock::ManualClock;
use dfgraph::gateway::Gateway;
use dfgraph_sim::{Method, SimCluster};
use futures::future::join_all;
use serde_json::{Value, json};

const TASK: &str =
    "query($id: ID!) { task(id: $id, schedulerClusterId: \"1\") { id state peerCount } }";

async fn post(http: &reqwest::Client, gateway: &Gateway, query: &str, variables: Value) -> Value {
    http.post(format!("{}/graphql", gateway.url()))
        .json(&json!({ "query": query, "variables": variables }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn cached_gateway(
    sim: &SimCluster,
    redis: Option<&RedisServer>,
    clock: Option<ManualClock>,
) -> Gateway {
    let mut config = gateway_config(sim);
    config.cache.enabled = true;
    config.redis = redis.map(|r| r.url());
    match clock {
        Some(clock) => Gateway::start_with_clock(config, Arc::new(clock))
            .await
            .unwrap(),
        None => Gateway::start(config).await.unwrap(),
    }
}

#[tokio::test]
async fn stale_is_served_while_schedulers_fail_and_not_past_the_stale_deadline() {
    let sim = SimCluster::start(small_sim()).await.unwrap();
    let clock = ManualClock::new();
    let gateway = cached_gateway(&sim, None, Some(clock.clone())).await;
    let http = reqwest::Client::new();
    let task = sim.tasks(1).remove(0);

    let first = post(&http, &gateway, TASK, json!({ "id": task.id })).await;
    assert_eq!(first["data"]["task"]["id"], task.id.as_str());
    assert_eq!(first["extensions"]["freshness"]["originLoads"], 1);

    // Within the fresh TTL: no scheduler call.
    sim.reset_counters();
    clock.advance(Duration::from_secs(10));
    let hit = post(&http, &gateway, TASK, json!({ "id": task.id })).await;
    assert_eq!(hit["extensions"]["freshness"]["cacheHits"], 1);
    assert_eq!(hit["extensions"]["freshness"]["stale"], false);
    assert_eq!(sim.total_rpc_count(Method::StatTask), 0);

    // Past fresh, schedulers failing: the old value, flagged stale.
    for s in sim.schedulers().iter().filter(|s| s.cluster_id == 1) {
        sim.set_error(s.addr, Some(tonic::Code::Unavailable));
    }
    clock.advance(Duration::from_secs(30));
    let stale = post(&http, &gateway, TASK, json!({ "id": task.id })).await;
    assert_eq!(stale["data"]["task"]["id"], task.id.as_str(), "{stale}");
    assert_eq!(stale["extensions"]["freshness"]["stale"], true, "{stale}");
    assert!(stale.get("errors").is_none(), "{stale}");
    assert!(
        sim.total_rpc_count(Method::StatTask) >= 1,
        "a reload was attempted"
    );

    // Past the stale deadline: the scheduler's error, no data.
    clock.advance(Duration::from_secs(10 * 60));
    let gone = post(&http, &gateway, TASK, json!({ "id": task.id })).await;
    assert_eq!(gone["data"]["task"], Value::Null, "{gone}");
    assert_eq!(
        gone["errors"][0]["extensions"]["code"], "SCHEDULER_UNAVAILABLE",
        "{gone}"
    );

    // Schedulers back: fresh data again.
    for s in sim.schedulers() {
        sim.set_error(s.addr, None);
    }
    let back = post(&http, &gateway, TASK, json!({ "id": task.id })).await;
    assert_eq!(back["data"]["task"]["id"], task.id.as_str());
    assert_eq!(back["extensions"]["freshness"]["stale"], false);
    gateway.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_requests_for_a_cold_task_make_one_scheduler_call() {
    let sim = SimCluster::start(small_sim()).await.unwrap();
    // A little latency keeps all hundred requests in flight together.
    for s in sim.schedulers() {
        sim.set_latency(s.addr, Duration::from_millis(100));
    }
    let gateway = cached_gateway(&sim, None, None).await;
    let http = reqwest::Client::new();
    let task = sim.tasks(1).remove(0);
    sim.reset_counters();
    let bodies =
        join_all((0..100).map(|_| post(&http, &gateway, TASK, json!({ "id": task.id })))).await;
    assert!(
        bodies
            .iter()
            .all(|b| b["data"]["task"]["id"] == task.id.as_str())
    );
    assert_eq!(sim.total_rpc_count(Method::StatTask), 1);
    gateway.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_sharing_redis_make_one_scheduler_call_for_a_cold_task() {
    let redis = RedisServer::start();
    let sim = SimCluster::start(small_sim()).await.unwrap();
    for s in sim.schedulers() {
        sim.set_latency(s.addr, Duration::from_millis(150));
    }
    let a = cached_gateway(&sim, Some(&redis), None).await;
    let b = cached_gateway(&sim, Some(&redis), None).await;
    let http = reqwest::Client::new();
    let task = sim.tasks(1).remove(0);
    sim.reset_counters();
    let requests = (0..40).map(|i| {
        let gateway = if i % 2 == 0 { &a } else { &b };
        post(&http, gateway, TASK, json!({ "id": task.id }))
    });
    let bodies = join_all(requests).await;
    assert!(
        bodies
            .iter()
            .all(|body| body["data"]["task"]["id"] == task.id.as_str())
    );
    assert_eq!(sim.total_rpc_count(Method::StatTask), 1);
    a.shutdown().await;
    b.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_on_one_gateway_reaches_the_other() {
    let redis = RedisServer::start();
    let sim = SimCluster::start(small_sim()).await.unwrap();
    let a = cached_gateway(&sim, Some(&redis), None).await;
    let b = cached_gateway(&sim, Some(&redis), None).await;
    let http = reqwest::Client::new();
    let task = sim.tasks(1).remove(0);
    let before = post(&http, &b, TASK, json!({ "id": task.id })).await;
    let _ = post(&http, &a, TASK, json!({ "id": task.id })).await;
    let new_state = if before["data"]["task"]["state"] == "FAILED" {
        "Succeeded"
    } else {
        "Failed"
    };
    assert!(sim.set_task_state(&task.id, new_state));

    a.state
        .cache
        .invalidate(&CacheKey::task(1, task.id.clone()))
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after = post(&http, &b, TASK, json!({ "id": task.id })).await;
    assert_eq!(
        after["data"]["task"]["state"],
        new_state.to_uppercase(),
        "{after}"
    );
    assert_eq!(after["extensions"]["freshness"]["originLoads"], 1);
    a.shutdown().await;
    b.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_keep_answering_while_redis_dies_and_returns() {
    let mut redis = RedisServer::start();
    let sim = SimCluster::start(small_sim()).await.unwrap();
    let gateway = cached_gateway(&sim, Some(&redis), None).await;
    let http = reqwest::Client::new();
    let overview = "{ hostStats { total } hosts(first: 5) { totalCount } }";
    let total: usize = sim.cluster_ids().iter().map(|&c| sim.hosts(c).len()).sum();
    let check = |body: &Value| {
        assert_eq!(body["data"]["hostStats"]["total"], total, "{body}");
        assert!(body.get("errors").is_none(), "{body}");
    };
    for _ in 0..10 {
        check(&post(&http, &gateway, overview, json!({})).await);
    }
    redis.kill();
    for _ in 0..30 {
        check(&post(&http, &gateway, overview, json!({})).await);
    }
    let l2_lookups = |g: &Gateway| {
        let s = g.state.cache.stats();
        s.l2_hits + s.l2_misses
    };
    let during_outage = l2_lookups(&gateway);
    redis.restart();
    // Back to L2 once the Redis circuit probes again: L1 misses are looked
    // up in Redis again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        for cluster in sim.cluster_ids() {
            gateway
                .state
                .cache
                .invalidate(&CacheKey::hosts(cluster))
                .await;
        }
        check(&post(&http, &gateway, overview, json!({})).await);
        if l2_lookups(&gateway) > during_outage {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "Redis was not used again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    gateway.shutdown().await;
    sim.shutdown().await;
}

/// Fresh on first sight: host lists nobody was watching are cached for
/// their whole TTL with nothing keeping them current, so the first query
/// after idle loads them again (once, for everyone asking) instead of
/// answering with a list up to 30 s old; the watch then keeps them fresh.
#[tokio::test]
async fn the_first_host_query_after_idle_is_as_fresh_as_a_watched_one() {
    let env = crate::support::TestEnv::start(small_sim(), |config| {
        config.cache.enabled = true;
        config.watch.interval = Duration::from_millis(200);
        config.watch.hosts_query_window = Duration::from_millis(300);
    })
    .await;
    let http = reqwest::Client::new();
    let overview = "{ hostStats { total } hosts(first: 1) { totalCount } }";
    let answer = post(&http, &env.gateway, overview, json!({})).await;
    assert_eq!(answer["data"]["hostStats"]["total"], env.total_hosts());

    // Nobody looks for a while: the watch ends; then a host joins.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let mut host = env.sim.hosts(1).remove(0);
    host.id = "joined-while-nobody-watched".into();
    env.sim.upsert_host(host);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let before = env.sim.total_rpc_count(Method::ListHosts);
    let answer = post(&http, &env.gateway, overview, json!({})).await;
    assert_eq!(
        answer["data"]["hostStats"]["total"],
        env.total_hosts(),
        "{answer}"
    );
    assert_eq!(
        answer["data"]["hosts"]["totalCount"],
        env.total_hosts(),
        "{answer}"
    );
    assert!(
        env.sim.total_rpc_count(Method::ListHosts) > before,
        "the lists were loaded again"
    );
    env.stop().await;
}
