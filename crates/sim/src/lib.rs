//! A simulated Dragonfly cluster: real tonic gRPC servers on loopback TCP,
//! one per scheduler plus one manager, serving a seeded, moving workload
//! with per-server fault injection, RPC counters and the last request
//! metadata each server saw; and each simulated host's own gRPC health
//! service on its loopback `ip:port`, which can be stopped, frozen and
//! brought back while the schedulers keep listing the host.
//!
//! The simulator depends only on [`dfgraph_proto`], so it is an honest test
//! double of real Dragonfly schedulers: the gateway talks to it over the
//! same wire protocol it uses in production.
//!
//! ```no_run
//! # async fn demo() -> Result<(), dfgraph_sim::SimError> {
//! use dfgraph_sim::{SimCluster, SimConfig};
//! let sim = SimCluster::start(SimConfig { tick_interval: None, ..SimConfig::default() }).await?;
//! for s in sim.schedulers() {
//!     println!("cluster {} scheduler {}", s.cluster_id, s.addr);
//! }
//! sim.shutdown().await;
//! # Ok(())
//! # }
//! ```

mod health;
mod manager;
mod ring;
mod scheduler;
mod workload;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;
use tonic::transport::server::Router;

use dfgraph_proto::common::v2::{Host, Peer, Task};
use dfgraph_proto::manager::v2::manager_server::ManagerServer;
use dfgraph_proto::scheduler::v2::scheduler_server::SchedulerServer;
pub use health::HostMode;
use manager::ManagerService;
use scheduler::{Faults, SchedulerService};
pub use workload::{ANNOUNCED_CLUSTER_OFFSET, EDGE_SECRET};
use workload::{Shared, SharedWorkload, Workload, WorkloadParams, read, write};

/// How to build a simulated cluster.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Number of scheduler clusters, numbered `1..=clusters`.
    pub clusters: usize,
    /// Schedulers in each scheduler cluster.
    pub schedulers_per_cluster: usize,
    /// Total hosts, split evenly across clusters.
    pub hosts: usize,
    /// Total tasks, split evenly across clusters.
    pub tasks: usize,
    /// Peers per task, each on a distinct host of the task's cluster.
    pub peers_per_task: usize,
    /// Seed of everything random (ids, states, movement).
    pub seed: u64,
    /// Period of the background ticker; `None` keeps the state static.
    pub tick_interval: Option<Duration>,
    /// Address the servers listen on.
    pub listen_ip: IpAddr,
    /// 0 for ephemeral ports; otherwise schedulers listen on
    /// `base_port..` in order and the manager on the port after them.
    pub base_port: u16,
    /// Each host serves `grpc.health.v1.Health` on its `ip:port` (a
    /// loopback address of its own in 127.0.0.0/8, an ephemeral port):
    /// one listening socket per host. Off, hosts keep their loopback
    /// addresses with port 4000 and nothing answers there.
    pub host_health: bool,
    /// What the data looks like: tidy, or real-world at its oddest.
    pub profile: Profile,
}

/// What the simulated data looks like.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Profile {
    /// Every field set, every figure finite, ids as configured.
    #[default]
    Standard,
    /// The values real schedulers send (see `workload/edge.rs`): sparse
    /// hosts, NaN and +-Inf percentages, IPv6 and non-ASCII names,
    /// counters at their maximum, ports 0, duplicate hostnames, the last
    /// cluster's hosts carrying its id plus [`ANNOUNCED_CLUSTER_OFFSET`],
    /// peers without host or task, tasks with no peers.
    Edge,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            clusters: 2,
            schedulers_per_cluster: 3,
            hosts: 300,
            tasks: 200,
            peers_per_task: 10,
            seed: 42,
            tick_interval: Some(Duration::from_secs(1)),
            listen_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            base_port: 0,
            host_health: true,
            profile: Profile::Standard,
        }
    }
}

/// An RPC the simulator counts and can fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    StatPeer,
    DeletePeer,
    StatTask,
    DeleteTask,
    ListHosts,
    DeleteHost,
    /// The manager's RPC.
    ListSchedulers,
}

impl Method {
    /// Every method, in declaration order.
    pub const ALL: [Method; 7] = [
        Method::StatPeer,
        Method::DeletePeer,
        Method::StatTask,
        Method::DeleteTask,
        Method::ListHosts,
        Method::DeleteHost,
        Method::ListSchedulers,
    ];
}

