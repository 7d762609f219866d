//! Webhook notifications: `created`, `completed`, `received` and `closed` events POSTed to
//! `FERRY_WEBHOOK_URL`, in order, with retries and backoff. Delivery runs in its own task behind a
//! bounded queue, so a slow or dead receiver never holds up a link's lifecycle; when the queue is
//! full, events are dropped and counted. An ntfy topic gets a plain-text message instead of JSON.

use std::time::Duration;

use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::config::WebhookFormat;
use crate::links::{Event, EventKind};
use crate::model::format::human_size;

const ATTEMPTS: u32 = 5;

fn wanted(e: &Event) -> bool {
    matches!(
        e.event,
        EventKind::Created | EventKind::Completed | EventKind::Received | EventKind::Closed
    )
}

/// The plain-text line an ntfy topic receives.
pub fn text(e: &Event) -> String {
    let t = &e.tunnel;
    let name = t.file_path.rsplit('/').next().unwrap_or(&t.file_path);
    match e.event {
        EventKind::Created if t.kind == "upload" => format!("Receiving files into {}", t.file_path),
        EventKind::Created => format!("Shared {name} ({})", human_size(t.file_size)),
        EventKind::Received => match &e.file {
            Some(f) => format!(
                "Received {} ({}) in {}, SHA-256 {}",
                f.name,
                human_size(f.size),
                t.file_path,
                f.sha256
            ),
            None => format!("Received a file in {}", t.file_path),
        },
        EventKind::Completed => format!(
            "{name} was downloaded ({} of {})",
            t.downloads_completed, t.max_downloads
        ),
        _ => {
            let reason = t
                .close_reason
                .map(|r| format!("{r:?}").to_lowercase())
                .unwrap_or_default();
            format!("Link to {name} closed: {reason}, {} served", human_size(t.bytes_served))
        }
    }
}

pub fn spawn(url: String, format: WebhookFormat, mut events: broadcast::Receiver<Event>, cancel: CancellationToken) {
    let (tx, mut rx) = mpsc::channel::<Event>(1024);
    let c = cancel.clone();
    tokio::spawn(async move {
        loop {
            let e = tokio::select! {
                _ = c.cancelled() => return,
                e = events.recv() => e,
            };
            match e {
                Ok(e) if wanted(&e) => {
                    if tx.try_send(e).is_err() {
                        tracing::warn!("webhook queue is full; dropping an event");
                    }
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => tracing::warn!(missed = n, "webhook missed events"),
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    tokio::spawn(async move {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("an HTTP client with default settings");
        while let Some(e) = rx.recv().await {
            let mut delay = Duration::from_millis(500);
            for attempt in 1..=ATTEMPTS {
                let req = match format {
                    WebhookFormat::Json => http.post(&url).json(&e),
                    WebhookFormat::Ntfy => http.post(&url).header("Title", "ferry").body(text(&e)),
                };
                match req.send().await {
                    Ok(r) if r.status().is_success() => break,
                    Ok(r) => tracing::warn!(status = %r.status(), attempt, event = e.event.as_str(), "webhook refused"),
                    Err(err) => {
                        tracing::warn!(error = %err.without_url(), attempt, event = e.event.as_str(), "webhook failed")
                    }
                }
                if attempt == ATTEMPTS {
                    tracing::error!(event = e.event.as_str(), tunnel_id = %e.tunnel.tunnel_id, "webhook gave up");
                    break;
                }
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay *= 2;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ntfy_messages_are_plain_sentences() {
        let mut link = crate::model::link::test_link(3_000_000, 1);
        link.bytes_served = 3_000_000;
        link.close_reason = Some(crate::model::CloseReason::Stalled);
        let links_view = crate::links::TunnelView::of(&link, String::new());
        let e = Event {
            event: EventKind::Closed,
            time: String::new(),
            tunnel: links_view,
            file: None,
        };
        assert_eq!(text(&e), "Link to f.bin closed: stalled, 3.0 MB served");
        let received = Event {
            event: EventKind::Received,
            file: Some(crate::model::ReceivedFile {
                name: "scan (1).pdf".into(),
                size: 2_500_000,
                sha256: "ab12".into(),
            }),
            ..e
        };
        assert_eq!(text(&received), "Received scan (1).pdf (2.5 MB) in f.bin, SHA-256 ab12");
    }
}
