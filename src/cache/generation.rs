//! The in-process half of the generation guard: a load that began before an
//! invalidation of its key must not write its older result back after it.
//!
//! Every invalidation (of a key, a scope, or everything) takes the next
//! number of one process-wide sequence and records it against what it
//! invalidated. A load takes a [`Ticket`] (the sequence number when it
//! began) and may write only while nothing it covers has a newer number.
//! Per-key records are kept for `retention`; a load older than that never
//! writes, so the records can be forgotten safely.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::{CacheKey, Kind};

const SHARDS: usize = 16;

pub(crate) struct Generations {
    seq: AtomicU64,
    all: AtomicU64,
    retention: Duration,
    keys: Box<[Mutex<Shard>]>,
    scopes: Mutex<HashMap<(Kind, Option<u64>), u64>>,
    hasher: std::collections::hash_map::RandomState,
}

#[derive(Default)]
struct Shard {
    map: HashMap<CacheKey, (u64, Instant)>,
    prune_at: usize,
}

/// When a load began.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ticket {
    seq: u64,
    started: Instant,
}

impl Generations {
    pub(crate) fn new(retention: Duration) -> Self {
        Self {
            seq: AtomicU64::new(0),
            all: AtomicU64::new(0),
            retention,
            keys: (0..SHARDS).map(|_| Mutex::default()).collect(),
            scopes: Mutex::default(),
            hasher: Default::default(),
        }
    }

    pub(crate) fn ticket(&self) -> Ticket {
        Ticket {
            seq: self.seq.load(Ordering::SeqCst),
            started: Instant::now(),
        }
    }

    fn next(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::SeqCst) + 1
    }

    fn shard(&self, key: &CacheKey) -> &Mutex<Shard> {
        &self.keys[(self.hasher.hash_one(key) as usize) % SHARDS]
    }

    pub(crate) fn bump_key(&self, key: &CacheKey) {
        let g = self.next();
        let Ok(mut shard) = self.shard(key).lock() else {
            // A poisoned shard cannot record; make every load start over.
            self.all.store(g, Ordering::SeqCst);
            return;
        };
        let now = Instant::now();
        shard.map.insert(key.clone(), (g, now));
        if shard.map.len() > shard.prune_at {
            let retention = self.retention;
            shard
                .map
                .retain(|_, (_, at)| now.duration_since(*at) < retention);
            shard.prune_at = (shard.map.len() * 2).max(1024);
        }
    }

    pub(crate) fn bump_scope(&self, kind: Kind, cluster: Option<u64>) {
        let g = self.next();
        match self.scopes.lock() {
            Ok(mut scopes) => {
                scopes.insert((kind, cluster), g);
            }
            Err(_) => self.all.store(g, Ordering::SeqCst),
        }
    }

    pub(crate) fn bump_all(&self) {
        let g = self.next();
        self.all.store(g, Ordering::SeqCst);
    }

    /// May a load holding `ticket` still write `key`?
    pub(crate) fn is_current(&self, key: &CacheKey, ticket: &Ticket) -> bool {
        if ticket.started.elapsed() >= self.retention {
            return false;
        }
        if self.all.load(Ordering::SeqCst) > ticket.seq {
            return false;
        }
        let key_gen = match self.shard(key).lock() {
            Ok(shard) => shard.map.get(key).map_or(0, |(g, _)| *g),
            Err(_) => return false,
        };
        if key_gen > ticket.seq {
            return false;
        }
        let Ok(scopes) = self.scopes.lock() else {
            return false;
        };
        let scoped = |c| scopes.get(&(key.kind(), c)).copied().unwrap_or(0);
        scoped(None) <= ticket.seq && scoped(Some(key.cluster)) <= ticket.seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalidations_after_the_ticket_block_writes() {
        let g = Generations::new(Duration::from_secs(60));
        let a = CacheKey::task(1, "a");
        let b = CacheKey::task(1, "b");
        let c = CacheKey::task(2, "c");
        let before = g.ticket();
        g.bump_key(&a);
        assert!(!g.is_current(&a, &before));
        assert!(g.is_current(&b, &before));
        let after = g.ticket();
        assert!(g.is_current(&a, &after));
        g.bump_scope(Kind::Task, Some(1));
        assert!(!g.is_current(&b, &after));
        assert!(g.is_current(&c, &after));
        g.bump_scope(Kind::Task, None);
        assert!(!g.is_current(&c, &after));
        let t = g.ticket();
        assert!(g.is_current(&c, &t));
        assert!(g.is_current(
            &CacheKey::peer(1, &crate::ids::PeerKey::from_path("x/y/z").unwrap()),
            &t
        ));
        g.bump_all();
        assert!(!g.is_current(
            &CacheKey::peer(1, &crate::ids::PeerKey::from_path("x/y/z").unwrap()),
            &t
        ));
    }

    #[test]
    fn loads_older_than_retention_never_write() {
        let g = Generations::new(Duration::from_millis(1));
        let t = g.ticket();
        std::thread::sleep(Duration::from_millis(3));
        assert!(!g.is_current(&CacheKey::hosts(1), &t));
    }
}
