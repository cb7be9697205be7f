//! The simulated `scheduler.v2.Scheduler` gRPC service, one instance per
//! scheduler address, answering from the shared workload; plus the
//! per-endpoint fault hooks (latency, error, hang), RPC counters and the
//! last request metadata seen, that every simulated server (the manager
//! too) goes through.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tonic::metadata::MetadataMap;
use tonic::{Code, Request, Response, Status};

use super::Method;
use super::workload::{SharedWorkload, read, write};
use dfgraph_proto::common::v2::{Peer, Task};
use dfgraph_proto::scheduler::v2::scheduler_server::Scheduler;
use dfgraph_proto::scheduler::v2::{
    DeleteHostRequest, DeletePeerRequest, DeleteTaskRequest, ListHostsRequest, ListHostsResponse,
    StatPeerRequest, StatTaskRequest,
};

/// Fault hooks and counters of one simulated endpoint.
pub(crate) struct Faults {
    counts: [AtomicU64; Method::ALL.len()],
    /// The metadata (gRPC headers) of the last request of each method, for
    /// tests of what clients send besides the message (trace context).
    last_metadata: Mutex<[Option<MetadataMap>; Method::ALL.len()]>,
    latency_nanos: AtomicU64,
    error: Mutex<Option<Code>>,
    hang: watch::Sender<bool>,
    shutdown: watch::Receiver<bool>,
}

impl Faults {
    /// New hooks (all off) that give up waiting once `shutdown` turns true.
    pub(crate) fn new(shutdown: watch::Receiver<bool>) -> Self {
        Self {
            counts: Default::default(),
            last_metadata: Default::default(),
            latency_nanos: AtomicU64::new(0),
            error: Mutex::new(None),
            hang: watch::Sender::new(false),
            shutdown,
        }
    }

    pub(crate) fn count(&self, method: Method) -> u64 {
        self.counts[method as usize].load(Ordering::Relaxed)
    }

    pub(crate) fn last_metadata(&self, method: Method) -> Option<MetadataMap> {
        self.last_metadata
            .lock()
            .unwrap_or_else(PoisonError::into_inner)[method as usize]
            .clone()
    }

    pub(crate) fn reset(&self) {
        for c in &self.counts {
            c.store(0, Ordering::Relaxed);
        }
    }

    pub(crate) fn set_latency(&self, latency: Duration) {
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.latency_nanos.store(nanos, Ordering::Relaxed);
    }

    pub(crate) fn set_error(&self, code: Option<Code>) {
        *self.error.lock().unwrap_or_else(PoisonError::into_inner) = code;
    }

    pub(crate) fn set_hang(&self, hang: bool) {
        self.hang.send_replace(hang);
    }

    /// What every RPC goes through first: count it and keep its metadata,
    /// wait out the injected latency, wait while hung, then fail with the
    /// injected error if any.
    pub(crate) async fn enter(&self, method: Method, metadata: &MetadataMap) -> Result<(), Status> {
        self.counts[method as usize].fetch_add(1, Ordering::Relaxed);
        self.last_metadata
            .lock()
            .unwrap_or_else(PoisonError::into_inner)[method as usize] = Some(metadata.clone());
        let mut shutdown = self.shutdown.clone();
        let stopping = || Status::unavailable("simulated server is shutting down");

        let latency = Duration::from_nanos(self.latency_nanos.load(Ordering::Relaxed));
        if !latency.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(latency) => {}
                _ = shutdown.wait_for(|stop| *stop) => return Err(stopping()),
            }
        }

        let mut hang = self.hang.subscribe();
        loop {
            if *shutdown.borrow_and_update() {
                return Err(stopping());
            }
            if !*hang.borrow_and_update() {
                break;
            }
            tokio::select! {
                changed = hang.changed() => if changed.is_err() { break },
                changed = shutdown.changed() => if changed.is_err() { return Err(stopping()) },
            }
        }

        let error = *self.error.lock().unwrap_or_else(PoisonError::into_inner);
        match error {
            Some(code) => Err(Status::new(code, "injected fault")),
            None => Ok(()),
        }
    }
}

