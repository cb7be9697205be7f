//! Replicas as separate `dfgraph serve` processes sharing one Redis: one
//! polls the schedulers for all, and when it is killed (no polite
//! goodbye) another takes its lease over and events go on.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::live::{
    HOST_EVENTS, INTERVAL, LEASE_TTL, lease_holders, live_config, next_event, wait_until,
};
use crate::support::redis::RedisServer;
use crate::support::small_sim;
use crate::support::ws::{Received, WsClient};
use dfgraph::gateway::Gateway;
use dfgraph_sim::{Method, SimCluster};
use serde_json::json;

/// A `dfgraph serve` child process, killed (not stopped) on drop.
struct Replica {
    child: Child,
    url: String,
}

impl Replica {
    fn start(sim: &SimCluster, redis: &RedisServer) -> Replica {
        let mut args = vec![
            "serve".to_string(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--redis".into(),
            redis.url(),
        ];
        for s in sim.schedulers() {
            args.push("--scheduler".into());
            args.push(format!("{}={}", s.cluster_id, s.addr));
        }
        let mut child = Command::new(env!("CARGO_BIN_EXE_dfgraph"))
            .args(&args)
            .env("RUST_LOG", "warn")
            .env("DFGRAPH_WATCH__INTERVAL", "200ms")
            .env("DFGRAPH_WATCH__LEASE_TTL", "800ms")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("dfgraph starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("dfgraph prints its address");
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        Replica { child, url }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_one_poller_and_a_killed_leader_hands_over() {
    let redis = RedisServer::start();
    let sim = SimCluster::start(small_sim()).await.unwrap();
    let clusters = sim.cluster_ids();
    let leader = Replica::start(&sim, &redis);
    let mut on_leader = WsClient::ready(&leader.url).await;
    on_leader.subscribe("h", HOST_EVENTS, json!({})).await;
    wait_until(
        "the first replica leads every cluster",
        Duration::from_secs(10),
        || lease_holders(&redis, &clusters).iter().all(Option::is_some),
    )
    .await;
    let leader_id = lease_holders(&redis, &clusters)[0].clone();

    let follower = Gateway::start(live_config(&sim, Some(&redis)))
        .await
        .unwrap();
    let mut on_follower = WsClient::ready(&follower.url()).await;
    on_follower.subscribe("h", HOST_EVENTS, json!({})).await;
    tokio::time::sleep(INTERVAL * 4).await;

    // Two replicas want host lists; one polls them.
    sim.reset_counters();
    let window = Duration::from_secs(2);
    tokio::time::sleep(window).await;
    let calls = sim.total_rpc_count(Method::ListHosts);
    let one_poller = clusters.len() as u64 * (window.as_millis() / INTERVAL.as_millis()) as u64;
    println!("ListHosts in {window:?} with two replicas: {calls} (one poller: ~{one_poller})");
    assert!(calls >= one_poller / 2, "the leader polls: {calls}");
    assert!(calls <= one_poller * 3 / 2, "more than one poller: {calls}");
    assert!(
        lease_holders(&redis, &clusters)
            .iter()
            .all(|h| *h == leader_id),
        "the lease stayed with the first replica"
    );

    // Its events reach the other replica's subscriber through Redis.
    let mut host = sim.hosts(1).remove(0);
    host.id = "before-kill".into();
    sim.upsert_host(host.clone());
    let event = next_event(&mut on_follower, "h", Duration::from_secs(5)).await;
    assert_eq!(event["hostEvents"]["host"]["id"], "before-kill");

    // The leader dies without a word (killed before its subscriber
    // leaves, so it cannot release its lease politely); its lease lapses
    // and events go on.
    drop(leader);
    drop(on_leader);
    let killed = Instant::now();
    let mut n = 0;
    let took_over = loop {
        assert!(
            killed.elapsed() < Duration::from_secs(15),
            "no event after the leader died"
        );
        n += 1;
        host.id = format!("after-kill-{n}");
        sim.upsert_host(host.clone());
        if let Received::Message(message) = on_follower.receive(INTERVAL * 2).await {
            let id = message["payload"]["data"]["hostEvents"]["host"]["id"].clone();
            if id.as_str().is_some_and(|id| id.starts_with("after-kill")) {
                break killed.elapsed();
            }
        }
    };
    println!(
        "events flowed again {took_over:?} after the leader was killed (lease TTL {LEASE_TTL:?})"
    );
    let me = Some(follower.state.events.bus.instance().to_owned());
    assert!(lease_holders(&redis, &clusters).iter().all(|h| *h == me));
    follower.shutdown().await;
    sim.shutdown().await;
}
