//! `/graphql` over HTTP, following the GraphQL-over-HTTP spec: GET and
//! POST, content negotiation between `application/graphql-response+json`
//! and `application/json`, 4xx for requests that cannot run, and no
//! mutations over GET. Each request gets its own DataLoaders and a
//! freshness report in `extensions`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use async_graphql::parser::types::OperationType;
use axum::Extension;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use super::AppState;
use super::persisted;
use crate::graphql::SchemaSwitches;
use crate::setting::Invalid;

/// The `[graphql]` settings: schema-level switches for production and
/// which operations may run by hash.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct GraphqlConfig {
    /// Answer introspection queries (`__schema`, `__type`).
    pub introspection: bool,
    /// "Did you mean" suggestions in validation errors.
    pub field_suggestions: bool,
    /// `off`, `apq` (Automatic Persisted Queries, shared through Redis) or
    /// `safelist` (only the operations of `safelist_file` run).
    pub persisted_queries: persisted::Mode,
    /// Apollo persisted-query manifest: `{"operations": [{"id", "body"}]}`.
    pub safelist_file: Option<PathBuf>,
}

impl Default for GraphqlConfig {
    fn default() -> Self {
        GraphqlConfig {
            introspection: true,
            field_suggestions: true,
            persisted_queries: persisted::Mode::default(),
            safelist_file: None,
        }
    }
}

impl GraphqlConfig {
    /// A safelist needs its manifest, readable and each id the hash of
    /// its operation.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.persisted_queries != persisted::Mode::Safelist {
            return Ok(());
        }
        let Some(manifest) = &self.safelist_file else {
            return Err(Invalid::new(
                "safelist_file",
                "persisted_queries = \"safelist\" needs the manifest of allowed operations",
            ));
        };
        persisted::load_manifest(manifest)
            .map(|_| ())
            .map_err(persisted::ManifestError::into_invalid)
    }

    /// The switches the schema is built with.
    pub fn schema_switches(&self) -> SchemaSwitches {
        SchemaSwitches {
            introspection: self.introspection,
            field_suggestions: self.field_suggestions,
        }
    }
}

const GRAPHQL_RESPONSE: &str = "application/graphql-response+json";
const JSON: &str = "application/json";

/// The media type a client accepts for the response.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Accept {
    GraphqlResponse,
    Json,
}

fn negotiate(headers: &HeaderMap) -> Option<Accept> {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return Some(Accept::Json);
    };
    let mut best = None;
    for part in accept.split(',') {
        let media = part
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match media.as_str() {
            GRAPHQL_RESPONSE => return Some(Accept::GraphqlResponse),
            JSON | "application/*" | "*/*" => best = Some(Accept::Json),
            _ => {}
        }
    }
    best
}

/// A response for a request that never reached execution.
fn request_error(accept: Accept, status: StatusCode, message: impl Into<String>) -> Response {
    let body = serde_json::json!({ "errors": [{
        "message": message.into(),
        "extensions": { "code": match status {
            StatusCode::METHOD_NOT_ALLOWED => "METHOD_NOT_ALLOWED",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "UNSUPPORTED_MEDIA_TYPE",
            _ => "BAD_REQUEST",
        } },
    }]});
    json_response(accept, status, body.to_string())
}

fn json_response(accept: Accept, status: StatusCode, body: String) -> Response {
    let media = match accept {
        Accept::GraphqlResponse => GRAPHQL_RESPONSE,
        Accept::Json => JSON,
    };
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(match media {
            GRAPHQL_RESPONSE => "application/graphql-response+json; charset=utf-8",
            _ => "application/json; charset=utf-8",
        }),
    );
    response
}

/// The answer to a request that ran out of its budget.
fn timed_out(budget: Duration) -> async_graphql::Response {
    // No position: the budget belongs to no place in the document, and
    // `locations` is left out rather than pointing at line 0.
    let mut error = async_graphql::ServerError::new(
        format!(
            "the request did not complete within its {} ms budget",
            budget.as_millis()
        ),
        None,
    );
    let mut extensions = async_graphql::ErrorExtensionValues::default();
    extensions.set("code", "REQUEST_TIMEOUT");
    error.extensions = Some(extensions);
    async_graphql::Response::from_errors(vec![error])
}

