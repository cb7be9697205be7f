//! `dfgraph serve` with tracing set through `DFGRAPH_TRACING__*`: a
//! query's spans reach the OTLP collector, and the last ones still do when
//! the process stops on SIGTERM (the batch exporter would otherwise hold
//! them for its next 5 s tick, which never comes).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_dfgraph");
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// A child process killed on drop, so a failing test leaves nothing behind.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn serve_exports_its_last_spans_when_it_stops() {
    let (collector, collector_addr) = crate::support::otlp::Collector::start().await;
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env(
            "DFGRAPH_TRACING__OTLP_ENDPOINT",
            format!("http://{collector_addr}"),
        )
        .env("DFGRAPH_TRACING__SERVICE_NAME", "dfgraph-under-test")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("dfgraph starts");
    let stdout = child.stdout.take().unwrap();
    let mut running = Running(child);
    let first_line = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout).lines().next().and_then(Result::ok)
    });
    let line = tokio::time::timeout(Duration::from_secs(60), first_line)
        .await
        .expect("dfgraph prints its address")
        .unwrap()
        .expect("a first line");
    let url = line
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("{line:?}"))
        .to_owned();

    let body: serde_json::Value = reqwest::Client::new()
        .post(format!("{url}/graphql"))
        .header("traceparent", format!("00-{TRACE_ID}-00f067aa0ba902b7-01"))
        .json(&serde_json::json!({ "query": "query Clusters { schedulers { address } }" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(body["data"]["schedulers"].is_array(), "{body}");

    let stopped = Command::new("kill")
        .args(["-TERM", &running.0.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(stopped.success());
    let exit = tokio::task::spawn_blocking(move || {
        let status = running.0.wait();
        (status, running)
    });
    let (status, _running) = tokio::time::timeout(Duration::from_secs(30), exit)
        .await
        .expect("dfgraph exits after SIGTERM")
        .unwrap();
    let status = status.unwrap();
    assert!(status.success(), "{status}");

    // No flush from here: what arrived, the process sent before exiting.
    let spans = collector.trace(TRACE_ID);
    let names: Vec<&str> = spans.iter().map(|(_, s)| s.name.as_str()).collect();
    assert!(names.contains(&"POST /graphql"), "{names:?}");
    assert!(names.contains(&"query Clusters"), "{names:?}");
    assert!(
        spans
            .iter()
            .all(|(service, _)| service == "dfgraph-under-test"),
        "service.name from DFGRAPH_TRACING__SERVICE_NAME"
    );
}
