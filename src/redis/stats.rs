//! Counting Redis trouble: failed commands and the circuit's state, to the
//! `metrics` facade and to atomics the cache's [`crate::cache::CacheStats`]
//! snapshot reads.
//!
//! | metric | meaning |
//! | --- | --- |
//! | `dfgraph_redis_errors_total` | failed or timed-out Redis commands |
//! | `dfgraph_redis_circuit_open` | 1 while Redis is being skipped |

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The Redis stack's metrics, declared once with their HELP text.
pub mod metric {
    pub const ERRORS: &str = "dfgraph_redis_errors_total";
    pub const CIRCUIT_OPEN: &str = "dfgraph_redis_circuit_open";

    /// Gives `/metrics` the HELP line of each.
    pub fn describe() {
        metrics::describe_counter!(ERRORS, "Redis commands that failed or timed out.");
        metrics::describe_gauge!(
            CIRCUIT_OPEN,
            "1 while Redis is skipped after failures (its circuit is open), else 0."
        );
    }
}

#[derive(Debug, Default)]
pub(crate) struct RedisStats {
    errors: AtomicU64,
    circuit_open: AtomicBool,
}

impl RedisStats {
    pub(crate) fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(metric::ERRORS).increment(1);
    }

    pub(crate) fn set_circuit_open(&self, open: bool) {
        self.circuit_open.store(open, Ordering::Relaxed);
        metrics::gauge!(metric::CIRCUIT_OPEN).set(if open { 1.0 } else { 0.0 });
    }

    pub(crate) fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    #[cfg(test)]
    pub(crate) fn circuit_open(&self) -> bool {
        self.circuit_open.load(Ordering::Relaxed)
    }
}
