//! A scheduler's host list as dfgraph holds it, and the same list as it
//! arrives on the wire. Held: each host decoded once and shared (`Arc`), so
//! the watcher's snapshot, the cache entry and every query read one copy.
//! On the wire: a `ListHostsResponse` is a run of length-delimited `Host`
//! entries (field 1); [`EntryReader`] finds each entry as the answer
//! arrives in pieces, without reading inside it, and [`keys`] reads an
//! entry's id, so a poll decodes only the hosts whose bytes changed.

use std::ops::Range;
use std::sync::Arc;

use bytes::{Buf, BufMut};
use prost::encoding::{DecodeContext, WireType};

use crate::proto::common::v2::Host;

/// `ListHostsResponse.hosts` and `Host.id`: field 1 in both;
/// `Host.scheduler_cluster_id`: field 17 (upstream dragonfly-api numbers).
const HOSTS_FIELD: u32 = 1;
const HOST_ID_FIELD: u32 = 1;
const HOST_CLUSTER_ID_FIELD: u32 = 17;

/// The hosts of one cluster, in the scheduler's order. Encodes and decodes
/// as a `ListHostsResponse`, so L2 holds the same bytes as before.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HostList {
    pub hosts: Vec<Arc<Host>>,
}

impl HostList {
    pub fn new(hosts: Vec<Host>) -> Self {
        Self {
            hosts: hosts.into_iter().map(Arc::new).collect(),
        }
    }

    /// The list of a cluster dfgraph serves as `cluster_id`: every host
    /// stamped with it (see [`super::announced`]).
    pub fn of_cluster(mut hosts: Vec<Host>, cluster_id: u64) -> Self {
        for host in &mut hosts {
            super::announced::stamp(host, cluster_id);
        }
        Self::new(hosts)
    }
}

impl prost::Message for HostList {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        for host in &self.hosts {
            prost::encoding::message::encode(HOSTS_FIELD, host.as_ref(), buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        if tag == HOSTS_FIELD {
            let mut host = Host::default();
            prost::encoding::message::merge(wire_type, &mut host, buf, ctx)?;
            self.hosts.push(Arc::new(host));
            Ok(())
        } else {
            prost::encoding::skip_field(wire_type, tag, buf, ctx)
        }
    }

    fn encoded_len(&self) -> usize {
        self.hosts
            .iter()
            .map(|h| prost::encoding::message::encoded_len(HOSTS_FIELD, h.as_ref()))
            .sum()
    }

    fn clear(&mut self) {
        self.hosts.clear();
    }
}

/// A response that is not a well-formed `ListHostsResponse`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed ListHosts response: {0}")]
pub struct WireError(String);

/// Where each host entry of a whole encoded `ListHostsResponse` is, in
/// order, without reading inside it. Unknown fields are skipped; a
/// malformed message ends with an error. The watcher reads answers in
/// pieces ([`EntryReader`]); this is what the tests hold it to.
#[cfg(test)]
pub fn entries(response: &[u8]) -> impl Iterator<Item = Result<Range<usize>, WireError>> + '_ {
    Fields::new(response).filter_map(|field| match field {
        Err(error) => Some(Err(error)),
        Ok((HOSTS_FIELD, Value::Delimited(start, end))) => Some(Ok(start..end)),
        Ok((HOSTS_FIELD, _)) => Some(Err(WireError("hosts is not length-delimited".into()))),
        Ok(_) => None,
    })
}

/// Finds the host entries of a `ListHostsResponse` that arrives in pieces
/// (HTTP/2 DATA frames), as `entries` does in a whole one: an entry
/// within one piece is handed over where it lies; only a field cut by a
/// piece's end is copied, into a buffer kept for the next answer.
#[derive(Debug, Default)]
pub struct EntryReader {
    /// The start of a field the last piece ended inside.
    partial: Vec<u8>,
}

impl EntryReader {
    /// Forgets a field left unfinished: the next piece starts an answer.
    pub fn restart(&mut self) {
        self.partial.clear();
    }

