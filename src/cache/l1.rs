//! L1: the in-process tier. A moka cache bounded by bytes (each entry
//! weighs its encoded size), holding decoded values type-erased behind an
//! `Arc`, so an L1 hit never decodes. Entries leave moka at their stale
//! deadline; freshness itself is judged by the caller against the `Clock`.

use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use moka::Expiry;

use super::codec::Header;
use super::{CacheKey, Kind};

/// Per-entry bookkeeping beyond the value, in bytes (key, header, Arcs).
const OVERHEAD: usize = 96;

/// One L1 entry: the header (deadlines) and the decoded value.
pub(crate) struct Entry {
    pub(crate) header: Header,
    /// `Arc<V>` as `Any`; `None` for a tombstone (not found).
    pub(crate) value: Option<Arc<dyn Any + Send + Sync>>,
    weight: u32,
    /// How long moka keeps it (until its stale deadline).
    keep: Duration,
    /// Reads since it was written, for refresh-ahead.
    pub(crate) hits: AtomicU32,
    /// A refresh-ahead of this entry has been started.
    pub(crate) refreshing: AtomicBool,
}

impl Entry {
    pub(crate) fn new<V: Send + Sync + 'static>(
        key: &CacheKey,
        header: Header,
        value: Option<Arc<V>>,
        encoded_len: usize,
        keep: Duration,
    ) -> Self {
        let weight = (encoded_len + key.id().len() + OVERHEAD).min(u32::MAX as usize) as u32;
        Self {
            header,
            value: value.map(|v| v as Arc<dyn Any + Send + Sync>),
            weight,
            keep,
            hits: AtomicU32::new(0),
            refreshing: AtomicBool::new(false),
        }
    }

    /// The value as `V`: `Some(None)` for a tombstone, `None` if the entry
    /// holds another type (two typed caches disagreeing on one kind).
    pub(crate) fn typed<V: Send + Sync + 'static>(&self) -> Option<Option<Arc<V>>> {
        match &self.value {
            None => Some(None),
            Some(any) => any.clone().downcast::<V>().ok().map(Some),
        }
    }

    /// Counts a read; returns the reads so far.
    pub(crate) fn hit(&self) -> u32 {
        self.hits.fetch_add(1, Ordering::Relaxed).saturating_add(1)
    }
}

struct KeepUntilStale;

impl Expiry<CacheKey, Arc<Entry>> for KeepUntilStale {
    fn expire_after_create(
        &self,
        _key: &CacheKey,
        value: &Arc<Entry>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(value.keep)
    }

    fn expire_after_update(
        &self,
        _key: &CacheKey,
        value: &Arc<Entry>,
        _updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.keep)
    }
}

pub(crate) struct L1 {
    cache: moka::future::Cache<CacheKey, Arc<Entry>>,
}

impl L1 {
    pub(crate) fn new(max_bytes: u64) -> Self {
        let cache = moka::future::Cache::builder()
            .name("dfgraph-l1")
            .max_capacity(max_bytes)
            .weigher(|_key: &CacheKey, entry: &Arc<Entry>| entry.weight)
            .expire_after(KeepUntilStale)
            .support_invalidation_closures()
            .build();
        Self { cache }
    }

    pub(crate) async fn get(&self, key: &CacheKey) -> Option<Arc<Entry>> {
        self.cache.get(key).await
    }

    pub(crate) async fn insert(&self, key: CacheKey, entry: Arc<Entry>) {
        self.cache.insert(key, entry).await;
    }

    pub(crate) async fn remove(&self, key: &CacheKey) {
        self.cache.invalidate(key).await;
    }

    pub(crate) fn contains(&self, key: &CacheKey) -> bool {
        self.cache.contains_key(key)
    }

    pub(crate) fn remove_scope(&self, kind: Kind, cluster: Option<u64>) {
        let dropped = self.cache.invalidate_entries_if(move |k, _| {
            k.kind() == kind && cluster.is_none_or(|c| c == k.cluster)
        });
        if let Err(error) = dropped {
            // Cannot happen (closures are enabled at build); be safe anyway.
            tracing::warn!(%error, "L1 scope invalidation failed; dropping all of L1");
            self.cache.invalidate_all();
        }
    }

    pub(crate) fn clear(&self) {
        self.cache.invalidate_all();
    }

    /// Bytes held, as weighed (after moka's pending housekeeping).
    pub(crate) async fn weighted_size(&self) -> u64 {
        self.cache.run_pending_tasks().await;
        self.cache.weighted_size()
    }
}
