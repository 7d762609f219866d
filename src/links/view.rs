//! Showing a link: its URLs and JSON view, and the events that announce what happens to it.

use super::event::{Event, EventKind, TunnelView};
use super::service::Links;
use crate::model::format::URL_SEGMENT;
use crate::model::{Link, rfc3339};

impl Links {
    pub(super) fn public_url(&self, link: &Link) -> String {
        let base = self.provider.public_base();
        let base = base.as_deref().unwrap_or(&self.base_url);
        if link.is_upload() {
            // Under the link's own path, which is what its Funnel path publishes. Ends with `/`, so
            // that `curl -T file <url>` adds the file's name.
            return format!("{base}/s/{}/up/", link.id);
        }
        // The name's bytes are used unchanged, because a URL is made of bytes and `wget` saves the
        // file under the name that the path gives.
        let bytes = link.download_name();
        let name = percent_encoding::percent_encode(&bytes, URL_SEGMENT);
        format!("{base}/s/{}/{name}", link.id)
    }

    pub fn download_url(&self, link: &Link) -> String {
        format!("{}?t={}", self.public_url(link), self.token(link))
    }

    /// The link's token, derived again from its record: valid until the link's ceiling, of its
    /// current generation.
    pub(super) fn token(&self, link: &Link) -> String {
        self.keys
            .issue(&link.id, link.issued_at_s, link.token_exp_s(), link.generation)
    }

    pub fn view(&self, link: &Link) -> TunnelView {
        let mut view = TunnelView::of(link, self.public_url(link));
        if let (Some(hashing), Some(archive)) = (view.hashing.as_mut(), self.archives.get(&link.id)) {
            hashing.hashed_bytes = archive.progress().bytes;
        }
        view
    }

    pub(super) fn emit(&self, event: EventKind, link: &Link) {
        self.emit_with(event, link, None);
    }

    /// Emits `received` for a file an upload link received.
    pub(super) fn emit_received(&self, link: &Link, file: &crate::model::ReceivedFile) {
        self.emit_with(EventKind::Received, link, Some(file.clone()));
    }

    fn emit_with(&self, event: EventKind, link: &Link, file: Option<crate::model::ReceivedFile>) {
        tracing::info!(tunnel_id = %link.id, event = event.as_str(), bytes_served = link.bytes_served, reason = ?link.close_reason, "link");
        if self.events.receiver_count() == 0 && self.peers.is_none() {
            return;
        }
        let e = Event {
            event,
            time: rfc3339(self.clock.now_ms()),
            tunnel: self.view(link),
            file,
            notify_url: link.policy.notify_url.clone(),
        };
        if let Some(peers) = &self.peers {
            peers.relay(event.as_str(), &e);
        }
        let _ = self.events.send(e);
    }

    /// Emits `progress` for a link at most every 250 ms.
    pub(super) fn emit_progress(&self, link: &Link) {
        let now = self.clock.now_ms();
        let mut sent = self.progress_sent.lock().expect("progress mutex");
        // A late line or sample can arrive after a link's close has removed its entry. Entries
        // older than the interval no longer limit anything, so dropping them keeps only the busy
        // links in the map.
        if sent.len() > 1024 {
            sent.retain(|_, t| now < *t + 250);
        }
        let last = sent.entry(link.id.clone()).or_insert(0);
        if now >= *last + 250 {
            *last = now;
            drop(sent);
            self.emit(EventKind::Progress, link);
        }
    }
}
