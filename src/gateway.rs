//! Wires one configuration into a running gateway: scheduler discovery, the
//! cache, the schema and the HTTP server, with one shutdown for all of them.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::cache::Cache;
use crate::clock::{Clock, SystemClock};
use crate::cluster::{ClientSettings, ClusterClient, Dial, Guards, discovery};
use crate::config::{Config, SchedulerSource};
use crate::events::Events;
use crate::graphql::{GatewayState, build_schema};
use crate::http::metrics::MetricsHandle;
use crate::http::{AppState, router};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("configuration: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("schedulers: {0}")]
    Cluster(#[from] crate::cluster::ClusterError),
    #[error("cache: {0}")]
    Cache(#[from] crate::cache::CacheError),
    #[error("event bus: {0}")]
    Events(String),
    #[error("no scheduler or manager configured (set --scheduler or --manager)")]
    NoSchedulers,
    #[error("persisted queries: {0}")]
    Persisted(#[from] crate::http::persisted::ManifestError),
    #[error("access control: {0}")]
    Auth(#[from] crate::auth::config::AuthConfigError),
}

/// A running gateway.
pub struct Gateway {
    pub addr: SocketAddr,
    /// The separate `/metrics` listener, when `metrics.listen` is set.
    pub metrics_addr: Option<SocketAddr>,
    pub state: Arc<GatewayState>,
    /// Subscription executions shared between identical subscriptions.
    pub fanout: crate::http::fanout::Fanout,
    shutdown: CancellationToken,
    server: JoinHandle<()>,
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, StartError> {
    std::fs::read(path).map_err(|e| StartError::Tls(format!("cannot read {}: {e}", path.display())))
}

fn tls_config(config: &Config) -> Result<Option<ClientTlsConfig>, StartError> {
    let tls = &config.tls;
    if !tls.enabled() {
        return Ok(None);
    }
    let mut client = ClientTlsConfig::new();
    if let Some(ca) = &tls.ca_cert {
        client = client.ca_certificate(Certificate::from_pem(read(ca)?));
    }
    if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
        client = client.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    if let Some(domain) = &tls.domain {
        client = client.domain_name(domain.clone());
    }
    Ok(Some(client))
}

/// The cluster client a configuration describes, without starting
/// discovery; used by `serve` and `status`.
pub fn cluster_client(config: &Config) -> Result<ClusterClient, StartError> {
    Ok(ClusterClient::new(ClientSettings {
        dial: Dial {
            connect_timeout: config.timeouts.connect,
            keep_alive_interval: config.timeouts.keep_alive_interval,
            keep_alive_timeout: config.timeouts.keep_alive_timeout,
            tls: tls_config(config)?,
        },
        timeouts: config.timeouts,
        guards: Guards {
            concurrency: config.limits.scheduler_concurrency,
            breaker: config.breaker,
            retry: config.retry,
            clock: Arc::new(SystemClock),
        },
    }))
}

impl Gateway {
    /// Starts everything and returns once the server accepts connections.
    pub async fn start(config: Config) -> Result<Gateway, StartError> {
        Self::start_with_clock(config, Arc::new(SystemClock)).await
    }

    /// Like [`Gateway::start`], with the clock the cache judges freshness
    /// by (tests move a manual clock instead of sleeping).
    pub async fn start_with_clock(
        config: Config,
        clock: Arc<dyn Clock>,
    ) -> Result<Gateway, StartError> {
        config.validate()?;
        let shutdown = CancellationToken::new();
        let client = cluster_client(&config)?;
        match config.scheduler_source()? {
            SchedulerSource::Static(schedulers) => {
                client.expect_clusters(schedulers.iter().map(|s| s.cluster_id));
                let pairs: Vec<_> = schedulers.iter().map(|s| (s.cluster_id, s.addr)).collect();
                client.set_schedulers(&pairs)?;
            }
            SchedulerSource::Manager {
                addr,
                cluster_ids,
                refresh,
            } => {
                client.expect_clusters(cluster_ids.iter().copied());
                // The first answer is awaited so the gateway starts with
                // schedulers when the manager is up; the loop keeps trying
                // when it is not.
                match discovery::fetch_from_manager(
                    &addr,
                    &cluster_ids,
                    &client.settings().dial,
                    config.timeouts.list_hosts,
                )
                .await
                {
                    Ok(found) => client.set_schedulers(&found)?,
                    Err(e) => {
                        tracing::warn!(manager = %addr, error = %e, "manager not reachable at start; will retry")
                    }
                }
                tokio::spawn(discovery::follow_manager(
                    client.clone(),
                    addr,
                    cluster_ids,
                    refresh,
                    shutdown.child_token(),
                ));
            }
            SchedulerSource::Unconfigured => return Err(StartError::NoSchedulers),
        }

        let mut cache_config = config.cache.clone();
        if cache_config.redis_url.is_none() {
            cache_config.redis_url = config.redis.clone();
        }
        let redis_url = cache_config.redis_url.clone();
        let redis_timeout = cache_config
            .command_timeout
            .max(std::time::Duration::from_millis(500));
        let cache = Cache::connect(cache_config, clock).await?;
        let events = Events::new(
            config.watch.clone(),
            cache.clone(),
            redis_url.as_deref(),
            redis_timeout,
        )
        .map_err(StartError::Events)?;
        events.start(client.clone(), cache.clone(), shutdown.child_token());
        let state = Arc::new(GatewayState::new(
            client,
            cache,
            config.limits,
            config.timeouts.request,
            config.enable_mutations,
            events,
        ));
        // Warm the host lists so the console's first overview is a hit.
        let warm = state.clone();
        let caching = config.cache.enabled;
        tokio::spawn(async move {
            if !caching {
                return;
            }
            let keys: Vec<_> = warm
                .cluster
                .cluster_ids()
                .into_iter()
                .map(crate::cache::CacheKey::hosts)
                .collect();
            warm.origins.hosts.prefetch(&keys).await;
        });
        let fanout = crate::http::fanout::Fanout::default();
        let auth = crate::auth::Authenticator::new(&config.auth).await?;
        if config.auth.anonymous == crate::auth::Anonymous::Viewer {
            tracing::info!(
                "anonymous callers may query and subscribe (auth.anonymous = \"viewer\")"
            );
        }
        let rate_limit = crate::http::rate_limit::RateLimiter::new(&config.rate_limit)?;
        let app = AppState {
            rate_limit,
            metrics_access: crate::http::metrics::MetricsAccess::new(&config.metrics)?,
            schema: build_schema(state.clone(), &config.graphql),
            persisted: crate::http::persisted::PersistedQueries::new(
                config.graphql.persisted_queries,
                config.graphql.safelist_file.as_deref(),
                state.events.bus.clone(),
            )?,
            auth,
            browser: Arc::new(config.browser.clone()),
            gateway: state.clone(),
            metrics: MetricsHandle::install(),
            subscriptions: crate::http::ws::Limits::new(config.subscriptions),
            fanout: fanout.clone(),
            shutdown: shutdown.clone(),
        };
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| StartError::Listen {
                    addr: config.listen,
                    source,
                })?;
        let addr = listener.local_addr().map_err(|source| StartError::Listen {
            addr: config.listen,
            source,
        })?;
        let metrics_listener = match config.metrics.listen {
            Some(at) => {
                let listener = TcpListener::bind(at)
                    .await
                    .map_err(|source| StartError::Listen { addr: at, source })?;
                let bound = listener
                    .local_addr()
                    .map_err(|source| StartError::Listen { addr: at, source })?;
                Some((listener, bound))
            }
            None => None,
        };
        let metrics_addr = metrics_listener.as_ref().map(|(_, bound)| *bound);
        let metrics_server = metrics_listener.map(|(listener, bound)| {
            let router = crate::http::metrics::router(app.clone());
            let stop = shutdown.clone();
            tracing::info!("metrics on http://{bound}/metrics");
            tokio::spawn(async move {
                let served = axum::serve(listener, router)
                    .with_graceful_shutdown(async move { stop.cancelled().await })
                    .await;
                if let Err(e) = served {
                    tracing::error!(error = %e, "metrics server stopped");
                }
            })
        });
        app.rate_limit.spawn_sweeper(shutdown.child_token());
        let stop = shutdown.clone();
        let server = tokio::spawn(async move {
            // Without TCP_NODELAY a response written in two parts waits
            // for the client's delayed ACK: ~40 ms on every request.
            let listener = listener.tap_io(|tcp| {
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                }
            });
            // The peer address keys the rate limits of anonymous callers.
            let service = router(app).into_make_service_with_connect_info::<SocketAddr>();
            let served = axum::serve(listener, service)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "HTTP server stopped");
            }
            if let Some(metrics) = metrics_server
                && let Err(e) = metrics.await
            {
                tracing::warn!(error = %e, "metrics server task ended abnormally");
            }
        });
        tracing::info!("listening on http://{addr}");
        tracing::info!("GraphiQL at http://{addr}/graphiql");
        Ok(Gateway {
            addr,
            metrics_addr,
            state,
            fanout,
            shutdown,
            server,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A token that stops the gateway when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stops accepting, lets in-flight requests finish, stops background
    /// work.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        if let Err(e) = self.server.await {
            tracing::warn!(error = %e, "HTTP server task ended abnormally");
        }
    }
}
