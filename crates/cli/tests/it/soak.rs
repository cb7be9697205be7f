//! The load tool's `soak` scenario, short, on this build's binary: two
//! replicas as processes of their own sharing one redis-server, hosts
//! joining and leaving, Redis killed and restarted once and frozen once.
//! Every event the log holds is told to each replica's subscriber exactly
//! once, in order (the 10-minute run in BENCHMARKS.md is the long form).

use std::path::PathBuf;

use clap::Parser;
use dfgraph_bench::soak::Fault;
use dfgraph_bench::{BenchArgs, Scenario};

#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    bench: BenchArgs,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_a_redis_restart_and_a_freeze_every_logged_event_is_told_once_in_order() {
    let mut args = Flags::parse_from([
        "dfgraph-bench",
        "--scenario",
        "soak",
        "--hosts",
        "400",
        "--duration",
        "60s",
        "--fault-every",
        "20s",
    ])
    .bench;
    assert_eq!(args.scenario, Scenario::Soak);
    args.dfgraph = Some(PathBuf::from(env!("CARGO_BIN_EXE_dfgraph")));
    let report = dfgraph_bench::soak::run(&args).await.unwrap();
    let text = report.render();
    println!("{text}");

    let faults: Vec<Fault> = report.faults.iter().map(|f| f.fault).collect();
    assert_eq!(faults, [Fault::RedisRestart, Fault::RedisFreeze], "{text}");
    assert!(report.duration_s >= 60.0, "{text}");
    assert_eq!(report.subscribers.len(), 2, "{text}");
    for subscriber in &report.subscribers {
        // Hosts came and went throughout, and the log kept them.
        assert!(subscriber.logged_in_window >= 20, "{text}");
        assert!(
            subscriber.with_cursor >= subscriber.logged_in_window / 2,
            "{text}"
        );
        assert_eq!(subscriber.duplicates, 0, "{text}");
        assert_eq!(subscriber.missing, 0, "{text}");
        assert_eq!(subscriber.order_violations, 0, "{text}");
        assert_eq!(subscriber.unknown_cursors, 0, "{text}");
    }
    assert_eq!(report.violations(), 0, "{text}");
}