    /// Reads the next piece, giving `entry` each host entry it completes,
    /// in order. Unknown fields are skipped; the first malformed field is
    /// an error (and so is one from `entry`).
    pub fn feed(
        &mut self,
        mut piece: &[u8],
        mut entry: impl FnMut(&[u8]) -> Result<(), WireError>,
    ) -> Result<(), WireError> {
        // First finish the field the last piece cut. Its header (at most
        // two varints) is taken a byte at a time until its length is known.
        while !self.partial.is_empty() && !piece.is_empty() {
            let take = match extent(&self.partial)? {
                None => 1,
                Some(field) => (field.len - self.partial.len()).min(piece.len()),
            };
            self.partial.extend_from_slice(&piece[..take]);
            piece = &piece[take..];
            self.emit_partial(&mut entry)?;
        }
        while !piece.is_empty() {
            match extent(piece)? {
                Some(field) if field.len <= piece.len() => {
                    field.emit(&piece[..field.len], &mut entry)?;
                    piece = &piece[field.len..];
                }
                _ => {
                    self.partial.extend_from_slice(piece);
                    // A varint field may be whole already.
                    return self.emit_partial(&mut entry);
                }
            }
        }
        Ok(())
    }

    /// The answer ended: a field still unfinished is an error.
    pub fn finish(&mut self) -> Result<(), WireError> {
        if self.partial.is_empty() {
            Ok(())
        } else {
            let cut = self.partial.len();
            self.partial.clear();
            Err(WireError(format!(
                "the answer ends inside a field ({cut} bytes of it)"
            )))
        }
    }

    /// Hands over the field in `partial` if it is whole.
    fn emit_partial(
        &mut self,
        entry: &mut impl FnMut(&[u8]) -> Result<(), WireError>,
    ) -> Result<(), WireError> {
        match extent(&self.partial)? {
            Some(field) if field.len == self.partial.len() => {
                let emitted = field.emit(&self.partial, entry);
                self.partial.clear();
                emitted
            }
            _ => Ok(()),
        }
    }
}

/// A top-level field whose header has been read: its number, where its
/// value starts, and its whole length (header included).
struct Extent {
    number: u32,
    delimited: bool,
    value_start: usize,
    len: usize,
}

impl Extent {
    /// Gives `entry` the value of a hosts field; skips any other.
    fn emit(
        &self,
        field: &[u8],
        entry: &mut impl FnMut(&[u8]) -> Result<(), WireError>,
    ) -> Result<(), WireError> {
        match (self.number, self.delimited) {
            (HOSTS_FIELD, true) => entry(&field[self.value_start..]),
            (HOSTS_FIELD, false) => Err(WireError("hosts is not length-delimited".into())),
            _ => Ok(()),
        }
    }
}

/// The extent of the field `bytes` starts with, or `None` while its header
/// is cut short (the value itself may run past `bytes`).
fn extent(bytes: &[u8]) -> Result<Option<Extent>, WireError> {
    let Some((key, key_len)) = varint_prefix(bytes)? else {
        return Ok(None);
    };
    let number = u32::try_from(key >> 3).unwrap_or(u32::MAX);
    let rest = &bytes[key_len..];
    let (delimited, value_start, value_len) = match key & 7 {
        0 => match varint_prefix(rest)? {
            Some((_, len)) => (false, key_len, len),
            None => return Ok(None),
        },
        1 => (false, key_len, 8),
        2 => match varint_prefix(rest)? {
            Some((len, len_len)) => {
                let len = usize::try_from(len)
                    .map_err(|_| WireError(format!("a field of {len} bytes")))?;
                (true, key_len + len_len, len)
            }
            None => return Ok(None),
        },
        5 => (false, key_len, 4),
        other => return Err(WireError(format!("unsupported wire type {other}"))),
    };
    let len = value_start
        .checked_add(value_len)
        .ok_or_else(|| WireError(format!("a field of {value_len} bytes")))?;
    Ok(Some(Extent {
        number,
        delimited,
        value_start,
        len,
    }))
}

