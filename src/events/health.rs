//! Scheduler health over time: who probes the schedulers and tells their
//! reachability and circuit transitions. With the event log on (and
//! `event_log.scheduler_health`, the default), one
//! replica per scheduler cluster (the holder of its health lease,
//! [`keys::health_lease`]) probes its schedulers every watch interval,
//! whether anyone subscribes or not, publishes each transition to every
//! replica (so it is logged once) and keeps the cluster's current state in
//! a Redis hash ([`keys::scheduler_health`]) for the others to start from;
//! without Redis this replica does it all and its ring is the log.
//! Otherwise each replica probes only while its own `clusterHealth`
//! subscribers listen, and what it sees stays with it.
//!
//! The circuits told are the recording replica's own breakers: each
//! replica has its own, and the log keeps one view, the lease holder's.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use tokio_util::sync::CancellationToken;

use super::{Bus, Event, Interest, WatchConfig, What, lease};
use crate::breaker::CircuitState;
use crate::cache::keys;
use crate::clock::{Clock, SystemClock};
use crate::cluster::{ClusterClient, SchedulerHandle};
use crate::redis::Redis;

/// A scheduler's state as told, and since when (unix ms) it has been so.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SchedulerState {
    pub up: bool,
    pub circuit: CircuitState,
    /// When the recorder saw it become so (0: unknown, this replica's own
    /// view read just now).
    pub since_ms: i64,
}

impl SchedulerState {
    /// This replica's own view of `scheduler` now.
    pub fn own(scheduler: &SchedulerHandle) -> SchedulerState {
        let health = scheduler.health_snapshot();
        SchedulerState {
            up: health.is_up(),
            circuit: health.circuit,
            since_ms: 0,
        }
    }

    pub fn same(&self, up: bool, circuit: CircuitState) -> bool {
        self.up == up && self.circuit == circuit
    }

    /// The hash field's value: `up|circuit|since_ms`.
    fn encode(&self) -> String {
        let circuit = match self.circuit {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half_open",
        };
        format!("{}|{circuit}|{}", u8::from(self.up), self.since_ms)
    }

    fn decode(text: &str) -> Option<SchedulerState> {
        let mut parts = text.split('|');
        let up = match parts.next()? {
            "1" => true,
            "0" => false,
            _ => return None,
        };
        let circuit = match parts.next()? {
            "closed" => CircuitState::Closed,
            "open" => CircuitState::Open,
            "half_open" => CircuitState::HalfOpen,
            _ => return None,
        };
        let since_ms = parts.next()?.parse().ok()?;
        parts.next().is_none().then_some(SchedulerState {
            up,
            circuit,
            since_ms,
        })
    }
}

/// How long a cluster's hash outlives its last write: a new recorder
/// takes over within a lease, so this only clears what nobody records.
const HASH_TTL: Duration = Duration::from_secs(600);

/// The recorded state of the schedulers of `clusters` (what the lease
/// holders last wrote); empty for a cluster whose hash cannot be read.
async fn recorded(redis: &Redis, clusters: &[u64]) -> HashMap<SocketAddr, SchedulerState> {
    let mut states = HashMap::new();
    for &cluster in clusters {
        let mut hgetall = redis::cmd("HGETALL");
        hgetall.arg(keys::scheduler_health(cluster));
        match redis
            .cmd::<HashMap<String, String>>("scheduler_health_read", &hgetall)
            .await
        {
            Ok(fields) => states.extend(fields.into_iter().filter_map(|(addr, value)| {
                Some((addr.parse().ok()?, SchedulerState::decode(&value)?))
            })),
            Err(error) => {
                tracing::debug!(cluster, %error, "recorded scheduler health not read");
            }
        }
    }
    states
}

