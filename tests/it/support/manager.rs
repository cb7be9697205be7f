//! A small stand-in for the Dragonfly manager's REST API, as the console
//! and dfgraph's front door call it: the console's page at `/`, users and
//! their RBAC roles (checking the caller's gin-jwt session as the manager
//! does), clusters, scheduler clusters, jobs, and the manager's `301 /`
//! for any other path. It records what reached it. Also the sessions
//! such a manager issues, for tests to present.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use jsonwebtoken::{DecodingKey, Validation, decode};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

/// Seconds since the Unix epoch, as JWT time claims count.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A console session as the manager issues it (gin-jwt: HS256, claims
/// `id`, `exp`, `orig_iat`), signed with `key`.
pub fn manager_token(user_id: u64, exp: u64, key: &str) -> String {
    let claims = json!({ "id": user_id, "exp": exp, "orig_iat": now() });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(key.as_bytes()),
    )
    .unwrap()
}

/// The manager's page, as a test recognises it.
pub const MANAGER_PAGE: &str =
    "<!doctype html><title>Dragonfly</title><div id=root>manager console</div>";

/// The manager's root user (RBAC `root`); every other user is a `guest`.
pub const ROOT_USER: u64 = 1;

/// A running stand-in.
pub struct ManagerStandIn {
    pub addr: SocketAddr,
    /// `METHOD path` of every request that reached it, in order.
    pub seen: Arc<Mutex<Vec<String>>>,
    stop: tokio::sync::oneshot::Sender<()>,
    server: JoinHandle<()>,
}

#[derive(Clone)]
struct Stand {
    key: Arc<String>,
    seen: Arc<Mutex<Vec<String>>>,
}

impl ManagerStandIn {
    /// Serves on a free loopback port; sessions are checked against `key`
    /// (the manager's `auth.jwt.key`).
    pub async fn start(key: &str) -> ManagerStandIn {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stand = Stand {
            key: Arc::new(key.to_owned()),
            seen: seen.clone(),
        };
        let app = Router::new()
            .route("/", get(page))
            .route("/static/js/main.js", get(script))
            .route("/api/v1/users/{id}", get(user).patch(echo))
            .route("/api/v1/users/{id}/roles", get(roles))
            .route("/api/v1/clusters/{id}", get(cluster))
            .route("/api/v1/scheduler-clusters/{id}", get(scheduler_cluster))
            .route("/api/v1/jobs", get(jobs).post(create_job))
            .route("/api/v1/peers/{id}", axum::routing::delete(delete_peer))
            .fallback(moved)
            .layer(axum::middleware::from_fn_with_state(stand.clone(), record))
            .with_state(stand);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        ManagerStandIn {
            addr,
            seen,
            stop,
            server,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How many requests to `METHOD path` reached it.
    pub fn count(&self, what: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| *s == what)
            .count()
    }

    /// Stops it: kept-alive connections close, its port refuses new ones.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.server.await;
    }
}

async fn record(
    State(stand): State<Stand>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    stand
        .seen
        .lock()
        .unwrap()
        .push(format!("{} {}", request.method(), request.uri().path()));
    let mut response = next.run(request).await;
    // The manager's CORS reflects any origin; dfgraph must not pass it on.
    response
        .headers_mut()
        .insert("access-control-allow-origin", "*".parse().unwrap());
    response
}

/// The session's user id, as gin-jwt finds it: cookie `jwt`, then
/// `Authorization: Bearer`, then `?token=`.
fn session(stand: &Stand, headers: &HeaderMap, query: Option<&str>) -> Option<u64> {
    let cookie = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|p| p.trim().strip_prefix("jwt="))
        .map(str::to_owned)
        .next();
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let query = query.and_then(|q| q.split('&').find_map(|p| p.strip_prefix("token=")));
    let token = cookie.or(bearer).or(query.map(str::to_owned))?;
    let claims = decode::<Value>(
        &token,
        &DecodingKey::from_secret(stand.key.as_bytes()),
        &Validation::new(jsonwebtoken::Algorithm::HS256),
    )
    .ok()?;
    claims.claims["id"].as_u64()
}

/// gin-jwt's refusal.
fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        axum::Json(json!({ "message": "Unauthorized" })),
    )
        .into_response()
}

fn role_of(user: u64) -> &'static str {
    if user == ROOT_USER { "root" } else { "guest" }
}

