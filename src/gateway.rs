//! Wires one configuration into a running gateway: scheduler discovery, the
//! cache, the schema and the HTTP server, with one shutdown for all of them.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::cache::Cache;
use crate::clock::{Clock, SystemClock};
use crate::cluster::{ClientSettings, ClusterClient, Dial, Guards, discovery};
use crate::config::{Config, SchedulerSource};
use crate::events::Events;
use crate::graphql::{GatewayState, build_schema};
use crate::http::metrics::MetricsHandle;
use crate::http::{AppState, router};
use crate::liveness::{HostSource, Liveness, Runner};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("configuration: {0}")]
    Config(#[from] crate::setting::Invalid),
    #[error("schedulers: {0}")]
    Cluster(#[from] crate::cluster::ClusterError),
    #[error("cache: {0}")]
    Cache(#[from] crate::cache::CacheError),
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

/// The cluster client a configuration describes, without starting
/// discovery; used by `serve` and `status`.
pub fn cluster_client(config: &Config) -> Result<ClusterClient, StartError> {
    Ok(ClusterClient::new(ClientSettings {
        dial: Dial {
            connect_timeout: config.timeouts.connect,
            keep_alive_interval: config.timeouts.keep_alive_interval,
            keep_alive_timeout: config.timeouts.keep_alive_timeout,
            tls: config.tls.client_config().map_err(|e| e.within("tls"))?,
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

/// Gives the client its schedulers: the configured list, or the manager's
/// answer plus a loop that follows the manager.
async fn find_schedulers(
    config: &Config,
    client: &ClusterClient,
    shutdown: &CancellationToken,
) -> Result<(), StartError> {
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
    Ok(())
}

/// Connects the cache, starts the event watchers and assembles what every
/// resolver shares.
async fn gateway_state(
    config: &Config,
    client: ClusterClient,
    clock: Arc<dyn Clock>,
    shutdown: &CancellationToken,
) -> Result<Arc<GatewayState>, StartError> {
    let mut cache_config = config.cache.clone();
    if cache_config.redis_url.is_none() {
        cache_config.redis_url = config.redis.clone();
    }
    // One Redis stack for the cache, the event bus, the watcher and
    // persisted queries.
    let redis = crate::cache::connect_redis(&cache_config).await?;
    let cache = Cache::connect_with(cache_config, clock, redis.clone()).await?;
    let events = Events::new(
        config.watch.clone(),
        config.event_log.clone(),
        cache.clone(),
        redis,
    );
    events.start(client.clone(), cache.clone(), shutdown.child_token());
    let liveness = Liveness::new(&config.liveness);
    let remote = liveness.clone();
    events
        .bus
        .on_remote(Arc::new(move |event| remote.apply_remote(event)));
    let state = Arc::new(GatewayState::new(
        client.clone(),
        cache,
        config.limits,
        config.timeouts.request,
        config.enable_mutations,
        events,
        liveness.clone(),
    ));
    Runner {
        config: config.liveness.clone(),
        cluster: client,
        hosts: host_source(&state),
        bus: state.events.bus.clone(),
        liveness,
        tls: config.tls.client_config().map_err(|e| e.within("tls"))?,
    }
    .start(shutdown.child_token())
    .map_err(|e| e.within("liveness"))?;
    Ok(state)
}

/// The host lists the liveness prober walks: through the cache, shared
/// with queries and the watcher.
fn host_source(state: &Arc<GatewayState>) -> HostSource {
    let origins = Arc::clone(&state.origins);
    Arc::new(move |cluster_id| {
        let origins = Arc::clone(&origins);
        Box::pin(async move {
            let key = crate::cache::CacheKey::hosts(cluster_id);
            let mut found = origins
                .hosts
                .get_many(std::slice::from_ref(&key), crate::deadline::Deadline::NONE)
                .await;
            match found.remove(&key) {
                Some(Ok(fetched)) => Ok(fetched
                    .value
                    .map(|list| list.hosts.clone())
                    .unwrap_or_default()),
                Some(Err(error)) => Err(error.to_string()),
                None => Ok(Vec::new()),
            }
        })
    })
}

/// Warms the host lists in the background so the console's first
/// overview is a hit.
fn warm_host_lists(state: Arc<GatewayState>) {
    tokio::spawn(async move {
        let keys: Vec<_> = state
            .cluster
            .cluster_ids()
            .into_iter()
            .map(crate::cache::CacheKey::hosts)
            .collect();
        state.origins.hosts.prefetch(&keys).await;
    });
}

/// What the HTTP handlers share: schema, access control, limits, metrics.
async fn app_state(
    config: &Config,
    state: &Arc<GatewayState>,
    fanout: crate::http::fanout::Fanout,
    shutdown: &CancellationToken,
) -> Result<AppState, StartError> {
    let manager_proxy = match &config.manager_api {
        Some(url) => {
            let proxy = crate::http::manager_proxy::ManagerProxy::new(url, &config.manager_proxy)
                .map_err(|e| crate::setting::Invalid::new("manager_api", e.to_string()))?;
            tracing::info!(manager = %proxy.manager(), "front door of the Dragonfly manager: paths dfgraph does not serve pass to it; dfgraph's console is at /dfgraph/");
            Some(proxy)
        }
        None => None,
    };
    let mut auth = crate::auth::Authenticator::new(&config.auth).await?;
    if let Some(proxy) = &manager_proxy {
        auth = auth.with_manager_roles(Arc::new(proxy.clone()), config.manager_proxy.roles_ttl);
    }
    if manager_proxy.is_some() && config.auth.anonymous == crate::auth::Anonymous::Viewer {
        // The manager requires a login for what dfgraph then serves
        // without one (peers, GraphQL).
        tracing::warn!(
            "manager_api is set while anonymous viewing is on: peers are readable without the manager's login; set auth.anonymous = \"off\""
        );
    }
    if config.auth.anonymous == crate::auth::Anonymous::Viewer {
        tracing::info!("anonymous callers may query and subscribe (auth.anonymous = \"viewer\")");
    }
    let rate_limit = crate::http::rate_limit::RateLimiter::new(&config.rate_limit)
        .map_err(|e| e.within("rate_limit"))?;
    Ok(AppState {
        rate_limit,
        metrics_access: crate::http::metrics::MetricsAccess::new(&config.metrics)
            .map_err(|e| e.within("metrics"))?,
        schema: build_schema(state.clone(), config.graphql.schema_switches()),
        persisted: crate::http::persisted::PersistedQueries::new(
            config.graphql.persisted_queries,
            config.graphql.safelist_file.as_deref(),
            state.events.bus.redis().cloned(),
        )?,
        auth,
        browser: Arc::new(config.browser.clone()),
        gateway: state.clone(),
        metrics: MetricsHandle::install(),
        subscriptions: crate::http::ws::Limits::new(config.subscriptions),
        fanout,
        shutdown: shutdown.clone(),
        response_cache: crate::http::response_cache::ResponseCache::new(
            &config.response_cache,
            &config.cache,
        ),
        outlines: Default::default(),
        manager_proxy,
        rest: crate::http::rest::RestState::new(
            state.events.bus.redis().cloned(),
            config.manager_proxy.roles_ttl,
        ),
    })
}

/// A listener on `addr` and the address it got (`addr` may ask for port 0).
async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), StartError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Listen { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| StartError::Listen { addr, source })?;
    Ok((listener, bound))
}

/// Serves `/metrics` on its own listener until shutdown.
fn serve_metrics(
    listener: TcpListener,
    bound: SocketAddr,
    app: &AppState,
    shutdown: &CancellationToken,
) -> JoinHandle<()> {
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
}

/// Serves the gateway's routes until shutdown, then waits for the metrics
/// server.
fn serve_http(
    listener: TcpListener,
    app: AppState,
    shutdown: &CancellationToken,
    metrics_server: Option<JoinHandle<()>>,
) -> JoinHandle<()> {
    let stop = shutdown.clone();
    tokio::spawn(async move {
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
    })
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
        find_schedulers(&config, &client, &shutdown).await?;
        let state = gateway_state(&config, client, clock, &shutdown).await?;
        if config.cache.enabled {
            warm_host_lists(state.clone());
        }
        let fanout = crate::http::fanout::Fanout::default();
        let app = app_state(&config, &state, fanout.clone(), &shutdown).await?;
        let (listener, addr) = bind(config.listen).await?;
        let metrics_server = match config.metrics.listen {
            Some(at) => Some(bind(at).await?),
            None => None,
        };
        let metrics_addr = metrics_server.as_ref().map(|(_, bound)| *bound);
        let metrics_server =
            metrics_server.map(|(listener, bound)| serve_metrics(listener, bound, &app, &shutdown));
        app.rate_limit.spawn_sweeper(shutdown.child_token());
        let server = serve_http(listener, app, &shutdown, metrics_server);
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
