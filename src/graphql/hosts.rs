//! Host listing: filtering, ordering, cursor pagination and statistics
//! over the clusters' host lists. Pure functions over wire hosts, so they
//! can be tested and benchmarked without a server.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use async_graphql::{Enum, InputObject, SimpleObject};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::types::HostType;
use crate::proto::common::v2::Host;

/// Which hosts to list. Every given criterion must match.
#[derive(InputObject, Clone, Debug, Default)]
pub struct HostFilter {
    /// Only these scheduler clusters.
    pub scheduler_cluster_ids: Option<Vec<async_graphql::ID>>,
    pub types: Option<Vec<HostType>>,
    pub idcs: Option<Vec<String>>,
    pub locations: Option<Vec<String>>,
    pub os: Option<Vec<String>>,
    /// Build versions (`build.gitVersion`).
    pub versions: Option<Vec<String>>,
    /// Build commits (`build.gitCommit`).
    pub commits: Option<Vec<String>>,
    /// Case-insensitive substring of hostname or ip.
    pub search: Option<String>,
}

fn any_of(wanted: &Option<Vec<String>>, value: Option<&str>) -> bool {
    match wanted {
        None => true,
        Some(list) => value.is_some_and(|v| list.iter().any(|w| w == v)),
    }
}

/// A filter with its search term lower-cased once, not once per host.
pub struct CompiledFilter<'a> {
    filter: &'a HostFilter,
    search: Option<String>,
}

impl HostFilter {
    pub fn compile(&self) -> CompiledFilter<'_> {
        CompiledFilter {
            filter: self,
            search: self
                .search
                .as_ref()
                .map(|s| s.trim().to_lowercase())
                .filter(|s| !s.is_empty()),
        }
    }

    /// The cluster ids the filter names, if any; unparsable ids are kept
    /// as an error for the caller to report.
    pub fn cluster_ids(&self) -> Result<Option<Vec<u64>>, String> {
        self.scheduler_cluster_ids
            .as_ref()
            .map(|ids| {
                ids.iter()
                    .map(|id| {
                        id.parse::<u64>()
                            .map_err(|_| format!("scheduler cluster id {:?} is not a number", id.0))
                    })
                    .collect()
            })
            .transpose()
    }
}

