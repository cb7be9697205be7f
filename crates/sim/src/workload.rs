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

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use prost_types::{Duration as PbDuration, Timestamp};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::ring::Ring;
use dfgraph_proto::common::v2::{
    Build, Cpu, Disk, Host, Memory, Network, Peer, Piece, Priority, Range, SizeScope, Task,
    TaskType, TrafficType,
};

/// Dragonfly's peer FSM states, as the scheduler reports them.
pub(crate) mod peer_state {
    pub(crate) const PENDING: &str = "Pending";
    pub(crate) const RECEIVED_EMPTY: &str = "ReceivedEmpty";
    pub(crate) const RECEIVED_TINY: &str = "ReceivedTiny";
    pub(crate) const RECEIVED_SMALL: &str = "ReceivedSmall";
    pub(crate) const RECEIVED_NORMAL: &str = "ReceivedNormal";
    pub(crate) const RUNNING: &str = "Running";
    pub(crate) const BACK_TO_SOURCE: &str = "BackToSource";
    pub(crate) const SUCCEEDED: &str = "Succeeded";
    pub(crate) const FAILED: &str = "Failed";
    pub(crate) const LEAVE: &str = "Leave";
}

/// Dragonfly's task FSM states.
pub(crate) mod task_state {
    pub(crate) const PENDING: &str = "Pending";
    pub(crate) const RUNNING: &str = "Running";
    pub(crate) const SUCCEEDED: &str = "Succeeded";
    pub(crate) const FAILED: &str = "Failed";
    pub(crate) const LEAVE: &str = "Leave";
}

use peer_state as ps;

/// Piece size used to derive a task's piece count.
const PIECE_LENGTH: u64 = 4 << 20;
/// At most this many pieces are reported per peer (keeps messages small).
const MAX_PIECES: usize = 4;
/// Chance per tick that a peer takes its next FSM step.
const STEP_CHANCE: f64 = 0.35;
/// Chance per tick that a finished peer leaves.
const LEAVE_CHANCE: f64 = 0.15;
/// Chance per tick that a task short of peers gets a new one.
const REFILL_CHANCE: f64 = 0.5;
/// Chance per tick and cluster that a host joins / leaves.
const HOST_JOIN_CHANCE: f64 = 0.10;
const HOST_LEAVE_CHANCE: f64 = 0.05;

const PLATFORMS: [(&str, &str, &str, &str); 3] = [
    ("ubuntu", "debian", "22.04", "5.15.0-105-generic"),
    ("centos", "rhel", "7.9.2009", "3.10.0-1160.el7.x86_64"),
    ("debian", "debian", "12", "6.1.0-18-amd64"),
];
const IDCS: [&str; 3] = ["idc-a", "idc-b", "idc-c"];
const LOCATIONS: [&str; 3] = ["cn|hangzhou", "cn|beijing", "cn|shanghai"];
const BUILDS: [(&str, &str); 3] = [
    ("v2.1.60", "3b2e1f0"),
    ("v2.1.61", "8c41d7a"),
    ("v2.2.0", "f05a9c2"),
];
const APPLICATIONS: [&str; 3] = ["nydus", "harbor", "model-serving"];
const GIB: u64 = 1 << 30;

/// Parameters for [`Workload::new`].
pub(crate) struct WorkloadParams {
    /// Scheduler clusters in order: id and scheduler addresses.
    pub(crate) clusters: Vec<(u64, Vec<SocketAddr>)>,
    pub(crate) hosts: usize,
    pub(crate) tasks: usize,
    pub(crate) peers_per_task: usize,
    pub(crate) seed: u64,
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
}

/// Id generators and the random stream.
struct Gen {
    rng: SmallRng,
    next_host: u64,
    next_task: u64,
}

/// The whole simulated state.
pub(crate) struct Workload {
    generator: Gen,
    clusters: BTreeMap<u64, ClusterState>,
    /// task id -> cluster id
    task_index: HashMap<String, u64>,
    /// peer id -> (cluster id, task id)
    peer_index: HashMap<String, (u64, String)>,
    peers_per_task: usize,
}

