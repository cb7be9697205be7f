//! Cursor paging: Relay connection arguments, opaque cursors and cutting
//! one page out of an ordered host list.

use std::cmp::Ordering;
use std::ops::Range;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::filter::HostFilter;
use super::order::{
    HostOrder, HostOrderField, OrderDirection, SortKind, SortValue, cmp_positions, key_kind,
    sort_hosts, sort_key, sort_value,
};
use crate::figure::figure;
use crate::proto::common::v2::Host;

/// A position in an ordered host list: the order field, and the sort
/// value, id and scheduler cluster id of a host. Its text form is opaque:
/// versioned binary with the value's exact bits, checked when read.
#[derive(Clone, Debug, PartialEq)]
pub struct Cursor {
    pub field: HostOrderField,
    pub value: SortValue,
    pub id: String,
    pub cluster_id: u64,
}

/// The cursor format this server writes; one it does not know is refused.
const CURSOR_VERSION: u8 = 1;

/// Why a cursor was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CursorError {
    #[error("cursor {0:?} is not one this server issued")]
    Unknown(String),
    #[error("cursor {0:?} is for another order (by {1}); ask again without it")]
    OtherOrder(String, &'static str),
}

impl Cursor {
    /// The cursor of `host` in an order by `field`.
    pub fn of(host: &Host, field: HostOrderField) -> Self {
        Self {
            field,
            value: sort_value(host, field),
            id: host.id.clone(),
            cluster_id: host.scheduler_cluster_id,
        }
    }

    /// Layout (version 1): version, field code, value (a kind byte, then
    /// the text with its length, the integer, or the figure's bits), cluster
    /// id, host id with its length, and a CRC-32 of all that. Integers are
    /// little-endian.
    pub fn encode(&self) -> String {
        let mut out = vec![CURSOR_VERSION, field_code(self.field)];
        match &self.value {
            SortValue::Text(s) => {
                out.push(KIND_TEXT);
                put_text(&mut out, s);
            }
            SortValue::Int(n) => {
                out.push(KIND_INT);
                out.extend_from_slice(&n.to_le_bytes());
            }
            SortValue::Figure(Some(f)) => {
                out.push(KIND_FIGURE);
                out.extend_from_slice(&f.to_bits().to_le_bytes());
            }
            SortValue::Figure(None) => out.push(KIND_NO_FIGURE),
        }
        out.extend_from_slice(&self.cluster_id.to_le_bytes());
        put_text(&mut out, &self.id);
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        URL_SAFE_NO_PAD.encode(out)
    }

    /// Reads a cursor for an order by `field`: refuses anything this
    /// server did not write (bad encoding, version, checksum or layout,
    /// a value that is not of the field's kind) and cursors of another
    /// order.
    pub fn decode(s: &str, field: HostOrderField) -> Result<Self, CursorError> {
        let unknown = || CursorError::Unknown(s.to_owned());
        let bytes = URL_SAFE_NO_PAD.decode(s).map_err(|_| unknown())?;
        let (body, crc) = bytes.split_last_chunk::<4>().ok_or_else(unknown)?;
        if crc32fast::hash(body) != u32::from_le_bytes(*crc) {
            return Err(unknown());
        }
        let mut r = Reader(body);
        if r.byte() != Some(CURSOR_VERSION) {
            return Err(unknown());
        }
        let issued_for = r.byte().and_then(field_of).ok_or_else(unknown)?;
        if issued_for != field {
            return Err(CursorError::OtherOrder(
                s.to_owned(),
                field_name(issued_for),
            ));
        }
        let value = match (r.byte(), key_kind(field)) {
            (Some(KIND_TEXT), SortKind::Text) => r.text().map(SortValue::Text),
            (Some(KIND_INT), SortKind::Int) => r.u64().map(SortValue::Int),
            (Some(KIND_FIGURE), SortKind::Figure) => r
                .u64()
                .map(f64::from_bits)
                // Only figures are written: their bits survive `figure`.
                .filter(|f| figure(*f).map(f64::to_bits) == Some(f.to_bits()))
                .map(|f| SortValue::Figure(Some(f))),
            (Some(KIND_NO_FIGURE), SortKind::Figure) => Some(SortValue::Figure(None)),
            _ => None,
        }
        .ok_or_else(unknown)?;
        let cluster_id = r.u64().ok_or_else(unknown)?;
        let id = r.text().ok_or_else(unknown)?;
        if !r.0.is_empty() {
            return Err(unknown());
        }
        Ok(Self {
            field,
            value,
            id,
            cluster_id,
        })
    }

    fn cmp_host(&self, host: &Host, direction: OrderDirection) -> Ordering {
        cmp_positions(
            (self.value.as_key(), &self.id, self.cluster_id),
            (
                sort_key(host, self.field),
                &host.id,
                host.scheduler_cluster_id,
            ),
            direction,
        )
    }
}

const KIND_TEXT: u8 = 0;
const KIND_INT: u8 = 1;
const KIND_FIGURE: u8 = 2;
const KIND_NO_FIGURE: u8 = 3;

