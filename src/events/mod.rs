//! Live data: what changed on the schedulers, noticed by polling what
//! someone is interested in, diffed against the last snapshot, turned into
//! events that invalidate the cache and reach every replica's subscribers.
//!
//! Depends on `cache`, `cluster` and `redis`; knows nothing of GraphQL.

pub mod budget;
pub mod bus;
pub mod diff;
pub mod health;
pub mod interest;
pub mod lease;
pub mod log;
mod offload;
pub mod resume;
pub mod told;
pub mod watcher;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::breaker::CircuitState;
use crate::ids::PeerKey;
use crate::proto::common::v2::{Host, Peer, Task};
use crate::setting::{Invalid, positive};

pub use bus::Bus;
pub use interest::{Interest, InterestGuard, Watched};

/// How the watcher polls.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct WatchConfig {
    /// Off: no polling, subscriptions receive nothing but their first
    /// message.
    pub enabled: bool,
    /// Time between two polls of what is watched.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Host lists are polled this long after the last `hosts`/`hostStats`
    /// query, even with no subscriber.
    #[serde(with = "humantime_serde")]
    pub hosts_query_window: Duration,
    /// Lifetime of the per-cluster poller and health-recorder leases in
    /// Redis (and of a replica's published interest). A dead leader is
    /// replaced within about this long.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// Most peers plus tasks watched at once (per replica); subscriptions
    /// beyond it are refused.
    pub max_watched: usize,
    /// Concurrent StatPeer/StatTask calls of one poll.
    pub poll_concurrency: usize,
    /// The share of each scheduler the watcher's calls may take.
    pub budget: budget::BudgetConfig,
}

impl Default for WatchConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Duration::from_secs(1),
            hosts_query_window: Duration::from_secs(300),
            lease_ttl: Duration::from_secs(3),
            max_watched: 10_000,
            poll_concurrency: 32,
            budget: budget::BudgetConfig::default(),
        }
    }
}

impl WatchConfig {
    /// A poll interval a scheduler survives, a lease that outlives it.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.interval < Duration::from_millis(10) {
            return Err(Invalid::new("interval", "must be at least 10ms"));
        }
        if self.lease_ttl <= self.interval {
            return Err(Invalid::new(
                "lease_ttl",
                format!(
                    "{:?} must be longer than watch.interval ({:?}), \
                     or the lease lapses between two renewals",
                    self.lease_ttl, self.interval
                ),
            ));
        }
        positive("poll_concurrency", self.poll_concurrency)?;
        self.budget
            .validate(self.interval)
            .map_err(|message| Invalid::new("budget", message))
    }
}

/// How a host changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HostChange {
    Joined,
    Left,
    Updated,
    /// Its health service stopped answering (see `liveness`); the
    /// scheduler may still list it.
    Unreachable,
    /// Its health service answers again.
    Reachable,
}

/// One observed change.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub cluster_id: u64,
    /// Unix milliseconds when the watcher saw the change.
    pub observed_at_ms: i64,
    pub what: What,
    /// Where it is in the event log, once logged (see [`log`]).
    pub cursor: Option<log::EventCursor>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum What {
    /// A host joined, left (with its last known state) or changed.
    Host {
        change: HostChange,
        host: Arc<Host>,
        changed_fields: Vec<String>,
    },
    /// A watched peer's state changed, or it disappeared (`peer` is
    /// `None`). A `baseline` is the first observation after the watcher
    /// began watching it (no change implied; subscribers compare it with
    /// what they already told their client).
    Peer {
        key: PeerKey,
        peer: Option<Arc<Peer>>,
        from: Option<String>,
        baseline: bool,
    },
    /// A watched task changed or disappeared (`task` is `None`).
    Task {
        task_id: String,
        task: Option<Arc<Task>>,
        changed_fields: Vec<String>,
        baseline: bool,
    },
    /// A scheduler's reachability or circuit changed, as the replica that
    /// records its cluster's scheduler health sees it (see [`health`]).
    Scheduler {
        addr: std::net::SocketAddr,
        up: bool,
        circuit: CircuitState,
    },
}

