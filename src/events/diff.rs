//! Comparisons of two observations: which hosts joined, left or changed
//! (and in which fields), and what changed in a peer or a task. Field
//! names are the GraphQL ones, so `changedFields` reads like the schema.
//!
//! A host list is compared as it arrives, undecoded: each host's entry is
//! hashed and only the entries whose hash differs from the last poll's are
//! decoded and compared field by field ([`HostSnapshot::update`]).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use bytes::Bytes;

use super::HostChange;
use crate::cluster::HostList;
use crate::cluster::host_list::{WireError, split};
use crate::proto::common::v2::{Host, Task};

/// Fields of a host that describe load rather than identity; they change
/// on every announce of a busy dfdaemon.
pub const RESOURCE_FIELDS: [&str; 4] = ["cpu", "memory", "network", "disk"];

/// One host's difference between two lists.
#[derive(Clone, Debug, PartialEq)]
pub struct HostDiff {
    pub change: HostChange,
    pub host: Arc<Host>,
    pub changed_fields: Vec<String>,
}

/// A decoded host list by host id: what [`diff_hosts`] compares.
pub type DecodedHosts = HashMap<String, Arc<Host>>;

pub fn decoded_hosts(hosts: impl IntoIterator<Item = Host>) -> DecodedHosts {
    hosts
        .into_iter()
        .map(|h| (h.id.clone(), Arc::new(h)))
        .collect()
}

/// The last host list seen of one cluster: each host decoded (shared with
/// the cached list) and the hash of its entry's bytes, by id.
#[derive(Default)]
pub struct HostSnapshot {
    /// Looked up twice per listed host per poll: foldhash, not SipHash
    /// (ids come from the schedulers, and the seed is still random).
    hosts: HashMap<Box<str>, Known, foldhash::fast::RandomState>,
    /// Polls applied; stamps which hosts the latest one listed.
    polls: u64,
}

struct Known {
    /// XXH3-128 of the entry's bytes: equal hashes mean equal bytes (a
    /// collision is about 2^-128 likely), so the host is not decoded again.
    hash: u128,
    host: Arc<Host>,
    /// The poll that last listed this host.
    seen: u64,
}

/// What one poll of a host list found.
pub struct HostPoll {
    /// Joined and updated hosts by id, then those that left, by id
    /// (empty on a first sight).
    pub diffs: Vec<HostDiff>,
    /// The list in the scheduler's order, sharing unchanged hosts with
    /// the previous one.
    pub list: HostList,
    /// Entries decoded (new or changed bytes).
    pub decoded: usize,
    /// The scheduler cluster ids the entries carry, as the scheduler wrote
    /// them (the hosts in `list` carry the served id instead).
    pub carried: BTreeSet<u64>,
}

