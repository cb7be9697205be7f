//! Per-request freshness bookkeeping: how many lookups the cache answered,
//! how old the oldest value served was, whether any was stale, and which
//! schedulers failed. The HTTP layer puts it in `extensions.freshness`.
//! It also notes which cached values were read, so the response cache can
//! tell when a response is still current.

use std::any::Any;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::cache::{CacheKey, Fetched, Kind, Tier};

/// One value a request read: its key and the identity of the value (a
/// cached value is immutable until replaced, so the same allocation means
/// the same value; the `Weak` keeps the address from being reused).
pub type Read = (CacheKey, Option<Weak<dyn Any + Send + Sync>>);

#[derive(Debug, Default)]
pub struct Freshness {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    cache_hits: u64,
    origin_loads: u64,
    oldest_age: Duration,
    stale: bool,
    failed_schedulers: BTreeSet<String>,
    /// The host lists read (other reads are not kept).
    reads: Vec<Read>,
    /// Something other than a host list was read (or a list was absent).
    read_other: bool,
    /// Some lookup failed (with or without a scheduler to name).
    failed: bool,
}

impl Freshness {
    pub fn record<V: Send + Sync + 'static>(&self, key: &CacheKey, fetched: &Fetched<V>) {
        let mut state = self.lock();
        // Only host-list reads can make a response cacheable: any other
        // read just marks the request as not cacheable, at no cost.
        match (key.kind(), &fetched.value) {
            (Kind::Hosts, Some(value)) => {
                let value: Arc<dyn Any + Send + Sync> = value.clone();
                state
                    .reads
                    .push((key.clone(), Some(Arc::downgrade(&value))));
            }
            _ => state.read_other = true,
        }
        match fetched.tier {
            Tier::L1 | Tier::L2 => state.cache_hits += 1,
            Tier::Origin => state.origin_loads += 1,
        }
        state.oldest_age = state.oldest_age.max(fetched.age);
        state.stale |= fetched.stale;
    }

    /// Something was read that the host lists do not determine (a host's
    /// liveness): the response must not be kept.
    pub fn record_uncacheable(&self) {
        self.lock().read_other = true;
    }

    pub fn record_failure(&self, scheduler: Option<std::net::SocketAddr>) {
        let mut state = self.lock();
        state.failed = true;
        if let Some(addr) = scheduler {
            state.failed_schedulers.insert(addr.to_string());
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        let state = self.lock();
        serde_json::json!({
            "cacheHits": state.cache_hits,
            "originLoads": state.origin_loads,
            "oldestAgeMs": state.oldest_age.as_millis() as u64,
            "stale": state.stale,
            "failedSchedulers": state.failed_schedulers.iter().collect::<Vec<_>>(),
        })
    }

    /// The host lists the request read, by cluster, when they are all it
    /// read and each was a fresh value (not stale, not a tombstone, no
    /// failure); `None` otherwise, and when it read nothing.
    pub fn fresh_host_lists(&self) -> Option<Vec<(u64, Weak<dyn Any + Send + Sync>)>> {
        let state = self.lock();
        if state.stale || state.failed || state.read_other || state.reads.is_empty() {
            return None;
        }
        let mut lists = Vec::with_capacity(state.reads.len());
        for (key, identity) in &state.reads {
            match (key.kind(), identity) {
                (Kind::Hosts, Some(identity)) => lists.push((key.cluster, identity.clone())),
                _ => return None,
            }
        }
        lists.sort_by_key(|(cluster, _)| *cluster);
        Some(lists)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}
