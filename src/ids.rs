//! Dragonfly's identifiers as values: what names a peer. Shared by
//! `cluster` (which asks schedulers by them), `cache` (which keys entries
//! by them) and `events`, so a peer's coordinates travel as one value and
//! are never formatted into a string to be parsed back, except to cross a
//! wire (Redis keys and messages).
//!
//! Depends on nothing else in the crate.

/// A peer's coordinates, as `StatPeer` takes them.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerKey {
    pub host_id: String,
    pub task_id: String,
    pub peer_id: String,
}

impl PeerKey {
    /// `task_id/host_id/peer_id`: the peer's id in cache keys and events.
    /// Ids containing `/` are refused at the API, so the split is
    /// unambiguous.
    pub fn path(&self) -> String {
        format!("{}/{}/{}", self.task_id, self.host_id, self.peer_id)
    }

    /// The key back from [`PeerKey::path`].
    pub fn from_path(path: &str) -> Option<PeerKey> {
        let mut parts = path.splitn(3, '/');
        let task_id = parts.next()?.to_owned();
        let host_id = parts.next()?.to_owned();
        let peer_id = parts.next()?.to_owned();
        Some(PeerKey {
            host_id,
            task_id,
            peer_id,
        })
    }
}
