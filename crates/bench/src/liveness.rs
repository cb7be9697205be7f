//! The `liveness` scenario: how long a dfdaemon that dies takes to show
//! as `UNREACHABLE` at a subscriber, and what probing costs the gateway.
//!
//! The simulated cluster runs as a child process (`dfgraph simulate`,
//! every host serving `grpc.health.v1` on its own loopback address) and
//! the gateway in this process with the default `[liveness]` settings
//! (only `networks` limited to 127.0.0.0/8) and the watcher off, so this
//! process's CPU and open files are the gateway's probing. Once every host
//! is `REACHABLE`, a steady window of `--duration` measures CPU, open
//! sockets and the cycle time; then `--kills` hosts are stopped silently
//! (the simulator's stdin `stop HOST_ID`: their port refuses, their
//! scheduler keeps listing them), spread evenly over `--duration`, and a
//! websocket subscriber to `hostEvents(filter: {liveness: [UNREACHABLE]})`
//! times each from the stop to its event.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::watch::{cpu_seconds, sibling_dfgraph, simulate_command};
use crate::{BenchArgs, BenchError};
use dfgraph::config::Config;
use dfgraph::gateway::Gateway;

const UNREACHABLE_EVENTS: &str =
    "subscription { hostEvents(filter: { liveness: [UNREACHABLE] }) { host { id } } }";

/// What one run measured.
#[derive(Serialize, Debug, Clone)]
pub struct LivenessReport {
    pub hosts: usize,
    pub clusters: usize,
    pub probes_per_second: u32,
    pub failures: u32,
    /// Seconds from start until every host was `REACHABLE`.
    pub first_pass_s: f64,
    /// The last full cycle over cluster 1 (`dfgraph_liveness_cycle_seconds`).
    pub cycle_s: Option<f64>,
    pub window_s: f64,
    /// Gateway CPU while probing, percent of one core.
    pub cpu_percent: f64,
    pub cpu_percent_per_1k_hosts: f64,
    /// File descriptors the gateway holds beyond those before probing
    /// began (connections to hosts kept between probes).
    pub sockets: i64,
    pub sockets_per_1k_hosts: f64,
    pub kills: usize,
    pub detected: usize,
    pub detection_p50_s: Option<f64>,
    pub detection_p99_s: Option<f64>,
    pub detection_max_s: Option<f64>,
}

impl LivenessReport {
    pub fn render(&self) -> String {
        let s = |v: Option<f64>| v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.2} s"));
        format!(
            "scenario liveness ({} hosts in {} cluster(s), {} probes/s per cluster, {} failures)\n  \
             every host REACHABLE after {:.1} s; full cycle {}\n  \
             gateway CPU {:.1} % of one core ({:.2} % per 1k hosts) over {:.1} s; sockets {} ({:.0} per 1k hosts)\n  \
             {} of {} stopped hosts seen UNREACHABLE by a subscriber: p50 {}  p99 {}  max {}\n",
            self.hosts,
            self.clusters,
            self.probes_per_second,
            self.failures,
            self.first_pass_s,
            s(self.cycle_s),
            self.cpu_percent,
            self.cpu_percent_per_1k_hosts,
            self.window_s,
            self.sockets,
            self.sockets_per_1k_hosts,
            self.detected,
            self.kills,
            s(self.detection_p50_s),
            s(self.detection_p99_s),
            s(self.detection_max_s),
        )
    }
}

/// The simulator child: its stdin for commands, its stdout lines.
struct Simulator {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::UnboundedReceiver<String>,
}

