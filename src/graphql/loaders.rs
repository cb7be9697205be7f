//! The DataLoaders: every Host, Task and Peer lookup of a request goes
//! through them, so a request makes one batch per entity kind, each key at
//! most once. Batches go to the cache, and the cache's misses to the
//! schedulers through [`crate::origins`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use async_graphql::Result;
use async_graphql::dataloader::{DataLoader, HashMapCache, Loader};
use futures::future::BoxFuture;
use tracing::Instrument;

use super::errors::cluster_error;
use super::freshness::Freshness;
use super::types::{Host, Peer, Task};
use crate::cache::{CacheKey, Entity, Fetched};
use crate::cluster::ClusterError;
use crate::cluster::HostList;
use crate::deadline::Deadline;
use crate::ids::PeerKey;
use crate::origins::Origins;
use crate::proto::common::v2 as pb;

/// A task on one scheduler cluster.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TaskKey {
    pub cluster_id: u64,
    pub task_id: String,
}

/// A peer on one scheduler cluster.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PeerLookup {
    pub cluster_id: u64,
    pub key: PeerKey,
}

type Loaded<V> = Result<Fetched<V>, ClusterError>;

/// The span of one DataLoader batch of `entity`, parent of its cache
/// lookups and scheduler calls (within a traced request).
fn batch_span(entity: &'static str, keys: usize) -> tracing::Span {
    crate::telemetry::child_span(|| {
        tracing::debug_span!(
            "DataLoader batch",
            otel.name = format!("load {entity}"),
            dfgraph.entity = entity,
            dfgraph.keys = keys,
        )
    })
}

/// Runs a DataLoader batch in a task of its own, inside the span that
/// asked for it, so the batch is traced under its GraphQL operation.
fn spawn_in_span(batch: BoxFuture<'static, ()>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(batch.in_current_span())
}

/// Records what each lookup cost in the request's freshness report.
fn account<K, V: Send + Sync + 'static>(
    freshness: &Freshness,
    results: HashMap<CacheKey, Loaded<V>>,
    mut key_of: impl FnMut(&CacheKey) -> K,
) -> HashMap<K, Loaded<V>>
where
    K: std::hash::Hash + Eq,
{
    results
        .into_iter()
        .map(|(cache_key, result)| {
            match &result {
                Ok(fetched) => freshness.record(&cache_key, fetched),
                Err(e) => freshness.record_failure(e.scheduler()),
            }
            (key_of(&cache_key), result)
        })
        .collect()
}

pub struct HostListLoader {
    origins: Arc<Origins>,
    freshness: Arc<Freshness>,
    deadline: Deadline,
    /// Set when this request is the first look at host lists nobody was
    /// watching: lists fetched longer ago than this are loaded again.
    max_age: Arc<std::sync::OnceLock<std::time::Duration>>,
}

impl Loader<u64> for HostListLoader {
    type Value = Loaded<HostList>;
    type Error = Arc<str>;

    async fn load(&self, keys: &[u64]) -> Result<HashMap<u64, Self::Value>, Self::Error> {
        let cache_keys: Vec<CacheKey> = keys
            .iter()
            .map(|&cluster| CacheKey::hosts(cluster))
            .collect();
        let hosts = &self.origins.hosts;
        let lookup = async {
            match self.max_age.get() {
                Some(&max_age) => {
                    hosts
                        .get_many_younger_than(&cache_keys, self.deadline, max_age)
                        .await
                }
                None => hosts.get_many(&cache_keys, self.deadline).await,
            }
        };
        let results = lookup
            .instrument(batch_span("host lists", keys.len()))
            .await;
        Ok(account(&self.freshness, results, |k| k.cluster))
    }
}

pub struct TaskLoader {
    origins: Arc<Origins>,
    freshness: Arc<Freshness>,
    deadline: Deadline,
}

impl Loader<TaskKey> for TaskLoader {
    type Value = Loaded<pb::Task>;
    type Error = Arc<str>;

    async fn load(&self, keys: &[TaskKey]) -> Result<HashMap<TaskKey, Self::Value>, Self::Error> {
        let cache_keys: Vec<CacheKey> = keys
            .iter()
            .map(|k| CacheKey::task(k.cluster_id, k.task_id.clone()))
            .collect();
        let results = self
            .origins
            .tasks
            .get_many(&cache_keys, self.deadline)
            .instrument(batch_span("tasks", keys.len()))
            .await;
        Ok(account(&self.freshness, results, |k| TaskKey {
            cluster_id: k.cluster,
            task_id: k.id().into_owned(),
        }))
    }
}

pub struct PeerLoader {
    origins: Arc<Origins>,
    freshness: Arc<Freshness>,
    deadline: Deadline,
}

