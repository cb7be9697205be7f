//! Rate limits and the protection of `/metrics`, as clients meet them over
//! real HTTP and websockets: a script that sends too fast is told to wait
//! while everyone else is served, and comes back once its bucket refills;
//! scrapers need the metrics token, or the metrics port.

use std::time::Duration;

use crate::support::ws::{Received, WsClient};
use crate::support::{TestEnv, error_codes, small_sim};
use dfgraph::auth::{Role, StaticToken, hash_token};
use dfgraph::config::Config;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const ALICE: &str = "alice-script-0123456789";
const BOB: &str = "bob-script-0123456789ab";
const READ: &str = "{ hostStats { total } }";

/// One request per second, two at once.
fn slow_limit(config: &mut Config) {
    config.rate_limit.per_second = Some(1);
    config.rate_limit.burst = Some(2);
    config.auth.tokens = [("alice", ALICE), ("bob", BOB)]
        .into_iter()
        .map(|(name, token)| StaticToken {
            name: name.into(),
            sha256: hash_token(token),
            role: Role::Viewer,
        })
        .collect();
}

/// POSTs a query with optional bearer token and extra headers: the status,
/// `Retry-After`, and body.
async fn post(
    env: &TestEnv,
    token: Option<&str>,
    headers: &[(&str, &str)],
) -> (u16, Option<String>, Value) {
    let mut request = env
        .http
        .post(env.url("/graphql"))
        .json(&json!({ "query": READ }));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (
        status,
        retry_after,
        response.json().await.unwrap_or(Value::Null),
    )
}

/// Asserts a refusal is a 429 a client can act on.
fn assert_limited(who: &str, (status, retry_after, body): &(u16, Option<String>, Value)) {
    assert_eq!(*status, 429, "{who}: {body}");
    let secs: u64 = retry_after
        .as_deref()
        .unwrap_or_else(|| panic!("{who}: no Retry-After"))
        .parse()
        .expect("Retry-After in whole seconds");
    assert!((1..=2).contains(&secs), "{who}: Retry-After {secs}");
    assert_eq!(error_codes(body), ["RATE_LIMITED"], "{who}: {body}");
    assert_eq!(body["errors"][0]["extensions"]["retryAfter"], json!(secs));
}

/// Retries `attempt` every 100 ms until it returns true; false if it never
/// did within `within`.
async fn eventually<F, Fut>(within: Duration, mut attempt: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if attempt().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_client_over_its_rate_waits_while_others_are_served() {
    let env = TestEnv::start(small_sim(), slow_limit).await;

    for n in 1..=2 {
        let (status, _, body) = post(&env, Some(ALICE), &[]).await;
        assert_eq!(
            status, 200,
            "alice's request {n} is within her burst: {body}"
        );
        assert!(body["data"]["hostStats"]["total"].is_number(), "{body}");
    }
    assert_limited("alice's third", &post(&env, Some(ALICE), &[]).await);
    // GET draws from the same bucket.
    let response = env
        .http
        .get(env.url("/graphql"))
        .bearer_auth(ALICE)
        .header("apollo-require-preflight", "true")
        .query(&[("query", READ)])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429, "GET by alice");

    // Another token, and a caller without one (keyed by address), are
    // served meanwhile.
    let (status, _, body) = post(&env, Some(BOB), &[]).await;
    assert_eq!(status, 200, "bob: {body}");
    let (status, _, body) = post(&env, None, &[]).await;
    assert_eq!(status, 200, "anonymous: {body}");

    // Probes, pages and metrics are never limited.
    for path in ["/healthz", "/readyz", "/graphiql", "/metrics"] {
        for _ in 0..5 {
            let response = env.http.get(env.url(path)).send().await.unwrap();
            assert_eq!(response.status(), 200, "{path}");
        }
    }
    let metrics = env
        .http
        .get(env.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("dfgraph_rate_limited_total{what=\"graphql\"}"),
        "refusals are counted"
    );

    // The bucket refills at one request per second.
    let recovered = eventually(Duration::from_secs(5), || async {
        post(&env, Some(ALICE), &[]).await.0 == 200
    })
    .await;
    assert!(recovered, "alice is served again once her bucket refills");
    env.stop().await;
}

