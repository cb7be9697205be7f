//! One typed configuration, merged from defaults, a TOML file, `DFGRAPH_*`
//! environment variables and command-line flags (later wins), and validated
//! once at start-up with errors that name the offending setting.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::auth::AuthConfig;
use crate::breaker::BreakerConfig;
use crate::cache::CacheConfig;
use crate::cluster::discovery::resolve_addr;
use crate::cluster::{RetryConfig, Timeouts};
use crate::events::WatchConfig;

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
    pub manager_proxy: crate::http::manager_proxy::ManagerProxyConfig,
    /// Redis URL for the shared cache tier and the event bus.
    pub redis: Option<String>,
    pub tls: TlsConfig,
    pub timeouts: Timeouts,
    pub limits: Limits,
    /// Each scheduler's circuit breaker.
    pub breaker: BreakerConfig,
    /// Retry budget and backoff after rate limiting.
    pub retry: RetryConfig,
    /// Enables `deletePeer`, `deleteTask` and `deleteHost`. Off by default
    /// because they change the cluster; admins only, and only with an
    /// `[auth]` method configured.
    pub enable_mutations: bool,
    pub cache: CacheConfig,
    /// The change watcher behind subscriptions.
    pub watch: WatchConfig,
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
    pub rate_limit: crate::http::rate_limit::RateLimitConfig,
    /// Where `/metrics` is served, and its bearer token.
    pub metrics: crate::http::metrics::MetricsConfig,
    /// Kept responses of hot host-list queries (on by default).
    pub response_cache: crate::http::response_cache::ResponseCacheConfig,
    /// OpenTelemetry trace export (off unless `otlp_endpoint` is set).
    pub tracing: crate::telemetry::TracingConfig,
}

/// Browser safety: which other origins may call dfgraph from a page, and
/// refusing requests a browser would send without a CORS preflight.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrowserConfig {
    /// Origins (`https://console.example.com`) allowed cross-origin; the
    /// default, none, allows only same-origin pages.
    pub cors_allowed_origins: Vec<String>,
    /// Refuse `/graphql` requests a browser could send cross-site without a
    /// preflight (form or text/plain bodies; GET without a non-simple
    /// header), as Apollo's CSRF prevention does.
    pub csrf_prevention: bool,
}

impl Default for BrowserConfig {
    fn default() -> Self {
        BrowserConfig {
            cors_allowed_origins: Vec::new(),
            csrf_prevention: true,
        }
    }
}

/// Introspection and "did you mean" suggestions: on for exploring in
/// GraphiQL, off in production where the schema need not be advertised.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct GraphqlConfig {
    pub introspection: bool,
    pub field_suggestions: bool,
    /// `off`, `apq` (Automatic Persisted Queries, shared through Redis) or
    /// `safelist` (only the operations of `safelist_file` run).
    pub persisted_queries: crate::http::persisted::Mode,
    /// Apollo persisted-query manifest: `{"operations": [{"id", "body"}]}`.
    pub safelist_file: Option<PathBuf>,
}

impl Default for GraphqlConfig {
    fn default() -> Self {
        GraphqlConfig {
            introspection: true,
            field_suggestions: true,
            persisted_queries: crate::http::persisted::Mode::default(),
            safelist_file: None,
        }
    }
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
            subscriptions: SubscriptionLimits::default(),
            simulator: SimulatorConfig::default(),
            auth: AuthConfig::default(),
            browser: BrowserConfig::default(),
            graphql: GraphqlConfig::default(),
            rate_limit: Default::default(),
            metrics: Default::default(),
            response_cache: Default::default(),
            tracing: Default::default(),
        }
    }
}

/// TLS toward schedulers and the manager. A CA alone gives server-verified
/// TLS; adding a certificate and key gives mutual TLS.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    pub ca_cert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Name to verify in the server certificate, when it differs from the
    /// address dialled.
    pub domain: Option<String>,
}

impl TlsConfig {
    pub fn enabled(&self) -> bool {
        self.ca_cert.is_some() || self.cert.is_some()
    }
}

