//! The one pub/sub listener of the process: one subscriber connection on
//! one channel ([`crate::cache::keys::BUS_CHANNEL`]) that carries every
//! message replicas send each other, cache invalidations and events alike,
//! and one task that hands each to the [`Handler`] of its [`Topic`], one
//! at a time. One channel and one connection, so a replica applies an
//! invalidation and an event in the order another replica published them
//! (two channels on two connections could swap them).
//!
//! On Redis Cluster the channel is sharded (`SSUBSCRIBE`/`SPUBLISH`, Redis
//! 7): it lives on the shard of its slot, and the listener follows that
//! shard through fail-overs (a lost node connection counts as a lost
//! subscription: the listener subscribes again and handlers make up).
//!
//! A message is one tag byte (its topic) and the topic's own bytes.
//! Messages published while the listener is disconnected are lost: each
//! handler is told of every (re)subscription ([`Handler::subscribed`]) so
//! it can make up for them, and [`Hub::state`] counts subscriptions.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What a message on the bus channel is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topic {
    /// A cache invalidation (`cache::invalidation`'s text format).
    Invalidation,
    /// A change event (`events::bus`'s protobuf).
    Event,
}

impl Topic {
    fn tag(self) -> u8 {
        match self {
            Topic::Invalidation => b'i',
            Topic::Event => b'e',
        }
    }

    fn from_tag(tag: u8) -> Option<Topic> {
        match tag {
            b'i' => Some(Topic::Invalidation),
            b'e' => Some(Topic::Event),
            _ => None,
        }
    }
}

/// The bytes on the channel of one `topic` message.
pub fn frame(topic: Topic, body: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(body.len() + 1);
    bytes.push(topic.tag());
    bytes.extend_from_slice(body);
    bytes
}

/// A message's topic and body; `None` for what is not one.
pub fn unframe(bytes: &[u8]) -> Option<(Topic, &[u8])> {
    let (&tag, body) = bytes.split_first()?;
    Some((Topic::from_tag(tag)?, body))
}

/// Receives one topic's messages from other replicas.
pub trait Handler: Send + Sync + 'static {
    /// One message, in publish order; the next waits for this one.
    fn message<'a>(&'a self, body: &'a [u8]) -> BoxFuture<'a, ()>;

    /// The listener (re)subscribed; messages sent before may be lost.
    fn subscribed(&self) {}
}

/// How the listener connects and subscribes.
pub(crate) enum Subscriber {
    /// `SUBSCRIBE` on a dedicated connection to one Redis.
    Single(Box<redis::Client>),
    /// `SSUBSCRIBE` on a dedicated RESP3 cluster connection, from these
    /// seed nodes (each attempt led by the next one).
    Cluster {
        nodes: Vec<String>,
        next_seed: std::sync::atomic::AtomicUsize,
    },
}

/// A live subscription.
enum Subscription {
    Single(redis::aio::PubSub),
    Cluster {
        conn: redis::cluster_async::ClusterConnection,
        pushes: tokio::sync::mpsc::UnboundedReceiver<redis::PushInfo>,
    },
}

/// The listener's waits.
pub(crate) struct Timing {
    pub(crate) connect_timeout: Duration,
    pub(crate) backoff_min: Duration,
    pub(crate) backoff_max: Duration,
    /// Liveness check of an idle subscription.
    pub(crate) ping_every: Duration,
}

/// The handlers and the state of the listener task.
pub(crate) struct Hub {
    subscriber: Subscriber,
    timing: Timing,
    handlers: RwLock<Vec<(Topic, Arc<dyn Handler>)>>,
    started: AtomicBool,
    listening: AtomicBool,
    /// Successful subscriptions so far.
    subscriptions: watch::Sender<u64>,
    shown_url: String,
    stop: CancellationToken,
}

