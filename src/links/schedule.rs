//! Deadlines and agreement: closing links when they fall due, and keeping the folders, the
//! provider and the shared files in agreement with the store.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::error::LinkError;
use super::rules;
use super::service::Links;
use crate::data_dir::DataDir;
use crate::model::{Every, LinkState, TunnelId};
use crate::store::StoreError;

/// How often every open link's file is compared with the one it shared.
pub const FILE_WATCH: Duration = Duration::from_secs(5);

impl Links {
    /// Brings the runtime folders and the provider into agreement with the store: links past their
    /// deadline are closed, symlink directories and tunnels of links that are not open are removed.
    /// Returns the ids it closed.
    pub async fn reconcile(&self) -> Result<Vec<TunnelId>, StoreError> {
        let now = self.clock.now_ms();
        let open = self.store.list_open().await?;
        let mut closed = Vec::new();
        for link in &open {
            let due_now = rules::due(link).filter(|(at, _)| *at <= now);
            if let Some((_, reason)) = due_now
                && self.close(&link.id, reason).await?
            {
                closed.push(link.id.clone());
            }
        }
        let open_ids: std::collections::HashMap<_, _> = open
            .iter()
            .filter(|l| !closed.contains(&l.id))
            .map(|l| (l.id.clone(), l))
            .collect();
        if let Ok(mut dir) = tokio::fs::read_dir(&self.tunnels_dir).await {
            while let Ok(Some(entry)) = dir.next_entry().await {
                let name = entry.file_name();
                let orphan = match name.to_str().map(TunnelId::parse) {
                    Some(Ok(id)) if open_ids.contains_key(&id) => {
                        // Its tunnel is on this node: if another instance took the link over
                        // while this one was away, this one owns it again.
                        if let Some(Ok(true)) = self.reclaim(&id).await {
                            tracing::info!(tunnel_id = %id, "reclaimed a link whose tunnel is on this instance");
                        }
                        // A ZIP link's archive is served from here: hashing starts (again, after
                        // a restart) before anyone asks.
                        self.archive(open_ids[&id]);
                        false
                    }
                    // A link created after the listing above is not an orphan.
                    Some(Ok(id)) => !matches!(self.store.get(&id).await, Ok(Some(l)) if l.state != LinkState::Closed),
                    _ => !name.to_string_lossy().starts_with('.'),
                };
                if orphan {
                    tracing::info!(entry = %name.to_string_lossy(), "removing orphan tunnel directory");
                    let _ = tokio::fs::remove_dir_all(entry.path()).await;
                    if let Some(Ok(id)) = name.to_str().map(TunnelId::parse) {
                        closed.push(id);
                    }
                }
            }
        }
        Ok(closed)
    }

    /// Reconciliation and retention, done every minute: agreement between store, folders and
    /// provider, and history older than `FERRY_HISTORY_DAYS` forgotten.
    pub async fn housekeeping(&self) -> Result<(), StoreError> {
        let closed = self.reconcile().await?;
        if !closed.is_empty() {
            tracing::info!(count = closed.len(), "reconciliation closed links or removed orphans");
        }
        self.sweep_uploads().await;
        let before = self.clock.now_ms().saturating_sub(self.history_ms);
        let purged = self.store.purge_history(before).await?;
        if purged > 0 {
            tracing::info!(purged, "forgot history past its retention");
        }
        Ok(())
    }

    /// Tells the scheduler a link falls due at `at`, waking it if it would look later than that.
    /// A link stored before its deadline is set here is seen either by the scan under way (which
    /// then sleeps no later than `at`) or by the next one, which this wakes.
    pub(super) fn remind(&self, at: u64) {
        if at < self.scheduled_at.load(std::sync::atomic::Ordering::SeqCst) {
            self.wake.notify_one();
        }
    }

