//! `dfgraph-bench --scenario live`: S websocket subscribers on
//! `hostEvents`, host changes made in the simulated cluster at R per
//! second; reports delivery lag (event published -> message received),
//! detection lag (change made -> event published) and the gateway's memory
//! per idle subscriber.
//!
//! The subscribers run in a child process (`dfgraph-bench subscribers`) by
//! default, so the gateway's RSS is its own and each process stays under
//! its open-file limit at 10k connections.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::SinkExt;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::{BenchArgs, BenchError, rss_mib};
use crate::ws_reader::{Opcode, WsClient};
use dfgraph::clock::{Clock, SystemClock};
use dfgraph::config::Config;
use dfgraph::gateway::Gateway;
use dfgraph_sim::{SimCluster, SimConfig};

const SUBSCRIPTION: &str = "subscription { hostEvents { kind host { id hostname } observedAt } }";
/// The same events, as many per message as arrived together (`--batched`).
const BATCHED_SUBSCRIPTION: &str =
    "subscription { hostEventBatches { kind host { id hostname } observedAt } }";

/// What the subscribers saw.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct SubscriberReport {
    pub connected: u64,
    pub failed: u64,
    pub messages: u64,
    /// Websocket messages that carried events (fewer than `messages` when
    /// batched).
    #[serde(default)]
    pub event_messages: u64,
    pub errors: u64,
    pub delivery_p50_ms: f64,
    pub delivery_p99_ms: f64,
    pub delivery_max_ms: f64,
    pub detection_p50_ms: f64,
    pub detection_p99_ms: f64,
    pub detection_max_ms: f64,
}

/// What one live run measured.
#[derive(Serialize, Debug, Clone)]
pub struct LiveReport {
    pub subscribers: usize,
    /// Gateway replicas the subscribers were spread over.
    pub replicas: usize,
    /// Subscribed to `hostEventBatches` instead of `hostEvents`.
    pub batched: bool,
    pub event_rate: u64,
    pub watch_interval_ms: u64,
    pub duration_s: f64,
    pub changes_made: u64,
    /// Host events the gateway published.
    pub events_published: u64,
    /// From an event's observation to its arrival on each gateway's bus
    /// (the watcher's share of the delivery lag): p50 and p99, one pair
    /// per replica in start order. Events another replica polled reach
    /// this one through Redis, so its figure includes that hop.
    pub bus_lag_ms: Vec<(f64, f64)>,
    /// Messages every subscriber should have received (events x subscribers).
    pub deliveries_expected: u64,
    pub subscribers_report: SubscriberReport,
    pub rss_mib_before: Option<f64>,
    pub rss_mib_idle: Option<f64>,
    pub rss_mib_after: Option<f64>,
    pub idle_kib_per_subscriber: Option<f64>,
    pub subscribers_in_process: bool,
}

