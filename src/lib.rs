//! dfgraph: a real-time GraphQL gateway for Dragonfly P2P clusters.
pub mod proto;
pub mod sim;
