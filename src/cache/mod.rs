//! The two-tier cache between the DataLoaders and the schedulers: L1 in
//! process, L2 in Redis, fresh and stale deadlines per entry kind,
//! single-flight loading and invalidation.
//!
//! It knows nothing of schedulers or GraphQL: each entry kind is handed an
//! [`Origin`] that loads a batch of keys, and values are protobuf messages.
//! May depend on: `proto`-free generic code only.
//!
//! One lookup ([`TypedCache::get_many`]): L1 (moka, decoded values), then
//! for what is missing or past fresh one `MGET` on L2 (Redis), then the
//! origin for what is left, coalesced per key inside the process
//! (single-flight) and across processes (a Redis load lock). Results go back
//! to L1 and L2 unless the key was invalidated while loading (generation
//! guard). Redis trouble never fails a lookup: a circuit breaker skips it.
//!
//! Time comes from [`crate::clock`]. Files, one job each: `codec` (value
//! bytes), `keyring` (encryption keys), `l1` (in-process tier), `l2`
//! (Redis tier, on the process's one [`crate::redis`] stack), `keys`
//! (every Redis key and channel name), `flight` (single-flight),
//! `generation` (in-process generation guard), `refresh` (refresh-ahead),
//! `invalidation` (messages and subscriber), `stats` (metrics), `typed`
//! (the way of one lookup).

pub mod codec;
mod flight;
mod generation;
mod invalidation;
pub mod keyring;
pub mod keys;
mod l1;
mod l2;
mod refresh;
mod replace;
mod stats;
mod typed;

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;

use crate::clock::Clock;
use crate::ids::PeerKey;
use crate::redis::{Redis, RedisSettings, Topic};
use crate::setting::{Invalid, positive};

pub use codec::{Codec, CodecError, Header};
pub use keyring::{EncryptionConfig, KeyRing, KeyRingError};
pub use replace::{Replacement, ReplacementTicket};
pub use stats::{CacheStats, metric};
pub use typed::Prefetched;

use flight::Flights;
use generation::Generations;
use invalidation::{Listener, Target};
use l1::L1;
use l2::L2;
use refresh::{RefreshAhead, TokenBucket};
use stats::Stats;

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

    /// The kind back from [`Kind::as_str`].
    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "hosts" => Some(Kind::Hosts),
            "task" => Some(Kind::Task),
            "peer" => Some(Kind::Peer),
            _ => None,
        }
    }
}

/// What a cache entry is about, within its scheduler cluster.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Entity {
    /// The cluster's host list.
    Hosts,
    /// One task, by id.
    Task(String),
    /// One peer, by its coordinates.
    Peer(PeerKey),
}

/// One cache entry's identity: `dfgraph:v1:{kind}:{cluster}:{id}` in Redis
/// (see [`keys::entry`]). Built by [`CacheKey::hosts`], [`CacheKey::task`]
/// and [`CacheKey::peer`] only.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey {
    pub cluster: u64,
    pub entity: Entity,
}

impl CacheKey {
    /// The host list of one scheduler cluster.
    pub fn hosts(cluster: u64) -> Self {
        Self {
            cluster,
            entity: Entity::Hosts,
        }
    }

    /// One task on one scheduler cluster.
    pub fn task(cluster: u64, task_id: impl Into<String>) -> Self {
        Self {
            cluster,
            entity: Entity::Task(task_id.into()),
        }
    }

    /// One peer on one scheduler cluster.
    pub fn peer(cluster: u64, key: &PeerKey) -> Self {
        Self {
            cluster,
            entity: Entity::Peer(key.clone()),
        }
    }

    pub fn kind(&self) -> Kind {
        match self.entity {
            Entity::Hosts => Kind::Hosts,
            Entity::Task(_) => Kind::Task,
            Entity::Peer(_) => Kind::Peer,
        }
    }

