//! Settling what was delivered: access-log lines and socket samples into the ledger.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::event::EventKind;
use super::rules;
use super::service::Links;
use crate::model::{ClientKey, CloseReason, Conn, Every, LinkState};
use crate::monitor::record::{AccessRecord, Completion};
use crate::store::{StoreError, Write};

/// How long settling an aborted request waits for its socket's close notification.
const CLOSE_NOTICE_WAIT: Duration = Duration::from_millis(250);

impl Links {
    /// How many bytes the peer of `conn` had acknowledged when its socket closed. The answer comes
    /// from the kernel's close notification for a socket closed after `since_ms`, and this waits a
    /// moment for the notification to arrive. Returns `None` when ferry cannot know.
    pub(super) async fn final_acked(&self, conn: Conn, since_ms: u64) -> Option<u64> {
        let closures = self.closures.get()?;
        // `since_ms` is the time of the request's check. The socket was open then, so a close
        // notification received since then is for this socket.
        let age = Duration::from_millis(self.clock.now_ms().saturating_sub(since_ms));
        let since = std::time::Instant::now().checked_sub(age)?;
        closures.final_acked(conn, since, CLOSE_NOTICE_WAIT).await
    }

    /// Applies one access-log line.
    pub async fn apply_log(&self, rec: &AccessRecord) -> Result<(), StoreError> {
        self.apply_logs(std::slice::from_ref(rec)).await
    }