/// Bounds on what one client may ask for.
#[derive(Clone, Copy, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_depth: usize,
    pub max_complexity: usize,
    /// Largest `first`/`last` a connection accepts.
    pub max_page_size: usize,
    /// Most keys one batch query (`tasks`, `peers`) accepts.
    pub max_batch_keys: usize,
    /// Concurrent calls toward one scheduler.
    pub scheduler_concurrency: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            max_depth: 15,
            max_complexity: 20_000,
            max_page_size: 1000,
            max_batch_keys: 1000,
            scheduler_concurrency: 32,
        }
    }
}

/// Bounds on `/graphql/ws`: what one connection and the whole process
/// may hold, and how long a silent or slow client is kept.
#[derive(Clone, Copy, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SubscriptionLimits {
    /// Operations one connection may run at once.
    pub per_connection: usize,
    /// Operations all connections may run at once.
    pub total: usize,
    /// A connection that sends no `connection_init` within this is closed
    /// (4408).
    #[serde(with = "humantime_serde")]
    pub init_timeout: Duration,
    /// How often the server pings (protocol `ping`/`ka` and a websocket
    /// ping frame).
    #[serde(with = "humantime_serde")]
    pub keep_alive: Duration,
    /// A connection that sends nothing (not even a pong) for this long is
    /// closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Messages queued toward one client before it counts as slow.
    pub send_queue: usize,
    /// A client whose queue stays full this long is disconnected (its
    /// socket is closed; it reads no close frame, since it reads nothing).
    #[serde(with = "humantime_serde")]
    pub slow_consumer_timeout: Duration,
    /// Largest message a client may send.
    pub max_message_bytes: usize,
}

impl Default for SubscriptionLimits {
    fn default() -> Self {
        Self {
            per_connection: 100,
            total: 20_000,
            init_timeout: Duration::from_secs(10),
            keep_alive: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(60),
            send_queue: 256,
            slow_consumer_timeout: Duration::from_secs(5),
            max_message_bytes: 64 * 1024,
        }
    }
}

/// Size of the simulated cluster the `dfgraph` binary embeds when no
/// scheduler is configured. Plain settings: the gateway library never reads
/// them (it knows nothing of the simulator).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimulatorConfig {
    pub clusters: usize,
    pub schedulers_per_cluster: usize,
    pub hosts: usize,
    pub tasks: usize,
    pub peers_per_task: usize,
    pub seed: u64,
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

/// A static scheduler entry, parsed from `CLUSTER_ID=HOST:PORT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticScheduler {
    pub cluster_id: u64,
    pub addr: SocketAddr,
}

impl std::str::FromStr for StaticScheduler {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| ConfigError::Invalid {
            setting: "schedulers".into(),
            message: format!("{s:?}: {why} (expected CLUSTER_ID=HOST:PORT, e.g. 1=10.0.0.5:8002)"),
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
    #[error("invalid setting `{setting}`: {message}")]
    Invalid { setting: String, message: String },
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

/// A setting whose value breaks a rule serde cannot check.
fn invalid(setting: &str, message: String) -> ConfigError {
    ConfigError::Invalid {
        setting: setting.into(),
        message,
    }
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
                return Err(ConfigError::Invalid {
                    setting: "config".into(),
                    message: format!("file {} does not exist", file.display()),
                });
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

    /// Checks what serde cannot: cross-field rules and parseable addresses.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.static_schedulers()?;
        self.validate_access()?;
        self.manager_proxy
            .check(self.manager_api.as_deref())
            .map_err(|e| invalid("manager_api", e.to_string()))?;
        self.validate_listeners_and_sources()?;
        self.validate_timeouts_and_guards()?;
        self.validate_subscriptions_and_limits()?;
        self.tracing
            .check()
            .map_err(|(setting, message)| invalid(setting, message))
    }

