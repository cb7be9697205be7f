//! A host's `created_at`: the first time any replica listed it. Schedulers
//! do not say when a host registered; the manager's row says when its
//! `sync_peers` first wrote the host. dfgraph keeps the first sighting of
//! each (cluster, host) in one Redis hash per cluster (`HSETNX`: the first
//! replica to write wins, every replica reads the same answer back), and
//! in memory without Redis. Each replica asks Redis once per host (one
//! round trip per list with new hosts), then answers from memory.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use redis::Value;

use crate::redis::Redis;

/// Cluster id -> host id -> first sighting, unix milliseconds.
type Sightings = HashMap<u64, HashMap<Box<str>, i64>>;

/// First sightings of hosts, shared through Redis when there is one.
#[derive(Clone)]
pub struct FirstSeen {
    /// Looked up by `&str` for every host of every list served, so no
    /// key is allocated then.
    memory: Arc<RwLock<Sightings>>,
    redis: Option<Redis>,
}

/// The Redis hash of a cluster's first sightings (outside the cache's
/// keys: no cache invalidation ever drops it).
fn key(cluster_id: u64) -> String {
    format!("dfgraph:v1:first-seen:{{{cluster_id}}}")
}

impl FirstSeen {
    pub fn new(redis: Option<Redis>) -> FirstSeen {
        FirstSeen {
            memory: Arc::default(),
            redis,
        }
    }

    /// The first sighting of each of `hosts` (the whole current list of
    /// `cluster_id`), in order; hosts met for the first time are recorded
    /// as seen `now`.
    pub async fn of(&self, cluster_id: u64, hosts: &[&str], now: DateTime<Utc>) -> Vec<i64> {
        let at = now.timestamp_millis();
        let (mut known, new) = self.lookup(cluster_id, hosts);
        if new.is_empty() {
            return known.into_iter().map(|k| k.unwrap_or(at)).collect();
        }
        let names: Vec<&str> = new.iter().map(|&i| hosts[i]).collect();
        let stored = match &self.redis {
            Some(redis) => match shared(redis, cluster_id, &names, at).await {
                Some(stored) => Some(stored),
                // Not remembered: the shared answer is asked for again
                // next time, so replicas come to agree.
                None => return known.into_iter().map(|k| k.unwrap_or(at)).collect(),
            },
            None => None,
        };
        let mut memory = self.memory.write().unwrap_or_else(|e| e.into_inner());
        let cluster = memory.entry(cluster_id).or_default();
        for (n, &i) in new.iter().enumerate() {
            let first = stored.as_ref().and_then(|s| s[n]).unwrap_or(at);
            // A concurrent request may have put it first: keep that.
            known[i] = Some(*cluster.entry(hosts[i].into()).or_insert(first));
        }
        // Hosts that left are forgotten here (Redis keeps them) once they
        // outnumber the current list.
        if cluster.len() > 2 * hosts.len() + 64 {
            let current: std::collections::HashSet<&str> = hosts.iter().copied().collect();
            cluster.retain(|host, _| current.contains(&**host));
        }
        known.into_iter().map(|k| k.unwrap_or(at)).collect()
    }

    /// What memory holds for each host, and the positions of the rest.
    fn lookup(&self, cluster_id: u64, hosts: &[&str]) -> (Vec<Option<i64>>, Vec<usize>) {
        let memory = self.memory.read().unwrap_or_else(|e| e.into_inner());
        let cluster = memory.get(&cluster_id);
        let known: Vec<Option<i64>> = hosts
            .iter()
            .map(|h| cluster.and_then(|c| c.get(*h)).copied())
            .collect();
        let new = known
            .iter()
            .enumerate()
            .filter(|(_, k)| k.is_none())
            .map(|(i, _)| i)
            .collect();
        (known, new)
    }
}

/// `HSETNX` each host at `at`, then reads every host's stored sighting, in
/// one round trip. `None` when Redis could not answer (the caller uses
/// `at`, and asks again next time it meets the host in a new process).
async fn shared(
    redis: &Redis,
    cluster_id: u64,
    hosts: &[&str],
    at: i64,
) -> Option<Vec<Option<i64>>> {
    let key = key(cluster_id);
    let mut pipe = redis::pipe();
    for host in hosts {
        pipe.hset_nx(&key, *host, at).ignore();
    }
    pipe.hmget(&key, hosts);
    let answer: Result<Vec<Value>, _> = redis.pipe("first_seen", &pipe).await;
    let values = match answer {
        Ok(mut replies) => match replies.pop() {
            Some(Value::Array(values)) if values.len() == hosts.len() => values,
            other => {
                tracing::warn!(?other, "first sightings: unexpected answer from Redis");
                return None;
            }
        },
        Err(e) => {
            tracing::warn!(error = %e, "first sightings: Redis did not answer; using this replica's");
            return None;
        }
    };
    Some(
        values
            .into_iter()
            .map(|v| redis::from_redis_value::<Option<i64>>(v).ok().flatten())
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_sighting_stays_without_redis() {
        let seen = FirstSeen::new(None);
        let early = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let later = DateTime::from_timestamp(1_700_000_100, 0).unwrap();
        assert_eq!(seen.of(1, &["a"], early).await, [early.timestamp_millis()]);
        assert_eq!(
            seen.of(1, &["a", "b"], later).await,
            [early.timestamp_millis(), later.timestamp_millis()]
        );
        assert_eq!(
            seen.of(2, &["a"], later).await,
            [later.timestamp_millis()],
            "per cluster"
        );
    }
}