impl Hub {
    pub(crate) fn new(
        subscriber: Subscriber,
        timing: Timing,
        shown_url: String,
        stop: CancellationToken,
    ) -> Arc<Hub> {
        Arc::new(Hub {
            subscriber,
            timing,
            handlers: RwLock::new(Vec::new()),
            started: AtomicBool::new(false),
            listening: AtomicBool::new(false),
            subscriptions: watch::Sender::new(0),
            shown_url,
            stop,
        })
    }

    /// Adds a handler (replacing the topic's previous one) and starts the
    /// listener task if it is not running yet.
    pub(crate) fn register(self: &Arc<Self>, topic: Topic, handler: Arc<dyn Handler>) {
        {
            let mut handlers = self.handlers.write().unwrap_or_else(|p| p.into_inner());
            handlers.retain(|(t, _)| *t != topic);
            handlers.push((topic, handler));
        }
        if !self.started.swap(true, Ordering::AcqRel) {
            tokio::spawn(self.clone().run());
        }
    }

    pub(crate) fn state(&self) -> (bool, u64) {
        (
            self.listening.load(Ordering::Acquire),
            *self.subscriptions.borrow(),
        )
    }

    pub(crate) async fn wait_subscribed(&self, within: Duration) -> bool {
        let mut rx = self.subscriptions.subscribe();
        tokio::time::timeout(within, rx.wait_for(|n| *n > 0))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    fn handler(&self, topic: Topic) -> Option<Arc<dyn Handler>> {
        self.handlers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(t, _)| *t == topic)
            .map(|(_, h)| h.clone())
    }

