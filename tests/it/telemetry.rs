//! Tracing as an operator sees it: the console sends a query with a W3C
//! `traceparent`, and the in-process OTLP collector below (a tonic server
//! of `opentelemetry.proto.collector.trace.v1.TraceService`) receives one
//! trace for it, from the HTTP request down to each scheduler call, while
//! the simulated scheduler receives the trace context in its metadata.
//!
//! Each test installs its subscriber with `set_default` on its own
//! (current-thread) runtime, so no process-wide subscriber is involved.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::support::otlp::{Collector, attribute};
use crate::support::redis::RedisServer;
use crate::support::{gateway_config, small_sim};
use dfgraph::gateway::Gateway;
use dfgraph::telemetry::{Telemetry, TracingConfig};
use dfgraph_sim::{Method, SimCluster};
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tracing_subscriber::layer::SubscriberExt;

/// The W3C Trace Context specification's example trace.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CONSOLE_SPAN_ID: &str = "00f067aa0ba902b7";

const TASK: &str =
    "query TaskPage($id: ID!) { task(id: $id, schedulerClusterId: \"1\") { id state } }";

/// The one span named `name` in `spans`.
fn named<'a>(spans: &'a [Span], name: &str) -> &'a Span {
    let found: Vec<&Span> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(
        found.len(),
        1,
        "one span {name:?} expected; the trace has {:?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    found[0]
}

/// The names of `span`'s ancestors within `spans`, nearest first.
fn ancestors(spans: &[Span], span: &Span) -> Vec<String> {
    let mut names = Vec::new();
    let mut parent = span.parent_span_id.clone();
    while let Some(up) = spans.iter().find(|s| s.span_id == parent) {
        names.push(up.name.clone());
        parent = up.parent_span_id.clone();
        assert!(names.len() < 32, "a cycle in the span tree");
    }
    names
}

fn tracing_config(collector: SocketAddr, export_timeout: Duration) -> TracingConfig {
    TracingConfig {
        otlp_endpoint: Some(format!("http://{collector}")),
        export_timeout,
        ..TracingConfig::default()
    }
}

