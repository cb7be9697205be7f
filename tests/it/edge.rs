//! Real schedulers' data: the values real dfdaemons send (non-finite
//! percentages, ties, hosts without load figures, maximal counters, odd
//! names, schedulers whose own cluster id differs from dfgraph's) reach
//! the console without breaking the schema, every page walk ends, and one
//! cluster id is used everywhere. Much of it against the simulator's
//! `edge` profile.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::nullness::Schema;
use crate::support::live::{
    HOST_EVENTS, INTERVAL, live_config, next_event, query as live_query, wait_until,
};
use crate::support::redis::RedisServer;
use crate::support::ws::WsClient;
use crate::support::{TestEnv, gateway_config, small_sim};
use dfgraph::config::Config;
use dfgraph::gateway::Gateway;
use dfgraph::proto::common::v2::{Cpu, Disk, Host, Memory};
use dfgraph_sim::{Profile, SimCluster, SimConfig};
use serde_json::{Value, json};

const ORDERS: [&str; 8] = [
    "HOSTNAME",
    "IP",
    "ID",
    "TYPE",
    "VERSION",
    "SCHEDULER_CLUSTER",
    "CPU_PERCENT",
    "MEMORY_USED_PERCENT",
];

const PAGE: &str = r#"
query Page($first: Int, $after: String, $last: Int, $before: String, $orderBy: HostOrder) {
  hosts(first: $first, after: $after, last: $last, before: $before, orderBy: $orderBy) {
    totalCount
    pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
    edges { node { id schedulerClusterId cpu { percent } memory { usedPercent } } }
  }
}"#;

/// A host of cluster 1 whose dfdaemon divided by zero or overflowed.
fn non_finite(id: &str, cpu: f64, memory: f64, disk: f64) -> Host {
    Host {
        id: id.into(),
        hostname: format!("{id}.edge"),
        ip: "10.9.9.9".into(),
        scheduler_cluster_id: 1,
        cpu: Some(Cpu {
            logical_count: 4,
            percent: cpu,
            process_percent: cpu,
            ..Cpu::default()
        }),
        memory: Some(Memory {
            used_percent: memory,
            process_used_percent: memory,
            ..Memory::default()
        }),
        disk: Some(Disk {
            used_percent: disk,
            inodes_used_percent: disk,
            ..Disk::default()
        }),
        ..Host::default()
    }
}

fn with_non_finite_hosts(env: &TestEnv) {
    env.sim
        .upsert_host(non_finite("edge-nan", f64::NAN, f64::NAN, f64::NAN));
    env.sim.upsert_host(non_finite(
        "edge-inf",
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::INFINITY,
    ));
    env.sim
        .upsert_host(non_finite("edge-zero", -0.0, 0.0, f64::NEG_INFINITY));
}

/// Walks every page of `order` (`{field, direction}`), forwards with
/// `first` or backwards with `last`, and returns the host ids in list
/// order. Fails if the walk does not end.
async fn walk(env: &TestEnv, order: &Value, size: usize, forward: bool) -> Vec<String> {
    let mut met = Vec::new();
    let mut cursor = Value::Null;
    for _ in 0..=1000 {
        let variables = if forward {
            json!({ "first": size, "after": cursor, "orderBy": order })
        } else {
            json!({ "last": size, "before": cursor, "orderBy": order })
        };
        let hosts = env.data(PAGE, variables).await["hosts"].clone();
        let ids: Vec<String> = hosts["edges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["node"]["id"].as_str().unwrap().to_owned())
            .collect();
        if forward {
            met.extend(ids);
        } else {
            met.splice(0..0, ids);
        }
        let info = &hosts["pageInfo"];
        let (more, next) = if forward {
            (info["hasNextPage"].as_bool().unwrap(), &info["endCursor"])
        } else {
            (
                info["hasPreviousPage"].as_bool().unwrap(),
                &info["startCursor"],
            )
        };
        if !more {
            return met;
        }
        cursor = next.clone();
    }
    panic!("the walk by {order} (size {size}, forward {forward}) did not end");
}

#[tokio::test]
async fn non_finite_figures_are_null_where_the_schema_says_nullable() {
    let env = TestEnv::start(small_sim(), |_| {}).await;
    with_non_finite_hosts(&env);
    let body = env
        .query(
            r#"{ hosts(first: 1000, filter: { search: ".edge" }) { edges { node { id
                cpu { percent processPercent } memory { usedPercent processUsedPercent }
                disk { usedPercent inodesUsedPercent } } } } }"#,
            json!({}),
        )
        .await;
    assert!(body.get("errors").is_none(), "{body:#}");
    let by_id: BTreeMap<&str, &Value> = body["data"]["hosts"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["node"]["id"].as_str().unwrap(), &e["node"]))
        .collect();
    let nan = by_id["edge-nan"];
    assert_eq!(
        nan["cpu"],
        json!({ "percent": null, "processPercent": null })
    );
    assert_eq!(
        nan["memory"],
        json!({ "usedPercent": null, "processUsedPercent": null })
    );
    assert_eq!(
        nan["disk"],
        json!({ "usedPercent": null, "inodesUsedPercent": null })
    );
    let inf = by_id["edge-inf"];
    assert_eq!(inf["cpu"]["percent"], Value::Null);
    assert_eq!(inf["memory"]["usedPercent"], Value::Null);
    // -0.0 is the figure 0; finite figures come through as sent.
    let zero = by_id["edge-zero"];
    assert_eq!(zero["cpu"]["percent"].as_f64(), Some(0.0));
    assert_eq!(zero["memory"]["usedPercent"].as_f64(), Some(0.0));
    assert_eq!(zero["disk"]["usedPercent"], Value::Null);
    env.stop().await;
}

