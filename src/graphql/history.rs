//! Queries over the past, answered from the event log
//! ([`crate::events::log`]): the host event log paged by cursor, one
//! host's recent events, the hosts that churned within a window, the
//! schedulers' transitions, and how far back the log reaches.

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::{Context, ErrorExtensions, ID, Object, Result, SimpleObject};
use chrono::{DateTime, Utc};

use super::GatewayState;
use super::errors::{bad_input, coded};
use super::hosts::{CompiledFilter, HostFilter};
use super::query::Query;
use super::scalars::{EventCursor, UInt64};
use super::subscription::{HostEvent, HostEventKind, host_event};
use super::types::{CircuitState, Host};
use crate::clock::{Clock, SystemClock};
use crate::events::log::{EventCursor as LogCursor, EventLog, LogError, LogId, Range};
use crate::events::resume::ResumeError;
use crate::events::{Event, HostChange, What};

/// The queries of this module, merged into the query root.
#[derive(Default)]
pub struct HistoryQuery;

/// One page of the host event log, newest first.
#[derive(SimpleObject)]
pub struct HostEventLogPage {
    /// The events, newest first; each with its `cursor`.
    pub events: Vec<HostEvent>,
    /// More (older) events match: ask again with `after: endCursor`.
    pub has_next_page: bool,
    /// The cursor of the last (oldest) event of this page.
    pub end_cursor: Option<EventCursor>,
    /// The search read `[event_log] max_scan` entries of a cluster without
    /// filling the page: older matches may exist beyond them (narrow
    /// `since`/`until`, or page on).
    pub scan_limit_reached: bool,
}

/// A scheduler's reachability or circuit transition, as logged by the
/// replica recording its cluster's scheduler health.
#[derive(SimpleObject)]
pub struct SchedulerEvent {
    /// The scheduler's `ip:port`.
    pub address: String,
    pub scheduler_cluster_id: ID,
    pub up: bool,
    /// The recording replica's circuit breaker toward it.
    pub circuit: CircuitState,
    pub observed_at: DateTime<Utc>,
    pub cursor: EventCursor,
}

/// One page of scheduler transitions, newest first.
#[derive(SimpleObject)]
pub struct SchedulerEventLogPage {
    pub events: Vec<SchedulerEvent>,
    /// More (older) transitions match: ask again with `after: endCursor`.
    pub has_next_page: bool,
    pub end_cursor: Option<EventCursor>,
    /// As in `HostEventLogPage`: older matches may lie beyond the entries
    /// read (host events share the log; narrow `since`/`until`).
    pub scan_limit_reached: bool,
}

/// The GraphQL form of a logged scheduler transition.
fn scheduler_event(event: &Event) -> Option<SchedulerEvent> {
    let (What::Scheduler { addr, up, circuit }, Some(cursor)) = (&event.what, event.cursor) else {
        return None;
    };
    Some(SchedulerEvent {
        address: addr.to_string(),
        scheduler_cluster_id: ID(event.cluster_id.to_string()),
        up: *up,
        circuit: (*circuit).into(),
        observed_at: at(event.observed_at_ms),
        cursor: EventCursor(cursor),
    })
}

/// How often one host joined, left and changed within a window.
#[derive(SimpleObject)]
pub struct HostChurn {
    /// The host as last logged.
    pub host: Host,
    pub scheduler_cluster_id: ID,
    pub joins: i32,
    pub leaves: i32,
    /// Changes other than of load figures.
    pub updates: i32,
    /// Times it stopped answering its health service (`UNREACHABLE`
    /// events; see `Host.liveness`).
    pub outages: i32,
    pub first_at: DateTime<Utc>,
    pub last_at: DateTime<Utc>,
}

/// The hosts that changed most within a window: flapping hosts first.
#[derive(SimpleObject)]
pub struct HostChurnReport {
    /// The window's start (its end is now).
    pub since: DateTime<Utc>,
    /// Ordered by joins plus leaves plus outages, then updates, most first.
    pub hosts: Vec<HostChurn>,
    /// A cluster had more entries in the window than one query reads
    /// (`[event_log] max_scan`): the counts cover the oldest part of it.
    pub scan_limit_reached: bool,
}

/// What the log holds for one scheduler cluster.
#[derive(SimpleObject)]
pub struct EventLogCluster {
    pub scheduler_cluster_id: ID,
    /// The oldest event still available.
    pub oldest_cursor: Option<EventCursor>,
    pub oldest_at: Option<DateTime<Utc>>,
    /// Entries kept (a few may lie beyond the retention until trimmed).
    pub entries: UInt64,
}

