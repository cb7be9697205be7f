//! Liveness: whether each dfdaemon a scheduler lists answers its own gRPC
//! health service (`grpc.health.v1.Health/Check` on its Host entry's
//! `ip:port`), asked by dfgraph itself, because a scheduler keeps listing a
//! crashed or frozen host for 10-15 minutes. Owns the `[liveness]`
//! section, the per-host record every replica holds, and the metrics; the
//! probing is in `cluster` (one cluster's cycle), the dialling in `probe`,
//! the sharing between replicas (lease, Redis hash) in `share` and `runner`.
//!
//! Depends on `cluster` (host lists come through a closure the gateway
//! gives), `events` (the bus its `UNREACHABLE`/`REACHABLE` host events
//! travel on, the lease) and `redis`; knows nothing of GraphQL.

mod cluster;
mod probe;
mod runner;
mod share;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::future::BoxFuture;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::events::{Event, HostChange, What};
use crate::proto::common::v2::Host;
use crate::setting::{Invalid, positive};

pub use runner::Runner;

/// The `[liveness]` settings.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LivenessConfig {
    /// Off: no host is probed; every host's liveness is `UNKNOWN`.
    pub enabled: bool,
    /// How long one probe (connect and `Check`) may take.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Consecutive failed probes before a host is `UNREACHABLE`; a failed
    /// host is probed again at once until then.
    pub failures: u32,
    /// Probes per second per scheduler cluster, retries included; a full
    /// cycle over a cluster's hosts takes at least hosts / this.
    pub probes_per_second: u32,
    /// Shortest time between two cycles over one cluster (small clusters
    /// are not probed faster than this).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Probes in flight at once per cluster.
    pub concurrency: usize,
    /// Connections to hosts kept open between probes (per replica); hosts
    /// beyond it get a new connection for each probe.
    pub max_connections: usize,
    /// Only hosts whose address is in one of these blocks are probed;
    /// others stay `UNKNOWN`.
    pub networks: Vec<String>,
    /// Lifetime of the per-cluster prober lease in Redis: a dead prober
    /// is replaced within about this long.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
}

impl Default for LivenessConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            timeout: Duration::from_secs(1),
            failures: 3,
            probes_per_second: 500,
            interval: Duration::from_secs(1),
            concurrency: 256,
            max_connections: 2048,
            networks: vec!["0.0.0.0/0".into(), "::/0".into()],
            lease_ttl: Duration::from_secs(5),
        }
    }
}

impl LivenessConfig {
    /// Counts and durations above zero, parseable networks, a lease that
    /// outlives its renewal.
    pub fn validate(&self) -> Result<(), Invalid> {
        positive("timeout", self.timeout)?;
        positive("failures", self.failures)?;
        positive("probes_per_second", self.probes_per_second)?;
        positive("interval", self.interval)?;
        positive("concurrency", self.concurrency)?;
        if self.lease_ttl < Duration::from_secs(1) {
            return Err(Invalid::new("lease_ttl", "must be at least 1s"));
        }
        self.parsed_networks().map(|_| ())
    }

    /// The allowed networks; an address alone is a block of one.
    pub fn parsed_networks(&self) -> Result<Vec<IpNet>, Invalid> {
        self.networks
            .iter()
            .map(|entry| {
                entry
                    .parse::<IpNet>()
                    .or_else(|_| entry.parse::<std::net::IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        Invalid::new(
                            "networks",
                            format!("{entry:?} is not an address or CIDR block (127.0.0.0/8)"),
                        )
                    })
            })
            .collect()
    }
}

/// Whether a host answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    /// Its last probe was answered `SERVING`.
    Reachable,
    /// Its last `failures` probes failed.
    Unreachable,
    /// Not probed yet, failing fewer times than `failures` since it was
    /// first seen, outside `networks`, or probing is off.
    Unknown,
}

impl State {
    fn code(self) -> char {
        match self {
            State::Reachable => 'R',
            State::Unreachable => 'U',
            State::Unknown => '?',
        }
    }

    fn from_code(c: char) -> Option<State> {
        match c {
            'R' => Some(State::Reachable),
            'U' => Some(State::Unreachable),
            '?' => Some(State::Unknown),
            _ => None,
        }
    }
}

/// What is known of one host's liveness.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Record {
    pub state: State,
    /// Unix ms since when `state` holds.
    pub since_ms: i64,
    /// Unix ms of the last probe's end.
    pub last_probe_ms: i64,
    /// The last answered probe's round trip, in microseconds.
    pub latency_us: Option<u64>,
    /// Failed probes since the last answered one.
    pub consecutive_failures: u32,
}

