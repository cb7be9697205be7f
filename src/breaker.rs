//! The circuit breaker, one per dependency that can go away: each
//! scheduler (`cluster`) and Redis (`cache`), each configured by its own
//! settings and emitting its own metrics from the [`Transition`]s it is
//! handed. Closed while calls succeed, open after consecutive failures or a
//! high failure rate over a sliding window (calls then fail fast without
//! touching the network), half-open after the open time to let a few probe
//! calls through. A probe's success closes it; a failure opens it again for
//! twice as long, up to a cap.
//!
//! Time comes from a [`Clock`], so tests move it by hand. Depends on
//! `clock` only, so both `cluster` and `cache` may use it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::clock::Clock;
use crate::setting::{Invalid, positive};

/// Thresholds of one breaker: every scheduler's (`[breaker]` in the
/// config), or Redis's (derived from the cache's `circuit_*` settings).
#[derive(Clone, Copy, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerConfig {
    /// Off: every call goes to the network, whatever happened before.
    pub enabled: bool,
    /// Consecutive failures that open the circuit.
    pub consecutive_failures: u32,
    /// Share of failed calls in `window` that opens the circuit...
    pub failure_rate: f64,
    /// ...once the window holds at least this many calls (`u32::MAX`: the
    /// rate rule is off, only consecutive failures trip).
    pub minimum_calls: u32,
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Open time after the first trip; doubles on each trip that follows
    /// closely on the last, up to `open_max`.
    #[serde(with = "humantime_serde")]
    pub open_base: Duration,
    #[serde(with = "humantime_serde")]
    pub open_max: Duration,
    /// Calls let through at once while half-open.
    pub half_open_probes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            consecutive_failures: 5,
            failure_rate: 0.5,
            minimum_calls: 20,
            window: Duration::from_secs(10),
            open_base: Duration::from_secs(5),
            open_max: Duration::from_secs(60),
            half_open_probes: 1,
        }
    }
}

impl BreakerConfig {
    /// What is wrong with these thresholds, if anything.
    pub fn validate(&self) -> Result<(), Invalid> {
        positive("consecutive_failures", self.consecutive_failures)?;
        if !(self.failure_rate > 0.0 && self.failure_rate <= 1.0) {
            return Err(Invalid::new("failure_rate", "must be in (0, 1]"));
        }
        positive("window", self.window)?;
        positive("open_base", self.open_base)?;
        if self.open_max < self.open_base {
            return Err(Invalid::new("open_max", "must be at least open_base"));
        }
        positive("half_open_probes", self.half_open_probes)
    }
}

/// Where a breaker stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum CircuitState {
    #[default]
    Closed,
    Open,
    HalfOpen,
}

impl CircuitState {
    /// The state as a gauge value (`dfgraph_scheduler_circuit_state`).
    pub fn gauge(self) -> f64 {
        match self {
            Self::Closed => 0.0,
            Self::Open => 1.0,
            Self::HalfOpen => 2.0,
        }
    }
}

/// How a call admitted by the breaker ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
    /// Neither: the call was cut short by something other than the
    /// scheduler (the caller's own deadline); it says nothing of health.
    Ignored,
}

/// Why a call was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rejected {
    /// Time until the breaker half-opens (zero while half-open probes are
    /// all in flight).
    pub retry_in: Duration,
}

/// A state change, for logs and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    pub from: CircuitState,
    pub to: CircuitState,
}

/// One sliding-window bucket.
#[derive(Debug)]
struct Bucket {
    start: Instant,
    calls: u32,
    failures: u32,
}

const BUCKETS: u32 = 10;

#[derive(Debug)]
enum Phase {
    Closed,
    Open { until: Instant },
    HalfOpen { in_flight: u32 },
}

#[derive(Debug)]
struct State {
    phase: Phase,
    consecutive_failures: u32,
    buckets: VecDeque<Bucket>,
    /// Trips in a row without a stable recovery; sets the open time.
    level: u32,
    /// When the circuit last closed after being open.
    closed_at: Option<Instant>,
    trips: u64,
}

/// One dependency's circuit breaker.
#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
}

/// Permission for one call. Record how it went with [`Ticket::finish`];
/// a ticket dropped unfinished (the call was cancelled) counts as
/// [`Outcome::Ignored`].
#[must_use]
pub struct Ticket<'a> {
    breaker: &'a Breaker,
    probe: bool,
    done: bool,
}

impl Ticket<'_> {
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    pub fn finish(mut self, outcome: Outcome) -> Option<Transition> {
        self.done = true;
        self.breaker.record(self.probe, outcome)
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.breaker.record(self.probe, Outcome::Ignored);
        }
    }
}