/// How far back the event log reaches.
#[derive(SimpleObject)]
pub struct EventLogInfo {
    pub enabled: bool,
    /// `redis` (shared by every replica) or `memory` (this process only).
    pub backend: Option<String>,
    /// How long events are kept, in seconds.
    pub retention_seconds: UInt64,
    /// The oldest event available in any cluster.
    pub oldest_at: Option<DateTime<Utc>>,
    pub clusters: Vec<EventLogCluster>,
}

pub(crate) fn log_of<'a>(ctx: &Context<'a>) -> Result<&'a EventLog> {
    ctx.data::<GatewayState>()?.events.bus.log().ok_or_else(|| {
        coded(
            "EVENT_LOG_DISABLED",
            "the event log is switched off ([event_log] enabled = false)",
        )
    })
}

fn unavailable(error: LogError) -> async_graphql::Error {
    coded("EVENT_LOG_UNAVAILABLE", error.to_string())
}

/// Why a subscription could not resume, for its client: `CURSOR_EXPIRED`
/// names the oldest cursor it could resume from instead.
pub(crate) fn resume_error(error: ResumeError) -> async_graphql::Error {
    match error {
        ResumeError::Expired { oldest, .. } => {
            let oldest = oldest.map(|c| c.encode());
            async_graphql::Error::new(error.to_string()).extend_with(move |_, ext| {
                ext.set("code", "CURSOR_EXPIRED");
                ext.set("oldestCursor", oldest.clone());
            })
        }
        ResumeError::Log(error) => unavailable(error),
    }
}

fn at(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// What a search of the log keeps.
pub(crate) struct HostEventSearch<'a> {
    pub clusters: Vec<u64>,
    pub filter: CompiledFilter<'a>,
    pub host_id: Option<String>,
    pub kinds: Option<Vec<HostEventKind>>,
    pub range: Range,
    pub after: Option<LogCursor>,
    pub first: usize,
}

impl HostEventSearch<'_> {
    fn keeps(&self, event: &Event) -> bool {
        let What::Host { change, host, .. } = &event.what else {
            return false;
        };
        let kind = HostEventKind::from(*change);
        self.host_id.as_ref().is_none_or(|id| *id == host.id)
            && self.kinds.as_ref().is_none_or(|k| k.contains(&kind))
            && self.filter.matches(host)
    }

    /// The newest `first` matching events across the clusters (one more
    /// when there are more), newest first, and whether a scan hit its
    /// limit.
    pub async fn run(&self, log: &EventLog) -> Result<(Vec<Arc<Event>>, bool), LogError> {
        newest(
            log,
            &self.clusters,
            self.range,
            self.after,
            self.first,
            |e| self.keeps(e),
        )
        .await
    }
}

/// The part of `range` in `cluster` older than the `after` cursor
/// (cursors order by id, then cluster).
fn older_than(range: Range, after: Option<LogCursor>, cluster: u64) -> Option<Range> {
    match after {
        None => Some(range),
        Some(after) if cluster < after.cluster_id => Some(Range {
            to: range.to.min(after.id),
            ..range
        }),
        Some(after) => range.before(after.id),
    }
}

/// The newest `first` events of `clusters` within `range` and older than
/// `after` that `keeps` keeps (one more when there are more), newest
/// first, and whether a scan hit its limit.
async fn newest(
    log: &EventLog,
    clusters: &[u64],
    range: Range,
    after: Option<LogCursor>,
    first: usize,
    keeps: impl Fn(&Event) -> bool,
) -> Result<(Vec<Arc<Event>>, bool), LogError> {
    let mut found = Vec::new();
    let mut limited = false;
    for &cluster in clusters {
        let Some(range) = older_than(range, after, cluster) else {
            continue;
        };
        let mut mine = 0;
        limited |= log
            .scan(cluster, range, true, |event| {
                if keeps(event) {
                    found.push(event.clone());
                    mine += 1;
                }
                mine <= first
            })
            .await?;
    }
    found.sort_by_key(|e| std::cmp::Reverse(e.cursor));
    found.truncate(first + 1);
    Ok((found, limited))
}

/// The range between `since` (included) and `until` (excluded).
fn between(since: Option<DateTime<Utc>>, until: Option<DateTime<Utc>>) -> Range {
    Range {
        from: since
            .map(|t| LogId::at(t.timestamp_millis()))
            .unwrap_or_default(),
        to: until
            .and_then(|t| LogId::at(t.timestamp_millis()).prev())
            .unwrap_or(Range::all().to),
    }
}

