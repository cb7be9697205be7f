//! dfgraph: a real-time GraphQL gateway for Dragonfly P2P clusters.
//!
//! # Layout
//!
//! The way of one query, top-down: [`http`] receives it (access control,
//! limits, the websocket protocol, the manager's REST API), [`graphql`]
//! resolves it through DataLoaders, [`cache`] answers what it can (L1 in
//! process, L2 in Redis), and [`cluster`] asks the schedulers, speaking
//! [`proto`], for the rest, within the request's [`deadline`]; [`origins`]
//! is the glue that hands the cache its scheduler loaders.
//!
//! The way of one change: [`events`] polls what someone watches, diffs it,
//! publishes events between replicas and invalidates the cache;
//! [`liveness`] asks each listed host's own health service and publishes
//! the hosts that stop (or start again) answering on the same bus.
//!
//! Around them: [`config`] (one typed configuration composed of each
//! module's settings, each validated into the one [`setting::Invalid`]), [`auth`] (credentials to principals and roles),
//! [`gateway`] (wires a configuration into a running server), [`status`]
//! (`dfgraph status`). [`clock`], [`breaker`] and [`ids`] are shared by
//! `cluster`, `cache` and `events` and depend on nothing but each other;
//! [`host_type`] names Dragonfly's host types for every view of a host;
//! [`figure`] is the one rule for the doubles a scheduler reports;
//! [`telemetry`] (OpenTelemetry export and W3C trace context) is used by
//! `http` and `cluster` and depends on no other module.
//!
//! The simulated cluster (`dfgraph-sim`), the `dfgraph` binary and the load
//! tool (`dfgraph-bench`) are crates of their own: this library knows none
//! of them.

pub mod auth;
pub mod breaker;
pub mod cache;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod deadline;
pub mod events;
pub mod figure;
pub mod gateway;
pub mod graphql;
pub mod host_type;
pub mod http;
pub mod ids;
pub mod liveness;
pub mod origins;
pub mod redis;
pub mod setting;
pub mod status;
pub mod telemetry;

pub use dfgraph_proto as proto;
