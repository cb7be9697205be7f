//! The one Redis client stack of the process: every command dfgraph sends
//! (the cache's L2, the event bus, the watcher's interest and leases,
//! persisted queries) goes through [`Redis::query`], on one connection
//! pool, under one command timeout and one circuit breaker; and one
//! pub/sub [`listener`] receives what other replicas publish, cache
//! invalidations and events alike, in the order it was published.
//!
//! Neutral ground: `cache`, `events` and `http` use it; it knows none of
//! them, and takes only its channel's name from [`crate::cache::keys`],
//! where every Redis name lives.
//!
//! The circuit judges whether Redis is *available*: a timeout, a refused
//! or dropped connection, a loading or failing-over server (or cluster
//! slots on the move) opens it; an
//! answer that is an error (a command the ACL forbids, a script error)
//! counts as an error but shows Redis is there.

mod circuit;
pub mod listener;
mod stats;

use std::sync::Arc;
use std::time::Duration;

use deadpool_redis::{Manager, Pool, Runtime};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{AsyncConnectionConfig, ErrorKind, FromRedisValue, ServerErrorKind, Value};
use tokio_util::sync::CancellationToken;

pub use listener::{Handler, Topic};
pub use stats::metric;

use circuit::Circuit;
use listener::Hub;
use stats::RedisStats;

/// How to reach Redis and how long to wait for it.
#[derive(Clone, Debug)]
pub struct RedisSettings {
    /// `redis://[user:password@]host:port[/db]` or `rediss://…` (TLS); with
    /// `cluster`, one or more seed nodes separated by commas.
    pub url: String,
    /// Speak Redis Cluster: commands routed by slot, sharded pub/sub.
    pub cluster: bool,
    /// Pooled connections.
    pub pool_size: usize,
    /// Bound on one command (or pipeline), connection checkout included.
    pub command_timeout: Duration,
    /// Bound on opening a connection (and on the start-up check).
    pub connect_timeout: Duration,
    /// Consecutive unavailable answers that open the circuit.
    pub circuit_failure_threshold: u32,
    /// First wait before probing again; doubles per failed probe.
    pub circuit_backoff_min: Duration,
    /// Cap of that wait.
    pub circuit_backoff_max: Duration,
}

/// Why a Redis command did not answer. Logged and counted; callers degrade
/// (the cache to L1 and origin, the watcher to polling for itself).
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("circuit open")]
    CircuitOpen,
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("no connection: {0}")]
    Pool(String),
    #[error("unexpected answer: {0}")]
    Answer(String),
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
}

impl RedisError {
    /// Whether this says Redis is unavailable (as opposed to an answer
    /// that is an error).
    fn is_outage(&self) -> bool {
        match self {
            RedisError::CircuitOpen | RedisError::Answer(_) => false,
            RedisError::Timeout(_) | RedisError::Pool(_) => true,
            RedisError::Redis(e) => match e.kind() {
                ErrorKind::Server(kind) => matches!(
                    kind,
                    ServerErrorKind::BusyLoading
                        | ServerErrorKind::TryAgain
                        | ServerErrorKind::ClusterDown
                        | ServerErrorKind::MasterDown
                        | ServerErrorKind::ReadOnly
                        | ServerErrorKind::Moved
                        | ServerErrorKind::Ask
                ),
                ErrorKind::Extension | ErrorKind::UnexpectedReturnType | ErrorKind::Parse => false,
                _ => true,
            },
        }
    }

    /// Whether Redis refused our credentials.
    pub fn is_auth(&self) -> bool {
        let shown = self.to_string();
        matches!(self, RedisError::Redis(e) if e.kind() == ErrorKind::AuthenticationFailed)
            || shown.to_ascii_lowercase().contains("auth")
            || shown.contains("WRONGPASS")
            || shown.contains("NOAUTH")
    }
}

