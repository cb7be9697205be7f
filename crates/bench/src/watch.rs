//! The `watch` scenario: what merely watching a cluster costs a gateway.
//! A simulated cluster (`dfgraph simulate`) and a gateway (`dfgraph serve`)
//! run as processes of their own, as in production; one `hostStats` query
//! makes the gateway watch every host list, and then nothing else is
//! asked. Over the idle window the report gives the gateway's CPU (share
//! of one core, from /proc), its resident memory, the simulator's CPU,
//! and from the gateway's `/metrics` its polls, bytes per poll and the
//! share of hosts it decoded. Any `dfgraph` binary can be measured
//! (`--dfgraph`), so two builds can be compared in interleaved runs; a
//! figure an older binary does not export is reported as absent.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::{BenchArgs, BenchError};

/// Linux reports process CPU time in /proc in units of USER_HZ, which the
/// kernel ABI fixes at 100 per second on every architecture we run on.
const USER_HZ: f64 = 100.0;

/// What one idle window measured.
#[derive(Serialize, Debug, Clone)]
pub struct WatchReport {
    pub dfgraph: String,
    pub hosts: usize,
    pub clusters: usize,
    pub watch_interval_s: f64,
    pub window_s: f64,
    /// Gateway CPU over the window, percent of one core.
    pub gateway_cpu_percent: f64,
    /// Gateway resident memory, the mean of samples every 250 ms over the
    /// window (one reading swings by tens of MiB with where the polls are).
    pub gateway_rss_mib: Option<f64>,
    /// The largest of those samples.
    pub gateway_rss_max_mib: Option<f64>,
    /// The simulated schedulers' CPU (encoding the lists), percent of one core.
    pub simulator_cpu_percent: f64,
    /// Host-list polls per second, all clusters together.
    pub host_polls_per_s: Option<f64>,
    pub bytes_per_poll: Option<f64>,
    /// Hosts decoded per poll over hosts listed per poll.
    pub decode_share: Option<f64>,
    /// Gateway resident memory per host watched, in bytes.
    pub rss_bytes_per_host: Option<f64>,
}

impl WatchReport {
    pub fn render(&self) -> String {
        let opt = |v: Option<f64>, unit: &str| match v {
            Some(v) => format!("{v:.2}{unit}"),
            None => "n/a".to_owned(),
        };
        format!(
            "scenario watch ({} hosts in {} clusters, interval {:.1} s, {:.1} s idle window, {})\n  \
             gateway CPU {:.1} % of one core  RSS mean {}, max {}  ({} per host)\n  \
             simulator CPU {:.1} % of one core\n  \
             host-list polls {} per s  bytes per poll {}  decode share {}\n",
            self.hosts,
            self.clusters,
            self.watch_interval_s,
            self.window_s,
            self.dfgraph,
            self.gateway_cpu_percent,
            opt(self.gateway_rss_mib, " MiB"),
            opt(self.gateway_rss_max_mib, " MiB"),
            opt(self.rss_bytes_per_host, " B"),
            self.simulator_cpu_percent,
            opt(self.host_polls_per_s, ""),
            opt(self.bytes_per_poll, ""),
            opt(self.decode_share, ""),
        )
    }
}

/// Runs the scenario: simulator and gateway as child processes (killed
/// when this returns), a warm-up of `args.warmup`, then `args.duration`
/// of measured idle watching.
pub async fn run(args: &BenchArgs) -> Result<WatchReport, BenchError> {
    let dfgraph = match &args.dfgraph {
        Some(path) => path.clone(),
        None => sibling_dfgraph()?,
    };
    let simulator_binary = args.simulator.as_ref().unwrap_or(&dfgraph);
    let (mut simulator, schedulers) = start_simulator(simulator_binary, args, None).await?;
    let (mut gateway, url) = start_gateway(&dfgraph, args, &schedulers).await?;
    let http = reqwest::Client::new();
    let total = host_total(&http, &url).await?;
    if total != args.hosts as u64 {
        return Err(BenchError::Scenario(format!(
            "hostStats counted {total} hosts, the simulator has {}",
            args.hosts
        )));
    }
    tokio::time::sleep(args.warmup).await;

    let gateway_pid = pid(&gateway)?;
    let simulator_pid = pid(&simulator)?;
    let (gateway_cpu, simulator_cpu) = (cpu_seconds(gateway_pid)?, cpu_seconds(simulator_pid)?);
    let metrics_before = metrics(&http, &url).await?;
    let started = Instant::now();
    let mut rss_samples = Vec::new();
    while started.elapsed() < args.duration {
        let left = args.duration.saturating_sub(started.elapsed());
        tokio::time::sleep(left.min(Duration::from_millis(250))).await;
        rss_samples.extend(crate::rss_mib_of(&gateway_pid.to_string()));
    }
    let window = started.elapsed().as_secs_f64();
    let gateway_cpu = cpu_seconds(gateway_pid)? - gateway_cpu;
    let simulator_cpu = cpu_seconds(simulator_pid)? - simulator_cpu;
    let metrics_after = metrics(&http, &url).await?;
    let rss = (!rss_samples.is_empty())
        .then(|| rss_samples.iter().sum::<f64>() / rss_samples.len() as f64);
    let rss_max = rss_samples.iter().copied().reduce(f64::max);

    let delta = |name: &str, label: Option<&str>| {
        Some(sum(&metrics_after, name, label)? - sum(&metrics_before, name, label)?)
    };
    let polls = delta("dfgraph_watch_polls_total", Some("what=\"hosts\""));
    let bytes = delta("dfgraph_watch_host_list_bytes_total", None);
    let decoded = delta("dfgraph_watch_hosts_decoded_total", None);
    let per_poll = |v: Option<f64>| Some(v? / polls.filter(|p| *p > 0.0)?);
    let clusters = args.clusters as f64;
    let report = WatchReport {
        dfgraph: dfgraph.display().to_string(),
        hosts: args.hosts,
        clusters: args.clusters,
        watch_interval_s: args.watch_interval.as_secs_f64(),
        window_s: window,
        gateway_cpu_percent: gateway_cpu / window * 100.0,
        gateway_rss_mib: rss,
        gateway_rss_max_mib: rss_max,
        simulator_cpu_percent: simulator_cpu / window * 100.0,
        host_polls_per_s: polls.map(|p| p / window),
        bytes_per_poll: per_poll(bytes),
        // Each poll lists one cluster: hosts / clusters entries.
        decode_share: per_poll(decoded).map(|d| d / (args.hosts as f64 / clusters)),
        rss_bytes_per_host: rss.map(|mib| mib * 1024.0 * 1024.0 / args.hosts as f64),
    };
    let _ = gateway.kill().await;
    let _ = simulator.kill().await;
    Ok(report)
}

