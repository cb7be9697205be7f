//! Putting a value in place of a cached entry on every replica. The
//! watcher's fresh host list replaces the one its change made stale, so the
//! next query finds the new list instead of reloading what the watcher has
//! just fetched. Preparing (header, encoding) is pure CPU and can run off
//! the request runtime; placing it talks to Redis.

use std::sync::Arc;
use std::time::Duration;

use super::codec::Header;
use super::invalidation::{self, Target};
use super::l1::Entry;
use super::l2::millis;
use super::{Cache, CacheKey};

/// When a replacement's value began to be fetched (see
/// [`Cache::replacement_ticket`]).
pub struct ReplacementTicket(super::generation::Ticket);

/// A value ready to take a key's place: its header and L2 bytes.
pub struct Replacement<V> {
    key: CacheKey,
    header: Header,
    value: Arc<V>,
    /// `None` without L2, or when the value could not be encoded for it.
    bytes: Option<Vec<u8>>,
    encoded_len: usize,
}

impl<V> Replacement<V> {
    pub fn key(&self) -> &CacheKey {
        &self.key
    }
}

impl Cache {
    /// Prepares `value` as `key`'s new entry, fetched now.
    pub fn replacement<V: prost::Message>(&self, key: CacheKey, value: V) -> Replacement<V> {
        self.prepare(key, value, |v| v.encode_to_vec().into(), V::encoded_len)
    }

    /// [`Cache::replacement`] of a value received as `encoded_len` bytes of
    /// protobuf, with those bytes when they were kept (see
    /// [`Cache::keeps_encoded`]): they go to L2 as they are. Without them
    /// the value is encoded again for L2.
    pub fn replacement_received<V: prost::Message>(
        &self,
        key: CacheKey,
        value: V,
        encoded_len: usize,
        encoded: Option<&[u8]>,
    ) -> Replacement<V> {
        match encoded {
            Some(encoded) => self.prepare(key, value, |_| encoded.into(), |_| encoded.len()),
            None => self.prepare(key, value, |v| v.encode_to_vec().into(), |_| encoded_len),
        }
    }

    /// Whether a replacement is written to L2, so a value received encoded
    /// is worth keeping as received.
    pub fn keeps_encoded(&self) -> bool {
        self.inner.l2.is_some() && self.inner.config.enabled
    }

    fn prepare<'a, V>(
        &self,
        key: CacheKey,
        value: V,
        payload: impl FnOnce(&V) -> std::borrow::Cow<'a, [u8]>,
        payload_len: impl FnOnce(&V) -> usize,
    ) -> Replacement<V> {
        let inner = &self.inner;
        let now = inner.clock.now_ms();
        let ttl = inner.config.ttl(key.kind());
        let fresh_until = now.saturating_add(millis(ttl.fresh));
        let header = Header {
            fetched_at: now,
            fresh_until,
            stale_until: fresh_until.saturating_add(millis(ttl.stale)),
            tombstone: false,
        };
        let bytes = inner
            .l2
            .as_ref()
            .filter(|_| inner.config.enabled)
            .and_then(|_| {
                inner
                    .codec
                    .encode(&key.redis_key(), &header, &payload(&value))
                    .inspect_err(|error| tracing::warn!(%key, %error, "cannot encode value for L2"))
                    .ok()
            });
        let encoded_len = bytes.as_ref().map_or_else(|| payload_len(&value), Vec::len);
        Replacement {
            key,
            header,
            value: Arc::new(value),
            bytes,
            encoded_len,
        }
    }

    /// A mark of "now" for [`Cache::replace`]: take it before fetching
    /// the value, so a change of the key made while it was fetched wins.
    pub fn replacement_ticket(&self) -> ReplacementTicket {
        ReplacementTicket(self.inner.local.gens.ticket())
    }

    /// Puts a prepared value in place: in L2, then in this L1, and drops
    /// the other replicas' copies so they read it from L2. Loads of the key
    /// already running anywhere do not write their older result over it
    /// (the key's generation moves, as with an invalidation). Where the
    /// value cannot be placed, or the key was invalidated here since
    /// `fetched` (a mutation, another replica's change: the value may
    /// predate it), the key is invalidated instead.
    pub async fn replace<V: Send + Sync + 'static>(
        &self,
        replacement: Replacement<V>,
        fetched: &ReplacementTicket,
    ) {
        let inner = &self.inner;
        if !inner.config.enabled {
            return;
        }
        let Replacement {
            key,
            header,
            value,
            bytes,
            encoded_len,
        } = replacement;
        let target = Target::Key(key.clone());
        if !inner.local.gens.is_current(&key, &fetched.0) {
            inner.local.stats.replacement(true);
            self.invalidate(&key).await;
            return;
        }
        inner.local.stats.replacement(false);
        inner.local.drop_target(&target).await;
        if let Some(l2) = &inner.l2 {
            let message = invalidation::encode(&inner.local.instance, &target);
            let now = inner.clock.now_ms();
            let result = match &bytes {
                Some(bytes) => {
                    let ttl = Duration::from_millis(header.stale_until.saturating_sub(now))
                        + inner.config.l2_ttl_margin;
                    l2.replace(&key, bytes, millis(ttl), &message).await
                }
                None => l2.invalidate(&key, &message).await,
            };
            if let Err(error) = result {
                tracing::warn!(
                    %key,
                    %error,
                    "replacement not propagated through Redis; other replicas keep \
                     their copies until fresh expiry or their subscriber reconnects"
                );
            }
            // A lookup that missed L1 since the drop may have read the old
            // value from L2 before the SET: it must not store it over ours.
            inner.local.gens.bump_key(&key);
        }
        let ticket = inner.local.gens.ticket();
        self.store_l1(&key, header, Some(value), encoded_len, &ticket)
            .await;
    }

    /// Puts a value in L1 unless the key was invalidated since `ticket`.
    /// Returns false when the write was refused (then L2 must not get it
    /// either).
    pub(super) async fn store_l1<V: Send + Sync + 'static>(
        &self,
        key: &CacheKey,
        header: Header,
        value: Option<Arc<V>>,
        encoded_len: usize,
        ticket: &super::generation::Ticket,
    ) -> bool {
        let inner = &self.inner;
        let local = &inner.local;
        if !local.gens.is_current(key, ticket) {
            local.stats.stale_write_dropped(1);
            return false;
        }
        let now = inner.clock.now_ms();
        if now >= header.stale_until {
            return true;
        }
        let keep = Duration::from_millis(header.stale_until - now);
        let entry = Entry::new(key, header, value, encoded_len, keep);
        local.l1.insert(key.clone(), Arc::new(entry)).await;
        if !local.gens.is_current(key, ticket) {
            // Invalidated between the check and the insert.
            local.l1.remove(key).await;
            local.stats.stale_write_dropped(1);
            return false;
        }
        true
    }
}