#[tokio::test]
async fn every_dfgraph_metric_on_metrics_has_help() {
    let env = TestEnv::start(small_sim(), slow_limit).await;
    // Enough traffic to touch the cache, the schedulers, the response
    // cache and the rate limit.
    for _ in 0..3 {
        post(&env, Some(ALICE), &[]).await;
    }
    let query = json!({ "query": "{ hosts(first: 5) { edges { node { id } } } }" });
    env.http
        .post(env.url("/graphql"))
        .json(&query)
        .send()
        .await
        .unwrap();
    let metrics = env
        .http
        .get(env.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let typed: Vec<&str> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| name.starts_with("dfgraph_"))
        .collect();
    for expected in [
        "dfgraph_cache_lookups_total",
        "dfgraph_scheduler_call_seconds",
        "dfgraph_graphql_request_seconds",
        "dfgraph_rate_limited_total",
    ] {
        assert!(typed.contains(&expected), "{expected} in {typed:?}");
    }
    for name in typed {
        let help = format!("# HELP {name} ");
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with(&help) && l.len() > help.len()),
            "{name} has no HELP line:\n{metrics}"
        );
    }
    env.stop().await;
}

#[tokio::test]
async fn forwarded_addresses_count_only_from_trusted_proxies() {
    // The test's own address stands in for a proxy in front of dfgraph.
    let env = TestEnv::start(small_sim(), |c| {
        slow_limit(c);
        c.rate_limit.trusted_proxies = vec!["127.0.0.1/32".into(), "::1".into()];
    })
    .await;
    let from = |ip: &'static str| [("x-forwarded-for", ip)];
    for _ in 0..2 {
        assert_eq!(post(&env, None, &from("203.0.113.1")).await.0, 200);
    }
    assert_limited(
        "third from 203.0.113.1",
        &post(&env, None, &from("203.0.113.1")).await,
    );
    // A client behind the proxy cannot pose as another by writing its own
    // X-Forwarded-For: the proxy appends the address it saw.
    assert_limited(
        "203.0.113.1 claiming to be 198.51.100.9",
        &post(&env, None, &from("198.51.100.9, 203.0.113.1")).await,
    );
    assert_eq!(post(&env, None, &from("203.0.113.2")).await.0, 200);
    // Bad tokens are keyed by address too: guessing tokens is limited.
    for _ in 0..2 {
        let (status, _, body) = post(&env, Some("guess"), &from("203.0.113.3")).await;
        assert_eq!(
            (status, error_codes(&body)),
            (401, vec!["UNAUTHENTICATED".into()])
        );
    }
    assert_limited(
        "a third guess",
        &post(&env, Some("guess"), &from("203.0.113.3")).await,
    );
    env.stop().await;

    // Without trusted proxies the header is the client's own word, and
    // every request from here shares the peer address's bucket.
    let env = TestEnv::start(small_sim(), slow_limit).await;
    assert_eq!(post(&env, None, &from("203.0.113.1")).await.0, 200);
    assert_eq!(post(&env, None, &from("203.0.113.2")).await.0, 200);
    assert_limited(
        "a third address claimed from one peer",
        &post(&env, None, &from("203.0.113.3")).await,
    );
    env.stop().await;
}

/// Opens `/graphql/ws`: the client, or the HTTP status and `Retry-After`
/// of a refused upgrade.
async fn upgrade(env: &TestEnv) -> Result<WsClient, (u16, Option<String>)> {
    let url = format!(
        "{}/graphql/ws",
        env.gateway.url().replace("http://", "ws://")
    );
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "graphql-transport-ws".parse().unwrap(),
    );
    match tokio_tungstenite::connect_async(request).await {
        Ok((socket, _)) => Ok(WsClient { socket }),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Err((
            response.status().as_u16(),
            response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned()),
        )),
        Err(e) => panic!("websocket: {e}"),
    }
}