fn now_ts() -> Timestamp {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

fn ts_minus(ts: &Timestamp, secs: i64) -> Timestamp {
    Timestamp {
        seconds: ts.seconds - secs,
        nanos: ts.nanos,
    }
}

fn elapsed(from: Option<&Timestamp>, to: &Timestamp) -> PbDuration {
    let Some(from) = from else {
        return PbDuration::default();
    };
    let mut seconds = to.seconds - from.seconds;
    let mut nanos = to.nanos - from.nanos;
    if nanos < 0 {
        seconds -= 1;
        nanos += 1_000_000_000;
    }
    if seconds < 0 {
        return PbDuration::default();
    }
    PbDuration { seconds, nanos }
}

fn split(total: usize, parts: usize, index: usize) -> usize {
    total / parts + usize::from(index < total % parts)
}

fn pick<'a, T>(rng: &mut SmallRng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

impl Gen {
    fn hex(&mut self, digits: usize) -> String {
        let mut s = String::with_capacity(digits + 16);
        while s.len() < digits {
            s.push_str(&format!("{:016x}", self.rng.random::<u64>()));
        }
        s.truncate(digits);
        s
    }

    fn uuid(&mut self) -> String {
        let h = self.hex(32);
        format!(
            "{}-{}-4{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[13..16],
            &h[16..20],
            &h[20..32]
        )
    }

    fn host(&mut self, cluster_id: u64, host_type: u32) -> Host {
        self.next_host += 1;
        let g = self.next_host;
        let ip = format!("10.{}.{}.{}", (g >> 16) & 0xff, (g >> 8) & 0xff, g & 0xff);
        let hostname = format!("dfdaemon-{cluster_id}-{}", self.hex(6));
        let rng = &mut self.rng;
        let (platform, family, version, kernel) = *pick(rng, &PLATFORMS);
        let (git_version, git_commit) = *pick(rng, &BUILDS);
        let logical = *pick(rng, &[8u32, 16, 32, 64]);
        let mem_total = *pick(rng, &[16u64, 32, 64, 128]) * GIB;
        let disk_total = *pick(rng, &[500u64, 1000, 2000]) * GIB;
        let max_bw = *pick(rng, &[1_250_000_000u64, 3_125_000_000]);
        let mut host = Host {
            id: format!("{ip}-{hostname}"),
            r#type: host_type,
            hostname: hostname.clone(),
            ip,
            port: 4000,
            download_port: 4001,
            os: "linux".to_string(),
            platform: platform.to_string(),
            platform_family: family.to_string(),
            platform_version: version.to_string(),
            kernel_version: kernel.to_string(),
            cpu: Some(Cpu {
                logical_count: logical,
                physical_count: logical / 2,
                percent: 0.0,
                process_percent: 0.0,
                times: None,
                cgroup: None,
            }),
            memory: Some(Memory {
                total: mem_total,
                ..Memory::default()
            }),
            network: Some(Network {
                tcp_connection_count: rng.random_range(10..500),
                upload_tcp_connection_count: rng.random_range(0..100),
                location: Some(pick(rng, &LOCATIONS).to_string()),
                idc: Some(pick(rng, &IDCS).to_string()),
                max_rx_bandwidth: max_bw,
                rx_bandwidth: Some(0),
                max_tx_bandwidth: max_bw,
                tx_bandwidth: Some(0),
            }),
            disk: Some(Disk {
                total: disk_total,
                inodes_total: disk_total / 16_384,
                read_bandwidth: rng.random_range(100..500) << 20,
                write_bandwidth: rng.random_range(100..400) << 20,
                ..Disk::default()
            }),
            build: Some(Build {
                git_version: git_version.to_string(),
                git_commit: Some(git_commit.to_string()),
                go_version: None,
                rust_version: Some("1.85.0".to_string()),
                platform: Some("x86_64-unknown-linux-gnu".to_string()),
            }),
            scheduler_cluster_id: cluster_id,
            disable_shared: false,
            proxy_port: 4001,
            name: hostname,
        };
        set_cpu_percent(&mut host, rng.random_range(5.0..90.0));
        set_mem_percent(&mut host, rng.random_range(20.0..85.0));
        set_disk_percent(&mut host, rng.random_range(10.0..80.0));
        set_bandwidth(
            &mut host,
            rng.random_range(0.0..0.8),
            rng.random_range(0.0..0.8),
        );
        host
    }

    fn task(&mut self, now: &Timestamp) -> Task {
        self.next_task += 1;
        let n = self.next_task;
        let id = self.hex(64);
        let digest = if self.rng.random_bool(0.5) {
            Some(format!("sha256:{}", self.hex(64)))
        } else {
            None
        };
        let rng = &mut self.rng;
        let roll: f64 = rng.random();
        let content_length = if roll < 0.02 {
            0
        } else if roll < 0.08 {
            rng.random_range(1..=128)
        } else if roll < 0.20 {
            rng.random_range(129..=PIECE_LENGTH)
        } else {
            rng.random_range(PIECE_LENGTH + 1..=4 * GIB)
        };
        let piece_count = content_length.div_ceil(PIECE_LENGTH) as u32;
        let size_scope = if content_length == 0 {
            SizeScope::Empty
        } else if content_length <= 128 {
            SizeScope::Tiny
        } else if piece_count == 1 {
            SizeScope::Small
        } else {
            SizeScope::Normal
        };
        let tag = rng
            .random_bool(0.3)
            .then(|| format!("v{}", rng.random_range(1..4)));
        let application = rng
            .random_bool(0.4)
            .then(|| pick(rng, &APPLICATIONS).to_string());
        let created_at = ts_minus(now, rng.random_range(0..3600));
        Task {
            id,
            r#type: TaskType::Standard as i32,
            url: format!("https://example.com/blobs/{n}"),
            digest,
            tag,
            application,
            filtered_query_params: Vec::new(),
            request_header: Default::default(),
            content_length,
            piece_count,
            size_scope: size_scope as i32,
            pieces: Vec::new(),
            state: task_state::PENDING.to_string(),
            peer_count: 0,
            has_available_peer: false,
            created_at: Some(created_at),
            updated_at: Some(created_at),
        }
    }

    fn peer(&mut self, host: &Host, task: &Task, now: &Timestamp) -> PeerEntry {
        let uuid = self.uuid();
        let rng = &mut self.rng;
        let range = (rng.random_bool(0.2) && task.content_length > 1).then(|| {
            let start = rng.random_range(0..task.content_length / 2);
            Range {
                start,
                length: rng.random_range(1..=task.content_length - start),
            }
        });
        let priority = if rng.random_bool(0.8) {
            Priority::Level0
        } else {
            *pick(
                rng,
                &[
                    Priority::Level1,
                    Priority::Level2,
                    Priority::Level3,
                    Priority::Level6,
                ],
            )
        };
        PeerEntry {
            peer: Peer {
                id: format!("{}-{}-{uuid}", host.ip, host.hostname),
                range,
                priority: priority as i32,
                pieces: Vec::new(),
                cost: Some(PbDuration::default()),
                state: ps::PENDING.to_string(),
                task: None,
                host: None,
                need_back_to_source: rng.random_bool(0.05),
                created_at: Some(*now),
                updated_at: Some(*now),
                concurrent_piece_count: Some(rng.random_range(4..=16)),
            },
            host_id: host.id.clone(),
        }
    }
}

fn set_cpu_percent(host: &mut Host, pct: f64) {
    if let Some(cpu) = host.cpu.as_mut() {
        cpu.percent = pct.clamp(0.0, 100.0);
        cpu.process_percent = (cpu.percent / 10.0).min(100.0);
    }
}

fn set_mem_percent(host: &mut Host, pct: f64) {
    if let Some(mem) = host.memory.as_mut() {
        let pct = pct.clamp(1.0, 99.0);
        mem.used_percent = pct;
        mem.used = (mem.total as f64 * pct / 100.0) as u64;
        mem.available = mem.total.saturating_sub(mem.used);
        mem.free = mem.available / 2;
        mem.process_used_percent = pct / 20.0;
    }
}

fn set_disk_percent(host: &mut Host, pct: f64) {
    if let Some(disk) = host.disk.as_mut() {
        disk.used_percent = pct;
        disk.used = (disk.total as f64 * pct / 100.0) as u64;
        disk.free = disk.total.saturating_sub(disk.used);
        disk.inodes_used = (disk.inodes_total as f64 * pct / 200.0) as u64;
        disk.inodes_free = disk.inodes_total.saturating_sub(disk.inodes_used);
        disk.inodes_used_percent = pct / 2.0;
    }
}

fn set_bandwidth(host: &mut Host, rx: f64, tx: f64) {
    if let Some(net) = host.network.as_mut() {
        net.rx_bandwidth = Some((net.max_rx_bandwidth as f64 * rx) as u64);
        net.tx_bandwidth = Some((net.max_tx_bandwidth as f64 * tx) as u64);
    }
}

/// Pieces a peer reports once it has downloaded `count` pieces of `task`.
fn pieces_for(
    rng: &mut SmallRng,
    task: &Task,
    count: usize,
    parent: Option<&str>,
    now: &Timestamp,
) -> Vec<Piece> {
    let total = (task.piece_count as usize).min(MAX_PIECES);
    (0..count.min(total))
        .map(|i| {
            let offset = i as u64 * PIECE_LENGTH;
            let length = task.content_length.saturating_sub(offset).min(PIECE_LENGTH);
            Piece {
                number: i as u32,
                parent_id: parent.map(str::to_string),
                offset,
                length,
                digest: format!("crc32:{:08x}", rng.random::<u32>()),
                content: None,
                traffic_type: Some(if parent.is_some() {
                    TrafficType::RemotePeer as i32
                } else {
                    TrafficType::BackToSource as i32
                }),
                cost: Some(PbDuration {
                    seconds: 0,
                    nanos: rng.random_range(1_000_000..200_000_000),
                }),
                created_at: Some(*now),
            }
        })
        .collect()
}

fn received_state(task: &Task) -> &'static str {
    match SizeScope::try_from(task.size_scope) {
        Ok(SizeScope::Empty) => ps::RECEIVED_EMPTY,
        Ok(SizeScope::Tiny) => ps::RECEIVED_TINY,
        Ok(SizeScope::Small) => ps::RECEIVED_SMALL,
        _ => ps::RECEIVED_NORMAL,
    }
}

