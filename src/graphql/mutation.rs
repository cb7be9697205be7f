//! The mutation root: deleting peers, tasks and hosts on the schedulers.
//! Off unless `enable_mutations` is set, and then for admins only; every
//! attempt is an audit event (`target: "dfgraph::audit"`: who, what, the
//! outcome). A successful delete drops the affected cache entries.

use async_graphql::{Context, ID, Object, Result};

use super::GatewayState;
use super::errors::{cluster_error, coded, mutations_disabled};
use super::ids::{PeerKeyInput, cluster_id, peer_key};
use super::loaders::Loaders;
use crate::auth::Principal;
use crate::cache::CacheKey;
use crate::cluster::ClusterError;
use crate::deadline::Deadline;

pub struct Mutation;

/// The state and the caller, when mutations are on and the caller is an
/// admin. A refused caller is audited too.
fn admitted<'a>(ctx: &'a Context<'_>, action: &str) -> Result<(&'a GatewayState, &'a Principal)> {
    let state = ctx.data::<GatewayState>()?;
    if !state.enable_mutations {
        return Err(mutations_disabled());
    }
    let Some(who) = ctx.data_opt::<Principal>() else {
        return Err(coded("FORBIDDEN", "mutations need an authenticated admin"));
    };
    if !who.may_mutate() {
        tracing::warn!(target: "dfgraph::audit", who = %who.subject, role = who.role.as_str(), action, outcome = "forbidden", "mutation refused");
        return Err(coded(
            "FORBIDDEN",
            format!(
                "{} is a {}; mutations need the admin role",
                who.subject,
                who.role.as_str()
            ),
        ));
    }
    Ok((state, who))
}

/// Records a mutation's outcome.
fn audit(who: &Principal, action: &str, target: &str, outcome: &Result<(), ClusterError>) {
    match outcome {
        Ok(()) => {
            tracing::info!(target: "dfgraph::audit", who = %who.subject, action, target, outcome = "ok", "mutation")
        }
        Err(e) => {
            tracing::warn!(target: "dfgraph::audit", who = %who.subject, action, target, outcome = e.code(), error = %e, "mutation failed")
        }
    }
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
        let (state, who) = admitted(ctx, "deletePeer")?;
        let key = peer_key(&key)?;
        let cluster_id = cluster_id(&scheduler_cluster_id)?;
        let outcome = state
            .cluster
            .delete_peer(cluster_id, &key, budget(ctx))
            .await;
        audit(
            who,
            "deletePeer",
            &format!("{cluster_id}/{}", key.path()),
            &outcome,
        );
        outcome.map_err(|e| cluster_error(&e, Some(cluster_id)))?;
        state
            .cache
            .invalidate(&CacheKey::peer(cluster_id, &key))
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
        let (state, who) = admitted(ctx, "deleteTask")?;
        let cluster_id = cluster_id(&scheduler_cluster_id)?;
        let outcome = state
            .cluster
            .delete_task(cluster_id, &host_id, &id, budget(ctx))
            .await;
        audit(
            who,
            "deleteTask",
            &format!("{cluster_id}/{}/{}", host_id.0, id.0),
            &outcome,
        );
        outcome.map_err(|e| cluster_error(&e, Some(cluster_id)))?;
        state
            .cache
            .invalidate(&CacheKey::task(cluster_id, id.0))
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
        let (state, who) = admitted(ctx, "deleteHost")?;
        let cluster_id = cluster_id(&scheduler_cluster_id)?;
        let outcome = state
            .cluster
            .delete_host(cluster_id, &id, budget(ctx))
            .await;
        audit(
            who,
            "deleteHost",
            &format!("{cluster_id}/{}", id.0),
            &outcome,
        );
        outcome.map_err(|e| cluster_error(&e, Some(cluster_id)))?;
        state.cache.invalidate(&CacheKey::hosts(cluster_id)).await;
        Ok(true)
    }
}
