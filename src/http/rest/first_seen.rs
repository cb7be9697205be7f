//! A host's `created_at`: the first time any replica listed it. Schedulers
//! do not say when a host registered; the manager's row says when its
//! `sync_peers` first wrote the host. dfgraph keeps the first sighting of
//! each (cluster, host) in one Redis hash per cluster (`HSETNX`: the first
//! replica to write wins, every replica reads the same answer back), and
//! in memory without Redis. Each replica asks Redis once per host (one
//! round trip per list with new hosts), then answers from memory.
//!
//! Hosts that left are forgotten, in memory and in Redis, once they
//! outnumber the current list (plus a slack), so a churning cluster does
//! not grow the hash without end; a host that comes back after that is
//! first seen again.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use redis::Value;

use crate::redis::Redis;

/// Cluster id -> host id -> first sighting, unix milliseconds.
type Sightings = HashMap<u64, HashMap<Box<str>, i64>>;

/// Sightings of hosts no longer listed that are kept before they are
/// forgotten: beyond `2 * current + FORGET_SLACK` the rest go.
const FORGET_SLACK: usize = 1024;

/// Fields removed by one `HDEL`, so a large prune does not hold Redis up.
const FORGET_CHUNK: usize = 1000;

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
                Some((stored, remembered)) => {
                    if remembered > 2 * hosts.len() + FORGET_SLACK {
                        let current = hosts.iter().map(|h| Box::<str>::from(*h)).collect();
                        tokio::spawn(forget_departed(redis.clone(), cluster_id, current));
                    }
                    Some(stored)
                }
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
        if cluster.len() > 2 * hosts.len() + FORGET_SLACK {
            let current: HashSet<&str> = hosts.iter().copied().collect();
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

/// `HSETNX` each host at `at`, then reads every host's stored sighting
/// and how many hosts the hash remembers, in one round trip. `None` when
/// Redis could not answer (the caller uses `at`, and asks again next time
/// it meets the host in a new process).
async fn shared(
    redis: &Redis,
    cluster_id: u64,
    hosts: &[&str],
    at: i64,
) -> Option<(Vec<Option<i64>>, usize)> {
    let key = key(cluster_id);
    let mut pipe = redis::pipe();
    for host in hosts {
        pipe.hset_nx(&key, *host, at).ignore();
    }
    pipe.hmget(&key, hosts).hlen(&key);
    let answer: Result<Vec<Value>, _> = redis.pipe("first_seen", &pipe).await;
    let (values, remembered) = match answer {
        Ok(mut replies) => match (replies.pop(), replies.pop()) {
            (Some(Value::Int(remembered)), Some(Value::Array(values)))
                if values.len() == hosts.len() =>
            {
                (values, usize::try_from(remembered).unwrap_or(0))
            }
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
    let stored = values
        .into_iter()
        .map(|v| redis::from_redis_value::<Option<i64>>(v).ok().flatten())
        .collect();
    Some((stored, remembered))
}

/// Removes from the cluster's hash every host not in `current`, in
/// chunks. Replicas doing so at once remove the same fields, which is
/// harmless; a failure leaves the rest for the next time.
async fn forget_departed(redis: Redis, cluster_id: u64, current: HashSet<Box<str>>) {
    let key = key(cluster_id);
    let remembered: Vec<String> = match redis.cmd("first_seen", redis::cmd("HKEYS").arg(&key)).await
    {
        Ok(fields) => fields,
        Err(error) => {
            tracing::debug!(%error, "first sightings: could not list departed hosts");
            return;
        }
    };
    let departed: Vec<String> = remembered
        .into_iter()
        .filter(|host| !current.contains(host.as_str()))
        .collect();
    for chunk in departed.chunks(FORGET_CHUNK) {
        if let Err(error) = redis
            .cmd::<()>("first_seen", redis::cmd("HDEL").arg(&key).arg(chunk))
            .await
        {
            tracing::debug!(%error, "first sightings: could not forget departed hosts");
            return;
        }
    }
    tracing::debug!(
        cluster_id,
        forgotten = departed.len(),
        "first sightings of departed hosts forgotten"
    );
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
