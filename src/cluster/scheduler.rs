//! One scheduler endpoint: its reusable gRPC channel, its concurrency bound,
//! its health, circuit breaker and rate-limit backoff, and the single place
//! where a call gets its deadline and its outcome recorded.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tracing::Instrument;

use super::ClusterError;
use super::health::{Health, HealthSnapshot};
use super::retry::{Backoff, RetryConfig};
use crate::breaker::{Breaker, BreakerConfig, CircuitState, Outcome, Ticket, Transition};
use crate::clock::Clock;
use crate::deadline::Deadline;
use crate::proto::scheduler::v2::StatTaskRequest;
use crate::proto::scheduler::v2::scheduler_client::SchedulerClient;
use crate::telemetry::PropagateTrace;

/// The gRPC client of one scheduler: every request carries the current
/// trace context in its metadata.
pub type Client = SchedulerClient<InterceptedService<Channel, PropagateTrace>>;

/// The same channel as a plain service, for calls whose answer is read as
/// it arrives (see [`super::raw`]).
pub type RawService = InterceptedService<Channel, PropagateTrace>;

/// The task id of readiness probes; no real task has it.
pub const PROBE_TASK_ID: &str = "dfgraph-readiness-probe";

/// Replies carry whole host lists: 10k hosts are several MiB, so the
/// decode limit sits far above tonic's 4 MiB default.
pub const MAX_DECODE_BYTES: usize = 512 * 1024 * 1024;

/// How a channel to a scheduler or manager is dialled.
#[derive(Clone, Debug)]
pub struct Dial {
    pub connect_timeout: Duration,
    /// HTTP/2 PING interval on open connections, idle or not...
    pub keep_alive_interval: Duration,
    /// ...and how long a PING may go unanswered before the connection is
    /// dropped (a blackholed peer is noticed within the sum of both).
    pub keep_alive_timeout: Duration,
    pub tls: Option<ClientTlsConfig>,
}

impl Dial {
    /// A lazily connecting channel: it dials on first use and redials after
    /// failures, so an unreachable scheduler never blocks start-up.
    pub fn channel(&self, addr: &str) -> Result<Channel, String> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(|e| format!("invalid address {addr:?}: {e}"))?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .tcp_keepalive(Some(Duration::from_secs(30)))
            .http2_keep_alive_interval(self.keep_alive_interval)
            .keep_alive_timeout(self.keep_alive_timeout)
            .keep_alive_while_idle(true);
        if let Some(tls) = &self.tls {
            endpoint = endpoint
                .tls_config(tls.clone())
                .map_err(|e| format!("TLS setup for {addr}: {e}"))?;
        }
        Ok(endpoint.connect_lazy())
    }
}

/// How every scheduler handle guards its calls.
#[derive(Clone, Debug)]
pub struct Guards {
    /// In-flight calls per scheduler.
    pub concurrency: usize,
    pub breaker: BreakerConfig,
    pub retry: RetryConfig,
    /// Drives breakers and rate-limit backoff.
    pub clock: Arc<dyn Clock>,
}

/// A scheduler of one scheduler cluster.
pub struct SchedulerHandle {
    pub cluster_id: u64,
    pub addr: SocketAddr,
    /// `addr` as a metrics label.
    label: String,
    /// `cluster_id` as a metrics label.
    cluster_label: String,
    client: Client,
    raw: RawService,
    pub health: Health,
    pub breaker: Breaker,
    /// The cluster id its hosts carry, checked against `cluster_id`.
    pub announced: super::announced::Announced,
    backoff: Backoff,
    /// What the breaker and the backoff read time from.
    clock: Arc<dyn Clock>,
    /// Bounds in-flight calls so a burst of console traffic cannot pile
    /// onto one scheduler.
    permits: Semaphore,
}

impl SchedulerHandle {
    pub fn new(
        cluster_id: u64,
        addr: SocketAddr,
        dial: &Dial,
        guards: &Guards,
    ) -> Result<Arc<Self>, ClusterError> {
        let channel =
            dial.channel(&addr.to_string())
                .map_err(|message| ClusterError::Unavailable {
                    scheduler: addr,
                    message,
                })?;
        let raw = InterceptedService::new(channel.clone(), PropagateTrace);
        let client = SchedulerClient::with_interceptor(channel, PropagateTrace)
            .max_decoding_message_size(MAX_DECODE_BYTES)
            .max_encoding_message_size(MAX_DECODE_BYTES);
        let label = addr.to_string();
        let cluster_label = cluster_id.to_string();
        metrics::gauge!(super::metric::CIRCUIT_STATE, "cluster" => cluster_label.clone(), "scheduler" => label.clone())
            .set(CircuitState::Closed.gauge());
        Ok(Arc::new(Self {
            cluster_id,
            addr,
            label,
            cluster_label,
            client,
            raw,
            health: Health::default(),
            breaker: Breaker::new(guards.breaker, guards.clock.clone()),
            announced: super::announced::Announced::default(),
            backoff: Backoff::new(&guards.retry),
            clock: guards.clock.clone(),
            permits: Semaphore::new(guards.concurrency),
        }))
    }

