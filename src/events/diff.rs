//! Comparisons of two observations: which hosts joined, left or changed
//! (and in which fields), and what changed in a peer or a task. Field
//! names are the GraphQL ones, so `changedFields` reads like the schema.
//!
//! A host list is compared as it arrives, undecoded: each host's entry is
//! hashed and only the entries whose bytes the last poll did not list are
//! read, decoded and compared field by field ([`HostSnapshot::update`]).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;

use super::HostChange;
use crate::cluster::HostList;
use crate::cluster::host_list::{WireError, decode_entry, entries, keys};
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
/// the cached list), found by the hash of its entry's bytes.
///
/// A poll hashes each entry and looks the hash up: an entry listed before
/// with the same bytes is not read any further (not even for its id),
/// which is what most entries of most polls are. Only entries with new
/// bytes are walked for their id, decoded and compared with what that id
/// was.
#[derive(Default)]
pub struct HostSnapshot {
    /// By the XXH3-128 of the entry's bytes: equal hashes mean equal bytes
    /// (a collision is about 2^-128 likely), so equal ids and contents.
    /// Foldhash over the hash: its seed is random, so no scheduler can
    /// choose colliding buckets.
    by_bytes: HashMap<u128, Known, foldhash::fast::RandomState>,
    /// Each known host id's entry in `by_bytes` (one per id: the last
    /// entry listed wins, as in decoding), by the XXH3-128 of the id: no
    /// copy of each id kept beside its host.
    by_id: HashMap<u128, u128, foldhash::fast::RandomState>,
    /// Polls applied; stamps which hosts the latest one listed.
    polls: u64,
    /// The entries of the poll being applied; kept for its capacity.
    scratch: Vec<Listed>,
}

