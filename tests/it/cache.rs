//! The two-tier cache against a real Redis (one `redis-server` per test)
//! and a counting in-test origin.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::support::redis::RedisServer;
use dfgraph::cache::{
    Cache, CacheConfig, CacheError, CacheKey, Codec, EncryptionConfig, Header, KeyRing, Kind,
    KindTtl, Origin, OriginResult, Tier, TypedCache,
};
use dfgraph::clock::{Clock, ManualClock, SystemClock};
use dfgraph::deadline::Deadline;
use futures::future::BoxFuture;
use redis::Commands;

#[derive(Clone, PartialEq, prost::Message)]
struct Val {
    #[prost(string, tag = "1")]
    text: String,
}

#[derive(Clone, Debug, PartialEq)]
struct TestError(String);

impl fmt::Display for TestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An origin that counts its calls, with controllable values, errors and
/// latency. Values are read when a load starts.
#[derive(Clone, Default)]
struct TestOrigin {
    state: Arc<OriginState>,
}

#[derive(Default)]
struct OriginState {
    values: Mutex<HashMap<String, String>>,
    loads: AtomicUsize,
    keys: AtomicUsize,
    fail: AtomicBool,
    latency_ms: AtomicU64,
    /// The deadline of every load, in call order.
    deadlines: Mutex<Vec<Deadline>>,
}

impl TestOrigin {
    fn set(&self, id: &str, text: &str) {
        self.state
            .values
            .lock()
            .unwrap()
            .insert(id.into(), text.into());
    }
    fn fail(&self, on: bool) {
        self.state.fail.store(on, Ordering::SeqCst);
    }
    fn latency(&self, ms: u64) {
        self.state.latency_ms.store(ms, Ordering::SeqCst);
    }
    fn loads(&self) -> usize {
        self.state.loads.load(Ordering::SeqCst)
    }
    fn keys_loaded(&self) -> usize {
        self.state.keys.load(Ordering::SeqCst)
    }
}

impl Origin<Val> for TestOrigin {
    type Error = TestError;

    fn load(
        &self,
        keys: Vec<CacheKey>,
        deadline: Deadline,
    ) -> BoxFuture<'static, HashMap<CacheKey, OriginResult<Val, TestError>>> {
        let state = self.state.clone();
        state.deadlines.lock().unwrap().push(deadline);
        Box::pin(async move {
            state.loads.fetch_add(1, Ordering::SeqCst);
            state.keys.fetch_add(keys.len(), Ordering::SeqCst);
            let fail = state.fail.load(Ordering::SeqCst);
            let snapshot = state.values.lock().unwrap().clone();
            let latency = state.latency_ms.load(Ordering::SeqCst);
            if latency > 0 {
                tokio::time::sleep(Duration::from_millis(latency)).await;
            }
            keys.into_iter()
                .map(|key| {
                    let result = if fail {
                        Err(TestError("scheduler down".into()))
                    } else {
                        Ok(snapshot
                            .get(key.id().as_ref())
                            .map(|t| Val { text: t.clone() }))
                    };
                    (key, result)
                })
                .collect()
        })
    }
}

fn task(id: &str) -> CacheKey {
    CacheKey::task(1, id)
}

fn config(redis: Option<&RedisServer>) -> CacheConfig {
    CacheConfig {
        redis_url: redis.map(RedisServer::url),
        connect_timeout: Duration::from_millis(500),
        circuit_failure_threshold: 3,
        circuit_backoff_min: Duration::from_millis(50),
        circuit_backoff_max: Duration::from_millis(300),
        refresh_ahead_min_hits: 0,
        ..CacheConfig::default()
    }
}

async fn typed(
    config: CacheConfig,
    clock: Arc<dyn Clock>,
    origin: &TestOrigin,
) -> TypedCache<Val, TestOrigin> {
    Cache::connect(config, clock)
        .await
        .expect("cache starts")
        .typed(origin.clone())
}

async fn get(cache: &TypedCache<Val, TestOrigin>, key: &CacheKey) -> dfgraph::cache::Fetched<Val> {
    cache
        .get_many(std::slice::from_ref(key), Deadline::NONE)
        .await
        .remove(key)
        .expect("an answer per key")
        .expect("a value")
}

fn text(f: &dfgraph::cache::Fetched<Val>) -> &str {
    f.value.as_ref().map_or("<none>", |v| v.text.as_str())
}