/// One simulated scheduler: its cluster, its own address (which decides the
/// tasks it holds), the shared state and its fault hooks.
pub(crate) struct SchedulerService {
    pub(crate) cluster_id: u64,
    pub(crate) addr: SocketAddr,
    pub(crate) state: SharedWorkload,
    pub(crate) faults: std::sync::Arc<Faults>,
}

/// Dragonfly validates ids with `min_len = 1`; so do we.
fn require(field: &str, value: &str) -> Result<(), Status> {
    if value.is_empty() {
        Err(Status::invalid_argument(format!(
            "invalid {field}: value length must be at least 1 runes"
        )))
    } else {
        Ok(())
    }
}

#[tonic::async_trait]
impl Scheduler for SchedulerService {
    async fn stat_peer(&self, request: Request<StatPeerRequest>) -> Result<Response<Peer>, Status> {
        self.faults
            .enter(Method::StatPeer, request.metadata())
            .await?;
        let req = request.into_inner();
        require("StatPeerRequest.HostId", &req.host_id)?;
        require("StatPeerRequest.TaskId", &req.task_id)?;
        require("StatPeerRequest.PeerId", &req.peer_id)?;
        let peer = read(&self.state).stat_peer(self.cluster_id, self.addr, &req.peer_id);
        peer.map(Response::new)
            .ok_or_else(|| Status::not_found(format!("peer {} not found", req.peer_id)))
    }

    async fn delete_peer(
        &self,
        request: Request<DeletePeerRequest>,
    ) -> Result<Response<()>, Status> {
        self.faults
            .enter(Method::DeletePeer, request.metadata())
            .await?;
        let req = request.into_inner();
        require("DeletePeerRequest.HostId", &req.host_id)?;
        require("DeletePeerRequest.TaskId", &req.task_id)?;
        require("DeletePeerRequest.PeerId", &req.peer_id)?;
        if write(&self.state).delete_peer(self.cluster_id, self.addr, &req.peer_id) {
            Ok(Response::new(()))
        } else {
            Err(Status::not_found(format!("peer {} not found", req.peer_id)))
        }
    }

    async fn stat_task(&self, request: Request<StatTaskRequest>) -> Result<Response<Task>, Status> {
        self.faults
            .enter(Method::StatTask, request.metadata())
            .await?;
        let req = request.into_inner();
        require("StatTaskRequest.HostId", &req.host_id)?;
        require("StatTaskRequest.TaskId", &req.task_id)?;
        let task = read(&self.state).stat_task(self.cluster_id, self.addr, &req.task_id);
        task.map(Response::new)
            .ok_or_else(|| Status::not_found(format!("task {} not found", req.task_id)))
    }

    async fn delete_task(
        &self,
        request: Request<DeleteTaskRequest>,
    ) -> Result<Response<()>, Status> {
        self.faults
            .enter(Method::DeleteTask, request.metadata())
            .await?;
        let req = request.into_inner();
        require("DeleteTaskRequest.HostId", &req.host_id)?;
        require("DeleteTaskRequest.TaskId", &req.task_id)?;
        if write(&self.state).delete_task(self.cluster_id, self.addr, &req.task_id) {
            Ok(Response::new(()))
        } else {
            Err(Status::not_found(format!("task {} not found", req.task_id)))
        }
    }

    async fn list_hosts(
        &self,
        request: Request<ListHostsRequest>,
    ) -> Result<Response<ListHostsResponse>, Status> {
        self.faults
            .enter(Method::ListHosts, request.metadata())
            .await?;
        let req = request.into_inner();
        // Take the snapshot under the lock, copy it outside.
        let snapshot = read(&self.state).hosts(self.cluster_id);
        let hosts = match req.r#type {
            Some(t) => snapshot.iter().filter(|h| h.r#type == t).cloned().collect(),
            None => snapshot.as_ref().clone(),
        };
        Ok(Response::new(ListHostsResponse { hosts }))
    }

    async fn delete_host(
        &self,
        request: Request<DeleteHostRequest>,
    ) -> Result<Response<()>, Status> {
        self.faults
            .enter(Method::DeleteHost, request.metadata())
            .await?;
        let req = request.into_inner();
        require("DeleteHostRequest.HostId", &req.host_id)?;
        if write(&self.state).remove_host(self.cluster_id, &req.host_id) {
            Ok(Response::new(()))
        } else {
            Err(Status::not_found(format!("host {} not found", req.host_id)))
        }
    }
}
