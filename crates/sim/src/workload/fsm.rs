//! The peer and task state machines: Dragonfly's FSM states, a peer's next
//! step, what a step changes (pieces, cost), and a task's state derived
//! from its peers.

use prost_types::{Duration as PbDuration, Timestamp};
use rand::Rng;
use rand::rngs::SmallRng;

use super::time::elapsed;
use super::{PeerEntry, TaskEntry};
use dfgraph_proto::common::v2::{Peer, Piece, SizeScope, Task, TrafficType};

/// Dragonfly's peer FSM states, as the scheduler reports them.
pub(crate) mod peer_state {
    pub(crate) const PENDING: &str = "Pending";
    pub(crate) const RECEIVED_EMPTY: &str = "ReceivedEmpty";
    pub(crate) const RECEIVED_TINY: &str = "ReceivedTiny";
    pub(crate) const RECEIVED_SMALL: &str = "ReceivedSmall";
    pub(crate) const RECEIVED_NORMAL: &str = "ReceivedNormal";
    pub(crate) const RUNNING: &str = "Running";
    pub(crate) const BACK_TO_SOURCE: &str = "BackToSource";
    pub(crate) const SUCCEEDED: &str = "Succeeded";
    pub(crate) const FAILED: &str = "Failed";
    pub(crate) const LEAVE: &str = "Leave";
}

/// Dragonfly's task FSM states.
pub(crate) mod task_state {
    pub(crate) const PENDING: &str = "Pending";
    pub(crate) const RUNNING: &str = "Running";
    pub(crate) const SUCCEEDED: &str = "Succeeded";
    pub(crate) const FAILED: &str = "Failed";
    pub(crate) const LEAVE: &str = "Leave";
}

use peer_state as ps;

/// Piece size used to derive a task's piece count.
pub(super) const PIECE_LENGTH: u64 = 4 << 20;
/// At most this many pieces are reported per peer (keeps messages small).
pub(super) const MAX_PIECES: usize = 4;
/// Chance per tick that a peer takes its next FSM step.
const STEP_CHANCE: f64 = 0.35;
/// Chance per tick that a finished peer leaves.
const LEAVE_CHANCE: f64 = 0.15;

/// Pieces a peer reports once it has downloaded `count` pieces of `task`.
pub(super) fn pieces_for(
    rng: &mut SmallRng,
    task: &Task,
    count: usize,
    parent: Option<&str>,
    now: &Timestamp,
) -> Vec<Piece> {
    let total = (task.piece_count as usize).min(MAX_PIECES);
    (0..count.min(total))
        .map(|i| {
            let offset = i as u64 * PIECE_LENGTH;
            let length = task.content_length.saturating_sub(offset).min(PIECE_LENGTH);
            Piece {
                number: i as u32,
                parent_id: parent.map(str::to_string),
                offset,
                length,
                digest: format!("crc32:{:08x}", rng.random::<u32>()),
                content: None,
                traffic_type: Some(if parent.is_some() {
                    TrafficType::RemotePeer as i32
                } else {
                    TrafficType::BackToSource as i32
                }),
                cost: Some(PbDuration {
                    seconds: 0,
                    nanos: rng.random_range(1_000_000..200_000_000),
                }),
                created_at: Some(*now),
            }
        })
        .collect()
}

pub(super) fn received_state(task: &Task) -> &'static str {
    match SizeScope::try_from(task.size_scope) {
        Ok(SizeScope::Empty) => ps::RECEIVED_EMPTY,
        Ok(SizeScope::Tiny) => ps::RECEIVED_TINY,
        Ok(SizeScope::Small) => ps::RECEIVED_SMALL,
        _ => ps::RECEIVED_NORMAL,
    }
}

