//! The circuit breaker around Redis: the crate's one [`Breaker`], set up
//! from the `circuit_*` settings, shared by every command of the process
//! (cache, event bus, watcher, persisted queries). After that many consecutive
//! failures Redis is skipped entirely (no connection attempt, no timeout to
//! wait out) until the backoff passes; then one probe goes through. A
//! failed probe doubles the backoff (capped), a success closes the circuit.
//! State changes are logged and published as `dfgraph_redis_circuit_open`.
//!
//! Real time (the system clock), not the clock the cache judges freshness
//! by: this is about the network, not about entry freshness.

use std::sync::Arc;
use std::time::Duration;

use super::stats::RedisStats as Stats;
use crate::breaker::{Breaker, BreakerConfig, CircuitState, Outcome, Rejected, Ticket, Transition};
use crate::clock::Clock;

pub(crate) struct Circuit {
    breaker: Breaker,
    stats: Arc<Stats>,
}

impl Circuit {
    pub(crate) fn new(
        threshold: u32,
        backoff_min: Duration,
        backoff_max: Duration,
        stats: Arc<Stats>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let config = BreakerConfig {
            enabled: true,
            consecutive_failures: threshold.max(1),
            // Redis is judged by consecutive failures alone.
            minimum_calls: u32::MAX,
            open_base: backoff_min,
            open_max: backoff_max.max(backoff_min),
            half_open_probes: 1,
            ..BreakerConfig::default()
        };
        Self {
            breaker: Breaker::new(config, clock),
            stats,
        }
    }

    /// True while Redis is being skipped or probed (not yet known healthy
    /// again).
    pub(crate) fn is_open(&self) -> bool {
        self.breaker.state() != CircuitState::Closed
    }

    /// Asks to send one Redis command. While open, one caller per backoff
    /// period is let through as the probe. Record how it went with
    /// [`Circuit::finish`]; a ticket dropped unfinished frees its probe slot.
    pub(crate) fn admit(&self) -> Result<Ticket<'_>, Rejected> {
        let (ticket, transition) = self.breaker.try_acquire()?;
        self.on_transition(transition);
        Ok(ticket)
    }

    pub(crate) fn finish(&self, ticket: Ticket<'_>, ok: bool) {
        let outcome = if ok {
            Outcome::Success
        } else {
            Outcome::Failure
        };
        self.on_transition(ticket.finish(outcome));
    }

    /// Opens the circuit at once (Redis unusable at start-up).
    pub(crate) fn trip(&self) {
        self.breaker.trip();
        self.stats.set_circuit_open(true);
    }

    fn on_transition(&self, transition: Option<Transition>) {
        let Some(t) = transition else { return };
        match t.to {
            CircuitState::Open => {
                self.stats.set_circuit_open(true);
                if t.from == CircuitState::Closed {
                    tracing::warn!(
                        "Redis keeps failing; circuit open, serving from L1 and origin only \
                         and coordinating nothing between replicas"
                    );
                }
            }
            CircuitState::HalfOpen => tracing::debug!("probing Redis"),
            CircuitState::Closed => {
                self.stats.set_circuit_open(false);
                tracing::info!("Redis answers again; L2 cache and coordination back in use");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    #[test]
    fn opens_after_threshold_and_probes_after_backoff() {
        let clock = ManualClock::new();
        let c = Circuit::new(
            3,
            Duration::from_millis(20),
            Duration::from_millis(50),
            Arc::default(),
            Arc::new(clock.clone()),
        );
        let fail = |c: &Circuit| c.finish(c.admit().unwrap(), false);
        for _ in 0..2 {
            fail(&c);
            assert!(c.admit().is_ok());
        }
        fail(&c);
        assert!(c.is_open());
        assert!(c.admit().is_err());
        clock.advance(Duration::from_millis(25));
        let probe = c.admit();
        assert!(probe.is_ok(), "probe after backoff");
        assert!(c.admit().is_err(), "only one probe");
        c.finish(probe.unwrap(), false);
        clock.advance(Duration::from_millis(25));
        assert!(c.admit().is_err(), "backoff doubled");
        clock.advance(Duration::from_millis(20));
        let probe = c.admit();
        assert!(probe.is_ok());
        c.finish(probe.unwrap(), true);
        assert!(!c.is_open());
        assert!(c.admit().is_ok());
    }

    #[test]
    fn the_open_gauge_follows_the_circuit() {
        let stats = Arc::new(Stats::default());
        let clock = ManualClock::new();
        let c = Circuit::new(
            1,
            Duration::from_millis(20),
            Duration::from_millis(50),
            stats.clone(),
            Arc::new(clock.clone()),
        );
        c.trip();
        assert!(stats.circuit_open());
        clock.advance(Duration::from_millis(20));
        let probe = c.admit().unwrap();
        assert!(stats.circuit_open(), "still open while probing");
        c.finish(probe, true);
        assert!(!stats.circuit_open());
        c.finish(c.admit().unwrap(), false);
        assert!(stats.circuit_open());
    }
}
