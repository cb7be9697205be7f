//! A live host as the manager's `models.Peer` JSON (the manager calls a
//! dfdaemon host a "peer"): the same field names, order and value
//! formats, with a stable numeric id derived from the host.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::query::PeerFilter;
use crate::host_type::HostType;
use crate::proto::common::v2::Host;

/// Go's zero `time.Time` as `encoding/json` writes it: the time of a
/// record nobody knows the time of.
pub const GO_ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// The manager's numeric id for a host of a scheduler cluster: the first
/// 53 bits of SHA-256(cluster id as 8 big-endian bytes, then the host id),
/// so it survives restarts, is the same on every replica, and stays an
/// exact JavaScript number (below 2^53). Never 0, which the manager's
/// binding refuses as a missing id.
pub fn peer_id(scheduler_cluster_id: u64, host_id: &str) -> u64 {
    let mut hash = Sha256::new();
    hash.update(scheduler_cluster_id.to_be_bytes());
    hash.update(host_id.as_bytes());
    let digest = hash.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(first) >> 11).max(1)
}

/// `time.Time` in Go's JSON form (RFC 3339 with trailing zeros of the
/// fraction dropped), in UTC.
pub fn go_time(at: DateTime<Utc>) -> String {
    let mut text = at.format("%Y-%m-%dT%H:%M:%S").to_string();
    let nanos = at.timestamp_subsec_nanos() % 1_000_000_000;
    if nanos > 0 {
        text.push('.');
        text.push_str(format!("{nanos:09}").trim_end_matches('0'));
    }
    text.push('Z');
    text
}

/// The manager's name of a host type (`types.HostType.Name`): the
/// manager knows only `normal` and `super`, and names every other number
/// (the retired strong and weak seeds included) `normal`, as its
/// `sync_peers` writes them.
pub fn type_name(wire: u32) -> &'static str {
    match HostType::from_wire(wire) {
        HostType::SuperSeed => "super",
        HostType::Normal | HostType::StrongSeed | HostType::WeakSeed | HostType::Unknown => {
            "normal"
        }
    }
}

/// One host of one scheduler cluster, with what the manager's row would
/// say about it.
pub struct Row<'a> {
    pub id: u64,
    pub scheduler_cluster_id: u64,
    pub host: &'a Host,
    /// `inactive` while its list is served past freshness because its
    /// cluster stopped answering, else `active`.
    pub state: &'static str,
    /// When the host list holding it was read from its scheduler.
    pub read_at: DateTime<Utc>,
    /// When a replica first listed the host (see `first_seen`).
    pub created_at: DateTime<Utc>,
}

impl<'a> Row<'a> {
    pub fn new(
        scheduler_cluster_id: u64,
        host: &'a Host,
        state: &'static str,
        read_at: DateTime<Utc>,
    ) -> Row<'a> {
        Row {
            id: peer_id(scheduler_cluster_id, &host.id),
            scheduler_cluster_id,
            host,
            state,
            read_at,
            created_at: read_at,
        }
    }

    fn idc(&self) -> &str {
        self.host
            .network
            .as_ref()
            .and_then(|n| n.idc.as_deref())
            .unwrap_or("")
    }

    fn location(&self) -> &str {
        self.host
            .network
            .as_ref()
            .and_then(|n| n.location.as_deref())
            .unwrap_or("")
    }

    fn git_version(&self) -> &str {
        self.host
            .build
            .as_ref()
            .map(|b| b.git_version.as_str())
            .unwrap_or("")
    }

    fn git_commit(&self) -> &str {
        self.host
            .build
            .as_ref()
            .and_then(|b| b.git_commit.as_deref())
            .unwrap_or("")
    }

    fn build_platform(&self) -> &str {
        self.host
            .build
            .as_ref()
            .and_then(|b| b.platform.as_deref())
            .unwrap_or("")
    }

    /// Every given filter matches exactly.
    pub fn matches(&self, f: &PeerFilter) -> bool {
        fn eq(wanted: &Option<String>, value: &str) -> bool {
            wanted.as_deref().is_none_or(|w| w == value)
        }
        fn num(wanted: Option<i32>, value: i32) -> bool {
            wanted.is_none_or(|w| w == value)
        }
        let h = self.host;
        eq(&f.host_name, &h.hostname)
            && eq(&f.r#type, type_name(h.r#type))
            && eq(&f.idc, self.idc())
            && eq(&f.location, self.location())
            && eq(&f.ip, &h.ip)
            && num(f.port, h.port)
            && num(f.download_port, h.download_port)
            && num(f.proxy_port, h.proxy_port)
            // Schedulers do not report an object storage port: 0.
            && num(f.object_storage_port, 0)
            && eq(&f.state, self.state)
            && eq(&f.os, &h.os)
            && eq(&f.platform, &h.platform)
            && eq(&f.platform_family, &h.platform_family)
            && eq(&f.platform_version, &h.platform_version)
            && eq(&f.kernel_version, &h.kernel_version)
            && eq(&f.git_version, self.git_version())
            && eq(&f.git_commit, self.git_commit())
            && eq(&f.build_platform, self.build_platform())
            && f
                .scheduler_cluster_id
                .is_none_or(|c| c == self.scheduler_cluster_id)
    }

    /// The row as the manager writes it, with its preloaded cluster.
    pub fn to_json<'b>(&'b self, cluster: &'b SchedulerClusterJson) -> PeerJson<'b> {
        let h = self.host;
        PeerJson {
            id: self.id,
            // Never after the list that shows it was read.
            created_at: go_time(self.created_at.min(self.read_at)),
            updated_at: go_time(self.read_at),
            is_del: 0,
            host_name: &h.hostname,
            r#type: type_name(h.r#type),
            idc: self.idc(),
            location: self.location(),
            ip: &h.ip,
            port: h.port,
            download_port: h.download_port,
            proxy_port: h.proxy_port,
            object_storage_port: 0,
            state: self.state,
            os: &h.os,
            platform: &h.platform,
            platform_family: &h.platform_family,
            platform_version: &h.platform_version,
            kernel_version: &h.kernel_version,
            git_version: self.git_version(),
            git_commit: self.git_commit(),
            build_platform: self.build_platform(),
            scheduler_cluster_id: self.scheduler_cluster_id,
            scheduler_cluster: cluster,
        }
    }
}

