//! Which hosts to list: the filter input, compiled once per listing.

use std::borrow::Cow;

use async_graphql::InputObject;

use crate::graphql::types::{HostType, LivenessState};
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
    /// Only hosts whose liveness (dfgraph's probes of their health
    /// service) is one of these.
    pub liveness: Option<Vec<LivenessState>>,
}

fn any_of(wanted: &Option<Vec<String>>, value: Option<&str>) -> bool {
    match wanted {
        None => true,
        Some(list) => value.is_some_and(|v| list.iter().any(|w| w == v)),
    }
}

/// A filter with its search term lower-cased once, not once per host.
pub struct CompiledFilter<'a> {
    filter: Cow<'a, HostFilter>,
    search: Option<String>,
}

impl HostFilter {
    pub fn compile(&self) -> CompiledFilter<'_> {
        CompiledFilter {
            search: self.lowered_search(),
            filter: Cow::Borrowed(self),
        }
    }

    /// The filter compiled and kept, for a stream that applies it to every
    /// event it sees.
    pub fn into_compiled(self) -> CompiledFilter<'static> {
        CompiledFilter {
            search: self.lowered_search(),
            filter: Cow::Owned(self),
        }
    }

    fn lowered_search(&self) -> Option<String> {
        self.search
            .as_ref()
            .map(|s| s.trim().to_lowercase())
            .filter(|s| !s.is_empty())
    }

    /// The filter without its `liveness` criterion, and that criterion:
    /// liveness is not a property of the host lists, so listings apply it
    /// apart (and their memo never sees it).
    pub fn split_liveness(&self) -> (Cow<'_, HostFilter>, Option<Vec<LivenessState>>) {
        match &self.liveness {
            None => (Cow::Borrowed(self), None),
            Some(wanted) => (
                Cow::Owned(HostFilter {
                    liveness: None,
                    ..self.clone()
                }),
                Some(wanted.clone()),
            ),
        }
    }

    /// The cluster ids the filter names, if any; unparsable ids are kept
    /// as an error for the caller to report.
    pub fn cluster_ids(&self) -> Result<Option<Vec<u64>>, String> {
        self.scheduler_cluster_ids
            .as_ref()
            .map(|ids| {
                ids.iter()
                    .map(|id| crate::graphql::ids::cluster_id(id).map_err(|e| e.message))
                    .collect()
            })
            .transpose()
    }
}

impl CompiledFilter<'_> {
    /// The `liveness` criterion, if any (not part of [`Self::matches`]).
    pub fn liveness(&self) -> Option<&[LivenessState]> {
        self.filter.liveness.as_deref()
    }

    /// True when the filter lets every host through (`liveness` aside).
    pub fn is_empty(&self) -> bool {
        let f = &*self.filter;
        self.search.is_none()
            && f.types.is_none()
            && f.idcs.is_none()
            && f.locations.is_none()
            && f.os.is_none()
            && f.versions.is_none()
            && f.commits.is_none()
    }

    /// Whether `host` matches every criterion but `liveness`.
    pub fn matches(&self, host: &Host) -> bool {
        let f = &*self.filter;
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
