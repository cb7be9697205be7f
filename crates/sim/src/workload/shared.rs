//! The workload shared by the servers and the public API: its lock and the
//! serialized whole tick.

use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::Workload;
use super::time::now_ts;

/// The workload as the servers and the public API share it.
pub(crate) struct Shared {
    workload: RwLock<Workload>,
    /// Serializes whole ticks (see [`tick`]).
    ticking: Mutex<()>,
}

impl Shared {
    pub(crate) fn new(workload: Workload) -> Self {
        Self {
            workload: RwLock::new(workload),
            ticking: Mutex::new(()),
        }
    }
}

/// Shared handle to the workload.
pub(crate) type SharedWorkload = Arc<Shared>;

/// Read access; a panic while writing (a bug) must not wedge every server.
pub(crate) fn read(state: &SharedWorkload) -> RwLockReadGuard<'_, Workload> {
    state
        .workload
        .read()
        .unwrap_or_else(PoisonError::into_inner)
}

/// Write access, see [`read`].
pub(crate) fn write(state: &SharedWorkload) -> RwLockWriteGuard<'_, Workload> {
    state
        .workload
        .write()
        .unwrap_or_else(PoisonError::into_inner)
}

/// Advances the whole simulation one step. The write lock is taken once
/// per cluster, so readers (every RPC) wait for at most one cluster's step,
/// never a whole tick; whole ticks never interleave, which keeps a seed's
/// sequence of states deterministic.
pub(crate) fn tick(state: &SharedWorkload) {
    let _serial = state.ticking.lock().unwrap_or_else(PoisonError::into_inner);
    let now = now_ts();
    let ids = read(state).cluster_ids();
    for id in ids {
        write(state).tick_cluster(id, &now);
    }
    let mut workload = write(state);
    if workload.edge {
        workload.roughen();
    }
}
