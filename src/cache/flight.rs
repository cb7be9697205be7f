//! In-process single-flight: concurrent misses for one key share one load.
//!
//! The first asker of a key becomes its [`Leader`]; later askers get a
//! `watch` receiver on the leader's slot and wait for its outcome. The map
//! is sharded and its locks are held only to look up or remove a slot, so
//! readers of other keys never wait. An invalidation detaches a key's slot:
//! whoever asks after it starts a new load instead of joining the old one.

use std::any::Any;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::{CacheKey, Kind};

/// A load's outcome, type-erased (`Result<Fetched<V>, E>` of the kind's
/// typed cache).
pub(crate) type Shared = Arc<dyn Any + Send + Sync>;
pub(crate) type Waiter = watch::Receiver<Option<Shared>>;

const SHARDS: usize = 32;

pub(crate) struct Flights {
    shards: Box<[Mutex<HashMap<CacheKey, Slot>>]>,
    next_id: AtomicU64,
    hasher: std::collections::hash_map::RandomState,
}

struct Slot {
    id: u64,
    tx: Arc<watch::Sender<Option<Shared>>>,
}

pub(crate) enum Role {
    Lead(Leader),
    Join(Waiter),
}

/// The one load of a key in this process. Dropping it without
/// [`Leader::complete`] frees the slot; its waiters see the channel close.
pub(crate) struct Leader {
    flights: Arc<Flights>,
    key: CacheKey,
    id: u64,
    tx: Arc<watch::Sender<Option<Shared>>>,
    done: bool,
}

impl Flights {
    pub(crate) fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            next_id: AtomicU64::new(1),
            hasher: Default::default(),
        }
    }

    fn shard(&self, key: &CacheKey) -> &Mutex<HashMap<CacheKey, Slot>> {
        &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS]
    }

    /// Joins the key's load in progress, or becomes its leader.
    /// `None` only if the map's lock is poisoned (the caller loads alone).
    pub(crate) fn join_or_lead(self: &Arc<Self>, key: &CacheKey) -> Option<Role> {
        let mut shard = self.shard(key).lock().ok()?;
        if let Some(slot) = shard.get(key) {
            return Some(Role::Join(slot.tx.subscribe()));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, _) = watch::channel(None);
        let tx = Arc::new(tx);
        shard.insert(key.clone(), Slot { id, tx: tx.clone() });
        Some(Role::Lead(Leader {
            flights: self.clone(),
            key: key.clone(),
            id,
            tx,
            done: false,
        }))
    }

    /// True when a load of `key` is in progress.
    #[cfg(test)]
    pub(crate) fn in_flight(&self, key: &CacheKey) -> bool {
        self.shard(key)
            .lock()
            .map(|s| s.contains_key(key))
            .unwrap_or(false)
    }

    fn remove_if(&self, key: &CacheKey, id: u64) {
        if let Ok(mut shard) = self.shard(key).lock()
            && shard.get(key).is_some_and(|s| s.id == id)
        {
            shard.remove(key);
        }
    }

    pub(crate) fn detach(&self, key: &CacheKey) {
        if let Ok(mut shard) = self.shard(key).lock() {
            shard.remove(key);
        }
    }

    pub(crate) fn detach_scope(&self, kind: Kind, cluster: Option<u64>) {
        for shard in self.shards.iter() {
            if let Ok(mut shard) = shard.lock() {
                shard.retain(|k, _| !(k.kind() == kind && cluster.is_none_or(|c| c == k.cluster)));
            }
        }
    }

    pub(crate) fn detach_all(&self) {
        for shard in self.shards.iter() {
            if let Ok(mut shard) = shard.lock() {
                shard.clear();
            }
        }
    }
}

impl Leader {
    pub(crate) fn key(&self) -> &CacheKey {
        &self.key
    }

    pub(crate) fn subscribe(&self) -> Waiter {
        self.tx.subscribe()
    }

    /// Frees the slot and hands the outcome to every waiter. Call after the
    /// outcome is in L1, so no one misses in between.
    pub(crate) fn complete(mut self, outcome: Shared) {
        self.done = true;
        self.flights.remove_if(&self.key, self.id);
        self.tx.send_replace(Some(outcome));
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        if !self.done {
            self.flights.remove_if(&self.key, self.id);
        }
    }
}

/// Waits for a slot's outcome; `None` if its leader went away without one.
pub(crate) async fn wait(mut rx: Waiter) -> Option<Shared> {
    match rx.wait_for(Option::is_some).await {
        Ok(value) => value.clone(),
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn second_asker_joins_and_gets_the_outcome() {
        let flights = Arc::new(Flights::new());
        let key = CacheKey::task(1, "a");
        let Some(Role::Lead(leader)) = flights.join_or_lead(&key) else {
            panic!("first asker leads");
        };
        let Some(Role::Join(rx)) = flights.join_or_lead(&key) else {
            panic!("second asker joins");
        };
        let waiter = tokio::spawn(wait(rx));
        leader.complete(Arc::new(7u32));
        let got = waiter.await.unwrap().unwrap();
        assert_eq!(got.downcast_ref::<u32>(), Some(&7));
        assert!(!flights.in_flight(&key));
    }

    #[tokio::test]
    async fn dropped_leader_closes_and_detach_starts_over() {
        let flights = Arc::new(Flights::new());
        let key = CacheKey::task(1, "a");
        let Some(Role::Lead(leader)) = flights.join_or_lead(&key) else {
            panic!("lead");
        };
        let Some(Role::Join(rx)) = flights.join_or_lead(&key) else {
            panic!("join");
        };
        drop(leader);
        assert!(wait(rx).await.is_none());

        let Some(Role::Lead(old)) = flights.join_or_lead(&key) else {
            panic!("lead");
        };
        flights.detach(&key);
        let Some(Role::Lead(new)) = flights.join_or_lead(&key) else {
            panic!("a new load after detach");
        };
        old.complete(Arc::new(1u8));
        assert!(flights.in_flight(&key), "old leader must not free new slot");
        drop(new);
        assert!(!flights.in_flight(&key));
    }
}
