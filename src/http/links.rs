//! Links over HTTP: create (`POST /api/links`, `POST /generate-link`), list open ones, stats,
//! terminate, history, cleanup.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::AppState;
use super::error::ApiError;
use super::json::JsonObject;
use super::json::{ApiPath, ApiQuery};
use crate::links::path::RelPath;
use crate::links::{LinkError, NewLink, TunnelId};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/audit", get(audit))
        .route("/api/links", post(create))
        .route("/generate-link", post(generate_link))
        .route("/admin/tunnels", get(list))
        .route("/admin/tunnels/{id}", delete(terminate))
        .route("/admin/tunnels/{id}/stats", get(stats))
        .route("/admin/tunnels/{id}/qr.svg", get(qr))
        .route("/admin/history", get(history))
        .route("/admin/cleanup", post(cleanup))
}

/// What `POST /api/links` accepts.
// `deny_unknown_fields` tells the document that no other field is allowed; `read` refuses them.
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateLinkRequest {
    /// Path of a regular file, relative to the data dir.
    #[schema(value_type = String)]
    pub file_path: RelPath,
    /// 1 to `MAX_TUNNEL_SECONDS`; defaults to `MAX_TUNNEL_SECONDS`.
    #[schema(minimum = 1)]
    pub expires_in_seconds: Option<u64>,
    /// Defaults to 1.
    #[schema(minimum = 1)]
    pub max_downloads: Option<u32>,
    #[schema(max_length = 500)]
    pub note: Option<String>,
    #[schema(minimum = 1)]
    pub rate_limit_bytes_per_second: Option<u64>,
}

impl CreateLinkRequest {
    const FIELDS: &[&str] = &[
        "file_path",
        "expires_in_seconds",
        "max_downloads",
        "note",
        "rate_limit_bytes_per_second",
    ];

    /// Reads the body field by field, so that an error names the field it is about. The ranges
    /// (expiry, downloads, note length) are checked when the link is made.
    fn read(body: &JsonObject) -> Result<Self, ApiError> {
        body.only(Self::FIELDS)?;
        let file_path = body
            .string("file_path")?
            .ok_or_else(|| ApiError::BadRequest("file_path: required".into()))?;
        let file_path = RelPath::parse(file_path).map_err(|e| ApiError::BadRequest(format!("file_path: {e}")))?;
        let max_downloads = match body.uint("max_downloads")? {
            None => None,
            Some(n) => Some(u32::try_from(n).map_err(|_| ApiError::BadRequest("max_downloads: too large".into()))?),
        };
        Ok(CreateLinkRequest {
            file_path,
            expires_in_seconds: body.uint("expires_in_seconds")?,
            max_downloads,
            note: body.string("note")?.map(String::from),
            rate_limit_bytes_per_second: body.uint("rate_limit_bytes_per_second")?,
        })
    }
}

impl From<CreateLinkRequest> for NewLink {
    fn from(r: CreateLinkRequest) -> Self {
        NewLink {
            file_path: r.file_path,
            expires_in: r.expires_in_seconds,
            max_downloads: r.max_downloads,
            note: r.note,
            rate_limit_bytes_per_second: r.rate_limit_bytes_per_second,
        }
    }
}

/// The same as `POST /api/links` (the route of the system ferry replaces).
#[utoipa::path(post, path = "/generate-link", tag = "links",
    request_body(content = CreateLinkRequest, content_type = "application/json"),
    responses((status = 201, description = "The link; `download_url` is all a recipient needs", body = crate::links::Created),
              (status = 400, description = "Bad input; the message names the field", body = crate::http::error::ErrorBody),
              (status = 404, description = "No such file", body = crate::http::error::ErrorBody),
              (status = 413, description = "Body too large", body = crate::http::error::ErrorBody),
              (status = 415, description = "Not JSON", body = crate::http::error::ErrorBody),
              (status = 502, description = "The tunnel could not be opened", body = crate::http::error::ErrorBody), (status = 401, description = "Authentication required", body = crate::http::error::ErrorBody), (status = 503, description = "State store unavailable", body = crate::http::error::ErrorBody)))]
pub async fn generate_link(
    s: State<AppState>,
    peer: ConnectInfo<SocketAddr>,
    body: JsonObject,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    create(s, peer, body).await
}

/// Share a file: create a link.
#[utoipa::path(post, path = "/api/links", tag = "links",
    request_body(content = CreateLinkRequest, content_type = "application/json"),
    responses((status = 201, description = "The link; `download_url` is all a recipient needs", body = crate::links::Created),
              (status = 400, description = "Bad input; the message names the field", body = crate::http::error::ErrorBody),
              (status = 404, description = "No such file", body = crate::http::error::ErrorBody),
              (status = 413, description = "Body too large", body = crate::http::error::ErrorBody),
              (status = 415, description = "Not JSON", body = crate::http::error::ErrorBody),
              (status = 502, description = "The tunnel could not be opened", body = crate::http::error::ErrorBody), (status = 401, description = "Authentication required", body = crate::http::error::ErrorBody), (status = 503, description = "State store unavailable", body = crate::http::error::ErrorBody)))]
pub async fn create(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: JsonObject,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let req = CreateLinkRequest::read(&body)?;
    let (created, _) = s.links.create(req.into(), Some(&peer.ip().to_string())).await?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::to_value(created).map_err(|e| ApiError::Internal(e.to_string()))?),
    ))
}

/// Open links.
#[utoipa::path(get, path = "/admin/tunnels", tag = "links",
    responses((status = 200, description = "Open links, newest first", body = crate::http::openapi::TunnelList), (status = 401, description = "Authentication required", body = crate::http::error::ErrorBody), (status = 503, description = "State store unavailable", body = crate::http::error::ErrorBody)))]
