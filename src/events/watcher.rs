//! The watcher: every `watch.interval`, polls what is wanted on the
//! clusters this replica leads (host lists, watched peers and tasks),
//! diffs each answer against the last one, invalidates what changed and
//! publishes the changes. It idles when nothing is wanted. Scheduler
//! health is watched apart (see [`super::health`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::future::join_all;
use futures::{FutureExt, StreamExt};
use tokio_util::sync::CancellationToken;

use super::budget::{Rotation, pick};
use super::diff::{HostSnapshot, task_fields};
use super::interest::{Wanted, share};
use super::offload::Offload;
use super::{Bus, Event, Interest, WatchConfig, Watched, What, bus, lease, metric};
use crate::cache::{Cache, CacheKey, Replacement, ReplacementTicket, keys};
use crate::clock::{Clock, SystemClock};
use crate::cluster::{ClusterClient, ClusterError, HostList};
use crate::deadline::Deadline;
use crate::ids::PeerKey;
use crate::proto::common::v2::{Peer, Task};

/// The last observations of one cluster.
#[derive(Default)]
struct ClusterState {
    hosts: Option<Box<HostSnapshot>>,
    peers: HashMap<PeerKey, Arc<Peer>>,
    tasks: HashMap<String, Arc<Task>>,
    /// Watched entities already reported gone (reported once).
    gone: HashSet<Watched>,
    /// Which watched peers and tasks are next when not all fit the budget.
    rotation: Rotation,
}

/// The peers and tasks `wanted` watches on `cluster_id`.
fn watched_on(wanted: &Wanted, cluster_id: u64) -> (Vec<PeerKey>, Vec<String>) {
    let (mut peers, mut tasks) = (Vec::new(), Vec::new());
    for what in wanted
        .watched
        .iter()
        .filter(|w| w.cluster_id() == cluster_id)
    {
        match what {
            Watched::Peer { key, .. } => peers.push(key.clone()),
            Watched::Task { task_id, .. } => tasks.push(task_id.clone()),
        }
    }
    (peers, tasks)
}

/// Logs the clusters this replica stopped and started leading.
fn note_lease_changes(before: &BTreeSet<u64>, now: &BTreeSet<u64>) {
    for lost in before.difference(now) {
        tracing::info!(
            cluster = lost,
            "no longer polling this cluster (another replica leads)"
        );
    }
    for won in now.difference(before) {
        tracing::info!(cluster = won, "polling this cluster for every replica");
    }
}

impl ClusterState {
    /// Forgets the peers and tasks no longer watched, so a watch taken
    /// again starts with a fresh baseline.
    fn forget_unwatched(&mut self, peers: &[PeerKey], tasks: &[String]) {
        let wanted_peers: HashSet<&PeerKey> = peers.iter().collect();
        self.peers.retain(|k, _| wanted_peers.contains(k));
        let wanted_tasks: HashSet<&String> = tasks.iter().collect();
        self.tasks.retain(|t, _| wanted_tasks.contains(t));
        self.gone.retain(|w| match w {
            Watched::Peer { key, .. } => wanted_peers.contains(key),
            Watched::Task { task_id, .. } => wanted_tasks.contains(task_id),
        });
    }
}

/// An event on `cluster_id`, observed now.
fn event(cluster_id: u64, what: What) -> Event {
    Event {
        cluster_id,
        observed_at_ms: SystemClock.now_ms_signed(),
        what,
        cursor: None,
    }
}

/// Polls, diffs and publishes; see the module doc.
pub struct Watcher {
    pub config: WatchConfig,
    pub cluster: ClusterClient,
    pub cache: Cache,
    pub bus: Bus,
    pub interest: Arc<Interest>,
    /// The thread host lists are polled and diffed on; `None` polls them
    /// on the caller's runtime.
    pub(crate) offload: Option<Offload>,
}

#[derive(Default)]
struct State {
    clusters: HashMap<u64, ClusterState>,
    /// Leases held in Redis.
    held: BTreeSet<u64>,
    /// Warned that Redis is unusable (once per outage).
    redis_warned: bool,
    /// What every replica wanted at the last coordination, and until when
    /// the leases then taken are surely still this replica's: a failed
    /// coordination within that time keeps polling them for everyone.
    last_shared: Option<(Wanted, std::time::Instant)>,
    /// The event listener's subscription count at the last tick.
    seen_subscriptions: u64,
    /// Other replicas' events may have been missed (Redis was unusable, or
    /// the listener resubscribed): poll this replica's own interest once
    /// when they reach it again, so its subscribers catch up.
    resync_due: bool,
}

