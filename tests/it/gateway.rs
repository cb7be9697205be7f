//! The gateway end to end: a simulated Dragonfly cluster on real gRPC
//! ports, dfgraph in front of it, and a client speaking HTTP.

use std::collections::{BTreeMap, BTreeSet};

use crate::support::{TestEnv, error_codes, small_sim};
use dfgraph_sim::Method;
use serde_json::{Value, json};

const HOST_PAGE: &str = r#"
query Page($first: Int, $after: String, $filter: HostFilter, $orderBy: HostOrder) {
  hosts(first: $first, after: $after, filter: $filter, orderBy: $orderBy) {
    totalCount
    pageInfo { hasNextPage hasPreviousPage endCursor }
    edges { cursor node { id hostname ip type schedulerClusterId
      build { gitVersion gitCommit } network { idc location } cpu { logicalCount } } }
  }
}"#;

#[tokio::test]
async fn lists_every_host_once_across_pages_in_hostname_order() {
    let env = TestEnv::start(small_sim(), |_| {}).await;
    let mut expected: Vec<(String, String)> = env
        .sim
        .cluster_ids()
        .into_iter()
        .flat_map(|c| env.sim.hosts(c))
        .map(|h| (h.hostname, h.id))
        .collect();
    expected.sort();

    let mut seen = Vec::new();
    let mut after = Value::Null;
    loop {
        let data = env
            .data(HOST_PAGE, json!({ "first": 17, "after": after }))
            .await;
        let hosts = &data["hosts"];
        assert_eq!(hosts["totalCount"], expected.len());
        for edge in hosts["edges"].as_array().unwrap() {
            seen.push(edge["node"]["id"].as_str().unwrap().to_owned());
        }
        if !hosts["pageInfo"]["hasNextPage"].as_bool().unwrap() {
            break;
        }
        after = hosts["pageInfo"]["endCursor"].clone();
    }
    let expected_ids: Vec<String> = expected.into_iter().map(|(_, id)| id).collect();
    assert_eq!(seen, expected_ids);
    env.stop().await;
}

#[tokio::test]
async fn filters_hosts_by_cluster_type_version_and_search() {
    let env = TestEnv::start(small_sim(), |_| {}).await;
    let cluster_2 = env.sim.hosts(2);
    let version = cluster_2[0].build.as_ref().unwrap().git_version.clone();
    let expected = cluster_2
        .iter()
        .filter(|h| h.build.as_ref().unwrap().git_version == version && h.r#type == 0)
        .count();
    let data = env
        .data(
            HOST_PAGE,
            json!({ "first": 500, "filter": {
                "schedulerClusterIds": ["2"], "types": ["NORMAL"], "versions": [version] } }),
        )
        .await;
    assert_eq!(data["hosts"]["totalCount"], expected);
    for edge in data["hosts"]["edges"].as_array().unwrap() {
        assert_eq!(edge["node"]["schedulerClusterId"], "2");
        assert_eq!(edge["node"]["type"], "NORMAL");
        assert_eq!(edge["node"]["build"]["gitVersion"], version.as_str());
    }

    let target = &cluster_2[3];
    let term = target.hostname.to_uppercase();
    let data = env
        .data(
            HOST_PAGE,
            json!({ "first": 500, "filter": { "search": term } }),
        )
        .await;
    let ids: Vec<&str> = data["hosts"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"]["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&target.id.as_str()), "{ids:?}");
    env.stop().await;
}

#[tokio::test]
async fn orders_by_id_descending() {
    let env = TestEnv::start(small_sim(), |_| {}).await;
    let mut ids: Vec<String> = env.sim.hosts(1).into_iter().map(|h| h.id).collect();
    ids.sort();
    ids.reverse();
    let data = env
        .data(
            HOST_PAGE,
            json!({ "first": 5, "filter": { "schedulerClusterIds": ["1"] },
                    "orderBy": { "field": "ID", "direction": "DESC" } }),
        )
        .await;
    let got: Vec<&str> = data["hosts"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, ids[..5].iter().map(String::as_str).collect::<Vec<_>>());
    env.stop().await;
}

