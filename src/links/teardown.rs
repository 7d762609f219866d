//! The one teardown procedure: the record says closed, then the tunnel and the symlink go.

use std::time::Duration;

use super::error::LinkError;
use super::event::EventKind;
use super::rules;
use super::service::Links;
use crate::model::{CloseReason, LinkState, TunnelId};
use crate::peers::Owner;
use crate::store::{StoreError, Write};

impl Links {
    /// The one teardown procedure. Idempotent: closing a closed link changes nothing, and every
    /// step can be repeated after a crash. The steps run in this order: the gate (the record says
    /// closed, so every check refuses), then the provider, the symlink directory and the event.
    pub async fn close(&self, id: &TunnelId, reason: CloseReason) -> Result<bool, StoreError> {
        self.close_because(id, Some(reason), None).await
    }

    /// Closes the link if it is due now, for the reason it is due (`rules::due`), judged on the
    /// record at the moment of closing: an owner's edit made since the caller looked (a later
    /// expiry, more downloads) wins.
    pub(super) async fn close_if_due(&self, id: &TunnelId) -> Result<bool, StoreError> {
        self.close_because(id, None, None).await
    }

    /// Closes a link as `error`, saying why in the record and in the audit.
    pub async fn close_error(&self, id: &TunnelId, why: String) -> Result<bool, StoreError> {
        let closed = self
            .close_because(id, Some(CloseReason::Error), Some(why.clone()))
            .await?;
        if closed {
            self.audit("link.error", None, Some(id.as_str()), Some(why)).await;
        }
        Ok(closed)
    }

    /// Why a link's file is not the one it shared: its data dir is gone, or the file changed.
    pub(super) fn why_file_differs(&self) -> String {
        match self.data.available() {
            Err(e) => e.to_string(),
            Ok(()) => "the shared file changed or was replaced".into(),
        }
    }

    /// The teardown, with a text that says why the link closed (see [`Self::close`]). Without a
    /// `reason`, the link closes only if it is due, for the reason it is due.
    pub(super) async fn close_because(
        &self,
        id: &TunnelId,
        reason: Option<CloseReason>,
        detail: Option<String>,
    ) -> Result<bool, StoreError> {
        let now = self.clock.now_ms();
        let closed = self
            .store
            .update(id, &mut |link| {
                let reason = match (reason, rules::due(link)) {
                    (Some(r), _) => r,
                    (None, Some((at, r))) if at <= now => r,
                    (None, _) => return Write::No(false),
                };
                if rules::close(link, reason, now) {
                    link.close_detail.clone_from(&detail);
                    Write::Durable(true)
                } else {
                    Write::No(false)
                }
            })
            .await?
            .and_then(|(closed, link)| closed.then_some(link));
        self.archives.stop(id);
        self.teardown(id).await;
        self.progress_sent.lock().expect("progress mutex").remove(id);
        match closed {
            Some(link) => {
                if link.is_upload() {
                    self.remove_partials_of(&link).await;
                }
                let reason = link.close_reason.map_or("unknown", CloseReason::as_str);
                metrics::counter!("ferry_links_closed_total", "reason" => reason).increment(1);
                self.emit(EventKind::Closed, &link);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// The exposure steps of the teardown, run where the link's tunnel lives: here, or on the
    /// instance that owns it. That instance is asked through the store, and the gate is already
    /// closed for everyone.
    pub(super) async fn teardown(&self, id: &TunnelId) {
        let Some(peers) = &self.peers else {
            return self.teardown_here(id).await;
        };
        match peers.owner(id).await {
            Ok(Owner::Elsewhere(owner)) => match peers.hand_over(&owner, id).await {
                Ok(()) => tracing::debug!(tunnel_id = %id, %owner, "teardown handed to the owning instance"),
                Err(e) => {
                    tracing::warn!(tunnel_id = %id, %owner, error = %e, "could not hand the teardown over; the owner's reconciliation will remove it")
                }
            },
            _ => self.teardown_here(id).await,
        }
    }

    pub(super) async fn teardown_here(&self, id: &TunnelId) {
        self.archives.stop(id);
        self.expose_nothing(id).await;
        if let Some(peers) = &self.peers
            && let Err(e) = peers.release(id).await
        {
            tracing::warn!(tunnel_id = %id, error = %e, "could not release the link's ownership");
        }
    }

    /// Removes every public trace of a link: its tunnel and its symlink directory. Retried until
    /// done, since a link that is closed in the store must not stay reachable.
    pub(super) async fn expose_nothing(&self, id: &TunnelId) {
        let mut delay = Duration::from_millis(50);
        for attempt in 0..8 {
            let started = std::time::Instant::now();
            let tunnel = self.provider.close(id).await;
            metrics::histogram!("ferry_provider_call_seconds", "op" => "close").record(started.elapsed().as_secs_f64());
            let dir = match tokio::fs::remove_dir_all(self.tunnels_dir.join(id.as_str())).await {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            };
            match (tunnel, dir) {
                (Ok(()), Ok(())) => return,
                (t, d) => {
                    tracing::warn!(tunnel_id = %id, attempt, tunnel = ?t.err(), dir = ?d.err(), "teardown step failed; retrying")
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
        tracing::error!(tunnel_id = %id, "teardown incomplete; reconciliation will retry");
    }

    pub async fn terminate(&self, id: &str) -> Result<(), LinkError> {
        let id = TunnelId::parse(id).map_err(|_| LinkError::NotFound)?;
        match self.store.get(&id).await? {
            None => Err(LinkError::NotFound),
            Some(l) if l.state == LinkState::Closed => Err(LinkError::NotFound),
            Some(_) => {
                self.close(&id, CloseReason::Terminated).await?;
                Ok(())
            }
        }
    }
}