impl Loader<PeerLookup> for PeerLoader {
    type Value = Loaded<pb::Peer>;
    type Error = Arc<str>;

    async fn load(
        &self,
        keys: &[PeerLookup],
    ) -> Result<HashMap<PeerLookup, Self::Value>, Self::Error> {
        let cache_keys: Vec<CacheKey> = keys
            .iter()
            .map(|k| CacheKey::peer(k.cluster_id, &k.key))
            .collect();
        let results = self
            .origins
            .peers
            .get_many(&cache_keys, self.deadline)
            .instrument(batch_span("peers", keys.len()))
            .await;
        Ok(account(&self.freshness, results, |k| PeerLookup {
            cluster_id: k.cluster,
            key: match &k.entity {
                Entity::Peer(key) => key.clone(),
                // The cache answers with the keys it was asked for.
                Entity::Hosts | Entity::Task(_) => PeerKey {
                    host_id: String::new(),
                    task_id: String::new(),
                    peer_id: String::new(),
                },
            },
        }))
    }
}

/// The loaders of one GraphQL request (or one subscription).
pub struct Loaders {
    hosts: DataLoader<HostListLoader, HashMapCache>,
    /// See [`Loaders::host_lists_younger_than`].
    hosts_max_age: Arc<std::sync::OnceLock<std::time::Duration>>,
    tasks: DataLoader<TaskLoader, HashMapCache>,
    peers: DataLoader<PeerLoader, HashMapCache>,
    pub freshness: Arc<Freshness>,
    /// The request's budget, for calls made outside the loaders (deletes).
    pub deadline: Deadline,
}

fn loader_failure(e: Arc<str>) -> async_graphql::Error {
    use async_graphql::ErrorExtensions;
    async_graphql::Error::new(e.to_string()).extend_with(|_, ext| ext.set("code", "INTERNAL"))
}

impl Loaders {
    /// Loaders with no request deadline: calls get their own timeouts.
    pub fn new(origins: Arc<Origins>) -> Self {
        Self::with_deadline(origins, Deadline::NONE)
    }

    /// Loaders whose scheduler calls end by `deadline` at the latest.
    pub fn with_deadline(origins: Arc<Origins>, deadline: Deadline) -> Self {
        let freshness = Arc::new(Freshness::default());
        let hosts_max_age = Arc::new(std::sync::OnceLock::new());
        Self {
            hosts_max_age: Arc::clone(&hosts_max_age),
            hosts: DataLoader::with_cache(
                HostListLoader {
                    origins: origins.clone(),
                    freshness: freshness.clone(),
                    deadline,
                    max_age: Arc::clone(&hosts_max_age),
                },
                spawn_in_span,
                HashMapCache::default(),
            ),
            tasks: DataLoader::with_cache(
                TaskLoader {
                    origins: origins.clone(),
                    freshness: freshness.clone(),
                    deadline,
                },
                spawn_in_span,
                HashMapCache::default(),
            ),
            peers: DataLoader::with_cache(
                PeerLoader {
                    origins,
                    freshness: freshness.clone(),
                    deadline,
                },
                spawn_in_span,
                HashMapCache::default(),
            ),
            freshness,
            deadline,
        }
    }

    /// Stops memoizing results for the rest of this loader's life, for
    /// long-lived connections where later operations must see new data.
    pub fn disable_request_cache(&self) {
        self.hosts.enable_all_cache(false);
        self.tasks.enable_all_cache(false);
        self.peers.enable_all_cache(false);
    }

    /// Host lists of `clusters`, each its own result so one failed cluster
    /// does not hide the others.
    /// Host lists this request loads from now on are at most `max_age`
    /// old (fetched again otherwise): for the first look at lists nobody
    /// was watching, whose cached copies nobody kept current.
    pub fn host_lists_younger_than(&self, max_age: std::time::Duration) {
        // Only the first setting counts; every caller asks the same.
        let _ = self.hosts_max_age.set(max_age);
    }

    pub async fn host_lists(&self, clusters: &[u64]) -> Result<BTreeMap<u64, Loaded<HostList>>> {
        let loaded = self
            .hosts
            .load_many(clusters.iter().copied())
            .await
            .map_err(loader_failure)?;
        Ok(loaded.into_iter().collect())
    }

    /// One host of one cluster, from the cluster's host list.
    pub async fn host(&self, cluster_id: u64, host_id: &str) -> Result<Option<Host>> {
        match self
            .hosts
            .load_one(cluster_id)
            .await
            .map_err(loader_failure)?
        {
            Some(Ok(fetched)) => Ok(fetched.value.and_then(|list| {
                list.hosts
                    .iter()
                    .find(|h| h.id == host_id)
                    .map(|h| Host(h.clone()))
            })),
            Some(Err(e)) => Err(cluster_error(&e, Some(cluster_id))),
            None => Ok(None),
        }
    }

