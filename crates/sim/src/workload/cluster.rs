//! One scheduler cluster's host list (copy-on-write, indexed by id) and the
//! peers that go with its hosts.

use std::sync::Arc;

use prost_types::Timestamp;

use super::fsm::refresh_task;
use super::{ClusterState, PeerEntry, PeerIndex};
use dfgraph_proto::common::v2::{Host, Peer, Task};

impl ClusterState {
    pub(super) fn host(&self, host_id: &str) -> Option<&Host> {
        self.host_index.get(host_id).map(|&i| &self.hosts[i])
    }

    pub(super) fn push_host(&mut self, host: Host) {
        match self.host_index.get(&host.id) {
            Some(&i) => Arc::make_mut(&mut self.hosts)[i] = host,
            None => {
                self.host_index.insert(host.id.clone(), self.hosts.len());
                Arc::make_mut(&mut self.hosts).push(host);
            }
        }
    }

    /// Removes a host from the host list (not its peers).
    pub(super) fn pop_host(&mut self, host_id: &str) -> Option<Host> {
        let i = self.host_index.remove(host_id)?;
        let hosts = Arc::make_mut(&mut self.hosts);
        let host = hosts.swap_remove(i);
        if let Some(moved) = hosts.get(i) {
            self.host_index.insert(moved.id.clone(), i);
        }
        Some(host)
    }

    pub(super) fn full_peer(&self, entry: &PeerEntry, task: &Task) -> Peer {
        let mut peer = entry.peer.clone();
        if self.bare_peers.contains(&peer.id) {
            return peer;
        }
        peer.task = Some(task.clone());
        peer.host = self.host(&entry.host_id).cloned();
        peer
    }
}

/// Removes every peer of `host_id` from the tasks of `cluster`.
pub(super) fn drop_host_peers(
    cluster: &mut ClusterState,
    peer_index: &mut PeerIndex,
    host_id: &str,
    now: &Timestamp,
) {
    for entry in cluster.tasks.values_mut() {
        let before = entry.peers.len();
        entry.peers.retain(|p| {
            let keep = p.host_id != host_id;
            if !keep {
                peer_index.remove(&p.peer.id);
            }
            keep
        });
        if entry.peers.len() != before {
            refresh_task(entry, now);
        }
    }
}
