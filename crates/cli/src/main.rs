//! The `dfgraph` binary: parses the command line, sets up logging, and
//! runs one of `serve`, `simulate`, `schema`, `status` or `check-config`.
//! It composes the two libraries: with no scheduler configured, `serve`
//! embeds the simulated cluster and points the gateway at it over loopback.

mod cli;

use anyhow::Context;
use clap::Parser;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use std::io::IsTerminal;

use cli::{CheckConfigArgs, Cli, Command, LogFormat, ServeArgs, SimulateArgs, StatusArgs};
use dfgraph::config::Config;
use dfgraph::config::SchedulerSource;
use dfgraph::gateway::{Gateway, cluster_client};
use dfgraph::telemetry::{self, Telemetry};
use dfgraph_sim::{SimCluster, SimConfig};

// jemalloc over glibc's malloc, measured on the console overview (1.37x
// throughput) and idle websocket subscribers (8 vs 21 KiB each): see
// BENCHMARKS.md.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

// jemalloc serves allocations over 8 MiB from an arena that hands them
// back to the kernel on free, so each is faulted in afresh. Up to 64 MiB
// they are cached like any other (dirty pages decay over 10 s). Raised
// when the watcher received each host list (tens of MB) into a fresh
// buffer: every poll faulted its buffer in, about a tenth of an idle
// gateway's CPU at 2 x 50k hosts. The watcher now reads lists frame by
// frame (src/cluster/raw.rs) and makes no such buffer, so there it no
// longer matters (BENCHMARKS.md S9); it stays for the other multi-MiB
// buffers a gateway makes and drops, such as a whole list as JSON.
#[unsafe(export_name = "_rjem_malloc_conf")]
static JEMALLOC_CONF: &[u8; 28] = b"oversize_threshold:67108864\0";

/// Logs to stderr, filtered by `RUST_LOG`; with `telemetry`, spans also go
/// to the OpenTelemetry collector, filtered by `tracing.filter` (each
/// layer has its own filter, so one does not widen the other).
fn init_logging(format: telemetry::LogFormat, telemetry: Option<&Telemetry>) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Logs go to stderr: stdout is for what scripts read (addresses, JSON, SDL).
    // Colour codes only for a person at a terminal, not into a file or a
    // container's log.
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let logs = match format {
        telemetry::LogFormat::Text => logs.with_filter(filter).boxed(),
        telemetry::LogFormat::Json => logs.json().with_filter(filter).boxed(),
    };
    tracing_subscriber::registry()
        .with(logs)
        .with(telemetry.map(Telemetry::layer))
        .init();
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // `serve` sets logging up once it has read `[tracing]`.
    if !matches!(cli.command, None | Some(Command::Serve(_))) {
        init_logging(cli.log_format.map(Into::into).unwrap_or_default(), None);
    }
    match cli.command {
        None => serve(cli.serve, cli.log_format).await,
        Some(Command::Serve(args)) => serve(args, cli.log_format).await,
        Some(Command::Simulate(args)) => simulate(args).await,
        Some(Command::Schema) => {
            print!("{}", dfgraph::graphql::sdl());
            Ok(())
        }
        Some(Command::DefaultConfig) => {
            print!("{}", toml::to_string(&Config::default())?);
            Ok(())
        }
        Some(Command::Status(args)) => status(args).await,
        Some(Command::CheckConfig(args)) => check_config(args),
    }
}

