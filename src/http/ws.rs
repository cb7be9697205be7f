//! `/graphql/ws`: GraphQL over websocket, in graphql-transport-ws (the
//! `graphql-ws` library's protocol) and the legacy graphql-ws protocol of
//! subscriptions-transport-ws, chosen by the client's sub-protocol.
//!
//! Written here rather than taken from async-graphql because the spec's
//! close codes matter to clients: init timeout (4408), subscribe before ack
//! (4401), duplicate id (4409), second init (4429), bad message (4400).
//! Each connection has a bounded send queue; a client that stops reading is
//! disconnected instead of buffered for.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;

use super::AppState;
use crate::config::SubscriptionLimits;
use crate::events::metric;
use crate::graphql::subscription::DeliveryStamp;

/// Sub-protocols served, in order of preference.
pub const PROTOCOLS: [&str; 2] = ["graphql-transport-ws", "graphql-ws"];

/// The `connection_init` payload of a connection, reachable from resolvers
/// (where an auth token will be read).
#[derive(Clone, Debug, Default)]
pub struct ConnectionInitPayload(pub Value);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// graphql-transport-ws.
    Transport,
    /// Legacy graphql-ws (subscriptions-transport-ws).
    Legacy,
}

impl Protocol {
    pub fn from_header(value: Option<&str>) -> Protocol {
        match value {
            Some("graphql-ws") => Protocol::Legacy,
            _ => Protocol::Transport,
        }
    }
}

/// The subscription limits and the process-wide count of operations.
#[derive(Clone)]
pub struct Limits {
    pub config: SubscriptionLimits,
    active: Arc<AtomicUsize>,
}

impl Limits {
    pub fn new(config: SubscriptionLimits) -> Limits {
        Limits {
            config,
            active: Arc::default(),
        }
    }

    /// Operations running on every connection.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    fn try_take(&self) -> Option<Slot> {
        let taken = self
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.config.total).then_some(n + 1)
            });
        taken.ok().map(|_| Slot(self.active.clone()))
    }
}

/// One operation's share of the global limit.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

enum Out {
    /// A message, with the observation time of the event behind it.
    Text(String, Option<i64>),
    Ping,
    Close(u16, String),
}

/// Why the connection ends.
enum End {
    Close(u16, String),
    /// The client went away or the socket failed: nothing to say.
    Gone,
}

/// Serves one upgraded connection until either side ends it.
pub async fn serve(socket: WebSocket, protocol: Protocol, app: AppState, stop: CancellationToken) {
    let limits = app.subscriptions.clone();
    let (mut sink, mut incoming) = socket.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Out>(limits.config.send_queue);
    let writer = tokio::spawn(async move {
        let mut stamps = Vec::new();
        'write: while let Some(first) = out_rx.recv().await {
            // Whatever else is queued goes out in the same flush: one
            // syscall for a burst of events, not one per message.
            let mut next = Some(first);
            while let Some(out) = next.take() {
                let message = match out {
                    Out::Text(text, stamp) => {
                        stamps.extend(stamp);
                        Message::Text(Utf8Bytes::from(text))
                    }
                    Out::Ping => Message::Ping(Default::default()),
                    Out::Close(code, reason) => {
                        let frame = CloseFrame {
                            code,
                            reason: Utf8Bytes::from(close_reason(reason)),
                        };
                        let _ = sink.send(Message::Close(Some(frame))).await;
                        break 'write;
                    }
                };
                if sink.feed(message).await.is_err() {
                    break 'write;
                }
                if stamps.len() < 64 {
                    next = out_rx.try_recv().ok();
                }
            }
            if sink.flush().await.is_err() {
                break;
            }
            let now = crate::events::now_ms();
            for observed in stamps.drain(..) {
                metrics::histogram!(metric::DELIVERY_LAG)
                    .record((now - observed).max(0) as f64 / 1000.0);
            }
        }
        let _ = sink.close().await;
    });

    let mut conn = Connection {
        protocol,
        app,
        limits,
        out: out_tx,
        ops: HashMap::new(),
        init: None,
        slow: CancellationToken::new(),
    };
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(String, u64)>();
    let init_deadline = tokio::time::sleep(conn.limits.config.init_timeout);
    tokio::pin!(init_deadline);
    let keep_alive = conn.limits.config.keep_alive;
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + keep_alive, keep_alive);
    let mut last_heard = Instant::now();
    let mut next_op = 0u64;

    let end = loop {
        tokio::select! {
            // Finished operations first, so a client that reuses an id
            // right after `complete` is not told it already exists.
            biased;
            Some((id, op)) = done_rx.recv() => {
                if conn.ops.get(&id).is_some_and(|(n, _)| *n == op) {
                    conn.ops.remove(&id);
                }
            }
            _ = &mut init_deadline, if conn.init.is_none() => {
                break End::Close(4408, "Connection initialisation timeout".into());
            }
            _ = stop.cancelled() => break End::Close(1001, "server shutting down".into()),
            _ = conn.slow.cancelled() => break End::Gone,
            _ = ping.tick() => {
                if last_heard.elapsed() > conn.limits.config.idle_timeout {
                    break End::Close(1000, "idle timeout: nothing received".into());
                }
                let keepalive = match conn.protocol {
                    Protocol::Transport => json!({"type": "ping"}),
                    Protocol::Legacy => json!({"type": "ka"}),
                };
                // Both: the protocol ping for clients that expect one, a
                // websocket ping for liveness (browsers answer it).
                if conn.init.is_some() || conn.protocol == Protocol::Transport {
                    conn.send_now(keepalive);
                }
                let _ = conn.out.try_send(Out::Ping);
            }
            frame = incoming.next() => {
                let Some(Ok(frame)) = frame else {
                    // A frame over the size limit also ends up here.
                    break End::Gone;
                };
                last_heard = Instant::now();
                let text = match frame {
                    Message::Text(text) => text,
                    Message::Binary(_) => break End::Close(4400, "binary messages are not part of the protocol".into()),
                    Message::Close(_) => break End::Gone,
                    Message::Ping(_) | Message::Pong(_) => continue,
                };
                if let Some(end) = conn.handle(text.as_str(), &done_tx, &mut next_op) {
                    break end;
                }
            }
        }
    };

    for (_, (_, op)) in conn.ops.drain() {
        op.abort();
    }
    if let End::Close(code, reason) = end {
        tracing::debug!(code, %reason, "closing websocket");
        let _ = conn.out.try_send(Out::Close(code, reason));
    }
    let slow_after = conn.limits.config.slow_consumer_timeout;
    drop(conn);
    // A writer stuck on a client that does not read would hold the socket
    // and its buffers forever: give it a moment to say goodbye, then end it.
    let writer_abort = writer.abort_handle();
    if tokio::time::timeout(slow_after.min(Duration::from_secs(2)), writer)
        .await
        .is_err()
    {
        writer_abort.abort();
        tracing::debug!("websocket writer did not finish in time; aborted");
    }
}

