//! Retries that cannot turn into a storm, and backing off from a
//! scheduler that says it is over its rate limit.
//!
//! - [`RetryBudget`]: tower's [`TpsBudget`] shared by the whole client.
//!   Every first attempt deposits, every retry withdraws; so retries stay
//!   near `budget_ratio` of the calls of the last [`BUDGET_TTL`] however
//!   bad things get, plus a reserve of about `budget_burst` retries per
//!   [`BUDGET_TTL`] for a quiet start or a quiet client.
//! - [`Backoff`]: one scheduler's "not before" instant after
//!   `ResourceExhausted`, growing on each one in a row, reset by a success.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tower::retry::budget::{Budget, TpsBudget};

use crate::setting::{Invalid, positive};

/// `[retry]` in the config.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// Retries allowed per first attempt, on average (rounded to 1/n).
    pub budget_ratio: f64,
    /// Retries allowed on top of the ratio, per [`BUDGET_TTL`] (rounded up
    /// to a multiple of its seconds); all of them available at start.
    pub budget_burst: u32,
    /// Pause toward a scheduler after its first `ResourceExhausted`;
    /// doubles on each one in a row, up to `rate_limited_backoff_max`.
    #[serde(with = "humantime_serde")]
    pub rate_limited_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub rate_limited_backoff_max: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            budget_ratio: 0.2,
            budget_burst: 10,
            rate_limited_backoff: Duration::from_millis(250),
            rate_limited_backoff_max: Duration::from_secs(10),
        }
    }
}

impl RetryConfig {
    /// A ratio in [0, 1] and a backoff that can grow.
    pub fn validate(&self) -> Result<(), Invalid> {
        if !(0.0..=1.0).contains(&self.budget_ratio) {
            return Err(Invalid::new("budget_ratio", "must be in [0, 1]"));
        }
        positive("rate_limited_backoff", self.rate_limited_backoff)?;
        if self.rate_limited_backoff_max < self.rate_limited_backoff {
            return Err(Invalid::new(
                "rate_limited_backoff_max",
                "must be at least rate_limited_backoff",
            ));
        }
        Ok(())
    }
}

/// How long a first attempt counts toward the retries it allows, and the
/// period `budget_burst` is spread over (tower's `ttl`, 1 to 60 s).
pub const BUDGET_TTL: Duration = Duration::from_secs(10);

/// The client-wide retry allowance.
#[derive(Debug)]
pub struct RetryBudget(TpsBudget);

impl RetryBudget {
    pub fn new(config: &RetryConfig) -> Self {
        let ttl_secs = BUDGET_TTL.as_secs() as u32;
        // Whole retries per second, at least `budget_burst` per ttl.
        let min_per_sec = config.budget_burst.div_ceil(ttl_secs);
        // `check` keeps the ratio in [0, 1], inside tower's [0, 1000].
        let retry_percent = config.budget_ratio.clamp(0.0, 1.0) as f32;
        Self(TpsBudget::new(BUDGET_TTL, min_per_sec, retry_percent))
    }

    /// A first attempt was made.
    pub fn deposit(&self) {
        self.0.deposit();
    }

    /// Asks for one retry; false when the budget is spent.
    pub fn withdraw(&self) -> bool {
        self.0.withdraw()
    }
}

/// Growing pauses toward one scheduler after it rate-limited us.
#[derive(Debug)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    state: Mutex<BackoffState>,
}

#[derive(Debug, Default)]
struct BackoffState {
    not_before: Option<Instant>,
    in_a_row: u32,
}

impl Backoff {
    pub fn new(config: &RetryConfig) -> Self {
        Self {
            base: config.rate_limited_backoff,
            max: config.rate_limited_backoff_max,
            state: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BackoffState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Time left before the scheduler may be called again, if any.
    pub fn wait(&self, now: Instant) -> Option<Duration> {
        self.lock()
            .not_before
            .and_then(|at| at.checked_duration_since(now))
            .filter(|d| !d.is_zero())
    }

    /// The scheduler said `ResourceExhausted`: stay away for a while.
    /// Returns the pause chosen.
    pub fn rate_limited(&self, now: Instant) -> Duration {
        let mut state = self.lock();
        // Calls already in flight when the pause began answer the same
        // thing: one episode, one step up.
        if let Some(left) = state
            .not_before
            .and_then(|at| at.checked_duration_since(now))
            .filter(|d| !d.is_zero())
        {
            return left;
        }
        let factor = 1u32.checked_shl(state.in_a_row.min(16)).unwrap_or(u32::MAX);
        let pause = self.base.saturating_mul(factor).min(self.max);
        // Up to a quarter of jitter, so replicas do not come back at once.
        let jitter = pause.mul_f64(rand::random::<f64>() * 0.25);
        state.in_a_row = state.in_a_row.saturating_add(1);
        state.not_before = Some(now + pause + jitter);
        pause + jitter
    }

    /// The scheduler answered: no more pause.
    pub fn reset(&self) {
        let mut state = self.lock();
        state.in_a_row = 0;
        state.not_before = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_allows_a_burst_then_a_ratio_of_calls() {
        let budget = RetryBudget::new(&RetryConfig::default());
        let burst = (0..100).take_while(|_| budget.withdraw()).count();
        assert_eq!(burst, 10);
        let mut retries = 0;
        for _ in 0..1000 {
            budget.deposit();
            if budget.withdraw() {
                retries += 1;
            }
        }
        assert!((195..=205).contains(&retries), "{retries}");
    }

    #[test]
    fn backoff_grows_caps_and_resets() {
        let backoff = Backoff::new(&RetryConfig::default());
        let now = Instant::now();
        assert_eq!(backoff.wait(now), None);
        // Each answer after the previous pause ended steps up.
        let mut at = now;
        let mut pauses = Vec::new();
        for _ in 0..10 {
            let pause = backoff.rate_limited(at);
            pauses.push(pause);
            at += pause;
        }
        assert!(pauses[0] >= Duration::from_millis(250) && pauses[0] <= Duration::from_millis(313));
        assert!(pauses[1] >= Duration::from_millis(500));
        assert!(pauses[9] >= Duration::from_secs(10) && pauses[9] <= Duration::from_millis(12_500));
        assert!(backoff.wait(at - Duration::from_millis(1)).is_some());
        assert_eq!(backoff.wait(at), None);
        backoff.reset();
        assert_eq!(backoff.wait(now), None);
    }

    #[test]
    fn answers_within_one_pause_do_not_step_up() {
        let backoff = Backoff::new(&RetryConfig::default());
        let now = Instant::now();
        let first = backoff.rate_limited(now);
        for _ in 0..5 {
            assert!(backoff.rate_limited(now + Duration::from_millis(10)) < first);
        }
        let next = backoff.rate_limited(now + first);
        assert!(next >= Duration::from_millis(500), "{next:?}");
    }
}