/// The newest `first` host events of `host_id` in the log.
pub(crate) async fn events_of_host(
    ctx: &Context<'_>,
    host_id: &str,
    first: usize,
) -> Result<Vec<HostEvent>> {
    let log = log_of(ctx)?;
    let search = HostEventSearch {
        clusters: Query::clusters(ctx, None)?,
        filter: HostFilter::default().into_compiled(),
        host_id: Some(host_id.to_owned()),
        kinds: None,
        range: Range::all(),
        after: None,
        first,
    };
    let (mut events, _) = search.run(log).await.map_err(unavailable)?;
    events.truncate(first);
    Ok(events.iter().filter_map(|e| host_event(e)).collect())
}

/// A page size between 1 and the configured maximum.
fn page_size(ctx: &Context<'_>, first: i32) -> Result<usize> {
    let max = ctx.data::<GatewayState>()?.limits.max_page_size;
    match usize::try_from(first) {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(bad_input(format!("`first` must be between 1 and {max}"))),
    }
}

#[Object]
impl HistoryQuery {
    /// Host events kept in the event log (see `eventLog` for how far back
    /// it reaches), newest first, paged by cursor: pass a page's
    /// `endCursor` as `after` for the next (older) one. `filter` applies
    /// to each host as it was when the event was logged; `since` and
    /// `until` bound the time it was logged. Changes of load figures alone
    /// are not logged.
    #[allow(clippy::too_many_arguments)]
    async fn host_event_log(
        &self,
        ctx: &Context<'_>,
        filter: Option<HostFilter>,
        host_id: Option<ID>,
        kinds: Option<Vec<HostEventKind>>,
        since: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
        #[graphql(default = 100)] first: i32,
        after: Option<EventCursor>,
    ) -> Result<HostEventLogPage> {
        let first = page_size(ctx, first)?;
        let log = log_of(ctx)?;
        let filter = filter.unwrap_or_default();
        let served = Query::clusters(ctx, None)?;
        let clusters = match filter.cluster_ids().map_err(bad_input)? {
            Some(only) => served.into_iter().filter(|c| only.contains(c)).collect(),
            None => served,
        };
        let range = between(since, until);
        let search = HostEventSearch {
            clusters,
            filter: filter.into_compiled(),
            host_id: host_id.map(|id| id.0),
            kinds,
            range,
            after: after.map(|a| a.0),
            first,
        };
        let (mut events, scan_limit_reached) = search.run(log).await.map_err(unavailable)?;
        let has_next_page = events.len() > first;
        events.truncate(first);
        Ok(HostEventLogPage {
            end_cursor: events.last().and_then(|e| e.cursor).map(EventCursor),
            events: events.iter().filter_map(|e| host_event(e)).collect(),
            has_next_page,
            scan_limit_reached,
        })
    }

    /// Scheduler reachability and circuit transitions kept in the event
    /// log (recorded by one replica per scheduler cluster, see
    /// `clusterHealth`), newest first, paged by cursor like
    /// `hostEventLog`; `address` (`ip:port`) selects one scheduler.
    #[allow(clippy::too_many_arguments)]
    async fn scheduler_event_log(
        &self,
        ctx: &Context<'_>,
        scheduler_cluster_ids: Option<Vec<ID>>,
        address: Option<String>,
        since: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
        #[graphql(default = 100)] first: i32,
        after: Option<EventCursor>,
    ) -> Result<SchedulerEventLogPage> {
        let first = page_size(ctx, first)?;
        let log = log_of(ctx)?;
        let mut clusters = Query::clusters(ctx, None)?;
        if let Some(only) = scheduler_cluster_ids {
            let only = only
                .iter()
                .map(|id| id.0.parse::<u64>())
                .collect::<Result<Vec<u64>, _>>()
                .map_err(|_| bad_input("`schedulerClusterIds` are unsigned integers"))?;
            clusters.retain(|c| only.contains(c));
        }
        let address = match address {
            Some(text) => Some(
                text.parse::<std::net::SocketAddr>()
                    .map_err(|_| bad_input("`address` is a scheduler's ip:port"))?,
            ),
            None => None,
        };
        let keeps = |event: &Event| match &event.what {
            What::Scheduler { addr, .. } => address.is_none_or(|a| a == *addr),
            _ => false,
        };
        let range = between(since, until);
        let (mut events, scan_limit_reached) =
            newest(log, &clusters, range, after.map(|a| a.0), first, keeps)
                .await
                .map_err(unavailable)?;
        let has_next_page = events.len() > first;
        events.truncate(first);
        Ok(SchedulerEventLogPage {
            end_cursor: events.last().and_then(|e| e.cursor).map(EventCursor),
            events: events.iter().filter_map(|e| scheduler_event(e)).collect(),
            has_next_page,
            scan_limit_reached,
        })
    }