impl Simulator {
    async fn start(dfgraph: &std::path::Path, args: &BenchArgs) -> Result<Simulator, BenchError> {
        let mut child = simulate_command(dfgraph, args)
            .args(["--tick", "0s"])
            .stdin(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| BenchError::Simulator(format!("{}: {e}", dfgraph.display())))?;
        let missing = || BenchError::Simulator("no stdio".into());
        let stdin = child.stdin.take().ok_or_else(missing)?;
        let stdout = child.stdout.take().ok_or_else(missing)?;
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Simulator {
            child,
            stdin,
            lines,
        })
    }

    async fn line(&mut self) -> Result<String, BenchError> {
        tokio::time::timeout(Duration::from_secs(300), self.lines.recv())
            .await
            .ok()
            .flatten()
            .ok_or_else(|| BenchError::Simulator("the simulator stopped answering".into()))
    }

    async fn send(&mut self, command: &str) -> Result<(), BenchError> {
        self.stdin
            .write_all(format!("{command}\n").as_bytes())
            .await
            .map_err(|e| BenchError::Simulator(e.to_string()))
    }

    /// The `cluster=ID scheduler=ADDR` lines, up to `manager=`.
    async fn schedulers(&mut self) -> Result<Vec<String>, BenchError> {
        let mut schedulers = Vec::new();
        loop {
            let line = self.line().await?;
            if let Some(rest) = line.strip_prefix("cluster=")
                && let Some((id, addr)) = rest.split_once(" scheduler=")
            {
                schedulers.push(format!("{id}={addr}"));
            } else if line.starts_with("manager=") {
                return Ok(schedulers);
            }
        }
    }

    /// Every host id, from `hosts`.
    async fn host_ids(&mut self) -> Result<Vec<String>, BenchError> {
        self.send("hosts").await?;
        let mut ids = Vec::new();
        loop {
            let line = self.line().await?;
            if line == "ok" {
                return Ok(ids);
            }
            if let Some(id) = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("host="))
            {
                ids.push(id.to_owned());
            }
        }
    }

    /// Stops a host; returns once its port refuses connections.
    async fn stop(&mut self, host_id: &str) -> Result<(), BenchError> {
        self.send(&format!("stop {host_id}")).await?;
        let line = self.line().await?;
        if line.starts_with("ok stop") {
            Ok(())
        } else {
            Err(BenchError::Simulator(line))
        }
    }
}

/// Open file descriptors of this process.
fn open_fds() -> i64 {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as i64)
}

/// `dfgraph_liveness_*` counts, `hostStats.byLiveness` of the gateway.
async fn reachable(http: &reqwest::Client, url: &str) -> Result<u64, BenchError> {
    let body: serde_json::Value = http
        .post(format!("{url}/graphql"))
        .json(&serde_json::json!({ "query": "{ hostStats { byLiveness { value count } } }" }))
        .send()
        .await
        .map_err(|e| BenchError::Scenario(e.to_string()))?
        .json()
        .await
        .map_err(|e| BenchError::Scenario(e.to_string()))?;
    Ok(body["data"]["hostStats"]["byLiveness"]
        .as_array()
        .and_then(|b| b.iter().find(|b| b["value"] == "REACHABLE"))
        .and_then(|b| b["count"].as_u64())
        .unwrap_or(0))
}

/// The value of a gauge in the gateway's `/metrics`.
async fn gauge(http: &reqwest::Client, url: &str, line_start: &str) -> Option<f64> {
    let text = crate::watch::metrics(http, url).await.ok()?;
    text.lines()
        .find(|l| l.starts_with(line_start))?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()
}

/// Fisher-Yates with xorshift64 from `seed`: a fixed, unbiased order.
fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut state = seed.max(1);
    for i in (1..items.len()).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let j = (state % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

/// The time from a host's stop to its event, for a host that was stopped.
fn record(detections: &mut Vec<f64>, stopped_at: &HashMap<String, Instant>, id: &str, at: Instant) {
    if let Some(t0) = stopped_at.get(id) {
        detections.push(at.saturating_duration_since(*t0).as_secs_f64());
    }
}

fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    Some(sorted[i])
}

