//! Host order: the order input, the value a host sorts by, and sorting.

use std::cmp::Ordering;

use async_graphql::{Enum, InputObject};

use crate::figure::{cmp_figures, figure};
use crate::proto::common::v2::Host;

#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum HostOrderField {
    #[default]
    Hostname,
    Ip,
    Id,
    Type,
    Version,
    SchedulerCluster,
    /// `cpu.percent`; hosts without a figure (null) come last in both
    /// directions.
    CpuPercent,
    /// `memory.usedPercent`; hosts without a figure (null) come last in
    /// both directions.
    MemoryUsedPercent,
}

#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OrderDirection {
    #[default]
    Asc,
    Desc,
}

/// An order of hosts. Ties are broken by host id, then scheduler cluster
/// id, so the order is total and a cursor is an exact position in it.
#[derive(InputObject, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostOrder {
    #[graphql(default)]
    pub field: HostOrderField,
    #[graphql(default)]
    pub direction: OrderDirection,
}

/// The value a host sorts by, owned (a cursor keeps it). Ties are broken
/// by host id, then scheduler cluster id, so the order is total and
/// cursors are stable.
#[derive(Clone, Debug, PartialEq)]
pub enum SortValue {
    Text(String),
    Int(u64),
    /// A figure ([`crate::figure`]): `None` when the scheduler sent none.
    Figure(Option<f64>),
}

impl SortValue {
    pub(super) fn as_key(&self) -> SortKey<'_> {
        match self {
            Self::Text(s) => SortKey::Text(s),
            Self::Int(n) => SortKey::Int(*n),
            Self::Figure(f) => SortKey::Figure(*f),
        }
    }
}

/// The value a host sorts by, borrowed from the host: sorting allocates
/// nothing.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum SortKey<'a> {
    Text(&'a str),
    Int(u64),
    Figure(Option<f64>),
}

impl SortKey<'_> {
    pub(super) fn to_value(self) -> SortValue {
        match self {
            Self::Text(s) => SortValue::Text(s.to_owned()),
            Self::Int(n) => SortValue::Int(n),
            Self::Figure(f) => SortValue::Figure(f),
        }
    }

    /// A rank per kind; only compared when kinds differ, which a checked
    /// cursor never causes.
    fn kind(self) -> u8 {
        match self {
            Self::Text(_) => 0,
            Self::Int(_) => 1,
            Self::Figure(_) => 2,
        }
    }
}

/// What kind of value `field` sorts by.
pub(super) fn key_kind(field: HostOrderField) -> SortKind {
    match field {
        HostOrderField::Hostname
        | HostOrderField::Ip
        | HostOrderField::Id
        | HostOrderField::Version => SortKind::Text,
        HostOrderField::Type | HostOrderField::SchedulerCluster => SortKind::Int,
        HostOrderField::CpuPercent | HostOrderField::MemoryUsedPercent => SortKind::Figure,
    }
}

/// The kinds of sort value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SortKind {
    Text,
    Int,
    Figure,
}

/// The value `host` sorts by under `field`.
pub(super) fn sort_key(host: &Host, field: HostOrderField) -> SortKey<'_> {
    match field {
        HostOrderField::Hostname => SortKey::Text(&host.hostname),
        HostOrderField::Ip => SortKey::Text(&host.ip),
        HostOrderField::Id => SortKey::Text(&host.id),
        HostOrderField::Type => SortKey::Int(u64::from(host.r#type)),
        HostOrderField::Version => SortKey::Text(
            host.build
                .as_ref()
                .map(|b| b.git_version.as_str())
                .unwrap_or(""),
        ),
        HostOrderField::SchedulerCluster => SortKey::Int(host.scheduler_cluster_id),
        HostOrderField::CpuPercent => {
            SortKey::Figure(host.cpu.as_ref().and_then(|c| figure(c.percent)))
        }
        HostOrderField::MemoryUsedPercent => {
            SortKey::Figure(host.memory.as_ref().and_then(|m| figure(m.used_percent)))
        }
    }
}

/// The value `host` sorts by under `field`, owned.
pub fn sort_value(host: &Host, field: HostOrderField) -> SortValue {
    sort_key(host, field).to_value()
}

/// The one comparison of list positions: by value in `direction` (a
/// missing figure last either way), then by host id and cluster id in
/// `direction`. Sorting and cursors both use it, so they agree.
pub(super) fn cmp_positions(
    a: (SortKey<'_>, &str, u64),
    b: (SortKey<'_>, &str, u64),
    direction: OrderDirection,
) -> Ordering {
    let directed = |ordering: Ordering| match direction {
        OrderDirection::Asc => ordering,
        OrderDirection::Desc => ordering.reverse(),
    };
    let by_value = match (a.0, b.0) {
        (SortKey::Text(x), SortKey::Text(y)) => directed(x.cmp(y)),
        (SortKey::Int(x), SortKey::Int(y)) => directed(x.cmp(&y)),
        (SortKey::Figure(x), SortKey::Figure(y)) => {
            cmp_figures(x, y, direction == OrderDirection::Desc)
        }
        (x, y) => directed(x.kind().cmp(&y.kind())),
    };
    by_value.then_with(|| directed(a.1.cmp(b.1).then(a.2.cmp(&b.2))))
}

/// Compares two hosts in `order` without allocating.
pub(super) fn cmp_hosts(a: &Host, b: &Host, order: HostOrder) -> Ordering {
    cmp_positions(
        (sort_key(a, order.field), &a.id, a.scheduler_cluster_id),
        (sort_key(b, order.field), &b.id, b.scheduler_cluster_id),
        order.direction,
    )
}

/// Every host, in `order`. This is the expensive step of a listing, so
/// the gateway memoizes it per host-list snapshot ([`OrderMemo`](super::OrderMemo)).
pub fn sort_hosts<'a>(
    hosts: impl IntoIterator<Item = &'a Host>,
    order: HostOrder,
) -> Vec<&'a Host> {
    let mut sorted: Vec<&Host> = hosts.into_iter().collect();
    sorted.sort_unstable_by(|a, b| cmp_hosts(a, b, order));
    sorted
}
