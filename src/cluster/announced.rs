//! One scheduler cluster id. The id dfgraph was given for a scheduler (a
//! static `--scheduler ID=ADDR` or the manager's answer) is the id of every
//! host it lists, everywhere: hosts are stamped with it where they are
//! decoded ([`stamp`]). What the scheduler writes in its hosts
//! (`Host.scheduler_cluster_id`, its own configuration) is only checked
//! against it: a scheduler whose hosts carry another id is misconfigured,
//! and [`Announced`] says so (a warning once per change, a metric, and
//! what `/readyz` and GraphQL read).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Mutex;

use crate::proto::common::v2::Host;

/// Gives `host` the cluster id dfgraph knows it under.
pub fn stamp(host: &mut Host, cluster_id: u64) {
    host.scheduler_cluster_id = cluster_id;
}

/// The cluster id a scheduler's hosts last carried, as far as dfgraph has
/// read them.
#[derive(Default)]
pub struct Announced {
    last: Mutex<Option<u64>>,
}

impl Announced {
    /// The id the scheduler's hosts carried in the latest host list read
    /// from it (`None` until one with hosts was read). When its hosts
    /// disagree among themselves, the first one that is not `configured`.
    pub fn get(&self) -> Option<u64> {
        *self.last.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the ids the hosts of one list carried (empty list: nothing
    /// learned). Warns when the scheduler starts or stops disagreeing with
    /// `configured`, not on every poll, and sets the mismatch gauge; true
    /// when it did (the id changed).
    pub fn note(&self, scheduler: SocketAddr, configured: u64, carried: &BTreeSet<u64>) -> bool {
        let Some(now) = carried
            .iter()
            .copied()
            .find(|id| *id != configured)
            .or_else(|| carried.first().copied())
        else {
            return false;
        };
        let before = self
            .last
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(now);
        if before == Some(now) {
            return false;
        }
        let mismatch = now != configured;
        metrics::gauge!(
            metric::MISMATCH,
            "cluster" => configured.to_string(),
            "scheduler" => scheduler.to_string()
        )
        .set(if mismatch { 1.0 } else { 0.0 });
        if mismatch {
            tracing::warn!(
                %scheduler,
                configured_cluster_id = configured,
                scheduler_cluster_id = now,
                "scheduler {scheduler} lists its hosts under scheduler cluster {now}, \
                 but dfgraph serves it as cluster {configured}: a configuration error. \
                 Its hosts are shown under {configured}."
            );
        } else if before.is_some() {
            tracing::info!(%scheduler, cluster_id = configured, "scheduler's hosts carry its configured cluster id again");
        }
        true
    }

    /// True when the scheduler's hosts last carried another id.
    pub fn mismatched(&self, configured: u64) -> bool {
        self.get().is_some_and(|id| id != configured)
    }
}

/// The ids the hosts of a list carry.
pub fn carried<'a>(hosts: impl IntoIterator<Item = &'a Host>) -> BTreeSet<u64> {
    hosts.into_iter().map(|h| h.scheduler_cluster_id).collect()
}

/// The mismatch metric, declared once with its HELP text.
pub mod metric {
    pub const MISMATCH: &str = "dfgraph_scheduler_cluster_id_mismatch";

    pub fn describe() {
        metrics::describe_gauge!(
            MISMATCH,
            "1 while a scheduler's hosts carry a scheduler cluster id other than the one dfgraph serves it under (cluster), a configuration error; 0 once they agree."
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mismatch_is_remembered_until_the_hosts_agree() {
        let announced = Announced::default();
        let addr: SocketAddr = "127.0.0.1:8002".parse().unwrap();
        assert!(!announced.note(addr, 1, &BTreeSet::new()));
        assert_eq!(announced.get(), None);
        assert!(announced.note(addr, 1, &BTreeSet::from([1])));
        assert!(!announced.mismatched(1));
        assert!(announced.note(addr, 1, &BTreeSet::from([1, 5])), "warned");
        assert_eq!(announced.get(), Some(5));
        assert!(announced.mismatched(1));
        for _ in 0..3 {
            assert!(
                !announced.note(addr, 1, &BTreeSet::from([5])),
                "once per change"
            );
        }
        assert!(!announced.note(addr, 1, &BTreeSet::new()));
        assert_eq!(announced.get(), Some(5), "an empty list says nothing");
        assert!(announced.note(addr, 1, &BTreeSet::from([1])));
        assert!(!announced.mismatched(1));
    }
}
