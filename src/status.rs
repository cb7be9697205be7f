//! `dfgraph status`: cluster state fetched straight from the schedulers,
//! no gateway and no cache. One `ListHosts` per cluster, then a table of
//! scheduler health and host counts by type and version.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use crate::cluster::ClusterClient;
use crate::deadline::Deadline;
use crate::host_type::HostType;

#[derive(Serialize, Debug)]
pub struct ClusterStatus {
    pub id: u64,
    pub schedulers: Vec<SchedulerStatus>,
    pub hosts: Option<usize>,
    pub hosts_by_type: BTreeMap<String, usize>,
    pub hosts_by_version: BTreeMap<String, usize>,
    pub error: Option<String>,
}

#[derive(Serialize, Debug)]
pub struct SchedulerStatus {
    pub address: String,
    pub up: bool,
    pub latency_ms: Option<f64>,
    pub error: Option<String>,
}

/// Asks every cluster for its hosts, and every scheduler for a sign of
/// life (the host list is asked of each scheduler, so each gets a health).
pub async fn collect(client: &ClusterClient) -> Vec<ClusterStatus> {
    let mut out = Vec::new();
    for id in client.cluster_ids() {
        let hosts = client.list_hosts(id, Deadline::NONE).await;
        let mut status = ClusterStatus {
            id,
            schedulers: Vec::new(),
            hosts: None,
            hosts_by_type: BTreeMap::new(),
            hosts_by_version: BTreeMap::new(),
            error: None,
        };
        match hosts {
            Ok(list) => {
                status.hosts = Some(list.hosts.len());
                for host in &list.hosts {
                    *status
                        .hosts_by_type
                        .entry(HostType::from_wire(host.r#type).as_str().to_owned())
                        .or_default() += 1;
                    let version = host
                        .build
                        .as_ref()
                        .map(|b| b.git_version.clone())
                        .unwrap_or_default();
                    *status.hosts_by_version.entry(version).or_default() += 1;
                }
            }
            Err(e) => status.error = Some(e.to_string()),
        }
        if let Ok(cluster) = client.cluster(id) {
            for scheduler in &cluster.schedulers {
                // A scheduler the host list did not need is probed by a
                // TCP connect: cheap, and enough to say up or down.
                let mut health = scheduler.health_snapshot();
                if health.calls == 0 {
                    let probe = tokio::time::timeout(
                        client.settings().dial.connect_timeout,
                        tokio::net::TcpStream::connect(scheduler.addr),
                    )
                    .await;
                    match probe {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => health.last_error = Some((0, e.to_string())),
                        Err(_) => health.last_error = Some((0, "connect timed out".into())),
                    }
                    health.consecutive_failures = u32::from(health.last_error.is_some());
                }
                status.schedulers.push(SchedulerStatus {
                    address: scheduler.addr.to_string(),
                    up: health.is_up(),
                    latency_ms: health.latency.map(|l| l.as_secs_f64() * 1000.0),
                    error: health.last_error.map(|(_, m)| m),
                });
            }
        }
        out.push(status);
    }
    out
}

/// Renders the human-readable tables.
pub fn render(clusters: &[ClusterStatus]) -> String {
    let mut out = String::new();
    for c in clusters {
        let hosts = c.hosts.map(|n| n.to_string()).unwrap_or_else(|| "?".into());
        let _ = writeln!(out, "scheduler cluster {}  hosts: {hosts}", c.id);
        if let Some(e) = &c.error {
            let _ = writeln!(out, "  error: {e}");
        }
        let _ = writeln!(
            out,
            "  {:<24} {:<6} {:>10}  ERROR",
            "SCHEDULER", "STATE", "LATENCY"
        );
        for s in &c.schedulers {
            let latency = s
                .latency_ms
                .map(|l| format!("{l:.1} ms"))
                .unwrap_or_else(|| "-".into());
            let _ = writeln!(
                out,
                "  {:<24} {:<6} {:>10}  {}",
                s.address,
                if s.up { "up" } else { "down" },
                latency,
                s.error.as_deref().unwrap_or("")
            );
        }
        for (title, counts) in [("TYPE", &c.hosts_by_type), ("VERSION", &c.hosts_by_version)] {
            if counts.is_empty() {
                continue;
            }
            let _ = writeln!(out, "  {:<24} {:>6}", title, "HOSTS");
            for (value, count) in counts {
                let value = if value.is_empty() { "(none)" } else { value };
                let _ = writeln!(out, "  {value:<24} {count:>6}");
            }
        }
        out.push('\n');
    }
    out
}
