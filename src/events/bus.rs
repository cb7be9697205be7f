//! The event bus: an in-process broadcast every subscription listens on,
//! and, with Redis, [`Topic::Event`] messages on the process's one
//! listener ([`crate::redis::listener`]) that carry a replica's events to
//! every other replica, in order with its cache invalidations. The
//! publisher delivers to its own subscribers itself (so a Redis outage
//! does not silence them) and ignores its own messages when they come back
//! from Redis.
//!
//! The publish point is also where the [event log](super::log) is
//! written: an event published to every replica is appended to its
//! cluster's stream first, so each replica (this one included) receives
//! it with its cursor; should the log not answer, it goes out without one.
//! Without Redis, events go to the in-process ring.
//!
//! Events with a cursor are delivered here once: a replica remembers the
//! newest it delivered per cluster ([`Seen`]), drops what comes again, and
//! when its listener (re)subscribes reads what it missed from the log
//! before the next live message (see [`super::resume`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use futures::future::BoxFuture;
use prost::Message;
use tokio::sync::broadcast;

use super::log::{self, EventCursor, EventLog, LogId};
use super::resume::{self, Seen};
use super::told::Told;
use super::{Event, HostChange, What, metric};
use crate::breaker::CircuitState;
use crate::cache::{Cache, CacheKey, Kind};
use crate::clock::{Clock, SystemClock};
use crate::ids::PeerKey;
use crate::proto::common::v2::Host;
use crate::proto::events::v1::{Circuit, Event as WireEvent, EventKind};
use crate::redis::{Redis, Topic};

/// Events a subscriber may fall behind by before it is told it lost some
/// (at least twice the watch set, so a new leader's baselines fit).
const MIN_LOCAL_CAPACITY: usize = 8192;

const WIRE_VERSION: u32 = 1;