    /// The id part of the Redis key: empty for hosts, the task id, or the
    /// peer's [`PeerKey::path`].
    pub fn id(&self) -> Cow<'_, str> {
        match &self.entity {
            Entity::Hosts => Cow::Borrowed(""),
            Entity::Task(task_id) => Cow::Borrowed(task_id),
            Entity::Peer(key) => Cow::Owned(key.path()),
        }
    }

    /// The Redis key of the entry's value (see [`keys::entry`]).
    pub fn redis_key(&self) -> String {
        keys::entry(self)
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
    /// Calls end by `deadline`, the budget of the lookup that started
    /// the load.
    fn load(
        &self,
        keys: Vec<CacheKey>,
        deadline: crate::deadline::Deadline,
    ) -> BoxFuture<'static, HashMap<CacheKey, OriginResult<V, Self::Error>>>;
}

/// Fresh and stale TTLs of one entry kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct KindTtl {
    /// How long a value is served without asking the origin.
    #[serde(with = "humantime_serde")]
    pub fresh: Duration,
    /// How long past `fresh` a value may still be served when its reload
    /// fails (or at once, with `stale_while_revalidate`).
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

/// Cache settings. Every field has a default; the defaults run with no
/// Redis (L1 only).
#[derive(Clone, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// When false every lookup goes to the origin (for measuring the cold
    /// path); nothing is stored.
    pub enabled: bool,
    pub hosts: KindTtl,
    pub task: KindTtl,
    pub peer: KindTtl,
    /// Fresh TTL of "not found" answers (tombstones). Default 5 s.
    #[serde(with = "humantime_serde")]
    pub negative_ttl: Duration,
    /// L1 bound in bytes (entries weigh their encoded size plus a little
    /// bookkeeping). Default 256 MiB.
    pub l1_max_bytes: u64,
    /// `redis://[user:password@]host:port[/db]` or `rediss://…` (TLS).
    /// None: L1 only.
    pub redis_url: Option<String>,
    /// `redis_url` names seed nodes of a Redis Cluster (one URL, or several
    /// separated by commas): commands are routed by slot, replicas talk
    /// over sharded pub/sub (Redis 7). Default false.
    pub redis_cluster: bool,
    /// Refuse to start when Redis cannot be reached or refuses our
    /// credentials (default: start degraded, on L1 and origin only).
    pub redis_required: bool,
    /// Pooled Redis connections. Default 16.
    pub redis_pool_size: usize,
    /// Bound on one Redis command, connection checkout included. Default
    /// 200 ms.
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    /// Bound on opening a Redis connection (and the start-up check).
    /// Default 1 s.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long Redis keeps a value past its stale deadline. Default 60 s.
    #[serde(with = "humantime_serde")]
    pub l2_ttl_margin: Duration,
    /// Life of the cross-process load lock; a waiting replica loads itself
    /// after it. Default 2 s.
    #[serde(with = "humantime_serde")]
    pub lock_ttl: Duration,
    /// How often a replica waiting on another's load polls Redis. Default
    /// 20 ms.
    #[serde(with = "humantime_serde")]
    pub lock_poll_interval: Duration,
    /// How long invalidation generations are remembered; a load running
    /// longer never writes back. Default 2 min.
    #[serde(with = "humantime_serde")]
    pub generation_ttl: Duration,
    /// Consecutive Redis failures that open the circuit. Default 5.
    pub circuit_failure_threshold: u32,
    /// First wait before probing Redis again; doubles per failed probe.
    /// Default 500 ms.
    #[serde(with = "humantime_serde")]
    pub circuit_backoff_min: Duration,
    /// Cap of that wait (also of the subscriber's reconnect backoff).
    /// Default 30 s.
    #[serde(with = "humantime_serde")]
    pub circuit_backoff_max: Duration,
    /// Reads within the fresh window that make a key hot (0: no
    /// refresh-ahead). Default 3.
    pub refresh_ahead_min_hits: u32,
    /// Fraction of the fresh window after which hot keys are reloaded in
    /// the background. Default 0.8.
    pub refresh_ahead_at: f64,
    /// Cap on refresh-ahead reloads per second. Default 50.
    pub refresh_ahead_per_sec: u32,
    /// Payloads at least this large are lz4-compressed. Default 1 KiB.
    pub compress_min_bytes: usize,
    /// Encrypt values in Redis (XChaCha20-Poly1305). Default off.
    pub encryption: Option<EncryptionConfig>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            hosts: KindTtl::default(),
            task: KindTtl::default(),
            peer: KindTtl::default(),
            negative_ttl: Duration::from_secs(5),
            l1_max_bytes: 256 << 20,
            redis_url: None,
            redis_cluster: false,
            redis_required: false,
            redis_pool_size: 16,
            command_timeout: Duration::from_millis(200),
            connect_timeout: Duration::from_secs(1),
            l2_ttl_margin: Duration::from_secs(60),
            lock_ttl: Duration::from_secs(2),
            lock_poll_interval: Duration::from_millis(20),
            generation_ttl: Duration::from_secs(120),
            circuit_failure_threshold: 5,
            circuit_backoff_min: Duration::from_millis(500),
            circuit_backoff_max: Duration::from_secs(30),
            refresh_ahead_min_hits: 3,
            refresh_ahead_at: 0.8,
            refresh_ahead_per_sec: 50,
            compress_min_bytes: 1024,
            encryption: None,
        }
    }
}

