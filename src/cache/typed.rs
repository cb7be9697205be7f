//! The way of one lookup through the tiers, for one entry kind.
//!
//! 1. L1: fresh → served. Past fresh but within stale → with
//!    `stale_while_revalidate` served stale at once and reloaded in the
//!    background; otherwise kept as the fallback of the reload.
//! 2. The rest joins a load already in flight in this process, or leads a
//!    new one. Leaders run in a spawned task (a caller giving up does not
//!    strand the others) and hand each key's outcome to every waiter.
//! 3. A leader batch: one `MGET` on L2; then, for what is still missing,
//!    one pipeline taking the cross-process load locks and reading the
//!    generations; one origin call for the keys whose lock it won, while
//!    polling L2 for the keys another replica is loading (taking over if
//!    that replica's lock lapses without a value).
//! 4. Outcomes go to L1 (only if no invalidation came since the load
//!    began), to the waiters, then to L2 in one pipeline of guarded writes.
//!    An origin error serves the fallback (marked stale) until its stale
//!    deadline, then is returned.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::Instrument;

use super::codec::Header;
use super::flight::{self, Leader, Role, Shared};
use super::generation::Ticket;
use super::l1::Entry;
use super::l2::{Guard, Write, millis};
use super::stats::Outcome as Found;
use super::{CacheKey, Fetched, KindTtl, Origin, Tier, TypedCache};
use crate::clock::Millis;
use crate::deadline::Deadline;

type Outcome<V, E> = Result<Fetched<V>, E>;

/// What [`TypedCache::prefetch`] achieved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Prefetched {
    /// Keys now cached (found or not found).
    pub ok: usize,
    /// Keys whose origin failed.
    pub failed: usize,
}

/// A value that may be served if its reload fails.
struct Fallback<V> {
    value: Option<Arc<V>>,
    header: Header,
    tier: Tier,
}

impl<V> Clone for Fallback<V> {
    fn clone(&self) -> Self {
        Self {
            value: self.value.clone(),
            header: self.header,
            tier: self.tier,
        }
    }
}

impl<V> Fallback<V> {
    fn serve(&self, now: Millis) -> Fetched<V> {
        fetched(
            self.value.clone(),
            &self.header,
            now,
            now >= self.header.fresh_until,
            self.tier,
        )
    }

    fn usable(&self, now: Millis) -> bool {
        now < self.header.stale_until
    }
}

fn newer<V>(a: Option<Fallback<V>>, b: Fallback<V>) -> Fallback<V> {
    match a {
        Some(a) if a.header.fetched_at >= b.header.fetched_at => a,
        _ => b,
    }
}

