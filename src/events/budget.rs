//! The watcher's share of each scheduler's capacity. Every interval the
//! watcher lists a cluster's hosts and asks for each watched peer and task;
//! schedulers refuse more than a few thousand calls per second, and the
//! console's queries need most of them. So the calls of one interval toward
//! one scheduler stay within `share` x `scheduler_capacity`: when the
//! watched peers and tasks need more, each interval polls an even slice of
//! them in rotation, so every one of them is polled equally less often.
//! Host lists are never skipped (one call per interval). An entity no
//! scheduler knows is also asked of the owner's peers (the routing's
//! fallback); the budget counts it on its owner only.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How much of a scheduler the watcher may use.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BudgetConfig {
    /// Calls per second one scheduler serves (Dragonfly schedulers refuse
    /// more than about 4000).
    pub scheduler_capacity: f64,
    /// The share of that capacity the watcher's polls may take, in (0, 1].
    pub share: f64,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        Self {
            scheduler_capacity: 4000.0,
            share: 0.10,
        }
    }
}

impl BudgetConfig {
    pub fn validate(&self, interval: Duration) -> Result<(), String> {
        if !(self.share > 0.0 && self.share <= 1.0) {
            return Err(format!(
                "watch.budget.share must be in (0, 1], not {}",
                self.share
            ));
        }
        if !(self.scheduler_capacity.is_finite() && self.scheduler_capacity > 0.0) {
            return Err("watch.budget.scheduler_capacity must be a positive number".into());
        }
        if self.calls_per_interval(interval) < 2 {
            return Err(format!(
                "watch.budget allows {:.2} calls per watch.interval ({interval:?}); \
                 at least 2 are needed (a host list and one watched entity)",
                self.scheduler_capacity * self.share * interval.as_secs_f64()
            ));
        }
        Ok(())
    }

    /// Calls toward one scheduler that one interval may make.
    pub fn calls_per_interval(&self, interval: Duration) -> usize {
        let calls = self.scheduler_capacity * self.share * interval.as_secs_f64();
        // Saturating float-to-int: a huge budget is "unbounded", not a wrap.
        calls.floor() as usize
    }
}

/// Where one cluster's rotation stands: per scheduler, the next of its
/// watched entities to poll.
#[derive(Debug, Default)]
pub struct Rotation {
    next: HashMap<Option<SocketAddr>, usize>,
    /// The last pick polled less than everything (warned once per stretch).
    pub stretched: bool,
}

/// This interval's slice of the watched entities.
#[derive(Debug, PartialEq)]
pub struct Pick<T> {
    pub chosen: Vec<T>,
    /// How many intervals it takes to poll each entity once (1: every
    /// interval).
    pub stretch: f64,
    /// The busiest scheduler's demand, in calls per interval, when every
    /// entity is polled each interval.
    pub demand: usize,
}