    /// Health as last seen, with the circuit's state.
    pub fn health_snapshot(&self) -> HealthSnapshot {
        let mut snapshot = self.health.snapshot();
        snapshot.circuit = self.breaker.state();
        snapshot
    }

    /// Whether a call now would fail without reaching the scheduler
    /// (circuit open, or backing off after rate limiting).
    pub fn fails_fast(&self) -> bool {
        self.breaker.state() == CircuitState::Open || self.backoff.wait(self.clock.now()).is_some()
    }

    /// Publishes the circuit state as a gauge (also refreshed on scrape,
    /// since open turns half-open by time alone).
    pub fn publish_circuit(&self) {
        metrics::gauge!(super::metric::CIRCUIT_STATE, "cluster" => self.cluster_label.clone(), "scheduler" => self.label.clone())
            .set(self.breaker.state().gauge());
    }

    /// Asks the scheduler something cheap (`StatTask` for a task that
    /// does not exist) to learn whether it answers; for readiness checks
    /// of schedulers no query has needed yet. NotFound is the healthy
    /// answer. Recorded like any other call.
    pub async fn probe(&self, timeout: Duration) -> Result<(), ClusterError> {
        let request = StatTaskRequest {
            host_id: super::GATEWAY_HOST_ID.to_owned(),
            task_id: PROBE_TASK_ID.to_owned(),
        };
        match self
            .call(
                "StatTask",
                timeout,
                Deadline::NONE,
                |mut client| async move { client.stat_task(request).await },
            )
            .await
        {
            Ok(_) | Err(ClusterError::NotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn on_transition(&self, transition: Option<Transition>) {
        let Some(t) = transition else { return };
        match t.to {
            CircuitState::Open => {
                metrics::counter!(super::metric::CIRCUIT_TRIPS, "cluster" => self.cluster_label.clone(), "scheduler" => self.label.clone())
                    .increment(1);
                tracing::warn!(scheduler = %self.addr, from = ?t.from, "circuit opened");
            }
            CircuitState::HalfOpen => {
                tracing::info!(scheduler = %self.addr, "circuit half-open: probing");
            }
            CircuitState::Closed => {
                tracing::info!(scheduler = %self.addr, "circuit closed: scheduler recovered");
            }
        }
        self.publish_circuit();
    }

    /// Runs one RPC and records how it went. The call waits for a
    /// concurrency permit and the answer within `timeout`, cut to what is
    /// left of the current request's budget ([`deadline`]). It fails fast,
    /// without touching the network, while the circuit is open or while
    /// backing off after `ResourceExhausted`. NotFound and InvalidArgument
    /// are answers, not failures of the scheduler.
    ///
    /// Each call is a span (`scheduler call`) whose trace context the
    /// request carries to the scheduler.
    pub async fn call<T, F, Fut>(
        &self,
        method: &'static str,
        timeout: Duration,
        deadline: Deadline,
        rpc: F,
    ) -> Result<T, ClusterError>
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.call_on(self.client.clone(), method, timeout, deadline, rpc)
            .await
    }

    /// [`Self::call`] on the channel's [`RawService`].
    pub async fn call_raw<T, F, Fut>(
        &self,
        method: &'static str,
        timeout: Duration,
        deadline: Deadline,
        rpc: F,
    ) -> Result<T, ClusterError>
    where
        F: FnOnce(RawService) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.call_on(self.raw.clone(), method, timeout, deadline, rpc)
            .await
    }

    async fn call_on<C, T, F, Fut>(
        &self,
        client: C,
        method: &'static str,
        timeout: Duration,
        deadline: Deadline,
        rpc: F,
    ) -> Result<T, ClusterError>
    where
        F: FnOnce(C) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let span = self.call_span(method);
        let call = async {
            let started = Instant::now();
            let (timeout, cut, ticket) = self.admit(timeout, deadline)?;
            let outcome = self.send(timeout, client, rpc).await;
            let verdict = self.record(method, started.elapsed(), &outcome, cut);
            self.on_transition(ticket.finish(verdict));
            outcome
        };
        let outcome = call.instrument(span.clone()).await;
        if let Err(e) = &outcome {
            span.record("dfgraph.error", tracing::field::display(e));
            if e.is_scheduler_failure() {
                span.record("otel.status_code", "error");
            }
        }
        outcome
    }

