//! Host listing: filtering, ordering, cursor pagination and statistics
//! over the clusters' host lists. Pure functions over wire hosts, so they
//! can be tested and benchmarked without a server.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, Weak};

use async_graphql::{Enum, InputObject, SimpleObject};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::types::HostType;
use crate::proto::common::v2::Host;
use crate::proto::scheduler::v2::ListHostsResponse;

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
                    .map(|id| super::ids::cluster_id(id).map_err(|e| e.message))
                    .collect()
            })
            .transpose()
    }
}

impl CompiledFilter<'_> {
    /// True when the filter lets every host through.
    pub fn is_empty(&self) -> bool {
        let f = self.filter;
        self.search.is_none()
            && f.types.is_none()
            && f.idcs.is_none()
            && f.locations.is_none()
            && f.os.is_none()
            && f.versions.is_none()
            && f.commits.is_none()
    }

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

/// Compares two hosts by `field` without allocating; ties go to the id so
/// the order is total.
fn cmp_hosts(a: &Host, b: &Host, order: HostOrder) -> Ordering {
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
/// the gateway memoizes it per host-list snapshot ([`OrderMemo`]).
pub fn sort_hosts<'a>(
    hosts: impl IntoIterator<Item = &'a Host>,
    order: HostOrder,
) -> Vec<&'a Host> {
    let mut sorted: Vec<&Host> = hosts.into_iter().collect();
    sorted.sort_unstable_by(|a, b| cmp_hosts(a, b, order));
    sorted
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
    // Cursors are positions in the total order, so a binary search finds
    // them; only the window between them is filtered page by page.
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
    let hosts = chosen
        .into_iter()
        .map(|host| {
            let cursor = Cursor {
                value: sort_value(host, order.field),
                id: host.id.clone(),
            };
            (host, cursor)
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
    /// Counts borrowed values; strings are copied once per bucket, not
    /// once per host.
    #[derive(Default)]
    struct Counts<'h>(HashMap<&'h str, u64>);
    impl<'h> Counts<'h> {
        fn add(&mut self, value: &'h str) {
            *self.0.entry(value).or_default() += 1;
        }
        fn buckets(self) -> Vec<Bucket> {
            sorted_buckets(self.0.into_iter().map(|(v, n)| (v.to_owned(), n)))
        }
    }
    let compiled = filter.compile();
    let (mut version, mut commit, mut kind, mut idc, mut location, mut os) = (
        Counts::default(),
        Counts::default(),
        Counts::default(),
        Counts::default(),
        Counts::default(),
        Counts::default(),
    );
    let mut cluster: BTreeMap<u64, u64> = BTreeMap::new();
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
        *cluster.entry(host.scheduler_cluster_id).or_default() += 1;
    }
    let by_cluster = sorted_buckets(cluster.into_iter().map(|(id, n)| (id.to_string(), n)));
    HostStats {
        total,
        by_version: version.buckets(),
        by_commit: commit.buckets(),
        by_type: kind.buckets(),
        by_idc: idc.buckets(),
        by_location: location.buckets(),
        by_os: os.buckets(),
        by_scheduler_cluster: by_cluster,
        counted_clusters: Vec::new(),
        missing_clusters: Vec::new(),
    }
}

/// Buckets, largest count first, then by value.
fn sorted_buckets(counts: impl Iterator<Item = (String, u64)>) -> Vec<Bucket> {
    let mut buckets: Vec<Bucket> = counts
        .map(|(value, count)| Bucket { value, count })
        .collect();
    buckets.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.value.cmp(&b.value)));
    buckets
}

/// Host orders and unfiltered statistics, computed once per set of host
/// lists. A host list in the cache is an immutable `Arc` until it is
/// replaced, so its identity keys the memo; an entry whose lists were
/// dropped is dead and gets evicted.
#[derive(Default)]
pub struct OrderMemo {
    entries: Mutex<Vec<MemoEntry>>,
}

struct MemoEntry {
    lists: Vec<Weak<ListHostsResponse>>,
    order: Option<HostOrder>,
    /// The filter the entry is for (its `Debug` text; "" for none).
    filter: String,
    /// Indices (list, host) in order; empty for a stats entry.
    sorted: Arc<Vec<(u32, u32)>>,
    stats: Option<Arc<HostStats>>,
}

/// Entries kept; a console uses a handful of orders at a time.
const MEMO_ENTRIES: usize = 32;

