//! Links over HTTP: create (`POST /api/links`, `POST /generate-link`), list open ones, stats,
//! terminate, history, cleanup.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::caller::Caller;
use super::error::{ApiError, ErrorBody};
use super::json::JsonObject;
use super::json::{ApiPath, ApiQuery};
use super::state::AppState;
use crate::data_dir::RelPath;
use crate::links::{Created, LinkError, NewLink, NewPolicy, TunnelView};
use crate::model::{InFlight, RequestSeen, TunnelId, Use, rfc3339};
use crate::store::audit::AuditRecord;

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
    /// Path of a regular file, or of a folder to share as one ZIP, relative to the data dir.
    /// Give either this or `file_paths`.
    #[schema(value_type = String)]
    pub file_path: RelPath,
    /// Several files and folders, relative to the data dir, to share as one ZIP.
    #[schema(value_type = Option<Vec<String>>)]
    pub file_paths: Option<Vec<RelPath>>,
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
    /// Recipients are asked for it (HTTP Basic; the user name is ignored).
    #[schema(min_length = 1, max_length = 1024)]
    pub password: Option<String>,
    /// Address ranges (`192.0.2.0/24`, `2001:db8::/64`) allowed to use the link; empty for any.
    pub allow_cidrs: Option<Vec<String>>,
    /// This link's own ntfy topic or webhook (http or https).
    pub notify_url: Option<String>,
}

impl CreateLinkRequest {
    const FIELDS: &[&str] = &[
        "file_path",
        "file_paths",
        "expires_in_seconds",
        "max_downloads",
        "note",
        "rate_limit_bytes_per_second",
        "password",
        "allow_cidrs",
        "notify_url",
    ];

    /// Reads the body field by field, so that an error names the field it is about. The ranges
    /// (expiry, downloads, note length) are checked when the link is made.
    fn read(body: &JsonObject) -> Result<Self, ApiError> {
        body.only(Self::FIELDS)?;
        let (file_path, file_paths) = Self::paths(body)?;
        let policy = super::edit::new_policy(body)?;
        let max_downloads = match body.uint("max_downloads")? {
            None => None,
            Some(n) => Some(u32::try_from(n).map_err(|_| ApiError::BadRequest("max_downloads: too large".into()))?),
        };
        Ok(CreateLinkRequest {
            file_path,
            file_paths,
            expires_in_seconds: body.uint("expires_in_seconds")?,
            max_downloads,
            note: body.string("note")?.map(String::from),
            rate_limit_bytes_per_second: body.uint("rate_limit_bytes_per_second")?,
            password: policy.password,
            allow_cidrs: policy.allow_cidrs,
            notify_url: policy.notify_url,
        })
    }
}

impl CreateLinkRequest {
    /// `file_path`, or `file_paths` (then `file_path` stands for the data dir itself and is unused).
    fn paths(body: &JsonObject) -> Result<(RelPath, Option<Vec<RelPath>>), ApiError> {
        let bad = |field: &str, e: crate::data_dir::PathError| ApiError::BadRequest(format!("{field}: {e}"));
        match (body.string("file_path")?, body.strings("file_paths")?) {
            (Some(_), Some(_)) => Err(ApiError::BadRequest(
                "file_paths: give either file_path or file_paths, not both".into(),
            )),
            (None, None) => Err(ApiError::BadRequest("file_path: required".into())),
            (Some(p), None) => Ok((RelPath::parse(p).map_err(|e| bad("file_path", e))?, None)),
            (None, Some(ps)) => {
                let paths = ps
                    .into_iter()
                    .map(|p| RelPath::parse(p).map_err(|e| bad("file_paths", e)))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok((RelPath::root(), Some(paths)))
            }
        }
    }
}

impl From<CreateLinkRequest> for NewLink {
    fn from(r: CreateLinkRequest) -> Self {
        NewLink {
            file_path: r.file_path,
            file_paths: r.file_paths,
            expires_in: r.expires_in_seconds,
            max_downloads: r.max_downloads,
            note: r.note,
            rate_limit_bytes_per_second: r.rate_limit_bytes_per_second,
            policy: NewPolicy {
                password: r.password,
                allow_cidrs: r.allow_cidrs,
                notify_url: r.notify_url,
            },
        }
    }
}