#[tokio::test]
async fn host_stats_match_the_clusters_own_counts() {
    let env = TestEnv::start(small_sim(), |_| {}).await;
    let hosts: Vec<_> = env
        .sim
        .cluster_ids()
        .into_iter()
        .flat_map(|c| env.sim.hosts(c))
        .collect();
    let mut by_version: BTreeMap<String, u64> = BTreeMap::new();
    let mut by_idc: BTreeMap<String, u64> = BTreeMap::new();
    let mut by_cluster: BTreeMap<String, u64> = BTreeMap::new();
    for h in &hosts {
        *by_version
            .entry(h.build.as_ref().unwrap().git_version.clone())
            .or_default() += 1;
        *by_idc
            .entry(
                h.network
                    .as_ref()
                    .and_then(|n| n.idc.clone())
                    .unwrap_or_default(),
            )
            .or_default() += 1;
        *by_cluster
            .entry(h.scheduler_cluster_id.to_string())
            .or_default() += 1;
    }
    let data = env
        .data(
            "{ hostStats { total countedClusters missingClusters
                byVersion { value count } byIdc { value count } bySchedulerCluster { value count }
                byType { value count } byOs { value count } byCommit { value count } byLocation { value count } } }",
            json!({}),
        )
        .await;
    let stats = &data["hostStats"];
    assert_eq!(stats["total"], hosts.len());
    let buckets = |v: &Value| -> BTreeMap<String, u64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|b| {
                (
                    b["value"].as_str().unwrap().to_owned(),
                    b["count"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    assert_eq!(buckets(&stats["byVersion"]), by_version);
    assert_eq!(buckets(&stats["byIdc"]), by_idc);
    assert_eq!(buckets(&stats["bySchedulerCluster"]), by_cluster);
    assert_eq!(stats["countedClusters"], json!(["1", "2"]));
    assert_eq!(stats["missingClusters"], json!([]));
    env.stop().await;
}

#[tokio::test]
async fn task_lookup_goes_to_the_hash_ring_owner_first() {
    let env = TestEnv::start(small_sim(), |_| {}).await;
    let task = env.sim.tasks(1).into_iter().next().unwrap();
    let owner = env.sim.task_owner(&task.id).unwrap();
    env.sim.reset_counters();
    let data = env
        .data(
            "query($id: ID!) { task(id: $id, schedulerClusterId: \"1\") { id url state peerCount schedulerClusterId } }",
            json!({ "id": task.id }),
        )
        .await;
    assert_eq!(data["task"]["id"], task.id.as_str());
    assert_eq!(data["task"]["url"], task.url.as_str());
    assert_eq!(data["task"]["peerCount"], task.peer_count);
    for s in env.sim.schedulers() {
        let expected = u64::from(s.addr == owner);
        assert_eq!(
            env.sim.rpc_count(s.addr, Method::StatTask),
            expected,
            "{}",
            s.addr
        );
    }
    env.stop().await;
}

#[tokio::test]
async fn a_task_not_on_its_owner_is_found_on_the_others() {
    let env = TestEnv::start(small_sim(), |_| {}).await;
    let task = env.sim.tasks(1).into_iter().next().unwrap();
    let owner = env.sim.task_owner(&task.id).unwrap();
    let elsewhere = env
        .sim
        .schedulers()
        .into_iter()
        .find(|s| s.cluster_id == 1 && s.addr != owner)
        .unwrap()
        .addr;
    assert!(env.sim.move_task(&task.id, elsewhere));
    env.sim.reset_counters();
    let data = env
        .data(
            "query($id: ID!) { task(id: $id) { id schedulerClusterId } }",
            json!({ "id": task.id }),
        )
        .await;
    assert_eq!(data["task"]["id"], task.id.as_str());
    assert_eq!(data["task"]["schedulerClusterId"], "1");
    assert_eq!(env.sim.rpc_count(owner, Method::StatTask), 1);
    assert_eq!(env.sim.rpc_count(elsewhere, Method::StatTask), 1);

    let missing = "f".repeat(64);
    let data = env
        .data(
            "query($id: ID!) { task(id: $id) { id } }",
            json!({ "id": missing }),
        )
        .await;
    assert_eq!(
        data["task"],
        Value::Null,
        "an unknown task is null, not an error"
    );
    env.stop().await;
}

#[tokio::test]
async fn peer_lookup_with_its_host_and_task() {
    let env = TestEnv::start(small_sim(), |_| {}).await;
    let peer = env.sim.peers(2).into_iter().next().unwrap();
    let host = peer.host.clone().unwrap();
    let task = peer.task.clone().unwrap();
    let data = env
        .data(
            "query($h: ID!, $t: ID!, $p: ID!) { peer(hostId: $h, taskId: $t, peerId: $p) {
                id state rawState finishedPieceCount schedulerClusterId
                host { id hostname } task { id peerCount state } } }",
            json!({ "h": host.id, "t": task.id, "p": peer.id }),
        )
        .await;
    let got = &data["peer"];
    assert_eq!(got["id"], peer.id.as_str());
    assert_eq!(got["rawState"], peer.state.as_str());
    assert_eq!(got["schedulerClusterId"], "2");
    assert_eq!(got["host"]["id"], host.id.as_str());
    assert_eq!(got["task"]["id"], task.id.as_str());
    assert_eq!(got["finishedPieceCount"], peer.pieces.len());
    env.stop().await;
}

