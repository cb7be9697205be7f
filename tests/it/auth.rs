//! Access control as a console, a script and an attacker's page meet it:
//! real tokens (HS256 signed the way the Dragonfly manager signs console
//! sessions, ES256 from an identity provider whose JWKS this test serves
//! over HTTP, a static API token) against every endpoint, over real HTTP
//! and websockets, with mutations running against the simulator.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::manager::{manager_token, now};
use crate::support::ws::{Received, WsClient};
use crate::support::{TestEnv, error_codes, small_sim};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use dfgraph::auth::{Anonymous, ManagerAuth, OidcAuth, Role, StaticToken, hash_token};
use dfgraph::config::Config;
use dfgraph::gateway::Gateway;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const MANAGER_KEY: &str = "the manager's auth.jwt.key";
const ISSUER: &str = "https://idp.test";
const AUDIENCE: &str = "dfgraph";
const SCRIPT_TOKEN: &str = "dfgraph-ci-0123456789abcdef";
const ALLOWED_ORIGIN: &str = "https://console.example.com";

/// The identity provider of the test: one ES256 key, its JWKS served over
/// HTTP.
struct Idp {
    signing: EncodingKey,
    jwks_url: String,
}

impl Idp {
    async fn start() -> Idp {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let raw = pair.public_key_raw().to_vec();
        assert_eq!((raw.len(), raw[0]), (65, 4), "an uncompressed P-256 point");
        let jwks = json!({ "keys": [{
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": "test-1",
            "x": URL_SAFE_NO_PAD.encode(&raw[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&raw[33..65]),
        }]});
        let app = axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                let jwks = jwks.clone();
                async move { axum::Json(jwks) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Idp {
            signing: EncodingKey::from_ec_der(&pair.serialize_der()),
            jwks_url: format!("http://{addr}/jwks.json"),
        }
    }

    fn token(&self, sub: &str, role: Option<&str>, exp: u64) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("test-1".into());
        let mut claims = json!({ "sub": sub, "iss": ISSUER, "aud": AUDIENCE, "exp": exp });
        if let Some(role) = role {
            claims["dfgraph_role"] = json!(role);
        }
        encode(&header, &claims, &self.signing).unwrap()
    }
}

fn secured(config: &mut Config, idp: &Idp) {
    config.enable_mutations = true;
    config.auth.anonymous = Anonymous::Off;
    config.auth.manager = Some(ManagerAuth {
        jwt_key: Some(MANAGER_KEY.into()),
        users: BTreeMap::from([("1".to_owned(), Role::Admin)]),
        default_role: Role::Viewer,
        ..ManagerAuth::default()
    });
    config.auth.oidc = Some(OidcAuth {
        issuer: ISSUER.into(),
        audience: AUDIENCE.into(),
        jwks_url: Some(idp.jwks_url.clone()),
        ..OidcAuth::default()
    });
    config.auth.tokens = vec![StaticToken {
        name: "ci".into(),
        sha256: hash_token(SCRIPT_TOKEN),
        role: Role::Viewer,
    }];
    config.browser.cors_allowed_origins = vec![ALLOWED_ORIGIN.into()];
}

/// Every kind of caller the tests try.
struct Callers {
    admin: String,
    viewer: String,
    expired: String,
    bad_signature: String,
    oidc_admin: String,
    oidc_viewer: String,
    oidc_expired: String,
}

fn callers(idp: &Idp) -> Callers {
    let hour = now() + 3600;
    Callers {
        admin: manager_token(1, hour, MANAGER_KEY),
        viewer: manager_token(2, hour, MANAGER_KEY),
        expired: manager_token(1, now() - 600, MANAGER_KEY),
        bad_signature: manager_token(1, hour, "another key"),
        oidc_admin: idp.token("alice", Some("admin"), hour),
        oidc_viewer: idp.token("bob", Some("viewer"), hour),
        oidc_expired: idp.token("alice", Some("admin"), now() - 600),
    }
}

async fn post(env: &TestEnv, token: Option<&str>, body: Value) -> (u16, Value) {
    let mut request = env.http.post(env.url("/graphql")).json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn get(env: &TestEnv, token: Option<&str>, query: &str) -> (u16, Value) {
    let mut request = env
        .http
        .get(env.url("/graphql"))
        .header("apollo-require-preflight", "true")
        .query(&[("query", query)]);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

const READ: &str = "{ hostStats { total } }";

#[tokio::test]
async fn every_http_caller_gets_what_its_token_allows() {
    let idp = Idp::start().await;
    let env = TestEnv::start(small_sim(), |c| secured(c, &idp)).await;
    let who = callers(&idp);
    let hosts = env.sim.hosts(1).len() + env.sim.hosts(2).len();

    for (name, token) in [
        ("no token", None),
        ("bad signature", Some(who.bad_signature.as_str())),
        ("expired session", Some(who.expired.as_str())),
        ("expired OIDC", Some(who.oidc_expired.as_str())),
        ("garbage", Some("not-a-token")),
    ] {
        let (status, body) = post(&env, token, json!({ "query": READ })).await;
        assert_eq!(status, 401, "POST {name}: {body}");
        assert_eq!(error_codes(&body), ["UNAUTHENTICATED"], "POST {name}");
        let (status, body) = get(&env, token, READ).await;
        assert_eq!(status, 401, "GET {name}: {body}");
        assert!(body.get("data").is_none(), "GET {name} leaks no data");
    }
    let (_, body) = post(&env, Some(&who.expired), json!({ "query": READ })).await;
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("expired")
    );

    for (name, token) in [
        ("manager viewer", &who.viewer),
        ("manager admin", &who.admin),
        ("OIDC viewer", &who.oidc_viewer),
        ("OIDC admin", &who.oidc_admin),
        ("API token", &SCRIPT_TOKEN.to_owned()),
    ] {
        let (status, body) = post(&env, Some(token), json!({ "query": READ })).await;
        assert_eq!(
            (status, &body["data"]["hostStats"]["total"]),
            (200, &json!(hosts)),
            "POST {name}: {body}"
        );
        let (status, body) = get(&env, Some(token), READ).await;
        assert_eq!(
            (status, &body["data"]["hostStats"]["total"]),
            (200, &json!(hosts)),
            "GET {name}: {body}"
        );
    }

    // The manager's console sends its session as the `jwt` cookie.
    let response = env
        .http
        .post(env.url("/graphql"))
        .header("cookie", format!("jwt={}", who.viewer))
        .json(&json!({ "query": READ }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    // Viewers may not change the cluster; admins may, on the schedulers.
    let victim = env.sim.hosts(1)[0].id.clone();
    let delete = json!({
        "query": "mutation($id: ID!) { deleteHost(id: $id, schedulerClusterId: \"1\") }",
        "variables": { "id": victim },
    });
    for token in [&who.viewer, &who.oidc_viewer, &SCRIPT_TOKEN.to_owned()] {
        let (status, body) = post(&env, Some(token), delete.clone()).await;
        assert_eq!(status, 200);
        assert_eq!(error_codes(&body), ["FORBIDDEN"], "{body}");
    }
    assert!(
        env.sim.hosts(1).iter().any(|h| h.id == victim),
        "a viewer deleted nothing"
    );
    let (_, body) = post(&env, Some(&who.admin), delete.clone()).await;
    assert_eq!(body["data"]["deleteHost"], true, "{body}");
    assert!(
        env.sim.hosts(1).iter().all(|h| h.id != victim),
        "the admin's delete reached the schedulers"
    );
    let victim = env.sim.hosts(1)[0].id.clone();
    let delete = json!({
        "query": "mutation($id: ID!) { deleteHost(id: $id, schedulerClusterId: \"1\") }",
        "variables": { "id": victim },
    });
    let (_, body) = post(&env, Some(&who.oidc_admin), delete).await;
    assert_eq!(body["data"]["deleteHost"], true, "{body}");
    env.stop().await;
}

#[tokio::test]
async fn browsers_cannot_be_used_against_it_from_another_site() {
    let idp = Idp::start().await;
    let env = TestEnv::start(small_sim(), |c| secured(c, &idp)).await;
    let who = callers(&idp);

    // CORS: only the listed origin is told it may read the answer.
    for (origin, allowed) in [("https://evil.example", false), (ALLOWED_ORIGIN, true)] {
        let response = env
            .http
            .post(env.url("/graphql"))
            .header("origin", origin)
            .bearer_auth(&who.viewer)
            .json(&json!({ "query": READ }))
            .send()
            .await
            .unwrap();
        let acao = response
            .headers()
            .get("access-control-allow-origin")
            .cloned();
        assert_eq!(acao.is_some(), allowed, "{origin}: {acao:?}");
        let preflight = env
            .http
            .request(reqwest::Method::OPTIONS, env.url("/graphql"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type",
            )
            .send()
            .await
            .unwrap();
        assert_eq!(
            preflight
                .headers()
                .get("access-control-allow-origin")
                .is_some(),
            allowed,
            "preflight from {origin}"
        );
    }

    // CSRF: what a form or a plain fetch could send with the cookie.
    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ] {
        let response = env
            .http
            .post(env.url("/graphql"))
            .header("cookie", format!("jwt={}", who.admin))
            .header("content-type", content_type)
            .body(json!({ "query": READ }).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{content_type}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(error_codes(&body), ["CSRF_REFUSED"], "{content_type}");
    }
    let victim = env.sim.hosts(1)[0].id.clone();
    let mutation =
        format!("mutation {{ deleteHost(id: \"{victim}\", schedulerClusterId: \"1\") }}");
    let response = env
        .http
        .get(env.url("/graphql"))
        .header("cookie", format!("jwt={}", who.admin))
        .query(&[("query", mutation.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400, "a plain GET is refused");
    let response = env
        .http
        .get(env.url("/graphql"))
        .header("cookie", format!("jwt={}", who.admin))
        .header("apollo-require-preflight", "true")
        .query(&[("query", mutation.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405, "and mutations never run over GET");
    assert!(env.sim.hosts(1).iter().any(|h| h.id == victim));

    // Cross-site websocket hijacking: an unlisted page's upgrade is refused.
    let refused = ws_connect(
        &env,
        "graphql-transport-ws",
        &[("origin", "https://evil.example")],
    )
    .await;
    assert_eq!(refused.err(), Some(403));
    let allowed = ws_connect(&env, "graphql-transport-ws", &[("origin", ALLOWED_ORIGIN)]).await;
    assert!(allowed.is_ok());
    env.stop().await;
}

/// Opens `/graphql/ws` with extra upgrade headers; the HTTP status when
/// the upgrade is refused.
async fn ws_connect(
    env: &TestEnv,
    protocol: &str,
    headers: &[(&'static str, &str)],
) -> Result<WsClient, u16> {
    let url = format!(
        "{}/graphql/ws",
        env.gateway.url().replace("http://", "ws://")
    );
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("sec-websocket-protocol", protocol.parse().unwrap());
    for (name, value) in headers {
        request.headers_mut().insert(*name, value.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((socket, _)) => Ok(WsClient { socket }),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(response.status().as_u16())
        }
        Err(e) => panic!("websocket: {e}"),
    }
}

/// `connection_init` with `payload`, then what the server answered.
async fn init(
    env: &TestEnv,
    protocol: &str,
    upgrade: &[(&'static str, &str)],
    payload: Value,
) -> (WsClient, Received) {
    let mut client = ws_connect(env, protocol, upgrade).await.expect("upgrade");
    client
        .send(json!({ "type": "connection_init", "payload": payload }))
        .await;
    let answer = client.receive(Duration::from_secs(5)).await;
    (client, answer)
}

/// The next result message of operation `id` (not its `complete`).
async fn reply_to(client: &mut WsClient, id: &str) -> Value {
    loop {
        let message = client.message(Duration::from_secs(5)).await;
        if message["id"] == id && message["type"] != "complete" {
            return message;
        }
    }
}

#[tokio::test]
async fn websocket_callers_authenticate_before_the_ack() {
    let idp = Idp::start().await;
    let env = TestEnv::start(small_sim(), |c| secured(c, &idp)).await;
    let who = callers(&idp);
    for protocol in ["graphql-transport-ws", "graphql-ws"] {
        for (name, payload) in [
            ("no token", json!({})),
            (
                "bad signature",
                json!({ "Authorization": format!("Bearer {}", who.bad_signature) }),
            ),
            ("expired", json!({ "authorization": who.expired })),
            (
                "expired OIDC",
                json!({ "Authorization": format!("Bearer {}", who.oidc_expired) }),
            ),
        ] {
            let (_, answer) = init(&env, protocol, &[], payload).await;
            assert_eq!(answer, Received::Closed(Some(4403)), "{protocol} {name}");
        }
        // A bad token on the upgrade request is refused the same way.
        let bad = format!("Bearer {}", who.bad_signature);
        let (_, answer) = init(
            &env,
            protocol,
            &[("authorization", bad.as_str())],
            json!({}),
        )
        .await;
        assert_eq!(
            answer,
            Received::Closed(Some(4403)),
            "{protocol} bad upgrade token"
        );

        let viewer = format!("Bearer {}", who.viewer);
        let admin = format!("Bearer {}", who.admin);
        let cookie = format!("jwt={}", who.viewer);
        for (name, upgrade, payload) in [
            (
                "payload token",
                vec![],
                json!({ "Authorization": viewer.clone() }),
            ),
            (
                "upgrade header",
                vec![("authorization", viewer.as_str())],
                json!({}),
            ),
            (
                "OIDC token",
                vec![],
                json!({ "authorization": who.oidc_viewer.clone() }),
            ),
            (
                "session cookie",
                vec![("cookie", cookie.as_str())],
                json!({}),
            ),
        ] {
            let (mut client, answer) = init(&env, protocol, &upgrade, payload).await;
            let Received::Message(ack) = answer else {
                panic!("{protocol} {name}: {answer:?}")
            };
            assert_eq!(ack["type"], "connection_ack", "{protocol} {name}");
            let (start, data) = if protocol == "graphql-ws" {
                ("start", "data")
            } else {
                ("subscribe", "next")
            };
            client
                .send(json!({ "type": start, "id": "q", "payload": { "query": READ } }))
                .await;
            let reply = client.message(Duration::from_secs(5)).await;
            assert_eq!(reply["type"], data, "{reply}");
            assert!(
                reply["payload"]["data"]["hostStats"]["total"]
                    .as_u64()
                    .unwrap()
                    > 0
            );
            let victim = env.sim.hosts(2)[0].id.clone();
            client
                .send(json!({ "type": start, "id": "m", "payload": {
                    "query": "mutation($id: ID!) { deleteHost(id: $id, schedulerClusterId: \"2\") }",
                    "variables": { "id": victim } } }))
                .await;
            let reply = reply_to(&mut client, "m").await;
            // graphql-transport-ws says `error` with the errors as payload;
            // graphql-ws, `data` with `{data, errors}`.
            let errors = match &reply["payload"] {
                Value::Array(errors) => json!({ "errors": errors }),
                payload => payload.clone(),
            };
            assert_eq!(
                error_codes(&errors),
                ["FORBIDDEN"],
                "{protocol} {name}: {reply}"
            );
        }
        let (mut client, _) = init(&env, protocol, &[], json!({ "Authorization": admin })).await;
        let victim = env.sim.hosts(2)[0].id.clone();
        let start = if protocol == "graphql-ws" {
            "start"
        } else {
            "subscribe"
        };
        client
            .send(json!({ "type": start, "id": "m", "payload": {
                "query": "mutation($id: ID!) { deleteHost(id: $id, schedulerClusterId: \"2\") }",
                "variables": { "id": victim } } }))
            .await;
        let reply = reply_to(&mut client, "m").await;
        assert_eq!(
            reply["payload"]["data"]["deleteHost"], true,
            "{protocol}: {reply}"
        );
    }
    env.stop().await;
}

#[tokio::test]
async fn a_websocket_whose_token_expires_is_closed() {
    let idp = Idp::start().await;
    let env = TestEnv::start(small_sim(), |c| secured(c, &idp)).await;
    let short = manager_token(2, now() + 2, MANAGER_KEY);
    let (mut client, answer) = init(
        &env,
        "graphql-transport-ws",
        &[],
        json!({ "Authorization": short }),
    )
    .await;
    assert!(
        matches!(answer, Received::Message(ref m) if m["type"] == "connection_ack"),
        "{answer:?}"
    );
    client
        .subscribe("h", "subscription { hostEvents { kind } }", json!({}))
        .await;
    assert_eq!(client.close_code(Duration::from_secs(6)).await, Some(4403));
    env.stop().await;
}

#[tokio::test]
async fn anonymous_viewers_read_but_never_mutate_and_mutations_need_an_auth_method() {
    // The embedded demo's setting: anonymous viewers.
    let env = TestEnv::start(small_sim(), |c| {
        c.enable_mutations = true;
        c.auth.tokens = vec![StaticToken {
            name: "ops".into(),
            sha256: hash_token("ops-token"),
            role: Role::Admin,
        }];
    })
    .await;
    let (status, body) = post(&env, None, json!({ "query": READ })).await;
    assert_eq!(status, 200, "{body}");
    let victim = env.sim.hosts(1)[0].id.clone();
    let delete = json!({
        "query": "mutation($id: ID!) { deleteHost(id: $id, schedulerClusterId: \"1\") }",
        "variables": { "id": victim },
    });
    let (_, body) = post(&env, None, delete.clone()).await;
    assert_eq!(error_codes(&body), ["FORBIDDEN"]);
    let (_, body) = post(&env, Some("ops-token"), delete).await;
    assert_eq!(body["data"]["deleteHost"], true, "{body}");
    env.stop().await;

    let sim = dfgraph_sim::SimCluster::start(small_sim()).await.unwrap();
    let mut config = crate::support::gateway_config(&sim);
    config.enable_mutations = true;
    let refused = Gateway::start(config)
        .await
        .err()
        .expect("refused to start");
    assert!(
        refused.to_string().contains("enable_mutations"),
        "{refused}"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn introspection_and_suggestions_can_be_switched_off() {
    let env = TestEnv::start(small_sim(), |c| {
        c.graphql.introspection = false;
        c.graphql.field_suggestions = false;
    })
    .await;
    let (_, body) = post(
        &env,
        None,
        json!({ "query": "{ __schema { types { name } } }" }),
    )
    .await;
    assert!(
        body["data"]["__schema"].is_null(),
        "no schema for strangers: {body}"
    );
    let (_, body) = post(&env, None, json!({ "query": "{ hostStat { total } }" })).await;
    let message = body["errors"][0]["message"].as_str().unwrap_or("");
    assert!(!message.contains("Did you mean"), "{message}");
    env.stop().await;
    let env = TestEnv::start(small_sim(), |_| {}).await;
    let (_, body) = post(
        &env,
        None,
        json!({ "query": "{ __schema { types { name } } }" }),
    )
    .await;
    assert!(
        body["data"]["__schema"]["types"].is_array(),
        "introspection is on by default"
    );
    let (_, body) = post(&env, None, json!({ "query": "{ hostStat { total } }" })).await;
    let message = body["errors"][0]["message"].as_str().unwrap_or("");
    assert!(
        message.contains("Did you mean"),
        "suggestions are on by default: {message}"
    );
    env.stop().await;
}
