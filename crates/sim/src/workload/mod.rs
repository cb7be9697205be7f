//! The simulated cluster's state: hosts, tasks and peers per scheduler
//! cluster, generated from a seed, and the `tick` that moves them.
//!
//! Everything random comes from one seeded [`SmallRng`] and is visited in a
//! fixed order (hosts in a `Vec`, tasks in a `BTreeMap` keyed by id), so the
//! same seed gives the same ids and the same sequence of states. Only
//! timestamps come from the wall clock, and task placement comes from the
//! scheduler addresses (which may be ephemeral ports); neither feeds back
//! into the random stream.
//!
//! Hosts of a cluster live in an `Arc<Vec<Host>>` that is changed
//! copy-on-write, so `ListHosts` takes a snapshot by cloning one `Arc` under
//! the lock and does the (unavoidable) deep copy outside it.
//!
//! This file holds the stored shapes; each concept lives in its own file:
//! `generate` (seeded hosts, tasks, peers), `initial` (the first world),
//! `fsm` (peer and task state machines), `tick` (how the world moves),
//! `cluster` (one cluster's host list), `serve` (what the RPCs read),
//! `hooks` (direct changes), `shared` (the lock), `host_load`, `time`.

mod cluster;
mod edge;
mod fsm;
mod generate;
mod hooks;
mod host_load;
mod initial;
mod serve;
mod shared;
mod tick;
mod time;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use super::ring::Ring;
use dfgraph_proto::common::v2::{Host, Peer, Task};
use generate::Gen;

pub use edge::{ANNOUNCED_CLUSTER_OFFSET, EDGE_SECRET};
pub(crate) use shared::{Shared, SharedWorkload, read, tick, write};

/// Parameters for [`Workload::new`].
pub(crate) struct WorkloadParams {
    /// Scheduler clusters in order: id and scheduler addresses.
    pub(crate) clusters: Vec<(u64, Vec<SocketAddr>)>,
    pub(crate) hosts: usize,
    pub(crate) tasks: usize,
    pub(crate) peers_per_task: usize,
    pub(crate) seed: u64,
    /// Gives each generated host a health listener (its port); `None`
    /// leaves hosts unserved.
    pub(crate) binder: Option<Arc<crate::health::Binder>>,
}

/// One peer as stored: the message without its embedded task and host.
pub(crate) struct PeerEntry {
    peer: Peer,
    host_id: String,
}

/// One task as stored, with its owner and its peers.
pub(crate) struct TaskEntry {
    task: Task,
    owner: SocketAddr,
    peers: Vec<PeerEntry>,
}

/// State of one scheduler cluster (shared by all its schedulers).
pub(crate) struct ClusterState {
    schedulers: Vec<SocketAddr>,
    ring: Ring,
    hosts: Arc<Vec<Host>>,
    host_index: HashMap<String, usize>,
    tasks: BTreeMap<String, TaskEntry>,
    /// Peers served without their host and task (the `edge` profile).
    bare_peers: HashSet<String>,
}

/// peer id -> (cluster id, task id)
type PeerIndex = HashMap<String, (u64, String)>;

/// The whole simulated state.
pub(crate) struct Workload {
    generator: Gen,
    clusters: BTreeMap<u64, ClusterState>,
    /// task id -> cluster id
    task_index: HashMap<String, u64>,
    peer_index: PeerIndex,
    peers_per_task: usize,
    /// The `edge` profile: [`Workload::roughen`] after every tick.
    pub(crate) edge: bool,
}

#[cfg(test)]
mod tests {
    use super::fsm::peer_state as ps;
    use super::*;

    fn params(seed: u64) -> WorkloadParams {
        let addrs = |base: u16| {
            (0..3)
                .map(|i| SocketAddr::from(([127, 0, 0, 1], base + i)))
                .collect::<Vec<_>>()
        };
        WorkloadParams {
            clusters: vec![(1, addrs(7000)), (2, addrs(8000))],
            hosts: 60,
            tasks: 20,
            peers_per_task: 5,
            seed,
            binder: None,
        }
    }

    fn fingerprint(w: &Workload) -> Vec<String> {
        let mut out = Vec::new();
        for c in w.cluster_ids() {
            out.extend(w.hosts(c).iter().map(|h| h.id.clone()));
            out.extend(w.tasks(c).iter().map(|t| format!("{}:{}", t.id, t.state)));
            out.extend(w.peers(c).iter().map(|p| format!("{}:{}", p.id, p.state)));
        }
        out
    }

    #[test]
    fn same_seed_same_world() {
        let mut a = Workload::new(params(7));
        let mut b = Workload::new(params(7));
        assert_eq!(fingerprint(&a), fingerprint(&b));
        for _ in 0..30 {
            a.tick();
            b.tick();
        }
        assert_eq!(fingerprint(&a), fingerprint(&b));
        let c = Workload::new(params(8));
        assert_ne!(fingerprint(&Workload::new(params(7))), fingerprint(&c));
    }

    #[test]
    fn shape_and_invariants() {
        let mut w = Workload::new(params(1));
        assert_eq!(w.hosts(1).len(), 30);
        assert_eq!(w.hosts(2).len(), 30);
        assert_eq!(w.tasks(1).len(), 10);
        for _ in 0..50 {
            w.tick();
        }
        for c in w.cluster_ids() {
            let hosts = w.hosts(c);
            let mut ids: Vec<_> = hosts.iter().map(|h| h.id.clone()).collect();
            ids.sort();
            ids.dedup();
            assert_eq!(ids.len(), hosts.len());
            assert!(hosts.iter().all(|h| h.scheduler_cluster_id == c));
            let peers = w.peers(c);
            for t in w.tasks(c) {
                assert_eq!(t.id.len(), 64);
                let mine: Vec<_> = peers
                    .iter()
                    .filter(|p| p.task.as_ref().unwrap().id == t.id)
                    .collect();
                let live = mine.iter().filter(|p| p.state != ps::LEAVE).count();
                assert_eq!(t.peer_count as usize, live);
                assert_eq!(
                    t.has_available_peer,
                    mine.iter().any(|p| p.state == ps::SUCCEEDED)
                );
                assert!(w.task_owner(&t.id).is_some());
            }
            for p in &peers {
                let host = p.host.as_ref().unwrap();
                assert!(p.id.starts_with(&format!("{}-{}-", host.ip, host.hostname)));
            }
        }
    }
}