impl Record {
    /// The record after a probe that ended at `now_ms`: `Ok(round trip)`
    /// or failed. Returns it and the host event the change makes, if any
    /// (becoming reachable from unknown makes none: every host does that
    /// once when probing starts).
    pub fn after(
        previous: Option<&Record>,
        outcome: Result<Duration, ()>,
        now_ms: i64,
        failures: u32,
    ) -> (Record, Option<HostChange>) {
        let was = previous.map_or(State::Unknown, |r| r.state);
        let since = |state| {
            if state == was {
                previous.map_or(now_ms, |r| r.since_ms)
            } else {
                now_ms
            }
        };
        match outcome {
            Ok(latency) => {
                let record = Record {
                    state: State::Reachable,
                    since_ms: since(State::Reachable),
                    last_probe_ms: now_ms,
                    latency_us: Some(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX)),
                    consecutive_failures: 0,
                };
                let change = (was == State::Unreachable).then_some(HostChange::Reachable);
                (record, change)
            }
            Err(()) => {
                let failed = previous.map_or(0, |r| r.consecutive_failures) + 1;
                let state = if failed >= failures {
                    State::Unreachable
                } else {
                    was
                };
                let record = Record {
                    state,
                    since_ms: since(state),
                    last_probe_ms: now_ms,
                    latency_us: previous.and_then(|r| r.latency_us),
                    consecutive_failures: failed,
                };
                let change = (state == State::Unreachable && was != State::Unreachable)
                    .then_some(HostChange::Unreachable);
                (record, change)
            }
        }
    }

    /// What another replica learns from a liveness event alone (the Redis
    /// hash fills in the rest).
    fn from_event(change: HostChange, at_ms: i64, failures: u32) -> Option<Record> {
        let (state, consecutive_failures) = match change {
            HostChange::Unreachable => (State::Unreachable, failures),
            HostChange::Reachable => (State::Reachable, 0),
            _ => return None,
        };
        Some(Record {
            state,
            since_ms: at_ms,
            last_probe_ms: at_ms,
            latency_us: None,
            consecutive_failures,
        })
    }

    /// The record in the Redis hash: `state|since|last probe|latency|failures`.
    fn encode(&self) -> String {
        format!(
            "{}|{}|{}|{}|{}",
            self.state.code(),
            self.since_ms,
            self.last_probe_ms,
            self.latency_us.map_or_else(String::new, |l| l.to_string()),
            self.consecutive_failures
        )
    }

    fn decode(s: &str) -> Option<Record> {
        let mut parts = s.split('|');
        let state = State::from_code(parts.next()?.chars().next()?)?;
        let since_ms = parts.next()?.parse().ok()?;
        let last_probe_ms = parts.next()?.parse().ok()?;
        let latency = parts.next()?;
        let latency_us = if latency.is_empty() {
            None
        } else {
            Some(latency.parse().ok()?)
        };
        let consecutive_failures = parts.next()?.parse().ok()?;
        Some(Record {
            state,
            since_ms,
            last_probe_ms,
            latency_us,
            consecutive_failures,
        })
    }
}

/// A host's record under `cluster_id`, else under any cluster.
fn lookup<'a>(
    hosts: &'a HashMap<u64, HashMap<String, Record>>,
    cluster_id: u64,
    host_id: &str,
) -> Option<&'a Record> {
    hosts
        .get(&cluster_id)
        .and_then(|c| c.get(host_id))
        .or_else(|| hosts.values().find_map(|c| c.get(host_id)))
}

/// Loads the hosts a cluster's schedulers list now (the gateway gives one
/// that goes through the cache).
pub type HostSource =
    Arc<dyn Fn(u64) -> BoxFuture<'static, Result<Vec<Arc<Host>>, String>> + Send + Sync>;

/// Every host's record on this replica, by cluster then host id. Cheap to
/// clone.
#[derive(Clone)]
pub struct Liveness {
    inner: Arc<Inner>,
}

struct Inner {
    enabled: bool,
    failures: u32,
    hosts: RwLock<HashMap<u64, HashMap<String, Record>>>,
}

impl Liveness {
    pub fn new(config: &LivenessConfig) -> Liveness {
        Liveness {
            inner: Arc::new(Inner {
                enabled: config.enabled,
                failures: config.failures,
                hosts: RwLock::default(),
            }),
        }
    }