/// One simulated scheduler.
#[derive(Clone, Debug)]
pub struct SimScheduler {
    pub cluster_id: u64,
    pub addr: SocketAddr,
}

/// Why the simulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("invalid simulator config: {0}")]
    InvalidConfig(String),
    #[error("base port {base} leaves no room for {count} servers")]
    PortRange { base: u16, count: usize },
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("workload generation failed: {0}")]
    Workload(String),
}

struct Inner {
    state: SharedWorkload,
    schedulers: Vec<SimScheduler>,
    manager_addr: SocketAddr,
    faults: HashMap<SocketAddr, Arc<Faults>>,
    hosts: Arc<health::Hosts>,
    /// Hosts serve a health service (`SimConfig::host_health`).
    host_health: bool,
    shutdown: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle went away without `shutdown`: stop the servers.
        self.shutdown.send_replace(true);
    }
}

/// A running simulated Dragonfly cluster. Cheap to clone; every clone
/// drives the same servers. Dropping the last clone stops the servers in
/// the background; [`SimCluster::shutdown`] stops them and waits.
#[derive(Clone)]
pub struct SimCluster {
    inner: Arc<Inner>,
}

/// Checks a configuration without binding anything.
pub fn validate(config: &SimConfig) -> Result<(), SimError> {
    if config.clusters == 0 {
        return Err(SimError::InvalidConfig(
            "clusters must be at least 1".into(),
        ));
    }
    if config.schedulers_per_cluster == 0 {
        return Err(SimError::InvalidConfig(
            "schedulers_per_cluster must be at least 1".into(),
        ));
    }
    if config.tick_interval.is_some_and(|d| d.is_zero()) {
        return Err(SimError::InvalidConfig(
            "tick_interval must be positive (use None for a static cluster)".into(),
        ));
    }
    Ok(())
}

async fn bind(
    ip: IpAddr,
    base_port: u16,
    index: usize,
    count: usize,
) -> Result<TcpListener, SimError> {
    let port = if base_port == 0 {
        0
    } else {
        u16::try_from(index)
            .ok()
            .and_then(|i| base_port.checked_add(i))
            .ok_or(SimError::PortRange {
                base: base_port,
                count,
            })?
    };
    let addr = SocketAddr::new(ip, port);
    TcpListener::bind(addr)
        .await
        .map_err(|source| SimError::Bind { addr, source })
}

/// A listener for every server (schedulers first, the manager last), with
/// the address each got.
async fn bind_all(
    config: &SimConfig,
    server_count: usize,
) -> Result<Vec<(SocketAddr, TcpListener)>, SimError> {
    let mut listeners = Vec::with_capacity(server_count);
    for i in 0..server_count {
        let listener = bind(config.listen_ip, config.base_port, i, server_count).await?;
        let addr = listener.local_addr().map_err(|source| SimError::Bind {
            addr: SocketAddr::new(config.listen_ip, 0),
            source,
        })?;
        listeners.push((addr, listener));
    }
    Ok(listeners)
}

/// The schedulers of every cluster, on the first listeners in order, and
/// each cluster's scheduler addresses.
fn place_schedulers(
    config: &SimConfig,
    listeners: &[(SocketAddr, TcpListener)],
) -> (Vec<SimScheduler>, Vec<(u64, Vec<SocketAddr>)>) {
    let mut schedulers = Vec::with_capacity(config.clusters * config.schedulers_per_cluster);
    let mut clusters = Vec::with_capacity(config.clusters);
    for c in 0..config.clusters {
        let cluster_id = c as u64 + 1;
        let addrs: Vec<SocketAddr> = (0..config.schedulers_per_cluster)
            .map(|j| listeners[c * config.schedulers_per_cluster + j].0)
            .collect();
        schedulers.extend(addrs.iter().map(|&addr| SimScheduler { cluster_id, addr }));
        clusters.push((cluster_id, addrs));
    }
    (schedulers, clusters)
}

/// Serves one simulated server (`role`: scheduler or manager) on its
/// listener until shutdown.
fn spawn_server(
    router: Router,
    listener: TcpListener,
    addr: SocketAddr,
    mut stop: watch::Receiver<bool>,
    role: &'static str,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let signal = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        let incoming = nodelay(listener);
        if let Err(e) = router.serve_with_incoming_shutdown(incoming, signal).await {
            tracing::warn!(%addr, error = %e, "simulated {role} stopped with an error");
        }
    })
}