    fn handlers(&self) -> Vec<Arc<dyn Handler>> {
        self.handlers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(_, h)| h.clone())
            .collect()
    }

    /// Subscribes, pumps, resubscribes with backoff; until `stop`.
    async fn run(self: Arc<Self>) {
        let mut backoff = self.timing.backoff_min;
        // Warn once per failure streak, not on every retry.
        let mut warned = false;
        loop {
            let subscribed = tokio::select! {
                result = self.subscribe() => result,
                _ = self.stop.cancelled() => return,
            };
            match subscribed {
                Ok(pubsub) => {
                    if warned || *self.subscriptions.borrow() > 0 {
                        tracing::info!(url = %self.shown_url, "Redis listener subscribed again");
                    }
                    backoff = self.timing.backoff_min;
                    warned = false;
                    self.listening.store(true, Ordering::Release);
                    for handler in self.handlers() {
                        handler.subscribed();
                    }
                    self.subscriptions.send_modify(|n| *n += 1);
                    let stopped = self.pump(pubsub).await;
                    self.listening.store(false, Ordering::Release);
                    if stopped {
                        return;
                    }
                    tracing::warn!(
                        url = %self.shown_url,
                        "Redis listener lost its connection; resubscribing"
                    );
                }
                Err(error) if !warned => {
                    warned = true;
                    tracing::warn!(
                        %error,
                        url = %self.shown_url,
                        channel = crate::cache::keys::BUS_CHANNEL,
                        "Redis listener cannot subscribe; other replicas' invalidations \
                         and events do not reach this one until it can (retrying)"
                    );
                }
                Err(error) => {
                    tracing::debug!(%error, url = %self.shown_url, "Redis listener still cannot subscribe");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = self.stop.cancelled() => return,
            }
            backoff = (backoff * 2).min(self.timing.backoff_max);
        }
    }

    async fn subscribe(&self) -> Result<Subscription, String> {
        let channel = crate::cache::keys::BUS_CHANNEL;
        let connect = async {
            match &self.subscriber {
                Subscriber::Single(client) => {
                    let mut pubsub = client.get_async_pubsub().await.map_err(|e| e.to_string())?;
                    pubsub.subscribe(channel).await.map_err(|e| e.to_string())?;
                    Ok(Subscription::Single(pubsub))
                }
                Subscriber::Cluster { nodes, next_seed } => {
                    let (tx, pushes) = tokio::sync::mpsc::unbounded_channel();
                    let first = next_seed.fetch_add(1, Ordering::Relaxed);
                    let client = super::cluster_builder(
                        super::rotated(nodes, first),
                        self.timing.connect_timeout,
                        self.timing.connect_timeout,
                    )
                    .use_protocol(redis::ProtocolVersion::RESP3)
                    .push_sender(tx)
                    .build()
                    .map_err(|e| e.to_string())?;
                    let mut conn = client
                        .get_async_connection()
                        .await
                        .map_err(|e| e.to_string())?;
                    conn.ssubscribe(channel).await.map_err(|e| e.to_string())?;
                    Ok(Subscription::Cluster { conn, pushes })
                }
            }
        };
        let within = self.timing.connect_timeout;
        match tokio::time::timeout(within, connect).await {
            Ok(result) => result,
            Err(_) => Err(format!("timed out after {within:?}")),
        }
    }

    /// Hands out messages until the connection fails (false) or `stop`
    /// (true).
    async fn pump(&self, subscription: Subscription) -> bool {
        match subscription {
            Subscription::Single(pubsub) => self.pump_single(pubsub).await,
            Subscription::Cluster { conn, pushes } => self.pump_cluster(conn, pushes).await,
        }
    }

    async fn pump_single(&self, pubsub: redis::aio::PubSub) -> bool {
        let (mut sink, mut stream) = pubsub.split();
        let mut ping = self.ping_interval().await;
        loop {
            tokio::select! {
                message = stream.next() => {
                    let Some(message) = message else { return false };
                    self.hand_out(message.get_payload_bytes()).await;
                }
                _ = ping.tick() => {
                    let alive = tokio::time::timeout(
                        self.timing.connect_timeout,
                        sink.ping::<redis::Value>(),
                    )
                    .await;
                    if !matches!(alive, Ok(Ok(_))) {
                        return false;
                    }
                }
                _ = self.stop.cancelled() => return true,
            }
        }
    }

    async fn pump_cluster(
        &self,
        mut conn: redis::cluster_async::ClusterConnection,
        mut pushes: tokio::sync::mpsc::UnboundedReceiver<redis::PushInfo>,
    ) -> bool {
        let mut ping = self.ping_interval().await;
        loop {
            tokio::select! {
                push = pushes.recv() => {
                    let Some(push) = push else { return false };
                    match push.kind {
                        redis::PushKind::SMessage | redis::PushKind::Message => {
                            if let Some(redis::Value::BulkString(bytes)) = push.data.get(1) {
                                self.hand_out(bytes).await;
                            }
                        }
                        // A node connection dropped, or the slot moved
                        // (fail-over): messages may be lost; start over.
                        redis::PushKind::Disconnection | redis::PushKind::SUnsubscribe => {
                            return false;
                        }
                        _ => {}
                    }
                }
                _ = ping.tick() => {
                    let alive = tokio::time::timeout(
                        self.timing.connect_timeout,
                        redis::cmd("PING").query_async::<redis::Value>(&mut conn),
                    )
                    .await;
                    if !matches!(alive, Ok(Ok(_))) {
                        return false;
                    }
                }
                _ = self.stop.cancelled() => return true,
            }
        }
    }

    async fn ping_interval(&self) -> tokio::time::Interval {
        let mut ping = tokio::time::interval(self.timing.ping_every);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        ping
    }

    async fn hand_out(&self, bytes: &[u8]) {
        let Some((topic, body)) = unframe(bytes) else {
            tracing::warn!(len = bytes.len(), "message of no known topic ignored");
            return;
        };
        match self.handler(topic) {
            Some(handler) => handler.message(body).await,
            None => tracing::trace!(?topic, "message with no handler here"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_roundtrip_and_garbage_is_refused() {
        for topic in [Topic::Invalidation, Topic::Event] {
            let bytes = frame(topic, b"body");
            assert_eq!(unframe(&bytes), Some((topic, &b"body"[..])));
        }
        assert_eq!(unframe(b""), None);
        assert_eq!(unframe(b"xbody"), None);
        assert_eq!(unframe(b"e"), Some((Topic::Event, &b""[..])));
    }
}
