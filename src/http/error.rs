//! `ApiError`: every error the admin API returns, as `{"error": "...", "details": ...}` with the
//! right status. Internal detail is logged, never sent.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use crate::data_dir::PathError;
use crate::links::LinkError;
use crate::store::StoreError;

/// Every error: a message that names what was wrong, and details where there are any.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: String,
    #[schema(value_type = Option<Object>)]
    pub details: Option<Value>,
}

impl ErrorBody {
    /// An error with no details (`"details": null`).
    pub fn new(message: impl Into<String>) -> Self {
        ErrorBody {
            error: message.into(),
            details: None,
        }
    }
}

#[derive(Debug)]
pub enum ApiError {
    BadRequest(String),
    NotFound(String),
    UnsupportedMediaType,
    PayloadTooLarge,
    BadGateway(String),
    /// The request cannot be done to the thing as it is (409).
    Conflict(String),
    Unavailable(String),
    /// The data dir is not there (unmounted, or its server gone): the message says why.
    DataDirUnavailable(String),
    Internal(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message, details) = match self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, m, None),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, m, None),
            ApiError::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Content-Type must be application/json".into(),
                None,
            ),
            ApiError::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "request body is too large".into(), None),
            ApiError::BadGateway(m) => (StatusCode::BAD_GATEWAY, m, None),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, m, None),
            ApiError::Unavailable(m) => {
                tracing::error!(error = %m, "service unavailable");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "state store unavailable".into(),
                    Some(json!({"component": "store"})),
                )
            }
            ApiError::DataDirUnavailable(m) => {
                tracing::warn!(error = %m, "data dir unavailable");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    m,
                    Some(json!({"component": "data_dir"})),
                )
            }
            ApiError::Internal(m) => {
                tracing::error!(error = %m, "internal error");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal error".into(), None)
            }
        };
        let body = ErrorBody {
            error: message,
            details,
        };
        (status, Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(m) => ApiError::Unavailable(m),
            StoreError::Corrupt(m) => ApiError::Internal(m),
        }
    }
}

impl From<LinkError> for ApiError {
    fn from(e: LinkError) -> Self {
        match e {
            LinkError::Invalid { .. } => ApiError::BadRequest(e.to_string()),
            LinkError::Path(PathError::NotFound)
            | LinkError::PathOf {
                error: PathError::NotFound,
                ..
            } => ApiError::NotFound(e.to_string()),
            LinkError::Path(PathError::Io(_))
            | LinkError::PathOf {
                error: PathError::Io(_),
                ..
            } => ApiError::Internal(e.to_string()),
            // The data dir's own words: which file was asked for does not matter.
            LinkError::Path(u @ PathError::Unavailable(_))
            | LinkError::PathOf {
                error: u @ PathError::Unavailable(_),
                ..
            }
            | LinkError::FolderPath(u @ PathError::Unavailable(_)) => ApiError::DataDirUnavailable(u.to_string()),
            LinkError::Path(_) | LinkError::PathOf { .. } => ApiError::BadRequest(e.to_string()),
            LinkError::FolderPath(PathError::NotFound) => ApiError::NotFound(e.to_string()),
            LinkError::FolderPath(_) => ApiError::BadRequest(e.to_string()),
            LinkError::Conflict(m) => ApiError::Conflict(m),
            LinkError::NotFound => ApiError::NotFound(e.to_string()),
            LinkError::Tunnel(_) => ApiError::BadGateway(e.to_string()),
            LinkError::Store(s) => s.into(),
            LinkError::Internal(m) => ApiError::Internal(m),
        }
    }
}