/// Every host id the schedulers list now.
fn listed_hosts(state: &SharedWorkload) -> HashSet<String> {
    let workload = read(state);
    workload
        .cluster_ids()
        .into_iter()
        .flat_map(|c| {
            workload
                .hosts(c)
                .iter()
                .map(|h| h.id.clone())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Ticks the workload every `period` until shutdown, and gives hosts that
/// joined their health service (and takes it from those that left).
fn spawn_ticker(
    state: SharedWorkload,
    hosts: Arc<health::Hosts>,
    period: Duration,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        interval.tick().await; // the first tick is immediate
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = stop.wait_for(|s| *s) => break,
            }
            // A big tick must not stall a runtime worker.
            let ticked = Arc::clone(&state);
            let _ = tokio::task::spawn_blocking(move || workload::tick(&ticked)).await;
            hosts.sync(&listed_hosts(&state));
        }
    })
}

impl SimCluster {
    /// Binds every server, generates the workload and starts serving. The
    /// servers accept connections when this returns.
    pub async fn start(config: SimConfig) -> Result<SimCluster, SimError> {
        validate(&config)?;
        let sched_count = config.clusters * config.schedulers_per_cluster;
        let server_count = sched_count + 1;
        let listeners = bind_all(&config, server_count).await?;
        let manager_addr = listeners[sched_count].0;
        let (schedulers, clusters) = place_schedulers(&config, &listeners);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let hosts = Arc::new(health::Hosts::new(shutdown_rx.clone()));

        let params = WorkloadParams {
            clusters,
            hosts: config.hosts,
            tasks: config.tasks,
            peers_per_task: config.peers_per_task,
            seed: config.seed,
            binder: config.host_health.then(|| hosts.binder()),
        };
        let edge = config.profile == Profile::Edge;
        let workload = tokio::task::spawn_blocking(move || {
            let mut workload = Workload::new(params);
            if edge {
                workload.edge = true;
                workload.roughen();
            }
            workload
        })
        .await
        .map_err(|e| SimError::Workload(e.to_string()))?;
        let state: SharedWorkload = Arc::new(Shared::new(workload));
        hosts.sync(&listed_hosts(&state));

        let mut faults = HashMap::with_capacity(server_count);
        let mut tasks = Vec::with_capacity(server_count + 1);
        let mut listeners = listeners.into_iter();

        for (sched, (addr, listener)) in schedulers.iter().zip(listeners.by_ref()) {
            let f = Arc::new(Faults::new(shutdown_rx.clone()));
            faults.insert(addr, Arc::clone(&f));
            let service = SchedulerServer::new(SchedulerService {
                cluster_id: sched.cluster_id,
                addr,
                state: Arc::clone(&state),
                faults: f,
            })
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX);
            let router = Server::builder().add_service(service);
            tasks.push(spawn_server(
                router,
                listener,
                addr,
                shutdown_rx.clone(),
                "scheduler",
            ));
        }

        if let Some((addr, listener)) = listeners.next() {
            let f = Arc::new(Faults::new(shutdown_rx.clone()));
            faults.insert(addr, Arc::clone(&f));
            let records: Vec<(u64, SocketAddr)> =
                schedulers.iter().map(|s| (s.cluster_id, s.addr)).collect();
            let service = ManagerServer::new(ManagerService::new(&records, f))
                .max_decoding_message_size(usize::MAX)
                .max_encoding_message_size(usize::MAX);
            let router = Server::builder().add_service(service);
            tasks.push(spawn_server(
                router,
                listener,
                addr,
                shutdown_rx.clone(),
                "manager",
            ));
        }

        if let Some(period) = config.tick_interval {
            tasks.push(spawn_ticker(
                Arc::clone(&state),
                Arc::clone(&hosts),
                period,
                shutdown_rx.clone(),
            ));
        }

