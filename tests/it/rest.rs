//! The manager's peers API served by dfgraph, as the Dragonfly console's
//! peers pages call it (its API client: `fetch` with
//! `Content-Type: application/json` and the `jwt` cookie): the manager's
//! JSON shapes and value formats, filters, pages and `Link` headers, error
//! shapes, access control, and a host joining the simulated cluster
//! showing up within one watch interval.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::manager::{MANAGER_PAGE, ManagerStandIn, ROOT_USER, manager_token, now};
use crate::support::{TestEnv, small_sim};
use dfgraph::auth::{Anonymous, ManagerAuth, Role, StaticToken, hash_token};
use dfgraph::config::Config;
use dfgraph::http::rest::peer::peer_id;
use dfgraph::proto::common::v2::Host;
use serde_json::{Value, json};

/// `models.Peer`'s JSON fields, in the order `encoding/json` writes them.
const PEER_FIELDS: [&str; 24] = [
    "id",
    "created_at",
    "updated_at",
    "is_del",
    "host_name",
    "type",
    "idc",
    "location",
    "ip",
    "port",
    "download_port",
    "proxy_port",
    "object_storage_port",
    "state",
    "os",
    "platform",
    "platform_family",
    "platform_version",
    "kernel_version",
    "git_version",
    "git_commit",
    "build_platform",
    "scheduler_cluster_id",
    "scheduler_cluster",
];

/// `models.SchedulerCluster`'s JSON fields (preloaded into every peer).
const SCHEDULER_CLUSTER_FIELDS: [&str; 15] = [
    "id",
    "created_at",
    "updated_at",
    "is_del",
    "name",
    "bio",
    "config",
    "client_config",
    "seed_client_config",
    "scopes",
    "is_default",
    "seed_peer_clusters",
    "schedulers",
    "peers",
    "jobs",
];

/// The console's `MAX_PAGE_SIZE`: it asks for every peer at once.
const CONSOLE_MAX_PAGE_SIZE: u64 = 10_000_000;

const MANAGER_KEY: &str = "the manager's auth.jwt.key";
const SCRIPT_TOKEN: &str = "dfgraph-ci-0123456789abcdef";

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }

    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    }
}

/// A request as the console's `get`/`post` helpers make it.
async fn console(
    env: &TestEnv,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    body: Option<Value>,
) -> Answer {
    let mut request = match method {
        "GET" => env.http.get(env.url(path)),
        _ => env.http.post(env.url(path)),
    }
    .header("content-type", "application/json");
    if let Some(jwt) = cookie {
        request = request.header("cookie", format!("jwt={jwt}"));
    }
    if let Some(body) = body {
        request = request.body(body.to_string());
    }
    let response = request.send().await.expect("request sent");
    Answer {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        text: response.text().await.expect("body"),
    }
}

async fn get(env: &TestEnv, path: &str) -> Answer {
    console(env, "GET", path, None, None).await
}

async fn peers(env: &TestEnv, query: &str) -> Vec<Value> {
    let answer = get(env, &format!("/api/v1/peers?{query}")).await;
    assert_eq!(answer.status, 200, "{query}: {}", answer.text);
    answer.json().as_array().expect("a JSON array").clone()
}

fn names(peers: &[Value]) -> BTreeSet<String> {
    peers
        .iter()
        .map(|p| p["host_name"].as_str().unwrap().to_owned())
        .collect()
}

fn all_hosts(env: &TestEnv) -> Vec<(u64, Host)> {
    env.sim
        .cluster_ids()
        .into_iter()
        .flat_map(|c| env.sim.hosts(c).into_iter().map(move |h| (c, h)))
        .collect()
}

/// `types.HostType.Name`: the manager knows `super` (1) and calls every
/// other number `normal`.
fn type_name(wire: u32) -> &'static str {
    if wire == 1 { "super" } else { "normal" }
}

/// The order of `fields` as they appear in the first object of `text`.
fn field_order<'a>(text: &str, fields: &[&'a str]) -> Vec<&'a str> {
    let mut found: Vec<(usize, &str)> = fields
        .iter()
        .map(|f| (text.find(&format!("\"{f}\":")).unwrap_or(usize::MAX), *f))
        .collect();
    found.sort();
    found.into_iter().map(|(_, f)| f).collect()
}

fn assert_peer_shape(peer: &Value) {
    let keys: BTreeSet<&str> = peer
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, PEER_FIELDS.into_iter().collect(), "{peer}");
    let cluster = &peer["scheduler_cluster"];
    let keys: BTreeSet<&str> = cluster
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        SCHEDULER_CLUSTER_FIELDS.into_iter().collect(),
        "{cluster}"
    );

    let id = peer["id"].as_u64().expect("a numeric id");
    assert!(
        id > 0 && id < (1 << 53),
        "id {id} is an exact JavaScript number"
    );
    assert_eq!(peer["is_del"], 0);
    let updated = peer["updated_at"].as_str().unwrap();
    let parsed = chrono::DateTime::parse_from_rfc3339(updated).expect("RFC 3339");
    assert!(updated.ends_with('Z'), "{updated}");
    let age = chrono::Utc::now().signed_duration_since(parsed);
    assert!(
        age < chrono::Duration::minutes(5),
        "read moments ago: {updated}"
    );
    // First listed by this gateway moments ago, never after the read.
    let created = peer["created_at"].as_str().unwrap();
    let first = chrono::DateTime::parse_from_rfc3339(created).expect("RFC 3339");
    assert!(
        created.ends_with('Z') && first <= parsed,
        "{created} {updated}"
    );
    assert!(chrono::Utc::now().signed_duration_since(first) < chrono::Duration::minutes(5));
    assert_eq!(peer["state"], "active");
    assert!(["normal", "super"].contains(&peer["type"].as_str().unwrap()));
    for port in ["port", "download_port", "proxy_port", "object_storage_port"] {
        assert!(peer[port].is_i64(), "{port} is a number: {peer}");
    }
    assert_eq!(cluster["id"], peer["scheduler_cluster_id"]);
    assert_eq!(
        cluster["name"],
        format!("scheduler-cluster-{}", peer["scheduler_cluster_id"])
    );
    for empty in ["config", "client_config", "seed_client_config", "scopes"] {
        assert_eq!(cluster[empty], json!({}), "{empty}");
    }
    for null in ["seed_peer_clusters", "schedulers", "peers", "jobs"] {
        assert_eq!(cluster[null], Value::Null, "{null}");
    }
}

