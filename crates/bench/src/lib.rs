//! `dfgraph-bench`: the load tool. Starts a simulated cluster and a gateway
//! in this process (or targets a running gateway), drives a GraphQL query
//! mix over HTTP from N concurrent clients (closed loop) or at a fixed rate
//! (open loop, latency measured from each request's intended start, so a
//! stall is not hidden by coordinated omission), checks every response
//! body, and reports throughput, latency percentiles (HDR histogram),
//! errors by code, scheduler RPCs by method, cache hit ratio and RSS.
//! The live scenario ([`live`]) measures subscriptions instead.

pub mod bus;
pub mod live;
pub mod liveness;
pub mod scenario;
pub mod soak;
pub mod watch;
pub mod ws_reader;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::Mutex;

pub use scenario::Scenario;

use dfgraph::config::Config;
use dfgraph::gateway::Gateway;
use dfgraph_sim::{Method, SimCluster, SimConfig};

/// `dfgraph-bench` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Query mix to send.
    #[arg(long, value_enum, default_value = "overview")]
    pub scenario: Scenario,
    /// Concurrent clients (closed loop), or the in-flight cap with --rate.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// How long to send, e.g. 10s.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Untimed warm-up before measuring.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Fixed request rate per second (open loop) instead of closed loop.
    #[arg(long)]
    pub rate: Option<u64>,
    /// A running gateway to target; without it one is started here.
    #[arg(long)]
    pub target: Option<String>,
    /// Simulated cluster size (in-process mode).
    #[arg(long, default_value_t = 2)]
    pub clusters: usize,
    #[arg(long, default_value_t = 3)]
    pub schedulers_per_cluster: usize,
    #[arg(long, default_value_t = 10_000)]
    pub hosts: usize,
    #[arg(long, default_value_t = 500)]
    pub tasks: usize,
    #[arg(long, default_value_t = 10)]
    pub peers_per_task: usize,
    /// Added latency of every simulated scheduler call, e.g. 2ms.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub scheduler_latency: Option<Duration>,
    /// Turn the cache off (every query goes to the schedulers).
    #[arg(long)]
    pub no_cache: bool,
    /// Turn the gateway's change watcher off (in-process mode): host
    /// queries then cost no background host-list polls.
    #[arg(long)]
    pub no_watch: bool,
    /// Turn the gateway's response cache off (in-process mode): every
    /// query executes, for before/after comparisons with one binary.
    #[arg(long)]
    pub no_response_cache: bool,
    /// Redis URL for the gateway's shared cache (in-process mode).
    #[arg(long)]
    pub redis: Option<String>,
    /// Also report throughput, errors and p99 per interval, e.g. 5s.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub interval: Option<Duration>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Live scenario: websocket subscribers on `hostEvents`.
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,
    /// Live scenario: host changes made per second.
    #[arg(long, default_value_t = 100)]
    pub event_rate: u64,
    /// Watch scenario: the `dfgraph` binary to measure (default: the one
    /// beside this tool), so two builds can be compared.
    #[arg(long)]
    pub dfgraph: Option<std::path::PathBuf>,
    /// Liveness scenario: hosts stopped (spread over `--duration`), each
    /// timed to its UNREACHABLE event.
    #[arg(long, default_value_t = 100)]
    pub kills: usize,
    /// Watch scenario: the `dfgraph` binary whose `simulate` plays the
    /// schedulers (default: `--dfgraph`); one simulator for both sides
    /// keeps the scheduler side constant when comparing gateways.
    #[arg(long)]
    pub simulator: Option<std::path::PathBuf>,
    /// Live and watch scenarios: the gateway's watch interval.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub watch_interval: Duration,
    /// Live scenario: run the subscribers in this process (their memory
    /// then counts as the gateway's) instead of a child process.
    #[arg(long)]
    pub in_process_subscribers: bool,
    /// Live scenario: gateway replicas sharing `--redis`; subscribers are
    /// spread over them round robin, and one replica polls for all.
    #[arg(long, default_value_t = 1)]
    pub replicas: usize,
    /// Live scenario: subscribe to `hostEventBatches` (the events that
    /// arrived together in one message) instead of `hostEvents`.
    #[arg(long)]
    pub batched: bool,
    /// Soak scenario: one fault (in rotation) this often.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub fault_every: Duration,
    /// Soak scenario: how often the simulator moves (each step a host may
    /// join or leave each cluster).
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    pub sim_tick: Duration,
}

