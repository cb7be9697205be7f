//! Task placement: the consistent hash ring real dfdaemons use to pick the
//! scheduler that owns a task.
//!
//! Dragonfly's client builds a `hashring::HashRing<SocketAddr>` (default
//! SipHash-2-4 hasher with zero keys) holding one node per scheduler address,
//! and looks a task up by the first five characters of its id as a `String`.
//! The simulator places tasks the same way, so a gateway that routes like a
//! dfdaemon finds each task on its first try.

use std::net::SocketAddr;

use hashring::HashRing;

/// The placement ring over the schedulers of one scheduler cluster.
#[derive(Clone)]
pub(crate) struct Ring {
    ring: HashRing<SocketAddr>,
}

impl Ring {
    /// Builds a ring with one node per scheduler address.
    pub(crate) fn new(addrs: &[SocketAddr]) -> Self {
        let mut ring = HashRing::new();
        ring.batch_add(addrs.to_vec());
        Self { ring }
    }

    /// The scheduler that owns `task_id`, or `None` for an empty ring.
    pub(crate) fn owner(&self, task_id: &str) -> Option<SocketAddr> {
        self.ring.get(&ring_key(task_id)).copied()
    }
}

/// The ring key of a task: the first five characters of its id, as a
/// `String` (a `&str` would hash the same bytes, but keep the exact type the
/// client uses). Ids shorter than that (never produced by Dragonfly) use the
/// whole id.
pub(crate) fn ring_key(task_id: &str) -> String {
    task_id.get(..5).unwrap_or(task_id).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_is_stable_and_in_ring() {
        let addrs: Vec<SocketAddr> = (0..3)
            .map(|i| SocketAddr::from(([127, 0, 0, 1], 9000 + i)))
            .collect();
        let ring = Ring::new(&addrs);
        let id = "a".repeat(64);
        let owner = ring.owner(&id).unwrap();
        assert!(addrs.contains(&owner));
        assert_eq!(Ring::new(&addrs).owner(&id), Some(owner));
        assert_eq!(Ring::new(&[]).owner(&id), None);
    }

    #[test]
    fn matches_hashring_directly() {
        let addrs: Vec<SocketAddr> = (0..4)
            .map(|i| SocketAddr::from(([127, 0, 0, 1], 7000 + i)))
            .collect();
        let ring = Ring::new(&addrs);
        let mut direct: HashRing<SocketAddr> = HashRing::new();
        for a in &addrs {
            direct.add(*a);
        }
        for n in 0..200u32 {
            let id = format!("{n:064x}");
            assert_eq!(ring.owner(&id), direct.get(&id[..5].to_string()).copied());
        }
    }
}