impl LiveReport {
    pub fn render(&self) -> String {
        let s = &self.subscribers_report;
        let mut out = format!(
            "scenario live ({} subscribers{}{}, {} host changes/s, watch interval {} ms, {:.1} s)\n",
            self.subscribers,
            if self.subscribers_in_process {
                " in process"
            } else {
                ""
            },
            if self.replicas > 1 {
                format!(" over {} replicas", self.replicas)
            } else {
                String::new()
            } + if self.batched { ", batched" } else { "" },
            self.event_rate,
            self.watch_interval_ms,
            self.duration_s
        );
        out += &format!(
            "  changes made {}  events published {}  deliveries {} of {} expected  errors {}  failed connections {}\n",
            self.changes_made,
            self.events_published,
            s.messages,
            self.deliveries_expected,
            s.errors,
            s.failed
        );
        if s.event_messages > 0 {
            out += &format!(
                "  {} event messages ({:.1} events each)\n",
                s.event_messages,
                s.messages as f64 / s.event_messages as f64
            );
        }
        for (n, (p50, p99)) in self.bus_lag_ms.iter().enumerate() {
            let replica = if self.bus_lag_ms.len() > 1 {
                format!(" (replica {})", n + 1)
            } else {
                String::new()
            };
            out += &format!(
                "  on the bus after observation{replica} p50 {p50:.1} ms  p99 {p99:.1} ms\n"
            );
        }
        out += &format!(
            "  delivery lag p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms\n",
            s.delivery_p50_ms, s.delivery_p99_ms, s.delivery_max_ms,
        );
        // Every recorded lag is at least 1 ms: a max of 0 is an empty record.
        if s.detection_max_ms > 0.0 {
            out += &format!(
                "  detection lag p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms\n",
                s.detection_p50_ms, s.detection_p99_ms, s.detection_max_ms
            );
        } else {
            out += "  detection lag: none recorded\n";
        }
        if let (Some(before), Some(idle), Some(after)) =
            (self.rss_mib_before, self.rss_mib_idle, self.rss_mib_after)
        {
            out += &format!(
                "  gateway process RSS {before:.1} MiB -> {idle:.1} MiB idle with subscribers -> {after:.1} MiB after\n"
            );
        }
        if let Some(kib) = self.idle_kib_per_subscriber {
            out += &format!("  {kib:.1} KiB per idle subscriber\n");
        }
        out
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 3_600_000, 3).expect("constant histogram bounds are valid")
}

/// Shared tallies of the subscriber side.
struct Tally {
    connected: AtomicU64,
    failed: AtomicU64,
    messages: AtomicU64,
    event_messages: AtomicU64,
    errors: AtomicU64,
    delivery: Mutex<Histogram<u64>>,
    detection: Mutex<Histogram<u64>>,
}

/// Opens `n` connections to `bases` (`http://host:port`, several
/// separated by commas: spread round robin), each with one `hostEvents`
/// subscription, and records lags until `stop`.
pub async fn subscribe_all(
    bases: &str,
    n: usize,
    batched: bool,
    stop: tokio_util::sync::CancellationToken,
) -> SubscriberReport {
    let tally = Arc::new(Tally {
        connected: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        messages: AtomicU64::new(0),
        event_messages: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        delivery: Mutex::new(histogram()),
        detection: Mutex::new(histogram()),
    });
    let urls: Vec<String> = bases
        .split(',')
        .map(|base| {
            format!(
                "{}/graphql/ws",
                base.trim()
                    .trim_end_matches('/')
                    .replace("http://", "ws://")
            )
        })
        .collect();
    let detection_claims: Vec<Arc<std::sync::atomic::AtomicBool>> =
        urls.iter().map(|_| Arc::default()).collect();
    let mut tasks = Vec::with_capacity(n);
    // Connect in waves so the accept queue is not overrun.
    for wave in 0..n.div_ceil(200) {
        let mut waiting = Vec::new();
        for i in (wave * 200)..((wave + 1) * 200).min(n) {
            let url = urls[i % urls.len()].clone();
            let (tally, stop) = (tally.clone(), stop.clone());
            let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
            // Detection lag is the event's, not the delivery's: every
            // subscriber would record the same values. The first one to
            // connect to each gateway records it, so 10k subscribers do
            // not spend the cores the gateway under test needs.
            let detection_claim = detection_claims[i % urls.len()].clone();
            tasks.push(tokio::spawn(subscriber(
                url,
                batched,
                detection_claim,
                tally,
                stop,
                ready_tx,
            )));
            waiting.push(ready_rx);
        }
        for ready in waiting {
            let _ = ready.await;
        }
    }
    for task in tasks {
        let _ = task.await;
    }
    let delivery = tally.delivery.lock().await;
    let detection = tally.detection.lock().await;
    let q = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64;
    SubscriberReport {
        connected: tally.connected.load(Ordering::Relaxed),
        failed: tally.failed.load(Ordering::Relaxed),
        messages: tally.messages.load(Ordering::Relaxed),
        event_messages: tally.event_messages.load(Ordering::Relaxed),
        errors: tally.errors.load(Ordering::Relaxed),
        delivery_p50_ms: q(&delivery, 0.5),
        delivery_p99_ms: q(&delivery, 0.99),
        delivery_max_ms: delivery.max() as f64,
        detection_p50_ms: q(&detection, 0.5),
        detection_p99_ms: q(&detection, 0.99),
        detection_max_ms: detection.max() as f64,
    }
}

