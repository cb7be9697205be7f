//! Per-request freshness bookkeeping: how many lookups the cache answered,
//! how old the oldest value served was, whether any was stale, and which
//! schedulers failed. The HTTP layer puts it in `extensions.freshness`.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use crate::cache::{Fetched, Tier};

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
}

impl Freshness {
    pub fn record<V>(&self, fetched: &Fetched<V>) {
        let mut state = self.lock();
        match fetched.tier {
            Tier::L1 | Tier::L2 => state.cache_hits += 1,
            Tier::Origin => state.origin_loads += 1,
        }
        state.oldest_age = state.oldest_age.max(fetched.age);
        state.stale |= fetched.stale;
    }

    pub fn record_failure(&self, scheduler: Option<std::net::SocketAddr>) {
        if let Some(addr) = scheduler {
            self.lock().failed_schedulers.insert(addr.to_string());
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

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}