impl Breaker {
    pub fn new(config: BreakerConfig, clock: Arc<dyn Clock>) -> Self {
        Self {
            config,
            clock,
            state: Mutex::new(State {
                phase: Phase::Closed,
                consecutive_failures: 0,
                buckets: VecDeque::with_capacity(BUCKETS as usize + 1),
                level: 0,
                closed_at: None,
                trips: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current state; an expired open time reads as half-open.
    pub fn state(&self) -> CircuitState {
        if !self.config.enabled {
            return CircuitState::Closed;
        }
        let now = self.clock.now();
        match self.lock().phase {
            Phase::Closed => CircuitState::Closed,
            Phase::Open { until } if now < until => CircuitState::Open,
            Phase::Open { .. } | Phase::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }

    /// Times the circuit opened since start.
    pub fn trips(&self) -> u64 {
        self.lock().trips
    }

    /// Opens the circuit now, for the shortest open time, whatever came
    /// before (a dependency known to be unusable before any call).
    pub fn trip(&self) -> Option<Transition> {
        if !self.config.enabled {
            return None;
        }
        let from = self.state();
        let now = self.clock.now();
        let mut state = self.lock();
        state.level = 0;
        self.open(&mut state, now);
        (from != CircuitState::Open).then_some(Transition {
            from,
            to: CircuitState::Open,
        })
    }

    /// Asks to make one call.
    pub fn try_acquire(&self) -> Result<(Ticket<'_>, Option<Transition>), Rejected> {
        let ticket = |probe| Ticket {
            breaker: self,
            probe,
            done: false,
        };
        if !self.config.enabled {
            return Ok((ticket(false), None));
        }
        let now = self.clock.now();
        let mut state = self.lock();
        match state.phase {
            Phase::Closed => Ok((ticket(false), None)),
            Phase::Open { until } if now < until => Err(Rejected {
                retry_in: until - now,
            }),
            Phase::Open { .. } => {
                state.phase = Phase::HalfOpen { in_flight: 1 };
                Ok((
                    ticket(true),
                    Some(Transition {
                        from: CircuitState::Open,
                        to: CircuitState::HalfOpen,
                    }),
                ))
            }
            Phase::HalfOpen { ref mut in_flight } => {
                if *in_flight < self.config.half_open_probes {
                    *in_flight += 1;
                    Ok((ticket(true), None))
                } else {
                    Err(Rejected {
                        retry_in: Duration::ZERO,
                    })
                }
            }
        }
    }

    fn record(&self, probe: bool, outcome: Outcome) -> Option<Transition> {
        if !self.config.enabled {
            return None;
        }
        let now = self.clock.now();
        let mut state = self.lock();
        if let (true, Phase::HalfOpen { in_flight }) = (probe, &mut state.phase) {
            *in_flight = in_flight.saturating_sub(1);
        }
        match outcome {
            Outcome::Ignored => return None,
            Outcome::Success => state.consecutive_failures = 0,
            Outcome::Failure => {
                state.consecutive_failures = state.consecutive_failures.saturating_add(1);
            }
        }
        let failed = outcome == Outcome::Failure;
        self.count(&mut state, now, failed);
        match state.phase {
            Phase::HalfOpen { .. } if probe && !failed => {
                state.phase = Phase::Closed;
                state.closed_at = Some(now);
                state.buckets.clear();
                Some(Transition {
                    from: CircuitState::HalfOpen,
                    to: CircuitState::Closed,
                })
            }
            Phase::HalfOpen { .. } if probe => {
                state.level = state.level.saturating_add(1);
                self.open(&mut state, now);
                Some(Transition {
                    from: CircuitState::HalfOpen,
                    to: CircuitState::Open,
                })
            }
            Phase::Closed if failed && self.should_trip(&state) => {
                // A trip soon after recovering is the same outage going on:
                // stay open longer. After a quiet spell, start again.
                let recent = state
                    .closed_at
                    .is_some_and(|at| now.duration_since(at) < self.config.open_max);
                state.level = if recent {
                    state.level.saturating_add(1)
                } else {
                    0
                };
                self.open(&mut state, now);
                Some(Transition {
                    from: CircuitState::Closed,
                    to: CircuitState::Open,
                })
            }
            _ => None,
        }
    }

    fn open(&self, state: &mut State, now: Instant) {
        let factor = 1u32.checked_shl(state.level.min(16)).unwrap_or(u32::MAX);
        let open_for = self
            .config
            .open_base
            .saturating_mul(factor)
            .min(self.config.open_max);
        state.phase = Phase::Open {
            until: now + open_for,
        };
        state.trips += 1;
        state.consecutive_failures = 0;
        state.buckets.clear();
    }

    fn should_trip(&self, state: &State) -> bool {
        if state.consecutive_failures >= self.config.consecutive_failures {
            return true;
        }
        let (calls, failures) = state
            .buckets
            .iter()
            .fold((0u32, 0u32), |(c, f), b| (c + b.calls, f + b.failures));
        calls >= self.config.minimum_calls
            && f64::from(failures) >= self.config.failure_rate * f64::from(calls)
    }

    /// Adds one call to the sliding window, dropping buckets that fell out.
    fn count(&self, state: &mut State, now: Instant, failed: bool) {
        let width = (self.config.window / BUCKETS).max(Duration::from_millis(1));
        while state
            .buckets
            .front()
            .is_some_and(|b| now.duration_since(b.start) >= self.config.window)
        {
            state.buckets.pop_front();
        }
        let fits = state
            .buckets
            .back()
            .is_some_and(|b| now.duration_since(b.start) < width);
        if !fits {
            state.buckets.push_back(Bucket {
                start: now,
                calls: 0,
                failures: 0,
            });
        }
        if let Some(bucket) = state.buckets.back_mut() {
            bucket.calls += 1;
            bucket.failures += u32::from(failed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn breaker(config: BreakerConfig) -> (Breaker, ManualClock) {
        let clock = ManualClock::default();
        (Breaker::new(config, Arc::new(clock.clone())), clock)
    }

    fn call(b: &Breaker, outcome: Outcome) -> Result<Option<Transition>, Rejected> {
        let (ticket, _) = b.try_acquire()?;
        Ok(ticket.finish(outcome))
    }

    #[test]
    fn opens_after_consecutive_failures_and_fails_fast() {
        let (b, _) = breaker(BreakerConfig::default());
        for _ in 0..4 {
            assert_eq!(call(&b, Outcome::Failure), Ok(None));
        }
        assert_eq!(b.state(), CircuitState::Closed);
        let t = call(&b, Outcome::Failure).unwrap().unwrap();
        assert_eq!((t.from, t.to), (CircuitState::Closed, CircuitState::Open));
        assert_eq!(b.state(), CircuitState::Open);
        let rejected = b.try_acquire().err().unwrap();
        assert_eq!(rejected.retry_in, Duration::from_secs(5));
        assert_eq!(b.trips(), 1);
    }

    #[test]
    fn a_success_resets_the_consecutive_count() {
        let (b, _) = breaker(BreakerConfig::default());
        for _ in 0..3 {
            for _ in 0..4 {
                call(&b, Outcome::Failure).unwrap();
            }
            call(&b, Outcome::Success).unwrap();
        }
        // 12 failures of 15 calls: under the 20-call minimum for the rate.
        assert_eq!(b.state(), CircuitState::Closed);
    }

    #[test]
    fn opens_on_failure_rate_over_the_window() {
        let (b, clock) = breaker(BreakerConfig::default());
        // Alternate: never 5 in a row, but 50 % of 20 calls.
        for i in 0..19 {
            let outcome = if i % 2 == 0 {
                Outcome::Success
            } else {
                Outcome::Failure
            };
            call(&b, outcome).unwrap();
            clock.advance(Duration::from_millis(100));
        }
        assert_eq!(b.state(), CircuitState::Closed);
        assert!(call(&b, Outcome::Failure).unwrap().is_some());
        assert_eq!(b.state(), CircuitState::Open);
    }

    #[test]
    fn old_calls_leave_the_window() {
        let (b, clock) = breaker(BreakerConfig::default());
        for i in 0..18 {
            let outcome = if i % 2 == 0 {
                Outcome::Success
            } else {
                Outcome::Failure
            };
            call(&b, outcome).unwrap();
        }
        clock.advance(Duration::from_secs(11));
        // The 18 old calls are gone: two more do not reach 20.
        call(&b, Outcome::Success).unwrap();
        call(&b, Outcome::Failure).unwrap();
        assert_eq!(b.state(), CircuitState::Closed);
    }

    #[test]
    fn not_found_style_answers_do_not_count() {
        let (b, _) = breaker(BreakerConfig::default());
        for _ in 0..10 {
            call(&b, Outcome::Ignored).unwrap();
        }
        assert_eq!(b.state(), CircuitState::Closed);
    }

    #[test]
    fn half_opens_admits_limited_probes_and_closes_on_success() {
        let (b, clock) = breaker(BreakerConfig {
            half_open_probes: 2,
            ..BreakerConfig::default()
        });
        for _ in 0..5 {
            call(&b, Outcome::Failure).unwrap();
        }
        clock.advance(Duration::from_secs(5));
        assert_eq!(b.state(), CircuitState::HalfOpen);
        let (first, t) = b.try_acquire().unwrap();
        assert!(first.is_probe());
        assert_eq!(t.map(|t| t.to), Some(CircuitState::HalfOpen));
        let (second, _) = b.try_acquire().unwrap();
        assert!(b.try_acquire().is_err(), "a third probe is refused");
        let t = first.finish(Outcome::Success).unwrap();
        assert_eq!(
            (t.from, t.to),
            (CircuitState::HalfOpen, CircuitState::Closed)
        );
        assert_eq!(second.finish(Outcome::Success), None);
        assert_eq!(b.state(), CircuitState::Closed);
    }

    #[test]
    fn a_cancelled_probe_frees_its_slot() {
        let (b, clock) = breaker(BreakerConfig::default());
        for _ in 0..5 {
            call(&b, Outcome::Failure).unwrap();
        }
        clock.advance(Duration::from_secs(5));
        let (probe, _) = b.try_acquire().unwrap();
        assert!(b.try_acquire().is_err());
        drop(probe);
        assert_eq!(b.state(), CircuitState::HalfOpen);
        assert!(b.try_acquire().is_ok());
    }

    #[test]
    fn failed_probes_reopen_for_longer_up_to_the_cap() {
        let (b, clock) = breaker(BreakerConfig::default());
        for _ in 0..5 {
            call(&b, Outcome::Failure).unwrap();
        }
        let mut open_for = Vec::new();
        for _ in 0..6 {
            let retry_in = b.try_acquire().err().unwrap().retry_in;
            open_for.push(retry_in.as_secs());
            clock.advance(retry_in);
            let t = call(&b, Outcome::Failure).unwrap().unwrap();
            assert_eq!((t.from, t.to), (CircuitState::HalfOpen, CircuitState::Open));
        }
        assert_eq!(open_for, [5, 10, 20, 40, 60, 60]);
        assert_eq!(b.trips(), 7);
    }

    #[test]
    fn a_trip_soon_after_recovery_stays_open_longer_a_late_one_does_not() {
        let (b, clock) = breaker(BreakerConfig::default());
        let trip = |b: &Breaker| {
            for _ in 0..5 {
                call(b, Outcome::Failure).unwrap();
            }
            b.try_acquire().err().unwrap().retry_in
        };
        assert_eq!(trip(&b), Duration::from_secs(5));
        clock.advance(Duration::from_secs(5));
        call(&b, Outcome::Success).unwrap();
        assert_eq!(b.state(), CircuitState::Closed);
        assert_eq!(trip(&b), Duration::from_secs(10));
        clock.advance(Duration::from_secs(10));
        call(&b, Outcome::Success).unwrap();
        clock.advance(Duration::from_secs(61));
        assert_eq!(trip(&b), Duration::from_secs(5));
    }

    #[test]
    fn a_trip_opens_at_once_for_the_base_time() {
        let (b, clock) = breaker(BreakerConfig::default());
        let t = b.trip().unwrap();
        assert_eq!((t.from, t.to), (CircuitState::Closed, CircuitState::Open));
        assert_eq!(
            b.try_acquire().err().unwrap().retry_in,
            Duration::from_secs(5)
        );
        assert_eq!(b.trip(), None, "already open");
        clock.advance(Duration::from_secs(5));
        let (probe, _) = b.try_acquire().unwrap();
        assert!(probe.is_probe());
    }

    #[test]
    fn only_consecutive_failures_trip_with_the_rate_rule_off() {
        let (b, _) = breaker(BreakerConfig {
            minimum_calls: u32::MAX,
            ..BreakerConfig::default()
        });
        for _ in 0..100 {
            call(&b, Outcome::Failure).unwrap();
            call(&b, Outcome::Failure).unwrap();
            call(&b, Outcome::Success).unwrap();
        }
        assert_eq!(b.state(), CircuitState::Closed);
    }

    #[test]
    fn disabled_never_opens() {
        let (b, _) = breaker(BreakerConfig {
            enabled: false,
            ..BreakerConfig::default()
        });
        for _ in 0..50 {
            call(&b, Outcome::Failure).unwrap();
        }
        assert_eq!(b.state(), CircuitState::Closed);
    }

    #[test]
    fn config_check_names_the_problem() {
        let bad = BreakerConfig {
            open_max: Duration::from_secs(1),
            ..BreakerConfig::default()
        };
        assert_eq!(bad.validate().unwrap_err().setting, "open_max");
        assert!(BreakerConfig::default().validate().is_ok());
    }
}
