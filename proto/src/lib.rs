//! The generated Dragonfly v2 wire types and gRPC stubs, compiled from the
//! `.proto` files beside this crate. Nothing here is hand-written; the
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