        tracing::info!(
            schedulers = schedulers.len(),
            manager = %manager_addr,
            "simulated Dragonfly cluster started"
        );
        Ok(SimCluster {
            inner: Arc::new(Inner {
                state,
                schedulers,
                manager_addr,
                faults,
                hosts,
                host_health: config.host_health,
                shutdown,
                tasks: Mutex::new(tasks),
            }),
        })
    }

    /// Every scheduler, ordered by cluster then index.
    pub fn schedulers(&self) -> Vec<SimScheduler> {
        self.inner.schedulers.clone()
    }

    /// The manager's address.
    pub fn manager_addr(&self) -> SocketAddr {
        self.inner.manager_addr
    }

    /// The scheduler cluster ids, ascending (`1..=clusters`).
    pub fn cluster_ids(&self) -> Vec<u64> {
        read(&self.inner.state).cluster_ids()
    }

    /// The hosts the schedulers of `cluster_id` currently list.
    pub fn hosts(&self, cluster_id: u64) -> Vec<Host> {
        let snapshot = read(&self.inner.state).hosts(cluster_id);
        snapshot.as_ref().clone()
    }

    /// The tasks of `cluster_id`, ordered by id.
    pub fn tasks(&self, cluster_id: u64) -> Vec<Task> {
        read(&self.inner.state).tasks(cluster_id)
    }

    /// The peers of `cluster_id` with their task and host embedded, as
    /// `StatPeer` returns them.
    pub fn peers(&self, cluster_id: u64) -> Vec<Peer> {
        read(&self.inner.state).peers(cluster_id)
    }

    /// Every peer of a cluster as (host id, task id, peer id): what a
    /// lookup needs, also for peers served without their host and task.
    pub fn peer_keys(&self, cluster_id: u64) -> Vec<(String, String, String)> {
        read(&self.inner.state).peer_keys(cluster_id)
    }

    /// The scheduler that holds `task_id` now.
    pub fn task_owner(&self, task_id: &str) -> Option<SocketAddr> {
        read(&self.inner.state).task_owner(task_id)
    }

    /// Advances the workload one step (what the background ticker does).
    /// Needs a runtime (hosts that join get their health service).
    pub fn tick(&self) {
        workload::tick(&self.inner.state);
        self.sync_hosts();
    }

    fn sync_hosts(&self) {
        // Without health services there is nothing to open or close, and
        // listing every host per change would cost a load generator that
        // renames 100 of 10k hosts a second a tenth of a core.
        if !self.inner.host_health {
            return;
        }
        self.inner.hosts.sync(&listed_hosts(&self.inner.state));
    }

    /// The address of a host's gRPC health service (its Host entry's
    /// `ip:port`), if it has one.
    pub fn host_health_addr(&self, host_id: &str) -> Option<SocketAddr> {
        self.inner.hosts.addr(host_id)
    }

    /// What a host's health service does now (`None`: it has none).
    pub fn host_mode(&self, host_id: &str) -> Option<HostMode> {
        self.inner.hosts.mode(host_id)
    }

    /// Stops a host silently, as a crash does: its health port refuses
    /// connections from when this returns, and the schedulers keep listing
    /// it. False for a host without a health service.
    pub async fn stop_host(&self, host_id: &str) -> bool {
        self.inner.hosts.set_mode(host_id, HostMode::Stopped).await
    }

    /// Freezes a host: connections to its health port are still accepted
    /// (by the kernel), no call is answered. False for a host without a
    /// health service.
    pub async fn freeze_host(&self, host_id: &str) -> bool {
        self.inner.hosts.set_mode(host_id, HostMode::Frozen).await
    }

    /// Brings a stopped or frozen host back: it answers `SERVING` again on
    /// the same `ip:port`. False for a host without a health service, or
    /// whose port was taken meanwhile.
    pub async fn resume_host(&self, host_id: &str) -> bool {
        self.inner.hosts.set_mode(host_id, HostMode::Serving).await
    }

    /// Makes a host's next `n` health checks fail (`UNAVAILABLE`), as
    /// lost probes do, then answer again. False for a host without a
    /// health service.
    pub fn lose_health_checks(&self, host_id: &str, n: u64) -> bool {
        self.inner.hosts.lose_checks(host_id, n)
    }

    /// Health `Check` calls a host received, answered or not.
    pub fn health_checks(&self, host_id: &str) -> u64 {
        self.inner.hosts.checks(host_id)
    }

    /// Health `Check` calls received by all hosts.
    pub fn total_health_checks(&self) -> u64 {
        self.inner.hosts.total_checks()
    }

    /// Zeroes every host's health check count.
    pub fn reset_health_checks(&self) {
        self.inner.hosts.reset_checks();
    }

    /// Inserts or replaces a host in cluster `host.scheduler_cluster_id`
    /// (ignored, with a warning, when no such cluster exists).
    pub fn upsert_host(&self, host: Host) {
        let cluster = host.scheduler_cluster_id;
        if !write(&self.inner.state).upsert_host(host) {
            tracing::warn!(cluster, "upsert_host: no such scheduler cluster");
        }
        self.sync_hosts();
    }

    /// Removes a host and its peers (and closes its health service). False
    /// when it was not there.
    pub fn remove_host(&self, cluster_id: u64, host_id: &str) -> bool {
        let removed = write(&self.inner.state).remove_host(cluster_id, host_id);
        self.sync_hosts();
        removed
    }

    /// Sets a peer's state (any string), bumps its `updated_at` and
    /// recomputes its task. False for an unknown peer.
    pub fn set_peer_state(&self, peer_id: &str, state: &str) -> bool {
        write(&self.inner.state).set_peer_state(peer_id, state)
    }

    /// Sets a task's state (until its peers next change). False for an
    /// unknown task.
    pub fn set_task_state(&self, task_id: &str, state: &str) -> bool {
        write(&self.inner.state).set_task_state(task_id, state)
    }

    /// Places a task (and its peers) on scheduler `to`, which must belong
    /// to the task's cluster. False for an unknown task or scheduler.
    pub fn move_task(&self, task_id: &str, to: SocketAddr) -> bool {
        write(&self.inner.state).move_task(task_id, to)
    }

    /// RPCs of `method` received by the server at `addr` (scheduler or
    /// manager), including failed and hung ones.
    pub fn rpc_count(&self, addr: SocketAddr, method: Method) -> u64 {
        self.inner.faults.get(&addr).map_or(0, |f| f.count(method))
    }

    /// The metadata (gRPC headers such as `traceparent`) of the last
    /// `method` RPC the server at `addr` received, if any.
    pub fn last_metadata(
        &self,
        addr: SocketAddr,
        method: Method,
    ) -> Option<tonic::metadata::MetadataMap> {
        self.inner.faults.get(&addr)?.last_metadata(method)
    }

    /// RPCs of `method` received by all servers.
    pub fn total_rpc_count(&self, method: Method) -> u64 {
        self.inner.faults.values().map(|f| f.count(method)).sum()
    }

    /// Zeroes every counter.
    pub fn reset_counters(&self) {
        self.inner.faults.values().for_each(|f| f.reset());
    }

    fn faults(&self, addr: SocketAddr) -> Option<&Faults> {
        let f = self.inner.faults.get(&addr);
        if f.is_none() {
            tracing::warn!(%addr, "no simulated server at this address");
        }
        f.map(AsRef::as_ref)
    }

    /// Delays every RPC to `addr` by `latency` (zero turns it off).
    pub fn set_latency(&self, addr: SocketAddr, latency: Duration) {
        if let Some(f) = self.faults(addr) {
            f.set_latency(latency);
        }
    }

    /// Makes every RPC to `addr` fail with `code` while set.
    pub fn set_error(&self, addr: SocketAddr, code: Option<tonic::Code>) {
        if let Some(f) = self.faults(addr) {
            f.set_error(code);
        }
    }

    /// Makes RPCs to `addr` never answer while set; they resume when it is
    /// cleared and fail with `Unavailable` when the simulator stops.
    pub fn set_hang(&self, addr: SocketAddr, hang: bool) {
        if let Some(f) = self.faults(addr) {
            f.set_hang(hang);
        }
    }

    /// Stops every server and the ticker, and waits for them.
    pub async fn shutdown(self) {
        self.inner.shutdown.send_replace(true);
        self.inner.hosts.shutdown().await;
        let tasks = std::mem::take(
            &mut *self
                .inner
                .tasks
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for task in tasks {
            if let Err(e) = task.await {
                tracing::warn!(error = %e, "simulator task failed");
            }
        }
    }
}

/// Accepted connections with TCP_NODELAY, as Go's net package (and so a
/// real Dragonfly scheduler) sets it: without it a reply written in parts
/// waits ~40 ms for the client's delayed ACK.
fn nodelay(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use futures::StreamExt;
    TcpListenerStream::new(listener).map(|accepted| {
        accepted.inspect(|stream| {
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
        })
    })
}