/// One command or one pipeline.
pub enum Req<'a> {
    Cmd(&'a redis::Cmd),
    Pipe(&'a redis::Pipeline),
    /// A command for one node of a Redis Cluster (on a single Redis, a
    /// plain command).
    Routed(&'a redis::Cmd, &'a RoutingInfo),
}

/// The connections commands go through.
enum Conns {
    /// A pool of connections to one Redis.
    Single(Pool),
    /// One multiplexed connection to every node of a Redis Cluster, made
    /// on first use (and again after it could not be made).
    Cluster(Box<ClusterConns>),
}

struct ClusterConns {
    /// Seed nodes.
    nodes: Vec<String>,
    connect_timeout: Duration,
    command_timeout: Duration,
    /// Which seed leads the next connection: each new connection starts
    /// from the next one, so a dead seed is not the only one ever asked
    /// (redis 1.8.1 reconnects through the first seed alone).
    next_seed: std::sync::atomic::AtomicUsize,
    conn: tokio::sync::Mutex<Option<ClusterConnection>>,
}

impl ClusterConns {
    fn client(&self) -> redis::RedisResult<ClusterClient> {
        let first = self
            .next_seed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        cluster_builder(
            rotated(&self.nodes, first),
            self.connect_timeout,
            self.command_timeout,
        )
        .build()
    }
}

/// `nodes` starting at the `first`-th (modulo their number).
pub(crate) fn rotated(nodes: &[String], first: usize) -> Vec<String> {
    let mut nodes = nodes.to_vec();
    if !nodes.is_empty() {
        let len = nodes.len();
        nodes.rotate_left(first % len);
    }
    nodes
}

pub(crate) fn cluster_builder(
    nodes: Vec<String>,
    connect_timeout: Duration,
    response_timeout: Duration,
) -> ClusterClientBuilder {
    ClusterClientBuilder::new(nodes)
        .connection_timeout(connect_timeout)
        .response_timeout(response_timeout)
        .retries(2)
        .min_retry_wait(10)
        .max_retry_wait(100)
        // A dead node (a failed-over primary, a dead seed) is refused at
        // once; retrying it would outlast every timeout of ours.
        .max_connection_attempts(std::num::NonZeroUsize::MIN)
}

/// The process's Redis; cheap to clone.
#[derive(Clone)]
pub struct Redis {
    shared: Arc<Shared>,
}

struct Shared {
    conns: Conns,
    circuit: Circuit,
    timeout: Duration,
    stats: Arc<RedisStats>,
    hub: Arc<Hub>,
    /// The URL with its password hidden, for logs and errors.
    shown_url: String,
    /// Stops the listener when the last handle goes.
    stop: CancellationToken,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Redis {
    /// The stack for `settings`; connects nothing yet (see
    /// [`Redis::check`]).
    pub fn new(settings: &RedisSettings) -> Result<Redis, RedisError> {
        let url = settings.url.as_str();
        let shown_url = redact_url(url);
        let bad = |e: String| RedisError::Pool(format!("{shown_url}: {e}"));
        let (conns, subscriber) = if settings.cluster {
            let nodes: Vec<String> = url
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(str::to_owned)
                .collect();
            // Checks the seeds parse.
            cluster_builder(
                nodes.clone(),
                settings.connect_timeout,
                settings.command_timeout,
            )
            .build()
            .map_err(|e| bad(e.to_string()))?;
            (
                Conns::Cluster(Box::new(ClusterConns {
                    nodes: nodes.clone(),
                    connect_timeout: settings.connect_timeout,
                    command_timeout: settings.command_timeout,
                    next_seed: std::sync::atomic::AtomicUsize::new(0),
                    conn: tokio::sync::Mutex::new(None),
                })),
                listener::Subscriber::Cluster {
                    nodes,
                    next_seed: std::sync::atomic::AtomicUsize::new(0),
                },
            )
        } else {
            let client = redis::Client::open(url).map_err(|e| bad(e.to_string()))?;
            let conn_config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(settings.connect_timeout))
                .set_response_timeout(Some(settings.command_timeout));
            let manager =
                Manager::new_with_config(url, conn_config).map_err(|e| bad(e.to_string()))?;
            let pool = Pool::builder(manager)
                .max_size(settings.pool_size.max(1))
                .runtime(Runtime::Tokio1)
                .wait_timeout(Some(settings.command_timeout))
                .create_timeout(Some(settings.connect_timeout))
                .recycle_timeout(Some(settings.command_timeout))
                .build()
                .map_err(|e| bad(e.to_string()))?;
            (
                Conns::Single(pool),
                listener::Subscriber::Single(Box::new(client)),
            )
        };
        let stats = Arc::new(RedisStats::default());
        stats.set_circuit_open(false);
        let stop = CancellationToken::new();
        let hub = Hub::new(
            subscriber,
            listener::Timing {
                connect_timeout: settings.connect_timeout,
                backoff_min: settings.circuit_backoff_min.min(Duration::from_millis(100)),
                backoff_max: settings.circuit_backoff_max.min(Duration::from_secs(5)),
                ping_every: Duration::from_secs(5),
            },
            shown_url.clone(),
            stop.clone(),
        );
        Ok(Redis {
            shared: Arc::new(Shared {
                conns,
                circuit: Circuit::new(
                    settings.circuit_failure_threshold,
                    settings.circuit_backoff_min,
                    settings.circuit_backoff_max,
                    stats.clone(),
                    Arc::new(crate::clock::SystemClock),
                ),
                timeout: settings.command_timeout,
                stats,
                hub,
                shown_url,
                stop,
            }),
        })
    }

    /// Whether this is a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.shared.conns, Conns::Cluster(_))
    }

    /// The URL with its password hidden.
    pub fn shown_url(&self) -> &str {
        &self.shared.shown_url
    }

    /// The bound on one command.
    pub fn command_timeout(&self) -> Duration {
        self.shared.timeout
    }

    /// True while the circuit is closed (Redis is being used).
    pub fn available(&self) -> bool {
        !self.shared.circuit.is_open()
    }

    /// Failed commands since start.
    pub fn errors(&self) -> u64 {
        self.shared.stats.errors()
    }

    /// Opens the circuit at once (Redis unusable at start-up).
    pub fn trip(&self) {
        self.shared.circuit.trip();
    }

    /// Counts an error seen outside [`Redis::query`] (the start-up check).
    pub fn count_error(&self) {
        self.shared.stats.error();
    }

    /// Runs one command or pipeline: skipped while the circuit is open,
    /// bounded by the command timeout, its failure counted.
    pub async fn query<T: FromRedisValue>(
        &self,
        op: &'static str,
        req: Req<'_>,
    ) -> Result<T, RedisError> {
        let shared = &self.shared;
        let Ok(ticket) = shared.circuit.admit() else {
            return Err(RedisError::CircuitOpen);
        };
        let result = self.run(req, shared.timeout).await;
        let available = match &result {
            Ok(_) => true,
            Err(error) => !error.is_outage(),
        };
        shared.circuit.finish(ticket, available);
        if let Err(error) = &result {
            shared.stats.error();
            tracing::debug!(op, %error, "Redis command failed");
        }
        result
    }

    /// [`Redis::query`] of one command.
    pub async fn cmd<T: FromRedisValue>(
        &self,
        op: &'static str,
        cmd: &redis::Cmd,
    ) -> Result<T, RedisError> {
        self.query(op, Req::Cmd(cmd)).await
    }

    /// [`Redis::query`] of one pipeline.
    pub async fn pipe<T: FromRedisValue>(
        &self,
        op: &'static str,
        pipe: &redis::Pipeline,
    ) -> Result<T, RedisError> {
        self.query(op, Req::Pipe(pipe)).await
    }

    async fn run<T: FromRedisValue>(
        &self,
        req: Req<'_>,
        within: Duration,
    ) -> Result<T, RedisError> {
        let run = async {
            match &self.shared.conns {
                Conns::Single(pool) => {
                    let mut conn = pool
                        .get()
                        .await
                        .map_err(|e| RedisError::Pool(e.to_string()))?;
                    send(&mut *conn, req).await
                }
                Conns::Cluster(cluster) => {
                    let mut conn = {
                        let mut slot = cluster.conn.lock().await;
                        match slot.as_ref() {
                            Some(conn) => conn.clone(),
                            None => {
                                let made = cluster.client()?.get_async_connection().await?;
                                *slot = Some(made.clone());
                                made
                            }
                        }
                    };
                    let result = match req {
                        Req::Routed(cmd, routing) => conn
                            .route_command(cmd.clone(), routing.clone())
                            .await
                            .map_err(RedisError::from)
                            .and_then(|value| {
                                T::from_redis_value(value)
                                    .map_err(|e| RedisError::Answer(e.to_string()))
                            }),
                        req => send(&mut conn, req).await,
                    };
                    if result.as_ref().is_err_and(RedisError::is_outage) {
                        // Start over (from another seed) next time.
                        *cluster.conn.lock().await = None;
                    }
                    result
                }
            }
        };
        match tokio::time::timeout(within, run).await {
            Ok(result) => result,
            Err(_) => Err(RedisError::Timeout(within)),
        }
    }

    /// Runs `cmds` in one round trip and returns every reply, in order.
    /// On Redis Cluster a pipeline may not cross slots: the commands are
    /// grouped by the slot of their key (a script's first key), one
    /// pipeline per slot, sent at once.
    pub async fn batch(
        &self,
        op: &'static str,
        cmds: Vec<redis::Cmd>,
    ) -> Result<Vec<Value>, RedisError> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        if !self.is_cluster() {
            let mut pipe = redis::pipe();
            for cmd in cmds {
                pipe.add_command(cmd);
            }
            return self.pipe(op, &pipe).await;
        }
        let count = cmds.len();
        let mut groups: Vec<(Option<Route>, redis::Pipeline, Vec<usize>)> = Vec::new();
        for (i, cmd) in cmds.into_iter().enumerate() {
            let route = first_key(&cmd).map(|key| Route::with_key(key, SlotAddr::Master));
            let at = match groups.iter().position(|(r, _, _)| *r == route) {
                Some(at) => at,
                None => {
                    groups.push((route, redis::pipe(), Vec::new()));
                    groups.len() - 1
                }
            };
            groups[at].1.add_command(cmd);
            groups[at].2.push(i);
        }
        let answers = futures::future::join_all(
            groups
                .iter()
                .map(|(_, pipe, _)| self.pipe::<Vec<Value>>(op, pipe)),
        )
        .await;
        let mut replies = vec![Value::Nil; count];
        for ((_, _, indices), answer) in groups.iter().zip(answers) {
            let values = answer?;
            if values.len() != indices.len() {
                return Err(RedisError::Answer(format!(
                    "{} replies to {} commands",
                    values.len(),
                    indices.len()
                )));
            }
            for (&i, value) in indices.iter().zip(values) {
                replies[i] = value;
            }
        }
        Ok(replies)
    }

    /// Deletes every key matching `pattern` (`SCAN MATCH`, `UNLINK`); on
    /// Redis Cluster on the node of hash tag `tag`, or on every primary.
    /// Returns how many were deleted.
    pub async fn unlink_matching(
        &self,
        pattern: &str,
        tag: Option<&str>,
    ) -> Result<u64, RedisError> {
        let routes = match (&self.shared.conns, tag) {
            (Conns::Single(_), _) => vec![RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random)],
            (Conns::Cluster(_), Some(tag)) => vec![RoutingInfo::SingleNode(
                SingleNodeRoutingInfo::SpecificNode(Route::with_key(tag, SlotAddr::Master)),
            )],
            (Conns::Cluster(_), None) => self.primaries().await?,
        };
        let mut deleted = 0u64;
        for route in &routes {
            let mut cursor: u64 = 0;
            loop {
                let mut scan = redis::cmd("SCAN");
                scan.arg(cursor)
                    .arg("MATCH")
                    .arg(pattern)
                    .arg("COUNT")
                    .arg(1000);
                let (next, keys): (u64, Vec<String>) =
                    self.query("scan", Req::Routed(&scan, route)).await?;
                if !keys.is_empty() {
                    let mut unlink = redis::cmd("UNLINK");
                    unlink.arg(&keys);
                    deleted += self.cmd::<u64>("unlink", &unlink).await?;
                }
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
        }
        Ok(deleted)
    }

    /// A route to each primary of the cluster (from `CLUSTER NODES`).
    async fn primaries(&self) -> Result<Vec<RoutingInfo>, RedisError> {
        let nodes: String = self
            .cmd("cluster_nodes", redis::cmd("CLUSTER").arg("NODES"))
            .await?;
        let routes: Vec<RoutingInfo> = nodes
            .lines()
            .filter_map(|line| {
                let mut fields = line.split_whitespace();
                let address = fields.nth(1)?;
                let flags = fields.next()?;
                if !flags.split(',').any(|f| f == "master") || flags.contains("fail") {
                    return None;
                }
                let address = address.split('@').next()?;
                let (host, port) = address.rsplit_once(':')?;
                Some(RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                    host: host.to_owned(),
                    port: port.parse().ok()?,
                }))
            })
            .collect();
        if routes.is_empty() {
            return Err(RedisError::Answer("CLUSTER NODES lists no primary".into()));
        }
        Ok(routes)
    }

    /// Checks that Redis answers (and accepts our credentials), bypassing
    /// the circuit, within `within`.
    pub async fn ping(&self, within: Duration) -> Result<(), RedisError> {
        self.run::<()>(Req::Cmd(&redis::cmd("PING")), within).await
    }

    /// Warns when Redis may refuse writes or evict only keys with a TTL
    /// (every cache key has one, but so may more precious data).
    pub async fn check_eviction_policy(&self) {
        let mut cmd = redis::cmd("CONFIG");
        cmd.arg("GET").arg("maxmemory-policy");
        let Ok(value) = self.run::<Value>(Req::Cmd(&cmd), self.shared.timeout).await else {
            tracing::debug!("cannot read Redis maxmemory-policy (denied or unsupported)");
            return;
        };
        let policy = match value {
            Value::Array(items) => items.get(1).and_then(value_string),
            Value::Map(pairs) => pairs.first().and_then(|(_, v)| value_string(v)),
            _ => None,
        };
        let url = &self.shared.shown_url;
        match policy.as_deref() {
            Some("noeviction") => tracing::warn!(
                %url,
                "Redis maxmemory-policy is noeviction: when full, cache writes fail; \
                 use allkeys-lru or allkeys-lfu for a cache"
            ),
            Some(p) if p.starts_with("volatile-") => tracing::warn!(
                %url,
                policy = p,
                "Redis evicts only keys with a TTL; cache keys compete with other \
                 expiring data; allkeys-lru or allkeys-lfu suits a cache better"
            ),
            _ => {}
        }
    }

    /// Appends to `pipe` the publication of `body` as a `topic` message to
    /// every replica's listener.
    pub fn add_publish(&self, pipe: &mut redis::Pipeline, topic: Topic, body: &[u8]) {
        pipe.add_command(self.publish_cmd(topic, body)).ignore();
    }

    /// The publication of `body` as a `topic` message to every replica's
    /// listener.
    pub fn publish_cmd(&self, topic: Topic, body: &[u8]) -> redis::Cmd {
        // Sharded on a cluster: the channel lives on its slot's shard.
        let mut cmd = redis::cmd(if self.is_cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        });
        cmd.arg(crate::cache::keys::BUS_CHANNEL)
            .arg(listener::frame(topic, body));
        cmd
    }

    /// The listener: hands every `topic` message from other replicas to
    /// `handler`, in publish order (starting the listener on first use).
    pub fn listen(&self, topic: Topic, handler: Arc<dyn Handler>) {
        self.shared.hub.register(topic, handler);
    }

    /// Whether the listener is subscribed now, and how many times it has
    /// subscribed so far (a change means messages may have been missed).
    pub fn listening(&self) -> (bool, u64) {
        self.shared.hub.state()
    }

    /// Waits (up to `within`) until the listener has subscribed once.
    pub async fn wait_listening(&self, within: Duration) -> bool {
        self.shared.hub.wait_subscribed(within).await
    }
}

