//! The event log end to end: what subscribers were told is kept (in Redis,
//! once however many replicas; in process without Redis), and the past
//! can be asked for: the host event log paged by cursor, one host's
//! events, the hosts that churned, how far back the log reaches.

use std::time::Duration;

use crate::support::live::{INTERVAL, live_config, next_event, query, wait_until};
use crate::support::redis::RedisServer;
use crate::support::ws::WsClient;
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
    let host = sim.hosts(1).remove(0);
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
    let sim = SimCluster::start(small_sim()).await.unwrap();
    let a = Gateway::start(live_config(&sim, Some(&redis)))
        .await
        .unwrap();
    let b = Gateway::start(live_config(&sim, Some(&redis)))
        .await
        .unwrap();
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
