//! The GraphQL schema: types, queries, mutations, subscriptions and the DataLoaders that
//! batch every lookup. Depends on `cache`, `cluster` and `events`; nothing below it
//! knows GraphQL.

pub mod errors;
pub mod freshness;
pub mod hosts;
pub mod ids;
pub mod loaders;
pub mod mutation;
pub mod query;
pub mod scalars;
pub mod subscription;
pub mod types;

use std::sync::Arc;

use async_graphql::Schema;

use crate::cache::Cache;
use crate::cluster::ClusterClient;
use crate::config::Limits;
use crate::events::Events;
pub use loaders::Loaders;

use crate::origins::Origins;

pub type DfSchema = Schema<query::Query, mutation::Mutation, subscription::Subscription>;

/// Process-wide state every resolver can reach; clones share everything.
#[derive(Clone)]
pub struct GatewayState {
    pub cluster: ClusterClient,
    pub cache: Cache,
    pub origins: Arc<Origins>,
    pub limits: Limits,
    pub request_timeout: std::time::Duration,
    pub enable_mutations: bool,
    /// Sorted host orders and statistics per host-list snapshot.
    pub host_memo: Arc<hosts::OrderMemo>,
    /// The event bus and what is watched.
    pub events: Events,
}

impl GatewayState {
    pub fn new(
        cluster: ClusterClient,
        cache: Cache,
        limits: Limits,
        request_timeout: std::time::Duration,
        enable_mutations: bool,
        events: Events,
    ) -> Self {
        let origins = Arc::new(Origins::new(&cache, &cluster));
        Self {
            cluster,
            cache,
            origins,
            limits,
            request_timeout,
            enable_mutations,
            host_memo: Arc::default(),
            events,
        }
    }

    /// Fresh loaders for one request.
    pub fn loaders(&self) -> Loaders {
        Loaders::new(self.origins.clone())
    }

    /// Fresh loaders for one request that must be answered by `deadline`.
    pub fn loaders_until(&self, deadline: std::time::Instant) -> Loaders {
        Loaders::with_deadline(
            self.origins.clone(),
            crate::deadline::Deadline::at(deadline),
        )
    }
}

/// Builds the schema with its limits; `state` is reachable from every
/// resolver.
pub fn build_schema(state: Arc<GatewayState>, switches: &crate::config::GraphqlConfig) -> DfSchema {
    let limits = state.limits;
    let mut builder = Schema::build(query::Query, mutation::Mutation, subscription::Subscription)
        .data(GatewayState::clone(&state))
        .limit_depth(limits.max_depth)
        .limit_complexity(limits.max_complexity);
    if !switches.introspection {
        builder = builder.disable_introspection();
    }
    if !switches.field_suggestions {
        builder = builder.disable_suggestions();
    }
    builder.finish()
}

/// The SDL of the schema, as checked in at `schema.graphql`.
pub fn sdl() -> String {
    Schema::build(query::Query, mutation::Mutation, subscription::Subscription)
        .finish()
        .sdl()
}
