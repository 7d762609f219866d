//! `GET /admin/monitor/status`: how each part is doing. The parts are the log monitor (lag,
//! counters), nginx, the provider, the store, and the host (CPU, memory, free space where the data
//! dir lives).

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use utoipa::ToSchema;

use super::error::ErrorBody;
use super::host::HostSample;
use super::state::AppState;
use crate::health::Health;
use crate::links::Links;

/// Where ferry learns how far a download has got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Progress {
    /// From the download's socket, while the bytes flow.
    Socket,
    /// From nginx's access log alone, once a request has ended.
    Log,
}

impl Progress {
    pub fn of(links: &Links) -> Progress {
        if links.socket_progress() {
            Progress::Socket
        } else {
            Progress::Log
        }
    }
}

/// The body of `GET /admin/monitor/status`.
#[derive(Serialize, ToSchema)]
pub struct StatusReport {
    pub monitor: MonitorStatus,
    pub nginx: NginxStatus,
    pub provider: ProviderStatus,
    pub store: StoreStatus,
    /// Null when the host could not be sampled.
    pub host: Option<HostSample>,
}

/// The access-log monitor: how far behind nginx it is, and what it has read.
#[derive(Serialize, ToSchema)]
pub struct MonitorStatus {
    pub lag_ms: u64,
    pub lines: u64,
    pub bad_lines: u64,
    pub files_done: u64,
    pub progress: Progress,
    /// Whether the kernel tells ferry when a download's connection closes.
    pub close_notices: bool,
}

#[derive(Serialize, ToSchema)]
pub struct NginxStatus {
    pub running: bool,
}

#[derive(Serialize, ToSchema)]
pub struct ProviderStatus {
    /// `local`, `tailscale` or `docker`.
    pub kind: &'static str,
    pub status: Health,
    pub detail: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct StoreStatus {
    /// `embedded` or `redis`.
    pub kind: &'static str,
    /// `ok` or `down`.
    pub status: Health,
    /// Null when the store could not be asked.
    pub open_links: Option<usize>,
    /// With shared state: the open links whose tunnel is on this instance.
    pub owned_links: Option<usize>,
    /// With shared state: this instance's name.
    pub instance: Option<String>,
    pub durable: bool,
    pub durability: String,
}

pub fn router() -> Router<AppState> {
    Router::new().route("/admin/monitor/status", get(status))
}

/// Monitor lag and counters, nginx, provider, store, host.
#[utoipa::path(get, path = "/admin/monitor/status", tag = "admin",
    responses((status = 200, description = "Status of the parts", body = StatusReport), (status = 401, description = "Authentication required", body = ErrorBody)))]
pub async fn status(State(s): State<AppState>) -> Json<StatusReport> {
    let store = store_status(&s.links).await;
    let host = s.host.clone();
    let (links, configured) = (s.links.clone(), s.config.data_dir.clone());
    let host = tokio::task::spawn_blocking(move || {
        // The disk is where the data dir really is (a symlinked data dir points at another mount).
        let data_dir = links.data().real_path().unwrap_or(configured);
        host.sample(&data_dir)
    })
    .await
    .ok();
    let m = &s.monitor;
    let provider = s.links.provider().health();
    Json(StatusReport {
        monitor: MonitorStatus {
            lag_ms: m.last_lag_ms.load(Ordering::Relaxed),
            lines: m.lines.load(Ordering::Relaxed),
            bad_lines: m.bad_lines.load(Ordering::Relaxed),
            files_done: m.files_done.load(Ordering::Relaxed),
            progress: Progress::of(&s.links),
            close_notices: s.links.close_notices(),
        },
        nginx: NginxStatus {
            running: s.nginx_running.load(Ordering::SeqCst),
        },
        provider: ProviderStatus {
            kind: s.provider,
            status: provider.status,
            detail: provider.detail,
        },
        store,
        host,
    })
}

async fn store_status(links: &Links) -> StoreStatus {
    let store = links.store();
    let up = store.ping().await.is_ok();
    let open = store.count_open().await.ok();
    // With shared state: how many open links have their tunnel on this instance.
    let owned = match links.owned_here().await {
        Ok(Some(mine)) => Some(mine.len()),
        Ok(None) => open,
        Err(_) => None,
    };
    let (durable, durability) = store.durability();
    StoreStatus {
        kind: store.kind(),
        status: Health::up_or_down(up),
        open_links: open,
        owned_links: owned,
        instance: links.peers().map(|p| p.instance().to_string()),
        durable,
        durability,
    }
}
