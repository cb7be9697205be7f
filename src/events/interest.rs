//! What someone wants watched: host lists (while anyone subscribes to host
//! events or has queried hosts lately), single peers and tasks (reference
//! counted by their subscriptions), scheduler health. With Redis, each
//! replica publishes its interest in a sorted set with an expiry per
//! member, so the replica that polls a cluster polls for everyone.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::metric;
use crate::cache::keys;
use crate::ids::PeerKey;
use crate::redis::{Redis, RedisError};

/// A single entity someone watches.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Watched {
    Peer { cluster_id: u64, key: PeerKey },
    Task { cluster_id: u64, task_id: String },
}

impl Watched {
    pub fn cluster_id(&self) -> u64 {
        match self {
            Watched::Peer { cluster_id, .. } | Watched::Task { cluster_id, .. } => *cluster_id,
        }
    }

    fn member(&self) -> String {
        match self {
            Watched::Peer { cluster_id, key } => format!("peer {cluster_id} {}", key.path()),
            Watched::Task {
                cluster_id,
                task_id,
            } => format!("task {cluster_id} {task_id}"),
        }
    }

    fn from_member(member: &str) -> Option<Watched> {
        let mut parts = member.splitn(3, ' ');
        let kind = parts.next()?;
        let cluster_id = parts.next()?.parse().ok()?;
        let id = parts.next()?;
        match kind {
            "peer" => Some(Watched::Peer {
                cluster_id,
                key: PeerKey::from_path(id)?,
            }),
            "task" => Some(Watched::Task {
                cluster_id,
                task_id: id.to_owned(),
            }),
            _ => None,
        }
    }
}

const HOSTS_MEMBER: &str = "hosts";

/// What is wanted at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Wanted {
    pub hosts: bool,
    pub watched: BTreeSet<Watched>,
}

impl Wanted {
    pub fn is_empty(&self) -> bool {
        !self.hosts && self.watched.is_empty()
    }
}

/// Refused: the watcher already watches as much as it may.
#[derive(Debug, thiserror::Error)]
#[error("at most {0} peers and tasks can be watched at once")]
pub struct TooManyWatched(pub usize);

/// This replica's interest.
pub struct Interest {
    host_subscribers: AtomicUsize,
    health_subscribers: AtomicUsize,
    last_hosts_query: Mutex<Option<Instant>>,
    watched: Mutex<HashMap<Watched, usize>>,
    max_watched: usize,
    hosts_query_window: Duration,
}

enum Held {
    Hosts,
    Health,
    One(Watched),
}

/// Keeps an interest alive; dropping it (with its subscription) ends it.
pub struct InterestGuard {
    interest: Arc<Interest>,
    held: Held,
}

