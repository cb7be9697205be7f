//! Shared execution of identical subscriptions: every client that sends
//! the same `hostEvents` document with the same variables is fed by one
//! execution, whose responses are serialized once and handed to each
//! connection as text. Without it, each event is resolved and serialized
//! once per subscriber (BENCHMARKS.md S6).
//!
//! Only subscriptions with no per-subscriber start (no "current state"
//! first message) can be shared: a late joiner must not miss anything the
//! others saw. Nothing a resolver reads differs between connections today;
//! when authorization lands, the key must include the principal.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use async_graphql::Positioned;
use async_graphql::parser::types::{
    DocumentOperations, ExecutableDocument, OperationDefinition, OperationType, Selection,
};
use futures::{FutureExt, StreamExt};
use tokio::sync::broadcast;
use tokio::task::AbortHandle;

use crate::graphql::DfSchema;
use crate::graphql::subscription::DeliveryStamp;

/// Root fields whose subscriptions may be shared.
const SHAREABLE: [&str; 2] = ["hostEvents", "hostEventBatches"];

/// Items (see [`Frame::Next`]) a shared subscriber may fall behind by.
const SHARED_CAPACITY: usize = 4096;

/// Responses one item carries at most.
const READY_AT_ONCE: usize = 64;

/// What a shared execution hands its subscribers, serialized.
#[derive(Clone, Debug)]
pub enum Frame {
    /// `next` payloads in order: every response the execution had ready
    /// at once, up to [`READY_AT_ONCE`]. A poll's burst of events is one
    /// item, so each of 10k subscribers takes it off the channel once, not
    /// once per event.
    Next(Arc<[Payload]>),
    /// The operation was refused before it ran: the errors array.
    Refused { errors: Arc<str> },
    /// The execution's stream ended.
    End,
}

/// A serialized response, made once for every subscriber: each
/// connection's writer copies it into its frame, between the head that
/// names its operation id and the closing brace.
#[derive(Debug)]
pub struct Payload {
    json: Box<str>,
    /// When the event behind it was observed.
    stamp: Option<i64>,
}

impl Payload {
    pub fn new(json: String, stamp: Option<i64>) -> Self {
        Self {
            json: json.into(),
            stamp,
        }
    }

    /// The response as JSON.
    pub fn json(&self) -> &str {
        &self.json
    }

    pub fn stamp(&self) -> Option<i64> {
        self.stamp
    }
}

/// The key under which `request` may share an execution, if it may.
pub fn share_key(request: &async_graphql::Request, role: crate::auth::Role) -> Option<String> {
    let document = async_graphql::parser::parse_query(&request.query).ok()?;
    let operation = selected_operation(&document, request.operation_name.as_deref())?;
    if operation.node.ty != OperationType::Subscription {
        return None;
    }
    let items = &operation.node.selection_set.node.items;
    let shareable = !items.is_empty()
        && items.iter().all(|item| match &item.node {
            // A resumed one starts with its own replay.
            Selection::Field(field) => {
                SHAREABLE.contains(&field.node.name.node.as_str())
                    && !field
                        .node
                        .arguments
                        .iter()
                        .any(|(name, _)| name.node == "after")
            }
            _ => false,
        });
    if !shareable || !document.fragments.is_empty() {
        return None;
    }
    let variables = serde_json::to_string(&request.variables).ok()?;
    Some(format!(
        "{}\u{0}{}\u{0}{}\u{0}{}",
        role.as_str(),
        request.operation_name.as_deref().unwrap_or(""),
        variables,
        request.query
    ))
}

/// True when `request` is a subscription (one that streams), as opposed to
/// a query or mutation sent over the websocket.
pub fn is_subscription(request: &async_graphql::Request) -> bool {
    let Ok(document) = async_graphql::parser::parse_query(&request.query) else {
        return false;
    };
    selected_operation(&document, request.operation_name.as_deref())
        .is_some_and(|op| op.node.ty == OperationType::Subscription)
}

/// The operation a request runs: the one named, else the document's only
/// one. The parser files a named operation under `Multiple` even when it
/// is alone, and a lone operation needs no `operationName`.
pub(crate) fn selected_operation<'a>(
    document: &'a ExecutableDocument,
    name: Option<&str>,
) -> Option<&'a Positioned<OperationDefinition>> {
    match (&document.operations, name) {
        (DocumentOperations::Single(op), _) => Some(op),
        (DocumentOperations::Multiple(ops), Some(name)) => ops.get(name),
        (DocumentOperations::Multiple(ops), None) if ops.len() == 1 => ops.values().next(),
        (DocumentOperations::Multiple(_), None) => None,
    }
}

/// A running shared execution; it stops when the last subscriber drops
/// its handle.
pub struct Shared {
    frames: broadcast::Sender<Frame>,
    task: AbortHandle,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Shared {
    pub fn subscribe(&self) -> broadcast::Receiver<Frame> {
        self.frames.subscribe()
    }
}

type Registry = Arc<Mutex<HashMap<String, (u64, Weak<Shared>)>>>;

/// The shared executions of one process.
#[derive(Clone, Default)]
pub struct Fanout {
    running: Registry,
    serial: Arc<std::sync::atomic::AtomicU64>,
}

fn lock(registry: &Registry) -> std::sync::MutexGuard<'_, HashMap<String, (u64, Weak<Shared>)>> {
    registry.lock().unwrap_or_else(|p| p.into_inner())
}

