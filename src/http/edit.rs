//! Changing a live link (SPEC §13): `PATCH /admin/tunnels/{id}` and `POST
//! /admin/tunnels/{id}/rotate`, and the policy fields (`password`, `allow_cidrs`, `notify_url`)
//! that new links take as well.

use axum::extract::State;
use axum::routing::{patch, post};
use axum::{Json, Router};
use utoipa::ToSchema;

use super::caller::Caller;
use super::error::{ApiError, ErrorBody};
use super::json::{ApiPath, JsonObject};
use super::state::AppState;
use crate::links::{LinkEdit, LinkError, NewPolicy, Rotated, TunnelView};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/tunnels/{id}", patch(edit))
        .route("/admin/tunnels/{id}/rotate", post(rotate))
}

/// The fields about who may use a link and whom it tells, as `POST /api/links` and `POST
/// /api/uploads` take them.
pub const POLICY_FIELDS: &[&str] = &["password", "allow_cidrs", "notify_url"];

/// Reads a new link's `password`, `allow_cidrs` and `notify_url`.
pub fn new_policy(body: &JsonObject) -> Result<NewPolicy, ApiError> {
    Ok(NewPolicy {
        password: body.string("password")?.map(String::from),
        allow_cidrs: body
            .strings("allow_cidrs")?
            .map(|v| v.into_iter().map(String::from).collect()),
        notify_url: body.string("notify_url")?.map(String::from),
    })
}

/// What `PATCH /admin/tunnels/{id}` accepts: any of these fields. `null` removes a password, a
/// rate limit, a note, the allowed addresses or the notification URL.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct EditLinkRequest {
    /// RFC 3339. Up to the link's `max_expires_at` (its creation plus `MAX_TUNNEL_SECONDS`); now
    /// or earlier ends the link as `expired`.
    expires_at: Option<String>,
    /// Not below the downloads completed plus those in progress.
    #[schema(minimum = 1)]
    max_downloads: Option<u32>,
    #[schema(minimum = 1)]
    rate_limit_bytes_per_second: Option<u64>,
    #[schema(max_length = 500)]
    note: Option<String>,
    /// Recipients are asked for it (HTTP Basic; the user name is ignored).
    #[schema(min_length = 1, max_length = 1024)]
    password: Option<String>,
    /// Address ranges (`192.0.2.0/24`, `2001:db8::/64`) allowed to use the link; empty for any.
    allow_cidrs: Option<Vec<String>>,
    /// This link's own ntfy topic or webhook (http or https).
    notify_url: Option<String>,
}

const EDIT_FIELDS: &[&str] = &[
    "expires_at",
    "max_downloads",
    "rate_limit_bytes_per_second",
    "note",
    "password",
    "allow_cidrs",
    "notify_url",
];

fn bad(message: String) -> ApiError {
    ApiError::BadRequest(message)
}

impl EditLinkRequest {
    fn read(body: &JsonObject) -> Result<LinkEdit, ApiError> {
        body.only(EDIT_FIELDS)?;
        let not_null = |name: &str| match body.0.get(name) {
            Some(serde_json::Value::Null) => Err(bad(format!("{name}: must not be null"))),
            _ => Ok(()),
        };
        not_null("expires_at")?;
        not_null("max_downloads")?;
        let expires_at_ms = match body.string("expires_at")? {
            None => None,
            Some(t) => {
                let at = crate::model::clock::parse_zoned(t).map_err(|e| bad(format!("expires_at: {t:?}: {e}")))?;
                let ms = at
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_err(|_| bad("expires_at: before 1970".into()))?
                    .as_millis();
                Some(u64::try_from(ms).map_err(|_| bad("expires_at: too far ahead".into()))?)
            }
        };
        let max_downloads = match body.uint("max_downloads")? {
            None => None,
            Some(n) => Some(u32::try_from(n).map_err(|_| bad("max_downloads: too large".into()))?),
        };
        let text = |name: &str| -> Result<Option<Option<String>>, ApiError> {
            Ok(body.nullable(name, JsonObject::string)?.map(|v| v.map(String::from)))
        };
        Ok(LinkEdit {
            expires_at_ms,
            max_downloads,
            rate_limit_bytes_per_second: body.nullable("rate_limit_bytes_per_second", JsonObject::uint)?,
            note: text("note")?,
            password: text("password")?,
            allow_cidrs: body
                .nullable("allow_cidrs", JsonObject::strings)?
                .map(|v| v.unwrap_or_default().into_iter().map(String::from).collect()),
            notify_url: text("notify_url")?,
        })
    }
}

fn not_open(id: &str, e: LinkError) -> ApiError {
    match e {
        LinkError::NotFound => ApiError::NotFound(format!("no link with id {id:?}")),
        e => e.into(),
    }
}

/// Change a live link; the URL stays the same.
#[utoipa::path(patch, path = "/admin/tunnels/{id}", tag = "links",
    params(("id" = String, Path, description = "tunnel_id")),
    request_body(content = EditLinkRequest, content_type = "application/json"),
    responses((status = 200, description = "The link as it is now", body = TunnelView),
              (status = 400, description = "Bad input; the message names the field", body = ErrorBody),
              (status = 404, description = "Unknown id", body = ErrorBody),
              (status = 409, description = "The link is closed", body = ErrorBody),
              (status = 413, description = "Body too large", body = ErrorBody),
              (status = 415, description = "Not JSON", body = ErrorBody),
              (status = 401, description = "Authentication required", body = ErrorBody),
              (status = 503, description = "State store unavailable", body = ErrorBody)))]
pub async fn edit(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    body: JsonObject,
) -> Result<Json<TunnelView>, ApiError> {
    let change = EditLinkRequest::read(&body)?;
    let link = s
        .links
        .edit(&id, change, Some(&caller.audit_name()))
        .await
        .map_err(|e| not_open(&id, e))?;
    Ok(Json(s.links.view(&link)))
}

/// Give a link a new token: the old URL stops working at once, the path stays.
#[utoipa::path(post, path = "/admin/tunnels/{id}/rotate", tag = "links",
    params(("id" = String, Path, description = "tunnel_id")),
    responses((status = 200, description = "The link's new URL", body = Rotated),
              (status = 404, description = "Unknown id", body = ErrorBody),
              (status = 409, description = "The link is closed", body = ErrorBody),
              (status = 401, description = "Authentication required", body = ErrorBody),
              (status = 503, description = "State store unavailable", body = ErrorBody)))]
pub async fn rotate(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Rotated>, ApiError> {
    let rotated = s
        .links
        .rotate(&id, Some(&caller.audit_name()))
        .await
        .map_err(|e| not_open(&id, e))?;
    Ok(Json(rotated))
}
