//! A throw-away Redis Cluster per test: `redis-server --cluster-enabled yes`
//! nodes on free ports (each port and its cluster-bus port +10000) in a
//! temporary directory, joined by `redis-cli --cluster create`, killed on
//! drop. `start` returns only once every replica has finished its first
//! sync: a replica that never synced refuses to take over its primary
//! ("Disconnected from master for longer than allowed"), so a primary
//! killed earlier would never be replaced.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisCluster {
    dir: tempfile::TempDir,
    nodes: Vec<Node>,
}

struct Node {
    port: u16,
    child: Option<Child>,
}

impl RedisCluster {
    /// `primaries` primaries (at least 3) with `replicas` replicas each,
    /// every slot served, `cluster_state:ok` on every node.
    pub fn start(primaries: usize, replicas: usize) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cluster = RedisCluster {
            dir,
            nodes: Vec::new(),
        };
        for _ in 0..primaries * (1 + replicas) {
            let taken: Vec<u16> = cluster.nodes.iter().map(|n| n.port).collect();
            let port = free_port_pair(&taken);
            let child = cluster.spawn(port);
            cluster.nodes.push(Node {
                port,
                child: Some(child),
            });
        }
        for node in &cluster.nodes {
            wait_for(&format!("node {} answers", node.port), || ping(node.port));
        }
        let status = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(
                cluster
                    .nodes
                    .iter()
                    .map(|n| format!("127.0.0.1:{}", n.port)),
            )
            .arg("--cluster-replicas")
            .arg(replicas.to_string())
            .arg("--cluster-yes")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli on PATH");
        assert!(status.success(), "redis-cli --cluster create failed");
        cluster.wait_ok();
        cluster.wait_replicas_synced(primaries * replicas);
        cluster
    }

    fn spawn(&self, port: u16) -> Child {
        Command::new("redis-server")
            .arg("--port")
            .arg(port.to_string())
            .args(["--cluster-enabled", "yes"])
            .arg("--cluster-config-file")
            .arg(format!("nodes-{port}.conf"))
            .args(["--cluster-node-timeout", "1000"])
            // The first sync starts at once instead of after the default
            // 5 s wait for more replicas.
            .args(["--repl-diskless-sync-delay", "0"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--protected-mode", "no", "--loglevel", "warning"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH")
    }

    /// Every node's URL, comma-separated: the gateway's seed list.
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A cluster client, for checks.
    pub fn client(&self) -> redis::cluster::ClusterClient {
        redis::cluster::ClusterClient::new(
            self.live_ports()
                .iter()
                .map(|p| format!("redis://127.0.0.1:{p}"))
                .collect::<Vec<_>>(),
        )
        .expect("cluster client")
    }

    fn live_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.port)
            .collect()
    }

    /// Waits until every live node says `cluster_state:ok` and agrees
    /// that every slot is served.
    pub fn wait_ok(&self) {
        let ports = self.live_ports();
        wait_for("cluster_state:ok on every node", || {
            ports.iter().all(|&port| {
                let info = node_command(port, &["CLUSTER", "INFO"]).unwrap_or_default();
                info.contains("cluster_state:ok") && info.contains("cluster_slots_ok:16384")
            })
        });
    }

    /// Waits until `replicas` nodes are replicas whose link to their
    /// primary is up (first sync done).
    fn wait_replicas_synced(&self, replicas: usize) {
        let ports = self.live_ports();
        wait_for("every replica in sync", || {
            let synced = ports
                .iter()
                .filter(|&&port| {
                    let info = node_command(port, &["INFO", "replication"]).unwrap_or_default();
                    info.contains("role:slave") && info.contains("master_link_status:up")
                })
                .count();
            synced == replicas
        });
    }

    /// The port of the primary serving `key`'s slot, as a live node sees
    /// it.
    pub fn primary_of(&self, key: &str) -> Option<u16> {
        let any = *self.live_ports().first()?;
        let slot: u16 = node_command(any, &["CLUSTER", "KEYSLOT", key])?
            .trim()
            .parse()
            .ok()?;
        let nodes = node_command(any, &["CLUSTER", "NODES"])?;
        nodes.lines().find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let flags = fields.get(2)?;
            let is_primary = flags.split(',').any(|f| f == "master") && !flags.contains("fail");
            let serves = fields.iter().skip(8).any(|range| {
                let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                matches!((lo.parse::<u16>(), hi.parse::<u16>()), (Ok(lo), Ok(hi)) if lo <= slot && slot <= hi)
            });
            if !(is_primary && serves) {
                return None;
            }
            let address = fields.get(1)?.split('@').next()?;
            address.rsplit_once(':')?.1.parse::<u16>().ok()
        })
    }

    /// SIGKILLs the primary serving `key`'s slot; returns its port.
    pub fn kill_primary_of(&mut self, key: &str) -> u16 {
        let port = self.primary_of(key).expect("a primary serves the slot");
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("one of ours");
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        port
    }

    /// Waits until another node (the promoted replica) serves `key`'s slot
    /// and the cluster is ok again.
    pub fn wait_failover(&self, key: &str, killed: u16) {
        wait_for("a replica takes over the slot", || {
            self.primary_of(key).is_some_and(|port| port != killed)
        });
        self.wait_ok();
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

fn node_command(port: u16, args: &[&str]) -> Option<String> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).ok()?;
    let mut conn = client
        .get_connection_with_timeout(Duration::from_millis(500))
        .ok()?;
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    let value: redis::Value = cmd.query(&mut conn).ok()?;
    match value {
        redis::Value::BulkString(bytes) => String::from_utf8(bytes).ok(),
        redis::Value::VerbatimString { text, .. } => Some(text),
        redis::Value::SimpleString(s) => Some(s),
        redis::Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

fn ping(port: u16) -> bool {
    node_command(port, &["PING"]).is_some()
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A port free now whose cluster-bus port (+10000) is free too, and
/// neither of them one of the `taken` nodes' pairs (which may not listen
/// yet).
fn free_port_pair(taken: &[u16]) -> u16 {
    for _ in 0..1000 {
        let Ok(listener) = TcpListener::bind(("127.0.0.1", 0)) else {
            continue;
        };
        let Ok(port) = listener.local_addr().map(|a| a.port()) else {
            continue;
        };
        let clashes = |p: u16| taken.iter().any(|&t| p == t || p == t + 10_000);
        if port > 55_000 || clashes(port) || clashes(port + 10_000) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
    panic!("no free port pair");
}
