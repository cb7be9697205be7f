//! Where the scheduler list comes from: a static list from config, or the
//! manager's `ListSchedulers`, asked again on an interval.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{ClusterClient, ClusterError, Dial};
use crate::proto::manager::v2::manager_client::ManagerClient;
use crate::proto::manager::v2::{ListSchedulersRequest, SourceType};

/// Asks the manager for the active schedulers of each cluster.
pub async fn fetch_from_manager(
    manager: &str,
    cluster_ids: &[u64],
    dial: &Dial,
    timeout: Duration,
) -> Result<Vec<(u64, SocketAddr)>, ClusterError> {
    let manager_addr = resolve_addr(manager).map_err(|message| ClusterError::InvalidArgument {
        message: format!("manager address: {message}"),
    })?;
    let unavailable = |message: String| ClusterError::Unavailable {
        scheduler: manager_addr,
        message: format!("manager: {message}"),
    };
    let channel = dial.channel(manager).map_err(unavailable)?;
    let client =
        ManagerClient::new(channel).max_decoding_message_size(super::scheduler::MAX_DECODE_BYTES);
    let hostname = std::env::var("HOSTNAME").unwrap_or_else(|_| "dfgraph".into());
    let mut found = Vec::new();
    for &cluster_id in cluster_ids {
        let request = ListSchedulersRequest {
            source_type: SourceType::PeerSource as i32,
            hostname: hostname.clone(),
            ip: String::new(),
            idc: None,
            location: None,
            version: env!("CARGO_PKG_VERSION").into(),
            commit: String::new(),
            scheduler_cluster_id: cluster_id,
        };
        let response = tokio::time::timeout(timeout, client.clone().list_schedulers(request))
            .await
            .map_err(|_| ClusterError::DeadlineExceeded {
                scheduler: manager_addr,
                timeout_ms: timeout.as_millis() as u64,
            })?
            .map_err(|status| ClusterError::from_status(manager_addr, &status))?
            .into_inner();
        for scheduler in response.schedulers {
            // Older managers ignore the cluster filter; apply it here too.
            if scheduler.scheduler_cluster_id != cluster_id
                || !scheduler.state.eq_ignore_ascii_case("active")
            {
                continue;
            }
            let Ok(ip) = scheduler.ip.parse::<IpAddr>() else {
                tracing::warn!(ip = %scheduler.ip, "manager listed a scheduler with an unparsable ip");
                continue;
            };
            let Ok(port) = u16::try_from(scheduler.port) else {
                tracing::warn!(
                    port = scheduler.port,
                    "manager listed a scheduler with an invalid port"
                );
                continue;
            };
            found.push((cluster_id, SocketAddr::new(ip, port)));
        }
    }
    Ok(found)
}

/// Keeps `client`'s scheduler list in step with the manager until
/// `shutdown`. A failed refresh keeps the previous list.
pub async fn follow_manager(
    client: ClusterClient,
    manager: String,
    cluster_ids: Vec<u64>,
    refresh: Duration,
    shutdown: CancellationToken,
) {
    let dial = client.settings().dial.clone();
    let timeout = client.settings().timeouts.list_hosts;
    loop {
        match fetch_from_manager(&manager, &cluster_ids, &dial, timeout).await {
            Ok(schedulers) => {
                tracing::debug!(count = schedulers.len(), "schedulers from manager");
                if let Err(e) = client.set_schedulers(&schedulers) {
                    tracing::warn!(error = %e, "cannot use the manager's scheduler list");
                }
            }
            Err(e) => {
                tracing::warn!(%manager, error = %e, "scheduler discovery failed; keeping the previous list")
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(refresh) => {}
        }
    }
}

/// Resolves `HOST:PORT` to one socket address (the first that resolves),
/// because the hash ring is keyed by socket address as dfdaemons key it.
pub fn resolve_addr(s: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(addr) = s.parse() {
        return Ok(addr);
    }
    s.to_socket_addrs()
        .map_err(|e| format!("cannot resolve {s:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("{s:?} resolves to no address"))
}
