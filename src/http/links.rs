//! Links over HTTP: create (`POST /api/links`, `POST /generate-link`), list open ones, stats,
//! terminate, history, cleanup.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use super::json::JsonObject;
use crate::links::path::RelPath;
use crate::links::{LinkError, NewLink, TunnelId};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/audit", get(audit))
        .route("/api/links", post(create))
        .route("/generate-link", post(create))
        .route("/admin/tunnels", get(list))
        .route("/admin/tunnels/{id}", delete(terminate))
        .route("/admin/tunnels/{id}/stats", get(stats))
        .route("/admin/history", get(history))
        .route("/admin/cleanup", post(cleanup))
}

const FIELDS: &[&str] = &[
    "file_path",
    "expires_in_seconds",
    "max_downloads",
    "note",
    "rate_limit_bytes_per_second",
];

fn new_link(body: &JsonObject) -> Result<NewLink, ApiError> {
    body.only(FIELDS)?;
    let file_path = body
        .string("file_path")?
        .ok_or_else(|| ApiError::BadRequest("file_path: required".into()))?;
    let file_path = RelPath::parse(file_path).map_err(|e| ApiError::BadRequest(format!("file_path: {e}")))?;
    let max_downloads = match body.uint("max_downloads")? {
        None => None,
        Some(n) => Some(u32::try_from(n).map_err(|_| ApiError::BadRequest("max_downloads: too large".into()))?),
    };
    Ok(NewLink {
        file_path,
        expires_in: body.uint("expires_in_seconds")?,
        max_downloads,
        note: body.string("note")?.map(String::from),
        rate_limit_bytes_per_second: body.uint("rate_limit_bytes_per_second")?,
    })
}

async fn create(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: JsonObject,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let req = new_link(&body)?;
    let (created, _) = s.links.create(req).await?;
    let detail = Some(created.file_path.clone());
    s.links
        .audit(
            "link.created",
            Some(&peer.ip().to_string()),
            Some(created.tunnel_id.as_str()),
            detail,
        )
        .await;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::to_value(created).map_err(|e| ApiError::Internal(e.to_string()))?),
    ))
}

async fn list(State(s): State<AppState>) -> Result<Json<Value>, ApiError> {
    let links = s.links.open_links().await?;
    let tunnels: Vec<_> = links.iter().map(|l| s.links.view(l)).collect();
    Ok(Json(json!({ "tunnels": tunnels })))
}

async fn stats(State(s): State<AppState>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let id = TunnelId::parse(&id).map_err(|_| ApiError::NotFound("unknown tunnel id".into()))?;
    let link = s
        .links
        .store()
        .get(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound("unknown tunnel id".into()))?;
    let done = link.requests.iter().map(|r| {
        json!({
            "time": crate::links::rfc3339(r.time_ms),
            "client": r.client.address,
            "user_agent": r.client.user_agent,
            "method": r.method,
            "status": r.status,
            "bytes": r.bytes,
            "range": r.range,
            "completed": r.completed,
            "in_flight": false,
        })
    });
    let running = link.inflight.iter().map(|r| {
        json!({
            "time": crate::links::rfc3339(r.since_ms),
            "client": r.client.address,
            "user_agent": r.client.user_agent,
            "method": if r.claims { "GET" } else { "HEAD" },
            "status": null,
            "bytes": r.delivered,
            "range": null,
            "completed": false,
            "in_flight": true,
        })
    });
    let requests: Vec<Value> = done.chain(running).collect();
    Ok(Json(json!({
        "tunnel": s.links.view(&link),
        "download_url": s.links.download_url(&link),
        "requests": requests,
    })))
}

async fn terminate(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    match s.links.terminate(&id).await {
        Ok(()) => {
            s.links
                .audit("link.terminated", Some(&peer.ip().to_string()), Some(&id), None)
                .await;
            Ok(StatusCode::NO_CONTENT)
        }
        Err(LinkError::NotFound) => Err(ApiError::NotFound(format!("no open tunnel with id {id:?}"))),
        Err(e) => Err(e.into()),
    }
}

#[derive(Deserialize)]
struct HistoryQuery {
    limit: Option<String>,
}

async fn history(State(s): State<AppState>, Query(q): Query<HistoryQuery>) -> Result<Json<Value>, ApiError> {
    let limit = match q.limit.as_deref() {
        None => 100,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=10_000).contains(n))
            .ok_or_else(|| ApiError::BadRequest("limit: must be a whole number from 1 to 10000".into()))?,
    };
    let links = s.links.store().history(limit).await?;
    let tunnels: Vec<_> = links.iter().map(|l| s.links.view(l)).collect();
    Ok(Json(json!({ "tunnels": tunnels })))
}

async fn cleanup(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Result<Json<Value>, ApiError> {
    let closed = s.links.reconcile().await?;
    let detail = Some(format!("closed {}", closed.len()));
    s.links
        .audit("cleanup", Some(&peer.ip().to_string()), None, detail)
        .await;
    Ok(Json(json!({ "closed": closed })))
}

#[derive(Deserialize)]
struct AuditQuery {
    event: Option<String>,
    limit: Option<String>,
}

async fn audit(State(s): State<AppState>, Query(q): Query<AuditQuery>) -> Result<Json<Value>, ApiError> {
    let limit = match q.limit.as_deref() {
        None => 100,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=10_000).contains(n))
            .ok_or_else(|| ApiError::BadRequest("limit: must be a whole number from 1 to 10000".into()))?,
    };
    let event = q.event.as_deref().filter(|e| !e.is_empty());
    let records = s.links.store().audit_query(event, limit).await?;
    let events: Vec<Value> = records
        .into_iter()
        .map(|r| {
            json!({
                "time": crate::links::rfc3339(r.time_ms),
                "event": r.event,
                "client": r.client,
                "tunnel_id": r.tunnel_id,
                "detail": r.detail,
            })
        })
        .collect();
    Ok(Json(json!({ "events": events })))
}