    /// Whether hosts are probed at all.
    pub fn enabled(&self) -> bool {
        self.inner.enabled
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<u64, HashMap<String, Record>>> {
        self.inner
            .hosts
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<u64, HashMap<String, Record>>> {
        self.inner
            .hosts
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A host's record, if it has one: under `cluster_id`, else under
    /// any cluster (a scheduler that leaves the host's cluster id unset).
    pub fn get(&self, cluster_id: u64, host_id: &str) -> Option<Record> {
        lookup(&self.read(), cluster_id, host_id).copied()
    }

    /// A host's state (`Unknown` without a record).
    pub fn state(&self, cluster_id: u64, host_id: &str) -> State {
        self.get(cluster_id, host_id)
            .map_or(State::Unknown, |r| r.state)
    }

    /// Runs `f` with a lookup of states, the lock taken once (for filters
    /// and counts over a whole host list).
    pub fn with_states<T>(&self, f: impl FnOnce(&dyn Fn(u64, &str) -> State) -> T) -> T {
        let hosts = self.read();
        let state_of = |cluster: u64, id: &str| {
            lookup(&hosts, cluster, id).map_or(State::Unknown, |r| r.state)
        };
        f(&state_of)
    }

    /// Unreachable hosts of a cluster.
    pub fn unreachable(&self, cluster_id: u64) -> usize {
        self.read().get(&cluster_id).map_or(0, |c| {
            c.values().filter(|r| r.state == State::Unreachable).count()
        })
    }

    /// Applies a probe's outcome; the new record and the change it makes.
    fn observe(
        &self,
        cluster_id: u64,
        host_id: &str,
        outcome: Result<Duration, ()>,
        now_ms: i64,
    ) -> (Record, Option<HostChange>) {
        let mut hosts = self.write();
        let cluster = hosts.entry(cluster_id).or_default();
        let (record, change) =
            Record::after(cluster.get(host_id), outcome, now_ms, self.inner.failures);
        cluster.insert(host_id.to_owned(), record);
        (record, change)
    }

    /// Keeps only the records of `listed` hosts; returns the ids dropped.
    fn retain(&self, cluster_id: u64, listed: &std::collections::HashSet<&str>) -> Vec<String> {
        let mut hosts = self.write();
        let Some(cluster) = hosts.get_mut(&cluster_id) else {
            return Vec::new();
        };
        let gone: Vec<String> = cluster
            .keys()
            .filter(|id| !listed.contains(id.as_str()))
            .cloned()
            .collect();
        for id in &gone {
            cluster.remove(id);
        }
        gone
    }

    /// Takes another replica's records of a cluster (the Redis hash),
    /// keeping any of ours that is newer.
    fn mirror(&self, cluster_id: u64, records: HashMap<String, Record>) {
        let mut hosts = self.write();
        let ours = hosts.remove(&cluster_id).unwrap_or_default();
        let mut merged = records;
        for (id, record) in ours {
            if let Some(theirs) = merged.get(&id)
                && theirs.last_probe_ms < record.last_probe_ms
            {
                merged.insert(id, record);
            }
        }
        hosts.insert(cluster_id, merged);
    }

    /// Another replica's liveness event: its host's record, so a query
    /// made on receipt sees the new state.
    pub fn apply_remote(&self, event: &Event) {
        let What::Host { change, host, .. } = &event.what else {
            return;
        };
        let Some(record) = Record::from_event(*change, event.observed_at_ms, self.inner.failures)
        else {
            return;
        };
        let mut hosts = self.write();
        let cluster = hosts.entry(event.cluster_id).or_default();
        // An event replayed from the log may be older than what is known.
        if cluster
            .get(&host.id)
            .is_none_or(|known| known.last_probe_ms <= record.last_probe_ms)
        {
            cluster.insert(host.id.clone(), record);
        }
    }

    /// Hosts of a cluster with a record.
    pub fn recorded(&self, cluster_id: u64) -> usize {
        self.read().get(&cluster_id).map_or(0, HashMap::len)
    }

    /// Forgets the clusters no longer configured.
    fn keep_clusters(&self, clusters: &[u64]) {
        self.write().retain(|c, _| clusters.contains(c));
    }
}

/// The liveness metrics, declared once with their HELP text.
pub mod metric {
    pub const PROBES: &str = "dfgraph_liveness_probes_total";
    pub const FAILURES: &str = "dfgraph_liveness_probe_failures_total";
    pub const LATENCY: &str = "dfgraph_liveness_probe_seconds";
    pub const CYCLE: &str = "dfgraph_liveness_cycle_seconds";
    pub const UNREACHABLE: &str = "dfgraph_liveness_unreachable_hosts";
    pub const HOSTS: &str = "dfgraph_liveness_hosts";
    pub const LEADER: &str = "dfgraph_liveness_leader";
    pub const CONNECTIONS: &str = "dfgraph_liveness_connections";

    /// Gives `/metrics` the HELP line of each.
    pub fn describe() {
        metrics::describe_counter!(
            PROBES,
            "Health probes sent to hosts by this replica (cluster)."
        );
        metrics::describe_counter!(
            FAILURES,
            "Health probes that failed (cluster, reason: refused, timeout, not_serving, error)."
        );
        metrics::describe_histogram!(
            LATENCY,
            "Seconds an answered health probe took, connection included when one was opened (cluster)."
        );
        metrics::describe_gauge!(
            CYCLE,
            "Seconds the last full probe cycle over a cluster's hosts took (cluster)."
        );
        metrics::describe_gauge!(
            UNREACHABLE,
            "Hosts whose liveness is UNREACHABLE, as this replica knows it (cluster)."
        );
        metrics::describe_gauge!(
            HOSTS,
            "Hosts with a liveness record, as this replica knows it (cluster)."
        );
        metrics::describe_gauge!(
            LEADER,
            "1 while this replica probes the hosts of a scheduler cluster (cluster), else 0."
        );
        metrics::describe_gauge!(
            CONNECTIONS,
            "Connections to hosts this replica keeps open between probes."
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn after(prev: Option<&Record>, ok: bool, now: i64) -> (Record, Option<HostChange>) {
        let outcome = if ok {
            Ok(Duration::from_micros(250))
        } else {
            Err(())
        };
        Record::after(prev, outcome, now, 3)
    }

    #[test]
    fn unreachable_only_after_consecutive_failures_and_reachable_at_once() {
        let (r, change) = after(None, true, 10);
        assert_eq!((r.state, change), (State::Reachable, None));
        assert_eq!(r.latency_us, Some(250));
        let (r, change) = after(Some(&r), false, 20);
        assert_eq!(
            (r.state, r.consecutive_failures, change),
            (State::Reachable, 1, None)
        );
        assert_eq!(r.since_ms, 10);
        let (r, _) = after(Some(&r), false, 30);
        let (r, change) = after(Some(&r), false, 40);
        assert_eq!(r.state, State::Unreachable);
        assert_eq!(change, Some(HostChange::Unreachable));
        assert_eq!((r.since_ms, r.consecutive_failures), (40, 3));
        let (r, change) = after(Some(&r), false, 50);
        assert_eq!(
            (r.state, change, r.since_ms),
            (State::Unreachable, None, 40)
        );
        let (r, change) = after(Some(&r), true, 60);
        assert_eq!(change, Some(HostChange::Reachable));
        assert_eq!(
            (r.state, r.since_ms, r.consecutive_failures),
            (State::Reachable, 60, 0)
        );
        // One lost probe between answered ones flips nothing.
        let (r, _) = after(Some(&r), false, 70);
        let (r, change) = after(Some(&r), true, 80);
        assert_eq!((r.state, change, r.since_ms), (State::Reachable, None, 60));
    }

    #[test]
    fn records_survive_the_hash() {
        for record in [
            Record {
                state: State::Unreachable,
                since_ms: 1_700_000_000_000,
                last_probe_ms: 1_700_000_000_500,
                latency_us: None,
                consecutive_failures: 7,
            },
            Record {
                state: State::Reachable,
                since_ms: 1,
                last_probe_ms: 2,
                latency_us: Some(1234),
                consecutive_failures: 0,
            },
        ] {
            assert_eq!(Record::decode(&record.encode()), Some(record));
        }
        assert_eq!(Record::decode("X|1|2||0"), None);
        assert_eq!(Record::decode("R|1|2"), None);
    }

    #[test]
    fn networks_are_checked() {
        let mut config = LivenessConfig::default();
        assert!(config.validate().is_ok());
        config.networks = vec!["127.0.0.0/8".into(), "::1".into()];
        assert_eq!(config.parsed_networks().map(|n| n.len()), Ok(2));
        config.networks = vec!["10.0.0.0/33".into()];
        assert_eq!(config.validate().unwrap_err().setting, "networks");
        let config = LivenessConfig {
            failures: 0,
            ..LivenessConfig::default()
        };
        assert_eq!(config.validate().unwrap_err().setting, "failures");
    }
}