/// What one run measured.
#[derive(Serialize, Debug, Clone)]
pub struct Report {
    pub scenario: String,
    pub mode: String,
    pub clients: usize,
    pub duration_s: f64,
    pub requests: u64,
    pub throughput_rps: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Failed requests by cause: HTTP status or GraphQL `extensions.code`.
    pub errors: BTreeMap<String, u64>,
    /// Scheduler RPCs during the measured window (in-process mode).
    pub scheduler_rpcs: BTreeMap<String, u64>,
    pub cache_hits: u64,
    pub origin_loads: u64,
    pub cache_hit_ratio: f64,
    pub rss_mib_before: Option<f64>,
    pub rss_mib_after: Option<f64>,
    /// Per-interval figures, with `--interval`.
    pub intervals: Vec<IntervalReport>,
}

/// One slice of a run.
#[derive(Serialize, Debug, Clone)]
pub struct IntervalReport {
    pub start_s: f64,
    pub requests: u64,
    pub throughput_rps: f64,
    pub errors: u64,
    pub p99_ms: f64,
}

impl Report {
    pub fn render(&self) -> String {
        let mut out = format!(
            "scenario {} ({}, {} clients, {:.1} s)\n  requests {}  throughput {:.0} req/s\n  latency p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms\n",
            self.scenario,
            self.mode,
            self.clients,
            self.duration_s,
            self.requests,
            self.throughput_rps,
            self.p50_ms,
            self.p90_ms,
            self.p99_ms,
            self.max_ms
        );
        let errors: u64 = self.errors.values().sum();
        out += &format!("  errors {errors} {:?}\n", self.errors);
        if !self.scheduler_rpcs.is_empty() {
            out += &format!("  scheduler RPCs {:?}\n", self.scheduler_rpcs);
        }
        out += &format!(
            "  cache hits {} origin loads {} hit ratio {:.3}\n",
            self.cache_hits, self.origin_loads, self.cache_hit_ratio
        );
        if let (Some(before), Some(after)) = (self.rss_mib_before, self.rss_mib_after) {
            out += &format!("  process RSS {before:.1} MiB -> {after:.1} MiB\n");
        }
        for i in &self.intervals {
            out += &format!(
                "  t={:>5.1}s  {:>7.0} req/s  p99 {:>8.2} ms  errors {}\n",
                i.start_s, i.throughput_rps, i.p99_ms, i.errors
            );
        }
        out
    }
}

/// Resident memory of this process, from /proc (Linux only).
pub fn rss_mib() -> Option<f64> {
    rss_mib_of("self")
}

/// Resident memory of process `pid` (`self`: this one), from /proc.
pub fn rss_mib_of(pid: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Why a run could not happen.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("simulated cluster: {0}")]
    Simulator(String),
    #[error("gateway: {0}")]
    Gateway(#[from] dfgraph::gateway::StartError),
    #[error("{0}")]
    Scenario(String),
}

/// One request of a run: the `n`th, counted into the tally; `Err` names
/// what went wrong.
type Operation = Arc<
    dyn Fn(usize, Arc<Tally>) -> futures::future::BoxFuture<'static, Result<(), String>>
        + Send
        + Sync,
>;

/// GraphQL over HTTP to `url`, cycling through `requests`.
fn graphql_operation(
    http: reqwest::Client,
    url: String,
    requests: Arc<Vec<bytes::Bytes>>,
) -> Operation {
    Arc::new(move |n, tally| {
        let (http, url, requests) = (http.clone(), url.clone(), requests.clone());
        Box::pin(async move { send(&http, &url, &requests[n % requests.len()], &tally).await })
    })
}

