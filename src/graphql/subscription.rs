//! The subscription root: host events, one peer's state, one task's
//! changes and scheduler health, fed by the event bus. Each stream keeps
//! its interest registered (so the watcher polls for it) while it lives.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use async_graphql::{Context, Enum, ID, Result, SimpleObject, Subscription as GqlSubscription};
use chrono::{DateTime, Utc};
use futures::Stream;
use tokio::sync::broadcast::error::RecvError;

use super::GatewayState;
use super::errors::{bad_input, coded};
use super::history::{log_of, resume_error};
use super::hosts::{CompiledFilter, HostFilter};
use super::ids::check_id;
use super::loaders::Loaders;
use super::query::Query;
use super::scalars::EventCursor;
use super::types::{CircuitState, Host, Peer, PeerState, Scheduler, Task};
use crate::cluster::ClusterError;
use crate::deadline::Deadline;
use crate::events::diff::{only_resources, task_fields};
use crate::events::health::SchedulerState;
use crate::events::resume::{self, Seen};
use crate::events::{Event, HostChange, Watched, What};
use crate::ids::PeerKey;
use crate::proto::common::v2::{Peer as WirePeer, Task as WireTask};

pub struct Subscription;

/// What happened to a host.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostEventKind {
    Joined,
    Left,
    Updated,
    /// Its gRPC health service stopped answering: `liveness.failures`
    /// probes in a row failed (the scheduler may still list it).
    Unreachable,
    /// Its health service answers again.
    Reachable,
}

impl From<HostChange> for HostEventKind {
    fn from(change: HostChange) -> Self {
        match change {
            HostChange::Joined => HostEventKind::Joined,
            HostChange::Left => HostEventKind::Left,
            HostChange::Updated => HostEventKind::Updated,
            HostChange::Unreachable => HostEventKind::Unreachable,
            HostChange::Reachable => HostEventKind::Reachable,
        }
    }
}

/// A host joined, left, changed, became unreachable or reachable again.
#[derive(SimpleObject)]
pub struct HostEvent {
    pub kind: HostEventKind,
    /// The host as it is now; for `LEFT`, as it was last seen.
    pub host: Host,
    /// For `UPDATED`, the fields that changed (GraphQL names).
    pub changed_fields: Vec<String>,
    /// When dfgraph saw the change.
    pub observed_at: DateTime<Utc>,
    pub scheduler_cluster_id: ID,
    /// Where it is in the event log (null when it was not logged: the log
    /// is off or did not answer); pass it as `after` to resume after it.
    pub cursor: Option<EventCursor>,
}

/// The GraphQL form of a host event (`None` for other events).
pub(crate) fn host_event(event: &Event) -> Option<HostEvent> {
    let What::Host {
        change,
        host,
        changed_fields,
    } = &event.what
    else {
        return None;
    };
    Some(HostEvent {
        kind: (*change).into(),
        host: Host(host.clone()),
        changed_fields: changed_fields.clone(),
        observed_at: at(event.observed_at_ms),
        scheduler_cluster_id: ID(event.cluster_id.to_string()),
        cursor: event.cursor.map(EventCursor),
    })
}

/// A peer's state, then each change of it.
#[derive(SimpleObject)]
pub struct PeerStateEvent {
    pub peer: Peer,
    /// Null in the first message (the current state).
    pub from: Option<PeerState>,
    pub to: PeerState,
    pub observed_at: DateTime<Utc>,
    /// Where the change is in the event log (null for the current state
    /// and for what was not logged); pass it as `after` to resume.
    pub cursor: Option<EventCursor>,
}

/// A task as it is, then after each change.
#[derive(SimpleObject)]
pub struct TaskEvent {
    pub task: Task,
    /// Empty in the first message (the current state).
    pub changed_fields: Vec<String>,
    pub observed_at: DateTime<Utc>,
    /// Where the change is in the event log (null for the current state
    /// and for what was not logged); pass it as `after` to resume.
    pub cursor: Option<EventCursor>,
}

/// A scheduler's reachability or circuit: as the replica recording its
/// cluster's scheduler health sees it when the event log is on, else as
/// this replica does (see `clusterHealth`).
#[derive(SimpleObject)]
pub struct ClusterHealthEvent {
    pub scheduler: Scheduler,
    pub up: bool,
    /// The recording replica's circuit breaker toward it.
    pub circuit: CircuitState,
    pub observed_at: DateTime<Utc>,
    /// Where the transition is in the event log (null for the current
    /// state and for what was not logged); pass it as `after` to resume.
    pub cursor: Option<EventCursor>,
}

