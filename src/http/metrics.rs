//! `GET /metrics`: Prometheus text, rendered by the `metrics` exporter from what the parts record
//! (links created and closed by reason, bytes served, downloads completed, refusals by reason,
//! monitor lag, provider open and close latency, each `tailscale` CLI call's latency); the
//! open-links gauge is read from the store on each scrape.

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use super::error::{ApiError, ErrorBody};
use super::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics))
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "admin",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String), (status = 401, description = "Authentication required", body = ErrorBody), (status = 503, description = "State store unavailable", body = ErrorBody)))]
pub async fn metrics(State(s): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let open = s.links.store().count_open().await?;
    metrics::gauge!("ferry_links_open").set(open as f64);
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        s.metrics.render(),
    ))
}
