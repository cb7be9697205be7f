//! `/metrics`: the Prometheus exposition of everything recorded through
//! the `metrics` facade, on the main port or a listener of its own, behind
//! a bearer token if one is configured. The recorder is process-global, so
//! it is installed once and shared by every server in the process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::AppState;
use crate::setting::Invalid;

/// The `[metrics]` settings: where `/metrics` is served and who may read
/// it.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve `/metrics` on this address, and no longer on `listen`.
    pub listen: Option<SocketAddr>,
    /// A file holding the bearer token a scraper must send.
    pub token_file: Option<PathBuf>,
    /// The name of an environment variable holding that token.
    pub token_env: Option<String>,
}

/// Shortest token accepted: `/metrics` is not rate limited, so a short
/// one could be guessed.
const MIN_TOKEN_CHARS: usize = 16;

impl MetricsConfig {
    /// The token, read from its file or variable (`None`: no token).
    /// Errors name the setting and never contain the token.
    pub fn token(&self) -> Result<Option<String>, Invalid> {
        let token = match (&self.token_file, &self.token_env) {
            (None, None) => return Ok(None),
            (Some(_), Some(_)) => {
                return Err(Invalid::new(
                    "token_file",
                    "set only one of metrics.token_file and metrics.token_env",
                ));
            }
            (Some(file), None) => match std::fs::read_to_string(file) {
                Ok(text) => ("token_file", text.trim().to_owned()),
                Err(e) => {
                    return Err(Invalid::new(
                        "token_file",
                        format!("cannot read {}: {e}", file.display()),
                    ));
                }
            },
            (None, Some(var)) => match std::env::var(var) {
                Ok(value) => ("token_env", value.trim().to_owned()),
                Err(_) => {
                    return Err(Invalid::new(
                        "token_env",
                        format!("variable {var} is not set (or not UTF-8)"),
                    ));
                }
            },
        };
        let (setting, token) = token;
        if token.chars().count() < MIN_TOKEN_CHARS {
            return Err(Invalid::new(
                setting,
                format!(
                    "the token must be at least {MIN_TOKEN_CHARS} characters \
                     (e.g. `openssl rand -hex 32`)"
                ),
            ));
        }
        if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(Invalid::new(setting, "the token must not contain spaces"));
        }
        Ok(Some(token))
    }

    /// A token, if one is configured, can be read and is long enough.
    pub fn validate(&self) -> Result<(), Invalid> {
        self.token().map(|_| ())
    }
}

/// Who may read `/metrics`, and where it is served.
#[derive(Clone, Default)]
pub struct MetricsAccess {
    /// SHA-256 of the token: compared in constant time, and equal in
    /// length whatever was sent.
    token_sha256: Option<Arc<[u8; 32]>>,
    /// `/metrics` has a listener of its own (not served on `listen`).
    pub separate_listener: bool,
}

impl MetricsAccess {
    /// Access as `config` describes it; its error names the setting within
    /// `[metrics]`.
    pub fn new(config: &MetricsConfig) -> Result<MetricsAccess, Invalid> {
        let token = config.token()?;
        Ok(MetricsAccess {
            token_sha256: token.map(|t| Arc::new(Sha256::digest(t.as_bytes()).into())),
            separate_listener: config.listen.is_some(),
        })
    }

    fn allows(&self, headers: &HeaderMap) -> bool {
        let Some(expected) = &self.token_sha256 else {
            return true;
        };
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(super::access::strip_bearer)
            .unwrap_or("");
        let presented: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        bool::from(presented.ct_eq(expected.as_ref()))
    }
}

/// The router of a separate metrics listener: `/metrics` alone.
pub fn router(state: AppState) -> axum::Router {
    axum::Router::new()
        .route("/metrics", axum::routing::get(render))
        .with_state(state)
}

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
                    describe_all();
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

/// Gives every dfgraph metric its HELP line: each module declares its own
/// metrics, and their descriptions, in its `metric` module.
pub fn describe_all() {
    crate::cache::metric::describe();
    crate::cluster::metric::describe();
    crate::events::metric::describe();
    crate::liveness::metric::describe();
    crate::redis::metric::describe();
    super::metric::describe();
}

pub async fn render(State(app): State<AppState>, headers: HeaderMap) -> Response {
    if !app.metrics_access.allows(&headers) {
        let mut refused =
            (StatusCode::UNAUTHORIZED, "metrics need a bearer token\n").into_response();
        refused
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return refused;
    }
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
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

#[cfg(test)]
mod described {
    use std::collections::BTreeSet;
    use std::sync::{Arc, Mutex};

    use metrics::{
        Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
    };

    /// Records the names described to it.
    #[derive(Default)]
    struct Described(Arc<Mutex<BTreeSet<String>>>);

    impl Described {
        fn add(&self, key: KeyName, description: SharedString) {
            assert!(
                !description.is_empty(),
                "{} has an empty HELP",
                key.as_str()
            );
            let fresh = self.0.lock().unwrap().insert(key.as_str().to_owned());
            assert!(fresh, "{} is described twice", key.as_str());
        }
    }

    impl Recorder for Described {
        fn describe_counter(&self, key: KeyName, _: Option<Unit>, description: SharedString) {
            self.add(key, description);
        }
        fn describe_gauge(&self, key: KeyName, _: Option<Unit>, description: SharedString) {
            self.add(key, description);
        }
        fn describe_histogram(&self, key: KeyName, _: Option<Unit>, description: SharedString) {
            self.add(key, description);
        }
        fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
            Counter::noop()
        }
        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::noop()
        }
        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::noop()
        }
    }

    /// Every `.rs` file under `src/`, with its path.
    fn sources() -> Vec<(String, String)> {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut stack = vec![src.clone()];
        let mut files = Vec::new();
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let name = path.strip_prefix(&src).unwrap().display().to_string();
                    files.push((name, std::fs::read_to_string(&path).unwrap()));
                }
            }
        }
        files
    }

    #[test]
    fn every_metric_is_declared_once_and_described() {
        let recorder = Described::default();
        let names = recorder.0.clone();
        metrics::with_local_recorder(&recorder, super::describe_all);
        let described = names.lock().unwrap().clone();
        let declared_at =
            regex::Regex::new(r#"const [A-Z_]+: &str = "(dfgraph_[a-z0-9_]+)""#).unwrap();
        let literal_use =
            regex::Regex::new(r#"(?s)(counter|gauge|histogram)!\(\s*"[^"]*""#).unwrap();
        let mut declared = BTreeSet::new();
        for (file, text) in sources() {
            for name in declared_at.captures_iter(&text) {
                assert!(
                    declared.insert(name[1].to_owned()),
                    "{} declared twice",
                    &name[1]
                );
            }
            assert!(
                !literal_use.is_match(&text),
                "{file}: a metric named by a literal; declare it in its module's `metric` \
                 with a HELP text"
            );
        }
        assert!(declared.len() >= 20, "found {declared:?}");
        assert_eq!(
            declared, described,
            "each declared metric has a HELP text (its module's metric::describe, \
             called from describe_all)"
        );
    }
}
