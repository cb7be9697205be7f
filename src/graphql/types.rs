//! The GraphQL object types: Dragonfly's hosts, peers, tasks and
//! schedulers, read straight from the wire messages.

use std::sync::Arc;

use async_graphql::{ComplexObject, Context, Enum, ID, Object, Result, SimpleObject};
use chrono::{DateTime, Utc};

use super::loaders::{Loaders, TaskKey};
use super::scalars::{UInt32, UInt64};
use crate::cluster::{HealthSnapshot, SchedulerHandle};
use crate::figure::figure;
use crate::proto::common::v2 as pb;

pub(super) fn timestamp(ts: Option<&prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    let ts = ts?;
    DateTime::from_timestamp(ts.seconds, u32::try_from(ts.nanos).ok()?)
}

pub(super) fn duration_ms(d: Option<&prost_types::Duration>) -> Option<f64> {
    let d = d?;
    Some(d.seconds as f64 * 1000.0 + f64::from(d.nanos) / 1_000_000.0)
}

/// Dragonfly's host types (`Host.type` on the wire).
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[graphql(remote = "crate::host_type::HostType")]
pub enum HostType {
    Normal,
    SuperSeed,
    StrongSeed,
    WeakSeed,
    /// A type this gateway does not know (a newer scheduler).
    Unknown,
}

impl HostType {
    pub fn from_wire(t: u32) -> Self {
        crate::host_type::HostType::from_wire(t).into()
    }
}

/// Dragonfly's peer state machine (scheduler `resource.Peer` FSM).
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerState {
    Pending,
    ReceivedEmpty,
    ReceivedTiny,
    ReceivedSmall,
    ReceivedNormal,
    Running,
    BackToSource,
    Succeeded,
    Failed,
    Leave,
    Unknown,
}

impl PeerState {
    pub fn from_wire(s: &str) -> Self {
        match s {
            "Pending" => Self::Pending,
            "ReceivedEmpty" => Self::ReceivedEmpty,
            "ReceivedTiny" => Self::ReceivedTiny,
            "ReceivedSmall" => Self::ReceivedSmall,
            "ReceivedNormal" => Self::ReceivedNormal,
            "Running" => Self::Running,
            "BackToSource" => Self::BackToSource,
            "Succeeded" => Self::Succeeded,
            "Failed" => Self::Failed,
            "Leave" => Self::Leave,
            _ => Self::Unknown,
        }
    }
}

/// Dragonfly's task state machine.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskState {
    Pending,
    Running,
    Succeeded,
    Failed,
    Leave,
    Unknown,
}

impl TaskState {
    pub fn from_wire(s: &str) -> Self {
        match s {
            "Pending" => Self::Pending,
            "Running" => Self::Running,
            "Succeeded" => Self::Succeeded,
            "Failed" => Self::Failed,
            "Leave" => Self::Leave,
            _ => Self::Unknown,
        }
    }
}

#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskType {
    Standard,
    Persistent,
    PersistentCache,
    Cache,
}

impl TaskType {
    fn from_wire(t: i32) -> Self {
        match pb::TaskType::try_from(t).unwrap_or(pb::TaskType::Standard) {
            pb::TaskType::Standard => Self::Standard,
            pb::TaskType::Persistent => Self::Persistent,
            pb::TaskType::PersistentCache => Self::PersistentCache,
            pb::TaskType::Cache => Self::Cache,
        }
    }
}

#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SizeScope {
    Normal,
    Small,
    Tiny,
    Empty,
}

impl SizeScope {
    fn from_wire(t: i32) -> Self {
        match pb::SizeScope::try_from(t).unwrap_or(pb::SizeScope::Normal) {
            pb::SizeScope::Normal => Self::Normal,
            pb::SizeScope::Small => Self::Small,
            pb::SizeScope::Tiny => Self::Tiny,
            pb::SizeScope::Empty => Self::Empty,
        }
    }
}

#[derive(SimpleObject)]
pub struct Cpu {
    pub logical_count: UInt32,
    pub physical_count: UInt32,
    /// Host CPU in use, percent; null when the scheduler sent no finite figure (NaN
    /// or +-Inf; see docs/real-world-data.md).
    pub percent: Option<f64>,
    /// CPU used by the dfdaemon process, percent; null when the scheduler sent no finite figure (NaN
    /// or +-Inf; see docs/real-world-data.md).
    pub process_percent: Option<f64>,
}

