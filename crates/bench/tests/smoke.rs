//! A few seconds of the load tool, so it cannot rot: it starts its own
//! cluster and gateway, sends real queries and reports what it saw.

use std::time::Duration;

use dfgraph_bench::{BenchArgs, Scenario, run};

#[path = "../../../tests/it/support/redis.rs"]
#[allow(dead_code)]
mod redis_server;
use redis_server::RedisServer;

fn args(scenario: Scenario) -> BenchArgs {
    BenchArgs {
        scenario,
        clients: 4,
        duration: Duration::from_millis(1500),
        warmup: Duration::from_millis(300),
        rate: None,
        target: None,
        clusters: 2,
        schedulers_per_cluster: 2,
        hosts: 200,
        tasks: 20,
        peers_per_task: 5,
        scheduler_latency: None,
        no_cache: false,
        no_watch: false,
        no_response_cache: false,
        redis: None,
        interval: Some(Duration::from_millis(500)),
        json: false,
        subscribers: 20,
        event_rate: 20,
        watch_interval: Duration::from_millis(100),
        in_process_subscribers: true,
        replicas: 1,
        batched: false,
        dfgraph: None,
        kills: 100,
        simulator: None,
        fault_every: Duration::from_secs(60),
        sim_tick: Duration::from_millis(100),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_overview_reports_latency_and_scheduler_calls() {
    let report = run(&args(Scenario::Overview)).await.unwrap();
    assert!(report.requests > 0, "{report:?}");
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(
        report.p50_ms > 0.0 && report.p50_ms <= report.p99_ms && report.p99_ms <= report.max_ms
    );
    assert!(report.render().contains("throughput"));
    assert_eq!(report.intervals.len(), 3, "{:?}", report.intervals);
    assert_eq!(
        report.intervals.iter().map(|i| i.requests).sum::<u64>(),
        report.requests
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_rate_peers_scenario_runs_without_errors() {
    let mut a = args(Scenario::Peers);
    a.rate = Some(20);
    let report = run(&a).await.unwrap();
    assert!(report.requests >= 20, "{report:?}");
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(
        report.scheduler_rpcs.contains_key("StatPeer") || report.cache_hits > 0,
        "{report:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_scenario_delivers_host_events_to_every_subscriber() {
    let report = dfgraph_bench::live::run(&args(Scenario::Live))
        .await
        .unwrap();
    let seen = &report.subscribers_report;
    assert_eq!(seen.connected, 20, "{report:?}");
    assert!(
        report.changes_made > 0 && report.events_published > 0,
        "{report:?}"
    );
    assert_eq!(seen.messages, report.deliveries_expected, "{report:?}");
    assert_eq!(seen.errors, 0, "{report:?}");
    assert!(seen.delivery_p50_ms <= seen.delivery_p99_ms, "{report:?}");
    assert!(report.render().contains("delivery lag"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_scenario_over_two_replicas_delivers_every_event_on_both_in_batches() {
    let redis = RedisServer::start();
    let mut args = args(Scenario::Live);
    args.replicas = 2;
    args.batched = true;
    args.redis = Some(redis.url());
    let report = dfgraph_bench::live::run(&args).await.unwrap();
    let seen = &report.subscribers_report;
    assert_eq!(report.replicas, 2);
    assert_eq!(seen.connected, 20, "{report:?}");
    assert!(report.events_published > 0, "{report:?}");
    // Half the subscribers are on the replica that does not poll: they
    // hear the events through Redis, or this count falls short.
    assert_eq!(seen.messages, report.deliveries_expected, "{report:?}");
    assert_eq!(seen.errors, 0, "{report:?}");
    assert!(report.render().contains("over 2 replicas, batched"));

    args.redis = None;
    let refused = dfgraph_bench::live::run(&args).await.unwrap_err();
    assert!(refused.to_string().contains("--redis"), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_list_hosts_measures_the_schedulers_alone() {
    let report = run(&args(Scenario::RawListHosts)).await.unwrap();
    assert!(report.requests > 0, "{report:?}");
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    // One ListHosts per cluster per request, and nothing through the
    // gateway (no GraphQL, so no cache figures).
    let list_hosts = report.scheduler_rpcs.get("ListHosts").copied().unwrap_or(0);
    assert!(
        list_hosts >= report.requests * 2 && list_hosts <= report.requests * 2 + 4,
        "{report:?}"
    );
    assert_eq!(report.cache_hits + report.origin_loads, 0, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liveness_scenario_times_every_stopped_host_to_its_event() {
    // The `dfgraph` binary cargo built beside this test's directory.
    let dfgraph = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("dfgraph")))
        .filter(|path| path.exists())
        .expect("the dfgraph binary is built (cargo test --workspace builds it)");
    let mut args = args(Scenario::Liveness);
    args.clusters = 1;
    args.kills = 20;
    args.dfgraph = Some(dfgraph);
    let report = dfgraph_bench::liveness::run(&args).await.unwrap();
    assert_eq!((report.kills, report.detected), (20, 20), "{report:?}");
    // 200 hosts at 500 probes/s: a cycle every second (the interval);
    // a stopped host refuses, so its confirmations take milliseconds.
    let p99 = report.detection_p99_s.expect("detections");
    assert!(p99 < 2.5, "{report:?}");
    assert!(report.cpu_percent > 0.0, "{report:?}");
}
