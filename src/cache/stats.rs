//! Counting what the cache does: every event goes both to the `metrics`
//! facade (scraped as Prometheus by the HTTP layer) and to in-process
//! atomics, so tests and health checks can read [`CacheStats`] directly.
//!
//! | metric | meaning |
//! | --- | --- |
//! | `dfgraph_cache_lookups_total{tier,result}` | one per key per tier consulted: `l1`/`l2` `hit` (fresh), `stale` (served past fresh), `miss` (went on); `origin` `hit` (answered, found or not), `stale` (failed, stale served), `miss` (failed, error returned) |
//! | `dfgraph_cache_load_seconds` | duration of each batched origin call |
//! | `dfgraph_cache_singleflight_joins_total` | lookups that joined a load in flight |
//! | `dfgraph_cache_lock_waits_total` | keys waited for while another replica loaded them |
//! | `dfgraph_cache_refresh_ahead_total` | background reloads of hot keys |
//! | `dfgraph_cache_invalidations_total{direction="sent\|received"}` | invalidations made here / applied from other replicas |
//! | `dfgraph_cache_stale_writes_dropped_total` | write-backs refused because the key was invalidated during the load |
//! | `dfgraph_cache_decode_failures_total` | undecodable values found in Redis (deleted, reloaded) |

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::Tier;

/// The cache's metrics, declared once with their HELP text.
pub mod metric {
    pub const LOOKUPS: &str = "dfgraph_cache_lookups_total";
    pub const LOAD_SECONDS: &str = "dfgraph_cache_load_seconds";
    pub const SINGLEFLIGHT_JOINS: &str = "dfgraph_cache_singleflight_joins_total";
    pub const LOCK_WAITS: &str = "dfgraph_cache_lock_waits_total";
    pub const REFRESH_AHEAD: &str = "dfgraph_cache_refresh_ahead_total";
    pub const INVALIDATIONS: &str = "dfgraph_cache_invalidations_total";
    pub const STALE_WRITES_DROPPED: &str = "dfgraph_cache_stale_writes_dropped_total";
    pub const REPLACEMENTS: &str = "dfgraph_cache_replacements_total";
    pub const DECODE_FAILURES: &str = "dfgraph_cache_decode_failures_total";

    /// Gives `/metrics` the HELP line of each.
    pub fn describe() {
        metrics::describe_counter!(
            LOOKUPS,
            "Cache lookups by tier (l1, l2, origin) and result (hit, miss, stale)."
        );
        metrics::describe_histogram!(
            LOAD_SECONDS,
            "Seconds one origin (scheduler) load of a batch of keys took."
        );
        metrics::describe_counter!(
            SINGLEFLIGHT_JOINS,
            "Lookups that joined a load already in flight in this process."
        );
        metrics::describe_counter!(
            LOCK_WAITS,
            "Keys waited for while another replica loaded them (the Redis load lock)."
        );
        metrics::describe_counter!(
            REFRESH_AHEAD,
            "Hot entries reloaded before their fresh deadline."
        );
        metrics::describe_counter!(
            INVALIDATIONS,
            "Invalidation messages sent to or received from other replicas (direction)."
        );
        metrics::describe_counter!(
            STALE_WRITES_DROPPED,
            "Loaded values not kept because their key was invalidated while loading."
        );
        metrics::describe_counter!(
            REPLACEMENTS,
            "Entries replaced in place by a change, or invalidated when they could not be (outcome)."
        );
        metrics::describe_counter!(
            DECODE_FAILURES,
            "Redis values that failed to decode (deleted and reloaded)."
        );
    }
}

/// What one tier's lookup of one key found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A fresh value (for the origin: loaded, found or not found).
    Hit,
    /// Nothing usable (for the origin: it failed and nothing was served).
    Miss,
    /// A value past its fresh deadline was served.
    Stale,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Miss => "miss",
            Outcome::Stale => "stale",
        }
    }
}

fn tier_str(tier: Tier) -> &'static str {
    match tier {
        Tier::L1 => "l1",
        Tier::L2 => "l2",
        Tier::Origin => "origin",
    }
}

/// A snapshot of the cache's counters since start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub l1_hits: u64,
    pub l1_misses: u64,
    pub l1_stale: u64,
    pub l2_hits: u64,
    pub l2_misses: u64,
    pub l2_stale: u64,
    /// Keys the origin answered (found or not found).
    pub origin_hits: u64,
    /// Keys the origin failed for and nothing was served.
    pub origin_misses: u64,
    /// Keys the origin failed for and a stale value was served instead.
    pub origin_stale: u64,
    /// Batched calls to an origin.
    pub origin_loads: u64,
    /// Keys asked of an origin.
    pub origin_keys: u64,
    pub singleflight_joins: u64,
    /// Keys waited for while another process held their load lock.
    pub lock_waits: u64,
    pub refresh_ahead: u64,
    pub invalidations_sent: u64,
    pub invalidations_received: u64,
    /// Write-backs dropped because the key was invalidated during the load.
    pub stale_writes_dropped: u64,
    /// Values put in place by the watcher (a changed host list).
    pub replacements: u64,
    /// Replacements turned into invalidations: the key changed while the
    /// value was fetched.
    pub replacements_refused: u64,
    pub redis_errors: u64,
    pub decode_failures: u64,
    pub circuit_open: bool,
}

