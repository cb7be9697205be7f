//! Every Redis key and pub/sub channel name dfgraph uses, in one place:
//! cache entries and their consistency keys, the one channel between
//! replicas, the watcher's interest set and leases, persisted queries.
//! All begin with [`PREFIX`]; a change of layout (hash tags for Redis
//! Cluster, a new version) is made here alone.
//!
//! Lives in `cache` because cache keys are built from [`CacheKey`]; `events`,
//! `http` and [`crate::redis`] take their names from here (this file
//! depends on nothing but the key types).

use super::{CacheKey, Kind};
use crate::ids::PeerKey;

/// What every key and channel begins with.
pub const PREFIX: &str = "dfgraph:v1:";

/// The one pub/sub channel between replicas: cache invalidations and
/// change events, each tagged with its topic (see [`crate::redis::listener`]).
pub const BUS_CHANNEL: &str = "dfgraph:v1:bus";

/// The sorted set of every replica's interest: member -> expiry (unix ms).
pub const WATCH_INTEREST: &str = "dfgraph:v1:watch:interest";

/// A cache entry's value: `dfgraph:v1:{kind}:{cluster}:{id}`.
pub fn entry(key: &CacheKey) -> String {
    format!(
        "{PREFIX}{}:{}:{}",
        key.kind().as_str(),
        key.cluster,
        key.id()
    )
}

/// [`entry`] back into a key (from an invalidation message).
pub fn parse_entry(s: &str) -> Option<CacheKey> {
    let rest = s.strip_prefix(PREFIX)?;
    let mut parts = rest.splitn(3, ':');
    let kind = Kind::parse(parts.next()?)?;
    let cluster = parts.next()?.parse().ok()?;
    let id = parts.next()?;
    match kind {
        Kind::Hosts => id.is_empty().then(|| CacheKey::hosts(cluster)),
        Kind::Task => Some(CacheKey::task(cluster, id)),
        Kind::Peer => Some(CacheKey::peer(cluster, &PeerKey::from_path(id)?)),
    }
}

/// A cache entry's generation counter, bumped by its invalidation.
pub fn generation(key: &CacheKey) -> String {
    format!(
        "{PREFIX}gen:{}:{}:{}",
        key.kind().as_str(),
        key.cluster,
        key.id()
    )
}

/// A cache entry's load lock (`SET NX PX`).
pub fn load_lock(key: &CacheKey) -> String {
    format!(
        "{PREFIX}lock:{}:{}:{}",
        key.kind().as_str(),
        key.cluster,
        key.id()
    )
}

/// The generation counter of a whole scope: one kind, on one cluster or
/// on all.
pub fn scope_generation(kind: Kind, cluster: Option<u64>) -> String {
    match cluster {
        Some(c) => format!("{PREFIX}gen-scope:{}:{c}", kind.as_str()),
        None => format!("{PREFIX}gen-scope:{}", kind.as_str()),
    }
}

/// The `SCAN MATCH` pattern of a scope's value keys.
pub fn scope_pattern(kind: Kind, cluster: Option<u64>) -> String {
    match cluster {
        Some(c) => format!("{PREFIX}{}:{c}:*", kind.as_str()),
        None => format!("{PREFIX}{}:*", kind.as_str()),
    }
}

/// The lease of the replica that polls one scheduler cluster.
pub fn watch_lease(cluster_id: u64) -> String {
    format!("{PREFIX}lease:watch:{cluster_id}")
}

/// A persisted (APQ) query document, by its SHA-256 hex.
pub fn persisted_query(sha256_hex: &str) -> String {
    format!("{PREFIX}apq:{sha256_hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names_share_the_dfgraph_prefix_and_do_not_collide() {
        let key = CacheKey::task(3, "t1");
        assert_eq!(generation(&key), "dfgraph:v1:gen:task:3:t1");
        assert_eq!(load_lock(&key), "dfgraph:v1:lock:task:3:t1");
        assert_eq!(
            scope_generation(Kind::Task, Some(3)),
            "dfgraph:v1:gen-scope:task:3"
        );
        assert_eq!(scope_pattern(Kind::Peer, None), "dfgraph:v1:peer:*");
        assert!(!generation(&key).starts_with("dfgraph:v1:task:"));
    }

    #[test]
    fn the_other_key_strings_stay_as_they_are() {
        assert_eq!(entry(&CacheKey::task(3, "t1")), "dfgraph:v1:task:3:t1");
        assert_eq!(
            scope_generation(Kind::Hosts, None),
            "dfgraph:v1:gen-scope:hosts"
        );
        assert_eq!(scope_pattern(Kind::Peer, Some(2)), "dfgraph:v1:peer:2:*");
        assert_eq!(watch_lease(7), "dfgraph:v1:lease:watch:7");
        assert_eq!(persisted_query("ab12"), "dfgraph:v1:apq:ab12");
        assert_eq!(BUS_CHANNEL, "dfgraph:v1:bus");
        assert_eq!(WATCH_INTEREST, "dfgraph:v1:watch:interest");
    }

    #[test]
    fn entries_parse_back() {
        for key in [
            CacheKey::peer(9, &PeerKey::from_path("h1/t:2/p 3").unwrap()),
            CacheKey::hosts(1),
        ] {
            assert_eq!(parse_entry(&entry(&key)), Some(key));
        }
        assert_eq!(parse_entry("dfgraph:v2:task:1:x"), None);
        assert_eq!(parse_entry("dfgraph:v1:nope:1:x"), None);
    }
}
