//! One health probe: `grpc.health.v1.Health/Check` (the service name
//! empty: the whole server) to a host's `ip:port`, over TLS when `[tls]`
//! is set, within the probe timeout. Connections that answered are kept
//! for the next probe up to a bound; a failure drops the host's
//! connection, so its next probe dials anew (what a crashed host refuses).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use super::metric;

/// Why a probe failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    #[error("connection refused or reset: {0}")]
    Refused(String),
    #[error("no answer within the probe timeout")]
    Timeout,
    #[error("the health service answered {0}, not SERVING")]
    NotServing(i32),
    #[error("{0}")]
    Other(String),
}

impl ProbeError {
    /// The `reason` label of the failure metric.
    pub fn reason(&self) -> &'static str {
        match self {
            ProbeError::Refused(_) => "refused",
            ProbeError::Timeout => "timeout",
            ProbeError::NotServing(_) => "not_serving",
            ProbeError::Other(_) => "error",
        }
    }
}

/// Dials hosts and keeps the connections worth keeping.
pub struct Dialer {
    tls: Option<ClientTlsConfig>,
    timeout: Duration,
    max_connections: usize,
    open: Mutex<HashMap<SocketAddr, Channel>>,
}

impl Dialer {
    pub fn new(tls: Option<ClientTlsConfig>, timeout: Duration, max_connections: usize) -> Self {
        Self {
            tls,
            timeout,
            max_connections,
            open: Mutex::default(),
        }
    }

    fn open(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Channel>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Connections kept now.
    pub fn connections(&self) -> usize {
        self.open().len()
    }

    /// Closes the connections to addresses not in `keep`.
    pub fn retain(&self, keep: impl Fn(&SocketAddr) -> bool) {
        self.open().retain(|addr, _| keep(addr));
        metrics::gauge!(metric::CONNECTIONS).set(self.connections() as f64);
    }

    async fn connect(&self, addr: SocketAddr) -> Result<Channel, ProbeError> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(|e| ProbeError::Other(e.to_string()))?
            .connect_timeout(self.timeout)
            .tcp_nodelay(true);
        if let Some(tls) = &self.tls {
            endpoint = endpoint
                .tls_config(tls.clone())
                .map_err(|e| ProbeError::Other(format!("TLS setup: {e}")))?;
        }
        endpoint
            .connect()
            .await
            .map_err(|e| ProbeError::Refused(error_chain(&e)))
    }

    /// Probes `addr` once within the timeout: the round trip (connecting
    /// included when a connection had to be opened), or why it failed.
    pub async fn check(&self, addr: SocketAddr) -> Result<Duration, ProbeError> {
        let started = Instant::now();
        let kept = self.open().get(&addr).cloned();
        let probe = async {
            let channel = match kept {
                Some(channel) => channel,
                None => self.connect(addr).await?,
            };
            let answer = HealthClient::new(channel.clone())
                .check(HealthCheckRequest::default())
                .await
                .map_err(|status| match status.code() {
                    tonic::Code::Unavailable => ProbeError::Refused(status.message().to_owned()),
                    code => ProbeError::Other(format!("{code:?}: {}", status.message())),
                })?;
            let status = answer.into_inner().status;
            if status != ServingStatus::Serving as i32 {
                return Err(ProbeError::NotServing(status));
            }
            Ok(channel)
        };
        let result = match tokio::time::timeout(self.timeout, probe).await {
            Ok(result) => result,
            Err(_) => Err(ProbeError::Timeout),
        };
        let mut open = self.open();
        match result {
            Ok(channel) => {
                if open.len() < self.max_connections || open.contains_key(&addr) {
                    open.insert(addr, channel);
                }
                metrics::gauge!(metric::CONNECTIONS).set(open.len() as f64);
                Ok(started.elapsed())
            }
            Err(error) => {
                open.remove(&addr);
                metrics::gauge!(metric::CONNECTIONS).set(open.len() as f64);
                Err(error)
            }
        }
    }
}

/// An error and its sources on one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