/// The next FSM state of a peer, or `None` to stay.
fn next_state(rng: &mut SmallRng, peer: &Peer, task: &Task) -> Option<&'static str> {
    let state = peer.state.as_str();
    let finished = state == ps::SUCCEEDED || state == ps::FAILED;
    let chance = if finished { LEAVE_CHANCE } else { STEP_CHANCE };
    if !rng.random_bool(chance) {
        return None;
    }
    let roll: f64 = rng.random();
    Some(match state {
        ps::PENDING if peer.need_back_to_source => ps::BACK_TO_SOURCE,
        ps::PENDING => received_state(task),
        ps::RECEIVED_EMPTY => ps::SUCCEEDED,
        ps::RECEIVED_TINY | ps::RECEIVED_SMALL | ps::RECEIVED_NORMAL => {
            if roll < 0.93 {
                ps::RUNNING
            } else if roll < 0.98 {
                ps::BACK_TO_SOURCE
            } else {
                ps::FAILED
            }
        }
        ps::RUNNING => {
            if roll < 0.85 {
                ps::SUCCEEDED
            } else if roll < 0.93 {
                ps::BACK_TO_SOURCE
            } else {
                ps::FAILED
            }
        }
        ps::BACK_TO_SOURCE => {
            if roll < 0.85 {
                ps::SUCCEEDED
            } else {
                ps::FAILED
            }
        }
        ps::SUCCEEDED | ps::FAILED => ps::LEAVE,
        // Leave peers are removed by the tick; unknown states (set by a
        // hook) stay where they are.
        _ => return None,
    })
}