pub async fn list(State(s): State<AppState>) -> Result<Json<Tunnels>, ApiError> {
    let links = s.links.open_links().await?;
    let tunnels = links.iter().map(|l| s.links.view(l)).collect();
    Ok(Json(Tunnels { tunnels }))
}

/// A list of links, serialized straight from the views (through a `Value`, 10,000 links took
/// twice as long).
#[derive(serde::Serialize)]
pub struct Tunnels {
    tunnels: Vec<crate::links::TunnelView>,
}

/// One link (open or closed), its recent requests, and its URL again.
#[utoipa::path(get, path = "/admin/tunnels/{id}/stats", tag = "links",
    params(("id" = String, Path, description = "tunnel_id")),
    responses((status = 200, description = "The link", body = crate::http::openapi::Stats),
              (status = 404, description = "Unknown id", body = crate::http::error::ErrorBody), (status = 401, description = "Authentication required", body = crate::http::error::ErrorBody), (status = 503, description = "State store unavailable", body = crate::http::error::ErrorBody)))]
pub async fn stats(State(s): State<AppState>, ApiPath(id): ApiPath<String>) -> Result<Json<Value>, ApiError> {
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
            "method": if r.what == crate::links::rules::Use::Head { "HEAD" } else { "GET" },
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

/// The link's download URL as a QR code, for a phone to scan.
#[utoipa::path(get, path = "/admin/tunnels/{id}/qr.svg", tag = "links",
    params(("id" = String, Path, description = "tunnel_id")),
    responses((status = 200, description = "SVG image", content_type = "image/svg+xml", body = String),
              (status = 404, description = "Unknown id", body = crate::http::error::ErrorBody),
              (status = 401, description = "Authentication required", body = crate::http::error::ErrorBody),
              (status = 503, description = "State store unavailable", body = crate::http::error::ErrorBody)))]
pub async fn qr(State(s): State<AppState>, ApiPath(id): ApiPath<String>) -> Result<impl IntoResponse, ApiError> {
    let id = TunnelId::parse(&id).map_err(|_| ApiError::NotFound("unknown tunnel id".into()))?;
    let link = s
        .links
        .store()
        .get(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound("unknown tunnel id".into()))?;
    let code = qrcode::QrCode::with_error_correction_level(s.links.download_url(&link), qrcode::EcLevel::M)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let svg = code
        .render::<qrcode::render::svg::Color>()
        .min_dimensions(220, 220)
        .quiet_zone(true)
        .build();
    Ok((
        [
            (axum::http::header::CONTENT_TYPE, "image/svg+xml"),
            (axum::http::header::CACHE_CONTROL, "no-store"),
        ],
        svg,
    ))
}

/// End an open link now.
#[utoipa::path(delete, path = "/admin/tunnels/{id}", tag = "links",
    params(("id" = String, Path, description = "tunnel_id")),
    responses((status = 204, description = "Closed as terminated"),
              (status = 404, description = "No open link with this id", body = crate::http::error::ErrorBody), (status = 401, description = "Authentication required", body = crate::http::error::ErrorBody), (status = 503, description = "State store unavailable", body = crate::http::error::ErrorBody)))]
pub async fn terminate(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ApiPath(id): ApiPath<String>,
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
pub struct HistoryQuery {
    limit: Option<String>,
}

/// Closed links, newest first.
#[utoipa::path(get, path = "/admin/history", tag = "links",
    params(("limit" = Option<String>, Query, description = "1 to 10000 (default 100)")),
    responses((status = 200, description = "Closed links", body = crate::http::openapi::TunnelList),
              (status = 400, description = "Bad limit", body = crate::http::error::ErrorBody), (status = 401, description = "Authentication required", body = crate::http::error::ErrorBody), (status = 503, description = "State store unavailable", body = crate::http::error::ErrorBody)))]
pub async fn history(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<HistoryQuery>,
) -> Result<Json<Tunnels>, ApiError> {
    let limit = match q.limit.as_deref() {
        None => 100,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=10_000).contains(n))
            .ok_or_else(|| ApiError::BadRequest("limit: must be a whole number from 1 to 10000".into()))?,
    };
    let links = s.links.store().history(limit).await?;
    let tunnels = links.iter().map(|l| s.links.view(l)).collect();
    Ok(Json(Tunnels { tunnels }))
}

/// Close everything past its deadline and remove every orphan.
#[utoipa::path(post, path = "/admin/cleanup", tag = "links",
    responses((status = 200, description = "What was closed or removed", body = crate::http::openapi::Cleanup), (status = 401, description = "Authentication required", body = crate::http::error::ErrorBody), (status = 503, description = "State store unavailable", body = crate::http::error::ErrorBody)))]
pub async fn cleanup(
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
pub struct AuditQuery {
    event: Option<String>,
    limit: Option<String>,
}

/// Admin actions and public refusals, newest first.
#[utoipa::path(get, path = "/admin/audit", tag = "admin",
    params(("event" = Option<String>, Query, description = "Only this event (e.g. refused, link.created)"),
           ("limit" = Option<String>, Query, description = "1 to 10000 (default 100)")),
    responses((status = 200, description = "Audit events", body = crate::http::openapi::AuditList),
              (status = 400, description = "Bad limit", body = crate::http::error::ErrorBody), (status = 401, description = "Authentication required", body = crate::http::error::ErrorBody), (status = 503, description = "State store unavailable", body = crate::http::error::ErrorBody)))]
pub async fn audit(State(s): State<AppState>, ApiQuery(q): ApiQuery<AuditQuery>) -> Result<Json<Value>, ApiError> {
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
