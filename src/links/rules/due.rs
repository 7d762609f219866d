//! When a link is due to close, has stalled, or how far it has got.

use super::policy::Policy;
use crate::model::{CloseReason, Link, LinkState, Use};

/// Body bytes delivered to this link so far, including requests still in flight.
pub fn delivered(link: &Link) -> u64 {
    link.inflight
        .iter()
        .filter(|f| f.claims())
        .fold(link.bytes_served, |sum, f| sum.saturating_add(f.delivered))
}

/// Body bytes received under claims. What readers took does not count toward a download.
pub(super) fn claimed(link: &Link) -> u64 {
    let claims = link.claims.iter().fold(0u64, |s, c| s.saturating_add(c.bytes));
    link.inflight
        .iter()
        .filter(|f| f.claims())
        .fold(claims, |sum, f| sum.saturating_add(f.delivered))
}

/// Whether a single-download link has stalled: it received at least a preview's worth, is not
/// complete, and nothing moved for the stall timeout.
pub fn stalled(link: &Link, now: u64, p: &Policy) -> bool {
    link.max_downloads == 1
        && link.state == LinkState::Downloading
        && link.downloads_completed == 0
        && claimed(link) >= p.preview_bytes
        && link.last_progress_ms.is_some_and(|t| now >= t + p.stall_ms)
}

/// On a link with downloads left over, a stall only drops the stalled claims. Returns whether any
/// claim was dropped.
pub fn drop_stalled_claims(link: &mut Link, now: u64, p: &Policy) -> bool {
    if link.max_downloads == 1 {
        return false;
    }
    let before = link.claims.len();
    let Link { claims, inflight, .. } = link;
    claims.retain(|c| {
        let last = inflight
            .iter()
            .filter(|f| matches!(&f.what, Use::Claim { id, .. } if *id == c.id))
            .map(|f| f.progress_ms)
            .max()
            .unwrap_or(c.last_end_ms);
        !(c.bytes >= p.preview_bytes && now >= last.max(c.last_end_ms) + p.stall_ms)
    });
    link.claims.len() != before
}

/// Closes the link for `reason`. The record is the gate, so from here on every check refuses the
/// link. Returns false when the link was already closed: teardown is idempotent, and the first
/// reason stays.
pub fn close(link: &mut Link, reason: CloseReason, now: u64) -> bool {
    if link.state == LinkState::Closed {
        return false;
    }
    link.state = LinkState::Closed;
    link.close_reason = Some(reason);
    link.closed_at_ms = Some(now);
    link.claims.clear();
    true
}

/// When the link must next be looked at, and why.
pub fn due(link: &Link) -> Option<(u64, CloseReason)> {
    match link.state {
        LinkState::Closed => None,
        LinkState::Completed => {
            let grace = link.grace_until_ms.unwrap_or(0);
            Some((grace.min(link.expires_at_ms), CloseReason::Completed))
        }
        _ => Some((link.expires_at_ms, CloseReason::Expired)),
    }
}

/// Share of the allowance used, between 0 and 1: the completed downloads and the covered share
/// (with bytes in flight) of the most advanced incomplete slot.
pub fn progress(link: &Link) -> f64 {
    let max = link.max_downloads.max(1) as f64;
    let size = link.file_size.max(1) as f64;
    let partial = if link.downloads_completed >= link.max_downloads || link.file_size == 0 {
        0.0
    } else {
        link.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.complete)
            .map(|(i, s)| {
                let live = link
                    .inflight
                    .iter()
                    .filter(|f| matches!(f.what, Use::Claim { slot, .. } if slot as usize == i))
                    .map(|f| f.delivered as f64)
                    .sum::<f64>();
                ((s.coverage.covered() as f64 + live) / size).min(0.999)
            })
            .fold(0.0, f64::max)
    };
    ((link.downloads_completed as f64 + partial) / max).min(1.0)
}
