//! Comparisons of two observations: which hosts joined, left or changed
//! (and in which fields), and what changed in a peer or a task. Field
//! names are the GraphQL ones, so `changedFields` reads like the schema.
//!
//! A host list is compared as it arrives, undecoded: each host's entry is
//! hashed and only the entries whose bytes the last poll did not list are
//! read, decoded and compared field by field ([`HostSnapshot`]).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::HostChange;
use crate::cluster::host_list::{EntryReader, WireError, decode_entry, keys};
use crate::cluster::{HostList, ReceiveHosts};
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
    /// Polls begun; stamps which hosts the latest one listed.
    polls: u64,
    /// What the poll being received has listed so far.
    pending: Pending,
    /// Finds the entries of an answer arriving in pieces.
    reader: EntryReader,
    /// Whether [`Self::received`] keeps the answer's bytes.
    keep_received: bool,
    /// The last answer received, when kept; kept for its capacity.
    received: Vec<u8>,
}

/// The first pass of a poll, made entry by entry as the answer arrives.
#[derive(Default)]
struct Pending {
    /// The entries in the scheduler's order; kept for its capacity.
    listed: Vec<Listed>,
    /// Entries decoded (new bytes).
    decoded: usize,
    /// Known hosts this poll listed.
    seen: usize,
    carried: BTreeSet<u64>,
    last_carried: Option<u64>,
    /// The id the cluster is served as, stamped on decoded hosts.
    cluster_id: u64,
    /// Time spent finding, hashing and decoding entries.
    spent: Duration,
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
    /// Time spent on the poll's entries and applying it (not receiving).
    pub compared_in: Duration,
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
    /// as it was. The same as [`Self::start_poll`], [`Self::listed`] for each
    /// entry and [`Self::finish`], which the watcher calls as the answer
    /// arrives; the tests hold those to this whole-answer form.
    #[cfg(test)]
    pub fn update(
        &mut self,
        response: &[u8],
        first: bool,
        cluster_id: u64,
    ) -> Result<HostPoll, WireError> {
        self.start_poll(cluster_id);
        for range in crate::cluster::host_list::entries(response) {
            self.listed(&response[range?])?;
        }
        Ok(self.finish(first))
    }

    /// Starts a poll of the cluster served as `cluster_id`; what an
    /// unfinished one listed is forgotten. Until [`Self::finish`], the
    /// snapshot is as it was: a poll that fails half way changes nothing.
    pub fn start_poll(&mut self, cluster_id: u64) {
        // A failed poll uses up its number too, so the marks it left on
        // known hosts never count for a later poll.
        self.polls += 1;
        let pending = &mut self.pending;
        pending.listed.clear();
        pending.listed.reserve(self.by_bytes.len());
        pending.decoded = 0;
        pending.seen = 0;
        pending.carried.clear();
        pending.last_carried = None;
        pending.cluster_id = cluster_id;
        pending.spent = Duration::ZERO;
    }

    /// The poll's next entry. Known bytes are only marked as listed by
    /// this poll (the one lookup most entries cost); new ones are decoded,
    /// so one bad entry fails the poll before any host changes.
    pub fn listed(&mut self, bytes: &[u8]) -> Result<(), WireError> {
        let poll = self.polls;
        let pending = &mut self.pending;
        let hash = xxhash_rust::xxh3::xxh3_128(bytes);
        let entry = match self.by_bytes.get_mut(&hash) {
            Some(known) => {
                if known.seen != poll {
                    known.seen = poll;
                    pending.seen += 1;
                }
                Listed {
                    hash,
                    host: known.host.clone(),
                    carried: known.carried,
                    fresh: false,
                }
            }
            None => {
                pending.decoded += 1;
                let (_, carried) = keys(bytes)?;
                Listed {
                    hash,
                    host: Arc::new(decode_entry(bytes, pending.cluster_id)?),
                    carried,
                    fresh: true,
                }
            }
        };
        // Runs of one id are the rule: insert only where it changes.
        if pending.last_carried != Some(entry.carried) {
            pending.carried.insert(entry.carried);
            pending.last_carried = Some(entry.carried);
        }
        pending.listed.push(entry);
        Ok(())
    }

    /// Makes the snapshot ready to receive a poll's answer (as
    /// [`ReceiveHosts`]) of the cluster served as `cluster_id`, keeping the
    /// answer's bytes for [`Self::received`] if `keep_bytes`.
    pub fn receive_as(&mut self, cluster_id: u64, keep_bytes: bool) {
        self.pending.cluster_id = cluster_id;
        self.keep_received = keep_bytes;
        if !keep_bytes {
            self.received = Vec::new();
        }
    }

    /// The bytes of the answer last received, if they were kept.
    pub fn received(&self) -> Option<&[u8]> {
        self.keep_received.then_some(self.received.as_slice())
    }

    /// Ends the poll whose every entry was [`Self::listed`]: applies it
    /// and reports what changed (nothing when `first`).
    pub fn finish(&mut self, first: bool) -> HostPoll {
        let started = Instant::now();
        let poll = self.polls;
        let mut listed = std::mem::take(&mut self.pending.listed);
        let mut seen = self.pending.seen;
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
        self.pending.listed = listed;
        HostPoll {
            diffs,
            list,
            decoded: self.pending.decoded,
            carried: std::mem::take(&mut self.pending.carried),
            compared_in: self.pending.spent + started.elapsed(),
        }
    }
}

/// A poll's answer taken in as it arrives: each entry is listed as soon as
/// its last byte is in; [`HostSnapshot::finish`] applies the poll.
impl ReceiveHosts for HostSnapshot {
    fn begin(&mut self) {
        self.start_poll(self.pending.cluster_id);
        self.reader.restart();
        self.received.clear();
    }