#[tokio::test]
async fn websocket_upgrades_and_operations_draw_from_the_same_bucket() {
    let env = TestEnv::start(small_sim(), slow_limit).await;
    let mut client = upgrade(&env).await.expect("first upgrade (1 of 2)");
    client
        .send(json!({"type": "connection_init", "payload": {}}))
        .await;
    assert_eq!(
        client.message(Duration::from_secs(5)).await["type"],
        "connection_ack"
    );

    client.subscribe("a", READ, json!({})).await;
    let next = client.message(Duration::from_secs(5)).await;
    assert_eq!(
        (&next["type"], &next["id"]),
        (&json!("next"), &json!("a")),
        "{next}"
    );
    assert!(next["payload"]["data"]["hostStats"]["total"].is_number());

    // The bucket is empty: the next operation is refused on the socket,
    // which stays open.
    client.subscribe("b", READ, json!({})).await;
    let refused = loop {
        let message = client.message(Duration::from_secs(5)).await;
        if message["id"] == "b" {
            break message;
        }
    };
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(
        refused["payload"][0]["extensions"]["code"], "RATE_LIMITED",
        "{refused}"
    );
    assert!(refused["payload"][0]["extensions"]["retryAfter"].as_u64() >= Some(1));

    // So is another upgrade from the same address.
    let (status, retry_after) = upgrade(&env).await.err().expect("upgrade refused");
    assert_eq!(status, 429);
    assert!(retry_after.is_some_and(|s| s.parse::<u64>().is_ok_and(|s| s >= 1)));

    // Once the bucket refills, the open socket runs operations again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut recovered = false;
    for attempt in 0.. {
        let id = format!("retry-{attempt}");
        client.subscribe(&id, READ, json!({})).await;
        let answer = loop {
            match client.receive(Duration::from_secs(5)).await {
                Received::Message(m) if m["id"] == json!(id) => break m,
                Received::Message(_) => continue,
                other => panic!("socket ended: {other:?}"),
            }
        };
        if answer["type"] == "next" {
            recovered = true;
            break;
        }
        assert_eq!(answer["payload"][0]["extensions"]["code"], "RATE_LIMITED");
        if tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "the socket is served again after the wait");
    env.stop().await;
}

/// A file holding the metrics token, as a mounted secret would.
fn token_file(dir: &tempfile::TempDir, token: &str) -> std::path::PathBuf {
    let path = dir.path().join("metrics-token");
    std::fs::write(&path, format!("{token}\n")).unwrap();
    path
}

const METRICS_TOKEN: &str = "0123456789abcdef0123456789abcdef";

