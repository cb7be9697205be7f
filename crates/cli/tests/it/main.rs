//! The `dfgraph` binary's tests, one test binary: the command line, the
//! deployment files, replicas as separate processes and trace export, each
//! run against the binary cargo builds for this package.
//!
//! A binary of its own (not a module of the gateway's `tests/it`) because
//! only tests of this package may run the `dfgraph` executable
//! (`CARGO_BIN_EXE_dfgraph`).

// The gateway's test support, shared: a simulated cluster, a gateway, a
// throw-away redis-server, websocket and OTLP helpers. These tests use
// part of it.
#[allow(dead_code)]
#[path = "../../../../tests/it/support/mod.rs"]
mod support;

mod cli;
mod deploy;
mod replicas;
mod soak;
mod trace_export;
mod watch;