/// The same as `POST /api/links` (the route of the system ferry replaces).
#[utoipa::path(post, path = "/generate-link", tag = "links",
    request_body(content = CreateLinkRequest, content_type = "application/json"),
    responses((status = 201, description = "The link; `download_url` is all a recipient needs", body = Created),
              (status = 400, description = "Bad input; the message names the field", body = ErrorBody),
              (status = 404, description = "No such file", body = ErrorBody),
              (status = 413, description = "Body too large", body = ErrorBody),
              (status = 415, description = "Not JSON", body = ErrorBody),
              (status = 502, description = "The tunnel could not be opened", body = ErrorBody), (status = 401, description = "Authentication required", body = ErrorBody), (status = 503, description = "State store unavailable", body = ErrorBody)))]
pub async fn generate_link(
    s: State<AppState>,
    caller: Caller,
    body: JsonObject,
) -> Result<(StatusCode, Json<Created>), ApiError> {
    create(s, caller, body).await
}

/// Share a file: create a link.
#[utoipa::path(post, path = "/api/links", tag = "links",
    request_body(content = CreateLinkRequest, content_type = "application/json"),
    responses((status = 201, description = "The link; `download_url` is all a recipient needs", body = Created),
              (status = 400, description = "Bad input; the message names the field", body = ErrorBody),
              (status = 404, description = "No such file", body = ErrorBody),
              (status = 413, description = "Body too large", body = ErrorBody),
              (status = 415, description = "Not JSON", body = ErrorBody),
              (status = 502, description = "The tunnel could not be opened", body = ErrorBody), (status = 401, description = "Authentication required", body = ErrorBody), (status = 503, description = "State store unavailable", body = ErrorBody)))]
pub async fn create(
    State(s): State<AppState>,
    caller: Caller,
    body: JsonObject,
) -> Result<(StatusCode, Json<Created>), ApiError> {
    let req = CreateLinkRequest::read(&body)?;
    match &req.file_paths {
        Some(paths) => paths.iter().try_for_each(|p| caller.confine(&s, "file_paths", p))?,
        None => caller.confine(&s, "file_path", &req.file_path)?,
    }
    let (created, _) = s.links.create(req.into(), Some(&caller.audit_name())).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// Open links.
#[utoipa::path(get, path = "/admin/tunnels", tag = "links",
    responses((status = 200, description = "Open links, newest first", body = TunnelList), (status = 401, description = "Authentication required", body = ErrorBody), (status = 503, description = "State store unavailable", body = ErrorBody)))]
pub async fn list(State(s): State<AppState>) -> Result<Json<TunnelList>, ApiError> {
    let links = s.links.open_links().await?;
    let tunnels = links.iter().map(|l| s.links.view(l)).collect();
    Ok(Json(TunnelList { tunnels }))
}

/// Links, newest first.
// The list is serialized straight from the views, because a `serde_json::Value` in between would
// slow down a long list.
#[derive(Serialize, ToSchema)]
pub struct TunnelList {
    pub tunnels: Vec<TunnelView>,
}

/// The body of `GET /admin/tunnels/{id}/stats`: the link, its URL again, and its recent requests
/// (those that ended, then those still running).
#[derive(Serialize, ToSchema)]
pub struct Stats {
    pub tunnel: TunnelView,
    pub download_url: String,
    pub requests: Vec<RequestView>,
}

/// One request for a link's file.
#[derive(Serialize, ToSchema)]
pub struct RequestView {
    pub time: String,
    pub client: String,
    pub user_agent: String,
    pub method: String,
    /// Null while the request is running.
    pub status: Option<u16>,
    /// Body bytes sent so far.
    pub bytes: u64,
    /// Bytes read from the client: request line, headers and body (uploads); 0 while running.
    pub bytes_received: u64,
    /// The `Range` header; null without one, and while the request is running.
    pub range: Option<String>,
    pub completed: bool,
    pub in_flight: bool,
}

impl From<&RequestSeen> for RequestView {
    /// A request that ended, as the access log told it.
    fn from(r: &RequestSeen) -> Self {
        RequestView {
            time: rfc3339(r.time_ms),
            client: r.client.address.to_string(),
            user_agent: r.client.user_agent.to_string(),
            method: r.method.to_string(),
            status: Some(r.status),
            bytes: r.bytes,
            bytes_received: r.received,
            range: r.range.as_deref().map(String::from),
            completed: r.completed,
            in_flight: false,
        }
    }
}

impl From<&InFlight> for RequestView {
    /// A request still running.
    fn from(r: &InFlight) -> Self {
        let method = if r.what == Use::Head { "HEAD" } else { "GET" };
        RequestView {
            time: rfc3339(r.since_ms),
            client: r.client.address.to_string(),
            user_agent: r.client.user_agent.to_string(),
            method: method.to_string(),
            status: None,
            bytes: r.delivered,
            bytes_received: 0,
            range: None,
            completed: false,
            in_flight: true,
        }
    }
}

