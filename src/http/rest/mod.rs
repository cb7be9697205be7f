//! The Dragonfly manager's REST endpoints that the console's peers pages
//! call, answered from live scheduler data through dfgraph's cache (the
//! path of the GraphQL `hosts` query): `GET /api/v1/peers`,
//! `GET /api/v1/peers/{id}` and `POST /api/v1/jobs` of type `sync_peers`,
//! with the manager's JSON shapes, pagination headers, error shapes and
//! statuses, behind the same access control as `/graphql`.

pub mod peer;
pub mod query;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{OriginalUri, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::Utc;
use serde::Deserialize;

use self::peer::Row;
use self::query::PeersQuery;
use super::AppState;
use crate::cache::CacheKey;
use crate::cluster::HostList;
use crate::cluster::{ClusterError, SchedulerHandle};

/// The routes, for the main router to merge.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/peers", get(list_peers))
        .route("/api/v1/peers/{id}", get(get_peer))
        .route("/api/v1/jobs", post(create_job))
}

/// The manager's job type that refreshes its peer table.
const SYNC_PEERS: &str = "sync_peers";

/// Lists every cluster that failed, for operators, on partial answers.
const UNAVAILABLE_HEADER: &str = "x-dfgraph-unavailable-clusters";

/// A JSON response as gin's `ctx.JSON` writes it.
fn json(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}

/// `{"message": ...}`: the manager's error middleware and auth refusals
/// (the console shows `message`).
fn message(status: StatusCode, text: &str) -> Response {
    json(status, serde_json::json!({ "message": text }).to_string())
}

/// `422 {"errors": ...}`: the manager's answer to input that does not bind.
fn unprocessable(text: &str) -> Response {
    json(
        StatusCode::UNPROCESSABLE_ENTITY,
        serde_json::json!({ "errors": text }).to_string(),
    )
}

/// CSRF prevention for requests that change something, then
/// authentication, as `/graphql` does; refusals in the manager's shape.
async fn admit(app: &AppState, method: &Method, headers: &HeaderMap) -> Result<(), Response> {
    if method != Method::GET
        && app.browser.csrf_prevention
        && let Some(why) = super::browser::csrf_refusal(method, headers)
    {
        return Err(message(StatusCode::BAD_REQUEST, why));
    }
    match app
        .auth
        .authenticate(super::access::token(headers).as_deref())
        .await
    {
        // Every role may read and refresh: both are queries of live data.
        Ok(_principal) => Ok(()),
        Err(e) => {
            tracing::debug!(error = %e, "REST request refused");
            // gin-jwt's refusal: the status text, nothing more.
            let mut refused = message(StatusCode::UNAUTHORIZED, "Unauthorized");
            refused
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            Err(refused)
        }
    }
}

/// Host lists of some clusters, as the cache has them.
struct Snapshot {
    lists: Vec<ClusterList>,
    /// Clusters that failed, with why.
    failed: BTreeMap<u64, ClusterError>,
}

/// One cluster's host list as read.
struct ClusterList {
    cluster_id: u64,
    /// `None`: the cluster answered with no list.
    list: Option<Arc<HostList>>,
    read_at: chrono::DateTime<Utc>,
    /// The state of its hosts (see [`Row::state`]).
    state: &'static str,
}

impl Snapshot {
    fn rows(&self) -> Vec<Row<'_>> {
        let mut rows: Vec<Row<'_>> = self
            .lists
            .iter()
            .flat_map(|c| {
                c.list.iter().flat_map(move |list| {
                    list.hosts
                        .iter()
                        .map(move |host| Row::new(c.cluster_id, host, c.state, c.read_at))
                })
            })
            .collect();
        // The manager lists rows in primary-key order.
        rows.sort_unstable_by_key(|r| (r.id, r.scheduler_cluster_id));
        rows
    }

    /// 500 when nothing could be read at all.
    fn all_failed(&self) -> Option<Response> {
        if !self.lists.is_empty() || self.failed.is_empty() {
            return None;
        }
        let why = self
            .failed
            .iter()
            .map(|(id, e)| format!("scheduler cluster {id}: {e}"))
            .collect::<Vec<_>>()
            .join("; ");
        Some(message(StatusCode::INTERNAL_SERVER_ERROR, &why))
    }

    fn mark_partial(&self, response: &mut Response) {
        if self.failed.is_empty() {
            return;
        }
        let ids = self
            .failed
            .keys()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(",");
        if let Ok(value) = HeaderValue::from_str(&ids) {
            response.headers_mut().insert(UNAVAILABLE_HEADER, value);
        }
    }
}

