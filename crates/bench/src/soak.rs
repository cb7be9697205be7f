//! The `soak` scenario: exactly once under faults. A simulated cluster
//! with host churn (`dfgraph simulate`), two gateway replicas (`dfgraph
//! serve`, separate processes) sharing one `redis-server` this tool starts
//! itself, and a `hostEvents` websocket subscriber on each replica, as a
//! console keeps one. Every `--fault-every` one fault, in rotation: Redis
//! killed and restarted on its port, Redis frozen (SIGSTOP, then SIGCONT),
//! every pub/sub connection cut (`CLIENT KILL TYPE pubsub`: the replicas'
//! listeners must subscribe again and catch up from the log).
//!
//! Redis runs with an append-only file synced on every write, in a
//! directory of its own, so the event log outlives its restarts and the
//! whole run can be checked against it. At the end each subscriber's
//! deliveries are compared with the log (the streams, read directly):
//! - **duplicates**: an event told twice (its cursor twice, or once with
//!   its cursor and once without);
//! - **missing**: a logged event of the checked window never told;
//! - **order violations**: a cursor told after a later one of its cluster;
//! - events told **without a cursor**: those the log did not take while
//!   Redis failed (logged later or never), told by the replica that saw
//!   them; and what the other replica's subscriber was told that this one
//!   was not (changes no log kept reached one replica only).
//!
//! A subscriber whose stream ends subscribes again with its last cursor,
//! as the console does (counted as a resume).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_util::sync::CancellationToken;

use dfgraph::cache::keys;
use dfgraph::clock::{Clock, SystemClock};
use dfgraph::events::log::{EventCursor, LogId};
use dfgraph::events::{What, bus};

use crate::watch::{listening, serve_command, sibling_dfgraph, start_simulator};
use crate::{BenchArgs, BenchError};

const SUBSCRIPTION: &str = "subscription($after: EventCursor) {
  hostEvents(after: $after) { kind host { id } cursor schedulerClusterId } }";

/// How long Redis stays frozen, and down between a kill and its restart.
const FREEZE: Duration = Duration::from_secs(5);
const DOWN: Duration = Duration::from_secs(2);
/// Before the checked window: both subscriptions registered and the
/// watcher's first poll (a baseline, no events) done.
const SETTLE_START: Duration = Duration::from_secs(5);
/// After the last fault window: events logged up to its end must have
/// been told by then.
const SETTLE_END: Duration = Duration::from_secs(10);

/// One fault of the rotation.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// SIGKILL, down for [`DOWN`], started again on its port.
    RedisRestart,
    /// SIGSTOP for [`FREEZE`], then SIGCONT.
    RedisFreeze,
    /// `CLIENT KILL TYPE pubsub`: every replica's listener loses the bus.
    PubsubCut,
}

const ROTATION: [Fault; 3] = [Fault::RedisRestart, Fault::RedisFreeze, Fault::PubsubCut];

/// One fault, when it began (seconds into the run).
#[derive(Serialize, Debug, Clone)]
pub struct FaultAt {
    pub at_s: f64,
    pub fault: Fault,
}

/// What one subscriber was told, against the log.
#[derive(Serialize, Debug, Clone, Default)]
pub struct SubscriberReport {
    pub replica: usize,
    /// Host events told in all, with a cursor, without one.
    pub received: u64,
    pub with_cursor: u64,
    pub without_cursor: u64,
    /// Logged events of the checked window.
    pub logged_in_window: u64,
    pub duplicates: u64,
    pub missing: u64,
    pub order_violations: u64,
    /// Logged events told only without their cursor (the log took them
    /// after they went out: a frozen Redis ran the append late).
    pub told_without_cursor: u64,
    /// Told without a cursor and not in the log at all.
    pub not_logged: u64,
    /// Log entries that repeat the entry before them for their host (the
    /// same join or leave, logged by two replicas that could not
    /// coordinate): one change, to be told once under either cursor.
    pub logged_copies: u64,
    /// Told to the other replica's subscriber within the window, not to
    /// this one (changes the log never took reach one replica only).
    pub only_on_the_other: u64,
    /// Cursors told that the log does not hold.
    pub unknown_cursors: u64,
    /// Times its stream ended and it subscribed again with its cursor.
    pub resumes: u64,
    /// The first few problems, for a reader.
    pub samples: Vec<String>,
}

