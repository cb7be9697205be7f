//! L2: the Redis tier shared by every replica (deadpool-redis pool).
//!
//! Every command goes through [`L2::query`]: skipped while the circuit is
//! open, bounded by the per-command timeout, and its failure is counted,
//! never returned to a lookup. Besides plain reads (one `MGET` per batch)
//! it keeps the cross-process parts of consistency:
//!
//! - the load lock `dfgraph:v1:lock:{kind}:{cluster}:{id}` (`SET NX PX`),
//!   so one replica loads a cold key while the others wait for its value;
//! - generation counters, bumped by invalidation (`dfgraph:v1:gen:…` per
//!   key, `dfgraph:v1:gen-scope:{kind}[:{cluster}]` per scope), read before
//!   a load calls its origin and compared by a Lua script that writes the
//!   value back only if none moved meanwhile.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use deadpool_redis::redis::{self, AsyncConnectionConfig, FromRedisValue, Value};
use deadpool_redis::{Manager, Pool, Runtime};

use super::circuit::Circuit;
use super::keys::{self, INVALIDATION_CHANNEL};
use super::stats::Stats;
use super::{CacheConfig, CacheKey, Kind};
use crate::clock::SystemClock;

/// Sets the value only if no generation moved since the load read them;
/// releases the load lock if this load holds it. Returns 1 if written.
const WRITE_SCRIPT: &str = r"
local function gen(k)
  local v = redis.call('GET', k)
  if v then return v end
  return '0'
end
local ok = gen(KEYS[2]) == ARGV[3] and gen(KEYS[3]) == ARGV[4] and gen(KEYS[4]) == ARGV[5]
if ok then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
if ARGV[6] ~= '' and redis.call('GET', KEYS[5]) == ARGV[6] then
  redis.call('DEL', KEYS[5])
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

/// Why a Redis command did not answer. Logged and counted, never shown to
/// a caller of the cache.
#[derive(Debug, thiserror::Error)]
pub(crate) enum L2Error {
    #[error("circuit open")]
    CircuitOpen,
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("no connection: {0}")]
    Pool(String),
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
}

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
    pool: Pool,
    client: redis::Client,
    circuit: Circuit,
    timeout: Duration,
    lock_ttl_ms: u64,
    gen_ttl_ms: u64,
    stats: Arc<Stats>,
    /// The URL with its password hidden, for logs and errors.
    shown_url: String,
}

