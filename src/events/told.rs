//! What this replica's subscribers were told of each host, so a host event
//! that changes nothing of it is not told again, whatever path it took.
//!
//! The cursor's high-water mark ([`super::resume::Seen`]) drops an event
//! that comes twice with its cursor. Two copies of one change can also
//! differ: one told without a cursor and one with it (Redis frozen: the
//! log's append timed out here but ran late there), or two observations
//! of the same change (a replica polling for itself while its circuit to
//! Redis is open, and the leader it already hears again). Host changes are
//! transitions of a host's state, so a copy is recognised by what it
//! would change: a join of a host told present with that same record, a
//! leave of a host told gone, a join of a host told present, an update to
//! the record told last, a reachability told already.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use prost::Message;

use super::{Event, HostChange, What};

/// What was told last of one host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct HostTold {
    /// The record's hash while present (`None`: told gone).
    present: Option<u128>,
    /// The last reachability told (`None`: none yet).
    reachable: Option<bool>,
    /// When it was told gone (for forgetting).
    gone_at: Option<Instant>,
}

/// How long a host told gone is remembered (a late copy of its leave
/// comes within seconds).
const REMEMBER_GONE: Duration = Duration::from_secs(600);

/// Hosts told gone kept at most before the older ones are forgotten.
const MAX_GONE: usize = 100_000;

/// Per (cluster, XXH3-128 of the host id), what was told last: a key
/// that needs no allocation of its own (a collision is about 2^-128
/// likely).
#[derive(Default)]
pub struct Told {
    hosts: HashMap<(u64, u128), HostTold, foldhash::fast::RandomState>,
    gone: usize,
}

pub(crate) fn record_hash(host: &crate::proto::common::v2::Host) -> u128 {
    xxhash_rust::xxh3::xxh3_128(&host.encode_to_vec())
}

impl Told {
    /// Whether `event` changes what was told (then it counts as told).
    /// Events other than host events always do.
    pub fn changes(&mut self, event: &Event) -> bool {
        let What::Host { change, host, .. } = &event.what else {
            return true;
        };
        let key = (
            event.cluster_id,
            xxhash_rust::xxh3::xxh3_128(host.id.as_bytes()),
        );
        let before = self.hosts.get(&key).copied();
        let mut after = before.unwrap_or(HostTold {
            present: None,
            reachable: None,
            gone_at: None,
        });
        match change {
            // A join of a host told present (with whatever record: two
            // observations of one join may differ in load figures).
            HostChange::Joined if before.is_some_and(|b| b.present.is_some()) => return false,
            HostChange::Joined | HostChange::Updated => {
                let hash = record_hash(host);
                if before.is_some_and(|b| b.present == Some(hash)) {
                    return false;
                }
                after.present = Some(hash);
                after.gone_at = None;
            }
            HostChange::Left => {
                if before.is_some_and(|b| b.present.is_none() && b.gone_at.is_some()) {
                    return false;
                }
                after.present = None;
                after.gone_at = Some(Instant::now());
                after.reachable = None;
            }
            HostChange::Unreachable | HostChange::Reachable => {
                let reachable = *change == HostChange::Reachable;
                if before.is_some_and(|b| b.reachable == Some(reachable)) {
                    return false;
                }
                after.reachable = Some(reachable);
            }
        }
        let was_gone = before.is_some_and(|b| b.gone_at.is_some());
        let is_gone = after.gone_at.is_some();
        self.gone = self.gone + usize::from(is_gone) - usize::from(was_gone);
        self.hosts.insert(key, after);
        if self.gone > MAX_GONE {
            self.forget_gone();
        }
        true
    }

    /// Forgets hosts told gone long enough ago (all of them gone, if that
    /// is not enough to get back under the bound).
    fn forget_gone(&mut self) {
        let now = Instant::now();
        self.hosts.retain(|_, t| {
            t.gone_at
                .is_none_or(|at| now.duration_since(at) < REMEMBER_GONE)
        });
        self.gone = self.hosts.values().filter(|t| t.gone_at.is_some()).count();
        if self.gone > MAX_GONE / 2 {
            self.hosts.retain(|_, t| t.gone_at.is_none());
            self.gone = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::common::v2::Host;
    use std::sync::Arc;

    fn host_event(change: HostChange, hostname: &str) -> Event {
        Event {
            cluster_id: 1,
            observed_at_ms: 1,
            what: What::Host {
                change,
                host: Arc::new(Host {
                    id: "h".into(),
                    hostname: hostname.into(),
                    ..Host::default()
                }),
                changed_fields: Vec::new(),
            },
            cursor: None,
        }
    }

    #[test]
    fn a_second_copy_of_a_change_changes_nothing() {
        let mut told = Told::default();
        assert!(told.changes(&host_event(HostChange::Joined, "a")));
        assert!(!told.changes(&host_event(HostChange::Joined, "a")));
        // Observed twice, a few load figures apart: still one join.
        assert!(!told.changes(&host_event(HostChange::Joined, "a2")));
        assert!(told.changes(&host_event(HostChange::Updated, "b")));
        assert!(!told.changes(&host_event(HostChange::Updated, "b")));
        assert!(told.changes(&host_event(HostChange::Unreachable, "b")));
        assert!(!told.changes(&host_event(HostChange::Unreachable, "b")));
        assert!(told.changes(&host_event(HostChange::Reachable, "b")));
        assert!(told.changes(&host_event(HostChange::Left, "b")));
        assert!(!told.changes(&host_event(HostChange::Left, "b")));
        // It comes back, even as it was: a change.
        assert!(told.changes(&host_event(HostChange::Joined, "b")));
        // Another cluster's host of the same id is another host.
        let mut other = host_event(HostChange::Joined, "b");
        other.cluster_id = 2;
        assert!(told.changes(&other));
    }

    #[test]
    fn hosts_told_gone_are_forgotten_past_the_bound() {
        let mut told = Told::default();
        for i in 0..(MAX_GONE + 1) {
            let mut left = host_event(HostChange::Left, "x");
            if let What::Host { host, .. } = &mut left.what {
                Arc::make_mut(host).id = format!("h{i}");
            }
            assert!(told.changes(&left));
        }
        // All were told gone just now: the bound forgets them all.
        assert!(told.hosts.len() <= MAX_GONE / 2, "{}", told.hosts.len());
    }
}
