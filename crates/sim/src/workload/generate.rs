//! Generators: seeded ids, hosts, tasks and peers, drawn from one random stream.

use prost_types::{Duration as PbDuration, Timestamp};
use rand::Rng;
use rand::rngs::SmallRng;

use std::net::Ipv4Addr;
use std::sync::Arc;

use super::PeerEntry;
use super::fsm::{PIECE_LENGTH, peer_state as ps, task_state};
use super::host_load::{set_bandwidth, set_cpu_percent, set_disk_percent, set_mem_percent};
use super::time::ts_minus;
use crate::health::Binder;
use dfgraph_proto::common::v2::{
    Build, Cpu, Disk, Host, Memory, Network, Peer, Priority, Range, SizeScope, Task, TaskType,
};

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

/// Id generators and the random stream.
pub(super) struct Gen {
    pub(super) rng: SmallRng,
    /// Binds each new host's health listener (and so picks its port).
    pub(super) binder: Option<Arc<Binder>>,
    pub(super) next_host: u64,
    pub(super) next_task: u64,
}

/// A host's port when nothing serves it (no health listener): dfdaemon's
/// default upload port.
const UNSERVED_PORT: i32 = 4000;

/// The loopback address of the `g`-th generated host: all of 127.0.0.0/8
/// is this machine, so a prober that dials a simulated host never leaves
/// it. 127.0.x.x is skipped (the usual local services live there), and so
/// are last octets 0 and 255.
pub(super) fn host_ip(g: u64) -> Ipv4Addr {
    let last = 1 + (g % 254) as u8;
    let rest = g / 254;
    let mid = (rest % 256) as u8;
    let high = 1 + ((rest / 256) % 255) as u8;
    Ipv4Addr::new(127, high, mid, last)
}

pub(super) fn pick<'a, T>(rng: &mut SmallRng, items: &'a [T]) -> &'a T {
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

    pub(super) fn host(&mut self, cluster_id: u64, host_type: u32) -> Host {
        self.next_host += 1;
        let g = self.next_host;
        let addr = host_ip(g);
        let ip = addr.to_string();
        let hostname = format!("dfdaemon-{cluster_id}-{}", self.hex(6));
        let id = format!("{ip}-{hostname}");
        let port = self
            .binder
            .as_ref()
            .and_then(|binder| binder.bind(&id, addr))
            .unwrap_or(UNSERVED_PORT);
        let rng = &mut self.rng;
        let (platform, family, version, kernel) = *pick(rng, &PLATFORMS);
        let (git_version, git_commit) = *pick(rng, &BUILDS);
        let logical = *pick(rng, &[8u32, 16, 32, 64]);
        let mem_total = *pick(rng, &[16u64, 32, 64, 128]) * GIB;
        let disk_total = *pick(rng, &[500u64, 1000, 2000]) * GIB;
        let max_bw = *pick(rng, &[1_250_000_000u64, 3_125_000_000]);
        let mut host = Host {
            id,
            r#type: host_type,
            hostname: hostname.clone(),
            ip,
            port,
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

    pub(super) fn task(&mut self, now: &Timestamp) -> Task {
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

    pub(super) fn peer(&mut self, host: &Host, task: &Task, now: &Timestamp) -> PeerEntry {
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