    /// Who may do what: mutations, auth, the safelist, CORS, rate limits,
    /// the metrics token.
    fn validate_access(&self) -> Result<(), ConfigError> {
        if self.enable_mutations && !self.auth.has_method() {
            return Err(invalid(
                "enable_mutations",
                "mutations change the cluster: configure an authentication method under [auth] \
                 (manager, oidc or tokens) so only admins can run them"
                    .into(),
            ));
        }
        self.auth
            .validate()
            .map_err(|e| invalid("auth", e.to_string()))?;
        if self.graphql.persisted_queries == crate::http::persisted::Mode::Safelist
            && self.graphql.safelist_file.is_none()
        {
            return Err(invalid(
                "graphql.safelist_file",
                "persisted_queries = \"safelist\" needs the manifest of allowed operations".into(),
            ));
        }
        for origin in &self.browser.cors_allowed_origins {
            if origin == "*"
                || axum::http::HeaderValue::from_str(origin).is_err()
                || !origin.contains("://")
            {
                return Err(invalid(
                    "browser.cors_allowed_origins",
                    format!(
                        "{origin:?} is not an origin like https://console.example.com (no wildcards)"
                    ),
                ));
            }
        }
        self.rate_limit
            .check()
            .map_err(|(setting, message)| invalid(setting, message))?;
        self.metrics
            .token()
            .map_err(|(setting, message)| invalid(setting, message))?;
        Ok(())
    }

    /// Where the gateway listens and where its schedulers come from.
    fn validate_listeners_and_sources(&self) -> Result<(), ConfigError> {
        if let Some(metrics) = self.metrics.listen
            && metrics.port() != 0
            && metrics.port() == self.listen.port()
            && (metrics.ip() == self.listen.ip()
                || metrics.ip().is_unspecified()
                || self.listen.ip().is_unspecified())
        {
            return Err(invalid(
                "metrics.listen",
                format!("{metrics} is the main listener's port: give metrics another one"),
            ));
        }
        if self.manager.is_some() && !self.schedulers.is_empty() {
            return Err(invalid(
                "manager",
                "give either static schedulers or a manager, not both".into(),
            ));
        }
        if self.manager.is_some() && self.scheduler_cluster_ids.is_empty() {
            return Err(invalid(
                "scheduler_cluster_ids",
                "a manager needs at least one --scheduler-cluster-id".into(),
            ));
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return Err(invalid(
                "tls",
                "mutual TLS needs both `cert` and `key`".into(),
            ));
        }
        Ok(())
    }

    /// Timeouts, the circuit breaker, retries and the watcher.
    fn validate_timeouts_and_guards(&self) -> Result<(), ConfigError> {
        for (name, value) in [
            ("timeouts.connect", self.timeouts.connect),
            ("timeouts.stat", self.timeouts.stat),
            ("timeouts.list_hosts", self.timeouts.list_hosts),
            ("timeouts.request", self.timeouts.request),
            (
                "timeouts.keep_alive_interval",
                self.timeouts.keep_alive_interval,
            ),
            (
                "timeouts.keep_alive_timeout",
                self.timeouts.keep_alive_timeout,
            ),
        ] {
            if value.is_zero() {
                return Err(invalid(name, "must be greater than zero".into()));
            }
        }
        self.breaker
            .check()
            .map_err(|message| invalid("breaker", message))?;
        self.retry
            .check()
            .map_err(|message| invalid("retry", message))?;
        self.watch
            .validate()
            .map_err(|message| invalid("watch", message))?;
        Ok(())
    }

    /// Subscription and query limits.
    fn validate_subscriptions_and_limits(&self) -> Result<(), ConfigError> {
        let subs = &self.subscriptions;
        if subs.per_connection == 0 || subs.total == 0 || subs.send_queue == 0 {
            return Err(invalid(
                "subscriptions",
                "per_connection, total and send_queue must be at least 1".into(),
            ));
        }
        if subs.init_timeout.is_zero()
            || subs.keep_alive.is_zero()
            || subs.idle_timeout <= subs.keep_alive
        {
            return Err(invalid(
                "subscriptions",
                "init_timeout and keep_alive must be positive, idle_timeout longer than keep_alive"
                    .into(),
            ));
        }
        if self.limits.max_page_size == 0 || self.limits.scheduler_concurrency == 0 {
            return Err(invalid(
                "limits",
                "max_page_size and scheduler_concurrency must be at least 1".into(),
            ));
        }
        Ok(())
    }

    pub fn static_schedulers(&self) -> Result<Vec<StaticScheduler>, ConfigError> {
        self.schedulers.iter().map(|s| s.parse()).collect()
    }

    pub fn scheduler_source(&self) -> Result<SchedulerSource, ConfigError> {
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
    pub fn describe_source(&self) -> Result<String, ConfigError> {
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
