//! The deadline of the request a piece of work serves, passed down as a
//! value (`get_many(keys, deadline)` -> origin -> scheduler call) rather
//! than kept in a task-local: work that runs in a spawned task (a cache
//! leader, a DataLoader batch) keeps the budget of the request it serves.
//! Depends on nothing else in the crate.

use std::time::{Duration, Instant};

/// When the work must be done, or no bound beyond each call's own timeout
/// (background reloads, the change watcher, the status command).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Deadline(Option<Instant>);

impl Deadline {
    /// No request budget: calls get their own timeouts only.
    pub const NONE: Deadline = Deadline(None);

    /// Work that must end by `instant`.
    pub fn at(instant: Instant) -> Self {
        Deadline(Some(instant))
    }

    /// The instant, if bounded.
    pub fn instant(self) -> Option<Instant> {
        self.0
    }

    /// Time left (zero once past), or `None` when unbounded.
    pub fn remaining(self) -> Option<Duration> {
        self.0.map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// A call's timeout under this deadline, and whether the deadline cut
    /// it short (a call cut short says nothing about the callee's health).
    pub fn clamp(self, timeout: Duration) -> (Duration, bool) {
        match self.remaining() {
            Some(left) if left < timeout => (left, true),
            _ => (timeout, false),
        }
    }

    /// The earlier of two deadlines.
    pub fn min(self, other: Deadline) -> Deadline {
        match (self.0, other.0) {
            (Some(a), Some(b)) => Deadline(Some(a.min(b))),
            (a, b) => Deadline(a.or(b)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clamps_a_timeout_to_what_is_left() {
        let timeout = Duration::from_secs(10);
        assert_eq!(Deadline::NONE.clamp(timeout), (timeout, false));
        let (left, cut) = Deadline::at(Instant::now() + Duration::from_secs(1)).clamp(timeout);
        assert!(cut && left <= Duration::from_secs(1) && left > Duration::from_millis(500));
        let (left, cut) = Deadline::at(Instant::now() + Duration::from_secs(20)).clamp(timeout);
        assert_eq!((left, cut), (timeout, false));
        assert_eq!(
            Deadline::at(Instant::now()).clamp(timeout).0,
            Duration::ZERO
        );
    }

    #[test]
    fn min_prefers_the_bounded_earlier_one() {
        let soon = Deadline::at(Instant::now() + Duration::from_secs(1));
        let later = Deadline::at(Instant::now() + Duration::from_secs(5));
        assert_eq!(soon.min(later), soon);
        assert_eq!(later.min(soon), soon);
        assert_eq!(Deadline::NONE.min(later), later);
        assert_eq!(soon.min(Deadline::NONE), soon);
    }
}
