//! Which clusters this replica probes: with Redis, those whose liveness
//! lease it holds (one prober per cluster across replicas), mirroring the
//! others' records from their hashes; without Redis, or while Redis does
//! not answer, every cluster (each replica for itself). Keeps the
//! per-cluster gauges.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tonic::transport::ClientTlsConfig;

use super::cluster::ClusterProber;
use super::probe::Dialer;
use super::share::Share;
use super::{HostSource, Liveness, LivenessConfig, metric};
use crate::cache::keys;
use crate::cluster::ClusterClient;
use crate::events::{Bus, lease};
use crate::setting::Invalid;

/// Starts and stops the cluster probers; see the module doc.
pub struct Runner {
    pub config: LivenessConfig,
    pub cluster: ClusterClient,
    pub hosts: HostSource,
    pub bus: Bus,
    pub liveness: Liveness,
    /// `[tls]` toward the hosts as toward the schedulers.
    pub tls: Option<ClientTlsConfig>,
}

impl Runner {
    /// Runs until `stop` (nothing when probing is off).
    pub fn start(self, stop: CancellationToken) -> Result<(), Invalid> {
        let networks = Arc::new(self.config.parsed_networks()?);
        if self.config.enabled {
            tracing::info!(
                networks = ?self.config.networks,
                probes_per_second = self.config.probes_per_second,
                "probing the hosts' gRPC health services"
            );
            tokio::spawn(self.run(networks, stop));
        }
        Ok(())
    }

    async fn run(self, networks: Arc<Vec<ipnet::IpNet>>, stop: CancellationToken) {
        let share = self.bus.redis().cloned().map(Share::new);
        let mut running: HashMap<u64, CancellationToken> = HashMap::new();
        let mut tick = tokio::time::interval(self.config.lease_ttl / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut redis_failing = false;
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let clusters = self.cluster.cluster_ids();
            let held: HashSet<u64> = match self.bus.redis() {
                None => clusters.iter().copied().collect(),
                Some(redis) => match lease::acquire(
                    redis,
                    keys::liveness_lease,
                    &clusters,
                    self.bus.instance(),
                    self.config.lease_ttl,
                )
                .await
                {
                    Ok(held) => {
                        if redis_failing {
                            tracing::info!("liveness leases reach Redis again");
                        }
                        redis_failing = false;
                        held.into_iter().collect()
                    }
                    Err(error) => {
                        if !redis_failing {
                            tracing::warn!(%error, "liveness lease unavailable: probing every cluster from this replica until Redis answers");
                        }
                        redis_failing = true;
                        clusters.iter().copied().collect()
                    }
                },
            };
            running.retain(|cluster_id, token| {
                let keep = held.contains(cluster_id);
                if !keep {
                    token.cancel();
                    tracing::info!(
                        cluster = cluster_id,
                        "no longer probing this cluster's hosts (another replica does)"
                    );
                }
                keep
            });
            for &cluster_id in &held {
                if running.contains_key(&cluster_id) {
                    continue;
                }
                tracing::info!(
                    cluster = cluster_id,
                    "probing this cluster's hosts for every replica"
                );
                let token = stop.child_token();
                let prober = ClusterProber {
                    cluster_id,
                    config: self.config.clone(),
                    networks: Arc::clone(&networks),
                    dialer: Arc::new(Dialer::new(
                        self.tls.clone(),
                        self.config.timeout,
                        self.config.max_connections,
                    )),
                    liveness: self.liveness.clone(),
                    hosts: Arc::clone(&self.hosts),
                    bus: self.bus.clone(),
                    share: share.clone(),
                };
                tokio::spawn(prober.run(token.clone()));
                running.insert(cluster_id, token);
            }
            if let Some(share) = &share
                && !redis_failing
            {
                for &cluster_id in clusters.iter().filter(|c| !held.contains(c)) {
                    if let Some(records) = share.read(cluster_id).await {
                        self.liveness.mirror(cluster_id, records);
                    }
                }
            }
            self.liveness.keep_clusters(&clusters);
            for &cluster_id in &clusters {
                let label = cluster_id.to_string();
                metrics::gauge!(metric::LEADER, "cluster" => label.clone())
                    .set(if held.contains(&cluster_id) { 1.0 } else { 0.0 });
                metrics::gauge!(metric::UNREACHABLE, "cluster" => label.clone())
                    .set(self.liveness.unreachable(cluster_id) as f64);
                metrics::gauge!(metric::HOSTS, "cluster" => label)
                    .set(self.liveness.recorded(cluster_id) as f64);
            }
        }
        for token in running.values() {
            token.cancel();
        }
        if let Some(redis) = self.bus.redis() {
            let held: Vec<u64> = running.keys().copied().collect();
            if let Err(error) =
                lease::release(redis, keys::liveness_lease, &held, self.bus.instance()).await
            {
                tracing::debug!(%error, "liveness leases not released; they lapse");
            }
        }
    }
}