#[tokio::test]
async fn hosts_without_a_figure_sort_last_in_both_directions() {
    let env = TestEnv::start(small_sim(), |_| {}).await;
    with_non_finite_hosts(&env);
    for field in ["CPU_PERCENT", "MEMORY_USED_PERCENT"] {
        for direction in ["ASC", "DESC"] {
            let order = json!({ "field": field, "direction": direction });
            let hosts = env
                .data(PAGE, json!({ "first": 1000, "orderBy": order }))
                .await["hosts"]["edges"]
                .clone();
            let key = if field == "CPU_PERCENT" {
                ["cpu", "percent"]
            } else {
                ["memory", "usedPercent"]
            };
            let figures: Vec<Option<f64>> = hosts
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["node"][key[0]][key[1]].as_f64())
                .collect();
            let first_none = figures.iter().position(Option::is_none).unwrap();
            assert!(
                figures[first_none..].iter().all(Option::is_none),
                "{order}: a figure after a host without one"
            );
            let present: Vec<f64> = figures.iter().flatten().copied().collect();
            let mut sorted = present.clone();
            sorted.sort_by(f64::total_cmp);
            if direction == "DESC" {
                sorted.reverse();
            }
            assert_eq!(present, sorted, "{order}");
        }
    }
    env.stop().await;
}

#[tokio::test]
async fn every_order_pages_to_its_end_seeing_each_host_once() {
    let env = TestEnv::start(small_sim(), |_| {}).await;
    with_non_finite_hosts(&env);
    let total: usize = env
        .sim
        .cluster_ids()
        .into_iter()
        .map(|c| env.sim.hosts(c).len())
        .sum();
    for field in ORDERS {
        for direction in ["ASC", "DESC"] {
            let order = json!({ "field": field, "direction": direction });
            let whole = walk(&env, &order, 1000, true).await;
            assert_eq!(whole.len(), total, "{order}");
            for forward in [true, false] {
                let met = walk(&env, &order, 7, forward).await;
                assert_eq!(met, whole, "{order}, pages of 7, forward {forward}");
            }
        }
    }
    // One host per page, the console's worst case, in a float order.
    for direction in ["ASC", "DESC"] {
        let order = json!({ "field": "CPU_PERCENT", "direction": direction });
        let whole = walk(&env, &order, 1000, true).await;
        for forward in [true, false] {
            assert_eq!(walk(&env, &order, 1, forward).await, whole, "{order}");
        }
    }
    env.stop().await;
}