/// What a cold console overview costs the schedulers alone: `ListHosts`
/// of every cluster at once, over gRPC, decoded, with no gateway between
/// (S2's floor). The first scheduler of each cluster answers, as the
/// gateway's healthiest pick would.
async fn raw_list_hosts_operation(sim: &SimCluster) -> Result<Operation, BenchError> {
    use dfgraph_proto::scheduler::v2::ListHostsRequest;
    use dfgraph_proto::scheduler::v2::scheduler_client::SchedulerClient;
    let mut clients = Vec::new();
    for cluster_id in sim.cluster_ids() {
        let Some(scheduler) = sim
            .schedulers()
            .into_iter()
            .find(|s| s.cluster_id == cluster_id)
        else {
            continue;
        };
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", scheduler.addr))
            .map_err(|e| BenchError::Simulator(e.to_string()))?
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| BenchError::Simulator(e.to_string()))?;
        clients.push(SchedulerClient::new(channel).max_decoding_message_size(512 << 20));
    }
    let clients = Arc::new(clients);
    Ok(Arc::new(move |_, _| {
        let clients = clients.clone();
        Box::pin(async move {
            let calls = clients.iter().map(|client| {
                let mut client = client.clone();
                async move {
                    client
                        .list_hosts(ListHostsRequest { r#type: None })
                        .await
                        .map(|r| r.into_inner().hosts.len())
                        .map_err(|status| format!("grpc {:?}", status.code()))
                }
            });
            for answer in futures::future::join_all(calls).await {
                answer?;
            }
            Ok(())
        })
    }))
}

/// Shared counters of one run.
#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    cache_hits: AtomicU64,
    origin_loads: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
}

/// The parts of a GraphQL response the tally reads. The rest of the body
/// is checked to be JSON but not built into a tree: the client shares the
/// machine with the gateway, and a tree of a 15 KiB overview cost it more
/// than the gateway spent serving it from its response cache.
#[derive(serde::Deserialize)]
struct Answer {
    #[serde(default)]
    data: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    errors: Option<Vec<AnswerError>>,
    #[serde(default)]
    extensions: Option<AnswerExtensions>,
}

#[derive(serde::Deserialize)]
struct AnswerError {
    #[serde(default)]
    extensions: Option<ErrorExtensions>,
}

#[derive(serde::Deserialize)]
struct ErrorExtensions {
    #[serde(default)]
    code: Option<String>,
}

#[derive(serde::Deserialize)]
struct AnswerExtensions {
    #[serde(default)]
    freshness: Option<FreshnessCounts>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct FreshnessCounts {
    #[serde(default)]
    cache_hits: u64,
    #[serde(default)]
    origin_loads: u64,
}

/// Sends one request (its JSON body, already encoded); returns its
/// outcome for the tally.
async fn send(
    http: &reqwest::Client,
    url: &str,
    body: &bytes::Bytes,
    tally: &Tally,
) -> Result<(), String> {
    let response = http
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.clone())
        .send()
        .await
        .map_err(|e| {
            format!(
                "transport: {}",
                if e.is_timeout() { "timeout" } else { "error" }
            )
        })?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("http {}", status.as_u16()));
    }
    let bytes = response
        .bytes()
        .await
        .map_err(|_| "invalid body".to_owned())?;
    let answer: Answer = serde_json::from_slice(&bytes).map_err(|_| "invalid body".to_owned())?;
    if let Some(freshness) = answer.extensions.and_then(|e| e.freshness) {
        tally
            .cache_hits
            .fetch_add(freshness.cache_hits, Ordering::Relaxed);
        tally
            .origin_loads
            .fetch_add(freshness.origin_loads, Ordering::Relaxed);
    }
    if let Some(first) = answer.errors.and_then(|errors| errors.into_iter().next()) {
        return Err(first
            .extensions
            .and_then(|e| e.code)
            .unwrap_or_else(|| "GRAPHQL_ERROR".to_owned()));
    }
    if answer.data.is_none() {
        return Err("no data".into());
    }
    Ok(())
}

/// The simulated cluster `args` describe and a gateway in front of it.
async fn start_in_process(args: &BenchArgs) -> Result<(SimCluster, Gateway), BenchError> {
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
    if let Some(latency) = args.scheduler_latency {
        for s in sim.schedulers() {
            sim.set_latency(s.addr, latency);
        }
    }
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
    config.cache.enabled = !args.no_cache;
    config.watch.enabled = !args.no_watch;
    // Not what these scenarios measure (and their hosts serve no health).
    config.liveness.enabled = false;
    config.liveness.networks = vec!["127.0.0.0/8".into()];
    config.response_cache.enabled = !args.no_response_cache;
    config.limits.max_complexity = 1_000_000;
    let gateway = Gateway::start(config).await?;
    Ok((sim, gateway))
}

