//! The Dragonfly manager's REST endpoints that the console's peers pages
//! call, answered from live scheduler data through dfgraph's cache (the
//! path of the GraphQL `hosts` query): `GET /api/v1/peers`,
//! `GET /api/v1/peers/{id}` and `POST /api/v1/jobs` of type `sync_peers`,
//! with the manager's JSON shapes, pagination headers, error shapes and
//! statuses, behind the same access control as `/graphql`.

pub mod clusters;
pub mod first_seen;
pub mod peer;
pub mod query;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Extension;
use axum::Router;
use axum::body::Body;
use axum::extract::{OriginalUri, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use serde::Deserialize;

use self::peer::{Row, SchedulerClusterJson};
use self::query::PeersQuery;
use super::{AppState, manager_proxy};
use crate::auth::Principal;
use crate::cache::CacheKey;
use crate::cluster::HostList;
use crate::cluster::{ClusterError, SchedulerHandle};
use tower_http::timeout::TimeoutLayer;

/// The routes, for the main router to merge. As the manager's front door
/// (`front_door`), the manager's other methods on these paths (creating
/// and deleting peers, listing jobs) pass to it.
pub fn routes(front_door: bool, timeout: TimeoutLayer) -> Router<AppState> {
    // The backstop timeout is for dfgraph's own handlers only: the
    // manager's calls on these paths (the method fallbacks) have the
    // proxy's own timeouts.
    let (mut peers, mut peer, mut jobs) = (
        get(list_peers).route_layer(timeout),
        get(get_peer).route_layer(timeout),
        post(create_job).route_layer(timeout),
    );
    if front_door {
        peers = peers.fallback(manager_proxy::pass);
        peer = peer.fallback(manager_proxy::pass);
        jobs = jobs.fallback(manager_proxy::pass);
    }
    Router::new()
        .route("/api/v1/peers", peers)
        .route("/api/v1/peers/{id}", peer)
        .route("/api/v1/jobs", jobs)
}

/// The manager's job type that refreshes its peer table.
const SYNC_PEERS: &str = "sync_peers";

/// Lists every cluster that failed, for operators, on partial answers.
pub const UNAVAILABLE_HEADER: &str = "x-dfgraph-unavailable-clusters";
/// Seconds since the oldest host list of an answer was read from its
/// schedulers, when some cluster's list is served because its schedulers
/// stopped answering.
pub const LIST_AGE_HEADER: &str = "x-dfgraph-list-age";

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

/// The request's principal as the entry middleware found it (else found
/// here).
type Admitted = Option<Extension<super::rate_limit::Admitted>>;

/// CSRF prevention for requests that change something, then
/// authentication, as `/graphql` does; refusals in the manager's shape.
async fn admit(
    app: &AppState,
    method: &Method,
    headers: &HeaderMap,
    admitted: Admitted,
) -> Result<Principal, Response> {
    if method != Method::GET
        && app.browser.csrf_prevention
        && let Some(why) = super::browser::csrf_refusal(method, headers)
    {
        return Err(message(StatusCode::BAD_REQUEST, why));
    }
    let principal = match admitted {
        Some(Extension(admitted)) => admitted.principal,
        None => {
            app.auth
                .authenticate(super::access::token(&app.auth, headers).as_deref())
                .await
        }
    };
    match principal {
        Ok(principal) => Ok(principal),
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

/// Cluster id -> its latest host list and when it was read.
type LastLists = HashMap<u64, (Arc<HostList>, DateTime<Utc>)>;

/// What the REST handlers keep between requests.
#[derive(Clone)]
pub struct RestState {
    first_seen: first_seen::FirstSeen,
    /// Each cluster's latest host list from its schedulers and when it was
    /// read: served, marked, when they stop answering past the cache's
    /// stale window, as the manager's table would still show its rows.
    /// Per replica: one that never read a cluster has none to show.
    last_known: Arc<Mutex<LastLists>>,
    clusters: clusters::SchedulerClusters,
}

impl RestState {
    /// `redis` shares first sightings between replicas; cluster
    /// descriptions read from the manager are kept for `describe_ttl`.
    pub fn new(redis: Option<crate::redis::Redis>, describe_ttl: Duration) -> RestState {
        RestState {
            first_seen: first_seen::FirstSeen::new(redis),
            last_known: Arc::default(),
            clusters: clusters::SchedulerClusters::new(describe_ttl),
        }
    }

    fn remember(&self, cluster_id: u64, list: &Arc<HostList>, read_at: DateTime<Utc>) {
        let mut known = self.last_known.lock().unwrap_or_else(|e| e.into_inner());
        let newer = known.get(&cluster_id).is_none_or(|(_, at)| *at <= read_at);
        if newer {
            known.insert(cluster_id, (list.clone(), read_at));
        }
    }

    fn recall(&self, cluster_id: u64) -> Option<(Arc<HostList>, DateTime<Utc>)> {
        let known = self.last_known.lock().unwrap_or_else(|e| e.into_inner());
        known.get(&cluster_id).cloned()
    }

    /// The clusters of `rows` as the manager describes them to the caller
    /// (when dfgraph fronts the manager and the caller holds a manager
    /// session), else by id.
    async fn describe(
        &self,
        app: &AppState,
        principal: &Principal,
        headers: &HeaderMap,
        rows: &[&Row<'_>],
    ) -> HashMap<u64, Arc<SchedulerClusterJson>> {
        let mut ids: Vec<u64> = rows.iter().map(|r| r.scheduler_cluster_id).collect();
        ids.sort_unstable();
        ids.dedup();
        let token = super::access::token(&app.auth, headers);
        let manager = match (&app.manager_proxy, token.as_deref()) {
            (Some(proxy), Some(token)) if principal.method == crate::auth::Method::Manager => {
                Some((proxy, token))
            }
            _ => None,
        };
        self.clusters.describe(&ids, manager).await
    }
}

/// Host lists of some clusters, as the cache has them.
struct Snapshot {
    lists: Vec<ClusterList>,
    /// Clusters that failed, with why.
    failed: BTreeMap<u64, ClusterError>,
    now: DateTime<Utc>,
}

/// One cluster's host list as read.
struct ClusterList {
    cluster_id: u64,
    /// `None`: the cluster answered with no list.
    list: Option<Arc<HostList>>,
    read_at: DateTime<Utc>,
    /// The state of its hosts (see [`Row::state`]).
    state: &'static str,
}

impl Snapshot {
    /// Every host as a row, in the manager's order, with its first
    /// sighting; a host whose health service does not answer is inactive
    /// (as the manager marks a host it lost).
    async fn rows(
        &self,
        first_seen: &first_seen::FirstSeen,
        liveness: &crate::liveness::Liveness,
    ) -> Vec<Row<'_>> {
        let mut rows = Vec::new();
        for c in &self.lists {
            let Some(list) = &c.list else { continue };
            let ids: Vec<&str> = list.hosts.iter().map(|h| h.id.as_str()).collect();
            let first = first_seen.of(c.cluster_id, &ids, self.now).await;
            rows.extend(list.hosts.iter().zip(first).map(|(host, first)| {
                let state = if liveness.state(c.cluster_id, &host.id)
                    == crate::liveness::State::Unreachable
                {
                    INACTIVE
                } else {
                    c.state
                };
                let mut row = Row::new(c.cluster_id, host, state, c.read_at);
                row.created_at = DateTime::from_timestamp_millis(first).unwrap_or(c.read_at);
                row
            }));
        }
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

    /// Names the clusters that failed, and says how old the oldest list
    /// served for a failing cluster is.
    fn mark_partial(&self, response: &mut Response) {
        let oldest = self
            .lists
            .iter()
            .filter(|c| c.state == INACTIVE)
            .map(|c| (self.now - c.read_at).num_seconds().max(0))
            .max();
        if let Some(age) = oldest {
            response
                .headers_mut()
                .insert(LIST_AGE_HEADER, HeaderValue::from(age));
        }
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
/// cache, then the schedulers), within the request budget; a cluster whose
/// schedulers fail past the cache's stale window is served from its last
/// known list.
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
                    INACTIVE
                } else {
                    ACTIVE
                };
                if let Some(list) = &fetched.value {
                    app.rest.remember(cluster_id, list, read_at);
                }
                lists.push(ClusterList {
                    cluster_id,
                    list: fetched.value,
                    read_at,
                    state,
                });
            }
            Err(e) => {
                tracing::warn!(cluster_id, error = %e, "REST peers: a cluster's host list failed");
                if let Some((list, read_at)) = app.rest.recall(cluster_id) {
                    lists.push(ClusterList {
                        cluster_id,
                        list: Some(list),
                        read_at,
                        state: INACTIVE,
                    });
                }
                failed.insert(cluster_id, e);
            }
        }
    }
    Ok(Snapshot { lists, failed, now })
}

/// A host its scheduler lists now (the manager: seen by the last sync).
const ACTIVE: &str = "active";
/// A host of a list served while its cluster's schedulers fail, or one
/// whose health service does not answer.
const INACTIVE: &str = "inactive";

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
    admitted: Admitted,
    OriginalUri(uri): OriginalUri,
    RawQuery(raw): RawQuery,
) -> Response {
    let principal = match admit(&app, &Method::GET, &headers, admitted).await {
        Ok(principal) => principal,
        Err(refused) => return refused,
    };
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
    let rows = snapshot
        .rows(&app.rest.first_seen, &app.gateway.liveness)
        .await;
    let matching: Vec<&Row<'_>> = rows.iter().filter(|r| r.matches(&query.filter)).collect();
    let on_page: Vec<&Row<'_>> = matching
        .iter()
        .skip(query.offset())
        .take(query.limit())
        .copied()
        .collect();
    let described = app
        .rest
        .describe(&app, &principal, &headers, &on_page)
        .await;
    let page: Vec<_> = on_page
        .iter()
        .map(|r| r.to_json(&described[&r.scheduler_cluster_id]))
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
    admitted: Admitted,
    Path(id): Path<String>,
) -> Response {
    let principal = match admit(&app, &Method::GET, &headers, admitted).await {
        Ok(principal) => principal,
        Err(refused) => return refused,
    };
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
    let rows = snapshot
        .rows(&app.rest.first_seen, &app.gateway.liveness)
        .await;
    match rows.iter().find(|r| r.id == id) {
        Some(row) => match serde_json::to_string(&row.to_json(
            &app.rest.describe(&app, &principal, &headers, &[row]).await[&row.scheduler_cluster_id],
        )) {
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

/// The clusters a sync names, each served with a scheduler (the
/// manager's `findSchedulerInClusters`: a cluster it does not know or with
/// no active scheduler is `404 scheduler cluster id N: record not found`);
/// none named: every served cluster with a scheduler, and when there is
/// none, the manager's `500 active schedulers not found`.
fn sync_targets(app: &AppState, named: Option<Vec<u64>>) -> Result<Vec<u64>, (StatusCode, String)> {
    let with_scheduler: Vec<u64> = app
        .gateway
        .cluster
        .cluster_ids()
        .into_iter()
        .filter(|&id| app.gateway.cluster.cluster(id).is_ok())
        .collect();
    match named {
        Some(ids) if !ids.is_empty() => {
            if let Some(missing) = ids.iter().find(|id| !with_scheduler.contains(id)) {
                return Err((
                    StatusCode::NOT_FOUND,
                    format!("scheduler cluster id {missing}: record not found"),
                ));
            }
            Ok(ids)
        }
        _ if with_scheduler.is_empty() => Err((
            StatusCode::INTERNAL_SERVER_ERROR,
            "active schedulers not found".into(),
        )),
        _ => Ok(with_scheduler),
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
async fn create_job(State(app): State<AppState>, admitted: Admitted, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, app.gateway.limits.max_body_bytes).await {
        Ok(body) => body,
        Err(e) => return message(StatusCode::PAYLOAD_TOO_LARGE, &e.to_string()),
    };
    let job_type = serde_json::from_slice::<JobType>(&body).map(|j| j.r#type);
    // Every other job (and what does not bind) is the manager's to judge.
    if job_type.as_deref().ok() != Some(SYNC_PEERS) && app.manager_proxy.is_some() {
        let request = Request::from_parts(parts, Body::from(body));
        return manager_proxy::pass_on(&app, request).await;
    }
    let headers = parts.headers;
    let principal = match admit(&app, &Method::POST, &headers, admitted).await {
        Ok(principal) => principal,
        Err(refused) => return refused,
    };
    // The manager's RBAC: a `guest` may read, not create jobs.
    if principal.denied_writes() {
        return message(StatusCode::UNAUTHORIZED, "permission deny");
    }
    let job_type = match job_type {
        Ok(job_type) => job_type,
        Err(e) => return unprocessable(&e.to_string()),
    };
    match job_type.as_str() {
        "" => unprocessable(
            "Key: 'CreateJobRequest.Type' Error:Field validation for 'Type' failed on the 'required' tag",
        ),
        SYNC_PEERS => {
            let request: SyncPeersJob = match serde_json::from_slice(&body) {
                Ok(request) => request,
                Err(e) => return unprocessable(&e.to_string()),
            };
            let clusters = match sync_targets(&app, request.scheduler_cluster_ids) {
                Ok(clusters) => clusters,
                Err((status, text)) => return message(status, &text),
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
