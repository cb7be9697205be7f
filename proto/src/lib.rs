//! The generated Dragonfly v2 wire types and gRPC stubs, and dfgraph's own
//! event message between replicas, compiled from the `.proto` files beside
//! this crate. Nothing here is hand-written; the
//! gateway and the simulator both speak these types and nothing else of
//! each other.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

pub mod common {
    pub mod v2 {
        tonic::include_proto!("common.v2");
    }
}

pub mod scheduler {
    pub mod v2 {
        tonic::include_proto!("scheduler.v2");
    }
}

pub mod manager {
    pub mod v2 {
        tonic::include_proto!("manager.v2");
    }
}

/// dfgraph's own event message between replicas (`events.proto`).
pub mod events {
    pub mod v1 {
        tonic::include_proto!("events.v1");
    }
}
