//! The `edge` profile: what real dfdaemons and schedulers send and a tidy
//! generator never would. Applied over the generated world (and again
//! after every tick, so the odd values stay): sparse hosts with unset
//! sub-messages, NaN and +-Inf percentages, `-0.0`, IPv6 addresses
//! (IPv4-mapped loopback, so nothing outside this machine is ever dialled),
//! non-ASCII hostnames and locations, counters at `u64::MAX` and `u32::MAX`,
//! ports 0, duplicate hostnames, a scheduler cluster whose schedulers write
//! another cluster id in their hosts, peers served without host or task,
//! tasks with no peers, and request headers holding a credential.

use std::collections::HashSet;
use std::sync::Arc;

use super::Workload;
use super::fsm::refresh_task;
use super::time::now_ts;
use dfgraph_proto::common::v2::{Disk, Host, Memory};

/// What the last cluster's schedulers write as their cluster id: theirs
/// plus this (a static list that does not match their configuration).
pub const ANNOUNCED_CLUSTER_OFFSET: u64 = 100;

/// The credential every task's `request_header` carries.
pub const EDGE_SECRET: &str = "Bearer edge-profile-secret";

/// One kind of odd host, by position in its cluster's list.
fn roughen_host(host: &mut Host, position: usize, first_hostname: &str) {
    match position % 8 {
        1 => {
            host.cpu = None;
            host.memory = None;
            host.network = None;
            host.disk = None;
            host.build = None;
            host.os.clear();
            host.platform.clear();
            host.kernel_version.clear();
        }
        2 => {
            // A zero total divided by: NaN everywhere.
            if let Some(cpu) = host.cpu.as_mut() {
                cpu.percent = f64::NAN;
                cpu.process_percent = f64::NAN;
            }
            host.memory = Some(Memory {
                used_percent: f64::NAN,
                process_used_percent: f64::NAN,
                ..Memory::default()
            });
            host.disk = Some(Disk {
                used_percent: f64::NAN,
                inodes_used_percent: f64::NAN,
                ..Disk::default()
            });
        }
        3 => {
            if let Some(cpu) = host.cpu.as_mut() {
                cpu.percent = f64::INFINITY;
                cpu.process_percent = f64::NEG_INFINITY;
            }
            if let Some(memory) = host.memory.as_mut() {
                memory.used_percent = f64::NEG_INFINITY;
                memory.process_used_percent = f64::INFINITY;
            }
            if let Some(disk) = host.disk.as_mut() {
                disk.used_percent = f64::INFINITY;
                disk.inodes_used_percent = f64::NEG_INFINITY;
            }
        }
        4 => {
            // IPv6, still this machine: an IPv4-mapped loopback address
            // (anything that dials it reaches the host's own listener).
            if !host.ip.contains(':') {
                host.ip = format!("::ffff:{}", host.ip);
            }
            host.hostname = format!("节点-ü-{position}");
            host.name = host.hostname.clone();
            if let Some(network) = host.network.as_mut() {
                network.location = Some("中国|浙江|杭州".into());
                network.idc = Some("机房-α".into());
            }
        }
        5 => {
            host.port = 0;
            host.download_port = 0;
            host.proxy_port = 0;
            if let Some(memory) = host.memory.as_mut() {
                memory.total = u64::MAX;
                memory.available = u64::MAX - 1;
                memory.used = u64::MAX - 2;
                memory.free = u64::MAX - 3;
            }
            if let Some(disk) = host.disk.as_mut() {
                disk.total = u64::MAX;
                disk.used = u64::MAX - 1;
                disk.inodes_total = u64::MAX;
                disk.read_bandwidth = u64::MAX;
            }
            if let Some(network) = host.network.as_mut() {
                network.tcp_connection_count = u32::MAX;
                network.max_rx_bandwidth = u64::MAX;
                network.rx_bandwidth = Some(u64::MAX - 1);
            }
            if let Some(cpu) = host.cpu.as_mut() {
                cpu.logical_count = u32::MAX;
            }
        }
        6 => host.hostname = first_hostname.to_owned(),
        7 => {
            if let Some(cpu) = host.cpu.as_mut() {
                cpu.percent = -0.0;
            }
            if let Some(memory) = host.memory.as_mut() {
                // Its shortest decimal form is easy to get wrong.
                memory.used_percent = 98.363_559_948_808_91;
            }
        }
        _ => {}
    }
}

impl Workload {
    /// Makes the world look like a real one at its oddest. Idempotent.
    pub(crate) fn roughen(&mut self) {
        let now = now_ts();
        let last = self.clusters.keys().next_back().copied();
        for (&cluster_id, cluster) in &mut self.clusters {
            let hosts = Arc::make_mut(&mut cluster.hosts);
            let first_hostname = hosts.first().map(|h| h.hostname.clone());
            for (position, host) in hosts.iter_mut().enumerate() {
                if let Some(first) = &first_hostname {
                    roughen_host(host, position, first);
                }
                if Some(cluster_id) == last {
                    host.scheduler_cluster_id = cluster_id + ANNOUNCED_CLUSTER_OFFSET;
                }
            }
            // Tasks carry the headers they were downloaded with, credentials
            // included (dfgraph must never show them).
            for entry in cluster.tasks.values_mut() {
                entry
                    .task
                    .request_header
                    .insert("Authorization".into(), EDGE_SECRET.into());
            }
            // The last task of each cluster has no peers.
            if let Some(entry) = cluster.tasks.values_mut().next_back() {
                for peer in entry.peers.drain(..) {
                    self.peer_index.remove(&peer.peer.id);
                }
                refresh_task(entry, &now);
            }
            // Every fifth peer is served without its host and task.
            cluster.bare_peers = cluster
                .tasks
                .values()
                .flat_map(|e| e.peers.iter())
                .map(|p| p.peer.id.clone())
                .enumerate()
                .filter(|(i, _)| i % 5 == 0)
                .map(|(_, id)| id)
                .collect::<HashSet<_>>();
        }
    }
}