/// What one request of the scenario is: a GraphQL request to the gateway
/// at `base`, or (raw-list-hosts) a `ListHosts` straight to the schedulers.
async fn operation(
    args: &BenchArgs,
    sim: Option<&SimCluster>,
    base: &str,
) -> Result<Operation, BenchError> {
    Ok(if args.scenario == Scenario::RawListHosts {
        let sim = sim.ok_or_else(|| {
            BenchError::Scenario("the raw-list-hosts scenario needs the in-process cluster".into())
        })?;
        raw_list_hosts_operation(sim).await?
    } else {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(args.clients.max(1))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| BenchError::Scenario(format!("HTTP client: {e}")))?;
        let requests = args
            .scenario
            .requests(sim)?
            .iter()
            .map(|request| bytes::Bytes::from(request.to_string()))
            .collect();
        graphql_operation(http, format!("{base}/graphql"), Arc::new(requests))
    })
}

/// The scheduler RPCs the run caused, by method (those made at all).
fn scheduler_rpcs(sim: &SimCluster) -> BTreeMap<String, u64> {
    let mut rpcs = BTreeMap::new();
    for method in Method::ALL {
        let n = sim.total_rpc_count(method);
        if n > 0 {
            rpcs.insert(format!("{method:?}"), n);
        }
    }
    rpcs
}

/// Runs a benchmark as `args` describe.
pub async fn run(args: &BenchArgs) -> Result<Report, BenchError> {
    let (sim, gateway) = match &args.target {
        Some(_) => (None, None),
        None => {
            let (sim, gateway) = start_in_process(args).await?;
            (Some(sim), Some(gateway))
        }
    };
    let base = match (&args.target, &gateway) {
        (Some(target), _) => target.trim_end_matches('/').to_owned(),
        (None, Some(g)) => g.url(),
        (None, None) => return Err(BenchError::Scenario("no gateway".into())),
    };
    let operation = operation(args, sim.as_ref(), &base).await?;

    // Warm-up: untimed, fills caches and connection pools.
    if !args.warmup.is_zero() {
        let _ = drive(&operation, args.clients, args.warmup, None).await;
    }
    if let Some(sim) = &sim {
        sim.reset_counters();
    }
    let rss_before = rss_mib();
    let (histogram, tally, elapsed, timeline) =
        drive(&operation, args.clients, args.duration, args.rate).await;
    let rss_after = rss_mib();
    let scheduler_rpcs = sim.as_ref().map(scheduler_rpcs).unwrap_or_default();
    let n = tally.requests.load(Ordering::Relaxed);
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    let hits = tally.cache_hits.load(Ordering::Relaxed);
    let loads = tally.origin_loads.load(Ordering::Relaxed);
    let report = Report {
        scenario: format!("{:?}", args.scenario).to_lowercase(),
        mode: match args.rate {
            Some(rate) => format!("fixed rate {rate}/s"),
            None => "closed loop".into(),
        },
        clients: args.clients,
        duration_s: elapsed.as_secs_f64(),
        requests: n,
        throughput_rps: n as f64 / elapsed.as_secs_f64().max(1e-9),
        p50_ms: ms(0.5),
        p90_ms: ms(0.9),
        p99_ms: ms(0.99),
        max_ms: histogram.max() as f64 / 1000.0,
        errors: tally.errors.lock().await.clone(),
        scheduler_rpcs,
        cache_hits: hits,
        origin_loads: loads,
        cache_hit_ratio: if hits + loads == 0 {
            0.0
        } else {
            hits as f64 / (hits + loads) as f64
        },
        rss_mib_before: rss_before,
        rss_mib_after: rss_after,
        intervals: args
            .interval
            .map(|i| intervals(&timeline, i, args.duration))
            .unwrap_or_default(),
    };
    if let Some(gateway) = gateway {
        gateway.shutdown().await;
    }
    if let Some(sim) = sim {
        sim.shutdown().await;
    }
    Ok(report)
}

type Outcome = (Histogram<u64>, Arc<Tally>, Duration, Vec<Sample>);

/// Sends requests for `duration`, closed loop or at `rate`.
async fn drive(
    operation: &Operation,
    clients: usize,
    duration: Duration,
    rate: Option<u64>,
) -> Outcome {
    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    let deadline = started + duration;
    let mut total = new_histogram();
    let mut timeline = Vec::new();
    let run = Run {
        operation,
        tally: &tally,
        started,
        deadline,
    };
    match rate {
        None => closed_loop(run, clients, &mut total, &mut timeline).await,
        Some(rate) => fixed_rate(run, clients, rate, &mut total, &mut timeline).await,
    }
    (total, tally, started.elapsed(), timeline)
}

/// 1 µs to 120 s at 3 significant digits.
fn new_histogram() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 120_000_000, 3)
        .expect("constant histogram bounds are valid")
}

