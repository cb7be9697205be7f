//! How long scheduler calls and whole requests may take.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::setting::{Invalid, positive};

/// Deadlines for scheduler calls and whole requests.
#[derive(Clone, Copy, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Timeouts {
    #[serde(with = "humantime_serde")]
    pub connect: Duration,
    /// `StatTask`, `StatPeer` and the deletes.
    #[serde(with = "humantime_serde")]
    pub stat: Duration,
    #[serde(with = "humantime_serde")]
    pub list_hosts: Duration,
    /// Budget of one GraphQL request, end to end; scheduler calls get
    /// what is left of it at most.
    #[serde(with = "humantime_serde")]
    pub request: Duration,
    /// HTTP/2 PING interval on scheduler connections...
    #[serde(with = "humantime_serde")]
    pub keep_alive_interval: Duration,
    /// ...and how long a PING may go unanswered before the connection is
    /// dropped and redialled.
    #[serde(with = "humantime_serde")]
    pub keep_alive_timeout: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(2),
            stat: Duration::from_secs(1),
            list_hosts: Duration::from_secs(3),
            request: Duration::from_secs(5),
            keep_alive_interval: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(5),
        }
    }
}

impl Timeouts {
    /// Every deadline above zero (a zero deadline fails every call).
    pub fn validate(&self) -> Result<(), Invalid> {
        positive("connect", self.connect)?;
        positive("stat", self.stat)?;
        positive("list_hosts", self.list_hosts)?;
        positive("request", self.request)?;
        positive("keep_alive_interval", self.keep_alive_interval)?;
        positive("keep_alive_timeout", self.keep_alive_timeout)
    }
}