#[tokio::test]
async fn the_consoles_peers_pages_get_the_managers_shapes_from_live_data() {
    let env = TestEnv::start(small_sim(), |_| {}).await;
    let hosts = all_hosts(&env);

    // Insight > Peers: every peer of every cluster in one page.
    let answer = get(
        &env,
        &format!("/api/v1/peers?page=1&per_page={CONSOLE_MAX_PAGE_SIZE}"),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(
        answer.header("content-type").as_deref(),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(field_order(&answer.text, &PEER_FIELDS), PEER_FIELDS);
    let all = answer.json().as_array().unwrap().clone();
    assert_eq!(all.len(), hosts.len());
    all.iter().for_each(assert_peer_shape);
    let ids: Vec<u64> = all.iter().map(|p| p["id"].as_u64().unwrap()).collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "rows in id order, ids distinct"
    );

    // Each row says what its scheduler says about the host.
    let by_name: BTreeMap<&str, &Value> = all
        .iter()
        .map(|p| (p["host_name"].as_str().unwrap(), p))
        .collect();
    for (cluster_id, host) in &hosts {
        let peer = by_name[host.hostname.as_str()];
        let network = host.network.clone().unwrap_or_default();
        let build = host.build.clone().unwrap_or_default();
        assert_eq!(peer["id"], peer_id(*cluster_id, &host.id));
        assert_eq!(peer["scheduler_cluster_id"], *cluster_id);
        assert_eq!(peer["type"], type_name(host.r#type));
        assert_eq!(peer["ip"], host.ip);
        assert_eq!(peer["port"], host.port);
        assert_eq!(peer["download_port"], host.download_port);
        assert_eq!(peer["proxy_port"], host.proxy_port);
        assert_eq!(peer["object_storage_port"], 0);
        assert_eq!(peer["idc"], network.idc.unwrap_or_default());
        assert_eq!(peer["location"], network.location.unwrap_or_default());
        assert_eq!(peer["os"], host.os);
        assert_eq!(peer["platform"], host.platform);
        assert_eq!(peer["platform_family"], host.platform_family);
        assert_eq!(peer["platform_version"], host.platform_version);
        assert_eq!(peer["kernel_version"], host.kernel_version);
        assert_eq!(peer["git_version"], build.git_version);
        assert_eq!(peer["git_commit"], build.git_commit.unwrap_or_default());
        assert_eq!(peer["build_platform"], build.platform.unwrap_or_default());
    }
    assert!(
        all.iter().any(|p| p["type"] != "normal"),
        "the simulator has seed peers, so types are really mapped"
    );

    // Clusters > a cluster > Peers: that cluster's peers.
    let query = format!("page=1&per_page={CONSOLE_MAX_PAGE_SIZE}&scheduler_cluster_id=1");
    let cluster = peers(&env, &query).await;
    assert_eq!(cluster.len(), env.sim.hosts(1).len());
    assert!(cluster.iter().all(|p| p["scheduler_cluster_id"] == 1));

    // Its refresh button: a sync_peers job, then the same list again.
    let answer = console(
        &env,
        "POST",
        "/api/v1/jobs",
        None,
        Some(json!({ "type": "sync_peers", "scheduler_cluster_ids": [1] })),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(answer.json(), json!("OK"), "the manager's answer, no job");
    assert_eq!(names(&peers(&env, &query).await), names(&cluster));

    // One peer by id is the same row.
    let first = &cluster[0];
    let answer = get(&env, &format!("/api/v1/peers/{}", first["id"])).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    let one = answer.json();
    assert_peer_shape(&one);
    assert_eq!(one["host_name"], first["host_name"]);
    assert_eq!(one["id"], first["id"]);
    env.stop().await;
}

#[tokio::test]
async fn filters_match_exactly_like_the_managers_where_clause() {
    let env = TestEnv::start(small_sim(), |_| {}).await;
    let hosts = all_hosts(&env);
    let expect = |keep: &dyn Fn(u64, &Host) -> bool| -> BTreeSet<String> {
        hosts
            .iter()
            .filter(|(c, h)| keep(*c, h))
            .map(|(_, h)| h.hostname.clone())
            .collect()
    };
    let (_, sample) = &hosts[hosts.len() / 2];
    let idc = sample.network.as_ref().unwrap().idc.clone().unwrap();
    let location = sample.network.as_ref().unwrap().location.clone().unwrap();
    let version = sample.build.as_ref().unwrap().git_version.clone();
    let commit = sample.build.as_ref().unwrap().git_commit.clone().unwrap();
    let all = "per_page=1000";

    let cases: Vec<(String, BTreeSet<String>)> = vec![
        (
            format!("host_name={}", sample.hostname),
            expect(&|_, h| h.hostname == sample.hostname),
        ),
        (
            format!("ip={}", sample.ip),
            expect(&|_, h| h.ip == sample.ip),
        ),
        (
            format!("idc={idc}"),
            expect(&|_, h| h.network.as_ref().unwrap().idc.as_deref() == Some(idc.as_str())),
        ),
        (
            format!("location={location}"),
            expect(&|_, h| {
                h.network.as_ref().unwrap().location.as_deref() == Some(location.as_str())
            }),
        ),
        (
            format!("git_version={version}&git_commit={commit}"),
            expect(&|_, h| {
                let b = h.build.as_ref().unwrap();
                b.git_version == version && b.git_commit.as_deref() == Some(commit.as_str())
            }),
        ),
        ("type=super".into(), expect(&|_, h| h.r#type == 1)),
        (
            format!("type=super&idc={idc}&scheduler_cluster_id=2"),
            expect(&|c, h| {
                c == 2
                    && h.r#type == 1
                    && h.network.as_ref().unwrap().idc.as_deref() == Some(idc.as_str())
            }),
        ),
        (
            format!("port={}", sample.port),
            expect(&|_, h| h.port == sample.port),
        ),
        ("port=1".into(), BTreeSet::new()),
        ("os=linux".into(), expect(&|_, h| h.os == "linux")),
        ("scheduler_cluster_id=2".into(), expect(&|c, _| c == 2)),
        ("scheduler_cluster_id=99".into(), BTreeSet::new()),
        ("state=active".into(), expect(&|_, _| true)),
        ("state=inactive".into(), BTreeSet::new()),
        // Zero values filter nothing, as in gorm.
        (
            "idc=&port=0&scheduler_cluster_id=0".into(),
            expect(&|_, _| true),
        ),
        ("host_name=no-such-host".into(), BTreeSet::new()),
    ];
    for (filter, wanted) in cases {
        let got = names(&peers(&env, &format!("{all}&{filter}")).await);
        assert_eq!(got, wanted, "{filter}");
    }
    assert!(
        !expect(&|_, h| h.r#type == 1).is_empty()
            && expect(&|_, h| h.r#type == 1).len() < hosts.len(),
        "the type filter really narrows"
    );
    env.stop().await;
}

#[tokio::test]
async fn pages_links_and_bad_input_as_the_manager_answers_them() {
    let env = TestEnv::start(small_sim(), |_| {}).await;
    let in_cluster = env.sim.hosts(1).len() as u64;
    assert_eq!(in_cluster, 60);

    // Default page size 10; pages cover the list once, in order.
    assert_eq!(peers(&env, "").await.len(), 10);
    let ids = |peers: Vec<Value>| -> Vec<u64> {
        peers.iter().map(|p| p["id"].as_u64().unwrap()).collect()
    };
    let whole = ids(peers(&env, "scheduler_cluster_id=1&per_page=1000").await);
    let mut paged = Vec::new();
    for page in 1..=9 {
        paged.extend(ids(peers(
            &env,
            &format!("scheduler_cluster_id=1&per_page=7&page={page}"),
        )
        .await));
    }
    assert_eq!(paged, whole);
    assert_eq!(
        peers(&env, "scheduler_cluster_id=1&per_page=7&page=10").await,
        Vec::<Value>::new()
    );

    // The Link header: the request's own URL, page and per_page replaced,
    // keys sorted; no other pagination header.
    let answer = get(
        &env,
        "/api/v1/peers?scheduler_cluster_id=1&per_page=7&page=2",
    )
    .await;
    let q = |page: u64| format!("</api/v1/peers?page={page}&per_page=7&scheduler_cluster_id=1>");
    assert_eq!(
        answer.header("link").unwrap(),
        format!(
            "{};rel=prev,{};rel=next,{};rel=first,{};rel=last",
            q(1),
            q(3),
            q(1),
            q(9)
        )
    );
    let answer = get(
        &env,
        "/api/v1/peers?scheduler_cluster_id=1&per_page=7&page=9",
    )
    .await;
    assert!(
        answer
            .header("link")
            .unwrap()
            .contains(&format!("{};rel=next", q(9)))
    );
    for header in ["x-total-count", "x-total", "x-total-pages"] {
        assert_eq!(answer.header(header), None, "{header}");
    }
    // The manager allows up to 10,000,000 a page (the console asks that).
    assert_eq!(peers(&env, "per_page=100000").await.len(), 120);

    // Input that does not bind: 422 with gin's message under `errors`.
    for (query, says) in [
        (
            "page=abc",
            r#"strconv.ParseInt: parsing "abc": invalid syntax"#,
        ),
        (
            "per_page=10000001",
            "Key: 'GetPeersQuery.PerPage' Error:Field validation for 'PerPage' failed on the 'lte' tag",
        ),
        (
            "page=-1",
            "Key: 'GetPeersQuery.Page' Error:Field validation for 'Page' failed on the 'gte' tag",
        ),
        (
            "state=up",
            "Key: 'GetPeersQuery.State' Error:Field validation for 'State' failed on the 'oneof' tag",
        ),
        // The manager's binding takes `super` alone (`oneof=super`).
        (
            "type=normal",
            "Key: 'GetPeersQuery.Type' Error:Field validation for 'Type' failed on the 'oneof' tag",
        ),
        (
            "type=strong",
            "Key: 'GetPeersQuery.Type' Error:Field validation for 'Type' failed on the 'oneof' tag",
        ),
        (
            "scheduler_cluster_id=one",
            r#"strconv.ParseUint: parsing "one": invalid syntax"#,
        ),
    ] {
        let answer = get(&env, &format!("/api/v1/peers?{query}")).await;
        assert_eq!(
            (answer.status, answer.json()),
            (422, json!({ "errors": says })),
            "{query}"
        );
    }
    let answer = get(&env, "/api/v1/peers/abc").await;
    assert_eq!(
        (answer.status, answer.json()),
        (
            422,
            json!({ "errors": r#"strconv.ParseUint: parsing "abc": invalid syntax"# })
        )
    );
    let answer = get(&env, "/api/v1/peers/0").await;
    assert_eq!(answer.status, 422, "{}", answer.text);
    let known: BTreeSet<u64> = peers(&env, "per_page=1000")
        .await
        .iter()
        .map(|p| p["id"].as_u64().unwrap())
        .collect();
    let unknown = (1..).find(|id| !known.contains(id)).unwrap();
    let answer = get(&env, &format!("/api/v1/peers/{unknown}")).await;
    assert_eq!(
        (answer.status, answer.json()),
        (404, json!({ "message": "record not found" }))
    );
    let answer = get(&env, "/api/v1/peers/99999999999999999999999").await;
    assert_eq!(answer.status, 422, "{}", answer.text);

    // Jobs: only sync_peers is dfgraph's; the rest is refused, not faked.
    for body in [
        json!({ "type": "preheat", "args": {} }),
        json!({}),
        json!("sync_peers"),
    ] {
        let answer = console(&env, "POST", "/api/v1/jobs", None, Some(body.clone())).await;
        assert_eq!(answer.status, 422, "{body}: {}", answer.text);
        assert!(answer.json()["errors"].is_string(), "{}", answer.text);
    }
    let answer = console(&env, "POST", "/api/v1/jobs", None, None).await;
    assert_eq!(answer.status, 422, "empty body: {}", answer.text);
    let answer = console(
        &env,
        "POST",
        "/api/v1/jobs",
        None,
        Some(json!({ "type": "sync_peers", "scheduler_cluster_ids": "one" })),
    )
    .await;
    assert_eq!(answer.status, 422, "{}", answer.text);
    env.stop().await;
}

fn secured(config: &mut Config) {
    config.auth.anonymous = Anonymous::Off;
    config.auth.manager = Some(ManagerAuth {
        jwt_key: Some(MANAGER_KEY.into()),
        users: BTreeMap::from([
            ("1".to_owned(), Role::Admin),
            ("3".to_owned(), Role::Viewer),
        ]),
        default_role: Role::Viewer,
        ..ManagerAuth::default()
    });
    config.auth.tokens = vec![StaticToken {
        name: "ci".into(),
        sha256: hash_token(SCRIPT_TOKEN),
        role: Role::Viewer,
    }];
}

#[tokio::test]
async fn access_is_controlled_as_for_graphql_with_the_managers_refusal() {
    let env = TestEnv::start(small_sim(), secured).await;
    let hour = now() + 3600;
    let viewer = manager_token(2, hour, MANAGER_KEY);
    let expired = manager_token(2, now() - 600, MANAGER_KEY);
    let forged = manager_token(1, hour, "another key");
    let some_id = peer_id(1, &env.sim.hosts(1)[0].id);
    let sync = json!({ "type": "sync_peers" });

    // No credentials, or bad ones: gin-jwt's 401, nothing leaked.
    for (who, cookie) in [
        ("nobody", None),
        ("expired", Some(&expired)),
        ("forged", Some(&forged)),
    ] {
        for (method, path) in [
            ("GET", "/api/v1/peers".to_owned()),
            ("GET", format!("/api/v1/peers/{some_id}")),
            ("POST", "/api/v1/jobs".to_owned()),
        ] {
            let answer = console(
                &env,
                method,
                &path,
                cookie.map(String::as_str),
                Some(sync.clone()),
            )
            .await;
            assert_eq!(
                (answer.status, answer.json()),
                (401, json!({ "message": "Unauthorized" })),
                "{who} {method} {path}"
            );
        }
    }
    let answer = env
        .http
        .get(env.url("/api/v1/peers"))
        .bearer_auth("not-a-token")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 401);

    // The console's session cookie (a viewer), a script's static token.
    let answer = console(
        &env,
        "GET",
        "/api/v1/peers?per_page=1000",
        Some(&viewer),
        None,
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(answer.json().as_array().unwrap().len(), 120);
    let answer = env
        .http
        .get(env.url(&format!("/api/v1/peers/{some_id}")))
        .bearer_auth(SCRIPT_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let answer = console(
        &env,
        "POST",
        "/api/v1/jobs",
        Some(&viewer),
        Some(sync.clone()),
    )
    .await;
    assert_eq!((answer.status, answer.json()), (200, json!("OK")));
    // A viewer named so (as the manager's guest) may read, not run jobs:
    // the manager's RBAC refusal.
    let guest = manager_token(3, hour, MANAGER_KEY);
    let answer = console(&env, "GET", "/api/v1/peers", Some(&guest), None).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    let answer = console(
        &env,
        "POST",
        "/api/v1/jobs",
        Some(&guest),
        Some(sync.clone()),
    )
    .await;
    assert_eq!(
        (answer.status, answer.json()),
        (401, json!({ "message": "permission deny" }))
    );
    let answer = env
        .http
        .post(env.url("/api/v1/jobs"))
        .bearer_auth(SCRIPT_TOKEN)
        .json(&sync)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 401, "a viewer token may not sync");
    let admin = manager_token(1, hour, MANAGER_KEY);
    let answer = console(
        &env,
        "POST",
        "/api/v1/jobs",
        Some(&admin),
        Some(sync.clone()),
    )
    .await;
    assert_eq!((answer.status, answer.json()), (200, json!("OK")));

    // A page elsewhere cannot make the browser POST with the cookie.
    let answer = env
        .http
        .post(env.url("/api/v1/jobs"))
        .header("cookie", format!("jwt={viewer}"))
        .header("content-type", "text/plain")
        .body(sync.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 400, "CSRF refused");
    assert!(
        answer.json::<Value>().await.unwrap()["message"]
            .as_str()
            .unwrap()
            .contains("application/json")
    );
    env.stop().await;
}

#[tokio::test]
async fn a_host_joining_the_cluster_is_listed_within_one_watch_interval() {
    const INTERVAL: Duration = Duration::from_millis(300);
    let env = TestEnv::start(small_sim(), |config| {
        // Cached host lists stay fresh for 30 s: only the watcher, told
        // that someone reads hosts, makes a change show up sooner.
        config.cache.enabled = true;
        config.watch.interval = INTERVAL;
    })
    .await;
    let query = "host_name=joined&scheduler_cluster_id=1";
    assert!(peers(&env, query).await.is_empty());
    // The watcher's first poll of the list is its baseline.
    tokio::time::sleep(INTERVAL * 4).await;

    let mut host = env.sim.hosts(1).remove(0);
    host.id = "joining-host".into();
    host.hostname = "joined".into();
    env.sim.upsert_host(host);
    let joined = Instant::now();
    let listed = loop {
        let found = peers(&env, query).await;
        if !found.is_empty() {
            break found;
        }
        assert!(joined.elapsed() < INTERVAL * 10, "never listed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let lag = joined.elapsed();
    println!("host listed {lag:?} after joining (watch interval {INTERVAL:?})");
    // One interval until the next poll, plus the poll and the request.
    assert!(lag < INTERVAL * 2, "listed after {lag:?}");
    assert_eq!(listed[0]["id"], peer_id(1, "joining-host"));
    let answer = get(
        &env,
        &format!("/api/v1/peers/{}", peer_id(1, "joining-host")),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text);

    assert!(env.sim.remove_host(1, "joining-host"));
    let left = Instant::now();
    while !peers(&env, query).await.is_empty() {
        assert!(left.elapsed() < INTERVAL * 10, "never delisted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("host delisted {:?} after leaving", left.elapsed());
    env.stop().await;
}

#[tokio::test]
async fn a_sync_peers_job_makes_the_next_read_come_from_the_schedulers() {
    let env = TestEnv::start(small_sim(), |config| {
        // Cached lists stay fresh for 30 s and the watcher is slow: only
        // the sync makes a change visible now.
        config.cache.enabled = true;
        config.watch.interval = Duration::from_secs(60);
        config.watch.lease_ttl = Duration::from_secs(120);
    })
    .await;
    let query = "host_name=synced";
    assert!(peers(&env, query).await.is_empty());
    let mut host = env.sim.hosts(1).remove(0);
    host.id = "synced-host".into();
    host.hostname = "synced".into();
    env.sim.upsert_host(host);
    assert!(peers(&env, query).await.is_empty(), "served from the cache");

    let sync = |clusters: Value| {
        console(
            &env,
            "POST",
            "/api/v1/jobs",
            None,
            Some(json!({ "type": "sync_peers", "scheduler_cluster_ids": clusters })),
        )
    };
    let answer = sync(json!([2])).await;
    assert_eq!((answer.status, answer.json()), (200, json!("OK")));
    assert!(
        peers(&env, query).await.is_empty(),
        "cluster 1 was not asked to sync"
    );
    let answer = sync(json!([1])).await;
    assert_eq!((answer.status, answer.json()), (200, json!("OK")));
    let listed = peers(&env, query).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], peer_id(1, "synced-host"));
    env.stop().await;
}

#[tokio::test]
async fn an_unreachable_cluster_is_inactive_while_cached_and_missing_when_not() {
    // With a cache: the last list is served, its hosts inactive.
    let env = TestEnv::start(small_sim(), |config| {
        config.cache.enabled = true;
        config.cache.hosts.fresh = Duration::from_millis(200);
        config.cache.hosts.stale = Duration::from_secs(3600);
    })
    .await;
    let everyone = peers(&env, "per_page=1000").await;
    assert!(everyone.iter().all(|p| p["state"] == "active"));
    for scheduler in env.sim.schedulers() {
        if scheduler.cluster_id == 2 {
            env.sim
                .set_error(scheduler.addr, Some(tonic::Code::Unavailable));
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let answer = get(&env, "/api/v1/peers?per_page=1000").await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    let rows = answer.json().as_array().unwrap().clone();
    assert_eq!(rows.len(), everyone.len(), "the cached list still answers");
    for peer in &rows {
        let expected = if peer["scheduler_cluster_id"] == 2 {
            "inactive"
        } else {
            "active"
        };
        assert_eq!(peer["state"], expected, "{}", peer["host_name"]);
    }
    let age: u64 = answer
        .header("x-dfgraph-list-age")
        .expect("says how old the served list is")
        .parse()
        .unwrap();
    assert!(age < 60, "{age}");
    let inactive = peers(&env, "per_page=1000&state=inactive").await;
    assert_eq!(inactive.len(), env.sim.hosts(2).len());
    env.stop().await;

    // Without one: the other cluster answers, the header names the
    // missing one; with none left, the manager's 500 shape.
    let env = TestEnv::start(small_sim(), |_| {}).await;
    let in_two = peer_id(2, &env.sim.hosts(2)[0].id);
    for scheduler in env.sim.schedulers() {
        if scheduler.cluster_id == 2 {
            env.sim
                .set_error(scheduler.addr, Some(tonic::Code::Unavailable));
        }
    }
    let answer = get(&env, "/api/v1/peers?per_page=1000").await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(
        answer.json().as_array().unwrap().len(),
        env.sim.hosts(1).len()
    );
    assert_eq!(
        answer.header("x-dfgraph-unavailable-clusters").as_deref(),
        Some("2")
    );
    let answer = get(&env, &format!("/api/v1/peers/{in_two}")).await;
    assert_eq!(answer.status, 503, "maybe there, not 404: {}", answer.text);
    for scheduler in env.sim.schedulers() {
        env.sim
            .set_error(scheduler.addr, Some(tonic::Code::Unavailable));
    }
    // Past any stale window (no cache at all): the last list this replica
    // read of each cluster, as the manager's table would still show it,
    // inactive and marked with its age.
    let answer = get(&env, "/api/v1/peers?per_page=1000").await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    let rows = answer.json().as_array().unwrap().clone();
    assert_eq!(
        rows.len(),
        env.sim.hosts(1).len(),
        "cluster 2 was never read"
    );
    assert!(rows.iter().all(|p| p["state"] == "inactive"));
    assert!(answer.header("x-dfgraph-list-age").is_some());
    assert_eq!(
        answer.header("x-dfgraph-unavailable-clusters").as_deref(),
        Some("1,2")
    );
    env.stop().await;

    // Nothing ever read: the manager's 500 shape.
    let env = TestEnv::start(small_sim(), |_| {}).await;
    for scheduler in env.sim.schedulers() {
        env.sim
            .set_error(scheduler.addr, Some(tonic::Code::Unavailable));
    }
    let answer = get(&env, "/api/v1/peers").await;
    assert_eq!(answer.status, 500, "{}", answer.text);
    assert!(answer.json()["message"].is_string(), "{}", answer.text);
    env.stop().await;
}

/// The console's calls for a cluster's Peers tab, exactly as it makes
/// them (`src/components/clusters/peers/index.tsx` through `src/lib/api.ts`):
/// the list, the Refresh button's job, the list again. Returns the list.
async fn peers_tab(env: &TestEnv, cookie: Option<&str>, cluster: u64) -> Vec<Value> {
    let list = format!(
        "/api/v1/peers?page=1&per_page={CONSOLE_MAX_PAGE_SIZE}&scheduler_cluster_id={cluster}"
    );
    let answer = console(env, "GET", &list, cookie, None).await;
    assert_eq!(
        answer.status, 200,
        "the console accepts only 200: {}",
        answer.text
    );
    let before = answer.json().as_array().expect("a bare array").len();
    let refresh = json!({ "type": "sync_peers", "scheduler_cluster_ids": [cluster] });
    let answer = console(env, "POST", "/api/v1/jobs", cookie, Some(refresh)).await;
    assert_eq!(
        (answer.status, answer.json()),
        (200, json!("OK")),
        "Refresh"
    );
    let answer = console(env, "GET", &list, cookie, None).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    let rows = answer.json().as_array().unwrap().clone();
    assert_eq!(rows.len(), before);
    for row in &rows {
        // What the page reads of each row.
        assert!(row["git_version"].is_string() && row["git_commit"].is_string());
        assert_eq!(row["state"], "active");
        assert_eq!(row["scheduler_cluster_id"], cluster);
    }
    rows
}

fn hour() -> u64 {
    now() + 3600
}

#[tokio::test]
async fn the_demo_serves_the_console_whatever_session_cookie_it_sends() {
    // No [auth] at all: the console's `jwt` cookie is the manager's, not a
    // credential dfgraph can judge, and is left unread.
    let env = TestEnv::start(small_sim(), |_| {}).await;
    let cookie = manager_token(1, hour(), "some manager's key");
    let rows = peers_tab(&env, Some(&cookie), 1).await;
    assert_eq!(rows.len(), env.sim.hosts(1).len());
    let expired = manager_token(1, now() - 600, "some manager's key");
    assert_eq!(
        peers_tab(&env, Some(&expired), 2).await.len(),
        env.sim.hosts(2).len()
    );

    // A bearer token is addressed to dfgraph: a bad one is still refused.
    let answer = env
        .http
        .get(env.url("/api/v1/peers"))
        .bearer_auth(&cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 401);

    // The manager's answers to a sync it cannot run.
    let sync = |ids: Value| {
        console(
            &env,
            "POST",
            "/api/v1/jobs",
            Some(&cookie),
            Some(json!({ "type": "sync_peers", "scheduler_cluster_ids": ids })),
        )
    };
    let answer = sync(json!([1, 99])).await;
    assert_eq!(
        (answer.status, answer.json()),
        (
            404,
            json!({ "message": "scheduler cluster id 99: record not found" })
        )
    );
    assert_eq!(sync(json!([])).await.status, 200, "every cluster");
    env.stop().await;
}

#[tokio::test]
async fn with_the_managers_key_a_console_session_is_a_viewer() {
    // Only the key, as README says: no user list, no default role.
    let env = TestEnv::start(small_sim(), |config| {
        config.auth.manager = Some(ManagerAuth {
            jwt_key: Some(MANAGER_KEY.into()),
            ..ManagerAuth::default()
        });
    })
    .await;
    let session = manager_token(42, hour(), MANAGER_KEY);
    assert_eq!(peers_tab(&env, Some(&session), 1).await.len(), 60);
    // GraphQL agrees: a viewer.
    let answer = env
        .http
        .post(env.url("/graphql"))
        .header("cookie", format!("jwt={session}"))
        .json(&json!({ "query": "{ clusters { id } }" }))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);

    // The manager's key judges the cookie now: a bad one is refused.
    for bad in [
        manager_token(42, now() - 600, MANAGER_KEY),
        manager_token(42, hour(), "another key"),
    ] {
        let answer = console(&env, "GET", "/api/v1/peers", Some(&bad), None).await;
        assert_eq!(
            (answer.status, answer.json()),
            (401, json!({ "message": "Unauthorized" }))
        );
    }
    env.stop().await;
}

#[tokio::test]
async fn a_console_on_a_listed_origin_reads_the_link_header_with_its_cookie() {
    const ORIGIN: &str = "http://console.example.com";
    let env = TestEnv::start(small_sim(), |config| {
        config.browser.cors_allowed_origins = vec![ORIGIN.into()];
        config.auth.manager = Some(ManagerAuth {
            jwt_key: Some(MANAGER_KEY.into()),
            ..ManagerAuth::default()
        });
    })
    .await;
    let session = manager_token(2, hour(), MANAGER_KEY);
    // The browser's preflight of the console's GET (it sends
    // Content-Type: application/json) and POST.
    for method in ["GET", "POST"] {
        let answer = env
            .http
            .request(reqwest::Method::OPTIONS, env.url("/api/v1/peers"))
            .header("origin", ORIGIN)
            .header("access-control-request-method", method)
            .header("access-control-request-headers", "content-type")
            .send()
            .await
            .unwrap();
        assert!(
            answer.status().is_success(),
            "{method}: {}",
            answer.status()
        );
        let h = answer.headers();
        assert_eq!(h["access-control-allow-origin"], ORIGIN);
        assert_eq!(h["access-control-allow-credentials"], "true");
        assert!(
            h["access-control-allow-methods"]
                .to_str()
                .unwrap()
                .contains(method)
        );
        assert!(
            h["access-control-allow-headers"]
                .to_str()
                .unwrap()
                .contains("content-type")
        );
    }
    let answer = env
        .http
        .get(env.url("/api/v1/peers?page=1&per_page=10&scheduler_cluster_id=1"))
        .header("origin", ORIGIN)
        .header("content-type", "application/json")
        .header("cookie", format!("jwt={session}"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let h = answer.headers();
    assert_eq!(h["access-control-allow-origin"], ORIGIN);
    assert_eq!(h["access-control-allow-credentials"], "true");
    let exposed = h["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    for name in ["link", "location", "authorization"] {
        assert!(exposed.contains(name), "{name} in {exposed}");
    }
    // What the console's `parse-link-header` needs: `last` with a page.
    let link = h["link"].to_str().unwrap();
    assert!(
        link.contains("rel=last") && link.contains("page=6"),
        "{link}"
    );

    // Another origin gets no CORS headers: the browser keeps the answer
    // from its page.
    let answer = env
        .http
        .get(env.url("/api/v1/peers"))
        .header("origin", "http://elsewhere.example")
        .header("cookie", format!("jwt={session}"))
        .send()
        .await
        .unwrap();
    assert!(
        answer
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    env.stop().await;
}

#[tokio::test]
async fn a_rate_limited_console_reads_the_managers_message() {
    let env = TestEnv::start(small_sim(), |config| {
        config.rate_limit.per_second = Some(1);
        config.rate_limit.burst = Some(1);
    })
    .await;
    assert_eq!(get(&env, "/api/v1/peers").await.status, 200);
    let answer = get(&env, "/api/v1/peers").await;
    assert_eq!(answer.status, 429);
    assert!(answer.header("retry-after").is_some());
    let says = answer.json()["message"].as_str().unwrap().to_owned();
    assert!(says.starts_with("rate limit exceeded"), "{says}");
    env.stop().await;
}

#[tokio::test]
async fn as_the_managers_front_door_the_console_gets_everything_through_dfgraph() {
    let manager = ManagerStandIn::start(MANAGER_KEY).await;
    let manager_url = manager.url();
    let env = TestEnv::start(small_sim(), |config| {
        config.manager_api = Some(manager_url);
        config.auth.manager = Some(ManagerAuth {
            jwt_key: Some(MANAGER_KEY.into()),
            ..ManagerAuth::default()
        });
    })
    .await;
    // A browser's view: redirects are the page's to follow.
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let root = manager_token(ROOT_USER, hour(), MANAGER_KEY);
    let guest = manager_token(2, hour(), MANAGER_KEY);

    // The console's own files come from the manager; dfgraph's pages
    // moved aside.
    let page = browser.get(env.url("/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.text().await.unwrap(), MANAGER_PAGE);
    let script = browser
        .get(env.url("/static/js/main.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        script.bytes().await.unwrap().len(),
        3 * 1024 * 1024,
        "streamed whole"
    );
    for ours in ["/dfgraph/", "/graphiql"] {
        let answer = browser.get(env.url(ours)).send().await.unwrap();
        assert_eq!(answer.status(), 200, "{ours}");
        assert_ne!(answer.text().await.unwrap(), MANAGER_PAGE, "{ours}");
    }
    // The manager's answer to a path nobody serves: its 301, not followed.
    let moved = browser.get(env.url("/clusters/1")).send().await.unwrap();
    assert_eq!(moved.status(), 301);
    assert_eq!(moved.headers()["location"], "/");

    // What the Peers tab calls to render, with the session cookie.
    for path in [
        "/api/v1/users/2",
        "/api/v1/users/2/roles",
        "/api/v1/clusters/1",
    ] {
        let answer = console(&env, "GET", path, Some(&guest), None).await;
        assert_eq!(answer.status, 200, "{path}: {}", answer.text);
        assert_eq!(
            answer.header("access-control-allow-origin"),
            None,
            "the manager's CORS stays behind"
        );
    }
    let answer = console(&env, "GET", "/api/v1/users/2", None, None).await;
    assert_eq!(
        (answer.status, answer.json()),
        (401, json!({ "message": "Unauthorized" })),
        "the manager's own refusal"
    );
    // Method, query, cookies, body and the manager's status pass intact.
    let answer = browser
        .patch(env.url("/api/v1/users/2?lang=en&x=1"))
        .header("cookie", format!("jwt={guest}; theme=dark"))
        .header("content-type", "application/json")
        .header("x-forwarded-for", "10.1.2.3")
        .body(r#"{"bio":"hi"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 202);
    assert_eq!(answer.headers()["x-manager"], "1");
    let seen: Value = answer.json().await.unwrap();
    assert_eq!(seen["query"], "lang=en&x=1");
    assert_eq!(seen["cookie"], format!("jwt={guest}; theme=dark"));
    assert_eq!(seen["body"], r#"{"bio":"hi"}"#);
    assert_eq!(seen["content_type"], "application/json");
    assert_eq!(seen["host"], manager.addr.to_string());
    assert_eq!(
        seen["x_forwarded_for"], "127.0.0.1",
        "a client's own X-Forwarded-For is not believed"
    );
    assert_eq!(seen["x_forwarded_host"], env.gateway.addr.to_string());
    assert_eq!(seen["x_forwarded_proto"], "http");

    // The Peers tab: live rows from dfgraph, each with the manager's own
    // description of its cluster (asked once, then kept).
    let rows = peers_tab(&env, Some(&root), 1).await;
    assert_eq!(rows.len(), 60);
    let cluster = &rows[0]["scheduler_cluster"];
    assert_eq!(cluster["name"], "cluster-1-from-the-manager");
    assert_eq!(cluster["config"]["candidate_parent_limit"], 4);
    assert_eq!(cluster["client_config"]["load_limit"], 200);
    assert_eq!(cluster["created_at"], "2024-03-01T10:00:00Z");
    assert_eq!(cluster["is_default"], true);
    assert_eq!(
        cluster["seed_peer_clusters"],
        Value::Null,
        "as a peer's preload"
    );
    assert_eq!(manager.count("GET /api/v1/scheduler-clusters/1"), 1);
    assert_eq!(manager.count("GET /api/v1/peers"), 0, "dfgraph answered");

    // Roles from the manager's RBAC: root runs jobs, a guest is refused.
    let refresh = json!({ "type": "sync_peers", "scheduler_cluster_ids": [1] });
    let answer = console(&env, "POST", "/api/v1/jobs", Some(&guest), Some(refresh)).await;
    assert_eq!(
        (answer.status, answer.json()),
        (401, json!({ "message": "permission deny" }))
    );
    let roles_asked = manager.count("GET /api/v1/users/1/roles");
    assert_eq!(roles_asked, 1, "asked once for root, then kept");
    // Other jobs, and the manager's other methods on dfgraph's paths,
    // are the manager's.
    let preheat = json!({ "type": "preheat", "args": { "url": "http://a/b" } });
    let answer = console(
        &env,
        "POST",
        "/api/v1/jobs",
        Some(&root),
        Some(preheat.clone()),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(answer.json()["id"], 7);
    let answer = console(&env, "POST", "/api/v1/jobs", Some(&guest), Some(preheat)).await;
    assert_eq!(
        (answer.status, answer.json()["message"].clone()),
        (401, json!("permission deny"))
    );
    let answer = console(&env, "GET", "/api/v1/jobs?page=1", Some(&guest), None).await;
    assert_eq!((answer.status, answer.json()), (200, json!([])));
    // A cross-site form riding the console's cookie is refused before
    // the manager sees it; the console's own writes send JSON.
    let answer = browser
        .post(env.url("/api/v1/users/2/reset_password"))
        .header("cookie", format!("jwt={root}"))
        .header("content-type", "text/plain")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 400);
    assert!(answer.json::<Value>().await.unwrap()["message"].is_string());
    assert_eq!(manager.count("POST /api/v1/users/2/reset_password"), 0);
    let answer = browser
        .delete(env.url("/api/v1/peers/5"))
        .header("cookie", format!("jwt={root}"))
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(manager.count("DELETE /api/v1/peers/5"), 1);

    // The manager stopped: its paths say so in its shape; peers go on.
    manager.stop().await;
    let answer = console(&env, "GET", "/api/v1/users/2", Some(&guest), None).await;
    assert_eq!(answer.status, 502, "{}", answer.text);
    assert_eq!(
        answer.header("content-type").as_deref(),
        Some("application/json; charset=utf-8")
    );
    let says = answer.json()["message"].as_str().unwrap().to_owned();
    assert!(
        says.contains("manager") && says.contains("unreachable"),
        "{says}"
    );
    let answer = browser.get(env.url("/")).send().await.unwrap();
    assert_eq!(answer.status(), 502);
    let rows = peers_tab(&env, Some(&root), 2).await;
    assert_eq!(rows.len(), env.sim.hosts(2).len());
    assert_eq!(
        rows[0]["scheduler_cluster"]["name"], "scheduler-cluster-2",
        "not described by a manager that is down"
    );
    env.stop().await;
}

#[tokio::test]
async fn a_manager_that_cannot_tell_a_users_roles_makes_no_admin() {
    // default_role admin is for a deployment without the manager's RBAC;
    // with it, a refusal or a failure of the manager must not grant it.
    // This stand-in signs with another key, so it refuses dfgraph's
    // sessions (401), as a manager refuses a user it does not know.
    let manager = ManagerStandIn::start("another manager's key").await;
    let manager_url = manager.url();
    let env = TestEnv::start(small_sim(), |config| {
        config.enable_mutations = true;
        config.manager_api = Some(manager_url);
        config.auth.manager = Some(ManagerAuth {
            jwt_key: Some(MANAGER_KEY.into()),
            default_role: Role::Admin,
            ..ManagerAuth::default()
        });
    })
    .await;
    // Refused by the manager: a known viewer, refused sync_peers as the
    // manager refuses it.
    let refused = manager_token(2, hour(), MANAGER_KEY);
    let refresh = json!({ "type": "sync_peers", "scheduler_cluster_ids": [1] });
    let answer = console(&env, "POST", "/api/v1/jobs", Some(&refused), Some(refresh)).await;
    assert_eq!(
        (answer.status, answer.json()),
        (401, json!({ "message": "permission deny" }))
    );
    assert_eq!(manager.count("GET /api/v1/users/2/roles"), 1);

    // The manager down: a viewer, not default_role's admin.
    manager.stop().await;
    let victim = env.sim.hosts(1)[0].id.clone();
    let delete = json!({
        "query": "mutation($id: ID!) { deleteHost(id: $id, schedulerClusterId: \"1\") }",
        "variables": { "id": victim },
    });
    let unknown = manager_token(3, hour(), MANAGER_KEY);
    let answer = env
        .http
        .post(env.url("/graphql"))
        .bearer_auth(&unknown)
        .json(&delete)
        .send()
        .await
        .unwrap();
    let body: Value = answer.json().await.unwrap();
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "FORBIDDEN",
        "{body}"
    );
    assert!(
        env.sim.hosts(1).iter().any(|h| h.id == victim),
        "nothing deleted"
    );
    env.stop().await;
}

#[tokio::test]
async fn replicas_sharing_redis_agree_on_when_each_host_was_first_seen() {
    let redis = crate::support::redis::RedisServer::start();
    let sim = dfgraph_sim::SimCluster::start(small_sim()).await.unwrap();
    let replica = || {
        let mut config = crate::support::gateway_config(&sim);
        config.redis = Some(redis.url());
        dfgraph::gateway::Gateway::start(config)
    };
    let a = replica().await.unwrap();
    let http = reqwest::Client::new();
    let created = |gateway: &dfgraph::gateway::Gateway| {
        let url = format!("{}/api/v1/peers?per_page=1000", gateway.url());
        let http = http.clone();
        async move {
            let rows: Vec<Value> = http.get(url).send().await.unwrap().json().await.unwrap();
            rows.iter()
                .map(|p| {
                    (
                        p["id"].as_u64().unwrap(),
                        p["created_at"].as_str().unwrap().to_owned(),
                    )
                })
                .collect::<BTreeMap<u64, String>>()
        }
    };
    let first = created(&a).await;
    assert_eq!(first.len(), 120);
    // A replica that starts later says the same, not "now".
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let b = replica().await.unwrap();
    assert_eq!(created(&b).await, first);
    assert_eq!(created(&a).await, first, "and so does the first, again");
    // A host that joins is first seen once, for both.
    let mut host = sim.hosts(1).remove(0);
    host.id = "late-host".into();
    sim.upsert_host(host);
    let on_b = created(&b).await;
    let late = peer_id(1, "late-host");
    let at = |text: &str| chrono::DateTime::parse_from_rfc3339(text).unwrap();
    let earliest_late = first.values().map(|t| at(t)).max().unwrap();
    assert!(at(&on_b[&late]) > earliest_late, "seen after the others");
    assert_eq!(created(&a).await[&late], on_b[&late]);
    a.shutdown().await;
    b.shutdown().await;
    sim.shutdown().await;
}

/// A churning cluster does not grow the shared first-sighting hash without
/// end: once departed hosts outnumber the current list (plus a slack),
/// they are forgotten, and the hosts still listed keep their first sighting.
#[tokio::test]
async fn first_sightings_of_departed_hosts_are_forgotten() {
    let redis = crate::support::redis::RedisServer::start();
    let sim = dfgraph_sim::SimCluster::start(small_sim()).await.unwrap();
    let key = "dfgraph:v1:first-seen:{1}";
    let mut conn = redis.conn();
    let departed: Vec<(String, i64)> = (0..3000).map(|i| (format!("gone-{i}"), 1)).collect();
    redis::cmd("HSET")
        .arg(key)
        .arg(&departed)
        .query::<()>(&mut conn)
        .unwrap();
    let mut config = crate::support::gateway_config(&sim);
    config.redis = Some(redis.url());
    let gateway = dfgraph::gateway::Gateway::start(config).await.unwrap();
    let url = format!(
        "{}/api/v1/peers?per_page=1000&scheduler_cluster_id=1",
        gateway.url()
    );
    let listed = |rows: &Vec<Value>| {
        rows.iter()
            .map(|p| {
                (
                    p["id"].as_u64().unwrap(),
                    p["created_at"].as_str().unwrap().to_owned(),
                )
            })
            .collect::<BTreeMap<u64, String>>()
    };
    let rows: Vec<Value> = reqwest::get(&url).await.unwrap().json().await.unwrap();
    let first = listed(&rows);
    let current = sim.hosts(1).len();
    assert_eq!(first.len(), current);

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let remembered: usize = redis::cmd("HLEN").arg(key).query(&mut conn).unwrap();
        if remembered == current {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{remembered} sightings kept, {current} hosts listed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rows: Vec<Value> = reqwest::get(&url).await.unwrap().json().await.unwrap();
    assert_eq!(
        listed(&rows),
        first,
        "current hosts keep their first sighting"
    );
    gateway.shutdown().await;
    sim.shutdown().await;
}