    fn piece(&mut self, bytes: &[u8]) -> Result<(), WireError> {
        if self.keep_received {
            self.received.extend_from_slice(bytes);
        }
        let started = Instant::now();
        let mut reader = std::mem::take(&mut self.reader);
        let read = reader.feed(bytes, |entry| self.listed(entry));
        self.reader = reader;
        self.pending.spent += started.elapsed();
        read
    }

    fn end(&mut self) -> Result<(), WireError> {
        self.reader.finish()
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
/// `HostSnapshot::update` must agree with.
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
    use bytes::Bytes;

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
    /// same answers of a real (simulated) scheduler over gRPC, received as
    /// the watcher receives them (frame by frame, entries cut across
    /// frames), tick after tick: the same events, the same list, and only
    /// changed hosts decoded.
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

        let snapshot = std::sync::Mutex::new(HostSnapshot::default());
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
            snapshot.lock().unwrap().receive_as(cluster_id, true);
            let received = client
                .receive_hosts(cluster_id, Deadline::NONE, &snapshot)
                .await
                .expect("ListHosts answers");
            let mut snapshot = snapshot.lock().unwrap();
            let bytes = snapshot.received().expect("kept").to_vec();
            assert_eq!(received.len, bytes.len());
            assert!(bytes.len() > 4 * 16_384, "the answer spans many frames");
            let hosts = ListHostsResponse::decode(bytes.as_slice())
                .expect("decodes")
                .hosts;
            let new = decoded_hosts(hosts.clone());
            let expected = old
                .as_ref()
                .map(|old| diff_hosts(old, &new))
                .unwrap_or_default();
            let polled = snapshot.finish(old.is_none());
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

    /// The watcher's call when schedulers fail: the list comes whole from
    /// the scheduler that answers, a failed call says what failed, and a
    /// hung scheduler costs the call's timeout, not a hang.
    #[tokio::test]
    async fn a_host_list_comes_whole_from_the_scheduler_that_answers() {
        use crate::deadline::Deadline;
        use dfgraph_sim::{SimCluster, SimConfig};
        use std::sync::Mutex;

        let sim = SimCluster::start(SimConfig {
            clusters: 1,
            schedulers_per_cluster: 2,
            hosts: 300,
            tasks: 10,
            peers_per_task: 1,
            tick_interval: None,
            ..SimConfig::default()
        })
        .await
        .expect("simulator starts");
        let mut config = crate::config::Config::default();
        config.timeouts.list_hosts = std::time::Duration::from_millis(300);
        let (client, cluster_id) = crate::events::client_with(&sim, &config);
        let schedulers = sim.schedulers();
        let (a, b) = (schedulers[0].addr, schedulers[1].addr);
        let receive = |snapshot: HostSnapshot| {
            let client = client.clone();
            async move {
                let receiving = Mutex::new(snapshot);
                receiving.lock().unwrap().receive_as(cluster_id, false);
                let received = client
                    .receive_hosts(cluster_id, Deadline::NONE, &receiving)
                    .await;
                (received, receiving.into_inner().unwrap())
            }
        };

        sim.set_error(a, Some(tonic::Code::Internal));
        let (received, mut snapshot) = receive(HostSnapshot::default()).await;
        let received = received.expect("the other scheduler answers");
        assert_eq!(received.from.addr, b);
        let polled = snapshot.finish(true);
        let ids: Vec<&str> = polled.list.hosts.iter().map(|h| h.id.as_str()).collect();
        let listed: Vec<String> = sim.hosts(cluster_id).into_iter().map(|h| h.id).collect();
        assert_eq!(ids, listed);

        sim.set_error(b, Some(tonic::Code::Internal));
        let (failed, _) = receive(HostSnapshot::default()).await;
        assert_eq!(failed.err().map(|e| e.code()), Some("SCHEDULER_ERROR"));

        sim.set_error(a, None);
        sim.set_error(b, None);
        sim.set_hang(a, true);
        sim.set_hang(b, true);
        let started = std::time::Instant::now();
        let (hung, _) = receive(HostSnapshot::default()).await;
        assert!(hung.is_err(), "a hung scheduler fails the call");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        sim.set_hang(a, false);
        sim.set_hang(b, false);
        sim.shutdown().await;
    }

    /// An answer abandoned half way (its scheduler failed) leaves nothing
    /// behind: the next answer is taken in as if it were the only one.
    #[test]
    fn an_answer_abandoned_half_way_leaves_nothing_behind() {
        use crate::proto::scheduler::v2::ListHostsResponse;
        use prost::Message;

        let hosts = |names: &[&str]| -> Vec<u8> {
            ListHostsResponse {
                hosts: names.iter().map(|n| host(n, n)).collect(),
            }
            .encode_to_vec()
        };
        let whole = hosts(&["a", "b", "c"]);
        let other = hosts(&["x", "y", "z"]);
        let mut snapshot = HostSnapshot::default();
        snapshot.receive_as(4, true);
        ReceiveHosts::begin(&mut snapshot);
        snapshot.piece(&other[..other.len() / 2 + 1]).unwrap();
        ReceiveHosts::begin(&mut snapshot);
        for piece in whole.chunks(5) {
            snapshot.piece(piece).unwrap();
        }
        snapshot.end().unwrap();
        assert_eq!(snapshot.received(), Some(whole.as_slice()));
        let polled = snapshot.finish(true);
        let ids: Vec<&str> = polled.list.hosts.iter().map(|h| h.id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert_eq!(polled.decoded, 3);
        assert_eq!(snapshot.len(), 3);
        // An answer the stream ends inside fails at its end.
        ReceiveHosts::begin(&mut snapshot);
        snapshot.piece(&whole[..whole.len() - 1]).unwrap();
        assert!(snapshot.end().is_err());
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