/// What every way of driving requests shares.
#[derive(Clone, Copy)]
struct Run<'a> {
    operation: &'a Operation,
    tally: &'a Arc<Tally>,
    started: Instant,
    deadline: Instant,
}

/// `clients` workers, each sending its next request when the last one is
/// answered, until the deadline.
async fn closed_loop(
    run: Run<'_>,
    clients: usize,
    total: &mut Histogram<u64>,
    timeline: &mut Vec<Sample>,
) {
    let Run {
        operation,
        tally,
        started,
        deadline,
    } = run;
    let mut workers = Vec::new();
    for client in 0..clients.max(1) {
        let (operation, tally) = (operation.clone(), tally.clone());
        let mut histogram = new_histogram();
        workers.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut i = client;
            while Instant::now() < deadline {
                let sent = Instant::now();
                let outcome = operation(i, tally.clone()).await;
                i += 1;
                let latency = sent.elapsed().as_micros() as u64;
                let _ = histogram.record(latency);
                samples.push(Sample {
                    at: sent.duration_since(started),
                    latency_us: latency,
                    ok: outcome.is_ok(),
                });
                tally.requests.fetch_add(1, Ordering::Relaxed);
                if let Err(cause) = outcome {
                    *tally.errors.lock().await.entry(cause).or_default() += 1;
                }
            }
            (histogram, samples)
        }));
    }
    for worker in workers {
        if let Ok((h, mut s)) = worker.await {
            let _ = total.add(h);
            timeline.append(&mut s);
        }
    }
}

/// Requests started at `rate` per second until the deadline, at most
/// `clients` in flight; latency counts from when each should have started.
async fn fixed_rate(
    run: Run<'_>,
    clients: usize,
    rate: u64,
    total: &mut Histogram<u64>,
    timeline: &mut Vec<Sample>,
) {
    let Run {
        operation,
        tally,
        started,
        deadline,
    } = run;
    let period = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let limit = Arc::new(tokio::sync::Semaphore::new(clients.max(1)));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut i = 0usize;
    let mut intended = Instant::now();
    while intended < deadline {
        tokio::time::sleep_until(intended.into()).await;
        let (operation, tally, tx, limit) =
            (operation.clone(), tally.clone(), tx.clone(), limit.clone());
        let start = intended;
        let index = i;
        tokio::spawn(async move {
            let Ok(_permit) = limit.acquire_owned().await else {
                return;
            };
            let outcome = operation(index, tally.clone()).await;
            // Measured from when the request should have started.
            let _ = tx.send(Sample {
                at: start.duration_since(started),
                latency_us: start.elapsed().as_micros() as u64,
                ok: outcome.is_ok(),
            });
            tally.requests.fetch_add(1, Ordering::Relaxed);
            if let Err(cause) = outcome {
                *tally.errors.lock().await.entry(cause).or_default() += 1;
            }
        });
        i += 1;
        intended += period;
    }
    drop(tx);
    while let Some(sample) = rx.recv().await {
        let _ = total.record(sample.latency_us);
        timeline.push(sample);
    }
}

/// One request, for the per-interval report.
struct Sample {
    at: Duration,
    latency_us: u64,
    ok: bool,
}

/// Throughput, errors and p99 of each `interval` of a run.
fn intervals(samples: &[Sample], interval: Duration, total: Duration) -> Vec<IntervalReport> {
    let n = (total.as_secs_f64() / interval.as_secs_f64())
        .ceil()
        .max(1.0) as usize;
    let mut buckets: Vec<(Histogram<u64>, u64)> = (0..n)
        .map(|_| {
            (
                Histogram::<u64>::new_with_bounds(1, 120_000_000, 3)
                    .expect("constant histogram bounds are valid"),
                0,
            )
        })
        .collect();
    for sample in samples {
        let i = ((sample.at.as_secs_f64() / interval.as_secs_f64()) as usize).min(n - 1);
        let _ = buckets[i].0.record(sample.latency_us);
        if !sample.ok {
            buckets[i].1 += 1;
        }
    }
    buckets
        .into_iter()
        .enumerate()
        .map(|(i, (h, errors))| IntervalReport {
            start_s: i as f64 * interval.as_secs_f64(),
            requests: h.len(),
            throughput_rps: h.len() as f64 / interval.as_secs_f64(),
            errors,
            p99_ms: h.value_at_quantile(0.99) as f64 / 1000.0,
        })
        .collect()
}
