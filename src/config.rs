//! One typed configuration, merged from defaults, a TOML file, `DFGRAPH_*`
//! environment variables and command-line flags (later wins), and validated
//! once, by [`Config::validate`], with errors that name the offending
//! setting.
//!
//! Each section's struct lives with the module that uses it and has one
//! `validate` returning [`Invalid`] with the setting named within the
//! section; this file only assembles the sections, layers the sources,
//! checks the rules that span sections and names each section's errors.
//! Nothing below [`crate::gateway`] imports it.

use std::net::SocketAddr;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::auth::AuthConfig;
use crate::breaker::BreakerConfig;
use crate::cache::CacheConfig;
use crate::cluster::discovery::resolve_addr;
use crate::cluster::{RetryConfig, Timeouts, TlsConfig};
use crate::events::WatchConfig;
use crate::events::log::EventLogConfig;
use crate::graphql::Limits;
use crate::http::browser::BrowserConfig;
use crate::http::graphql::GraphqlConfig;
use crate::http::manager_proxy::ManagerProxyConfig;
use crate::http::metrics::MetricsConfig;
use crate::http::rate_limit::RateLimitConfig;
use crate::http::response_cache::ResponseCacheConfig;
use crate::http::ws::SubscriptionLimits;
use crate::liveness::LivenessConfig;
pub use crate::setting::Invalid;
use crate::telemetry::{LogFormat, TracingConfig};

/// Everything `dfgraph serve` needs to know.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP server binds.
    pub listen: SocketAddr,
    /// Static schedulers as `CLUSTER_ID=HOST:PORT`.
    pub schedulers: Vec<String>,
    /// Manager address (`HOST:PORT`) to discover schedulers from.
    pub manager: Option<String>,
    /// Scheduler clusters to discover from the manager.
    pub scheduler_cluster_ids: Vec<u64>,
    /// How often the manager is asked again for the scheduler list.
    #[serde(with = "humantime_serde")]
    pub manager_refresh_interval: Duration,
    /// The manager's REST address (`http://manager:8080`): dfgraph becomes
    /// its front door, passing every path it does not serve to it (the
    /// console's files, the rest of `/api/v1/`), and asks its RBAC which
    /// console sessions are `root` (admin).
    pub manager_api: Option<String>,
    /// Timeouts toward `manager_api`, and how long a user's roles are kept.
    pub manager_proxy: ManagerProxyConfig,
    /// Redis URL for the shared cache tier and the event bus.
    pub redis: Option<String>,
    /// TLS toward schedulers and the manager.
    pub tls: TlsConfig,
    /// Deadlines of scheduler calls and of whole requests.
    pub timeouts: Timeouts,
    /// Bounds on what one client may ask for.
    pub limits: Limits,
    /// Each scheduler's circuit breaker.
    pub breaker: BreakerConfig,
    /// Retry budget and backoff after rate limiting.
    pub retry: RetryConfig,
    /// Enables `deletePeer`, `deleteTask` and `deleteHost`. Off by default
    /// because they change the cluster; admins only, and only with an
    /// `[auth]` method configured.
    pub enable_mutations: bool,
    /// The two-tier cache: TTLs per kind, L1 size, Redis.
    pub cache: CacheConfig,
    /// The change watcher behind subscriptions.
    pub watch: WatchConfig,
    /// The probes of each listed host's gRPC health service.
    pub liveness: LivenessConfig,
    /// The history of published events: retention and size.
    pub event_log: EventLogConfig,
    /// Bounds on websocket connections and their subscriptions.
    pub subscriptions: SubscriptionLimits,
    /// The simulated cluster started when no scheduler or manager is given.
    pub simulator: SimulatorConfig,
    /// Who may read and who may change (see README, Security).
    pub auth: AuthConfig,
    /// What browsers may do: cross-origin callers, CSRF prevention.
    pub browser: BrowserConfig,
    /// Schema-level switches for production.
    pub graphql: GraphqlConfig,
    /// Per-client request rates (off unless `per_second` is set).
    pub rate_limit: RateLimitConfig,
    /// Where `/metrics` is served, and its bearer token.
    pub metrics: MetricsConfig,
    /// Kept responses of hot host-list queries (on by default).
    pub response_cache: ResponseCacheConfig,
    /// OpenTelemetry trace export (off unless `otlp_endpoint` is set).
    pub tracing: TracingConfig,
    /// Log lines on stderr: `text` or `json` (the `--log-format` flag
    /// wins over this key).
    pub log_format: LogFormat,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            schedulers: Vec::new(),
            manager: None,
            scheduler_cluster_ids: Vec::new(),
            manager_refresh_interval: Duration::from_secs(60),
            manager_api: None,
            manager_proxy: Default::default(),
            redis: None,
            tls: TlsConfig::default(),
            timeouts: Timeouts::default(),
            limits: Limits::default(),
            breaker: BreakerConfig::default(),
            retry: RetryConfig::default(),
            enable_mutations: false,
            cache: CacheConfig::default(),
            watch: WatchConfig::default(),
            liveness: LivenessConfig::default(),
            event_log: EventLogConfig::default(),
            subscriptions: SubscriptionLimits::default(),
            simulator: SimulatorConfig::default(),
            auth: AuthConfig::default(),
            browser: BrowserConfig::default(),
            graphql: GraphqlConfig::default(),
            rate_limit: RateLimitConfig::default(),
            metrics: MetricsConfig::default(),
            response_cache: ResponseCacheConfig::default(),
            tracing: TracingConfig::default(),
            log_format: LogFormat::default(),
        }
    }
}

