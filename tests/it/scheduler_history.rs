//! Scheduler health in the event log: each scheduler's reachability and
//! circuit transitions, recorded once however many replicas run (by the
//! holder of its cluster's health lease) or in the process's ring without
//! Redis; a `clusterHealth` subscriber that resumes from its last cursor,
//! over a websocket or with SSE `Last-Event-ID`, gets what it missed once,
//! in order, then each scheduler's current state, then live transitions.

use std::net::SocketAddr;
use std::time::Duration;

use crate::support::live::{INTERVAL, live_config, query};
use crate::support::redis::RedisServer;
use crate::support::small_sim;
use crate::support::sse::SseClient;
use crate::support::ws::{Received, WsClient};
use dfgraph::config::Config;
use dfgraph::events::What;
use dfgraph::events::log::{EventCursor, LogId};
use dfgraph::gateway::Gateway;
use dfgraph_sim::SimCluster;
use serde_json::{Value, json};

const HEALTH: &str = "subscription($after: EventCursor) {
  clusterHealth(after: $after) { scheduler { address } up circuit cursor }
}";

const WITHIN: Duration = Duration::from_secs(10);

/// A gateway for `sim` whose breakers never open (a stopped scheduler is
/// down, then up: two transitions), unless `circuits`, which open after
/// two failures and half-open 300 ms later.
fn config(sim: &SimCluster, redis: Option<&RedisServer>, circuits: bool) -> Config {
    let mut config = live_config(sim, redis);
    config.event_log.scheduler_health = true;
    config.breaker.minimum_calls = u32::MAX;
    if circuits {
        config.breaker.consecutive_failures = 2;
        config.breaker.open_base = Duration::from_millis(300);
        config.breaker.open_max = Duration::from_millis(300);
    } else {
        config.breaker.consecutive_failures = 1_000_000;
    }
    config
}

/// The scheduler that is stopped and started: cluster 1's first.
fn victim(sim: &SimCluster) -> SocketAddr {
    sim.schedulers()
        .iter()
        .find(|s| s.cluster_id == 1)
        .expect("cluster 1 has schedulers")
        .addr
}

/// The next `clusterHealth` message of subscription `id`.
async fn next(client: &mut WsClient, id: &str) -> Value {
    let message = client.message(WITHIN).await;
    assert_eq!(message["type"], "next", "{message}");
    assert_eq!(message["id"], id, "{message}");
    assert!(message["payload"].get("errors").is_none(), "{message}");
    message["payload"]["data"]["clusterHealth"].clone()
}

/// A client subscribed (as "c") past its first messages:
/// one per scheduler, each up and without a cursor.
async fn subscribed(gateway: &Gateway, schedulers: usize) -> WsClient {
    let mut client = WsClient::ready(&gateway.url()).await;
    client.subscribe("c", HEALTH, json!({})).await;
    for _ in 0..schedulers {
        let first = next(&mut client, "c").await;
        assert_eq!(first["up"], true, "{first}");
        assert_eq!(first["cursor"], Value::Null, "{first}");
    }
    // Past the recorder's first look, which records where each
    // scheduler's history starts.
    tokio::time::sleep(INTERVAL * 3).await;
    client
}

/// Stops `addr` (every call fails `UNAVAILABLE`) until `clients` were all
/// told it is down (and, if `open`, its circuit open), then starts it until
/// they were told it is up again; returns what each was told meanwhile,
/// the same for all.
async fn outage(
    sim: &SimCluster,
    addr: SocketAddr,
    open: bool,
    clients: &mut [&mut WsClient],
) -> Vec<Value> {
    let address = addr.to_string();
    sim.set_error(addr, Some(tonic::Code::Unavailable));
    let mut told: Vec<Vec<Value>> = vec![Vec::new(); clients.len()];
    for (client, told) in clients.iter_mut().zip(&mut told) {
        loop {
            let event = next(client, "c").await;
            assert_eq!(event["scheduler"]["address"], address.as_str(), "{event}");
            told.push(event.clone());
            if event["up"] == false && (!open || event["circuit"] == "OPEN") {
                break;
            }
        }
    }
    sim.set_error(addr, None);
    for (client, told) in clients.iter_mut().zip(&mut told) {
        loop {
            let event = next(client, "c").await;
            assert_eq!(event["scheduler"]["address"], address.as_str(), "{event}");
            told.push(event.clone());
            if event["up"] == true && event["circuit"] == "CLOSED" {
                break;
            }
        }
    }
    for other in &told[1..] {
        assert_eq!(other, &told[0], "every subscriber is told the same");
    }
    told.swap_remove(0)
}

fn cursors(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            e["cursor"]
                .as_str()
                .unwrap_or_else(|| panic!("a transition without a cursor: {e}"))
                .to_owned()
        })
        .collect()
}