#[tokio::test]
async fn a_cursor_is_checked_against_the_order_it_is_used_with() {
    let env = TestEnv::start(small_sim(), |_| {}).await;
    let order = json!({ "field": "CPU_PERCENT", "direction": "ASC" });
    let page = env
        .data(PAGE, json!({ "first": 2, "orderBy": order }))
        .await;
    let cursor = page["hosts"]["pageInfo"]["endCursor"].clone();
    let body = env
        .query(
            PAGE,
            json!({ "first": 2, "after": cursor, "orderBy": { "field": "HOSTNAME" } }),
        )
        .await;
    assert_eq!(crate::support::error_codes(&body), ["INVALID_ARGUMENT"]);
    let message = body["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("CPU_PERCENT"), "{message}");
    env.stop().await;
}

/// dfgraph told the simulator's clusters 1 and 2 are clusters 11 and 12:
/// every scheduler's hosts carry an id other than the one it is served as.
fn served_as_plus_ten(sim: &SimCluster, config: &mut Config) {
    config.schedulers = sim
        .schedulers()
        .iter()
        .map(|s| format!("{}={}", s.cluster_id + 10, s.addr))
        .collect();
}

async fn misconfigured(cache: bool) -> TestEnv {
    let sim = SimCluster::start(small_sim()).await.unwrap();
    let mut config = gateway_config(&sim);
    served_as_plus_ten(&sim, &mut config);
    config.cache.enabled = cache;
    let gateway = Gateway::start(config).await.unwrap();
    TestEnv {
        sim,
        gateway,
        http: reqwest::Client::new(),
    }
}

#[tokio::test]
async fn the_served_cluster_id_is_the_id_everywhere() {
    let env = misconfigured(false).await;
    let in_1: BTreeSet<String> = env.sim.hosts(1).into_iter().map(|h| h.id).collect();
    let data = env
        .data(
            r#"{ hosts(first: 1000, orderBy: { field: SCHEDULER_CLUSTER }) {
                   edges { node { id schedulerClusterId } } }
                 only11: hosts(first: 1000, filter: { schedulerClusterIds: ["11"] }) {
                   totalCount edges { node { schedulerClusterId } } }
                 hostStats { bySchedulerCluster { value count } countedClusters } }"#,
            json!({}),
        )
        .await;
    let edges = data["hosts"]["edges"].as_array().unwrap();
    for edge in edges {
        let node = &edge["node"];
        let expected = if in_1.contains(node["id"].as_str().unwrap()) {
            "11"
        } else {
            "12"
        };
        assert_eq!(node["schedulerClusterId"], expected, "{node}");
    }
    // Ordered by the served id: 11's hosts first.
    assert_eq!(edges[0]["node"]["schedulerClusterId"], "11");
    assert_eq!(data["only11"]["totalCount"], in_1.len());
    let in_2 = env.sim.hosts(2).len();
    let mut buckets = vec![
        json!({ "value": "11", "count": in_1.len() }),
        json!({ "value": "12", "count": in_2 }),
    ];
    // Largest count first; a tie keeps 11 first (by value).
    buckets.sort_by_key(|b| std::cmp::Reverse(b["count"].as_u64()));
    assert_eq!(
        data["hostStats"]["bySchedulerCluster"],
        Value::Array(buckets)
    );
    assert_eq!(data["hostStats"]["countedClusters"], json!(["11", "12"]));
    // The scheduler's own id is not a cluster dfgraph serves.
    let body = env
        .query(
            r#"{ hosts(filter: { schedulerClusterIds: ["1"] }) { totalCount } }"#,
            json!({}),
        )
        .await;
    assert!(body.get("errors").is_some(), "{body}");
    // REST: the same id.
    let rest: Value =
        serde_json::from_str(&env.get_text("/api/v1/peers?per_page=1000").await).unwrap();
    let rows = rest.as_array().expect("a JSON array");
    assert_eq!(rows.len(), in_1.len() + in_2);
    let of_1: BTreeSet<(String, String)> = env
        .sim
        .hosts(1)
        .into_iter()
        .map(|h| (h.hostname, h.ip))
        .collect();
    for row in rows {
        let name = row["host_name"].as_str().unwrap().to_owned();
        let ip = row["ip"].as_str().unwrap().to_owned();
        let expected = if of_1.contains(&(name, ip)) { 11 } else { 12 };
        assert_eq!(row["scheduler_cluster_id"], expected, "{row}");
    }
    env.stop().await;
}

