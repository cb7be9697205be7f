//! The schedulers of every configured scheduler cluster, and how to ask
//! them: discovery (static or manager), reusable channels, hash-ring
//! routing with NotFound fallback, deadlines, health, and fan-out.
//!
//! Depends on `proto`, `setting`, `breaker` and `clock` only; knows
//! nothing of caching or GraphQL.

pub mod announced;
pub mod discovery;
pub mod error;
pub mod health;
pub mod host_list;
pub mod raw;
pub mod retry;
pub mod ring;
pub mod scheduler;
pub mod timeouts;
pub mod tls;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;

pub use error::ClusterError;
pub use health::HealthSnapshot;
pub use host_list::HostList;
pub use retry::RetryConfig;
pub use ring::TaskRing;
pub use scheduler::{Dial, Guards, SchedulerHandle};
pub use timeouts::Timeouts;
pub use tls::TlsConfig;

use retry::RetryBudget;

/// The scheduler client's metrics, declared once with their HELP text.
pub mod metric {
    pub const RETRIES: &str = "dfgraph_scheduler_retries_total";
    pub const CIRCUIT_STATE: &str = "dfgraph_scheduler_circuit_state";
    pub const CIRCUIT_TRIPS: &str = "dfgraph_scheduler_circuit_trips_total";
    pub const FAST_FAILURES: &str = "dfgraph_scheduler_fast_failures_total";
    pub const CALL_SECONDS: &str = "dfgraph_scheduler_call_seconds";

    /// Gives `/metrics` the HELP line of each.
    pub fn describe() {
        metrics::describe_counter!(
            RETRIES,
            "Retries of a scheduler call on another scheduler, granted or refused by the retry budget (outcome)."
        );
        metrics::describe_gauge!(
            CIRCUIT_STATE,
            "Each scheduler's circuit breaker: 0 closed, 1 open, 2 half-open."
        );
        metrics::describe_counter!(CIRCUIT_TRIPS, "Times a scheduler's circuit opened.");
        metrics::describe_counter!(
            FAST_FAILURES,
            "Calls failed without reaching the scheduler: its circuit open, or backing off after rate limiting (reason)."
        );
        metrics::describe_histogram!(
            CALL_SECONDS,
            "Seconds of scheduler gRPC calls, by method and result."
        );
        super::announced::metric::describe();
    }
}

use crate::deadline::Deadline;
use crate::ids::PeerKey;
use crate::proto::common::v2::{Peer, Task};
use crate::proto::scheduler::v2::{
    DeleteHostRequest, DeletePeerRequest, DeleteTaskRequest, ListHostsRequest, StatPeerRequest,
    StatTaskRequest,
};

/// Network calls one cluster-wide read makes at most: the first and one
/// retry on another scheduler.
const MAX_ATTEMPTS: u32 = 2;

/// Whether repeating a call is harmless.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Idempotent {
    Yes,
    No,
}

/// The `host_id` dfgraph sends with `StatTask`. Schedulers look tasks up by
/// task id alone, but some versions validate `host_id` as non-empty.
pub const GATEWAY_HOST_ID: &str = "dfgraph";

/// What takes in a `ListHostsResponse` as it arrives (see
/// [`ClusterClient::receive_hosts`]).
pub trait ReceiveHosts: Send {
    /// An answer begins; one begun before it (from a scheduler that failed
    /// half way) is abandoned.
    fn begin(&mut self);
    /// The answer's next bytes.
    fn piece(&mut self, bytes: &[u8]) -> Result<(), host_list::WireError>;
    /// The answer is complete.
    fn end(&mut self) -> Result<(), host_list::WireError>;
}

impl<R: ReceiveHosts + ?Sized> ReceiveHosts for Box<R> {
    fn begin(&mut self) {
        (**self).begin();
    }

    fn piece(&mut self, bytes: &[u8]) -> Result<(), host_list::WireError> {
        (**self).piece(bytes)
    }

    fn end(&mut self) -> Result<(), host_list::WireError> {
        (**self).end()
    }
}

/// The scheduler that answered [`ClusterClient::receive_hosts`], and the
/// answer's length.
pub struct ReceivedHosts {
    pub len: usize,
    pub from: Arc<SchedulerHandle>,
}

/// One scheduler cluster as currently known.
pub struct ClusterView {
    pub id: u64,
    pub schedulers: Vec<Arc<SchedulerHandle>>,
    pub ring: TaskRing,
}

