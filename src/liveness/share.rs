//! Liveness records between replicas: the replica that probes a cluster
//! writes each record it changed to the cluster's Redis hash
//! ([`keys::liveness`]) after each cycle, and at once before it announces
//! a host unreachable or reachable; the other replicas read the hash
//! (and apply the events as they arrive, see `Liveness::apply_remote`).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::{Liveness, Record};
use crate::cache::keys;
use crate::redis::Redis;

/// How long a cluster's hash outlives its last write: long enough for a
/// new prober to take over, short enough that a cluster nobody probes any
/// more does not show old states for long.
const HASH_TTL: Duration = Duration::from_secs(600);

/// Fields written per HSET.
const WRITE_BATCH: usize = 1000;

/// This replica's end of the hashes.
#[derive(Clone)]
pub(super) struct Share {
    redis: Redis,
    /// Hosts whose record changed since the last write, per cluster.
    dirty: Arc<Mutex<HashMap<u64, HashSet<String>>>>,
}

impl Share {
    pub(super) fn new(redis: Redis) -> Share {
        Share {
            redis,
            dirty: Arc::default(),
        }
    }

    fn dirty(&self) -> std::sync::MutexGuard<'_, HashMap<u64, HashSet<String>>> {
        self.dirty.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Notes that a host's record changed.
    pub(super) fn mark(&self, cluster_id: u64, host_id: &str) {
        self.dirty()
            .entry(cluster_id)
            .or_default()
            .insert(host_id.to_owned());
    }

    /// Writes the changed records of a cluster.
    pub(super) async fn flush(&self, cluster_id: u64, liveness: &Liveness) {
        let ids: Vec<String> = self
            .dirty()
            .remove(&cluster_id)
            .map(|ids| ids.into_iter().collect())
            .unwrap_or_default();
        if ids.is_empty() {
            return;
        }
        let key = keys::liveness(cluster_id);
        let mut cmds = Vec::new();
        for chunk in ids.chunks(WRITE_BATCH) {
            let mut hset = redis::cmd("HSET");
            hset.arg(&key);
            let mut fields = 0;
            for id in chunk {
                if let Some(record) = liveness.get(cluster_id, id) {
                    hset.arg(id).arg(record.encode());
                    fields += 1;
                }
            }
            if fields > 0 {
                cmds.push(hset);
            }
        }
        let mut expire = redis::cmd("PEXPIRE");
        expire.arg(&key).arg(HASH_TTL.as_millis() as u64);
        cmds.push(expire);
        if let Err(error) = self.redis.batch("liveness_write", cmds).await {
            tracing::debug!(cluster = cluster_id, %error, "liveness records not shared; other replicas learn them later");
            // Written with the next flush.
            self.dirty().entry(cluster_id).or_default().extend(ids);
        }
    }

    /// Removes hosts that left from a cluster's hash.
    pub(super) async fn forget(&self, cluster_id: u64, gone: Vec<String>) {
        if gone.is_empty() {
            return;
        }
        if let Some(dirty) = self.dirty().get_mut(&cluster_id) {
            for id in &gone {
                dirty.remove(id);
            }
        }
        let mut hdel = redis::cmd("HDEL");
        hdel.arg(keys::liveness(cluster_id)).arg(gone);
        if let Err(error) = self.redis.cmd::<()>("liveness_forget", &hdel).await {
            tracing::debug!(cluster = cluster_id, %error, "liveness records of departed hosts not removed");
        }
    }

    /// Reads a cluster's records as the prober wrote them.
    pub(super) async fn read(&self, cluster_id: u64) -> Option<HashMap<String, Record>> {
        let mut hgetall = redis::cmd("HGETALL");
        hgetall.arg(keys::liveness(cluster_id));
        match self
            .redis
            .cmd::<HashMap<String, String>>("liveness_read", &hgetall)
            .await
        {
            Ok(fields) => Some(
                fields
                    .into_iter()
                    .filter_map(|(id, value)| Record::decode(&value).map(|r| (id, r)))
                    .collect(),
            ),
            Err(error) => {
                tracing::debug!(cluster = cluster_id, %error, "liveness records not read");
                None
            }
        }
    }
}