/// The key a command is routed by: a script's first key, else its first
/// argument.
fn first_key(cmd: &redis::Cmd) -> Option<Vec<u8>> {
    let args: Vec<&[u8]> = cmd
        .args_iter()
        .filter_map(|arg| match arg {
            redis::Arg::Simple(bytes) => Some(bytes),
            _ => None,
        })
        .collect();
    let name = args.first()?;
    let at = if name.eq_ignore_ascii_case(b"EVAL") || name.eq_ignore_ascii_case(b"EVALSHA") {
        3
    } else {
        1
    };
    args.get(at).map(|key| key.to_vec())
}

async fn send<C, T>(conn: &mut C, req: Req<'_>) -> Result<T, RedisError>
where
    C: redis::aio::ConnectionLike + Send,
    T: FromRedisValue,
{
    Ok(match req {
        Req::Cmd(cmd) | Req::Routed(cmd, _) => cmd.query_async::<T>(conn).await?,
        Req::Pipe(pipe) => pipe.query_async::<T>(conn).await?,
    })
}

/// A reply as text, for the small values dfgraph reads (generations,
/// settings).
pub(crate) fn value_string(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

/// `redis://user:secret@host` → `redis://user:***@host`.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_string();
    };
    let userinfo = &rest[..at];
    let shown = match userinfo.split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        None => "***".to_string(),
    };
    format!("{}{}{}", &url[..scheme_end + 3], shown, &rest[at..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("redis://dfg:s3cr@t@10.0.0.1:6379/0"),
            "redis://dfg:***@10.0.0.1:6379/0"
        );
        assert_eq!(redact_url("rediss://:pw@h:1"), "rediss://:***@h:1");
        assert_eq!(redact_url("redis://h:6379"), "redis://h:6379");
        assert_eq!(redact_url("redis://token@h"), "redis://***@h");
    }

    #[test]
    fn only_unavailability_counts_against_the_circuit() {
        assert!(RedisError::Timeout(Duration::from_millis(1)).is_outage());
        assert!(RedisError::Pool("refused".into()).is_outage());
        let noperm = redis::RedisError::from((
            ErrorKind::Server(ServerErrorKind::NoPerm),
            "NOPERM",
            "no permission".to_string(),
        ));
        assert!(!RedisError::Redis(noperm).is_outage());
        let loading =
            redis::RedisError::from((ErrorKind::Server(ServerErrorKind::BusyLoading), "LOADING"));
        assert!(RedisError::Redis(loading).is_outage());
    }
}