/// `models.Peer` as `encoding/json` writes it (field order included).
#[derive(Serialize)]
pub struct PeerJson<'a> {
    pub id: u64,
    pub created_at: String,
    pub updated_at: String,
    pub is_del: u32,
    pub host_name: &'a str,
    #[serde(rename = "type")]
    pub r#type: &'static str,
    pub idc: &'a str,
    pub location: &'a str,
    pub ip: &'a str,
    pub port: i32,
    pub download_port: i32,
    pub proxy_port: i32,
    pub object_storage_port: i32,
    pub state: &'static str,
    pub os: &'a str,
    pub platform: &'a str,
    pub platform_family: &'a str,
    pub platform_version: &'a str,
    pub kernel_version: &'a str,
    pub git_version: &'a str,
    pub git_commit: &'a str,
    pub build_platform: &'a str,
    pub scheduler_cluster_id: u64,
    pub scheduler_cluster: &'a SchedulerClusterJson,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

/// The preloaded `models.SchedulerCluster` of a peer, read from the
/// manager when dfgraph can ask it (`GET /api/v1/scheduler-clusters/{id}`);
/// else only the id is known and the name is made from it, so consoles
/// that group by name still group by cluster. The lists a peer's preload
/// leaves empty are always `null`, whatever the manager's answer held.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SchedulerClusterJson {
    pub id: u64,
    #[serde(default = "zero_time")]
    pub created_at: String,
    #[serde(default = "zero_time")]
    pub updated_at: String,
    #[serde(default)]
    pub is_del: u32,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub bio: String,
    #[serde(default = "empty_object")]
    pub config: serde_json::Value,
    #[serde(default = "empty_object")]
    pub client_config: serde_json::Value,
    #[serde(default = "empty_object")]
    pub seed_client_config: serde_json::Value,
    #[serde(default = "empty_object")]
    pub scopes: serde_json::Value,
    #[serde(default)]
    pub is_default: bool,
    #[serde(skip_deserializing)]
    pub seed_peer_clusters: (),
    #[serde(skip_deserializing)]
    pub schedulers: (),
    #[serde(skip_deserializing)]
    pub peers: (),
    #[serde(skip_deserializing)]
    pub jobs: (),
}

fn zero_time() -> String {
    GO_ZERO_TIME.to_owned()
}

impl SchedulerClusterJson {
    /// What dfgraph knows of a cluster the manager did not describe.
    pub fn new(id: u64) -> SchedulerClusterJson {
        SchedulerClusterJson {
            id,
            created_at: zero_time(),
            updated_at: zero_time(),
            is_del: 0,
            name: format!("scheduler-cluster-{id}"),
            bio: String::new(),
            config: empty_object(),
            client_config: empty_object(),
            seed_client_config: empty_object(),
            scopes: empty_object(),
            is_default: false,
            seed_peer_clusters: (),
            schedulers: (),
            peers: (),
            jobs: (),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_distinct_and_exact_in_javascript() {
        let a = peer_id(1, "10.0.0.1-host-a");
        assert_eq!(a, peer_id(1, "10.0.0.1-host-a"));
        assert_ne!(a, peer_id(2, "10.0.0.1-host-a"));
        assert_ne!(a, peer_id(1, "10.0.0.1-host-b"));
        // Pinned: changing the derivation breaks every saved link.
        assert_eq!(peer_id(1, "h"), {
            let d = Sha256::digest([&1u64.to_be_bytes()[..], b"h"].concat());
            u64::from_be_bytes(d[..8].try_into().unwrap()) >> 11
        });
        for i in 0..10_000 {
            let id = peer_id(i % 7, &format!("host-{i}"));
            assert!(id > 0 && id < (1 << 53), "{id}");
        }
    }

    #[test]
    fn times_as_go_writes_them() {
        let at = DateTime::from_timestamp(1_700_000_000, 120_000_000).unwrap();
        assert_eq!(go_time(at), "2023-11-14T22:13:20.12Z");
        let whole = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        assert_eq!(go_time(whole), "2023-11-14T22:13:20Z");
        let nanos = DateTime::from_timestamp(1_700_000_000, 1).unwrap();
        assert_eq!(go_time(nanos), "2023-11-14T22:13:20.000000001Z");
    }

    #[test]
    fn type_names_as_the_manager_writes_them() {
        assert_eq!(
            (0..5).map(type_name).collect::<Vec<_>>(),
            ["normal", "super", "normal", "normal", "normal"]
        );
    }
}
