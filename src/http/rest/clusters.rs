//! The `scheduler_cluster` preloaded into every peer: the manager's own
//! description of the cluster (`GET /api/v1/scheduler-clusters/{id}`,
//! asked through `manager_api` as the console user asking for peers, so
//! dfgraph shows no more than the manager would show that user), kept
//! briefly; else what dfgraph knows, the id.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::peer::SchedulerClusterJson;
use crate::http::manager_proxy::ManagerProxy;

/// Descriptions of scheduler clusters, by id.
#[derive(Clone)]
pub struct SchedulerClusters {
    /// The manager's answers, and for its failures the id-only stand-in
    /// (a manager that is down is not asked on every request).
    known: moka::future::Cache<u64, Arc<SchedulerClusterJson>>,
}

impl SchedulerClusters {
    /// Descriptions are kept for `ttl`.
    pub fn new(ttl: Duration) -> SchedulerClusters {
        SchedulerClusters {
            known: moka::future::Cache::builder()
                .time_to_live(ttl)
                .max_capacity(10_000)
                .build(),
        }
    }

    /// Each of `ids` described: by the manager when `manager` (the proxy
    /// and the caller's manager session) is given, else by its id.
    pub async fn describe(
        &self,
        ids: &[u64],
        manager: Option<(&ManagerProxy, &str)>,
    ) -> HashMap<u64, Arc<SchedulerClusterJson>> {
        let Some((proxy, token)) = manager else {
            return ids
                .iter()
                .map(|&id| (id, Arc::new(SchedulerClusterJson::new(id))))
                .collect();
        };
        let described = futures::future::join_all(ids.iter().map(|&id| async move {
            let description = self
                .known
                .get_with(id, async move {
                    let path = format!("/api/v1/scheduler-clusters/{id}");
                    match proxy.get_as::<SchedulerClusterJson>(&path, token).await {
                        Ok(cluster) if cluster.id == id => Arc::new(cluster),
                        Ok(other) => {
                            tracing::warn!(id, answered = other.id, "the manager described another scheduler cluster");
                            Arc::new(SchedulerClusterJson::new(id))
                        }
                        Err(e) => {
                            tracing::warn!(id, error = %e, "cannot read a scheduler cluster from the manager");
                            Arc::new(SchedulerClusterJson::new(id))
                        }
                    }
                })
                .await;
            (id, description)
        }))
        .await;
        described.into_iter().collect()
    }
}
