//! `GET /admin/config`: the effective configuration, secrets redacted, with warnings.

use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use super::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/admin/config", get(config))
}

/// The effective configuration, secrets redacted, and warnings for risky values.
#[utoipa::path(get, path = "/admin/config", tag = "admin",
    responses((status = 200, description = "Configuration", body = crate::http::openapi::ConfigView), (status = 401, description = "Authentication required", body = crate::http::error::ErrorBody)))]
pub async fn config(State(s): State<AppState>) -> Json<Value> {
    let c: &Arc<crate::config::Config> = &s.config;
    Json(json!({"config": c.redacted(), "warnings": c.warnings()}))
}