/// Size of the simulated cluster the `dfgraph` binary embeds when no
/// scheduler is configured. It lives here, not with its user: its user is
/// the binary, and the gateway library never reads it (it knows nothing of
/// the simulator).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimulatorConfig {
    /// Scheduler clusters.
    pub clusters: usize,
    /// Schedulers in each cluster.
    pub schedulers_per_cluster: usize,
    /// Hosts in the whole simulated cluster.
    pub hosts: usize,
    /// Tasks in the whole simulated cluster.
    pub tasks: usize,
    /// Peers (hosts downloading it) of each task.
    pub peers_per_task: usize,
    /// Seed of the generated data, so two runs show the same cluster.
    pub seed: u64,
    /// How often the cluster changes (0s: never).
    #[serde(with = "humantime_serde")]
    pub tick_interval: Duration,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        Self {
            clusters: 2,
            schedulers_per_cluster: 3,
            hosts: 300,
            tasks: 200,
            peers_per_task: 10,
            seed: 42,
            tick_interval: Duration::from_secs(1),
        }
    }
}

impl SimulatorConfig {
    /// A cluster to simulate has at least one scheduler.
    pub fn validate(&self) -> Result<(), Invalid> {
        crate::setting::positive("clusters", self.clusters)?;
        crate::setting::positive("schedulers_per_cluster", self.schedulers_per_cluster)
    }
}

/// A section's own validation, as the module that owns it defines it.
type Validate = fn(&Config) -> Result<(), Invalid>;

/// Every section (each table of the TOML) and its validation: the one
/// list [`Config::validate`] walks, so `check-config` and `serve` check
/// the same rules. A test fails when a section is missing from it.
const SECTIONS: &[(&str, Validate)] = &[
    ("tls", |c| c.tls.validate()),
    ("timeouts", |c| c.timeouts.validate()),
    ("limits", |c| c.limits.validate()),
    ("breaker", |c| c.breaker.validate()),
    ("retry", |c| c.retry.validate()),
    ("cache", |c| c.cache.validate()),
    ("watch", |c| c.watch.validate()),
    ("liveness", |c| c.liveness.validate()),
    ("event_log", |c| c.event_log.validate()),
    ("subscriptions", |c| c.subscriptions.validate()),
    ("simulator", |c| c.simulator.validate()),
    ("auth", |c| c.auth.validate()),
    ("browser", |c| c.browser.validate()),
    ("graphql", |c| c.graphql.validate()),
    ("rate_limit", |c| c.rate_limit.validate()),
    ("metrics", |c| c.metrics.validate()),
    ("response_cache", |c| c.response_cache.validate()),
    ("tracing", |c| c.tracing.validate()),
    ("manager_proxy", |c| c.manager_proxy.validate()),
];

