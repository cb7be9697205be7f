//! The event log end to end: what subscribers were told is kept (in Redis,
//! once however many replicas; in process without Redis), and the past
//! can be asked for: the host event log paged by cursor, one host's
//! events, the hosts that churned, how far back the log reaches. A
//! subscriber resumes from its last cursor on any replica, and a replica
//! that could not hear the bus catches up from the log: every event once,
//! in order.

use std::time::Duration;

use crate::support::live::{INTERVAL, live_config, next_event, query, wait_until};
use crate::support::redis::RedisServer;
use crate::support::ws::{Received, WsClient};
use crate::support::{TestEnv, small_sim};
use dfgraph::gateway::Gateway;
use dfgraph_sim::SimCluster;
use serde_json::{Value, json};

const WITH_CURSORS: &str =
    "subscription { hostEvents { kind host { id } cursor schedulerClusterId } }";

const LOG: &str = "query($host: ID, $first: Int!, $after: EventCursor) {
  hostEventLog(hostId: $host, first: $first, after: $after) {
    events { kind host { id } cursor observedAt }
    hasNextPage endCursor scanLimitReached
  }
}";

/// Takes a host of cluster 1 away and back `times` times, and returns its
/// id and the events `subscriber` (on `hostEvents` as "h") was told.
async fn restart_host(
    sim: &SimCluster,
    subscriber: &mut WsClient,
    times: usize,
) -> (String, Vec<Value>) {
    // The same host every time: the one with the lowest id.
    let host = sim
        .hosts(1)
        .into_iter()
        .min_by(|a, b| a.id.cmp(&b.id))
        .expect("cluster 1 has hosts");
    let mut told = Vec::new();
    for _ in 0..times {
        assert!(sim.remove_host(1, &host.id));
        told.push(next_event(subscriber, "h", Duration::from_secs(5)).await["hostEvents"].clone());
        sim.upsert_host(host.clone());
        told.push(next_event(subscriber, "h", Duration::from_secs(5)).await["hostEvents"].clone());
    }
    let kinds: Vec<&str> = told.iter().filter_map(|e| e["kind"].as_str()).collect();
    assert_eq!(kinds, ["LEFT", "JOINED"].repeat(times), "{told:?}");
    assert!(told.iter().all(|e| e["host"]["id"] == host.id.as_str()));
    (host.id, told)
}

/// A simulated cluster and two replicas sharing `redis`.
async fn two_replicas(redis: &RedisServer) -> (SimCluster, Gateway, Gateway) {
    let sim = SimCluster::start(small_sim()).await.unwrap();
    let a = Gateway::start(live_config(&sim, Some(redis)))
        .await
        .unwrap();
    let b = Gateway::start(live_config(&sim, Some(redis)))
        .await
        .unwrap();
    (sim, a, b)
}

/// A gateway with a `hostEvents` subscriber (id "h") past its first poll.
async fn subscribed(gateway: &Gateway) -> WsClient {
    let mut client = WsClient::ready(&gateway.url()).await;
    client.subscribe("h", WITH_CURSORS, json!({})).await;
    wait_until("subscription live", Duration::from_secs(5), || {
        gateway.state.events.live_subscriptions() == 1
    })
    .await;
    // The first poll is the baseline; changes are what follows it.
    tokio::time::sleep(INTERVAL * 4).await;
    client
}

