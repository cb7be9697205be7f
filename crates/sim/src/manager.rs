//! The simulated `manager.v2.Manager` gRPC service: `ListSchedulers` over
//! the fixed set of simulated schedulers, filtered by
//! `scheduler_cluster_id` (0 lists every cluster).

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::Method;
use super::scheduler::Faults;
use dfgraph_proto::manager::v2::manager_server::Manager;
use dfgraph_proto::manager::v2::{
    ListSchedulersRequest, ListSchedulersResponse, Scheduler as ManagerScheduler, SchedulerCluster,
};

/// The manager: the scheduler records it hands out, and its fault hooks.
pub(crate) struct ManagerService {
    pub(crate) schedulers: Vec<ManagerScheduler>,
    pub(crate) faults: Arc<Faults>,
}

impl ManagerService {
    /// Builds the manager's records: `(cluster id, scheduler address)` in
    /// order; scheduler ids count from 1 like the manager's database.
    pub(crate) fn new(schedulers: &[(u64, std::net::SocketAddr)], faults: Arc<Faults>) -> Self {
        let idcs = ["idc-a", "idc-b", "idc-c"];
        let records = schedulers
            .iter()
            .enumerate()
            .map(|(i, (cluster_id, addr))| ManagerScheduler {
                id: i as u64 + 1,
                hostname: format!("scheduler-{cluster_id}-{i}"),
                idc: Some(idcs[i % idcs.len()].to_string()),
                location: Some("cn|hangzhou".to_string()),
                ip: addr.ip().to_string(),
                port: i32::from(addr.port()),
                state: "active".to_string(),
                scheduler_cluster_id: *cluster_id,
                scheduler_cluster: Some(SchedulerCluster {
                    id: *cluster_id,
                    name: format!("cluster-{cluster_id}"),
                    bio: "simulated scheduler cluster".to_string(),
                    config: br#"{"candidate_parent_limit":4,"filter_parent_limit":15}"#.to_vec(),
                    client_config: br#"{"load_limit":200}"#.to_vec(),
                    scopes: b"{}".to_vec(),
                    seed_client_config: br#"{"load_limit":400}"#.to_vec(),
                }),
                features: br#"["schedule","preheat"]"#.to_vec(),
            })
            .collect();
        Self {
            schedulers: records,
            faults,
        }
    }
}

#[tonic::async_trait]
impl Manager for ManagerService {
    async fn list_schedulers(
        &self,
        request: Request<ListSchedulersRequest>,
    ) -> Result<Response<ListSchedulersResponse>, Status> {
        self.faults
            .enter(Method::ListSchedulers, request.metadata())
            .await?;
        let cluster = request.into_inner().scheduler_cluster_id;
        let schedulers = self
            .schedulers
            .iter()
            .filter(|s| cluster == 0 || s.scheduler_cluster_id == cluster)
            .cloned()
            .collect();
        Ok(Response::new(ListSchedulersResponse { schedulers }))
    }
}