    /// Closes links when they fall due: at `expires_at`, or when a completed link's grace period
    /// ends. One loop for all links; it sleeps until the earliest deadline, and does the
    /// housekeeping every minute.
    pub async fn run_scheduler(self: Arc<Self>, cancel: CancellationToken) {
        let mut housekeeping_at = self.clock.now_ms() + 60_000;
        loop {
            // The scheduler is now looking, so any deadline set from here on wakes the next round
            // (see `remind`).
            self.scheduled_at.store(u64::MAX, std::sync::atomic::Ordering::SeqCst);
            let now = self.clock.now_ms();
            if now >= housekeeping_at {
                housekeeping_at = now + 60_000;
                if let Err(e) = self.housekeeping().await {
                    tracing::warn!(error = %e, "housekeeping failed");
                }
            }
            let mut next = housekeeping_at;
            if self.peers.is_some() {
                // Other instances create links this loop was not woken for; their deadlines
                // must hold even when the instance that made them is gone.
                next = next.min(now + 1000);
            }
            match self.store.list_open().await {
                Ok(open) => {
                    for link in open {
                        let Some((at, _)) = rules::due(&link) else {
                            continue;
                        };
                        if at <= now {
                            // Judged again as it closes: an edit since the list was read wins.
                            if let Err(e) = self.close_if_due(&link.id).await {
                                tracing::error!(tunnel_id = %link.id, error = %e, "could not close a due link");
                                next = next.min(now + 1000);
                            }
                        } else {
                            next = next.min(at);
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "scheduler cannot read the store");
                    next = now + 1000;
                }
            }
            self.scheduled_at.store(next, std::sync::atomic::Ordering::SeqCst);
            let sleep = Duration::from_millis(next.saturating_sub(self.clock.now_ms()));
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(sleep) => {}
                _ = self.wake.notified() => {}
            }
        }
    }

    /// Makes the provider agree with the store: the open links' handlers are there (a sidecar
    /// restart can lose them), and no handler of ferry's serves a link that is not open.
    pub async fn reconcile_tunnels(&self) -> Result<(), LinkError> {
        let mut open: Vec<TunnelId> = self
            .store
            .list_open()
            .await?
            .into_iter()
            .map(|l| l.id.clone())
            .collect();
        if let Some(mine) = self.owned_here().await? {
            // With shared state, this node's provider serves only the links whose tunnel is here.
            // Another instance's link must never get a handler on this node. Neither may a link
            // taken over here from a gone instance, because its symlink is on the other node.
            open.retain(|id| mine.contains(id) && self.tunnels_dir.join(id.as_str()).exists());
        }
        let done = self
            .provider
            .reconcile(&open)
            .await
            .map_err(|e| LinkError::Tunnel(e.to_string()))?;
        if !done.reasserted.is_empty() || !done.removed.is_empty() {
            tracing::info!(reasserted = ?done.reasserted, removed = ?done.removed, "tunnel provider reconciled");
        }
        Ok(())
    }

    /// Runs [`Self::reconcile_tunnels`] every few seconds. When all is well, a round costs one
    /// `status --json` call.
    pub async fn run_tunnel_watch(self: Arc<Self>, every: Duration, cancel: CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            if let Err(e) = self.reconcile_tunnels().await {
                tracing::warn!(error = %e, "tunnel reconciliation failed");
            }
        }
    }

    /// Runs [`Self::watch_files_once`] every few seconds.
    pub async fn run_file_watch(self: Arc<Self>, every: Duration, cancel: CancellationToken) {
        let mut every = Every::new(every, cancel);
        while every.tick().await {
            if let Err(e) = self.watch_files_once().await {
                tracing::warn!(error = %e, "could not look at the shared files");
            }
        }
    }

    /// Closes as `error` every open link whose file is no longer the one it shared (it grew, was
    /// replaced, or its data dir went away), without waiting for a request to find out. Only the
    /// links whose symlink is on this node are looked at. Returns the ids it closed.
    pub async fn watch_files_once(&self) -> Result<Vec<TunnelId>, StoreError> {
        let open = self.store.list_open().await?;
        let dir = self.tunnels_dir.clone();
        let differ = tokio::task::spawn_blocking(move || {
            open.iter()
                // A download that completed closes as completed at the end of its grace period,
                // whatever the owner does with the file meanwhile.
                .filter(|l| l.state != LinkState::Completed)
                .filter(|l| {
                    let file = dir.join(l.id.as_str()).join("file");
                    // A link without a symlink here is skipped: its symlink is not made yet, or it
                    // is on another instance's node.
                    std::fs::symlink_metadata(&file).is_ok() && DataDir::identity_at(&file) != Some(l.identity)
                })
                .map(|l| l.id.clone())
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        let mut closed = Vec::new();
        if differ.is_empty() {
            return Ok(closed);
        }
        let why = self.why_file_differs();
        for id in differ {
            tracing::warn!(tunnel_id = %id, reason = %why, "the shared file is not the one shared; closing the link");
            if self.close_error(&id, why.clone()).await? {
                closed.push(id);
            }
        }
        Ok(closed)
    }
}