struct Known {
    host: Arc<Host>,
    /// The scheduler cluster id the entry carries, as the scheduler wrote it.
    carried: u64,
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

/// One listed entry after the first pass of a poll.
struct Listed {
    hash: u128,
    host: Arc<Host>,
    carried: u64,
    /// Its bytes were not in the snapshot.
    fresh: bool,
}

impl HostSnapshot {
    /// Hosts known.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
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
        // A failed poll uses up its number too, so the marks it left on
        // known hosts never count for a later poll.
        self.polls += 1;
        let poll = self.polls;
        // Read every entry, decoding the new ones, before changing any
        // host, so one bad entry fails the poll as a whole. Known bytes
        // are only marked as listed by this poll (the one lookup most
        // entries cost).
        let mut listed = std::mem::take(&mut self.scratch);
        listed.clear();
        listed.reserve(self.by_bytes.len());
        let mut decoded = 0;
        // Known hosts this poll listed.
        let mut seen = 0;
        let mut carried = BTreeSet::new();
        let mut last_carried = None;
        for range in entries(response) {
            let bytes = &response[range?];
            let hash = xxhash_rust::xxh3::xxh3_128(bytes);
            let entry = match self.by_bytes.get_mut(&hash) {
                Some(known) => {
                    if known.seen != poll {
                        known.seen = poll;
                        seen += 1;
                    }
                    Listed {
                        hash,
                        host: known.host.clone(),
                        carried: known.carried,
                        fresh: false,
                    }
                }
                None => {
                    decoded += 1;
                    let (_, carried) = keys(bytes)?;
                    Listed {
                        hash,
                        host: Arc::new(decode_entry(bytes, cluster_id)?),
                        carried,
                        fresh: true,
                    }
                }
            };
            // Runs of one id are the rule: insert only where it changes.
            if last_carried != Some(entry.carried) {
                carried.insert(entry.carried);
                last_carried = Some(entry.carried);
            }
            listed.push(entry);
        }
        // What each joined or changed host was before this poll (`None`:
        // it joined); the first value recorded is the one before the poll.
        let mut before: HashMap<&str, Option<Arc<Host>>> = HashMap::new();
        // Entries listed earlier in this poll that a later one of the same
        // id replaced (a scheduler listing one id twice, with different
        // bytes): listed again further on, they are back (the last wins).
        let mut replaced_in_poll: HashSet<u128, foldhash::fast::RandomState> = HashSet::default();
        for entry in &listed {
            if !entry.fresh && !replaced_in_poll.remove(&entry.hash) {
                continue;
            }
            // New bytes: the host joined or changed.
            let id = entry.host.id.as_str();
            let key = id_key(id);
            let previous = self.by_id.get(&key).copied();
            if previous == Some(entry.hash) {
                // The same new entry listed twice.
                continue;
            }
            let replaced = previous.and_then(|hash| self.by_bytes.remove(&hash));
            match &replaced {
                Some(old) if old.seen == poll => {
                    replaced_in_poll.insert(previous.unwrap_or_default());
                }
                _ => seen += 1,
            }
            before
                .entry(id)
                .or_insert_with(|| replaced.map(|old| old.host));
            self.by_id.insert(key, entry.hash);
            self.by_bytes.insert(
                entry.hash,
                Known {
                    host: entry.host.clone(),
                    carried: entry.carried,
                    seen: poll,
                },
            );
        }
        let mut left = Vec::new();
        if seen < self.by_bytes.len() {
            let by_id = &mut self.by_id;
            self.by_bytes.retain(|_, known| {
                let stays = known.seen == poll;
                if !stays {
                    by_id.remove(&id_key(&known.host.id));
                    left.push(known.host.clone());
                }
                stays
            });
        }
        let mut diffs = Vec::new();
        if first {
            // Nothing to compare with.
            drop(before);
        } else {
            let mut changed: Vec<(&str, Option<Arc<Host>>)> = before.into_iter().collect();
            changed.sort_unstable_by(|a, b| a.0.cmp(b.0));
            diffs.reserve(changed.len() + left.len());
            for (id, before) in changed {
                let Some(now) = self
                    .by_id
                    .get(&id_key(id))
                    .and_then(|hash| self.by_bytes.get(hash))
                else {
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
        }
        let list = HostList {
            hosts: listed.drain(..).map(|entry| entry.host).collect(),
        };
        self.scratch = listed;
        Ok(HostPoll {
            diffs,
            list,
            decoded,
            carried,
        })
    }
}

/// A host id's key in [`HostSnapshot`]'s id index (a collision is about
/// 2^-128 likely).
fn id_key(id: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(id.as_bytes())
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

    proptest::proptest! {
        /// Any run of polls, with hosts joining, leaving, changing, changing
        /// back, listed twice (with the same or other bytes) and malformed
        /// answers between them: the snapshot reports what decoding each
        /// answer whole and comparing reports, and a malformed answer
        /// changes nothing.
        #[test]
        fn the_snapshot_agrees_with_decoding_every_answer_whole(
            polls in proptest::collection::vec(
                (proptest::collection::vec((0u8..6, 0u8..3), 0..9), proptest::bool::ANY),
                1..8,
            )
        ) {
            use crate::proto::scheduler::v2::ListHostsResponse;
            use prost::Message;

            let mut snapshot = HostSnapshot::default();
            let mut old: Option<DecodedHosts> = None;
            for (listed, malformed) in polls {
                let hosts: Vec<Host> = listed
                    .iter()
                    .map(|&(id, version)| Host {
                        id: format!("host-{id}"),
                        hostname: format!("name-{version}"),
                        scheduler_cluster_id: 3,
                        ..Host::default()
                    })
                    .collect();
                let wire = ListHostsResponse { hosts: hosts.clone() }.encode_to_vec();
                if malformed && !wire.is_empty() {
                    // Cut inside the last entry: never a whole answer.
                    let cut = Bytes::copy_from_slice(&wire[..wire.len() - 1]);
                    proptest::prop_assert!(snapshot.update(&cut, old.is_none(), 3).is_err());
                    continue;
                }
                let new = decoded_hosts(hosts.clone());
                let expected = old
                    .as_ref()
                    .map(|old| diff_hosts(old, &new))
                    .unwrap_or_default();
                let polled = snapshot
                    .update(&Bytes::from(wire), old.is_none(), 3)
                    .expect("well formed");
                proptest::prop_assert_eq!(polled.diffs, expected);
                proptest::prop_assert_eq!(polled.list, HostList::new(hosts));
                proptest::prop_assert_eq!(snapshot.len(), new.len());
                old = Some(new);
            }
        }
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