/// The bytes of `event` on the channel and in the log.
pub fn encode(instance: &str, event: &Event) -> Vec<u8> {
    let mut wire = WireEvent {
        version: WIRE_VERSION,
        instance: instance.to_owned(),
        cluster_id: event.cluster_id,
        observed_at_ms: event.observed_at_ms,
        log_id: event.cursor.map(|c| c.id.to_string()).unwrap_or_default(),
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
                HostChange::Unreachable => EventKind::HostUnreachable,
                HostChange::Reachable => EventKind::HostReachable,
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
        What::Scheduler { addr, up, circuit } => {
            wire.set_kind(EventKind::Scheduler);
            wire.scheduler_addr = addr.to_string();
            wire.up = *up;
            wire.set_circuit(match circuit {
                CircuitState::Closed => Circuit::Closed,
                CircuitState::Open => Circuit::Open,
                CircuitState::HalfOpen => Circuit::HalfOpen,
            });
        }
    }
    wire.encode_to_vec()
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
        Ok(EventKind::HostUnreachable) => host(HostChange::Unreachable)?,
        Ok(EventKind::HostReachable) => host(HostChange::Reachable)?,
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
        Ok(EventKind::Scheduler) => What::Scheduler {
            addr: wire.scheduler_addr.parse().map_err(|_| {
                DecodeError::Malformed(format!("scheduler address {:?}", wire.scheduler_addr))
            })?,
            up: wire.up,
            circuit: match Circuit::try_from(wire.circuit) {
                Ok(Circuit::Closed) => CircuitState::Closed,
                Ok(Circuit::Open) => CircuitState::Open,
                Ok(Circuit::HalfOpen) => CircuitState::HalfOpen,
                Err(_) => {
                    return Err(DecodeError::Malformed(format!("circuit {}", wire.circuit)));
                }
            },
        },
        Ok(EventKind::Unspecified) | Err(_) => return Err(DecodeError::Kind(wire.kind)),
    };
    let cursor = match wire.log_id.as_str() {
        "" => None,
        id => Some(EventCursor {
            cluster_id: wire.cluster_id,
            id: LogId::parse(id).ok_or_else(|| DecodeError::Malformed(format!("log id {id:?}")))?,
        }),
    };
    Ok((
        wire.instance,
        Event {
            cluster_id: wire.cluster_id,
            observed_at_ms: wire.observed_at_ms,
            what,
            cursor,
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
    redis: Option<Redis>,
    /// Where published events are kept (`None`: switched off).
    log: Option<EventLog>,
    /// Events waiting to be logged and published to Redis, in order; the
    /// watcher never waits on Redis.
    outbox: tokio::sync::mpsc::Sender<Outgoing>,
    cache: Cache,
    /// Sees each other replica's event before this replica's subscribers
    /// do (see [`Bus::on_remote`]).
    remote_hook: std::sync::OnceLock<RemoteHook>,
    /// The newest logged event delivered here, per cluster; its lock keeps
    /// a catch-up from the log and live messages in order.
    heard: tokio::sync::Mutex<Seen>,
    /// What subscribers here were told of each host: a copy of a change
    /// that came another way is not told again.
    told: std::sync::Mutex<Told>,
    /// The listener (re)subscribed: what was missed meanwhile is read from
    /// the log before the next live message is delivered.
    catch_up_due: AtomicBool,
    /// When this bus started (unix ms): a cluster this replica heard
    /// nothing of is caught up from then.
    started_ms: i64,
    /// The clusters served (set when the gateway starts its events).
    clusters: OnceLock<crate::cluster::ClusterClient>,
}

/// What a module does with another replica's event before subscribers
/// hear of it.
pub type RemoteHook = Arc<dyn Fn(&Event) + Send + Sync>;

/// An event on its way to Redis.
struct Outgoing {
    event: Event,
    /// Not yet handed to this replica's subscribers: they get it once the
    /// log has given it its cursor.
    deliver_here: bool,
}

/// Events queued toward Redis before new ones are dropped (with a
/// warning), at least; the bus makes room for twice the watch set, so a new
/// leader's baselines fit.
const MIN_OUTBOX_CAPACITY: usize = 4096;
/// Most events sent to Redis in one pipelined round trip.
const PUBLISH_BATCH: usize = 512;

/// Logs and publishes queued events in order, as many as are waiting in
/// one round trip each (the log's, then the channel's); ends with the bus
/// (whose drop closes the outbox). Holds the bus weakly, so it does not
/// keep it alive.
async fn publish_loop(inner: Weak<BusInner>, mut outbox: tokio::sync::mpsc::Receiver<Outgoing>) {
    let mut failing = false;
    let mut trims = Trims::default();
    let mut batch = Vec::with_capacity(PUBLISH_BATCH);
    while outbox.recv_many(&mut batch, PUBLISH_BATCH).await > 0 {
        let Some(inner) = inner.upgrade() else { return };
        let Some(redis) = &inner.redis else { return };
        if let Some(log) = &inner.log {
            trims.append(log, &mut batch).await;
        }
        let mut pipe = redis::pipe();
        let mut heard = inner.heard.lock().await;
        for outgoing in batch.drain(..) {
            let bytes = encode(&inner.instance, &outgoing.event);
            redis.add_publish(&mut pipe, Topic::Event, &bytes);
            if outgoing.deliver_here && heard.fresh(&outgoing.event) {
                inner.tell(outgoing.event);
            }
        }
        drop(heard);
        match redis.pipe::<()>("publish_events", &pipe).await {
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

/// The publish loop's side of the log: when each cluster's stream was
/// last trimmed by age, and whether appending fails.
#[derive(Default)]
struct Trims {
    last: std::collections::HashMap<u64, std::time::Instant>,
    failing: bool,
}

impl Trims {
    /// Appends the events of `batch` not yet delivered here (each then
    /// has its cursor), trimming their streams by age when due.
    async fn append(&mut self, log: &EventLog, batch: &mut [Outgoing]) {
        let now = std::time::Instant::now();
        let mut due = Vec::new();
        let mut events: Vec<&mut Event> = Vec::new();
        for outgoing in batch.iter_mut().filter(|o| o.deliver_here) {
            let cluster = outgoing.event.cluster_id;
            let last = self.last.entry(cluster).or_insert(now - log::TRIM_EVERY);
            if now.duration_since(*last) >= log::TRIM_EVERY {
                *last = now;
                due.push(cluster);
            }
            events.push(&mut outgoing.event);
        }
        if events.is_empty() {
            return;
        }
        match log.append(&mut events, &due).await {
            Ok(()) if self.failing => {
                self.failing = false;
                tracing::info!("events are logged again");
            }
            Ok(()) => {}
            Err(error) if !self.failing => {
                self.failing = true;
                tracing::warn!(%error, "events not logged; they go out without a cursor until the log answers");
            }
            Err(error) => tracing::debug!(%error, "events not logged"),
        }
    }
}

/// Hands other replicas' events to this one's subscribers.
struct Listener {
    bus: Weak<BusInner>,
}

impl crate::redis::Handler for Listener {
    fn message<'a>(&'a self, body: &'a [u8]) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let Some(inner) = self.bus.upgrade() else {
                return;
            };
            match decode(body) {
                Ok((from, _)) if from == inner.instance => {}
                Ok((_, event)) => {
                    // While what was missed cannot be read yet, a logged
                    // event waits in the log for the catch-up, which tells
                    // it in order after them.
                    if !catch_up(&inner).await && event.cursor.is_some() {
                        return;
                    }
                    if inner.heard.lock().await.fresh(&event) {
                        deliver_remote(&inner, event).await;
                    }
                }
                Err(error) => tracing::warn!(%error, "event message ignored"),
            }
        })
    }

    fn subscribed(&self) {
        let Some(inner) = self.bus.upgrade() else {
            return;
        };
        inner.catch_up_due.store(true, Ordering::Release);
        // Now, not only at the next message: a quiet channel must not
        // leave what was missed undelivered. Retried until the log
        // answers (Redis may take its pub/sub connection back before its
        // commands' circuit closes).
        let bus = Arc::downgrade(&inner);
        drop(inner);
        tokio::spawn(async move {
            let mut attempts = 0u32;
            while let Some(inner) = bus.upgrade() {
                if catch_up(&inner).await {
                    if attempts > 0 {
                        tracing::info!(attempts, "the event log answered: missed events caught up");
                    }
                    return;
                }
                attempts += 1;
                if attempts == 1 {
                    tracing::warn!(
                        "events missed while the bus was unheard cannot be read from the log yet; logged events wait there until it answers (retrying)"
                    );
                }
                drop(inner);
                tokio::time::sleep(CATCH_UP_RETRY).await;
            }
        });
    }
}

/// How often a catch-up the log did not answer is tried again.
const CATCH_UP_RETRY: std::time::Duration = std::time::Duration::from_millis(500);

/// Delivers what this replica missed while it could not hear the bus, if
/// its listener resubscribed since the last catch-up: every logged event
/// after the newest it delivered of each cluster, oldest first, each once.
/// False when the log did not answer: the catch-up stays due, and the
/// marks stay where they were, so what it will read is still all of it.
async fn catch_up(inner: &BusInner) -> bool {
    if !inner.catch_up_due.load(Ordering::Acquire) {
        return true;
    }
    let mut heard = inner.heard.lock().await;
    if !inner.catch_up_due.swap(false, Ordering::AcqRel) {
        return true;
    }
    let (Some(log), Some(cluster)) = (&inner.log, inner.clusters.get()) else {
        return true;
    };
    if !log.in_redis() {
        return true;
    }
    let missed = match resume::missed(log, &cluster.cluster_ids(), &heard, inner.started_ms).await {
        Ok(missed) => missed,
        Err(error) => {
            tracing::debug!(%error, "events missed while the bus was unheard cannot be read from the log");
            inner.catch_up_due.store(true, Ordering::Release);
            return false;
        }
    };
    let mut replayed = 0u64;
    for event in missed {
        if heard.fresh(&event) {
            deliver_remote(inner, Event::clone(&event)).await;
            replayed += 1;
        }
    }
    if replayed > 0 {
        metrics::counter!(metric::REPLAYED).increment(replayed);
        tracing::info!(
            replayed,
            "delivered the events published while this replica could not hear the bus"
        );
    }
    true
}

/// Another replica's event: this replica's L1 copies of peers and tasks
/// go first, so a query made on receipt of the event sees the new data.
/// Host lists are left alone: the leader replaced or invalidated them and
/// said so on this same ordered channel before publishing the event, and
/// dropping the list again would throw away the new one already read.
async fn deliver_remote(inner: &BusInner, event: Event) {
    for key in affected_keys(&event) {
        if key.kind() != Kind::Hosts {
            inner.cache.forget_local(&key).await;
        }
    }
    if let Some(hook) = inner.remote_hook.get() {
        hook(&event);
    }
    inner.tell(event);
}

impl BusInner {
    /// Hands `event` to this replica's subscribers, unless it changes
    /// nothing they were told (see [`Told`]).
    fn tell(&self, event: Event) {
        // Without Redis this process's own watcher is the only source, and
        // it tells each change once: there is no copy to recognise.
        if self.redis.is_none() {
            let _ = self.local.send(Arc::new(event));
            return;
        }
        let Ok(mut told) = self.told.lock() else {
            return;
        };
        if told.changes(&event) {
            let _ = self.local.send(Arc::new(event));
        } else {
            metrics::counter!(metric::REPEATS_DROPPED).increment(1);
        }
    }
}

impl Bus {
    /// A bus for this process. With `redis`, events also cross replicas.
    /// With `log`, what it publishes is kept (see [`super::log`]).
    pub fn new(
        cache: Cache,
        redis: Option<Redis>,
        log: Option<EventLog>,
        max_watched: usize,
    ) -> Bus {
        let (outbox, pending) =
            tokio::sync::mpsc::channel(MIN_OUTBOX_CAPACITY.max(max_watched.saturating_mul(2)));
        let (local, _) = broadcast::channel(
            MIN_LOCAL_CAPACITY
                .max(max_watched.saturating_mul(2))
                .min(1 << 18),
        );
        let inner = Arc::new(BusInner {
            local,
            instance: format!("{:016x}", rand::random::<u64>()),
            redis,
            log,
            outbox,
            cache,
            remote_hook: std::sync::OnceLock::new(),
            heard: tokio::sync::Mutex::default(),
            told: std::sync::Mutex::default(),
            catch_up_due: AtomicBool::new(false),
            started_ms: SystemClock.now_ms_signed(),
            clusters: OnceLock::new(),
        });
        if let Some(redis) = &inner.redis {
            tokio::spawn(publish_loop(Arc::downgrade(&inner), pending));
            redis.listen(
                Topic::Event,
                Arc::new(Listener {
                    bus: Arc::downgrade(&inner),
                }),
            );
        }
        Bus { inner }
    }

    /// Runs `hook` on each other replica's event before handing it to
    /// this replica's subscribers, so what they query on receipt reflects
    /// it (the liveness records). One hook per bus; a second is ignored.
    pub fn on_remote(&self, hook: RemoteHook) {
        if self.inner.remote_hook.set(hook).is_err() {
            tracing::warn!("a second remote-event hook was ignored");
        }
    }

    /// This process's id on the bus (also its lease value).
    pub fn instance(&self) -> &str {
        &self.inner.instance
    }

    /// Which clusters a catch-up after a lost subscription reads (once;
    /// the gateway's cluster client).
    pub fn serve(&self, cluster: crate::cluster::ClusterClient) {
        let _ = self.inner.clusters.set(cluster);
    }

    /// The event log, unless switched off.
    pub fn log(&self) -> Option<&EventLog> {
        self.inner.log.as_ref()
    }

    pub fn has_redis(&self) -> bool {
        self.inner.redis.is_some()
    }

    /// The Redis stack, for the watcher's lease and interest calls.
    pub(crate) fn redis(&self) -> Option<&Redis> {
        self.inner.redis.as_ref()
    }

    /// Whether other replicas' events reach this one now (always, without
    /// Redis: there are no others), and how many times the listener has
    /// subscribed so far (a change means some may have been missed).
    pub fn listening(&self) -> (bool, u64) {
        match &self.inner.redis {
            None => (true, 0),
            Some(redis) => redis.listening(),
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

    fn hand_out(&self, mut event: Event, everywhere: bool) {
        metrics::counter!(metric::PUBLISHED, "kind" => event.kind()).increment(1);
        let published_at = SystemClock.now_ms_signed();
        if let Some(changed_at) = event.changed_at_ms()
            && changed_at <= published_at
        {
            metrics::histogram!(metric::DETECTION_LAG, "kind" => event.kind())
                .record((published_at - changed_at) as f64 / 1000.0);
        }
        let logged = self.inner.log.as_ref().filter(|log| log.keeps(&event));
        let (Some(_), true) = (&self.inner.redis, everywhere) else {
            // Without Redis this replica is the only one: its ring is the
            // log. With Redis, what stays here is not logged.
            if let (None, Some(log)) = (&self.inner.redis, logged) {
                log.append_local(&mut event);
            }
            self.inner.tell(event);
            return;
        };
        let deliver_here = logged.is_some();
        if !deliver_here {
            self.inner.tell(event.clone());
        }
        let outgoing = Outgoing {
            event,
            deliver_here,
        };
        if let Err(full) = self.inner.outbox.try_send(outgoing) {
            metrics::counter!(metric::DROPPED).increment(1);
            tracing::warn!("event outbox toward Redis full; event not sent to other replicas");
            let outgoing = full.into_inner();
            if outgoing.deliver_here {
                self.inner.tell(outgoing.event);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::common::v2::Task;

    fn roundtrip(event: Event) {
        let bytes = encode("me", &event);
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
            cursor: Some(EventCursor {
                cluster_id: 3,
                id: LogId {
                    ms: 1_700_000_000_124,
                    seq: 2,
                },
            }),
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
            cursor: None,
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
            cursor: None,
        });
        roundtrip(Event {
            cluster_id: 2,
            observed_at_ms: 7,
            what: What::Scheduler {
                addr: "127.0.0.1:8002".parse().expect("an address"),
                up: false,
                circuit: CircuitState::HalfOpen,
            },
            cursor: Some(EventCursor {
                cluster_id: 2,
                id: LogId { ms: 8, seq: 0 },
            }),
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
