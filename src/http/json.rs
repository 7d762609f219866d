//! A JSON body extractor that answers like the rest of the API: 415 for another content type, 413
//! for an oversized body, 400 naming what is wrong otherwise.

use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::caller::ThroughMcp;
use super::error::ApiError;

const LIMIT: usize = 64 * 1024;

/// A JSON object, checked field by field by the handler (so errors can name the field).
pub struct JsonObject(pub serde_json::Map<String, Value>);

impl<S: Send + Sync> FromRequest<S> for JsonObject {
    type Rejection = ApiError;

    async fn from_request(req: Request, _: &S) -> Result<Self, ApiError> {
        let is_json = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
        if !is_json {
            return Err(ApiError::UnsupportedMediaType);
        }
        let through_mcp = req.extensions().get::<ThroughMcp>().is_some();
        let bytes = axum::body::to_bytes(req.into_body(), LIMIT)
            .await
            .map_err(|_| ApiError::PayloadTooLarge)?;
        match serde_json::from_slice(&bytes) {
            // An agent cannot choose where ferry sends notifications (SPEC §14).
            Ok(Value::Object(map)) if through_mcp && map.contains_key("notify_url") => {
                Err(ApiError::BadRequest("notify_url: cannot be set through MCP".into()))
            }
            Ok(Value::Object(map)) => Ok(JsonObject(map)),
            Ok(_) => Err(ApiError::BadRequest("body must be a JSON object".into())),
            Err(e) => Err(ApiError::BadRequest(format!("body is not valid JSON: {e}"))),
        }
    }
}

impl JsonObject {
    /// Refuses fields other than `allowed`.
    pub fn only(&self, allowed: &[&str]) -> Result<(), ApiError> {
        match self.0.keys().find(|k| !allowed.contains(&k.as_str())) {
            Some(k) => Err(ApiError::BadRequest(format!(
                "{k}: unknown field (expected one of: {})",
                allowed.join(", ")
            ))),
            None => Ok(()),
        }
    }

    fn field(&self, name: &str) -> Option<&Value> {
        self.0.get(name).filter(|v| !v.is_null())
    }

    pub fn string(&self, name: &str) -> Result<Option<&str>, ApiError> {
        match self.field(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(ApiError::BadRequest(format!("{name}: must be a string"))),
        }
    }

    /// A list of strings.
    pub fn strings(&self, name: &str) -> Result<Option<Vec<&str>>, ApiError> {
        let not_list = || ApiError::BadRequest(format!("{name}: must be a list of strings"));
        match self.field(name) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().ok_or_else(not_list))
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(_) => Err(not_list()),
        }
    }

    /// A field that may be set to `null`: `None` when absent, `Some(None)` when null, and
    /// otherwise what `read` gives.
    pub fn nullable<'a, T>(
        &'a self,
        name: &str,
        read: impl FnOnce(&'a Self, &str) -> Result<Option<T>, ApiError>,
    ) -> Result<Option<Option<T>>, ApiError> {
        match self.0.get(name) {
            None => Ok(None),
            Some(serde_json::Value::Null) => Ok(Some(None)),
            Some(_) => read(self, name).map(Some),
        }
    }

    pub fn uint(&self, name: &str) -> Result<Option<u64>, ApiError> {
        match self.field(name) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| ApiError::BadRequest(format!("{name}: must be a whole number ≥ 0"))),
        }
    }
}

/// Query parameters whose rejection is an API error (400 with a JSON body), not plain text.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(q)| ApiQuery(q))
            .map_err(|e| ApiError::BadRequest(format!("query: {}", e.body_text())))
    }
}

/// Path parameters whose rejection is an API error.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(p)| ApiPath(p))
            .map_err(|e| ApiError::BadRequest(format!("path: {}", e.body_text())))
    }
}
