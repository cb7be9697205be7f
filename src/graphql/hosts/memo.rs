//! The memo of host orders and statistics per host-list snapshot.

use std::sync::{Arc, Mutex, Weak};

use super::filter::HostFilter;
use super::order::{HostOrder, cmp_hosts};
use super::stats::{HostStats, host_stats};
use crate::cluster::HostList;
use crate::proto::common::v2::Host;

/// Host orders and unfiltered statistics, computed once per set of host
/// lists. A host list in the cache is an immutable `Arc` until it is
/// replaced, so its identity keys the memo; an entry whose lists were
/// dropped is dead and gets evicted.
#[derive(Default)]
pub struct OrderMemo {
    entries: Mutex<Vec<MemoEntry>>,
}

struct MemoEntry {
    lists: Vec<Weak<HostList>>,
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
    fn is_for(&self, lists: &[Arc<HostList>]) -> bool {
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
        lists: &[Arc<HostList>],
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
        lists: &'a [Arc<HostList>],
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
                .map(|h| &**h)
                .collect()
        };
        if let Some(indices) =
            self.find(lists, Some(order), &filter_key, |e| Some(e.sorted.clone()))
        {
            return resolve(&indices);
        }
        let all = self.sorted_unfiltered(lists, order);
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

    /// Every host of `lists` as (list, host) indices in `order`: the
    /// expensive sort, done once per host-list snapshot and order.
    fn sorted_unfiltered(&self, lists: &[Arc<HostList>], order: HostOrder) -> Arc<Vec<(u32, u32)>> {
        if let Some(all) = self.find(lists, Some(order), "", |e| Some(e.sorted.clone())) {
            return all;
        }
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

    /// Statistics of the hosts of `lists` that match `filter`.
    pub fn stats(&self, lists: &[Arc<HostList>], filter: &HostFilter) -> HostStats {
        let key = if filter.compile().is_empty() {
            String::new()
        } else {
            filter_key(filter)
        };
        if let Some(stats) = self.find(lists, None, &key, |e| e.stats.clone()) {
            return HostStats::clone(&stats);
        }
        let stats = host_stats(
            lists.iter().flat_map(|l| l.hosts.iter().map(|h| &**h)),
            filter,
        );
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
        // Applied apart from the memo (see `HostFilter::split_liveness`).
        liveness: _,
    } = filter;
    format!("{types:?}|{idcs:?}|{locations:?}|{os:?}|{versions:?}|{commits:?}|{search:?}")
}