#[derive(SimpleObject)]
pub struct Memory {
    pub total: UInt64,
    pub available: UInt64,
    pub used: UInt64,
    pub free: UInt64,
    /// Memory in use, percent; null when the scheduler sent no finite
    /// figure (NaN or +-Inf; see docs/real-world-data.md).
    pub used_percent: Option<f64>,
    /// Memory used by the dfdaemon process, percent; null when the scheduler sent no finite figure (NaN
    /// or +-Inf; see docs/real-world-data.md).
    pub process_used_percent: Option<f64>,
}

#[derive(SimpleObject)]
pub struct Network {
    pub tcp_connection_count: UInt32,
    pub upload_tcp_connection_count: UInt32,
    pub idc: Option<String>,
    pub location: Option<String>,
    pub max_rx_bandwidth: UInt64,
    pub rx_bandwidth: Option<UInt64>,
    pub max_tx_bandwidth: UInt64,
    pub tx_bandwidth: Option<UInt64>,
}

#[derive(SimpleObject)]
pub struct Disk {
    pub total: UInt64,
    pub free: UInt64,
    pub used: UInt64,
    /// Disk space in use, percent; null when the scheduler sent no
    /// finite figure (NaN or +-Inf; see docs/real-world-data.md).
    pub used_percent: Option<f64>,
    pub inodes_total: UInt64,
    pub inodes_used: UInt64,
    pub inodes_free: UInt64,
    /// Inodes in use, percent; null when the scheduler sent no finite figure (NaN
    /// or +-Inf; see docs/real-world-data.md).
    pub inodes_used_percent: Option<f64>,
    pub read_bandwidth: UInt64,
    pub write_bandwidth: UInt64,
}

#[derive(SimpleObject)]
pub struct Build {
    pub git_version: String,
    pub git_commit: Option<String>,
    pub go_version: Option<String>,
    pub rust_version: Option<String>,
    pub platform: Option<String>,
}

/// A dfdaemon process, as its scheduler cluster knows it.
#[derive(Clone)]
pub struct Host(pub Arc<pb::Host>);

#[Object]
impl Host {
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    async fn r#type(&self) -> HostType {
        HostType::from_wire(self.0.r#type)
    }
    async fn hostname(&self) -> &str {
        &self.0.hostname
    }
    async fn ip(&self) -> &str {
        &self.0.ip
    }
    async fn name(&self) -> &str {
        &self.0.name
    }
    async fn port(&self) -> i32 {
        self.0.port
    }
    async fn download_port(&self) -> i32 {
        self.0.download_port
    }
    async fn proxy_port(&self) -> i32 {
        self.0.proxy_port
    }
    /// Whether the host answers its own gRPC health service (on
    /// `ip:port`), as dfgraph last probed it; the scheduler may list a host
    /// that stopped answering for 10-15 minutes.
    async fn liveness(&self, ctx: &Context<'_>) -> Result<HostLiveness> {
        if let Ok(loaders) = ctx.data::<Loaders>() {
            loaders.freshness.record_uncacheable();
        }
        let liveness = &ctx.data::<super::GatewayState>()?.liveness;
        Ok(HostLiveness::of(
            liveness.get(self.0.scheduler_cluster_id, &self.0.id),
        ))
    }
    async fn os(&self) -> &str {
        &self.0.os
    }
    async fn platform(&self) -> &str {
        &self.0.platform
    }
    async fn platform_family(&self) -> &str {
        &self.0.platform_family
    }
    async fn platform_version(&self) -> &str {
        &self.0.platform_version
    }
    async fn kernel_version(&self) -> &str {
        &self.0.kernel_version
    }
    async fn disable_shared(&self) -> bool {
        self.0.disable_shared
    }
    async fn scheduler_cluster_id(&self) -> ID {
        ID(self.0.scheduler_cluster_id.to_string())
    }
    async fn cpu(&self) -> Option<Cpu> {
        self.0.cpu.as_ref().map(|c| Cpu {
            logical_count: c.logical_count.into(),
            physical_count: c.physical_count.into(),
            percent: figure(c.percent),
            process_percent: figure(c.process_percent),
        })
    }
    async fn memory(&self) -> Option<Memory> {
        self.0.memory.as_ref().map(|m| Memory {
            total: m.total.into(),
            available: m.available.into(),
            used: m.used.into(),
            free: m.free.into(),
            used_percent: figure(m.used_percent),
            process_used_percent: figure(m.process_used_percent),
        })
    }
    async fn network(&self) -> Option<Network> {
        self.0.network.as_ref().map(|n| Network {
            tcp_connection_count: n.tcp_connection_count.into(),
            upload_tcp_connection_count: n.upload_tcp_connection_count.into(),
            idc: n.idc.clone(),
            location: n.location.clone(),
            max_rx_bandwidth: n.max_rx_bandwidth.into(),
            rx_bandwidth: n.rx_bandwidth.map(UInt64),
            max_tx_bandwidth: n.max_tx_bandwidth.into(),
            tx_bandwidth: n.tx_bandwidth.map(UInt64),
        })
    }
    async fn disk(&self) -> Option<Disk> {
        self.0.disk.as_ref().map(|d| Disk {
            total: d.total.into(),
            free: d.free.into(),
            used: d.used.into(),
            used_percent: figure(d.used_percent),
            inodes_total: d.inodes_total.into(),
            inodes_used: d.inodes_used.into(),
            inodes_free: d.inodes_free.into(),
            inodes_used_percent: figure(d.inodes_used_percent),
            read_bandwidth: d.read_bandwidth.into(),
            write_bandwidth: d.write_bandwidth.into(),
        })
    }
    async fn build(&self) -> Option<Build> {
        self.0.build.as_ref().map(|b| Build {
            git_version: b.git_version.clone(),
            git_commit: b.git_commit.clone(),
            go_version: b.go_version.clone(),
            rust_version: b.rust_version.clone(),
            platform: b.platform.clone(),
        })
    }
    /// This host's newest events in the event log (joins, leaves, changes
    /// other than of load figures), newest first, from every cluster.
    async fn events(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 10)] first: i32,
    ) -> Result<Vec<super::subscription::HostEvent>> {
        let max = ctx.data::<super::GatewayState>()?.limits.max_page_size;
        let first = usize::try_from(first)
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| {
                super::errors::bad_input(format!("`first` must be between 1 and {max}"))
            })?;
        super::history::events_of_host(ctx, &self.0.id, first).await
    }
}

