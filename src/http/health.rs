//! `GET /health`: reports whether every part that ferry depends on is working, with 503 when a
//! part is down.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use utoipa::ToSchema;

use super::state::AppState;
use super::status::Progress;
use crate::health::Health;
use crate::links::Links;

pub fn router() -> Router<AppState> {
    Router::new().route("/health", get(health))
}

/// The body of `GET /health`.
#[derive(Serialize, ToSchema)]
pub struct HealthReport {
    /// `ok` when every part is ok, and otherwise `degraded` (also when the answer is 503).
    pub status: Health,
    pub components: Components,
}

/// Each part ferry depends on, and how it is doing.
#[derive(Serialize, ToSchema)]
pub struct Components {
    pub store: StoreHealth,
    pub nginx: NginxHealth,
    pub data_dir: DataDirHealth,
    pub provider: ProviderHealth,
    pub monitor: MonitorHealth,
}

impl Components {
    fn statuses(&self) -> [Health; 5] {
        [
            self.store.status,
            self.nginx.status,
            self.data_dir.status,
            self.provider.status,
            self.monitor.status,
        ]
    }

    /// ferry as a whole: `ok` when every part is ok, and otherwise `degraded`.
    fn overall(&self) -> Health {
        Health::ok_or_degraded(self.statuses().iter().all(|h| *h == Health::Ok))
    }

    /// 503 when a part is down (only the store, nginx and the provider can be), else 200.
    fn http_status(&self) -> StatusCode {
        if self.statuses().contains(&Health::Down) {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        }
    }
}

/// The state store: `down` when it does not answer; `degraded` when it may lose a redemption in
/// a crash (it still works).
#[derive(Serialize, ToSchema)]
pub struct StoreHealth {
    pub status: Health,
    /// `embedded` or `redis`.
    pub kind: &'static str,
    pub durable: bool,
    /// One sentence on what survives a crash of the store.
    pub durability: String,
    /// With shared state: this instance's name.
    pub instance: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct NginxHealth {
    /// `ok` while nginx runs, else `down`.
    pub status: Health,
}

/// The data dir: while it cannot be read (unmounted, or its server gone), ferry is degraded.
#[derive(Serialize, ToSchema)]
pub struct DataDirHealth {
    /// `ok` or `degraded`.
    pub status: Health,
    #[schema(value_type = String)]
    pub path: PathBuf,
    /// Why it cannot be read; null while it can.
    pub detail: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ProviderHealth {
    pub status: Health,
    /// `local`, `tailscale` or `docker`.
    pub kind: &'static str,
    pub detail: Option<String>,
}

/// The access-log monitor. Without socket progress ferry still works, from the log alone; while
/// nginx cannot write its access log, no new download starts. Both are degraded, not down.
#[derive(Serialize, ToSchema)]
pub struct MonitorHealth {
    /// `ok` or `degraded`.
    pub status: Health,
    pub log_writes: LogWrites,
    pub lines: u64,
    pub bad_lines: u64,
    pub files_done: u64,
    pub lag_ms: u64,
    pub progress: Progress,
}

/// Whether nginx can write its access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogWrites {
    Ok,
    Failing,
}

/// Whether every part ferry depends on works. Open without a token.
#[utoipa::path(get, path = "/health", tag = "meta", security(()),
    responses((status = 200, description = "All parts work (status ok or degraded)", body = HealthReport),
              (status = 503, description = "The store, nginx or the provider is down", body = HealthReport)))]
pub async fn health(State(s): State<AppState>) -> (StatusCode, Json<HealthReport>) {
    let store = store_health(&s.links).await;
    let nginx = NginxHealth {
        status: Health::up_or_down(s.nginx_running.load(Ordering::SeqCst)),
    };
    let provider = s.links.provider().health();
    let provider = ProviderHealth {
        status: provider.status,
        kind: s.provider,
        detail: provider.detail,
    };
    let data_dir = data_dir_health(&s.links, s.config.data_dir.clone()).await;
    let components = Components {
        store,
        nginx,
        data_dir,
        provider,
        monitor: monitor_health(&s),
    };
    let code = components.http_status();
    let report = HealthReport {
        status: components.overall(),
        components,
    };
    (code, Json(report))
}