/// Runs the scenario; see the module doc.
pub async fn run(args: &BenchArgs) -> Result<LivenessReport, BenchError> {
    let dfgraph = match &args.dfgraph {
        Some(path) => path.clone(),
        None => sibling_dfgraph()?,
    };
    let mut sim = Simulator::start(&dfgraph, args).await?;
    let schedulers = sim.schedulers().await?;
    let mut ids = sim.host_ids().await?;
    if ids.len() != args.hosts {
        return Err(BenchError::Scenario(format!(
            "the simulator listed {} hosts, not {}",
            ids.len(),
            args.hosts
        )));
    }
    let fds_before = open_fds();
    let mut config = Config {
        listen: "127.0.0.1:0"
            .parse()
            .map_err(|_| BenchError::Scenario("listen".into()))?,
        schedulers,
        ..Config::default()
    };
    // Probing as deployed, never beyond this machine; nothing else runs.
    config.liveness.networks = vec!["127.0.0.0/8".into()];
    config.watch.enabled = false;
    config.response_cache.enabled = false;
    let defaults = config.liveness.clone();
    let started = Instant::now();
    let gateway = Gateway::start(config).await?;
    let url = gateway.url();
    let http = reqwest::Client::new();
    while reachable(&http, &url).await? < args.hosts as u64 {
        if started.elapsed() > Duration::from_secs(600) {
            return Err(BenchError::Scenario(
                "hosts not all REACHABLE within 10 min".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first_pass_s = started.elapsed().as_secs_f64();

    let pid = std::process::id();
    let cpu_before = cpu_seconds(pid)?;
    let window_started = Instant::now();
    tokio::time::sleep(args.duration).await;
    let window_s = window_started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid)? - cpu_before;
    let sockets = open_fds() - fds_before;
    let cycle_s = gauge(&http, &url, "dfgraph_liveness_cycle_seconds{cluster=\"1\"}").await;

    let ws_url = format!("{}/graphql/ws", url.replacen("http://", "ws://", 1));
    let mut socket = crate::live::connect_and_subscribe_to(&ws_url, UNREACHABLE_EVENTS)
        .await
        .map_err(BenchError::Scenario)?;
    // The subscription is live once the gateway acknowledged it; a short
    // pause covers its registration.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (seen_tx, mut seen) = mpsc::unbounded_channel::<(String, Instant)>();
    let reader = tokio::spawn(async move {
        while let Some(Ok(message)) = socket.next().await {
            let Message::Text(text) = message else {
                continue;
            };
            let Ok(value) = serde_json::from_str::<serde_json::Value>(&text) else {
                continue;
            };
            if value["type"] == "next"
                && let Some(id) = value["payload"]["data"]["hostEvents"]["host"]["id"].as_str()
                && seen_tx.send((id.to_owned(), Instant::now())).is_err()
            {
                break;
            }
        }
    });

    // Victims in random order, so when one is stopped has nothing to do
    // with where the prober is in its cycle.
    shuffle(&mut ids, 0x9e37_79b9_7f4a_7c15);
    let victims: Vec<String> = ids.into_iter().take(args.kills).collect();
    let kills = victims.len();
    let spacing = args.duration / u32::try_from(kills.max(1)).unwrap_or(u32::MAX);
    let mut stopped_at: HashMap<String, Instant> = HashMap::with_capacity(kills);
    let mut detections = Vec::with_capacity(kills);
    for victim in &victims {
        let t0 = Instant::now();
        sim.stop(victim).await?;
        stopped_at.insert(victim.clone(), t0);
        while let Ok((id, at)) = seen.try_recv() {
            record(&mut detections, &stopped_at, &id, at);
        }
        tokio::time::sleep(spacing.saturating_sub(t0.elapsed())).await;
    }
    // The last one gets two full cycles (and its confirmations).
    let patience = Duration::from_secs_f64(
        2.0 * (args.hosts as f64 / f64::from(defaults.probes_per_second))
            .max(defaults.interval.as_secs_f64()),
    ) + defaults.timeout * (defaults.failures + 2);
    let deadline = Instant::now() + patience;
    while detections.len() < victims.len() {
        match tokio::time::timeout_at(deadline.into(), seen.recv()).await {
            Ok(Some((id, at))) => record(&mut detections, &stopped_at, &id, at),
            _ => break,
        }
    }
    reader.abort();
    detections.sort_by(f64::total_cmp);
    let report = LivenessReport {
        hosts: args.hosts,
        clusters: args.clusters,
        probes_per_second: defaults.probes_per_second,
        failures: defaults.failures,
        first_pass_s,
        cycle_s,
        window_s,
        cpu_percent: cpu / window_s * 100.0,
        cpu_percent_per_1k_hosts: cpu / window_s * 100.0 / (args.hosts as f64 / 1000.0),
        sockets,
        sockets_per_1k_hosts: sockets as f64 / (args.hosts as f64 / 1000.0),
        kills: victims.len(),
        detected: detections.len(),
        detection_p50_s: quantile(&detections, 0.5),
        detection_p99_s: quantile(&detections, 0.99),
        detection_max_s: detections.last().copied(),
    };
    gateway.shutdown().await;
    let _ = sim.child.kill().await;
    Ok(report)
}
