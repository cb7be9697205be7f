//! Cursor paging: Relay connection arguments, opaque cursors and cutting
//! one page out of an ordered host list.

use std::cmp::Ordering;
use std::ops::Range;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::filter::HostFilter;
use super::order::{HostOrder, HostOrderField, OrderDirection, SortValue, sort_hosts, sort_value};
use crate::proto::common::v2::Host;

/// A position in an ordered host list: the sort value and id of a host.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Cursor {
    pub value: SortValue,
    pub id: String,
}

impl Cursor {
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).unwrap_or_default())
    }

    pub fn decode(s: &str) -> Result<Self, String> {
        let bytes = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| format!("cursor {s:?} is not one this server issued"))?;
        serde_json::from_slice(&bytes)
            .map_err(|_| format!("cursor {s:?} is not one this server issued"))
    }

    fn cmp_host(&self, value: &SortValue, id: &str, direction: OrderDirection) -> Ordering {
        let ordering = self.value.cmp(value).then_with(|| self.id.as_str().cmp(id));
        match direction {
            OrderDirection::Asc => ordering,
            OrderDirection::Desc => ordering.reverse(),
        }
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
        sorted.partition_point(|h| {
            cursor.cmp_host(&sort_value(h, order.field), &h.id, order.direction)
                == Ordering::Greater
        })
    };
    let start = match &args.after {
        Some(after) => {
            let at = position(after);
            // Skip the cursor's own host when it still exists.
            let same = |h: &&Host| {
                after.cmp_host(&sort_value(h, order.field), &h.id, order.direction)
                    == Ordering::Equal
            };
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
        .map(|host| {
            let cursor = Cursor {
                value: sort_value(host, field),
                id: host.id.clone(),
            };
            (host, cursor)
        })
        .collect()
}