impl ClusterView {
    fn scheduler(&self, addr: SocketAddr) -> Option<&Arc<SchedulerHandle>> {
        self.schedulers.iter().find(|s| s.addr == addr)
    }

    /// Schedulers in the order to try for cluster-wide reads: those that
    /// would fail fast (circuit open, backing off) last; before them, those
    /// whose last call succeeded, then by fewest recent failures.
    fn by_health(&self) -> Vec<Arc<SchedulerHandle>> {
        let mut ordered = self.schedulers.clone();
        ordered.sort_by_cached_key(|s| (s.fails_fast(), s.health.snapshot().consecutive_failures));
        ordered
    }
}

/// Every cluster, swapped whole when discovery changes it.
#[derive(Default)]
struct Topology {
    clusters: BTreeMap<u64, Arc<ClusterView>>,
}

/// Settings of the client.
#[derive(Clone, Debug)]
pub struct ClientSettings {
    pub dial: Dial,
    pub timeouts: Timeouts,
    /// Concurrency bound, circuit breaker and backoff of every scheduler.
    pub guards: Guards,
}

/// The gateway's view of all schedulers; cheap to clone.
#[derive(Clone)]
pub struct ClusterClient {
    inner: Arc<Inner>,
    /// Shared by every retry this client (and its clones) makes toward any
    /// scheduler.
    retry_budget: Arc<RetryBudget>,
}

struct Inner {
    settings: ClientSettings,
    topology: RwLock<Arc<Topology>>,
    /// Cluster ids we were asked to serve, even while they have no
    /// schedulers (a manager may not have answered yet).
    expected: RwLock<Vec<u64>>,
}

impl ClusterClient {
    pub fn new(settings: ClientSettings) -> Self {
        Self {
            retry_budget: Arc::new(RetryBudget::new(&settings.guards.retry)),
            inner: Arc::new(Inner {
                settings,
                topology: RwLock::new(Arc::new(Topology::default())),
                expected: RwLock::new(Vec::new()),
            }),
        }
    }

    pub fn settings(&self) -> &ClientSettings {
        &self.inner.settings
    }

    /// The same schedulers, breakers and health, with a retry budget of its
    /// own: background work (the change watcher) then cannot spend the
    /// retries users' queries need.
    pub fn with_own_retry_budget(&self) -> ClusterClient {
        ClusterClient {
            inner: self.inner.clone(),
            retry_budget: Arc::new(RetryBudget::new(&self.inner.settings.guards.retry)),
        }
    }

    /// Declares the clusters dfgraph serves, so an empty one is reported
    /// as unavailable rather than silently missing.
    pub fn expect_clusters(&self, ids: impl IntoIterator<Item = u64>) {
        let mut expected = self
            .inner
            .expected
            .write()
            .unwrap_or_else(|e| e.into_inner());
        *expected = ids.into_iter().collect();
        expected.sort_unstable();
        expected.dedup();
    }

    /// Replaces the scheduler set. Handles (channels, health) of schedulers
    /// that stay are kept, so a refresh costs no reconnects.
    pub fn set_schedulers(&self, schedulers: &[(u64, SocketAddr)]) -> Result<(), ClusterError> {
        let current = self.topology();
        let mut by_cluster: BTreeMap<u64, Vec<Arc<SchedulerHandle>>> = BTreeMap::new();
        for &(cluster_id, addr) in schedulers {
            let existing = current
                .clusters
                .get(&cluster_id)
                .and_then(|c| c.scheduler(addr))
                .cloned();
            let handle = match existing {
                Some(handle) => handle,
                None => SchedulerHandle::new(
                    cluster_id,
                    addr,
                    &self.inner.settings.dial,
                    &self.inner.settings.guards,
                )?,
            };
            let list = by_cluster.entry(cluster_id).or_default();
            if !list.iter().any(|s| s.addr == addr) {
                list.push(handle);
            }
        }
        let clusters = by_cluster
            .into_iter()
            .map(|(id, schedulers)| {
                let ring = TaskRing::new(schedulers.iter().map(|s| s.addr));
                (
                    id,
                    Arc::new(ClusterView {
                        id,
                        schedulers,
                        ring,
                    }),
                )
            })
            .collect();
        *self
            .inner
            .topology
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(Topology { clusters });
        Ok(())
    }

