//! What the RPCs read and delete: snapshots of a cluster and what one
//! scheduler holds.

use std::net::SocketAddr;
use std::sync::Arc;

use super::fsm::refresh_task;
use super::time::now_ts;
use super::{TaskEntry, Workload};
use dfgraph_proto::common::v2::{Host, Peer, Task};

impl Workload {
    pub(crate) fn cluster_ids(&self) -> Vec<u64> {
        self.clusters.keys().copied().collect()
    }

    /// The hosts of a cluster: a cheap `Arc` clone.
    pub(crate) fn hosts(&self, cluster_id: u64) -> Arc<Vec<Host>> {
        self.clusters
            .get(&cluster_id)
            .map(|c| Arc::clone(&c.hosts))
            .unwrap_or_default()
    }

    pub(crate) fn tasks(&self, cluster_id: u64) -> Vec<Task> {
        self.clusters
            .get(&cluster_id)
            .map(|c| c.tasks.values().map(|e| e.task.clone()).collect())
            .unwrap_or_default()
    }

    pub(crate) fn peers(&self, cluster_id: u64) -> Vec<Peer> {
        let Some(cluster) = self.clusters.get(&cluster_id) else {
            return Vec::new();
        };
        cluster
            .tasks
            .values()
            .flat_map(|e| e.peers.iter().map(|p| cluster.full_peer(p, &e.task)))
            .collect()
    }

    pub(crate) fn peer_keys(&self, cluster_id: u64) -> Vec<(String, String, String)> {
        let Some(cluster) = self.clusters.get(&cluster_id) else {
            return Vec::new();
        };
        cluster
            .tasks
            .values()
            .flat_map(|e| {
                e.peers
                    .iter()
                    .map(|p| (p.host_id.clone(), e.task.id.clone(), p.peer.id.clone()))
            })
            .collect()
    }

    pub(crate) fn task_owner(&self, task_id: &str) -> Option<SocketAddr> {
        let cluster_id = self.task_index.get(task_id)?;
        Some(self.clusters.get(cluster_id)?.tasks.get(task_id)?.owner)
    }

    // ----- what one scheduler serves -----

    /// The task if scheduler `addr` of `cluster_id` holds it.
    fn held(&self, cluster_id: u64, addr: SocketAddr, task_id: &str) -> Option<&TaskEntry> {
        if self.task_index.get(task_id) != Some(&cluster_id) {
            return None;
        }
        let entry = self.clusters.get(&cluster_id)?.tasks.get(task_id)?;
        (entry.owner == addr).then_some(entry)
    }

    pub(crate) fn stat_task(
        &self,
        cluster_id: u64,
        addr: SocketAddr,
        task_id: &str,
    ) -> Option<Task> {
        self.held(cluster_id, addr, task_id).map(|e| e.task.clone())
    }

    pub(crate) fn stat_peer(
        &self,
        cluster_id: u64,
        addr: SocketAddr,
        peer_id: &str,
    ) -> Option<Peer> {
        let (_, task_id) = self.peer_index.get(peer_id)?;
        let entry = self.held(cluster_id, addr, task_id)?;
        let peer = entry.peers.iter().find(|p| p.peer.id == peer_id)?;
        let cluster = self.clusters.get(&cluster_id)?;
        Some(cluster.full_peer(peer, &entry.task))
    }

    pub(crate) fn delete_task(&mut self, cluster_id: u64, addr: SocketAddr, task_id: &str) -> bool {
        if self.held(cluster_id, addr, task_id).is_none() {
            return false;
        }
        self.task_index.remove(task_id);
        let Some(entry) = self
            .clusters
            .get_mut(&cluster_id)
            .and_then(|c| c.tasks.remove(task_id))
        else {
            return false;
        };
        for p in &entry.peers {
            self.peer_index.remove(&p.peer.id);
        }
        true
    }

    pub(crate) fn delete_peer(&mut self, cluster_id: u64, addr: SocketAddr, peer_id: &str) -> bool {
        let Some((_, task_id)) = self.peer_index.get(peer_id).cloned() else {
            return false;
        };
        if self.held(cluster_id, addr, &task_id).is_none() {
            return false;
        }
        let Some(entry) = self
            .clusters
            .get_mut(&cluster_id)
            .and_then(|c| c.tasks.get_mut(&task_id))
        else {
            return false;
        };
        entry.peers.retain(|p| p.peer.id != peer_id);
        self.peer_index.remove(peer_id);
        refresh_task(entry, &now_ts());
        true
    }
}