/// Shows everything but the Redis password.
impl fmt::Debug for CacheConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheConfig")
            .field("enabled", &self.enabled)
            .field("hosts", &self.hosts)
            .field("task", &self.task)
            .field("peer", &self.peer)
            .field("negative_ttl", &self.negative_ttl)
            .field("l1_max_bytes", &self.l1_max_bytes)
            .field(
                "redis_url",
                &self.redis_url.as_deref().map(crate::redis::redact_url),
            )
            .field("redis_cluster", &self.redis_cluster)
            .field("redis_required", &self.redis_required)
            .field("redis_pool_size", &self.redis_pool_size)
            .field("command_timeout", &self.command_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("l2_ttl_margin", &self.l2_ttl_margin)
            .field("lock_ttl", &self.lock_ttl)
            .field("lock_poll_interval", &self.lock_poll_interval)
            .field("generation_ttl", &self.generation_ttl)
            .field("circuit_failure_threshold", &self.circuit_failure_threshold)
            .field("circuit_backoff_min", &self.circuit_backoff_min)
            .field("circuit_backoff_max", &self.circuit_backoff_max)
            .field("refresh_ahead_min_hits", &self.refresh_ahead_min_hits)
            .field("refresh_ahead_at", &self.refresh_ahead_at)
            .field("refresh_ahead_per_sec", &self.refresh_ahead_per_sec)
            .field("compress_min_bytes", &self.compress_min_bytes)
            .field("encryption", &self.encryption)
            .finish()
    }
}

impl CacheConfig {
    /// The Redis stack these settings describe, if a URL is set.
    pub fn redis_settings(&self) -> Option<RedisSettings> {
        Some(RedisSettings {
            url: self.redis_url.clone()?,
            cluster: self.redis_cluster,
            pool_size: self.redis_pool_size,
            command_timeout: self.command_timeout,
            connect_timeout: self.connect_timeout,
            circuit_failure_threshold: self.circuit_failure_threshold,
            circuit_backoff_min: self.circuit_backoff_min,
            circuit_backoff_max: self.circuit_backoff_max,
        })
    }

    pub fn ttl(&self, kind: Kind) -> KindTtl {
        match kind {
            Kind::Hosts => self.hosts,
            Kind::Task => self.task,
            Kind::Peer => self.peer,
        }
    }

    /// Checks the settings that would make the cache misbehave. The
    /// error names the setting within `[cache]`.
    pub fn validate(&self) -> Result<(), Invalid> {
        for (name, ttl) in [
            ("hosts", self.hosts),
            ("task", self.task),
            ("peer", self.peer),
        ] {
            positive(&format!("{name}.fresh"), ttl.fresh)?;
        }
        positive("command_timeout", self.command_timeout)?;
        positive("connect_timeout", self.connect_timeout)?;
        positive("lock_ttl", self.lock_ttl)?;
        positive("lock_poll_interval", self.lock_poll_interval)?;
        if self.generation_ttl < self.lock_ttl {
            return Err(Invalid::new("generation_ttl", "must be at least lock_ttl"));
        }
        if !(self.refresh_ahead_at > 0.0 && self.refresh_ahead_at <= 1.0) {
            return Err(Invalid::new("refresh_ahead_at", "must be in (0, 1]"));
        }
        positive("circuit_backoff_min", self.circuit_backoff_min)?;
        if let Some(encryption) = &self.encryption {
            KeyRing::from_config(encryption)
                .map_err(|e| Invalid::new("encryption", e.to_string()))?;
        }
        Ok(())
    }
}

