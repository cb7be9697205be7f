//! dfgraph's integration tests, one binary: each module is one capability
//! exercised as a user meets it (a simulated Dragonfly cluster on real
//! gRPC, a real `redis-server`, real HTTP and websockets, a real browser).
//!
//! One binary instead of one per file: the support code is compiled and
//! linked once, and `cargo test` links one executable instead of
//! eighteen. Tests share the process, so none may rely on process-wide
//! state of its own (the metrics recorder is shared: assert on what your
//! own gateway exposes; tracing subscribers are set per test with
//! `set_default`).

mod support;
// The Dragonfly manager stand-in of `rest`: not in `support`, which the
// CLI's tests share and which has no axum there.
#[path = "support/manager.rs"]
mod manager;
// The schema's promises checked against responses: not in `support`
// either, the CLI's tests have no async-graphql.
#[path = "support/nullness.rs"]
mod nullness;

mod auth;
mod browser;
mod cache;
mod cache_gateway;
mod config_reference;
mod docs;
mod edge;
mod gateway;
mod history;
mod limits;
mod live;
mod liveness;
mod persisted;
mod redis_cluster;
mod resilience;
mod response_cache;
mod rest;
mod scheduler_history;
mod schema;
mod sim;
mod sse;
mod telemetry;
mod tls;
mod websocket;
mod ws_protocol;
