//! dfgraph: a real-time GraphQL gateway for Dragonfly P2P clusters.
//!
//! The way of one query, top-down: [`http`] receives it, [`graphql`]
//! resolves it through DataLoaders, [`cache`] answers what it can, and
//! [`cluster`] asks the schedulers (speaking [`proto`]) for the rest.
//! [`events`] watches for changes and pushes them to subscriptions.
//! [`sim`] is a simulated Dragonfly cluster for demos and tests.
//! [`clock`], [`breaker`] and [`ids`] are shared by `cluster`, `cache` and
//! `events`, and depend on nothing but each other (`breaker` on `clock`).

pub mod auth;
pub mod bench;
pub mod breaker;
pub mod cache;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod deadline;
pub mod events;
pub mod gateway;
pub mod graphql;
pub mod http;
pub mod ids;
pub mod proto;
pub mod sim;
pub mod status;