/// What one soak run found.
#[derive(Serialize, Debug, Clone)]
pub struct SoakReport {
    pub dfgraph: String,
    pub hosts: usize,
    pub clusters: usize,
    pub duration_s: f64,
    pub fault_every_s: f64,
    pub faults: Vec<FaultAt>,
    /// Host events in the log (every cluster, the whole run).
    pub logged: u64,
    pub subscribers: Vec<SubscriberReport>,
}

impl SoakReport {
    /// Duplicates, missing events and order violations over every
    /// subscriber: zero when each logged event was told exactly once, in
    /// order.
    pub fn violations(&self) -> u64 {
        self.subscribers
            .iter()
            .map(|s| s.duplicates + s.missing + s.order_violations + s.unknown_cursors)
            .sum()
    }

    pub fn render(&self) -> String {
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|f| format!("{:.0}s {:?}", f.at_s, f.fault))
            .collect();
        let mut out = format!(
            "scenario soak ({} hosts in {} clusters, {:.0} s, a fault every {:.0} s, {})\n  \
             faults: {}\n  logged host events: {}\n",
            self.hosts,
            self.clusters,
            self.duration_s,
            self.fault_every_s,
            self.dfgraph,
            faults.join(", "),
            self.logged,
        );
        for s in &self.subscribers {
            out += &format!(
                "  subscriber on replica {}: received {} ({} with cursor, {} without), \
                 logged in window {}\n    duplicates {}  missing {}  order violations {}  \
                 unknown cursors {}\n    told without cursor {}  not logged {}  \
                 logged twice {}  only on the other replica {}  resumes {}\n",
                s.replica,
                s.received,
                s.with_cursor,
                s.without_cursor,
                s.logged_in_window,
                s.duplicates,
                s.missing,
                s.order_violations,
                s.unknown_cursors,
                s.told_without_cursor,
                s.not_logged,
                s.logged_copies,
                s.only_on_the_other,
                s.resumes,
            );
            for sample in &s.samples {
                out += &format!("    - {sample}\n");
            }
        }
        out
    }
}

/// The `redis-server` of the run: its port, its directory, its process.
struct RedisProcess {
    port: u16,
    dir: PathBuf,
    child: Option<std::process::Child>,
}

impl RedisProcess {
    async fn start(dir: PathBuf) -> Result<RedisProcess, BenchError> {
        std::fs::create_dir_all(&dir)
            .map_err(|e| BenchError::Scenario(format!("{}: {e}", dir.display())))?;
        let port = std::net::TcpListener::bind(("127.0.0.1", 0))
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(|e| BenchError::Scenario(format!("a free port: {e}")))?;
        let mut redis = RedisProcess {
            port,
            dir,
            child: None,
        };
        redis.spawn().await?;
        Ok(redis)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server on its port (again) and waits until it answers.
    async fn spawn(&mut self) -> Result<(), BenchError> {
        let failed = |e: String| BenchError::Scenario(format!("redis-server: {e}"));
        let child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--protected-mode", "no", "--loglevel", "warning"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| failed(e.to_string()))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.ping().await {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(failed(format!("not answering on port {}", self.port)))
    }

    async fn ping(&self) -> bool {
        let Ok(client) = redis::Client::open(self.url()) else {
            return false;
        };
        let ping = async {
            let mut conn = client.get_multiplexed_async_connection().await.ok()?;
            redis::cmd("PING")
                .query_async::<String>(&mut conn)
                .await
                .ok()
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(1), ping).await,
            Ok(Some(_))
        )
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn signal(&self, signal: &str) -> Result<(), BenchError> {
        let Some(child) = &self.child else {
            return Ok(());
        };
        let status = std::process::Command::new("kill")
            .arg(signal)
            .arg(child.id().to_string())
            .status()
            .map_err(|e| BenchError::Scenario(format!("kill {signal}: {e}")))?;
        if status.success() {
            Ok(())
        } else {
            Err(BenchError::Scenario(format!("kill {signal} failed")))
        }
    }

    async fn connection(&self) -> Result<redis::aio::MultiplexedConnection, BenchError> {
        redis::Client::open(self.url())
            .map_err(|e| BenchError::Scenario(format!("redis: {e}")))?
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| BenchError::Scenario(format!("redis: {e}")))
    }