/// Resolves on SIGTERM or Ctrl-C. The handlers are installed when this is
/// called, not when it is first awaited: call it before announcing that the
/// process is ready, or a signal sent right after the announcement kills the
/// process without its graceful shutdown (and the last spans' export).
#[cfg(unix)]
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let terminate = signal(SignalKind::terminate());
    let interrupt = signal(SignalKind::interrupt());
    async move {
        match (terminate, interrupt) {
            (Ok(mut terminate), Ok(mut interrupt)) => {
                tokio::select! {
                    _ = terminate.recv() => {}
                    _ = interrupt.recv() => {}
                }
            }
            (Ok(mut terminate), Err(_)) => {
                terminate.recv().await;
            }
            (Err(_), Ok(mut interrupt)) => {
                interrupt.recv().await;
            }
            (Err(_), Err(_)) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}

#[cfg(not(unix))]
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The flags' settings, with `--log-format` (which is global) among them.
fn serve_overrides(args: &ServeArgs, log_format: Option<LogFormat>) -> serde_json::Value {
    let mut overrides = args.overrides();
    if let (Some(format), Some(map)) = (log_format, overrides.as_object_mut()) {
        let format = telemetry::LogFormat::from(format);
        map.insert("log_format".into(), serde_json::json!(format));
    }
    overrides
}

async fn serve(args: ServeArgs, log_format: Option<LogFormat>) -> anyhow::Result<()> {
    let overrides = serve_overrides(&args, log_format);
    let mut config = Config::load(args.source.config.as_deref(), overrides)?;
    let telemetry = Telemetry::start(&config.tracing)?;
    init_logging(config.log_format, telemetry.as_ref());
    if let Some(endpoint) = config.tracing.otlp_endpoint.as_deref() {
        tracing::info!(
            endpoint,
            ratio = config.tracing.sample_ratio,
            "exporting traces over OTLP"
        );
    }
    let simulator = match config.scheduler_source()? {
        SchedulerSource::Unconfigured => Some(embed_simulator(&mut config).await?),
        _ => None,
    };
    let gateway = Gateway::start(config).await?;
    let stop = shutdown_signal();
    println!("listening on {}", gateway.url());
    stop.await;
    tracing::info!("shutting down");
    gateway.shutdown().await;
    if let Some(sim) = simulator {
        sim.shutdown().await;
    }
    // The last requests' spans are still buffered.
    if let Some(telemetry) = telemetry
        && let Err(e) = telemetry.shutdown().await
    {
        tracing::warn!(error = %e, "could not export the last spans");
    }
    Ok(())
}

/// Starts the simulated cluster `[simulator]` describes and points `config`
/// at its schedulers, for the no-configuration demo.
async fn embed_simulator(config: &mut Config) -> anyhow::Result<SimCluster> {
    let shape = &config.simulator;
    let sim = SimCluster::start(SimConfig {
        clusters: shape.clusters,
        schedulers_per_cluster: shape.schedulers_per_cluster,
        hosts: shape.hosts,
        tasks: shape.tasks,
        peers_per_task: shape.peers_per_task,
        seed: shape.seed,
        tick_interval: (!shape.tick_interval.is_zero()).then_some(shape.tick_interval),
        ..SimConfig::default()
    })
    .await
    .context("starting the simulated cluster")?;
    config.schedulers = sim
        .schedulers()
        .iter()
        .map(|s| format!("{}={}", s.cluster_id, s.addr))
        .collect();
    // The simulated hosts live on loopback addresses: the demo's probes
    // never leave this machine, whatever the configuration says.
    config.liveness.networks = vec!["127.0.0.0/8".into()];
    tracing::info!(
        schedulers = config.schedulers.len(),
        manager = %sim.manager_addr(),
        "no scheduler or manager configured: serving the simulated cluster"
    );
    Ok(sim)
}

async fn simulate(args: SimulateArgs) -> anyhow::Result<()> {
    let sim = SimCluster::start(args.sim_config())
        .await
        .context("starting the simulated cluster")?;
    let stop = shutdown_signal();
    for s in sim.schedulers() {
        println!("cluster={} scheduler={}", s.cluster_id, s.addr);
    }
    println!("manager={}", sim.manager_addr());
    tokio::spawn(host_control(sim.clone()));
    stop.await;
    sim.shutdown().await;
    Ok(())
}

/// `simulate`'s control surface on standard input, one command a line:
/// `hosts` lists every host with its health address; `stop HOST_ID`,
/// `freeze HOST_ID` and `resume HOST_ID` change what a host's health
/// service does (the schedulers keep listing it). Each answers one line.
async fn host_control(sim: SimCluster) {
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let mut words = line.split_whitespace();
        let answer = match (words.next(), words.next()) {
            (Some("hosts"), None) => {
                for cluster in sim.cluster_ids() {
                    for host in sim.hosts(cluster) {
                        println!(
                            "cluster={cluster} host={} health={}",
                            host.id,
                            sim.host_health_addr(&host.id)
                                .map_or_else(|| "none".to_owned(), |a| a.to_string())
                        );
                    }
                }
                "ok".to_owned()
            }
            (Some(verb @ ("stop" | "freeze" | "resume")), Some(host)) => {
                let done = match verb {
                    "stop" => sim.stop_host(host).await,
                    "freeze" => sim.freeze_host(host).await,
                    _ => sim.resume_host(host).await,
                };
                if done {
                    format!("ok {verb} {host}")
                } else {
                    format!("error no health service for host {host}")
                }
            }
            (None, _) => continue,
            _ => {
                "error commands: hosts | stop HOST_ID | freeze HOST_ID | resume HOST_ID".to_owned()
            }
        };
        println!("{answer}");
    }
}

