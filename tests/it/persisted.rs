//! Persisted operations as Apollo clients use them: a document sent once
//! with its hash is known by hash to every replica sharing Redis; in
//! safelist mode only registered operations run, over HTTP and websocket.

use crate::support::redis::RedisServer;
use crate::support::ws::WsClient;
use crate::support::{error_codes, gateway_config, small_sim};
use dfgraph::gateway::Gateway;
use dfgraph::http::persisted::{Mode, sha256_hex};
use dfgraph_sim::SimCluster;
use serde_json::{Value, json};

const QUERY: &str = "{ hostStats { total } }";

async fn post(http: &reqwest::Client, gateway: &Gateway, body: Value) -> Value {
    let response = http
        .post(format!("{}/graphql", gateway.url()))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

fn persisted(hash: &str) -> Value {
    json!({ "persistedQuery": { "version": 1, "sha256Hash": hash } })
}

#[tokio::test]
async fn a_document_sent_to_one_replica_runs_by_hash_on_another() {
    let redis = RedisServer::start();
    let sim = SimCluster::start(small_sim()).await.unwrap();
    let mut config = gateway_config(&sim);
    config.redis = Some(redis.url());
    let a = Gateway::start(config.clone()).await.unwrap();
    let b = Gateway::start(config).await.unwrap();
    let http = reqwest::Client::new();
    let hash = sha256_hex(QUERY);
    let total = sim.hosts(1).len() + sim.hosts(2).len();

    // Not known yet: the client is told to send the document.
    let body = post(&http, &b, json!({ "extensions": persisted(&hash) })).await;
    assert_eq!(error_codes(&body), ["PERSISTED_QUERY_NOT_FOUND"], "{body}");
    assert_eq!(body["errors"][0]["message"], "PersistedQueryNotFound");

    let body = post(
        &http,
        &a,
        json!({ "query": QUERY, "extensions": persisted(&hash) }),
    )
    .await;
    assert_eq!(body["data"]["hostStats"]["total"], total, "{body}");
    let body = post(&http, &b, json!({ "extensions": persisted(&hash) })).await;
    assert_eq!(
        body["data"]["hostStats"]["total"], total,
        "replica b knows it: {body}"
    );

    // A document that is not what its hash says is refused.
    let other = sha256_hex("{ schedulerClusters { id } }");
    let body = post(
        &http,
        &a,
        json!({ "query": QUERY, "extensions": persisted(&other) }),
    )
    .await;
    assert_eq!(
        error_codes(&body),
        ["PERSISTED_QUERY_HASH_MISMATCH"],
        "{body}"
    );

    a.shutdown().await;
    b.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn safelist_mode_runs_registered_operations_only() {
    let sim = SimCluster::start(small_sim()).await.unwrap();
    let manifest = tempfile::NamedTempFile::new().unwrap();
    let hash = sha256_hex(QUERY);
    std::fs::write(
        manifest.path(),
        json!({
            "format": "apollo-persisted-query-manifest",
            "version": 1,
            "operations": [{ "id": hash, "name": "Overview", "type": "query", "body": QUERY }],
        })
        .to_string(),
    )
    .unwrap();
    let mut config = gateway_config(&sim);
    config.graphql.persisted_queries = Mode::Safelist;
    config.graphql.safelist_file = Some(manifest.path().to_owned());
    let gateway = Gateway::start(config).await.unwrap();
    let http = reqwest::Client::new();
    let total = sim.hosts(1).len() + sim.hosts(2).len();

    let body = post(&http, &gateway, json!({ "extensions": persisted(&hash) })).await;
    assert_eq!(body["data"]["hostStats"]["total"], total, "by hash: {body}");
    let body = post(&http, &gateway, json!({ "query": QUERY })).await;
    assert_eq!(
        body["data"]["hostStats"]["total"], total,
        "by document: {body}"
    );
    let body = post(
        &http,
        &gateway,
        json!({ "query": "{ schedulerClusters { id } }" }),
    )
    .await;
    assert_eq!(error_codes(&body), ["OPERATION_NOT_IN_SAFELIST"], "{body}");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("registered operations only")
    );
    assert!(body.get("data").is_none());

    // The websocket is no way around it.
    let mut ws = WsClient::ready(&gateway.url()).await;
    ws.subscribe("h", "subscription { hostEvents { kind } }", json!({}))
        .await;
    let reply = ws.message(std::time::Duration::from_secs(5)).await;
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(
        reply["payload"][0]["extensions"]["code"],
        "OPERATION_NOT_IN_SAFELIST"
    );

    gateway.shutdown().await;

    // A manifest whose ids are not the hashes of their bodies is refused
    // at start.
    std::fs::write(
        manifest.path(),
        json!({ "operations": [{ "id": sha256_hex("other"), "body": QUERY }] }).to_string(),
    )
    .unwrap();
    let mut config = gateway_config(&sim);
    config.graphql.persisted_queries = Mode::Safelist;
    config.graphql.safelist_file = Some(manifest.path().to_owned());
    let refused = Gateway::start(config).await.err().expect("refused");
    assert!(refused.to_string().contains("not the SHA-256"), "{refused}");
    sim.shutdown().await;
}