impl Event {
    pub fn kind(&self) -> &'static str {
        match &self.what {
            What::Host { .. } => "host",
            What::Peer { .. } => "peer",
            What::Task { .. } => "task",
            What::Scheduler { .. } => "scheduler",
        }
    }

    /// When the change happened on the scheduler, where the entity says
    /// (peers and tasks carry `updated_at`; hosts do not).
    pub fn changed_at_ms(&self) -> Option<i64> {
        let stamp = match &self.what {
            What::Peer {
                peer: Some(peer),
                baseline: false,
                ..
            } => peer.updated_at.as_ref(),
            What::Task {
                task: Some(task),
                baseline: false,
                ..
            } => task.updated_at.as_ref(),
            _ => None,
        }?;
        Some(
            stamp
                .seconds
                .saturating_mul(1000)
                .saturating_add(i64::from(stamp.nanos) / 1_000_000),
        )
    }
}

/// The live-data metrics, declared once with their HELP text, so
/// dashboards and tests agree.
pub mod metric {
    pub const PUBLISHED: &str = "dfgraph_events_published_total";
    pub const DETECTION_LAG: &str = "dfgraph_event_detection_lag_seconds";
    pub const DELIVERY_LAG: &str = "dfgraph_subscription_delivery_lag_seconds";
    pub const LIVE_SUBSCRIPTIONS: &str = "dfgraph_subscriptions_live";
    pub const WATCHED: &str = "dfgraph_watched_entities";
    pub const LEADER: &str = "dfgraph_watch_leader";
    pub const POLLS: &str = "dfgraph_watch_polls_total";
    pub const DROPPED: &str = "dfgraph_events_dropped_total";
    pub const REPLAYED: &str = "dfgraph_events_replayed_total";
    pub const REPEATS_DROPPED: &str = "dfgraph_events_repeats_dropped_total";
    pub const LOG_COPIES: &str = "dfgraph_event_log_copies_total";
    pub const STRETCH: &str = "dfgraph_watch_stretch";
    pub const HOST_LIST_BYTES: &str = "dfgraph_watch_host_list_bytes_total";
    pub const HOSTS_DECODED: &str = "dfgraph_watch_hosts_decoded_total";
    pub const HOST_DIFF_SECONDS: &str = "dfgraph_watch_host_diff_seconds";

    /// One host-list poll: bytes read, entries decoded, and the time spent
    /// comparing them.
    pub(crate) fn record_host_poll(
        cluster_id: u64,
        bytes: usize,
        decoded: usize,
        compared_in: std::time::Duration,
    ) {
        let cluster = cluster_id.to_string();
        metrics::counter!(HOST_LIST_BYTES, "cluster" => cluster.clone()).increment(bytes as u64);
        metrics::counter!(HOSTS_DECODED, "cluster" => cluster.clone()).increment(decoded as u64);
        metrics::histogram!(HOST_DIFF_SECONDS, "cluster" => cluster)
            .record(compared_in.as_secs_f64());
    }

    /// Gives `/metrics` the HELP line of each.
    pub fn describe() {
        metrics::describe_counter!(PUBLISHED, "Events published, by kind.");
        metrics::describe_histogram!(
            DETECTION_LAG,
            "Seconds from a change on a scheduler to its event being published, by kind."
        );
        metrics::describe_histogram!(
            DELIVERY_LAG,
            "Seconds from an event being observed to the websocket write that carried its message (one sample per write and observation time)."
        );
        metrics::describe_gauge!(LIVE_SUBSCRIPTIONS, "Subscriptions running in this process.");
        metrics::describe_gauge!(
            WATCHED,
            "Peers and tasks this replica watches for subscribers."
        );
        metrics::describe_gauge!(
            LEADER,
            "1 while this replica holds the poller lease of a scheduler cluster (cluster), else 0."
        );
        metrics::describe_counter!(
            POLLS,
            "Watcher polls, by what was polled (hosts, peers, tasks)."
        );
        metrics::describe_counter!(
            DROPPED,
            "Events not sent to other replicas because the outbox toward Redis was full."
        );
        metrics::describe_counter!(
            REPLAYED,
            "Events this replica read from the event log after its bus listener resubscribed (missed while it could not hear)."
        );
        metrics::describe_counter!(
            REPEATS_DROPPED,
            "Host events not told to this replica's subscribers because they changed nothing they were told (a copy of a change that came another way)."
        );
        metrics::describe_counter!(
            LOG_COPIES,
            "Host events not appended to the event log because its last entry for that host already was that change (observed by two replicas); told under that entry's cursor."
        );
        metrics::describe_gauge!(
            STRETCH,
            "How many times the watch interval of peers and tasks is stretched to keep within the scheduler budget (cluster); 1 is not stretched."
        );
        metrics::describe_counter!(
            HOST_LIST_BYTES,
            "Bytes of ListHosts responses the watcher read (cluster)."
        );
        metrics::describe_counter!(
            HOSTS_DECODED,
            "Host entries the watcher decoded because their bytes changed (cluster)."
        );
        metrics::describe_histogram!(
            HOST_DIFF_SECONDS,
            "Seconds spent comparing one host-list poll with the last (cluster)."
        );
    }
}