/// Parses `dfgraph ARGS...` and builds what it would start from, short of
/// dialling or binding: the merged configuration (validated), the cluster
/// client's settings (TLS files read), the simulator's layout.
fn check_config(args: CheckConfigArgs) -> anyhow::Result<()> {
    let argv = std::iter::once("dfgraph".to_owned()).chain(args.args);
    let cli = Cli::try_parse_from(argv).context("parsing the command line")?;
    let what = match cli.command {
        None | Some(Command::Serve(_)) => {
            let serve = match cli.command {
                Some(Command::Serve(args)) => args,
                _ => cli.serve,
            };
            let overrides = serve_overrides(&serve, cli.log_format);
            let config = Config::load(serve.source.config.as_deref(), overrides)?;
            cluster_client(&config)?;
            format!(
                "serve: listen {}, {}",
                config.listen,
                config.describe_source()?
            )
        }
        Some(Command::Status(args)) => {
            let config = Config::load(args.source.config.as_deref(), args.source.overrides())?;
            cluster_client(&config)?;
            format!("status: {}", config.describe_source()?)
        }
        Some(Command::Simulate(args)) => {
            let sim = args.sim_config();
            dfgraph_sim::validate(&sim)?;
            format!(
                "simulate: {} clusters x {} schedulers from {}",
                sim.clusters, sim.schedulers_per_cluster, args.listen
            )
        }
        Some(other) => format!("{other:?}: nothing to check beyond its flags"),
    };
    println!("configuration ok: {what}");
    Ok(())
}

async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let config = Config::load(args.source.config.as_deref(), args.source.overrides())?;
    let client = cluster_client(&config)?;
    match config.scheduler_source()? {
        SchedulerSource::Static(list) => {
            client.expect_clusters(list.iter().map(|s| s.cluster_id));
            let pairs: Vec<_> = list.iter().map(|s| (s.cluster_id, s.addr)).collect();
            client.set_schedulers(&pairs)?;
        }
        SchedulerSource::Manager {
            addr, cluster_ids, ..
        } => {
            client.expect_clusters(cluster_ids.iter().copied());
            let found = dfgraph::cluster::discovery::fetch_from_manager(
                &addr,
                &cluster_ids,
                &client.settings().dial,
                config.timeouts.list_hosts,
            )
            .await
            .with_context(|| format!("asking manager {addr} for schedulers"))?;
            client.set_schedulers(&found)?;
        }
        SchedulerSource::Unconfigured => {
            anyhow::bail!("status needs --scheduler CLUSTER_ID=HOST:PORT or --manager HOST:PORT");
        }
    }
    let clusters = dfgraph::status::collect(&client).await;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&clusters)?);
    } else {
        print!("{}", dfgraph::status::render(&clusters));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    /// jemalloc ignores a configuration it does not find, without a word.
    #[test]
    fn jemalloc_reads_our_configuration() {
        // SAFETY: the name is NUL-terminated and the option is a size_t.
        let threshold: usize = unsafe { tikv_jemalloc_ctl::raw::read(b"opt.oversize_threshold\0") }
            .expect("jemalloc answers");
        assert_eq!(threshold, 64 << 20);
    }
}