impl MemoEntry {
    fn is_for(&self, lists: &[Arc<ListHostsResponse>]) -> bool {
        self.lists.len() == lists.len()
            && self
                .lists
                .iter()
                .zip(lists)
                .all(|(weak, list)| std::ptr::eq(weak.as_ptr(), Arc::as_ptr(list)))
    }

    fn is_alive(&self) -> bool {
        self.lists.iter().all(|w| w.strong_count() > 0)
    }
}

impl OrderMemo {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<MemoEntry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn remember(&self, entry: MemoEntry) {
        let mut entries = self.lock();
        entries.retain(MemoEntry::is_alive);
        if entries.len() >= MEMO_ENTRIES {
            entries.remove(0);
        }
        entries.push(entry);
    }

    fn find<T>(
        &self,
        lists: &[Arc<ListHostsResponse>],
        order: Option<HostOrder>,
        filter: &str,
        get: impl Fn(&MemoEntry) -> Option<T>,
    ) -> Option<T> {
        self.lock()
            .iter()
            .find(|e| e.order == order && e.filter == filter && e.is_for(lists))
            .and_then(get)
    }

    /// The hosts of `lists` that match `filter`, in `order`. Consoles
    /// repeat the same listing, so both the order and the filtered subset
    /// are remembered per host-list snapshot.
    pub fn sorted<'a>(
        &self,
        lists: &'a [Arc<ListHostsResponse>],
        order: HostOrder,
        filter: &HostFilter,
    ) -> Vec<&'a Host> {
        let compiled = filter.compile();
        let filter_key = if compiled.is_empty() {
            String::new()
        } else {
            filter_key(filter)
        };
        let resolve = |indices: &[(u32, u32)]| -> Vec<&'a Host> {
            indices
                .iter()
                .filter_map(|&(l, h)| lists.get(l as usize)?.hosts.get(h as usize))
                .collect()
        };
        if let Some(indices) =
            self.find(lists, Some(order), &filter_key, |e| Some(e.sorted.clone()))
        {
            return resolve(&indices);
        }
        let all = match self.find(lists, Some(order), "", |e| Some(e.sorted.clone())) {
            Some(all) => all,
            None => {
                let mut indices: Vec<(u32, u32)> = lists
                    .iter()
                    .enumerate()
                    .flat_map(|(l, list)| (0..list.hosts.len()).map(move |h| (l as u32, h as u32)))
                    .collect();
                indices.sort_unstable_by(|&(la, ha), &(lb, hb)| {
                    cmp_hosts(
                        &lists[la as usize].hosts[ha as usize],
                        &lists[lb as usize].hosts[hb as usize],
                        order,
                    )
                });
                let indices = Arc::new(indices);
                self.remember(MemoEntry {
                    lists: lists.iter().map(Arc::downgrade).collect(),
                    order: Some(order),
                    filter: String::new(),
                    sorted: indices.clone(),
                    stats: None,
                });
                indices
            }
        };
        if filter_key.is_empty() {
            return resolve(&all);
        }
        let matching: Vec<(u32, u32)> = all
            .iter()
            .copied()
            .filter(|&(l, h)| compiled.matches(&lists[l as usize].hosts[h as usize]))
            .collect();
        let hosts = resolve(&matching);
        self.remember(MemoEntry {
            lists: lists.iter().map(Arc::downgrade).collect(),
            order: Some(order),
            filter: filter_key,
            sorted: Arc::new(matching),
            stats: None,
        });
        hosts
    }

    /// Statistics of the hosts of `lists` that match `filter`.
    pub fn stats(&self, lists: &[Arc<ListHostsResponse>], filter: &HostFilter) -> HostStats {
        let key = if filter.compile().is_empty() {
            String::new()
        } else {
            filter_key(filter)
        };
        if let Some(stats) = self.find(lists, None, &key, |e| e.stats.clone()) {
            return HostStats::clone(&stats);
        }
        let stats = host_stats(lists.iter().flat_map(|l| l.hosts.iter()), filter);
        self.remember(MemoEntry {
            lists: lists.iter().map(Arc::downgrade).collect(),
            order: None,
            filter: key,
            sorted: Arc::new(Vec::new()),
            stats: Some(Arc::new(stats.clone())),
        });
        stats
    }
}

/// A filter's identity for the memo. Cluster ids are left out: they pick
/// the host lists, which are part of the memo key already.
fn filter_key(filter: &HostFilter) -> String {
    let HostFilter {
        scheduler_cluster_ids: _,
        types,
        idcs,
        locations,
        os,
        versions,
        commits,
        search,
    } = filter;
    format!("{types:?}|{idcs:?}|{locations:?}|{os:?}|{versions:?}|{commits:?}|{search:?}")
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
