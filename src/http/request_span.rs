//! The span of one HTTP request: named and attributed as OpenTelemetry's
//! HTTP server conventions say, continuing the caller's trace when the
//! request carries a W3C `traceparent`, and closed with the response's
//! status. Used by the router's `TraceLayer`.

use std::time::Duration;

use axum::extract::MatchedPath;
use axum::http::{Request, Response};
use tower_http::trace::{DefaultOnResponse, OnResponse};
use tracing::Span;

/// The request's span (at DEBUG, like tower-http's default). Named by
/// the route (`GET /assets/{*path}`), not the path, so span names stay few.
pub fn make<B>(request: &Request<B>) -> Span {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched route", MatchedPath::as_str);
    let span = tracing::debug_span!(
        "HTTP request",
        otel.name = format!("{} {route}", request.method()),
        http.route = route,
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = %request.method(),
        url.path = request.uri().path(),
        http.response.status_code = tracing::field::Empty,
    );
    crate::telemetry::continue_trace(&span, request.headers());
    span
}

/// Records the response's status on the request's span (an error for
/// 5xx), then logs as tower-http does by default.
#[derive(Clone, Copy, Debug, Default)]
pub struct RecordStatus;

impl<B> OnResponse<B> for RecordStatus {
    fn on_response(self, response: &Response<B>, latency: Duration, span: &Span) {
        let status = response.status();
        span.record("http.response.status_code", status.as_u16());
        if status.is_server_error() {
            span.record("otel.status_code", "error");
        }
        DefaultOnResponse::default().on_response(response, latency, span);
    }
}
