//! `GET /admin/events`: the links' events as Server-Sent Events, in the order they happened.
//! At most [`MAX_SUBSCRIBERS`] streams are open at once (each holds a connection, a task and two
//! channel receivers). A further request gets 503 until a stream closes.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures_util::stream;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use super::error::ErrorBody;
use super::state::AppState;

/// The most event streams that may be open at once.
pub const MAX_SUBSCRIBERS: usize = 64;

/// The permits for event streams: one is held for as long as its stream is open.
pub fn subscribers() -> std::sync::Arc<tokio::sync::Semaphore> {
    std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_SUBSCRIBERS))
}

pub fn router() -> Router<AppState> {
    Router::new().route("/admin/events", get(events))
}

/// The links' events as Server-Sent Events: created, started, progress, completed, closed.
#[utoipa::path(get, path = "/admin/events", tag = "links",
    responses((status = 200, description = "An endless event stream", content_type = "text/event-stream", body = String), (status = 401, description = "Authentication required", body = ErrorBody),
              (status = 503, description = "Too many event streams open", body = ErrorBody)))]
pub async fn events(State(s): State<AppState>) -> Response {
    let Ok(permit) = s.sse.clone().try_acquire_owned() else {
        let body = ErrorBody {
            error: format!("too many event streams open (at most {MAX_SUBSCRIBERS}); close one and retry"),
            details: Some(json!({"limit": MAX_SUBSCRIBERS})),
        };
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "5")],
            Json(body),
        )
            .into_response();
    };
    // The stream carries this instance's events and, with shared state, the other instances'
    // events. The permit moves into the stream, and is returned when the client hangs up and the
    // stream is dropped.
    let rx = (s.links.events.subscribe(), s.links.peer_events.subscribe(), permit);
    let stream = stream::unfold(rx, |(mut rx, mut peers, permit)| async move {
        let lagged = |n| SseEvent::default().event("lagged").data(format!("{{\"missed\":{n}}}"));
        let event = tokio::select! {
            e = rx.recv() => match e {
                Ok(e) => SseEvent::default()
                    .event(e.event.as_str())
                    .data(serde_json::to_string(&e).unwrap_or_default()),
                // A slow reader missed events. Tell it so, and go on from the newest event.
                Err(RecvError::Lagged(n)) => lagged(n),
                Err(RecvError::Closed) => return None,
            },
            e = peers.recv() => match e {
                Ok(e) => SseEvent::default().event(e.event).data(e.json),
                Err(RecvError::Lagged(n)) => lagged(n),
                Err(RecvError::Closed) => return None,
            },
        };
        Some((Ok::<_, Infallible>(event), (rx, peers, permit)))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}