    fn topology(&self) -> Arc<Topology> {
        self.inner
            .topology
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Every served cluster id: configured or discovered.
    pub fn cluster_ids(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.topology().clusters.keys().copied().collect();
        ids.extend(
            self.inner
                .expected
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .iter(),
        );
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    pub fn cluster(&self, id: u64) -> Result<Arc<ClusterView>, ClusterError> {
        match self.topology().clusters.get(&id) {
            Some(view) if !view.schedulers.is_empty() => Ok(view.clone()),
            Some(_) => Err(ClusterError::NoSchedulers { cluster_id: id }),
            None if self.cluster_ids().contains(&id) => {
                Err(ClusterError::NoSchedulers { cluster_id: id })
            }
            None => Err(ClusterError::UnknownCluster { cluster_id: id }),
        }
    }

    /// Every scheduler, ordered by cluster then address.
    pub fn schedulers(&self) -> Vec<Arc<SchedulerHandle>> {
        self.topology()
            .clusters
            .values()
            .flat_map(|c| c.schedulers.iter().cloned())
            .collect()
    }

    /// All hosts of a cluster, each stamped with `cluster_id` (what the
    /// scheduler wrote is checked, see [`announced`]). Every scheduler of a
    /// cluster knows every host, so one healthy scheduler answers (see
    /// [`Self::any_scheduler`]).
    pub async fn list_hosts(
        &self,
        cluster_id: u64,
        deadline: Deadline,
    ) -> Result<HostList, ClusterError> {
        let timeout = self.inner.settings.timeouts.list_hosts;
        self.any_scheduler(cluster_id, move |scheduler| async move {
            let call = |mut client: scheduler::Client| async move {
                client.list_hosts(ListHostsRequest { r#type: None }).await
            };
            let response = scheduler.call("ListHosts", timeout, deadline, call).await;
            response.map(|r| {
                let carried = announced::carried(&r.hosts);
                scheduler
                    .announced
                    .note(scheduler.addr, cluster_id, &carried);
                HostList::of_cluster(r.hosts, cluster_id)
            })
        })
        .await
    }

    /// [`Self::list_hosts`], handed to `receiver` piece by piece as the
    /// encoded `ListHostsResponse` arrives (walk it with
    /// [`host_list::EntryReader`]), never held whole: the watcher decodes
    /// only what changed since its last poll, and tells the scheduler's
    /// [`announced`] what its hosts carried. What `receiver` refuses fails
    /// the call as a malformed answer would (`INTERNAL`).
    pub async fn receive_hosts<R: ReceiveHosts>(
        &self,
        cluster_id: u64,
        deadline: Deadline,
        receiver: &std::sync::Mutex<R>,
    ) -> Result<ReceivedHosts, ClusterError> {
        let timeout = self.inner.settings.timeouts.list_hosts;
        // Held only between awaits, never across one.
        let receiver = || {
            receiver
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        self.any_scheduler(cluster_id, move |scheduler| async move {
            let call = |mut service: scheduler::RawService| async move {
                receiver().begin();
                let wrong = |e: host_list::WireError| tonic::Status::internal(e.to_string());
                let len = raw::unary_in_pieces(
                    &mut service,
                    tonic::GrpcMethod::new("scheduler.v2.Scheduler", "ListHosts"),
                    "/scheduler.v2.Scheduler/ListHosts",
                    &ListHostsRequest { r#type: None },
                    scheduler::MAX_DECODE_BYTES,
                    |bytes| receiver().piece(bytes).map_err(wrong),
                )
                .await?;
                receiver().end().map_err(wrong)?;
                Ok(tonic::Response::new(len))
            };
            let len = scheduler
                .call_raw("ListHosts", timeout, deadline, call)
                .await?;
            Ok(ReceivedHosts {
                len,
                from: scheduler,
            })
        })
        .await
    }

    /// One cluster-wide read, answered by any scheduler of the cluster.
    /// Schedulers that would fail fast are tried last (and cost nothing);
    /// after one failed call, one retry on another scheduler, if the retry
    /// budget allows.
    async fn any_scheduler<T, F, Fut>(&self, cluster_id: u64, read: F) -> Result<T, ClusterError>
    where
        F: Fn(Arc<SchedulerHandle>) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClusterError>>,
    {
        let cluster = self.cluster(cluster_id)?;
        let mut last_error = None;
        let mut attempts = 0;
        self.retry_budget.deposit();
        for scheduler in cluster.by_health() {
            if attempts == MAX_ATTEMPTS {
                break;
            }
            if attempts > 0 && !scheduler.fails_fast() && !self.retry() {
                break;
            }
            match read(scheduler).await {
                Ok(answer) => return Ok(answer),
                Err(e) if e.is_scheduler_failure() => {
                    if !e.is_fast_failure() {
                        attempts += 1;
                    }
                    // A real failure says more than a fast one.
                    if last_error
                        .as_ref()
                        .is_none_or(|l: &ClusterError| l.is_fast_failure())
                    {
                        last_error = Some(e);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or(ClusterError::NoSchedulers { cluster_id }))
    }

    /// Takes one retry from the budget; false (and counted) when spent.
    fn retry(&self) -> bool {
        let granted = self.retry_budget.withdraw();
        let outcome = if granted { "granted" } else { "refused" };
        metrics::counter!(metric::RETRIES, "outcome" => outcome).increment(1);
        granted
    }

    /// `StatTask` on the task's owner, then on the rest of the cluster.
    pub async fn stat_task(
        &self,
        cluster_id: u64,
        task_id: &str,
        deadline: Deadline,
    ) -> Result<Task, ClusterError> {
        validate_id("task id", task_id)?;
        let request = StatTaskRequest {
            host_id: GATEWAY_HOST_ID.to_owned(),
            task_id: task_id.to_owned(),
        };
        self.routed(
            cluster_id,
            task_id,
            "StatTask",
            Idempotent::Yes,
            deadline,
            move |mut client| {
                let request = request.clone();
                async move { client.stat_task(request).await }
            },
        )
        .await
    }

    /// `StatPeer` on the owner of the peer's task, then on the rest.
    pub async fn stat_peer(
        &self,
        cluster_id: u64,
        key: &PeerKey,
        deadline: Deadline,
    ) -> Result<Peer, ClusterError> {
        validate_peer_key(key)?;
        let request = StatPeerRequest {
            host_id: key.host_id.clone(),
            task_id: key.task_id.clone(),
            peer_id: key.peer_id.clone(),
        };
        self.routed(
            cluster_id,
            &key.task_id,
            "StatPeer",
            Idempotent::Yes,
            deadline,
            move |mut client| {
                let request = request.clone();
                async move { client.stat_peer(request).await }
            },
        )
        .await
    }

    /// Deletes the task's peer on `host_id` (Dragonfly's `DeleteTask`
    /// releases one host's copy of a task).
    pub async fn delete_task(
        &self,
        cluster_id: u64,
        host_id: &str,
        task_id: &str,
        deadline: Deadline,
    ) -> Result<(), ClusterError> {
        validate_id("host id", host_id)?;
        validate_id("task id", task_id)?;
        let request = DeleteTaskRequest {
            host_id: host_id.to_owned(),
            task_id: task_id.to_owned(),
        };
        self.routed(
            cluster_id,
            task_id,
            "DeleteTask",
            Idempotent::No,
            deadline,
            move |mut client| {
                let request = request.clone();
                async move { client.delete_task(request).await }
            },
        )
        .await
        .map(|_| ())
    }

    pub async fn delete_peer(
        &self,
        cluster_id: u64,
        key: &PeerKey,
        deadline: Deadline,
    ) -> Result<(), ClusterError> {
        validate_peer_key(key)?;
        let request = DeletePeerRequest {
            host_id: key.host_id.clone(),
            task_id: key.task_id.clone(),
            peer_id: key.peer_id.clone(),
        };
        self.routed(
            cluster_id,
            &key.task_id,
            "DeletePeer",
            Idempotent::No,
            deadline,
            move |mut client| {
                let request = request.clone();
                async move { client.delete_peer(request).await }
            },
        )
        .await
        .map(|_| ())
    }

    /// Every scheduler of the cluster holds the host, so every one is told;
    /// the delete succeeds when at least one scheduler accepted it.
    pub async fn delete_host(
        &self,
        cluster_id: u64,
        host_id: &str,
        deadline: Deadline,
    ) -> Result<(), ClusterError> {
        validate_id("host id", host_id)?;
        let cluster = self.cluster(cluster_id)?;
        let timeout = self.inner.settings.timeouts.stat;
        let mut calls: FuturesUnordered<_> = cluster
            .schedulers
            .iter()
            .map(|scheduler| {
                let request = DeleteHostRequest {
                    host_id: host_id.to_owned(),
                };
                async move {
                    scheduler
                        .call("DeleteHost", timeout, deadline, |mut client| async move {
                            client.delete_host(request).await
                        })
                        .await
                }
            })
            .collect();
        let mut outcome = Err(ClusterError::NotFound);
        while let Some(result) = calls.next().await {
            match result {
                Ok(_) => outcome = Ok(()),
                Err(e) if outcome.is_err() && e != ClusterError::NotFound => outcome = Err(e),
                Err(_) => {}
            }
        }
        outcome
    }

    /// Asks the ring owner of `task_id` first. When it says NotFound, or
    /// its circuit is open, asks the other schedulers of the cluster
    /// concurrently and takes the first that has it. When the owner failed
    /// a real call, asking the others is a retry: only for idempotent
    /// reads, and only within the retry budget. If nobody has it,
    /// NotFound, unless a scheduler failed (then we cannot know, and say
    /// why).
    async fn routed<T, F, Fut>(
        &self,
        cluster_id: u64,
        task_id: &str,
        method: &'static str,
        idempotent: Idempotent,
        deadline: Deadline,
        rpc: F,
    ) -> Result<T, ClusterError>
    where
        F: Fn(scheduler::Client) -> Fut + Clone,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let cluster = self.cluster(cluster_id)?;
        let owner_addr = cluster.ring.owner(task_id)?;
        let timeout = self.inner.settings.timeouts.stat;
        let mut failure: Option<ClusterError> = None;
        if idempotent == Idempotent::Yes {
            self.retry_budget.deposit();
        }
        if let Some(owner) = cluster.scheduler(owner_addr) {
            match owner.call(method, timeout, deadline, rpc.clone()).await {
                Ok(value) => return Ok(value),
                Err(ClusterError::NotFound) => {}
                Err(e) if e.is_fast_failure() => failure = Some(e),
                Err(e) if e.is_scheduler_failure() => {
                    if idempotent == Idempotent::No || !self.retry() {
                        return Err(e);
                    }
                    failure = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        let mut others: FuturesUnordered<_> = cluster
            .schedulers
            .iter()
            .filter(|s| s.addr != owner_addr)
            .map(|s| s.call(method, timeout, deadline, rpc.clone()))
            .collect();
        while let Some(result) = others.next().await {
            match result {
                Ok(value) => return Ok(value),
                Err(ClusterError::NotFound) => {}
                Err(e) if e.is_scheduler_failure() => {
                    if failure
                        .as_ref()
                        .is_none_or(|f| f.is_fast_failure() && !e.is_fast_failure())
                    {
                        failure = Some(e);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(failure.unwrap_or(ClusterError::NotFound))
    }

    /// Runs `f` for every cluster concurrently and collects the results by
    /// cluster id, so one slow cluster does not serialize the others.
    pub async fn for_each_cluster<T, F, Fut>(&self, f: F) -> HashMap<u64, Result<T, ClusterError>>
    where
        F: Fn(u64) -> Fut,
        Fut: Future<Output = Result<T, ClusterError>>,
    {
        let ids = self.cluster_ids();
        let results = futures::future::join_all(ids.iter().map(|&id| f(id))).await;
        ids.into_iter().zip(results).collect()
    }

    pub fn stat_timeout(&self) -> Duration {
        self.inner.settings.timeouts.stat
    }
}

fn validate_id(what: &str, id: &str) -> Result<(), ClusterError> {
    if id.trim().is_empty() {
        return Err(ClusterError::InvalidArgument {
            message: format!("{what} must not be empty"),
        });
    }
    if id.len() > 1024 {
        return Err(ClusterError::InvalidArgument {
            message: format!("{what} is longer than 1024 bytes"),
        });
    }
    Ok(())
}

fn validate_peer_key(key: &PeerKey) -> Result<(), ClusterError> {
    validate_id("host id", &key.host_id)?;
    validate_id("task id", &key.task_id)?;
    validate_id("peer id", &key.peer_id)?;
    ring::task_key(&key.task_id).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn background_work_spends_its_own_retry_budget() {
        let client = ClusterClient::new(ClientSettings {
            dial: Dial {
                connect_timeout: Duration::from_secs(1),
                keep_alive_interval: Duration::from_secs(10),
                keep_alive_timeout: Duration::from_secs(5),
                tls: None,
            },
            timeouts: Timeouts::default(),
            guards: Guards {
                concurrency: 4,
                breaker: crate::breaker::BreakerConfig::default(),
                retry: RetryConfig::default(),
                clock: Arc::new(crate::clock::SystemClock),
            },
        });
        let background = client.with_own_retry_budget();
        let mut spent = 0;
        while background.retry() {
            spent += 1;
            assert!(spent <= 1000, "the budget never ran out");
        }
        assert!(spent > 0, "a fresh budget grants some retries");
        assert!(client.retry(), "queries keep their own retries");
    }
}