/// A static scheduler entry, parsed from `CLUSTER_ID=HOST:PORT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticScheduler {
    pub cluster_id: u64,
    pub addr: SocketAddr,
}

impl std::str::FromStr for StaticScheduler {
    type Err = Invalid;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| {
            Invalid::new(
                "schedulers",
                format!("{s:?}: {why} (expected CLUSTER_ID=HOST:PORT, e.g. 1=10.0.0.5:8002)"),
            )
        };
        let (cluster, addr) = s.split_once('=').ok_or_else(|| bad("missing '='"))?;
        let cluster_id: u64 = cluster
            .trim()
            .parse()
            .map_err(|_| bad("cluster id is not a number"))?;
        if cluster_id == 0 {
            return Err(bad("cluster id must be at least 1"));
        }
        let addr = resolve_addr(addr.trim()).map_err(|e| bad(&e))?;
        Ok(Self { cluster_id, addr })
    }
}

/// What is wrong with a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error(transparent)]
    Invalid(#[from] Invalid),
}

/// Where the cluster's schedulers come from.
#[derive(Clone, Debug)]
pub enum SchedulerSource {
    Static(Vec<StaticScheduler>),
    Manager {
        addr: String,
        cluster_ids: Vec<u64>,
        refresh: Duration,
    },
    /// Nothing configured. The gateway refuses to start so; the `dfgraph`
    /// binary embeds the simulated cluster (shaped by `[simulator]`) instead.
    Unconfigured,
}

impl Config {
    /// Loads defaults, then `file`, then `DFGRAPH_*` variables (nested keys
    /// with `__`, e.g. `DFGRAPH_CACHE__TASK__FRESH=10s`), then `overrides`.
    pub fn load(
        file: Option<&std::path::Path>,
        overrides: impl Serialize,
    ) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.exists() {
                return Err(Invalid::new(
                    "config",
                    format!("file {} does not exist", file.display()),
                )
                .into());
            }
            figment = figment.merge(Toml::file(file));
        }
        let config: Config = figment
            // Flags own some names (clap reads their env vars itself, with
            // list syntax figment does not parse).
            .merge(
                Env::prefixed("DFGRAPH_")
                    .split("__")
                    .filter(|key| !is_flag_env(key.as_str())),
            )
            .merge(Serialized::defaults(overrides))
            .extract()
            .map_err(|e| ConfigError::Load(Box::new(e)))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot, the one validation `serve`, `status` and
    /// `check-config` share: each section's own rules (its errors named
    /// from the section), then the rules that span sections.
    pub fn validate(&self) -> Result<(), Invalid> {
        self.static_schedulers()?;
        self.validate_sections()?;
        self.validate_across_sections()
    }

    /// Every section's own `validate`, its errors named from the section.
    fn validate_sections(&self) -> Result<(), Invalid> {
        for (section, validate) in SECTIONS {
            validate(self).map_err(|e| e.within(section))?;
        }
        Ok(())
    }

    /// Rules between sections and the top-level settings: who may mutate,
    /// where the gateway listens, where its schedulers come from.
    fn validate_across_sections(&self) -> Result<(), Invalid> {
        if self.enable_mutations && !self.auth.has_method() {
            return Err(Invalid::new(
                "enable_mutations",
                "mutations change the cluster: configure an authentication method under [auth] \
                 (manager, oidc or tokens) so only admins can run them",
            ));
        }
        if let Some(metrics) = self.metrics.listen
            && metrics.port() != 0
            && metrics.port() == self.listen.port()
            && (metrics.ip() == self.listen.ip()
                || metrics.ip().is_unspecified()
                || self.listen.ip().is_unspecified())
        {
            return Err(Invalid::new(
                "metrics.listen",
                format!("{metrics} is the main listener's port: give metrics another one"),
            ));
        }
        self.manager_proxy
            .check(self.manager_api.as_deref())
            .map_err(|e| Invalid::new("manager_api", e.to_string()))?;
        if self.manager.is_some() && !self.schedulers.is_empty() {
            return Err(Invalid::new(
                "manager",
                "give either static schedulers or a manager, not both",
            ));
        }
        if self.manager.is_some() && self.scheduler_cluster_ids.is_empty() {
            return Err(Invalid::new(
                "scheduler_cluster_ids",
                "a manager needs at least one --scheduler-cluster-id",
            ));
        }
        crate::setting::positive("manager_refresh_interval", self.manager_refresh_interval)
    }

    pub fn static_schedulers(&self) -> Result<Vec<StaticScheduler>, Invalid> {
        self.schedulers.iter().map(|s| s.parse()).collect()
    }

    pub fn scheduler_source(&self) -> Result<SchedulerSource, Invalid> {
        if let Some(addr) = &self.manager {
            return Ok(SchedulerSource::Manager {
                addr: addr.clone(),
                cluster_ids: self.scheduler_cluster_ids.clone(),
                refresh: self.manager_refresh_interval,
            });
        }
        let schedulers = self.static_schedulers()?;
        if schedulers.is_empty() {
            Ok(SchedulerSource::Unconfigured)
        } else {
            Ok(SchedulerSource::Static(schedulers))
        }
    }

    /// Where schedulers come from, and the shared tier, in one line (for
    /// `check-config`).
    pub fn describe_source(&self) -> Result<String, Invalid> {
        let source = match self.scheduler_source()? {
            SchedulerSource::Static(list) => format!("{} static schedulers", list.len()),
            SchedulerSource::Manager {
                addr, cluster_ids, ..
            } => format!("manager {addr} for clusters {cluster_ids:?}"),
            SchedulerSource::Unconfigured => "the embedded simulated cluster".to_owned(),
        };
        let redis = if self.redis.is_some() || self.cache.redis_url.is_some() {
            "Redis"
        } else {
            "no Redis"
        };
        Ok(format!("{source}, {redis}"))
    }
}