fn not_acceptable() -> Response {
    (
        StatusCode::NOT_ACCEPTABLE,
        "supported response types: application/graphql-response+json, application/json",
    )
        .into_response()
}

/// The span of one GraphQL operation, named as OpenTelemetry's GraphQL
/// conventions say (`query`, `query Overview`). Its DataLoader batches,
/// cache lookups and scheduler calls are its children.
fn operation_span(kind: &str, name: Option<&str>) -> tracing::Span {
    // A client names its operations; a name that long is no name.
    let name = name.filter(|name| name.len() <= 128);
    tracing::debug_span!(
        "GraphQL operation",
        otel.name = match name {
            Some(name) => format!("{kind} {name}"),
            None => kind.to_owned(),
        },
        graphql.operation.type = kind,
        graphql.operation.name = name,
        graphql.errors = tracing::field::Empty,
    )
}

/// Resolves the request's persisted operation (APQ, safelist), or the
/// response refusing it: 200 with the error, as Apollo clients expect.
async fn persisted(
    app: &AppState,
    accept: Accept,
    request: &mut async_graphql::Request,
) -> Result<(), Response> {
    app.persisted.resolve(request).await.map_err(|e| {
        let status = match e {
            super::persisted::PersistedError::Malformed(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::OK,
        };
        json_response(accept, status, e.to_json().to_string())
    })
}

/// CSRF prevention, then authentication: the principal a request runs
/// as, or the response that refuses it.
async fn admit(
    app: &AppState,
    accept: Accept,
    method: &axum::http::Method,
    headers: &HeaderMap,
    admitted: Option<super::rate_limit::Admitted>,
) -> Result<crate::auth::Principal, Response> {
    if app.browser.csrf_prevention
        && let Some(why) = super::browser::csrf_refusal(method, headers)
    {
        let body = serde_json::json!({ "errors": [{
            "message": why,
            "extensions": { "code": "CSRF_REFUSED" },
        }]});
        return Err(json_response(
            accept,
            StatusCode::BAD_REQUEST,
            body.to_string(),
        ));
    }
    // Authenticated once already, by the rate limiter that keys by it.
    match admitted {
        Some(admitted) => admitted
            .principal
            .map_err(|e| super::access::unauthenticated(&e)),
        None => super::access::principal(app, headers).await,
    }
}

pub async fn get(
    State(app): State<AppState>,
    headers: HeaderMap,
    admitted: Option<Extension<super::rate_limit::Admitted>>,
    RawQuery(query): RawQuery,
) -> Response {
    let sse = super::sse::wanted(&headers);
    let Some(accept) = negotiate(&headers).or(sse.then_some(Accept::Json)) else {
        return not_acceptable();
    };
    let admitted = admitted.map(|a| a.0);
    let principal = match admit(&app, accept, &axum::http::Method::GET, &headers, admitted).await {
        Ok(principal) => principal,
        Err(refused) => return refused,
    };
    let mut request = match async_graphql::http::parse_query_string(query.as_deref().unwrap_or(""))
    {
        Ok(request) => request,
        Err(e) => {
            return request_error(
                accept,
                StatusCode::BAD_REQUEST,
                format!("invalid GraphQL request: {e}"),
            );
        }
    };
    if let Err(refused) = persisted(&app, accept, &mut request).await {
        return refused;
    }
    if request.query.trim().is_empty() {
        return request_error(accept, StatusCode::BAD_REQUEST, "missing `query` parameter");
    }
    let outline = app.outlines.of(&request);
    if outline
        .as_ref()
        .is_some_and(|o| o.ty == OperationType::Mutation)
    {
        let mut response = request_error(
            accept,
            StatusCode::METHOD_NOT_ALLOWED,
            "mutations are only accepted over POST",
        );
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return response;
    }
    if sse {
        return super::sse::respond(&app, request, principal, &headers);
    }
    let role = principal.role;
    let gzip = accepts_gzip(&headers);
    execute(&app, accept, gzip, request.data(principal), role, outline).await
}

pub async fn post(
    State(app): State<AppState>,
    headers: HeaderMap,
    admitted: Option<Extension<super::rate_limit::Admitted>>,
    body: Bytes,
) -> Response {
    let sse = super::sse::wanted(&headers);
    let Some(accept) = negotiate(&headers).or(sse.then_some(Accept::Json)) else {
        return not_acceptable();
    };
    let admitted = admitted.map(|a| a.0);
    let principal = match admit(&app, accept, &axum::http::Method::POST, &headers, admitted).await {
        Ok(principal) => principal,
        Err(refused) => return refused,
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let mut request: async_graphql::Request = match content_type.as_str() {
        JSON | "" => match serde_json::from_slice(&body) {
            Ok(request) => request,
            Err(e) => {
                return request_error(
                    accept,
                    StatusCode::BAD_REQUEST,
                    format!("body is not a GraphQL request: {e}"),
                );
            }
        },
        "application/graphql" => match std::str::from_utf8(&body) {
            Ok(query) => async_graphql::Request::new(query),
            Err(_) => return request_error(accept, StatusCode::BAD_REQUEST, "query is not UTF-8"),
        },
        other => {
            return request_error(
                accept,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("unsupported content type {other:?}; send application/json"),
            );
        }
    };
    if let Err(refused) = persisted(&app, accept, &mut request).await {
        return refused;
    }
    if sse {
        return super::sse::respond(&app, request, principal, &headers);
    }
    let role = principal.role;
    let gzip = accepts_gzip(&headers);
    let outline = app.outlines.of(&request);
    execute(&app, accept, gzip, request.data(principal), role, outline).await
}

async fn execute(
    app: &AppState,
    accept: Accept,
    gzip: bool,
    request: async_graphql::Request,
    role: crate::auth::Role,
    // What the document asks for, from `app.outlines` (`None`: it does
    // not parse or selects no operation).
    outline: Option<std::sync::Arc<super::document::Outline>>,
) -> Response {
    let started = Instant::now();
    let kind = match outline.as_ref().map(|o| o.ty) {
        Some(OperationType::Query) => "query",
        Some(OperationType::Mutation) => "mutation",
        Some(OperationType::Subscription) => "subscription",
        None => "invalid",
    };
    let span = operation_span(kind, outline.as_ref().and_then(|o| o.name.as_deref()));
    let key = app.response_cache.key(&request, role, outline.as_deref());
    let execution = run(
        app.schema.clone(),
        app.gateway.clone(),
        request,
        outline.clone(),
        span.clone(),
    );
    let (body, never_ran, errors) = match key {
        Some(key) => {
            let (rendered, freshness, served) =
                app.response_cache.serve(key, &app.gateway, execution).await;
            metrics::counter!(super::metric::RESPONSE_CACHE, "outcome" => served.as_str())
                .increment(1);
            let gzipped = gzip
                .then(|| rendered.gzip_body(freshness.clone(), served.as_str()))
                .flatten();
            let body = match gzipped {
                Some(gzipped) => Body::Gzip(gzipped),
                None => Body::Plain(rendered.body(freshness, served.as_str())),
            };
            (body, rendered.never_ran, rendered.errors)
        }
        None => {
            let executed = execution.await;
            let body = super::response_cache::encode(&executed.response, executed.never_ran);
            (
                Body::Plain(body),
                executed.never_ran,
                executed.response.errors.len(),
            )
        }
    };
    metrics::histogram!(super::metric::GRAPHQL_REQUEST_SECONDS, "operation" => kind)
        .record(started.elapsed().as_secs_f64());
    if errors > 0 {
        span.record("graphql.errors", errors);
    }
    let status = if never_ran && accept == Accept::GraphqlResponse {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    match body {
        Body::Plain(body) => json_response(accept, status, body),
        Body::Gzip(gzipped) => {
            let mut response = json_response(accept, status, String::new());
            *response.body_mut() = axum::body::Body::from(gzipped);
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
            response
        }
    }
}

/// A response body as rendered: plain JSON, or already gzipped (the
/// compression layer leaves an encoded body alone).
enum Body {
    Plain(String),
    Gzip(Vec<u8>),
}

/// True when the client takes gzip (RFC 9110 `Accept-Encoding`: `gzip`
/// or `*` with a nonzero weight, and gzip not refused by name).
fn accepts_gzip(headers: &HeaderMap) -> bool {
    let mut named = None;
    let mut any = None;
    for value in headers.get_all(header::ACCEPT_ENCODING) {
        let Ok(value) = value.to_str() else { continue };
        for coding in value.split(',') {
            let mut parts = coding.split(';');
            let name = parts.next().unwrap_or("").trim();
            // A weight that is not a qvalue (0 to 1) refuses the coding.
            let weight = parts
                .find_map(|p| {
                    let (key, value) = p.split_once('=')?;
                    key.trim().eq_ignore_ascii_case("q").then(|| {
                        value
                            .trim()
                            .parse::<f32>()
                            .ok()
                            .filter(|q| (0.0..=1.0).contains(q))
                            .unwrap_or(0.0)
                    })
                })
                .unwrap_or(1.0);
            if name.eq_ignore_ascii_case("gzip") || name.eq_ignore_ascii_case("x-gzip") {
                named = Some(weight > 0.0);
            } else if name == "*" {
                any = Some(weight > 0.0);
            }
        }
    }
    named.or(any).unwrap_or(false)
}

/// Runs one request within its budget, with its own loaders and the
/// freshness report in `extensions`.
fn run(
    schema: crate::graphql::DfSchema,
    gateway: std::sync::Arc<crate::graphql::GatewayState>,
    request: async_graphql::Request,
    outline: Option<std::sync::Arc<super::document::Outline>>,
    span: tracing::Span,
) -> impl std::future::Future<Output = super::response_cache::Executed> + Send + 'static {
    let started = Instant::now();
    async move {
        // The request never outlives its budget. Scheduler calls end a little
        // earlier, so what did resolve is still assembled and sent, with
        // errors for the rest, instead of nothing at all.
        let budget = gateway.request_timeout;
        let reserve = (budget / 10).min(Duration::from_millis(250));
        let calls_deadline = started + budget - reserve;
        let loaders = gateway.loaders_until(calls_deadline);
        let freshness = loaders.freshness.clone();
        let execution = schema.execute(request.data(loaders));
        let execution = tokio::time::timeout(budget, execution).instrument(span);
        let (mut response, ran_out) = match execution.await {
            Ok(response) => (response, false),
            Err(_) => {
                tracing::warn!(
                    budget_ms = budget.as_millis() as u64,
                    "GraphQL request ran out of its budget"
                );
                metrics::counter!(super::metric::GRAPHQL_REQUEST_TIMEOUTS).increment(1);
                (timed_out(budget), true)
            }
        };
        // A request error (parse, validation) has no data and no error path:
        // execution never started.
        let never_ran = !ran_out
            && response.data == async_graphql::Value::Null
            && !response.errors.is_empty()
            && response.errors.iter().all(|e| e.path.is_empty());
        if let Some(outline) = &outline {
            outline.shape.apply(&mut response.data);
        }
        if !never_ran {
            response.extensions.insert(
                "freshness".into(),
                async_graphql::Value::from_json(freshness.to_json()).unwrap_or_default(),
            );
        }
        super::response_cache::Executed {
            response,
            freshness,
            never_ran,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_is_taken_by_name_or_wildcard_unless_weighted_zero() {
        let accepts = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_str(value).unwrap(),
            );
            accepts_gzip(&headers)
        };
        assert!(accepts("gzip, deflate, br, zstd"));
        assert!(accepts("br;q=1.0, GZIP;q=0.5"));
        assert!(accepts("*"));
        assert!(!accepts("gzip;q=0"));
        assert!(!accepts("gzip; q=0.0, *"));
        assert!(!accepts("*;q=0"));
        assert!(!accepts("br, identity"));
        assert!(!accepts("gzip;q=x"));
        assert!(!accepts("gzip;q=NaN, br"));
        assert!(!accepts("gzip;q=2"));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }

    #[test]
    fn a_timed_out_request_has_a_code_and_no_location() {
        let body = serde_json::to_value(timed_out(Duration::from_secs(1))).unwrap();
        let error = &body["errors"][0];
        assert_eq!(error["extensions"]["code"], "REQUEST_TIMEOUT");
        assert!(error.get("locations").is_none(), "{error}");
        assert!(body["data"].is_null());
    }
}