/// Moves a peer to `state`, updating what goes with it (pieces, cost,
/// updated_at).
fn apply_state(
    rng: &mut SmallRng,
    entry: &mut PeerEntry,
    task: &Task,
    state: &str,
    parent: Option<&str>,
    now: &Timestamp,
) {
    let peer = &mut entry.peer;
    let total = (task.piece_count as usize).min(MAX_PIECES);
    match state {
        ps::RUNNING => {
            let have = peer.pieces.len().max(1);
            peer.pieces = pieces_for(rng, task, have, parent, now);
        }
        ps::BACK_TO_SOURCE => {
            peer.need_back_to_source = true;
            peer.pieces = pieces_for(rng, task, peer.pieces.len(), None, now);
        }
        ps::SUCCEEDED => {
            let parent = if peer.need_back_to_source {
                None
            } else {
                parent
            };
            peer.pieces = pieces_for(rng, task, total, parent, now);
            peer.cost = Some(elapsed(peer.created_at.as_ref(), now));
        }
        ps::FAILED => {
            peer.cost = Some(elapsed(peer.created_at.as_ref(), now));
        }
        _ => {}
    }
    peer.state = state.to_string();
    peer.updated_at = Some(*now);
}

/// Recomputes a task's state, peer count and availability from its peers.
/// Bumps `updated_at` only when something changed.
fn refresh_task(entry: &mut TaskEntry, now: &Timestamp) {
    let live = entry
        .peers
        .iter()
        .filter(|p| p.peer.state != ps::LEAVE)
        .count() as u32;
    let any = |s: &str| entry.peers.iter().any(|p| p.peer.state == s);
    let has_available = any(ps::SUCCEEDED);
    let active = entry.peers.iter().any(|p| {
        matches!(
            p.peer.state.as_str(),
            ps::RECEIVED_EMPTY
                | ps::RECEIVED_TINY
                | ps::RECEIVED_SMALL
                | ps::RECEIVED_NORMAL
                | ps::RUNNING
                | ps::BACK_TO_SOURCE
        )
    });
    let state = if has_available {
        Some(task_state::SUCCEEDED)
    } else if active {
        Some(task_state::RUNNING)
    } else if any(ps::FAILED) {
        Some(task_state::FAILED)
    } else if any(ps::PENDING) {
        Some(task_state::PENDING)
    } else if live == 0 {
        Some(task_state::LEAVE)
    } else {
        // Only peers in states set by hooks: keep the task's state.
        None
    };
    let task = &mut entry.task;
    let state_changed = state.is_some_and(|s| task.state != s);
    if state_changed || task.peer_count != live || task.has_available_peer != has_available {
        if let Some(state) = state {
            task.state = state.to_string();
        }
        task.peer_count = live;
        task.has_available_peer = has_available;
        task.updated_at = Some(*now);
    }
}

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

