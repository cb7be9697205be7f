//! The cache's origins: how a miss of each entity kind is loaded from the
//! schedulers, and the typed cache views built on them. It sits between
//! `cache` (which knows nothing of schedulers) and `cluster` (which knows
//! nothing of the cache), so `graphql` and `events` share one of each.

use std::collections::HashMap;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};

use crate::cache::{Cache, CacheKey, Entity, Origin, OriginResult, TypedCache};
use crate::cluster::{ClusterClient, ClusterError, HostList};
use crate::deadline::Deadline;
use crate::proto::common::v2 as pb;

/// Calls in flight from one batch; the per-scheduler bound still applies.
const BATCH_CONCURRENCY: usize = 64;

/// Loads host lists (`ListHosts`) for the cache.
pub struct HostsOrigin(pub ClusterClient);

impl Origin<HostList> for HostsOrigin {
    type Error = ClusterError;

    fn load(
        &self,
        keys: Vec<CacheKey>,
        deadline: Deadline,
    ) -> BoxFuture<'static, HashMap<CacheKey, OriginResult<HostList, ClusterError>>> {
        let client = self.0.clone();
        let load = async move {
            let results = futures::future::join_all(keys.iter().map(|key| {
                let client = client.clone();
                async move { client.list_hosts(key.cluster, deadline).await }
            }))
            .await;
            keys.into_iter()
                .zip(results)
                .map(|(key, result)| (key, result.map(Some)))
                .collect()
        };
        load.boxed()
    }
}

/// Loads tasks (`StatTask`, routed by the hash ring) for the cache.
pub struct TaskOrigin(pub ClusterClient);

impl Origin<pb::Task> for TaskOrigin {
    type Error = ClusterError;

    fn load(
        &self,
        keys: Vec<CacheKey>,
        deadline: Deadline,
    ) -> BoxFuture<'static, HashMap<CacheKey, OriginResult<pb::Task, ClusterError>>> {
        stat_each(&self.0, keys, move |client, key| async move {
            match &key.entity {
                Entity::Task(task_id) => client.stat_task(key.cluster, task_id, deadline).await,
                _ => Err(not_a(&key, "task")),
            }
        })
    }
}

/// Loads peers (`StatPeer`, routed by their task) for the cache.
pub struct PeerOrigin(pub ClusterClient);

impl Origin<pb::Peer> for PeerOrigin {
    type Error = ClusterError;

    fn load(
        &self,
        keys: Vec<CacheKey>,
        deadline: Deadline,
    ) -> BoxFuture<'static, HashMap<CacheKey, OriginResult<pb::Peer, ClusterError>>> {
        stat_each(&self.0, keys, move |client, key| async move {
            match &key.entity {
                Entity::Peer(peer) => client.stat_peer(key.cluster, peer, deadline).await,
                _ => Err(not_a(&key, "peer")),
            }
        })
    }
}

/// One `stat` call per key, [`BATCH_CONCURRENCY`] at a time; not found is
/// an absent value, not an error.
fn stat_each<V, F, Fut>(
    client: &ClusterClient,
    keys: Vec<CacheKey>,
    stat: F,
) -> BoxFuture<'static, HashMap<CacheKey, OriginResult<V, ClusterError>>>
where
    V: Send + 'static,
    F: Fn(ClusterClient, CacheKey) -> Fut + Send + 'static,
    Fut: Future<Output = Result<V, ClusterError>> + Send + 'static,
{
    let client = client.clone();
    futures::stream::iter(keys)
        .map(move |key| {
            let call = stat(client.clone(), key.clone());
            async move { (key, not_found_as_none(call.await)) }
        })
        .buffer_unordered(BATCH_CONCURRENCY)
        .collect()
        .boxed()
}

fn not_found_as_none<T>(result: Result<T, ClusterError>) -> OriginResult<T, ClusterError> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(ClusterError::NotFound) => Ok(None),
        Err(e) => Err(e),
    }
}

/// A key of another kind handed to an origin: a bug in the caller, told
/// as an error rather than a panic.
fn not_a(key: &CacheKey, kind: &str) -> ClusterError {
    ClusterError::InvalidArgument {
        message: format!("{key} is not a {kind} key"),
    }
}

/// The cache views of the three entity kinds, built once per process.
pub struct Origins {
    pub hosts: TypedCache<HostList, HostsOrigin>,
    pub tasks: TypedCache<pb::Task, TaskOrigin>,
    pub peers: TypedCache<pb::Peer, PeerOrigin>,
}

impl Origins {
    pub fn new(cache: &Cache, client: &ClusterClient) -> Self {
        Self {
            hosts: cache.typed(HostsOrigin(client.clone())),
            tasks: cache.typed(TaskOrigin(client.clone())),
            peers: cache.typed(PeerOrigin(client.clone())),
        }
    }
}
