//! The admin listener's HTTP API (one file per resource, each exporting `router()`) and the check
//! endpoint nginx calls over the Unix socket. Handlers parse input into domain types and call
//! [`crate::links::Links`]; they never touch files, nginx or the provider directly.

pub mod admin_auth;
pub mod auth;
pub mod caller;
pub mod check;
pub mod config;
pub mod edit;
pub mod error;
pub mod events;
pub mod files;
pub mod health;
pub mod host;
pub mod json;
pub mod links;
pub mod metrics;
pub mod openapi;
pub mod preview;
pub mod receive;
pub mod state;
pub mod status;
pub mod ui;
pub mod uploads;
pub mod zip;

use axum::Router;

pub use state::AppState;

/// The admin listener: the API, the web UI, and `/mcp`, whose tools call the rest in process.
pub fn admin_router(state: AppState) -> Router {
    let guarded = |routes: Router<AppState>| {
        routes
            .layer(axum::middleware::from_fn_with_state(state.clone(), auth::guard))
            .with_state(state.clone())
    };
    let api = api_router();
    let mcp = crate::mcp::service(guarded(api.clone()));
    guarded(api.route_service("/mcp", mcp))
}

/// Every route but `/mcp`, without the guard.
fn api_router() -> Router<AppState> {
    Router::new()
        .merge(health::router())
        .merge(files::router())
        .merge(links::router())
        .merge(edit::router())
        .merge(uploads::router())
        .merge(events::router())
        .merge(auth::router())
        .merge(metrics::router())
        .merge(config::router())
        .merge(status::router())
        .merge(openapi::router())
        .merge(ui::router())
        .fallback(|| async { error::ApiError::NotFound("no such route".into()) })
}
