//! The load tool's `watch` scenario on this build's binary: a simulator
//! and a gateway as processes of their own, only watching. What it
//! reports is what BENCHMARKS.md quotes, so it must hold together: the
//! gateway polls each cluster's host list every interval and decodes only
//! the hosts that changed, not the whole list.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use dfgraph_bench::{BenchArgs, Scenario};

#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    bench: BenchArgs,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watching_polls_every_interval_and_decodes_only_changes() {
    let mut args =
        Flags::parse_from(["dfgraph-bench", "--scenario", "watch", "--hosts", "4000"]).bench;
    assert_eq!(args.scenario, Scenario::Watch);
    args.dfgraph = Some(PathBuf::from(env!("CARGO_BIN_EXE_dfgraph")));
    args.duration = Duration::from_secs(4);
    args.warmup = Duration::from_secs(2);
    let report = dfgraph_bench::watch::run(&args).await.unwrap();

    let polls = report.host_polls_per_s.expect("this binary counts polls");
    // Two clusters, one poll of each per second (a loaded machine may
    // start one late).
    assert!((1.0..=2.5).contains(&polls), "{report:?}");
    let bytes = report.bytes_per_poll.expect("this binary counts bytes");
    assert!(
        bytes > 2000.0 * 50.0,
        "a 2000-host list is bigger: {report:?}"
    );
    // The simulator changes about 2 % of hosts per second.
    let share = report.decode_share.expect("this binary counts decodes");
    assert!(share < 0.25, "decoded more than changed: {report:?}");
    assert!(
        report.gateway_rss_mib.is_some_and(|mib| mib > 1.0),
        "{report:?}"
    );
    assert!(
        report.gateway_rss_max_mib >= report.gateway_rss_mib,
        "{report:?}"
    );
    assert!(report.render().contains("gateway CPU"));
}
