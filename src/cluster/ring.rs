//! Task placement: the consistent hash ring dfdaemons use to pick the
//! scheduler of a task, reproduced exactly so dfgraph asks the owner first.
//!
//! Dragonfly's Rust client builds `hashring::HashRing` (SipHash-2-4, zero
//! keys) with one node per scheduler socket address and looks up the first
//! five characters of the task id as a `String`.

use std::net::SocketAddr;

use hashring::HashRing;

use super::ClusterError;

/// The ring of one scheduler cluster.
#[derive(Clone)]
pub struct TaskRing {
    ring: HashRing<SocketAddr>,
    len: usize,
}

impl TaskRing {
    pub fn new(schedulers: impl IntoIterator<Item = SocketAddr>) -> Self {
        let mut ring = HashRing::new();
        let mut len = 0;
        for addr in schedulers {
            ring.add(addr);
            len += 1;
        }
        Self { ring, len }
    }

    /// The scheduler that owns `task_id`.
    pub fn owner(&self, task_id: &str) -> Result<SocketAddr, ClusterError> {
        let prefix = task_key(task_id)?;
        if self.len == 0 {
            return Err(ClusterError::InvalidArgument {
                message: "no schedulers to route to".into(),
            });
        }
        self.ring
            .get(&prefix)
            .copied()
            .ok_or_else(|| ClusterError::InvalidArgument {
                message: "no schedulers to route to".into(),
            })
    }
}

/// The ring key of a task id: its first five characters. Shorter ids are
/// not Dragonfly task ids (those are 64 hex characters).
pub fn task_key(task_id: &str) -> Result<String, ClusterError> {
    match task_id.get(..5) {
        Some(prefix) => Ok(prefix.to_owned()),
        None => Err(ClusterError::InvalidArgument {
            message: format!("task id {task_id:?} is too short to be a Dragonfly task id"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(n: u16) -> Vec<SocketAddr> {
        (0..n)
            .map(|i| SocketAddr::from(([10, 0, 0, 1], 8000 + i)))
            .collect()
    }

    #[test]
    fn owner_is_stable_and_spread() {
        let ring = TaskRing::new(addrs(3));
        let mut owners = std::collections::HashSet::new();
        for i in 0..200u32 {
            let id = format!("{:05x}{}", i * 7919, "0".repeat(59));
            let first = ring.owner(&id).unwrap();
            assert_eq!(first, ring.owner(&id).unwrap());
            owners.insert(first);
        }
        assert_eq!(
            owners.len(),
            3,
            "200 task ids should reach all 3 schedulers"
        );
    }

    #[test]
    fn only_the_first_five_characters_matter() {
        let ring = TaskRing::new(addrs(5));
        assert_eq!(
            ring.owner("abcde0000").unwrap(),
            ring.owner("abcdeffff").unwrap()
        );
    }

    #[test]
    fn matches_hashring_crate_keyed_by_prefix_string() {
        let mut reference = HashRing::new();
        for a in addrs(4) {
            reference.add(a);
        }
        let ring = TaskRing::new(addrs(4));
        for id in ["0123456789", "fffff1", "a1b2c3d4"] {
            assert_eq!(
                ring.owner(id).unwrap(),
                *reference.get(&id[..5].to_string()).unwrap()
            );
        }
    }

    #[test]
    fn short_or_non_ascii_ids_are_invalid_not_a_panic() {
        let ring = TaskRing::new(addrs(2));
        assert!(matches!(
            ring.owner("abc"),
            Err(ClusterError::InvalidArgument { .. })
        ));
        assert!(ring.owner("ééé").is_err());
    }
}