/// Picks this interval's entities. `groups` holds each scheduler's
/// entities (by the scheduler that answers them; `None`: answered without
/// a call); `fixed` calls per scheduler are spent before them (the host
/// list, health probes). Each scheduler gets the same fraction of its
/// entities, the largest that keeps the busiest one within `allowed`
/// calls; each group is walked in rotation, so within `stretch` intervals
/// every entity is polled.
pub fn pick<T: Ord>(
    rotation: &mut Rotation,
    allowed: usize,
    fixed: usize,
    groups: BTreeMap<Option<SocketAddr>, Vec<T>>,
) -> Pick<T> {
    let room = allowed.saturating_sub(fixed).max(1);
    let demand = groups
        .iter()
        .filter(|(s, _)| s.is_some())
        .map(|(_, g)| g.len())
        .max()
        .unwrap_or(0);
    let fraction = if demand <= room {
        1.0
    } else {
        room as f64 / demand as f64
    };
    rotation.next.retain(|s, _| groups.contains_key(s));
    let mut chosen = Vec::new();
    for (scheduler, mut group) in groups {
        // Sorted, so the rotation walks the same order while the watched
        // set changes around it.
        group.sort_unstable();
        let n = group.len();
        let quota = if scheduler.is_none() {
            n
        } else {
            ((n as f64 * fraction).ceil() as usize)
                .clamp(1, room)
                .min(n)
        };
        let next = rotation.next.entry(scheduler).or_default();
        let start = *next % n.max(1);
        *next = (start + quota) % n.max(1);
        group.rotate_left(start);
        group.truncate(quota);
        chosen.extend(group);
    }
    Pick {
        chosen,
        stretch: 1.0 / fraction,
        demand: demand + fixed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> Option<SocketAddr> {
        Some(SocketAddr::from(([127, 0, 0, 1], port)))
    }

    fn groups(sizes: &[(u16, usize)]) -> BTreeMap<Option<SocketAddr>, Vec<u32>> {
        sizes
            .iter()
            .map(|&(port, n)| {
                (
                    addr(port),
                    (0..n as u32).map(|i| i + 1000 * u32::from(port)).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn within_budget_everything_is_polled_every_interval() {
        let mut rotation = Rotation::default();
        let pick = pick(&mut rotation, 10, 1, groups(&[(1, 9), (2, 3)]));
        assert_eq!(pick.chosen.len(), 12);
        assert_eq!(pick.stretch, 1.0);
    }

    #[test]
    fn over_budget_every_scheduler_stays_within_it_and_every_entity_gets_its_turn() {
        let mut rotation = Rotation::default();
        let mut polled: HashMap<u32, usize> = HashMap::new();
        let intervals = 40;
        let mut stretch = 0.0;
        for _ in 0..intervals {
            let p = pick(&mut rotation, 11, 1, groups(&[(1, 40), (2, 20)]));
            stretch = p.stretch;
            let on_1 = p.chosen.iter().filter(|&&i| i < 2000).count();
            let on_2 = p.chosen.len() - on_1;
            assert!(on_1 <= 10 && on_2 <= 10, "{on_1} {on_2}");
            for i in p.chosen {
                *polled.entry(i).or_default() += 1;
            }
        }
        assert_eq!(stretch, 4.0);
        assert_eq!(polled.len(), 60, "every entity was polled");
        // Evenly: each polled once per `stretch` intervals.
        assert!(polled.values().all(|&n| n == 10), "{polled:?}");
    }

    /// More watched peers than the budget allows, watched by the real
    /// watcher against the simulator over gRPC: each scheduler sees no
    /// more calls per second than its budget, and the budget is used.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn watched_peers_beyond_the_budget_keep_each_scheduler_within_it() {
        use std::sync::Arc;
        use std::time::Instant;

        use dfgraph_sim::{Method, SimCluster, SimConfig};

        use crate::events::{Events, WatchConfig, Watched};
        use crate::ids::PeerKey;

        let sim = SimCluster::start(SimConfig {
            clusters: 1,
            schedulers_per_cluster: 2,
            hosts: 200,
            tasks: 100,
            peers_per_task: 3,
            tick_interval: None,
            ..SimConfig::default()
        })
        .await
        .expect("simulator starts");
        let (client, cluster_id) = crate::events::client_for(&sim);
        let cache = crate::cache::Cache::connect(
            crate::cache::CacheConfig::default(),
            Arc::new(crate::clock::SystemClock),
        )
        .await
        .expect("in-memory cache");
        // 50 calls/s per scheduler: 10 per 200 ms interval, for ~150
        // watched peers on each of the two schedulers.
        let interval = Duration::from_millis(200);
        let budget = BudgetConfig {
            scheduler_capacity: 500.0,
            share: 0.1,
        };
        let config = WatchConfig {
            interval,
            lease_ttl: Duration::from_secs(2),
            budget,
            ..WatchConfig::default()
        };
        let events = Events::new(config, Default::default(), cache.clone(), None);
        let peers = sim.peers(cluster_id);
        assert!(peers.len() >= 250, "enough peers to overrun the budget");
        let _guards: Vec<_> = peers
            .iter()
            .map(|p| {
                let key = PeerKey {
                    host_id: p.host.as_ref().map(|h| h.id.clone()).unwrap_or_default(),
                    task_id: p.task.as_ref().map(|t| t.id.clone()).unwrap_or_default(),
                    peer_id: p.id.clone(),
                };
                events
                    .interest
                    .watch(Watched::Peer { cluster_id, key })
                    .expect("within max_watched")
            })
            .collect();
        let stop = tokio_util::sync::CancellationToken::new();
        events.start(client, cache, stop.clone());
        tokio::time::sleep(Duration::from_millis(600)).await;

        sim.reset_counters();
        let started = Instant::now();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let elapsed = started.elapsed();
        let calls_on = |addr| {
            [Method::StatPeer, Method::StatTask, Method::ListHosts]
                .into_iter()
                .map(|m| sim.rpc_count(addr, m))
                .sum::<u64>()
        };
        let per_interval = budget.calls_per_interval(interval) as f64;
        // Intervals begun within the window (one may straddle its start).
        let intervals = elapsed.as_secs_f64() / interval.as_secs_f64() + 1.0;
        let mut total = 0;
        for scheduler in sim.schedulers() {
            let addr = scheduler.addr;
            let calls = calls_on(addr);
            total += calls;
            assert!(
                calls as f64 <= per_interval * intervals,
                "{addr}: {calls} calls in {elapsed:?}, budget {per_interval} per {interval:?}"
            );
        }
        // The budget is used, not starved: a good share of it (a quarter:
        // on a loaded 2-core machine the poller, the simulated schedulers
        // and other tests share the cores, and 47 % was seen).
        let budget_total = per_interval * (intervals - 1.0) * sim.schedulers().len() as f64;
        assert!(
            total as f64 >= budget_total / 4.0,
            "{total} calls against a budget of {budget_total}"
        );
        stop.cancel();
        sim.shutdown().await;
    }

    #[test]
    fn budgets_and_bad_settings() {
        let config = BudgetConfig::default();
        assert_eq!(config.calls_per_interval(Duration::from_secs(1)), 400);
        assert!(config.validate(Duration::from_secs(1)).is_ok());
        for share in [0.0, -1.0, 1.5, f64::NAN] {
            let bad = BudgetConfig { share, ..config };
            assert!(bad.validate(Duration::from_secs(1)).is_err(), "{share}");
        }
        let tiny = BudgetConfig {
            scheduler_capacity: 10.0,
            share: 0.1,
        };
        assert!(tiny.validate(Duration::from_secs(1)).is_err());
    }
}
