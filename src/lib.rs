//! dfgraph: a real-time GraphQL gateway for Dragonfly P2P clusters.
pub mod cache;
pub mod cluster;
pub mod config;
pub mod graphql;
pub mod proto;