/// Where a connection wants to hear the observation time of the event
/// behind the message it is about to send (for the delivery-lag metric).
#[derive(Clone, Default)]
pub struct DeliveryStamp(Arc<AtomicI64>);

impl DeliveryStamp {
    fn set(&self, observed_at_ms: i64) {
        self.0.store(observed_at_ms, Ordering::Release);
    }

    /// The stamp of the last message, once.
    pub fn take(&self) -> Option<i64> {
        match self.0.swap(0, Ordering::AcqRel) {
            0 => None,
            ms => Some(ms),
        }
    }
}

/// Where an SSE response wants the log cursor of the event behind the
/// message it is about to send (its `id:`); see `http::sse`.
#[derive(Clone, Default)]
pub struct CursorStamp(Arc<std::sync::Mutex<Option<crate::events::log::EventCursor>>>);

impl CursorStamp {
    fn set(&self, cursor: Option<crate::events::log::EventCursor>) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = cursor;
        }
    }

    /// The cursor of the last message, once.
    pub fn take(&self) -> Option<crate::events::log::EventCursor> {
        self.0.lock().ok().and_then(|mut slot| slot.take())
    }
}

/// Where to resume when the operation names no `after`: the SSE
/// `Last-Event-ID` of a reconnecting `EventSource`.
#[derive(Clone, Copy, Debug)]
pub struct ResumeFrom(pub crate::events::log::EventCursor);

fn cursor_stamp(ctx: &Context<'_>) -> CursorStamp {
    ctx.data_opt::<CursorStamp>().cloned().unwrap_or_default()
}

/// `after`, or the connection's `Last-Event-ID`.
fn resume_point(ctx: &Context<'_>, after: Option<EventCursor>) -> Option<EventCursor> {
    after.or_else(|| ctx.data_opt::<ResumeFrom>().map(|r| EventCursor(r.0)))
}

/// True when `seen` is known to be earlier than `told`.
fn older(seen: Option<&prost_types::Timestamp>, told: Option<&prost_types::Timestamp>) -> bool {
    match (seen, told) {
        (Some(a), Some(b)) => (a.seconds, a.nanos) < (b.seconds, b.nanos),
        _ => false,
    }
}