/// What `clusterHealth` starts from for each scheduler: the state its
/// cluster's recorder last wrote when the log is on and Redis answers,
/// else this replica's own view.
pub async fn current(
    bus: &Bus,
    schedulers: &[Arc<SchedulerHandle>],
) -> HashMap<SocketAddr, SchedulerState> {
    let mut states = match (bus.log(), bus.redis()) {
        (Some(log), Some(redis)) if log.records_scheduler_health() => {
            let clusters: BTreeSet<u64> = schedulers.iter().map(|s| s.cluster_id).collect();
            let clusters: Vec<u64> = clusters.into_iter().collect();
            recorded(redis, &clusters).await
        }
        _ => HashMap::new(),
    };
    for scheduler in schedulers {
        states
            .entry(scheduler.addr)
            .or_insert_with(|| SchedulerState::own(scheduler));
    }
    states
}

/// Probes and tells; see the module doc.
pub struct Recorder {
    pub config: WatchConfig,
    pub cluster: ClusterClient,
    pub bus: Bus,
    pub interest: Arc<Interest>,
}

#[derive(Default)]
struct State {
    /// The last state told of each scheduler probed here.
    told: HashMap<SocketAddr, SchedulerState>,
    /// Health leases held in Redis.
    held: BTreeSet<u64>,
    /// Warned that the leases cannot be taken (once per outage).
    redis_warned: bool,
}

/// Who hears of what a tick found.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reach {
    /// Every replica, and the log.
    Everywhere,
    /// This replica alone (the log off, or Redis not answering).
    Local,
}