/// A client back on `gateway` after `after`: asserts it is told `missed`
/// once, in order, then the current state of every other scheduler of the
/// `schedulers` (the victim's is the last missed one), then nothing.
async fn resumed(
    gateway: &Gateway,
    after: &Value,
    missed: &[Value],
    schedulers: usize,
) -> WsClient {
    let mut back = WsClient::ready(&gateway.url()).await;
    back.subscribe("c", HEALTH, json!({ "after": after })).await;
    let mut replayed = Vec::new();
    for _ in missed {
        replayed.push(next(&mut back, "c").await);
    }
    assert_eq!(replayed, missed);
    let victim = &missed[missed.len() - 1]["scheduler"]["address"];
    for _ in 1..schedulers {
        let current = next(&mut back, "c").await;
        assert_ne!(&current["scheduler"]["address"], victim, "{current}");
        assert_eq!(current["cursor"], Value::Null, "{current}");
        assert_eq!(current["up"], true, "{current}");
    }
    assert_eq!(back.receive(INTERVAL * 5).await, Received::Nothing);
    back
}

const SCHEDULER_LOG: &str = "query($address: String) {
  schedulerEventLog(address: $address, first: 100) { events { address up circuit cursor } hasNextPage }
}";

/// The transitions `schedulerEventLog` lists for `addr`, oldest first.
async fn listed_events(gateway: &Gateway, addr: SocketAddr) -> Vec<Value> {
    let page = query(
        &gateway.url(),
        SCHEDULER_LOG,
        json!({ "address": addr.to_string() }),
    )
    .await;
    let page = &page["schedulerEventLog"];
    assert_eq!(page["hasNextPage"], false, "{page}");
    let mut events = page["events"].as_array().expect("events").clone();
    assert!(
        events
            .iter()
            .all(|e| e["address"] == addr.to_string().as_str()),
        "{page}"
    );
    events.reverse();
    events
}

/// Their cursors.
async fn listed(gateway: &Gateway, addr: SocketAddr) -> Vec<String> {
    cursors(&listed_events(gateway, addr).await)
}