impl CompiledFilter<'_> {
    pub fn matches(&self, host: &Host) -> bool {
        let f = self.filter;
        if let Some(types) = &f.types
            && !types.contains(&HostType::from_wire(host.r#type))
        {
            return false;
        }
        let network = host.network.as_ref();
        let build = host.build.as_ref();
        if !any_of(&f.idcs, network.and_then(|n| n.idc.as_deref()))
            || !any_of(&f.locations, network.and_then(|n| n.location.as_deref()))
            || !any_of(&f.os, Some(host.os.as_str()))
            || !any_of(&f.versions, build.map(|b| b.git_version.as_str()))
            || !any_of(&f.commits, build.and_then(|b| b.git_commit.as_deref()))
        {
            return false;
        }
        if let Some(term) = &self.search {
            return contains_ignore_case(&host.hostname, term) || host.ip.contains(term.as_str());
        }
        true
    }
}

fn contains_ignore_case(haystack: &str, lower_needle: &str) -> bool {
    if haystack.is_ascii() && lower_needle.is_ascii() {
        haystack
            .as_bytes()
            .windows(lower_needle.len().max(1))
            .any(|w| w.eq_ignore_ascii_case(lower_needle.as_bytes()))
            || lower_needle.is_empty()
    } else {
        haystack.to_lowercase().contains(lower_needle)
    }
}

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

#[derive(InputObject, Clone, Copy, Debug, Default)]
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
    fn cmp(&self, other: &Self) -> Ordering {
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
    let compiled = filter.compile();
    let mut matching: Vec<(SortValue, &Host)> = hosts
        .into_iter()
        .filter(|h| compiled.matches(h))
        .map(|h| (sort_value(h, order.field), h))
        .collect();
    let total_count = matching.len();
    matching.sort_by(|(va, a), (vb, b)| {
        let ordering = va.cmp(vb).then_with(|| a.id.cmp(&b.id));
        match order.direction {
            OrderDirection::Asc => ordering,
            OrderDirection::Desc => ordering.reverse(),
        }
    });
    let mut start = 0;
    let mut end = matching.len();
    if let Some(after) = &args.after {
        start = matching
            .partition_point(|(v, h)| after.cmp_host(v, &h.id, order.direction) != Ordering::Less);
    }
    if let Some(before) = &args.before {
        end = matching.partition_point(|(v, h)| {
            before.cmp_host(v, &h.id, order.direction) == Ordering::Greater
        });
    }
    let end = end.max(start);
    let mut has_next_page = end < matching.len() && args.before.is_some();
    let mut has_previous_page = start > 0 && args.after.is_some();
    let (mut from, mut to) = (start, end);
    let first = match (args.first, args.last) {
        (None, None) => Some(default_page_size),
        (first, _) => first,
    };
    if let Some(first) = first
        && to - from > first
    {
        to = from + first;
        has_next_page = true;
    }
    if let Some(last) = args.last
        && to - from > last
    {
        from = to - last;
        has_previous_page = true;
    }
    let hosts = matching[from..to]
        .iter()
        .map(|(value, host)| {
            (
                *host,
                Cursor {
                    value: value.clone(),
                    id: host.id.clone(),
                },
            )
        })
        .collect();
    Page {
        hosts,
        total_count,
        has_next_page,
        has_previous_page,
    }
}

/// One count in a breakdown.
#[derive(SimpleObject, Clone, Debug, PartialEq, Eq)]
pub struct Bucket {
    pub value: String,
    pub count: u64,
}

/// Host counts by the dimensions the console charts.
#[derive(SimpleObject, Clone, Debug, Default)]
pub struct HostStats {
    pub total: u64,
    pub by_version: Vec<Bucket>,
    pub by_commit: Vec<Bucket>,
    pub by_type: Vec<Bucket>,
    pub by_idc: Vec<Bucket>,
    pub by_location: Vec<Bucket>,
    pub by_os: Vec<Bucket>,
    pub by_scheduler_cluster: Vec<Bucket>,
    /// Clusters whose hosts are in these counts.
    pub counted_clusters: Vec<async_graphql::ID>,
    /// Clusters that could not be counted (their error is in `errors`).
    pub missing_clusters: Vec<async_graphql::ID>,
}

/// Counts hosts matching `filter`. Buckets are sorted by count, largest
/// first, then by value; a host without a value counts as `""`.
pub fn host_stats<'a>(hosts: impl IntoIterator<Item = &'a Host>, filter: &HostFilter) -> HostStats {
    #[derive(Default)]
    struct Counts(BTreeMap<String, u64>);
    impl Counts {
        fn add(&mut self, value: &str) {
            match self.0.get_mut(value) {
                Some(count) => *count += 1,
                None => {
                    self.0.insert(value.to_owned(), 1);
                }
            }
        }
        fn buckets(self) -> Vec<Bucket> {
            let mut buckets: Vec<Bucket> = self
                .0
                .into_iter()
                .map(|(value, count)| Bucket { value, count })
                .collect();
            buckets.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.value.cmp(&b.value)));
            buckets
        }
    }
    let compiled = filter.compile();
    let (mut version, mut commit, mut kind, mut idc, mut location, mut os, mut cluster) = (
        Counts::default(),
        Counts::default(),
        Counts::default(),
        Counts::default(),
        Counts::default(),
        Counts::default(),
        Counts::default(),
    );
    let mut total = 0;
    for host in hosts.into_iter().filter(|h| compiled.matches(h)) {
        total += 1;
        let build = host.build.as_ref();
        let network = host.network.as_ref();
        version.add(build.map(|b| b.git_version.as_str()).unwrap_or(""));
        commit.add(build.and_then(|b| b.git_commit.as_deref()).unwrap_or(""));
        kind.add(HostType::from_wire(host.r#type).as_str());
        idc.add(network.and_then(|n| n.idc.as_deref()).unwrap_or(""));
        location.add(network.and_then(|n| n.location.as_deref()).unwrap_or(""));
        os.add(&host.os);
        cluster.add(&host.scheduler_cluster_id.to_string());
    }
    HostStats {
        total,
        by_version: version.buckets(),
        by_commit: commit.buckets(),
        by_type: kind.buckets(),
        by_idc: idc.buckets(),
        by_location: location.buckets(),
        by_os: os.buckets(),
        by_scheduler_cluster: cluster.buckets(),
        counted_clusters: Vec::new(),
        missing_clusters: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::common::v2::{Build, Network};

    fn host(id: &str, hostname: &str, version: &str, idc: &str) -> Host {
        Host {
            id: id.into(),
            hostname: hostname.into(),
            ip: format!("10.0.0.{}", id.len()),
            os: "linux".into(),
            build: Some(Build {
                git_version: version.into(),
                ..Default::default()
            }),
            network: Some(Network {
                idc: Some(idc.into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn fleet() -> Vec<Host> {
        (0..25)
            .map(|i| {
                host(
                    &format!("h{i:02}"),
                    &format!("node-{}", i % 10),
                    if i % 3 == 0 { "v2" } else { "v1" },
                    if i % 2 == 0 { "a" } else { "b" },
                )
            })
            .collect()
    }

    #[test]
    fn pages_forward_cover_everything_once_in_order() {
        let hosts = fleet();
        let mut seen = Vec::new();
        let mut args = PageArgs {
            first: Some(7),
            ..Default::default()
        };
        loop {
            let p = page(
                &hosts,
                &HostFilter::default(),
                HostOrder::default(),
                &args,
                100,
            );
            assert_eq!(p.total_count, 25);
            seen.extend(p.hosts.iter().map(|(h, _)| h.id.clone()));
            if !p.has_next_page {
                break;
            }
            args.after = p.hosts.last().map(|(_, c)| c.clone());
        }
        assert_eq!(seen.len(), 25);
        let mut expected: Vec<_> = hosts
            .iter()
            .map(|h| (h.hostname.clone(), h.id.clone()))
            .collect();
        expected.sort();
        assert_eq!(
            seen,
            expected.into_iter().map(|(_, id)| id).collect::<Vec<_>>()
        );
    }

    #[test]
    fn backward_pagination_with_last_and_before() {
        let hosts = fleet();
        let all = page(
            &hosts,
            &HostFilter::default(),
            HostOrder::default(),
            &PageArgs::default(),
            100,
        );
        let tenth = all.hosts[10].1.clone();
        let p = page(
            &hosts,
            &HostFilter::default(),
            HostOrder::default(),
            &PageArgs {
                last: Some(3),
                before: Some(tenth),
                ..Default::default()
            },
            100,
        );
        let ids: Vec<_> = p.hosts.iter().map(|(h, _)| h.id.clone()).collect();
        let expected: Vec<_> = all.hosts[7..10].iter().map(|(h, _)| h.id.clone()).collect();
        assert_eq!(ids, expected);
        assert!(p.has_previous_page);
        assert!(p.has_next_page);
    }

    #[test]
    fn cursor_stays_valid_when_hosts_join_before_it() {
        let mut hosts = fleet();
        let first = page(
            &hosts,
            &HostFilter::default(),
            HostOrder::default(),
            &PageArgs {
                first: Some(5),
                ..Default::default()
            },
            100,
        );
        let after = first.hosts.last().unwrap().1.clone();
        let next_expected = page(
            &hosts,
            &HostFilter::default(),
            HostOrder::default(),
            &PageArgs {
                first: Some(5),
                after: Some(after.clone()),
                ..Default::default()
            },
            100,
        )
        .hosts
        .iter()
        .map(|(h, _)| h.id.clone())
        .collect::<Vec<_>>();
        hosts.push(host("zz", "aaa-first", "v1", "a"));
        let next = page(
            &hosts,
            &HostFilter::default(),
            HostOrder::default(),
            &PageArgs {
                first: Some(5),
                after: Some(after),
                ..Default::default()
            },
            100,
        )
        .hosts
        .iter()
        .map(|(h, _)| h.id.clone())
        .collect::<Vec<_>>();
        assert_eq!(next, next_expected);
    }

    #[test]
    fn filter_and_search() {
        let hosts = fleet();
        let filter = HostFilter {
            versions: Some(vec!["v2".into()]),
            idcs: Some(vec!["a".into()]),
            ..Default::default()
        };
        let p = page(
            &hosts,
            &filter,
            HostOrder::default(),
            &PageArgs::default(),
            100,
        );
        let expected = (0..25).filter(|i| i % 3 == 0 && i % 2 == 0).count();
        assert_eq!(p.total_count, expected);
        let search = HostFilter {
            search: Some("NODE-3".into()),
            ..Default::default()
        };
        let p = page(
            &hosts,
            &search,
            HostOrder::default(),
            &PageArgs::default(),
            100,
        );
        assert!(p.hosts.iter().all(|(h, _)| h.hostname == "node-3"));
        assert_eq!(p.total_count, 3);
    }

    #[test]
    fn descending_order_reverses() {
        let hosts = fleet();
        let order = HostOrder {
            field: HostOrderField::Id,
            direction: OrderDirection::Desc,
        };
        let p = page(
            &hosts,
            &HostFilter::default(),
            order,
            &PageArgs {
                first: Some(2),
                ..Default::default()
            },
            100,
        );
        let ids: Vec<_> = p.hosts.iter().map(|(h, _)| h.id.as_str()).collect();
        assert_eq!(ids, ["h24", "h23"]);
    }

    #[test]
    fn stats_count_by_dimension() {
        let hosts = fleet();
        let stats = host_stats(&hosts, &HostFilter::default());
        assert_eq!(stats.total, 25);
        let v2 = (0..25).filter(|i| i % 3 == 0).count() as u64;
        assert_eq!(
            stats.by_version,
            vec![
                Bucket {
                    value: "v1".into(),
                    count: 25 - v2
                },
                Bucket {
                    value: "v2".into(),
                    count: v2
                },
            ]
        );
        assert_eq!(
            stats.by_type,
            vec![Bucket {
                value: "NORMAL".into(),
                count: 25
            }]
        );
    }

    #[test]
    fn garbage_cursor_is_an_error_not_a_panic() {
        assert!(Cursor::decode("not-a-cursor!").is_err());
        assert!(Cursor::decode("").is_err());
        assert!(Cursor::decode(&URL_SAFE_NO_PAD.encode(b"{\"x\":1}")).is_err());
    }
}
