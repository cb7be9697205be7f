//! How a scheduler failure looks to a GraphQL client: an error with a
//! stable `extensions.code`, the scheduler's address and the cluster id,
//! next to whatever data did resolve.

use async_graphql::{Error, ErrorExtensions};

use crate::cluster::ClusterError;

/// Turns a cluster error into a GraphQL error for `cluster_id`.
pub fn cluster_error(error: &ClusterError, cluster_id: Option<u64>) -> Error {
    Error::new(error.to_string()).extend_with(|_, ext| {
        ext.set("code", error.code());
        if let Some(scheduler) = error.scheduler() {
            ext.set("scheduler", scheduler.to_string());
        }
        if let Some(cluster_id) = cluster_id {
            ext.set("schedulerClusterId", cluster_id.to_string());
        }
    })
}

/// An error about the request itself (bad id, bad page size, ...).
pub fn bad_input(message: impl Into<String>) -> Error {
    Error::new(message.into()).extend_with(|_, ext| ext.set("code", "INVALID_ARGUMENT"))
}

/// Mutations are switched off in this deployment.
pub fn mutations_disabled() -> Error {
    Error::new(
        "mutations are disabled; start dfgraph with --enable-mutations (or enable_mutations = true)",
    )
    .extend_with(|_, ext| ext.set("code", "FORBIDDEN"))
}

/// An error with the given `extensions.code`.
pub fn coded(code: &'static str, message: impl Into<String>) -> Error {
    Error::new(message.into()).extend_with(move |_, ext| ext.set("code", code))
}
