//! Live data end to end: changes made in the simulated schedulers reach
//! websocket subscribers (on every replica sharing a Redis), invalidate
//! the cache, and are polled by one replica only.

use std::time::{Duration, Instant};

use crate::support::live::{
    HOST, HOST_EVENTS, INTERVAL, lease_holders, live_config, next_event, query, response,
    wait_until,
};
use crate::support::redis::RedisServer;
use crate::support::small_sim;
use crate::support::ws::{Received, WsClient};
use dfgraph::config::Config;
use dfgraph::gateway::Gateway;
use dfgraph_sim::{Method, SimCluster};
use futures::future::join_all;
use serde_json::{Value, json};

/// Two replicas sharing `redis`, each with a live `hostEvents` subscriber
/// (id "h").
async fn two_replicas_on_host_events(
    sim: &SimCluster,
    redis: &RedisServer,
) -> (Gateway, Gateway, WsClient, WsClient) {
    let a = Gateway::start(live_config(sim, Some(redis))).await.unwrap();
    let b = Gateway::start(live_config(sim, Some(redis))).await.unwrap();
    let mut on_a = WsClient::ready(&a.url()).await;
    let mut on_b = WsClient::ready(&b.url()).await;
    on_a.subscribe("h", HOST_EVENTS, json!({})).await;
    on_b.subscribe("h", HOST_EVENTS, json!({})).await;
    wait_until("both subscriptions live", Duration::from_secs(5), || {
        a.state.events.live_subscriptions() == 1 && b.state.events.live_subscriptions() == 1
    })
    .await;
    (a, b, on_a, on_b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_changes_reach_subscribers_on_every_replica_once_and_queries_see_them() {
    let redis = RedisServer::start();
    let sim = SimCluster::start(small_sim()).await.unwrap();
    let (a, b, mut on_a, mut on_b) = two_replicas_on_host_events(&sim, &redis).await;
    let (url_a, url_b) = (a.url(), b.url());
    // Both replicas cache the host list before the change.
    for url in [&url_a, &url_b] {
        let before = query(url, HOST, json!({"id": "joining-host"})).await;
        assert_eq!(before["host"], Value::Null);
    }
    // The first poll is the baseline; changes are what follows it.
    tokio::time::sleep(INTERVAL * 4).await;

    let mut host = sim.hosts(1).remove(0);
    host.id = "joining-host".into();
    host.hostname = "joined".into();
    sim.upsert_host(host.clone());
    for (client, url) in [(&mut on_a, &url_a), (&mut on_b, &url_b)] {
        let event = next_event(client, "h", Duration::from_secs(5)).await;
        assert_eq!(event["hostEvents"]["kind"], "JOINED");
        assert_eq!(event["hostEvents"]["host"]["id"], "joining-host");
        assert_eq!(event["hostEvents"]["schedulerClusterId"], "1");
        // Invalidated, not left to expire (the fresh TTL is 30 s).
        let after = query(url, HOST, json!({"id": "joining-host"})).await;
        assert_eq!(after["host"]["hostname"], "joined", "{url}");
    }

    host.hostname = "renamed".into();
    sim.upsert_host(host.clone());
    for (client, url) in [(&mut on_a, &url_a), (&mut on_b, &url_b)] {
        let event = next_event(client, "h", Duration::from_secs(5)).await;
        assert_eq!(event["hostEvents"]["kind"], "UPDATED");
        assert_eq!(event["hostEvents"]["changedFields"], json!(["hostname"]));
        let after = query(url, HOST, json!({"id": "joining-host"})).await;
        assert_eq!(after["host"]["hostname"], "renamed", "{url}");
    }

    assert!(sim.remove_host(1, "joining-host"));
    for (client, url) in [(&mut on_a, &url_a), (&mut on_b, &url_b)] {
        let event = next_event(client, "h", Duration::from_secs(5)).await;
        assert_eq!(event["hostEvents"]["kind"], "LEFT");
        assert_eq!(event["hostEvents"]["host"]["hostname"], "renamed");
        let after = query(url, HOST, json!({"id": "joining-host"})).await;
        assert_eq!(after["host"], Value::Null, "{url}");
    }

    // Each replica got each event once: nothing more arrives.
    for client in [&mut on_a, &mut on_b] {
        assert_eq!(client.receive(INTERVAL * 5).await, Received::Nothing);
    }
    a.shutdown().await;
    b.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_found_by_one_poll_arrive_as_one_batch_in_the_order_of_host_events() {
    let sim = SimCluster::start(small_sim()).await.unwrap();
    let gateway = Gateway::start(live_config(&sim, None)).await.unwrap();
    let mut batches = WsClient::ready(&gateway.url()).await;
    let mut singles = WsClient::ready(&gateway.url()).await;
    batches
        .subscribe(
            "b",
            "subscription { hostEventBatches { kind host { id hostname } observedAt } }",
            json!({}),
        )
        .await;
    singles.subscribe("e", HOST_EVENTS, json!({})).await;
    wait_until("both subscriptions live", Duration::from_secs(5), || {
        gateway.state.events.live_subscriptions() == 2
    })
    .await;
    tokio::time::sleep(INTERVAL * 4).await;

    // Five hosts join between two polls.
    let template = sim.hosts(1).remove(0);
    for n in 0..5 {
        let mut host = template.clone();
        host.id = format!("batched-{n}");
        host.hostname = format!("batched-{n}");
        sim.upsert_host(host);
    }
    // The changes take microseconds, polls are 200 ms apart: one poll saw
    // them all, or (rarely) two polls shared them.
    let mut batch_sizes = Vec::new();
    let mut batched = Vec::new();
    while batched.len() < 5 {
        let batch = next_event(&mut batches, "b", Duration::from_secs(5)).await;
        let batch = batch["hostEventBatches"].as_array().unwrap().clone();
        assert!(batch.iter().all(|e| e["kind"] == "JOINED"), "{batch:?}");
        batch_sizes.push(batch.len());
        batched.extend(batch.iter().map(|e| e["host"]["id"].clone()));
    }
    let mut one_by_one = Vec::new();
    for _ in 0..5 {
        let event = next_event(&mut singles, "e", Duration::from_secs(5)).await;
        one_by_one.push(event["hostEvents"]["host"]["id"].clone());
    }
    assert_eq!(batched, one_by_one, "same events, same order");
    assert!(
        batch_sizes.len() <= 2 && batch_sizes.iter().any(|&n| n > 1),
        "not batched by poll: {batch_sizes:?}"
    );
    // Nothing else follows: each change was sent once.
    assert_eq!(batches.receive(INTERVAL * 3).await, Received::Nothing);

    // A bounded batch: the same burst split into messages of at most two.
    let mut small = WsClient::ready(&gateway.url()).await;
    small
        .subscribe(
            "s",
            "subscription { hostEventBatches(maxBatch: 2) { host { id } } }",
            json!({}),
        )
        .await;
    wait_until("third subscription live", Duration::from_secs(5), || {
        gateway.state.events.live_subscriptions() == 3
    })
    .await;
    tokio::time::sleep(INTERVAL * 2).await;
    for n in 0..5 {
        assert!(sim.remove_host(1, &format!("batched-{n}")));
    }
    let mut left = Vec::new();
    while left.len() < 5 {
        let batch = next_event(&mut small, "s", Duration::from_secs(5)).await;
        let batch = batch["hostEventBatches"].as_array().unwrap().clone();
        assert!((1..=2).contains(&batch.len()), "{batch:?}");
        left.extend(batch.iter().map(|e| e["host"]["id"].clone()));
    }
    left.sort_by_key(|id| id.to_string());
    let expected: Vec<Value> = (0..5).map(|n| json!(format!("batched-{n}"))).collect();
    assert_eq!(left, expected);
    gateway.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filtered_subscription_hears_only_the_hosts_its_filter_selects() {
    let sim = SimCluster::start(small_sim()).await.unwrap();
    let gateway = Gateway::start(live_config(&sim, None)).await.unwrap();
    // Two connections: each reads its own stream, whatever the order in
    // which the gateway sends the two.
    let mut single_client = WsClient::ready(&gateway.url()).await;
    let mut batch_client = WsClient::ready(&gateway.url()).await;
    // The search is case-insensitive and applies to every event the
    // stream sees, in both the single and the batched form.
    single_client
        .subscribe(
            "one",
            "subscription($f: HostFilter) { hostEvents(filter: $f) { host { hostname } } }",
            json!({"f": {"search": "  WANTED "}}),
        )
        .await;
    batch_client
        .subscribe(
            "many",
            "subscription($f: HostFilter) { hostEventBatches(filter: $f) { host { hostname } } }",
            json!({"f": {"search": "wanted"}}),
        )
        .await;
    wait_until("both subscriptions live", Duration::from_secs(5), || {
        gateway.state.events.live_subscriptions() == 2
    })
    .await;
    tokio::time::sleep(INTERVAL * 4).await;
    let template = sim.hosts(1).remove(0);
    for name in ["other-1", "wanted-1", "other-2", "Wanted-2"] {
        let mut host = template.clone();
        host.id = name.into();
        host.hostname = name.into();
        sim.upsert_host(host);
    }
    let mut single = Vec::new();
    for _ in 0..2 {
        let event = next_event(&mut single_client, "one", Duration::from_secs(5)).await;
        single.push(event["hostEvents"]["host"]["hostname"].clone());
    }
    single.sort_by_key(|name| name.to_string());
    assert_eq!(single, [json!("Wanted-2"), json!("wanted-1")]);
    let mut batched = Vec::new();
    while batched.len() < 2 {
        let batch = next_event(&mut batch_client, "many", Duration::from_secs(5)).await;
        let batch = batch["hostEventBatches"].as_array().unwrap().clone();
        batched.extend(batch.iter().map(|e| e["host"]["hostname"].clone()));
    }
    batched.sort_by_key(|name| name.to_string());
    assert_eq!(batched, single);
    // The other hosts were never sent.
    assert_eq!(single_client.receive(INTERVAL * 3).await, Received::Nothing);
    assert_eq!(batch_client.receive(INTERVAL).await, Received::Nothing);
    gateway.shutdown().await;
    sim.shutdown().await;
}

/// The host and the freshness report of one `host` query.
async fn host_freshness(url: &str, id: &str) -> (Value, Value) {
    let body = response(url, HOST, json!({"id": id})).await;
    (
        body["data"]["host"].clone(),
        body["extensions"]["freshness"].clone(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_host_list_is_replaced_by_the_watchers_poll_not_reloaded_by_queries() {
    let redis = RedisServer::start();
    let sim = SimCluster::start(small_sim()).await.unwrap();
    let (a, b, mut on_a, mut on_b) = two_replicas_on_host_events(&sim, &redis).await;
    let (url_a, url_b) = (a.url(), b.url());
    tokio::time::sleep(INTERVAL * 4).await;
    for url in [&url_a, &url_b] {
        let (host, _) = host_freshness(url, "replaced-host").await;
        assert_eq!(host, Value::Null);
    }

    for (round, hostname) in ["joined", "renamed"].into_iter().enumerate() {
        let mut host = sim.hosts(1).remove(0);
        host.id = "replaced-host".into();
        host.hostname = hostname.into();
        sim.upsert_host(host);
        for (client, url) in [(&mut on_a, &url_a), (&mut on_b, &url_b)] {
            let event = next_event(client, "h", Duration::from_secs(5)).await;
            assert_eq!(event["hostEvents"]["host"]["hostname"], hostname);
            // The leader's poll put the new list in its L1 and in Redis:
            // the query after the event reads it, on either replica,
            // without asking a scheduler again.
            let (host, freshness) = host_freshness(url, "replaced-host").await;
            assert_eq!(host["hostname"], hostname, "round {round} on {url}");
            assert_eq!(
                freshness["originLoads"], 0,
                "round {round} on {url}: {freshness}"
            );
        }
    }
    a.shutdown().await;
    b.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_subscriber_sees_each_transition_in_order_then_completion() {
    let sim = SimCluster::start(small_sim()).await.unwrap();
    let gateway = Gateway::start(live_config(&sim, None)).await.unwrap();
    let peer = sim.peers(1).remove(0);
    let host_id = peer.host.as_ref().map(|h| h.id.clone()).unwrap();
    let task_id = peer.task.as_ref().map(|t| t.id.clone()).unwrap();
    assert!(sim.set_peer_state(&peer.id, "Pending"));

    let mut client = WsClient::ready(&gateway.url()).await;
    client
        .subscribe(
            "p",
            "subscription($h: ID!, $t: ID!, $p: ID!) { peerStateChanged(hostId: $h, taskId: $t, peerId: $p) { from to peer { id state } observedAt } }",
            json!({"h": host_id, "t": task_id, "p": peer.id}),
        )
        .await;
    let first = next_event(&mut client, "p", Duration::from_secs(5)).await;
    assert_eq!(first["peerStateChanged"]["from"], Value::Null);
    assert_eq!(first["peerStateChanged"]["to"], "PENDING");
    tokio::time::sleep(INTERVAL * 3).await;

    let mut lags = Vec::new();
    for (from, to, wire) in [
        ("PENDING", "RUNNING", "Running"),
        ("RUNNING", "SUCCEEDED", "Succeeded"),
    ] {
        let changed = Instant::now();
        assert!(sim.set_peer_state(&peer.id, wire));
        let event = next_event(&mut client, "p", INTERVAL * 2 + Duration::from_secs(2)).await;
        lags.push(changed.elapsed());
        assert_eq!(event["peerStateChanged"]["from"], from);
        assert_eq!(event["peerStateChanged"]["to"], to);
        assert_eq!(event["peerStateChanged"]["peer"]["state"], to);
    }
    println!("peer transition seen after {lags:?} (interval {INTERVAL:?})");

    // The peer goes with its host: the subscription completes.
    assert!(sim.remove_host(1, &host_id));
    let complete = client.message(Duration::from_secs(5)).await;
    assert_eq!(complete, json!({"type": "complete", "id": "p"}));
    wait_until("subscription gone", Duration::from_secs(5), || {
        gateway.state.events.live_subscriptions() == 0
    })
    .await;
    gateway.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_subscriber_sees_changed_fields() {
    let sim = SimCluster::start(small_sim()).await.unwrap();
    let gateway = Gateway::start(live_config(&sim, None)).await.unwrap();
    let task = sim.tasks(2).remove(0);
    let mut client = WsClient::ready(&gateway.url()).await;
    client
        .subscribe(
            "t",
            "subscription($id: ID!) { taskChanged(id: $id) { task { id state schedulerClusterId } changedFields } }",
            json!({"id": task.id}),
        )
        .await;
    let first = next_event(&mut client, "t", Duration::from_secs(5)).await;
    assert_eq!(first["taskChanged"]["task"]["schedulerClusterId"], "2");
    assert_eq!(first["taskChanged"]["changedFields"], json!([]));
    tokio::time::sleep(INTERVAL * 3).await;
    assert!(sim.set_task_state(&task.id, "Failed"));
    let event = next_event(&mut client, "t", Duration::from_secs(5)).await;
    assert_eq!(event["taskChanged"]["task"]["state"], "FAILED");
    assert!(
        event["taskChanged"]["changedFields"]
            .as_array()
            .unwrap()
            .contains(&json!("state")),
        "{event}"
    );
    gateway.shutdown().await;
    sim.shutdown().await;
}

/// A gateway with a host-event subscriber, once it holds every cluster's
/// lease; returns it, the subscriber and its lease value.
async fn start_leader(
    config: Config,
    redis: &RedisServer,
    clusters: &[u64],
) -> (Gateway, WsClient, Option<String>) {
    let leader = Gateway::start(config).await.unwrap();
    let mut on_leader = WsClient::ready(&leader.url()).await;
    on_leader.subscribe("h", HOST_EVENTS, json!({})).await;
    let leader_id = Some(leader.state.events.bus.instance().to_owned());
    wait_until("the first replica leads", Duration::from_secs(10), || {
        lease_holders(redis, clusters)
            .iter()
            .all(|h| *h == leader_id)
    })
    .await;
    (leader, on_leader, leader_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_redis_calls_fail_briefly_keeps_polling_for_everyone() {
    let redis = RedisServer::start();
    redis.acl_setuser(
        "lead",
        &[
            "on",
            ">pw",
            "resetchannels",
            "&dfgraph:*",
            "~dfgraph:*",
            "+@all",
            "-@dangerous",
        ],
    );
    let sim = SimCluster::start(small_sim()).await.unwrap();
    let clusters = sim.cluster_ids();
    // A lease long enough to outlive the outage below.
    let lasting = |config: &mut Config| config.watch.lease_ttl = Duration::from_secs(3);
    let mut config = live_config(&sim, Some(&redis));
    config.redis = Some(redis.url_as("lead", "pw"));
    lasting(&mut config);
    let (leader, on_leader, leader_id) = start_leader(config, &redis, &clusters).await;
    let mut config = live_config(&sim, Some(&redis));
    lasting(&mut config);
    let follower = Gateway::start(config).await.unwrap();
    let mut on_follower = WsClient::ready(&follower.url()).await;
    on_follower.subscribe("h", HOST_EVENTS, json!({})).await;
    tokio::time::sleep(INTERVAL * 4).await;

    // The leader can no longer run scripts (interest, leases): its
    // coordination fails, while its lease has seconds left.
    redis.acl_setuser("lead", &["-eval"]);
    tokio::time::sleep(INTERVAL * 2).await;
    let mut host = sim.hosts(1).remove(0);
    host.id = "during-the-outage".into();
    sim.upsert_host(host);
    let event = next_event(&mut on_follower, "h", INTERVAL * 4).await;
    assert_eq!(event["hostEvents"]["host"]["id"], "during-the-outage");
    redis.acl_setuser("lead", &["+eval"]);
    tokio::time::sleep(INTERVAL * 3).await;
    assert!(
        lease_holders(&redis, &clusters)
            .iter()
            .all(|h| *h == leader_id),
        "a brief failure handed the lease over"
    );
    drop(on_leader);
    drop(on_follower);
    follower.shutdown().await;
    leader.shutdown().await;
    sim.shutdown().await;
}

const PEER_STATE: &str = "subscription($h: ID!, $t: ID!, $p: ID!) { peerStateChanged(hostId: $h, taskId: $t, peerId: $p) { from to } }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_cannot_hear_the_leader_polls_its_own_subscriptions() {
    let redis = RedisServer::start();
    // The follower's commands work (interest, leases, cache, publishing),
    // but its listener may not subscribe: the leader's events cannot
    // reach it, as when its pub/sub connection is down and the rest is
    // not.
    redis.add_deaf_user("deaf");
    let sim = SimCluster::start(small_sim()).await.unwrap();
    let clusters = sim.cluster_ids();
    let (leader, on_leader, leader_id) =
        start_leader(live_config(&sim, Some(&redis)), &redis, &clusters).await;

    let mut config = live_config(&sim, Some(&redis));
    config.redis = Some(redis.url_as("deaf", "pw"));
    let follower = Gateway::start(config).await.unwrap();
    let peer = sim.peers(1).remove(0);
    let host_id = peer.host.as_ref().map(|h| h.id.clone()).unwrap();
    let task_id = peer.task.as_ref().map(|t| t.id.clone()).unwrap();
    assert!(sim.set_peer_state(&peer.id, "Pending"));
    let mut client = WsClient::ready(&follower.url()).await;
    let vars = json!({"h": host_id, "t": task_id, "p": peer.id});
    client.subscribe("p", PEER_STATE, vars).await;
    let first = next_event(&mut client, "p", Duration::from_secs(5)).await;
    assert_eq!(first["peerStateChanged"]["to"], "PENDING");
    tokio::time::sleep(INTERVAL * 3).await;
    assert!(!follower.state.events.bus.listening().0);

    assert!(sim.set_peer_state(&peer.id, "Running"));
    let event = next_event(&mut client, "p", INTERVAL * 2 + Duration::from_secs(2)).await;
    assert_eq!(event["peerStateChanged"]["from"], "PENDING");
    assert_eq!(event["peerStateChanged"]["to"], "RUNNING");
    // Polling for itself, it did not take the leader's place.
    assert!(
        lease_holders(&redis, &clusters)
            .iter()
            .all(|h| *h == leader_id)
    );

    // Once it hears the channel again, the leader's events carry on.
    redis.acl_setuser("deaf", &["+subscribe"]);
    wait_until("the listener subscribes", Duration::from_secs(10), || {
        follower.state.events.bus.listening().0
    })
    .await;
    tokio::time::sleep(INTERVAL * 3).await;
    // ...and the follower stops polling for itself: the peer is polled by
    // the leader alone again (while deaf, it was polled twice per interval).
    sim.reset_counters();
    let window = Duration::from_secs(2);
    tokio::time::sleep(window).await;
    let polls = sim.total_rpc_count(Method::StatPeer);
    let one_poller = (window.as_millis() / INTERVAL.as_millis()) as u64;
    assert!(
        polls >= one_poller / 2 && polls <= one_poller * 3 / 2,
        "{polls} StatPeer in {window:?}: one poller makes ~{one_poller}"
    );
    assert!(sim.set_peer_state(&peer.id, "Succeeded"));
    let event = next_event(&mut client, "p", INTERVAL * 2 + Duration::from_secs(2)).await;
    assert_eq!(event["peerStateChanged"]["from"], "RUNNING");
    assert_eq!(event["peerStateChanged"]["to"], "SUCCEEDED");
    drop(client);
    drop(on_leader);
    follower.shutdown().await;
    leader.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_subscribers_all_receive_an_event_and_leave_nothing_behind() {
    let sim = SimCluster::start(small_sim()).await.unwrap();
    let gateway = Gateway::start(live_config(&sim, None)).await.unwrap();
    let url = gateway.url();
    let mut clients = Vec::new();
    for _ in 0..10 {
        let batch = join_all((0..100).map(|_| async {
            let mut client = WsClient::ready(&url).await;
            client.subscribe("h", HOST_EVENTS, json!({})).await;
            client
        }))
        .await;
        clients.extend(batch);
    }
    wait_until("1,000 subscriptions live", Duration::from_secs(30), || {
        gateway.state.events.live_subscriptions() == 1000
    })
    .await;
    // The same document: one execution feeds them all.
    assert_eq!(gateway.fanout.running(), 1);
    tokio::time::sleep(INTERVAL * 4).await;

    let mut host = sim.hosts(2).remove(0);
    host.id = "seen-by-all".into();
    sim.upsert_host(host);
    let received = join_all(clients.iter_mut().map(|c| async move {
        next_event(c, "h", Duration::from_secs(20)).await["hostEvents"]["host"]["id"].clone()
    }))
    .await;
    assert!(received.iter().all(|id| id == "seen-by-all"));

    drop(clients);
    wait_until("no subscription left", Duration::from_secs(10), || {
        gateway.state.events.live_subscriptions() == 0 && gateway.fanout.running() == 0
    })
    .await;
    gateway.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_redis_does_not_hold_up_local_subscribers() {
    let redis = RedisServer::start();
    let sim = SimCluster::start(small_sim()).await.unwrap();
    let gateway = Gateway::start(live_config(&sim, Some(&redis)))
        .await
        .unwrap();
    let mut client = WsClient::ready(&gateway.url()).await;
    client.subscribe("h", HOST_EVENTS, json!({})).await;
    wait_until("subscribed", Duration::from_secs(5), || {
        gateway.state.events.live_subscriptions() == 1
    })
    .await;
    tokio::time::sleep(INTERVAL * 4).await;

    redis.pause();
    let mut host = sim.hosts(1).remove(0);
    for n in 0..3 {
        host.id = format!("while-hung-{n}");
        sim.upsert_host(host.clone());
    }
    let mut seen = Vec::new();
    for _ in 0..3 {
        let event = next_event(&mut client, "h", Duration::from_secs(5)).await;
        seen.push(
            event["hostEvents"]["host"]["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    seen.sort();
    assert_eq!(seen, ["while-hung-0", "while-hung-1", "while-hung-2"]);

    redis.resume();
    host.id = "after-resume".into();
    sim.upsert_host(host);
    let event = next_event(&mut client, "h", Duration::from_secs(10)).await;
    assert_eq!(event["hostEvents"]["host"]["id"], "after-resume");
    gateway.shutdown().await;
    sim.shutdown().await;
}

/// The `next` texts of subscription `id` on `client` until `count` of them
/// came, each cut down to its payload after checking the rest is `kind`'s
/// message for `id`; `ping` (a websocket ping) is sent once the first has
/// arrived, while the server is still writing the rest, and its pong must
/// come back among them.
async fn read_burst(
    client: &mut WsClient,
    kind: &str,
    id: &str,
    count: usize,
    ping: &[u8],
) -> Vec<String> {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let head = format!(r#"{{"type":"{kind}","id":{},"payload":"#, json!(id));
    let mut payloads = Vec::new();
    let mut ponged = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while payloads.len() < count || !ponged {
        let frame = tokio::time::timeout_at(deadline, client.socket.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{id}: {} of {count} messages, pong {ponged}",
                    payloads.len()
                )
            })
            .expect("connection open")
            .expect("a well-formed frame");
        match frame {
            Message::Text(text) => {
                let text = text.as_str();
                let message: Value = serde_json::from_str(text).expect("JSON");
                if message["type"] != kind {
                    continue;
                }
                assert_eq!(message["id"], id, "{text}");
                let payload = text
                    .strip_prefix(head.as_str())
                    .and_then(|rest| rest.strip_suffix('}'))
                    .unwrap_or_else(|| panic!("not {head}...}}: {text}"));
                payloads.push(payload.to_owned());
                if payloads.len() == 1 {
                    client
                        .socket
                        .send(Message::Ping(ping.to_vec().into()))
                        .await
                        .expect("ping sent");
                }
            }
            Message::Pong(data) => {
                assert_eq!(&data[..], ping);
                ponged = true;
            }
            _ => {}
        }
    }
    payloads
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_events_reach_every_subscriber_alike_but_its_id_and_pings_are_answered_mid_burst() {
    let sim = SimCluster::start(small_sim()).await.unwrap();
    let gateway = Gateway::start(live_config(&sim, None)).await.unwrap();
    let url = gateway.url();
    // Ids of every kind a client picks: the same number, its own numbers,
    // long UUID-like strings, characters JSON escapes.
    let ids: Vec<String> = (0..24)
        .map(|n| match n % 4 {
            0 => "1".to_owned(),
            1 => n.to_string(),
            2 => format!("5c0f3f6e-{n:04}-4a51-9d3c-{}", "0".repeat(n)),
            _ => format!("op \"{n}\" é"),
        })
        .collect();
    let mut clients = join_all(ids.iter().map(|id| {
        let url = url.clone();
        async move {
            let mut client = WsClient::ready(&url).await;
            client.subscribe(id, HOST_EVENTS, json!({})).await;
            client
        }
    }))
    .await;
    // And one speaking the legacy protocol, whose messages are `data`.
    let mut legacy = WsClient::connect(&url, "graphql-ws").await;
    legacy
        .send(json!({"type": "connection_init", "payload": {}}))
        .await;
    assert_eq!(
        legacy.message(Duration::from_secs(5)).await["type"],
        "connection_ack"
    );
    legacy
        .send(json!({"type": "start", "id": "legacy", "payload": {"query": HOST_EVENTS}}))
        .await;
    wait_until("every subscription live", Duration::from_secs(10), || {
        gateway.state.events.live_subscriptions() == ids.len() + 1
    })
    .await;
    assert_eq!(gateway.fanout.running(), 1, "one shared execution");
    tokio::time::sleep(INTERVAL * 4).await;

    // A burst: many changed hosts at once, each event a few KiB.
    let hosts: Vec<_> = sim.hosts(1).into_iter().take(40).collect();
    let burst = hosts.len();
    for (n, mut host) in hosts.into_iter().enumerate() {
        host.hostname = format!("burst-{n}-{}", "y".repeat(3000));
        sim.upsert_host(host);
    }
    // All at once, so each ping meets a writer with the burst to write.
    let (mut received, legacy_received) = tokio::join!(
        join_all(clients.iter_mut().zip(&ids).map(|(client, id)| read_burst(
            client,
            "next",
            id,
            burst,
            id.as_bytes()
        )),),
        read_burst(&mut legacy, "data", "legacy", burst, b"legacy"),
    );
    received.push(legacy_received);

    let first = &received[0];
    assert_eq!(first.len(), burst);
    let mut hostnames: Vec<String> = first
        .iter()
        .map(|payload| {
            let payload: Value = serde_json::from_str(payload).expect("a JSON payload");
            payload["data"]["hostEvents"]["host"]["hostname"]
                .as_str()
                .expect("a hostname")
                .to_owned()
        })
        .collect();
    hostnames.sort();
    hostnames.dedup();
    assert_eq!(hostnames.len(), burst, "every changed host, once");
    for (n, payloads) in received.iter().enumerate() {
        assert!(payloads == first, "subscriber {n} got other payload bytes");
    }
    drop(clients);
    drop(legacy);
    gateway.shutdown().await;
    sim.shutdown().await;
}