/// True once `key` shows up in Redis (write-backs follow the answer).
async fn in_redis(redis: &RedisServer, key: &CacheKey) -> bool {
    let mut conn = redis.conn();
    let redis_key = key.redis_key();
    eventually(Duration::from_millis(500), || {
        conn.exists::<_, bool>(&redis_key).unwrap_or(false)
    })
    .await
}

fn in_redis_now(redis: &RedisServer, key: &CacheKey) -> bool {
    redis
        .conn()
        .exists::<_, bool>(key.redis_key())
        .unwrap_or(false)
}

/// Polls `cond` every 5 ms until true or `within` passes.
async fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cond()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_stale_and_expired_with_manual_clock() {
    let clock = ManualClock::new();
    let origin = TestOrigin::default();
    origin.set("a", "v1");
    let cache = typed(config(None), Arc::new(clock.clone()), &origin).await;
    let a = task("a");

    let first = get(&cache, &a).await;
    assert_eq!(
        (text(&first), first.tier, first.stale),
        ("v1", Tier::Origin, false)
    );

    clock.advance(Duration::from_secs(10));
    let hit = get(&cache, &a).await;
    assert_eq!(
        (hit.tier, hit.stale, hit.age),
        (Tier::L1, false, Duration::from_secs(10))
    );
    assert_eq!(origin.loads(), 1, "within fresh: no origin call");

    // Past fresh: reloaded.
    origin.set("a", "v2");
    clock.advance(Duration::from_secs(25));
    let reloaded = get(&cache, &a).await;
    assert_eq!((text(&reloaded), reloaded.tier), ("v2", Tier::Origin));
    assert_eq!(origin.loads(), 2);

    // Past fresh with the origin failing: the old value, marked stale.
    origin.fail(true);
    clock.advance(Duration::from_secs(31));
    let stale = get(&cache, &a).await;
    assert_eq!(
        (text(&stale), stale.tier, stale.stale),
        ("v2", Tier::L1, true)
    );
    assert_eq!(stale.age, Duration::from_secs(31));
    assert_eq!(origin.loads(), 3, "a reload was attempted");

    // Still within stale (fresh 30 s + stale 300 s).
    clock.advance(Duration::from_secs(290));
    assert!(get(&cache, &a).await.stale);

    // Past stale: the error.
    clock.advance(Duration::from_secs(10));
    let err = cache
        .get_many(std::slice::from_ref(&a), Deadline::NONE)
        .await
        .remove(&a)
        .unwrap();
    assert_eq!(err.unwrap_err(), TestError("scheduler down".into()));

    // Recovery.
    origin.fail(false);
    let back = get(&cache, &a).await;
    assert_eq!(
        (text(&back), back.tier, back.stale),
        ("v2", Tier::Origin, false)
    );
    let stats = cache.cache().stats();
    assert_eq!(stats.l1_hits, 1);
    assert_eq!(stats.l1_misses, 6);
    assert_eq!(stats.origin_stale, 2);
    assert_eq!(stats.origin_misses, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_found_is_cached_for_negative_ttl() {
    let clock = ManualClock::new();
    let origin = TestOrigin::default();
    let cache = typed(config(None), Arc::new(clock.clone()), &origin).await;
    let gone = task("gone");
    let first = get(&cache, &gone).await;
    assert!(first.value.is_none());
    let second = get(&cache, &gone).await;
    assert!(second.value.is_none());
    assert_eq!(second.tier, Tier::L1);
    assert_eq!(origin.loads(), 1);
    clock.advance(Duration::from_secs(6));
    origin.set("gone", "here now");
    assert_eq!(text(&get(&cache, &gone).await), "here now");
    assert_eq!(origin.loads(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate_serves_at_once_and_reloads_in_background() {
    let clock = ManualClock::new();
    let origin = TestOrigin::default();
    origin.set("a", "v1");
    let mut cfg = config(None);
    cfg.task = KindTtl {
        stale_while_revalidate: true,
        ..KindTtl::default()
    };
    let cache = typed(cfg, Arc::new(clock.clone()), &origin).await;
    let a = task("a");
    get(&cache, &a).await;
    origin.set("a", "v2");
    origin.latency(200);
    clock.advance(Duration::from_secs(31));
    let started = Instant::now();
    let stale = get(&cache, &a).await;
    assert!(
        started.elapsed() < Duration::from_millis(150),
        "served at once"
    );
    assert_eq!(
        (text(&stale), stale.stale, stale.tier),
        ("v1", true, Tier::L1)
    );
    assert!(
        eventually(Duration::from_secs(2), || origin.loads() == 2).await,
        "background reload"
    );
    let mut fresh = get(&cache, &a).await;
    for _ in 0..100 {
        if text(&fresh) == "v2" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        fresh = get(&cache, &a).await;
    }
    assert_eq!(
        (text(&fresh), fresh.stale, fresh.tier),
        ("v2", false, Tier::L1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_from_l2_is_served_when_origin_fails() {
    let redis = RedisServer::start();
    let clock = ManualClock::new();
    let origin = TestOrigin::default();
    origin.set("a", "v1");
    let a = task("a");
    let first = typed(config(Some(&redis)), Arc::new(clock.clone()), &origin).await;
    get(&first, &a).await;
    assert!(in_redis(&redis, &a).await);
    // A new replica (empty L1) after the fresh deadline, origin down.
    clock.advance(Duration::from_secs(60));
    origin.fail(true);
    let second = typed(config(Some(&redis)), Arc::new(clock.clone()), &origin).await;
    let stale = get(&second, &a).await;
    assert_eq!(
        (text(&stale), stale.tier, stale.stale),
        ("v1", Tier::L2, true)
    );
    assert_eq!(stale.age, Duration::from_secs(60));
    // Beyond the stale deadline nothing is served.
    clock.advance(Duration::from_secs(300));
    let third = typed(config(Some(&redis)), Arc::new(clock.clone()), &origin).await;
    assert!(
        third
            .get_many(std::slice::from_ref(&a), Deadline::NONE)
            .await[&a]
            .is_err()
    );
}

/// The request's budget reaches the origin through the cache's spawned
/// leader, with and without Redis; background reloads carry none.
#[tokio::test]
async fn the_callers_deadline_reaches_the_origin_through_the_leader() {
    let redis = RedisServer::start();
    for redis in [None, Some(&redis)] {
        let origin = TestOrigin::default();
        origin.set("a", "v");
        let clock = ManualClock::new();
        let cache = typed(config(redis), Arc::new(clock.clone()), &origin).await;
        let key = task("a");
        let deadline = Deadline::at(Instant::now() + Duration::from_secs(1));
        let got = cache.get_many(std::slice::from_ref(&key), deadline).await;
        assert_eq!(text(got[&key].as_ref().unwrap()), "v");
        let disabled = typed(
            CacheConfig {
                enabled: false,
                ..config(redis)
            },
            Arc::new(clock.clone()),
            &origin,
        )
        .await;
        disabled
            .get_many(std::slice::from_ref(&key), deadline)
            .await;
        assert_eq!(
            *origin.state.deadlines.lock().unwrap(),
            vec![deadline, deadline]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_misses_make_one_origin_load() {
    let redis = RedisServer::start();
    let origin = TestOrigin::default();
    origin.set("hot", "v");
    origin.latency(100);
    let cache = typed(config(Some(&redis)), Arc::new(SystemClock), &origin).await;
    let key = task("hot");
    let readers: Vec<_> = (0..100)
        .map(|_| {
            let cache = cache.clone();
            let key = key.clone();
            tokio::spawn(async move { get(&cache, &key).await })
        })
        .collect();
    for reader in readers {
        assert_eq!(text(&reader.await.unwrap()), "v");
    }
    assert_eq!(origin.loads(), 1);
    assert!(cache.cache().stats().singleflight_joins >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_origin_load_through_the_redis_lock() {
    let redis = RedisServer::start();
    let origin = TestOrigin::default();
    origin.set("cold", "v");
    origin.latency(150);
    let a = typed(config(Some(&redis)), Arc::new(SystemClock), &origin).await;
    let b = typed(config(Some(&redis)), Arc::new(SystemClock), &origin).await;
    let key = task("cold");
    let (ra, rb) = tokio::join!(get(&a, &key), get(&b, &key));
    assert_eq!((text(&ra), text(&rb)), ("v", "v"));
    assert_eq!(origin.loads(), 1, "one replica loads, the other waits");
    let (sa, sb) = (a.cache().stats(), b.cache().stats());
    assert_eq!(sa.lock_waits + sb.lock_waits, 1);
    assert_eq!(sa.l2_hits + sb.l2_hits, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_lock_holder_does_not_block_past_lock_ttl() {
    let redis = RedisServer::start();
    let origin = TestOrigin::default();
    origin.set("k", "v");
    let mut cfg = config(Some(&redis));
    cfg.lock_ttl = Duration::from_millis(300);
    let cache = typed(cfg, Arc::new(SystemClock), &origin).await;
    // A replica took the lock and died.
    let _: () = redis
        .conn()
        .set_options(
            dfgraph::cache::keys::load_lock(&task("k")),
            "dead",
            redis::SetOptions::default().with_expiration(redis::SetExpiry::PX(10_000)),
        )
        .unwrap();
    let started = Instant::now();
    assert_eq!(text(&get(&cache, &task("k")).await), "v");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250),
        "waited for the holder: {took:?}"
    );
    assert!(
        took < Duration::from_millis(1000),
        "not past lock_ttl: {took:?}"
    );
    assert_eq!(origin.loads(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidation_reaches_the_other_replica_within_100ms() {
    let redis = RedisServer::start();
    let origin = TestOrigin::default();
    for id in ["a", "b"] {
        origin.set(id, "v");
    }
    let a = typed(config(Some(&redis)), Arc::new(SystemClock), &origin).await;
    let b = typed(config(Some(&redis)), Arc::new(SystemClock), &origin).await;
    let key = task("a");
    get(&a, &key).await;
    let on_b = get(&b, &key).await;
    assert_eq!(on_b.tier, Tier::L2);
    assert!(b.cache().l1_contains(&key));

    let sent = Instant::now();
    a.cache().invalidate(&key).await;
    assert!(!a.cache().l1_contains(&key));
    assert!(
        eventually(Duration::from_millis(100), || !b.cache().l1_contains(&key)).await,
        "dropped on the other replica within 100 ms"
    );
    let took = sent.elapsed();
    assert!(took < Duration::from_millis(150), "{took:?}");
    let exists: bool = redis.conn().exists(key.redis_key()).unwrap();
    assert!(!exists, "L2 key deleted");
    assert_eq!(b.cache().stats().invalidations_received, 1);
    assert_eq!(
        a.cache().stats().invalidations_received,
        0,
        "own message ignored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scope_invalidation_drops_l1_and_l2_of_that_scope_only() {
    let redis = RedisServer::start();
    let origin = TestOrigin::default();
    for id in ["x", "y", "z"] {
        origin.set(id, "v");
    }
    let a = typed(config(Some(&redis)), Arc::new(SystemClock), &origin).await;
    let b = typed(config(Some(&redis)), Arc::new(SystemClock), &origin).await;
    let in_scope = [task("x"), task("y")];
    let other = CacheKey::task(2, "z");
    let all: Vec<CacheKey> = in_scope.iter().cloned().chain([other.clone()]).collect();
    a.get_many(&all, Deadline::NONE).await;
    b.get_many(&all, Deadline::NONE).await;
    a.cache().invalidate_scope(Kind::Task, Some(1)).await;
    assert!(
        eventually(Duration::from_millis(200), || in_scope
            .iter()
            .all(|k| !b.cache().l1_contains(k)))
        .await
    );
    assert!(b.cache().l1_contains(&other));
    assert!(a.cache().l1_contains(&other));
    let mut conn = redis.conn();
    for key in &in_scope {
        assert!(!conn.exists::<_, bool>(key.redis_key()).unwrap());
    }
    assert!(conn.exists::<_, bool>(other.redis_key()).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_run_then_back() {
    let mut redis = RedisServer::start();
    let origin = TestOrigin::default();
    for i in 0..400 {
        origin.set(&format!("k{i}"), "v");
    }
    let a = typed(config(Some(&redis)), Arc::new(SystemClock), &origin).await;
    let b = typed(config(Some(&redis)), Arc::new(SystemClock), &origin).await;

    let flow = {
        let a = a.clone();
        tokio::spawn(async move {
            let mut slowest = Duration::ZERO;
            for i in 0..150 {
                let key = task(&format!("k{i}"));
                let started = Instant::now();
                let got = a
                    .get_many(std::slice::from_ref(&key), Deadline::NONE)
                    .await
                    .remove(&key)
                    .unwrap();
                slowest = slowest.max(started.elapsed());
                assert_eq!(text(&got.unwrap()), "v");
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            slowest
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    redis.kill();
    let slowest = flow.await.unwrap();
    assert!(
        slowest < Duration::from_millis(500),
        "slowest lookup {slowest:?}"
    );
    let stats = a.cache().stats();
    assert!(stats.redis_errors > 0);
    assert!(stats.circuit_open, "circuit opened");

    let early = task("k0");
    assert!(a.cache().l1_contains(&early), "cached before the outage");
    redis.restart();
    // Invalidations sent during the outage are lost: the subscriber drops
    // all of L1 when it reconnects.
    assert!(
        eventually(Duration::from_secs(2), || !a.cache().l1_contains(&early)).await,
        "L1 dropped on subscriber reconnect"
    );
    // Lookups bring L2 back once the circuit's probe succeeds; the other
    // replica then finds values in L2.
    let mut i = 200;
    loop {
        let probe = task(&format!("k{i}"));
        assert!(
            a.get_many(std::slice::from_ref(&probe), Deadline::NONE)
                .await[&probe]
                .is_ok()
        );
        if in_redis(&redis, &probe).await && get(&b, &probe).await.tier == Tier::L2 {
            break;
        }
        i += 1;
        assert!(i < 300, "L2 never used again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!a.cache().stats().circuit_open);
    assert!(b.cache().stats().l2_hits >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_redis_costs_a_bounded_delay_then_nothing() {
    let redis = RedisServer::start();
    let origin = TestOrigin::default();
    for i in 0..40 {
        origin.set(&format!("k{i}"), "v");
    }
    let mut cfg = config(Some(&redis));
    cfg.command_timeout = Duration::from_millis(100);
    cfg.circuit_backoff_min = Duration::from_millis(500);
    cfg.circuit_backoff_max = Duration::from_millis(500);
    let cache = typed(cfg, Arc::new(SystemClock), &origin).await;
    get(&cache, &task("k0")).await;
    redis.pause();
    let started = Instant::now();
    let mut last = Duration::ZERO;
    for i in 1..20 {
        let t = Instant::now();
        assert_eq!(text(&get(&cache, &task(&format!("k{i}"))).await), "v");
        last = t.elapsed();
    }
    let total = started.elapsed();
    // Three timed-out commands open the circuit; after that Redis is not
    // even tried (a probe may cost one more timeout).
    assert!(total < Duration::from_millis(900), "total {total:?}");
    assert!(last < Duration::from_millis(50), "last lookup {last:?}");
    assert!(cache.cache().stats().circuit_open);
    redis.resume();
    let mut i = 20;
    while !in_redis_now(&redis, &task(&format!("k{}", i - 1))) {
        assert!(i < 40, "L2 never used again after resume");
        tokio::time::sleep(Duration::from_millis(100)).await;
        get(&cache, &task(&format!("k{i}"))).await;
        i += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_degraded_while_redis_is_down_and_uses_it_once_up() {
    let mut redis = RedisServer::start();
    redis.kill();
    let origin = TestOrigin::default();
    for i in 0..40 {
        origin.set(&format!("k{i}"), "v");
    }
    let cache = typed(config(Some(&redis)), Arc::new(SystemClock), &origin).await;
    assert!(!cache.cache().redis_available());
    assert_eq!(text(&get(&cache, &task("k0")).await), "v");
    redis.restart();
    let mut i = 1;
    loop {
        let key = task(&format!("k{i}"));
        get(&cache, &key).await;
        if in_redis(&redis, &key).await {
            break;
        }
        i += 1;
        assert!(i < 40, "L2 never used");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(cache.cache().redis_available());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_values_are_misses_deleted_and_reloaded() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let keys_file = dir.path().join("keys");
    std::fs::write(&keys_file, format!("1:{}\n", "ab".repeat(32))).unwrap();
    let mut cfg = config(Some(&redis));
    cfg.encryption = Some(EncryptionConfig {
        current_key_id: 1,
        keys_file: Some(keys_file),
        keys_env: None,
    });
    let origin = TestOrigin::default();
    for id in ["garbage", "truncated", "other-key", "unknown-id", "doomed"] {
        origin.set(id, "good");
    }
    let cache = typed(cfg, Arc::new(SystemClock), &origin).await;
    let codec = cache.cache().codec().clone();
    let now = SystemClock.now_ms();
    let header = Header {
        fetched_at: now,
        fresh_until: now + 30_000,
        stale_until: now + 330_000,
        tombstone: false,
    };
    let bad = Val { text: "bad".into() };
    let foreign = |id: u8, key: u8| {
        let keys: HashMap<u8, [u8; 32]> = [(id, [key; 32])].into();
        Codec::new(1024, Some(Arc::new(KeyRing::new(id, &keys).unwrap())))
    };
    let mut conn = redis.conn();
    let k = task("garbage");
    let _: () = conn
        .set(k.redis_key(), b"\x00garbage bytes, not a value")
        .unwrap();
    let k = task("truncated");
    let full = codec
        .encode_value(&k.redis_key(), &header, Some(&bad))
        .unwrap();
    let _: () = conn.set(k.redis_key(), &full[..full.len() - 5]).unwrap();
    let k = task("other-key");
    let sealed = foreign(1, 9)
        .encode_value(&k.redis_key(), &header, Some(&bad))
        .unwrap();
    let _: () = conn.set(k.redis_key(), sealed).unwrap();
    let k = task("unknown-id");
    let sealed = foreign(7, 1)
        .encode_value(&k.redis_key(), &header, Some(&bad))
        .unwrap();
    let _: () = conn.set(k.redis_key(), sealed).unwrap();

    let keys: Vec<CacheKey> = ["garbage", "truncated", "other-key", "unknown-id"]
        .into_iter()
        .map(task)
        .collect();
    let got = cache.get_many(&keys, Deadline::NONE).await;
    for key in &keys {
        let fetched = got[key].as_ref().expect("a miss, not an error");
        assert_eq!(
            (text(fetched), fetched.tier),
            ("good", Tier::Origin),
            "{key}"
        );
    }
    // Replaced by good values once the write-back lands.
    let decodes = |conn: &mut redis::Connection, key: &CacheKey| {
        let stored: Option<Vec<u8>> = conn.get(key.redis_key()).unwrap();
        stored.is_some_and(|bytes| {
            codec
                .decode_value::<Val>(&key.redis_key(), &bytes)
                .is_ok_and(|(_, v)| v.is_some_and(|v| v.text == "good"))
        })
    };
    for key in &keys {
        assert!(
            eventually(Duration::from_millis(500), || decodes(&mut conn, key)).await,
            "{key} rewritten"
        );
    }
    assert_eq!(cache.cache().stats().decode_failures, 4);
    assert_eq!(origin.keys_loaded(), 4);

    // With the origin down, the bad value is still deleted.
    origin.fail(true);
    let doomed = task("doomed");
    let _: () = conn
        .set(doomed.redis_key(), b"junk junk junk junk junk junk junk")
        .unwrap();
    assert!(
        cache
            .get_many(std::slice::from_ref(&doomed), Deadline::NONE)
            .await[&doomed]
            .is_err()
    );
    assert!(
        eventually(Duration::from_millis(500), || !conn
            .exists::<_, bool>(doomed.redis_key())
            .unwrap())
        .await,
        "undecodable value deleted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_user_limited_to_dfgraph_keys_and_channels() {
    let redis = RedisServer::start();
    redis.acl_setuser(
        "dfg",
        &[
            "on",
            ">s3cret",
            "resetchannels",
            "~dfgraph:*",
            "&dfgraph:*",
            "+@all",
            "-@dangerous",
        ],
    );
    // The restriction is real.
    let mut limited = redis::Client::open(redis.url_as("dfg", "s3cret"))
        .unwrap()
        .get_connection()
        .unwrap();
    assert!(limited.set::<_, _, ()>("elsewhere", "x").is_err());

    let origin = TestOrigin::default();
    origin.set("a", "v");
    let mut cfg = config(Some(&redis));
    cfg.redis_url = Some(redis.url_as("dfg", "s3cret"));
    cfg.redis_required = true;
    let a = typed(cfg.clone(), Arc::new(SystemClock), &origin).await;
    let b = typed(cfg, Arc::new(SystemClock), &origin).await;
    let key = task("a");
    assert_eq!(get(&a, &key).await.tier, Tier::Origin);
    assert_eq!(get(&b, &key).await.tier, Tier::L2);
    a.cache().invalidate(&key).await;
    assert!(eventually(Duration::from_millis(100), || !b.cache().l1_contains(&key)).await);
    get(&a, &key).await;
    a.cache().invalidate_scope(Kind::Task, None).await;
    assert!(eventually(Duration::from_millis(100), || !b.cache().l1_contains(&key)).await);
    assert_eq!(a.cache().stats().redis_errors, 0);
    assert_eq!(b.cache().stats().redis_errors, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_an_error_when_required_else_degraded() {
    let redis = RedisServer::start();
    redis.acl_setuser(
        "dfg",
        &["on", ">right", "~dfgraph:*", "&dfgraph:*", "+@all"],
    );
    let mut cfg = config(Some(&redis));
    cfg.redis_url = Some(redis.url_as("dfg", "wrong"));
    cfg.redis_required = true;
    let err = match Cache::connect(cfg.clone(), Arc::new(SystemClock)).await {
        Err(err) => err,
        Ok(_) => panic!("must refuse to start"),
    };
    assert!(matches!(err, CacheError::Redis { .. }));
    let shown = err.to_string();
    assert!(shown.contains("credentials refused"), "{shown}");
    assert!(!shown.contains("wrong@"), "password hidden: {shown}");

    cfg.redis_required = false;
    let origin = TestOrigin::default();
    origin.set("a", "v");
    let cache = typed(cfg, Arc::new(SystemClock), &origin).await;
    let started = Instant::now();
    let got = get(&cache, &task("a")).await;
    assert_eq!((text(&got), got.tier), ("v", Tier::Origin));
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "no Redis wait"
    );
    let stats = cache.cache().stats();
    assert!(stats.circuit_open && stats.redis_errors >= 1);
    assert!(!cache.cache().redis_available());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generation_guard_drops_a_slow_load_started_before_invalidation() {
    let redis = RedisServer::start();
    let origin = TestOrigin::default();
    origin.set("a", "old");
    origin.latency(300);
    let cache = typed(config(Some(&redis)), Arc::new(SystemClock), &origin).await;
    let key = task("a");
    let slow = {
        let (cache, key) = (cache.clone(), key.clone());
        tokio::spawn(async move { get(&cache, &key).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    origin.set("a", "new");
    cache.cache().invalidate(&key).await;
    let old = slow.await.unwrap();
    assert_eq!(
        text(&old),
        "old",
        "the caller that asked before gets its answer"
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!cache.cache().l1_contains(&key), "not written to L1");
    assert!(
        !redis.conn().exists::<_, bool>(key.redis_key()).unwrap(),
        "not written to L2"
    );
    origin.latency(0);
    let fresh = get(&cache, &key).await;
    assert_eq!((text(&fresh), fresh.tier), ("new", Tier::Origin));
    assert!(cache.cache().stats().stale_writes_dropped >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generation_guard_holds_across_replicas() {
    let redis = RedisServer::start();
    let origin = TestOrigin::default();
    origin.set("a", "old");
    origin.latency(300);
    let a = typed(config(Some(&redis)), Arc::new(SystemClock), &origin).await;
    let b = typed(config(Some(&redis)), Arc::new(SystemClock), &origin).await;
    let key = task("a");
    let slow = {
        let (a, key) = (a.clone(), key.clone());
        tokio::spawn(async move { get(&a, &key).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    origin.set("a", "new");
    b.cache().invalidate(&key).await;
    assert_eq!(text(&slow.await.unwrap()), "old");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !redis.conn().exists::<_, bool>(key.redis_key()).unwrap(),
        "the Redis generation refused the write"
    );
    assert!(!a.cache().l1_contains(&key), "A's L1 copy dropped");
    origin.latency(0);
    assert_eq!(text(&get(&a, &key).await), "new");
    assert_eq!(text(&get(&b, &key).await), "new");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_keys_are_refreshed_ahead_of_expiry() {
    let clock = ManualClock::new();
    let origin = TestOrigin::default();
    origin.set("hot", "v1");
    let mut cfg = config(None);
    cfg.refresh_ahead_min_hits = 3;
    let cache = typed(cfg, Arc::new(clock.clone()), &origin).await;
    let key = task("hot");
    get(&cache, &key).await;
    for _ in 0..3 {
        get(&cache, &key).await;
    }
    assert_eq!(origin.loads(), 1);
    origin.set("hot", "v2");
    clock.advance(Duration::from_secs(25)); // 83 % of 30 s
    let served = get(&cache, &key).await;
    assert_eq!(
        (text(&served), served.tier),
        ("v1", Tier::L1),
        "served at once"
    );
    assert!(eventually(Duration::from_secs(1), || origin.loads() == 2).await);
    tokio::time::sleep(Duration::from_millis(20)).await;
    clock.advance(Duration::from_secs(10)); // past the first fresh deadline
    let after = get(&cache, &key).await;
    assert_eq!(
        (text(&after), after.tier, after.stale),
        ("v2", Tier::L1, false)
    );
    assert_eq!(origin.loads(), 2);
    assert_eq!(cache.cache().stats().refresh_ahead, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_warms_and_l1_stays_within_its_byte_bound() {
    let origin = TestOrigin::default();
    let big = "x".repeat(4096);
    let keys: Vec<CacheKey> = (0..64)
        .map(|i| {
            origin.set(&format!("h{i}"), &big);
            CacheKey::task(i, format!("h{i}"))
        })
        .collect();
    let mut cfg = config(None);
    cfg.l1_max_bytes = 64 * 1024;
    let cache = typed(cfg, Arc::new(SystemClock), &origin).await;
    let warmed = cache.prefetch(&keys[..4]).await;
    assert_eq!((warmed.ok, warmed.failed), (4, 0));
    assert_eq!(get(&cache, &keys[0]).await.tier, Tier::L1);
    cache.prefetch(&keys).await;
    let bytes = cache.cache().l1_bytes().await;
    assert!(bytes <= 64 * 1024, "L1 holds {bytes} bytes");
    assert!(bytes > 32 * 1024, "L1 holds {bytes} bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_cache_always_asks_the_origin() {
    let origin = TestOrigin::default();
    origin.set("a", "v");
    let mut cfg = config(None);
    cfg.enabled = false;
    let cache = typed(cfg, Arc::new(SystemClock), &origin).await;
    for _ in 0..3 {
        assert_eq!(get(&cache, &task("a")).await.tier, Tier::Origin);
    }
    assert_eq!(origin.loads(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replacement_reaches_every_replica_unless_the_key_changed_while_it_was_fetched() {
    let redis = RedisServer::start();
    let origin = TestOrigin::default();
    let a = typed(config(Some(&redis)), Arc::new(SystemClock), &origin).await;
    let b = typed(config(Some(&redis)), Arc::new(SystemClock), &origin).await;
    let key = task("t");
    origin.set("t", "v1");
    assert_eq!(text(&get(&a, &key).await), "v1");
    assert_eq!(text(&get(&b, &key).await), "v1");
    assert_eq!(origin.loads(), 1, "b read a's write-back");

    // The watcher's way: a mark before fetching, then the value in place.
    let fetched = a.cache().replacement_ticket();
    let replacement = a
        .cache()
        .replacement(key.clone(), Val { text: "v2".into() });
    a.cache().replace(replacement, &fetched).await;
    let here = get(&a, &key).await;
    assert_eq!((text(&here), here.tier), ("v2", Tier::L1));
    // b dropped its copy on the announcement and reads the new one from
    // Redis, not from the origin.
    assert!(eventually(Duration::from_secs(2), || !b.cache().l1_contains(&key)).await);
    let there = get(&b, &key).await;
    assert_eq!((text(&there), there.tier), ("v2", Tier::L2));
    assert_eq!(origin.loads(), 1);
    let counted = a.cache().stats();
    assert_eq!((counted.replacements, counted.replacements_refused), (1, 0));

    // A change of the key while the value was fetched (a mutation's
    // invalidation) wins over the older value.
    let fetched = a.cache().replacement_ticket();
    origin.set("t", "v3");
    a.cache().invalidate(&key).await;
    let late = a.cache().replacement(
        key.clone(),
        Val {
            text: "older".into(),
        },
    );
    a.cache().replace(late, &fetched).await;
    let counted = a.cache().stats();
    assert_eq!((counted.replacements, counted.replacements_refused), (1, 1));
    assert_eq!(text(&get(&a, &key).await), "v3");
    assert!(eventually(Duration::from_secs(2), || !b.cache().l1_contains(&key)).await);
    assert_eq!(text(&get(&b, &key).await), "v3");
}
