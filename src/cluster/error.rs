//! Typed scheduler errors: what went wrong, and where.

use std::net::SocketAddr;

/// A failed call toward a scheduler or the manager. Cheap to clone so one
/// failure can be handed to every request that shared the call.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    /// The entity does not exist on any scheduler that was asked.
    #[error("not found")]
    NotFound,
    #[error("invalid argument: {message}")]
    InvalidArgument { message: String },
    #[error("scheduler {scheduler} unavailable: {message}")]
    Unavailable {
        scheduler: SocketAddr,
        message: String,
    },
    #[error("scheduler {scheduler} did not answer within {timeout_ms} ms")]
    DeadlineExceeded {
        scheduler: SocketAddr,
        timeout_ms: u64,
    },
    #[error("scheduler {scheduler} is over its rate limit: {message}")]
    ResourceExhausted {
        scheduler: SocketAddr,
        message: String,
    },
    #[error("scheduler {scheduler} failed: {message}")]
    Internal {
        scheduler: SocketAddr,
        message: String,
    },
    /// The scheduler's circuit breaker is open: it failed repeatedly, so
    /// calls fail fast until it is probed again.
    #[error("scheduler {scheduler} is failing; its circuit is open for another {retry_in_ms} ms")]
    CircuitOpen {
        scheduler: SocketAddr,
        retry_in_ms: u64,
    },
    /// The scheduler rate-limited us recently; we stay away a while.
    #[error("scheduler {scheduler} is over its rate limit; backing off for {retry_in_ms} ms")]
    BackingOff {
        scheduler: SocketAddr,
        retry_in_ms: u64,
    },
    #[error("scheduler cluster {cluster_id} has no schedulers")]
    NoSchedulers { cluster_id: u64 },
    #[error("scheduler cluster {cluster_id} is not configured")]
    UnknownCluster { cluster_id: u64 },
}

impl ClusterError {
    /// Maps a gRPC status from `scheduler` to the error a client sees.
    pub fn from_status(scheduler: SocketAddr, status: &tonic::Status) -> Self {
        let message = status.message().to_owned();
        match status.code() {
            tonic::Code::NotFound => Self::NotFound,
            tonic::Code::InvalidArgument => Self::InvalidArgument { message },
            tonic::Code::ResourceExhausted => Self::ResourceExhausted { scheduler, message },
            tonic::Code::DeadlineExceeded => Self::DeadlineExceeded {
                scheduler,
                timeout_ms: 0,
            },
            tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::Unknown => {
                Self::Unavailable { scheduler, message }
            }
            _ => Self::Internal {
                scheduler,
                message: format!("{:?}: {message}", status.code()),
            },
        }
    }

    /// The stable code a GraphQL client switches on (`extensions.code`).
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound => "NOT_FOUND",
            Self::InvalidArgument { .. } => "INVALID_ARGUMENT",
            Self::Unavailable { .. } | Self::NoSchedulers { .. } => "SCHEDULER_UNAVAILABLE",
            Self::DeadlineExceeded { .. } => "SCHEDULER_TIMEOUT",
            Self::ResourceExhausted { .. } | Self::BackingOff { .. } => "SCHEDULER_RATE_LIMITED",
            Self::Internal { .. } => "SCHEDULER_ERROR",
            Self::CircuitOpen { .. } => "SCHEDULER_CIRCUIT_OPEN",
            Self::UnknownCluster { .. } => "UNKNOWN_CLUSTER",
        }
    }

    /// The scheduler that failed, when one did.
    pub fn scheduler(&self) -> Option<SocketAddr> {
        match self {
            Self::Unavailable { scheduler, .. }
            | Self::DeadlineExceeded { scheduler, .. }
            | Self::ResourceExhausted { scheduler, .. }
            | Self::Internal { scheduler, .. }
            | Self::CircuitOpen { scheduler, .. }
            | Self::BackingOff { scheduler, .. } => Some(*scheduler),
            _ => None,
        }
    }

    /// Whether the scheduler itself is unhealthy, as opposed to the request
    /// being wrong: only these count against a scheduler's health, and
    /// only these are worth asking another scheduler about.
    pub fn is_scheduler_failure(&self) -> bool {
        matches!(
            self,
            Self::Unavailable { .. }
                | Self::DeadlineExceeded { .. }
                | Self::ResourceExhausted { .. }
                | Self::Internal { .. }
                | Self::CircuitOpen { .. }
                | Self::BackingOff { .. }
        )
    }

    /// Failed without reaching the scheduler (circuit open, backing off):
    /// costs nothing, so trying elsewhere is not a retry.
    pub fn is_fast_failure(&self) -> bool {
        matches!(self, Self::CircuitOpen { .. } | Self::BackingOff { .. })
    }
}
