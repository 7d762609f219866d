//! `GET /admin/config`: the effective configuration, secrets redacted, with warnings.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::error::ErrorBody;
use super::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/admin/config", get(config))
}

/// The body of `GET /admin/config`.
#[derive(Serialize, ToSchema)]
pub struct ConfigView {
    #[schema(value_type = Object)]
    pub config: Value,
    pub warnings: Vec<String>,
}

/// The effective configuration, secrets redacted, and warnings for risky values.
#[utoipa::path(get, path = "/admin/config", tag = "admin",
    responses((status = 200, description = "Configuration", body = ConfigView), (status = 401, description = "Authentication required", body = ErrorBody)))]
pub async fn config(State(s): State<AppState>) -> Json<ConfigView> {
    Json(ConfigView {
        config: s.config.redacted(),
        warnings: s.config.warnings(),
    })
}
