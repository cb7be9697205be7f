//! GraphQL over Server-Sent Events: the graphql-sse protocol's "distinct
//! connections mode" on `/graphql`. A POST (or a GET, for `EventSource`)
//! that accepts `text/event-stream` gets one operation's results as
//! `event: next` (each a whole GraphQL response, errors after acceptance
//! included), then `event: complete`. Queries and mutations send one
//! `next`; subscriptions one per message, until they end or the client
//! goes.
//!
//! It is a way in, not a second implementation: the caller has already
//! admitted the request like any other `/graphql` request (rate limits,
//! CSRF rules, authentication, persisted operations), and the operation
//! runs on the same schema, resolvers and limits as on the websocket,
//! taking one of the `[subscriptions] total` slots while it streams, and
//! ending when the gateway stops.
//!
//! dfgraph's extension: an event the event log holds goes out with its
//! cursor as the SSE `id`, and a request with `Last-Event-ID` (which
//! `EventSource` resends by itself when it reconnects) resumes from it, as
//! `after` would.

use std::convert::Infallible;

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;

use super::AppState;
use crate::events::log::EventCursor;
use crate::graphql::subscription::{CursorStamp, DeliveryStamp, ResumeFrom};

const EVENT_STREAM: &str = "text/event-stream";

/// Whether the client asks for an event stream (graphql-sse: `Accept:
/// text/event-stream`).
pub fn wanted(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|part| {
            part.split(';')
                .next()
                .is_some_and(|media| media.trim().eq_ignore_ascii_case(EVENT_STREAM))
        })
}

/// A refusal before the stream starts: a plain GraphQL error response.
fn refused(status: StatusCode, code: &str, message: String) -> Response {
    let body = serde_json::json!({ "errors": [{
        "message": message,
        "extensions": { "code": code },
    }]});
    (
        status,
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        body.to_string(),
    )
        .into_response()
}

/// Runs an admitted `request` as `principal` and streams its results.
pub fn respond(
    app: &AppState,
    request: async_graphql::Request,
    principal: crate::auth::Principal,
    headers: &HeaderMap,
) -> Response {
    let resume = match headers.get("last-event-id").map(|v| v.to_str()) {
        None => None,
        Some(Ok(id)) if id.trim().is_empty() => None,
        Some(Ok(id)) => match EventCursor::decode(id.trim()) {
            Ok(cursor) => Some(ResumeFrom(cursor)),
            Err(e) => {
                return refused(
                    StatusCode::BAD_REQUEST,
                    "BAD_REQUEST",
                    format!("Last-Event-ID: {e}"),
                );
            }
        },
        Some(Err(_)) => {
            return refused(
                StatusCode::BAD_REQUEST,
                "BAD_REQUEST",
                "Last-Event-ID is not text".into(),
            );
        }
    };
    let Some(slot) = app.subscriptions.try_take() else {
        return refused(
            StatusCode::SERVICE_UNAVAILABLE,
            "TOO_MANY_SUBSCRIPTIONS",
            format!(
                "this server runs {} operations already ([subscriptions] total)",
                app.subscriptions.config.total
            ),
        );
    };
    let live =
        super::fanout::is_subscription(&request).then(|| app.gateway.events.live_subscription());
    let outline = app.outlines.of(&request);
    // One operation per response: loaders batch within it and memoize
    // nothing across a subscription's messages.
    let loaders = app.gateway.loaders();
    loaders.disable_request_cache();
    let cursors = CursorStamp::default();
    let mut request = request
        .data(loaders)
        .data(principal)
        .data(DeliveryStamp::default())
        .data(cursors.clone());
    if let Some(resume) = resume {
        request = request.data(resume);
    }
    let results = app.schema.execute_stream(request).map(move |mut response| {
        if let Some(outline) = &outline {
            outline.shape.apply(&mut response.data);
        }
        let data = serde_json::to_string(&response).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "response not serializable");
            r#"{"errors":[{"message":"response not serializable"}]}"#.to_owned()
        });
        let mut event = Event::default().event("next").data(data);
        if let Some(cursor) = cursors.take() {
            event = event.id(cursor.encode());
        }
        Ok::<_, Infallible>(event)
    });
    let complete = futures::stream::once(async move {
        // Held until the stream ends (or the client goes and the body is
        // dropped with them).
        drop((slot, live));
        Ok(Event::default().event("complete").data(""))
    });
    // A stopping gateway ends the stream without `complete`: an
    // `EventSource` reconnects (to another replica) with its last id.
    let stream = results
        .chain(complete)
        .take_until(app.shutdown.clone().cancelled_owned());
    let keep_alive = KeepAlive::new().interval(app.subscriptions.config.keep_alive);
    let mut response = Sse::new(stream).keep_alive(keep_alive).into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-cache"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_stream_is_asked_for_by_accept() {
        let with = |accept: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::ACCEPT, accept.parse().unwrap());
            wanted(&headers)
        };
        assert!(with("text/event-stream"));
        assert!(with("application/json, Text/Event-Stream; q=0.9"));
        assert!(!with("application/json"));
        assert!(!with("*/*"));
        assert!(!wanted(&HeaderMap::new()));
    }
}