#[tokio::test]
async fn a_scheduler_whose_hosts_carry_another_cluster_id_is_reported() {
    let env = misconfigured(false).await;
    env.data("{ hosts(first: 1) { totalCount } }", json!({}))
        .await;
    let data = env
        .data(
            r#"{ schedulerClusters { id clusterIdMismatch
                   schedulers { address schedulerClusterId announcedClusterId clusterIdMismatch } } }"#,
            json!({}),
        )
        .await;
    for cluster in data["schedulerClusters"].as_array().unwrap() {
        let id = cluster["id"].as_str().unwrap();
        assert_eq!(cluster["clusterIdMismatch"], true, "{cluster}");
        let asked: Vec<&Value> = cluster["schedulers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| !s["announcedClusterId"].is_null())
            .collect();
        assert!(!asked.is_empty(), "{cluster}");
        for scheduler in asked {
            assert_eq!(scheduler["schedulerClusterId"], id);
            let own = (id.parse::<u64>().unwrap() - 10).to_string();
            assert_eq!(scheduler["announcedClusterId"], own.as_str());
            assert_eq!(scheduler["clusterIdMismatch"], true);
        }
    }
    let ready: Value = serde_json::from_str(&env.get_text("/readyz").await).unwrap();
    assert_eq!(ready["ready"], true, "a mismatch is reported, not unready");
    for cluster in ready["clusters"].as_array().unwrap() {
        assert_eq!(cluster["cluster_id_mismatch"], true, "{cluster}");
    }
    let metrics = env.get_text("/metrics").await;
    let scheduler = env.sim.schedulers()[0].addr;
    let flagged = metrics.lines().any(|l| {
        l.starts_with("dfgraph_scheduler_cluster_id_mismatch{")
            && l.contains("cluster=\"11\"")
            && l.ends_with(" 1")
    });
    assert!(
        flagged,
        "no mismatch gauge for cluster 11 ({scheduler}):\n{metrics}"
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_and_cached_lists_carry_the_served_cluster_id() {
    let redis = RedisServer::start();
    let sim = SimCluster::start(small_sim()).await.unwrap();
    let mut config = live_config(&sim, Some(&redis));
    served_as_plus_ten(&sim, &mut config);
    let watcher = Gateway::start(config.clone()).await.unwrap();
    let mut client = WsClient::ready(&watcher.url()).await;
    client.subscribe("h", HOST_EVENTS, json!({})).await;
    wait_until("subscription live", Duration::from_secs(5), || {
        watcher.state.events.live_subscriptions() == 1
    })
    .await;
    tokio::time::sleep(INTERVAL * 4).await;
    let mut host = sim.hosts(1).remove(0);
    host.id = "joins-misconfigured".into();
    sim.upsert_host(host);
    let event = loop {
        let event = next_event(&mut client, "h", Duration::from_secs(5)).await;
        if event["hostEvents"]["host"]["id"] == "joins-misconfigured" {
            break event;
        }
    };
    assert_eq!(event["hostEvents"]["schedulerClusterId"], "11");
    // A second replica reads the list the watcher put in Redis.
    let reader = Gateway::start(config).await.unwrap();
    let data = live_query(
        &reader.url(),
        r#"{ host(id: "joins-misconfigured") { schedulerClusterId } }"#,
        json!({}),
    )
    .await;
    assert_eq!(data["host"]["schedulerClusterId"], "11");
    reader.shutdown().await;
    watcher.shutdown().await;
    sim.shutdown().await;
}

// ----- the `edge` profile: a simulated cluster at its oddest -----

/// A frozen cluster of the `edge` profile: cluster 2's schedulers write
/// 102 in their hosts.
fn edge_sim() -> SimConfig {
    SimConfig {
        clusters: 2,
        schedulers_per_cluster: 2,
        hosts: 64,
        tasks: 16,
        peers_per_task: 4,
        seed: 11,
        tick_interval: None,
        profile: Profile::Edge,
        ..SimConfig::default()
    }
}

/// Room for the queries that ask for every field.
fn roomy(config: &mut Config) {
    config.limits.max_depth = 40;
    config.limits.max_complexity = 10_000_000;
}

/// One of the console's own queries, from `assets/console/console.js`,
/// with the fragments it interpolates.
fn console_query(name: &str) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/console/console.js");
    let js = std::fs::read_to_string(path).expect("console.js is readable");
    let constant = |name: &str| -> String {
        let start = js
            .find(&format!("const {name} = `"))
            .unwrap_or_else(|| panic!("console.js has no {name}"));
        let body = &js[start..];
        let open = body.find('`').unwrap() + 1;
        let close = open + body[open..].find('`').unwrap();
        body[open..close].to_owned()
    };
    let mut query = constant(name);
    while let Some(at) = query.find("${") {
        let end = at + query[at..].find('}').unwrap();
        let inner = constant(&query[at + 2..end]);
        query.replace_range(at..=end, &inner);
    }
    query
}

async fn edge_env() -> TestEnv {
    TestEnv::start(edge_sim(), roomy).await
}

/// The data of `query`, asserting no errors and every promise of the
/// schema kept.
async fn kept(env: &TestEnv, schema: &Schema, query: &str, variables: Value) -> Value {
    let data = env.data(query, variables).await;
    let broken = schema.broken_promises("Query", &data);
    assert!(broken.is_empty(), "{query}:\n{}", broken.join("\n"));
    data
}

#[tokio::test]
async fn every_field_keeps_the_schemas_promise_for_what_the_edge_profile_sends() {
    let env = edge_env().await;
    let schema = Schema::exported();
    let host = schema.every_field("Host", 2);
    let data = kept(
        &env,
        &schema,
        &format!("{{ hosts(first: 1000) {{ totalCount edges {{ cursor node {{ {host} }} }} }} }}"),
        json!({}),
    )
    .await;
    let nodes: Vec<&Value> = data["hosts"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["node"])
        .collect();
    assert_eq!(nodes.len(), 64);
    // What makes the profile odd did reach the console.
    let some = |what: &str, test: &dyn Fn(&Value) -> bool| {
        assert!(nodes.iter().any(|n| test(n)), "no host with {what}");
    };
    some("no cpu at all", &|n| n["cpu"].is_null());
    some("a NaN cpu figure", &|n| {
        n["cpu"].is_object() && n["cpu"]["percent"].is_null()
    });
    some("memory.total at u64::MAX", &|n| {
        n["memory"]["total"].as_u64() == Some(u64::MAX)
    });
    some("u32::MAX connections", &|n| {
        n["network"]["tcpConnectionCount"].as_u64() == Some(u64::from(u32::MAX))
    });
    some("an IPv6 address", &|n| {
        n["ip"].as_str().unwrap().contains(':')
    });
    some("a non-ASCII hostname", &|n| {
        !n["hostname"].as_str().unwrap().is_ascii()
    });
    some("port 0", &|n| n["port"] == 0);
    // The float whose decimal form is easy to get wrong, as sent (read
    // as text: a JSON parser may round it).
    let raw = env
        .query_text(
            "{ hosts(first: 1000) { nodes { memory { usedPercent } } } }",
            json!({}),
        )
        .await;
    assert!(raw.contains("98.36355994880891"), "{raw}");
    assert!(
        nodes
            .iter()
            .all(|n| n["schedulerClusterId"] == "1" || n["schedulerClusterId"] == "2"),
        "cluster 2's hosts say 102 on the wire, 2 here"
    );

    let task = schema.every_field("Task", 1);
    let peer = schema.every_field("Peer", 2);
    let (mut bare, mut peerless) = (0, 0);
    for cluster in env.sim.cluster_ids() {
        let ids: Vec<String> = env.sim.tasks(cluster).into_iter().map(|t| t.id).collect();
        let data = kept(
            &env,
            &schema,
            &format!("query($ids: [ID!]!, $c: ID) {{ tasks(ids: $ids, schedulerClusterId: $c) {{ {task} }} }}"),
            json!({ "ids": ids, "c": cluster.to_string() }),
        )
        .await;
        let tasks = data["tasks"].as_array().unwrap();
        assert!(tasks.iter().all(Value::is_object), "every task found");
        assert!(
            !data.to_string().contains(dfgraph_sim::EDGE_SECRET),
            "a task's request headers (credentials) are never shown"
        );
        peerless += tasks.iter().filter(|t| t["peerCount"] == 0).count();
        let keys: Vec<Value> = env
            .sim
            .peer_keys(cluster)
            .into_iter()
            .map(|(host, task, peer)| json!({ "hostId": host, "taskId": task, "peerId": peer }))
            .collect();
        let data = kept(
            &env,
            &schema,
            &format!("query($keys: [PeerKeyInput!]!, $c: ID) {{ peers(keys: $keys, schedulerClusterId: $c) {{ {peer} }} }}"),
            json!({ "keys": keys, "c": cluster.to_string() }),
        )
        .await;
        let peers = data["peers"].as_array().unwrap();
        assert_eq!(peers.len(), keys.len());
        bare += peers.iter().filter(|p| p["task"].is_null()).count();
        // A peer's own copy of its host says what the scheduler wrote
        // (102 for cluster 2); shown, it says the served id.
        for peer in peers {
            let host = &peer["host"];
            assert!(host.is_object(), "{peer}");
            assert_eq!(host["schedulerClusterId"], cluster.to_string(), "{peer}");
        }
    }
    assert!(bare > 0, "some peers came without their task");
    assert!(peerless > 0, "some tasks have no peers");
    let stats = schema.every_field("HostStats", 1);
    let clusters = schema.every_field("SchedulerCluster", 2);
    kept(
        &env,
        &schema,
        &format!("{{ hostStats {{ {stats} }} schedulerClusters {{ {clusters} }} }}"),
        json!({}),
    )
    .await;
    env.stop().await;
}

#[tokio::test]
async fn the_consoles_own_queries_answer_the_edge_profile_in_full() {
    let env = edge_env().await;
    let schema = Schema::exported();
    let stats = kept(&env, &schema, &console_query("STATS_QUERY"), json!({})).await;
    let stats = &stats["hostStats"];
    assert_eq!(stats["total"], 64);
    assert_eq!(stats["countedClusters"], json!(["1", "2"]));
    let served: BTreeSet<&str> = stats["bySchedulerCluster"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["value"].as_str().unwrap())
        .collect();
    assert_eq!(served, BTreeSet::from(["1", "2"]), "never the wire's 102");
    assert!(
        stats["byIdc"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["value"] == "机房-α"),
        "{stats}"
    );
    let hosts_query = console_query("HOSTS_QUERY");
    for field in ORDERS {
        for direction in ["ASC", "DESC"] {
            let order = json!({ "field": field, "direction": direction });
            let page = kept(
                &env,
                &schema,
                &hosts_query,
                json!({ "first": 50, "orderBy": order }),
            )
            .await;
            assert_eq!(page["hosts"]["totalCount"], 64);
        }
    }
    let health = kept(&env, &schema, &console_query("HEALTH_QUERY"), json!({})).await;
    assert_eq!(health["schedulerClusters"].as_array().unwrap().len(), 2);
    let mismatched = env
        .data(
            "{ schedulerClusters { id clusterIdMismatch schedulers { announcedClusterId } } }",
            json!({}),
        )
        .await;
    assert_eq!(
        mismatched["schedulerClusters"][1]["clusterIdMismatch"], true,
        "{mismatched}"
    );
    let tasks: Vec<String> = env.sim.tasks(1).into_iter().map(|t| t.id).collect();
    kept(
        &env,
        &schema,
        &console_query("TASK_QUERY"),
        json!({ "ids": tasks, "schedulerClusterId": "1" }),
    )
    .await;
    for (host, task, peer) in env.sim.peer_keys(2) {
        let variables = json!({ "hostId": host, "taskId": task, "peerId": peer,
                                "schedulerClusterId": "2" });
        let data = kept(&env, &schema, &console_query("PEER_QUERY"), variables).await;
        assert!(data["peer"].is_object(), "{data}");
    }
    env.stop().await;
}

#[tokio::test]
async fn every_order_pages_the_edge_profile_to_its_end() {
    let env = edge_env().await;
    for field in ORDERS {
        for direction in ["ASC", "DESC"] {
            let order = json!({ "field": field, "direction": direction });
            let whole = walk(&env, &order, 1000, true).await;
            assert_eq!(whole.len(), 64, "{order}");
            let distinct: BTreeSet<&String> = whole.iter().collect();
            assert_eq!(distinct.len(), 64, "{order}: a host listed twice");
            for (size, forward) in [(1, true), (7, true), (7, false), (1, false)] {
                let met = walk(&env, &order, size, forward).await;
                assert_eq!(met, whole, "{order}, pages of {size}, forward {forward}");
            }
        }
    }
    env.stop().await;
}

#[tokio::test]
async fn the_rest_peers_list_serves_the_edge_profile() {
    let env = edge_env().await;
    let rows: Value =
        serde_json::from_str(&env.get_text("/api/v1/peers?per_page=1000").await).unwrap();
    let rows = rows.as_array().expect("a JSON array");
    assert_eq!(rows.len(), 64);
    let clusters: BTreeSet<u64> = rows
        .iter()
        .map(|r| r["scheduler_cluster_id"].as_u64().unwrap())
        .collect();
    assert_eq!(clusters, BTreeSet::from([1, 2]));
    assert!(rows.iter().any(|r| r["ip"].as_str().unwrap().contains(':')));
    assert!(
        rows.iter()
            .any(|r| !r["host_name"].as_str().unwrap().is_ascii())
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_events_of_the_edge_profile_keep_the_schemas_promise() {
    let schema = Schema::exported();
    let sim = SimCluster::start(edge_sim()).await.unwrap();
    let mut config = live_config(&sim, None);
    roomy(&mut config);
    let gateway = Gateway::start(config).await.unwrap();
    let host = schema.every_field("Host", 2);
    let mut client = WsClient::ready(&gateway.url()).await;
    let subscription = format!(
        "subscription {{ hostEvents(includeResourceChanges: true) {{ kind changedFields observedAt schedulerClusterId host {{ {host} }} }} }}"
    );
    client.subscribe("h", &subscription, json!({})).await;
    wait_until("subscription live", Duration::from_secs(5), || {
        gateway.state.events.live_subscriptions() == 1
    })
    .await;
    tokio::time::sleep(INTERVAL * 4).await;
    // A NaN host joins cluster 2, whose other hosts say 102.
    let mut joining = non_finite("edge-joins", f64::NAN, f64::INFINITY, f64::NAN);
    joining.scheduler_cluster_id = 2;
    sim.upsert_host(joining);
    let event = loop {
        let event = next_event(&mut client, "h", Duration::from_secs(5)).await;
        let broken = schema.broken_promises("Subscription", &event);
        assert!(broken.is_empty(), "{}", broken.join("\n"));
        if event["hostEvents"]["host"]["id"] == "edge-joins" {
            break event;
        }
    };
    assert_eq!(event["hostEvents"]["kind"], "JOINED");
    assert_eq!(event["hostEvents"]["schedulerClusterId"], "2");
    assert_eq!(event["hostEvents"]["host"]["schedulerClusterId"], "2");
    assert_eq!(event["hostEvents"]["host"]["cpu"]["percent"], Value::Null);
    gateway.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn a_tasks_pieces_are_shown_as_its_scheduler_reports_them_page_by_page() {
    let env = TestEnv::start(small_sim(), |_| {}).await;
    let task = env
        .sim
        .tasks(1)
        .into_iter()
        .max_by_key(|t| t.pieces.len())
        .unwrap();
    assert!(task.pieces.len() > 1, "the simulator fills pieces");
    let query = r#"query($id: ID!, $after: String) { task(id: $id, schedulerClusterId: "1") {
        pieces(first: 1, after: $after) { totalCount pageInfo { hasNextPage }
          edges { cursor node { number parentId offset length digest trafficType costMs createdAt } } } } }"#;
    let mut shown = Vec::new();
    let mut after = Value::Null;
    for _ in 0..=task.pieces.len() {
        let data = env
            .data(query, json!({ "id": task.id, "after": after }))
            .await;
        let pieces = &data["task"]["pieces"];
        assert_eq!(pieces["totalCount"], task.pieces.len());
        let edge = &pieces["edges"][0];
        shown.push(edge["node"].clone());
        if pieces["pageInfo"]["hasNextPage"] == false {
            break;
        }
        after = edge["cursor"].clone();
    }
    assert_eq!(
        shown.len(),
        task.pieces.len(),
        "one page per piece, then the end"
    );
    for (node, piece) in shown.iter().zip(&task.pieces) {
        assert_eq!(node["number"], piece.number);
        assert_eq!(node["parentId"].as_str(), piece.parent_id.as_deref());
        assert_eq!(node["offset"], piece.offset);
        assert_eq!(node["length"], piece.length);
        assert_eq!(node["digest"], piece.digest.as_str());
        let cost = piece.cost.unwrap();
        let ms = cost.seconds as f64 * 1000.0 + f64::from(cost.nanos) / 1e6;
        assert!(
            (node["costMs"].as_f64().unwrap() - ms).abs() < 1e-9,
            "{node}"
        );
        assert!(node["createdAt"].is_string(), "{node}");
        let expected = if piece.parent_id.is_some() {
            "REMOTE_PEER"
        } else {
            "BACK_TO_SOURCE"
        };
        assert_eq!(node["trafficType"], expected);
    }
    let body = env
        .query(query, json!({ "id": task.id, "after": "not-a-number" }))
        .await;
    assert_eq!(crate::support::error_codes(&body), ["INVALID_ARGUMENT"]);
    env.stop().await;
}