struct Connection {
    protocol: Protocol,
    app: AppState,
    limits: Limits,
    out: mpsc::Sender<Out>,
    /// Running operations by client id, with a serial number so a late
    /// "done" of a replaced operation does not remove its successor.
    ops: HashMap<String, (u64, AbortHandle)>,
    init: Option<ConnectionInitPayload>,
    /// Cancelled when the client stopped reading.
    slow: CancellationToken,
}

impl Connection {
    /// Queues a control message; a full queue means a client that does
    /// not read, which the forwarders notice and disconnect.
    fn send_now(&self, message: Value) {
        let _ = self.out.try_send(Out::Text(message.to_string(), None));
    }

    /// Handles one client message; `Some` ends the connection.
    fn handle(
        &mut self,
        text: &str,
        done: &mpsc::UnboundedSender<(String, u64)>,
        next_op: &mut u64,
    ) -> Option<End> {
        let bad = |why: &str| Some(End::Close(4400, why.to_string()));
        let Ok(Value::Object(message)) = serde_json::from_str::<Value>(text) else {
            return bad("Invalid message received: not a JSON object");
        };
        let Some(kind) = message.get("type").and_then(Value::as_str) else {
            return bad("Invalid message received: no type");
        };
        let id = message.get("id").and_then(Value::as_str).map(str::to_owned);
        let payload = message.get("payload").cloned().unwrap_or(Value::Null);
        match (self.protocol, kind) {
            (_, "connection_init") => {
                if self.init.is_some() {
                    return Some(End::Close(4429, "Too many initialisation requests".into()));
                }
                if !matches!(payload, Value::Object(_) | Value::Null) {
                    return bad(
                        "Invalid message received: connection_init payload must be an object",
                    );
                }
                self.init = Some(ConnectionInitPayload(payload));
                self.send_now(json!({"type": "connection_ack"}));
                if self.protocol == Protocol::Legacy {
                    self.send_now(json!({"type": "ka"}));
                }
                None
            }
            (Protocol::Transport, "ping") => {
                let mut pong = json!({"type": "pong"});
                if !payload.is_null() {
                    pong["payload"] = payload;
                }
                self.send_now(pong);
                None
            }
            (Protocol::Transport, "pong") => None,
            (Protocol::Transport, "subscribe") | (Protocol::Legacy, "start") => {
                if self.init.is_none() {
                    return Some(End::Close(4401, "Unauthorized".into()));
                }
                let Some(id) = id.filter(|id| !id.is_empty()) else {
                    return bad("Invalid message received: subscribe without an id");
                };
                let request = match serde_json::from_value::<async_graphql::Request>(payload) {
                    Ok(request) => request,
                    Err(e) => {
                        return Some(End::Close(
                            4400,
                            format!("Invalid message received: payload: {e}"),
                        ));
                    }
                };
                if let Some((_, running)) = self.ops.get(&id) {
                    if self.protocol == Protocol::Transport {
                        return Some(End::Close(
                            4409,
                            format!("Subscriber for {id} already exists"),
                        ));
                    }
                    // subscriptions-transport-ws replaced the old operation.
                    running.abort();
                    self.ops.remove(&id);
                }
                self.start(id, request, done, next_op);
                None
            }
            (Protocol::Transport, "complete") | (Protocol::Legacy, "stop") => {
                if let Some(id) = id
                    && let Some((_, op)) = self.ops.remove(&id)
                {
                    op.abort();
                    if self.protocol == Protocol::Legacy {
                        self.send_now(json!({"type": "complete", "id": id}));
                    }
                }
                None
            }
            (Protocol::Legacy, "connection_terminate") => {
                Some(End::Close(1000, "terminated".into()))
            }
            (_, other) => Some(End::Close(
                4400,
                format!("Invalid message received: unknown type {other:?}"),
            )),
        }
    }

