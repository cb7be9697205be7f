//! `/healthz` (the process answers) and `/readyz` (every served scheduler
//! cluster has at least one reachable scheduler).

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures::future::join_all;

use super::AppState;

pub async fn healthz() -> &'static str {
    "ok\n"
}

/// A scheduler that has answered recently counts as reachable; one we
/// have not called yet is probed with a TCP connect.
pub async fn readyz(State(app): State<AppState>) -> Response {
    let client = &app.gateway.cluster;
    let schedulers = client.schedulers();
    let probes = join_all(schedulers.iter().map(|s| async move {
        let health = s.health.snapshot();
        let reachable = if health.calls > 0 {
            health.is_up()
        } else {
            tokio::time::timeout(
                Duration::from_millis(500),
                tokio::net::TcpStream::connect(s.addr),
            )
            .await
            .is_ok_and(|r| r.is_ok())
        };
        (s.cluster_id, s.addr, reachable)
    }))
    .await;
    let mut ready = true;
    let clusters: Vec<_> = client
        .cluster_ids()
        .into_iter()
        .map(|id| {
            let members: Vec<_> = probes.iter().filter(|(c, _, _)| *c == id).collect();
            let reachable = members.iter().any(|(_, _, up)| *up);
            ready &= reachable;
            serde_json::json!({
                "id": id,
                "reachable": reachable,
                "schedulers": members.iter().map(|(_, addr, up)| serde_json::json!({
                    "address": addr.to_string(), "reachable": up,
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