/// What one poll of a cluster found.
struct Polled {
    cluster_id: u64,
    state: ClusterState,
    events: Vec<Event>,
    /// The host list just fetched, when it differs from the last one.
    host_list: Option<(Replacement<HostList>, ReplacementTicket)>,
}

/// Who hears about what one poll of a cluster finds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reach {
    /// This replica holds the cluster's lease: it polls what every replica
    /// wants, and its events go to all of them.
    Everywhere,
    /// This replica polls what it wants itself (no Redis, or Redis
    /// unusable); what it sees stays here.
    Local,
    /// Another replica leads, but its events do not reach this one (or may
    /// have been missed): this replica polls its own peers and tasks there,
    /// not the host lists (the leader's host events cannot be replayed, and
    /// a second diff of them would repeat what was heard).
    OwnWatches,
}

/// What one tick polls.
struct Plan {
    /// What every replica wants (this one's alone without coordination).
    wanted: Wanted,
    polls: BTreeMap<u64, Reach>,
}

/// Cache invalidations of one cluster's poll sent to Redis at once.
const INVALIDATE_CONCURRENCY: usize = 32;

impl Watcher {
    pub async fn run(self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.config.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut state = State::default();
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            self.poll_once(&mut state).await;
        }
        self.release(&mut state, None).await;
    }

    async fn poll_once(&self, state: &mut State) {
        let local = self.interest.local();
        if local.is_empty() {
            if !state.clusters.is_empty() || !state.held.is_empty() {
                self.idle(state).await;
            }
            return;
        }
        let plan = self.coordinate(state, &local).await;
        state.clusters.retain(|c, _| plan.polls.contains_key(c));
        for cluster_id in self.cluster.cluster_ids() {
            let leads = plan.polls.get(&cluster_id) == Some(&Reach::Everywhere);
            metrics::gauge!(metric::LEADER, "cluster" => cluster_id.to_string()).set(if leads {
                1.0
            } else {
                0.0
            });
        }
        let mut jobs = Vec::new();
        let mut states: HashMap<u64, ClusterState> = std::mem::take(&mut state.clusters);
        for (&cluster_id, &reach) in &plan.polls {
            let (wanted, hosts) = match reach {
                Reach::Everywhere => (&plan.wanted, plan.wanted.hosts),
                Reach::Local => (&local, local.hosts),
                Reach::OwnWatches => (&local, false),
            };
            let (peers, tasks) = watched_on(wanted, cluster_id);
            let cluster_state = states.remove(&cluster_id).unwrap_or_default();
            // Each cluster's findings go out as soon as they are in its
            // cache entries: one cluster's events do not wait for another
            // cluster's list to be fetched and decoded.
            jobs.push(async move {
                let mut polled = self
                    .poll_cluster(cluster_id, cluster_state, hosts, peers, tasks)
                    .await;
                self.update_cache(&mut polled).await;
                self.publish(reach, std::mem::take(&mut polled.events))
                    .await;
                polled
            });
        }
        // A poll may take longer than the lease (a blackholed scheduler, a
        // large watch set, a slow Redis): the leases are renewed meanwhile,
        // or another replica would start polling the same clusters.
        let held: Vec<u64> = state.held.iter().copied().collect();
        let polled = tokio::select! {
            polled = join_all(jobs) => polled,
            never = self.keep_leases(&held) => match never {},
        };
        for polled in polled {
            state.clusters.insert(polled.cluster_id, polled.state);
        }
    }

    /// Brings the cache up to date with one cluster's poll before anyone
    /// hears of its changes, so a query made on receipt of an event sees
    /// the new data: a changed host list is replaced by the one just
    /// fetched (not reloaded by the next query); other stale entries are
    /// invalidated, each once however many of its parts changed.
    async fn update_cache(&self, polled: &mut Polled) {
        let replacement = polled.host_list.take();
        let replaced = replacement.as_ref().map(|(r, _)| r.key().clone());
        let stale: HashSet<CacheKey> = polled
            .events
            .iter()
            .filter(|e| !is_baseline(e))
            .flat_map(bus::affected_keys)
            .filter(|key| Some(key) != replaced.as_ref())
            .collect();
        let updates = replacement
            .into_iter()
            .map(|(r, fetched)| {
                let cache = self.cache.clone();
                async move { cache.replace(r, &fetched).await }.boxed()
            })
            .chain(stale.into_iter().map(|key| {
                let cache = self.cache.clone();
                async move { cache.invalidate(&key).await }.boxed()
            }))
            .collect::<Vec<BoxFuture<'static, ()>>>();
        futures::stream::iter(updates)
            .buffer_unordered(INVALIDATE_CONCURRENCY)
            .collect::<()>()
            .await;
    }

    /// Nothing is watched any more: gives up the leases and forgets every
    /// observation.
    async fn idle(&self, state: &mut State) {
        tracing::debug!("nothing watched: watcher idles");
        self.release(state, None).await;
        state.clusters.clear();
        // Nobody here listens: nothing to catch up on later.
        state.resync_due = false;
        state.seen_subscriptions = 0;
        state.last_shared = None;
        for cluster_id in self.cluster.cluster_ids() {
            metrics::gauge!(metric::LEADER, "cluster" => cluster_id.to_string()).set(0.0);
        }
    }

    /// Publishes one cluster's events to every replica or this one alone.
    async fn publish(&self, reach: Reach, events: Vec<Event>) {
        for (n, event) in events.into_iter().enumerate() {
            match reach {
                Reach::Everywhere => self.bus.publish(event),
                Reach::Local | Reach::OwnWatches => self.bus.publish_local(event),
            }
            // Let subscribers drain a large burst (a new leader's
            // baselines) instead of overrunning the broadcast buffer.
            if n % 256 == 255 {
                tokio::task::yield_now().await;
            }
        }
    }

    /// Renews `held` every interval, forever (raced against a poll).
    async fn keep_leases(&self, held: &[u64]) -> std::convert::Infallible {
        loop {
            tokio::time::sleep(self.config.interval).await;
            if held.is_empty() {
                continue;
            }
            if let Some(redis) = self.bus.redis() {
                let renewed = lease::acquire(
                    redis,
                    keys::watch_lease,
                    held,
                    self.bus.instance(),
                    self.config.lease_ttl,
                )
                .await;
                if let Err(error) = renewed {
                    tracing::debug!(%error, "lease renewal during a long poll failed");
                }
            }
        }
    }

    /// Shares interest and takes leases in Redis: what to poll, on which
    /// clusters, and who hears of it. Without Redis (or while it fails)
    /// this replica polls what it wants itself; while other replicas'
    /// events do not reach it, it polls itself what it wants on the
    /// clusters it does not lead.
    async fn coordinate(&self, state: &mut State, local: &Wanted) -> Plan {
        let Some(redis) = self.bus.redis() else {
            return self.on_its_own(local);
        };
        let started = std::time::Instant::now();
        let shared = async {
            let wanted = share(redis, local, self.config.lease_ttl).await?;
            let clusters: Vec<u64> = self.clusters_of(&wanted).into_iter().collect();
            let held = lease::acquire(
                redis,
                keys::watch_lease,
                &clusters,
                self.bus.instance(),
                self.config.lease_ttl,
            )
            .await?;
            Ok::<_, crate::redis::RedisError>((wanted, held))
        };
        let (wanted, held) = match shared.await {
            Ok(shared) => shared,
            Err(error) => return self.uncoordinated(state, local, &error.to_string()),
        };
        // The leases' lifetime counts from before the calls that took them.
        state.last_shared = Some((wanted.clone(), started + self.config.lease_ttl));
        if state.redis_warned {
            tracing::info!("watcher coordinates through Redis again");
            state.redis_warned = false;
        }
        let held: BTreeSet<u64> = held.into_iter().collect();
        note_lease_changes(&state.held, &held);
        state.held = held.clone();

        let (listening, subscriptions) = self.bus.listening();
        if state.seen_subscriptions != 0 && subscriptions != state.seen_subscriptions {
            state.resync_due = true;
        }
        state.seen_subscriptions = subscriptions;
        // Whatever this replica wants on clusters another replica leads
        // reaches it only through the listener: poll it here while the
        // listener is down, and once more when it is back (covering what
        // was published meanwhile).
        let own = if !listening {
            state.resync_due = true;
            true
        } else {
            std::mem::take(&mut state.resync_due)
        };
        let mut polls: BTreeMap<u64, Reach> =
            held.iter().map(|&c| (c, Reach::Everywhere)).collect();
        if own {
            for what in &local.watched {
                polls.entry(what.cluster_id()).or_insert(Reach::OwnWatches);
            }
        }
        Plan { wanted, polls }
    }

    /// The clusters `wanted` needs polled.
    fn clusters_of(&self, wanted: &Wanted) -> BTreeSet<u64> {
        let mut clusters: BTreeSet<u64> = wanted.watched.iter().map(Watched::cluster_id).collect();
        if wanted.hosts {
            clusters.extend(self.cluster.cluster_ids());
        }
        clusters
    }

    /// This replica polls what it wants itself, for itself.
    fn on_its_own(&self, wanted: &Wanted) -> Plan {
        Plan {
            polls: self
                .clusters_of(wanted)
                .into_iter()
                .map(|c| (c, Reach::Local))
                .collect(),
            wanted: wanted.clone(),
        }
    }

    /// The plan while coordination through Redis fails.
    fn uncoordinated(&self, state: &mut State, local: &Wanted, error: &str) -> Plan {
        if !state.redis_warned {
            tracing::warn!(%error, "watcher cannot coordinate through Redis; this replica polls for itself until it can");
            state.redis_warned = true;
        }
        state.resync_due = true;
        // Leases taken at the last coordination are still ours
        // until they lapse: keep polling those clusters for every
        // replica (one Redis hiccup is not a hand-over), the rest
        // for this replica alone.
        if let Some((wanted, until)) = &state.last_shared
            && std::time::Instant::now() < *until
        {
            let mut plan = self.on_its_own(local);
            for &cluster_id in &state.held {
                plan.polls.insert(cluster_id, Reach::Everywhere);
            }
            plan.wanted = wanted.clone();
            return plan;
        }
        state.held.clear();
        state.last_shared = None;
        self.on_its_own(local)
    }

    /// Gives up held leases (all, or those outside `keep`).
    async fn release(&self, state: &mut State, keep: Option<&BTreeSet<u64>>) {
        let drop: Vec<u64> = state
            .held
            .iter()
            .filter(|c| keep.is_none_or(|k| !k.contains(c)))
            .copied()
            .collect();
        if drop.is_empty() {
            return;
        }
        if let Some(redis) = self.bus.redis()
            && let Err(error) =
                lease::release(redis, keys::watch_lease, &drop, self.bus.instance()).await
        {
            tracing::debug!(%error, "lease not released; it lapses by itself");
        }
        for c in drop {
            state.held.remove(&c);
        }
    }

    /// Polls what is wanted on one cluster and returns its new observations
    /// with the events that differ from the last ones.
    async fn poll_cluster(
        &self,
        cluster_id: u64,
        mut state: ClusterState,
        hosts: bool,
        peers: Vec<PeerKey>,
        tasks: Vec<String>,
    ) -> Polled {
        let mut events = Vec::new();
        let mut host_list = None;
        if hosts {
            host_list = self.poll_hosts(cluster_id, &mut state, &mut events).await;
        } else {
            state.hosts = None;
        }
        state.forget_unwatched(&peers, &tasks);
        let (peers, tasks) = self.within_budget(cluster_id, &mut state, hosts, peers, tasks);
        if !peers.is_empty() {
            metrics::counter!(metric::POLLS, "what" => "peers").increment(peers.len() as u64);
        }
        self.poll_peers(cluster_id, &mut state, peers, &mut events)
            .await;
        if !tasks.is_empty() {
            metrics::counter!(metric::POLLS, "what" => "tasks").increment(tasks.len() as u64);
        }
        self.poll_tasks(cluster_id, &mut state, tasks, &mut events)
            .await;
        Polled {
            cluster_id,
            state,
            events,
            host_list,
        }
    }

    /// This interval's share of the watched peers and tasks of a cluster:
    /// all of them when each scheduler's budget allows, else an even slice
    /// in rotation (see [`super::budget`]), reported in `/metrics` and
    /// warned about once per stretch.
    fn within_budget(
        &self,
        cluster_id: u64,
        state: &mut ClusterState,
        hosts: bool,
        peers: Vec<PeerKey>,
        tasks: Vec<String>,
    ) -> (Vec<PeerKey>, Vec<String>) {
        let Ok(view) = self.cluster.cluster(cluster_id) else {
            // No schedulers: every call fails fast, costing none.
            return (peers, tasks);
        };
        let mut groups: BTreeMap<Option<SocketAddr>, Vec<Watched>> = BTreeMap::new();
        let owned = peers
            .into_iter()
            .map(|key| Watched::Peer { cluster_id, key })
            .chain(tasks.into_iter().map(|task_id| Watched::Task {
                cluster_id,
                task_id,
            }));
        for what in owned {
            let task_id = match &what {
                Watched::Peer { key, .. } => &key.task_id,
                Watched::Task { task_id, .. } => task_id,
            };
            // An id the ring refuses is refused locally too: no call.
            let owner = view.ring.owner(task_id).ok();
            groups.entry(owner).or_default().push(what);
        }
        // The health recorder's probe (one call per scheduler per interval)
        // comes out of the same budget wherever it runs.
        let health = self.interest.wants_health() || self.bus.log().is_some();
        let fixed = usize::from(hosts) + usize::from(health);
        let allowed = self.config.budget.calls_per_interval(self.config.interval);
        let picked = pick(&mut state.rotation, allowed, fixed, groups);
        metrics::gauge!(metric::STRETCH, "cluster" => cluster_id.to_string()).set(picked.stretch);
        let stretched = picked.stretch > 1.0;
        if stretched && !state.rotation.stretched {
            tracing::warn!(
                cluster_id,
                needed = picked.demand,
                allowed,
                every = ?self.config.interval.mul_f64(picked.stretch),
                "watched peers and tasks need more calls per interval than one scheduler's \
                 budget (watch.budget) allows: each is polled less often"
            );
        } else if !stretched && state.rotation.stretched {
            tracing::info!(cluster_id, "watched peers and tasks fit the budget again");
        }
        state.rotation.stretched = stretched;
        let (mut peers, mut tasks) = (Vec::new(), Vec::new());
        for what in picked.chosen {
            match what {
                Watched::Peer { key, .. } => peers.push(key),
                Watched::Task { task_id, .. } => tasks.push(task_id),
            }
        }
        (peers, tasks)
    }

    /// Lists the cluster's hosts and reports each host that joined, left or
    /// changed; a failed poll keeps the last snapshot. The list is read as
    /// it arrives, undecoded, and only the hosts whose bytes changed are
    /// decoded and compared (see [`HostSnapshot`]). The call, the
    /// comparison and the cache entry of a changed list are made on the
    /// watcher's own thread (see [`Offload`]). Returns the new list, to
    /// replace the cached one, when it differs from what was known.
    async fn poll_hosts(
        &self,
        cluster_id: u64,
        state: &mut ClusterState,
        events: &mut Vec<Event>,
    ) -> Option<(Replacement<HostList>, ReplacementTicket)> {
        let event = |what| event(cluster_id, what);
        metrics::counter!(metric::POLLS, "what" => "hosts").increment(1);
        let client = self.cluster.clone();
        let cache = self.cache.clone();
        let previous = state.hosts.take();
        let fetched = self.cache.replacement_ticket();
        let poll = async move {
            let first = previous.is_none();
            let mut snapshot = previous.unwrap_or_default();
            // The answer's bytes are kept only for L2, which takes a
            // changed list as received rather than encoded again.
            snapshot.receive_as(cluster_id, cache.keeps_encoded());
            let receiving = std::sync::Mutex::new(snapshot);
            let received = client
                .receive_hosts(cluster_id, Deadline::NONE, &receiving)
                .await;
            let mut snapshot = receiving
                .into_inner()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let received = match received {
                Ok(received) => received,
                // What a failed answer listed is forgotten at the next.
                Err(error) => return Err((error.to_string(), (!first).then_some(snapshot))),
            };
            let polled = snapshot.finish(first);
            received
                .from
                .announced
                .note(received.from.addr, cluster_id, &polled.carried);
            metric::record_host_poll(cluster_id, received.len, polled.decoded, polled.compared_in);
            // A first sight has nothing to compare with: the cached list
            // (if any) stays until something changes. A changed list goes
            // to L2 as the bytes just received when its hosts carry the
            // served cluster id (as they do unless the scheduler is
            // misconfigured); otherwise as the stamped list, encoded.
            let replacement = (!polled.diffs.is_empty()).then(|| {
                let key = CacheKey::hosts(cluster_id);
                let as_received = snapshot
                    .received()
                    .filter(|_| polled.carried.iter().all(|&id| id == cluster_id));
                cache.replacement_received(key, polled.list, received.len, as_received)
            });
            Ok((snapshot, polled.diffs, replacement))
        };
        let polled = match &self.offload {
            Some(offload) => offload
                .run(poll)
                .await
                .unwrap_or_else(|stopped| Err((stopped.to_string(), None))),
            None => poll.await,
        };
        match polled {
            Ok((new, diffs, replacement)) => {
                for diff in diffs {
                    events.push(event(What::Host {
                        change: diff.change,
                        host: diff.host,
                        changed_fields: diff.changed_fields,
                    }));
                }
                state.hosts = Some(new);
                replacement.map(|r| (r, fetched))
            }
            Err((error, previous)) => {
                tracing::debug!(cluster_id, %error, "host list poll failed; keeping the last snapshot");
                state.hosts = previous;
                None
            }
        }
    }

    /// Asks for each watched peer and reports its first sight, each state
    /// change, and (once) its disappearance.
    async fn poll_peers(
        &self,
        cluster_id: u64,
        state: &mut ClusterState,
        peers: Vec<PeerKey>,
        events: &mut Vec<Event>,
    ) {
        let event = |what| event(cluster_id, what);
        let concurrency = self.config.poll_concurrency;
        let mut answers = futures::stream::iter(peers)
            .map(|key| async move {
                let answer = self
                    .cluster
                    .stat_peer(cluster_id, &key, Deadline::NONE)
                    .await;
                (key, answer)
            })
            .buffer_unordered(concurrency);
        while let Some((key, answer)) = answers.next().await {
            let watched = Watched::Peer {
                cluster_id,
                key: key.clone(),
            };
            match answer {
                Ok(peer) => {
                    state.gone.remove(&watched);
                    let peer = Arc::new(peer);
                    match state.peers.insert(key.clone(), peer.clone()) {
                        None => events.push(event(What::Peer {
                            key,
                            peer: Some(peer),
                            from: None,
                            baseline: true,
                        })),
                        Some(before) if before.state != peer.state => {
                            events.push(event(What::Peer {
                                key,
                                peer: Some(peer),
                                from: Some(before.state.clone()),
                                baseline: false,
                            }))
                        }
                        Some(_) => {}
                    }
                }
                Err(ClusterError::NotFound) => {
                    let before = state.peers.remove(&key);
                    if state.gone.insert(watched) {
                        events.push(event(What::Peer {
                            key,
                            peer: None,
                            from: before.map(|p| p.state.clone()),
                            baseline: false,
                        }));
                    }
                }
                Err(error) => tracing::debug!(cluster_id, %error, "peer poll failed"),
            }
        }
    }

    /// Asks for each watched task and reports its first sight, each change
    /// of its fields, and (once) its disappearance.
    async fn poll_tasks(
        &self,
        cluster_id: u64,
        state: &mut ClusterState,
        tasks: Vec<String>,
        events: &mut Vec<Event>,
    ) {
        let event = |what| event(cluster_id, what);
        let concurrency = self.config.poll_concurrency;
        let mut answers = futures::stream::iter(tasks)
            .map(|task_id| async move {
                let answer = self
                    .cluster
                    .stat_task(cluster_id, &task_id, Deadline::NONE)
                    .await;
                (task_id, answer)
            })
            .buffer_unordered(concurrency);
        while let Some((task_id, answer)) = answers.next().await {
            let watched = Watched::Task {
                cluster_id,
                task_id: task_id.clone(),
            };
            match answer {
                Ok(task) => {
                    state.gone.remove(&watched);
                    let task = Arc::new(task);
                    match state.tasks.insert(task_id.clone(), task.clone()) {
                        None => events.push(event(What::Task {
                            task_id,
                            task: Some(task),
                            changed_fields: Vec::new(),
                            baseline: true,
                        })),
                        Some(before) => {
                            let changed_fields = task_fields(&before, &task);
                            if !changed_fields.is_empty() {
                                events.push(event(What::Task {
                                    task_id,
                                    task: Some(task),
                                    changed_fields,
                                    baseline: false,
                                }));
                            }
                        }
                    }
                }
                Err(ClusterError::NotFound) => {
                    state.tasks.remove(&task_id);
                    if state.gone.insert(watched) {
                        events.push(event(What::Task {
                            task_id,
                            task: None,
                            changed_fields: Vec::new(),
                            baseline: false,
                        }));
                    }
                }
                Err(error) => tracing::debug!(cluster_id, %error, "task poll failed"),
            }
        }
    }
}

fn is_baseline(event: &Event) -> bool {
    matches!(
        event.what,
        What::Peer { baseline: true, .. } | What::Task { baseline: true, .. }
    )
}