/// `DFGRAPH_*` variables that are not config keys: those of command-line
/// flags (clap reads them itself, with list syntax figment does not parse)
/// and the cache key ring the README suggests (`keys_env`).
const FLAG_ENV_KEYS: &[&str] = &[
    "scheduler",
    "scheduler_cluster_id",
    "config",
    "log_format",
    "cache_keys",
];

/// True for a variable (without its prefix, as figment hands it over: in
/// the case it was written) that the config loader must leave alone.
fn is_flag_env(key: &str) -> bool {
    FLAG_ENV_KEYS
        .iter()
        .any(|flag| key.eq_ignore_ascii_case(flag))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_variables_are_left_to_the_flags_in_any_case() {
        for key in [
            "SCHEDULER",
            "scheduler_cluster_id",
            "CONFIG",
            "LOG_FORMAT",
            "CACHE_KEYS",
        ] {
            assert!(is_flag_env(key), "{key}");
        }
        for key in ["LISTEN", "REDIS", "CACHE__ENABLED", "SCHEDULERS"] {
            assert!(!is_flag_env(key), "{key}");
        }
    }

    #[test]
    fn parses_static_scheduler() {
        let s: StaticScheduler = "2=127.0.0.1:8002".parse().unwrap();
        assert_eq!(s.cluster_id, 2);
        assert_eq!(s.addr, "127.0.0.1:8002".parse().unwrap());
    }

    #[test]
    fn rejects_bad_static_scheduler_with_reason() {
        for bad in [
            "127.0.0.1:8002",
            "x=127.0.0.1:8002",
            "0=127.0.0.1:1",
            "1=nowhere",
        ] {
            let err = bad.parse::<StaticScheduler>().unwrap_err().to_string();
            assert!(err.contains("CLUSTER_ID=HOST:PORT"), "{bad}: {err}");
        }
    }

    #[test]
    fn manager_needs_cluster_ids() {
        let config = Config {
            manager: Some("127.0.0.1:65003".into()),
            ..Config::default()
        };
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("scheduler_cluster_ids"), "{err}");
    }

    #[test]
    fn file_then_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dfgraph.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:9999\"\nschedulers = [\"1=127.0.0.1:8002\"]\n[cache.task]\nfresh = \"10s\"\nstale = \"1m\"\n",
        )
        .unwrap();
        let config = Config::load(
            Some(&path),
            serde_json::json!({ "listen": "127.0.0.1:7777" }),
        )
        .unwrap();
        assert_eq!(config.listen, "127.0.0.1:7777".parse().unwrap());
        assert_eq!(config.cache.task.fresh, Duration::from_secs(10));
        assert_eq!(config.static_schedulers().unwrap().len(), 1);
    }

    #[test]
    fn breaker_and_retry_sections_have_defaults_and_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dfgraph.toml");
        std::fs::write(
            &path,
            "[breaker]\nconsecutive_failures = 3\nopen_base = \"1s\"\n[retry]\nbudget_ratio = 0.1\n",
        )
        .unwrap();
        let config = Config::load(Some(&path), serde_json::json!({})).unwrap();
        assert_eq!(config.breaker.consecutive_failures, 3);
        assert_eq!(config.breaker.open_base, Duration::from_secs(1));
        assert_eq!(config.breaker.open_max, Duration::from_secs(60));
        assert_eq!(config.retry.budget_ratio, 0.1);
        std::fs::write(&path, "[breaker]\nfailure_rate = 2.0\n").unwrap();
        let err = Config::load(Some(&path), serde_json::json!({})).unwrap_err();
        assert!(err.to_string().contains("breaker"), "{err}");
    }

    #[test]
    fn tracing_section_is_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dfgraph.toml");
        assert!(
            Config::default().tracing.otlp_endpoint.is_none(),
            "off by default"
        );
        std::fs::write(
            &path,
            "[tracing]\notlp_endpoint = \"http://collector:4317\"\nsample_ratio = 0.25\nexport_timeout = \"2s\"\n",
        )
        .unwrap();
        let config = Config::load(Some(&path), serde_json::json!({})).unwrap();
        assert_eq!(
            config.tracing.otlp_endpoint.as_deref(),
            Some("http://collector:4317")
        );
        assert_eq!(config.tracing.sample_ratio, 0.25);
        assert_eq!(config.tracing.export_timeout, Duration::from_secs(2));
        assert_eq!(config.tracing.service_name, "dfgraph");
        std::fs::write(&path, "[tracing]\nsample_ratio = 2.0\n").unwrap();
        let err = Config::load(Some(&path), serde_json::json!({})).unwrap_err();
        assert!(err.to_string().contains("tracing.sample_ratio"), "{err}");
    }

    /// One value per section that the section's own rules refuse, and the
    /// setting the error must name.
    const REFUSED: &[(&str, &str, &str)] = &[
        ("tls", "[tls]\ncert = \"/dfgraph/c.pem\"\n", "tls"),
        ("timeouts", "[timeouts]\nstat = \"0s\"\n", "timeouts.stat"),
        (
            "limits",
            "[limits]\nmax_page_size = 0\n",
            "limits.max_page_size",
        ),
        (
            "breaker",
            "[breaker]\nfailure_rate = 2.0\n",
            "breaker.failure_rate",
        ),
        (
            "retry",
            "[retry]\nbudget_ratio = 2.0\n",
            "retry.budget_ratio",
        ),
        (
            "cache",
            "[cache.task]\nfresh = \"0s\"\nstale = \"1m\"\n",
            "cache.task.fresh",
        ),
        ("watch", "[watch]\ninterval = \"1ms\"\n", "watch.interval"),
        (
            "liveness",
            "[liveness]\nnetworks = [\"10.0.0.0/33\"]\n",
            "liveness.networks",
        ),
        (
            "subscriptions",
            "[subscriptions]\nper_connection = 0\n",
            "subscriptions.per_connection",
        ),
        (
            "simulator",
            "[simulator]\nclusters = 0\n",
            "simulator.clusters",
        ),
        (
            "auth",
            "[auth]\ntokens_file = \"/dfgraph/no/such/tokens.toml\"\n",
            "auth.tokens",
        ),
        (
            "browser",
            "[browser]\ncors_allowed_origins = [\"*\"]\n",
            "browser.cors_allowed_origins",
        ),
        (
            "graphql",
            "[graphql]\npersisted_queries = \"safelist\"\n",
            "graphql.safelist_file",
        ),
        (
            "rate_limit",
            "[rate_limit]\nper_second = 0\n",
            "rate_limit.per_second",
        ),
        (
            "metrics",
            "[metrics]\ntoken_file = \"/dfgraph/no/such/token\"\n",
            "metrics.token_file",
        ),
        (
            "response_cache",
            "[response_cache]\nmax_bytes = 0\n",
            "response_cache.max_bytes",
        ),
        (
            "tracing",
            "[tracing]\nsample_ratio = 2.0\n",
            "tracing.sample_ratio",
        ),
        (
            "manager_proxy",
            "[manager_proxy]\nconnect_timeout = \"0s\"\n",
            "manager_proxy.connect_timeout",
        ),
        (
            "event_log",
            "[event_log]\nretention = \"0s\"\n",
            "event_log.retention",
        ),
    ];

    /// The tables of the TOML: every section a file can have.
    fn sections_of_the_file_format() -> std::collections::BTreeSet<String> {
        let defaults = serde_json::to_value(Config::default()).unwrap();
        defaults
            .as_object()
            .unwrap()
            .iter()
            .filter(|(_, v)| v.is_object())
            .map(|(k, _)| k.clone())
            .collect()
    }

    #[test]
    fn every_section_is_validated_by_the_one_validation() {
        let listed: std::collections::BTreeSet<String> =
            SECTIONS.iter().map(|(name, _)| name.to_string()).collect();
        assert_eq!(
            listed,
            sections_of_the_file_format(),
            "every section of the file is in SECTIONS (and nothing else)"
        );
        let tested: std::collections::BTreeSet<String> =
            REFUSED.iter().map(|(name, ..)| name.to_string()).collect();
        assert_eq!(tested, listed, "every section has a refused value below");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dfgraph.toml");
        for (section, toml, setting) in REFUSED {
            std::fs::write(&path, toml).unwrap();
            // What `check-config` and `serve` both start with.
            let err = Config::load(Some(&path), serde_json::json!({})).unwrap_err();
            let ConfigError::Invalid(invalid) = err else {
                panic!("{section}: not a rule violation: {err}");
            };
            assert_eq!(invalid.setting, *setting, "{section}: {invalid}");
            // What the gateway checks again before it starts anything.
            let config: Config = Figment::from(Serialized::defaults(Config::default()))
                .merge(Toml::string(toml))
                .extract()
                .unwrap();
            assert_eq!(config.validate(), Err(invalid), "{section}");
        }
        Config::default()
            .validate()
            .expect("the defaults are valid");
    }

    #[test]
    fn no_module_below_the_gateway_imports_the_config() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let import = regex::Regex::new(r"crate::(config\b|\{[^}]*\bconfig\b)").unwrap();
        let mut stack = vec![src.clone()];
        let mut offenders = Vec::new();
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                let name = path
                    .strip_prefix(&src)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                if matches!(name.as_str(), "config.rs" | "gateway.rs") {
                    continue;
                }
                let text = std::fs::read_to_string(&path).unwrap();
                // A module's own tests may build a whole config to run it.
                let code = text.split("#[cfg(test)]").next().unwrap_or_default();
                if import.is_match(code) {
                    offenders.push(name);
                }
            }
        }
        assert!(
            offenders.is_empty(),
            "each module owns its section; only gateway.rs may assemble the config: {offenders:?}"
        );
    }

    #[test]
    fn manager_api_is_checked_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dfgraph.toml");
        std::fs::write(
            &path,
            "manager_api = \"http://manager:8080\"\n[manager_proxy]\nroles_ttl = \"5s\"\n",
        )
        .unwrap();
        let config = Config::load(Some(&path), serde_json::json!({})).unwrap();
        assert_eq!(config.manager_api.as_deref(), Some("http://manager:8080"));
        assert_eq!(config.manager_proxy.roles_ttl, Duration::from_secs(5));
        std::fs::write(&path, "manager_api = \"https://manager:8080\"\n").unwrap();
        let err = Config::load(Some(&path), serde_json::json!({})).unwrap_err();
        assert!(err.to_string().contains("manager_api"), "{err}");
    }

    #[test]
    fn unknown_key_in_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dfgraph.toml");
        std::fs::write(&path, "lisen = \"127.0.0.1:9999\"\n").unwrap();
        let err = Config::load(Some(&path), serde_json::json!({})).unwrap_err();
        assert!(err.to_string().contains("lisen"), "{err}");
    }
}