/// The varint `bytes` starts with and its length, or `None` when `bytes`
/// ends inside it.
fn varint_prefix(bytes: &[u8]) -> Result<Option<(u64, usize)>, WireError> {
    // A varint is at most 10 bytes; its last byte has the top bit clear.
    match bytes.iter().take(10).position(|b| b & 0x80 == 0) {
        Some(last) => {
            let mut varint = &bytes[..=last];
            prost::encoding::decode_varint(&mut varint)
                .map(|value| Some((value, last + 1)))
                .map_err(|e| WireError(e.to_string()))
        }
        None if bytes.len() < 10 => Ok(None),
        None => Err(WireError("a varint longer than 10 bytes".into())),
    }
}

/// One `Host` message's id (checked UTF-8) and the scheduler cluster id it
/// carries ("" and 0 when absent; the last of each wins, as decoded).
pub fn keys(host: &[u8]) -> Result<(&str, u64), WireError> {
    let (id, cluster_id) = host_keys(host)?;
    let id =
        std::str::from_utf8(&host[id]).map_err(|_| WireError("host id is not UTF-8".into()))?;
    Ok((id, cluster_id))
}

/// Decodes one `Host` entry and stamps it with `cluster_id`, the id dfgraph
/// serves its cluster under.
pub fn decode_entry(entry: &[u8], cluster_id: u64) -> Result<Host, WireError> {
    let mut host = <Host as prost::Message>::decode(entry).map_err(|e| {
        let id = keys(entry).map(|(id, _)| id).unwrap_or_default();
        WireError(format!("host {id:?}: {e}"))
    })?;
    super::announced::stamp(&mut host, cluster_id);
    Ok(host)
}

/// Where the id is in one `Host` message's bytes, and its scheduler
/// cluster id (empty and 0 when absent, as decoded; the last of each wins,
/// as decoded).
fn host_keys(host: &[u8]) -> Result<(Range<usize>, u64), WireError> {
    let mut id = 0..0;
    let mut cluster_id = 0;
    for field in Fields::new(host) {
        match field? {
            (HOST_ID_FIELD, Value::Delimited(start, end)) => id = start..end,
            (HOST_CLUSTER_ID_FIELD, Value::Varint(value)) => cluster_id = value,
            _ => {}
        }
    }
    std::str::from_utf8(&host[id.clone()]).map_err(|_| WireError("host id is not UTF-8".into()))?;
    Ok((id, cluster_id))
}

/// A field's value: a varint, another scalar (skipped) or the range of a
/// delimited one.
enum Value {
    Varint(u64),
    Scalar,
    Delimited(usize, usize),
}

/// The top-level fields of one message, by number.
struct Fields<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Fields<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, at: 0 }
    }

    fn varint(&mut self) -> Result<u64, WireError> {
        let mut rest = &self.bytes[self.at..];
        let before = rest.len();
        let value = prost::encoding::decode_varint(&mut rest)
            .map_err(|e| WireError(format!("at byte {}: {e}", self.at)))?;
        self.at += before - rest.len();
        Ok(value)
    }

    fn skip(&mut self, n: u64) -> Result<(usize, usize), WireError> {
        let start = self.at;
        let end = usize::try_from(n)
            .ok()
            .and_then(|n| start.checked_add(n))
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| WireError(format!("field at byte {start} runs past the end")))?;
        self.at = end;
        Ok((start, end))
    }

    fn field(&mut self) -> Result<(u32, Value), WireError> {
        let key = self.varint()?;
        let number = u32::try_from(key >> 3).unwrap_or(u32::MAX);
        let value = match key & 7 {
            0 => self.varint().map(Value::Varint)?,
            1 => self.skip(8).map(|_| Value::Scalar)?,
            2 => {
                let len = self.varint()?;
                let (start, end) = self.skip(len)?;
                Value::Delimited(start, end)
            }
            5 => self.skip(4).map(|_| Value::Scalar)?,
            other => return Err(WireError(format!("unsupported wire type {other}"))),
        };
        Ok((number, value))
    }
}