/// Errors that stop the cache from starting (never from answering).
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("invalid cache configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Invalid(Invalid),
    /// Redis is required (`redis_required`) but unusable: down, wrong
    /// address, or credentials refused.
    #[error("Redis at {url} is required but unusable: {reason}")]
    Redis { url: String, reason: String },
}

/// The shared cache of one process; cheap to clone.
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

/// This process's share of the cache, also reached by the subscriber task.
pub(crate) struct Local {
    l1: L1,
    gens: Generations,
    flights: Arc<Flights>,
    stats: Arc<Stats>,
    /// Random id of this process, to ignore its own invalidation messages.
    instance: String,
}

struct Inner {
    config: CacheConfig,
    clock: Arc<dyn Clock>,
    local: Arc<Local>,
    l2: Option<Arc<L2>>,
    codec: Codec,
    refresh: RefreshAhead,
}

/// The Redis stack `config` describes, checked once: an error if it is
/// `redis_required` and unusable (down, wrong address, credentials
/// refused), else a loud warning and an open circuit (degraded service);
/// warns about an unsuited eviction policy. `None` without a URL.
pub async fn connect_redis(config: &CacheConfig) -> Result<Option<Redis>, CacheError> {
    config
        .validate()
        .map_err(|e| CacheError::Invalid(e.within("cache")))?;
    let Some(settings) = config.redis_settings() else {
        return Ok(None);
    };
    let redis = Redis::new(&settings).map_err(|e| CacheError::Config(format!("redis_url {e}")))?;
    match redis.ping(config.connect_timeout).await {
        Ok(()) => {
            tracing::info!(url = %redis.shown_url(), "Redis in use");
            redis.check_eviction_policy().await;
        }
        Err(error) if config.redis_required => {
            let reason = if error.is_auth() {
                format!("credentials refused (check user and password): {error}")
            } else {
                error.to_string()
            };
            return Err(CacheError::Redis {
                url: redis.shown_url().to_string(),
                reason,
            });
        }
        Err(error) => {
            tracing::warn!(
                url = %redis.shown_url(),
                %error,
                "REDIS UNUSABLE AT START-UP: serving from L1 and origin only \
                 (no sharing between replicas) until it answers; set \
                 redis_required to refuse to start instead"
            );
            redis.count_error();
            redis.trip();
        }
    }
    Ok(Some(redis))
}

impl Cache {
    /// Builds the cache. With a `redis_url` (and the cache enabled) it
    /// connects Redis as [`connect_redis`] does and listens for other
    /// replicas' invalidations.
    pub async fn connect(config: CacheConfig, clock: Arc<dyn Clock>) -> Result<Cache, CacheError> {
        let redis = if config.enabled {
            connect_redis(&config).await?
        } else {
            None
        };
        Self::connect_with(config, clock, redis).await
    }

