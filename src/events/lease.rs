//! Per-cluster leases in Redis: each holds the id of the one replica that
//! does a job for that cluster (the watcher's polls, [`keys::watch_lease`];
//! the liveness probes, [`crate::cache::keys::liveness_lease`]). Taken with SET NX PX,
//! renewed by its holder only, released on shutdown or when the holder
//! loses interest; a dead holder's lease lapses after its TTL.

use std::time::Duration;

use crate::redis::{Redis, RedisError};

/// Takes a free lease or renews one's own; 1 when held afterwards.
const ACQUIRE: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
";

/// Deletes the lease only if `instance` holds it.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// The Redis key of one cluster's lease of one job.
pub type LeaseKey = fn(u64) -> String;

/// Takes or renews the lease (named by `key`) of each cluster; returns the
/// clusters held.
pub async fn acquire(
    redis: &Redis,
    key: LeaseKey,
    clusters: &[u64],
    instance: &str,
    ttl: Duration,
) -> Result<Vec<u64>, RedisError> {
    if clusters.is_empty() {
        return Ok(Vec::new());
    }
    // Plain EVAL: the script is tiny, and EVALSHA would need a fallback
    // round trip whenever Redis restarted with an empty script cache.
    let mut evals = per_lease(ACQUIRE, key, clusters, instance);
    for eval in &mut evals {
        eval.arg(ttl.as_millis() as u64);
    }
    let held: Vec<i64> = redis
        .batch("lease_acquire", evals)
        .await?
        .iter()
        .map(|v| match v {
            redis::Value::Int(n) => *n,
            _ => 0,
        })
        .collect();
    Ok(clusters
        .iter()
        .zip(held)
        .filter(|(_, h)| *h == 1)
        .map(|(c, _)| *c)
        .collect())
}

/// Gives up the leases (named by `key`) `instance` holds among `clusters`.
pub async fn release(
    redis: &Redis,
    key: LeaseKey,
    clusters: &[u64],
    instance: &str,
) -> Result<(), RedisError> {
    if clusters.is_empty() {
        return Ok(());
    }
    let evals = per_lease(RELEASE, key, clusters, instance);
    redis.batch("lease_release", evals).await.map(|_| ())
}

/// `script` on each cluster's lease, for `instance` (one slot each: the
/// batch splits them per slot on Redis Cluster).
fn per_lease(script: &str, key: LeaseKey, clusters: &[u64], instance: &str) -> Vec<redis::Cmd> {
    clusters
        .iter()
        .map(|&cluster| {
            let mut eval = redis::cmd("EVAL");
            eval.arg(script).arg(1).arg(key(cluster)).arg(instance);
            eval
        })
        .collect()
}