/// A byte range of the content.
#[derive(SimpleObject)]
pub struct Range {
    pub start: UInt64,
    pub length: UInt64,
}

/// One host's download of one task.
#[derive(Clone)]
pub struct Peer {
    /// The scheduler cluster that answered for this peer.
    pub cluster_id: u64,
    /// The host id the peer was looked up with.
    pub host_id: String,
    pub peer: Arc<pb::Peer>,
}

#[Object]
impl Peer {
    async fn id(&self) -> ID {
        ID(self.peer.id.clone())
    }
    async fn state(&self) -> PeerState {
        PeerState::from_wire(&self.peer.state)
    }
    /// The state string exactly as the scheduler reported it.
    async fn raw_state(&self) -> &str {
        &self.peer.state
    }
    /// Priority level, 0 to 6 (Dragonfly's `LEVEL0`..`LEVEL6`).
    async fn priority(&self) -> i32 {
        self.peer.priority
    }
    async fn range(&self) -> Option<Range> {
        self.peer.range.as_ref().map(|r| Range {
            start: r.start.into(),
            length: r.length.into(),
        })
    }
    /// Pieces this peer has finished.
    async fn finished_piece_count(&self) -> usize {
        self.peer.pieces.len()
    }
    /// Pieces the task has in total.
    async fn piece_count(&self) -> Option<UInt32> {
        self.peer.task.as_ref().map(|t| t.piece_count.into())
    }
    async fn cost_ms(&self) -> Option<f64> {
        duration_ms(self.peer.cost.as_ref())
    }
    async fn need_back_to_source(&self) -> bool {
        self.peer.need_back_to_source
    }
    async fn concurrent_piece_count(&self) -> Option<UInt32> {
        self.peer.concurrent_piece_count.map(UInt32)
    }
    async fn created_at(&self) -> Option<DateTime<Utc>> {
        timestamp(self.peer.created_at.as_ref())
    }
    async fn updated_at(&self) -> Option<DateTime<Utc>> {
        timestamp(self.peer.updated_at.as_ref())
    }
    async fn scheduler_cluster_id(&self) -> ID {
        ID(self.cluster_id.to_string())
    }
    /// The peer's host: the snapshot the scheduler returned with the peer,
    /// or the cluster's host list when the scheduler left it out.
    async fn host(&self, ctx: &Context<'_>) -> Result<Option<Host>> {
        if let Some(host) = &self.peer.host {
            let mut host = host.clone();
            crate::cluster::announced::stamp(&mut host, self.cluster_id);
            return Ok(Some(Host(Arc::new(host))));
        }
        ctx.data::<Loaders>()?
            .host(self.cluster_id, &self.host_id)
            .await
    }
    /// The peer's task, live: one lookup per distinct task in a request.
    async fn task(&self, ctx: &Context<'_>) -> Result<Option<Task>> {
        let Some(task_id) = self.peer.task.as_ref().map(|t| t.id.clone()) else {
            return Ok(None);
        };
        let loaders = ctx.data::<Loaders>()?;
        loaders
            .task(TaskKey {
                cluster_id: self.cluster_id,
                task_id,
            })
            .await
    }
}

