//! One scheduler cluster's probe cycles, run by the replica holding its
//! liveness lease: each cycle takes the cluster's host list, probes every
//! host in `networks` once (a failing one again at once, until it answers
//! or reaches `failures`), within `concurrency` and the cluster's probe
//! budget, records the outcomes and publishes each host that became
//! unreachable or reachable again. A cycle that would take less than
//! `interval` waits out the rest.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use ipnet::IpNet;
use tokio_util::sync::CancellationToken;

use super::probe::Dialer;
use super::share::Share;
use super::{HostSource, Liveness, LivenessConfig, metric};
use crate::clock::{Clock, SystemClock};
use crate::events::{Bus, Event, HostChange, What};
use crate::proto::common::v2::Host;

/// What one cluster's prober needs.
pub(super) struct ClusterProber {
    pub cluster_id: u64,
    pub config: LivenessConfig,
    pub networks: Arc<Vec<IpNet>>,
    pub dialer: Arc<Dialer>,
    pub liveness: Liveness,
    pub hosts: HostSource,
    pub bus: Bus,
    /// Where records go for the other replicas (`None` without Redis).
    pub share: Option<Share>,
}

/// The address to probe for `host`, when it is one `networks` allows.
pub(super) fn target(host: &Host, networks: &[IpNet]) -> Option<SocketAddr> {
    let ip: IpAddr = host.ip.parse().ok()?;
    let port = u16::try_from(host.port).ok().filter(|p| *p != 0)?;
    networks
        .iter()
        .any(|n| n.contains(&ip))
        .then_some(SocketAddr::new(ip, port))
}

