//! Two gateway replicas on a real Redis Cluster (3 primaries, 1 replica
//! each): the shared cache, invalidation, events over sharded pub/sub and
//! the poller leases, and a primary killed under load.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crate::support::live::{HOST_EVENTS, INTERVAL, live_config, next_event, query, wait_until};
use crate::support::redis_cluster::RedisCluster;
use crate::support::small_sim;
use crate::support::ws::WsClient;
use dfgraph::cache::{CacheKey, Kind, keys};
use dfgraph::config::Config;
use dfgraph::gateway::Gateway;
use dfgraph_sim::SimCluster;
use serde_json::json;

fn cluster_config(sim: &SimCluster, redis: &RedisCluster) -> Config {
    // RUST_LOG=dfgraph=debug shows the gateways' view of the fail-over.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut config = live_config(sim, None);
    config.redis = Some(redis.url());
    config.cache.redis_cluster = true;
    config.cache.redis_required = true;
    config
}

fn get(redis: &RedisCluster, key: &str) -> Option<Vec<u8>> {
    let mut conn = redis.client().get_connection().expect("cluster connection");
    redis::cmd("GET").arg(key).query(&mut conn).expect("GET")
}

/// The lease holder of each cluster, read from the Redis Cluster.
fn lease_holders(redis: &RedisCluster, clusters: &[u64]) -> Vec<Option<String>> {
    let mut conn = redis.client().get_connection().expect("cluster connection");
    clusters
        .iter()
        .map(|&c| {
            redis::cmd("GET")
                .arg(keys::watch_lease(c))
                .query(&mut conn)
                .expect("GET lease")
        })
        .collect()
}

const OVERVIEW: &str = "{ hostStats { total } }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_cache_invalidations_events_and_leases_on_a_redis_cluster() {
    let redis = RedisCluster::start(3, 1);
    let sim = SimCluster::start(small_sim()).await.unwrap();
    let clusters = sim.cluster_ids();
    let a = Gateway::start(cluster_config(&sim, &redis)).await.unwrap();
    let total: usize = clusters.iter().map(|&c| sim.hosts(c).len()).sum();

    // A loads the host lists (two clusters: two slots); B, started after,
    // warms up from L2.
    let on_a = query(&a.url(), OVERVIEW, json!({})).await;
    assert_eq!(on_a["hostStats"]["total"], total);
    // The write-back to L2 follows the answer; a loaded machine lets the
    // query finish first.
    wait_until("A's host lists in L2", Duration::from_secs(5), || {
        clusters
            .iter()
            .all(|&c| get(&redis, &keys::entry(&CacheKey::hosts(c))).is_some())
    })
    .await;
    let b = Gateway::start(cluster_config(&sim, &redis)).await.unwrap();
    wait_until("B reads A's values", Duration::from_secs(5), || {
        b.state.cache.stats().l2_hits >= clusters.len() as u64
    })
    .await;
    let on_b = query(&b.url(), OVERVIEW, json!({})).await;
    assert_eq!(on_b["hostStats"]["total"], total);
    assert_eq!(
        b.state.cache.stats().origin_loads,
        0,
        "B asked no scheduler"
    );

    // An invalidation on A reaches B's L1 and removes the L2 value.
    let key = CacheKey::hosts(clusters[0]);
    assert!(b.state.cache.l1_contains(&key));
    a.state.cache.invalidate(&key).await;
    wait_until("B drops its copy", Duration::from_secs(5), || {
        !b.state.cache.l1_contains(&key)
    })
    .await;
    assert!(get(&redis, &keys::entry(&key)).is_none());
    // A scope over every cluster scans every primary.
    query(&a.url(), OVERVIEW, json!({})).await;
    query(&b.url(), OVERVIEW, json!({})).await;
    a.state.cache.invalidate_scope(Kind::Hosts, None).await;
    for &c in &clusters {
        let key = CacheKey::hosts(c);
        // A query's write-back runs after its answer: one that raced the
        // scope (loaded before it, written after its delete) sees the
        // moved scope generation and removes its own write, a moment
        // later.
        wait_until("the scope empties L2", Duration::from_secs(5), || {
            get(&redis, &keys::entry(&key)).is_none()
        })
        .await;
        // Through sharded pub/sub: seconds on a loaded machine (a lost
        // message would never arrive, so the bound still catches it).
        wait_until("B drops the scope", Duration::from_secs(15), || {
            !b.state.cache.l1_contains(&key)
        })
        .await;
    }

    // Events cross replicas; one replica polls each cluster.
    let mut on_a = WsClient::ready(&a.url()).await;
    let mut on_b = WsClient::ready(&b.url()).await;
    // With their cursors: the event log (a stream and the hash of each
    // host's last transition, one slot per scheduler cluster) works there.
    let with_cursor = "subscription { hostEvents { kind host { id } cursor } }";
    on_a.subscribe("h", with_cursor, json!({})).await;
    on_b.subscribe("h", with_cursor, json!({})).await;
    wait_until("one leader per cluster", Duration::from_secs(10), || {
        let holders = lease_holders(&redis, &clusters);
        holders.iter().all(Option::is_some)
            && holders.iter().all(|h| {
                h.as_deref() == Some(a.state.events.bus.instance())
                    || h.as_deref() == Some(b.state.events.bus.instance())
            })
    })
    .await;
    tokio::time::sleep(INTERVAL * 4).await;
    let mut host = sim.hosts(1).remove(0);
    host.id = "on-the-cluster".into();
    sim.upsert_host(host);
    for client in [&mut on_a, &mut on_b] {
        let event = next_event(client, "h", Duration::from_secs(5)).await;
        assert_eq!(event["hostEvents"]["host"]["id"], "on-the-cluster");
        assert!(event["hostEvents"]["cursor"].is_string(), "{event}");
    }
    assert!(!a.state.cache.stats().circuit_open);
    a.shutdown().await;
    b.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_killed_under_load_fails_no_request() {
    kill_a_primary_under_load(false).await;
}