impl Recorder {
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
            self.tick(&mut state).await;
        }
        self.release(&mut state).await;
    }

    async fn tick(&self, state: &mut State) {
        let clusters = self.cluster.cluster_ids();
        let recording = self
            .bus
            .log()
            .is_some_and(|log| log.records_scheduler_health());
        let (mine, reach) = if !recording {
            if !self.interest.wants_health() {
                state.told.clear();
                return;
            }
            (clusters, Reach::Local)
        } else {
            match self.bus.redis() {
                // This process is the only replica: its ring is the log.
                None => (clusters, Reach::Everywhere),
                Some(redis) => self.lease(redis, state, clusters).await,
            }
        };
        let schedulers: Vec<Arc<SchedulerHandle>> = self
            .cluster
            .schedulers()
            .into_iter()
            .filter(|s| mine.contains(&s.cluster_id))
            .collect();
        // A probe may not outlast the tick: the next one would wait on it.
        let timeout = self.config.interval.min(Duration::from_secs(1));
        join_all(schedulers.iter().map(|s| s.probe(timeout))).await;
        let now = SystemClock.now_ms_signed();
        for scheduler in &schedulers {
            let own = SchedulerState::own(scheduler);
            if let Some(before) = state.told.get(&scheduler.addr)
                && before.same(own.up, own.circuit)
            {
                continue;
            }
            state.told.insert(
                scheduler.addr,
                SchedulerState {
                    since_ms: now,
                    ..own
                },
            );
            // A first sight (nothing recorded of it: a new deployment, a
            // scheduler new to its cluster) is told and logged too, as
            // where its record starts.
            let event = Event {
                cluster_id: scheduler.cluster_id,
                observed_at_ms: now,
                what: What::Scheduler {
                    addr: scheduler.addr,
                    up: own.up,
                    circuit: own.circuit,
                },
                cursor: None,
            };
            match reach {
                Reach::Everywhere => self.bus.publish(event),
                Reach::Local => self.bus.publish_local(event),
            }
        }
        let known: BTreeSet<SocketAddr> = self
            .cluster
            .schedulers()
            .iter()
            .filter(|s| mine.contains(&s.cluster_id))
            .map(|s| s.addr)
            .collect();
        state.told.retain(|addr, _| known.contains(addr));
        if let (Some(redis), Reach::Everywhere) = (self.bus.redis(), reach) {
            self.write(redis, state, &mine).await;
        }
    }

    /// Takes or renews the health leases: the clusters this replica
    /// records, and who hears of them. A cluster just taken over starts
    /// from what its last recorder wrote, so only real transitions are
    /// logged. While Redis does not answer, every cluster is probed here,
    /// for this replica alone.
    async fn lease(
        &self,
        redis: &Redis,
        state: &mut State,
        clusters: Vec<u64>,
    ) -> (Vec<u64>, Reach) {
        let held = match lease::acquire(
            redis,
            keys::health_lease,
            &clusters,
            self.bus.instance(),
            self.config.lease_ttl,
        )
        .await
        {
            Ok(held) => held,
            Err(error) => {
                if !state.redis_warned {
                    tracing::warn!(%error, "scheduler health lease unavailable: this replica probes every scheduler for itself until Redis answers (transitions meanwhile are not logged)");
                    state.redis_warned = true;
                }
                state.held.clear();
                return (clusters, Reach::Local);
            }
        };
        if state.redis_warned {
            tracing::info!("scheduler health leases reach Redis again");
            state.redis_warned = false;
        }
        let held_now: BTreeSet<u64> = held.iter().copied().collect();
        let taken: Vec<u64> = held_now.difference(&state.held).copied().collect();
        let lost: BTreeSet<u64> = state.held.difference(&held_now).copied().collect();
        for cluster in &taken {
            tracing::info!(
                cluster,
                "recording this cluster's scheduler health for every replica"
            );
        }
        for cluster in &lost {
            tracing::info!(
                cluster,
                "no longer recording this cluster's scheduler health (another replica does)"
            );
        }
        let of = |clusters: &[u64], addr: &SocketAddr| {
            self.cluster
                .schedulers()
                .iter()
                .any(|s| s.addr == *addr && clusters.contains(&s.cluster_id))
        };
        let lost: Vec<u64> = lost.into_iter().collect();
        state
            .told
            .retain(|addr, _| !of(&lost, addr) && !of(&taken, addr));
        if !taken.is_empty() {
            state.told.extend(recorded(redis, &taken).await);
        }
        state.held = held_now;
        (held, Reach::Everywhere)
    }

    /// Writes the state of the schedulers of `clusters` to their hashes.
    async fn write(&self, redis: &Redis, state: &State, clusters: &[u64]) {
        let mut cmds = Vec::new();
        for &cluster in clusters {
            let key = keys::scheduler_health(cluster);
            let mut hset = redis::cmd("HSET");
            hset.arg(&key);
            let mut fields = 0;
            for scheduler in self
                .cluster
                .schedulers()
                .iter()
                .filter(|s| s.cluster_id == cluster)
            {
                if let Some(told) = state.told.get(&scheduler.addr) {
                    hset.arg(scheduler.addr.to_string()).arg(told.encode());
                    fields += 1;
                }
            }
            if fields == 0 {
                continue;
            }
            cmds.push(hset);
            let mut expire = redis::cmd("PEXPIRE");
            expire.arg(&key).arg(HASH_TTL.as_millis() as u64);
            cmds.push(expire);
        }
        if cmds.is_empty() {
            return;
        }
        if let Err(error) = redis.batch("scheduler_health_write", cmds).await {
            tracing::debug!(%error, "scheduler health not shared; other replicas read it later");
        }
    }

    async fn release(&self, state: &mut State) {
        let held: Vec<u64> = std::mem::take(&mut state.held).into_iter().collect();
        if let (Some(redis), false) = (self.bus.redis(), held.is_empty())
            && let Err(error) =
                lease::release(redis, keys::health_lease, &held, self.bus.instance()).await
        {
            tracing::debug!(%error, "health leases not released; they lapse");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_states_round_trip_and_garbage_is_none() {
        for (up, circuit) in [
            (true, CircuitState::Closed),
            (false, CircuitState::Open),
            (false, CircuitState::HalfOpen),
        ] {
            let state = SchedulerState {
                up,
                circuit,
                since_ms: 1_765_000_000_123,
            };
            assert_eq!(SchedulerState::decode(&state.encode()), Some(state));
        }
        for garbage in [
            "",
            "1|closed",
            "2|closed|5",
            "1|shut|5",
            "1|open|x",
            "1|open|5|9",
        ] {
            assert_eq!(SchedulerState::decode(garbage), None, "{garbage}");
        }
    }
}
