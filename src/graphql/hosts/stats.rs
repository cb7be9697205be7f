//! Host statistics: counts by the dimensions the console charts.

use std::collections::{BTreeMap, HashMap};

use async_graphql::SimpleObject;

use super::filter::HostFilter;
use crate::host_type::HostType;
use crate::proto::common::v2::Host;

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
    /// By liveness state (`REACHABLE`, `UNREACHABLE`, `UNKNOWN`, each
    /// present): whether the hosts answer dfgraph's probes of their
    /// health service.
    pub by_liveness: Vec<Bucket>,
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
        // Liveness is not a property of the host lists: the resolver
        // counts it when asked.
        by_liveness: Vec::new(),
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
