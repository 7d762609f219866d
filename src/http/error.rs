//! `ApiError`: every error the admin API returns, as `{"error": "...", "details": ...}` with the
//! right status. Internal detail is logged, never sent.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::links::LinkError;
use crate::links::path::PathError;
use crate::store::StoreError;

#[derive(Debug)]
pub enum ApiError {
    BadRequest(String),
    NotFound(String),
    UnsupportedMediaType,
    PayloadTooLarge,
    BadGateway(String),
    Unavailable(String),
    /// The data dir is not there (unmounted, or its server gone): the message says why.
    DataDirUnavailable(String),
    Internal(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message, details) = match self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, m, Value::Null),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, m, Value::Null),
            ApiError::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Content-Type must be application/json".into(),
                Value::Null,
            ),
            ApiError::PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body is too large".into(),
                Value::Null,
            ),
            ApiError::BadGateway(m) => (StatusCode::BAD_GATEWAY, m, Value::Null),
            ApiError::Unavailable(m) => {
                tracing::error!(error = %m, "service unavailable");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "state store unavailable".into(),
                    json!({"component": "store"}),
                )
            }
            ApiError::DataDirUnavailable(m) => {
                tracing::warn!(error = %m, "data dir unavailable");
                (StatusCode::SERVICE_UNAVAILABLE, m, json!({"component": "data_dir"}))
            }
            ApiError::Internal(m) => {
                tracing::error!(error = %m, "internal error");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal error".into(), Value::Null)
            }
        };
        (status, Json(json!({"error": message, "details": details}))).into_response()
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
            LinkError::Path(PathError::NotFound) => ApiError::NotFound(e.to_string()),
            LinkError::Path(PathError::Io(m)) => ApiError::Internal(m),
            LinkError::Path(e @ PathError::Unavailable(_)) => ApiError::DataDirUnavailable(e.to_string()),
            LinkError::Path(_) => ApiError::BadRequest(e.to_string()),
            LinkError::NotFound => ApiError::NotFound(e.to_string()),
            LinkError::Tunnel(_) => ApiError::BadGateway(e.to_string()),
            LinkError::Store(s) => s.into(),
            LinkError::Internal(m) => ApiError::Internal(m),
        }
    }
}