#[derive(Default)]
pub(crate) struct Stats {
    l1: [AtomicU64; 3],
    l2: [AtomicU64; 3],
    origin: [AtomicU64; 3],
    origin_loads: AtomicU64,
    origin_keys: AtomicU64,
    joins: AtomicU64,
    lock_waits: AtomicU64,
    refresh_ahead: AtomicU64,
    sent: AtomicU64,
    received: AtomicU64,
    dropped_writes: AtomicU64,
    replacements: AtomicU64,
    replacements_refused: AtomicU64,
    decode_failures: AtomicU64,
}

fn slot(outcome: Outcome) -> usize {
    match outcome {
        Outcome::Hit => 0,
        Outcome::Miss => 1,
        Outcome::Stale => 2,
    }
}

impl Stats {
    pub(crate) fn lookup(&self, tier: Tier, outcome: Outcome, n: u64) {
        if n == 0 {
            return;
        }
        let counters = match tier {
            Tier::L1 => &self.l1,
            Tier::L2 => &self.l2,
            Tier::Origin => &self.origin,
        };
        counters[slot(outcome)].fetch_add(n, Ordering::Relaxed);
        metrics::counter!(
            metric::LOOKUPS,
            "tier" => tier_str(tier),
            "result" => outcome.as_str()
        )
        .increment(n);
    }

    pub(crate) fn origin_load(&self, keys: usize, took: Duration) {
        self.origin_loads.fetch_add(1, Ordering::Relaxed);
        self.origin_keys.fetch_add(keys as u64, Ordering::Relaxed);
        metrics::histogram!(metric::LOAD_SECONDS).record(took.as_secs_f64());
    }

    pub(crate) fn singleflight_join(&self) {
        self.joins.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(metric::SINGLEFLIGHT_JOINS).increment(1);
    }

    pub(crate) fn lock_wait(&self, n: u64) {
        self.lock_waits.fetch_add(n, Ordering::Relaxed);
        metrics::counter!(metric::LOCK_WAITS).increment(n);
    }

    pub(crate) fn refresh_ahead(&self, n: u64) {
        self.refresh_ahead.fetch_add(n, Ordering::Relaxed);
        metrics::counter!(metric::REFRESH_AHEAD).increment(n);
    }

    pub(crate) fn invalidation_sent(&self) {
        self.sent.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(metric::INVALIDATIONS, "direction" => "sent").increment(1);
    }

    pub(crate) fn invalidation_received(&self) {
        self.received.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(metric::INVALIDATIONS, "direction" => "received").increment(1);
    }

    pub(crate) fn stale_write_dropped(&self, n: u64) {
        self.dropped_writes.fetch_add(n, Ordering::Relaxed);
        metrics::counter!(metric::STALE_WRITES_DROPPED).increment(n);
    }

    /// A replacement placed, or (`refused`) made an invalidation instead.
    pub(crate) fn replacement(&self, refused: bool) {
        let (counter, outcome) = if refused {
            (&self.replacements_refused, "invalidated")
        } else {
            (&self.replacements, "replaced")
        };
        counter.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(metric::REPLACEMENTS, "outcome" => outcome).increment(1);
    }

    pub(crate) fn decode_failure(&self) {
        self.decode_failures.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(metric::DECODE_FAILURES).increment(1);
    }

    pub(crate) fn snapshot(&self) -> CacheStats {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CacheStats {
            l1_hits: get(&self.l1[0]),
            l1_misses: get(&self.l1[1]),
            l1_stale: get(&self.l1[2]),
            l2_hits: get(&self.l2[0]),
            l2_misses: get(&self.l2[1]),
            l2_stale: get(&self.l2[2]),
            origin_hits: get(&self.origin[0]),
            origin_misses: get(&self.origin[1]),
            origin_stale: get(&self.origin[2]),
            origin_loads: get(&self.origin_loads),
            origin_keys: get(&self.origin_keys),
            singleflight_joins: get(&self.joins),
            lock_waits: get(&self.lock_waits),
            refresh_ahead: get(&self.refresh_ahead),
            invalidations_sent: get(&self.sent),
            invalidations_received: get(&self.received),
            stale_writes_dropped: get(&self.dropped_writes),
            replacements: get(&self.replacements),
            replacements_refused: get(&self.replacements_refused),
            // Filled in from the Redis stack by `Cache::stats`.
            redis_errors: 0,
            decode_failures: get(&self.decode_failures),
            circuit_open: false,
        }
    }
}