async fn store_health(links: &Links) -> StoreHealth {
    let store = links.store();
    let up = store.ping().await.is_ok();
    let (durable, durability) = store.durability();
    StoreHealth {
        status: match (up, durable) {
            (false, _) => Health::Down,
            (true, durable) => Health::ok_or_degraded(durable),
        },
        kind: store.kind(),
        durable,
        durability,
        instance: links.peers().map(|p| p.instance().to_string()),
    }
}

async fn data_dir_health(links: &Arc<Links>, path: PathBuf) -> DataDirHealth {
    // The data dir is looked at off the async workers, and not for long: a network mount whose
    // server is gone can hold a lookup for minutes.
    let links = Arc::clone(links);
    let look = tokio::task::spawn_blocking(move || links.data().available());
    let detail = match tokio::time::timeout(std::time::Duration::from_secs(2), look).await {
        Ok(Ok(Ok(()))) => None,
        Ok(Ok(Err(e))) => Some(e.to_string()),
        Ok(Err(e)) => Some(format!("data dir unavailable: {e}")),
        Err(_) => Some("data dir unavailable: it did not answer within 2 s".to_string()),
    };
    DataDirHealth {
        status: Health::ok_or_degraded(detail.is_none()),
        path,
        detail,
    }
}

fn monitor_health(s: &AppState) -> MonitorHealth {
    let sockets = s.links.socket_progress();
    let log_writes = !s.links.log_writes.failing();
    let m = &s.monitor;
    MonitorHealth {
        status: Health::ok_or_degraded(sockets && log_writes),
        log_writes: if log_writes { LogWrites::Ok } else { LogWrites::Failing },
        lines: m.lines.load(Ordering::Relaxed),
        bad_lines: m.bad_lines.load(Ordering::Relaxed),
        files_done: m.files_done.load(Ordering::Relaxed),
        lag_ms: m.last_lag_ms.load(Ordering::Relaxed),
        progress: Progress::of(&s.links),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every part working, on the embedded store.
    fn all_working() -> Components {
        Components {
            store: StoreHealth {
                status: Health::Ok,
                kind: "embedded",
                durable: true,
                durability: "redb, fsynced commits".into(),
                instance: None,
            },
            nginx: NginxHealth { status: Health::Ok },
            data_dir: DataDirHealth {
                status: Health::Ok,
                path: "/data".into(),
                detail: None,
            },
            provider: ProviderHealth {
                status: Health::Ok,
                kind: "local",
                detail: None,
            },
            monitor: MonitorHealth {
                status: Health::Ok,
                log_writes: LogWrites::Ok,
                lines: 0,
                bad_lines: 0,
                files_done: 0,
                lag_ms: 0,
                progress: Progress::Socket,
            },
        }
    }

    #[test]
    fn a_degraded_part_degrades_ferry_and_a_down_one_makes_it_503() {
        let c = all_working();
        assert_eq!((c.overall(), c.http_status()), (Health::Ok, StatusCode::OK));

        let mut c = all_working();
        c.monitor.status = Health::Degraded;
        assert_eq!((c.overall(), c.http_status()), (Health::Degraded, StatusCode::OK));

        for down in [
            |c: &mut Components| c.store.status = Health::Down,
            |c: &mut Components| c.nginx.status = Health::Down,
            |c: &mut Components| c.provider.status = Health::Down,
        ] {
            let mut c = all_working();
            down(&mut c);
            assert_eq!(
                (c.overall(), c.http_status()),
                (Health::Degraded, StatusCode::SERVICE_UNAVAILABLE)
            );
        }
    }

    #[test]
    fn the_body_keeps_its_field_names_and_nulls() {
        let report = HealthReport {
            status: Health::Ok,
            components: all_working(),
        };
        let body = serde_json::to_value(report).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "status": "ok",
                "components": {
                    "store": {"status": "ok", "kind": "embedded", "durable": true,
                              "durability": "redb, fsynced commits", "instance": null},
                    "nginx": {"status": "ok"},
                    "data_dir": {"status": "ok", "path": "/data", "detail": null},
                    "provider": {"status": "ok", "kind": "local", "detail": null},
                    "monitor": {"status": "ok", "log_writes": "ok", "lines": 0, "bad_lines": 0,
                                "files_done": 0, "lag_ms": 0, "progress": "socket"},
                },
            })
        );
    }
}