/// The live-data side of one process: its bus and its interest, shared by
/// the schema (subscriptions register interest, queries touch it) and the
/// watcher.
#[derive(Clone)]
pub struct Events {
    pub bus: Bus,
    pub interest: Arc<Interest>,
    pub config: WatchConfig,
    live: Arc<AtomicUsize>,
}

/// Counts one live subscription while it exists.
pub struct LiveSubscription(Arc<AtomicUsize>);

impl Drop for LiveSubscription {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
        // Relative, so two drops racing on two threads cannot leave a
        // stale absolute value behind.
        metrics::gauge!(metric::LIVE_SUBSCRIPTIONS).decrement(1.0);
    }
}

impl Events {
    /// With `redis`, events cross replicas, the watcher coordinates
    /// through Redis and the event log is kept there.
    pub fn new(
        config: WatchConfig,
        log: log::EventLogConfig,
        cache: crate::cache::Cache,
        redis: Option<crate::redis::Redis>,
    ) -> Events {
        let log = log::EventLog::new(log, redis.clone());
        Events {
            bus: Bus::new(cache, redis, log, config.max_watched),
            interest: Interest::new(config.max_watched, config.hosts_query_window),
            config,
            live: Arc::default(),
        }
    }

    /// Registers a subscription as live until the returned value drops.
    pub fn live_subscription(&self) -> LiveSubscription {
        self.live.fetch_add(1, Ordering::AcqRel);
        metrics::gauge!(metric::LIVE_SUBSCRIPTIONS).increment(1.0);
        LiveSubscription(self.live.clone())
    }

    /// Subscriptions streaming now.
    pub fn live_subscriptions(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    /// Starts the watcher (unless disabled); it stops with `stop`. (The
    /// bus listens to other replicas from its creation.)
    pub fn start(
        &self,
        cluster: crate::cluster::ClusterClient,
        cache: crate::cache::Cache,
        stop: tokio_util::sync::CancellationToken,
    ) {
        self.bus.serve(cluster.clone());
        if self.config.enabled {
            let offload = offload::Offload::start(stop.clone())
                .inspect_err(|error| {
                    tracing::warn!(%error, "host lists will be polled on the request runtime")
                })
                .ok();
            tokio::spawn(
                health::Recorder {
                    config: self.config.clone(),
                    cluster: cluster.clone(),
                    bus: self.bus.clone(),
                    interest: self.interest.clone(),
                }
                .run(stop.clone()),
            );
            let watcher = watcher::Watcher {
                offload,
                config: self.config.clone(),
                // Its fail-overs must not use up the retries queries need.
                cluster: cluster.with_own_retry_budget(),
                cache,
                bus: self.bus.clone(),
                interest: self.interest.clone(),
            };
            tokio::spawn(watcher.run(stop));
        }
    }
}

/// For the watcher's tests: a cluster client pointed at every scheduler of
/// a simulated cluster, and the id of its first scheduler cluster.
#[cfg(test)]
pub(crate) fn client_for(sim: &dfgraph_sim::SimCluster) -> (crate::cluster::ClusterClient, u64) {
    client_with(sim, &crate::config::Config::default())
}

/// [`client_for`] with the client settings of `config`.
#[cfg(test)]
pub(crate) fn client_with(
    sim: &dfgraph_sim::SimCluster,
    config: &crate::config::Config,
) -> (crate::cluster::ClusterClient, u64) {
    let client = crate::gateway::cluster_client(config).expect("a valid config");
    let pairs: Vec<_> = sim
        .schedulers()
        .iter()
        .map(|s| (s.cluster_id, s.addr))
        .collect();
    let cluster_id = pairs[0].0;
    client.expect_clusters([cluster_id]);
    client.set_schedulers(&pairs).expect("schedulers set");
    (client, cluster_id)
}