enum Req<'a> {
    Cmd(&'a redis::Cmd),
    Pipe(&'a redis::Pipeline),
}

impl L2 {
    pub(crate) fn new(url: &str, config: &CacheConfig, stats: Arc<Stats>) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| e.to_string())?;
        let conn_config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.command_timeout));
        let manager = Manager::new_with_config(url, conn_config).map_err(|e| e.to_string())?;
        let pool = Pool::builder(manager)
            .max_size(config.redis_pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(config.command_timeout))
            .create_timeout(Some(config.connect_timeout))
            .recycle_timeout(Some(config.command_timeout))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            pool,
            client,
            circuit: Circuit::new(
                config.circuit_failure_threshold,
                config.circuit_backoff_min,
                config.circuit_backoff_max,
                stats.clone(),
                Arc::new(SystemClock),
            ),
            timeout: config.command_timeout,
            lock_ttl_ms: millis(config.lock_ttl),
            gen_ttl_ms: millis(config.generation_ttl),
            stats,
            shown_url: redact_url(url),
        })
    }

    pub(crate) fn client(&self) -> &redis::Client {
        &self.client
    }

    pub(crate) fn shown_url(&self) -> &str {
        &self.shown_url
    }

    pub(crate) fn circuit(&self) -> &Circuit {
        &self.circuit
    }

    async fn query<T: FromRedisValue>(&self, op: &'static str, req: Req<'_>) -> Result<T, L2Error> {
        let Ok(ticket) = self.circuit.admit() else {
            return Err(L2Error::CircuitOpen);
        };
        let run = async {
            let mut conn = self
                .pool
                .get()
                .await
                .map_err(|e| L2Error::Pool(e.to_string()))?;
            let value = match req {
                Req::Cmd(cmd) => cmd.query_async::<T>(&mut conn).await?,
                Req::Pipe(pipe) => pipe.query_async::<T>(&mut conn).await?,
            };
            Ok::<T, L2Error>(value)
        };
        let result = match tokio::time::timeout(self.timeout, run).await {
            Ok(result) => result,
            Err(_) => Err(L2Error::Timeout(self.timeout)),
        };
        self.circuit.finish(ticket, result.is_ok());
        if let Err(error) = &result {
            self.stats.redis_error();
            tracing::debug!(op, %error, "Redis command failed");
        }
        result
    }

    /// Checks at start-up that Redis answers (and accepts our credentials),
    /// bypassing the circuit, within `within`.
    pub(crate) async fn ping(&self, within: Duration) -> Result<(), L2Error> {
        let run = async {
            let mut conn = self
                .pool
                .get()
                .await
                .map_err(|e| L2Error::Pool(e.to_string()))?;
            redis::cmd("PING").query_async::<()>(&mut conn).await?;
            Ok::<(), L2Error>(())
        };
        match tokio::time::timeout(within, run).await {
            Ok(result) => result,
            Err(_) => Err(L2Error::Timeout(within)),
        }
    }

    /// Warns when Redis may refuse writes or evict only keys with a TTL
    /// (every cache key has one, but so may more precious data).
    pub(crate) async fn check_eviction_policy(&self) {
        let mut cmd = redis::cmd("CONFIG");
        cmd.arg("GET").arg("maxmemory-policy");
        let run = async {
            let mut conn = self.pool.get().await.ok()?;
            cmd.query_async::<Value>(&mut conn).await.ok()
        };
        let Ok(Some(value)) = tokio::time::timeout(self.timeout, run).await else {
            tracing::debug!("cannot read Redis maxmemory-policy (denied or unsupported)");
            return;
        };
        let policy = match value {
            Value::Array(items) => items.get(1).and_then(value_string),
            Value::Map(pairs) => pairs.first().and_then(|(_, v)| value_string(v)),
            _ => None,
        };
        match policy.as_deref() {
            Some("noeviction") => tracing::warn!(
                url = %self.shown_url,
                "Redis maxmemory-policy is noeviction: when full, cache writes fail; \
                 use allkeys-lru or allkeys-lfu for a cache"
            ),
            Some(p) if p.starts_with("volatile-") => tracing::warn!(
                url = %self.shown_url,
                policy = p,
                "Redis evicts only keys with a TTL; cache keys compete with other \
                 expiring data; allkeys-lru or allkeys-lfu suits a cache better"
            ),
            _ => {}
        }
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
        let values: Vec<Option<Vec<u8>>> = self.query("mget", Req::Cmd(&cmd)).await?;
        if values.len() != keys.len() {
            return Err(L2Error::Pool(format!(
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
        let mut pipe = redis::pipe();
        for key in keys {
            pipe.cmd("SET")
                .arg(keys::load_lock(key))
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(self.lock_ttl_ms);
            pipe.cmd("GET").arg(keys::generation(key));
            pipe.cmd("GET").arg(keys::entry(key));
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
            pipe.cmd("GET").arg(scope);
        }
        let values: Vec<Value> = self.query("acquire", Req::Pipe(&pipe)).await?;
        if values.len() != keys.len() * 3 + scopes.len() {
            return Err(L2Error::Pool("short answer to the lock pipeline".into()));
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
        let values: Vec<Option<Vec<u8>>> = self.query("poll", Req::Cmd(&cmd)).await?;
        if values.len() != keys.len() * 2 {
            return Err(L2Error::Pool("short answer to the poll".into()));
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
        let mut pipe = redis::pipe();
        for key in deletes {
            pipe.cmd("DEL").arg(keys::entry(key)).ignore();
        }
        for w in writes {
            pipe.cmd("EVAL")
                .arg(WRITE_SCRIPT)
                .arg(5)
                .arg(keys::entry(&w.key))
                .arg(keys::generation(&w.key))
                .arg(keys::scope_generation(w.key.kind(), None))
                .arg(keys::scope_generation(w.key.kind(), Some(w.key.cluster)))
                .arg(keys::load_lock(&w.key))
                .arg(&w.bytes)
                .arg(w.ttl_ms.max(1))
                .arg(&w.guard.gens[0])
                .arg(&w.guard.gens[1])
                .arg(&w.guard.gens[2])
                .arg(w.guard.token.as_deref().unwrap_or(""));
        }
        for (key, guard) in releases {
            if let Some(token) = &guard.token {
                pipe.cmd("EVAL")
                    .arg(RELEASE_SCRIPT)
                    .arg(1)
                    .arg(keys::load_lock(key))
                    .arg(token)
                    .ignore();
            }
        }
        let written: Vec<i64> = self.query("write_back", Req::Pipe(&pipe)).await?;
        Ok(written.iter().filter(|w| **w == 0).count() as u64)
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
        let mut pipe = redis::pipe();
        if value.is_none() {
            pipe.cmd("DEL").arg(keys::entry(key)).ignore();
        }
        pipe.cmd("INCR").arg(&generation).ignore();
        pipe.cmd("PEXPIRE")
            .arg(&generation)
            .arg(self.gen_ttl_ms)
            .ignore();
        if let Some((bytes, ttl_ms)) = value {
            pipe.cmd("SET")
                .arg(keys::entry(key))
                .arg(bytes)
                .arg("PX")
                .arg(ttl_ms.max(1))
                .ignore();
        }
        pipe.cmd("PUBLISH")
            .arg(INVALIDATION_CHANNEL)
            .arg(message)
            .ignore();
        self.query::<()>(op, Req::Pipe(&pipe)).await
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
        self.query::<()>("invalidate_scope", Req::Pipe(&pipe))
            .await?;

        let pattern = keys::scope_pattern(kind, cluster);
        let mut cursor: u64 = 0;
        let mut deleted = 0u64;
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000);
            let (next, keys): (u64, Vec<String>) = self.query("scan", Req::Cmd(&scan)).await?;
            if !keys.is_empty() {
                let mut unlink = redis::cmd("UNLINK");
                unlink.arg(&keys);
                deleted += self.query::<u64>("unlink", Req::Cmd(&unlink)).await?;
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        let mut publish = redis::cmd("PUBLISH");
        publish.arg(INVALIDATION_CHANNEL).arg(message);
        self.query::<()>("publish", Req::Cmd(&publish)).await?;
        Ok(deleted)
    }
}

fn value_string(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `redis://user:secret@host` → `redis://user:***@host`.
pub(crate) fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_string();
    };
    let userinfo = &rest[..at];
    let shown = match userinfo.split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        None => "***".to_string(),
    };
    format!("{}{}{}", &url[..scheme_end + 3], shown, &rest[at..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("redis://dfg:s3cr@t@10.0.0.1:6379/0"),
            "redis://dfg:***@10.0.0.1:6379/0"
        );
        assert_eq!(redact_url("rediss://:pw@h:1"), "rediss://:***@h:1");
        assert_eq!(redact_url("redis://h:6379"), "redis://h:6379");
        assert_eq!(redact_url("redis://token@h"), "redis://***@h");
    }
}