impl Drop for InterestGuard {
    fn drop(&mut self) {
        match &self.held {
            Held::Hosts => {
                self.interest
                    .host_subscribers
                    .fetch_sub(1, Ordering::AcqRel);
            }
            Held::Health => {
                self.interest
                    .health_subscribers
                    .fetch_sub(1, Ordering::AcqRel);
            }
            Held::One(what) => {
                let mut watched = lock(&self.interest.watched);
                if let Some(count) = watched.get_mut(what) {
                    *count -= 1;
                    if *count == 0 {
                        watched.remove(what);
                    }
                }
                metrics::gauge!(metric::WATCHED).set(watched.len() as f64);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Interest {
    pub fn new(max_watched: usize, hosts_query_window: Duration) -> Arc<Interest> {
        Arc::new(Interest {
            host_subscribers: AtomicUsize::new(0),
            health_subscribers: AtomicUsize::new(0),
            last_hosts_query: Mutex::new(None),
            watched: Mutex::new(HashMap::new()),
            max_watched,
            hosts_query_window,
        })
    }

    /// Host lists are watched while the guard lives.
    pub fn watch_hosts(self: &Arc<Self>) -> InterestGuard {
        self.host_subscribers.fetch_add(1, Ordering::AcqRel);
        InterestGuard {
            interest: self.clone(),
            held: Held::Hosts,
        }
    }

    /// Scheduler health is watched while the guard lives.
    pub fn watch_health(self: &Arc<Self>) -> InterestGuard {
        self.health_subscribers.fetch_add(1, Ordering::AcqRel);
        InterestGuard {
            interest: self.clone(),
            held: Held::Health,
        }
    }

    /// `what` is polled while the guard (or another for the same entity)
    /// lives.
    pub fn watch(self: &Arc<Self>, what: Watched) -> Result<InterestGuard, TooManyWatched> {
        let mut watched = lock(&self.watched);
        if !watched.contains_key(&what) && watched.len() >= self.max_watched {
            return Err(TooManyWatched(self.max_watched));
        }
        *watched.entry(what.clone()).or_insert(0) += 1;
        metrics::gauge!(metric::WATCHED).set(watched.len() as f64);
        Ok(InterestGuard {
            interest: self.clone(),
            held: Held::One(what),
        })
    }

    /// A hosts query ran: keep host lists watched for a while.
    pub fn touch_hosts(&self) {
        *lock(&self.last_hosts_query) = Some(Instant::now());
    }

    /// Whether this replica keeps host lists watched now: a host
    /// subscription runs or hosts were queried within the window.
    pub fn hosts_wanted(&self) -> bool {
        self.host_subscribers.load(Ordering::Acquire) > 0
            || lock(&self.last_hosts_query).is_some_and(|at| at.elapsed() < self.hosts_query_window)
    }

    pub fn wants_health(&self) -> bool {
        self.health_subscribers.load(Ordering::Acquire) > 0
    }

    /// What this replica wants now.
    pub fn local(&self) -> Wanted {
        Wanted {
            hosts: self.hosts_wanted(),
            watched: lock(&self.watched).keys().cloned().collect(),
        }
    }
}

/// Adds the members in ARGV[3..] until ARGV[1] ms from now, drops the
/// expired, and returns every live member. "Now" is Redis's clock, so
/// replicas whose clocks disagree still agree on what has expired.
const SHARE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local until_ms = now + tonumber(ARGV[1])
for i = 3, #ARGV do
  redis.call('ZADD', KEYS[1], until_ms, ARGV[i])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')
";

/// Publishes `local` for `ttl` and returns what every replica wants
/// (including `local`), in one round trip.
pub async fn share(redis: &Redis, local: &Wanted, ttl: Duration) -> Result<Wanted, RedisError> {
    let mut eval = redis::cmd("EVAL");
    eval.arg(SHARE)
        .arg(1)
        .arg(keys::WATCH_INTEREST)
        .arg(ttl.as_millis() as u64)
        // The set outlives no replica for long, even if all of them vanish.
        .arg(ttl.as_millis() as u64 * 4);
    if local.hosts {
        eval.arg(HOSTS_MEMBER);
    }
    for what in &local.watched {
        eval.arg(what.member());
    }
    let members: Vec<String> = redis.cmd("share_interest", &eval).await?;
    let mut wanted = local.clone();
    for member in members {
        if member == HOSTS_MEMBER {
            wanted.hosts = true;
        } else if let Some(what) = Watched::from_member(&member) {
            wanted.watched.insert(what);
        } else {
            tracing::debug!(%member, "unknown interest member ignored");
        }
    }
    Ok(wanted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: &str) -> Watched {
        Watched::Peer {
            cluster_id: 2,
            key: PeerKey {
                host_id: "h".into(),
                task_id: "t".into(),
                peer_id: id.into(),
            },
        }
    }

    #[test]
    fn members_roundtrip() {
        let task = Watched::Task {
            cluster_id: 7,
            task_id: "abc def".into(),
        };
        for what in [peer("p1"), task] {
            assert_eq!(Watched::from_member(&what.member()), Some(what));
        }
        assert_eq!(Watched::from_member("nope 1 x"), None);
        assert_eq!(Watched::from_member("peer x h/t/p"), None);
    }

    #[test]
    fn interest_lives_as_long_as_its_guards() {
        let interest = Interest::new(2, Duration::from_secs(60));
        assert!(interest.local().is_empty());
        let a = interest.watch(peer("p1")).unwrap();
        let b = interest.watch(peer("p1")).unwrap();
        let hosts = interest.watch_hosts();
        assert!(interest.local().hosts);
        assert_eq!(interest.local().watched.len(), 1);
        drop(a);
        assert_eq!(interest.local().watched.len(), 1, "still one guard");
        drop(b);
        drop(hosts);
        assert!(interest.local().is_empty());
    }

    #[test]
    fn watching_is_bounded_but_sharing_an_entity_is_free() {
        let interest = Interest::new(1, Duration::from_secs(60));
        let _a = interest.watch(peer("p1")).unwrap();
        let _again = interest.watch(peer("p1")).unwrap();
        assert!(interest.watch(peer("p2")).is_err());
    }

    #[test]
    fn a_recent_hosts_query_keeps_host_lists_watched() {
        let interest = Interest::new(1, Duration::from_secs(60));
        interest.touch_hosts();
        assert!(interest.local().hosts);
        let brief = Interest::new(1, Duration::ZERO);
        brief.touch_hosts();
        assert!(!brief.local().hosts);
    }
}
