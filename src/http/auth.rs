//! The admin listener's guard, applied to every request, and the login and logout routes. Who
//! may pass is decided by [`AdminAuth`](super::admin_auth::AdminAuth).

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use utoipa::ToSchema;

use super::admin_auth::{COOKIE, now_s};
use super::caller::ThroughMcp;
use super::error::{ApiError, ErrorBody};
use super::json::JsonObject;
use super::state::AppState;
use crate::mcp::{VIA_HEADER, VIA_MCP};

/// Routes anyone on the listener may reach: health, the login, the UI's static files.
fn is_public(path: &str) -> bool {
    matches!(path, "/health" | "/login" | "/logout") || super::ui::is_asset(path)
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(ErrorBody::new(message))).into_response()
}

pub async fn guard(State(s): State<AppState>, mut req: Request, next: Next) -> Response {
    let auth = &s.auth;
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !auth.host_allowed(host) {
        return error(
            StatusCode::MISDIRECTED_REQUEST,
            "Host is not this admin listener (see FERRY_ADMIN_HOSTS)",
        );
    }
    // MCP checks the Origin of every request to `/mcp`, reads included (SPEC §14).
    let safe = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) && req.uri().path() != "/mcp";
    let origin = req.headers().get(header::ORIGIN);
    if !safe && origin.is_some_and(|o| !o.to_str().is_ok_and(|o| auth.origin_allowed(o))) {
        return error(
            StatusCode::FORBIDDEN,
            "cross-site request refused (Origin is not this admin listener)",
        );
    }
    if !is_public(req.uri().path()) && !auth.authorized(req.headers(), now_s()) {
        let mut r = error(
            StatusCode::UNAUTHORIZED,
            "authentication required: Authorization: Bearer <FERRY_ADMIN_TOKEN>",
        );
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        return r;
    }
    // Only now, on a request that may use the API, does the MCP mark count.
    if req.headers().get(VIA_HEADER).is_some_and(|v| v == VIA_MCP) {
        req.extensions_mut().insert(ThroughMcp);
    }
    next.run(req).await
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/login", post(login))
        .route("/logout", post(logout))
}

/// What `POST /login` accepts.
// `deny_unknown_fields` tells the document that no other field is allowed; `read` refuses them.
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub token: String,
}

impl LoginRequest {
    /// Reads the body. A token that is missing or not a string is a wrong token (401), not a bad
    /// body, so that a guess learns nothing from the answer.
    fn read(body: &JsonObject) -> Result<Self, ApiError> {
        body.only(&["token"])?;
        let token = body.string("token").ok().flatten().unwrap_or("");
        Ok(LoginRequest {
            token: token.to_string(),
        })
    }
}

/// `POST /login` with `{"token": "..."}`: sets the session cookie.
/// Log in with the admin token: sets an HttpOnly, SameSite=Strict session cookie.
#[utoipa::path(post, path = "/login", tag = "auth", security(()),
    request_body(content = LoginRequest, content_type = "application/json"),
    responses((status = 204, description = "Logged in"),
              (status = 400, description = "Bad body", body = ErrorBody),
              (status = 401, description = "Wrong token", body = ErrorBody),
              (status = 404, description = "No token is configured", body = ErrorBody),
              (status = 413, description = "Body too large", body = ErrorBody),
              (status = 415, description = "Not JSON", body = ErrorBody)))]
pub async fn login(
    State(s): State<AppState>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    body: JsonObject,
) -> Response {
    let client = peer.ip().to_string();
    let given = match LoginRequest::read(&body) {
        Ok(req) => req.token,
        Err(e) => return e.into_response(),
    };
    let ok = s.auth.token_matches(&given);
    s.links
        .audit(if ok { "login" } else { "login.failed" }, Some(&client), None, None)
        .await;
    if !ok {
        // Slow down guessing.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        return error(StatusCode::UNAUTHORIZED, "token: wrong token");
    }
    match s.auth.session_cookie(now_s()) {
        Some(c) => (StatusCode::NO_CONTENT, [(header::SET_COOKIE, c)]).into_response(),
        None => error(StatusCode::NOT_FOUND, "no login: FERRY_ADMIN_TOKEN is not set"),
    }
}

/// Log out: clears the session cookie.
#[utoipa::path(post, path = "/logout", tag = "auth", security(()), responses((status = 204, description = "Logged out")))]
pub async fn logout() -> Response {
    let c = format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0");
    (StatusCode::NO_CONTENT, [(header::SET_COOKIE, c)]).into_response()
}