/// The `dfgraph` binary built beside this one (`target/release/`).
pub(crate) fn sibling_dfgraph() -> Result<PathBuf, BenchError> {
    let exe = std::env::current_exe().map_err(|e| BenchError::Scenario(e.to_string()))?;
    let path = exe.with_file_name("dfgraph");
    if path.exists() {
        Ok(path)
    } else {
        Err(BenchError::Scenario(format!(
            "no dfgraph binary at {}: build it (cargo build --release --workspace) or pass --dfgraph",
            path.display()
        )))
    }
}

fn pid(child: &Child) -> Result<u32, BenchError> {
    child
        .id()
        .ok_or_else(|| BenchError::Scenario("a child process exited early".into()))
}

/// `dfgraph simulate` shaped by `args` (clusters, schedulers, hosts,
/// tasks), on ephemeral loopback ports, its stdout piped.
pub(crate) fn simulate_command(dfgraph: &Path, args: &BenchArgs) -> Command {
    let mut command = Command::new(dfgraph);
    command
        .args(["simulate", "--listen", "127.0.0.1:0"])
        .args(["--clusters", &args.clusters.to_string()])
        .args([
            "--schedulers-per-cluster",
            &args.schedulers_per_cluster.to_string(),
        ])
        .args(["--hosts", &args.hosts.to_string()])
        .args(["--tasks", &args.tasks.to_string()])
        .stdout(Stdio::piped());
    command
}

/// Starts `dfgraph simulate` (moving every `tick`, when given, instead of
/// its default second) and reads its `cluster=ID scheduler=ADDR` lines.
pub(crate) async fn start_simulator(
    dfgraph: &Path,
    args: &BenchArgs,
    tick: Option<Duration>,
) -> Result<(Child, Vec<String>), BenchError> {
    let mut command = simulate_command(dfgraph, args);
    if let Some(tick) = tick {
        command.args(["--tick", &humantime::format_duration(tick).to_string()]);
    }
    let mut child = command
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| BenchError::Simulator(format!("{}: {e}", dfgraph.display())))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| BenchError::Simulator("no stdout".into()))?;
    let mut lines = BufReader::new(stdout).lines();
    let mut schedulers = Vec::new();
    let deadline = Duration::from_secs(300);
    while let Ok(Ok(Some(line))) = tokio::time::timeout(deadline, lines.next_line()).await {
        if let Some(rest) = line.strip_prefix("cluster=") {
            if let Some((id, addr)) = rest.split_once(" scheduler=") {
                schedulers.push(format!("{id}={addr}"));
            }
        } else if line.starts_with("manager=") {
            return Ok((child, schedulers));
        }
    }
    Err(BenchError::Simulator(
        "dfgraph simulate did not print its schedulers".into(),
    ))
}

/// Starts `dfgraph serve` on the simulator's schedulers and waits until it
/// says where it listens.
async fn start_gateway(
    dfgraph: &Path,
    args: &BenchArgs,
    schedulers: &[String],
) -> Result<(Child, String), BenchError> {
    let mut child = serve_command(dfgraph, args, schedulers)
        .await
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| BenchError::Scenario(format!("{}: {e}", dfgraph.display())))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| BenchError::Scenario("no stdout".into()))?;
    let url = listening(stdout).await?;
    Ok((child, url))
}