impl ClusterProber {
    /// Cycles until `stop`.
    pub(super) async fn run(self, stop: CancellationToken) {
        let per_second = NonZeroU32::new(self.config.probes_per_second).unwrap_or(NonZeroU32::MIN);
        // No burst beyond one probe: the budget is a steady rate.
        let limiter =
            RateLimiter::direct(Quota::per_second(per_second).allow_burst(NonZeroU32::MIN));
        let cluster = self.cluster_id.to_string();
        loop {
            let started = Instant::now();
            let cycle = self.cycle(&limiter);
            tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                probed = cycle => {
                    if probed > 0 {
                        metrics::gauge!(metric::CYCLE, "cluster" => cluster.clone())
                            .set(started.elapsed().as_secs_f64());
                    }
                }
            }
            let rest = self.config.interval.saturating_sub(started.elapsed());
            tokio::select! {
                _ = stop.cancelled() => return,
                () = tokio::time::sleep(rest) => {}
            }
        }
    }

    /// One pass over the cluster's hosts; how many were probed.
    async fn cycle(&self, limiter: &DefaultDirectRateLimiter) -> usize {
        let hosts = match (self.hosts)(self.cluster_id).await {
            Ok(hosts) => hosts,
            Err(error) => {
                tracing::debug!(cluster = self.cluster_id, %error, "no host list to probe");
                return 0;
            }
        };
        let targets: Vec<(Arc<Host>, SocketAddr)> = hosts
            .iter()
            .filter_map(|h| target(h, &self.networks).map(|addr| (Arc::clone(h), addr)))
            .collect();
        let probed: HashSet<&str> = targets.iter().map(|(h, _)| h.id.as_str()).collect();
        // Hosts that left, and hosts outside the allowed networks, have no
        // record (UNKNOWN).
        let gone = self.liveness.retain(self.cluster_id, &probed);
        let addrs: HashSet<SocketAddr> = targets.iter().map(|(_, a)| *a).collect();
        self.dialer.retain(|a| addrs.contains(a));
        if let Some(share) = &self.share {
            share.forget(self.cluster_id, gone).await;
        }
        let count = targets.len();
        // Paced in order: each host's first probe takes its token before it
        // takes a place among the `concurrency` in flight, so a host that
        // fails competes for its retries with the pacing alone, not with
        // every probe waiting its turn.
        let mut waiting = targets.into_iter();
        let mut running = futures::stream::FuturesUnordered::new();
        loop {
            let room = running.len() < self.config.concurrency && waiting.len() > 0;
            if !room && running.is_empty() {
                break;
            }
            tokio::select! {
                biased;
                Some(()) = running.next(), if !running.is_empty() => {}
                () = limiter.until_ready(), if room => {
                    if let Some((host, addr)) = waiting.next() {
                        running.push(self.probe_host(limiter, host, addr));
                    }
                }
            }
        }
        if let Some(share) = &self.share {
            share.flush(self.cluster_id, &self.liveness).await;
        }
        count
    }

    /// Probes one host (its first probe's token already taken) until it
    /// answers or has failed `failures` times in a row; records and
    /// publishes what changed.
    async fn probe_host(
        &self,
        limiter: &DefaultDirectRateLimiter,
        host: Arc<Host>,
        addr: SocketAddr,
    ) {
        let cluster = self.cluster_id.to_string();
        let mut retry = false;
        loop {
            if retry {
                limiter.until_ready().await;
            }
            retry = true;
            let outcome = self.dialer.check(addr).await;
            metrics::counter!(metric::PROBES, "cluster" => cluster.clone()).increment(1);
            match &outcome {
                Ok(latency) => {
                    metrics::histogram!(metric::LATENCY, "cluster" => cluster.clone())
                        .record(latency.as_secs_f64());
                }
                Err(error) => {
                    metrics::counter!(metric::FAILURES, "cluster" => cluster.clone(), "reason" => error.reason())
                        .increment(1);
                    tracing::debug!(cluster = self.cluster_id, host = %host.id, %addr, %error, "health probe failed");
                }
            }
            let now_ms = SystemClock.now_ms_signed();
            let answered = outcome.is_ok();
            let (record, change) =
                self.liveness
                    .observe(self.cluster_id, &host.id, outcome.map_err(|_| ()), now_ms);
            if let Some(share) = &self.share {
                share.mark(self.cluster_id, &host.id);
            }
            if let Some(change) = change {
                self.announce(&host, change, now_ms).await;
            }
            if answered || record.consecutive_failures >= self.config.failures {
                return;
            }
        }
    }

    /// Tells every replica (the record first, then the event) that a host
    /// became unreachable or reachable again.
    async fn announce(&self, host: &Arc<Host>, change: HostChange, at_ms: i64) {
        match change {
            HostChange::Unreachable => {
                tracing::warn!(cluster = self.cluster_id, host = %host.id, ip = %host.ip, "host unreachable: its health service does not answer")
            }
            _ => tracing::info!(cluster = self.cluster_id, host = %host.id, "host reachable again"),
        }
        if let Some(share) = &self.share {
            share.flush(self.cluster_id, &self.liveness).await;
        }
        self.bus.publish(Event {
            cluster_id: self.cluster_id,
            observed_at_ms: at_ms,
            what: What::Host {
                change,
                host: Arc::clone(host),
                changed_fields: vec!["liveness".to_owned()],
            },
            cursor: None,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_allowed_networks_are_dialled() {
        let loopback: Vec<IpNet> = vec!["127.0.0.0/8".parse().unwrap()];
        let host = |ip: &str, port| Host {
            ip: ip.into(),
            port,
            ..Host::default()
        };
        assert_eq!(
            target(&host("127.1.2.3", 4000), &loopback),
            Some("127.1.2.3:4000".parse().unwrap())
        );
        assert_eq!(target(&host("10.0.0.1", 4000), &loopback), None);
        assert_eq!(target(&host("127.1.2.3", 0), &loopback), None);
        assert_eq!(target(&host("127.1.2.3", 70_000), &loopback), None);
        assert_eq!(target(&host("not-an-ip", 4000), &loopback), None);
        let all: Vec<IpNet> = vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()];
        assert_eq!(
            target(&host("::1", 4000), &all),
            Some("[::1]:4000".parse().unwrap())
        );
    }
}