/// Flushes until `done` holds of what the collector has, for at most
/// 15 s: the request span closes once its response body has been sent,
/// which may be just after the client read it.
async fn flush_until(
    telemetry: &Telemetry,
    collector: &Collector,
    done: impl Fn(&Collector) -> bool,
) {
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        telemetry
            .flush()
            .await
            .expect("spans flush to the collector");
        if done(collector) {
            return;
        }
        assert!(Instant::now() < until, "the collector never got the spans");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn post(
    http: &reqwest::Client,
    gateway: &Gateway,
    traceparent: Option<&str>,
    variables: Value,
) -> Value {
    let mut request = http
        .post(format!("{}/graphql", gateway.url()))
        .json(&json!({ "query": TASK, "variables": variables }));
    if let Some(traceparent) = traceparent {
        request = request.header("traceparent", traceparent);
    }
    let body: Value = request.send().await.unwrap().json().await.unwrap();
    assert!(body.get("errors").is_none(), "{body:#}");
    body
}

#[tokio::test]
async fn one_query_is_one_trace_from_the_console_to_the_schedulers() {
    let (collector, collector_addr) = Collector::start().await;
    let telemetry = Telemetry::start(&tracing_config(collector_addr, Duration::from_secs(5)))
        .expect("tracing starts")
        .expect("an endpoint turns tracing on");
    let subscriber = tracing_subscriber::registry().with(telemetry.layer());
    let _default = tracing::subscriber::set_default(subscriber);

    let redis = RedisServer::start();
    let sim = SimCluster::start(small_sim()).await.unwrap();
    let mut config = gateway_config(&sim);
    config.cache.enabled = true;
    config.redis = Some(redis.url());
    let gateway = Gateway::start(config).await.unwrap();
    let http = reqwest::Client::new();
    let task = sim.tasks(1).remove(0);
    let owner = sim.task_owner(&task.id).expect("the task has an owner");

    let traceparent = format!("00-{TRACE_ID}-{CONSOLE_SPAN_ID}-01");
    let body = post(
        &http,
        &gateway,
        Some(&traceparent),
        json!({ "id": task.id }),
    )
    .await;
    assert_eq!(body["data"]["task"]["id"], task.id.as_str());
    assert_eq!(body["extensions"]["freshness"]["originLoads"], 1);

    let request_span = |c: &Collector| {
        c.trace(TRACE_ID)
            .iter()
            .any(|(_, s)| s.name == "POST /graphql")
    };
    flush_until(&telemetry, &collector, request_span).await;
    let received = collector.trace(TRACE_ID);
    assert!(
        received.iter().all(|(service, _)| service == "dfgraph"),
        "service.name of every span is dfgraph"
    );
    let spans: Vec<Span> = received.into_iter().map(|(_, s)| s).collect();

    // The request continues the console's trace.
    let request = named(&spans, "POST /graphql");
    assert_eq!(hex::encode(&request.parent_span_id), CONSOLE_SPAN_ID);
    assert_eq!(request.kind, SpanKind::Server as i32);
    assert_eq!(
        attribute(request, "http.route").as_deref(),
        Some("/graphql")
    );
    assert_eq!(
        attribute(request, "http.response.status_code").as_deref(),
        Some("200")
    );

    let operation = named(&spans, "query TaskPage");
    assert_eq!(operation.parent_span_id, request.span_id);
    assert_eq!(
        attribute(operation, "graphql.operation.type").as_deref(),
        Some("query")
    );

    // Beneath it: the batch, its cache tiers, its origin load and the
    // scheduler call, each under the one before.
    let batch = named(&spans, "load tasks");
    assert_eq!(batch.parent_span_id, operation.span_id);
    assert_eq!(attribute(batch, "dfgraph.keys").as_deref(), Some("1"));
    for tier in ["cache l1", "cache l2"] {
        let lookup = named(&spans, tier);
        assert_eq!(lookup.parent_span_id, batch.span_id, "{tier}");
        assert_eq!(attribute(lookup, "cache.kind").as_deref(), Some("task"));
        assert_eq!(
            attribute(lookup, "cache.found").as_deref(),
            Some("0"),
            "{tier}"
        );
    }
    let origin = named(&spans, "cache origin");
    assert_eq!(
        ancestors(&spans, origin),
        ["load tasks", "query TaskPage", "POST /graphql"]
    );
    let call = named(&spans, "scheduler.v2.Scheduler/StatTask");
    assert_eq!(call.parent_span_id, origin.span_id);
    assert_eq!(call.kind, SpanKind::Client as i32);
    assert_eq!(attribute(call, "rpc.method").as_deref(), Some("StatTask"));
    assert_eq!(attribute(call, "rpc.system").as_deref(), Some("grpc"));
    assert_eq!(
        attribute(call, "server.address"),
        Some(owner.ip().to_string())
    );
    assert_eq!(
        attribute(call, "server.port"),
        Some(owner.port().to_string())
    );
    assert_eq!(
        attribute(call, "dfgraph.scheduler_cluster").as_deref(),
        Some("1")
    );

    // The scheduler was told the trace, with the call as parent.
    let metadata = sim
        .last_metadata(owner, Method::StatTask)
        .expect("the owner got the StatTask");
    let received = metadata
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .expect("traceparent in the gRPC metadata");
    assert_eq!(
        received,
        format!("00-{TRACE_ID}-{}-01", hex::encode(&call.span_id))
    );

    // Without a traceparent, a request starts a trace of its own.
    let before = collector.all().len();
    post(&http, &gateway, None, json!({ "id": task.id })).await;
    let new_root = |c: &Collector| {
        c.all()[before..]
            .iter()
            .any(|s| s.name == "POST /graphql" && hex::encode(&s.trace_id) != TRACE_ID)
    };
    flush_until(&telemetry, &collector, new_root).await;
    let root = collector.all()[before..]
        .iter()
        .find(|s| s.name == "POST /graphql")
        .cloned()
        .expect("a request span");
    assert!(root.parent_span_id.is_empty(), "{root:?}");

    gateway.shutdown().await;
    sim.shutdown().await;
    telemetry.shutdown().await.expect("the pipeline shuts down");
}

/// A span in a trace of its own, exported by `telemetry`.
fn record_one_span(telemetry: &Telemetry) {
    let subscriber = tracing_subscriber::registry().with(telemetry.layer());
    tracing::subscriber::with_default(subscriber, || {
        tracing::debug_span!(target: "dfgraph::test", "lost span").in_scope(|| {});
    });
}

#[tokio::test]
async fn a_collector_that_is_down_or_silent_never_hangs_the_gateway() {
    let bound = Duration::from_secs(20);
    // Down: nothing listens on the port.
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    };
    let down = Telemetry::start(&tracing_config(closed, Duration::from_secs(1)))
        .unwrap()
        .unwrap();
    record_one_span(&down);
    let flushed = tokio::time::timeout(bound, down.flush()).await;
    assert!(flushed.is_ok(), "flush to a closed port returns");
    assert!(
        tokio::time::timeout(bound, down.shutdown()).await.is_ok(),
        "shutdown returns"
    );

    // Silent: a listener that accepts and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = listener.local_addr().unwrap();
    let held = Arc::new(Mutex::new(Vec::new()));
    let hold = held.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            hold.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(socket);
        }
    });
    let silent = Telemetry::start(&tracing_config(silent_addr, Duration::from_secs(1)))
        .unwrap()
        .unwrap();
    record_one_span(&silent);
    let flushed = tokio::time::timeout(bound, silent.flush()).await;
    assert!(
        matches!(flushed, Ok(Err(_))),
        "flush to a silent collector gives up with an error: {flushed:?}"
    );
    assert!(
        tokio::time::timeout(bound, silent.shutdown()).await.is_ok(),
        "shutdown returns"
    );
}
