//! `dfgraph-bench`: the load tool's command line. Runs one scenario and
//! prints its report (text, or JSON with `--json`); `subscribers` is the
//! subscriber side of the live scenario, run in a child process.

use clap::{Args, Parser, Subcommand};
use dfgraph_bench::{BenchArgs, Scenario};
use tracing_subscriber::EnvFilter;

// The `dfgraph` binary's allocator, so in-process figures are the binary's.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// dfgraph-bench: drive a query mix or live subscribers against dfgraph and
/// report latency, throughput, scheduler calls and cache hit ratio.
#[derive(Parser, Debug)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    bench: BenchArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The subscriber side of `--scenario live`, in its own process.
    #[command(hide = true)]
    Subscribers(SubscribersArgs),
}

#[derive(Args, Debug)]
struct SubscribersArgs {
    #[arg(long)]
    target: String,
    #[arg(long)]
    subscribers: usize,
    #[arg(long)]
    batched: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if let Some(Command::Subscribers(args)) = cli.command {
        let report =
            dfgraph_bench::live::subscriber_process(&args.target, args.subscribers, args.batched)
                .await;
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    let args = cli.bench;
    if args.scenario == Scenario::Liveness {
        let report = dfgraph_bench::liveness::run(&args).await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print!("{}", report.render());
        }
    } else if args.scenario == Scenario::Soak {
        let report = dfgraph_bench::soak::run(&args).await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print!("{}", report.render());
        }
        if report.violations() > 0 {
            anyhow::bail!("events told twice, missed or out of order: see the report");
        }
    } else if args.scenario == Scenario::Bus {
        let report = dfgraph_bench::bus::run(&args).await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print!("{}", report.render());
        }
    } else if args.scenario == Scenario::Watch {
        let report = dfgraph_bench::watch::run(&args).await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print!("{}", report.render());
        }
    } else if args.scenario == Scenario::Live {
        let report = dfgraph_bench::live::run(&args).await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print!("{}", report.render());
        }
    } else {
        let report = dfgraph_bench::run(&args).await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print!("{}", report.render());
        }
    }
    Ok(())
}