impl ClusterState {
    fn host(&self, host_id: &str) -> Option<&Host> {
        self.host_index.get(host_id).map(|&i| &self.hosts[i])
    }

    fn push_host(&mut self, host: Host) {
        match self.host_index.get(&host.id) {
            Some(&i) => Arc::make_mut(&mut self.hosts)[i] = host,
            None => {
                self.host_index.insert(host.id.clone(), self.hosts.len());
                Arc::make_mut(&mut self.hosts).push(host);
            }
        }
    }

    /// Removes a host from the host list (not its peers).
    fn pop_host(&mut self, host_id: &str) -> Option<Host> {
        let i = self.host_index.remove(host_id)?;
        let hosts = Arc::make_mut(&mut self.hosts);
        let host = hosts.swap_remove(i);
        if let Some(moved) = hosts.get(i) {
            self.host_index.insert(moved.id.clone(), i);
        }
        Some(host)
    }

    fn full_peer(&self, entry: &PeerEntry, task: &Task) -> Peer {
        let mut peer = entry.peer.clone();
        peer.task = Some(task.clone());
        peer.host = self.host(&entry.host_id).cloned();
        peer
    }
}

impl Workload {
    /// Generates the initial state. Peers start spread over the FSM so a
    /// fresh cluster already looks busy.
    pub(crate) fn new(params: WorkloadParams) -> Self {
        let mut generator = Gen {
            rng: SmallRng::seed_from_u64(params.seed),
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
        }
    }

    /// Advances every cluster one step (unit tests).
    #[cfg(test)]
    pub(crate) fn tick(&mut self) {
        let now = now_ts();
        for cluster_id in self.cluster_ids() {
            self.tick_cluster(cluster_id, &now);
        }
    }