fn at(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

fn stamp(ctx: &Context<'_>) -> DeliveryStamp {
    ctx.data_opt::<DeliveryStamp>().cloned().unwrap_or_default()
}

/// A subscriber fell so far behind that the bus dropped events for it.
fn lagged(missed: u64) -> async_graphql::Error {
    coded(
        "SLOW_CONSUMER",
        format!("this subscription fell {missed} events behind and was ended; subscribe again"),
    )
}

/// How long a batch of host events waits for the next event of a burst.
const BATCH_LINGER: std::time::Duration = std::time::Duration::from_millis(10);

/// How long a batch waits in all, however steadily events keep coming.
const BATCH_MAX_WAIT: std::time::Duration = std::time::Duration::from_millis(50);

/// The host events a `hostEvents` subscription selects: those replayed
/// from the log after its `after` cursor, then those off the bus.
struct SelectedHostEvents {
    rx: tokio::sync::broadcast::Receiver<Arc<Event>>,
    /// Logged events after the cursor, oldest first, told before live ones.
    replay: std::collections::VecDeque<Arc<Event>>,
    /// What was told, per cluster: the live copy of a replayed event, and
    /// an event the bus hands twice, are dropped.
    seen: Seen,
    clusters: Option<Vec<u64>>,
    filter: CompiledFilter<'static>,
    /// For the filter's `liveness` criterion.
    liveness: crate::liveness::Liveness,
    include_resource_changes: bool,
    /// Keeps the watcher polling host lists while the stream lives.
    _interest: crate::events::InterestGuard,
}

/// Live events first (buffered), then the log after `after`: nothing
/// published between the two is missed (see [`crate::events::resume`]).
async fn select_host_events(
    ctx: &Context<'_>,
    filter: Option<HostFilter>,
    include_resource_changes: bool,
    after: Option<EventCursor>,
) -> Result<SelectedHostEvents> {
    let state = ctx.data::<GatewayState>()?;
    let filter = filter.unwrap_or_default();
    let clusters = filter.cluster_ids().map_err(bad_input)?;
    let rx = state.events.bus.subscribe();
    let (replay, seen) = match after {
        None => (Vec::new(), Seen::default()),
        Some(after) => {
            let served = Query::clusters(ctx, None)?;
            let selected: Vec<u64> = served
                .into_iter()
                .filter(|c| clusters.as_ref().is_none_or(|only| only.contains(c)))
                .collect();
            resume::replay(log_of(ctx)?, &selected, after.0)
                .await
                .map_err(resume_error)?
        }
    };
    Ok(SelectedHostEvents {
        rx,
        replay: replay.into(),
        seen,
        clusters,
        filter: filter.into_compiled(),
        liveness: state.liveness.clone(),
        include_resource_changes,
        _interest: state.events.interest.watch_hosts(),
    })
}

impl SelectedHostEvents {
    /// The next selected event and when it was observed; `None` once the
    /// bus is gone, an error once this subscriber fell too far behind.
    async fn next(&mut self) -> Result<Option<(HostEvent, i64)>> {
        loop {
            let event = match self.replay.pop_front() {
                Some(event) => event,
                None => match self.rx.recv().await {
                    Ok(event) if !self.seen.fresh(&event) => continue,
                    Ok(event) => event,
                    Err(RecvError::Lagged(missed)) => return Err(lagged(missed)),
                    Err(RecvError::Closed) => return Ok(None),
                },
            };
            if let Some(selected) = self.select(&event) {
                return Ok(Some(selected));
            }
        }
    }

    /// Like `next`, but only what has already arrived: `None` when nothing
    /// selected is waiting.
    fn ready(&mut self) -> Result<Option<(HostEvent, i64)>> {
        use tokio::sync::broadcast::error::TryRecvError;
        loop {
            let event = match self.replay.pop_front() {
                Some(event) => event,
                None => match self.rx.try_recv() {
                    Ok(event) if !self.seen.fresh(&event) => continue,
                    Ok(event) => event,
                    Err(TryRecvError::Lagged(missed)) => return Err(lagged(missed)),
                    Err(TryRecvError::Empty | TryRecvError::Closed) => return Ok(None),
                },
            };
            if let Some(selected) = self.select(&event) {
                return Ok(Some(selected));
            }
        }
    }

    fn select(&self, event: &Event) -> Option<(HostEvent, i64)> {
        if self
            .clusters
            .as_ref()
            .is_some_and(|c| !c.contains(&event.cluster_id))
        {
            return None;
        }
        let selected = host_event(event)?;
        if !self.filter.matches(&selected.host.0)
            || self.filter.liveness().is_some_and(|wanted| {
                !wanted.contains(
                    &self
                        .liveness
                        .state(event.cluster_id, &selected.host.0.id)
                        .into(),
                )
            })
            || (selected.kind == HostEventKind::Updated
                && !self.include_resource_changes
                && only_resources(&selected.changed_fields))
        {
            return None;
        }
        Some((selected, event.observed_at_ms))
    }
}

fn too_many(e: impl std::fmt::Display) -> async_graphql::Error {
    coded("TOO_MANY_WATCHED", e.to_string())
}

/// The cluster of a watched peer and its current state: asked of its
/// scheduler, not a cached copy up to a fresh TTL old (the cached one only
/// when the scheduler cannot answer).
async fn current_peer(
    ctx: &Context<'_>,
    state: &GatewayState,
    key: &PeerKey,
    clusters: &[u64],
) -> Result<(u64, Arc<WirePeer>)> {
    let found = ctx
        .data::<Loaders>()?
        .find_peers(std::slice::from_ref(key), clusters)
        .await?
        .pop()
        .unwrap_or(Ok(None))?;
    let Some(cached) = found else {
        return Err(coded("NOT_FOUND", "no such peer"));
    };
    let cluster_id = cached.cluster_id;
    let current = match state
        .cluster
        .stat_peer(cluster_id, key, Deadline::NONE)
        .await
    {
        Ok(peer) => Arc::new(peer),
        Err(ClusterError::NotFound) => return Err(coded("NOT_FOUND", "no such peer")),
        Err(e) => {
            tracing::debug!(error = %e, "current peer state unavailable; using the cached one");
            cached.peer.clone()
        }
    };
    Ok((cluster_id, current))
}

/// The cluster of a watched task and the task as its scheduler has it now
/// (the cached copy only when the scheduler cannot answer).
async fn current_task(
    ctx: &Context<'_>,
    state: &GatewayState,
    id: &ID,
    clusters: &[u64],
) -> Result<(u64, Arc<WireTask>)> {
    let found = ctx
        .data::<Loaders>()?
        .find_tasks(std::slice::from_ref(&id.0), clusters)
        .await?
        .pop()
        .unwrap_or(Ok(None))?;
    let Some(cached) = found else {
        return Err(coded("NOT_FOUND", "no such task"));
    };
    let cluster_id = cached.cluster_id;
    let current = match state
        .cluster
        .stat_task(cluster_id, id, Deadline::NONE)
        .await
    {
        Ok(task) => Arc::new(task),
        Err(ClusterError::NotFound) => return Err(coded("NOT_FOUND", "no such task")),
        Err(e) => {
            tracing::debug!(error = %e, "current task unavailable; using the cached one");
            cached.task.clone()
        }
    };
    Ok((cluster_id, current))
}

#[GqlSubscription]
impl Subscription {
    /// Hosts joining, leaving or changing, in the clusters and with the
    /// properties `filter` selects. Changes of load figures alone (cpu,
    /// memory, network, disk) are left out unless
    /// `includeResourceChanges`. With `after` (an event's `cursor`), first
    /// every logged event after it, then live ones, none missed or told
    /// twice at the seam; a cursor the log no longer reaches is refused
    /// (`CURSOR_EXPIRED`, with `extensions.oldestCursor`). Load-figure
    /// changes are not logged, so not replayed.
    async fn host_events(
        &self,
        ctx: &Context<'_>,
        filter: Option<HostFilter>,
        #[graphql(default = false)] include_resource_changes: bool,
        after: Option<EventCursor>,
    ) -> Result<impl Stream<Item = Result<HostEvent>> + use<>> {
        let after = resume_point(ctx, after);
        let mut selected = select_host_events(ctx, filter, include_resource_changes, after).await?;
        let stamp = stamp(ctx);
        let cursors = cursor_stamp(ctx);
        Ok(async_stream::stream! {
            loop {
                match selected.next().await {
                    Ok(Some((event, observed_at_ms))) => {
                        stamp.set(observed_at_ms);
                        cursors.set(event.cursor.map(|c| c.0));
                        yield Ok(event);
                    }
                    Ok(None) => break,
                    Err(lagged) => {
                        yield Err(lagged);
                        break;
                    }
                }
            }
        })
    }

    /// The same events as `hostEvents`, in the same order, but a burst of
    /// them in one message (at most `maxBatch`): what one poll of the
    /// watcher found, typically. A batch is sent once no further event
    /// came within 10 ms of the last one, and at the latest 50 ms after
    /// its first. For consoles watching many hosts change at once: each
    /// subscriber gets one message per burst instead of one per host.
    /// `after` resumes as in `hostEvents` (replayed events come in batches
    /// of `maxBatch`).
    async fn host_event_batches(
        &self,
        ctx: &Context<'_>,
        filter: Option<HostFilter>,
        #[graphql(default = false)] include_resource_changes: bool,
        #[graphql(default = 1000, validator(minimum = 1, maximum = 10000))] max_batch: i32,
        after: Option<EventCursor>,
    ) -> Result<impl Stream<Item = Result<Vec<HostEvent>>> + use<>> {
        let after = resume_point(ctx, after);
        let mut selected = select_host_events(ctx, filter, include_resource_changes, after).await?;
        let stamp = stamp(ctx);
        let cursors = cursor_stamp(ctx);
        let max_batch = max_batch.max(1) as usize;
        Ok(async_stream::stream! {
            loop {
                let (first, observed_at_ms) = match selected.next().await {
                    Ok(Some(first)) => first,
                    Ok(None) => break,
                    Err(lagged) => {
                        yield Err(lagged);
                        break;
                    }
                };
                let mut batch = vec![first];
                let mut ended = None;
                let closes = tokio::time::Instant::now() + BATCH_MAX_WAIT;
                while batch.len() < max_batch {
                    // A burst is published one event at a time, maybe on
                    // another thread or through Redis: what has arrived is
                    // taken at once, then a short wait for the rest.
                    let next = match selected.ready() {
                        Ok(None) => {
                            let until = closes.min(tokio::time::Instant::now() + BATCH_LINGER);
                            match tokio::time::timeout_at(until, selected.next()).await {
                                Ok(next) => next,
                                Err(_) => break,
                            }
                        }
                        ready => ready,
                    };
                    match next {
                        Ok(Some((event, _))) => batch.push(event),
                        Ok(None) => break,
                        Err(lagged) => {
                            ended = Some(lagged);
                            break;
                        }
                    }
                }
                // The oldest event's lag is the batch's; its newest event's
                // cursor is where it resumes.
                stamp.set(observed_at_ms);
                cursors.set(batch.iter().rev().find_map(|e| e.cursor.map(|c| c.0)));
                yield Ok(batch);
                if let Some(lagged) = ended {
                    yield Err(lagged);
                    break;
                }
            }
        })
    }

    /// One peer's state: first the current state (`from` null), then every
    /// change the watcher sees, in order. Completes when the peer
    /// disappears.
    /// With `after` (a message's `cursor`), first every logged change of
    /// the peer after it, then the current state unless the last of those
    /// already is it, then live ones, none told twice.
    async fn peer_state_changed(
        &self,
        ctx: &Context<'_>,
        host_id: ID,
        task_id: ID,
        peer_id: ID,
        scheduler_cluster_id: Option<ID>,
        after: Option<EventCursor>,
    ) -> Result<impl Stream<Item = Result<PeerStateEvent>> + use<>> {
        check_id("host id", &host_id)?;
        check_id("task id", &task_id)?;
        check_id("peer id", &peer_id)?;
        let state = ctx.data::<GatewayState>()?;
        let clusters = Query::clusters(ctx, scheduler_cluster_id.as_ref())?;
        let key = PeerKey {
            host_id: host_id.0,
            task_id: task_id.0,
            peer_id: peer_id.0,
        };
        // Listening starts before the lookup, so no change between the two
        // goes unheard.
        let mut rx = state.events.bus.subscribe();
        let (cluster_id, current) = current_peer(ctx, state, &key, &clusters).await?;
        let interest = state
            .events
            .interest
            .watch(Watched::Peer {
                cluster_id,
                key: key.clone(),
            })
            .map_err(too_many)?;
        // Resumed: the logged changes after the cursor come first.
        let (replay, mut seen) = match resume_point(ctx, after) {
            None => (Vec::new(), Seen::default()),
            Some(after) => resume::replay(log_of(ctx)?, &[cluster_id], after.0)
                .await
                .map_err(resume_error)?,
        };
        let stamp = stamp(ctx);
        let cursors = cursor_stamp(ctx);
        let host_id = key.host_id.clone();
        Ok(async_stream::stream! {
            let _interest = interest;
            let mut told: Option<String> = None;
            for event in replay {
                let What::Peer { key: changed, peer: Some(peer), from, baseline: false } = &event.what else { continue };
                if *changed != key {
                    continue;
                }
                told = Some(peer.state.clone());
                cursors.set(event.cursor);
                yield Ok(PeerStateEvent {
                    from: from.as_deref().map(PeerState::from_wire),
                    to: PeerState::from_wire(&peer.state),
                    peer: Peer { cluster_id, host_id: host_id.clone(), peer: peer.clone() },
                    observed_at: at(event.observed_at_ms),
                    cursor: event.cursor.map(EventCursor),
                });
            }
            let mut last = current.state.clone();
            let mut seen_at = current.updated_at;
            // The current state, unless the replay ended on it.
            if told.as_ref() != Some(&last) {
                yield Ok(PeerStateEvent {
                    to: PeerState::from_wire(&last),
                    from: told.as_deref().map(PeerState::from_wire),
                    peer: Peer { cluster_id, host_id: host_id.clone(), peer: current },
                    observed_at: Utc::now(),
                    cursor: None,
                });
            }
            loop {
                let event = match rx.recv().await {
                    Ok(event) if !seen.fresh(&event) => continue,
                    Ok(event) => event,
                    Err(RecvError::Lagged(missed)) => {
                        yield Err(lagged(missed));
                        break;
                    }
                    Err(RecvError::Closed) => break,
                };
                let What::Peer { key: changed, peer, .. } = &event.what else { continue };
                if event.cluster_id != cluster_id || *changed != key {
                    continue;
                }
                let Some(peer) = peer else { break };
                // An observation older than what was already told (it was
                // in flight while the current state was read) is history.
                if older(peer.updated_at.as_ref(), seen_at.as_ref()) {
                    continue;
                }
                seen_at = peer.updated_at.or(seen_at);
                if peer.state == last {
                    continue;
                }
                let from = std::mem::replace(&mut last, peer.state.clone());
                stamp.set(event.observed_at_ms);
                cursors.set(event.cursor);
                yield Ok(PeerStateEvent {
                    from: Some(PeerState::from_wire(&from)),
                    to: PeerState::from_wire(&last),
                    peer: Peer { cluster_id, host_id: host_id.clone(), peer: peer.clone() },
                    observed_at: at(event.observed_at_ms),
                    cursor: event.cursor.map(EventCursor),
                });
            }
        })
    }

    /// One task: first as it is (`changedFields` empty), then after every
    /// change of its state, peer count or other fields. Completes when the
    /// task disappears. With `after` (a message's `cursor`), first every
    /// logged change of the task after it, then the task as it is unless
    /// the last of those already is, then live ones, none told twice.
    async fn task_changed(
        &self,
        ctx: &Context<'_>,
        id: ID,
        scheduler_cluster_id: Option<ID>,
        after: Option<EventCursor>,
    ) -> Result<impl Stream<Item = Result<TaskEvent>> + use<>> {
        check_id("task id", &id)?;
        let state = ctx.data::<GatewayState>()?;
        let clusters = Query::clusters(ctx, scheduler_cluster_id.as_ref())?;
        let mut rx = state.events.bus.subscribe();
        let (cluster_id, current) = current_task(ctx, state, &id, &clusters).await?;
        let interest = state
            .events
            .interest
            .watch(Watched::Task {
                cluster_id,
                task_id: id.0.clone(),
            })
            .map_err(too_many)?;
        let (replay, mut seen) = match resume_point(ctx, after) {
            None => (Vec::new(), Seen::default()),
            Some(after) => resume::replay(log_of(ctx)?, &[cluster_id], after.0)
                .await
                .map_err(resume_error)?,
        };
        let stamp = stamp(ctx);
        let cursors = cursor_stamp(ctx);
        let task_id = id.0;
        Ok(async_stream::stream! {
            let _interest = interest;
            let mut told: Option<Arc<WireTask>> = None;
            for event in replay {
                let What::Task { task_id: changed, task: Some(task), changed_fields, baseline: false } = &event.what else { continue };
                if *changed != task_id {
                    continue;
                }
                told = Some(task.clone());
                cursors.set(event.cursor);
                yield Ok(TaskEvent {
                    task: Task { cluster_id, task: task.clone() },
                    changed_fields: changed_fields.clone(),
                    observed_at: at(event.observed_at_ms),
                    cursor: event.cursor.map(EventCursor),
                });
            }
            let mut last = current.clone();
            // The task as it is, unless the replay ended on it.
            let since_told = told.as_ref().map(|t| task_fields(t, &current));
            if since_told.as_ref().is_none_or(|fields| !fields.is_empty()) {
                yield Ok(TaskEvent {
                    task: Task { cluster_id, task: current },
                    changed_fields: since_told.unwrap_or_default(),
                    observed_at: Utc::now(),
                    cursor: None,
                });
            }
            loop {
                let event = match rx.recv().await {
                    Ok(event) if !seen.fresh(&event) => continue,
                    Ok(event) => event,
                    Err(RecvError::Lagged(missed)) => {
                        yield Err(lagged(missed));
                        break;
                    }
                    Err(RecvError::Closed) => break,
                };
                let What::Task { task_id: changed, task, .. } = &event.what else { continue };
                if event.cluster_id != cluster_id || *changed != task_id {
                    continue;
                }
                let Some(task) = task else { break };
                if older(task.updated_at.as_ref(), last.updated_at.as_ref()) {
                    continue;
                }
                let changed_fields = task_fields(&last, task);
                if changed_fields.is_empty() {
                    continue;
                }
                last = task.clone();
                stamp.set(event.observed_at_ms);
                cursors.set(event.cursor);
                yield Ok(TaskEvent {
                    task: Task { cluster_id, task: task.clone() },
                    changed_fields,
                    observed_at: at(event.observed_at_ms),
                    cursor: event.cursor.map(EventCursor),
                });
            }
        })
    }

    /// Every scheduler's reachability and circuit: first one message per
    /// scheduler (its current state), then each transition. With the event
    /// log on, one replica per scheduler cluster probes its schedulers
    /// every watch interval and records the transitions in the log; every
    /// replica tells those (each with its `cursor`), and `circuit` is that
    /// recording replica's breaker (each replica has its own, see
    /// `schedulers { health }` for this one's). With the log off, each
    /// replica probes while someone subscribes and tells its own view.
    /// With `after` (a message's `cursor`), first every logged transition
    /// after it, then the current state of each scheduler unless the last
    /// of those already says it, then live ones, none told twice; a cursor
    /// the log no longer reaches is refused (`CURSOR_EXPIRED`).
    async fn cluster_health(
        &self,
        ctx: &Context<'_>,
        after: Option<EventCursor>,
    ) -> Result<impl Stream<Item = Result<ClusterHealthEvent>> + use<>> {
        let state = ctx.data::<GatewayState>()?;
        let client = state.cluster.clone();
        // Listening starts before the log and the current state are read,
        // so no transition between them goes unheard.
        let mut rx = state.events.bus.subscribe();
        let interest = state.events.interest.watch_health();
        let (replay, mut seen) = match resume_point(ctx, after) {
            None => (Vec::new(), Seen::default()),
            Some(after) => resume::replay(log_of(ctx)?, &Query::clusters(ctx, None)?, after.0)
                .await
                .map_err(resume_error)?,
        };
        let schedulers = client.schedulers();
        let current = crate::events::health::current(&state.events.bus, &schedulers).await;
        let stamp = stamp(ctx);
        let cursors = cursor_stamp(ctx);
        let handle = move |addr: &std::net::SocketAddr| {
            client.schedulers().into_iter().find(|s| s.addr == *addr)
        };
        Ok(async_stream::stream! {
            let _interest = interest;
            // What each scheduler was told last, and since when it holds.
            let mut told: HashMap<std::net::SocketAddr, SchedulerState> = HashMap::new();
            for event in replay {
                let What::Scheduler { addr, up, circuit } = &event.what else { continue };
                let Some(scheduler) = handle(addr) else { continue };
                told.insert(*addr, SchedulerState { up: *up, circuit: *circuit, since_ms: event.observed_at_ms });
                cursors.set(event.cursor);
                yield Ok(ClusterHealthEvent {
                    scheduler: Scheduler::from(scheduler),
                    up: *up,
                    circuit: (*circuit).into(),
                    observed_at: at(event.observed_at_ms),
                    cursor: event.cursor.map(EventCursor),
                });
            }
            // The current state, unless the replay ended on it (or on
            // something newer than what was recorded when it was read).
            for scheduler in schedulers {
                let Some(now) = current.get(&scheduler.addr).copied() else { continue };
                if let Some(last) = told.get(&scheduler.addr)
                    && (last.same(now.up, now.circuit) || last.since_ms >= now.since_ms)
                {
                    continue;
                }
                told.insert(scheduler.addr, now);
                cursors.set(None);
                yield Ok(ClusterHealthEvent {
                    scheduler: Scheduler::from(scheduler),
                    up: now.up,
                    circuit: now.circuit.into(),
                    observed_at: Utc::now(),
                    cursor: None,
                });
            }
            loop {
                let event: Arc<Event> = match rx.recv().await {
                    Ok(event) if !seen.fresh(&event) => continue,
                    Ok(event) => event,
                    Err(RecvError::Lagged(missed)) => {
                        yield Err(lagged(missed));
                        break;
                    }
                    Err(RecvError::Closed) => break,
                };
                let What::Scheduler { addr, up, circuit } = &event.what else { continue };
                // Already told, or older than what was (it was on its way
                // while the current state was read).
                if told.get(addr).is_some_and(|t| t.same(*up, *circuit) || event.observed_at_ms < t.since_ms) {
                    continue;
                }
                let Some(scheduler) = handle(addr) else { continue };
                told.insert(*addr, SchedulerState { up: *up, circuit: *circuit, since_ms: event.observed_at_ms });
                stamp.set(event.observed_at_ms);
                cursors.set(event.cursor);
                yield Ok(ClusterHealthEvent {
                    scheduler: Scheduler::from(scheduler),
                    up: *up,
                    circuit: (*circuit).into(),
                    observed_at: at(event.observed_at_ms),
                    cursor: event.cursor.map(EventCursor),
                });
            }
        })
    }
}
