//! Time, read through one [`Clock`]: wall-clock milliseconds (cache
//! deadlines, event stamps, health records) and a monotonic [`Instant`]
//! (circuit breakers, rate-limit backoff). Code that judges time takes a
//! clock, so tests move a [`ManualClock`] instead of sleeping.
//!
//! Depends on nothing else in the crate.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch; the unit of every cache deadline.
pub type Millis = u64;

/// A source of time.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// Wall-clock time: milliseconds since the Unix epoch.
    fn now_ms(&self) -> Millis;

    /// Monotonic time, for intervals that must not jump with the wall
    /// clock.
    fn now(&self) -> Instant;

    /// [`Clock::now_ms`] as a signed number, for differences with
    /// timestamps (from a scheduler, from another replica) that may lie
    /// ahead of this one.
    fn now_ms_signed(&self) -> i64 {
        i64::try_from(self.now_ms()).unwrap_or(i64::MAX)
    }
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> Millis {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(Millis::MAX))
            .unwrap_or(0)
    }

    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that only moves when told to; for tests. Clones share one
/// time, so a test keeps a clone and advances what the code under test
/// reads. Both readings start at the real time of creation (so Redis TTLs
/// derived from it stay sensible) and move together.
#[derive(Debug, Clone)]
pub struct ManualClock {
    start_ms: Millis,
    start: Instant,
    /// Nanoseconds advanced since creation.
    advanced: Arc<AtomicU64>,
}

impl ManualClock {
    pub fn new() -> Self {
        Self {
            start_ms: SystemClock.now_ms(),
            start: Instant::now(),
            advanced: Arc::default(),
        }
    }

    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        // Never fails: the closure always returns Some.
        let _ = self
            .advanced
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |now| {
                Some(now.saturating_add(by))
            });
    }

    fn advanced(&self) -> Duration {
        Duration::from_nanos(self.advanced.load(Ordering::SeqCst))
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> Millis {
        let advanced = u64::try_from(self.advanced().as_millis()).unwrap_or(Millis::MAX);
        self.start_ms.saturating_add(advanced)
    }

    fn now(&self) -> Instant {
        self.start + self.advanced()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_both_readings_only_when_told() {
        let clock = ManualClock::new();
        let (ms, at) = (clock.now_ms(), clock.now());
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!((clock.now_ms(), clock.now()), (ms, at));
        let shared = clock.clone();
        shared.advance(Duration::from_secs(30));
        assert_eq!(clock.now_ms(), ms + 30_000);
        assert_eq!(clock.now(), at + Duration::from_secs(30));
    }

    #[test]
    fn the_system_clock_reads_the_epoch_and_moves_forward() {
        // 2020-01-01 in Unix milliseconds: any real clock is past it.
        assert!(SystemClock.now_ms() > 1_577_836_800_000);
        let signed = SystemClock.now_ms_signed();
        assert!((0..1000).contains(&(SystemClock.now_ms() as i64 - signed)));
        let before = SystemClock.now();
        assert!(SystemClock.now() >= before);
    }
}
