//! `/healthz` (the process answers) and `/readyz` (every served scheduler
//! cluster has at least one reachable scheduler; schedulers whose hosts
//! carry another cluster id are reported, not counted against readiness).

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures::future::join_all;

use super::AppState;

const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

pub async fn healthz() -> &'static str {
    "ok\n"
}

/// Every scheduler is asked a cheap question now (a TCP connect is not
/// enough: a scheduler that accepts connections may still fail every call,
/// and old successes say little). One whose circuit is open is not asked:
/// it counts as unreachable until its breaker lets a probe through.
pub async fn readyz(State(app): State<AppState>) -> Response {
    let client = &app.gateway.cluster;
    let schedulers = client.schedulers();
    let probes = join_all(schedulers.iter().map(|s| async move {
        let reachable = s.probe(PROBE_TIMEOUT).await.is_ok();
        (s.cluster_id, s.addr, reachable, s.announced.get())
    }))
    .await;
    let mut ready = true;
    let clusters: Vec<_> = client
        .cluster_ids()
        .into_iter()
        .map(|id| {
            let members: Vec<_> = probes.iter().filter(|(c, ..)| *c == id).collect();
            let reachable = members.iter().any(|(_, _, up, _)| *up);
            let mismatch = |announced: &Option<u64>| announced.is_some_and(|a| a != id);
            ready &= reachable;
            serde_json::json!({
                "id": id,
                "reachable": reachable,
                "cluster_id_mismatch": members.iter().any(|(.., a)| mismatch(a)),
                "schedulers": members.iter().map(|(_, addr, up, announced)| serde_json::json!({
                    "address": addr.to_string(), "reachable": up,
                    "announced_cluster_id": announced,
                    "cluster_id_mismatch": mismatch(announced),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let ready = ready && !clusters.is_empty();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(serde_json::json!({ "ready": ready, "clusters": clusters })),
    )
        .into_response()
}