/// One piece of content being distributed.
#[derive(Clone)]
pub struct Task {
    pub cluster_id: u64,
    pub task: Arc<pb::Task>,
}

#[Object]
impl Task {
    async fn id(&self) -> ID {
        ID(self.task.id.clone())
    }
    async fn r#type(&self) -> TaskType {
        TaskType::from_wire(self.task.r#type)
    }
    async fn url(&self) -> &str {
        &self.task.url
    }
    async fn digest(&self) -> Option<&str> {
        self.task.digest.as_deref()
    }
    async fn tag(&self) -> Option<&str> {
        self.task.tag.as_deref()
    }
    async fn application(&self) -> Option<&str> {
        self.task.application.as_deref()
    }
    async fn filtered_query_params(&self) -> &[String] {
        &self.task.filtered_query_params
    }
    async fn content_length(&self) -> UInt64 {
        self.task.content_length.into()
    }
    async fn piece_count(&self) -> UInt32 {
        self.task.piece_count.into()
    }
    async fn size_scope(&self) -> SizeScope {
        SizeScope::from_wire(self.task.size_scope)
    }
    async fn state(&self) -> TaskState {
        TaskState::from_wire(&self.task.state)
    }
    async fn raw_state(&self) -> &str {
        &self.task.state
    }
    async fn peer_count(&self) -> UInt32 {
        self.task.peer_count.into()
    }
    async fn has_available_peer(&self) -> bool {
        self.task.has_available_peer
    }
    async fn created_at(&self) -> Option<DateTime<Utc>> {
        timestamp(self.task.created_at.as_ref())
    }
    async fn updated_at(&self) -> Option<DateTime<Utc>> {
        timestamp(self.task.updated_at.as_ref())
    }
    async fn scheduler_cluster_id(&self) -> ID {
        ID(self.cluster_id.to_string())
    }
    /// The pieces its scheduler reports (`StatTask`), by number, `first`
    /// (default 100, at most the page size limit) after the piece numbered
    /// `after` (a piece's cursor is its number).
    async fn pieces(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<
        async_graphql::connection::Connection<
            String,
            super::pieces::Piece,
            super::pieces::PieceConnectionFields,
            async_graphql::connection::EmptyFields,
        >,
    > {
        let max = ctx.data::<super::GatewayState>()?.limits.max_page_size;
        let first = super::query::page_size("first", first, max)?.unwrap_or(100.min(max));
        super::pieces::page(&self.task.pieces, first, after.as_deref())
    }
}

/// A scheduler's circuit breaker.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CircuitState {
    /// Calls go through.
    Closed,
    /// The scheduler failed repeatedly: calls fail fast with
    /// `SCHEDULER_CIRCUIT_OPEN` until it is probed again.
    Open,
    /// A few probe calls test whether it recovered.
    HalfOpen,
}

impl From<crate::breaker::CircuitState> for CircuitState {
    fn from(state: crate::breaker::CircuitState) -> Self {
        match state {
            crate::breaker::CircuitState::Closed => Self::Closed,
            crate::breaker::CircuitState::Open => Self::Open,
            crate::breaker::CircuitState::HalfOpen => Self::HalfOpen,
        }
    }
}

/// What dfgraph has seen of a scheduler.
#[derive(SimpleObject)]
pub struct SchedulerHealth {
    /// False while the latest call to it failed or its circuit is open.
    pub up: bool,
    pub circuit: CircuitState,
    pub last_success_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
    /// Smoothed latency of successful calls.
    pub latency_ms: Option<f64>,
    pub consecutive_failures: u32,
}

