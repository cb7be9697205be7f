//! L2: the Redis tier shared by every replica, on the process's one Redis
//! stack ([`crate::redis::Redis`]: circuit, timeout and error counting);
//! a failure is never returned to a lookup. Besides plain reads (one `MGET` per batch)
//! it keeps the cross-process parts of consistency:
//!
//! - the load lock `dfgraph:v1:lock:{kind}:{cluster}:{id}` (`SET NX PX`),
//!   so one replica loads a cold key while the others wait for its value;
//! - generation counters, bumped by invalidation (`dfgraph:v1:gen:…` per
//!   key, `dfgraph:v1:gen-scope:{kind}[:{cluster}]` per scope), read before
//!   a load calls its origin and compared by a Lua script that writes the
//!   value back only if none moved meanwhile.

use std::collections::HashMap;
use std::time::Duration;

use redis::Value;

use super::keys;
use super::{CacheConfig, CacheKey, Kind};
use crate::redis::{Redis, RedisError, Topic, value_string};

/// Sets the value only if no generation moved since the load read them;
/// releases the load lock if this load holds it. Returns 1 if written.
/// KEYS: entry, its generation, its cluster's scope generation, its lock
/// (one slot: the cluster's hash tag) and, on a single Redis, the
/// all-clusters scope generation (another slot: on Redis Cluster it is
/// checked after the write, see [`L2::write_back`]).
const WRITE_SCRIPT: &str = r"
local function gen(k)
  local v = redis.call('GET', k)
  if v then return v end
  return '0'
end
local ok = gen(KEYS[2]) == ARGV[3] and gen(KEYS[3]) == ARGV[4]
if KEYS[5] then
  ok = ok and gen(KEYS[5]) == ARGV[6]
end
if ok then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
if ARGV[5] ~= '' and redis.call('GET', KEYS[4]) == ARGV[5] then
  redis.call('DEL', KEYS[4])
end
if ok then return 1 end
return 0
";

const RELEASE_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

pub(crate) type L2Error = RedisError;

/// What a load saw in Redis before calling its origin: the generations it
/// must still find when writing back, and its lock token if it won the
/// lock.
#[derive(Clone, Debug)]
pub(crate) struct Guard {
    gens: [String; 3],
    token: Option<String>,
}

impl Guard {
    pub(crate) fn holds_lock(&self) -> bool {
        self.token.is_some()
    }
}

/// One value to write back.
pub(crate) struct Write {
    pub(crate) key: CacheKey,
    pub(crate) bytes: Vec<u8>,
    pub(crate) ttl_ms: u64,
    pub(crate) guard: Guard,
}

/// What polling a locked key found.
pub(crate) struct Polled {
    pub(crate) value: Option<Vec<u8>>,
    pub(crate) locked: bool,
}

pub(crate) struct L2 {
    redis: Redis,
    lock_ttl_ms: u64,
    gen_ttl_ms: u64,
}

impl L2 {
    pub(crate) fn new(redis: Redis, config: &CacheConfig) -> Self {
        Self {
            redis,
            lock_ttl_ms: millis(config.lock_ttl),
            gen_ttl_ms: millis(config.generation_ttl),
        }
    }

    pub(crate) fn redis(&self) -> &Redis {
        &self.redis
    }