fn fetched<V>(
    value: Option<Arc<V>>,
    header: &Header,
    now: Millis,
    stale: bool,
    tier: Tier,
) -> Fetched<V> {
    Fetched {
        value,
        age: Duration::from_millis(now.saturating_sub(header.fetched_at)),
        stale,
        tier,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// A caller is waiting.
    Read,
    /// Stale served already; reload in the background.
    Revalidate,
    /// Hot and still fresh; reload before it expires.
    RefreshAhead,
}

/// One key of a leader batch.
struct Job<V> {
    leader: Leader,
    fallback: Option<Fallback<V>>,
    /// Accept an L2 value only if fetched after this (background reloads
    /// must not take back the copy they are replacing).
    newer_than: Option<Millis>,
}

impl<V> Job<V> {
    fn key(&self) -> &CacheKey {
        self.leader.key()
    }

    /// The one fresh/stale/miss decision on an L2 value, made the same
    /// way for the `MGET`, the lock pipeline and the polls of a load
    /// another replica leads: fresh only if also newer than the copy this
    /// job replaces; else servable as a fallback until its stale deadline.
    fn judge(&self, decoded: Option<Decoded<V>>, now: Millis) -> L2Read<V> {
        match decoded {
            Some((header, value, len))
                if now < header.fresh_until
                    && self.newer_than.is_none_or(|t| header.fetched_at > t) =>
            {
                L2Read::Fresh { header, value, len }
            }
            Some((header, value, len)) if now < header.stale_until => L2Read::Stale {
                fallback: Fallback {
                    value,
                    header,
                    tier: Tier::L2,
                },
                len,
            },
            _ => L2Read::Miss,
        }
    }
}

/// An L2 value decoded: its header, the value (`None`: not found) and its
/// encoded size.
type Decoded<V> = (Header, Option<Arc<V>>, usize);

/// What an L2 value is worth to a job (see [`Job::judge`]).
enum L2Read<V> {
    /// Served as a hit.
    Fresh {
        header: Header,
        value: Option<Arc<V>>,
        len: usize,
    },
    /// Served if the reload fails (at once with `stale_while_revalidate`).
    Stale { fallback: Fallback<V>, len: usize },
    /// Absent, undecodable or past its stale deadline.
    Miss,
}

/// A waiter's deadline passed before the load it joined ended.
struct PastDeadline;

/// What a leader batch leaves for the final L2 pipeline.
#[derive(Default)]
struct WriteBack {
    writes: Vec<Write>,
    releases: Vec<(CacheKey, Guard)>,
    deletes: Vec<CacheKey>,
}

impl<V, O> TypedCache<V, O>
where
    V: prost::Message + Default + Clone + Send + Sync + 'static,
    O: Origin<V>,
{
    /// Looks every key up: L1, then L2, then the origin for what is left.
    /// Never fails because of the cache itself: an error is the origin's,
    /// for a key with nothing servable.
    ///
    /// Origin calls made for this lookup end by `deadline`, also when they
    /// run in a spawned leader that other lookups join.
    pub async fn get_many(
        &self,
        keys: &[CacheKey],
        deadline: Deadline,
    ) -> HashMap<CacheKey, Result<Fetched<V>, O::Error>> {
        self.lookup(keys, deadline, None).await
    }

    /// [`get_many`], but a value fetched more than `max_age` ago counts as
    /// a miss even when fresh (it is still the fallback if the origin
    /// fails), in L1 and in L2: for a first look at values nobody was
    /// keeping current.
    ///
    /// [`get_many`]: TypedCache::get_many
    pub async fn get_many_younger_than(
        &self,
        keys: &[CacheKey],
        deadline: Deadline,
        max_age: Duration,
    ) -> HashMap<CacheKey, Result<Fetched<V>, O::Error>> {
        let now = self.cache.inner.clock.now_ms();
        let newer_than =
            now.saturating_sub(Millis::try_from(max_age.as_millis()).unwrap_or(Millis::MAX));
        self.lookup(keys, deadline, Some(newer_than)).await
    }

    async fn lookup(
        &self,
        keys: &[CacheKey],
        deadline: Deadline,
        newer_than: Option<Millis>,
    ) -> HashMap<CacheKey, Result<Fetched<V>, O::Error>> {
        let inner = &self.cache.inner;
        let too_old = |entry: &Entry| newer_than.is_some_and(|t| entry.header.fetched_at <= t);
        if !inner.config.enabled {
            return self
                .load_uncached(keys, deadline)
                .await
                .into_iter()
                .collect();
        }
        let stats = &inner.local.stats;
        let now = inner.clock.now_ms();
        let mut out = HashMap::with_capacity(keys.len());
        let mut seen = HashSet::with_capacity(keys.len());
        let mut misses = Vec::new();
        let mut revalidate = Vec::new();
        let mut ahead = Vec::new();
        let l1_span = tier_span("l1", keys);
        for key in keys {
            if !seen.insert(key) {
                continue;
            }
            let entry = inner.local.l1.get(key).instrument(l1_span.clone()).await;
            let found = entry
                .as_ref()
                .and_then(|e| e.typed::<V>().map(|value| (e, value)));
            match found {
                Some((entry, value)) if too_old(entry) && now < entry.header.stale_until => {
                    stats.lookup(Tier::L1, Found::Miss, 1);
                    misses.push((key.clone(), Some(fallback_of(entry, value))));
                }
                Some((entry, value)) if now < entry.header.fresh_until => {
                    out.insert(
                        key.clone(),
                        Ok(self.fresh_hit(key, entry, value, now, &mut ahead)),
                    );
                }
                Some((entry, value)) if now < entry.header.stale_until => {
                    let fallback = fallback_of(entry, value);
                    if self.ttl(key).stale_while_revalidate {
                        stats.lookup(Tier::L1, Found::Stale, 1);
                        out.insert(key.clone(), Ok(fallback.serve(now)));
                        revalidate.push((key.clone(), fallback));
                    } else {
                        stats.lookup(Tier::L1, Found::Miss, 1);
                        misses.push((key.clone(), Some(fallback)));
                    }
                }
                _ => {
                    stats.lookup(Tier::L1, Found::Miss, 1);
                    misses.push((key.clone(), None));
                }
            }
        }
        l1_span.record("cache.found", out.len());
        drop(l1_span);
        if !revalidate.is_empty() {
            self.reload_in_background(revalidate, Mode::Revalidate);
        }
        if !ahead.is_empty() {
            self.reload_in_background(ahead, Mode::RefreshAhead);
        }
        if !misses.is_empty() {
            out.extend(self.load(misses, deadline, newer_than).await);
        }
        out
    }

    /// The L1 values of `keys` when every one is there, fresh and passes
    /// `check` (given its index in `keys`), counted as L1 hits (and
    /// refreshed ahead when hot) exactly as [`get_many`] would; `None`,
    /// with nothing counted or loaded, when any is missing, past fresh, a
    /// tombstone or refused. For callers that hold something derived from
    /// those values and only need to know it is still current.
    ///
    /// [`get_many`]: TypedCache::get_many
    pub async fn fresh_in_l1(
        &self,
        keys: &[CacheKey],
        check: impl Fn(usize, &Arc<V>) -> bool,
    ) -> Option<Vec<Fetched<V>>> {
        let inner = &self.cache.inner;
        if !inner.config.enabled {
            return None;
        }
        let now = inner.clock.now_ms();
        let mut found = Vec::with_capacity(keys.len());
        for (i, key) in keys.iter().enumerate() {
            let entry = inner.local.l1.get(key).await?;
            let value = entry.typed::<V>().flatten()?;
            if now >= entry.header.fresh_until || !check(i, &value) {
                return None;
            }
            found.push((key, entry, value));
        }
        let mut ahead = Vec::new();
        let hits = found
            .into_iter()
            .map(|(key, entry, value)| self.fresh_hit(key, &entry, Some(value), now, &mut ahead))
            .collect();
        if !ahead.is_empty() {
            self.reload_in_background(ahead, Mode::RefreshAhead);
        }
        Some(hits)
    }

    /// Serves a fresh L1 entry: counts the hit and, when it is hot, queues
    /// its refresh-ahead.
    fn fresh_hit(
        &self,
        key: &CacheKey,
        entry: &Entry,
        value: Option<Arc<V>>,
        now: Millis,
        ahead: &mut Vec<(CacheKey, Fallback<V>)>,
    ) -> Fetched<V> {
        let inner = &self.cache.inner;
        inner.local.stats.lookup(Tier::L1, Found::Hit, 1);
        let hits = entry.hit();
        if value.is_some() && inner.refresh.should_refresh(entry, hits, now) {
            ahead.push((key.clone(), fallback_of(entry, value.clone())));
        }
        fetched(value, &entry.header, now, false, Tier::L1)
    }

    /// Makes sure the keys are cached (loading what is missing or past
    /// fresh), e.g. to warm host lists at start-up.
    pub async fn prefetch(&self, keys: &[CacheKey]) -> Prefetched {
        // One lookup per key: a batch settles when its slowest key does,
        // and a query joining a fast cluster's load must not wait on a
        // hung one's.
        let results = futures::future::join_all(
            keys.iter()
                .map(|key| self.get_many(std::slice::from_ref(key), Deadline::NONE)),
        )
        .await;
        let failed = results
            .iter()
            .flat_map(|r| r.values())
            .filter(|r| r.is_err())
            .count();
        Prefetched {
            ok: results.iter().map(HashMap::len).sum::<usize>() - failed,
            failed,
        }
    }

    pub fn cache(&self) -> &super::Cache {
        &self.cache
    }

    fn ttl(&self, key: &CacheKey) -> KindTtl {
        self.cache.inner.config.ttl(key.kind())
    }

    /// Joins or leads the loads of `misses` and waits for their outcomes.
    async fn load(
        &self,
        misses: Vec<(CacheKey, Option<Fallback<V>>)>,
        deadline: Deadline,
        newer_than: Option<Millis>,
    ) -> Vec<(CacheKey, Outcome<V, O::Error>)> {
        let local = &self.cache.inner.local;
        let mut waits = Vec::with_capacity(misses.len());
        let mut jobs = Vec::new();
        let mut alone = Vec::new();
        for (key, fallback) in misses {
            match local.flights.join_or_lead(&key) {
                Some(Role::Join(rx)) => {
                    local.stats.singleflight_join();
                    waits.push((key, fallback, rx));
                }
                Some(Role::Lead(leader)) => {
                    waits.push((key, fallback.clone(), leader.subscribe()));
                    jobs.push(Job {
                        leader,
                        fallback,
                        newer_than,
                    });
                }
                None => alone.push(key),
            }
        }
        if !jobs.is_empty() {
            let this = self.clone();
            // Traced under the lookup that leads it.
            tokio::spawn(
                async move { this.lead(jobs, Mode::Read, deadline).await }.in_current_span(),
            );
        }
        // A load joined from another lookup may run under a later deadline
        // (or none): each waiter stops at its own.
        let waited =
            futures::future::join_all(waits.into_iter().map(|(key, fallback, rx)| async move {
                let shared = match deadline.instant() {
                    Some(at) => tokio::time::timeout_at(at.into(), flight::wait(rx))
                        .await
                        .map_err(|_| PastDeadline),
                    None => Ok(flight::wait(rx).await),
                };
                (key, fallback, shared)
            }))
            .await;
        let now = self.cache.inner.clock.now_ms();
        let mut out = Vec::with_capacity(waited.len());
        for (key, fallback, shared) in waited {
            let shared = match shared {
                Ok(shared) => shared,
                Err(PastDeadline) => {
                    match fallback {
                        Some(fallback) if fallback.usable(now) => {
                            out.push((key, Ok(fallback.serve(now))));
                        }
                        // Asked under a spent deadline, the origin answers
                        // with its own timeout error at once.
                        _ => alone.push(key),
                    }
                    continue;
                }
            };
            let outcome = shared.and_then(|s| s.downcast_ref::<Outcome<V, O::Error>>().cloned());
            match outcome {
                // A joiner may hold a fallback its leader did not.
                Some(Err(error)) => match fallback {
                    Some(fallback) if fallback.usable(now) => {
                        out.push((key, Ok(fallback.serve(now))));
                    }
                    _ => out.push((key, Err(error))),
                },
                Some(ok) => out.push((key, ok)),
                // The leader went away without an outcome (a panic).
                None => alone.push(key),
            }
        }
        if !alone.is_empty() {
            out.extend(self.load_uncached(&alone, deadline).await);
        }
        out
    }

    /// Starts background reloads of keys not already loading.
    fn reload_in_background(&self, items: Vec<(CacheKey, Fallback<V>)>, mode: Mode) {
        let local = &self.cache.inner.local;
        let jobs: Vec<Job<V>> = items
            .into_iter()
            .filter_map(|(key, fallback)| match local.flights.join_or_lead(&key) {
                Some(Role::Lead(leader)) => Some(Job {
                    leader,
                    newer_than: Some(fallback.header.fetched_at),
                    fallback: Some(fallback),
                }),
                _ => None,
            })
            .collect();
        if jobs.is_empty() {
            return;
        }
        if mode == Mode::RefreshAhead {
            local.stats.refresh_ahead(jobs.len() as u64);
        }
        let this = self.clone();
        // A trace of its own, linked to the lookup that started it: the
        // reload outlives that request.
        let span = crate::telemetry::child_span(|| {
            let span = tracing::debug_span!(parent: None, "cache reload", dfgraph.mode = ?mode, cache.keys = jobs.len());
            span.follows_from(tracing::Span::current().id());
            span
        });
        // Background reloads serve no request: calls get their own timeouts.
        tokio::spawn(async move { this.lead(jobs, mode, Deadline::NONE).await }.instrument(span));
    }

    /// Loads a batch this process leads, through L2 and the origin.
    async fn lead(self, jobs: Vec<Job<V>>, mode: Mode, deadline: Deadline) {
        let inner = self.cache.inner.clone();
        let stats = &inner.local.stats;
        let ticket = inner.local.gens.ticket();
        let mut back = WriteBack::default();
        let mut revalidate = Vec::new();

        let mut pending = Vec::new();
        let from_l2 = match &inner.l2 {
            Some(l2) => {
                let keys: Vec<CacheKey> = jobs.iter().map(|j| j.key().clone()).collect();
                let span = tier_span("l2", &keys);
                let values = l2.mget(&keys).instrument(span.clone()).await;
                match &values {
                    Ok(values) => span.record("cache.found", values.iter().flatten().count()),
                    Err(e) => span.record("cache.error", tracing::field::display(e)),
                };
                values.ok()
            }
            None => None,
        };
        match from_l2 {
            Some(values) => {
                let now = inner.clock.now_ms();
                for (mut job, raw) in jobs.into_iter().zip(values) {
                    let decoded = self.decode(job.key(), raw, &mut back.deletes);
                    match job.judge(decoded, now) {
                        L2Read::Fresh { header, value, len } => {
                            self.serve_from_l2(job, header, value, len, &ticket, now)
                                .await;
                        }
                        L2Read::Stale { fallback, len } if mode == Mode::Read => {
                            let header = fallback.header;
                            if self.ttl(job.key()).stale_while_revalidate {
                                stats.lookup(Tier::L2, Found::Stale, 1);
                                self.store_l1(
                                    job.key(),
                                    header,
                                    fallback.value.clone(),
                                    len,
                                    &ticket,
                                )
                                .await;
                                let key = job.key().clone();
                                complete::<V, O::Error>(job.leader, Ok(fallback.serve(now)));
                                revalidate.push((key, fallback));
                            } else {
                                stats.lookup(Tier::L2, Found::Miss, 1);
                                job.fallback = Some(newer(job.fallback.take(), fallback));
                                pending.push(job);
                            }
                        }
                        _ => {
                            stats.lookup(Tier::L2, Found::Miss, 1);
                            pending.push(job);
                        }
                    }
                }
            }
            None => pending = jobs,
        }

        if !pending.is_empty() {
            self.load_pending(pending, &ticket, &mut back, deadline)
                .await;
        }

        if let Some(l2) = &inner.l2 {
            match l2
                .write_back(&back.writes, &back.releases, &back.deletes)
                .await
            {
                Ok(0) => {}
                Ok(refused) => {
                    stats.stale_write_dropped(refused);
                    tracing::debug!(refused, "L2 write-backs refused: invalidated while loading");
                }
                Err(error) => tracing::debug!(%error, "L2 write-back skipped"),
            }
        }
        if !revalidate.is_empty() {
            self.reload_in_background(revalidate, Mode::Revalidate);
        }
    }

    /// Takes the load locks, loads what this process won from the origin
    /// and waits for what other replicas are loading.
    async fn load_pending(
        &self,
        pending: Vec<Job<V>>,
        ticket: &Ticket,
        back: &mut WriteBack,
        deadline: Deadline,
    ) {
        let inner = &self.cache.inner;
        let locked: Vec<Option<(Guard, Option<Vec<u8>>)>> = match &inner.l2 {
            Some(l2) => {
                let keys: Vec<CacheKey> = pending.iter().map(|j| j.key().clone()).collect();
                match l2.acquire(&keys).await {
                    Ok(guards) => guards.into_iter().map(Some).collect(),
                    Err(_) => pending.iter().map(|_| None).collect(),
                }
            }
            None => pending.iter().map(|_| None).collect(),
        };
        let now = inner.clock.now_ms();
        let mut winners = Vec::new();
        let mut losers = Vec::new();
        for (mut job, locked) in pending.into_iter().zip(locked) {
            let Some((guard, mut raw)) = locked else {
                winners.push((job, None));
                continue;
            };
            if back.deletes.contains(job.key()) {
                raw = None; // the same undecodable bytes as at the MGET
            }
            let decoded = self.decode(job.key(), raw, &mut back.deletes);
            match job.judge(decoded, now) {
                // Another replica's load finished in between.
                L2Read::Fresh { header, value, len } => {
                    let key = job.key().clone();
                    self.serve_from_l2(job, header, value, len, ticket, now)
                        .await;
                    back.releases.push((key, guard));
                    continue;
                }
                L2Read::Stale { fallback, .. } => {
                    job.fallback = Some(newer(job.fallback.take(), fallback));
                }
                L2Read::Miss => {}
            }
            if guard.holds_lock() {
                winners.push((job, Some(guard)));
            } else {
                losers.push((job, guard));
            }
        }
        let mut waited_back = WriteBack::default();
        let ((), unresolved) = futures::join!(
            self.load_origin(winners, ticket, back, deadline),
            self.wait_for_peers(losers, ticket, &mut waited_back),
        );
        back.deletes.append(&mut waited_back.deletes);
        if !unresolved.is_empty() {
            self.load_origin(unresolved, ticket, back, deadline).await;
        }
    }

    /// Calls the origin once for the batch and settles every job.
    async fn load_origin(
        &self,
        items: Vec<(Job<V>, Option<Guard>)>,
        ticket: &Ticket,
        back: &mut WriteBack,
        deadline: Deadline,
    ) {
        if items.is_empty() {
            return;
        }
        let inner = &self.cache.inner;
        let stats = &inner.local.stats;
        let keys: Vec<CacheKey> = items.iter().map(|(j, _)| j.key().clone()).collect();
        let span = crate::telemetry::child_span(|| {
            tracing::debug_span!(
                "cache origin load",
                otel.name = "cache origin",
                cache.tier = "origin",
                cache.kind = keys.first().map(|k| k.kind().as_str()),
                cache.keys = keys.len(),
            )
        });
        let started = Instant::now();
        let mut loaded = self.origin.load(keys, deadline).instrument(span).await;
        stats.origin_load(items.len(), started.elapsed());
        let now = inner.clock.now_ms();
        for (job, guard) in items {
            let key = job.key().clone();
            match loaded.remove(&key).unwrap_or(Ok(None)) {
                Ok(value) => {
                    stats.lookup(Tier::Origin, Found::Hit, 1);
                    let ttl = self.ttl(&key);
                    let fresh_for = if value.is_some() {
                        ttl.fresh
                    } else {
                        inner.config.negative_ttl
                    };
                    let fresh_until = now.saturating_add(millis(fresh_for));
                    let header = Header {
                        fetched_at: now,
                        fresh_until,
                        stale_until: fresh_until.saturating_add(millis(ttl.stale)),
                        tombstone: value.is_none(),
                    };
                    let value = value.map(Arc::new);
                    let redis_key = key.redis_key();
                    let bytes = guard.as_ref().map(|_| {
                        inner
                            .codec
                            .encode_value(&redis_key, &header, value.as_deref())
                    });
                    let len = match &bytes {
                        Some(Ok(b)) => b.len(),
                        _ => value.as_ref().map_or(0, |v| v.encoded_len()),
                    };
                    let current = self
                        .store_l1(&key, header, value.clone(), len, ticket)
                        .await;
                    let outcome = fetched(value, &header, now, false, Tier::Origin);
                    complete::<V, O::Error>(job.leader, Ok(outcome));
                    let Some(guard) = guard else { continue };
                    match bytes {
                        Some(Ok(bytes)) if current => back.writes.push(Write {
                            ttl_ms: header
                                .stale_until
                                .saturating_sub(now)
                                .saturating_add(millis(inner.config.l2_ttl_margin)),
                            key,
                            bytes,
                            guard,
                        }),
                        Some(Err(error)) => {
                            tracing::warn!(%key, %error, "cannot encode value for L2");
                            back.releases.push((key, guard));
                        }
                        _ => back.releases.push((key, guard)),
                    }
                }
                Err(error) => {
                    tracing::debug!(%key, %error, "origin failed");
                    if let Some(guard) = guard {
                        back.releases.push((key.clone(), guard));
                    }
                    match &job.fallback {
                        Some(fallback) if fallback.usable(now) => {
                            stats.lookup(Tier::Origin, Found::Stale, 1);
                            let served = fallback.serve(now);
                            complete::<V, O::Error>(job.leader, Ok(served));
                        }
                        _ => {
                            stats.lookup(Tier::Origin, Found::Miss, 1);
                            complete::<V, O::Error>(job.leader, Err(error));
                        }
                    }
                }
            }
        }
    }

    /// Polls L2 for keys whose lock another replica holds, until their
    /// value appears, the lock lapses or `lock_ttl` passes. Returns what is
    /// still unresolved, to be loaded by this process.
    async fn wait_for_peers(
        &self,
        losers: Vec<(Job<V>, Guard)>,
        ticket: &Ticket,
        back: &mut WriteBack,
    ) -> Vec<(Job<V>, Option<Guard>)> {
        let inner = &self.cache.inner;
        let Some(l2) = &inner.l2 else {
            return losers.into_iter().map(|(j, g)| (j, Some(g))).collect();
        };
        if losers.is_empty() {
            return Vec::new();
        }
        let stats = &inner.local.stats;
        stats.lock_wait(losers.len() as u64);
        let deadline = Instant::now() + inner.config.lock_ttl;
        let mut interval = inner.config.lock_poll_interval;
        let mut waiting = losers;
        let mut unresolved = Vec::new();
        while !waiting.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            tokio::time::sleep(interval.min(left)).await;
            interval = (interval * 3 / 2).min(inner.config.lock_poll_interval * 4);
            let keys: Vec<CacheKey> = waiting.iter().map(|(j, _)| j.key().clone()).collect();
            let Ok(polled) = l2.poll(&keys).await else {
                break;
            };
            let now = inner.clock.now_ms();
            let mut still = Vec::new();
            for ((mut job, guard), polled) in waiting.into_iter().zip(polled) {
                let decoded = self.decode(job.key(), polled.value, &mut back.deletes);
                match job.judge(decoded, now) {
                    L2Read::Fresh { header, value, len } => {
                        self.serve_from_l2(job, header, value, len, ticket, now)
                            .await;
                        continue;
                    }
                    // Not fresh, but servable should our own load fail.
                    L2Read::Stale { fallback, .. } => {
                        job.fallback = Some(newer(job.fallback.take(), fallback));
                    }
                    L2Read::Miss => {}
                }
                if polled.locked {
                    still.push((job, guard));
                } else {
                    unresolved.push((job, Some(guard)));
                }
            }
            waiting = still;
        }
        if !waiting.is_empty() {
            tracing::debug!(
                keys = waiting.len(),
                "another replica's load did not finish within lock_ttl; loading here"
            );
        }
        unresolved.extend(waiting.into_iter().map(|(j, g)| (j, Some(g))));
        unresolved
    }

    /// Serves a fresh L2 value to the job's waiters: counted as an L2 hit
    /// and kept in L1 (unless invalidated since `ticket`).
    async fn serve_from_l2(
        &self,
        job: Job<V>,
        header: Header,
        value: Option<Arc<V>>,
        len: usize,
        ticket: &Ticket,
        now: Millis,
    ) {
        let stats = &self.cache.inner.local.stats;
        stats.lookup(Tier::L2, Found::Hit, 1);
        self.store_l1(job.key(), header, value.clone(), len, ticket)
            .await;
        let outcome = fetched(value, &header, now, false, Tier::L2);
        complete::<V, O::Error>(job.leader, Ok(outcome));
    }

    /// Decodes an L2 value; an undecodable one is logged, counted, queued
    /// for deletion and treated as a miss.
    fn decode(
        &self,
        key: &CacheKey,
        raw: Option<Vec<u8>>,
        deletes: &mut Vec<CacheKey>,
    ) -> Option<Decoded<V>> {
        let bytes = raw?;
        let inner = &self.cache.inner;
        match inner.codec.decode_value::<V>(&key.redis_key(), &bytes) {
            Ok((header, value)) => Some((header, value.map(Arc::new), bytes.len())),
            Err(error) => {
                tracing::warn!(%key, %error, "undecodable value in Redis; deleting it and reloading");
                inner.local.stats.decode_failure();
                deletes.push(key.clone());
                None
            }
        }
    }

    /// Puts a value in L1 unless the key was invalidated since `ticket`.
    /// Returns false when the write was refused (then L2 must not get it
    /// either).
    async fn store_l1(
        &self,
        key: &CacheKey,
        header: Header,
        value: Option<Arc<V>>,
        encoded_len: usize,
        ticket: &Ticket,
    ) -> bool {
        self.cache
            .store_l1(key, header, value, encoded_len, ticket)
            .await
    }

    /// Asks the origin directly, storing nothing (cache disabled, or a
    /// single-flight leader lost).
    async fn load_uncached(
        &self,
        keys: &[CacheKey],
        deadline: Deadline,
    ) -> Vec<(CacheKey, Outcome<V, O::Error>)> {
        let stats = &self.cache.inner.local.stats;
        let started = Instant::now();
        let mut loaded = self.origin.load(keys.to_vec(), deadline).await;
        stats.origin_load(keys.len(), started.elapsed());
        keys.iter()
            .map(|key| {
                let result = match loaded.remove(key).unwrap_or(Ok(None)) {
                    Ok(value) => {
                        stats.lookup(Tier::Origin, Found::Hit, 1);
                        Ok(Fetched {
                            value: value.map(Arc::new),
                            age: Duration::ZERO,
                            stale: false,
                            tier: Tier::Origin,
                        })
                    }
                    Err(error) => {
                        stats.lookup(Tier::Origin, Found::Miss, 1);
                        Err(error)
                    }
                };
                (key.clone(), result)
            })
            .collect()
    }
}

/// The span of one lookup of `keys` in a cache tier (`l1`, `l2`), within
/// a traced request; the caller records how many it found.
fn tier_span(tier: &'static str, keys: &[CacheKey]) -> tracing::Span {
    crate::telemetry::child_span(|| {
        tracing::debug_span!(
            "cache lookup",
            otel.name = format!("cache {tier}"),
            cache.tier = tier,
            cache.kind = keys.first().map(|k| k.kind().as_str()),
            cache.keys = keys.len(),
            cache.found = tracing::field::Empty,
            cache.error = tracing::field::Empty,
        )
    })
}

fn fallback_of<V>(entry: &Entry, value: Option<Arc<V>>) -> Fallback<V> {
    Fallback {
        value,
        header: entry.header,
        tier: Tier::L1,
    }
}

fn complete<V, E>(leader: Leader, outcome: Outcome<V, E>)
where
    V: Send + Sync + 'static,
    E: Send + Sync + 'static,
{
    leader.complete(Arc::new(outcome) as Shared);
}