/// Reads the host lists of `clusters` through the request's loaders (the
/// cache, then the schedulers), within the request budget.
async fn snapshot(app: &AppState, clusters: Vec<u64>) -> Result<Snapshot, Response> {
    let gateway = &app.gateway;
    // Someone looks at hosts: keep their lists watched, so changes reach
    // the cache within one watch interval (as for GraphQL host queries).
    gateway.events.interest.touch_hosts();
    let budget = gateway.request_timeout;
    let reserve = (budget / 10).min(Duration::from_millis(250));
    let loaders = gateway.loaders_until(Instant::now() + budget - reserve);
    let loaded = match tokio::time::timeout(budget, loaders.host_lists(&clusters)).await {
        Ok(Ok(loaded)) => loaded,
        Ok(Err(e)) => {
            return Err(message(StatusCode::INTERNAL_SERVER_ERROR, &e.message));
        }
        Err(_) => {
            return Err(message(
                StatusCode::GATEWAY_TIMEOUT,
                &format!(
                    "the schedulers did not answer within the {} ms budget",
                    budget.as_millis()
                ),
            ));
        }
    };
    let now = Utc::now();
    let schedulers = gateway.cluster.schedulers();
    let mut lists = Vec::new();
    let mut failed = BTreeMap::new();
    for (cluster_id, result) in loaded {
        match result {
            Ok(fetched) => {
                let read_at = chrono::Duration::from_std(fetched.age)
                    .ok()
                    .and_then(|age| now.checked_sub_signed(age))
                    .unwrap_or(now);
                // Past its freshness while the cluster's schedulers fail:
                // the last known list, of hosts nobody vouches for now.
                let state = if fetched.stale && last_call_failed(&schedulers, cluster_id) {
                    "inactive"
                } else {
                    "active"
                };
                lists.push(ClusterList {
                    cluster_id,
                    list: fetched.value,
                    read_at,
                    state,
                });
            }
            Err(e) => {
                tracing::warn!(cluster_id, error = %e, "REST peers: a cluster's host list failed");
                failed.insert(cluster_id, e);
            }
        }
    }
    Ok(Snapshot { lists, failed })
}

/// True when the latest call to any scheduler of the cluster failed.
fn last_call_failed(schedulers: &[Arc<SchedulerHandle>], cluster_id: u64) -> bool {
    let (mut success, mut failure) = (None, None);
    for health in schedulers
        .iter()
        .filter(|s| s.cluster_id == cluster_id)
        .map(|s| s.health_snapshot())
    {
        success = success.max(health.last_success_ms);
        failure = failure.max(health.last_error.map(|(at, _)| at));
    }
    failure.is_some() && failure >= success
}