/// The replica of the bus channel's shard is promoted (the harness waits
/// for every replica's first sync before a primary may be killed: a
/// replica that never synced refuses to take over), then both listeners
/// subscribe again on the new primary, events cross replicas and the
/// leases are held again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_resume_after_a_primary_fails_over() {
    kill_a_primary_under_load(true).await;
}

async fn kill_a_primary_under_load(then_events: bool) {
    let mut redis = RedisCluster::start(3, 1);
    let sim = SimCluster::start(small_sim()).await.unwrap();
    let clusters = sim.cluster_ids();
    let a = Gateway::start(cluster_config(&sim, &redis)).await.unwrap();
    let b = Gateway::start(cluster_config(&sim, &redis)).await.unwrap();
    let total: usize = clusters.iter().map(|&c| sim.hosts(c).len()).sum();

    // B listens; whoever leads, A's or B's events reach B's subscriber
    // (A's through the sharded channel).
    let mut on_b = WsClient::ready(&b.url()).await;
    on_b.subscribe("h", HOST_EVENTS, json!({})).await;
    let mut on_a = WsClient::ready(&a.url()).await;
    on_a.subscribe("h", HOST_EVENTS, json!({})).await;
    tokio::time::sleep(INTERVAL * 4).await;

    // Load on both replicas, with the cache invalidated as it goes.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for url in [a.url(), b.url()] {
        let (stop, done) = (stop.clone(), done.clone());
        load.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            while !stop.load(Ordering::Acquire) {
                let body = query(&url, OVERVIEW, json!({})).await;
                if body["hostStats"]["total"] != total {
                    failures.push(body);
                }
                done.fetch_add(1, Ordering::AcqRel);
            }
            failures
        }));
    }
    let invalidator = {
        let (stop, cache) = (stop.clone(), a.state.cache.clone());
        let clusters = clusters.clone();
        tokio::spawn(async move {
            while !stop.load(Ordering::Acquire) {
                for &c in &clusters {
                    cache.invalidate(&CacheKey::hosts(c)).await;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let subscribed = |g: &Gateway| g.state.events.bus.listening().1;
    let (subs_a, subs_b) = (subscribed(&a), subscribed(&b));
    // The shard of the channel between replicas, where events travel.
    let killed = redis.kill_primary_of(keys::BUS_CHANNEL);
    let before_failover = done.load(Ordering::Acquire);
    // Load runs on until the replica has taken over: requests are judged
    // over the whole fail-over, not just its first moments.
    let redis = tokio::task::spawn_blocking(move || {
        redis.wait_failover(keys::BUS_CHANNEL, killed);
        redis
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Release);
    invalidator.await.unwrap();
    for task in load {
        let failures = task.await.unwrap();
        assert!(failures.is_empty(), "failed requests: {failures:?}");
    }
    assert!(
        done.load(Ordering::Acquire) > before_failover,
        "requests went on during the fail-over"
    );

    if !then_events {
        a.shutdown().await;
        b.shutdown().await;
        sim.shutdown().await;
        return;
    }
    // After the replica's promotion, the listeners follow the channel to
    // its new primary, and events cross replicas again.
    wait_until(
        "both listeners subscribed again",
        Duration::from_secs(15),
        || {
            let listening = |g: &Gateway| g.state.events.bus.listening().0;
            listening(&a) && listening(&b) && subscribed(&a) > subs_a && subscribed(&b) > subs_b
        },
    )
    .await;
    let mut host = sim.hosts(1).remove(0);
    host.id = "after-failover".into();
    sim.upsert_host(host);
    for client in [&mut on_a, &mut on_b] {
        let event = next_event(client, "h", Duration::from_secs(15)).await;
        assert_eq!(event["hostEvents"]["host"]["id"], "after-failover");
    }
    // And leases are held again.
    wait_until(
        "leases after the fail-over",
        Duration::from_secs(10),
        || lease_holders(&redis, &clusters).iter().all(Option::is_some),
    )
    .await;
    a.shutdown().await;
    b.shutdown().await;
    sim.shutdown().await;
}