impl Fanout {
    /// The execution for `key`, started with `request` if none runs. The
    /// receiver is subscribed before the execution can produce anything.
    pub fn join(
        &self,
        key: String,
        schema: &DfSchema,
        request: async_graphql::Request,
        // The outline of the request's document: its responses' key order.
        outline: Option<Arc<super::document::Outline>>,
    ) -> (Arc<Shared>, broadcast::Receiver<Frame>) {
        let mut running = lock(&self.running);
        if let Some(shared) = running.get(&key).and_then(|(_, s)| s.upgrade()) {
            let rx = shared.subscribe();
            return (shared, rx);
        }
        running.retain(|_, (_, shared)| shared.strong_count() > 0);
        let serial = self
            .serial
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let registry = self.running.clone();
        let task_key = key.clone();
        let (frames, rx) = broadcast::channel(SHARED_CAPACITY);
        let stamp = DeliveryStamp::default();
        let mut responses = schema.execute_stream(request.data(stamp.clone()));
        let sender = frames.clone();
        let task = tokio::spawn(async move {
            let mut first = true;
            let mut refusal = None;
            let payload = |mut response: async_graphql::Response| {
                if let Some(outline) = &outline {
                    outline.shape.apply(&mut response.data);
                }
                // Taken right after its response: the next one sets it anew.
                Payload::new(serialize(&response), stamp.take())
            };
            while let Some(response) = responses.next().await {
                if first && response.data == async_graphql::Value::Null && response.is_err() {
                    refusal = Some(Frame::Refused {
                        errors: serialize(&response.errors).into(),
                    });
                    break;
                }
                first = false;
                let mut ready = vec![payload(response)];
                // What else is ready now goes in the same item; nothing
                // waits for more.
                let mut ended = false;
                while ready.len() < READY_AT_ONCE {
                    match responses.next().now_or_never() {
                        Some(Some(response)) => ready.push(payload(response)),
                        Some(None) => {
                            ended = true;
                            break;
                        }
                        None => break,
                    }
                }
                let _ = sender.send(Frame::Next(ready.into()));
                if ended {
                    break;
                }
            }
            // Under the registry's lock, so a client joining now either
            // hears how this execution ended or starts a new one.
            let mut running = lock(&registry);
            if running.get(&task_key).is_some_and(|(s, _)| *s == serial) {
                running.remove(&task_key);
            }
            if let Some(refusal) = refusal {
                let _ = sender.send(refusal);
            }
            let _ = sender.send(Frame::End);
        });
        let shared = Arc::new(Shared {
            frames,
            task: task.abort_handle(),
        });
        running.insert(key, (serial, Arc::downgrade(&shared)));
        (shared, rx)
    }

    /// Executions running now (for tests and metrics).
    pub fn running(&self) -> usize {
        lock(&self.running)
            .values()
            .filter(|(_, s)| s.strong_count() > 0)
            .count()
    }
}

fn serialize<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|e| {
        format!(
            "{{\"errors\":[{{\"message\":{}}}]}}",
            serde_json::Value::String(format!("response not serializable: {e}"))
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;

    fn request(query: &str) -> async_graphql::Request {
        async_graphql::Request::new(query)
    }

    #[test]
    fn only_plain_host_event_subscriptions_are_shared() {
        let a = share_key(
            &request("subscription { hostEvents { kind } }"),
            Role::Viewer,
        );
        let b = share_key(
            &request("subscription { hostEvents { kind } }"),
            Role::Viewer,
        );
        assert!(a.is_some() && a == b);
        // A lone named operation is shared too, under its own key.
        let named = share_key(
            &request("subscription Events { hostEvents { kind } }"),
            Role::Viewer,
        );
        assert!(named.is_some() && named != a);
        // Never shared across roles.
        assert_ne!(
            a,
            share_key(
                &request("subscription { hostEvents { kind } }"),
                Role::Admin
            )
        );
        assert_ne!(
            a,
            share_key(
                &request("subscription { hostEvents { host { id } } }"),
                Role::Viewer
            )
        );
        let with_vars = request("subscription($f: HostFilter) { hostEvents(filter: $f) { kind } }")
            .variables(async_graphql::Variables::from_json(
                serde_json::json!({"f": {"idcs": ["a"]}}),
            ));
        assert!(share_key(&with_vars, Role::Viewer).is_some());
        assert_ne!(share_key(&with_vars, Role::Viewer), a);
        for unshared in [
            "subscription { peerStateChanged(hostId: \"h\", taskId: \"t\", peerId: \"p\") { to } }",
            "subscription { hostEvents { kind } clusterHealth { up } }",
            "{ hostStats { total } }",
            "subscription { ...F } fragment F on Subscription { hostEvents { kind } }",
            "not graphql",
        ] {
            assert_eq!(
                share_key(&request(unshared), Role::Viewer),
                None,
                "{unshared}"
            );
        }
    }

    #[test]
    fn subscriptions_are_told_from_queries() {
        assert!(is_subscription(&request(
            "subscription { hostEvents { kind } }"
        )));
        // Named, alone, without operationName: as the console sends them.
        assert!(is_subscription(&request(
            "subscription Events { hostEvents { ...F } } fragment F on HostEvent { kind }"
        )));
        let two = "subscription A { hostEvents { kind } } query B { hostStats { total } }";
        assert!(!is_subscription(&request(two)));
        assert!(is_subscription(&request(two).operation_name("A")));
        assert!(!is_subscription(&request(two).operation_name("B")));
        assert!(!is_subscription(&request("{ hostStats { total } }")));
        assert!(!is_subscription(&request(
            "mutation { deleteHost(id: \"x\") }"
        )));
    }
}
