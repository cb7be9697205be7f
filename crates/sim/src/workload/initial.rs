//! The initial world: every cluster filled with generated hosts, tasks and
//! peers, spread over the FSM so a fresh cluster already looks busy.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::fsm::{apply_state, peer_state as ps, received_state, refresh_task};
use super::generate::Gen;
use super::time::now_ts;
use super::{ClusterState, Ring, TaskEntry, Workload, WorkloadParams};
use dfgraph_proto::common::v2::{Peer, Task};

fn split(total: usize, parts: usize, index: usize) -> usize {
    total / parts + usize::from(index < total % parts)
}

impl Workload {
    /// Generates the initial state. Peers start spread over the FSM so a
    /// fresh cluster already looks busy.
    pub(crate) fn new(params: WorkloadParams) -> Self {
        let mut generator = Gen {
            rng: SmallRng::seed_from_u64(params.seed),
            binder: params.binder,
            next_host: 0,
            next_task: 0,
        };
        let now = now_ts();
        let n = params.clusters.len().max(1);
        let mut clusters = BTreeMap::new();
        let mut task_index = HashMap::new();
        let mut peer_index = HashMap::new();
        for (ci, (cluster_id, schedulers)) in params.clusters.into_iter().enumerate() {
            let host_count = split(params.hosts, n, ci);
            let seeds = (host_count / 50).clamp(1, 5).min(host_count);
            let mut cluster = ClusterState {
                ring: Ring::new(&schedulers),
                schedulers,
                hosts: Arc::new(Vec::with_capacity(host_count)),
                host_index: HashMap::with_capacity(host_count),
                tasks: BTreeMap::new(),
                bare_peers: Default::default(),
            };
            for h in 0..host_count {
                let host_type = if h < seeds { (h % 3) as u32 + 1 } else { 0 };
                let host = generator.host(cluster_id, host_type);
                cluster.push_host(host);
            }
            for _ in 0..split(params.tasks, n, ci) {
                let task = generator.task(&now);
                let Some(owner) = cluster.ring.owner(&task.id) else {
                    continue;
                };
                let mut entry = TaskEntry {
                    task,
                    owner,
                    peers: Vec::new(),
                };
                let want = params.peers_per_task.min(cluster.hosts.len());
                // Distinct hosts: a random start and a stride walk.
                let len = cluster.hosts.len();
                let start = if len > 0 {
                    generator.rng.random_range(0..len)
                } else {
                    0
                };
                for k in 0..want {
                    let host = &cluster.hosts[(start + k) % len];
                    let mut peer = generator.peer(host, &entry.task, &now);
                    let state = initial_state(&mut generator.rng, &entry.task, &peer.peer);
                    let parent = entry.peers.first().map(|p| p.peer.id.clone());
                    apply_state(
                        &mut generator.rng,
                        &mut peer,
                        &entry.task,
                        state,
                        parent.as_deref(),
                        &now,
                    );
                    peer_index.insert(peer.peer.id.clone(), (cluster_id, entry.task.id.clone()));
                    entry.peers.push(peer);
                }
                refresh_task(&mut entry, &now);
                task_index.insert(entry.task.id.clone(), cluster_id);
                cluster.tasks.insert(entry.task.id.clone(), entry);
            }
            clusters.insert(cluster_id, cluster);
        }
        Self {
            generator,
            clusters,
            task_index,
            peer_index,
            peers_per_task: params.peers_per_task,
            edge: false,
        }
    }
}

/// A starting FSM state for a generated peer, spread like a busy cluster.
fn initial_state(rng: &mut SmallRng, task: &Task, peer: &Peer) -> &'static str {
    let roll: f64 = rng.random();
    if roll < 0.10 {
        ps::PENDING
    } else if roll < 0.18 {
        received_state(task)
    } else if roll < 0.45 {
        ps::RUNNING
    } else if roll < 0.50 || (peer.need_back_to_source && roll < 0.8) {
        ps::BACK_TO_SOURCE
    } else if roll < 0.90 {
        ps::SUCCEEDED
    } else {
        ps::FAILED
    }
}
