//! `/metrics`: the Prometheus exposition of everything recorded through
//! the `metrics` facade. The recorder is process-global, so it is
//! installed once and shared by every server in the process.

use std::sync::OnceLock;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use super::AppState;

/// A handle that renders the process's metrics, if a recorder could be
/// installed.
#[derive(Clone)]
pub struct MetricsHandle(Option<PrometheusHandle>);

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// How often histogram samples are folded into their buckets.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

impl MetricsHandle {
    pub fn install() -> Self {
        let handle = HANDLE.get_or_init(|| {
            let buckets = [
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ];
            match PrometheusBuilder::new()
                .set_buckets(&buckets)
                .and_then(|b| b.install_recorder())
            {
                Ok(handle) => {
                    // Histogram samples pile up in the recorder until they
                    // are drained; a scrape drains them, but nothing
                    // guarantees a scraper. A plain thread, because the
                    // recorder outlives any one tokio runtime.
                    let upkeep = handle.clone();
                    let spawned = std::thread::Builder::new()
                        .name("metrics-upkeep".into())
                        .spawn(move || {
                            loop {
                                std::thread::sleep(UPKEEP_EVERY);
                                upkeep.run_upkeep();
                            }
                        });
                    if let Err(e) = spawned {
                        tracing::warn!(error = %e, "metrics upkeep thread not started; histograms grow until /metrics is scraped");
                    }
                    Some(handle)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics recorder not installed; /metrics will be empty");
                    None
                }
            }
        });
        Self(handle.clone())
    }
}

pub async fn render(State(app): State<AppState>) -> impl IntoResponse {
    // Open turns half-open by time alone, with no call to notice it.
    for scheduler in app.gateway.cluster.schedulers() {
        scheduler.publish_circuit();
    }
    let body = app
        .metrics
        .0
        .as_ref()
        .map(|h| h.render())
        .unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}
