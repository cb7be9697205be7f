//! The event bus: an in-process broadcast every subscription listens on,
//! and, with Redis, the `dfgraph:v1:events` pub/sub channel that carries a
//! replica's events to every other replica. The publisher delivers to its
//! own subscribers directly (so a Redis outage does not silence them) and
//! ignores its own messages when they come back from Redis.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use prost::Message;
use redis::aio::ConnectionManager;
use tokio::sync::{Mutex, broadcast};
use tokio_util::sync::CancellationToken;

use super::{Event, HostChange, What, metric};
use crate::cache::keys::EVENTS_CHANNEL;
use crate::cache::{Cache, CacheKey};
use crate::clock::{Clock, SystemClock};
use crate::ids::PeerKey;
use crate::proto::common::v2::Host;
use crate::proto::events::v1::{Event as WireEvent, EventKind};

/// Events a subscriber may fall behind by before it is told it lost some
/// (at least twice the watch set, so a new leader's baselines fit).
const MIN_LOCAL_CAPACITY: usize = 8192;

const WIRE_VERSION: u32 = 1;

/// The bytes of `event` on the channel; `None` for events that stay local.
pub fn encode(instance: &str, event: &Event) -> Option<Vec<u8>> {
    let mut wire = WireEvent {
        version: WIRE_VERSION,
        instance: instance.to_owned(),
        cluster_id: event.cluster_id,
        observed_at_ms: event.observed_at_ms,
        ..WireEvent::default()
    };
    match &event.what {
        What::Host {
            change,
            host,
            changed_fields,
        } => {
            wire.set_kind(match change {
                HostChange::Joined => EventKind::HostJoined,
                HostChange::Left => EventKind::HostLeft,
                HostChange::Updated => EventKind::HostUpdated,
            });
            wire.host = Some(Host::clone(host));
            wire.changed_fields = changed_fields.clone();
        }
        What::Peer {
            key,
            peer,
            from,
            baseline,
        } => {
            wire.set_kind(EventKind::Peer);
            wire.peer = peer.as_deref().cloned();
            wire.from = from.clone();
            wire.host_id = key.host_id.clone();
            wire.task_id = key.task_id.clone();
            wire.peer_id = key.peer_id.clone();
            wire.baseline = *baseline;
        }
        What::Task {
            task_id,
            task,
            changed_fields,
            baseline,
        } => {
            wire.set_kind(EventKind::Task);
            wire.task = task.as_deref().cloned();
            wire.task_id = task_id.clone();
            wire.changed_fields = changed_fields.clone();
            wire.baseline = *baseline;
        }
        What::Scheduler { .. } => return None,
    }
    Some(wire.encode_to_vec())
}

/// Why a message from the channel was not taken.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    #[error("not an event: {0}")]
    Malformed(String),
    #[error("event format version {0} is not understood")]
    Version(u32),
    #[error("unknown event kind {0}")]
    Kind(i32),
}

