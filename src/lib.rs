//! dfgraph: a real-time GraphQL gateway for Dragonfly P2P clusters.
//!
//! The way of one query, top-down: [`http`] receives it, [`graphql`]
//! resolves it through DataLoaders, [`cache`] answers what it can, and
//! [`cluster`] asks the schedulers (speaking [`proto`]) for the rest.
//! [`events`] watches for changes and pushes them to subscriptions.

pub mod auth;
pub mod cache;
pub mod cluster;
pub mod config;
pub mod deadline;
pub mod events;
pub mod gateway;
pub mod graphql;
pub mod http;
pub mod status;

pub use dfgraph_proto as proto;