/// The scheduler transitions of `addr` in cluster 1's stream, oldest first:
/// (up, circuit, cursor).
fn logged(redis: &RedisServer, addr: SocketAddr) -> Vec<(bool, String, String)> {
    let reply: redis::Value = redis::cmd("XRANGE")
        .arg(dfgraph::cache::keys::event_log(1))
        .arg("-")
        .arg("+")
        .query(&mut redis.conn())
        .expect("XRANGE");
    let redis::Value::Array(entries) = reply else {
        panic!("XRANGE answered {reply:?}");
    };
    let mut transitions = Vec::new();
    for entry in entries {
        let redis::Value::Array(parts) = entry else {
            panic!("entry {entry:?}");
        };
        let (redis::Value::BulkString(id), redis::Value::Array(fields)) = (&parts[0], &parts[1])
        else {
            panic!("entry {parts:?}");
        };
        let redis::Value::BulkString(bytes) = &fields[1] else {
            panic!("fields {fields:?}");
        };
        let (_, event) = dfgraph::events::bus::decode(bytes).expect("an event");
        if let What::Scheduler {
            addr: at,
            up,
            circuit,
        } = event.what
            && at == addr
        {
            let id = LogId::parse(std::str::from_utf8(id).expect("ascii")).expect("an id");
            let cursor = EventCursor { cluster_id: 1, id }.encode();
            let circuit = format!("{circuit:?}").to_uppercase();
            transitions.push((up, circuit, cursor));
        }
    }
    transitions
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_scheduler_is_logged_once_across_replicas_and_a_subscriber_resumes_without_a_seam()
 {
    let redis = RedisServer::start();
    let sim = SimCluster::start(small_sim()).await.unwrap();
    let n = sim.schedulers().len();
    let x = victim(&sim);
    let a = Gateway::start(config(&sim, Some(&redis), false))
        .await
        .unwrap();
    let b = Gateway::start(config(&sim, Some(&redis), false))
        .await
        .unwrap();
    let mut keeper = subscribed(&b, n).await;
    let mut client = subscribed(&a, n).await;

    // Told on both replicas, with the same cursors: down, then up.
    let before = outage(&sim, x, false, &mut [&mut keeper, &mut client]).await;
    let ups: Vec<&Value> = before.iter().map(|e| &e["up"]).collect();
    assert_eq!(ups, [false, true], "{before:?}");
    drop(client);

    // Away: the scheduler stops and starts twice more.
    let mut missed = outage(&sim, x, false, &mut [&mut keeper]).await;
    missed.extend(outage(&sim, x, false, &mut [&mut keeper]).await);
    assert_eq!(missed.len(), 4, "{missed:?}");

    // Back, on the other replica: what it missed, once, in order, then
    // the others' current state, then the next transition once.
    let last = &before[before.len() - 1]["cursor"];
    let mut back = resumed(&b, last, &missed, n).await;
    sim.set_error(x, Some(tonic::Code::Unavailable));
    let down = next(&mut back, "c").await;
    assert_eq!(down["up"], false, "{down}");
    assert_eq!(next(&mut keeper, "c").await, down);
    assert_eq!(back.receive(INTERVAL * 5).await, Received::Nothing);

    // From the middle: the rest, not what came before it.
    let mut rest = missed[2..].to_vec();
    rest.push(down.clone());
    resumed(&a, &missed[1]["cursor"], &rest, n).await;

    // The log holds each transition once (the first state recorded, then
    // what the subscribers were told), though two replicas observed them.
    let log = logged(&redis, x);
    let mut told = before;
    told.extend(missed);
    told.push(down);
    assert_eq!(log.len(), told.len() + 1, "{log:?}");
    assert_eq!((log[0].0, log[0].1.as_str()), (true, "CLOSED"));
    let log_cursors: Vec<String> = log[1..].iter().map(|(_, _, c)| c.clone()).collect();
    assert_eq!(log_cursors, cursors(&told));
    let all: Vec<String> = log.iter().map(|(_, _, c)| c.clone()).collect();
    assert_eq!(listed(&a, x).await, all);
    sim.set_error(x, None);
    a.shutdown().await;
    b.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_circuit_transitions_are_kept_in_process_and_resume_over_sse() {
    let sim = SimCluster::start(small_sim()).await.unwrap();
    let n = sim.schedulers().len();
    let x = victim(&sim);
    let gateway = Gateway::start(config(&sim, None, true)).await.unwrap();
    let mut keeper = subscribed(&gateway, n).await;
    let mut client = subscribed(&gateway, n).await;

    // The circuit opens while it is down: a transition too.
    let before = outage(&sim, x, true, &mut [&mut keeper, &mut client]).await;
    drop(client);
    let missed = outage(&sim, x, true, &mut [&mut keeper]).await;
    let last = &before[before.len() - 1]["cursor"];
    resumed(&gateway, last, &missed, n).await;
    // The ring holds the first state recorded, then what was told.
    let mut told = before.clone();
    told.extend(missed.clone());
    assert_eq!(listed(&gateway, x).await[1..], cursors(&told));

    // The same over SSE, as EventSource reconnects: Last-Event-ID.
    let last = last.as_str().expect("a cursor");
    let mut sse = SseClient::post(&gateway.url(), HEALTH, json!({}), Some(last)).await;
    for expected in &missed {
        let (data, id) = sse.next_data(WITHIN).await;
        assert_eq!(&data["data"]["clusterHealth"], expected);
        assert_eq!(id.as_deref(), expected["cursor"].as_str());
    }
    for _ in 1..n {
        let (data, id) = sse.next_data(WITHIN).await;
        assert_eq!(
            data["data"]["clusterHealth"]["cursor"],
            Value::Null,
            "{data}"
        );
        assert_eq!(id, None, "{data}");
    }
    gateway.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_health_cursor_the_log_does_not_hold_is_refused() {
    let sim = SimCluster::start(small_sim()).await.unwrap();
    let gateway = Gateway::start(config(&sim, None, false)).await.unwrap();
    let mut client = WsClient::ready(&gateway.url()).await;
    let foreign = EventCursor {
        cluster_id: 1,
        id: LogId { ms: 1, seq: 0 },
    }
    .encode();
    client
        .subscribe("c", HEALTH, json!({ "after": foreign }))
        .await;
    let refused = client.message(WITHIN).await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(
        refused["payload"][0]["extensions"]["code"], "CURSOR_EXPIRED",
        "{refused}"
    );
    client
        .subscribe("d", HEALTH, json!({ "after": "ev1_made_up" }))
        .await;
    let refused = client.message(WITHIN).await;
    assert_eq!(refused["type"], "error", "{refused}");
    let message = refused["payload"][0]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(message.contains("not an event cursor"), "{refused}");
    gateway.shutdown().await;
    sim.shutdown().await;
}

/// Whether `addr` was up, by the transitions `schedulerEventLog` lists.
async fn listed_ups(gateway: &Gateway, addr: SocketAddr) -> Vec<bool> {
    let events = listed_events(gateway, addr).await;
    events.iter().filter_map(|e| e["up"].as_bool()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedulers_are_recorded_while_nobody_subscribes() {
    let sim = SimCluster::start(small_sim()).await.unwrap();
    let x = victim(&sim);
    let gateway = Gateway::start(config(&sim, None, false)).await.unwrap();
    let deadline = tokio::time::Instant::now() + WITHIN;
    while listed_ups(&gateway, x).await != [true] {
        assert!(
            tokio::time::Instant::now() < deadline,
            "first state not recorded"
        );
        tokio::time::sleep(INTERVAL).await;
    }
    sim.set_error(x, Some(tonic::Code::Unavailable));
    while listed_ups(&gateway, x).await != [true, false] {
        assert!(
            tokio::time::Instant::now() < deadline,
            "outage not recorded"
        );
        tokio::time::sleep(INTERVAL).await;
    }
    sim.set_error(x, None);
    while listed_ups(&gateway, x).await != [true, false, true] {
        assert!(
            tokio::time::Instant::now() < deadline,
            "recovery not recorded"
        );
        tokio::time::sleep(INTERVAL).await;
    }
    gateway.shutdown().await;
    sim.shutdown().await;
}