/// Every order field with its code in a cursor (never renumbered).
const FIELD_CODES: [(HostOrderField, u8, &str); 8] = [
    (HostOrderField::Hostname, 0, "HOSTNAME"),
    (HostOrderField::Ip, 1, "IP"),
    (HostOrderField::Id, 2, "ID"),
    (HostOrderField::Type, 3, "TYPE"),
    (HostOrderField::Version, 4, "VERSION"),
    (HostOrderField::SchedulerCluster, 5, "SCHEDULER_CLUSTER"),
    (HostOrderField::CpuPercent, 6, "CPU_PERCENT"),
    (HostOrderField::MemoryUsedPercent, 7, "MEMORY_USED_PERCENT"),
];

fn field_code(field: HostOrderField) -> u8 {
    FIELD_CODES
        .iter()
        .find(|(f, _, _)| *f == field)
        .map_or(u8::MAX, |(_, code, _)| *code)
}

fn field_of(code: u8) -> Option<HostOrderField> {
    FIELD_CODES
        .iter()
        .find(|(_, c, _)| *c == code)
        .map(|(f, _, _)| *f)
}

fn field_name(field: HostOrderField) -> &'static str {
    FIELD_CODES
        .iter()
        .find(|(f, _, _)| *f == field)
        .map_or("?", |(_, _, name)| name)
}

fn put_text(out: &mut Vec<u8>, s: &str) {
    // Host ids and names are far below 4 GiB; a longer one would not fit
    // a request anyway.
    out.extend_from_slice(&u32::try_from(s.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Reads a cursor's bytes front to back; `None` when they run out.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn byte(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    }

    fn text(&mut self) -> Option<String> {
        let len = self
            .take(4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)?;
        let bytes = self.take(usize::try_from(len).ok()?)?;
        String::from_utf8(bytes.to_vec()).ok()
    }
}

/// Relay pagination arguments, validated.
#[derive(Clone, Debug, Default)]
pub struct PageArgs {
    pub first: Option<usize>,
    pub after: Option<Cursor>,
    pub last: Option<usize>,
    pub before: Option<Cursor>,
}

/// One page of hosts.
pub struct Page<'a> {
    pub hosts: Vec<(&'a Host, Cursor)>,
    pub total_count: usize,
    pub has_next_page: bool,
    pub has_previous_page: bool,
}

/// Filters, orders and cuts one page, following the Relay connection
/// algorithm: `after`/`before` narrow the ordered list, then `first`
/// takes from the front, `last` from the back.
pub fn page<'a>(
    hosts: impl IntoIterator<Item = &'a Host>,
    filter: &HostFilter,
    order: HostOrder,
    args: &PageArgs,
    default_page_size: usize,
) -> Page<'a> {
    page_sorted(
        &sort_hosts(hosts, order),
        filter,
        order,
        args,
        default_page_size,
    )
}

/// [`page`] over hosts already in `order`.
pub fn page_sorted<'a>(
    sorted: &[&'a Host],
    filter: &HostFilter,
    order: HostOrder,
    args: &PageArgs,
    default_page_size: usize,
) -> Page<'a> {
    let compiled = filter.compile();
    let unfiltered = compiled.is_empty();
    let matches = |h: &Host| unfiltered || compiled.matches(h);
    let Range { start, end } = cursor_window(sorted, order, args);
    let total_count = if unfiltered {
        sorted.len()
    } else {
        sorted.iter().filter(|h| compiled.matches(h)).count()
    };
    let first = match (args.first, args.last) {
        (None, None) => Some(default_page_size),
        (first, _) => first,
    };
    let window = &sorted[start..end];
    let mut chosen: Vec<&Host> = match (first, args.last) {
        // The common case: walk forward only as far as the page needs.
        (Some(first), None) => window
            .iter()
            .copied()
            .filter(|h| matches(h))
            .take(first + 1)
            .collect(),
        _ => window.iter().copied().filter(|h| matches(h)).collect(),
    };
    let mut has_next_page = args.before.is_some() && sorted[end..].iter().any(|h| matches(h));
    let mut has_previous_page =
        args.after.is_some() && sorted[..start].iter().rev().any(|h| matches(h));
    if let Some(first) = first
        && chosen.len() > first
    {
        chosen.truncate(first);
        has_next_page = true;
    }
    if let Some(last) = args.last
        && chosen.len() > last
    {
        chosen.drain(..chosen.len() - last);
        has_previous_page = true;
    }
    Page {
        hosts: with_cursors(chosen, order.field),
        total_count,
        has_next_page,
        has_previous_page,
    }
}

/// The part of `sorted` strictly between the `after` and `before` cursors.
/// Cursors are positions in the total order, so a binary search finds
/// them; only this window is filtered page by page.
fn cursor_window(sorted: &[&Host], order: HostOrder, args: &PageArgs) -> Range<usize> {
    let position = |cursor: &Cursor| {
        sorted.partition_point(|h| cursor.cmp_host(h, order.direction) == Ordering::Greater)
    };
    let start = match &args.after {
        Some(after) => {
            let at = position(after);
            // Skip the cursor's own host when it still exists.
            let same = |h: &&Host| after.cmp_host(h, order.direction) == Ordering::Equal;
            if sorted.get(at).is_some_and(same) {
                at + 1
            } else {
                at
            }
        }
        None => 0,
    };
    let end = args
        .before
        .as_ref()
        .map(position)
        .unwrap_or(sorted.len())
        .max(start);
    start..end
}

/// Each chosen host with the cursor that points at it.
fn with_cursors(chosen: Vec<&Host>, field: HostOrderField) -> Vec<(&Host, Cursor)> {
    chosen
        .into_iter()
        .map(|host| (host, Cursor::of(host, field)))
        .collect()
}
