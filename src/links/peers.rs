//! Several instances sharing one Redis: heartbeats, take-over and the event relay.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::event::PeerEvent;
use super::service::Links;
use crate::model::{LinkState, TunnelId};
use crate::store::StoreError;

impl Links {
    /// With shared state: sends this instance's events to the others and hands theirs to this
    /// instance's SSE clients (Redis pub/sub, reconnected after an outage). Returns at once with
    /// the embedded store.
    pub async fn run_relay(self: Arc<Self>, cancel: CancellationToken) {
        let Some(peers) = &self.peers else { return };
        let Some(mut outbox) = peers.take_outbox() else { return };
        let publish = async {
            while let Some(payload) = tokio::select! {
                p = outbox.recv() => p,
                _ = cancel.cancelled() => None,
            } {
                if let Err(e) = peers.publish_event(&payload).await {
                    tracing::debug!(error = %e, "could not relay an event");
                }
            }
        };
        let subscribe = async {
            use futures_util::StreamExt;
            let me = peers.instance();
            while !cancel.is_cancelled() {
                match peers.event_stream().await {
                    Ok(mut stream) => loop {
                        let msg = tokio::select! {
                            m = stream.next() => m,
                            _ = cancel.cancelled() => return,
                        };
                        let Some(payload) = msg else { break };
                        if self.peer_events.receiver_count() == 0 {
                            continue;
                        }
                        let Ok(v) = serde_json::from_str::<serde_json::Value>(&payload) else {
                            continue;
                        };
                        if v["from"].as_str() == Some(me) {
                            continue;
                        }
                        if let Some(event) = v["event"].as_str() {
                            let _ = self.peer_events.send(PeerEvent {
                                event: event.to_string(),
                                json: v["data"].to_string(),
                            });
                        }
                    },
                    Err(e) => tracing::debug!(error = %e, "event subscription failed; retrying"),
                }
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        };
        tokio::join!(publish, subscribe);
    }

    /// With shared state (Redis): says this instance is alive, takes over the links of instances
    /// that are gone (so their deadlines and teardowns still happen), and tears down on this node
    /// the links other instances closed. Returns at once with the embedded store.
    pub async fn run_peers(self: Arc<Self>, heartbeat: Duration, cancel: CancellationToken) {
        let Some(peers) = &self.peers else { return };
        let mut beat_at = tokio::time::Instant::now();
        while !cancel.is_cancelled() {
            if tokio::time::Instant::now() >= beat_at {
                beat_at = tokio::time::Instant::now() + heartbeat;
                if let Err(e) = self.peers_once().await {
                    tracing::warn!(error = %e, "heartbeat failed");
                }
            }
            // This is not raced against `cancel`, because a pop whose future is dropped midway
            // would lose the id it popped.
            match peers.next_teardown(Duration::from_secs(1)).await {
                Ok(Some(id)) => {
                    tracing::info!(tunnel_id = %id, "tearing down a link closed by another instance");
                    self.teardown_here(&id).await;
                }
                Ok(None) => {}
                Err(_) => {
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }

    /// One heartbeat: says that this instance is alive, checks durability again, and takes over
    /// the links of dead instances. Does nothing when this instance is alone.
    pub async fn peers_once(&self) -> Result<Vec<TunnelId>, StoreError> {
        let Some(peers) = &self.peers else {
            return Ok(vec![]);
        };
        peers.heartbeat().await?;
        self.store.recheck_durability().await;
        let taken = peers.take_over().await?;
        if !taken.is_empty() {
            tracing::warn!(count = taken.len(), ids = ?taken, "took over the links of an instance that is gone");
            self.wake.notify_one();
        }
        // A link that was closed while its owner was gone still waits for its teardown, so the
        // teardown is done here.
        for id in &taken {
            if !matches!(self.store.get(id).await?, Some(l) if l.state != LinkState::Closed) {
                self.teardown_here(id).await;
            }
        }
        Ok(taken)
    }

    /// The ids of open links whose tunnel is on this instance; `None` when it is alone and owns
    /// them all.
    pub async fn owned_here(&self) -> Result<Option<HashSet<TunnelId>>, StoreError> {
        match &self.peers {
            Some(peers) => peers.owned_here().await.map(Some),
            None => Ok(None),
        }
    }

    /// Makes this instance the owner of `id` again, because the link's tunnel is here. Returns
    /// `Some(true)` if another instance owned it, and `None` when this instance is alone.
    pub(super) async fn reclaim(&self, id: &TunnelId) -> Option<Result<bool, StoreError>> {
        Some(self.peers.as_ref()?.reclaim(id).await)
    }
}