/// `dfgraph serve` on ephemeral loopback ports, on `schedulers`, watching
/// every `--watch-interval`. Host events alone are measured: a binary that
/// probes hosts' liveness (whose cost the liveness scenario measures) is
/// told not to, which also keeps it from dialling the addresses a
/// simulator lists.
pub(crate) async fn serve_command(
    dfgraph: &Path,
    args: &BenchArgs,
    schedulers: &[String],
) -> Command {
    let mut command = Command::new(dfgraph);
    command.args(["serve", "--listen", "127.0.0.1:0"]);
    if has_liveness(dfgraph).await {
        command.env("DFGRAPH_LIVENESS__ENABLED", "false");
    }
    for scheduler in schedulers {
        command.args(["--scheduler", scheduler]);
    }
    command.env(
        "DFGRAPH_WATCH__INTERVAL",
        humantime::format_duration(args.watch_interval).to_string(),
    );
    command
}

/// Reads a starting `dfgraph serve`'s standard output until it says where
/// it listens (its base URL); the rest of the output is drained.
pub(crate) async fn listening(stdout: tokio::process::ChildStdout) -> Result<String, BenchError> {
    let mut lines = BufReader::new(stdout).lines();
    let deadline = Duration::from_secs(120);
    while let Ok(Ok(Some(line))) = tokio::time::timeout(deadline, lines.next_line()).await {
        if let Some(url) = line.strip_prefix("listening on ") {
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            return Ok(url.trim_end_matches('/').to_owned());
        }
    }
    Err(BenchError::Scenario(
        "dfgraph serve did not say where it listens".into(),
    ))
}

/// Whether `dfgraph` has a `[liveness]` section (older builds refuse the
/// setting, as they refuse any unknown one).
async fn has_liveness(dfgraph: &Path) -> bool {
    match Command::new(dfgraph).arg("default-config").output().await {
        Ok(output) => String::from_utf8_lossy(&output.stdout).contains("[liveness]"),
        Err(_) => false,
    }
}

/// `hostStats.total`, the query that makes the gateway watch host lists.
async fn host_total(http: &reqwest::Client, url: &str) -> Result<u64, BenchError> {
    let failed = |e: String| BenchError::Scenario(format!("hostStats: {e}"));
    let body: serde_json::Value = http
        .post(format!("{url}/graphql"))
        .json(&serde_json::json!({ "query": "{ hostStats { total } }" }))
        .timeout(Duration::from_secs(120))
        .send()
        .await
        .map_err(|e| failed(e.to_string()))?
        .json()
        .await
        .map_err(|e| failed(e.to_string()))?;
    body["data"]["hostStats"]["total"]
        .as_u64()
        .ok_or_else(|| failed(body.to_string()))
}

/// The text of the gateway's `/metrics`.
pub(crate) async fn metrics(http: &reqwest::Client, url: &str) -> Result<String, BenchError> {
    let failed = |e: reqwest::Error| BenchError::Scenario(format!("/metrics: {e}"));
    http.get(format!("{url}/metrics"))
        .send()
        .await
        .map_err(failed)?
        .text()
        .await
        .map_err(failed)
}

/// The sum of a metric's samples (those carrying `label`, if given), or
/// `None` when the binary does not export it.
fn sum(text: &str, name: &str, label: Option<&str>) -> Option<f64> {
    let samples: Vec<f64> = text
        .lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|line| label.is_none_or(|label| line.contains(label)))
        .filter_map(|line| line.rsplit(' ').next()?.parse().ok())
        .collect();
    (!samples.is_empty()).then(|| samples.iter().sum())
}

/// User plus system CPU seconds a process has used.
pub(crate) fn cpu_seconds(pid: u32) -> Result<f64, BenchError> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| BenchError::Scenario(format!("/proc/{pid}/stat: {e}")))?;
    // The command name (field 2) may hold spaces: count from its `)`.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    // utime and stime are fields 14 and 15; `fields` starts at field 3.
    match (ticks(11), ticks(12)) {
        (Some(user), Some(system)) => Ok((user + system) / USER_HZ),
        _ => Err(BenchError::Scenario(format!("/proc/{pid}/stat: {stat}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::sum;

    #[test]
    fn metric_sums_pick_the_named_metric_and_label_only() {
        let text = "# HELP dfgraph_watch_polls_total Watcher polls.\n\
                    dfgraph_watch_polls_total{what=\"hosts\",cluster=\"1\"} 4\n\
                    dfgraph_watch_polls_total{what=\"hosts\",cluster=\"2\"} 5\n\
                    dfgraph_watch_polls_total{what=\"peers\",cluster=\"1\"} 7\n\
                    dfgraph_watch_polls_total_other 100\n";
        assert_eq!(
            sum(text, "dfgraph_watch_polls_total", Some("what=\"hosts\"")),
            Some(9.0)
        );
        assert_eq!(sum(text, "dfgraph_watch_polls_total", None), Some(16.0));
        assert_eq!(sum(text, "dfgraph_absent_total", None), None);
    }
}
