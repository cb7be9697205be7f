//! One scheduler endpoint: its reusable gRPC channel, its concurrency bound,
//! its health, and the single place where a call gets its deadline and its
//! outcome recorded.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use super::ClusterError;
use super::health::Health;
use crate::proto::scheduler::v2::scheduler_client::SchedulerClient;

/// Replies carry whole host lists: 10k hosts are several MiB, so the
/// decode limit sits far above tonic's 4 MiB default.
pub const MAX_DECODE_BYTES: usize = 512 * 1024 * 1024;

/// How a channel to a scheduler or manager is dialled.
#[derive(Clone, Debug)]
pub struct Dial {
    pub connect_timeout: Duration,
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
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true);
        if let Some(tls) = &self.tls {
            endpoint = endpoint
                .tls_config(tls.clone())
                .map_err(|e| format!("TLS setup for {addr}: {e}"))?;
        }
        Ok(endpoint.connect_lazy())
    }
}

/// A scheduler of one scheduler cluster.
pub struct SchedulerHandle {
    pub cluster_id: u64,
    pub addr: SocketAddr,
    client: SchedulerClient<Channel>,
    pub health: Health,
    /// Bounds in-flight calls so a burst of console traffic cannot pile
    /// onto one scheduler.
    permits: Semaphore,
}

impl SchedulerHandle {
    pub fn new(
        cluster_id: u64,
        addr: SocketAddr,
        dial: &Dial,
        concurrency: usize,
    ) -> Result<Arc<Self>, ClusterError> {
        let channel =
            dial.channel(&addr.to_string())
                .map_err(|message| ClusterError::Unavailable {
                    scheduler: addr,
                    message,
                })?;
        let client = SchedulerClient::new(channel)
            .max_decoding_message_size(MAX_DECODE_BYTES)
            .max_encoding_message_size(MAX_DECODE_BYTES);
        Ok(Arc::new(Self {
            cluster_id,
            addr,
            client,
            health: Health::default(),
            permits: Semaphore::new(concurrency),
        }))
    }

    /// Runs one RPC under `timeout` and records how it went. NotFound and
    /// InvalidArgument are answers, not failures of the scheduler.
    pub async fn call<T, F, Fut>(
        &self,
        method: &'static str,
        timeout: Duration,
        rpc: F,
    ) -> Result<T, ClusterError>
    where
        F: FnOnce(SchedulerClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let started = Instant::now();
        let outcome = tokio::time::timeout(timeout, async {
            let _permit = self
                .permits
                .acquire()
                .await
                .map_err(|_| ClusterError::Unavailable {
                    scheduler: self.addr,
                    message: "client is shutting down".into(),
                })?;
            rpc(self.client.clone())
                .await
                .map(tonic::Response::into_inner)
                .map_err(|status| ClusterError::from_status(self.addr, &status))
        })
        .await
        .unwrap_or(Err(ClusterError::DeadlineExceeded {
            scheduler: self.addr,
            timeout_ms: timeout.as_millis() as u64,
        }));
        let elapsed = started.elapsed();
        let result = match &outcome {
            Ok(_) => "ok",
            Err(e) if e.is_scheduler_failure() => "error",
            Err(_) => "answered",
        };
        metrics::histogram!("dfgraph_scheduler_call_seconds", "method" => method, "result" => result)
            .record(elapsed.as_secs_f64());
        match &outcome {
            Ok(_) => self.health.record_success(elapsed),
            Err(e) if e.is_scheduler_failure() => {
                tracing::debug!(scheduler = %self.addr, method, error = %e, "scheduler call failed");
                self.health.record_failure(e.to_string());
            }
            // The scheduler answered; it is healthy even if the answer is no.
            Err(_) => self.health.record_success(elapsed),
        }
        outcome
    }
}
