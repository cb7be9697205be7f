//! The query root: hosts (a Relay connection), host statistics, tasks,
//! peers, schedulers and scheduler clusters.

use std::sync::Arc;

use async_graphql::connection::{Connection, Edge, EmptyFields};
use async_graphql::{Context, ID, Object, Result, SimpleObject};

use super::GatewayState;
use super::errors::{bad_input, cluster_error};
use super::hosts::{
    Bucket, Cursor, HostFilter, HostOrder, HostStats, PageArgs, host_stats, page_sorted,
};
use super::ids::{PeerKeyInput, check_id, cluster_id, peer_key};
use super::loaders::Loaders;
use super::types::{Host, LivenessState, Peer, Scheduler, SchedulerCluster, Task};
use crate::cluster::HostList;

#[derive(Default)]
pub struct Query;

/// Fields beside the edges of a host connection.
#[derive(SimpleObject)]
pub struct HostConnectionFields {
    /// Hosts matching the filter, over every page.
    pub total_count: usize,
}

/// A page size argument (`first`, `last`) checked against `max`.
pub(super) fn page_size(name: &str, value: Option<i32>, max: usize) -> Result<Option<usize>> {
    match value {
        None => Ok(None),
        Some(n) if n < 0 => Err(bad_input(format!("`{name}` must not be negative"))),
        Some(n) if n as usize > max => Err(bad_input(format!("`{name}` must be at most {max}"))),
        Some(n) => Ok(Some(n as usize)),
    }
}

/// Refuses batches larger than the configured limit.
fn check_batch(ctx: &Context<'_>, len: usize) -> Result<()> {
    let max = ctx.data::<GatewayState>()?.limits.max_batch_keys;
    if len > max {
        return Err(bad_input(format!("at most {max} keys per request")));
    }
    Ok(())
}

/// A batch's entries: each failed one becomes `null` plus an error in the
/// response, so one failure does not hide the rest.
fn partial<T>(ctx: &Context<'_>, results: Vec<Result<Option<T>>>) -> Vec<Option<T>> {
    results
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|e| {
                ctx.add_error(e.into_server_error(ctx.item.pos));
                None
            })
        })
        .collect()
}

impl Query {
    /// The clusters a lookup should consider: one named cluster, or all.
    pub(crate) fn clusters(ctx: &Context<'_>, only: Option<&ID>) -> Result<Vec<u64>> {
        let state = ctx.data::<GatewayState>()?;
        match only {
            Some(id) => {
                let id = cluster_id(id)?;
                if !state.cluster.cluster_ids().contains(&id) {
                    return Err(bad_input(format!(
                        "scheduler cluster {id} is not served here"
                    )));
                }
                Ok(vec![id])
            }
            None => Ok(state.cluster.cluster_ids()),
        }
    }

    /// Host lists of the clusters `filter` selects. A cluster that fails
    /// adds an error to the response; the others still answer.
    async fn host_lists(
        ctx: &Context<'_>,
        filter: &HostFilter,
    ) -> Result<(Vec<Arc<HostList>>, Vec<u64>, Vec<u64>)> {
        let state = ctx.data::<GatewayState>()?;
        let clusters = match filter.cluster_ids().map_err(bad_input)? {
            Some(ids) => ids,
            None => state.cluster.cluster_ids(),
        };
        let loaders = ctx.data::<Loaders>()?;
        // A first look at lists nobody here was watching: their cached
        // copies may be as old as their TTL, so they are loaded again
        // unless younger than one watch interval (fresh on first sight).
        if state.events.config.enabled && !state.events.interest.hosts_wanted() {
            loaders.host_lists_younger_than(state.events.config.interval);
        }
        // Someone looks at hosts: keep their lists watched (and so fresh).
        state.events.interest.touch_hosts();
        let lists = loaders.host_lists(&clusters).await?;
        let (mut ok, mut counted, mut missing) = (Vec::new(), Vec::new(), Vec::new());
        for cluster_id in clusters {
            match lists.get(&cluster_id) {
                Some(Ok(fetched)) => {
                    if let Some(list) = &fetched.value {
                        ok.push(list.clone());
                    }
                    counted.push(cluster_id);
                }
                Some(Err(e)) => {
                    ctx.add_error(
                        cluster_error(e, Some(cluster_id)).into_server_error(ctx.item.pos),
                    );
                    missing.push(cluster_id);
                }
                None => missing.push(cluster_id),
            }
        }
        Ok((ok, counted, missing))
    }
}

