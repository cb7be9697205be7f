//! The circuit breaker around Redis: after K consecutive failures Redis is
//! skipped entirely (no connection attempt, no timeout to wait out) until a
//! backoff passes; then one probe goes through. A failed probe doubles the
//! backoff (capped), a success closes the circuit. Real time, not the
//! cache's `Clock`: this is about the network, not about entry freshness.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::stats::Stats;

pub(crate) struct Circuit {
    threshold: u32,
    backoff_min: Duration,
    backoff_max: Duration,
    /// Fast path: readers of a closed circuit take no lock.
    open: AtomicBool,
    state: Mutex<State>,
    stats: Arc<Stats>,
}

struct State {
    failures: u32,
    /// While open: when the next probe may go.
    retry_at: Instant,
    backoff: Duration,
}

impl Circuit {
    pub(crate) fn new(
        threshold: u32,
        backoff_min: Duration,
        backoff_max: Duration,
        stats: Arc<Stats>,
    ) -> Self {
        Self {
            threshold: threshold.max(1),
            backoff_min,
            backoff_max: backoff_max.max(backoff_min),
            open: AtomicBool::new(false),
            state: Mutex::new(State {
                failures: 0,
                retry_at: Instant::now(),
                backoff: backoff_min,
            }),
            stats,
        }
    }

    pub(crate) fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    /// May a Redis command go now? While open, one caller per backoff
    /// period is let through as the probe.
    pub(crate) fn allow(&self) -> bool {
        if !self.is_open() {
            return true;
        }
        let Ok(mut state) = self.state.lock() else {
            return false;
        };
        let now = Instant::now();
        if now < state.retry_at {
            return false;
        }
        // This caller probes; if it never reports back, another probe may
        // go after one more backoff.
        state.retry_at = now + state.backoff;
        true
    }

    pub(crate) fn success(&self) {
        let was_open = self.is_open();
        if let Ok(mut state) = self.state.lock() {
            state.failures = 0;
            state.backoff = self.backoff_min;
        }
        if was_open {
            self.open.store(false, Ordering::Release);
            self.stats.set_circuit_open(false);
            tracing::info!("Redis answers again; L2 cache back in use");
        }
    }

    pub(crate) fn failure(&self) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        state.failures = state.failures.saturating_add(1);
        let now = Instant::now();
        if self.is_open() {
            // A failed probe: wait longer before the next one.
            state.backoff = (state.backoff * 2).min(self.backoff_max);
            state.retry_at = now + state.backoff;
        } else if state.failures >= self.threshold {
            state.backoff = self.backoff_min;
            state.retry_at = now + state.backoff;
            self.open.store(true, Ordering::Release);
            self.stats.set_circuit_open(true);
            tracing::warn!(
                failures = state.failures,
                retry_in = ?state.backoff,
                "Redis keeps failing; circuit open, serving from L1 and origin only"
            );
        }
    }

    /// Opens the circuit at once (Redis unusable at start-up).
    pub(crate) fn trip(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.failures = self.threshold;
            state.backoff = self.backoff_min;
            state.retry_at = Instant::now() + state.backoff;
        }
        self.open.store(true, Ordering::Release);
        self.stats.set_circuit_open(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_and_probes_after_backoff() {
        let c = Circuit::new(
            3,
            Duration::from_millis(20),
            Duration::from_millis(50),
            Arc::default(),
        );
        for _ in 0..2 {
            c.failure();
            assert!(c.allow());
        }
        c.failure();
        assert!(c.is_open());
        assert!(!c.allow());
        std::thread::sleep(Duration::from_millis(25));
        assert!(c.allow(), "probe after backoff");
        assert!(!c.allow(), "only one probe");
        c.failure();
        std::thread::sleep(Duration::from_millis(25));
        assert!(!c.allow(), "backoff doubled");
        std::thread::sleep(Duration::from_millis(20));
        assert!(c.allow());
        c.success();
        assert!(!c.is_open());
        assert!(c.allow());
    }
}