    /// The span of one call, named and attributed as OpenTelemetry's RPC
    /// conventions say, with the scheduler cluster besides; only within a
    /// traced request.
    fn call_span(&self, method: &'static str) -> tracing::Span {
        crate::telemetry::child_span(|| {
            tracing::debug_span!(
                "scheduler call",
                otel.name = format!("scheduler.v2.Scheduler/{method}"),
                otel.kind = "client",
                otel.status_code = tracing::field::Empty,
                rpc.system = "grpc",
                rpc.service = "scheduler.v2.Scheduler",
                rpc.method = method,
                server.address = %self.addr.ip(),
                server.port = self.addr.port(),
                dfgraph.scheduler = %self.label,
                dfgraph.scheduler_cluster = self.cluster_id,
                dfgraph.error = tracing::field::Empty,
            )
        })
    }

    /// Lets a call through, or fails it fast: while backing off, when the
    /// request's budget is spent, or while the circuit is open. Returns the
    /// call's timeout, whether the budget cut it short, and the breaker's
    /// ticket for the call.
    fn admit(
        &self,
        timeout: Duration,
        deadline: Deadline,
    ) -> Result<(Duration, bool, Ticket<'_>), ClusterError> {
        if let Some(wait) = self.backoff.wait(self.clock.now()) {
            metrics::counter!(super::metric::FAST_FAILURES, "cluster" => self.cluster_label.clone(), "scheduler" => self.label.clone(), "reason" => "backoff")
                .increment(1);
            return Err(ClusterError::BackingOff {
                scheduler: self.addr,
                retry_in_ms: millis(wait),
            });
        }
        // The request's budget cuts the call's own timeout short; a call
        // cut short says nothing about the scheduler's health.
        let (timeout, cut) = deadline.clamp(timeout);
        if timeout.is_zero() {
            return Err(ClusterError::DeadlineExceeded {
                scheduler: self.addr,
                timeout_ms: 0,
            });
        }
        let (ticket, transition) = match self.breaker.try_acquire() {
            Ok(admitted) => admitted,
            Err(rejected) => {
                metrics::counter!(super::metric::FAST_FAILURES, "cluster" => self.cluster_label.clone(), "scheduler" => self.label.clone(), "reason" => "circuit_open")
                    .increment(1);
                return Err(ClusterError::CircuitOpen {
                    scheduler: self.addr,
                    retry_in_ms: millis(rejected.retry_in),
                });
            }
        };
        self.on_transition(transition);
        Ok((timeout, cut, ticket))
    }

    /// Waits for a concurrency permit and the answer, both within `timeout`.
    async fn send<C, T, F, Fut>(
        &self,
        timeout: Duration,
        client: C,
        rpc: F,
    ) -> Result<T, ClusterError>
    where
        F: FnOnce(C) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        tokio::time::timeout(timeout, async {
            let _permit = self
                .permits
                .acquire()
                .await
                .map_err(|_| ClusterError::Unavailable {
                    scheduler: self.addr,
                    message: "client is shutting down".into(),
                })?;
            rpc(client)
                .await
                .map(tonic::Response::into_inner)
                .map_err(|status| ClusterError::from_status(self.addr, &status))
        })
        .await
        .unwrap_or(Err(ClusterError::DeadlineExceeded {
            scheduler: self.addr,
            timeout_ms: millis(timeout),
        }))
    }

    /// Judges how a call went for the breaker, and records it in metrics,
    /// health and (when rate limited) the backoff.
    fn record<T>(
        &self,
        method: &'static str,
        elapsed: Duration,
        outcome: &Result<T, ClusterError>,
        cut: bool,
    ) -> Outcome {
        let verdict = match outcome {
            Ok(_) => Outcome::Success,
            Err(ClusterError::DeadlineExceeded { .. }) if cut => Outcome::Ignored,
            Err(e) if e.is_scheduler_failure() => Outcome::Failure,
            // The scheduler answered; it is healthy even if the answer is no.
            Err(_) => Outcome::Success,
        };
        let result = match (outcome, verdict) {
            (Ok(_), _) => "ok",
            (_, Outcome::Failure) => "error",
            (_, Outcome::Ignored) => "cut",
            (_, Outcome::Success) => "answered",
        };
        metrics::histogram!(super::metric::CALL_SECONDS, "method" => method, "result" => result)
            .record(elapsed.as_secs_f64());
        match (outcome, verdict) {
            (Err(e @ ClusterError::ResourceExhausted { .. }), _) => {
                let pause = self.backoff.rate_limited(self.clock.now());
                tracing::debug!(scheduler = %self.addr, method, pause_ms = millis(pause), error = %e, "rate limited: backing off");
                self.health.record_failure(e.to_string());
            }
            (Err(e), Outcome::Failure) => {
                tracing::debug!(scheduler = %self.addr, method, error = %e, "scheduler call failed");
                self.health.record_failure(e.to_string());
            }
            (_, Outcome::Success) => {
                self.backoff.reset();
                self.health.record_success(elapsed);
            }
            _ => {}
        }
        verdict
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