    /// One `MGET` of the keys' values.
    pub(crate) async fn mget(&self, keys: &[CacheKey]) -> Result<Vec<Option<Vec<u8>>>, L2Error> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmd = redis::cmd("MGET");
        for key in keys {
            cmd.arg(keys::entry(key));
        }
        let values: Vec<Option<Vec<u8>>> = self.redis.cmd("mget", &cmd).await?;
        if values.len() != keys.len() {
            return Err(L2Error::Answer(format!(
                "MGET answered {} values for {} keys",
                values.len(),
                keys.len()
            )));
        }
        Ok(values)
    }

    /// Tries to take the load lock of every key, reads the generations the
    /// write-back will be checked against, and reads the value again (a
    /// loader may have finished since the `MGET`: a lock taken free after
    /// its write-back finds its value); one round trip.
    pub(crate) async fn acquire(
        &self,
        keys: &[CacheKey],
    ) -> Result<Vec<(Guard, Option<Vec<u8>>)>, L2Error> {
        let token = format!("{:016x}", rand::random::<u64>());
        let mut scopes: Vec<String> = Vec::new();
        let mut scope_index: HashMap<String, usize> = HashMap::new();
        let mut cmds = Vec::with_capacity(keys.len() * 3 + 4);
        for key in keys {
            let mut lock = redis::cmd("SET");
            lock.arg(keys::load_lock(key))
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(self.lock_ttl_ms);
            cmds.push(lock);
            cmds.push(get(keys::generation(key)));
            cmds.push(get(keys::entry(key)));
            for scope in [
                keys::scope_generation(key.kind(), None),
                keys::scope_generation(key.kind(), Some(key.cluster)),
            ] {
                if !scope_index.contains_key(&scope) {
                    scope_index.insert(scope.clone(), scopes.len());
                    scopes.push(scope);
                }
            }
        }
        for scope in &scopes {
            cmds.push(get(scope.clone()));
        }
        let values = self.redis.batch("acquire", cmds).await?;
        if values.len() != keys.len() * 3 + scopes.len() {
            return Err(L2Error::Answer("short answer to the lock pipeline".into()));
        }
        let scope_gen = |name: String| -> String {
            scope_index
                .get(&name)
                .and_then(|i| values.get(keys.len() * 3 + i))
                .and_then(value_string)
                .unwrap_or_else(|| "0".into())
        };
        let guards = keys
            .iter()
            .enumerate()
            .map(|(i, key)| {
                let won = matches!(&values[3 * i], Value::Okay)
                    || matches!(&values[3 * i], Value::SimpleString(s) if s == "OK");
                let guard = Guard {
                    gens: [
                        value_string(&values[3 * i + 1]).unwrap_or_else(|| "0".into()),
                        scope_gen(keys::scope_generation(key.kind(), None)),
                        scope_gen(keys::scope_generation(key.kind(), Some(key.cluster))),
                    ],
                    token: won.then(|| token.clone()),
                };
                let value = match &values[3 * i + 2] {
                    Value::BulkString(bytes) => Some(bytes.clone()),
                    _ => None,
                };
                (guard, value)
            })
            .collect();
        Ok(guards)
    }

    /// Reads the values and whether their locks are still held.
    pub(crate) async fn poll(&self, keys: &[CacheKey]) -> Result<Vec<Polled>, L2Error> {
        let mut cmd = redis::cmd("MGET");
        for key in keys {
            cmd.arg(keys::entry(key));
        }
        for key in keys {
            cmd.arg(keys::load_lock(key));
        }
        let values: Vec<Option<Vec<u8>>> = self.redis.cmd("poll", &cmd).await?;
        if values.len() != keys.len() * 2 {
            return Err(L2Error::Answer("short answer to the poll".into()));
        }
        let (vals, locks) = values.split_at(keys.len());
        Ok(vals
            .iter()
            .zip(locks)
            .map(|(value, lock)| Polled {
                value: value.clone(),
                locked: lock.is_some(),
            })
            .collect())
    }

    /// Writes values back (each only if its generations did not move),
    /// releases locks of loads that wrote nothing, and deletes undecodable
    /// values; one pipeline. Returns how many writes were refused because
    /// of an invalidation.
    pub(crate) async fn write_back(
        &self,
        writes: &[Write],
        releases: &[(CacheKey, Guard)],
        deletes: &[CacheKey],
    ) -> Result<u64, L2Error> {
        if writes.is_empty() && deletes.is_empty() && !releases.iter().any(|(_, g)| g.holds_lock())
        {
            return Ok(0);
        }
        let cluster = self.redis.is_cluster();
        let mut cmds = Vec::with_capacity(deletes.len() + writes.len() + releases.len());
        for key in deletes {
            cmds.push(redis::cmd("DEL").arg(keys::entry(key)).clone());
        }
        for w in writes {
            let mut eval = redis::cmd("EVAL");
            eval.arg(WRITE_SCRIPT).arg(if cluster { 4 } else { 5 });
            eval.arg(keys::entry(&w.key))
                .arg(keys::generation(&w.key))
                .arg(keys::scope_generation(w.key.kind(), Some(w.key.cluster)))
                .arg(keys::load_lock(&w.key));
            if !cluster {
                eval.arg(keys::scope_generation(w.key.kind(), None));
            }
            eval.arg(&w.bytes)
                .arg(w.ttl_ms.max(1))
                .arg(&w.guard.gens[0])
                .arg(&w.guard.gens[2])
                .arg(w.guard.token.as_deref().unwrap_or(""))
                .arg(&w.guard.gens[1]);
            cmds.push(eval);
        }
        for (key, guard) in releases {
            if let Some(token) = &guard.token {
                let mut eval = redis::cmd("EVAL");
                eval.arg(RELEASE_SCRIPT)
                    .arg(1)
                    .arg(keys::load_lock(key))
                    .arg(token);
                cmds.push(eval);
            }
        }
        let replies = self.redis.batch("write_back", cmds).await?;
        let written: Vec<i64> = replies
            .iter()
            .skip(deletes.len())
            .take(writes.len())
            .map(|v| match v {
                Value::Int(n) => *n,
                _ => 0,
            })
            .collect();
        let mut refused = written.iter().filter(|w| **w == 0).count() as u64;
        if cluster {
            refused += self.undo_across_scope(writes, &written).await?;
        }
        Ok(refused)
    }

    /// On Redis Cluster the all-clusters scope generation lives in another
    /// slot than what a write touches: read it after the writes, and delete
    /// what was written if it moved since the load began. A scope
    /// invalidation bumps it before it deletes the scope's keys, so a write
    /// it races is removed either here (bump seen) or by its delete (bump
    /// after this read, delete after the write). Returns how many were
    /// undone.
    async fn undo_across_scope(&self, writes: &[Write], written: &[i64]) -> Result<u64, L2Error> {
        let done: Vec<&Write> = writes
            .iter()
            .zip(written)
            .filter(|(_, w)| **w == 1)
            .map(|(w, _)| w)
            .collect();
        if done.is_empty() {
            return Ok(0);
        }
        let gets = done
            .iter()
            .map(|w| get(keys::scope_generation(w.key.kind(), None)))
            .collect();
        let now: Vec<Option<String>> = self
            .redis
            .batch("scope_check", gets)
            .await?
            .iter()
            .map(value_string)
            .collect();
        let stale: Vec<String> = done
            .iter()
            .zip(&now)
            .filter(|(w, now)| now.as_deref().unwrap_or("0") != w.guard.gens[1])
            .map(|(w, _)| keys::entry(&w.key))
            .collect();
        if !stale.is_empty() {
            let mut del = redis::cmd("DEL");
            del.arg(&stale);
            self.redis.cmd::<u64>("scope_undo", &del).await?;
        }
        Ok(stale.len() as u64)
    }

    /// Deletes a key, bumps its generation and tells every replica.
    pub(crate) async fn invalidate(&self, key: &CacheKey, message: &str) -> Result<(), L2Error> {
        self.change("invalidate", key, None, message).await
    }

    /// Sets a key's new value (for `ttl_ms`), bumps its generation and
    /// tells every replica.
    pub(crate) async fn replace(
        &self,
        key: &CacheKey,
        bytes: &[u8],
        ttl_ms: u64,
        message: &str,
    ) -> Result<(), L2Error> {
        self.change("replace", key, Some((bytes, ttl_ms)), message)
            .await
    }

    /// One pipeline: the key deleted (or set to `value`), its generation
    /// bumped so loads that began before write nothing back, and `message`
    /// published to every replica.
    async fn change(
        &self,
        op: &'static str,
        key: &CacheKey,
        value: Option<(&[u8], u64)>,
        message: &str,
    ) -> Result<(), L2Error> {
        let generation = keys::generation(key);
        let mut writes = Vec::with_capacity(3);
        if value.is_none() {
            writes.push(redis::cmd("DEL").arg(keys::entry(key)).clone());
        }
        writes.push(redis::cmd("INCR").arg(&generation).clone());
        writes.push(
            redis::cmd("PEXPIRE")
                .arg(&generation)
                .arg(self.gen_ttl_ms)
                .clone(),
        );
        if let Some((bytes, ttl_ms)) = value {
            writes.push(
                redis::cmd("SET")
                    .arg(keys::entry(key))
                    .arg(bytes)
                    .arg("PX")
                    .arg(ttl_ms.max(1))
                    .clone(),
            );
        }
        let publish = self
            .redis
            .publish_cmd(Topic::Invalidation, message.as_bytes());
        if self.redis.is_cluster() {
            // The channel's slot may be another node's: replicas must not
            // hear of the change before it is in place.
            self.redis.batch(op, writes).await?;
            self.redis.batch(op, vec![publish]).await.map(|_| ())
        } else {
            writes.push(publish);
            self.redis.batch(op, writes).await.map(|_| ())
        }
    }

    /// Bumps a scope's generation, deletes its keys (SCAN MATCH), then tells
    /// every replica. Returns how many keys were deleted.
    pub(crate) async fn invalidate_scope(
        &self,
        kind: Kind,
        cluster: Option<u64>,
        message: &str,
    ) -> Result<u64, L2Error> {
        let generation = keys::scope_generation(kind, cluster);
        let mut pipe = redis::pipe();
        pipe.cmd("INCR").arg(&generation).ignore();
        pipe.cmd("PEXPIRE")
            .arg(&generation)
            .arg(self.gen_ttl_ms)
            .ignore();
        self.redis.pipe::<()>("invalidate_scope", &pipe).await?;

        let pattern = keys::scope_pattern(kind, cluster);
        let tag = cluster.map(keys::cluster_tag);
        let deleted = self.redis.unlink_matching(&pattern, tag.as_deref()).await?;
        let publish = self
            .redis
            .publish_cmd(Topic::Invalidation, message.as_bytes());
        self.redis.cmd::<Value>("publish", &publish).await?;
        Ok(deleted)
    }
}

fn get(key: String) -> redis::Cmd {
    let mut cmd = redis::cmd("GET");
    cmd.arg(key);
    cmd
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
