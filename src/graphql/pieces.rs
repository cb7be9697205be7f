//! A task's pieces as its scheduler reports them (`StatTask`'s
//! `Task.pieces`), paged by piece number: for operators asking where a
//! slow download gets its pieces from. Only what a piece says about the
//! transfer is shown; its content never is.

use async_graphql::connection::{Connection, Edge, EmptyFields};
use async_graphql::{Enum, Result, SimpleObject};
use chrono::{DateTime, Utc};

use super::errors::bad_input;
use super::scalars::{UInt32, UInt64};
use super::types::{duration_ms, timestamp};
use crate::proto::common::v2 as pb;

/// Where a piece's bytes came from (`TrafficType` on the wire).
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrafficType {
    /// From the origin (the URL), not from a peer.
    BackToSource,
    /// From another host's peer (`parentId`).
    RemotePeer,
    /// From a peer on the same host.
    LocalPeer,
    /// A value this gateway does not know (a newer scheduler).
    Unknown,
}

impl TrafficType {
    fn from_wire(t: i32) -> Self {
        match pb::TrafficType::try_from(t) {
            Ok(pb::TrafficType::BackToSource) => Self::BackToSource,
            Ok(pb::TrafficType::RemotePeer) => Self::RemotePeer,
            Ok(pb::TrafficType::LocalPeer) => Self::LocalPeer,
            Err(_) => Self::Unknown,
        }
    }
}

/// One piece of a task's content, as the scheduler knows it.
#[derive(SimpleObject)]
pub struct Piece {
    /// Its index in the content, from 0.
    pub number: UInt32,
    /// The peer it was downloaded from; null when it came from the source.
    pub parent_id: Option<String>,
    /// Where it starts in the content, in bytes.
    pub offset: UInt64,
    pub length: UInt64,
    /// Digest of its bytes, e.g. `crc32:...` or `sha256:...`.
    pub digest: String,
    pub traffic_type: Option<TrafficType>,
    /// How long downloading it took.
    pub cost_ms: Option<f64>,
    pub created_at: Option<DateTime<Utc>>,
}

impl From<&pb::Piece> for Piece {
    fn from(p: &pb::Piece) -> Self {
        Self {
            number: p.number.into(),
            parent_id: p.parent_id.clone(),
            offset: p.offset.into(),
            length: p.length.into(),
            digest: p.digest.clone(),
            traffic_type: p.traffic_type.map(TrafficType::from_wire),
            cost_ms: duration_ms(p.cost.as_ref()),
            created_at: timestamp(p.created_at.as_ref()),
        }
    }
}

/// Fields beside the edges of a piece connection.
#[derive(SimpleObject)]
pub struct PieceConnectionFields {
    /// Pieces the scheduler reported, over every page.
    pub total_count: usize,
}

/// Pieces by number (each number once, the first reported), `first` of
/// them after the piece numbered `after`. A cursor is the piece's number.
pub fn page(
    pieces: &[pb::Piece],
    first: usize,
    after: Option<&str>,
) -> Result<Connection<String, Piece, PieceConnectionFields, EmptyFields>> {
    let after: Option<u32> = after
        .map(|a| {
            a.parse()
                .map_err(|_| bad_input(format!("cursor {a:?} is not a piece number")))
        })
        .transpose()?;
    let mut sorted: Vec<&pb::Piece> = pieces.iter().collect();
    sorted.sort_by_key(|p| p.number);
    sorted.dedup_by_key(|p| p.number);
    let total_count = sorted.len();
    let start = after.map_or(0, |a| sorted.partition_point(|p| p.number <= a));
    let end = start.saturating_add(first).min(total_count);
    let mut connection = Connection::with_additional_fields(
        start > 0,
        end < total_count,
        PieceConnectionFields { total_count },
    );
    connection.edges.extend(
        sorted[start..end]
            .iter()
            .map(|p| Edge::new(p.number.to_string(), Piece::from(*p))),
    );
    Ok(connection)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(number: u32) -> pb::Piece {
        pb::Piece {
            number,
            offset: u64::from(number) * 4,
            length: 4,
            ..pb::Piece::default()
        }
    }

    #[test]
    fn pages_walk_every_piece_once_by_number() {
        let pieces = vec![piece(3), piece(0), piece(2), piece(0), piece(7)];
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = page(&pieces, 2, after.as_deref()).unwrap();
            assert_eq!(page.additional_fields.total_count, 4);
            seen.extend(page.edges.iter().map(|e| e.node.number.0));
            if !page.has_next_page {
                break;
            }
            after = page.edges.last().map(|e| e.cursor.clone());
        }
        assert_eq!(seen, [0, 2, 3, 7]);
        assert!(page(&pieces, 2, Some("x")).is_err());
    }
}
