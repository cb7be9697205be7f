//! Counting Redis trouble: failed commands and the circuit's state, to the
//! `metrics` facade and to atomics the cache's [`crate::cache::CacheStats`]
//! snapshot reads.
//!
//! | metric | meaning |
//! | --- | --- |
//! | `dfgraph_redis_errors_total` | failed or timed-out Redis commands |
//! | `dfgraph_redis_circuit_open` | 1 while Redis is being skipped |

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

#[derive(Debug, Default)]
pub(crate) struct RedisStats {
    errors: AtomicU64,
    circuit_open: AtomicBool,
}

impl RedisStats {
    pub(crate) fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("dfgraph_redis_errors_total").increment(1);
    }

    pub(crate) fn set_circuit_open(&self, open: bool) {
        self.circuit_open.store(open, Ordering::Relaxed);
        metrics::gauge!("dfgraph_redis_circuit_open").set(if open { 1.0 } else { 0.0 });
    }

    pub(crate) fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    #[cfg(test)]
    pub(crate) fn circuit_open(&self) -> bool {
        self.circuit_open.load(Ordering::Relaxed)
    }
}