/// An event from the channel and the instance that sent it.
pub fn decode(bytes: &[u8]) -> Result<(String, Event), DecodeError> {
    let wire = WireEvent::decode(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if wire.version != WIRE_VERSION {
        return Err(DecodeError::Version(wire.version));
    }
    let host = |change| -> Result<What, DecodeError> {
        let host = wire
            .host
            .clone()
            .ok_or_else(|| DecodeError::Malformed("host event without a host".into()))?;
        Ok(What::Host {
            change,
            host: Arc::new(host),
            changed_fields: wire.changed_fields.clone(),
        })
    };
    let what = match EventKind::try_from(wire.kind) {
        Ok(EventKind::HostJoined) => host(HostChange::Joined)?,
        Ok(EventKind::HostLeft) => host(HostChange::Left)?,
        Ok(EventKind::HostUpdated) => host(HostChange::Updated)?,
        Ok(EventKind::Peer) => What::Peer {
            key: PeerKey {
                host_id: wire.host_id.clone(),
                task_id: wire.task_id.clone(),
                peer_id: wire.peer_id.clone(),
            },
            peer: wire.peer.clone().map(Arc::new),
            from: wire.from.clone(),
            baseline: wire.baseline,
        },
        Ok(EventKind::Task) => What::Task {
            task_id: wire.task_id.clone(),
            task: wire.task.clone().map(Arc::new),
            changed_fields: wire.changed_fields.clone(),
            baseline: wire.baseline,
        },
        Ok(EventKind::Unspecified) | Err(_) => return Err(DecodeError::Kind(wire.kind)),
    };
    Ok((
        wire.instance,
        Event {
            cluster_id: wire.cluster_id,
            observed_at_ms: wire.observed_at_ms,
            what,
        },
    ))
}

/// The cache entries an event makes stale.
pub fn affected_keys(event: &Event) -> Vec<CacheKey> {
    match &event.what {
        What::Host { .. } => vec![CacheKey::hosts(event.cluster_id)],
        What::Peer { key, .. } => vec![CacheKey::peer(event.cluster_id, key)],
        What::Task { task_id, .. } => {
            vec![CacheKey::task(event.cluster_id, task_id.clone())]
        }
        What::Scheduler { .. } => Vec::new(),
    }
}

/// The process's end of the bus; cheap to clone.
#[derive(Clone)]
pub struct Bus {
    inner: Arc<BusInner>,
}

struct BusInner {
    local: broadcast::Sender<Arc<Event>>,
    instance: String,
    redis: Option<RedisBus>,
    cache: Cache,
}

struct RedisBus {
    client: redis::Client,
    /// Made on first use; a multiplexed connection that reconnects by
    /// itself.
    conn: Mutex<Option<ConnectionManager>>,
    /// Until when connecting is not tried again after a failure, so a dead
    /// Redis costs the watcher one timeout per few seconds, not per call.
    retry_after: std::sync::Mutex<Option<Instant>>,
    /// Events waiting to be published, in order; the watcher never waits
    /// on Redis.
    outbox: tokio::sync::mpsc::Sender<Vec<u8>>,
    timeout: Duration,
    /// Whether the listener is subscribed to the channel now: while it is
    /// not, other replicas' events do not reach this one, so the watcher
    /// must not rely on them.
    listening: AtomicBool,
    /// Successful subscriptions so far; a change means messages may have
    /// been missed in between.
    subscriptions: AtomicU64,
}

/// Events queued toward Redis before new ones are dropped (with a
/// warning), at least; the bus makes room for twice the watch set, so a new
/// leader's baselines fit.
const MIN_OUTBOX_CAPACITY: usize = 4096;
/// Most events sent to Redis in one pipelined round trip.
const PUBLISH_BATCH: usize = 512;
/// Pause before connecting again after a failed attempt.
const RECONNECT_PAUSE: Duration = Duration::from_secs(2);

impl RedisBus {
    pub(crate) async fn connection(&self) -> Result<ConnectionManager, String> {
        let mut slot = self.conn.lock().await;
        if let Some(conn) = slot.as_ref() {
            return Ok(conn.clone());
        }
        let paused = self
            .retry_after
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|until| Instant::now() < until);
        if paused {
            return Err("Redis unreachable (waiting before the next attempt)".into());
        }
        let made = self.connect().await;
        *self.retry_after.lock().unwrap_or_else(|p| p.into_inner()) =
            made.is_err().then(|| Instant::now() + RECONNECT_PAUSE);
        let made = made?;
        *slot = Some(made.clone());
        Ok(made)
    }

    async fn connect(&self) -> Result<ConnectionManager, String> {
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1);
        tokio::time::timeout(
            self.timeout * 2,
            ConnectionManager::new_with_config(self.client.clone(), config),
        )
        .await
        .map_err(|_| format!("connecting timed out after {:?}", self.timeout * 2))?
        .map_err(|e| e.to_string())
    }
}

/// Publishes queued events in order, as many as are waiting in one
/// pipelined round trip; ends with the bus (whose drop closes the outbox).
/// Holds the bus weakly, so it does not keep it alive.
async fn publish_loop(
    inner: std::sync::Weak<BusInner>,
    mut outbox: tokio::sync::mpsc::Receiver<Vec<u8>>,
) {
    let mut failing = false;
    let mut batch = Vec::with_capacity(PUBLISH_BATCH);
    while outbox.recv_many(&mut batch, PUBLISH_BATCH).await > 0 {
        let Some(inner) = inner.upgrade() else { return };
        let Some(bus) = &inner.redis else { return };
        let mut pipe = redis::pipe();
        for bytes in batch.drain(..) {
            pipe.cmd("PUBLISH").arg(EVENTS_CHANNEL).arg(bytes).ignore();
        }
        let sent = async {
            let mut conn = bus.connection().await?;
            tokio::time::timeout(bus.timeout, pipe.query_async::<()>(&mut conn))
                .await
                .map_err(|_| "timed out".to_string())?
                .map_err(|e| e.to_string())
        };
        match sent.await {
            Ok(()) if failing => {
                failing = false;
                tracing::info!("events reach Redis again");
            }
            Ok(()) => {}
            Err(error) if !failing => {
                failing = true;
                tracing::warn!(%error, "events not published to Redis; other replicas miss them until it answers");
            }
            Err(error) => tracing::debug!(%error, "events not published to Redis"),
        }
    }
}

