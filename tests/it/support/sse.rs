//! A small graphql-sse client over real HTTP: one request, its events
//! read as they arrive (`event`, `data` as JSON, `id`), keep-alive
//! comments skipped.

use std::time::Duration;

use serde_json::{Value, json};

/// One server-sent event.
#[derive(Debug)]
pub struct SseEvent {
    pub event: String,
    pub data: Value,
    pub id: Option<String>,
}

pub struct SseClient {
    response: reqwest::Response,
    buffer: String,
}

impl SseClient {
    /// POSTs `query` asking for an event stream (with `Last-Event-ID`
    /// when given) and checks the stream was accepted.
    pub async fn post(
        base: &str,
        query: &str,
        variables: Value,
        last_event_id: Option<&str>,
    ) -> SseClient {
        let mut request = reqwest::Client::new()
            .post(format!("{base}/graphql"))
            .header("accept", "text/event-stream")
            .json(&json!({ "query": query, "variables": variables }));
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        SseClient::accepted(request.send().await.expect("request sent"))
    }

    /// The stream of an already sent request; panics unless accepted.
    pub fn accepted(response: reqwest::Response) -> SseClient {
        assert_eq!(response.status(), 200);
        let media = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        assert!(media.starts_with("text/event-stream"), "{media}");
        SseClient {
            response,
            buffer: String::new(),
        }
    }

    /// The next event within `within`; `None` when the stream ended.
    pub async fn next(&mut self, within: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                if let Some(event) = parse(&block) {
                    return Some(event);
                }
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .unwrap_or_else(|_| panic!("no event within {within:?}"))
                .expect("stream readable")?;
            self.buffer
                .push_str(std::str::from_utf8(&chunk).expect("UTF-8"));
        }
    }

    /// The data of the next event, which must be a `next`.
    pub async fn next_data(&mut self, within: Duration) -> (Value, Option<String>) {
        let event = self.next(within).await.expect("a next event");
        assert_eq!(event.event, "next", "{event:?}");
        (event.data, event.id)
    }
}

/// One event block; `None` for a comment-only block (keep-alive).
fn parse(block: &str) -> Option<SseEvent> {
    let (mut event, mut data, mut id) = (None, String::new(), None);
    for line in block.lines() {
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => event = Some(value.to_owned()),
            "data" => data.push_str(value),
            "id" => id = Some(value.to_owned()),
            _ => {}
        }
    }
    Some(SseEvent {
        event: event?,
        data: if data.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&data).expect("JSON data")
        },
        id,
    })
}