    async fn inflict(&mut self, fault: Fault) -> Result<(), BenchError> {
        match fault {
            Fault::RedisRestart => {
                self.kill();
                tokio::time::sleep(DOWN).await;
                self.spawn().await
            }
            Fault::RedisFreeze => {
                self.signal("-STOP")?;
                tokio::time::sleep(FREEZE).await;
                self.signal("-CONT")
            }
            Fault::PubsubCut => {
                let mut conn = self.connection().await?;
                redis::cmd("CLIENT")
                    .arg("KILL")
                    .arg("TYPE")
                    .arg("pubsub")
                    .query_async::<i64>(&mut conn)
                    .await
                    .map(|_| ())
                    .map_err(|e| BenchError::Scenario(format!("CLIENT KILL: {e}")))
            }
        }
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        let _ = self.signal("-CONT");
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `dfgraph serve` on the simulator's schedulers and `redis`, until it
/// says where it listens; its further output is drained, its log goes to
/// this tool's standard error with `replica N:` before each line.
async fn start_replica(
    n: usize,
    dfgraph: &Path,
    args: &BenchArgs,
    schedulers: &[String],
    redis: &str,
) -> Result<(Child, String), BenchError> {
    let mut child = serve_command(dfgraph, args, schedulers)
        .await
        .args(["--redis", redis])
        // SOAK_RUST_LOG: the replicas' log filter (default warn).
        .env(
            "RUST_LOG",
            std::env::var("SOAK_RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| BenchError::Scenario(format!("{}: {e}", dfgraph.display())))?;
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(BenchError::Scenario("no stdout or stderr".into()));
    };
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("replica {n}: {line}");
        }
    });
    let url = listening(stdout).await?;
    Ok((child, url))
}

/// One host event as a subscriber was told it.
#[derive(Clone, Debug)]
struct Told {
    /// When (unix ms).
    at_ms: i64,
    cursor: Option<String>,
    /// (cluster, kind, host id): what the event says.
    what: (u64, String, String),
}

/// What a subscriber was told, in order, and how often it resumed.
#[derive(Default)]
struct Tally {
    told: Vec<Told>,
    resumes: u64,
}

