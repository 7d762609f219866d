//! Upload links over HTTP (SPEC §12): `POST /api/uploads` makes one. What senders send goes
//! through nginx to `receive.rs`, never to the admin listener.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use utoipa::ToSchema;

use super::caller::Caller;
use super::error::{ApiError, ErrorBody};
use super::json::JsonObject;
use super::state::AppState;
use crate::data_dir::RelPath;
use crate::links::{NewPolicy, NewUpload, UploadCreated};

pub fn router() -> Router<AppState> {
    Router::new().route("/api/uploads", post(create))
}

/// What `POST /api/uploads` accepts.
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUploadRequest {
    /// The folder, relative to the data dir, that received files go into. It must be reached
    /// without a symlink, and ferry must be able to write to it.
    #[schema(value_type = String)]
    pub folder: RelPath,
    /// 1 to `MAX_TUNNEL_SECONDS`; defaults to `MAX_TUNNEL_SECONDS`.
    #[schema(minimum = 1)]
    pub expires_in_seconds: Option<u64>,
    /// How many files the link receives before it closes; defaults to 1.
    #[schema(minimum = 1, maximum = 1000)]
    pub max_files: Option<u32>,
    /// The largest file it accepts, in bytes.
    #[schema(minimum = 1, maximum = 9_223_372_036_854_775_807_u64)]
    pub max_bytes: u64,
    #[schema(max_length = 500)]
    pub note: Option<String>,
    /// Senders are asked for it (HTTP Basic; the user name is ignored).
    #[schema(min_length = 1, max_length = 1024)]
    pub password: Option<String>,
    /// Address ranges allowed to send; empty for any.
    pub allow_cidrs: Option<Vec<String>>,
    /// This link's own ntfy topic or webhook (http or https).
    pub notify_url: Option<String>,
}

impl CreateUploadRequest {
    const FIELDS: &[&str] = &[
        "folder",
        "expires_in_seconds",
        "max_files",
        "max_bytes",
        "note",
        "password",
        "allow_cidrs",
        "notify_url",
    ];

    fn read(body: &JsonObject) -> Result<Self, ApiError> {
        body.only(Self::FIELDS)?;
        let policy = super::edit::new_policy(body)?;
        let folder = body
            .string("folder")?
            .ok_or_else(|| ApiError::BadRequest("folder: required".into()))?;
        let folder = RelPath::parse(folder).map_err(|e| ApiError::BadRequest(format!("folder: {e}")))?;
        let max_files = match body.uint("max_files")? {
            None => None,
            Some(n) => Some(u32::try_from(n).map_err(|_| ApiError::BadRequest("max_files: too large".into()))?),
        };
        Ok(CreateUploadRequest {
            folder,
            expires_in_seconds: body.uint("expires_in_seconds")?,
            max_files,
            max_bytes: match body.uint("max_bytes")? {
                None => return Err(ApiError::BadRequest("max_bytes: required".into())),
                Some(n) if n > i64::MAX as u64 => return Err(ApiError::BadRequest("max_bytes: too large".into())),
                Some(n) => n,
            },
            note: body.string("note")?.map(String::from),
            password: policy.password,
            allow_cidrs: policy.allow_cidrs,
            notify_url: policy.notify_url,
        })
    }
}

/// Receive files: create an upload link.
#[utoipa::path(post, path = "/api/uploads", tag = "links",
    request_body(content = CreateUploadRequest, content_type = "application/json"),
    responses((status = 201, description = "The link; `upload_url` is all a sender needs", body = UploadCreated),
              (status = 400, description = "Bad input; the message names the field", body = ErrorBody),
              (status = 404, description = "No such folder", body = ErrorBody),
              (status = 409, description = "ferry cannot write to the folder", body = ErrorBody),
              (status = 413, description = "Body too large", body = ErrorBody),
              (status = 415, description = "Not JSON", body = ErrorBody),
              (status = 502, description = "The tunnel could not be opened", body = ErrorBody), (status = 401, description = "Authentication required", body = ErrorBody), (status = 503, description = "State store unavailable", body = ErrorBody)))]
pub async fn create(
    State(s): State<AppState>,
    caller: Caller,
    body: JsonObject,
) -> Result<(StatusCode, Json<UploadCreated>), ApiError> {
    let r = CreateUploadRequest::read(&body)?;
    caller.confine(&s, "folder", &r.folder)?;
    let req = NewUpload {
        folder: r.folder,
        expires_in: r.expires_in_seconds,
        max_files: r.max_files,
        max_bytes: r.max_bytes,
        note: r.note,
        policy: NewPolicy {
            password: r.password,
            allow_cidrs: r.allow_cidrs,
            notify_url: r.notify_url,
        },
    };
    let (created, _) = s.links.create_upload(req, Some(&caller.audit_name())).await?;
    Ok((StatusCode::CREATED, Json(created)))
}