#[tokio::test]
async fn metrics_need_their_token() {
    let dir = tempfile::tempdir().unwrap();
    let file = token_file(&dir, METRICS_TOKEN);
    let env = TestEnv::start(small_sim(), |c| c.metrics.token_file = Some(file)).await;
    let scrape = |token: Option<&str>| {
        let mut request = env.http.get(env.url("/metrics"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move { request.send().await.unwrap() }
    };
    for (who, token) in [
        ("no token", None),
        ("a wrong token", Some("0123456789abcdef0123456789abcdeX")),
        ("a prefix of the token", Some(&METRICS_TOKEN[..16])),
    ] {
        let response = scrape(token).await;
        assert_eq!(response.status(), 401, "{who}");
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        let body = response.text().await.unwrap();
        assert!(!body.contains("dfgraph_"), "{who} reads no metrics");
    }
    let response = scrape(Some(METRICS_TOKEN)).await;
    assert_eq!(response.status(), 200);
    let body = response.text().await.unwrap();
    assert!(body.contains("dfgraph_"), "{body}");
    // GraphQL is not behind the metrics token.
    let (status, _, _) = post(&env, None, &[]).await;
    assert_eq!(status, 200);
    env.stop().await;
}

#[tokio::test]
async fn metrics_on_their_own_listener_are_not_on_the_main_port() {
    let dir = tempfile::tempdir().unwrap();
    let file = token_file(&dir, METRICS_TOKEN);
    let env = TestEnv::start(small_sim(), |c| {
        c.metrics.listen = Some("127.0.0.1:0".parse().unwrap());
        c.metrics.token_file = Some(file);
    })
    .await;
    let metrics = format!(
        "http://{}",
        env.gateway.metrics_addr.expect("a metrics listener")
    );
    assert_ne!(metrics, env.gateway.url());
    let main = env.http.get(env.url("/metrics")).bearer_auth(METRICS_TOKEN);
    assert_eq!(
        main.send().await.unwrap().status(),
        404,
        "not on the main port"
    );

    let response = env
        .http
        .get(format!("{metrics}/metrics"))
        .bearer_auth(METRICS_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.text().await.unwrap().contains("dfgraph_"));
    let response = env
        .http
        .get(format!("{metrics}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401, "the token holds there too");
    let response = env
        .http
        .get(format!("{metrics}/graphql"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        404,
        "the metrics port serves only metrics"
    );
    // The main port serves everything else.
    assert_eq!(post(&env, None, &[]).await.0, 200);
    env.stop().await;
}

#[tokio::test]
async fn a_separate_listener_without_a_token_is_open() {
    let env = TestEnv::start(small_sim(), |c| {
        c.metrics.listen = Some("127.0.0.1:0".parse().unwrap())
    })
    .await;
    let metrics = env.gateway.metrics_addr.expect("a metrics listener");
    let response = env
        .http
        .get(format!("http://{metrics}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let main = env.http.get(env.url("/metrics")).send().await.unwrap();
    assert_eq!(main.status(), 404);
    env.stop().await;
}

#[test]
fn bad_settings_are_refused_at_start_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short-token");
    std::fs::write(&short, "secret\n").unwrap();
    let cases = [
        ("[rate_limit]\nper_second = 0\n", "rate_limit.per_second"),
        (
            "[rate_limit]\nper_second = 10\nburst = 0\n",
            "rate_limit.burst",
        ),
        ("[rate_limit]\nburst = 10\n", "rate_limit.burst"),
        ("[rate_limit]\nper_second = -1\n", "per_second"),
        (
            "[rate_limit]\nper_second = 10\ntrusted_proxies = [\"10.0.0.0/40\"]\n",
            "rate_limit.trusted_proxies",
        ),
        (
            "[metrics]\ntoken_file = \"/nonexistent/metrics-token\"\n",
            "metrics.token_file",
        ),
        (
            &format!(
                "[metrics]\ntoken_file = {:?}\n",
                short.display().to_string()
            ),
            "metrics.token_file",
        ),
        (
            "[metrics]\ntoken_env = \"DFGRAPH_TEST_UNSET_METRICS_TOKEN\"\n",
            "metrics.token_env",
        ),
        (
            "listen = \"0.0.0.0:8080\"\n[metrics]\nlisten = \"127.0.0.1:8080\"\n",
            "metrics.listen",
        ),
        ("[metrics]\nlisten = \"nowhere\"\n", "listen"),
    ];
    let path = dir.path().join("dfgraph.toml");
    for (toml, setting) in cases {
        std::fs::write(&path, toml).unwrap();
        let err = Config::load(Some(&path), json!({}))
            .expect_err(toml)
            .to_string();
        assert!(err.contains(setting), "{toml:?}: {err}");
        assert!(!err.contains("secret"), "the token is never shown: {err}");
    }
    std::fs::write(
        &path,
        "[rate_limit]\nper_second = 50\ntrusted_proxies = [\"10.0.0.0/8\", \"::1\"]\n",
    )
    .unwrap();
    let config = Config::load(Some(&path), json!({})).unwrap();
    assert_eq!(config.rate_limit.per_second, Some(50));
}