/// Subscribes on `url` (a replica's base URL) and records every host event
/// until `stop`; a stream that ends is subscribed again with its last
/// cursor.
async fn subscribe(url: String, tally: Arc<Mutex<Tally>>, stop: CancellationToken) {
    let ws = format!("{}/graphql/ws", url.replacen("http://", "ws://", 1));
    let mut last: Option<String> = None;
    let mut first = true;
    while !stop.is_cancelled() {
        if !first {
            if let Ok(mut tally) = tally.lock() {
                tally.resumes += 1;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        first = false;
        let Ok(mut socket) = open(&ws, last.as_deref()).await else {
            continue;
        };
        loop {
            let frame = tokio::select! {
                _ = stop.cancelled() => return,
                frame = socket.next() => frame,
            };
            let Some(Ok(Message::Text(text))) = frame else {
                match frame {
                    Some(Ok(_)) => continue,
                    _ => break,
                }
            };
            let Ok(message) = serde_json::from_str::<serde_json::Value>(&text) else {
                continue;
            };
            match message["type"].as_str() {
                Some("next") => {
                    let event = &message["payload"]["data"]["hostEvents"];
                    if event.is_null() {
                        tracing::warn!(%message, "soak subscriber: an error in the stream");
                        continue;
                    }
                    let told = told(event);
                    if told.cursor.is_some() {
                        last.clone_from(&told.cursor);
                    }
                    if let Ok(mut tally) = tally.lock() {
                        tally.told.push(told);
                    }
                }
                Some("ping") => {
                    let pong = Message::text(r#"{"type":"pong"}"#.to_owned());
                    if socket.send(pong).await.is_err() {
                        break;
                    }
                }
                Some("error" | "complete") => {
                    tracing::warn!(%message, "soak subscriber: the stream ended");
                    break;
                }
                _ => {}
            }
        }
    }
}

/// A `hostEvents` subscription on `ws`, after `after` when given.
async fn open(ws: &str, after: Option<&str>) -> Result<crate::live::Socket, String> {
    let mut request = ws.into_client_request().map_err(|e| e.to_string())?;
    let protocol = "graphql-transport-ws".parse().map_err(|_| "header")?;
    request
        .headers_mut()
        .insert("sec-websocket-protocol", protocol);
    let (mut socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .map_err(|e| e.to_string())?;
    let messages = [
        serde_json::json!({"type": "connection_init", "payload": {}}),
        serde_json::json!({"type": "subscribe", "id": "1", "payload": {
            "query": SUBSCRIPTION, "variables": {"after": after}}}),
    ];
    for message in messages {
        socket
            .send(Message::text(message.to_string()))
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(socket)
}

/// The parts of a `hostEvents` payload the comparison needs.
fn told(event: &serde_json::Value) -> Told {
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
    Told {
        at_ms: SystemClock.now_ms_signed(),
        cursor: event["cursor"].as_str().map(str::to_owned),
        what: (
            text(&event["schedulerClusterId"]).parse().unwrap_or(0),
            text(&event["kind"]),
            text(&event["host"]["id"]),
        ),
    }
}

/// One host event of the log.
#[derive(Clone, Debug)]
struct Logged {
    cursor: String,
    id: LogId,
    what: (u64, String, String),
}

/// Every host event in the log of `clusters`, oldest first per cluster.
async fn read_log(redis: &RedisProcess, clusters: &[u64]) -> Result<Vec<Logged>, BenchError> {
    let mut conn = redis.connection().await?;
    let mut logged = Vec::new();
    for &cluster in clusters {
        let mut from = "-".to_owned();
        loop {
            let reply: redis::Value = redis::cmd("XRANGE")
                .arg(keys::event_log(cluster))
                .arg(&from)
                .arg("+")
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .map_err(|e| BenchError::Scenario(format!("XRANGE: {e}")))?;
            let entries = crate::bus::stream_entries(reply);
            let Some((last, _)) = entries.last() else {
                break;
            };
            from = format!("({last}");
            let full = entries.len() == 1000;
            for (id, bytes) in entries {
                let (Some(id), Ok((_, event))) = (LogId::parse(&id), bus::decode(&bytes)) else {
                    continue;
                };
                if let What::Host { change, host, .. } = &event.what {
                    logged.push(Logged {
                        cursor: EventCursor {
                            cluster_id: cluster,
                            id,
                        }
                        .encode(),
                        id,
                        what: (
                            cluster,
                            format!("{change:?}").to_uppercase(),
                            host.id.clone(),
                        ),
                    });
                }
            }
            if !full {
                break;
            }
        }
    }
    Ok(logged)
}

/// A unix-ms time of day, for samples.
fn clock(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%H:%M:%S%.3f").to_string())
        .unwrap_or_default()
}

/// Keeps `text` among the first few problems of `report`.
fn sample(report: &mut SubscriberReport, text: String) {
    if report.samples.len() < 10 {
        report.samples.push(text);
    }
}

/// Compares what a subscriber was told with the log; `window` is the span
/// of log ids (unix ms) every event of which must have been told, `other`
/// what the other subscriber was told.
fn compare(
    told: &[Told],
    logged: &[Logged],
    window: (u64, u64),
    other: &[Told],
) -> SubscriberReport {
    let mut report = SubscriberReport {
        received: told.len() as u64,
        ..SubscriberReport::default()
    };
    let in_log: HashSet<&str> = logged.iter().map(|l| l.cursor.as_str()).collect();
    // When each cursor was first told; when each event was told without one.
    let mut by_cursor: HashMap<&str, i64> = HashMap::new();
    let mut without: HashMap<&(u64, String, String), Vec<i64>> = HashMap::new();
    let mut newest: BTreeMap<u64, LogId> = BTreeMap::new();
    for t in told {
        let Some(cursor) = &t.cursor else {
            report.without_cursor += 1;
            without.entry(&t.what).or_default().push(t.at_ms);
            continue;
        };
        report.with_cursor += 1;
        if let Some(first) = by_cursor.insert(cursor.as_str(), t.at_ms) {
            by_cursor.insert(cursor.as_str(), first);
            report.duplicates += 1;
            sample(
                &mut report,
                format!(
                    "told twice: {cursor} {:?} at {} and {}",
                    t.what,
                    clock(first),
                    clock(t.at_ms)
                ),
            );
            continue;
        }
        if !in_log.contains(cursor.as_str()) {
            report.unknown_cursors += 1;
            sample(
                &mut report,
                format!("cursor not in the log: {cursor} {:?}", t.what),
            );
        }
        if let Ok(c) = EventCursor::decode(cursor) {
            let last = newest.entry(c.cluster_id).or_default();
            if c.id < *last {
                report.order_violations += 1;
                sample(&mut report, format!("out of order: {cursor} after {last}"));
            }
            *last = (*last).max(c.id);
        }
    }
    // Consecutive log entries of one host with the same transition (a join
    // after a join, a leave after a leave) are one change logged twice: two
    // replicas observed it while they could not coordinate. The change is
    // to be told once, under either entry's cursor.
    let mut first_of: Vec<usize> = Vec::with_capacity(logged.len());
    let mut last: HashMap<(u64, &str), (&str, usize)> = HashMap::new();
    for (i, l) in logged.iter().enumerate() {
        let key = (l.what.0, l.what.2.as_str());
        let kind = l.what.1.as_str();
        let first = match last.get(&key) {
            Some(&(k, first)) if k == kind && kind != "UPDATED" => first,
            _ => i,
        };
        first_of.push(first);
        last.insert(key, (kind, first));
    }
    let mut members: BTreeMap<usize, Vec<&Logged>> = BTreeMap::new();
    for (i, l) in logged.iter().enumerate() {
        members.entry(first_of[i]).or_default().push(l);
    }
    for (first, copies) in members {
        let l = &logged[first];
        report.logged_copies += copies.len() as u64 - 1;
        let told_with: Vec<(i64, &Logged)> = copies
            .iter()
            .filter_map(|c| by_cursor.get(c.cursor.as_str()).map(|&at| (at, *c)))
            .collect();
        if told_with.len() > 1 {
            report.duplicates += told_with.len() as u64 - 1;
            sample(
                &mut report,
                format!(
                    "one change logged {} times told {} times: {:?}",
                    copies.len(),
                    told_with.len(),
                    l.what
                ),
            );
        }
        let with = told_with.first().map(|(at, _)| *at);
        let unmarked = without.get_mut(&l.what).and_then(|at| at.pop());
        let in_window = copies
            .iter()
            .any(|c| (window.0..=window.1).contains(&c.id.ms));
        match (with, unmarked) {
            (Some(with), Some(unmarked)) => {
                report.duplicates += 1;
                sample(
                    &mut report,
                    format!(
                        "told without its cursor at {} and with it at {} (logged at {}): {} {:?}",
                        clock(unmarked),
                        clock(with),
                        clock(i64::try_from(l.id.ms).unwrap_or(0)),
                        l.cursor,
                        l.what
                    ),
                );
            }
            (Some(_), None) => {}
            (None, Some(_)) => report.told_without_cursor += 1,
            (None, None) if in_window => {
                report.missing += 1;
                sample(
                    &mut report,
                    format!("never told: {} {:?}", l.cursor, l.what),
                );
            }
            (None, None) => {}
        }
    }
    for l in logged {
        if (window.0..=window.1).contains(&l.id.ms) {
            report.logged_in_window += 1;
        }
    }
    for (what, at) in without {
        let n = at.len() as u64;
        if n > 0 {
            report.not_logged += 1;
            if n > 1 {
                report.duplicates += n - 1;
                sample(
                    &mut report,
                    format!("told {n} times without a cursor: {what:?}"),
                );
            }
        }
    }
    let mine: HashSet<&(u64, String, String)> = told.iter().map(|t| &t.what).collect();
    report.only_on_the_other = other
        .iter()
        .filter(|t| !mine.contains(&t.what))
        .map(|t| &t.what)
        .collect::<HashSet<_>>()
        .len() as u64;
    report
}

/// Runs the scenario; see the module doc.
pub async fn run(args: &BenchArgs) -> Result<SoakReport, BenchError> {
    let dfgraph = match &args.dfgraph {
        Some(path) => path.clone(),
        None => sibling_dfgraph()?,
    };
    let dir = std::env::temp_dir().join(format!("dfgraph-soak-{}", std::process::id()));
    let mut redis = RedisProcess::start(dir).await?;
    let (mut simulator, schedulers) = start_simulator(&dfgraph, args, Some(args.sim_tick)).await?;
    let mut replicas = Vec::new();
    for n in 1..=2 {
        replicas.push(start_replica(n, &dfgraph, args, &schedulers, &redis.url()).await?);
    }
    let stop = CancellationToken::new();
    let tallies: Vec<Arc<Mutex<Tally>>> = (0..replicas.len()).map(|_| Arc::default()).collect();
    let subscribers: Vec<_> = replicas
        .iter()
        .zip(&tallies)
        .map(|((_, url), tally)| tokio::spawn(subscribe(url.clone(), tally.clone(), stop.clone())))
        .collect();
    tokio::time::sleep(SETTLE_START).await;

    let started = Instant::now();
    let window_from = SystemClock.now_ms_signed();
    let mut faults = Vec::new();
    let mut next = 0;
    loop {
        let due = args.fault_every * (u32::try_from(faults.len()).unwrap_or(u32::MAX) + 1);
        if due >= args.duration {
            break;
        }
        tokio::time::sleep(due.saturating_sub(started.elapsed())).await;
        let fault = ROTATION[next % ROTATION.len()];
        next += 1;
        faults.push(FaultAt {
            at_s: started.elapsed().as_secs_f64(),
            fault,
        });
        tracing::info!(?fault, "soak: fault");
        redis.inflict(fault).await?;
    }
    tokio::time::sleep(args.duration.saturating_sub(started.elapsed())).await;
    let window_to = SystemClock.now_ms_signed();
    tokio::time::sleep(SETTLE_END).await;
    stop.cancel();
    for subscriber in subscribers {
        let _ = subscriber.await;
    }
    let duration_s = started.elapsed().as_secs_f64();

    let clusters: Vec<u64> = (1..=args.clusters as u64).collect();
    let logged = read_log(&redis, &clusters).await?;
    let window = (
        u64::try_from(window_from).unwrap_or(0),
        u64::try_from(window_to).unwrap_or(0),
    );
    let told: Vec<Vec<Told>> = tallies
        .iter()
        .map(|t| t.lock().map(|t| t.told.clone()).unwrap_or_default())
        .collect();
    let mut reports = Vec::new();
    for (i, tally) in tallies.iter().enumerate() {
        let other = &told[(i + 1) % told.len()];
        let mut report = compare(&told[i], &logged, window, other);
        report.replica = i + 1;
        report.resumes = tally.lock().map(|t| t.resumes).unwrap_or(0);
        reports.push(report);
    }
    for (child, _) in &mut replicas {
        let _ = child.kill().await;
    }
    let _ = simulator.kill().await;
    Ok(SoakReport {
        dfgraph: dfgraph.display().to_string(),
        hosts: args.hosts,
        clusters: args.clusters,
        duration_s,
        fault_every_s: args.fault_every.as_secs_f64(),
        faults,
        logged: logged.len() as u64,
        subscribers: reports,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cursor(ms: u64) -> String {
        EventCursor {
            cluster_id: 1,
            id: LogId { ms, seq: 0 },
        }
        .encode()
    }

    fn what(host: &str) -> (u64, String, String) {
        (1, "JOINED".to_owned(), host.to_owned())
    }

    fn logged(ms: u64, host: &str) -> Logged {
        Logged {
            cursor: cursor(ms),
            id: LogId { ms, seq: 0 },
            what: what(host),
        }
    }

    fn told(ms: Option<u64>, host: &str) -> Told {
        Told {
            at_ms: 0,
            cursor: ms.map(cursor),
            what: what(host),
        }
    }

    #[test]
    fn exactly_once_in_order_is_clean() {
        let log = [logged(10, "a"), logged(20, "b")];
        let report = compare(
            &[told(Some(10), "a"), told(Some(20), "b")],
            &log,
            (0, 100),
            &[],
        );
        assert_eq!(
            (report.duplicates, report.missing, report.order_violations),
            (0, 0, 0)
        );
        assert_eq!(report.logged_in_window, 2);
    }

    #[test]
    fn twice_missing_and_out_of_order_are_counted() {
        let log = [
            logged(10, "a"),
            logged(20, "b"),
            logged(30, "c"),
            logged(40, "d"),
        ];
        let told_ = [
            told(Some(20), "b"),
            told(Some(10), "a"),
            told(Some(20), "b"),
            told(None, "b"),
            told(None, "e"),
            told(None, "e"),
        ];
        let report = compare(&told_, &log, (0, 35), &[told(None, "f")]);
        // b twice by cursor, b once more without, e twice without.
        assert_eq!(report.duplicates, 3, "{report:?}");
        assert_eq!(report.order_violations, 1);
        // c is in the window and never told; d is after it.
        assert_eq!(report.missing, 1);
        assert_eq!(report.not_logged, 1);
        assert_eq!(report.only_on_the_other, 1);
    }

    #[test]
    fn a_logged_event_told_only_without_its_cursor_is_not_missing() {
        let report = compare(&[told(None, "a")], &[logged(10, "a")], (0, 100), &[]);
        assert_eq!((report.missing, report.told_without_cursor), (0, 1));
    }

    #[test]
    fn one_join_logged_twice_is_told_once_under_either_cursor_but_two_updates_are_two() {
        let update = |ms: u64| Logged {
            what: (1, "UPDATED".to_owned(), "b".to_owned()),
            ..logged(ms, "b")
        };
        let log = [logged(10, "a"), logged(20, "a"), update(30), update(40)];
        let told_update = Told {
            what: (1, "UPDATED".to_owned(), "b".to_owned()),
            ..told(Some(30), "b")
        };
        let report = compare(
            &[told(Some(20), "a"), told_update.clone()],
            &log,
            (0, 100),
            &[],
        );
        assert_eq!(report.logged_copies, 1, "{report:?}");
        assert_eq!(
            report.missing, 1,
            "the second update was never told: {report:?}"
        );
        assert_eq!(report.duplicates, 0, "{report:?}");
        let twice = compare(
            &[told(Some(10), "a"), told(Some(20), "a"), told_update],
            &log,
            (0, 35),
            &[],
        );
        assert_eq!(
            twice.duplicates, 1,
            "one join told under both its cursors: {twice:?}"
        );
        assert_eq!(twice.missing, 0, "{twice:?}");
    }
}
