//! Webhook notifications: `created`, `completed`, `received`, `locked` and `closed` events POSTed
//! to `FERRY_WEBHOOK_URL` and to a link's own `notify_url`, in order, with retries and backoff.
//! Delivery runs in its own task behind a bounded queue, so a slow or dead receiver never holds up
//! a link's lifecycle; when the queue is full, events are dropped and counted. An ntfy topic gets a plain-text message instead of JSON.

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
        EventKind::Created | EventKind::Completed | EventKind::Received | EventKind::Closed | EventKind::Locked
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
        EventKind::Locked => format!("Link to {name} locked after too many wrong passwords"),
        _ => {
            let reason = t
                .close_reason
                .map(|r| format!("{r:?}").to_lowercase())
                .unwrap_or_default();
            format!("Link to {name} closed: {reason}, {} served", human_size(t.bytes_served))
        }
    }
}

/// Where a notifier sends events.
pub enum Target {
    /// `FERRY_WEBHOOK_URL`: every link's events.
    Everything { url: String, format: WebhookFormat },
    /// Each link's own `notify_url`: that link's events only, in the form its URL calls for.
    EachLink,
}

impl Target {
    /// The URL and form one event goes to, if it goes anywhere.
    fn route<'a>(&'a self, e: &'a Event) -> Option<(&'a str, WebhookFormat)> {
        match self {
            Target::Everything { url, format } => Some((url, *format)),
            Target::EachLink => e.notify_url.as_deref().map(|u| (u, WebhookFormat::detect(u))),
        }
    }
}

pub fn spawn(target: Target, mut events: broadcast::Receiver<Event>, cancel: CancellationToken) {
    let (tx, mut rx) = mpsc::channel::<Event>(1024);
    let c = cancel.clone();
    let each_link = matches!(target, Target::EachLink);
    tokio::spawn(async move {
        loop {
            let e = tokio::select! {
                _ = c.cancelled() => return,
                e = events.recv() => e,
            };
            match e {
                Ok(e) if wanted(&e) && (!each_link || e.notify_url.is_some()) => {
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
            if let Some((url, format)) = target.route(&e)
                && !deliver(&http, url, format, &e, &cancel).await
            {
                return;
            }
        }
    });
}

/// Sends one event, retrying with backoff. Returns false when ferry is shutting down.
async fn deliver(
    http: &reqwest::Client,
    url: &str,
    format: WebhookFormat,
    e: &Event,
    cancel: &CancellationToken,
) -> bool {
    let mut delay = Duration::from_millis(500);
    for attempt in 1..=ATTEMPTS {
        let req = match format {
            WebhookFormat::Json => http.post(url).json(e),
            WebhookFormat::Ntfy => http.post(url).header("Title", "ferry").body(text(e)),
        };
        match req.send().await {
            Ok(r) if r.status().is_success() => return true,
            Ok(r) => tracing::warn!(status = %r.status(), attempt, event = e.event.as_str(), "webhook refused"),
            Err(err) => {
                tracing::warn!(error = %err.without_url(), attempt, event = e.event.as_str(), "webhook failed")
            }
        }
        if attempt == ATTEMPTS {
            tracing::error!(event = e.event.as_str(), tunnel_id = %e.tunnel.tunnel_id, "webhook gave up");
            return true;
        }
        tokio::select! {
            _ = cancel.cancelled() => return false,
            _ = tokio::time::sleep(delay) => {}
        }
        delay *= 2;
    }
    true
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
            notify_url: None,
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