impl HostSnapshot {
    /// Hosts known.
    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// Takes in an encoded `ListHostsResponse` of the cluster served as
    /// `cluster_id` and reports what changed since the last one (nothing
    /// when `first`: there is nothing to compare with). Decoded hosts are
    /// stamped with `cluster_id`. A malformed response leaves the snapshot
    /// as it was.
    pub fn update(
        &mut self,
        response: &Bytes,
        first: bool,
        cluster_id: u64,
    ) -> Result<HostPoll, WireError> {
        let entries = split(response)?;
        let mut carried = BTreeSet::new();
        let mut last_carried = None;
        for entry in &entries {
            // Runs of one id are the rule: insert only where it changes.
            if last_carried != Some(entry.cluster_id) {
                carried.insert(entry.cluster_id);
                last_carried = Some(entry.cluster_id);
            }
        }
        // Decode every new or changed entry before touching the snapshot,
        // so one bad entry fails the poll as a whole.
        let mut hosts = Vec::with_capacity(entries.len());
        let mut decoded = 0;
        for entry in &entries {
            let hash = xxhash_rust::xxh3::xxh3_128(&entry.bytes);
            match self.hosts.get(entry.id()) {
                Some(known) if known.hash == hash => hosts.push((hash, known.host.clone())),
                _ => {
                    decoded += 1;
                    hosts.push((hash, Arc::new(entry.decode(cluster_id)?)));
                }
            }
        }
        self.polls += 1;
        let poll = self.polls;
        // What each joined or changed host was before this poll (`None`:
        // it joined); the first value recorded is the one before the poll.
        let mut before: HashMap<&str, Option<Arc<Host>>> = HashMap::new();
        let mut listed = 0;
        for (entry, (hash, host)) in entries.iter().zip(&hosts) {
            // Known hosts are the rule: no key is allocated for them.
            match self.hosts.get_mut(entry.id()) {
                None => {
                    listed += 1;
                    before.entry(entry.id()).or_insert(None);
                    self.hosts.insert(
                        entry.id().into(),
                        Known {
                            hash: *hash,
                            host: host.clone(),
                            seen: poll,
                        },
                    );
                }
                Some(known) => {
                    if known.seen != poll {
                        listed += 1;
                    }
                    if !Arc::ptr_eq(&known.host, host) {
                        before
                            .entry(entry.id())
                            .or_insert_with(|| Some(known.host.clone()));
                    }
                    known.hash = *hash;
                    known.host = host.clone();
                    known.seen = poll;
                }
            }
        }
        let mut left = Vec::new();
        if listed < self.hosts.len() {
            self.hosts.retain(|_, known| {
                let stays = known.seen == poll;
                if !stays {
                    left.push(known.host.clone());
                }
                stays
            });
        }
        let list = HostList {
            hosts: hosts.into_iter().map(|(_, host)| host).collect(),
        };
        if first {
            return Ok(HostPoll {
                diffs: Vec::new(),
                list,
                decoded,
                carried,
            });
        }
        let mut changed: Vec<(&str, Option<Arc<Host>>)> = before.into_iter().collect();
        changed.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let mut diffs = Vec::with_capacity(changed.len() + left.len());
        for (id, before) in changed {
            let Some(now) = self.hosts.get(id) else {
                continue;
            };
            if let Some(diff) = host_diff(before.as_ref(), &now.host) {
                diffs.push(diff);
            }
        }
        left.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        diffs.extend(left.into_iter().map(|host| HostDiff {
            change: HostChange::Left,
            host,
            changed_fields: Vec::new(),
        }));
        Ok(HostPoll {
            diffs,
            list,
            decoded,
            carried,
        })
    }
}

/// How `host` differs from what it was (`None`: it joined).
fn host_diff(before: Option<&Arc<Host>>, host: &Arc<Host>) -> Option<HostDiff> {
    let Some(before) = before else {
        return Some(HostDiff {
            change: HostChange::Joined,
            host: host.clone(),
            changed_fields: Vec::new(),
        });
    };
    if Arc::ptr_eq(before, host) {
        return None;
    }
    let changed_fields = host_fields(before, host);
    (!changed_fields.is_empty()).then(|| HostDiff {
        change: HostChange::Updated,
        host: host.clone(),
        changed_fields,
    })
}

/// Whether two load figures' messages are the same. A NaN is not equal to
/// itself, so messages that differ as values are compared as bytes: a
/// dfdaemon that keeps sending NaN has not changed.
fn same_load<M: prost::Message + PartialEq>(a: &Option<M>, b: &Option<M>) -> bool {
    a == b
        || match (a, b) {
            (Some(a), Some(b)) => a.encode_to_vec() == b.encode_to_vec(),
            _ => false,
        }
}

/// What turned `old` into `new` when both are decoded whole: joined and
/// updated hosts by id, then the hosts that left, by id. The reference
/// [`HostSnapshot::update`] must agree with.
pub fn diff_hosts(old: &DecodedHosts, new: &DecodedHosts) -> Vec<HostDiff> {
    let mut diffs = Vec::new();
    let mut ids: Vec<&String> = new.keys().collect();
    ids.sort();
    for id in ids {
        diffs.extend(host_diff(old.get(id), &new[id]));
    }
    let mut gone: Vec<(&String, &Arc<Host>)> = old
        .iter()
        .filter(|(id, _)| !new.contains_key(*id))
        .collect();
    gone.sort_by_key(|(id, _)| *id);
    for (_, host) in gone {
        diffs.push(HostDiff {
            change: HostChange::Left,
            host: host.clone(),
            changed_fields: Vec::new(),
        });
    }
    diffs
}