    /// Applies access-log lines of one link, in their order, in one atomic update. Under load a
    /// read brings dozens of lines per link, and each update copies the link's record, so one
    /// update per line would be wasteful.
    pub async fn apply_logs(&self, recs: &[AccessRecord]) -> Result<(), StoreError> {
        let Some(id) = recs.first().and_then(|r| r.tunnel_id.as_ref()) else {
            return Ok(());
        };
        debug_assert!(recs.iter().all(|r| r.tunnel_id.as_ref() == Some(id)));
        let recs: Vec<(&AccessRecord, ClientKey)> = recs
            .iter()
            .filter_map(|rec| match ClientKey::new(&rec.client, &rec.user_agent) {
                Some(client) => Some((rec, client)),
                None => {
                    tracing::warn!(client = %rec.client, "access log line with an unparseable client address");
                    None
                }
            })
            .collect();
        let now = self.clock.now_ms();
        // An aborted request is credited with what its peer had acknowledged when the socket
        // closed. The kernel reports that in its close notification, which may arrive a moment
        // after nginx wrote the line.
        // The notifications of several aborted requests are awaited together, not one after
        // another.
        let mut acked: Vec<Option<u64>> = vec![None; recs.len()];
        if recs.iter().any(|(r, _)| r.completion == Completion::Aborted)
            && let Some(link) = self.store.get(id).await?
        {
            acked = futures_util::future::join_all(recs.iter().map(|(rec, _)| {
                let flight = link
                    .inflight
                    .iter()
                    .find(|f| *f.request_id == *rec.request_id)
                    .filter(|_| rec.completion == Completion::Aborted);
                async move {
                    let f = flight?;
                    self.final_acked(f.conn?, f.since_ms).await
                }
            }))
            .await;
        }
        let policy = self.policy;
        let settled = self
            .store
            .update(id, &mut |link| {
                let before = link.bytes_served;
                let mut all = rules::Settled::default();
                let mut downloads = 0u32;
                for ((rec, client), acked) in recs.iter().zip(&acked) {
                    let s = rules::settle(link, rec, client.clone(), *acked, now, &policy);
                    all.changed |= s.changed;
                    all.link_completed |= s.link_completed;
                    downloads += u32::from(s.download_completed);
                }
                let v = (all, downloads, link.bytes_served - before);
                if downloads > 0 {
                    Write::Durable(v)
                } else if all.changed {
                    Write::Soft(v)
                } else {
                    Write::No(v)
                }
            })
            .await?;
        let Some(((s, downloads, bytes), link)) = settled else {
            return Ok(());
        };
        metrics::counter!("ferry_bytes_served_total").increment(bytes);
        if downloads > 0 {
            metrics::counter!("ferry_downloads_completed_total").increment(u64::from(downloads));
            for _ in 0..downloads {
                self.emit(EventKind::Completed, &link);
            }
        } else if s.changed && !link.is_upload() {
            // An upload's progress is reported as its bytes are written, not from the log.
            self.emit_progress(&link);
        }
        if s.link_completed && link.state != LinkState::Closed {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Whether live progress comes from the sockets (else only from the access log).
    pub fn socket_progress(&self) -> bool {
        self.diag.is_some()
    }

    /// Starts hearing the kernel's close notifications (needs sock_diag, as socket progress does).
    pub async fn listen_for_closes(&self) {
        if self.diag.is_none() {
            return;
        }
        match crate::monitor::sockdiag::ClosedSockets::start().await {
            Ok(c) => {
                let _ = self.closures.set(c);
            }
            Err(e) => {
                tracing::warn!(error = %e, "socket close notifications unavailable: aborted requests are charged what nginx sent")
            }
        }
    }

    /// Whether aborted requests are credited from the kernel's close notifications.
    pub fn close_notices(&self) -> bool {
        self.closures.get().is_some_and(|c| c.is_running())
    }

    /// Every second: sample the sockets of requests in flight, report progress, close stalled
    /// links, and settle requests whose connection vanished without a log line.
    pub async fn run_sampler(self: Arc<Self>, cancel: CancellationToken) {
        let mut every = Every::new(Duration::from_secs(1), cancel);
        while every.tick().await {
            if let Err(e) = self.sample_once().await {
                tracing::warn!(error = %e, "progress sampling failed");
            }
            // The checks' writes of the last second that were not made durable at once (soft
            // writes) go out together.
            self.store.flush();
        }
    }

    /// One round of the sampler (tests call it directly).
    pub async fn sample_once(&self) -> Result<(), StoreError> {
        const UNLOGGED_AFTER_MS: u64 = 5_000;
        let policy = self.policy;
        let open = self.store.list_open().await?;
        {
            // Connections whose request is settled need no entry any more.
            let live: std::collections::HashSet<&str> = open
                .iter()
                .flat_map(|l| l.inflight.iter().map(|f| &*f.request_id))
                .collect();
            self.conns
                .lock()
                .expect("conns mutex")
                .retain(|_, (_, rid)| live.contains(&**rid));
        }
        // Only the instance that owns a link can see its sockets. To any other instance, the
        // link's connections would look as if they had vanished.
        let mine = self.owned_here().await?;
        for link in open {
            if mine.as_ref().is_some_and(|m| !m.contains(&link.id)) {
                continue;
            }
            // A link that was never claimed and has nothing in flight has nothing to sample,
            // settle or find stalled.
            if link.state == LinkState::Open && link.inflight.is_empty() {
                continue;
            }
            let samples: Vec<(Arc<str>, Option<u64>)> = match &self.diag {
                Some(diag) => link
                    .inflight
                    .iter()
                    .filter_map(|f| Some((f.request_id.clone(), diag.bytes_acked(f.conn?).ok()?)))
                    .collect(),
                None => vec![],
            };
            let now = self.clock.now_ms();
            let outcome = self
                .store
                .update(&link.id, &mut |l| {
                    let mut moved = false;
                    for (rid, acked) in &samples {
                        moved |= rules::sample(l, rid, *acked, now);
                    }
                    let before = l.bytes_served;
                    let settled = rules::settle_unlogged(l, now, UNLOGGED_AFTER_MS, &policy);
                    // This is counted only once the write is kept, because a shared store may run
                    // this closure again.
                    let credited = l.bytes_served - before;
                    let dropped = rules::drop_stalled_claims(l, now, &policy);
                    let stalled = rules::stalled(l, now, &policy);
                    let r = (moved, stalled, credited);
                    if settled || dropped {
                        Write::Durable(r)
                    } else if moved {
                        Write::Soft(r)
                    } else {
                        Write::No(r)
                    }
                })
                .await?;
            let Some(((moved, stalled, credited), l)) = outcome else {
                continue;
            };
            metrics::counter!("ferry_bytes_served_total").increment(credited);
            if stalled {
                tracing::info!(tunnel_id = %l.id, delivered = rules::delivered(&l), "no progress for the stall timeout");
                self.close(&l.id, CloseReason::Stalled).await?;
            } else if moved {
                self.emit_progress(&l);
            }
        }
        Ok(())
    }
}
