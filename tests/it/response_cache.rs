//! The response cache as a console meets it: real gateway, simulated
//! schedulers over gRPC, the schedulers' own call counters as witness.

use std::time::Duration;

use crate::support::{TestEnv, small_sim};
use dfgraph::auth::{Role, StaticToken, hash_token};
use dfgraph::cache::CacheKey;
use dfgraph::config::Config;
use dfgraph_sim::Method;
use futures::future::join_all;
use serde_json::{Value, json};

const OVERVIEW: &str =
    "{ hostStats { total } hosts(first: 5) { totalCount edges { node { id } } } }";

const VIEWER_TOKEN: &str = "response-cache-viewer-0123456789";
const ADMIN_TOKEN: &str = "response-cache-admin-0123456789ab";

fn cached(config: &mut Config) {
    config.cache.enabled = true;
    config.watch.enabled = false;
}

fn label(body: &Value) -> &str {
    body["extensions"]["responseCache"].as_str().unwrap_or("")
}

fn host_total(env: &TestEnv) -> usize {
    env.sim
        .cluster_ids()
        .iter()
        .map(|&c| env.sim.hosts(c).len())
        .sum()
}

async fn post_as(env: &TestEnv, token: &str, query: &str, variables: Value) -> Value {
    let response = env
        .http
        .post(env.url("/graphql"))
        .bearer_auth(token)
        .json(&json!({ "query": query, "variables": variables }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

#[tokio::test]
async fn a_repeated_overview_is_answered_from_the_response_cache() {
    let env = TestEnv::start(small_sim(), cached).await;
    let first = env.query(OVERVIEW, json!({})).await;
    assert!(first.get("errors").is_none(), "{first:#}");
    assert_eq!(label(&first), "miss", "{first:#}");
    assert_eq!(first["data"]["hostStats"]["total"], host_total(&env));
    let list_hosts = env.sim.total_rpc_count(Method::ListHosts);
    let clusters = env.sim.cluster_ids().len();
    assert_eq!(list_hosts, clusters as u64);

    for _ in 0..5 {
        let again = env.query(OVERVIEW, json!({})).await;
        assert_eq!(label(&again), "hit", "{again:#}");
        assert_eq!(again["data"], first["data"]);
        let freshness = &again["extensions"]["freshness"];
        assert_eq!(freshness["cacheHits"], clusters, "{again:#}");
        assert_eq!(freshness["originLoads"], 0);
        assert_eq!(freshness["stale"], false);
        assert!(freshness["oldestAgeMs"].is_u64(), "{again:#}");
    }
    assert_eq!(env.sim.total_rpc_count(Method::ListHosts), list_hosts);

    // Not eligible: no label, and nothing kept.
    let schedulers = env.query("{ schedulers { addr } }", json!({})).await;
    assert!(schedulers["extensions"].get("responseCache").is_none());
    // An error is never kept.
    let bad = "{ hosts(first: -1) { totalCount } }";
    for _ in 0..2 {
        let body = env.query(bad, json!({})).await;
        assert!(body.get("errors").is_some(), "{body:#}");
        assert_eq!(label(&body), "miss", "{body:#}");
    }
    env.stop().await;
}

#[tokio::test]
async fn a_client_that_takes_gzip_gets_the_same_answer_gzipped() {
    use std::io::Read;
    let env = TestEnv::start(small_sim(), cached).await;
    let query = "{ hosts(first: 100) { edges { node { id hostname ip } } } }";
    // Decoding by hand: the test sees the bytes a browser would.
    let raw = reqwest::Client::builder().no_gzip().build().unwrap();
    let send = |encoding: Option<&'static str>| {
        let mut request = raw
            .post(env.url("/graphql"))
            .json(&json!({ "query": query }));
        if let Some(encoding) = encoding {
            request = request.header("accept-encoding", encoding);
        }
        request.send()
    };
    let plain: Value = send(None).await.unwrap().json().await.unwrap();
    assert_eq!(label(&plain), "miss", "{plain:#}");
    for (encoding, label_wanted) in [("gzip, deflate, br", "hit"), ("br;q=1, gzip;q=0.8", "hit")] {
        let response = send(Some(encoding)).await.unwrap();
        assert_eq!(response.headers()["content-encoding"], "gzip", "{encoding}");
        let gzipped = response.bytes().await.unwrap();
        let mut text = String::new();
        flate2::read::GzDecoder::new(&gzipped[..])
            .read_to_string(&mut text)
            .expect("one valid gzip member");
        let body: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(label(&body), label_wanted);
        assert_eq!(body["data"], plain["data"]);
        assert!(
            body["extensions"]["freshness"]["cacheHits"].is_u64(),
            "{body:#}"
        );
    }
    // Refused by weight, or not offered: plain JSON.
    for encoding in [Some("gzip;q=0"), None] {
        let response = send(encoding).await.unwrap();
        assert!(
            response.headers().get("content-encoding").is_none(),
            "{encoding:?}"
        );
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["data"], plain["data"]);
    }
    env.stop().await;
}

#[tokio::test]
async fn an_invalidated_host_list_makes_the_next_answer_new() {
    let env = TestEnv::start(small_sim(), cached).await;
    let before = env.data(OVERVIEW, json!({})).await;
    assert_eq!(label(&env.query(OVERVIEW, json!({})).await), "hit");

    let cluster = env.sim.cluster_ids()[0];
    let gone = env.sim.hosts(cluster)[0].id.clone();
    assert!(env.sim.remove_host(cluster, &gone));
    env.gateway
        .state
        .cache
        .invalidate(&CacheKey::hosts(cluster))
        .await;
    let after = env.query(OVERVIEW, json!({})).await;
    assert_eq!(label(&after), "miss", "{after:#}");
    assert_eq!(
        after["data"]["hostStats"]["total"],
        before["hostStats"]["total"].as_u64().unwrap() - 1
    );
    assert_eq!(label(&env.query(OVERVIEW, json!({})).await), "hit");
    env.stop().await;
}

#[tokio::test]
async fn a_host_change_seen_by_the_watcher_reaches_the_next_query() {
    let env = TestEnv::start(small_sim(), |config| {
        config.cache.enabled = true;
        config.watch.enabled = true;
        config.watch.interval = Duration::from_millis(100);
    })
    .await;
    let before = env.data(OVERVIEW, json!({})).await;
    let total = before["hostStats"]["total"].as_u64().unwrap();
    // The watcher's first poll of each cluster is its baseline: a change
    // before it is no change to it.
    let loaded = env.sim.total_rpc_count(Method::ListHosts);
    let clusters = env.sim.cluster_ids().len() as u64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while env.sim.total_rpc_count(Method::ListHosts) < loaded + clusters {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the watcher never polled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cluster = env.sim.cluster_ids()[0];
    let gone = env.sim.hosts(cluster)[0].id.clone();
    assert!(env.sim.remove_host(cluster, &gone));

    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let body = env.query(OVERVIEW, json!({})).await;
        if body["data"]["hostStats"]["total"] == total - 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the removed host is still counted: {body:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    env.stop().await;
}

#[tokio::test]
async fn roles_and_variables_do_not_share_entries() {
    let env = TestEnv::start(small_sim(), |config| {
        cached(config);
        config.auth.tokens = vec![
            StaticToken {
                name: "viewer".into(),
                sha256: hash_token(VIEWER_TOKEN),
                role: Role::Viewer,
            },
            StaticToken {
                name: "admin".into(),
                sha256: hash_token(ADMIN_TOKEN),
                role: Role::Admin,
            },
        ];
    })
    .await;
    let viewer = post_as(&env, VIEWER_TOKEN, OVERVIEW, json!({})).await;
    assert_eq!(label(&viewer), "miss", "{viewer:#}");
    assert_eq!(
        label(&post_as(&env, VIEWER_TOKEN, OVERVIEW, json!({})).await),
        "hit"
    );
    let admin = post_as(&env, ADMIN_TOKEN, OVERVIEW, json!({})).await;
    assert_eq!(label(&admin), "miss", "{admin:#}");
    assert_eq!(
        label(&post_as(&env, ADMIN_TOKEN, OVERVIEW, json!({})).await),
        "hit"
    );

    let page = "query($n: Int) { hosts(first: $n) { edges { node { id } } } }";
    let one = post_as(&env, VIEWER_TOKEN, page, json!({ "n": 1 })).await;
    let two = post_as(&env, VIEWER_TOKEN, page, json!({ "n": 2 })).await;
    assert_eq!((label(&one), label(&two)), ("miss", "miss"));
    let one_again = post_as(&env, VIEWER_TOKEN, page, json!({ "n": 1 })).await;
    let two_again = post_as(&env, VIEWER_TOKEN, page, json!({ "n": 2 })).await;
    assert_eq!((label(&one_again), label(&two_again)), ("hit", "hit"));
    assert_eq!(
        one_again["data"]["hosts"]["edges"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        two_again["data"]["hosts"]["edges"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(one_again["data"], one["data"]);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_concurrent_queries_execute_once() {
    let env = TestEnv::start(small_sim(), cached).await;
    for scheduler in env.sim.schedulers() {
        env.sim
            .set_latency(scheduler.addr, Duration::from_millis(400));
    }
    let bodies = join_all((0..8).map(|_| env.query(OVERVIEW, json!({})))).await;
    let labels: Vec<&str> = bodies.iter().map(label).collect();
    // One executes; the rest join it, or, when a loaded machine starts one
    // after the execution ended, are served what it kept.
    assert_eq!(
        labels.iter().filter(|&&l| l == "miss").count(),
        1,
        "{labels:?}"
    );
    assert!(
        labels
            .iter()
            .all(|&l| matches!(l, "miss" | "shared" | "hit")),
        "{labels:?}"
    );
    assert!(labels.contains(&"shared"), "{labels:?}");
    for body in &bodies {
        assert!(body.get("errors").is_none(), "{body:#}");
        assert_eq!(body["data"], bodies[0]["data"]);
    }
    assert_eq!(
        env.sim.total_rpc_count(Method::ListHosts),
        env.sim.cluster_ids().len() as u64
    );
    env.stop().await;
}

#[tokio::test]
async fn switched_off_nothing_is_kept() {
    let env = TestEnv::start(small_sim(), |config| {
        cached(config);
        config.response_cache.enabled = false;
    })
    .await;
    for _ in 0..2 {
        let body = env.query(OVERVIEW, json!({})).await;
        assert!(
            body["extensions"].get("responseCache").is_none(),
            "{body:#}"
        );
        assert_eq!(body["extensions"]["freshness"]["stale"], false);
    }
    env.stop().await;
}