    fn start(
        &mut self,
        id: String,
        request: async_graphql::Request,
        done: &mpsc::UnboundedSender<(String, u64)>,
        next_op: &mut u64,
    ) {
        let limit = self.limits.config.per_connection;
        let slot = if self.ops.len() >= limit {
            None
        } else {
            self.limits.try_take()
        };
        let Some(slot) = slot else {
            let why = if self.ops.len() >= limit {
                format!("at most {limit} operations per connection")
            } else {
                "the server runs as many subscriptions as it may; try again later".to_string()
            };
            let error = json!({"message": why, "extensions": {"code": "TOO_MANY_SUBSCRIPTIONS"}});
            self.send_now(match self.protocol {
                Protocol::Transport => json!({"type": "error", "id": id, "payload": [error]}),
                Protocol::Legacy => json!({"type": "error", "id": id, "payload": error}),
            });
            return;
        };
        *next_op += 1;
        let serial = *next_op;
        let stamp = DeliveryStamp::default();
        // A connection runs many operations over time: loaders batch
        // within one but memoize nothing across them.
        let loaders = self.app.gateway.loaders();
        loaders.disable_request_cache();
        let request = request
            .data(loaders)
            .data(stamp.clone())
            .data(self.init.clone().unwrap_or_default());
        let schema = self.app.schema.clone();
        let out = self.out.clone();
        let protocol = self.protocol;
        let slow = self.slow.clone();
        let slow_after = self.limits.config.slow_consumer_timeout;
        let done = done.clone();
        let op_id = id.clone();
        let task = tokio::spawn(async move {
            let _slot = slot;
            let mut responses = schema.execute_stream(request);
            let mut first = true;
            let mut refused = false;
            while let Some(response) = responses.next().await {
                let message = match protocol {
                    // Errors before execution (validation, bad variables)
                    // are an `error` message with no `complete` after it.
                    Protocol::Transport
                        if first
                            && response.data == async_graphql::Value::Null
                            && response.is_err() =>
                    {
                        refused = true;
                        frame("error", &op_id, &response.errors)
                    }
                    Protocol::Transport => frame("next", &op_id, &response),
                    Protocol::Legacy => frame("data", &op_id, &response),
                };
                first = false;
                let queued = out.send_timeout(Out::Text(message, stamp.take()), slow_after);
                if queued.await.is_err() {
                    tracing::info!(id = %op_id, "websocket client stopped reading; disconnecting it");
                    slow.cancel();
                    return;
                }
                if refused {
                    break;
                }
            }
            if !refused {
                let complete = json!({"type": "complete", "id": op_id});
                let _ = out
                    .send_timeout(Out::Text(complete.to_string(), None), slow_after)
                    .await;
            }
            let _ = done.send((op_id, serial));
        });
        self.ops.insert(id, (serial, task.abort_handle()));
    }
}

/// One operation message, serialized straight to text (no intermediate
/// JSON tree: this runs once per event per subscriber).
fn frame<T: serde::Serialize>(kind: &'static str, id: &str, payload: &T) -> String {
    #[derive(serde::Serialize)]
    struct Frame<'a, T> {
        r#type: &'static str,
        id: &'a str,
        payload: &'a T,
    }
    serde_json::to_string(&Frame {
        r#type: kind,
        id,
        payload,
    })
    .unwrap_or_else(|e| {
        json!({"type": "error", "id": id, "payload": [{"message": format!("response not serializable: {e}")}]})
            .to_string()
    })
}

/// A close reason within the 123 bytes a close frame may carry (reasons
/// can quote client input), cut at a character boundary.
fn close_reason(mut reason: String) -> String {
    const MAX: usize = 123;
    if reason.len() > MAX {
        let mut end = MAX;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    reason
}

#[cfg(test)]
mod tests {
    use super::close_reason;

    #[test]
    fn close_reasons_fit_a_close_frame() {
        assert_eq!(close_reason("short".into()), "short");
        let long = format!("Subscriber for {} already exists", "é".repeat(100));
        let cut = close_reason(long);
        assert!(cut.len() <= 123 && cut.starts_with("Subscriber for é"));
    }
}