#[tokio::test]
async fn two_hundred_peers_of_ten_tasks_cost_ten_stat_task_calls() {
    let sim = dfgraph_sim::SimConfig {
        clusters: 1,
        schedulers_per_cluster: 3,
        hosts: 250,
        tasks: 10,
        peers_per_task: 20,
        seed: 11,
        tick_interval: None,
        ..dfgraph_sim::SimConfig::default()
    };
    let env = TestEnv::start(sim, |_| {}).await;
    let peers = env.sim.peers(1);
    assert_eq!(peers.len(), 200, "the simulator should hold 10 x 20 peers");
    let keys: Vec<Value> = peers
        .iter()
        .map(|p| {
            json!({ "hostId": p.host.as_ref().unwrap().id, "taskId": p.task.as_ref().unwrap().id, "peerId": p.id })
        })
        .collect();
    let distinct_tasks: BTreeSet<&str> = peers
        .iter()
        .map(|p| p.task.as_ref().unwrap().id.as_str())
        .collect();
    env.sim.reset_counters();
    let data = env
        .data(
            "query($keys: [PeerKeyInput!]!) { peers(keys: $keys) { id state task { id state peerCount } host { id } } }",
            json!({ "keys": keys }),
        )
        .await;
    let returned = data["peers"].as_array().unwrap();
    assert_eq!(returned.len(), 200);
    assert!(returned.iter().all(|p| !p.is_null()));
    let stat_task = env.sim.total_rpc_count(Method::StatTask);
    let stat_peer = env.sim.total_rpc_count(Method::StatPeer);
    println!(
        "batching: 200 peers over {} tasks -> StatPeer={stat_peer} StatTask={stat_task}",
        distinct_tasks.len()
    );
    assert!(
        stat_task <= distinct_tasks.len() as u64,
        "StatTask calls: {stat_task}"
    );
    assert_eq!(
        stat_peer, 200,
        "one StatPeer per distinct peer, each on its owner"
    );
    assert_eq!(env.sim.total_rpc_count(Method::ListHosts), 0);
    env.stop().await;
}

