//! `GET /api/files?path=<dir>&q=<search>`: browse and search the data dir.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use super::json::ApiQuery;
use crate::links::path::{PathError, RelPath};

pub fn router() -> Router<AppState> {
    Router::new().route("/api/files", get(files))
}

#[derive(Deserialize)]
pub struct FilesQuery {
    path: Option<String>,
    q: Option<String>,
}

/// Browse (`path`) or search by name (`q`) the data dir.
#[utoipa::path(get, path = "/api/files", tag = "files",
    params(("path" = Option<String>, Query, description = "Folder relative to the data dir"),
           ("q" = Option<String>, Query, description = "Case-insensitive part of a name, searched below `path`")),
    responses((status = 200, description = "Entries", body = crate::http::openapi::FileList),
              (status = 400, description = "Bad path", body = crate::http::openapi::ErrorBody),
              (status = 404, description = "No such folder", body = crate::http::openapi::ErrorBody), (status = 401, description = "Authentication required", body = crate::http::openapi::ErrorBody), (status = 503, description = "Data dir or state store unavailable", body = crate::http::openapi::ErrorBody)))]
pub async fn files(State(s): State<AppState>, ApiQuery(q): ApiQuery<FilesQuery>) -> Result<Json<Value>, ApiError> {
    let dir = match q.path.as_deref() {
        None | Some("") | Some("/") => RelPath::root(),
        Some(p) => RelPath::parse(p).map_err(|e| ApiError::BadRequest(format!("path: {e}")))?,
    };
    let data = s.links.data();
    let entries = match q.q.as_deref().map(str::trim).filter(|q| !q.is_empty()) {
        Some(needle) => tokio::task::block_in_place(|| data.search(&dir, needle, 500)),
        None => tokio::task::block_in_place(|| data.list(&dir)),
    }
    .map_err(|e| match e {
        PathError::NotFound => ApiError::NotFound(format!("path: {e}")),
        PathError::Unavailable(_) => ApiError::DataDirUnavailable(e.to_string()),
        PathError::Io(m) => ApiError::Internal(m),
        e => ApiError::BadRequest(format!("path: {e}")),
    })?;
    let entries: Vec<Value> = entries
        .into_iter()
        .map(|e| {
            let ms = u64::try_from(e.modified_ns / 1_000_000).unwrap_or(0);
            json!({"name": e.name, "path": e.path.as_str(), "size": e.size, "is_dir": e.is_dir, "modified": crate::links::rfc3339(ms)})
        })
        .collect();
    Ok(Json(json!({"path": dir.as_str(), "entries": entries})))
}
