//! Every Redis key and pub/sub channel name dfgraph uses, in one place:
//! cache entries and their consistency keys, the one channel between
//! replicas, the watcher's interest set and leases, persisted queries.
//! All begin with [`PREFIX`]; what belongs to one scheduler cluster
//! continues with its hash tag (`dfgraph:v1:{<cluster>}:...`), so Redis
//! Cluster keeps it in one slot. A change of layout is made here alone.
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

/// Everything about one scheduler cluster begins with this: the cluster id
/// in braces is a Redis Cluster hash tag, so one cluster's entries, their
/// generations and load locks, its scope generations and its lease live in
/// one slot, and a script or `MGET` over them touches one node.
fn tagged(cluster: u64) -> String {
    format!("{PREFIX}{{{cluster}}}:")
}

/// The hash tag of one scheduler cluster's keys (for routing a command to
/// the node that holds them).
pub fn cluster_tag(cluster: u64) -> String {
    format!("{{{cluster}}}")
}

/// A cache entry's value: `dfgraph:v1:{<cluster>}:<kind>:<id>`.
pub fn entry(key: &CacheKey) -> String {
    format!(
        "{}{}:{}",
        tagged(key.cluster),
        key.kind().as_str(),
        key.id()
    )
}

/// [`entry`] back into a key (from an invalidation message).
pub fn parse_entry(s: &str) -> Option<CacheKey> {
    let rest = s.strip_prefix(PREFIX)?.strip_prefix('{')?;
    let (cluster, rest) = rest.split_once("}:")?;
    let cluster = cluster.parse().ok()?;
    let (kind, id) = rest.split_once(':')?;
    match Kind::parse(kind)? {
        Kind::Hosts => id.is_empty().then(|| CacheKey::hosts(cluster)),
        Kind::Task => Some(CacheKey::task(cluster, id)),
        Kind::Peer => Some(CacheKey::peer(cluster, &PeerKey::from_path(id)?)),
    }
}

/// A cache entry's generation counter, bumped by its invalidation.
pub fn generation(key: &CacheKey) -> String {
    format!(
        "{}gen:{}:{}",
        tagged(key.cluster),
        key.kind().as_str(),
        key.id()
    )
}

/// A cache entry's load lock (`SET NX PX`).
pub fn load_lock(key: &CacheKey) -> String {
    format!(
        "{}lock:{}:{}",
        tagged(key.cluster),
        key.kind().as_str(),
        key.id()
    )
}

/// The generation counter of a whole scope: one kind, on one cluster (in
/// that cluster's slot) or on all (a key of its own, in another slot).
pub fn scope_generation(kind: Kind, cluster: Option<u64>) -> String {
    match cluster {
        Some(c) => format!("{}gen-scope:{}", tagged(c), kind.as_str()),
        None => format!("{PREFIX}gen-scope:{}", kind.as_str()),
    }
}

/// The `SCAN MATCH` pattern of a scope's value keys.
pub fn scope_pattern(kind: Kind, cluster: Option<u64>) -> String {
    match cluster {
        Some(c) => format!("{}{}:*", tagged(c), kind.as_str()),
        None => format!("{PREFIX}{{*}}:{}:*", kind.as_str()),
    }
}

/// The lease of the replica that probes the hosts of one scheduler cluster.
pub fn liveness_lease(cluster_id: u64) -> String {
    format!("{}lease:liveness", tagged(cluster_id))
}

/// The hash of one scheduler cluster's host liveness: host id -> record,
/// written by the replica holding [`liveness_lease`], read by the others.
pub fn liveness(cluster_id: u64) -> String {
    format!("{}liveness", tagged(cluster_id))
}

/// The lease of the replica that polls one scheduler cluster.
pub fn watch_lease(cluster_id: u64) -> String {
    format!("{}lease:watch", tagged(cluster_id))
}

/// The lease of the replica that records one scheduler cluster's
/// scheduler health (see [`crate::events::health`]).
pub fn health_lease(cluster_id: u64) -> String {
    format!("{}lease:health", tagged(cluster_id))
}

/// The hash of one scheduler cluster's scheduler health as the holder of
/// [`health_lease`] last saw it: address -> state, read by the others.
pub fn scheduler_health(cluster_id: u64) -> String {
    format!("{}schedulers", tagged(cluster_id))
}

/// The event log of one scheduler cluster: a stream (see
/// [`crate::events::log`]).
pub fn event_log(cluster_id: u64) -> String {
    format!("{}events", tagged(cluster_id))
}

/// Each host's last logged transition in one scheduler cluster's event
/// log: a hash beside the stream, so a change two replicas observed is
/// logged once (see [`crate::events::log`]).
pub fn event_log_states(cluster_id: u64) -> String {
    format!("{}events:states", tagged(cluster_id))
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
        assert_eq!(entry(&key), "dfgraph:v1:{3}:task:t1");
        assert_eq!(generation(&key), "dfgraph:v1:{3}:gen:task:t1");
        assert_eq!(load_lock(&key), "dfgraph:v1:{3}:lock:task:t1");
        assert_eq!(
            scope_generation(Kind::Task, Some(3)),
            "dfgraph:v1:{3}:gen-scope:task"
        );
        assert_eq!(
            scope_generation(Kind::Hosts, None),
            "dfgraph:v1:gen-scope:hosts"
        );
        assert_eq!(scope_pattern(Kind::Peer, None), "dfgraph:v1:{*}:peer:*");
        assert_eq!(scope_pattern(Kind::Peer, Some(2)), "dfgraph:v1:{2}:peer:*");
        assert_eq!(watch_lease(7), "dfgraph:v1:{7}:lease:watch");
        assert_eq!(health_lease(7), "dfgraph:v1:{7}:lease:health");
        assert_eq!(scheduler_health(7), "dfgraph:v1:{7}:schedulers");
        assert_eq!(event_log(7), "dfgraph:v1:{7}:events");
        assert_eq!(persisted_query("ab12"), "dfgraph:v1:apq:ab12");
        assert_eq!(BUS_CHANNEL, "dfgraph:v1:bus");
        assert_eq!(WATCH_INTEREST, "dfgraph:v1:watch:interest");
        assert!(!generation(&key).starts_with("dfgraph:v1:{3}:task:"));
    }

    #[test]
    fn one_clusters_keys_share_a_hash_tag() {
        let key = CacheKey::peer(12, &PeerKey::from_path("h{x}/t/p").unwrap());
        // Redis hashes the first `{...}` of a key.
        let tag = |k: &str| {
            let open = k.find('{').unwrap();
            let close = open + k[open..].find('}').unwrap();
            k[open + 1..close].to_string()
        };
        for name in [
            entry(&key),
            generation(&key),
            load_lock(&key),
            scope_generation(Kind::Peer, Some(12)),
            watch_lease(12),
        ] {
            assert_eq!(tag(&name), "12", "{name}");
        }
        assert_eq!(cluster_tag(12), "{12}");
    }

    #[test]
    fn entries_parse_back() {
        for key in [
            CacheKey::peer(9, &PeerKey::from_path("h1/t:2/p 3").unwrap()),
            CacheKey::hosts(1),
            CacheKey::task(4, "a}:b"),
        ] {
            assert_eq!(parse_entry(&entry(&key)), Some(key));
        }
        assert_eq!(parse_entry("dfgraph:v2:{1}:task:x"), None);
        assert_eq!(parse_entry("dfgraph:v1:{1}:nope:x"), None);
        assert_eq!(parse_entry("dfgraph:v1:task:1:x"), None);
    }
}