    /// Builds the cache on a Redis stack shared with the rest of the
    /// process (see [`connect_redis`]); Redis is used only if the cache is
    /// enabled. Returns once invalidations from other replicas flow (or
    /// `connect_timeout` passed, or Redis is known down).
    pub async fn connect_with(
        config: CacheConfig,
        clock: Arc<dyn Clock>,
        redis: Option<Redis>,
    ) -> Result<Cache, CacheError> {
        config
            .validate()
            .map_err(|e| CacheError::Invalid(e.within("cache")))?;
        let keyring = match &config.encryption {
            Some(encryption) => Some(Arc::new(
                KeyRing::from_config(encryption).map_err(|e| CacheError::Config(e.to_string()))?,
            )),
            None => None,
        };
        let stats = Arc::new(Stats::default());
        let local = Arc::new(Local {
            l1: L1::new(config.l1_max_bytes),
            gens: Generations::new(config.generation_ttl),
            flights: Arc::new(Flights::new()),
            stats: stats.clone(),
            instance: format!("{:016x}", rand::random::<u64>()),
        });
        let serving = Arc::new(AtomicBool::new(false));
        let l2 = match redis {
            Some(redis) if config.enabled => {
                redis.listen(
                    Topic::Invalidation,
                    Arc::new(Listener {
                        local: local.clone(),
                        serving: serving.clone(),
                    }),
                );
                if redis.available() {
                    // Invalidations must flow before we serve.
                    redis.wait_listening(config.connect_timeout).await;
                }
                Some(Arc::new(L2::new(redis, &config)))
            }
            _ => None,
        };
        serving.store(true, Ordering::Release);

        let codec = Codec::new(config.compress_min_bytes, keyring);
        let refresh = RefreshAhead {
            min_hits: config.refresh_ahead_min_hits,
            at: config.refresh_ahead_at,
            bucket: TokenBucket::new(config.refresh_ahead_per_sec),
        };
        Ok(Cache {
            inner: Arc::new(Inner {
                config,
                clock,
                local,
                l2,
                codec,
                refresh,
            }),
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

    /// The value codec in use (for tools and benchmarks).
    pub fn codec(&self) -> &Codec {
        &self.inner.codec
    }

    /// Counters since start.
    pub fn stats(&self) -> CacheStats {
        let mut stats = self.inner.local.stats.snapshot();
        if let Some(l2) = &self.inner.l2 {
            stats.redis_errors = l2.redis().errors();
            stats.circuit_open = !l2.redis().available();
        }
        stats
    }

    /// True when `key` has an L1 entry (fresh or not); for tests and
    /// debugging.
    pub fn l1_contains(&self, key: &CacheKey) -> bool {
        self.inner.local.l1.contains(key)
    }

    /// Bytes L1 holds, as weighed against `l1_max_bytes`.
    pub async fn l1_bytes(&self) -> u64 {
        self.inner.local.l1.weighted_size().await
    }

    /// True when a Redis URL is configured and its circuit is closed.
    pub fn redis_available(&self) -> bool {
        self.inner
            .l2
            .as_ref()
            .is_some_and(|l2| l2.redis().available())
    }

    /// Drops one entry on every replica: this L1, L2, and (through Redis
    /// pub/sub) every other replica's L1. Loads of the key already running
    /// anywhere will not write their older result back.
    pub async fn invalidate(&self, key: &CacheKey) {
        self.invalidate_target(Target::Key(key.clone())).await;
    }

    /// Drops one entry from this process only (L1, in-flight load,
    /// generation), for a replica that learnt of a change from the event
    /// bus before the invalidation channel told it.
    pub async fn forget_local(&self, key: &CacheKey) {
        self.inner
            .local
            .drop_target(&Target::Key(key.clone()))
            .await;
    }

    /// Drops every entry of a kind (of one cluster, or all) on every replica.
    pub async fn invalidate_scope(&self, kind: Kind, cluster: Option<u64>) {
        self.invalidate_target(Target::Scope(kind, cluster)).await;
    }

    async fn invalidate_target(&self, target: Target) {
        let inner = &self.inner;
        inner.local.drop_target(&target).await;
        inner.local.stats.invalidation_sent();
        let Some(l2) = &inner.l2 else {
            return;
        };
        let message = invalidation::encode(&inner.local.instance, &target);
        let result = match &target {
            Target::Key(key) => l2.invalidate(key, &message).await,
            Target::Scope(kind, cluster) => l2
                .invalidate_scope(*kind, *cluster, &message)
                .await
                .map(|deleted| {
                    tracing::debug!(deleted, ?kind, ?cluster, "L2 scope invalidated");
                }),
        };
        if let Err(error) = result {
            tracing::warn!(
                ?target,
                %error,
                "invalidation not propagated through Redis; other replicas keep \
                 their copies until fresh expiry or their subscriber reconnects"
            );
        }
    }
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