impl Bus {
    /// A bus for this process. With `redis_url`, events also cross
    /// replicas; `timeout` bounds each Redis call.
    pub fn new(
        cache: Cache,
        redis_url: Option<&str>,
        timeout: Duration,
        max_watched: usize,
    ) -> Result<Bus, String> {
        let (outbox, pending) =
            tokio::sync::mpsc::channel(MIN_OUTBOX_CAPACITY.max(max_watched.saturating_mul(2)));
        let redis = match redis_url {
            Some(url) => Some(RedisBus {
                client: redis::Client::open(url).map_err(|e| e.to_string())?,
                conn: Mutex::new(None),
                retry_after: std::sync::Mutex::new(None),
                outbox,
                timeout,
                listening: AtomicBool::new(false),
                subscriptions: AtomicU64::new(0),
            }),
            None => None,
        };
        let (local, _) = broadcast::channel(
            MIN_LOCAL_CAPACITY
                .max(max_watched.saturating_mul(2))
                .min(1 << 18),
        );
        let inner = Arc::new(BusInner {
            local,
            instance: format!("{:016x}", rand::random::<u64>()),
            redis,
            cache,
        });
        if inner.redis.is_some() {
            tokio::spawn(publish_loop(Arc::downgrade(&inner), pending));
        }
        Ok(Bus { inner })
    }

    /// This process's id on the bus (also its lease value).
    pub fn instance(&self) -> &str {
        &self.inner.instance
    }

    pub fn has_redis(&self) -> bool {
        self.inner.redis.is_some()
    }

    /// A Redis connection for the watcher's lease and interest calls.
    pub(crate) async fn redis(&self) -> Option<Result<ConnectionManager, String>> {
        let redis = self.inner.redis.as_ref()?;
        Some(redis.connection().await)
    }

    /// Timeout of one Redis call.
    pub fn redis_timeout(&self) -> Duration {
        self.inner
            .redis
            .as_ref()
            .map_or(Duration::from_secs(1), |r| r.timeout)
    }

    /// Whether other replicas' events reach this one now (always, without
    /// Redis: there are no others), and how many times the listener has
    /// subscribed so far (a change means some may have been missed).
    pub fn listening(&self) -> (bool, u64) {
        match &self.inner.redis {
            None => (true, 0),
            Some(redis) => (
                redis.listening.load(Ordering::Acquire),
                redis.subscriptions.load(Ordering::Acquire),
            ),
        }
    }

