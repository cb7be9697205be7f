//! What dfgraph knows of one scheduler's health: last success, last error,
//! latency. Updated on every call; read by GraphQL and `/readyz`.

use std::sync::Mutex;
use std::time::Duration;

use crate::breaker::CircuitState;
use crate::clock::{Clock, SystemClock};

/// A point-in-time copy of a scheduler's health.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HealthSnapshot {
    /// Unix milliseconds of the last successful call.
    pub last_success_ms: Option<u64>,
    /// Unix milliseconds and message of the last failed call.
    pub last_error: Option<(u64, String)>,
    /// Smoothed latency of successful calls.
    pub latency: Option<Duration>,
    pub consecutive_failures: u32,
    pub calls: u64,
    pub failures: u64,
    /// The scheduler's circuit breaker (filled in by the handle).
    pub circuit: CircuitState,
}

impl HealthSnapshot {
    /// Healthy until proven otherwise: the last call did not fail and the
    /// circuit is not open.
    pub fn is_up(&self) -> bool {
        self.consecutive_failures == 0 && self.circuit != CircuitState::Open
    }
}

/// Health of one scheduler, shared by every call toward it.
#[derive(Debug, Default)]
pub struct Health {
    state: Mutex<HealthSnapshot>,
}

impl Health {
    pub fn record_success(&self, latency: Duration) {
        let mut state = self.lock();
        state.calls += 1;
        state.last_success_ms = Some(SystemClock.now_ms());
        state.consecutive_failures = 0;
        // An EWMA with weight 1/4 follows changes within a few calls
        // without jumping on one outlier.
        state.latency = Some(match state.latency {
            Some(previous) => (previous * 3 + latency) / 4,
            None => latency,
        });
    }

    pub fn record_failure(&self, message: String) {
        let mut state = self.lock();
        state.calls += 1;
        state.failures += 1;
        state.consecutive_failures = state.consecutive_failures.saturating_add(1);
        state.last_error = Some((SystemClock.now_ms(), message));
    }

    pub fn snapshot(&self) -> HealthSnapshot {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HealthSnapshot> {
        // A panic while holding this lock cannot leave the counters
        // inconsistent in a way that matters, so recover from poisoning.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}