    /// The hosts that joined, left or changed most within the last
    /// `windowSeconds` (at most the retention), with at least `minChanges`
    /// joins plus leaves plus updates: the flapping hosts first.
    async fn host_churn(
        &self,
        ctx: &Context<'_>,
        filter: Option<HostFilter>,
        #[graphql(default = 3600)] window_seconds: i32,
        #[graphql(default = 20)] first: i32,
        #[graphql(default = 2)] min_changes: i32,
    ) -> Result<HostChurnReport> {
        let first = page_size(ctx, first)?;
        let log = log_of(ctx)?;
        if window_seconds < 1 {
            return Err(bad_input("`windowSeconds` must be at least 1"));
        }
        let filter = filter.unwrap_or_default();
        let served = Query::clusters(ctx, None)?;
        let clusters: Vec<u64> = match filter.cluster_ids().map_err(bad_input)? {
            Some(only) => served.into_iter().filter(|c| only.contains(c)).collect(),
            None => served,
        };
        let filter = filter.into_compiled();
        let since_ms = SystemClock
            .now_ms_signed()
            .saturating_sub(i64::from(window_seconds) * 1000);
        let range = Range {
            from: LogId::at(since_ms),
            ..Range::all()
        };
        let mut churn: HashMap<(u64, String), HostChurn> = HashMap::new();
        let mut scan_limit_reached = false;
        for cluster in clusters {
            scan_limit_reached |= log
                .scan(cluster, range, false, |event| {
                    count(&mut churn, event, &filter);
                    true
                })
                .await
                .map_err(unavailable)?;
        }
        let mut hosts: Vec<HostChurn> = churn
            .into_values()
            .filter(|c| c.joins + c.leaves + c.outages + c.updates >= min_changes)
            .collect();
        hosts.sort_by(|a, b| {
            (b.joins + b.leaves + b.outages, b.updates, &a.host.0.id).cmp(&(
                a.joins + a.leaves + a.outages,
                a.updates,
                &b.host.0.id,
            ))
        });
        hosts.truncate(first);
        Ok(HostChurnReport {
            since: at(since_ms),
            hosts,
            scan_limit_reached,
        })
    }

    /// How far back the event log reaches, per scheduler cluster.
    async fn event_log(&self, ctx: &Context<'_>) -> Result<EventLogInfo> {
        let state = ctx.data::<GatewayState>()?;
        let Some(log) = state.events.bus.log() else {
            return Ok(EventLogInfo {
                enabled: false,
                backend: None,
                retention_seconds: UInt64(0),
                oldest_at: None,
                clusters: Vec::new(),
            });
        };
        let mut clusters = Vec::new();
        for cluster in state.cluster.cluster_ids() {
            let (oldest, entries) = log.extent(cluster).await.map_err(unavailable)?;
            clusters.push(EventLogCluster {
                scheduler_cluster_id: ID(cluster.to_string()),
                oldest_cursor: oldest.map(EventCursor),
                oldest_at: oldest.map(|c| at(c.logged_at_ms())),
                entries: UInt64(entries),
            });
        }
        Ok(EventLogInfo {
            enabled: true,
            backend: Some(log.backend().to_owned()),
            retention_seconds: UInt64(log.config().retention.as_secs()),
            oldest_at: clusters.iter().filter_map(|c| c.oldest_at).min(),
            clusters,
        })
    }
}

/// Counts one logged event into its host's churn.
fn count(churn: &mut HashMap<(u64, String), HostChurn>, event: &Event, filter: &CompiledFilter) {
    let (What::Host { change, host, .. }, Some(cursor)) = (&event.what, event.cursor) else {
        return;
    };
    if !filter.matches(host) {
        return;
    }
    let when = at(cursor.logged_at_ms());
    let entry = churn
        .entry((event.cluster_id, host.id.clone()))
        .or_insert_with(|| HostChurn {
            host: Host(host.clone()),
            scheduler_cluster_id: ID(event.cluster_id.to_string()),
            joins: 0,
            leaves: 0,
            updates: 0,
            outages: 0,
            first_at: when,
            last_at: when,
        });
    match change {
        HostChange::Joined => entry.joins += 1,
        HostChange::Left => entry.leaves += 1,
        HostChange::Updated => entry.updates += 1,
        HostChange::Unreachable => entry.outages += 1,
        // Its end is implied by the outage it ends.
        HostChange::Reachable => {}
    }
    entry.host = Host(host.clone());
    entry.last_at = when;
}
