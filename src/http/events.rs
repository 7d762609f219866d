//! `GET /admin/events`: the links' events as Server-Sent Events, in the order they happened.

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::routing::get;
use futures_util::stream::{self, Stream};
use tokio::sync::broadcast::error::RecvError;

use super::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/admin/events", get(events))
}

/// The links' events as Server-Sent Events: created, started, progress, completed, closed.
#[utoipa::path(get, path = "/admin/events", tag = "links",
    responses((status = 200, description = "An endless event stream", content_type = "text/event-stream", body = String), (status = 401, description = "Authentication required", body = crate::http::openapi::ErrorBody)))]
pub async fn events(State(s): State<AppState>) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    // This instance's events, and (with shared state) the other instances' ones.
    let rx = (s.links.events.subscribe(), s.links.peer_events.subscribe());
    let stream = stream::unfold(rx, |(mut rx, mut peers)| async move {
        let lagged = |n| SseEvent::default().event("lagged").data(format!("{{\"missed\":{n}}}"));
        let event = tokio::select! {
            e = rx.recv() => match e {
                Ok(e) => SseEvent::default()
                    .event(e.event)
                    .data(serde_json::to_string(&e).unwrap_or_default()),
                // A slow reader missed events: say so, and go on from the newest.
                Err(RecvError::Lagged(n)) => lagged(n),
                Err(RecvError::Closed) => return None,
            },
            e = peers.recv() => match e {
                Ok(e) => SseEvent::default().event(e.event).data(e.json),
                Err(RecvError::Lagged(n)) => lagged(n),
                Err(RecvError::Closed) => return None,
            },
        };
        Some((Ok(event), (rx, peers)))
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}