impl From<HealthSnapshot> for SchedulerHealth {
    fn from(h: HealthSnapshot) -> Self {
        let at = |ms: u64| DateTime::from_timestamp_millis(ms as i64);
        Self {
            up: h.is_up(),
            circuit: h.circuit.into(),
            last_success_at: h.last_success_ms.and_then(at),
            last_error: h.last_error.as_ref().map(|(_, m)| m.clone()),
            last_error_at: h.last_error.as_ref().and_then(|(ms, _)| at(*ms)),
            latency_ms: h.latency.map(|l| l.as_secs_f64() * 1000.0),
            consecutive_failures: h.consecutive_failures,
        }
    }
}

/// One scheduler of a scheduler cluster.
#[derive(SimpleObject)]
#[graphql(complex)]
pub struct Scheduler {
    pub address: String,
    pub scheduler_cluster_id: ID,
    #[graphql(skip)]
    pub handle: Arc<SchedulerHandle>,
}

#[ComplexObject]
impl Scheduler {
    async fn health(&self) -> SchedulerHealth {
        self.handle.health_snapshot().into()
    }
    /// The scheduler cluster id this scheduler writes in the hosts it
    /// lists (its own configuration), as last read; null until dfgraph has
    /// read a host list from it. Only checked: `schedulerClusterId` is the
    /// id its hosts are served under everywhere.
    async fn announced_cluster_id(&self) -> Option<ID> {
        self.handle.announced.get().map(|id| ID(id.to_string()))
    }
    /// True while its hosts carry another scheduler cluster id than
    /// `schedulerClusterId`: a configuration error (see
    /// docs/real-world-data.md).
    async fn cluster_id_mismatch(&self) -> bool {
        self.handle.announced.mismatched(self.handle.cluster_id)
    }
}

impl From<Arc<SchedulerHandle>> for Scheduler {
    fn from(handle: Arc<SchedulerHandle>) -> Self {
        Self {
            address: handle.addr.to_string(),
            scheduler_cluster_id: ID(handle.cluster_id.to_string()),
            handle,
        }
    }
}

/// A scheduler cluster and its schedulers.
#[derive(SimpleObject)]
pub struct SchedulerCluster {
    pub id: ID,
    pub schedulers: Vec<Scheduler>,
    /// At least one scheduler answered its latest call.
    pub reachable: bool,
    /// Some scheduler's hosts carry another scheduler cluster id than
    /// `id` (each scheduler's `clusterIdMismatch` says which).
    pub cluster_id_mismatch: bool,
}

/// Whether a host answers its health service.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LivenessState {
    /// Its last probe was answered `SERVING`.
    Reachable,
    /// Its last `liveness.failures` probes in a row failed.
    Unreachable,
    /// Not probed (yet, or at all: probing off, or its address outside
    /// `liveness.networks`), or failing fewer times than that since first
    /// seen.
    Unknown,
}

impl From<crate::liveness::State> for LivenessState {
    fn from(state: crate::liveness::State) -> Self {
        match state {
            crate::liveness::State::Reachable => LivenessState::Reachable,
            crate::liveness::State::Unreachable => LivenessState::Unreachable,
            crate::liveness::State::Unknown => LivenessState::Unknown,
        }
    }
}

/// What dfgraph's probes of a host's gRPC health service found.
#[derive(SimpleObject, Clone, Debug)]
pub struct HostLiveness {
    pub state: LivenessState,
    /// Since when `state` holds (null for `UNKNOWN` without a probe).
    pub since: Option<DateTime<Utc>>,
    /// When the last probe ended.
    pub last_probe_at: Option<DateTime<Utc>>,
    /// Round trip of the last answered probe, in milliseconds.
    pub latency_ms: Option<f64>,
    /// Failed probes since the last answered one.
    pub consecutive_failures: u32,
}

impl HostLiveness {
    fn of(record: Option<crate::liveness::Record>) -> HostLiveness {
        let at = |ms: i64| DateTime::from_timestamp_millis(ms);
        match record {
            None => HostLiveness {
                state: LivenessState::Unknown,
                since: None,
                last_probe_at: None,
                latency_ms: None,
                consecutive_failures: 0,
            },
            Some(r) => HostLiveness {
                state: r.state.into(),
                since: at(r.since_ms),
                last_probe_at: at(r.last_probe_ms),
                latency_ms: r.latency_us.map(|us| us as f64 / 1000.0),
                consecutive_failures: r.consecutive_failures,
            },
        }
    }
}