    /// Advances one cluster one step.
    pub(crate) fn tick_cluster(&mut self, cluster_id: u64, now: &Timestamp) {
        let now = *now;
        let target = self.peers_per_task;
        if let Some(cluster) = self.clusters.get_mut(&cluster_id) {
            let rng = &mut self.generator.rng;

            // Host load drifts on a sample of hosts.
            let len = cluster.hosts.len();
            if len > 0 {
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

            // Host churn: one may join, one normal host may leave.
            if rng.random_bool(HOST_JOIN_CHANCE) {
                let host = self.generator.host(cluster_id, 0);
                cluster.push_host(host);
            }
            let rng = &mut self.generator.rng;
            if rng.random_bool(HOST_LEAVE_CHANCE) && cluster.hosts.len() > target + 3 {
                let victim = cluster.hosts[rng.random_range(0..cluster.hosts.len())].clone();
                if victim.r#type == 0 {
                    cluster.pop_host(&victim.id);
                    drop_host_peers(cluster, &mut self.peer_index, &victim.id, &now);
                }
            }

            // Peers move; leavers are replaced.
            let ClusterState { hosts, tasks, .. } = cluster;
            for entry in tasks.values_mut() {
                let mut changed = false;
                let before = entry.peers.len();
                entry.peers.retain(|p| {
                    let keep = p.peer.state != ps::LEAVE;
                    if !keep {
                        self.peer_index.remove(&p.peer.id);
                    }
                    keep
                });
                changed |= entry.peers.len() != before;
                let parent = entry
                    .peers
                    .iter()
                    .find(|p| p.peer.state == ps::SUCCEEDED)
                    .map(|p| p.peer.id.clone());
                for peer in entry.peers.iter_mut() {
                    let rng = &mut self.generator.rng;
                    if let Some(state) = next_state(rng, &peer.peer, &entry.task) {
                        let parent = parent.as_deref().filter(|id| *id != peer.peer.id);
                        apply_state(rng, peer, &entry.task, state, parent, &now);
                        changed = true;
                    } else if peer.peer.state == ps::RUNNING {
                        let total = (entry.task.piece_count as usize).min(MAX_PIECES);
                        let have = peer.peer.pieces.len();
                        if have < total {
                            let parent = parent.as_deref().filter(|id| *id != peer.peer.id);
                            peer.peer.pieces = pieces_for(rng, &entry.task, have + 1, parent, &now);
                            peer.peer.updated_at = Some(now);
                        }
                    }
                }
                if entry.peers.len() < target.min(hosts.len())
                    && self.generator.rng.random_bool(REFILL_CHANCE)
                    && let Some(host) =
                        free_host(&mut self.generator.rng, hosts.as_slice(), &entry.peers)
                {
                    let host = host.clone();
                    let peer = self.generator.peer(&host, &entry.task, &now);
                    self.peer_index
                        .insert(peer.peer.id.clone(), (cluster_id, entry.task.id.clone()));
                    entry.peers.push(peer);
                    changed = true;
                }
                if changed {
                    refresh_task(entry, &now);
                }
            }
        }
    }

    // ----- snapshots -----

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

    // ----- mutation hooks -----

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

/// Removes every peer of `host_id` from the tasks of `cluster`.
fn drop_host_peers(
    cluster: &mut ClusterState,
    peer_index: &mut HashMap<String, (u64, String)>,
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

/// The workload as the servers and the public API share it.
pub(crate) struct Shared {
    workload: RwLock<Workload>,
    /// Serializes whole ticks (see [`tick`]).
    ticking: Mutex<()>,
}

impl Shared {
    pub(crate) fn new(workload: Workload) -> Self {
        Self {
            workload: RwLock::new(workload),
            ticking: Mutex::new(()),
        }
    }
}

/// Shared handle to the workload.
pub(crate) type SharedWorkload = Arc<Shared>;

/// Read access; a panic while writing (a bug) must not wedge every server.
pub(crate) fn read(state: &SharedWorkload) -> RwLockReadGuard<'_, Workload> {
    state
        .workload
        .read()
        .unwrap_or_else(PoisonError::into_inner)
}

/// Write access, see [`read`].
pub(crate) fn write(state: &SharedWorkload) -> RwLockWriteGuard<'_, Workload> {
    state
        .workload
        .write()
        .unwrap_or_else(PoisonError::into_inner)
}

/// Advances the whole simulation one step. The write lock is taken once
/// per cluster, so readers (every RPC) wait for at most one cluster's step,
/// never a whole tick; whole ticks never interleave, which keeps a seed's
/// sequence of states deterministic.
pub(crate) fn tick(state: &SharedWorkload) {
    let _serial = state.ticking.lock().unwrap_or_else(PoisonError::into_inner);
    let now = now_ts();
    let ids = read(state).cluster_ids();
    for id in ids {
        write(state).tick_cluster(id, &now);
    }
}

#[cfg(test)]
mod tests {
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
