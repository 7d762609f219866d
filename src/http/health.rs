//! `GET /health`: is every part ferry depends on working? 503 when one is down.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use super::AppState;
use crate::health::Health;

pub fn router() -> Router<AppState> {
    Router::new().route("/health", get(health))
}

/// Whether every part ferry depends on works. Open without a token.
#[utoipa::path(get, path = "/health", tag = "meta", security(()),
    responses((status = 200, description = "All parts work (status ok or degraded)", body = crate::http::openapi::Health),
              (status = 503, description = "The store or nginx is down", body = crate::http::openapi::Health)))]
pub async fn health(State(s): State<AppState>) -> (StatusCode, Json<Value>) {
    let store = s.links.store().ping().await.is_ok();
    let nginx = s.nginx_running.load(Ordering::SeqCst);
    let provider = s.links.provider().health();
    let ok = store && nginx && provider.status != Health::Down;
    // The data dir is looked at off the async workers, and not for long: a network mount whose
    // server is gone can hold a lookup for minutes.
    let links = s.links.clone();
    let look = tokio::task::spawn_blocking(move || links.data().available());
    let data_dir = match tokio::time::timeout(std::time::Duration::from_secs(2), look).await {
        Ok(Ok(Ok(()))) => None,
        Ok(Ok(Err(e))) => Some(e.to_string()),
        Ok(Err(e)) => Some(format!("data dir unavailable: {e}")),
        Err(_) => Some("data dir unavailable: it did not answer within 2 s".to_string()),
    };
    // Without socket progress ferry still works, from the log alone: degraded, not down.
    let sockets = s.links.socket_progress();
    // While nginx cannot write its access log, no new download starts.
    let log_writes = !s.links.log_writes.failing();
    // A store that may lose a redemption in a crash still works: degraded, not down (SPEC §5).
    let (durable, durability) = s.links.store().durability();
    let status = if ok && sockets && log_writes && durable && provider.status == Health::Ok && data_dir.is_none() {
        Health::Ok
    } else {
        Health::Degraded
    };
    let body = json!({
        "status": status,
        "components": {
            "store": {
                "status": if !store { Health::Down } else { Health::ok_or_degraded(durable) },
                "kind": s.links.store().kind(),
                "durable": durable,
                "durability": durability,
                "instance": s.links.peers().map(|p| p.instance()),
            },
            "nginx": {"status": Health::up_or_down(nginx)},
            "data_dir": {
                "status": Health::ok_or_degraded(data_dir.is_none()),
                "path": s.config.data_dir,
                "detail": data_dir,
            },
            "provider": {"status": provider.status, "kind": s.provider, "detail": provider.detail},
            "monitor": {
                "status": Health::ok_or_degraded(sockets && log_writes),
                "log_writes": if log_writes { "ok" } else { "failing" },
                "lines": s.monitor.lines.load(Ordering::Relaxed),
                "bad_lines": s.monitor.bad_lines.load(Ordering::Relaxed),
                "files_done": s.monitor.files_done.load(Ordering::Relaxed),
                "lag_ms": s.monitor.last_lag_ms.load(Ordering::Relaxed),
                "progress": if s.links.socket_progress() { "socket" } else { "log" },
            },
        }
    });
    (
        if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        Json(body),
    )
}
