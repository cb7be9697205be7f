//! The GraphQL schema: types, queries, mutations, subscriptions and the DataLoaders that
//! batch every lookup. Depends on `cache`, `cluster` and `events`; nothing below it
//! knows GraphQL.

pub mod errors;
pub mod freshness;
pub mod history;
pub mod hosts;
pub mod ids;
pub mod loaders;
pub mod mutation;
pub mod pieces;
pub mod query;
pub mod scalars;
pub mod subscription;
pub mod types;

use std::sync::Arc;

use async_graphql::Schema;
use serde::{Deserialize, Serialize};

use crate::cache::Cache;
use crate::cluster::ClusterClient;
use crate::events::Events;
pub use loaders::Loaders;

use crate::origins::Origins;
use crate::setting::{Invalid, positive};

pub type DfSchema = Schema<QueryRoot, mutation::Mutation, subscription::Subscription>;

// The query root: the present (`query`) and the past (`history`).
#[derive(async_graphql::MergedObject, Default)]
#[graphql(name = "Query")]
pub struct QueryRoot(query::Query, history::HistoryQuery);

/// The `[limits]` settings: bounds on what one client may ask for, and on
/// what the gateway asks of one scheduler.
#[derive(Clone, Copy, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest request body `/graphql` reads.
    pub max_body_bytes: usize,
    /// Deepest selection a query may nest.
    pub max_depth: usize,
    /// Largest complexity (fields weighted by page sizes) a query may have.
    pub max_complexity: usize,
    /// Largest `first`/`last` a connection accepts.
    pub max_page_size: usize,
    /// Most keys one batch query (`tasks`, `peers`) accepts.
    pub max_batch_keys: usize,
    /// Concurrent calls toward one scheduler.
    pub scheduler_concurrency: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            max_depth: 15,
            max_complexity: 20_000,
            max_page_size: 1000,
            max_batch_keys: 1000,
            scheduler_concurrency: 32,
        }
    }
}

impl Limits {
    /// A page holds at least one item; a scheduler takes at least one call.
    pub fn validate(&self) -> Result<(), Invalid> {
        positive("max_page_size", self.max_page_size)?;
        positive("scheduler_concurrency", self.scheduler_concurrency)
    }
}

/// What the schema tells about itself: on for exploring in GraphiQL, off
/// in production where the schema need not be advertised.
#[derive(Clone, Copy, Debug)]
pub struct SchemaSwitches {
    /// Answer `__schema` and `__type`.
    pub introspection: bool,
    /// "Did you mean" in validation errors.
    pub field_suggestions: bool,
}

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
    /// Whether each host answers its own health service.
    pub liveness: crate::liveness::Liveness,
}

impl GatewayState {
    pub fn new(
        cluster: ClusterClient,
        cache: Cache,
        limits: Limits,
        request_timeout: std::time::Duration,
        enable_mutations: bool,
        events: Events,
        liveness: crate::liveness::Liveness,
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
            liveness,
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
pub fn build_schema(state: Arc<GatewayState>, switches: SchemaSwitches) -> DfSchema {
    let limits = state.limits;
    let mut builder = Schema::build(
        QueryRoot::default(),
        mutation::Mutation,
        subscription::Subscription,
    )
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
    Schema::build(
        QueryRoot::default(),
        mutation::Mutation,
        subscription::Subscription,
    )
    .finish()
    .sdl()
}
