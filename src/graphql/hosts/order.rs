//! Host order: the order input, the value a host sorts by, and sorting.

use std::cmp::Ordering;

use async_graphql::{Enum, InputObject};

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
    CpuPercent,
    MemoryUsedPercent,
}

#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OrderDirection {
    #[default]
    Asc,
    Desc,
}

#[derive(InputObject, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostOrder {
    #[graphql(default)]
    pub field: HostOrderField,
    #[graphql(default)]
    pub direction: OrderDirection,
}

/// The value a host sorts by. Ties are broken by host id, so the order is
/// total and cursors are stable.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum SortValue {
    Num(f64),
    Text(String),
}

impl SortValue {
    pub(super) fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (Self::Num(a), Self::Num(b)) => a.total_cmp(b),
            (Self::Text(a), Self::Text(b)) => a.cmp(b),
            (Self::Num(_), Self::Text(_)) => Ordering::Less,
            (Self::Text(_), Self::Num(_)) => Ordering::Greater,
        }
    }
}

pub fn sort_value(host: &Host, field: HostOrderField) -> SortValue {
    match field {
        HostOrderField::Hostname => SortValue::Text(host.hostname.clone()),
        HostOrderField::Ip => SortValue::Text(host.ip.clone()),
        HostOrderField::Id => SortValue::Text(host.id.clone()),
        HostOrderField::Type => SortValue::Num(f64::from(host.r#type)),
        HostOrderField::Version => SortValue::Text(
            host.build
                .as_ref()
                .map(|b| b.git_version.clone())
                .unwrap_or_default(),
        ),
        HostOrderField::SchedulerCluster => SortValue::Num(host.scheduler_cluster_id as f64),
        HostOrderField::CpuPercent => {
            SortValue::Num(host.cpu.as_ref().map(|c| c.percent).unwrap_or(0.0))
        }
        HostOrderField::MemoryUsedPercent => {
            SortValue::Num(host.memory.as_ref().map(|m| m.used_percent).unwrap_or(0.0))
        }
    }
}

/// Compares two hosts by `field` without allocating; ties go to the id so
/// the order is total.
pub(super) fn cmp_hosts(a: &Host, b: &Host, order: HostOrder) -> Ordering {
    fn version(h: &Host) -> &str {
        h.build
            .as_ref()
            .map(|b| b.git_version.as_str())
            .unwrap_or("")
    }
    fn cpu(h: &Host) -> f64 {
        h.cpu.as_ref().map(|c| c.percent).unwrap_or(0.0)
    }
    fn memory(h: &Host) -> f64 {
        h.memory.as_ref().map(|m| m.used_percent).unwrap_or(0.0)
    }
    let by_field = match order.field {
        HostOrderField::Hostname => a.hostname.cmp(&b.hostname),
        HostOrderField::Ip => a.ip.cmp(&b.ip),
        HostOrderField::Id => Ordering::Equal,
        HostOrderField::Type => a.r#type.cmp(&b.r#type),
        HostOrderField::Version => version(a).cmp(version(b)),
        HostOrderField::SchedulerCluster => a.scheduler_cluster_id.cmp(&b.scheduler_cluster_id),
        HostOrderField::CpuPercent => cpu(a).total_cmp(&cpu(b)),
        HostOrderField::MemoryUsedPercent => memory(a).total_cmp(&memory(b)),
    };
    let ordering = by_field.then_with(|| a.id.cmp(&b.id));
    match order.direction {
        OrderDirection::Asc => ordering,
        OrderDirection::Desc => ordering.reverse(),
    }
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