/// Names of the fields that differ between two versions of a host.
pub fn host_fields(a: &Host, b: &Host) -> Vec<String> {
    let checks: [(&str, bool); 20] = [
        ("type", a.r#type != b.r#type),
        ("hostname", a.hostname != b.hostname),
        ("ip", a.ip != b.ip),
        ("port", a.port != b.port),
        ("downloadPort", a.download_port != b.download_port),
        ("proxyPort", a.proxy_port != b.proxy_port),
        ("name", a.name != b.name),
        ("os", a.os != b.os),
        ("platform", a.platform != b.platform),
        ("platformFamily", a.platform_family != b.platform_family),
        ("platformVersion", a.platform_version != b.platform_version),
        ("kernelVersion", a.kernel_version != b.kernel_version),
        ("cpu", !same_load(&a.cpu, &b.cpu)),
        ("memory", !same_load(&a.memory, &b.memory)),
        ("network", a.network != b.network),
        ("disk", !same_load(&a.disk, &b.disk)),
        ("build", a.build != b.build),
        (
            "schedulerClusterId",
            a.scheduler_cluster_id != b.scheduler_cluster_id,
        ),
        ("disableShared", a.disable_shared != b.disable_shared),
        ("id", a.id != b.id),
    ];
    checks
        .iter()
        .filter(|(_, differs)| *differs)
        .map(|(name, _)| (*name).to_string())
        .collect()
}

/// True when every changed field is a load figure.
pub fn only_resources(changed_fields: &[String]) -> bool {
    !changed_fields.is_empty()
        && changed_fields
            .iter()
            .all(|f| RESOURCE_FIELDS.contains(&f.as_str()))
}

/// Names of the fields that differ between two versions of a task
/// (`updatedAt` alone is not a change anyone watches for).
pub fn task_fields(a: &Task, b: &Task) -> Vec<String> {
    let checks: [(&str, bool); 12] = [
        ("state", a.state != b.state),
        ("peerCount", a.peer_count != b.peer_count),
        (
            "hasAvailablePeer",
            a.has_available_peer != b.has_available_peer,
        ),
        ("contentLength", a.content_length != b.content_length),
        ("pieceCount", a.piece_count != b.piece_count),
        ("sizeScope", a.size_scope != b.size_scope),
        ("type", a.r#type != b.r#type),
        ("url", a.url != b.url),
        ("digest", a.digest != b.digest),
        ("tag", a.tag != b.tag),
        ("application", a.application != b.application),
        (
            "filteredQueryParams",
            a.filtered_query_params != b.filtered_query_params,
        ),
    ];
    checks
        .iter()
        .filter(|(_, differs)| *differs)
        .map(|(name, _)| (*name).to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::common::v2::Cpu;

    fn host(id: &str, hostname: &str) -> Host {
        Host {
            id: id.into(),
            hostname: hostname.into(),
            ..Host::default()
        }
    }

    #[test]
    fn hosts_that_join_leave_and_change_are_told_apart() {
        let old = decoded_hosts(vec![host("a", "a1"), host("b", "b1"), host("c", "c1")]);
        let mut changed = host("b", "b2");
        changed.cpu = Some(Cpu {
            logical_count: 4,
            ..Cpu::default()
        });
        let new = decoded_hosts(vec![host("a", "a1"), changed, host("d", "d1")]);
        let diffs = diff_hosts(&old, &new);
        let summary: Vec<_> = diffs
            .iter()
            .map(|d| (d.change, d.host.id.as_str(), d.changed_fields.clone()))
            .collect();
        assert_eq!(
            summary,
            vec![
                (
                    HostChange::Updated,
                    "b",
                    vec!["hostname".to_string(), "cpu".to_string()]
                ),
                (HostChange::Joined, "d", vec![]),
                (HostChange::Left, "c", vec![]),
            ]
        );
        assert_eq!(
            diffs[2].host.hostname, "c1",
            "a leaving host keeps its last state"
        );
    }

    /// The byte comparison against the full decode it replaces, on the
    /// same answers of a real (simulated) scheduler over gRPC, tick after
    /// tick: the same events, the same list, and only changed hosts decoded.
    #[tokio::test]
    async fn byte_comparison_reports_what_full_decoding_reports_on_simulated_ticks() {
        use crate::deadline::Deadline;
        use crate::proto::scheduler::v2::ListHostsResponse;
        use dfgraph_sim::{SimCluster, SimConfig};
        use prost::Message;

        let sim = SimCluster::start(SimConfig {
            clusters: 1,
            schedulers_per_cluster: 1,
            hosts: 500,
            tasks: 50,
            peers_per_task: 3,
            tick_interval: None,
            ..SimConfig::default()
        })
        .await
        .expect("simulator starts");
        let (client, cluster_id) = crate::events::client_for(&sim);

        let mut snapshot = HostSnapshot::default();
        let mut old: Option<DecodedHosts> = None;
        let mut kinds = std::collections::HashSet::new();
        let mut decoded_total = 0;
        for tick in 0..30 {
            if tick > 0 {
                sim.tick();
            }
            if tick % 7 == 3 {
                let hosts = sim.hosts(cluster_id);
                sim.remove_host(cluster_id, &hosts[tick].id);
                sim.upsert_host(Host {
                    id: format!("joined-{tick}"),
                    hostname: format!("joined-{tick}"),
                    scheduler_cluster_id: cluster_id,
                    ..Host::default()
                });
            }
            let bytes = client
                .list_hosts_raw(cluster_id, Deadline::NONE)
                .await
                .expect("ListHosts answers")
                .bytes;
            let hosts = ListHostsResponse::decode(bytes.clone())
                .expect("decodes")
                .hosts;
            let new = decoded_hosts(hosts.clone());
            let expected = old
                .as_ref()
                .map(|old| diff_hosts(old, &new))
                .unwrap_or_default();
            let polled = snapshot
                .update(&bytes, old.is_none(), cluster_id)
                .expect("well formed");
            assert_eq!(polled.diffs, expected, "tick {tick}");
            assert_eq!(polled.list, HostList::new(hosts), "tick {tick}");
            assert_eq!(snapshot.len(), new.len());
            if old.is_some() {
                let changed = expected
                    .iter()
                    .filter(|d| d.change != HostChange::Left)
                    .count();
                assert_eq!(polled.decoded, changed, "tick {tick}: decodes what changed");
                decoded_total += polled.decoded;
            }
            kinds.extend(expected.iter().map(|d| d.change));
            old = Some(new);
        }
        assert_eq!(kinds.len(), 3, "joins, leaves and updates all happened");
        assert!(
            decoded_total < 29 * 500 / 2,
            "most hosts are not decoded again ({decoded_total})"
        );
        sim.shutdown().await;
    }

    #[test]
    fn an_unchanged_list_has_no_differences() {
        let old = decoded_hosts(vec![host("a", "a1"), host("b", "b1")]);
        let new = decoded_hosts(vec![host("b", "b1"), host("a", "a1")]);
        assert!(diff_hosts(&old, &new).is_empty());
    }

    #[test]
    fn load_only_changes_are_recognised() {
        assert!(only_resources(&["cpu".into(), "disk".into()]));
        assert!(!only_resources(&["cpu".into(), "ip".into()]));
        assert!(!only_resources(&[]));
    }

    #[test]
    fn task_changes_name_their_fields_and_ignore_updated_at() {
        let a = Task {
            id: "t".into(),
            state: "Running".into(),
            peer_count: 3,
            ..Task::default()
        };
        let mut b = a.clone();
        b.updated_at = Some(prost_types::Timestamp {
            seconds: 9,
            nanos: 0,
        });
        assert!(task_fields(&a, &b).is_empty());
        b.state = "Succeeded".into();
        b.peer_count = 4;
        assert_eq!(task_fields(&a, &b), vec!["state", "peerCount"]);
    }
}