/// `GET /api/v1/peers`: one page of the hosts matching the filters, in id
/// order, with the manager's `Link` header.
async fn list_peers(
    State(app): State<AppState>,
    headers: HeaderMap,
    OriginalUri(uri): OriginalUri,
    RawQuery(raw): RawQuery,
) -> Response {
    if let Err(refused) = admit(&app, &Method::GET, &headers).await {
        return refused;
    }
    let query = match PeersQuery::parse(raw.as_deref()) {
        Ok(query) => query,
        Err(e) => return unprocessable(&e.0),
    };
    let served = app.gateway.cluster.cluster_ids();
    // A cluster dfgraph does not serve has no peers here.
    let clusters = match query.filter.scheduler_cluster_id {
        Some(id) => served.into_iter().filter(|&c| c == id).collect(),
        None => served,
    };
    let snapshot = match snapshot(&app, clusters).await {
        Ok(snapshot) => snapshot,
        Err(refused) => return refused,
    };
    if let Some(failure) = snapshot.all_failed() {
        return failure;
    }
    let rows = snapshot.rows();
    let matching: Vec<&Row<'_>> = rows.iter().filter(|r| r.matches(&query.filter)).collect();
    let page: Vec<_> = matching
        .iter()
        .skip(query.offset())
        .take(query.limit())
        .map(|r| r.to_json())
        .collect();
    let body = match serde_json::to_string(&page) {
        Ok(body) => body,
        Err(e) => return message(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let mut response = json(StatusCode::OK, body);
    let link = query::link_header(
        uri.path(),
        raw.as_deref(),
        query.page,
        query.per_page,
        matching.len() as u64,
    );
    if let Ok(value) = HeaderValue::from_str(&link) {
        response.headers_mut().insert(header::LINK, value);
    }
    snapshot.mark_partial(&mut response);
    response
}

/// `GET /api/v1/peers/{id}`: one host by its derived id.
async fn get_peer(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(refused) = admit(&app, &Method::GET, &headers).await {
        return refused;
    }
    // gin binds `uri:"id" binding:"required"` into a uint.
    let id = match query::uint(&id) {
        Ok(0) => {
            return unprocessable(
                "Key: 'PeerParams.ID' Error:Field validation for 'ID' failed on the 'required' tag",
            );
        }
        Ok(id) => id,
        Err(e) => return unprocessable(&e.0),
    };
    let snapshot = match snapshot(&app, app.gateway.cluster.cluster_ids()).await {
        Ok(snapshot) => snapshot,
        Err(refused) => return refused,
    };
    let rows = snapshot.rows();
    match rows.iter().find(|r| r.id == id) {
        Some(row) => match serde_json::to_string(&row.to_json()) {
            Ok(body) => {
                let mut response = json(StatusCode::OK, body);
                snapshot.mark_partial(&mut response);
                response
            }
            Err(e) => message(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        },
        // Not found where a cluster could not be read: it may be there.
        None if !snapshot.failed.is_empty() => snapshot.all_failed().unwrap_or_else(|| {
            let mut response = message(
                StatusCode::SERVICE_UNAVAILABLE,
                "peer not found, and some scheduler clusters could not be read",
            );
            snapshot.mark_partial(&mut response);
            response
        }),
        // gorm's `ErrRecordNotFound` through the manager's error middleware.
        None => message(StatusCode::NOT_FOUND, "record not found"),
    }
}

/// The part of `types.CreateJobRequest` every job has.
#[derive(Deserialize)]
struct JobType {
    #[serde(default)]
    r#type: String,
}

/// `types.CreateSyncPeersJobRequest`.
#[derive(Deserialize)]
struct SyncPeersJob {
    #[serde(default)]
    scheduler_cluster_ids: Option<Vec<u64>>,
}

/// `POST /api/v1/jobs` with `type: sync_peers`. The manager runs the sync
/// synchronously, answers `200 "OK"` and records no job; so does dfgraph,
/// after dropping the cached host lists of the named clusters (all when
/// none are named), so the console's next `GET /api/v1/peers` reads them
/// from the schedulers. Other job types belong to the manager.
async fn create_job(State(app): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(refused) = admit(&app, &Method::POST, &headers).await {
        return refused;
    }
    let job: JobType = match serde_json::from_slice(&body) {
        Ok(job) => job,
        Err(e) => return unprocessable(&e.to_string()),
    };
    match job.r#type.as_str() {
        "" => unprocessable(
            "Key: 'CreateJobRequest.Type' Error:Field validation for 'Type' failed on the 'required' tag",
        ),
        SYNC_PEERS => {
            let request: SyncPeersJob = match serde_json::from_slice(&body) {
                Ok(request) => request,
                Err(e) => return unprocessable(&e.to_string()),
            };
            let served = app.gateway.cluster.cluster_ids();
            let clusters: Vec<u64> = match request.scheduler_cluster_ids {
                Some(ids) if !ids.is_empty() => {
                    served.into_iter().filter(|c| ids.contains(c)).collect()
                }
                _ => served,
            };
            app.gateway.events.interest.touch_hosts();
            for cluster_id in clusters {
                app.gateway
                    .cache
                    .invalidate(&CacheKey::hosts(cluster_id))
                    .await;
            }
            json(StatusCode::OK, "\"OK\"".into())
        }
        other => unprocessable(&format!(
            "dfgraph answers only {SYNC_PEERS} jobs; send {other:?} jobs to the Dragonfly manager"
        )),
    }
}
