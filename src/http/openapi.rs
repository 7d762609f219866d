//! `GET /api/openapi.json`: the OpenAPI 3 document of the admin API, generated from the handlers'
//! `#[utoipa::path]` annotations and the types' `ToSchema` derives, so it cannot drift from the
//! code. Schemathesis checks the running server against it (tests/it/openapi.rs).

use axum::Json;
use axum::Router;
use axum::routing::get;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::error::ErrorBody;
use super::state::AppState;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "ferry",
        description = "Share a file from a NAS through a link that works once, then vanishes with its tunnel. \
                       With FERRY_ADMIN_TOKEN set, every route but /health and /login needs `Authorization: Bearer`."
    ),
    paths(
        super::health::health,
        super::files::files,
        super::links::create,
        super::links::generate_link,
        super::uploads::create,
        super::links::list,
        super::links::stats,
        super::links::qr,
        super::links::terminate,
        super::edit::edit,
        super::edit::rotate,
        super::links::history,
        super::links::cleanup,
        super::links::audit,
        super::events::events,
        super::config::config,
        super::status::status,
        super::metrics::metrics,
        super::auth::login,
        super::auth::logout,
        openapi,
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
)]
pub struct ApiDoc;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/openapi.json", get(openapi))
}

/// This document.
#[utoipa::path(get, path = "/api/openapi.json", tag = "meta",
    responses((status = 200, description = "OpenAPI 3 document", body = Object),
              (status = 401, description = "Authentication required", body = ErrorBody)))]
pub async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_covers_every_route() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        for p in [
            "/health",
            "/api/files",
            "/api/links",
            "/generate-link",
            "/admin/tunnels",
            "/admin/tunnels/{id}",
            "/admin/tunnels/{id}/stats",
            "/admin/tunnels/{id}/rotate",
            "/admin/cleanup",
            "/admin/history",
            "/admin/monitor/status",
            "/admin/events",
            "/admin/audit",
            "/admin/config",
            "/metrics",
            "/api/openapi.json",
        ] {
            assert!(paths.contains_key(p), "{p} is missing");
        }
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        let create = &doc["components"]["schemas"]["CreateLinkRequest"];
        assert_eq!(create["additionalProperties"], false);
    }
}
