//! `GET /admin/monitor/status`: how the parts are doing: the log monitor (lag, counters), nginx,
//! the provider, the store, and the host (CPU, memory, free space where the data dir lives).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};
use sysinfo::{Disks, System};

use super::AppState;
use crate::health::Health;

/// The host sampler: CPU usage is a difference between two refreshes, so one `System` lives on.
/// `None` where the platform gives no system information.
pub struct Host(Mutex<Option<System>>);

impl Host {
    pub fn new() -> Arc<Self> {
        let sys = System::new().ok().map(|mut s| {
            s.refresh_cpu_usage();
            s
        });
        Arc::new(Host(Mutex::new(sys)))
    }

    fn sample(&self, data_dir: &std::path::Path) -> Value {
        let (cpu, total, used) = match self.0.lock().expect("host mutex").as_mut() {
            Some(sys) => {
                sys.refresh_cpu_usage();
                sys.refresh_memory();
                (
                    Some(sys.global_cpu_usage()),
                    Some(sys.total_memory()),
                    Some(sys.used_memory()),
                )
            }
            None => (None, None, None),
        };
        let disks = Disks::new_with_refreshed_list().ok();
        let disk = disks
            .iter()
            .flat_map(|d| d.iter())
            .filter(|d| data_dir.starts_with(d.mount_point()))
            .max_by_key(|d| d.mount_point().as_os_str().len());
        json!({
            "cpu_percent": cpu.map(|c| (f64::from(c) * 10.0).round() / 10.0),
            "memory_total_bytes": total,
            "memory_used_bytes": used,
            "data_dir_free_bytes": disk.map(|d| d.available_space()),
            "data_dir_total_bytes": disk.map(|d| d.total_space()),
        })
    }
}

pub fn router() -> Router<AppState> {
    Router::new().route("/admin/monitor/status", get(status))
}

/// Monitor lag and counters, nginx, provider, store, host.
#[utoipa::path(get, path = "/admin/monitor/status", tag = "admin",
    responses((status = 200, description = "Status of the parts", body = Object), (status = 401, description = "Authentication required", body = crate::http::error::ErrorBody)))]
pub async fn status(State(s): State<AppState>) -> Json<Value> {
    let store_ok = s.links.store().ping().await.is_ok();
    let open = s.links.store().count_open().await.ok();
    // With shared state: how many open links have their tunnel on this instance.
    let owned = match s.links.owned_here().await {
        Ok(Some(mine)) => Some(mine.len()),
        Ok(None) => open,
        Err(_) => None,
    };
    let (durable, durability) = s.links.store().durability();
    let m = &s.monitor;
    let host = s.host.clone();
    let (links, configured) = (s.links.clone(), s.config.data_dir.clone());
    let host = tokio::task::spawn_blocking(move || {
        // The disk is where the data dir really is (a symlinked data dir points at another mount).
        let data_dir = links.data().real_path().unwrap_or(configured);
        host.sample(&data_dir)
    })
    .await
    .unwrap_or(Value::Null);
    let provider = s.links.provider().health();
    Json(json!({
        "monitor": {
            "lag_ms": m.last_lag_ms.load(Ordering::Relaxed),
            "lines": m.lines.load(Ordering::Relaxed),
            "bad_lines": m.bad_lines.load(Ordering::Relaxed),
            "files_done": m.files_done.load(Ordering::Relaxed),
            "progress": if s.links.socket_progress() { "socket" } else { "log" },
            "close_notices": s.links.close_notices(),
        },
        "nginx": {"running": s.nginx_running.load(Ordering::SeqCst)},
        "provider": {"kind": s.provider, "status": provider.status, "detail": provider.detail},
        "store": {
            "kind": s.links.store().kind(),
            "status": Health::up_or_down(store_ok),
            "open_links": open,
            "owned_links": owned,
            "instance": s.links.peers().map(|p| p.instance()),
            "durable": durable,
            "durability": durability,
        },
        "host": host,
    }))
}
