//! The command line: `serve` (default), `simulate`, `schema`, `status`,
//! `check-config`.
//! Flags map onto [`Config`] keys; each also reads a `DFGRAPH_*` variable.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use serde_json::{Map, Value};

/// dfgraph: a real-time GraphQL gateway for Dragonfly P2P clusters.
#[derive(Parser, Debug)]
#[command(version, about, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Log format (default: the `log_format` key of the configuration,
    /// else text).
    #[arg(long, global = true, env = "DFGRAPH_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum LogFormat {
    Text,
    Json,
}

impl From<LogFormat> for dfgraph::telemetry::LogFormat {
    fn from(format: LogFormat) -> Self {
        match format {
            LogFormat::Text => dfgraph::telemetry::LogFormat::Text,
            LogFormat::Json => dfgraph::telemetry::LogFormat::Json,
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the gateway (the default).
    Serve(ServeArgs),
    /// Run only the simulated Dragonfly cluster and print its addresses.
    Simulate(SimulateArgs),
    /// Print the GraphQL schema (SDL).
    Schema,
    /// Print every setting with its built-in default, as a TOML file
    /// `--config` accepts (settings that are off by default are left out).
    DefaultConfig,
    /// Fetch cluster state straight from the schedulers and print it.
    Status(StatusArgs),
    /// Check a command line (flags, `DFGRAPH_*` variables, config file)
    /// without running it: `dfgraph check-config serve --manager HOST:PORT`.
    /// Exits non-zero with the reason when `dfgraph ARGS...` would refuse
    /// to start. Nothing is dialled or bound.
    CheckConfig(CheckConfigArgs),
}

#[derive(Args, Debug, Clone)]
pub struct CheckConfigArgs {
    /// The command line to check, without the program name (none: `serve`).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "ARGS"
    )]
    pub args: Vec<String>,
}

impl SimulateArgs {
    /// The simulator configuration these flags describe.
    pub fn sim_config(&self) -> dfgraph_sim::SimConfig {
        dfgraph_sim::SimConfig {
            clusters: self.clusters,
            schedulers_per_cluster: self.schedulers_per_cluster,
            hosts: self.hosts,
            tasks: self.tasks,
            peers_per_task: self.peers_per_task,
            seed: self.seed,
            tick_interval: (!self.tick.is_zero()).then_some(self.tick),
            listen_ip: self.listen.ip(),
            base_port: self.listen.port(),
            host_health: true,
            profile: match self.profile {
                SimProfile::Standard => dfgraph_sim::Profile::Standard,
                SimProfile::Edge => dfgraph_sim::Profile::Edge,
            },
        }
    }
}

/// What the simulated data looks like (`simulate --profile`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SimProfile {
    /// Tidy: every field set, every figure finite.
    #[default]
    Standard,
    /// What real schedulers send at their oddest: NaN and +-Inf
    /// percentages, sparse hosts, IPv6 and non-ASCII names, maximal
    /// counters, ports 0, duplicate hostnames, a cluster whose hosts carry
    /// another cluster id, peers without host or task, tasks with no peers.
    Edge,
}

/// Where the schedulers are; shared by `serve` and `status`.
#[derive(Args, Debug, Clone, Default)]
pub struct SourceArgs {
    /// A static scheduler as CLUSTER_ID=HOST:PORT (repeatable).
    #[arg(
        long = "scheduler",
        value_name = "CLUSTER_ID=HOST:PORT",
        env = "DFGRAPH_SCHEDULER",
        value_delimiter = ','
    )]
    pub schedulers: Vec<String>,
    /// Discover schedulers from this Dragonfly manager (HOST:PORT).
    #[arg(long, value_name = "HOST:PORT")]
    pub manager: Option<String>,
    /// Scheduler cluster to discover from the manager (repeatable).
    #[arg(
        long = "scheduler-cluster-id",
        value_name = "N",
        env = "DFGRAPH_SCHEDULER_CLUSTER_ID",
        value_delimiter = ','
    )]
    pub scheduler_cluster_ids: Vec<u64>,
    /// Configuration file (TOML).
    #[arg(long, value_name = "FILE", env = "DFGRAPH_CONFIG")]
    pub config: Option<PathBuf>,
}

#[derive(Args, Debug, Clone, Default)]
pub struct ServeArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Redis URL for the shared cache and event bus.
    #[arg(long, value_name = "URL")]
    pub redis: Option<String>,
    /// Enable deletePeer, deleteTask and deleteHost.
    #[arg(long)]
    pub enable_mutations: bool,
}

impl ServeArgs {
    /// The flags that were given, as config keys, so they override the
    /// file and the environment and nothing else.
    pub fn overrides(&self) -> Value {
        let mut map = Map::new();
        if let Some(listen) = self.listen {
            map.insert("listen".into(), Value::String(listen.to_string()));
        }
        if let Some(redis) = &self.redis {
            map.insert("redis".into(), Value::String(redis.clone()));
        }
        if self.enable_mutations {
            map.insert("enable_mutations".into(), Value::Bool(true));
        }
        self.source.insert_into(&mut map);
        Value::Object(map)
    }
}

impl SourceArgs {
    fn insert_into(&self, map: &mut Map<String, Value>) {
        if !self.schedulers.is_empty() {
            map.insert("schedulers".into(), serde_json::json!(self.schedulers));
        }
        if let Some(manager) = &self.manager {
            map.insert("manager".into(), Value::String(manager.clone()));
        }
        if !self.scheduler_cluster_ids.is_empty() {
            map.insert(
                "scheduler_cluster_ids".into(),
                serde_json::json!(self.scheduler_cluster_ids),
            );
        }
    }

    pub fn overrides(&self) -> Value {
        let mut map = Map::new();
        self.insert_into(&mut map);
        Value::Object(map)
    }
}

#[derive(Args, Debug, Clone)]
pub struct SimulateArgs {
    /// Address of the first scheduler; port 0 picks free ports.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    #[arg(long, default_value_t = 2)]
    pub clusters: usize,
    #[arg(long, default_value_t = 3)]
    pub schedulers_per_cluster: usize,
    /// Hosts in total, split across clusters.
    #[arg(long, default_value_t = 300)]
    pub hosts: usize,
    /// Tasks in total, split across clusters.
    #[arg(long, default_value_t = 200)]
    pub tasks: usize,
    #[arg(long, default_value_t = 10)]
    pub peers_per_task: usize,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// How often the workload moves, e.g. 1s; 0s for a frozen cluster.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub tick: std::time::Duration,
    /// The data's look: `standard`, or `edge` for real-world oddities.
    #[arg(long, value_enum, default_value_t = SimProfile::Standard)]
    pub profile: SimProfile,
}

#[derive(Args, Debug, Clone)]
pub struct StatusArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}