/// One subscriber's websocket.
pub(crate) type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A websocket to the gateway at `url`, initialised and subscribed to
/// [`SUBSCRIPTION`] (or [`BATCHED_SUBSCRIPTION`]), read with the load
/// tool's own frame reader ([`crate::ws_reader`]).
async fn connect_and_subscribe(url: &str, batched: bool) -> Result<WsClient, String> {
    let query = if batched {
        BATCHED_SUBSCRIPTION
    } else {
        SUBSCRIPTION
    };
    let mut socket = WsClient::connect(url, "graphql-transport-ws")
        .await
        .map_err(|e| e.to_string())?;
    let init = serde_json::json!({"type": "connection_init", "payload": {}});
    let subscribe =
        serde_json::json!({"type": "subscribe", "id": "1", "payload": {"query": query}});
    for message in [init, subscribe] {
        socket
            .send_text(&message.to_string())
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(socket)
}

/// A websocket to the gateway at `url`, initialised and subscribed (id
/// "1") to `query`.
pub(crate) async fn connect_and_subscribe_to(url: &str, query: &str) -> Result<Socket, String> {
    let mut request = url.into_client_request().map_err(|e| e.to_string())?;
    let protocol = "graphql-transport-ws".parse().map_err(|_| "header")?;
    request
        .headers_mut()
        .insert("sec-websocket-protocol", protocol);
    // tungstenite zero-fills its whole read buffer before each read (128
    // KiB by default): sized for a batch message, not more.
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(32 * 1024);
    let (mut socket, _) =
        tokio_tungstenite::connect_async_with_config(request, Some(config), false)
            .await
            .map_err(|e| e.to_string())?;
    let init = serde_json::json!({"type": "connection_init", "payload": {}});
    socket
        .send(Message::text(init.to_string()))
        .await
        .map_err(|e| e.to_string())?;
    let subscribe =
        serde_json::json!({"type": "subscribe", "id": "1", "payload": {"query": query}});
    socket
        .send(Message::text(subscribe.to_string()))
        .await
        .map_err(|e| e.to_string())?;
    Ok(socket)
}

async fn subscriber(
    url: String,
    batched: bool,
    detection_claim: Arc<std::sync::atomic::AtomicBool>,
    tally: Arc<Tally>,
    stop: tokio_util::sync::CancellationToken,
    ready: tokio::sync::oneshot::Sender<()>,
) {
    let mut socket = match connect_and_subscribe(&url, batched).await {
        Ok(socket) => socket,
        Err(error) => {
            tracing::debug!(%error, "subscriber could not connect");
            tally.failed.fetch_add(1, Ordering::Relaxed);
            let _ = ready.send(());
            return;
        }
    };
    tally.connected.fetch_add(1, Ordering::Relaxed);
    let records_detection = !detection_claim.swap(true, Ordering::Relaxed);
    let _ = ready.send(());
    // Delivery lags as (lag, count) runs, into the shared histogram at the
    // end: a histogram per subscriber (~100 KiB of counts, zeroed lazily)
    // made the tool fault in pages as lags reached new buckets, CPU the
    // gateway under test shares. Detection is recorded by one subscriber.
    let mut delivery: Vec<(u64, u64)> = Vec::new();
    let mut detection = records_detection.then(histogram);
    let (observed_at, hostname) = (FieldFinder::new("observedAt"), FieldFinder::new("hostname"));
    // The events of one poll share their observation time, mostly: one
    // parse per distinct timestamp.
    let mut last_observed: Option<(String, i64)> = None;
    // Registered once: a `cancelled()` made per message would put a waiter
    // on (and take it off) the one list all subscribers share, twice a
    // message under its lock.
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    loop {
        let frame = tokio::select! {
            biased;
            frame = socket.next() => frame,
            _ = &mut stopped => break,
        };
        // Each message is timed as it is read: a read brings many, and
        // each gets the clock when its turn comes (never earlier than it
        // arrived).
        let received = SystemClock.now_ms_signed();
        let text = match frame {
            Ok(Some((Opcode::Text, payload))) => match std::str::from_utf8(payload) {
                Ok(text) => text,
                Err(_) => {
                    tally.errors.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            },
            Ok(Some((Opcode::Close, _))) | Ok(None) | Err(_) => break,
            Ok(Some(_)) => continue,
        };
        // Event messages are read by field search, not parsed whole: at a
        // million messages a second the load tool must not be what limits
        // the run. Anything else is parsed.
        if !text.starts_with(r#"{"type":"next""#) {
            let Ok(value) = serde_json::from_str::<serde_json::Value>(text) else {
                tally.errors.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            match value["type"].as_str() {
                Some("ping") => {
                    let _ = socket.send_text(r#"{"type":"pong"}"#).await;
                }
                Some("connection_ack" | "pong") => {}
                _ => {
                    tally.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            continue;
        }
        if text.contains(r#""errors""#) {
            tally.errors.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        // One event per message, or a batch of them: each event has its
        // hostname, then its observedAt.
        let mut hostnames = records_detection.then(|| hostname.values(text));
        let mut events: u64 = 0;
        // Events read together with one observation time have one delivery
        // lag: recorded once with their count.
        let mut same_lag: Option<(u64, u64)> = None;
        for observed in observed_at.values(text) {
            let hostname = hostnames.as_mut().and_then(|names| names.next());
            let observed = match &last_observed {
                Some((text, ms)) if text == observed => *ms,
                _ => match chrono::DateTime::parse_from_rfc3339(observed) {
                    Ok(at) => {
                        last_observed = Some((observed.to_owned(), at.timestamp_millis()));
                        at.timestamp_millis()
                    }
                    Err(_) => {
                        tally.errors.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                },
            };
            events += 1;
            let lag = (received - observed).max(1) as u64;
            match &mut same_lag {
                Some((value, count)) if *value == lag => *count += 1,
                _ => {
                    if let Some(run) = same_lag.replace((lag, 1)) {
                        delivery.push(run);
                    }
                }
            }
            // The generator writes `bench-<seq>-<unix ms>` as the hostname.
            if let (Some(changed), Some(detection)) = (
                hostname
                    .and_then(|name| name.rsplit('-').next())
                    .and_then(|ms| ms.parse::<i64>().ok()),
                detection.as_mut(),
            ) {
                let _ = detection.record((observed - changed).max(1) as u64);
            }
        }
        if let Some(run) = same_lag {
            match delivery.last_mut() {
                Some((value, count)) if *value == run.0 => *count += run.1,
                _ => delivery.push(run),
            }
        }
        if events == 0 {
            tally.errors.fetch_add(1, Ordering::Relaxed);
        } else {
            tally.event_messages.fetch_add(1, Ordering::Relaxed);
        }
        tally.messages.fetch_add(events, Ordering::Relaxed);
    }
    {
        let mut histogram = tally.delivery.lock().await;
        for (lag, count) in delivery {
            let _ = histogram.record_n(lag, count);
        }
    }
    if let Some(detection) = detection {
        let _ = tally.detection.lock().await.add(&detection);
    }
}

/// The value of the first `"name":"..."` string field in `json` (values
/// without escapes only, which is what timestamps and bench hostnames are).
#[cfg(test)]
fn string_field<'a>(json: &'a str, name: &str) -> Option<&'a str> {
    string_fields(json, name).first().copied()
}

/// The values of every `"name":"..."` string field in `json`, in order
/// (values without escapes only, as [`string_field`]).
#[cfg(test)]
fn string_fields<'j>(json: &'j str, name: &str) -> Vec<&'j str> {
    FieldFinder::new(name).values(json).collect()
}

/// Finds the values of one string field, its searcher built once.
struct FieldFinder {
    pattern: memchr::memmem::Finder<'static>,
}

impl FieldFinder {
    fn new(name: &str) -> Self {
        Self {
            pattern: memchr::memmem::Finder::new(format!(r#""{name}":""#).as_bytes()).into_owned(),
        }
    }

    fn values<'j>(&self, json: &'j str) -> impl Iterator<Item = &'j str> + use<'_, 'j> {
        let mut rest = json;
        std::iter::from_fn(move || {
            let start = self.pattern.find(rest.as_bytes())? + self.pattern.needle().len();
            let len = memchr::memchr(b'"', rest.get(start..)?.as_bytes())?;
            let value = rest.get(start..start + len)?;
            rest = rest.get(start + len..)?;
            Some(value)
        })
    }
}

/// Runs the live scenario as `args` describe (in-process cluster and
/// gateway only: the generator changes the simulated hosts).
pub async fn run(args: &BenchArgs) -> Result<LiveReport, BenchError> {
    if args.target.is_some() {
        return Err(BenchError::Scenario(
            "the live scenario needs the in-process cluster (it makes the changes); drop --target"
                .into(),
        ));
    }
    let (sim, gateways) = start_cluster_and_gateways(args).await?;
    let urls: Vec<String> = gateways.iter().map(|g| g.url()).collect();
    // The watcher polls host lists once anyone looks at hosts: start that
    // now, so its (fixed) memory is in the baseline, not charged to the
    // subscribers.
    for gateway in &gateways {
        gateway.state.events.interest.touch_hosts();
    }
    tokio::time::sleep(args.watch_interval * 3 + Duration::from_secs(1)).await;
    let rss_before = rss_mib();

    let stop = tokio_util::sync::CancellationToken::new();
    let subscribers = args.subscribers;
    let side = Subscribers::start(args, &urls.join(","), &stop)?;
    let events: Vec<_> = gateways.iter().map(|g| &g.state.events).collect();
    wait_for_subscribers(&events, subscribers).await?;
    // A few polls: the watcher's baseline, and memory settles.
    tokio::time::sleep(args.watch_interval * 3 + Duration::from_secs(1)).await;
    let rss_idle = rss_mib();

    // Every replica hears every host event: the first one counts them,
    // each one times them.
    let counted: Vec<_> = events.iter().map(|e| count_host_events(e)).collect();
    let rate = args.event_rate.max(1);
    let (made, elapsed) = change_hosts(&sim, args, rate).await;
    // Let the last changes be polled and delivered.
    tokio::time::sleep(args.watch_interval * 2 + Duration::from_secs(2)).await;
    let rss_after = rss_mib();
    let events_published = counted
        .first()
        .map_or(0, |(published, _, _)| published.load(Ordering::Relaxed));
    let mut bus_lag_ms = Vec::with_capacity(counted.len());
    for (_, bus_lag, counting) in &counted {
        counting.abort();
        let lag = bus_lag.lock().await;
        bus_lag_ms.push((
            lag.value_at_quantile(0.5) as f64,
            lag.value_at_quantile(0.99) as f64,
        ));
    }

    let subscribers_report = side.report(&stop).await?;
    for gateway in gateways {
        gateway.shutdown().await;
    }
    sim.shutdown().await;
    let idle_kib_per_subscriber = match (rss_before, rss_idle) {
        (Some(before), Some(idle)) if subscribers > 0 => {
            Some((idle - before) * 1024.0 / subscribers as f64)
        }
        _ => None,
    };
    Ok(LiveReport {
        subscribers,
        replicas: args.replicas.max(1),
        batched: args.batched,
        event_rate: rate,
        watch_interval_ms: args.watch_interval.as_millis() as u64,
        duration_s: elapsed.as_secs_f64(),
        changes_made: made,
        events_published,
        bus_lag_ms,
        deliveries_expected: events_published * subscribers as u64,
        subscribers_report,
        rss_mib_before: rss_before,
        rss_mib_idle: rss_idle,
        rss_mib_after: rss_after,
        idle_kib_per_subscriber,
        subscribers_in_process: args.in_process_subscribers,
    })
}

/// The simulated cluster `args` describe (not ticking: only the bench
/// changes it) and a gateway in front of it.
async fn start_cluster_and_gateways(
    args: &BenchArgs,
) -> Result<(SimCluster, Vec<Gateway>), BenchError> {
    let replicas = args.replicas.max(1);
    if replicas > 1 && args.redis.is_none() {
        return Err(BenchError::Scenario(
            "--replicas above 1 needs --redis: replicas share events through it".into(),
        ));
    }
    let sim = SimCluster::start(SimConfig {
        clusters: args.clusters,
        schedulers_per_cluster: args.schedulers_per_cluster,
        hosts: args.hosts,
        tasks: args.tasks,
        peers_per_task: args.peers_per_task,
        tick_interval: None,
        // These scenarios measure the gateway, not host probes: no
        // listening socket per host.
        host_health: false,
        ..SimConfig::default()
    })
    .await
    .map_err(|e| BenchError::Simulator(e.to_string()))?;
    let mut config = Config {
        listen: "127.0.0.1:0"
            .parse()
            .map_err(|e| BenchError::Scenario(format!("{e}")))?,
        schedulers: sim
            .schedulers()
            .iter()
            .map(|s| format!("{}={}", s.cluster_id, s.addr))
            .collect(),
        redis: args.redis.clone(),
        ..Config::default()
    };
    config.watch.interval = args.watch_interval;
    config.watch.lease_ttl = args.watch_interval * 3;
    config.liveness.enabled = false;
    config.liveness.networks = vec!["127.0.0.0/8".into()];
    config.subscriptions.total = args.subscribers.max(1) + 100;
    let mut gateways = Vec::with_capacity(replicas);
    for _ in 0..replicas {
        gateways.push(Gateway::start(config.clone()).await?);
    }
    Ok((sim, gateways))
}

/// Where the subscribers run: a task of this process, or a child process.
enum Subscribers {
    InProcess(tokio::sync::oneshot::Receiver<SubscriberReport>),
    Process(tokio::process::Child),
}

impl Subscribers {
    /// Starts `args.subscribers` subscribers on the gateway at `url`.
    fn start(
        args: &BenchArgs,
        url: &str,
        stop: &tokio_util::sync::CancellationToken,
    ) -> Result<Self, BenchError> {
        let (subscribers, batched) = (args.subscribers, args.batched);
        if args.in_process_subscribers {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let (url, stop) = (url.to_owned(), stop.clone());
            tokio::spawn(async move {
                let _ = tx.send(subscribe_all(&url, subscribers, batched, stop).await);
            });
            return Ok(Self::InProcess(rx));
        }
        let exe = std::env::current_exe()
            .map_err(|e| BenchError::Scenario(format!("cannot find this executable: {e}")))?;
        let mut command = tokio::process::Command::new(exe);
        command
            .args(["subscribers", "--target", url, "--subscribers"])
            .arg(subscribers.to_string());
        if batched {
            command.arg("--batched");
        }
        let child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                BenchError::Scenario(format!("cannot start the subscriber process: {e}"))
            })?;
        Ok(Self::Process(child))
    }

    /// Stops the subscribers and returns what they saw.
    async fn report(
        self,
        stop: &tokio_util::sync::CancellationToken,
    ) -> Result<SubscriberReport, BenchError> {
        match self {
            Self::InProcess(rx) => {
                stop.cancel();
                Ok(rx.await.unwrap_or_default())
            }
            Self::Process(mut child) => {
                if let Some(mut stdin) = child.stdin.take() {
                    let _ = stdin.write_all(b"stop\n").await;
                }
                let mut line = String::new();
                if let Some(stdout) = child.stdout.take() {
                    let _ = BufReader::new(stdout).read_line(&mut line).await;
                }
                let _ = child.wait().await;
                serde_json::from_str(&line).map_err(|e| {
                    BenchError::Scenario(format!("subscriber process report {line:?}: {e}"))
                })
            }
        }
    }
}

/// Waits (up to five minutes) until every subscriber has subscribed.
async fn wait_for_subscribers(
    events: &[&dfgraph::events::Events],
    subscribers: usize,
) -> Result<(), BenchError> {
    let connect_deadline = Instant::now() + Duration::from_secs(300);
    let live = || events.iter().map(|e| e.live_subscriptions()).sum::<usize>();
    while live() < subscribers {
        if Instant::now() > connect_deadline {
            return Err(BenchError::Scenario(format!(
                "only {} of {subscribers} subscribers connected",
                live()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Counts the host events the gateway publishes and how long after
/// their observation they reach its bus, until aborted.
fn count_host_events(
    events: &dfgraph::events::Events,
) -> (
    Arc<AtomicU64>,
    Arc<Mutex<Histogram<u64>>>,
    tokio::task::JoinHandle<()>,
) {
    let mut bus = events.bus.subscribe();
    let published = Arc::new(AtomicU64::new(0));
    let lag = Arc::new(Mutex::new(histogram()));
    let (counter, lags) = (published.clone(), lag.clone());
    let counting = tokio::spawn(async move {
        loop {
            match bus.recv().await {
                Ok(event) if event.kind() == "host" => {
                    counter.fetch_add(1, Ordering::Relaxed);
                    let waited = SystemClock.now_ms_signed() - event.observed_at_ms;
                    let _ = lags.lock().await.record(waited.max(1) as u64);
                }
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => break,
            }
        }
    });
    (published, lag, counting)
}

/// Renames simulated hosts, `rate` per second, for `args.duration`:
/// returns how many changes were made and how long that took.
async fn change_hosts(sim: &SimCluster, args: &BenchArgs, rate: u64) -> (u64, Duration) {
    let hosts: Vec<_> = sim
        .cluster_ids()
        .into_iter()
        .flat_map(|c| sim.hosts(c))
        .collect();
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let started = Instant::now();
    let mut next = started;
    let mut made = 0u64;
    while started.elapsed() < args.duration && !hosts.is_empty() {
        tokio::time::sleep_until(next.into()).await;
        let mut host = hosts[made as usize % hosts.len()].clone();
        host.hostname = format!("bench-{made}-{}", SystemClock.now_ms());
        sim.upsert_host(host);
        made += 1;
        next += period;
    }
    (made, started.elapsed())
}

/// `dfgraph-bench subscribers`: the subscriber side in its own process;
/// stops when told on stdin (or stdin closes) and prints its report as one
/// JSON line.
pub async fn subscriber_process(
    target: &str,
    subscribers: usize,
    batched: bool,
) -> SubscriberReport {
    let stop = tokio_util::sync::CancellationToken::new();
    let watcher = stop.clone();
    tokio::spawn(async move {
        let mut line = String::new();
        let _ = BufReader::new(tokio::io::stdin())
            .read_line(&mut line)
            .await;
        watcher.cancel();
    });
    subscribe_all(target, subscribers, batched, stop).await
}

#[cfg(test)]
mod tests {
    use super::{string_field, string_fields};

    #[test]
    fn string_fields_are_found_without_parsing() {
        let message = r#"{"type":"next","id":"1","payload":{"data":{"hostEvents":{"kind":"UPDATED","host":{"id":"h","hostname":"bench-7-1700000000123"},"observedAt":"2026-11-25T10:00:00.123+00:00"}}}}"#;
        assert_eq!(
            string_field(message, "hostname"),
            Some("bench-7-1700000000123")
        );
        assert_eq!(
            string_field(message, "observedAt"),
            Some("2026-11-25T10:00:00.123+00:00")
        );
        assert_eq!(string_field(message, "missing"), None);
        let batch = r#"{"type":"next","id":"1","payload":{"data":{"hostEventBatches":[{"host":{"hostname":"bench-1-5"},"observedAt":"a"},{"host":{"hostname":"bench-2-6"},"observedAt":"b"}]}}}"#;
        assert_eq!(string_fields(batch, "hostname"), ["bench-1-5", "bench-2-6"]);
        assert_eq!(string_fields(batch, "observedAt"), ["a", "b"]);
    }
}
