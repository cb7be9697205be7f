//! The mutation root: deleting peers, tasks and hosts on the schedulers.
//! Off unless `enable_mutations` is set, because there is no access
//! control yet; a successful delete drops the affected cache entries.

use async_graphql::{Context, ID, Object, Result};

use super::GatewayState;
use super::errors::{bad_input, cluster_error, mutations_disabled};
use super::loaders::{Loaders, peer_cache_id};
use super::query::{PeerKeyInput, peer_key};
use crate::cache::{CacheKey, Kind};
use crate::deadline::Deadline;

pub struct Mutation;

fn enabled<'a>(ctx: &'a Context<'_>) -> Result<&'a GatewayState> {
    let state = ctx.data::<GatewayState>()?;
    if !state.enable_mutations {
        return Err(mutations_disabled());
    }
    Ok(state)
}

fn cluster(id: &ID) -> Result<u64> {
    id.parse::<u64>()
        .map_err(|_| bad_input(format!("scheduler cluster id {:?} is not a number", id.0)))
}

/// The request's budget (none outside a request, e.g. in tests).
fn budget(ctx: &Context<'_>) -> Deadline {
    ctx.data_opt::<Loaders>()
        .map_or(Deadline::NONE, |l| l.deadline)
}

#[Object]
impl Mutation {
    /// Tells the task's scheduler to delete a peer. True when deleted.
    async fn delete_peer(
        &self,
        ctx: &Context<'_>,
        key: PeerKeyInput,
        scheduler_cluster_id: ID,
    ) -> Result<bool> {
        let state = enabled(ctx)?;
        let key = peer_key(&key)?;
        let cluster_id = cluster(&scheduler_cluster_id)?;
        state
            .cluster
            .delete_peer(cluster_id, &key, budget(ctx))
            .await
            .map_err(|e| cluster_error(&e, Some(cluster_id)))?;
        state
            .cache
            .invalidate(&CacheKey::new(Kind::Peer, cluster_id, peer_cache_id(&key)))
            .await;
        Ok(true)
    }

    /// Tells the task's scheduler to release the task on one host (what
    /// Dragonfly's `DeleteTask` does). True when deleted.
    async fn delete_task(
        &self,
        ctx: &Context<'_>,
        id: ID,
        host_id: ID,
        scheduler_cluster_id: ID,
    ) -> Result<bool> {
        let state = enabled(ctx)?;
        let cluster_id = cluster(&scheduler_cluster_id)?;
        state
            .cluster
            .delete_task(cluster_id, &host_id, &id, budget(ctx))
            .await
            .map_err(|e| cluster_error(&e, Some(cluster_id)))?;
        state
            .cache
            .invalidate(&CacheKey::new(Kind::Task, cluster_id, id.0))
            .await;
        Ok(true)
    }

    /// Tells every scheduler of the cluster to forget a host.
    async fn delete_host(
        &self,
        ctx: &Context<'_>,
        id: ID,
        scheduler_cluster_id: ID,
    ) -> Result<bool> {
        let state = enabled(ctx)?;
        let cluster_id = cluster(&scheduler_cluster_id)?;
        state
            .cluster
            .delete_host(cluster_id, &id, budget(ctx))
            .await
            .map_err(|e| cluster_error(&e, Some(cluster_id)))?;
        state
            .cache
            .invalidate(&CacheKey::new(Kind::Hosts, cluster_id, ""))
            .await;
        Ok(true)
    }
}