/// One link (open or closed), its recent requests, and its URL again.
#[utoipa::path(get, path = "/admin/tunnels/{id}/stats", tag = "links",
    params(("id" = String, Path, description = "tunnel_id")),
    responses((status = 200, description = "The link", body = Stats),
              (status = 404, description = "Unknown id", body = ErrorBody), (status = 401, description = "Authentication required", body = ErrorBody), (status = 503, description = "State store unavailable", body = ErrorBody)))]
pub async fn stats(State(s): State<AppState>, ApiPath(id): ApiPath<String>) -> Result<Json<Stats>, ApiError> {
    let id = TunnelId::parse(&id).map_err(|_| ApiError::NotFound("unknown tunnel id".into()))?;
    let link = s
        .links
        .store()
        .get(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound("unknown tunnel id".into()))?;
    let done = link.requests.iter().map(RequestView::from);
    let running = link.inflight.iter().map(RequestView::from);
    Ok(Json(Stats {
        tunnel: s.links.view(&link),
        download_url: s.links.download_url(&link),
        requests: done.chain(running).collect(),
    }))
}

/// The link's download URL as a QR code, for a phone to scan.
#[utoipa::path(get, path = "/admin/tunnels/{id}/qr.svg", tag = "links",
    params(("id" = String, Path, description = "tunnel_id")),
    responses((status = 200, description = "SVG image", content_type = "image/svg+xml", body = String),
              (status = 404, description = "Unknown id", body = ErrorBody),
              (status = 401, description = "Authentication required", body = ErrorBody),
              (status = 503, description = "State store unavailable", body = ErrorBody)))]
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
              (status = 404, description = "No open link with this id", body = ErrorBody), (status = 401, description = "Authentication required", body = ErrorBody), (status = 503, description = "State store unavailable", body = ErrorBody)))]
pub async fn terminate(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    match s.links.terminate(&id).await {
        Ok(()) => {
            s.links
                .audit("link.terminated", Some(&caller.audit_name()), Some(&id), None)
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
    responses((status = 200, description = "Closed links", body = TunnelList),
              (status = 400, description = "Bad limit", body = ErrorBody), (status = 401, description = "Authentication required", body = ErrorBody), (status = 503, description = "State store unavailable", body = ErrorBody)))]
pub async fn history(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<HistoryQuery>,
) -> Result<Json<TunnelList>, ApiError> {
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
    Ok(Json(TunnelList { tunnels }))
}

/// The body of `POST /admin/cleanup`: the ids of the links it closed.
#[derive(Serialize, ToSchema)]
pub struct Cleanup {
    #[schema(value_type = Vec<String>)]
    pub closed: Vec<TunnelId>,
}

/// Close everything past its deadline and remove every orphan.
#[utoipa::path(post, path = "/admin/cleanup", tag = "links",
    responses((status = 200, description = "What was closed or removed", body = Cleanup), (status = 401, description = "Authentication required", body = ErrorBody), (status = 503, description = "State store unavailable", body = ErrorBody)))]
pub async fn cleanup(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Result<Json<Cleanup>, ApiError> {
    let closed = s.links.reconcile().await?;
    let detail = Some(format!("closed {}", closed.len()));
    s.links
        .audit("cleanup", Some(&peer.ip().to_string()), None, detail)
        .await;
    Ok(Json(Cleanup { closed }))
}

/// The body of `GET /admin/audit`.
#[derive(Serialize, ToSchema)]
pub struct AuditList {
    pub events: Vec<AuditEvent>,
}

/// An admin action or a public refusal.
#[derive(Serialize, ToSchema)]
pub struct AuditEvent {
    pub time: String,
    pub event: String,
    pub client: Option<String>,
    pub tunnel_id: Option<String>,
    pub detail: Option<String>,
}

impl From<AuditRecord> for AuditEvent {
    fn from(r: AuditRecord) -> Self {
        AuditEvent {
            time: rfc3339(r.time_ms),
            event: r.event,
            client: r.client,
            tunnel_id: r.tunnel_id,
            detail: r.detail,
        }
    }
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
    responses((status = 200, description = "Audit events", body = AuditList),
              (status = 400, description = "Bad limit", body = ErrorBody), (status = 401, description = "Authentication required", body = ErrorBody), (status = 503, description = "State store unavailable", body = ErrorBody)))]
pub async fn audit(State(s): State<AppState>, ApiQuery(q): ApiQuery<AuditQuery>) -> Result<Json<AuditList>, ApiError> {
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
    let events = records.into_iter().map(AuditEvent::from).collect();
    Ok(Json(AuditList { events }))
}