// Merged into the root `Query` ([`super::QueryRoot`]): its own name
// never shows.
#[Object(name = "PresentQuery")]
impl Query {
    /// Hosts (dfdaemons) of every served scheduler cluster, filtered,
    /// ordered (default: hostname ascending) and paginated. Without
    /// `first` or `last`, the first 100. A cursor is an exact position in
    /// the order it came from and is refused (`INVALID_ARGUMENT`) with any
    /// other order; hosts joining or leaving between pages never make a
    /// walk repeat or skip a host that stays.
    #[allow(clippy::too_many_arguments)]
    async fn hosts(
        &self,
        ctx: &Context<'_>,
        filter: Option<HostFilter>,
        order_by: Option<HostOrder>,
        first: Option<i32>,
        after: Option<String>,
        last: Option<i32>,
        before: Option<String>,
    ) -> Result<Connection<String, Host, HostConnectionFields, EmptyFields>> {
        let state = ctx.data::<GatewayState>()?;
        let max = state.limits.max_page_size;
        let size = |name: &str, v: Option<i32>| page_size(name, v, max);
        let order = order_by.unwrap_or_default();
        let cursor = |c: Option<String>| -> Result<Option<Cursor>> {
            c.as_deref()
                .map(|c| Cursor::decode(c, order.field))
                .transpose()
                .map_err(|e| bad_input(e.to_string()))
        };
        let args = PageArgs {
            first: size("first", first)?,
            last: size("last", last)?,
            after: cursor(after)?,
            before: cursor(before)?,
        };
        let filter = filter.unwrap_or_default();
        let (lists, _, _) = Self::host_lists(ctx, &filter).await?;
        let (filter, liveness) = filter.split_liveness();
        let mut matching = state.host_memo.sorted(&lists, order, &filter);
        if let Some(wanted) = &liveness {
            matching = with_liveness(ctx, state, matching, wanted);
        }
        let result = page_sorted(
            &matching,
            &HostFilter::default(),
            order,
            &args,
            100.min(max),
        );
        let mut connection = Connection::with_additional_fields(
            result.has_previous_page,
            result.has_next_page,
            HostConnectionFields {
                total_count: result.total_count,
            },
        );
        connection.edges.extend(
            result
                .hosts
                .into_iter()
                .map(|(host, cursor)| Edge::new(cursor.encode(), Host(Arc::new(host.clone())))),
        );
        Ok(connection)
    }

    /// One host by id, from any served cluster.
    async fn host(
        &self,
        ctx: &Context<'_>,
        id: ID,
        scheduler_cluster_id: Option<ID>,
    ) -> Result<Option<Host>> {
        check_id("host id", &id)?;
        let clusters = Self::clusters(ctx, scheduler_cluster_id.as_ref())?;
        let filter = HostFilter {
            scheduler_cluster_ids: Some(clusters.iter().map(|c| ID(c.to_string())).collect()),
            ..Default::default()
        };
        let (lists, _, _) = Self::host_lists(ctx, &filter).await?;
        Ok(lists
            .iter()
            .flat_map(|l| l.hosts.iter())
            .find(|h| h.id == id.0)
            .map(|h| Host(h.clone())))
    }

    /// Host counts by version, commit, type, idc, location, os and
    /// scheduler cluster, computed here so the console need not download
    /// every host.
    async fn host_stats(&self, ctx: &Context<'_>, filter: Option<HostFilter>) -> Result<HostStats> {
        let filter = filter.unwrap_or_default();
        let (lists, counted, missing) = Self::host_lists(ctx, &filter).await?;
        let state = ctx.data::<GatewayState>()?;
        let (filter, liveness) = filter.split_liveness();
        let by_liveness = ctx.look_ahead().field("byLiveness").exists();
        let mut stats = if liveness.is_none() && !by_liveness {
            state.host_memo.stats(&lists, &filter)
        } else {
            let mut matching = state
                .host_memo
                .sorted(&lists, HostOrder::default(), &filter);
            if let Some(wanted) = &liveness {
                matching = with_liveness(ctx, state, matching, wanted);
            }
            let mut stats = match liveness {
                None => state.host_memo.stats(&lists, &filter),
                Some(_) => host_stats(matching.iter().copied(), &HostFilter::default()),
            };
            if by_liveness {
                uncacheable(ctx);
                stats.by_liveness = liveness_buckets(state, &matching);
            }
            stats
        };
        stats.counted_clusters = counted.into_iter().map(|c| ID(c.to_string())).collect();
        stats.missing_clusters = missing.into_iter().map(|c| ID(c.to_string())).collect();
        Ok(stats)
    }

    /// One task by id. Without `schedulerClusterId`, every cluster is
    /// asked and the lowest cluster id that has it answers.
    async fn task(
        &self,
        ctx: &Context<'_>,
        id: ID,
        scheduler_cluster_id: Option<ID>,
    ) -> Result<Option<Task>> {
        check_id("task id", &id)?;
        let clusters = Self::clusters(ctx, scheduler_cluster_id.as_ref())?;
        let loaders = ctx.data::<Loaders>()?;
        let mut found = loaders.find_tasks(&[id.0], &clusters).await?;
        found.pop().unwrap_or(Ok(None))
    }

