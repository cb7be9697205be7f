//! Pure comparisons of two observations: which hosts joined, left or
//! changed (and in which fields), and what changed in a peer or a task.
//! Field names are the GraphQL ones, so `changedFields` reads like the
//! schema.

use std::collections::HashMap;
use std::sync::Arc;

use super::HostChange;
use crate::proto::common::v2::{Host, Task};

/// Fields of a host that describe load rather than identity; they change
/// on every announce of a busy dfdaemon.
pub const RESOURCE_FIELDS: [&str; 4] = ["cpu", "memory", "network", "disk"];

/// One host's difference between two lists.
#[derive(Clone, Debug, PartialEq)]
pub struct HostDiff {
    pub change: HostChange,
    pub host: Arc<Host>,
    pub changed_fields: Vec<String>,
}

/// The last host list seen of one cluster, by host id.
pub type HostSnapshot = HashMap<String, Arc<Host>>;

pub fn snapshot_hosts(hosts: impl IntoIterator<Item = Host>) -> HostSnapshot {
    hosts
        .into_iter()
        .map(|h| (h.id.clone(), Arc::new(h)))
        .collect()
}

/// What turned `old` into `new`: joined and updated hosts in `new`'s
/// order, then the hosts that left, by id.
pub fn diff_hosts(old: &HostSnapshot, new: &HostSnapshot) -> Vec<HostDiff> {
    let mut diffs = Vec::new();
    let mut ids: Vec<&String> = new.keys().collect();
    ids.sort();
    for id in ids {
        let host = &new[id];
        match old.get(id) {
            None => diffs.push(HostDiff {
                change: HostChange::Joined,
                host: host.clone(),
                changed_fields: Vec::new(),
            }),
            Some(before) if Arc::ptr_eq(before, host) || before == host => {}
            Some(before) => diffs.push(HostDiff {
                change: HostChange::Updated,
                host: host.clone(),
                changed_fields: host_fields(before, host),
            }),
        }
    }
    let mut gone: Vec<(&String, &Arc<Host>)> = old
        .iter()
        .filter(|(id, _)| !new.contains_key(*id))
        .collect();
    gone.sort_by_key(|(id, _)| *id);
    for (_, host) in gone {
        diffs.push(HostDiff {
            change: HostChange::Left,
            host: host.clone(),
            changed_fields: Vec::new(),
        });
    }
    diffs
}

/// Names of the fields that differ between two versions of a host.
pub fn host_fields(a: &Host, b: &Host) -> Vec<String> {
    let checks: [(&str, bool); 20] = [
        ("type", a.r#type != b.r#type),
        ("hostname", a.hostname != b.hostname),
        ("ip", a.ip != b.ip),
        ("port", a.port != b.port),
        ("downloadPort", a.download_port != b.download_port),
        ("proxyPort", a.proxy_port != b.proxy_port),
        ("name", a.name != b.name),
        ("os", a.os != b.os),
        ("platform", a.platform != b.platform),
        ("platformFamily", a.platform_family != b.platform_family),
        ("platformVersion", a.platform_version != b.platform_version),
        ("kernelVersion", a.kernel_version != b.kernel_version),
        ("cpu", a.cpu != b.cpu),
        ("memory", a.memory != b.memory),
        ("network", a.network != b.network),
        ("disk", a.disk != b.disk),
        ("build", a.build != b.build),
        (
            "schedulerClusterId",
            a.scheduler_cluster_id != b.scheduler_cluster_id,
        ),
        ("disableShared", a.disable_shared != b.disable_shared),
        ("id", a.id != b.id),
    ];
    checks
        .iter()
        .filter(|(_, differs)| *differs)
        .map(|(name, _)| (*name).to_string())
        .collect()
}

/// True when every changed field is a load figure.
pub fn only_resources(changed_fields: &[String]) -> bool {
    !changed_fields.is_empty()
        && changed_fields
            .iter()
            .all(|f| RESOURCE_FIELDS.contains(&f.as_str()))
}

/// Names of the fields that differ between two versions of a task
/// (`updatedAt` alone is not a change anyone watches for).
pub fn task_fields(a: &Task, b: &Task) -> Vec<String> {
    let checks: [(&str, bool); 12] = [
        ("state", a.state != b.state),
        ("peerCount", a.peer_count != b.peer_count),
        (
            "hasAvailablePeer",
            a.has_available_peer != b.has_available_peer,
        ),
        ("contentLength", a.content_length != b.content_length),
        ("pieceCount", a.piece_count != b.piece_count),
        ("sizeScope", a.size_scope != b.size_scope),
        ("type", a.r#type != b.r#type),
        ("url", a.url != b.url),
        ("digest", a.digest != b.digest),
        ("tag", a.tag != b.tag),
        ("application", a.application != b.application),
        (
            "filteredQueryParams",
            a.filtered_query_params != b.filtered_query_params,
        ),
    ];
    checks
        .iter()
        .filter(|(_, differs)| *differs)
        .map(|(name, _)| (*name).to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::common::v2::Cpu;

    fn host(id: &str, hostname: &str) -> Host {
        Host {
            id: id.into(),
            hostname: hostname.into(),
            ..Host::default()
        }
    }

    #[test]
    fn hosts_that_join_leave_and_change_are_told_apart() {
        let old = snapshot_hosts(vec![host("a", "a1"), host("b", "b1"), host("c", "c1")]);
        let mut changed = host("b", "b2");
        changed.cpu = Some(Cpu {
            logical_count: 4,
            ..Cpu::default()
        });
        let new = snapshot_hosts(vec![host("a", "a1"), changed, host("d", "d1")]);
        let diffs = diff_hosts(&old, &new);
        let summary: Vec<_> = diffs
            .iter()
            .map(|d| (d.change, d.host.id.as_str(), d.changed_fields.clone()))
            .collect();
        assert_eq!(
            summary,
            vec![
                (
                    HostChange::Updated,
                    "b",
                    vec!["hostname".to_string(), "cpu".to_string()]
                ),
                (HostChange::Joined, "d", vec![]),
                (HostChange::Left, "c", vec![]),
            ]
        );
        assert_eq!(
            diffs[2].host.hostname, "c1",
            "a leaving host keeps its last state"
        );
    }

    #[test]
    fn an_unchanged_list_has_no_differences() {
        let old = snapshot_hosts(vec![host("a", "a1"), host("b", "b1")]);
        let new = snapshot_hosts(vec![host("b", "b1"), host("a", "a1")]);
        assert!(diff_hosts(&old, &new).is_empty());
    }

    #[test]
    fn load_only_changes_are_recognised() {
        assert!(only_resources(&["cpu".into(), "disk".into()]));
        assert!(!only_resources(&["cpu".into(), "ip".into()]));
        assert!(!only_resources(&[]));
    }

    #[test]
    fn task_changes_name_their_fields_and_ignore_updated_at() {
        let a = Task {
            id: "t".into(),
            state: "Running".into(),
            peer_count: 3,
            ..Task::default()
        };
        let mut b = a.clone();
        b.updated_at = Some(prost_types::Timestamp {
            seconds: 9,
            nanos: 0,
        });
        assert!(task_fields(&a, &b).is_empty());
        b.state = "Succeeded".into();
        b.peer_count = 4;
        assert_eq!(task_fields(&a, &b), vec!["state", "peerCount"]);
    }
}
