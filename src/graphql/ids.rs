//! GraphQL ID arguments into the values the gateway works with, checked in
//! one place with one wording of errors: scheduler cluster ids into
//! numbers, host/task/peer ids into non-empty strings without `/` (the
//! separator of a peer's path in Redis keys), peer coordinates into a
//! [`PeerKey`]. Resolvers, mutations and subscriptions call these instead
//! of checking for themselves.

use async_graphql::{ID, InputObject, Result};

use super::errors::bad_input;
use crate::ids::PeerKey;

/// The coordinates of a peer, as schedulers key it.
#[derive(InputObject, Clone, Debug)]
pub struct PeerKeyInput {
    pub host_id: ID,
    pub task_id: ID,
    pub peer_id: ID,
}

/// Refuses a host, task or peer id that no scheduler can know: empty,
/// containing `/`, or longer than 1024 bytes.
pub(crate) fn check_id(what: &str, id: &str) -> Result<()> {
    if id.trim().is_empty() {
        return Err(bad_input(format!("{what} must not be empty")));
    }
    if id.contains('/') {
        return Err(bad_input(format!("{what} {id:?} must not contain '/'")));
    }
    if id.len() > 1024 {
        return Err(bad_input(format!("{what} is longer than 1024 bytes")));
    }
    Ok(())
}

/// A scheduler cluster id argument as its number.
pub(crate) fn cluster_id(id: &ID) -> Result<u64> {
    id.parse::<u64>()
        .map_err(|_| bad_input(format!("scheduler cluster id {:?} is not a number", id.0)))
}

/// A peer's coordinates, each id checked.
pub fn peer_key(input: &PeerKeyInput) -> Result<PeerKey> {
    check_id("host id", &input.host_id)?;
    check_id("task id", &input.task_id)?;
    check_id("peer id", &input.peer_id)?;
    Ok(PeerKey {
        host_id: input.host_id.0.clone(),
        task_id: input.task_id.0.clone(),
        peer_id: input.peer_id.0.clone(),
    })
}