impl Iterator for Fields<'_> {
    type Item = Result<(u32, Value), WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.at >= self.bytes.len() {
            return None;
        }
        let field = self.field();
        if field.is_err() {
            // One error ends the walk.
            self.at = self.bytes.len();
        }
        Some(field)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::common::v2::Cpu;
    use crate::proto::scheduler::v2::ListHostsResponse;
    use prost::Message;

    fn host(id: &str) -> Host {
        Host {
            id: id.into(),
            hostname: format!("{id}-name"),
            port: 65000,
            cpu: Some(Cpu {
                logical_count: 8,
                percent: 12.5,
                ..Cpu::default()
            }),
            scheduler_cluster_id: 7,
            ..Host::default()
        }
    }

    /// Each entry of `wire` as the poll reads it: id, carried cluster id
    /// and bytes.
    struct Entry<'a> {
        id: &'a str,
        cluster_id: u64,
        bytes: &'a [u8],
    }

    fn split(wire: &[u8]) -> Result<Vec<Entry<'_>>, WireError> {
        entries(wire)
            .map(|range| {
                let bytes = &wire[range?];
                let (id, cluster_id) = keys(bytes)?;
                Ok(Entry {
                    id,
                    cluster_id,
                    bytes,
                })
            })
            .collect()
    }

    #[test]
    fn split_finds_every_entry_and_its_id_and_each_decodes_to_the_host() {
        let hosts = vec![host("a"), host("bb"), Host::default(), host("ccc")];
        let wire = ListHostsResponse {
            hosts: hosts.clone(),
        }
        .encode_to_vec();
        let entries = split(&wire).expect("well formed");
        let ids: Vec<&str> = entries.iter().map(|e| e.id).collect();
        assert_eq!(ids, ["a", "bb", "", "ccc"]);
        let carried: Vec<u64> = entries.iter().map(|e| e.cluster_id).collect();
        assert_eq!(carried, [7, 7, 0, 7]);
        let decoded: Vec<Host> = entries
            .iter()
            .map(|e| decode_entry(e.bytes, 7).unwrap())
            .collect();
        let stamped: Vec<Host> = hosts
            .iter()
            .cloned()
            .map(|mut h| {
                h.scheduler_cluster_id = 7;
                h
            })
            .collect();
        assert_eq!(decoded, stamped);
        let served_as_3 = decode_entry(entries[0].bytes, 3).unwrap();
        assert_eq!(
            served_as_3.scheduler_cluster_id, 3,
            "stamped with dfgraph's id"
        );
    }

    #[test]
    fn the_last_id_in_an_entry_wins_as_in_decoding() {
        let mut bytes = host("first").encode_to_vec();
        Host {
            id: "second".into(),
            ..Host::default()
        }
        .encode_raw(&mut bytes);
        let mut wire = Vec::new();
        prost::encoding::bytes::encode(HOSTS_FIELD, &bytes, &mut wire);
        let entries = split(&wire).unwrap();
        assert_eq!(entries[0].id, "second");
        assert_eq!(decode_entry(entries[0].bytes, 7).unwrap().id, "second");
    }

    #[test]
    fn unknown_fields_are_skipped_and_truncation_is_an_error() {
        let mut wire = Vec::new();
        prost::encoding::uint64::encode(9, &5, &mut wire);
        prost::encoding::message::encode(HOSTS_FIELD, &host("x"), &mut wire);
        prost::encoding::string::encode(12, &"later".to_string(), &mut wire);
        let entries = split(&wire).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].id, "x");
        for cut in 1..wire.len() {
            let cut = &wire[..cut];
            // Any prefix is either a shorter valid message or an error.
            if let Ok(entries) = split(cut) {
                assert!(entries.len() <= 1);
            }
        }
        assert!(split(&[0x0a, 0x05, 0x01]).is_err());
        assert!(split(&[0x0b]).is_err());
    }

    /// What an [`EntryReader`] hands over when `wire` arrives cut at
    /// `cuts`, and how it ends.
    fn read_in_pieces(wire: &[u8], cuts: &[usize]) -> (Vec<Vec<u8>>, Result<(), WireError>) {
        let mut reader = EntryReader::default();
        let mut found = Vec::new();
        let mut at = 0;
        let mut ends = cuts.to_vec();
        ends.push(wire.len());
        for end in ends {
            let end = end.clamp(at, wire.len());
            let fed = reader.feed(&wire[at..end], |entry| {
                found.push(entry.to_vec());
                Ok(())
            });
            if fed.is_err() {
                return (found, fed);
            }
            at = end;
        }
        let finished = reader.finish();
        (found, finished)
    }

    /// An answer with unknown fields of every wire type around its hosts.
    fn mixed_wire(ids: &[&str]) -> Vec<u8> {
        let mut wire = Vec::new();
        prost::encoding::uint64::encode(9, &300, &mut wire);
        for (n, id) in ids.iter().enumerate() {
            prost::encoding::message::encode(HOSTS_FIELD, &host(id), &mut wire);
            prost::encoding::fixed64::encode(10, &(n as u64), &mut wire);
            prost::encoding::fixed32::encode(11, &7, &mut wire);
            prost::encoding::string::encode(12, &"x".repeat(n * 40), &mut wire);
        }
        wire
    }

    proptest::proptest! {
        /// However the answer is cut into pieces, the reader finds the
        /// entries reading it whole finds, or fails where that fails.
        #[test]
        fn an_answer_read_in_pieces_gives_what_reading_it_whole_gives(
            count in 0usize..6,
            cuts in proptest::collection::vec(0usize..2000, 0..12),
            truncate in proptest::option::of(0usize..2000),
        ) {
            let ids = ["a", "bb", "", "c-\u{1F600}", "d", "eeeeeeeeee"];
            let mut wire = mixed_wire(&ids[..count]);
            if let Some(at) = truncate {
                wire.truncate(at.min(wire.len()));
            }
            let mut cuts = cuts;
            cuts.sort_unstable();
            let whole: Result<Vec<Vec<u8>>, WireError> = entries(&wire)
                .map(|range| range.map(|r| wire[r].to_vec()))
                .collect();
            let (found, ended) = read_in_pieces(&wire, &cuts);
            match whole {
                Ok(whole) => {
                    proptest::prop_assert_eq!(ended, Ok(()));
                    proptest::prop_assert_eq!(found, whole);
                }
                Err(_) => proptest::prop_assert!(ended.is_err()),
            }
        }
    }

    #[test]
    fn pieces_of_one_byte_and_a_cut_header_still_find_every_entry() {
        let wire = mixed_wire(&["a", "bb", "ccc"]);
        let every_byte: Vec<usize> = (1..wire.len()).collect();
        let (found, ended) = read_in_pieces(&wire, &every_byte);
        assert_eq!(ended, Ok(()));
        let ids: Vec<&str> = found.iter().map(|e| keys(e).unwrap().0).collect();
        assert_eq!(ids, ["a", "bb", "ccc"]);
        // A varint of more than 10 bytes, a wire type prost cannot skip and
        // a hosts field that is not delimited are errors, not waits.
        assert!(read_in_pieces(&[0x88; 12], &[3, 7]).1.is_err());
        assert!(read_in_pieces(&[0x0b, 0x00], &[1]).1.is_err());
        assert!(read_in_pieces(&[0x08, 0x01], &[1]).1.is_err());
        // An entry the answer ends inside.
        assert!(read_in_pieces(&[0x0a, 0x05, 0x01], &[2]).1.is_err());
    }

    #[test]
    fn a_host_list_encodes_as_list_hosts_response() {
        let hosts = vec![host("a"), host("b")];
        let list = HostList::new(hosts.clone());
        let as_response = ListHostsResponse { hosts }.encode_to_vec();
        assert_eq!(list.encode_to_vec(), as_response);
        assert_eq!(list.encoded_len(), as_response.len());
        assert_eq!(HostList::decode(as_response.as_slice()).unwrap(), list);
    }
}
