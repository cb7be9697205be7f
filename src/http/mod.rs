//! The HTTP surface, assembled in one place: `/graphql` (GET, POST),
//! `/graphql/ws`, the manager's peers API under `/api/v1/` ([`rest`]), the
//! console at `/dfgraph/` (and at `/` unless the manager's console is
//! served there through [`manager_proxy`], which takes every path not
//! listed here), `/graphiql`, `/healthz`, `/readyz`, `/metrics`, with rate
//! limits, body limits, timeouts, compression and CORS as layers.

pub mod access;
pub mod assets;
pub mod browser;
pub mod document;
pub mod fanout;
pub mod graphql;
pub mod health;
pub mod manager_proxy;
pub mod metrics;
pub mod order;
pub mod persisted;
pub mod rate_limit;
pub mod request_span;
pub mod response_cache;
pub mod rest;
pub mod sse;
pub mod ws;
pub mod ws_upgrade;

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tower_http::CompressionLevel;
use tower_http::compression::CompressionLayer;
use tower_http::compression::predicate::{DefaultPredicate, Predicate, SizeAbove};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::graphql::{DfSchema, GatewayState};

/// The HTTP side's metrics, declared once with their HELP text.
pub mod metric {
    pub const GRAPHQL_REQUEST_SECONDS: &str = "dfgraph_graphql_request_seconds";
    pub const GRAPHQL_REQUEST_TIMEOUTS: &str = "dfgraph_graphql_request_timeouts_total";
    pub const RESPONSE_CACHE: &str = "dfgraph_response_cache_total";
    pub const RATE_LIMITED: &str = "dfgraph_rate_limited_total";
    pub const RATE_LIMIT_CLIENTS: &str = "dfgraph_rate_limit_clients";

    /// Gives `/metrics` the HELP line of each.
    pub fn describe() {
        metrics::describe_histogram!(
            GRAPHQL_REQUEST_SECONDS,
            "Seconds of GraphQL requests over HTTP, by operation type."
        );
        metrics::describe_counter!(
            GRAPHQL_REQUEST_TIMEOUTS,
            "GraphQL requests that ran out of their time budget."
        );
        metrics::describe_counter!(
            RESPONSE_CACHE,
            "Cacheable queries by how the response cache served them (outcome: hit, shared, miss)."
        );
        metrics::describe_counter!(
            RATE_LIMITED,
            "Requests refused by the rate limit, by what was refused (graphql, rest, graphql_ws, subscribe)."
        );
        metrics::describe_gauge!(
            RATE_LIMIT_CLIENTS,
            "Clients with a rate-limit bucket in memory."
        );
    }
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub schema: DfSchema,
    pub gateway: Arc<GatewayState>,
    pub metrics: metrics::MetricsHandle,
    pub subscriptions: ws::Limits,
    /// Executions shared by identical subscriptions.
    pub fanout: fanout::Fanout,
    /// Cancelled when the gateway stops: websockets close with 1001.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// Turns credentials into principals.
    pub auth: crate::auth::Authenticator,
    /// APQ documents and the safelist.
    pub persisted: persisted::PersistedQueries,
    /// CORS allowlist and CSRF prevention.
    pub browser: Arc<browser::BrowserConfig>,
    /// Per-client rate limits on the GraphQL and REST routes.
    pub rate_limit: rate_limit::RateLimiter,
    /// The `/metrics` token, and whether it has a listener of its own.
    pub metrics_access: metrics::MetricsAccess,
    /// Kept responses of hot host-list queries, and their shared execution.
    pub response_cache: response_cache::ResponseCache,
    /// What the documents seen lately ask for, parsed once each.
    pub outlines: document::Outlines,
    /// The manager behind dfgraph (`manager_api`): every other path.
    pub manager_proxy: Option<manager_proxy::ManagerProxy>,
    /// What the peers API keeps between requests.
    pub rest: rest::RestState,
}

pub fn router(state: AppState) -> Router {
    let limits = state.gateway.limits;
    let request_timeout = state.gateway.request_timeout;
    // Only the GraphQL and REST entry points are rate limited: probes, the
    // pages' files and metrics never are.
    // The manager's console takes `/` when dfgraph is its front door.
    let front_door = state.manager_proxy.is_some();
    // A backstop on dfgraph's own routes: `/graphql` answers within the
    // budget by itself, with a GraphQL error; this catches anything else
    // that would hang. The manager's calls have their own timeouts.
    let timeout = TimeoutLayer::with_status_code(
        StatusCode::REQUEST_TIMEOUT,
        request_timeout + std::time::Duration::from_secs(1),
    );
    let api = Router::new()
        .route("/graphql", get(graphql::get).post(graphql::post))
        .route("/graphql/ws", get(websocket))
        .route_layer(timeout)
        .merge(rest::routes(front_door, timeout))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            rate_limit::admit,
        ));
    let mut pages = Router::new()
        .route("/graphiql", get(assets::graphiql))
        .route("/dfgraph", get(assets::console))
        .route("/dfgraph/", get(assets::console))
        .route("/dfgraph/graphiql", get(assets::graphiql))
        .route("/assets/{*path}", get(assets::file))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz));
    if !front_door {
        pages = pages.route("/", get(assets::console));
    }
    if !state.metrics_access.separate_listener {
        pages = pages.route("/metrics", get(metrics::render));
    }
    let mut router = api.merge(pages.route_layer(timeout));
    if front_door {
        router = router.fallback(manager_proxy::pass);
    }
    router
        .layer(RequestBodyLimitLayer::new(limits.max_body_bytes))
        // The fastest level: at the default one, gzip took 12 % of the CPU
        // of a warm console overview (BENCHMARKS.md S1) for a few percent
        // of bytes; small bodies are not worth a compressor's setup.
        .layer(
            CompressionLayer::new()
                .quality(CompressionLevel::Fastest)
                .compress_when(DefaultPredicate::new().and(SizeAbove::new(1024))),
        )
        .layer(browser::cors(&state.browser))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span::make)
                .on_response(request_span::RecordStatus),
        )
        .with_state(state)
}

/// GraphQL over websocket (see [`ws`]).
async fn websocket(
    State(app): State<AppState>,
    headers: axum::http::HeaderMap,
    admitted: Option<axum::Extension<rate_limit::Admitted>>,
    upgrade: ws_upgrade::Upgrade,
) -> Response {
    // Cross-site websocket hijacking: a page elsewhere must not ride on
    // the operator's cookies.
    if !browser::origin_allowed(&app.browser, &headers) {
        return (StatusCode::FORBIDDEN, "websocket origin not allowed").into_response();
    }
    let upgrade_token = access::token(&app.auth, &headers);
    let selected = upgrade.select(&ws::PROTOCOLS);
    let protocol = ws::Protocol::from_header(selected);
    let stop = app.shutdown.clone();
    // Operations on the socket draw from the bucket of its principal,
    // else of this address.
    let client = admitted.map(|a| a.0.client);
    upgrade.accept(selected, move |socket| {
        ws::serve(socket, protocol, app, stop, upgrade_token, client)
    })
}