    /// Many tasks in one batch; entries line up with `ids` (null where not
    /// found, with an error where a scheduler failed).
    async fn tasks(
        &self,
        ctx: &Context<'_>,
        ids: Vec<ID>,
        scheduler_cluster_id: Option<ID>,
    ) -> Result<Vec<Option<Task>>> {
        check_batch(ctx, ids.len())?;
        for id in &ids {
            check_id("task id", id)?;
        }
        let clusters = Self::clusters(ctx, scheduler_cluster_id.as_ref())?;
        let loaders = ctx.data::<Loaders>()?;
        let ids: Vec<String> = ids.into_iter().map(|id| id.0).collect();
        Ok(partial(ctx, loaders.find_tasks(&ids, &clusters).await?))
    }

    /// One peer: a host's download of a task.
    async fn peer(
        &self,
        ctx: &Context<'_>,
        host_id: ID,
        task_id: ID,
        peer_id: ID,
        scheduler_cluster_id: Option<ID>,
    ) -> Result<Option<Peer>> {
        let key = peer_key(&PeerKeyInput {
            host_id,
            task_id,
            peer_id,
        })?;
        let clusters = Self::clusters(ctx, scheduler_cluster_id.as_ref())?;
        let loaders = ctx.data::<Loaders>()?;
        let mut found = loaders.find_peers(&[key], &clusters).await?;
        found.pop().unwrap_or(Ok(None))
    }

    /// Many peers in one batch; entries line up with `keys`.
    async fn peers(
        &self,
        ctx: &Context<'_>,
        keys: Vec<PeerKeyInput>,
        scheduler_cluster_id: Option<ID>,
    ) -> Result<Vec<Option<Peer>>> {
        check_batch(ctx, keys.len())?;
        let keys = keys.iter().map(peer_key).collect::<Result<Vec<_>>>()?;
        let clusters = Self::clusters(ctx, scheduler_cluster_id.as_ref())?;
        let loaders = ctx.data::<Loaders>()?;
        Ok(partial(ctx, loaders.find_peers(&keys, &clusters).await?))
    }

    /// Every scheduler dfgraph talks to, with its health.
    async fn schedulers(&self, ctx: &Context<'_>) -> Result<Vec<Scheduler>> {
        let state = ctx.data::<GatewayState>()?;
        Ok(state
            .cluster
            .schedulers()
            .into_iter()
            .map(Scheduler::from)
            .collect())
    }

    /// Every served scheduler cluster.
    async fn scheduler_clusters(&self, ctx: &Context<'_>) -> Result<Vec<SchedulerCluster>> {
        let state = ctx.data::<GatewayState>()?;
        let all = state.cluster.schedulers();
        Ok(state
            .cluster
            .cluster_ids()
            .into_iter()
            .map(|id| {
                let schedulers: Vec<Scheduler> = all
                    .iter()
                    .filter(|s| s.cluster_id == id)
                    .cloned()
                    .map(Scheduler::from)
                    .collect();
                let reachable = schedulers
                    .iter()
                    .any(|s| s.handle.health_snapshot().is_up());
                let cluster_id_mismatch =
                    schedulers.iter().any(|s| s.handle.announced.mismatched(id));
                SchedulerCluster {
                    id: ID(id.to_string()),
                    schedulers,
                    reachable,
                    cluster_id_mismatch,
                }
            })
            .collect())
    }
}

/// The response reads liveness, which the host lists do not determine:
/// the response cache must not keep it.
fn uncacheable(ctx: &Context<'_>) {
    if let Ok(loaders) = ctx.data::<Loaders>() {
        loaders.freshness.record_uncacheable();
    }
}

/// The hosts whose liveness is one of `wanted`, in their order.
fn with_liveness<'a>(
    ctx: &Context<'_>,
    state: &GatewayState,
    hosts: Vec<&'a crate::proto::common::v2::Host>,
    wanted: &[LivenessState],
) -> Vec<&'a crate::proto::common::v2::Host> {
    uncacheable(ctx);
    state.liveness.with_states(|state_of| {
        hosts
            .into_iter()
            .filter(|h| wanted.contains(&state_of(h.scheduler_cluster_id, &h.id).into()))
            .collect()
    })
}

/// `hosts` counted by liveness state, every state present (0 included),
/// in the order REACHABLE, UNREACHABLE, UNKNOWN.
fn liveness_buckets(
    state: &GatewayState,
    hosts: &[&crate::proto::common::v2::Host],
) -> Vec<Bucket> {
    let mut counts = [0u64; 3];
    state.liveness.with_states(|state_of| {
        for h in hosts {
            let i = match LivenessState::from(state_of(h.scheduler_cluster_id, &h.id)) {
                LivenessState::Reachable => 0,
                LivenessState::Unreachable => 1,
                LivenessState::Unknown => 2,
            };
            counts[i] += 1;
        }
    });
    ["REACHABLE", "UNREACHABLE", "UNKNOWN"]
        .into_iter()
        .zip(counts)
        .map(|(value, count)| Bucket {
            value: value.to_owned(),
            count,
        })
        .collect()
}
