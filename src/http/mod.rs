//! The HTTP surface, assembled in one place: `/graphql` (GET, POST),
//! `/graphql/ws`, `/graphiql`, `/healthz`, `/readyz`, `/metrics`, with
//! body limits, timeouts, compression and CORS as layers.

pub mod graphql;
pub mod health;
pub mod metrics;

use std::sync::Arc;

use async_graphql::http::GraphiQLSource;
use async_graphql_axum::{GraphQLProtocol, GraphQLWebSocket};
use axum::Router;
use axum::extract::{State, WebSocketUpgrade};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use tower_http::compression::CompressionLayer;
use tower_http::cors::CorsLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::graphql::{DfSchema, GatewayState};

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub schema: DfSchema,
    pub gateway: Arc<GatewayState>,
    pub metrics: metrics::MetricsHandle,
}

pub fn router(state: AppState) -> Router {
    let limits = state.gateway.limits;
    let request_timeout = state.gateway.request_timeout;
    Router::new()
        .route("/graphql", get(graphql::get).post(graphql::post))
        .route("/graphql/ws", get(websocket))
        .route("/graphiql", get(graphiql))
        .route("/", get(graphiql))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics::render))
        // A backstop: `/graphql` answers within the budget by itself, with
        // a GraphQL error; this catches anything else that would hang.
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            request_timeout + std::time::Duration::from_secs(1),
        ))
        .layer(RequestBodyLimitLayer::new(limits.max_body_bytes))
        .layer(CompressionLayer::new())
        .layer(CorsLayer::permissive())
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

async fn graphiql() -> Html<String> {
    Html(
        GraphiQLSource::build()
            .endpoint("/graphql")
            .subscription_endpoint("/graphql/ws")
            .title("dfgraph")
            .finish(),
    )
}

/// GraphQL over websocket, graphql-transport-ws or legacy graphql-ws, as
/// the client's sub-protocol header asks. Each connection gets its own
/// DataLoaders.
async fn websocket(
    State(app): State<AppState>,
    protocol: GraphQLProtocol,
    upgrade: WebSocketUpgrade,
) -> Response {
    upgrade
        .protocols(async_graphql::http::ALL_WEBSOCKET_PROTOCOLS)
        .on_upgrade(move |socket| async move {
            // One connection runs many operations over time, so its
            // loaders batch but do not memoize across operations.
            let loaders = app.gateway.loaders();
            loaders.disable_request_cache();
            let mut data = async_graphql::Data::default();
            data.insert(loaders);
            GraphQLWebSocket::new(socket, app.schema.clone(), protocol)
                .with_data(data)
                .serve()
                .await
        })
        .into_response()
}