    /// Every event from now on (this replica's and, with Redis, the
    /// others').
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.inner.local.subscribe()
    }

    /// Hands an event to this replica's subscribers and, through Redis, to
    /// every other replica's.
    pub fn publish(&self, event: Event) {
        self.hand_out(event, true);
    }

    /// Hands an event to this replica's subscribers only: what a replica
    /// observed for itself while it is not coordinating through Redis (the
    /// others poll for themselves then, or have a leader of their own).
    pub fn publish_local(&self, event: Event) {
        self.hand_out(event, false);
    }

    fn hand_out(&self, event: Event, everywhere: bool) {
        metrics::counter!(metric::PUBLISHED, "kind" => event.kind()).increment(1);
        let published_at = SystemClock.now_ms_signed();
        if let Some(changed_at) = event.changed_at_ms()
            && changed_at <= published_at
        {
            metrics::histogram!(metric::DETECTION_LAG, "kind" => event.kind())
                .record((published_at - changed_at) as f64 / 1000.0);
        }
        let wire = everywhere
            .then(|| encode(&self.inner.instance, &event))
            .flatten();
        let _ = self.inner.local.send(Arc::new(event));
        let (Some(redis), Some(bytes)) = (&self.inner.redis, wire) else {
            return;
        };
        if redis.outbox.try_send(bytes).is_err() {
            metrics::counter!(metric::DROPPED).increment(1);
            tracing::warn!("event outbox toward Redis full; event not sent to other replicas");
        }
    }

    /// Runs the Redis listener until `stop` (nothing to do without Redis).
    pub async fn listen(self, stop: CancellationToken) {
        let Some(redis) = &self.inner.redis else {
            return;
        };
        let mut backoff = Duration::from_millis(100);
        let mut warned = false;
        loop {
            let subscribed = tokio::select! {
                r = subscribe(&redis.client, redis.timeout) => r,
                _ = stop.cancelled() => return,
            };
            match subscribed {
                Ok(pubsub) => {
                    backoff = Duration::from_millis(100);
                    if warned {
                        tracing::info!("event listener subscribed again");
                    }
                    warned = false;
                    redis.subscriptions.fetch_add(1, Ordering::AcqRel);
                    redis.listening.store(true, Ordering::Release);
                    let stopped = self.pump(pubsub, &stop).await;
                    redis.listening.store(false, Ordering::Release);
                    if stopped {
                        return;
                    }
                    tracing::warn!("event listener lost Redis; resubscribing");
                }
                Err(error) if !warned => {
                    warned = true;
                    tracing::warn!(%error, channel = EVENTS_CHANNEL, "event listener cannot subscribe; other replicas' events do not reach this one until it can (retrying)");
                }
                Err(error) => tracing::debug!(%error, "event listener still cannot subscribe"),
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.cancelled() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// Applies messages until the connection fails (false) or `stop`
    /// (true).
    async fn pump(&self, pubsub: redis::aio::PubSub, stop: &CancellationToken) -> bool {
        let (mut sink, mut stream) = pubsub.split();
        let mut ping = tokio::time::interval(Duration::from_secs(5));
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        loop {
            tokio::select! {
                message = stream.next() => {
                    let Some(message) = message else { return false };
                    let bytes: Vec<u8> = match message.get_payload() {
                        Ok(bytes) => bytes,
                        Err(error) => {
                            tracing::warn!(%error, "unreadable event message ignored");
                            continue;
                        }
                    };
                    match decode(&bytes) {
                        Ok((from, _)) if from == self.inner.instance => {}
                        Ok((_, event)) => self.deliver_remote(event).await,
                        Err(error) => tracing::warn!(%error, "event message ignored"),
                    }
                }
                _ = ping.tick() => {
                    let alive = tokio::time::timeout(
                        Duration::from_secs(2),
                        sink.ping::<redis::Value>(),
                    ).await;
                    if !matches!(alive, Ok(Ok(_))) {
                        return false;
                    }
                }
                _ = stop.cancelled() => return true,
            }
        }
    }

    /// Another replica's event: this replica's L1 copies go first (the
    /// invalidation channel may not have arrived yet), so a query made on
    /// receipt of the event sees the new data.
    async fn deliver_remote(&self, event: Event) {
        for key in affected_keys(&event) {
            self.inner.cache.forget_local(&key).await;
        }
        let _ = self.inner.local.send(Arc::new(event));
    }
}

async fn subscribe(
    client: &redis::Client,
    timeout: Duration,
) -> Result<redis::aio::PubSub, String> {
    let connect = async {
        let mut pubsub = client.get_async_pubsub().await.map_err(|e| e.to_string())?;
        pubsub
            .subscribe(EVENTS_CHANNEL)
            .await
            .map_err(|e| e.to_string())?;
        Ok(pubsub)
    };
    tokio::time::timeout(timeout * 2, connect)
        .await
        .map_err(|_| format!("timed out after {:?}", timeout * 2))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::common::v2::Task;

    fn roundtrip(event: Event) {
        let bytes = encode("me", &event).expect("crosses replicas");
        let (instance, back) = decode(&bytes).expect("decodes");
        assert_eq!(instance, "me");
        assert_eq!(back, event);
    }

    #[test]
    fn events_survive_the_wire() {
        roundtrip(Event {
            cluster_id: 3,
            observed_at_ms: 1_700_000_000_123,
            what: What::Host {
                change: HostChange::Updated,
                host: Arc::new(Host {
                    id: "h".into(),
                    ip: "10.0.0.1".into(),
                    ..Host::default()
                }),
                changed_fields: vec!["ip".into()],
            },
        });
        roundtrip(Event {
            cluster_id: 1,
            observed_at_ms: 5,
            what: What::Peer {
                key: PeerKey {
                    host_id: "h".into(),
                    task_id: "t".into(),
                    peer_id: "p".into(),
                },
                peer: None,
                from: Some("Running".into()),
                baseline: false,
            },
        });
        roundtrip(Event {
            cluster_id: 1,
            observed_at_ms: 5,
            what: What::Task {
                task_id: "t".into(),
                task: Some(Arc::new(Task {
                    id: "t".into(),
                    state: "Succeeded".into(),
                    ..Task::default()
                })),
                changed_fields: vec!["state".into()],
                baseline: true,
            },
        });
    }

    #[test]
    fn garbage_and_future_versions_are_refused() {
        assert!(matches!(
            decode(b"\xff\xff\xff"),
            Err(DecodeError::Malformed(_))
        ));
        let future = WireEvent {
            version: 2,
            ..WireEvent::default()
        }
        .encode_to_vec();
        assert!(matches!(decode(&future), Err(DecodeError::Version(2))));
        let odd = WireEvent {
            version: 1,
            kind: 99,
            ..WireEvent::default()
        }
        .encode_to_vec();
        assert!(matches!(decode(&odd), Err(DecodeError::Kind(99))));
        let hostless = WireEvent {
            version: 1,
            kind: 1,
            ..WireEvent::default()
        }
        .encode_to_vec();
        assert!(matches!(decode(&hostless), Err(DecodeError::Malformed(_))));
    }
}