    pub async fn task(&self, key: TaskKey) -> Result<Option<Task>> {
        let cluster_id = key.cluster_id;
        match self.tasks.load_one(key).await.map_err(loader_failure)? {
            Some(Ok(fetched)) => Ok(fetched.value.map(|task| Task { cluster_id, task })),
            Some(Err(e)) => Err(cluster_error(&e, Some(cluster_id))),
            None => Ok(None),
        }
    }

    /// Looks a batch of tasks up on each of `clusters`. The first cluster
    /// (in id order) that has a task wins; a task no cluster has is `None`;
    /// a task that is missing where some cluster failed is that error.
    pub async fn find_tasks(
        &self,
        ids: &[String],
        clusters: &[u64],
    ) -> Result<Vec<Result<Option<Task>, async_graphql::Error>>> {
        let mut keys = Vec::with_capacity(ids.len() * clusters.len());
        for id in ids {
            for &cluster_id in clusters {
                keys.push(TaskKey {
                    cluster_id,
                    task_id: id.clone(),
                });
            }
        }
        let loaded = self.tasks.load_many(keys).await.map_err(loader_failure)?;
        Ok(ids
            .iter()
            .map(|id| {
                pick_first(clusters, |cluster_id| {
                    loaded.get(&TaskKey {
                        cluster_id,
                        task_id: id.clone(),
                    })
                })
                .map(|found| found.map(|(cluster_id, task)| Task { cluster_id, task }))
            })
            .collect())
    }

    /// Like [`Loaders::find_tasks`], for peers. A peer lives in its host's
    /// cluster, so with several clusters the (cached) host lists say where
    /// to ask, and only peers of unknown hosts are asked everywhere.
    pub async fn find_peers(
        &self,
        keys: &[PeerKey],
        clusters: &[u64],
    ) -> Result<Vec<Result<Option<Peer>, async_graphql::Error>>> {
        let home = self.host_clusters(keys, clusters).await?;
        let candidates = |key: &PeerKey| -> Vec<u64> {
            match home.get(key.host_id.as_str()) {
                Some(&cluster_id) => vec![cluster_id],
                None => clusters.to_vec(),
            }
        };
        let mut lookups = Vec::with_capacity(keys.len());
        for key in keys {
            for cluster_id in candidates(key) {
                lookups.push(PeerLookup {
                    cluster_id,
                    key: key.clone(),
                });
            }
        }
        let loaded = self
            .peers
            .load_many(lookups)
            .await
            .map_err(loader_failure)?;
        Ok(keys
            .iter()
            .map(|key| {
                pick_first(&candidates(key), |cluster_id| {
                    loaded.get(&PeerLookup {
                        cluster_id,
                        key: key.clone(),
                    })
                })
                .map(|found| {
                    found.map(|(cluster_id, peer)| Peer {
                        cluster_id,
                        host_id: key.host_id.clone(),
                        peer,
                    })
                })
            })
            .collect())
    }

    /// The cluster of each key's host, for the hosts the clusters' host
    /// lists know. Empty with a single cluster (nothing to choose).
    async fn host_clusters(
        &self,
        keys: &[PeerKey],
        clusters: &[u64],
    ) -> Result<HashMap<String, u64>> {
        let mut home = HashMap::new();
        if clusters.len() < 2 {
            return Ok(home);
        }
        let wanted: std::collections::HashSet<&str> =
            keys.iter().map(|k| k.host_id.as_str()).collect();
        for (cluster_id, result) in self.host_lists(clusters).await? {
            let Ok(Fetched {
                value: Some(list), ..
            }) = result
            else {
                continue;
            };
            for host in &list.hosts {
                if wanted.contains(host.id.as_str()) {
                    home.entry(host.id.clone()).or_insert(cluster_id);
                }
            }
        }
        Ok(home)
    }
}

/// Chooses among one entity's per-cluster results.
fn pick_first<'a, V: 'a>(
    clusters: &[u64],
    result_of: impl Fn(u64) -> Option<&'a Loaded<V>>,
) -> Result<Option<(u64, Arc<V>)>, async_graphql::Error> {
    let mut failure = None;
    for &cluster_id in clusters {
        match result_of(cluster_id) {
            Some(Ok(Fetched {
                value: Some(value), ..
            })) => return Ok(Some((cluster_id, value.clone()))),
            Some(Err(e)) if failure.is_none() => failure = Some((cluster_id, e)),
            _ => {}
        }
    }
    match failure {
        Some((cluster_id, e)) => Err(cluster_error(e, Some(cluster_id))),
        None => Ok(None),
    }
}