async fn page() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        MANAGER_PAGE,
    )
        .into_response()
}

/// A large file, so a test sees the whole of it pass.
async fn script() -> Response {
    let body = "x".repeat(3 * 1024 * 1024);
    ([(header::CONTENT_TYPE, "application/javascript")], body).into_response()
}

async fn user(
    State(stand): State<Stand>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    Path(id): Path<u64>,
) -> Response {
    if session(&stand, &headers, query.as_deref()).is_none() {
        return unauthorized();
    }
    axum::Json(json!({ "id": id, "name": role_of(id), "state": "enable" })).into_response()
}

async fn roles(
    State(stand): State<Stand>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    Path(id): Path<u64>,
) -> Response {
    match session(&stand, &headers, query.as_deref()) {
        // The RBAC middleware: a guest may read its own roles, as anyone's.
        Some(_) => axum::Json(json!([role_of(id)])).into_response(),
        None => unauthorized(),
    }
}

async fn cluster(State(stand): State<Stand>, headers: HeaderMap, Path(id): Path<u64>) -> Response {
    if session(&stand, &headers, None).is_none() {
        return unauthorized();
    }
    axum::Json(json!({ "id": id, "name": format!("cluster-{id}"), "scheduler_cluster_id": id, "seed_peer_cluster_id": id }))
        .into_response()
}

/// `models.SchedulerCluster` with its seed peer clusters preloaded.
async fn scheduler_cluster(
    State(stand): State<Stand>,
    headers: HeaderMap,
    Path(id): Path<u64>,
) -> Response {
    if session(&stand, &headers, None).is_none() {
        return unauthorized();
    }
    if id > 2 {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(json!({ "message": "record not found" })),
        )
            .into_response();
    }
    axum::Json(json!({
        "id": id,
        "created_at": "2024-03-01T10:00:00Z",
        "updated_at": "2024-03-02T10:00:00Z",
        "is_del": 0,
        "name": format!("cluster-{id}-from-the-manager"),
        "bio": "the manager's own words",
        "config": { "candidate_parent_limit": 4, "filter_parent_limit": 15 },
        "client_config": { "load_limit": 200 },
        "seed_client_config": {},
        "scopes": { "idc": "", "location": "", "cidrs": null },
        "is_default": id == 1,
        "seed_peer_clusters": [{ "id": id }],
        "schedulers": null,
        "peers": null,
        "jobs": null,
    }))
    .into_response()
}

async fn jobs(State(stand): State<Stand>, headers: HeaderMap) -> Response {
    if session(&stand, &headers, None).is_none() {
        return unauthorized();
    }
    axum::Json(json!([])).into_response()
}

async fn create_job(State(stand): State<Stand>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(user) = session(&stand, &headers, None) else {
        return unauthorized();
    };
    if role_of(user) != "root" {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({ "message": "permission deny" })),
        )
            .into_response();
    }
    let job: Value = serde_json::from_slice(&body).unwrap_or_default();
    axum::Json(json!({ "id": 7, "type": job["type"], "state": "PENDING", "args": job["args"] }))
        .into_response()
}

async fn delete_peer(State(stand): State<Stand>, headers: HeaderMap) -> Response {
    match session(&stand, &headers, None) {
        Some(_) => StatusCode::OK.into_response(),
        None => unauthorized(),
    }
}

/// What reached the manager of a request, for a test to compare with
/// what it sent.
async fn echo(headers: HeaderMap, RawQuery(query): RawQuery, body: Bytes) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let mut response = axum::Json(json!({
        "query": query,
        "cookie": header("cookie"),
        "content_type": header("content-type"),
        "host": header("host"),
        "x_forwarded_for": header("x-forwarded-for"),
        "x_forwarded_host": header("x-forwarded-host"),
        "x_forwarded_proto": header("x-forwarded-proto"),
        "body": String::from_utf8_lossy(&body),
    }))
    .into_response();
    *response.status_mut() = StatusCode::ACCEPTED;
    response
        .headers_mut()
        .insert("x-manager", "1".parse().unwrap());
    response
}

/// The manager's `NoRoute`: `301` to `/`.
async fn moved() -> Response {
    (StatusCode::MOVED_PERMANENTLY, [(header::LOCATION, "/")]).into_response()
}