fn cursors(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            e["cursor"]
                .as_str()
                .unwrap_or_else(|| panic!("event without a cursor: {e}"))
                .to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarting_host_is_logged_once_across_replicas_and_its_history_pages_by_cursor() {
    let redis = RedisServer::start();
    let (sim, a, b) = two_replicas(&redis).await;
    let mut on_a = subscribed(&a).await;
    let mut on_b = subscribed(&b).await;

    let (host_id, told) = restart_host(&sim, &mut on_a, 3).await;
    let told_cursors = cursors(&told);
    // The other replica's subscriber was told the same events with the
    // same cursors.
    let mut on_b_told = Vec::new();
    for _ in 0..told.len() {
        on_b_told
            .push(next_event(&mut on_b, "h", Duration::from_secs(5)).await["hostEvents"].clone());
    }
    assert_eq!(cursors(&on_b_told), told_cursors);

    // Logged once, by the lease holder alone: the stream holds exactly the
    // six events (the simulator is frozen otherwise).
    let mut conn = redis.conn();
    let len: u64 = redis::cmd("XLEN")
        .arg(dfgraph::cache::keys::event_log(1))
        .query(&mut conn)
        .unwrap();
    assert_eq!(len, 6);

    // Newest first, in pages, on the replica that did not poll.
    let first = query(&b.url(), LOG, json!({"host": host_id, "first": 4})).await;
    let page = &first["hostEventLog"];
    assert_eq!(page["hasNextPage"], true, "{page}");
    let mut logged: Vec<Value> = page["events"].as_array().unwrap().clone();
    let rest = query(
        &b.url(),
        LOG,
        json!({"host": host_id, "first": 4, "after": page["endCursor"]}),
    )
    .await;
    assert_eq!(rest["hostEventLog"]["hasNextPage"], false);
    logged.extend(rest["hostEventLog"]["events"].as_array().unwrap().clone());
    logged.reverse();
    assert_eq!(cursors(&logged), told_cursors, "the log is what was told");
    let kinds: Vec<&str> = logged.iter().filter_map(|e| e["kind"].as_str()).collect();
    assert_eq!(kinds, ["LEFT", "JOINED"].repeat(3));

    // Its churn puts it first among the flapping hosts.
    let churn = query(
        &b.url(),
        "{ hostChurn(windowSeconds: 600) { hosts { host { id } schedulerClusterId joins leaves updates } } }",
        json!({}),
    )
    .await;
    assert_eq!(
        churn["hostChurn"]["hosts"],
        json!([{"host": {"id": host_id}, "schedulerClusterId": "1", "joins": 3, "leaves": 3, "updates": 0}])
    );

    // The host's own newest events, and how far back the log reaches.
    let own = query(
        &a.url(),
        "query($id: ID!) { host(id: $id, schedulerClusterId: \"1\") { events(first: 2) { kind cursor } } }",
        json!({"id": host_id}),
    )
    .await;
    assert_eq!(
        own["host"]["events"],
        json!([
            {"kind": "JOINED", "cursor": told_cursors[5]},
            {"kind": "LEFT", "cursor": told_cursors[4]},
        ])
    );
    let info = query(
        &a.url(),
        "{ eventLog { enabled backend retentionSeconds clusters { schedulerClusterId oldestCursor entries } } }",
        json!({}),
    )
    .await;
    assert_eq!(info["eventLog"]["backend"], "redis");
    assert_eq!(info["eventLog"]["retentionSeconds"], 86_400);
    assert_eq!(
        info["eventLog"]["clusters"][0],
        json!({"schedulerClusterId": "1", "oldestCursor": told_cursors[0], "entries": 6})
    );
    a.shutdown().await;
    b.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_the_log_is_kept_in_process_and_bounded() {
    let sim = SimCluster::start(small_sim()).await.unwrap();
    let mut config = live_config(&sim, None);
    config.event_log.max_entries = 4;
    let gateway = Gateway::start(config).await.unwrap();
    let mut client = subscribed(&gateway).await;
    let (host_id, told) = restart_host(&sim, &mut client, 3).await;
    let page = query(&gateway.url(), LOG, json!({"host": host_id, "first": 10})).await;
    let mut logged = page["hostEventLog"]["events"].as_array().unwrap().clone();
    logged.reverse();
    // The oldest two went to keep four.
    assert_eq!(cursors(&logged), cursors(&told[2..]));
    let info = query(
        &gateway.url(),
        "{ eventLog { backend clusters { schedulerClusterId oldestCursor entries } } }",
        json!({}),
    )
    .await;
    assert_eq!(info["eventLog"]["backend"], "memory");
    assert_eq!(info["eventLog"]["clusters"][0]["entries"], 4);
    assert_eq!(
        info["eventLog"]["clusters"][0]["oldestCursor"],
        told[2]["cursor"]
    );
    gateway.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_dfgraph_did_not_make_is_refused() {
    let env = TestEnv::start(small_sim(), |_| {}).await;
    let body = env
        .query(LOG, json!({"first": 5, "after": "ev1_AAAAAAAAAAAAAAAA"}))
        .await;
    let message = body["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(message.contains("not an event cursor"), "{body}");
    env.stop().await;
}

const RESUME: &str = "subscription($after: EventCursor) {
  hostEvents(after: $after) { kind host { id } cursor }
}";

/// The next `n` host events of subscription "h".
async fn host_events(client: &mut WsClient, n: usize) -> Vec<Value> {
    let mut events = Vec::new();
    for _ in 0..n {
        events.push(next_event(client, "h", Duration::from_secs(5)).await["hostEvents"].clone());
    }
    events
}

/// Every logged event of `host_id`, oldest first.
async fn logged(gateway: &Gateway, host_id: &str) -> Vec<Value> {
    let page = query(&gateway.url(), LOG, json!({"host": host_id, "first": 100})).await;
    let mut events = page["hostEventLog"]["events"].as_array().unwrap().clone();
    events.reverse();
    events
}

/// A client on `a` that was told a host's restart, then went away, and a
/// keeper on `b` that stays (so host lists stay watched) and was told the
/// same: the keeper, the host's id and what the client was told.
async fn gone_away(sim: &SimCluster, a: &Gateway, b: &Gateway) -> (WsClient, String, Vec<Value>) {
    let mut keeper = subscribed(b).await;
    let mut client = subscribed(a).await;
    let (host_id, told) = restart_host(sim, &mut client, 1).await;
    drop(client);
    assert_eq!(host_events(&mut keeper, 2).await, told);
    (keeper, host_id, told)
}

/// A client back on `gateway` with the last cursor of `before` (what it
/// was told before it went away): asserts it is told `missed` once, in
/// order, then the next change of `host_id` (it leaves) once, and that all
/// it was told is the log. Returns that live event.
async fn resume_once(
    sim: &SimCluster,
    gateway: &Gateway,
    host_id: &str,
    before: Vec<Value>,
    missed: &[Value],
) -> Value {
    let mut back = WsClient::ready(&gateway.url()).await;
    let last_told = &before[before.len() - 1]["cursor"];
    back.subscribe("h", RESUME, json!({"after": last_told}))
        .await;
    let replayed = host_events(&mut back, missed.len()).await;
    assert_eq!(cursors(&replayed), cursors(missed));
    // Then live, without a seam: the next change comes once.
    assert!(sim.remove_host(1, host_id));
    let live = host_events(&mut back, 1).await;
    assert_eq!(live[0]["kind"], "LEFT");
    assert_eq!(back.receive(INTERVAL * 5).await, Received::Nothing);

    // What it was told, before and after, is the log: every event once.
    let mut told = before;
    told.extend(replayed);
    told.extend(live.clone());
    assert_eq!(cursors(&told), cursors(&logged(gateway, host_id).await));
    live[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_resuming_on_another_replica_gets_what_it_missed_once_in_order_then_live() {
    let redis = RedisServer::start();
    let (sim, a, b) = two_replicas(&redis).await;
    let (mut keeper, host_id, before) = gone_away(&sim, &a, &b).await;

    // Away: the host restarts three more times.
    let (_, missed) = restart_host(&sim, &mut keeper, 3).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Back, on the other replica, from its last cursor.
    resume_once(&sim, &b, &host_id, before, &missed).await;
    a.shutdown().await;
    b.shutdown().await;
    sim.shutdown().await;
}

/// Waits until every gateway uses Redis again after it came back: its
/// listener subscribed again (after `subscribed_before` subscriptions) and
/// its commands' circuit closed.
async fn redis_back(gateways: &[(&Gateway, u64)]) {
    wait_until("replicas use Redis again", Duration::from_secs(20), || {
        gateways.iter().all(|(g, before)| {
            let (listening, subscriptions) = g.state.events.bus.listening();
            listening && subscriptions > *before && g.state.cache.redis_available()
        })
    })
    .await;
}

/// How many times each gateway's listener has subscribed so far.
fn subscriptions(gateways: &[&Gateway]) -> Vec<u64> {
    gateways
        .iter()
        .map(|g| g.state.events.bus.listening().1)
        .collect()
}

/// Restarts `redis` and waits until both replicas use it again.
async fn restart_redis(redis: &mut RedisServer, a: &Gateway, b: &Gateway) {
    let before = subscriptions(&[a, b]);
    redis.restart();
    redis_back(&[(a, before[0]), (b, before[1])]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_resumes_through_a_redis_restart_when_the_log_is_persisted() {
    // What an operator who wants the history to outlive a Redis restart
    // runs: an append-only file, synced on every write (the test servers
    // otherwise keep nothing on disk).
    let dir = tempfile::tempdir().unwrap();
    let dir_arg = dir.path().to_str().unwrap();
    let mut redis = RedisServer::start_with(&[
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--dir",
        dir_arg,
    ]);
    let (sim, a, b) = two_replicas(&redis).await;
    let (mut keeper, host_id, before) = gone_away(&sim, &a, &b).await;

    // Away: the host restarts twice, Redis crashes and comes back with its
    // log, the host restarts twice more.
    let (_, mut missed) = restart_host(&sim, &mut keeper, 2).await;
    restart_redis(&mut redis, &a, &b).await;
    let (_, after_restart) = restart_host(&sim, &mut keeper, 2).await;
    missed.extend(after_restart);

    // Back, with its cursor: everything it missed (before and after the
    // restart), once, in order, then live.
    let live = resume_once(&sim, &a, &host_id, before, &missed).await;
    assert_eq!(
        cursors(&host_events(&mut keeper, 1).await),
        cursors(&[live])
    );
    assert_eq!(keeper.receive(INTERVAL * 2).await, Received::Nothing);
    a.shutdown().await;
    b.shutdown().await;
    sim.shutdown().await;
}

/// The error a resume from `after` on `gateway` is refused with.
async fn resume_refused(gateway: &Gateway, after: &Value) -> Value {
    let mut client = WsClient::ready(&gateway.url()).await;
    client.subscribe("h", RESUME, json!({"after": after})).await;
    let refused = client.message(Duration::from_secs(5)).await;
    assert_eq!(refused["type"], "error", "{refused}");
    let error = refused["payload"][0].clone();
    assert_eq!(error["extensions"]["code"], "CURSOR_EXPIRED", "{error}");
    error
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_of_a_log_lost_with_redis_is_refused_rather_than_resumed_with_a_gap() {
    // No persistence: a restart loses the stream.
    let mut redis = RedisServer::start();
    let (sim, a, b) = two_replicas(&redis).await;
    let (mut keeper, _, before) = gone_away(&sim, &a, &b).await;
    let last_told = before[1]["cursor"].clone();

    // Away: the host restarts once more (logged), then Redis crashes and
    // comes back empty.
    restart_host(&sim, &mut keeper, 1).await;
    restart_redis(&mut redis, &a, &b).await;

    // Nothing logged since: an empty log is not "nothing was missed".
    let refused = resume_refused(&a, &last_told).await;
    assert_eq!(
        refused["extensions"]["oldestCursor"],
        Value::Null,
        "{refused}"
    );
    // Once the log takes events again, it names the oldest it holds, from
    // which the rest comes.
    let (_, since) = restart_host(&sim, &mut keeper, 1).await;
    let refused = resume_refused(&b, &last_told).await;
    assert_eq!(refused["extensions"]["oldestCursor"], since[0]["cursor"]);
    let mut back = WsClient::ready(&a.url()).await;
    back.subscribe("h", RESUME, json!({"after": since[0]["cursor"]}))
        .await;
    assert_eq!(
        cursors(&host_events(&mut back, 1).await),
        cursors(&since[1..])
    );
    a.shutdown().await;
    b.shutdown().await;
    sim.shutdown().await;
}

/// Records every message on the bus channel, from a connection of its own.
fn record_bus(redis: &RedisServer) -> std::sync::mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let mut conn = redis.conn();
    std::thread::spawn(move || {
        let mut pubsub = conn.as_pubsub();
        pubsub.subscribe(dfgraph::cache::keys::BUS_CHANNEL).unwrap();
        // Ends when the server goes away.
        while let Ok(message) = pubsub.get_message() {
            if tx.send(message.get_payload_bytes().to_vec()).is_err() {
                return;
            }
        }
    });
    rx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_the_bus_repeats_after_a_redis_restart_are_dropped_by_their_cursor() {
    let mut redis = RedisServer::start();
    let (sim, a, b) = two_replicas(&redis).await;
    let mut on_a = subscribed(&a).await;
    let mut on_b = subscribed(&b).await;
    let recorded = record_bus(&redis);
    tokio::time::sleep(INTERVAL).await;

    let (host_id, told) = restart_host(&sim, &mut on_a, 1).await;
    assert_eq!(host_events(&mut on_b, 2).await, told);
    tokio::time::sleep(INTERVAL).await;
    let heard: Vec<Vec<u8>> = recorded.try_iter().collect();
    assert!(!heard.is_empty(), "the leader published its events");

    // Redis restarts (empty), and then the bus hands every message of
    // before again: neither replica tells its subscriber twice.
    restart_redis(&mut redis, &a, &b).await;
    let mut conn = redis.conn();
    for message in &heard {
        redis::cmd("PUBLISH")
            .arg(dfgraph::cache::keys::BUS_CHANNEL)
            .arg(message.as_slice())
            .query::<()>(&mut conn)
            .unwrap();
    }
    assert_eq!(on_a.receive(INTERVAL * 5).await, Received::Nothing);
    assert_eq!(on_b.receive(INTERVAL).await, Received::Nothing);

    // The next change comes once to each, with its cursor.
    assert!(sim.remove_host(1, &host_id));
    let live = host_events(&mut on_a, 1).await;
    assert_eq!(live[0]["kind"], "LEFT");
    assert!(live[0]["cursor"].is_string(), "{live:?}");
    assert_eq!(host_events(&mut on_b, 1).await, live);
    assert_eq!(on_a.receive(INTERVAL * 3).await, Received::Nothing);
    assert_eq!(on_b.receive(INTERVAL).await, Received::Nothing);
    a.shutdown().await;
    b.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_older_than_the_log_is_refused_with_the_oldest_one_available() {
    let sim = SimCluster::start(small_sim()).await.unwrap();
    let mut config = live_config(&sim, None);
    config.event_log.max_entries = 2;
    let gateway = Gateway::start(config).await.unwrap();
    let mut client = subscribed(&gateway).await;
    let (_, told) = restart_host(&sim, &mut client, 2).await;

    let mut late = WsClient::ready(&gateway.url()).await;
    late.subscribe("h", RESUME, json!({"after": told[0]["cursor"]}))
        .await;
    let refused = late.message(Duration::from_secs(5)).await;
    assert_eq!(refused["type"], "error", "{refused}");
    let error = &refused["payload"][0];
    assert_eq!(error["extensions"]["code"], "CURSOR_EXPIRED", "{error}");
    assert_eq!(error["extensions"]["oldestCursor"], told[2]["cursor"]);
    // From the oldest available, the rest comes.
    late.subscribe("h", RESUME, json!({"after": told[2]["cursor"]}))
        .await;
    let rest = host_events(&mut late, 1).await;
    assert_eq!(cursors(&rest), cursors(&told[3..]));
    gateway.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_could_not_hear_the_bus_delivers_what_it_missed_from_the_log() {
    let redis = RedisServer::start();
    // Its commands work, but its listener may not subscribe: the leader's
    // events do not reach it, as when its pub/sub connection is down.
    redis.add_deaf_user("deaf");
    let sim = SimCluster::start(small_sim()).await.unwrap();
    let leader = Gateway::start(live_config(&sim, Some(&redis)))
        .await
        .unwrap();
    let mut on_leader = subscribed(&leader).await;
    let mut config = live_config(&sim, Some(&redis));
    config.redis = Some(redis.url_as("deaf", "pw"));
    let follower = Gateway::start(config).await.unwrap();
    let mut on_follower = subscribed(&follower).await;
    assert!(!follower.state.events.bus.listening().0);

    let (host_id, told) = restart_host(&sim, &mut on_leader, 2).await;
    assert_eq!(on_follower.receive(INTERVAL * 3).await, Received::Nothing);

    // It hears again: what it missed comes first, once, in order.
    redis.acl_setuser("deaf", &["+subscribe"]);
    let caught_up = host_events(&mut on_follower, told.len()).await;
    assert_eq!(cursors(&caught_up), cursors(&told));
    // Then the live ones, once.
    assert!(sim.remove_host(1, &host_id));
    let live = host_events(&mut on_follower, 1).await;
    assert_eq!(live, host_events(&mut on_leader, 1).await);
    assert_eq!(on_follower.receive(INTERVAL * 5).await, Received::Nothing);
    leader.shutdown().await;
    follower.shutdown().await;
    sim.shutdown().await;
}

const PEER: &str = "subscription($h: ID!, $t: ID!, $p: ID!, $after: EventCursor) {
  peerStateChanged(hostId: $h, taskId: $t, peerId: $p, after: $after) { from to cursor }
}";

/// The next `peerStateChanged` message of subscription `id`.
async fn peer_change(client: &mut WsClient, id: &str) -> Value {
    next_event(client, id, Duration::from_secs(5)).await["peerStateChanged"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_subscriber_resumes_with_the_changes_it_missed_then_live_ones() {
    let redis = RedisServer::start();
    let sim = SimCluster::start(small_sim()).await.unwrap();
    let gateway = Gateway::start(live_config(&sim, Some(&redis)))
        .await
        .unwrap();
    let peer = sim.peers(1).remove(0);
    let vars = json!({
        "h": peer.host.as_ref().map(|h| h.id.clone()),
        "t": peer.task.as_ref().map(|t| t.id.clone()),
        "p": peer.id,
    });
    assert!(sim.set_peer_state(&peer.id, "Pending"));
    // Someone keeps watching the peer while the client is away.
    let mut keeper = WsClient::ready(&gateway.url()).await;
    keeper.subscribe("k", PEER, vars.clone()).await;
    let mut client = WsClient::ready(&gateway.url()).await;
    client.subscribe("p", PEER, vars.clone()).await;
    assert_eq!(peer_change(&mut keeper, "k").await["to"], "PENDING");
    assert_eq!(peer_change(&mut client, "p").await["to"], "PENDING");
    tokio::time::sleep(INTERVAL * 3).await;

    assert!(sim.set_peer_state(&peer.id, "Running"));
    let running = peer_change(&mut client, "p").await;
    assert_eq!(
        (running["from"].as_str(), running["to"].as_str()),
        (Some("PENDING"), Some("RUNNING"))
    );
    assert!(running["cursor"].is_string(), "{running}");
    assert_eq!(peer_change(&mut keeper, "k").await, running);
    drop(client);

    // Away: it finishes.
    assert!(sim.set_peer_state(&peer.id, "Succeeded"));
    let missed = peer_change(&mut keeper, "k").await;

    let mut back = WsClient::ready(&gateway.url()).await;
    let mut resume = vars.clone();
    resume["after"] = running["cursor"].clone();
    back.subscribe("p", PEER, resume).await;
    // What it missed, and no current-state message repeating it.
    assert_eq!(peer_change(&mut back, "p").await, missed);
    assert_eq!(back.receive(INTERVAL * 3).await, Received::Nothing);
    // Then live.
    assert!(sim.set_peer_state(&peer.id, "Failed"));
    let failed = peer_change(&mut back, "p").await;
    assert_eq!(
        (failed["from"].as_str(), failed["to"].as_str()),
        (Some("SUCCEEDED"), Some("FAILED"))
    );
    gateway.shutdown().await;
    sim.shutdown().await;
}

const TASK: &str = "subscription($id: ID!, $after: EventCursor) {
  taskChanged(id: $id, after: $after) { task { id state } changedFields cursor }
}";

/// The next `taskChanged` message of subscription `id`.
async fn task_change(client: &mut WsClient, id: &str) -> Value {
    next_event(client, id, Duration::from_secs(5)).await["taskChanged"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_subscriber_resumes_with_the_changes_it_missed() {
    let sim = SimCluster::start(small_sim()).await.unwrap();
    // Without Redis: the log is the process's ring.
    let gateway = Gateway::start(live_config(&sim, None)).await.unwrap();
    let task = sim.tasks(1).remove(0);
    assert!(sim.set_task_state(&task.id, "Running"));
    let vars = json!({"id": task.id});
    let mut keeper = WsClient::ready(&gateway.url()).await;
    keeper.subscribe("k", TASK, vars.clone()).await;
    let mut client = WsClient::ready(&gateway.url()).await;
    client.subscribe("t", TASK, vars.clone()).await;
    assert_eq!(
        task_change(&mut keeper, "k").await["task"]["state"],
        "RUNNING"
    );
    assert_eq!(
        task_change(&mut client, "t").await["task"]["state"],
        "RUNNING"
    );
    tokio::time::sleep(INTERVAL * 3).await;

    assert!(sim.set_task_state(&task.id, "Failed"));
    let failed = task_change(&mut client, "t").await;
    assert_eq!(failed["changedFields"], json!(["state"]));
    assert!(failed["cursor"].is_string(), "{failed}");
    assert_eq!(task_change(&mut keeper, "k").await, failed);
    drop(client);

    assert!(sim.set_task_state(&task.id, "Succeeded"));
    let missed = task_change(&mut keeper, "k").await;
    let mut back = WsClient::ready(&gateway.url()).await;
    let mut resume = vars.clone();
    resume["after"] = failed["cursor"].clone();
    back.subscribe("t", TASK, resume).await;
    assert_eq!(task_change(&mut back, "t").await, missed);
    assert_eq!(back.receive(INTERVAL * 3).await, Received::Nothing);
    gateway.shutdown().await;
    sim.shutdown().await;
}

/// An event log over `redis` as one replica holds it.
fn replica_log(redis: &RedisServer) -> dfgraph::events::log::EventLog {
    let cache = dfgraph::cache::CacheConfig {
        redis_url: Some(redis.url()),
        ..Default::default()
    };
    let settings = cache.redis_settings().expect("a URL is set");
    let redis = dfgraph::redis::Redis::new(&settings).expect("settings parse");
    dfgraph::events::log::EventLog::new(Default::default(), Some(redis)).expect("the log is on")
}

fn host_event(
    change: dfgraph::events::HostChange,
    id: &str,
    cpu_percent: f64,
) -> dfgraph::events::Event {
    use dfgraph::proto::common::v2::{Cpu, Host};
    let host = Host {
        id: id.to_owned(),
        hostname: format!("{id}.example"),
        cpu: Some(Cpu {
            percent: cpu_percent,
            ..Default::default()
        }),
        ..Default::default()
    };
    dfgraph::events::Event {
        cluster_id: 1,
        observed_at_ms: 0,
        what: dfgraph::events::What::Host {
            change,
            host: std::sync::Arc::new(host),
            changed_fields: Vec::new(),
        },
        cursor: None,
    }
}

/// Appends `event` through `log` and returns its cursor.
async fn log_one(
    log: &dfgraph::events::log::EventLog,
    mut event: dfgraph::events::Event,
) -> dfgraph::events::log::EventCursor {
    log.append(&mut [&mut event], &[])
        .await
        .expect("Redis answers");
    event.cursor.expect("a logged event has its cursor")
}

/// Right after a Redis restart two replicas can both observe one change
/// (one still polling for itself); the log keeps it once and both tell it
/// under that entry's cursor, while each real transition is kept.
#[tokio::test]
async fn a_change_two_replicas_observed_is_logged_once() {
    use dfgraph::events::HostChange::{Joined, Left, Reachable, Unreachable, Updated};
    let redis = RedisServer::start();
    let (a, b) = (replica_log(&redis), replica_log(&redis));

    let joined = log_one(&a, host_event(Joined, "h1", 1.0)).await;
    // B's copy was observed at another poll: other load figures.
    assert_eq!(log_one(&b, host_event(Joined, "h1", 2.0)).await, joined);
    // Another host's join is its own.
    let other = log_one(&b, host_event(Joined, "h2", 1.0)).await;
    assert_ne!(other, joined);

    let updated = log_one(&a, host_event(Updated, "h1", 5.0)).await;
    assert_eq!(log_one(&b, host_event(Updated, "h1", 5.0)).await, updated);
    let updated_again = log_one(&b, host_event(Updated, "h1", 6.0)).await;
    assert_ne!(updated_again, updated);

    let unreachable = log_one(&a, host_event(Unreachable, "h1", 6.0)).await;
    assert_eq!(
        log_one(&b, host_event(Unreachable, "h1", 6.0)).await,
        unreachable
    );
    let reachable = log_one(&b, host_event(Reachable, "h1", 6.0)).await;

    let left = log_one(&b, host_event(Left, "h1", 6.0)).await;
    assert_eq!(log_one(&a, host_event(Left, "h1", 6.0)).await, left);
    // A restart: gone, then back.
    let rejoined = log_one(&a, host_event(Joined, "h1", 1.0)).await;
    assert_ne!(rejoined, joined);
    // A host back starts its reachability afresh.
    let reachable_again = log_one(&a, host_event(Reachable, "h1", 1.0)).await;
    assert_ne!(reachable_again, reachable);

    // A state logged long ago may be stale (a leave while Redis was down
    // was never logged): a join then is a change, not a copy.
    let states = dfgraph::cache::keys::event_log_states(1);
    let mut conn = redis.conn();
    let joined_h2: String = redis::cmd("HGET")
        .arg(&states)
        .arg("h2")
        .query(&mut conn)
        .expect("h2's join is kept");
    let (_, state) = joined_h2.split_once(' ').expect("<id> <state>");
    let _: () = redis::cmd("HSET")
        .arg(&states)
        .arg("h2")
        .arg(format!("1-0 {state}"))
        .query(&mut conn)
        .expect("Redis answers");
    let rejoined_h2 = log_one(&b, host_event(Joined, "h2", 1.0)).await;
    assert_ne!(rejoined_h2, other);

    let logged: Vec<_> = a
        .read(1, dfgraph::events::log::Range::all(), false, 100)
        .await
        .expect("Redis answers")
        .iter()
        .map(|e| e.cursor.expect("read events have cursors"))
        .collect();
    assert_eq!(
        logged,
        [
            joined,
            other,
            updated,
            updated_again,
            unreachable,
            reachable,
            left,
            rejoined,
            reachable_again,
            rejoined_h2
        ]
    );
}