/// The next FSM state of a peer, or `None` to stay.
pub(super) fn next_state(rng: &mut SmallRng, peer: &Peer, task: &Task) -> Option<&'static str> {
    let state = peer.state.as_str();
    let finished = state == ps::SUCCEEDED || state == ps::FAILED;
    let chance = if finished { LEAVE_CHANCE } else { STEP_CHANCE };
    if !rng.random_bool(chance) {
        return None;
    }
    let roll: f64 = rng.random();
    Some(match state {
        ps::PENDING if peer.need_back_to_source => ps::BACK_TO_SOURCE,
        ps::PENDING => received_state(task),
        ps::RECEIVED_EMPTY => ps::SUCCEEDED,
        ps::RECEIVED_TINY | ps::RECEIVED_SMALL | ps::RECEIVED_NORMAL => {
            if roll < 0.93 {
                ps::RUNNING
            } else if roll < 0.98 {
                ps::BACK_TO_SOURCE
            } else {
                ps::FAILED
            }
        }
        ps::RUNNING => {
            if roll < 0.85 {
                ps::SUCCEEDED
            } else if roll < 0.93 {
                ps::BACK_TO_SOURCE
            } else {
                ps::FAILED
            }
        }
        ps::BACK_TO_SOURCE => {
            if roll < 0.85 {
                ps::SUCCEEDED
            } else {
                ps::FAILED
            }
        }
        ps::SUCCEEDED | ps::FAILED => ps::LEAVE,
        // Leave peers are removed by the tick; unknown states (set by a
        // hook) stay where they are.
        _ => return None,
    })
}

/// Moves a peer to `state`, updating what goes with it (pieces, cost,
/// updated_at).
pub(super) fn apply_state(
    rng: &mut SmallRng,
    entry: &mut PeerEntry,
    task: &Task,
    state: &str,
    parent: Option<&str>,
    now: &Timestamp,
) {
    let peer = &mut entry.peer;
    let total = (task.piece_count as usize).min(MAX_PIECES);
    match state {
        ps::RUNNING => {
            let have = peer.pieces.len().max(1);
            peer.pieces = pieces_for(rng, task, have, parent, now);
        }
        ps::BACK_TO_SOURCE => {
            peer.need_back_to_source = true;
            peer.pieces = pieces_for(rng, task, peer.pieces.len(), None, now);
        }
        ps::SUCCEEDED => {
            let parent = if peer.need_back_to_source {
                None
            } else {
                parent
            };
            peer.pieces = pieces_for(rng, task, total, parent, now);
            peer.cost = Some(elapsed(peer.created_at.as_ref(), now));
        }
        ps::FAILED => {
            peer.cost = Some(elapsed(peer.created_at.as_ref(), now));
        }
        _ => {}
    }
    peer.state = state.to_string();
    peer.updated_at = Some(*now);
}

/// Recomputes a task's state, peer count and availability from its peers.
/// Bumps `updated_at` only when something changed.
pub(super) fn refresh_task(entry: &mut TaskEntry, now: &Timestamp) {
    let live = entry
        .peers
        .iter()
        .filter(|p| p.peer.state != ps::LEAVE)
        .count() as u32;
    let any = |s: &str| entry.peers.iter().any(|p| p.peer.state == s);
    let has_available = any(ps::SUCCEEDED);
    let active = entry.peers.iter().any(|p| {
        matches!(
            p.peer.state.as_str(),
            ps::RECEIVED_EMPTY
                | ps::RECEIVED_TINY
                | ps::RECEIVED_SMALL
                | ps::RECEIVED_NORMAL
                | ps::RUNNING
                | ps::BACK_TO_SOURCE
        )
    });
    let state = if has_available {
        Some(task_state::SUCCEEDED)
    } else if active {
        Some(task_state::RUNNING)
    } else if any(ps::FAILED) {
        Some(task_state::FAILED)
    } else if any(ps::PENDING) {
        Some(task_state::PENDING)
    } else if live == 0 {
        Some(task_state::LEAVE)
    } else {
        // Only peers in states set by hooks: keep the task's state.
        None
    };
    // The task's pieces, as a scheduler reports them: each piece number
    // once, from the first peer that has it.
    let mut pieces: std::collections::BTreeMap<u32, Piece> = std::collections::BTreeMap::new();
    for peer in &entry.peers {
        for piece in &peer.peer.pieces {
            pieces.entry(piece.number).or_insert_with(|| piece.clone());
        }
    }
    let task = &mut entry.task;
    task.pieces = pieces.into_values().collect();
    let state_changed = state.is_some_and(|s| task.state != s);
    if state_changed || task.peer_count != live || task.has_available_peer != has_available {
        if let Some(state) = state {
            task.state = state.to_string();
        }
        task.peer_count = live;
        task.has_available_peer = has_available;
        task.updated_at = Some(*now);
    }
}
