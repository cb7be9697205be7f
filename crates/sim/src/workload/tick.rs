//! How the workload moves: one step of host load drift, host churn and the
//! peers of every task.

use std::sync::Arc;

use prost_types::Timestamp;
use rand::Rng;
use rand::rngs::SmallRng;

use super::cluster::drop_host_peers;
use super::fsm::{MAX_PIECES, apply_state, next_state, peer_state as ps, pieces_for, refresh_task};
use super::generate::{Gen, pick};
use super::host_load::{set_bandwidth, set_cpu_percent, set_mem_percent};
#[cfg(test)]
use super::time::now_ts;
use super::{ClusterState, PeerEntry, PeerIndex, TaskEntry, Workload};
use dfgraph_proto::common::v2::Host;

/// Chance per tick that a task short of peers gets a new one.
const REFILL_CHANCE: f64 = 0.5;
/// Chance per tick and cluster that a host joins / leaves.
const HOST_JOIN_CHANCE: f64 = 0.10;
const HOST_LEAVE_CHANCE: f64 = 0.05;

/// Picks a host of `hosts` that has no peer in `peers` yet.
fn free_host<'a>(rng: &mut SmallRng, hosts: &'a [Host], peers: &[PeerEntry]) -> Option<&'a Host> {
    if hosts.is_empty() {
        return None;
    }
    for _ in 0..8 {
        let host = pick(rng, hosts);
        if !peers.iter().any(|p| p.host_id == host.id) {
            return Some(host);
        }
    }
    None
}

impl Workload {
    /// Advances every cluster one step (unit tests).
    #[cfg(test)]
    pub(crate) fn tick(&mut self) {
        let now = now_ts();
        for cluster_id in self.cluster_ids() {
            self.tick_cluster(cluster_id, &now);
        }
        if self.edge {
            self.roughen();
        }
    }

    /// Advances one cluster one step: host load drifts, hosts come and go,
    /// then the peers of every task move. The order of these steps is the
    /// order of draws from the random stream, so it must not change.
    pub(crate) fn tick_cluster(&mut self, cluster_id: u64, now: &Timestamp) {
        let target = self.peers_per_task;
        let Some(cluster) = self.clusters.get_mut(&cluster_id) else {
            return;
        };
        drift_host_load(cluster, &mut self.generator.rng);
        churn_hosts(
            cluster,
            cluster_id,
            &mut self.generator,
            &mut self.peer_index,
            target,
            now,
        );
        let ClusterState { hosts, tasks, .. } = cluster;
        for entry in tasks.values_mut() {
            let mut changed = remove_left_peers(entry, &mut self.peer_index);
            changed |= step_peers(entry, &mut self.generator.rng, now);
            changed |= refill_peers(
                entry,
                hosts,
                &mut self.generator,
                &mut self.peer_index,
                cluster_id,
                target,
                now,
            );
            if changed {
                refresh_task(entry, now);
            }
        }
    }
}

/// Host load drifts on a sample of hosts.
fn drift_host_load(cluster: &mut ClusterState, rng: &mut SmallRng) {
    let len = cluster.hosts.len();
    if len == 0 {
        return;
    }
    let hosts = Arc::make_mut(&mut cluster.hosts);
    for _ in 0..(len / 50).max(1) {
        let host = &mut hosts[rng.random_range(0..len)];
        let cpu = host.cpu.as_ref().map_or(50.0, |c| c.percent);
        let mem = host.memory.as_ref().map_or(50.0, |m| m.used_percent);
        set_cpu_percent(host, cpu + rng.random_range(-5.0..5.0));
        set_mem_percent(host, mem + rng.random_range(-2.0..2.0));
        set_bandwidth(host, rng.random_range(0.0..0.8), rng.random_range(0.0..0.8));
        if let Some(net) = host.network.as_mut() {
            net.tcp_connection_count = rng.random_range(10..500);
        }
    }
}

/// Host churn: one host may join, one normal (non-seed) host may leave
/// with its peers, while the cluster keeps a few more hosts than a task wants.
fn churn_hosts(
    cluster: &mut ClusterState,
    cluster_id: u64,
    generator: &mut Gen,
    peer_index: &mut PeerIndex,
    peers_per_task: usize,
    now: &Timestamp,
) {
    if generator.rng.random_bool(HOST_JOIN_CHANCE) {
        let host = generator.host(cluster_id, 0);
        cluster.push_host(host);
    }
    let rng = &mut generator.rng;
    if rng.random_bool(HOST_LEAVE_CHANCE) && cluster.hosts.len() > peers_per_task + 3 {
        let victim = cluster.hosts[rng.random_range(0..cluster.hosts.len())].clone();
        if victim.r#type == 0 {
            cluster.pop_host(&victim.id);
            drop_host_peers(cluster, peer_index, &victim.id, now);
        }
    }
}

/// Drops the peers that reached `Leave` on an earlier step. True when any left.
fn remove_left_peers(entry: &mut TaskEntry, peer_index: &mut PeerIndex) -> bool {
    let before = entry.peers.len();
    entry.peers.retain(|p| {
        let keep = p.peer.state != ps::LEAVE;
        if !keep {
            peer_index.remove(&p.peer.id);
        }
        keep
    });
    entry.peers.len() != before
}

/// Moves each peer of a task: an FSM step, or one more piece for a running
/// peer that stays. True when any peer changed state.
fn step_peers(entry: &mut TaskEntry, rng: &mut SmallRng, now: &Timestamp) -> bool {
    let mut changed = false;
    let parent = entry
        .peers
        .iter()
        .find(|p| p.peer.state == ps::SUCCEEDED)
        .map(|p| p.peer.id.clone());
    for peer in entry.peers.iter_mut() {
        if let Some(state) = next_state(rng, &peer.peer, &entry.task) {
            let parent = parent.as_deref().filter(|id| *id != peer.peer.id);
            apply_state(rng, peer, &entry.task, state, parent, now);
            changed = true;
        } else if peer.peer.state == ps::RUNNING {
            let total = (entry.task.piece_count as usize).min(MAX_PIECES);
            let have = peer.peer.pieces.len();
            if have < total {
                let parent = parent.as_deref().filter(|id| *id != peer.peer.id);
                peer.peer.pieces = pieces_for(rng, &entry.task, have + 1, parent, now);
                peer.peer.updated_at = Some(*now);
            }
        }
    }
    changed
}

/// A task short of peers may get a new one on a host it has no peer on yet.
/// True when a peer joined.
fn refill_peers(
    entry: &mut TaskEntry,
    hosts: &[Host],
    generator: &mut Gen,
    peer_index: &mut PeerIndex,
    cluster_id: u64,
    peers_per_task: usize,
    now: &Timestamp,
) -> bool {
    if entry.peers.len() < peers_per_task.min(hosts.len())
        && generator.rng.random_bool(REFILL_CHANCE)
        && let Some(host) = free_host(&mut generator.rng, hosts, &entry.peers)
    {
        let host = host.clone();
        let peer = generator.peer(&host, &entry.task, now);
        peer_index.insert(peer.peer.id.clone(), (cluster_id, entry.task.id.clone()));
        entry.peers.push(peer);
        return true;
    }
    false
}
