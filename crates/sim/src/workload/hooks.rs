//! Mutation hooks: tests and the CLI change the world directly.

use std::net::SocketAddr;

use super::Workload;
use super::cluster::drop_host_peers;
use super::fsm::{apply_state, peer_state as ps, refresh_task};
use super::time::now_ts;
use dfgraph_proto::common::v2::Host;

impl Workload {
    /// Inserts or replaces a host in its `scheduler_cluster_id`'s cluster.
    /// Returns false when that cluster does not exist.
    /// A host that moves to another cluster leaves its old one (with its
    /// peers there).
    pub(crate) fn upsert_host(&mut self, host: Host) -> bool {
        if !self.clusters.contains_key(&host.scheduler_cluster_id) {
            return false;
        }
        let now = now_ts();
        for (&id, cluster) in self.clusters.iter_mut() {
            if id != host.scheduler_cluster_id && cluster.pop_host(&host.id).is_some() {
                drop_host_peers(cluster, &mut self.peer_index, &host.id, &now);
            }
        }
        match self.clusters.get_mut(&host.scheduler_cluster_id) {
            Some(cluster) => {
                cluster.push_host(host);
                true
            }
            None => false,
        }
    }

    /// Removes a host and its peers from a cluster.
    pub(crate) fn remove_host(&mut self, cluster_id: u64, host_id: &str) -> bool {
        let Some(cluster) = self.clusters.get_mut(&cluster_id) else {
            return false;
        };
        if cluster.pop_host(host_id).is_none() {
            return false;
        }
        drop_host_peers(cluster, &mut self.peer_index, host_id, &now_ts());
        true
    }

    pub(crate) fn set_peer_state(&mut self, peer_id: &str, state: &str) -> bool {
        let Some((cluster_id, task_id)) = self.peer_index.get(peer_id) else {
            return false;
        };
        let Some(entry) = self
            .clusters
            .get_mut(cluster_id)
            .and_then(|c| c.tasks.get_mut(task_id))
        else {
            return false;
        };
        let now = now_ts();
        let parent = entry
            .peers
            .iter()
            .find(|p| p.peer.state == ps::SUCCEEDED && p.peer.id != peer_id)
            .map(|p| p.peer.id.clone());
        let Some(peer) = entry.peers.iter_mut().find(|p| p.peer.id == peer_id) else {
            return false;
        };
        apply_state(
            &mut self.generator.rng,
            peer,
            &entry.task,
            state,
            parent.as_deref(),
            &now,
        );
        refresh_task(entry, &now);
        true
    }

    pub(crate) fn set_task_state(&mut self, task_id: &str, state: &str) -> bool {
        let Some(cluster_id) = self.task_index.get(task_id) else {
            return false;
        };
        let Some(entry) = self
            .clusters
            .get_mut(cluster_id)
            .and_then(|c| c.tasks.get_mut(task_id))
        else {
            return false;
        };
        entry.task.state = state.to_string();
        entry.task.updated_at = Some(now_ts());
        true
    }

    /// Places a task on another scheduler of its own cluster.
    pub(crate) fn move_task(&mut self, task_id: &str, to: SocketAddr) -> bool {
        let Some(cluster_id) = self.task_index.get(task_id) else {
            return false;
        };
        let Some(cluster) = self.clusters.get_mut(cluster_id) else {
            return false;
        };
        if !cluster.schedulers.contains(&to) {
            return false;
        }
        match cluster.tasks.get_mut(task_id) {
            Some(entry) => {
                entry.owner = to;
                true
            }
            None => false,
        }
    }
}
