//! Refresh-ahead of hot keys: an entry read at least `min_hits` times in its
//! fresh window is reloaded in the background once it enters the last part
//! of that window (from `at` × fresh onward), so hot keys never go cold.
//! The reloads are capped per second by a token bucket so a burst of hot
//! keys cannot flood the schedulers.

use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::l1::Entry;
use crate::clock::Millis;

/// A token bucket: `rate` tokens per second, holding at most `rate`.
pub(crate) struct TokenBucket {
    rate: f64,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    pub(crate) fn new(per_sec: u32) -> Self {
        let rate = f64::from(per_sec);
        Self {
            rate,
            state: Mutex::new((rate, Instant::now())),
        }
    }

    pub(crate) fn try_take(&self) -> bool {
        if self.rate <= 0.0 {
            return false;
        }
        let Ok(mut state) = self.state.lock() else {
            return false;
        };
        let now = Instant::now();
        let (tokens, last) = *state;
        let tokens = (tokens + now.duration_since(last).as_secs_f64() * self.rate).min(self.rate);
        if tokens >= 1.0 {
            *state = (tokens - 1.0, now);
            true
        } else {
            *state = (tokens, now);
            false
        }
    }
}

/// The refresh-ahead policy.
pub(crate) struct RefreshAhead {
    pub(crate) min_hits: u32,
    /// Fraction of the fresh window after which a hot entry is refreshed.
    pub(crate) at: f64,
    pub(crate) bucket: TokenBucket,
}

impl RefreshAhead {
    /// Called on a fresh L1 hit that brought the entry to `hits` reads: true
    /// when this caller should start the entry's refresh (at most once per
    /// entry, and only when the bucket has a token).
    pub(crate) fn should_refresh(&self, entry: &Entry, hits: u32, now: Millis) -> bool {
        if self.min_hits == 0 || hits < self.min_hits {
            return false;
        }
        let h = &entry.header;
        let window = h.fresh_until.saturating_sub(h.fetched_at) as f64;
        let due = h
            .fetched_at
            .saturating_add((window * self.at.clamp(0.0, 1.0)) as u64);
        if now < due || now >= h.fresh_until {
            return false;
        }
        if entry.refreshing.swap(true, Ordering::AcqRel) {
            return false;
        }
        if self.bucket.try_take() {
            true
        } else {
            // No budget now; a later read may try again.
            entry.refreshing.store(false, Ordering::Release);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::cache::CacheKey;
    use crate::cache::codec::Header;

    #[test]
    fn bucket_caps_the_rate() {
        let bucket = TokenBucket::new(3);
        assert!((0..3).all(|_| bucket.try_take()));
        assert!(!bucket.try_take());
        std::thread::sleep(Duration::from_millis(400));
        assert!(bucket.try_take());
        assert!(!TokenBucket::new(0).try_take());
    }

    #[test]
    fn refreshes_hot_entries_late_in_their_window_once() {
        let policy = RefreshAhead {
            min_hits: 3,
            at: 0.8,
            bucket: TokenBucket::new(100),
        };
        let key = CacheKey::task(1, "a");
        let header = Header {
            fetched_at: 1000,
            fresh_until: 2000,
            stale_until: 5000,
            tombstone: false,
        };
        let entry = Entry::new(&key, header, Some(Arc::new(1u8)), 1, Duration::from_secs(1));
        assert!(!policy.should_refresh(&entry, 2, 1900), "not hot enough");
        assert!(!policy.should_refresh(&entry, 5, 1500), "too early");
        assert!(!policy.should_refresh(&entry, 5, 2000), "already stale");
        assert!(policy.should_refresh(&entry, 5, 1850));
        assert!(!policy.should_refresh(&entry, 6, 1900), "only once");
    }
}