#[tokio::test]
async fn a_failing_cluster_gives_partial_results_with_coded_errors() {
    let env = TestEnv::start(small_sim(), |_| {}).await;
    for s in env.sim.schedulers().iter().filter(|s| s.cluster_id == 2) {
        env.sim.set_error(s.addr, Some(tonic::Code::Unavailable));
    }
    let body = env
        .query(
            "{ hosts(first: 1000) { totalCount edges { node { schedulerClusterId } } }
               hostStats { total countedClusters missingClusters } }",
            json!({}),
        )
        .await;
    let cluster_1 = env.sim.hosts(1).len();
    assert_eq!(body["data"]["hosts"]["totalCount"], cluster_1);
    assert_eq!(body["data"]["hostStats"]["total"], cluster_1);
    assert_eq!(body["data"]["hostStats"]["countedClusters"], json!(["1"]));
    assert_eq!(body["data"]["hostStats"]["missingClusters"], json!(["2"]));
    let errors = body["errors"].as_array().expect("errors for cluster 2");
    for error in errors {
        assert_eq!(error["extensions"]["code"], "SCHEDULER_UNAVAILABLE");
        assert_eq!(error["extensions"]["schedulerClusterId"], "2");
        let addr = error["extensions"]["scheduler"].as_str().unwrap();
        assert!(
            env.sim
                .schedulers()
                .iter()
                .any(|s| s.cluster_id == 2 && s.addr.to_string() == addr),
            "{addr} is not a scheduler of cluster 2"
        );
    }
    assert!(
        !body["extensions"]["freshness"]["failedSchedulers"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    env.stop().await;
}

#[tokio::test]
async fn a_hung_scheduler_costs_one_timeout_not_a_hang() {
    let env = TestEnv::start(small_sim(), |_| {}).await;
    let first = env
        .sim
        .schedulers()
        .into_iter()
        .find(|s| s.cluster_id == 1)
        .unwrap();
    env.sim.set_hang(first.addr, true);
    // Every scheduler of a cluster knows every host: fail-over answers.
    let body = env
        .query("{ hosts(first: 1) { totalCount } }", json!({}))
        .await;
    let total = env.total_hosts();
    assert_eq!(body["data"]["hosts"]["totalCount"], total, "{body:#}");
    env.sim.set_hang(first.addr, false);
    env.stop().await;
}

#[tokio::test]
async fn bad_input_gets_clear_errors_and_the_right_status() {
    let env = TestEnv::start(small_sim(), |c| c.limits.max_body_bytes = 64 * 1024).await;
    let gql_response = "application/graphql-response+json";

    // Malformed query: 400 under the GraphQL response type, 200 under JSON.
    let r = env
        .http
        .post(env.url("/graphql"))
        .header("accept", gql_response)
        .json(&json!({ "query": "{ hosts(first: 1) { totalCount " }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with(gql_response)
    );
    let body: Value = r.json().await.unwrap();
    assert!(body["errors"][0]["message"].as_str().unwrap().len() > 5);
    let r = env
        .http
        .post(env.url("/graphql"))
        .header("accept", "application/json")
        .json(&json!({ "query": "{ nope }" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("nope"),
        "{body}"
    );

    // Not JSON at all.
    let r = env
        .http
        .post(env.url("/graphql"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // Empty and malformed ids.
    let body = env.query("{ task(id: \"\") { id } }", json!({})).await;
    assert_eq!(error_codes(&body), ["INVALID_ARGUMENT"]);
    let body = env.query("{ task(id: \"ab\") { id } }", json!({})).await;
    assert_eq!(error_codes(&body), ["INVALID_ARGUMENT"], "{body}");
    let body = env
        .query(
            "{ peer(hostId: \"h\", taskId: \"\", peerId: \"p\") { id } }",
            json!({}),
        )
        .await;
    assert_eq!(error_codes(&body), ["INVALID_ARGUMENT"]);
    let body = env
        .query(
            "{ hosts(first: 1, after: \"garbage\") { totalCount } }",
            json!({}),
        )
        .await;
    assert_eq!(error_codes(&body), ["INVALID_ARGUMENT"]);
    let body = env
        .query("{ hosts(first: 100000) { totalCount } }", json!({}))
        .await;
    assert_eq!(error_codes(&body), ["INVALID_ARGUMENT"]);

    // Oversized body.
    let huge = format!(
        "{{ hosts(first: 1) {{ totalCount }} }} #{}",
        "x".repeat(128 * 1024)
    );
    let r = env
        .http
        .post(env.url("/graphql"))
        .json(&json!({ "query": huge }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);

    // Mutations: not over GET, and off by default.
    let r = env
        .http
        .get(env.url("/graphql"))
        // CSRF prevention: a GET names a header a browser would preflight.
        .header("apollo-require-preflight", "true")
        .query(&[(
            "query",
            "mutation { deleteTask(id: \"x\", hostId: \"h\", schedulerClusterId: \"1\") }",
        )])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    let body = env
        .query(
            "mutation { deleteTask(id: \"0123456789\", hostId: \"h\", schedulerClusterId: \"1\") }",
            json!({}),
        )
        .await;
    assert_eq!(error_codes(&body), ["FORBIDDEN"]);
    env.stop().await;
}

#[tokio::test]
async fn depth_limit_refuses_deep_queries() {
    let env = TestEnv::start(small_sim(), |c| c.limits.max_depth = 3).await;
    let body = env
        .query(
            "{ peers(keys: []) { task { id } host { cpu { percent } } } }",
            json!({}),
        )
        .await;
    let message = body["errors"][0]["message"].as_str().unwrap_or("");
    assert!(message.contains("nested too deep"), "{body}");
    env.stop().await;
}

#[tokio::test]
async fn get_queries_health_readiness_and_graphiql() {
    let env = TestEnv::start(small_sim(), |_| {}).await;
    let r = env
        .http
        .get(env.url("/graphql"))
        // CSRF prevention: a GET names a header a browser would preflight.
        .header("apollo-require-preflight", "true")
        .query(&[(
            "query",
            "{ schedulerClusters { id reachable schedulers { address } } }",
        )])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["data"]["schedulerClusters"].as_array().unwrap().len(),
        2
    );
    assert_eq!(
        body["data"]["schedulerClusters"][0]["schedulers"]
            .as_array()
            .unwrap()
            .len(),
        3
    );

    assert_eq!(
        env.http
            .get(env.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let r = env.http.get(env.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let page = env
        .http
        .get(env.url("/graphiql"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("graphiql"));
    // Offline: every script and style comes from dfgraph itself, and the
    // subscriptions go to /graphql/ws.
    assert!(!page.contains("https://") && page.contains("/assets/graphiql/graphiql.min.js"));
    let init = env
        .http
        .get(env.url("/assets/graphiql/init.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        init.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    assert!(init.text().await.unwrap().contains("/graphql/ws"));
    let bundle = env
        .http
        .get(env.url("/assets/graphiql/graphiql.min.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(bundle.status(), 200);
    assert!(bundle.bytes().await.unwrap().len() > 100_000);
    // The live console at /, its module script served as JavaScript.
    let console = env
        .http
        .get(env.url("/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(console.contains("host-total") && console.contains("/assets/console/console.js"));
    let script = env
        .http
        .get(env.url("/assets/console/console.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        script.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    let missing = env
        .http
        .get(env.url("/assets/nope.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    // A cluster whose schedulers all fail makes the gateway unready.
    for s in env.sim.schedulers().iter().filter(|s| s.cluster_id == 2) {
        env.sim.set_error(s.addr, Some(tonic::Code::Unavailable));
    }
    let _ = env
        .query("{ hosts(first: 1) { totalCount } }", json!({}))
        .await;
    let r = env.http.get(env.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["clusters"][1]["reachable"], false);
    assert_eq!(
        env.http
            .get(env.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    env.stop().await;
}

#[tokio::test]
async fn scheduler_health_is_visible() {
    let env = TestEnv::start(small_sim(), |_| {}).await;
    let _ = env
        .data("{ hosts(first: 1) { totalCount } }", json!({}))
        .await;
    let data = env
        .data(
            "{ schedulers { address schedulerClusterId health { up lastSuccessAt latencyMs consecutiveFailures } } }",
            json!({}),
        )
        .await;
    let schedulers = data["schedulers"].as_array().unwrap();
    assert_eq!(schedulers.len(), 6);
    assert!(
        schedulers
            .iter()
            .any(|s| !s["health"]["lastSuccessAt"].is_null())
    );
    env.stop().await;
}

#[tokio::test]
async fn discovers_schedulers_from_the_manager() {
    let env = TestEnv::start(small_sim(), |_| {}).await;
    let mut config = crate::support::gateway_config(&env.sim);
    config.schedulers.clear();
    config.manager = Some(env.sim.manager_addr().to_string());
    config.scheduler_cluster_ids = vec![1, 2];
    let discovered = dfgraph::gateway::Gateway::start(config).await.unwrap();
    let body: Value = env
        .http
        .post(format!("{}/graphql", discovered.url()))
        .json(&json!({ "query": "{ schedulers { address schedulerClusterId } hostStats { total } }" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut got: Vec<(String, String)> = body["data"]["schedulers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["schedulerClusterId"].as_str().unwrap().to_owned(),
                s["address"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    got.sort();
    let mut expected: Vec<(String, String)> = env
        .sim
        .schedulers()
        .iter()
        .map(|s| (s.cluster_id.to_string(), s.addr.to_string()))
        .collect();
    expected.sort();
    assert_eq!(got, expected);
    let total = env.total_hosts();
    assert_eq!(body["data"]["hostStats"]["total"], total);
    discovered.shutdown().await;
    env.stop().await;
}

#[tokio::test]
async fn peers_are_asked_only_in_their_hosts_cluster() {
    let env = TestEnv::start(small_sim(), |_| {}).await;
    let peers: Vec<_> = env
        .sim
        .cluster_ids()
        .into_iter()
        .flat_map(|c| env.sim.peers(c).into_iter().take(10))
        .collect();
    let keys: Vec<Value> = peers
        .iter()
        .map(|p| json!({ "hostId": p.host.as_ref().unwrap().id, "taskId": p.task.as_ref().unwrap().id, "peerId": p.id }))
        .collect();
    env.sim.reset_counters();
    let data = env
        .data(
            "query($keys: [PeerKeyInput!]!) { peers(keys: $keys) { id schedulerClusterId } }",
            json!({ "keys": keys }),
        )
        .await;
    for (got, want) in data["peers"].as_array().unwrap().iter().zip(&peers) {
        assert_eq!(got["id"], want.id.as_str());
        assert_eq!(
            got["schedulerClusterId"],
            want.host.as_ref().unwrap().scheduler_cluster_id.to_string()
        );
    }
    // One StatPeer per peer, on its owner: no asking the other cluster.
    assert_eq!(
        env.sim.total_rpc_count(Method::StatPeer),
        peers.len() as u64
    );
    assert_eq!(
        env.sim.total_rpc_count(Method::ListHosts),
        2,
        "one host list per cluster"
    );
    env.stop().await;
}

#[tokio::test]
async fn large_answers_are_compressed_small_ones_are_not() {
    let env = TestEnv::start(small_sim(), |_| {}).await;
    let raw = reqwest::Client::builder().no_gzip().build().unwrap();
    let url = format!("{}/graphql", env.gateway.url());
    let ask = |query: &'static str, encoding: Option<&'static str>| {
        let mut request = raw.post(&url).json(&json!({ "query": query }));
        if let Some(encoding) = encoding {
            request = request.header("accept-encoding", encoding);
        }
        async move {
            let response = request.send().await.unwrap();
            let encoding = response
                .headers()
                .get("content-encoding")
                .map(|v| v.to_str().unwrap().to_owned());
            (encoding, response.bytes().await.unwrap().len())
        }
    };
    let big =
        "{ hosts(first: 100) { edges { node { id hostname ip network { idc location } } } } }";
    let (plain_encoding, plain) = ask(big, None).await;
    assert_eq!(plain_encoding, None);
    for encoding in ["gzip", "br"] {
        let (used, compressed) = ask(big, Some(encoding)).await;
        assert_eq!(used.as_deref(), Some(encoding));
        assert!(
            compressed * 3 < plain,
            "{encoding}: {compressed} of {plain} bytes"
        );
    }
    let (small, _) = ask("{ __typename }", Some("gzip")).await;
    assert_eq!(small, None, "a few bytes are not worth compressing");
    // The usual client (which asks for gzip and inflates) reads it as JSON.
    let data = env.data(big, json!({})).await;
    assert_eq!(data["hosts"]["edges"].as_array().unwrap().len(), 100);
    env.stop().await;
}

/// The keys of the object at `path` in a JSON body, in the order the body
/// writes them (`async_graphql::Value` keeps it; `serde_json::Value` does
/// not).
fn keys_at(body: &str, path: &[&str]) -> Vec<String> {
    let mut value: async_graphql::Value = serde_json::from_str(body).expect("a JSON body");
    for step in path {
        // A list stands for its first item: step into that, then take `step`.
        while let async_graphql::Value::List(mut items) = value {
            assert!(!items.is_empty(), "{step}: an empty list in {body}");
            value = items.swap_remove(0);
        }
        value = match value {
            async_graphql::Value::Object(mut map) => map
                .shift_remove(*step)
                .unwrap_or_else(|| panic!("no {step} in {body}")),
            other => panic!("{step}: not an object: {other}"),
        };
    }
    match value {
        async_graphql::Value::Object(map) => map.keys().map(|k| k.to_string()).collect(),
        // A list's keys are those of its first item.
        async_graphql::Value::List(items) => match items.into_iter().next() {
            Some(async_graphql::Value::Object(map)) => map.keys().map(|k| k.to_string()).collect(),
            other => panic!("not a list of objects: {other:?}"),
        },
        other => panic!("not an object: {other}"),
    }
}

/// POSTs `query`; the body as text and its `responseCache` label.
async fn answer(env: &TestEnv, query: &str) -> (String, Option<String>) {
    let body = env
        .http
        .post(env.url("/graphql"))
        .json(&json!({ "query": query }))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let parsed: Value = serde_json::from_str(&body).unwrap();
    let label = parsed["extensions"]["responseCache"]
        .as_str()
        .map(str::to_owned);
    (body, label)
}

#[tokio::test]
async fn answers_keep_the_order_the_query_asked_in() {
    // The cache on, so the response cache keeps host-list answers.
    let env = TestEnv::start(small_sim(), |c| c.cache.enabled = true).await;

    // Kept by the response cache: computed once, then served kept. A
    // `__typename` resolves at once, the host list later; each comes
    // back where it was asked for.
    let kept = "{ hostStats { total byType { count value } } __typename \
                hosts(first: 2) { edges { node { ip id hostname } } totalCount } }";
    for expected_label in ["miss", "hit"] {
        let (body, label) = answer(&env, kept).await;
        assert_eq!(label.as_deref(), Some(expected_label), "{body}");
        assert_eq!(keys_at(&body, &[]), ["data", "extensions"], "{body}");
        assert_eq!(
            keys_at(&body, &["data"]),
            ["hostStats", "__typename", "hosts"]
        );
        assert_eq!(keys_at(&body, &["data", "hostStats"]), ["total", "byType"]);
        assert_eq!(
            keys_at(&body, &["data", "hostStats", "byType"]),
            ["count", "value"]
        );
        assert_eq!(keys_at(&body, &["data", "hosts"]), ["edges", "totalCount"]);
        assert_eq!(
            keys_at(&body, &["data", "hosts", "edges", "node"]),
            ["ip", "id", "hostname"]
        );
    }

    // Not kept (scheduler clusters are not a host list), with aliases and
    // a fragment standing where it is spread.
    let direct = "query { second: hostStats { total } __typename \
                  ...Clusters first: hostStats { total } } \
                  fragment Clusters on Query { schedulerClusters { schedulers { address } id } }";
    let (body, label) = answer(&env, direct).await;
    assert_eq!(label, None, "not through the response cache: {body}");
    assert_eq!(
        keys_at(&body, &["data"]),
        ["second", "__typename", "schedulerClusters", "first"],
        "{body}"
    );
    assert_eq!(
        keys_at(&body, &["data", "schedulerClusters"]),
        ["schedulers", "id"]
    );
    env.stop().await;
}

#[tokio::test]
async fn a_request_that_cannot_run_has_no_data_entry() {
    let env = TestEnv::start(small_sim(), |_| {}).await;
    for (accept, status) in [
        ("application/graphql-response+json", 400),
        ("application/json", 200),
    ] {
        for query in ["{ hosts(first: 1) { totalCount ", "{ nope }"] {
            let r = env
                .http
                .post(env.url("/graphql"))
                .header("accept", accept)
                .json(&json!({ "query": query }))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), status, "{accept} {query}");
            let body: Value = r.json().await.unwrap();
            assert!(body.get("data").is_none(), "{accept} {query}: {body}");
            assert!(body["errors"][0]["message"].is_string(), "{body}");
        }
    }
    // A request that ran keeps its `data`, null or not.
    let body = env.query("{ task(id: \"\") { id } }", json!({})).await;
    assert!(body.get("data").is_some(), "{body}");
    env.stop().await;
}

/// Audit notices that follow from CSRF prevention (see
/// docs/graphql-over-http.md): each is a GET the audit sends without a
/// header a browser would have to preflight, which dfgraph refuses.
const CSRF_NOTICES: &[&str] = &[
    // GET without a non-simple header is refused (CSRF prevention), so the
    // audit's plain GETs never reach GraphQL and the first three MAYs stay
    // unshown. The last two: under `application/json` a request that cannot
    // run is answered 200 with errors, which the spec allows.
    "5A70", // MAY accept application/x-www-form-urlencoded formatted GET requests
    "6A70", // MAY allow URL-encoded JSON {variables} in GETs (application/json)
    "D6D5", // MAY allow URL-encoded JSON {variables} in GETs (graphql-response+json)
    "8764", // MAY use 4xx or 5xx status codes if parameters are invalid
    "3E3A", // MAY use 400 status code if parameters are invalid
];

/// Where the audit's npm packages are installed (once per target dir).
fn graphql_http_modules() -> std::path::PathBuf {
    const PACKAGES: [&str; 2] = ["graphql-http@1.23.1", "graphql@16.15.0"];
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("graphql-http-audit");
    let modules = dir.join("node_modules");
    if modules.join("graphql-http").join("package.json").is_file() {
        return modules;
    }
    std::fs::create_dir_all(&dir).unwrap();
    let installed = std::process::Command::new("npm")
        .args([
            "install",
            "--no-audit",
            "--no-fund",
            "--no-save",
            "--prefix",
        ])
        .arg(&dir)
        .args(PACKAGES)
        .output()
        .expect("npm runs (scripts/test.sh installs Node.js and npm)");
    assert!(
        installed.status.success(),
        "npm install {PACKAGES:?} failed:\n{}",
        String::from_utf8_lossy(&installed.stderr)
    );
    modules
}

/// The GraphQL-over-HTTP conformance audit of the reference implementation
/// (npm `graphql-http`, `auditServer`): no error, no warning. Its notices
/// (each listed in docs/graphql-over-http.md) follow from CSRF prevention,
/// which refuses a GET that a browser could send cross-site unasked.
#[tokio::test]
async fn graphql_http_audit_passes_without_warnings() {
    let modules = graphql_http_modules();
    let env = TestEnv::start(small_sim(), |_| {}).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/audit/graphql-http.cjs");
    let url = env.url("/graphql");
    let output = tokio::process::Command::new("node")
        .arg(script)
        .arg(&url)
        .env("NODE_PATH", &modules)
        .output()
        .await
        .expect("node runs");
    assert!(
        output.status.success(),
        "the audit did not run:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let results: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
    assert!(results.len() > 30, "the audit ran its checks: {results:?}");
    let failed: Vec<&Value> = results
        .iter()
        .filter(|r| r["status"] == "warn" || r["status"] == "error")
        .collect();
    assert!(failed.is_empty(), "audit failures: {failed:#?}");
    let notices: BTreeSet<&str> = results
        .iter()
        .filter(|r| r["status"] == "notice")
        .filter_map(|r| r["id"].as_str())
        .collect();
    assert!(
        notices.is_subset(&CSRF_NOTICES.iter().copied().collect()),
        "notices beyond those of CSRF prevention: {notices:?} (documented: {CSRF_NOTICES:?})"
    );
    env.stop().await;
}
